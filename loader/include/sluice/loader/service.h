// What the agent asks the kernel data plane to serve: a service frontend (VIPs, port,
// protocol) whose connections are spread over weighted clusters, each cluster over its
// endpoints by a load-balancing policy. This is the typed kernel-sync API's vocabulary.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/common/result.h"
#include "sluice/loader/ip.h"

namespace sluice {

// Numbered as Envoy's Cluster.LbPolicy (and enum sluice_lb_policy).
enum class LbPolicy : uint8_t {
  kRoundRobin = 0,
  kLeastRequest = 1,  // Istio's default
  kRingHash = 2,
  kRandom = 3,
  kMaglev = 5,
};

[[nodiscard]] std::string_view LbPolicyName(LbPolicy p);
[[nodiscard]] Result<LbPolicy> ParseLbPolicy(std::string_view name);  // "ROUND_ROBIN", ...

enum class Protocol : uint8_t { kTcp = 6, kUdp = 17 };

// Why a service goes to the in-pod proxy (enum sluice_l7_reason).
enum class L7Reason : uint8_t {
  kUnspecified = 0,
  kHttpRouting,
  kTlsSni,
  kSniffed,
  kBySource,
  kByHost,
  kCluster,
  kCidr,
  kViews,
  kHttp2,
};
[[nodiscard]] std::string_view L7ReasonName(L7Reason r);

struct EndpointSpec {
  SocketAddress address;
  uint32_t weight = 1;
  std::map<std::string, std::string> labels;
  bool operator==(const EndpointSpec&) const = default;
};

struct ClusterSpec {
  std::string name;     // e.g. outbound|5000|v1|helloworld.default.svc.cluster.local
  uint32_t weight = 1;  // relative, as Envoy's weighted clusters
  LbPolicy lb = LbPolicy::kLeastRequest;
  std::vector<EndpointSpec> endpoints;
  bool operator==(const ClusterSpec&) const = default;
};

struct ServiceSpec {
  std::string name;  // unique key, e.g. helloworld.default.svc.cluster.local:5000
  std::vector<IpAddress> vips;
  uint16_t port = 0;
  Protocol protocol = Protocol::kTcp;
  std::vector<ClusterSpec> clusters;
  // The service needs L7: connects go to the pod's in-pod proxy listener instead of an
  // endpoint (clusters may then be empty). A VIP of 0.0.0.0 or :: makes the service the
  // catch-all for its port (e.g. any address on port 80 -> the proxy).
  bool redirect_to_proxy = false;
  L7Reason l7_reason = L7Reason::kUnspecified;  // with redirect_to_proxy
  bool operator==(const ServiceSpec&) const = default;
};

// Checks what the kernel cannot represent; the message names the service and field.
[[nodiscard]] Result<void> Validate(const ServiceSpec& spec);

}  // namespace sluice
