// Which endpoint a request goes to: smooth weighted round robin, EDS health status
// (unhealthy/draining/timeout never picked, degraded only as a fallback), and DNS
// clusters whose host does not resolve (no endpoints, 503 UH, the rest of the config
// unaffected). Every answer is counted at the upstream that gave it.
#include <catch2/catch.hpp>
#include <map>

#include "harness.h"
#include "test_upstream.h"

using namespace sluice::testing;

namespace {

std::vector<std::unique_ptr<TestUpstream>> Upstreams(const std::vector<std::string>& names) {
  std::vector<std::unique_ptr<TestUpstream>> v;
  for (const auto& n : names)
    v.push_back(std::make_unique<TestUpstream>(TestUpstream::Options{.name = n, .record = false}));
  return v;
}

Json LbEndpoint(uint16_t port, const std::string& health = "", uint32_t weight = 0) {
  Json e = {
      {"endpoint",
       {{"address", {{"socket_address", {{"address", "127.0.0.1"}, {"port_value", port}}}}}}}};
  if (!health.empty())
    e["health_status"] = health;
  if (weight > 0)
    e["load_balancing_weight"] = weight;
  return e;
}

// An EDS cluster and its ClusterLoadAssignment (as istiod sends them: two resources).
void AddEdsCluster(Json& doc, const std::string& name, const Json& lb_endpoints) {
  doc["clusters"].push_back({{"name", name},
                             {"type", "EDS"},
                             {"eds_cluster_config", {{"eds_config", {{"ads", Json::object()}}}}},
                             {"connect_timeout", "1s"},
                             {"lb_policy", "ROUND_ROBIN"}});
  doc["endpoints"].push_back(
      {{"cluster_name", name}, {"endpoints", Json::array({{{"lb_endpoints", lb_endpoints}}})}});
}

Json PrefixRoute(const std::string& prefix, const std::string& cluster) {
  return {{"name", cluster}, {"match", {{"prefix", prefix}}}, {"route", {{"cluster", cluster}}}};
}

}  // namespace

TEST_CASE("weighted round robin is smooth: exact shares over a period, no bursts", "[proxy][lb]") {
  auto ups = Upstreams({"a", "b", "c"});
  Json cluster = StaticCluster("wrr", {});
  cluster["load_assignment"]["endpoints"] = Json::array(
      {{{"lb_endpoints", {LbEndpoint(ups[0]->port(), "", 2), LbEndpoint(ups[1]->port(), "", 3)}}}});
  // Weights 100:100:200 reduce to 1:1:2.
  Json three = StaticCluster("three", {});
  three["load_assignment"]["endpoints"] =
      Json::array({{{"lb_endpoints",
                     {LbEndpoint(ups[0]->port(), "", 100), LbEndpoint(ups[1]->port(), "", 100),
                      LbEndpoint(ups[2]->port(), "", 200)}}}});
  Json doc = {{"listeners",
               {HttpListener("http",
                             RouteConfig("r", Json::array({PrefixRoute("/wrr", "wrr"),
                                                           PrefixRoute("/three", "three")})),
                             false)}},
              {"clusters", {cluster, three}}};
  auto p = StartProxy(doc);
  REQUIRE(p->error == "");
  Client client(p->Port());

  // 2:3 over 500 requests: exactly 200 and 300, and never the same endpoint more than
  // twice in a row (a schedule in runs, a a b b b, would give three b's in a row).
  std::string seq;
  for (int i = 0; i < 500; ++i) {
    Resp r = client.Get("h", "/wrr");
    REQUIRE(r.status == 200);
    seq += r.Header("x-upstream");
  }
  CHECK(std::count(seq.begin(), seq.end(), 'a') == 200);
  CHECK(std::count(seq.begin(), seq.end(), 'b') == 300);
  INFO(seq.substr(0, 40));
  CHECK(seq.find("aa") == std::string::npos);
  CHECK(seq.find("bbb") == std::string::npos);
  // Every window of one period (5 picks) holds exactly two a's.
  for (std::size_t i = 0; i + 5 <= seq.size(); ++i)
    REQUIRE(std::count(seq.begin() + static_cast<long>(i), seq.begin() + static_cast<long>(i) + 5,
                       'a') == 2);

  // 1:1:2: every period of four has c twice, never back to back within the period.
  seq.clear();
  for (int i = 0; i < 400; ++i)
    seq += client.Get("h", "/three").Header("x-upstream");
  CHECK(std::count(seq.begin(), seq.end(), 'a') == 100);
  CHECK(std::count(seq.begin(), seq.end(), 'b') == 100);
  CHECK(std::count(seq.begin(), seq.end(), 'c') == 200);
  CHECK(seq.find("ccc") == std::string::npos);
  CHECK(seq.find("aa") == std::string::npos);
  CHECK(seq.find("bb") == std::string::npos);
}

