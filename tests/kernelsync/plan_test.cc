// Plan(): which services the kernel serves and which go to the in-pod proxy, from the
// Envoy resources a sidecar receives.
#include "sluice/kernelsync/plan.h"

#include "fixtures.h"

using namespace sluice;
using namespace sluice::test;
using envoy::config::cluster::v3::Cluster;
using envoy::config::endpoint::v3::ClusterLoadAssignment;
using envoy::config::listener::v3::Listener;
using envoy::config::route::v3::RouteConfiguration;

namespace {

const std::string kHello = "helloworld.default.svc.cluster.local";
const std::string kV1 = "outbound|5000|v1|" + kHello;
const std::string kV2 = "outbound|5000|v2|" + kHello;

// A helloworld-like HTTP service on 10.96.0.50:5000 with subsets v1 and v2, whose one
// route is `route_json` (the "route" object of the single catch-all route).
sluice::xds::ResourceSet Hello(const std::string& route_json, const std::string& extra_route = "") {
  sluice::xds::ResourceSet rs;
  rs.Add(FromJson<Cluster>(Eds(kV1)));
  rs.Add(FromJson<Cluster>(Eds(kV2, "ROUND_ROBIN")));
  rs.Add(FromJson<ClusterLoadAssignment>(Cla(kV1, {"10.1.0.11:5000", "10.1.0.12:5000 UNHEALTHY"})));
  rs.Add(FromJson<ClusterLoadAssignment>(Cla(kV2, {"10.1.0.21:5000"})));
  rs.Add(FromJson<Listener>(HttpListener(5000)));
  rs.Add(FromJson<Listener>(VirtualOutbound("PassthroughCluster")));
  rs.Add(FromJson<RouteConfiguration>(
      R"({"name":"5000","virtualHosts":[{"name":")" + kHello + R"(:5000","domains":[")" + kHello +
      R"(","helloworld","10.96.0.50","10.96.0.50:5000"],"routes":[)" + extra_route +
      R"({"match":{"prefix":"/"},"route":)" + route_json +
      R"(}]},{"name":"allow_any","domains":["*"],"routes":[{"match":{"prefix":"/"},"route":{"cluster":"PassthroughCluster"}}]}]})"));
  return rs;
}

const std::string kWeighted = R"({"weightedClusters":{"clusters":[{"name":")" + kV1 +
                              R"(","weight":25},{"name":")" + kV2 +
                              R"(","weight":75}]},"timeout":"0s",)" + kDefaultRetry + "}";

kernelsync::KernelPlan MustPlan(const sluice::xds::ResourceSet& rs) {
  auto plan = kernelsync::Plan(config::Snapshot::FromResourceSet(rs));
  INFO((plan ? "" : plan.error().message));
  REQUIRE(plan);
  return *plan;
}

}  // namespace

TEST_CASE("a weighted catch-all HTTP route is served in the kernel with its clusters") {
  auto plan = MustPlan(Hello(kWeighted));
  REQUIRE(plan.services.size() == 1);
  const auto& s = plan.services[0];
  CHECK(s.name == kHello + ":5000");
  CHECK_FALSE(s.redirect_to_proxy);
  REQUIRE(s.vips.size() == 1);
  CHECK(s.vips[0].ToString() == "10.96.0.50");
  CHECK(s.port == 5000);
  REQUIRE(s.clusters.size() == 2);
  CHECK(s.clusters[0].name == kV1);
  CHECK(s.clusters[0].weight == 25);
  CHECK(s.clusters[0].lb == LbPolicy::kLeastRequest);
  REQUIRE(s.clusters[0].endpoints.size() == 1);  // the UNHEALTHY one is left out
  CHECK(s.clusters[0].endpoints[0].address.ToString() == "10.1.0.11:5000");
  CHECK(s.clusters[1].weight == 75);
  CHECK(s.clusters[1].lb == LbPolicy::kRoundRobin);
  CHECK_FALSE(plan.registry_only);
  CHECK(plan.l7_reasons.empty());
}

TEST_CASE("what needs a request read sends the service to the in-pod proxy, with the reason") {
  struct Case {
    const char* what;
    std::string route, extra, reason;
  };
  const std::string to_v1 = R"({"cluster":")" + kV1 + R"(")";
  const Case cases[] = {
      {"header match", to_v1 + "}",
       R"({"match":{"prefix":"/","headers":[{"name":"end-user","stringMatch":{"exact":"jason"}}]},"route":)" +
           to_v1 + "}},",
       "2 routes"},
      {"mirroring",
       to_v1 + R"(,"requestMirrorPolicies":[{"cluster":")" + kV2 +
           R"(","runtimeFraction":{"defaultValue":{"numerator":1000000,"denominator":"MILLION"}}}]})",
       "", "mirroring"},
      {"explicit retries", to_v1 + R"(,"retryPolicy":{"retryOn":"5xx","numRetries":3}})", "",
       "retries"},
      {"timeout", to_v1 + R"(,"timeout":"0.5s"})", "", "timeout"},
      {"rewrite", to_v1 + R"(,"prefixRewrite":"/v2"})", "", "rewrites"},
      {"header hash", to_v1 + R"(,"hashPolicy":[{"header":{"headerName":"x-user"}}]})", "",
       "hashing"},
  };
  for (const auto& c : cases) {
    INFO(c.what);
    auto plan = MustPlan(Hello(c.route, c.extra));
    REQUIRE(plan.services.size() == 1);
    CHECK(plan.services[0].redirect_to_proxy);
    CHECK(plan.services[0].vips[0].ToString() == "10.96.0.50");
    REQUIRE(plan.l7_reasons.size() == 1);
    CHECK_THAT(plan.l7_reasons.begin()->second, Catch::Contains(c.reason));
  }
  // Istio's implicit default retry policy alone keeps the service in the kernel.
  auto plain = MustPlan(Hello(to_v1 + "," + kDefaultRetry + "}"));
  CHECK_FALSE(plain.services[0].redirect_to_proxy);
}

