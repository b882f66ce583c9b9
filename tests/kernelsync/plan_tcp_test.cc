// Plan() on TCP services and listeners in istiod's shapes: per-VIP listeners, wildcard
// listeners whose filter chains match destination prefixes, several services on one
// port, sniffed ports, and where REGISTRY_ONLY hides in virtualOutbound.
#include "fixtures.h"
#include "sluice/kernelsync/plan.h"

using namespace sluice;
using namespace sluice::test;
using envoy::config::cluster::v3::Cluster;
using envoy::config::endpoint::v3::ClusterLoadAssignment;
using envoy::config::listener::v3::Listener;
using envoy::config::route::v3::RouteConfiguration;

namespace {

const std::string kTcpProxy =
    R"("name":"envoy.filters.network.tcp_proxy","typedConfig":{"@type":"type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy","statPrefix":"s",)";

// A tcp_proxy filter chain to `cluster` (or weighted "a:25,b:75"), matched on
// `prefixes` ("10.96.0.5/32", ...; none: any destination) and `extra` match fields.
std::string Chain(const std::vector<std::string>& prefixes, const std::string& cluster,
                  const std::string& extra = "") {
  std::string ranges;
  for (const auto& p : prefixes) {
    auto slash = p.find('/');
    ranges += std::string(ranges.empty() ? "" : ",") + R"({"addressPrefix":")" +
              p.substr(0, slash) + R"(","prefixLen":)" + p.substr(slash + 1) + "}";
  }
  std::string target;
  if (cluster.find(':') != std::string::npos && cluster.find('|') == std::string::npos) {
    std::string list;
    std::size_t at = 0;
    while (at < cluster.size()) {
      auto comma = cluster.find(',', at);
      std::string item = cluster.substr(at, comma == std::string::npos ? comma : comma - at);
      auto colon = item.find(':');
      list += std::string(list.empty() ? "" : ",") + R"({"name":")" + item.substr(0, colon) +
              R"(","weight":)" + item.substr(colon + 1) + "}";
      if (comma == std::string::npos)
        break;
      at = comma + 1;
    }
    target = R"("weightedClusters":{"clusters":[)" + list + "]}";
  } else {
    target = R"("cluster":")" + cluster + R"(")";
  }
  std::string match = ranges.empty() ? "" : R"("prefixRanges":[)" + ranges + "]";
  if (!extra.empty())
    match += (match.empty() ? "" : ",") + extra;
  return "{" + (match.empty() ? "" : R"("filterChainMatch":{)" + match + "},") + R"("filters":[{)" +
         kTcpProxy + target + "}}]}";
}

std::string ListenerJson(const std::string& name, const std::string& address, int port,
                         const std::vector<std::string>& chains,
                         const std::string& default_chain = "") {
  std::string list;
  for (const auto& c : chains)
    list += (list.empty() ? "" : ",") + c;
  return R"({"name":")" + name + R"(","address":{"socketAddress":{"address":")" + address +
         R"(","portValue":)" + std::to_string(port) +
         R"(}},"trafficDirection":"OUTBOUND","bindToPort":false,"filterChains":[)" + list + "]" +
         (default_chain.empty() ? "" : R"(,"defaultFilterChain":)" + default_chain) + "}";
}

// Clusters a, b, c (EDS, ROUND_ROBIN) with one endpoint each, and virtualOutbound.
sluice::xds::ResourceSet Base(const std::string& passthrough = "PassthroughCluster") {
  sluice::xds::ResourceSet rs;
  int host = 1;
  for (const char* c : {"a", "b", "c"}) {
    rs.Add(FromJson<Cluster>(Eds(c, "ROUND_ROBIN")));
    rs.Add(FromJson<ClusterLoadAssignment>(Cla(c, {"10.1.0." + std::to_string(host++) + ":3306"})));
  }
  rs.Add(FromJson<Listener>(VirtualOutbound(passthrough)));
  return rs;
}

kernelsync::KernelPlan MustPlan(const sluice::xds::ResourceSet& rs) {
  auto plan = kernelsync::Plan(config::Snapshot::FromResourceSet(rs));
  INFO((plan ? "" : plan.error().message));
  REQUIRE(plan);
  return *plan;
}

const ServiceSpec* Find(const kernelsync::KernelPlan& plan, const std::string& vip, int port) {
  for (const auto& s : plan.services) {
    for (const auto& v : s.vips)
      if (v.ToString() == vip && s.port == port)
        return &s;
  }
  return nullptr;
}

std::vector<std::string> ClusterNames(const ServiceSpec& s) {
  std::vector<std::string> out;
  for (const auto& c : s.clusters)
    out.push_back(c.name + ":" + std::to_string(c.weight));
  return out;
}

}  // namespace

