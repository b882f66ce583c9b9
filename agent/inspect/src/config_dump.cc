#include "sluice/inspect/config_dump.h"

#include <fmt/format.h>

#include <algorithm>
#include <set>
#include <string_view>
#include <vector>

#include "sluice/inspect/table.h"

namespace sluice::inspect {
namespace {

using Json = nlohmann::ordered_json;

std::string Str(const Json& j, const char* key) {
  if (!j.is_object())
    return "";
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

const Json& Get(const Json& j, const char* key) {
  static const Json kNull;
  if (!j.is_object())
    return kNull;
  auto it = j.find(key);
  return it == j.end() ? kNull : *it;
}

uint32_t U32(const Json& j) {
  if (j.is_number_unsigned() || j.is_number_integer())
    return j.get<uint32_t>();
  if (j.is_string())
    return static_cast<uint32_t>(std::strtoul(j.get<std::string>().c_str(), nullptr, 10));
  return 0;
}

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

// The resources of one kind in the dump: an admin dump or a translation both hold them
// as plain arrays.
Result<std::vector<Json>> Section(const Json& dump, const char* key, const char* what) {
  const Json& arr = Get(dump, key);
  if (!arr.is_null() && !arr.is_array())
    return Fail(fmt::format("config dump: \"{}\" is not an array", key));
  std::vector<Json> out;
  if (arr.is_array()) {
    for (const auto& r : arr)
      out.push_back(r);
  }
  if (out.empty())
    return Fail(fmt::format("no {} found", what));
  return out;
}

std::string Render(const std::vector<Json>& items, Output out) {
  Json arr = Json::array();
  for (const auto& i : items)
    arr.push_back(i);
  if (out == Output::kYaml)
    return JsonToYaml(arr);
  return arr.dump(4) + "\n";
}

// istioctl's DESTINATION RULE / VIRTUAL SERVICE column: metadata.filterMetadata.istio.config
// "/apis/networking.istio.io/v1alpha3/namespaces/NS/KIND/NAME" -> "NAME.NS".
std::string DescribeManagement(const Json& resource) {
  std::string config =
      Str(Get(Get(Get(resource, "metadata"), "filterMetadata"), "istio"), "config");
  if (config.empty())
    return "";
  // Any API version (istiod writes v1alpha3 before 1.22, v1 since), as istioctl's
  // renderConfig: "/apis/networking.istio.io/VERSION/namespaces/NS/KIND/NAME".
  if (!config.starts_with("/apis/networking.istio.io/"))
    return "<unknown>";
  std::vector<std::string> pieces;
  std::size_t start = 0;
  for (;;) {
    auto slash = config.find('/', start);
    pieces.push_back(config.substr(start, slash - start));
    if (slash == std::string::npos)
      break;
    start = slash + 1;
  }
  if (pieces.size() != 8)
    return "";
  return pieces[7] + "." + pieces[5];
}

struct SortKey {
  std::string fqdn, subset;
  uint32_t port;
  std::string direction;
  auto operator<=>(const SortKey&) const = default;
};

SortKey KeyOf(const std::string& name) {
  SubsetKey k;
  if (ParseSubsetKey(name, k))
    return {k.fqdn, k.subset, k.port, k.direction};
  return {name, "", 0, ""};
}

}  // namespace

Result<Output> ParseOutput(const std::string& text) {
  if (text.empty() || text == "short" || text == "table")
    return Output::kShort;
  if (text == "json")
    return Output::kJson;
  if (text == "yaml")
    return Output::kYaml;
  return Fail("-o " + text + ": expected short, json or yaml");
}

bool ParseSubsetKey(const std::string& name, SubsetKey& out) {
  std::vector<std::string> parts;
  std::size_t start = 0;
  for (;;) {
    auto bar = name.find('|', start);
    parts.push_back(name.substr(start, bar - start));
    if (bar == std::string::npos)
      break;
    start = bar + 1;
  }
  if (parts.size() != 4)
    return false;
  out.direction = parts[0];
  out.port = static_cast<uint32_t>(std::strtoul(parts[1].c_str(), nullptr, 10));
  out.subset = parts[2];
  out.fqdn = parts[3];
  return true;
}

// ---------------------------------------------------------------- clusters

Result<std::string> PrintClusters(const Json& dump, const ClusterFilter& f, Output out) {
  auto all = Section(dump, "clusters", "clusters");
  SLUICE_RETURN_IF_ERROR(all);
  std::vector<Json> clusters;
  for (const auto& c : *all) {
    const std::string name = Str(c, "name");
    if (!f.fqdn.empty() && name.find(f.fqdn) == std::string::npos)
      continue;
    if (!f.direction.empty() && name.find(f.direction) == std::string::npos)
      continue;
    if (!f.subset.empty() && name.find(f.subset) == std::string::npos)
      continue;
    if (f.port != 0 && name.find(fmt::format("|{}|", f.port)) == std::string::npos)
      continue;
    clusters.push_back(c);
  }
  if (clusters.empty()) {
    std::vector<std::string> given;
    if (!f.fqdn.empty())
      given.push_back("--fqdn " + f.fqdn);
    if (f.port != 0)
      given.push_back(fmt::format("--port {}", f.port));
    if (!f.subset.empty())
      given.push_back("--subset " + f.subset);
    if (!f.direction.empty())
      given.push_back("--direction " + f.direction);
    return Fail(fmt::format("no cluster matches {}", fmt::join(given, " ")));
  }
  std::stable_sort(clusters.begin(), clusters.end(), [](const Json& a, const Json& b) {
    return KeyOf(Str(a, "name")) < KeyOf(Str(b, "name"));
  });
  if (out != Output::kShort)
    return Render(clusters, out);

  Table t(5);
  t.Row({"SERVICE FQDN", "PORT", "SUBSET", "DIRECTION", "TYPE", "DESTINATION RULE"});
  for (const auto& c : clusters) {
    const std::string name = Str(c, "name");
    // DiscoveryType STATIC is the enum's zero: proto JSON leaves it out.
    std::string type = Str(c, "type").empty() ? "STATIC" : Str(c, "type");
    SubsetKey k;
    if (ParseSubsetKey(name, k)) {
      t.Row({k.fqdn, std::to_string(k.port), k.subset.empty() ? "-" : k.subset, k.direction, type,
             DescribeManagement(c)});
    } else {
      t.Row({name, "-", "-", "-", type, DescribeManagement(c)});
    }
  }
  return t.Render();
}

// ---------------------------------------------------------------- routes

namespace {

// istioctl's DOMAINS cell: the one domain, or the domains without ":port", with the
// ".svc.cluster.local" / ".svc" expansions of a shorter listed name dropped, at most two
// and "+ N more...".
std::string DescribeRouteDomains(const Json& domains) {
  if (!domains.is_array() || domains.empty())
    return "";
  if (domains.size() == 1)
    return domains[0].get<std::string>();
  std::vector<std::string> without_port;
  for (const auto& d : domains) {
    const std::string s = d.get<std::string>();
    auto colons = std::count(s.begin(), s.end(), ':');
    if (colons == 0 || (colons > 2 && s.ends_with("]")))
      without_port.push_back(s);
  }
  std::set<std::string> unique(without_port.begin(), without_port.end());
  std::vector<std::string> kept;
  for (const auto& h : without_port) {
    bool drop = false;
    for (std::string_view suffix :
         {std::string_view(".svc.cluster.local"), std::string_view(".svc")}) {
      if (h.size() > suffix.size() && h.ends_with(suffix) &&
          unique.contains(h.substr(0, h.size() - suffix.size())))
        drop = true;
    }
    if (!drop)
      kept.push_back(h);
  }
  if (kept.size() > 2)
    return fmt::format("{}, {} + {} more...", kept[0], kept[1], kept.size() - 2);
  return fmt::format("{}", fmt::join(kept, ", "));
}

std::string DescribeMatch(const Json& match) {
  std::vector<std::string> conds;
  if (!Str(match, "prefix").empty())
    conds.push_back(Str(match, "prefix") + "*");
  if (!Str(match, "pathSeparatedPrefix").empty())
    conds.push_back("PathPrefix:" + Str(match, "pathSeparatedPrefix"));
  if (!Str(match, "path").empty())
    conds.push_back(Str(match, "path"));
  if (!Str(Get(match, "safeRegex"), "regex").empty())
    conds.push_back("regex " + Str(Get(match, "safeRegex"), "regex"));
  return fmt::format("{}", fmt::join(conds, " && "));
}

bool IsPassthrough(const Json& route) {
  return Str(Get(route, "route"), "cluster") == "PassthroughCluster";
}

}  // namespace

Result<std::string> PrintRoutes(const Json& dump, const RouteFilter& f, Output out) {
  auto all = Section(dump, "routes", "routes");
  SLUICE_RETURN_IF_ERROR(all);
  std::vector<Json> routes;
  for (const auto& r : *all) {
    if (f.name.empty() || Str(r, "name") == f.name)
      routes.push_back(r);
  }
  if (routes.empty())
    return Fail("no route matches --name " + f.name);
  // Numeric names (sidecar per-port routes) in order; others keep their place after.
  std::stable_sort(routes.begin(), routes.end(), [](const Json& a, const Json& b) {
    auto num = [](const std::string& s) {
      return !s.empty() && std::all_of(s.begin(), s.end(), ::isdigit);
    };
    const std::string an = Str(a, "name"), bn = Str(b, "name");
    if (num(an) && num(bn))
      return std::stoul(an) < std::stoul(bn);
    return num(an) && !num(bn);
  });
  if (out != Output::kShort)
    return Render(routes, out);

  Table t(5);
  t.Row({"NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE"});
  for (const auto& rc : routes) {
    const std::string name = Str(rc, "name");
    const Json& vhosts = Get(rc, "virtualHosts");
    if (!vhosts.is_array())
      continue;
    for (const auto& vh : vhosts) {
      const Json& rs = Get(vh, "routes");
      const std::string domains = DescribeRouteDomains(Get(vh, "domains"));
      if (!rs.is_array() || rs.empty()) {
        t.Row({name, Str(vh, "name"), domains, "/*", "404"});
        continue;
      }
      for (const auto& r : rs) {
        if (IsPassthrough(r))
          continue;
        t.Row({name, Str(vh, "name"), domains, DescribeMatch(Get(r, "match")),
               DescribeManagement(r)});
      }
    }
  }
  return t.Render();
}

// ---------------------------------------------------------------- endpoints

namespace {

std::string EndpointAddress(const Json& lb_endpoint) {
  const Json& addr = Get(Get(lb_endpoint, "endpoint"), "address");
  const Json& sa = Get(addr, "socketAddress");
  if (sa.is_object())
    return fmt::format("{}:{}", Str(sa, "address"), U32(Get(sa, "portValue")));
  if (!Str(Get(addr, "pipe"), "path").empty())
    return Str(Get(addr, "pipe"), "path");
  return "unknown";
}

// Envoy's /clusters reports hosts without active health checking (EDS status UNKNOWN)
// as HEALTHY; istioctl prints what Envoy reports.
std::string EndpointStatus(const Json& lb_endpoint) {
  std::string s = Str(lb_endpoint, "healthStatus");
  return s.empty() || s == "UNKNOWN" ? "HEALTHY" : s;
}

}  // namespace

Result<std::string> PrintEndpoints(const Json& dump, const EndpointFilter& f, Output out) {
  // EDS assignments, plus the inline loadAssignment of STATIC/DNS clusters (Envoy's
  // /clusters shows their hosts too).
  std::vector<Json> assignments;
  if (const Json& eds = Get(dump, "endpoints"); eds.is_array()) {
    for (const auto& cla : eds)
      assignments.push_back(cla);
  }
  if (const Json& clusters = Get(dump, "clusters"); clusters.is_array()) {
    for (const auto& c : clusters) {
      const Json& la = Get(c, "loadAssignment");
      if (la.is_object() && la.contains("endpoints")) {
        Json cla = la;
        if (Str(cla, "clusterName").empty())
          cla["clusterName"] = Str(c, "name");
        assignments.push_back(cla);
      }
    }
  }
  if (assignments.empty())
    return Fail("no endpoints found");

  std::vector<Json> kept;
  for (auto cla : assignments) {
    const std::string cluster = Str(cla, "clusterName");
    if (!f.cluster.empty() && Lower(cluster) != Lower(f.cluster))
      continue;
    std::size_t count = 0;
    if (cla.contains("endpoints") && cla["endpoints"].is_array()) {
      for (auto& locality : cla["endpoints"]) {
        Json filtered = Json::array();
        if (locality.contains("lbEndpoints") && locality["lbEndpoints"].is_array()) {
          for (const auto& ep : locality["lbEndpoints"]) {
            const std::string addr = EndpointAddress(ep);
            if (!f.address.empty() && Lower(addr) != Lower(f.address) &&
                Lower(addr.substr(0, addr.rfind(':'))) != Lower(f.address))
              continue;
            if (f.port != 0 && addr.substr(addr.rfind(':') + 1) != std::to_string(f.port))
              continue;
            if (!f.status.empty() && Lower(EndpointStatus(ep)) != Lower(f.status))
              continue;
            filtered.push_back(ep);
          }
          locality["lbEndpoints"] = filtered;
        }
        count += filtered.size();
      }
    }
    if (count > 0)
      kept.push_back(std::move(cla));
  }
  if (kept.empty()) {
    std::vector<std::string> given;
    if (!f.cluster.empty())
      given.push_back("--cluster " + f.cluster);
    if (!f.address.empty())
      given.push_back("--address " + f.address);
    if (f.port != 0)
      given.push_back(fmt::format("--port {}", f.port));
    if (!f.status.empty())
      given.push_back("--status " + f.status);
    if (given.empty())
      return Fail("no endpoints found");
    return Fail(fmt::format("no endpoint matches {}", fmt::join(given, " ")));
  }
  std::stable_sort(kept.begin(), kept.end(), [](const Json& a, const Json& b) {
    return KeyOf(Str(a, "clusterName")) < KeyOf(Str(b, "clusterName"));
  });
  if (out != Output::kShort)
    return Render(kept, out);

  Table t(5);
  t.Row({"ENDPOINT", "STATUS", "OUTLIER CHECK", "CLUSTER"});
  for (const auto& cla : kept) {
    for (const auto& locality : cla["endpoints"]) {
      for (const auto& ep : locality["lbEndpoints"])
        t.Row({EndpointAddress(ep), EndpointStatus(ep), "OK", Str(cla, "clusterName")});
    }
  }
  return t.Render();
}

// ---------------------------------------------------------------- listeners

namespace {

constexpr std::string_view kHcm = "envoy.filters.network.http_connection_manager";
constexpr std::string_view kTcpProxy = "envoy.filters.network.tcp_proxy";

std::vector<Json> FilterChains(const Json& l) {
  std::vector<Json> out;
  if (const Json& fcs = Get(l, "filterChains"); fcs.is_array()) {
    for (const auto& fc : fcs)
      out.push_back(fc);
  }
  if (const Json& d = Get(l, "defaultFilterChain"); d.is_object())
    out.push_back(d);
  return out;
}

std::string TcpCluster(const Json& filter) {
  const Json& tc = Get(filter, "typedConfig");
  if (!Str(tc, "cluster").empty())
    return Str(tc, "cluster");
  std::vector<std::string> names;
  if (const Json& wc = Get(Get(tc, "weightedClusters"), "clusters"); wc.is_array()) {
    for (const auto& c : wc)
      names.push_back(Str(c, "name"));
  }
  return fmt::format("{}", fmt::join(names, ","));
}

std::string ListenerType(const Json& l) {
  int http = 0, tcp = 0;
  for (const auto& fc : FilterChains(l)) {
    const Json& filters = Get(fc, "filters");
    if (!filters.is_array())
      continue;
    for (const auto& f : filters) {
      if (Str(f, "name") == kHcm)
        ++http;
      else if (Str(f, "name") == kTcpProxy && TcpCluster(f) != "BlackHoleCluster")
        ++tcp;
    }
  }
  if (http > 0)
    return tcp == 0 ? "HTTP" : "HTTP+TCP";
  return tcp > 0 ? "TCP" : "UNKNOWN";
}

std::string ListenerAddress(const Json& l) {
  return Str(Get(Get(l, "address"), "socketAddress"), "address");
}

uint32_t ListenerPort(const Json& l) {
  return U32(Get(Get(Get(l, "address"), "socketAddress"), "portValue"));
}

std::string ListenerAddresses(const Json& l) {
  std::vector<std::string> addrs{ListenerAddress(l)};
  if (const Json& extra = Get(l, "additionalAddresses"); extra.is_array()) {
    for (const auto& a : extra)
      addrs.push_back(Str(Get(Get(a, "address"), "socketAddress"), "address"));
  }
  return fmt::format("{}", fmt::join(addrs, ","));
}

std::string DescribeInlineRoutes(const Json& rc) {
  const Json& vhs = Get(rc, "virtualHosts");
  if (!vhs.is_array())
    return "Inline Route: ";
  // One catch-all virtual host forwarding everything to one cluster: just the cluster.
  if (vhs.size() == 1) {
    const Json& vh = vhs[0];
    const Json& d = Get(vh, "domains");
    const Json& rs = Get(vh, "routes");
    if (d.is_array() && d.size() == 1 && d[0] == "*" && rs.is_array() && rs.size() == 1 &&
        Str(Get(rs[0], "match"), "prefix") == "/" && !Str(Get(rs[0], "route"), "cluster").empty()) {
      const std::string c = Str(Get(rs[0], "route"), "cluster");
      return c.find("Cluster") != std::string::npos ? c : "Cluster: " + c;
    }
  }
  std::vector<std::string> parts;
  for (const auto& vh : vhs) {
    std::vector<std::string> matches;
    if (const Json& rs = Get(vh, "routes"); rs.is_array()) {
      for (const auto& r : rs)
        matches.push_back(DescribeMatch(Get(r, "match")));
    }
    const Json& d = Get(vh, "domains");
    std::vector<std::string> doms;
    if (d.is_array()) {
      for (const auto& x : d)
        doms.push_back(x.get<std::string>());
    }
    std::string m = fmt::format("{}", fmt::join(matches, ", "));
    if (doms.size() == 1 && doms[0] == "*")
      parts.push_back(m);
    else
      parts.push_back(fmt::format("{} {}", fmt::join(doms, "/"), m));
  }
  return fmt::format("Inline Route: {}", fmt::join(parts, "; "));
}

std::string FilterDestination(const Json& filters) {
  if (!filters.is_array())
    return "Non-HTTP/Non-TCP";
  for (const auto& f : filters) {
    if (Str(f, "name") == kHcm) {
      const Json& tc = Get(f, "typedConfig");
      if (Get(tc, "routeConfig").is_object())
        return DescribeInlineRoutes(Get(tc, "routeConfig"));
      if (!Str(Get(tc, "rds"), "routeConfigName").empty())
        return "Route: " + Str(Get(tc, "rds"), "routeConfigName");
      return "HTTP";
    }
    if (Str(f, "name") == kTcpProxy) {
      const std::string c = TcpCluster(f);
      if (c == "BlackHoleCluster")
        continue;
      return c.find("Cluster") != std::string::npos ? c : "Cluster: " + c;
    }
  }
  return "Non-HTTP/Non-TCP";
}

std::string JoinStrings(const Json& arr, const char* sep) {
  std::vector<std::string> v;
  if (arr.is_array()) {
    for (const auto& x : arr)
      v.push_back(x.is_string() ? x.get<std::string>() : x.dump());
  }
  return fmt::format("{}", fmt::join(v, sep));
}

std::string DescribeChainMatch(const Json& m) {
  std::vector<std::string> d;
  if (const Json& sn = Get(m, "serverNames"); sn.is_array() && !sn.empty())
    d.push_back("SNI: " + JoinStrings(sn, ","));
  if (!Str(m, "transportProtocol").empty())
    d.push_back("Trans: " + Str(m, "transportProtocol"));
  if (const Json& ap = Get(m, "applicationProtocols"); ap.is_array() && !ap.empty()) {
    const std::string joined = JoinStrings(ap, ",");
    if (joined == "http/1.0,http/1.1,h2c")
      d.push_back("App: HTTP");
    else if (joined == "http/1.0,http/1.1,h2c,istio-http/1.0,istio-http/1.1,istio-h2")
      d.push_back("App: HTTP TLS");
    else if (joined == "istio,istio-http/1.0,istio-http/1.1,istio-h2")
      d.push_back("App: Istio HTTP Plain");
    else if (joined == "istio-peer-exchange,istio")
      d.push_back("App: TCP TLS");
    else
      d.push_back("App: " + joined);
  }
  std::string port;
  if (!Get(m, "destinationPort").is_null())
    port = fmt::format(":{}", U32(Get(m, "destinationPort")));
  if (const Json& pr = Get(m, "prefixRanges"); pr.is_array() && !pr.empty()) {
    std::vector<std::string> ranges;
    for (const auto& r : pr)
      ranges.push_back(fmt::format("{}/{}", Str(r, "addressPrefix"), U32(Get(r, "prefixLen"))));
    d.push_back(fmt::format("Addr: {}{}", fmt::join(ranges, ","), port));
  } else if (!port.empty()) {
    d.push_back("Addr: *" + port);
  }
  if (d.empty())
    return "ALL";
  return fmt::format("{}", fmt::join(d, "; "));
}

}  // namespace

Result<std::string> PrintListeners(const Json& dump, const ListenerFilter& f, Output out) {
  auto all = Section(dump, "listeners", "listeners");
  SLUICE_RETURN_IF_ERROR(all);
  std::vector<Json> listeners;
  for (const auto& l : *all) {
    if (!f.address.empty() && Lower(ListenerAddress(l)) != Lower(f.address))
      continue;
    if (f.port != 0 && ListenerPort(l) != f.port)
      continue;
    if (!f.type.empty() && Lower(ListenerType(l)) != Lower(f.type))
      continue;
    listeners.push_back(l);
  }
  if (listeners.empty()) {
    std::vector<std::string> given;
    if (!f.address.empty())
      given.push_back("--address " + f.address);
    if (f.port != 0)
      given.push_back(fmt::format("--port {}", f.port));
    if (!f.type.empty())
      given.push_back("--type " + f.type);
    return Fail(fmt::format("no listener matches {}", fmt::join(given, " ")));
  }
  std::stable_sort(listeners.begin(), listeners.end(), [](const Json& a, const Json& b) {
    return std::make_tuple(ListenerPort(a), ListenerAddress(a), ListenerType(a)) <
           std::make_tuple(ListenerPort(b), ListenerAddress(b), ListenerType(b));
  });
  if (out != Output::kShort)
    return Render(listeners, out);

  Table t(1);
  t.Row({"ADDRESSES", "PORT", "MATCH", "DESTINATION"});
  for (const auto& l : listeners) {
    std::vector<std::pair<std::string, std::string>> rows;  // match, destination
    for (const auto& fc : FilterChains(l))
      rows.emplace_back(DescribeChainMatch(Get(fc, "filterChainMatch")),
                        FilterDestination(Get(fc, "filters")));
    std::stable_sort(rows.begin(), rows.end(),
                     [](const auto& a, const auto& b) { return a.second > b.second; });
    for (const auto& [match, dest] : rows)
      t.Row({ListenerAddresses(l), std::to_string(ListenerPort(l)), match, dest});
  }
  return t.Render();
}

}  // namespace sluice::inspect