TEST_CASE("EDS health: unhealthy, draining and timeout endpoints are never picked",
          "[proxy][lb][eds]") {
  auto ups = Upstreams({"healthy", "unknown", "unhealthy", "draining", "timeout", "degraded",
                        "deg-only", "sick1", "sick2"});
  auto port = [&](int i) { return ups[static_cast<std::size_t>(i)]->port(); };
  Json doc = {{"listeners",
               {HttpListener("http",
                             RouteConfig("r", Json::array({PrefixRoute("/mixed", "mixed"),
                                                           PrefixRoute("/degraded", "degraded"),
                                                           PrefixRoute("/none", "none")})),
                             true)}},
              {"clusters", Json::array()},
              {"endpoints", Json::array()}};
  AddEdsCluster(doc, "mixed",
                {LbEndpoint(port(0), "HEALTHY"), LbEndpoint(port(1)),
                 LbEndpoint(port(2), "UNHEALTHY"), LbEndpoint(port(3), "DRAINING"),
                 LbEndpoint(port(4), "TIMEOUT"), LbEndpoint(port(5), "DEGRADED")});
  // Only degraded and unhealthy endpoints: the degraded one takes the traffic.
  AddEdsCluster(doc, "degraded",
                {LbEndpoint(port(6), "DEGRADED"), LbEndpoint(port(7), "UNHEALTHY")});
  // None usable: 503 UH, not a request to an unhealthy endpoint.
  AddEdsCluster(doc, "none", {LbEndpoint(port(7), "UNHEALTHY"), LbEndpoint(port(8), "DRAINING")});
  auto p = StartProxy(doc);
  REQUIRE(p->error == "");
  Client client(p->Port());

  std::map<std::string, int> seen;
  for (int i = 0; i < 60; ++i) {
    Resp r = client.Get("h", "/mixed");
    REQUIRE(r.status == 200);
    ++seen[r.Header("x-upstream")];
  }
  // HEALTHY and UNKNOWN share the traffic; DEGRADED is not used while they are there.
  CHECK(seen["healthy"] == 30);
  CHECK(seen["unknown"] == 30);
  for (int i = 2; i <= 5; ++i)
    CHECK(ups[static_cast<std::size_t>(i)]->count() == 0);

  for (int i = 0; i < 10; ++i)
    CHECK(client.Get("h", "/degraded").Header("x-upstream") == "deg-only");
  CHECK(ups[7]->count() == 0);

  Resp r = client.Get("h", "/none");
  CHECK(r.status == 503);
  CHECK(r.body == "no healthy upstream");
  CHECK(ups[7]->count() == 0);
  CHECK(ups[8]->count() == 0);
  auto lines = p->LogLines(71);
  REQUIRE(lines.size() == 71);
  CHECK(lines.back().find("\" 503 UH no_healthy_upstream ") != std::string::npos);
}

TEST_CASE("a DNS cluster whose host does not resolve answers 503 UH, and the config still loads",
          "[proxy][config][dns]") {
  TestUpstream good({.name = "good", .record = false});
  Json bad = StaticCluster("external", {});
  bad["type"] = "STRICT_DNS";
  // RFC 6761: .invalid names never resolve.
  bad["load_assignment"]["endpoints"] = Json::array(
      {{{"lb_endpoints",
         {{{"endpoint",
            {{"address",
              {{"socket_address",
                {{"address", "no-such-service.invalid"}, {"port_value", 443}}}}}}}}}}}});
  Json logical = bad;
  logical["name"] = "logical";
  logical["type"] = "LOGICAL_DNS";
  logical["load_assignment"]["cluster_name"] = "logical";
  // A DNS cluster with one resolvable and one unresolvable host keeps the good one.
  Json mixed = bad;
  mixed["name"] = "mixed";
  mixed["load_assignment"]["cluster_name"] = "mixed";
  mixed["load_assignment"]["endpoints"][0]["lb_endpoints"].push_back(
      {{"endpoint",
        {{"address",
          {{"socket_address", {{"address", "localhost"}, {"port_value", good.port()}}}}}}}});
  Json doc = {{"listeners",
               {HttpListener("http",
                             RouteConfig("r", Json::array({PrefixRoute("/ext", "external"),
                                                           PrefixRoute("/logical", "logical"),
                                                           PrefixRoute("/mixed", "mixed"),
                                                           PrefixRoute("/", "good")})),
                             false)}},
              {"clusters", {StaticCluster("good", {good.port()}), bad, logical, mixed}}};

  auto cfg = CompileJson(doc);
  REQUIRE(cfg);
  // The warning names the cluster and the host.
  REQUIRE((*cfg)->warnings.size() == 3);
  CHECK((*cfg)->warnings[0].find("cluster external") != std::string::npos);
  CHECK((*cfg)->warnings[0].find("no-such-service.invalid") != std::string::npos);

  auto p = StartProxy(doc);
  REQUIRE(p->error == "");
  Client client(p->Port());
  CHECK(client.Get("h", "/other").Header("x-upstream") == "good");
  Resp r = client.Get("h", "/ext");
  CHECK(r.status == 503);
  CHECK(r.body == "no healthy upstream");
  CHECK(client.Get("h", "/logical").status == 503);
  for (int i = 0; i < 4; ++i) {
    Resp m = client.Get("h", "/mixed");
    CHECK(m.status == 200);
    CHECK(m.Header("x-upstream") == "good");
  }
  CHECK(good.count() == 5);
}