TEST_CASE("TCP: a per-VIP listener is a kernel service, weights and policy included") {
  auto rs = Base();
  rs.Add(FromJson<Listener>(
      ListenerJson("10.96.0.20_3306", "10.96.0.20", 3306, {Chain({}, "a:20,b:30,c:50")})));
  auto plan = MustPlan(rs);
  const ServiceSpec* s = Find(plan, "10.96.0.20", 3306);
  REQUIRE(s);
  CHECK(s->name == "10.96.0.20_3306");
  CHECK_FALSE(s->redirect_to_proxy);
  CHECK(ClusterNames(*s) == std::vector<std::string>{"a:20", "b:30", "c:50"});
  CHECK(s->clusters[0].lb == LbPolicy::kRoundRobin);
}

TEST_CASE("TCP: a wildcard listener's chains on host prefixes are kernel services, each its own") {
  // Several services on one port, told apart by destination (istiod's shape for
  // addresses given as CIDRs, and the local translator's for services without VIPs).
  auto rs = Base();
  rs.Add(FromJson<Listener>(
      ListenerJson("0.0.0.0_3306", "0.0.0.0", 3306,
                   {Chain({"10.96.0.21/32"}, "a"), Chain({"10.96.0.22/32", "fd96::22/128"}, "b")},
                   Chain({}, "PassthroughCluster"))));
  auto plan = MustPlan(rs);
  REQUIRE(plan.services.size() == 3);
  const ServiceSpec* a = Find(plan, "10.96.0.21", 3306);
  const ServiceSpec* b = Find(plan, "10.96.0.22", 3306);
  const ServiceSpec* b6 = Find(plan, "fd96::22", 3306);
  REQUIRE(a);
  REQUIRE(b);
  REQUIRE(b6);
  CHECK(ClusterNames(*a) == std::vector<std::string>{"a:1"});
  CHECK(ClusterNames(*b) == std::vector<std::string>{"b:1"});
  CHECK(ClusterNames(*b6) == std::vector<std::string>{"b:1"});
  CHECK(a->name == "10.96.0.21_3306");
  CHECK_FALSE(a->redirect_to_proxy);
  // The passthrough default chain plans nothing: unknown destinations pass through.
  CHECK(Find(plan, "0.0.0.0", 3306) == nullptr);
}

TEST_CASE("TCP: the most specific prefix wins, and a range makes the port the proxy's") {
  auto rs = Base();
  rs.Add(FromJson<Listener>(
      ListenerJson("0.0.0.0_3306", "0.0.0.0", 3306,
                   {Chain({"10.96.0.0/24"}, "a"), Chain({"10.96.0.30/32"}, "b")})));
  auto plan = MustPlan(rs);
  const ServiceSpec* b = Find(plan, "10.96.0.30", 3306);
  REQUIRE(b);
  CHECK_FALSE(b->redirect_to_proxy);
  CHECK(ClusterNames(*b) == std::vector<std::string>{"b:1"});
  const ServiceSpec* range = Find(plan, "0.0.0.0", 3306);
  REQUIRE(range);
  CHECK(range->redirect_to_proxy);
  CHECK(range->l7_reason == L7Reason::kCidr);
  REQUIRE(plan.l7_reasons.size() == 1);
  CHECK(plan.l7_reasons.at("0.0.0.0_3306") == "destinations in the range 10.96.0.0/24");
}

TEST_CASE("TCP: a listener on the exact address wins over a wildcard chain for it") {
  auto rs = Base();
  rs.Add(FromJson<Listener>(
      ListenerJson("0.0.0.0_3306", "0.0.0.0", 3306, {Chain({"10.96.0.40/32"}, "a")})));
  rs.Add(FromJson<Listener>(ListenerJson("10.96.0.40_3306", "10.96.0.40", 3306, {Chain({}, "b")})));
  auto plan = MustPlan(rs);
  const ServiceSpec* s = Find(plan, "10.96.0.40", 3306);
  REQUIRE(s);
  CHECK(ClusterNames(*s) == std::vector<std::string>{"b:1"});
}

TEST_CASE("TCP: destinationSubnets chains on a VIP listener: the catch-all chain serves the VIP") {
  // A VirtualService tcp route with destinationSubnets elsewhere does not change where the
  // VIP's own connections go.
  auto rs = Base();
  rs.Add(FromJson<Listener>(ListenerJson("10.96.0.50_3306", "10.96.0.50", 3306,
                                         {Chain({"10.200.0.0/16"}, "a"), Chain({}, "c")})));
  auto plan = MustPlan(rs);
  const ServiceSpec* s = Find(plan, "10.96.0.50", 3306);
  REQUIRE(s);
  CHECK(ClusterNames(*s) == std::vector<std::string>{"c:1"});
}

TEST_CASE("TCP: chains told apart by the client go to the proxy, with that reason") {
  auto rs = Base();
  rs.Add(FromJson<Listener>(ListenerJson(
      "10.96.0.60_3306", "10.96.0.60", 3306,
      {Chain({}, "a", R"("sourcePrefixRanges":[{"addressPrefix":"10.211.0.0","prefixLen":24}])"),
       Chain({}, "b")})));
  auto plan = MustPlan(rs);
  const ServiceSpec* s = Find(plan, "10.96.0.60", 3306);
  REQUIRE(s);
  CHECK(s->redirect_to_proxy);
  CHECK(s->l7_reason == L7Reason::kBySource);
}

