// `proxy-config` over a config dump: the JSON sluice-agent's admin /config_dump serves
// ({"clusters": [...], "endpoints": [...], "listeners": [...], "routes": [...]} in Envoy's
// proto JSON), or the same document translated in-process from a config directory.
//
// The tables have istioctl's columns, order, sorting and cell formats (see
// docs/inspection.md); -o json|yaml prints the filtered resources themselves, so
// "lbPolicy", "weightedClusters" and "healthStatus" read exactly as istioctl shows them.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "sluice/common/result.h"

namespace sluice::inspect {

enum class Output { kShort, kJson, kYaml };
Result<Output> ParseOutput(const std::string& text);  // "short" (table), "json", "yaml"

struct ClusterFilter {
  std::string fqdn;  // substring of the cluster name, as istioctl
  uint32_t port = 0;
  std::string subset;
  std::string direction;  // inbound | outbound
};

struct RouteFilter {
  std::string name;  // exact route configuration name ("5000", "http.8080")
};

struct EndpointFilter {
  std::string cluster;  // exact cluster name, case-insensitive
  std::string address;  // "IP:PORT" or "IP"
  uint32_t port = 0;
  std::string status;  // HEALTHY, UNHEALTHY, ...
};

struct ListenerFilter {
  std::string address;
  uint32_t port = 0;
  std::string type;  // HTTP, TCP, HTTP+TCP
};

// Each returns the text to print; an error when the dump has no such resources, or when
// a filter was given and nothing matches it ("no cluster matches --fqdn x").
Result<std::string> PrintClusters(const nlohmann::ordered_json& dump, const ClusterFilter& f,
                                  Output out);
Result<std::string> PrintRoutes(const nlohmann::ordered_json& dump, const RouteFilter& f,
                                Output out);
Result<std::string> PrintEndpoints(const nlohmann::ordered_json& dump, const EndpointFilter& f,
                                   Output out);
Result<std::string> PrintListeners(const nlohmann::ordered_json& dump, const ListenerFilter& f,
                                   Output out);

// "outbound|5000|v1|helloworld.default.svc.cluster.local" -> parts; false if not a
// subset key (BlackHoleCluster, PassthroughCluster).
struct SubsetKey {
  std::string direction, subset, fqdn;
  uint32_t port = 0;
};
bool ParseSubsetKey(const std::string& name, SubsetKey& out);

}  // namespace sluice::inspect