TEST_CASE("HTTP hosts without a VIP make the port a catch-all for the proxy") {
  auto rs = Hello(kWeighted);
  const std::string cnn = "outbound|80||edition.cnn.com";
  Cluster dns = FromJson<Cluster>(R"({"name":")" + cnn +
                                  R"(","type":"STRICT_DNS","lbPolicy":"LEAST_REQUEST"})");
  rs.Add(dns);
  rs.Add(FromJson<Listener>(HttpListener(80)));
  rs.Add(FromJson<RouteConfiguration>(
      R"({"name":"80","virtualHosts":[{"name":"edition.cnn.com:80","domains":["edition.cnn.com"],"routes":[{"match":{"prefix":"/"},"route":{"cluster":")" +
      cnn + R"("}}]}]})"));
  auto plan = MustPlan(rs);
  const ServiceSpec* catch_all = nullptr;
  for (const auto& s : plan.services)
    if (s.port == 80)
      catch_all = &s;
  REQUIRE(catch_all);
  CHECK(catch_all->redirect_to_proxy);
  REQUIRE(catch_all->vips.size() == 2);
  CHECK(catch_all->vips[0].ToString() == "0.0.0.0");
  CHECK(catch_all->vips[1].ToString() == "::");
}

TEST_CASE("TLS passthrough by SNI goes to the proxy, TCP services stay in the kernel") {
  sluice::xds::ResourceSet rs;
  rs.Add(FromJson<Listener>(
      R"({"name":"0.0.0.0_443","address":{"socketAddress":{"address":"0.0.0.0","portValue":443}},"filterChains":[{"filterChainMatch":{"serverNames":["edition.cnn.com"]},"filters":[{"name":"envoy.filters.network.tcp_proxy","typedConfig":{"@type":"type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy","statPrefix":"x","cluster":"outbound|443||edition.cnn.com"}}]}]})"));
  const std::string db = "outbound|3306||mysql.default.svc.cluster.local";
  rs.Add(FromJson<Cluster>(Eds(db, "MAGLEV")));
  rs.Add(FromJson<ClusterLoadAssignment>(Cla(db, {"10.1.0.31:3306", "10.1.0.32:3306"})));
  rs.Add(FromJson<Listener>(TcpListener("10.96.0.60", 3306, db)));
  rs.Add(FromJson<Listener>(VirtualOutbound("BlackHoleCluster")));
  auto plan = MustPlan(rs);
  REQUIRE(plan.services.size() == 2);
  std::map<uint16_t, const ServiceSpec*> by_port;
  for (const auto& s : plan.services)
    by_port[s.port] = &s;
  REQUIRE(by_port.contains(443));
  CHECK(by_port[443]->redirect_to_proxy);
  CHECK(by_port[443]->vips.size() == 2);
  REQUIRE(by_port.contains(3306));
  CHECK_FALSE(by_port[3306]->redirect_to_proxy);
  CHECK(by_port[3306]->vips[0].ToString() == "10.96.0.60");
  CHECK(by_port[3306]->clusters[0].lb == LbPolicy::kMaglev);
  CHECK(by_port[3306]->clusters[0].endpoints.size() == 2);
  CHECK(plan.registry_only);  // virtualOutbound -> BlackHoleCluster
}

TEST_CASE("a cluster the kernel cannot resolve sends its service to the proxy") {
  auto rs = Hello(R"({"cluster":"outbound|5000||dns.example.com"})");
  rs.Add(FromJson<Cluster>(
      R"({"name":"outbound|5000||dns.example.com","type":"STRICT_DNS","lbPolicy":"ROUND_ROBIN"})"));
  auto plan = MustPlan(rs);
  REQUIRE(plan.services.size() == 1);
  CHECK(plan.services[0].redirect_to_proxy);
  CHECK_THAT(plan.l7_reasons.at(plan.services[0].name), Catch::Contains("STRICT_DNS"));
}

TEST_CASE("long names are shortened to the kernel's 63 bytes, stably and distinctly") {
  const std::string a(90, 'a'), b = std::string(89, 'a') + "b";
  auto ka = kernelsync::KernelName(a), kb = kernelsync::KernelName(b);
  CHECK(ka.size() < 64);
  CHECK(ka == kernelsync::KernelName(a));
  CHECK(ka != kb);
  CHECK(kernelsync::KernelName("short") == "short");
}
