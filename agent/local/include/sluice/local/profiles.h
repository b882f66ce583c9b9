// What `sluicectl local up --profile P` installs in istio-system, as `istioctl install
// --set profile=P` does for the components the local cluster runs (the control plane and
// the node agent are always there):
//   default  the ingress gateway (istioctl's default profile)
//   demo     the ingress and the egress gateway
//   minimal  no gateway
// The manifests are agent/local/profiles/*.yaml, built into the binary.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "sluice/common/result.h"

namespace sluice::local {

inline constexpr std::string_view kDefaultProfile = "default";

struct ProfileManifest {
  std::string_view name;  // "ingressgateway"
  std::string_view yaml;
};

// The manifests of a profile, in order; an unknown profile is an error naming the known ones.
[[nodiscard]] Result<std::vector<ProfileManifest>> ProfileManifests(std::string_view profile);

}  // namespace sluice::local
