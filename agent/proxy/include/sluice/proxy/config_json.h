// Reading Envoy resources from JSON files (config_json.cc): Sluice's own
// {"listeners": [...], ...} document or an Envoy admin /config_dump, one resource at a
// time, each that does not parse named rather than failing the file.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/common/result.h"
#include "sluice/envoy/resource_set.h"

namespace sluice::proxy {

// What a JSON config file held (config_json.cc): the resources that parsed, and each
// one that did not, by kind and name ("listener virtualInbound: embedded types not
// linked: type.googleapis.com/..."). Nothing is dropped silently.
struct LoadedConfig {
  xds::ResourceSet resources;
  std::size_t found = 0;              // resources the file holds
  std::vector<std::string> unparsed;  // resources that did not parse, with the reason
  std::vector<std::string> skipped;   // dump sections/entries that are not resources
  bool config_dump = false;           // the file was an Envoy admin /config_dump
};

// Reads either an Envoy-shaped document {"listeners": [...], "routes": [...],
// "clusters": [...], "endpoints": [...]}, each element the proto3 JSON of a Listener,
// RouteConfiguration, Cluster or ClusterLoadAssignment, or an Envoy admin /config_dump
// ({"configs": [ListenersConfigDump, ClustersConfigDump, EndpointsConfigDump,
// RoutesConfigDump, ...]}, static and dynamic entries, active before warming state,
// snake_case or camelCase). Fails only when the document itself is malformed.
Result<LoadedConfig> LoadConfigJson(std::string_view json);

}  // namespace sluice::proxy
