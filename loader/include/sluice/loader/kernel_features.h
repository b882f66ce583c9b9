// The kernel features the data plane adapts to, probed when it loads.
//
// Each optional feature has a fallback the data plane takes when the running kernel
// lacks it, and a load option forces that fallback on any kernel, so the fallback code
// runs (and is tested) on a new kernel too. Features the data plane cannot do without
// are probed as well: a missing one refuses the load with a message naming the feature
// and the kernel it needs, instead of a verifier log or a failure at the first connect.
// The matrix (feature, minimum kernel, fallback, kernels run) is docs/kernel-dataplane.md.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/common/result.h"

namespace sluice {

enum class KernelFeature : uint8_t {
  // bpf_set_retval in cgroup/connect4|6 (5.18): a refused connect fails with
  // ECONNREFUSED. Without it the hook returns 0 alone and the client sees EPERM.
  kSetRetval,
  // getsockopt(SO_NETNS_COOKIE) (5.14): how the loader learns a namespace's cookie, the
  // key of the enrolment map. Without it a BPF program in a private cgroup reads it.
  kNetnsCookie,
};
inline constexpr KernelFeature kKernelFeatures[] = {KernelFeature::kSetRetval,
                                                    KernelFeature::kNetnsCookie};

struct KernelFeatureInfo {
  std::string_view name;        // as in --kernel-fallback and the metric's label
  std::string_view min_kernel;  // first mainline release with it
  std::string_view fallback;    // what the data plane does without it
};
[[nodiscard]] const KernelFeatureInfo& Describe(KernelFeature f);

struct KernelFeatures {
  std::string kernel_release;  // uname -r
  bool set_retval = false;
  bool netns_cookie = false;
  std::set<KernelFeature> forced;  // fallbacks taken because the load option said so

  [[nodiscard]] bool Has(KernelFeature f) const;
  // One line for the log: "set_retval=on netns_cookie=off (forced) ...".
  [[nodiscard]] std::string Summary() const;
};

// Parses a comma-separated list of feature names ("set_retval,netns_cookie"); "all" is
// every feature, "" none. Unknown names are an error listing the known ones.
[[nodiscard]] Result<std::set<KernelFeature>> ParseKernelFallbacks(std::string_view list);

// Probes the running kernel (needs the right to load BPF programs). Features in
// `forced_off` are reported off without probing. Fails when a required feature is
// missing, naming it and the kernel it needs.
[[nodiscard]] Result<KernelFeatures> ProbeKernelFeatures(
    const std::set<KernelFeature>& forced_off = {});

}  // namespace sluice
