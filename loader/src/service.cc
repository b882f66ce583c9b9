#include "sluice/loader/service.h"

#include <set>

#include "sluice/bpf_abi.h"

namespace sluice {

std::string_view L7ReasonName(L7Reason r) {
  switch (r) {
    case L7Reason::kUnspecified:
      return "set by hand";
    case L7Reason::kHttpRouting:
      return "HTTP routing rules";
    case L7Reason::kTlsSni:
      return "TLS routed by SNI";
    case L7Reason::kSniffed:
      return "sniffed protocol, HTTP and TCP routed differently";
    case L7Reason::kBySource:
      return "filter chain chosen by the client";
    case L7Reason::kByHost:
      return "hosts without a VIP, routed by Host";
    case L7Reason::kCluster:
      return "a cluster only the proxy can serve";
    case L7Reason::kCidr:
      return "a destination range";
    case L7Reason::kViews:
      return "the pods' views route it differently";
    case L7Reason::kHttp2:
      return "HTTP/2 or gRPC: balanced per request";
  }
  return "unknown";
}

std::string_view LbPolicyName(LbPolicy p) {
  switch (p) {
    case LbPolicy::kRoundRobin:
      return "ROUND_ROBIN";
    case LbPolicy::kLeastRequest:
      return "LEAST_REQUEST";
    case LbPolicy::kRingHash:
      return "RING_HASH";
    case LbPolicy::kRandom:
      return "RANDOM";
    case LbPolicy::kMaglev:
      return "MAGLEV";
  }
  return "UNKNOWN";
}

Result<LbPolicy> ParseLbPolicy(std::string_view name) {
  for (auto p : {LbPolicy::kRoundRobin, LbPolicy::kLeastRequest, LbPolicy::kRingHash,
                 LbPolicy::kRandom, LbPolicy::kMaglev}) {
    if (LbPolicyName(p) == name)
      return p;
  }
  return Fail("unknown load-balancing policy '" + std::string(name) +
              "' (expected ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH or MAGLEV)");
}

Result<void> Validate(const ServiceSpec& s) {
  const std::string where = "service '" + s.name + "'";
  if (s.name.empty())
    return Fail("service: name: must not be empty");
  if (s.name.size() >= SLUICE_SERVICE_NAME_LEN)
    return Fail(where + ": name: longer than " + std::to_string(SLUICE_SERVICE_NAME_LEN - 1) +
                " bytes");
  if (s.vips.empty())
    return Fail(where + ": vips: at least one address is required");
  if (s.port == 0)
    return Fail(where + ": port: must be 1..65535");
  if (s.clusters.empty() && !s.redirect_to_proxy)
    return Fail(where + ": clusters: at least one cluster is required");
  if (s.clusters.size() > SLUICE_MAX_CLUSTERS)
    return Fail(where + ": clusters: " + std::to_string(s.clusters.size()) +
                " weighted clusters, the kernel holds at most " +
                std::to_string(SLUICE_MAX_CLUSTERS));
  std::set<IpAddress> seen;
  for (size_t i = 0; i < s.vips.size(); i++) {
    if (!seen.insert(s.vips[i]).second)
      return Fail(where + ": vips[" + std::to_string(i) + "]: duplicate " + s.vips[i].ToString());
  }
  uint64_t total = 0;
  for (size_t c = 0; c < s.clusters.size(); c++) {
    const auto& cl = s.clusters[c];
    const std::string cw = where + ": clusters[" + std::to_string(c) + "]";
    total += cl.weight;
    if (cl.endpoints.size() > SLUICE_MAX_BACKENDS)
      return Fail(cw + ": endpoints: more than " + std::to_string(SLUICE_MAX_BACKENDS));
    for (size_t e = 0; e < cl.endpoints.size(); e++) {
      if (cl.endpoints[e].weight == 0)
        return Fail(cw + ".endpoints[" + std::to_string(e) + "].weight: must be at least 1");
      if (cl.endpoints[e].address.port == 0)
        return Fail(cw + ".endpoints[" + std::to_string(e) + "].port: must be 1..65535");
    }
  }
  if (total == 0 && !s.clusters.empty())
    return Fail(where + ": clusters: all weights are zero");
  if (total > UINT32_MAX)
    return Fail(where + ": clusters: weights add up past 2^32-1");
  return {};
}

}  // namespace sluice
