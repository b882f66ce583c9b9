// ServiceSpec -> kernel records: what the loader writes into the pinned maps, and the
// selection arithmetic (bpf/include/sluice/lb.h) the connect hook runs over them.
#include "sluice/loader/encoding.h"

#include <catch2/catch.hpp>
#include <cstring>
#include <map>
#include <set>

#include "sluice/lb.h"

using namespace sluice;

namespace {
EndpointSpec Ep(const char* addr, uint32_t weight = 1) {
  return EndpointSpec{*SocketAddress::Parse(addr), weight, {}};
}

ServiceSpec DualStack() {
  ServiceSpec s;
  s.name = "web.default.svc.cluster.local:80";
  s.vips = {*IpAddress::Parse("10.96.0.20"), *IpAddress::Parse("fd00:96::20")};
  s.port = 80;
  ClusterSpec v1{"outbound|80|v1|web.default.svc.cluster.local",
                 25,
                 LbPolicy::kRoundRobin,
                 {Ep("10.1.0.1:8080", 2), Ep("10.1.0.2:8080"), Ep("[fd00:1::1]:8080")}};
  ClusterSpec v2{"outbound|80|v2|web.default.svc.cluster.local",
                 75,
                 LbPolicy::kMaglev,
                 {Ep("10.1.0.3:8080"), Ep("[fd00:1::3]:8080"), Ep("[fd00:1::4]:8080")}};
  s.clusters = {v1, v2};
  return s;
}
}  // namespace

TEST_CASE("a dual-stack service becomes one kernel service per family") {
  auto spec = DualStack();
  CHECK(Families(spec) == std::vector<uint8_t>{4, 6});

  auto v4 = Encode(spec, 4, 7, 3);
  REQUIRE(v4);
  CHECK(v4->record.id == 7);
  CHECK(v4->record.revision == 3);
  CHECK(std::string(v4->record.name) == spec.name);
  REQUIRE(v4->frontends.size() == 1);
  CHECK(v4->frontends[0].family == 4);
  CHECK(v4->frontends[0].port == 80);  // host order: readable in bpftool dumps
  CHECK(v4->frontends[0].protocol == 6);
  CHECK(v4->frontends[0].ip.v4[0] == 10);
  CHECK(v4->frontends[0].ip.v4[3] == 20);

  // Weighted clusters as cumulative ranges; relative weights kept as given.
  REQUIRE(v4->record.n_clusters == 2);
  CHECK(v4->record.total_weight == 100);
  CHECK(v4->record.clusters[0].weight_end == 25);
  CHECK(v4->record.clusters[1].weight_end == 100);
  CHECK(v4->record.clusters[0].lb_policy == SLUICE_LB_ROUND_ROBIN);
  CHECK(v4->record.clusters[1].lb_policy == SLUICE_LB_MAGLEV);

  // IPv4 backends only: 10.1.0.1 (weight 2) holds two round-robin slots, 10.1.0.2 one.
  REQUIRE(v4->clusters[0].slots.size() == 3);
  CHECK(v4->record.clusters[0].n_backends == 3);
  std::map<std::string, int> seen;
  for (const auto& b : v4->clusters[0].slots) {
    CHECK(b.ep.family == 4);
    seen[FromKernel(b.ep).ToString()]++;
  }
  CHECK(seen["10.1.0.1:8080"] == 2);
  CHECK(seen["10.1.0.2:8080"] == 1);
  CHECK_FALSE(v4->clusters[0].maglev);

  // The Maglev cluster: one slot per endpoint and a full table pointing into them.
  REQUIRE(v4->clusters[1].slots.size() == 1);
  REQUIRE(v4->clusters[1].maglev);
  CHECK(v4->clusters[1].maglev->size() == SLUICE_MAGLEV_SIZE);

  auto v6 = Encode(spec, 6, 8, 1);
  REQUIRE(v6);
  REQUIRE(v6->frontends.size() == 1);
  CHECK(v6->frontends[0].family == 6);
  CHECK(v6->clusters[0].slots.size() == 1);
  CHECK(FromKernel(v6->clusters[0].slots[0].ep).ToString() == "[fd00:1::1]:8080");
  REQUIRE(v6->clusters[1].maglev);
  std::set<uint16_t> used(v6->clusters[1].maglev->begin(), v6->clusters[1].maglev->end());
  CHECK(used == std::set<uint16_t>{0, 1});
}

TEST_CASE("a family without endpoints encodes an empty cluster") {
  ServiceSpec s;
  s.name = "v6only:80";
  s.vips = {*IpAddress::Parse("10.96.0.30")};
  s.port = 80;
  s.clusters = {{"c", 1, LbPolicy::kLeastRequest, {Ep("[fd00::1]:80")}}};
  auto enc = Encode(s, 4, 1, 1);
  REQUIRE(enc);
  CHECK(enc->record.clusters[0].n_backends == 0);
  CHECK(enc->clusters[0].slots.empty());
}

TEST_CASE("endpoint addresses survive the kernel encoding both ways") {
  for (const char* text : {"10.1.2.3:80", "[fd00::1:2]:65535", "127.0.0.1:1"}) {
    auto a = *SocketAddress::Parse(text);
    CHECK(FromKernel(ToKernel(a)) == a);
  }
}

TEST_CASE("cluster picking gives each cluster its share of the weight range") {
  sluice_service_cluster c[3]{};
  c[0].weight_end = 20;
  c[1].weight_end = 50;
  c[2].weight_end = 100;
  std::map<uint32_t, int> share;
  for (uint32_t r = 0; r < 100; r++)
    share[sluice_pick_cluster(c, 3, r)]++;
  CHECK(share[0] == 20);
  CHECK(share[1] == 30);
  CHECK(share[2] == 50);
  // A zero-weight cluster in the middle is never picked.
  c[1].weight_end = 20;
  for (uint32_t r = 0; r < 100; r++)
    CHECK(sluice_pick_cluster(c, 3, r) != 1);
}

TEST_CASE("power-of-two choices always compares two different endpoints") {
  for (uint32_t n : {2u, 3u, 7u, 100u}) {
    for (uint32_t r = 0; r < 200000; r += 97) {
      uint32_t a = 0, b = 0;
      sluice_pick_two(r * 2654435761u, n, &a, &b);
      REQUIRE(a < n);
      REQUIRE(b < n);
      REQUIRE(a != b);
    }
  }
}

TEST_CASE("the client hash is stable per address and spreads addresses") {
  union sluice_ip a {
  }, b{};
  a.v4[0] = 10, a.v4[3] = 1;
  b.v4[0] = 10, b.v4[3] = 2;
  CHECK(sluice_hash_ip(&a, 4) == sluice_hash_ip(&a, 4));
  CHECK(sluice_hash_ip(&a, 4) != sluice_hash_ip(&b, 4));
  // 256 neighbouring clients land on many different Maglev entries.
  std::set<uint32_t> entries;
  for (int i = 0; i < 256; i++) {
    union sluice_ip ip {};
    ip.v4[0] = 10, ip.v4[3] = static_cast<uint8_t>(i);
    entries.insert(sluice_hash_ip(&ip, 4) % SLUICE_MAGLEV_SIZE);
  }
  CHECK(entries.size() > 240);
}