TEST_CASE("sniffed ports: HTTP and TCP chains alike stay in the kernel, else the proxy") {
  // istiod's listener for a port without a protocol: an HTTP chain for http/1.1 and h2c
  // (raw_buffer), and a TCP chain for the rest.
  auto sniffed = [](const std::string& http_cluster, const std::string& tcp_cluster) {
    auto rs = Base();
    const std::string hcm =
        R"({"filterChainMatch":{"transportProtocol":"raw_buffer","applicationProtocols":["http/1.1","h2c"]},"filters":[{"name":"envoy.filters.network.http_connection_manager","typedConfig":{"@type":"type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager","statPrefix":"outbound_10.96.0.70_3306","rds":{"configSource":{"ads":{}},"routeConfigName":"sniffed"},"httpFilters":[{"name":"envoy.filters.http.router","typedConfig":{"@type":"type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]})";
    rs.Add(FromJson<Listener>(
        ListenerJson("10.96.0.70_3306", "10.96.0.70", 3306, {hcm, Chain({}, tcp_cluster)})));
    rs.Add(FromJson<RouteConfiguration>(
        R"({"name":"sniffed","virtualHosts":[{"name":"db:3306","domains":["*"],"routes":[{"match":{"prefix":"/"},"route":{"cluster":")" +
        http_cluster + R"(","timeout":"0s"}}]}]})"));
    return MustPlan(rs);
  };
  auto same = sniffed("a", "a");
  const ServiceSpec* s = Find(same, "10.96.0.70", 3306);
  REQUIRE(s);
  CHECK_FALSE(s->redirect_to_proxy);
  CHECK(ClusterNames(*s) == std::vector<std::string>{"a:1"});
  auto differ = sniffed("a", "b");
  s = Find(differ, "10.96.0.70", 3306);
  REQUIRE(s);
  CHECK(s->redirect_to_proxy);
  CHECK(s->l7_reason == L7Reason::kSniffed);
}

TEST_CASE("a VirtualService with tcp on one port and http on another: each port its own way") {
  auto rs = Base();
  rs.Add(FromJson<Listener>(
      ListenerJson("10.96.0.80_3306", "10.96.0.80", 3306, {Chain({}, "a:25,b:75")})));
  rs.Add(FromJson<Listener>(HttpListener(8080)));
  rs.Add(FromJson<RouteConfiguration>(
      R"({"name":"8080","virtualHosts":[{"name":"db.default.svc.cluster.local:8080","domains":["db.default.svc.cluster.local","10.96.0.80"],"routes":[{"match":{"prefix":"/admin"},"route":{"cluster":"c"}},{"match":{"prefix":"/"},"route":{"cluster":"a"}}]}]})"));
  auto plan = MustPlan(rs);
  const ServiceSpec* tcp = Find(plan, "10.96.0.80", 3306);
  const ServiceSpec* http = Find(plan, "10.96.0.80", 8080);
  REQUIRE(tcp);
  REQUIRE(http);
  CHECK_FALSE(tcp->redirect_to_proxy);
  CHECK(ClusterNames(*tcp) == std::vector<std::string>{"a:25", "b:75"});
  CHECK(http->redirect_to_proxy);
  CHECK(http->l7_reason == L7Reason::kHttpRouting);
}

TEST_CASE("REGISTRY_ONLY where istiod puts it: BlackHoleCluster in virtualOutbound's catch-all") {
  auto rs = Base();
  // istiod: filter chains on 0.0.0.0/0 and ::/0 ("virtualOutbound-catchall-tcp"), no
  // default chain.
  rs.Add(FromJson<Listener>(
      R"({"name":"virtualOutbound","address":{"socketAddress":{"address":"0.0.0.0","portValue":15001}},"useOriginalDst":true,"trafficDirection":"OUTBOUND","filterChains":[)" +
      Chain({"0.0.0.0/0"}, "BlackHoleCluster") + "," + Chain({"::/0"}, "BlackHoleCluster") + "]}"));
  CHECK(MustPlan(rs).registry_only);
  auto allow = Base();
  allow.Add(FromJson<Listener>(
      R"({"name":"virtualOutbound","address":{"socketAddress":{"address":"0.0.0.0","portValue":15001}},"useOriginalDst":true,"trafficDirection":"OUTBOUND","filterChains":[)" +
      Chain({"0.0.0.0/0"}, "PassthroughCluster") + "]}"));
  CHECK_FALSE(MustPlan(allow).registry_only);
  CHECK(MustPlan(Base("BlackHoleCluster")).registry_only);  // as a default chain too
}

TEST_CASE("TCP: a wildcard chain for any address to a real cluster makes the port the proxy's") {
  auto rs = Base();
  rs.Add(FromJson<Listener>(ListenerJson("0.0.0.0_27017", "0.0.0.0", 27017, {}, Chain({}, "a"))));
  auto plan = MustPlan(rs);
  const ServiceSpec* s = Find(plan, "0.0.0.0", 27017);
  REQUIRE(s);
  CHECK(s->redirect_to_proxy);
  CHECK(s->l7_reason == L7Reason::kCidr);
}
