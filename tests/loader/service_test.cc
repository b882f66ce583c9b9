// Addresses, policies and ServiceSpec validation: what the kernel-sync API accepts, and
// the messages it gives for what it refuses.
#include <catch2/catch.hpp>

#include "sluice/loader/ip.h"
#include "sluice/loader/service.h"

using namespace sluice;

namespace {
ServiceSpec Good() {
  ServiceSpec s;
  s.name = "reviews.default.svc.cluster.local:9080";
  s.vips = {*IpAddress::Parse("10.96.0.10")};
  s.port = 9080;
  ClusterSpec c;
  c.name = "outbound|9080|v1|reviews.default.svc.cluster.local";
  c.weight = 25;
  c.endpoints.push_back({*SocketAddress::Parse("10.1.0.5:9080"), 1, {{"version", "v1"}}});
  s.clusters.push_back(c);
  return s;
}
}  // namespace

TEST_CASE("IP addresses parse and print in both families") {
  auto v4 = IpAddress::Parse("10.96.0.10");
  REQUIRE(v4);
  CHECK(v4->family == 4);
  CHECK(v4->bytes[0] == 10);
  CHECK(v4->bytes[3] == 10);
  CHECK(v4->ToString() == "10.96.0.10");

  auto v6 = IpAddress::Parse("fd00::a");
  REQUIRE(v6);
  CHECK(v6->family == 6);
  CHECK(v6->bytes[15] == 0xa);
  CHECK(v6->ToString() == "fd00::a");

  auto bad = IpAddress::Parse("10.96.0.300");
  REQUIRE_FALSE(bad);
  CHECK_THAT(bad.error().message, Catch::Contains("'10.96.0.300'"));
}

TEST_CASE("socket addresses parse with ports, IPv6 in brackets") {
  auto a = SocketAddress::Parse("10.1.0.5:9080");
  REQUIRE(a);
  CHECK(a->port == 9080);
  CHECK(a->ToString() == "10.1.0.5:9080");

  auto b = SocketAddress::Parse("[fd00::5]:443");
  REQUIRE(b);
  CHECK(b->ip.family == 6);
  CHECK(b->ToString() == "[fd00::5]:443");

  CHECK_FALSE(SocketAddress::Parse("10.1.0.5"));
  CHECK_FALSE(SocketAddress::Parse("10.1.0.5:0"));
  CHECK_FALSE(SocketAddress::Parse("10.1.0.5:65536"));
  CHECK_FALSE(SocketAddress::Parse("10.1.0.5:80x"));
  CHECK_FALSE(SocketAddress::Parse("[fd00::5:443"));
}

TEST_CASE("load-balancing policies use Envoy's names and numbers") {
  CHECK(*ParseLbPolicy("ROUND_ROBIN") == LbPolicy::kRoundRobin);
  CHECK(*ParseLbPolicy("LEAST_REQUEST") == LbPolicy::kLeastRequest);
  CHECK(*ParseLbPolicy("RING_HASH") == LbPolicy::kRingHash);
  CHECK(*ParseLbPolicy("RANDOM") == LbPolicy::kRandom);
  CHECK(*ParseLbPolicy("MAGLEV") == LbPolicy::kMaglev);
  CHECK(static_cast<int>(LbPolicy::kMaglev) == 5);  // Cluster.LbPolicy.MAGLEV
  CHECK(LbPolicyName(LbPolicy::kLeastRequest) == "LEAST_REQUEST");
  auto bad = ParseLbPolicy("FASTEST");
  REQUIRE_FALSE(bad);
  CHECK_THAT(bad.error().message, Catch::Contains("FASTEST"));
}

TEST_CASE("a well-formed service validates") {
  CHECK(Validate(Good()));
}

TEST_CASE("validation names the service and the field it refuses") {
  struct Case {
    const char* what;
    void (*mutate)(ServiceSpec&);
    const char* message;
  };
  const Case cases[] = {
      {"no name", [](ServiceSpec& s) { s.name.clear(); }, "name"},
      {"long name", [](ServiceSpec& s) { s.name = std::string(80, 'x'); }, "name"},
      {"no VIP", [](ServiceSpec& s) { s.vips.clear(); }, "vips"},
      {"duplicate VIP", [](ServiceSpec& s) { s.vips.push_back(s.vips[0]); }, "vips[1]"},
      {"port 0", [](ServiceSpec& s) { s.port = 0; }, "port"},
      {"no cluster", [](ServiceSpec& s) { s.clusters.clear(); }, "clusters"},
      {"17 clusters", [](ServiceSpec& s) { s.clusters.resize(17, s.clusters[0]); }, "clusters"},
      {"all weights zero", [](ServiceSpec& s) { s.clusters[0].weight = 0; }, "weights"},
      {"endpoint weight 0", [](ServiceSpec& s) { s.clusters[0].endpoints[0].weight = 0; },
       "endpoints[0].weight"},
  };
  for (const auto& c : cases) {
    INFO(c.what);
    auto spec = Good();
    c.mutate(spec);
    auto r = Validate(spec);
    REQUIRE_FALSE(r);
    CHECK_THAT(r.error().message, Catch::Contains(c.message));
    if (!spec.name.empty() && spec.name.size() < 64)
      CHECK_THAT(r.error().message, Catch::Contains(spec.name));
  }
}

TEST_CASE("a cluster without endpoints is valid: the kernel refuses its connects") {
  auto spec = Good();
  spec.clusters[0].endpoints.clear();
  CHECK(Validate(spec));
}
