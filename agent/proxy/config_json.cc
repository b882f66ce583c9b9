// Reading Envoy resources from JSON files: Sluice's own {"listeners": [...], "routes":
// [...], "clusters": [...], "endpoints": [...]} and Envoy's admin /config_dump
// (envoy.admin.v3.ConfigDump: Listeners/Clusters/Endpoints/RoutesConfigDump with their
// static and dynamic entries), as real istiod-fed proxies print it (issue 16;
// tests/conformance/istiod holds such dumps). Kept apart from compile.cc, which turns
// the resources into the proxy's runtime configuration.
#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <type_traits>

#include "sluice/envoy/descriptor_pool.h"
#include "sluice/envoy/resource_set.h"
#include "sluice/proxy/config.h"
#include "sluice/proxy/config_json.h"

namespace sluice::proxy {
namespace {

using Json = nlohmann::json;

constexpr std::string_view kTypePrefix = "type.googleapis.com/";

// snake_case or lowerCamelCase (Envoy's admin prints the first, `istioctl -o json` the
// second).
const Json* Field(const Json& j, const char* snake, const char* camel) {
  if (!j.is_object())
    return nullptr;
  if (auto it = j.find(snake); it != j.end())
    return &*it;
  if (auto it = j.find(camel); it != j.end())
    return &*it;
  return nullptr;
}

std::string TypeOf(const Json& j) {
  if (!j.is_object())
    return "";
  auto it = j.find("@type");
  return it != j.end() && it->is_string() ? it->get<std::string>() : "";
}

// Every "@type" under `j` that names no linked message, once each.
void UnlinkedTypes(const Json& j, std::vector<std::string>& out) {
  if (j.is_object()) {
    if (std::string t = TypeOf(j); !t.empty() && !descriptors::IsLinkedType(t) &&
                                   std::find(out.begin(), out.end(), t) == out.end())
      out.push_back(t);
    for (const auto& [k, v] : j.items())
      UnlinkedTypes(v, out);
  } else if (j.is_array()) {
    for (const auto& v : j)
      UnlinkedTypes(v, out);
  }
}

std::string NameOf(const Json& r) {
  for (const char* k : {"name", "cluster_name", "clusterName"}) {
    if (auto it = r.find(k); it != r.end() && it->is_string())
      return it->get<std::string>();
  }
  return "";
}

// One resource's proto JSON (an Any's payload, "@type" included or not) into M; an
// error names the resource and, when that is the cause, the embedded types not linked.
template <class M>
Result<M> ParseOne(Json r, const std::string& where) {
  std::string t = TypeOf(r);
  const std::string want = std::string(kTypePrefix) + M::descriptor()->full_name();
  if (!t.empty() && t != want) {
    return Fail(where + ": is " + t + ", expected " + want +
                (t.find(".api.v2.") != std::string::npos
                     ? " (the v2 xDS API, which Envoy removed in 1.18; not read)"
                     : ""));
  }
  r.erase("@type");
  M msg;
  auto st = google::protobuf::util::JsonStringToMessage(r.dump(), &msg);
  if (st.ok())
    return msg;
  std::vector<std::string> unlinked;
  UnlinkedTypes(r, unlinked);
  if (!unlinked.empty()) {
    std::string list;
    for (const auto& u : unlinked)
      list += (list.empty() ? "" : ", ") + u;
    return Fail(where + ": embedded types not linked: " + list);
  }
  return Fail(where + ": " + std::string(st.message()));
}

// `unnamed_key`: the key of a resource without a name (Envoy's bootstrap listeners and
// route configs have none), so two of them do not collapse into one.
template <class M>
void AddOne(const Json& r, const char* kind, const std::string& unnamed_key, LoadedConfig& out) {
  ++out.found;
  std::string where = std::string(kind) + " " + (r.is_object() ? NameOf(r) : std::string("?"));
  auto m = ParseOne<M>(r, where);
  if (!m) {
    out.unparsed.push_back(m.error().message);
    return;
  }
  if constexpr (std::is_same_v<M, envoy::config::listener::v3::Listener>) {
    // istiod's bootstrap listeners (15090 stats, 15021 health) have no name; Envoy names
    // them itself. Keyed by address the way istiod names its own ("0.0.0.0_15021"); the
    // message keeps its (empty) name.
    if (m->name().empty() && m->address().has_socket_address()) {
      const auto& sa = m->address().socket_address();
      out.resources.listeners.insert_or_assign(sa.address() + "_" + std::to_string(sa.port_value()),
                                               std::move(*m));
      return;
    }
  }
  if constexpr (std::is_same_v<M, envoy::config::route::v3::RouteConfiguration>) {
    if (m->name().empty()) {
      out.resources.routes.insert_or_assign(unnamed_key, std::move(*m));
      return;
    }
  }
  out.resources.Add(std::move(*m));
}

// The resource an admin dump entry holds: {"cluster": {...}}, {"active_state":
// {"listener": {...}}}, ... — what Envoy serves (active) before what it is still warming.
const Json* EntryResource(const Json& e, const char* snake, const char* camel) {
  if (const Json* r = Field(e, snake, camel))
    return r;
  for (auto [s, c] :
       {std::pair{"active_state", "activeState"}, std::pair{"warming_state", "warmingState"}}) {
    if (const Json* st = Field(e, s, c)) {
      if (const Json* r = Field(*st, snake, camel))
        return r;
    }
  }
  return nullptr;
}

template <class M>
void Entries(const Json& section, std::initializer_list<std::pair<const char*, const char*>> lists,
             const char* snake, const char* camel, const char* kind, LoadedConfig& out) {
  for (auto [ls, lc] : lists) {
    const Json* arr = Field(section, ls, lc);
    if (arr == nullptr || !arr->is_array())
      continue;
    for (std::size_t i = 0; i < arr->size(); ++i) {
      const Json& e = (*arr)[i];
      const Json* r = EntryResource(e, snake, camel);
      if (r == nullptr) {
        // A listener only in error_state / draining_state: nothing Envoy serves.
        if (const Json* n = Field(e, "name", "name"); n != nullptr && n->is_string())
          out.skipped.push_back(std::string(kind) + " " + n->get<std::string>() +
                                ": no active or warming state");
        continue;
      }
      AddOne<M>(*r, kind, std::string(ls) + "[" + std::to_string(i) + "]", out);
    }
  }
}

void LoadConfigDump(const Json& doc, LoadedConfig& out) {
  out.config_dump = true;
  for (const auto& section : doc["configs"]) {
    const std::string t = TypeOf(section);
    if (t.ends_with("envoy.admin.v3.ListenersConfigDump")) {
      Entries<envoy::config::listener::v3::Listener>(
          section,
          {{"static_listeners", "staticListeners"}, {"dynamic_listeners", "dynamicListeners"}},
          "listener", "listener", "listener", out);
    } else if (t.ends_with("envoy.admin.v3.ClustersConfigDump")) {
      Entries<envoy::config::cluster::v3::Cluster>(
          section,
          {{"static_clusters", "staticClusters"},
           {"dynamic_active_clusters", "dynamicActiveClusters"},
           {"dynamic_warming_clusters", "dynamicWarmingClusters"}},
          "cluster", "cluster", "cluster", out);
    } else if (t.ends_with("envoy.admin.v3.EndpointsConfigDump")) {
      Entries<envoy::config::endpoint::v3::ClusterLoadAssignment>(
          section,
          {{"static_endpoint_configs", "staticEndpointConfigs"},
           {"dynamic_endpoint_configs", "dynamicEndpointConfigs"}},
          "endpoint_config", "endpointConfig", "endpoints", out);
    } else if (t.ends_with("envoy.admin.v3.RoutesConfigDump")) {
      Entries<envoy::config::route::v3::RouteConfiguration>(
          section,
          {{"static_route_configs", "staticRouteConfigs"},
           {"dynamic_route_configs", "dynamicRouteConfigs"}},
          "route_config", "routeConfig", "route", out);
    } else {
      // Bootstrap, secrets, scoped routes, ECDS: not resources the proxy is served.
      out.skipped.push_back("section " + (t.empty() ? std::string("(no @type)") : t) +
                            ": not a listener, route, cluster or endpoint dump");
    }
  }
}

}  // namespace

Result<LoadedConfig> LoadConfigJson(std::string_view text) {
  descriptors::LinkAllTypes();
  Json doc = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object())
    return Fail("config: not a JSON object");
  LoadedConfig out;
  if (auto it = doc.find("configs"); it != doc.end()) {
    if (!it->is_array())
      return Fail("config: \"configs\" must be an array (an Envoy /config_dump)");
    LoadConfigDump(doc, out);
    return out;
  }
  for (const char* key : {"listeners", "routes", "clusters", "endpoints"}) {
    auto it = doc.find(key);
    if (it == doc.end())
      continue;
    if (!it->is_array())
      return Fail(std::string("config: \"") + key + "\" must be an array");
    for (std::size_t i = 0; i < it->size(); ++i) {
      const Json& r = (*it)[i];
      const std::string where = std::string("config: ") + key + "[" + std::to_string(i) + "]";
      ++out.found;
      auto add = [&](auto m) {
        if (m)
          out.resources.Add(std::move(*m));
        else
          out.unparsed.push_back(m.error().message);
      };
      if (std::string_view(key) == "listeners")
        add(ParseOne<envoy::config::listener::v3::Listener>(r, where));
      else if (std::string_view(key) == "routes")
        add(ParseOne<envoy::config::route::v3::RouteConfiguration>(r, where));
      else if (std::string_view(key) == "clusters")
        add(ParseOne<envoy::config::cluster::v3::Cluster>(r, where));
      else
        add(ParseOne<envoy::config::endpoint::v3::ClusterLoadAssignment>(r, where));
    }
  }
  return out;
}

Result<xds::ResourceSet> ParseResourceSetJson(std::string_view text) {
  auto loaded = LoadConfigJson(text);
  SLUICE_RETURN_IF_ERROR(loaded);
  if (!loaded->unparsed.empty())
    return Fail(loaded->unparsed.front());
  return std::move(loaded->resources);
}

}  // namespace sluice::proxy
