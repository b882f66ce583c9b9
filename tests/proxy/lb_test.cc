// The L7 proxy's endpoint picking as a pure function (agent/proxy/lb.h): no sockets,
// clusters built in memory, chosen random numbers, hashes and clocks. The first cases
// hold the proxy to the kernel: for the same endpoints both build the same Maglev table,
// and a client address picks the same endpoint through the proxy as through the
// connect hook's arithmetic (sluice_hash_ip, modulo the table size, per family).
#include "sluice/proxy/lb.h"

#include <netinet/in.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "sluice/lb.h"
#include "sluice/loader/encoding.h"
#include "sluice/loader/lb_tables.h"

namespace proxy = sluice::proxy;
using proxy::Cluster;
using proxy::Endpoint;
using proxy::LbHash;
using proxy::LbPolicy;

namespace {

struct Ep {
  std::string addr;  // "ip:port" or "[ip]:port"
  uint32_t weight = 1;
};

std::unique_ptr<Cluster> MakeCluster(LbPolicy lb, const std::vector<Ep>& eps) {
  auto c = std::make_unique<Cluster>();
  c->name = "c";
  c->lb = lb;
  for (const Ep& e : eps) {
    auto sa = sluice::SocketAddress::Parse(e.addr);
    REQUIRE(sa);
    auto ss = proxy::ParseIp(sa->ip.ToString(), sa->port);
    REQUIRE(ss);
    auto ep = std::make_unique<Endpoint>();
    proxy::SetAddress(*ep, *ss);
    ep->weight = e.weight;
    c->endpoints.push_back(std::move(ep));
  }
  REQUIRE(proxy::BuildLbTables(*c));
  return c;
}

std::vector<Ep> Numbered(int n, int first = 1) {
  std::vector<Ep> v;
  for (int i = first; i < first + n; ++i)
    v.push_back({"10.8." + std::to_string(i / 250) + "." + std::to_string(i % 250) + ":8080"});
  return v;
}

int IndexOf(const Cluster& c, const Endpoint* e) {
  for (std::size_t i = 0; i < c.endpoints.size(); ++i) {
    if (c.endpoints[i].get() == e)
      return static_cast<int>(i);
  }
  return -1;
}

// A pick with no randomness involved (round robin, hashing).
int Pick(const Cluster& c, std::optional<LbHash> hash = std::nullopt, int64_t now = 0) {
  return IndexOf(c, proxy::PickEndpoint(c, now, 0, 0, hash));
}

struct Rng {
  uint64_t s = 0x2545f4914f6cdd1dull;
  uint64_t operator()() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
};

std::map<int, int> Spread(const Cluster& c, int picks, int64_t now = 0) {
  Rng rng;
  std::map<int, int> seen;
  for (int i = 0; i < picks; ++i) {
    uint64_t a = rng(), b = rng();
    seen[IndexOf(c, proxy::PickEndpoint(c, now, a, b, std::nullopt))]++;
  }
  return seen;
}

// Client address i of a family: 10.9.x.y or fd09::x:y.
sockaddr_storage Client(int family, int i) {
  std::string ip = family == 4 ? "10.9." + std::to_string(i / 250) + "." + std::to_string(i % 250)
                               : "fd09::" + std::to_string(i / 250) + ":" + std::to_string(i % 250);
  auto ss = proxy::ParseIp(ip, 40000);
  REQUIRE(ss);
  return *ss;
}

// Which endpoint the connect hook picks for a client, by its own arithmetic: the
// service's table for the client's family, entry sluice_hash_ip % SLUICE_MAGLEV_SIZE.
std::string KernelPick(const sluice::EncodedService& enc, const sockaddr_storage& client) {
  union sluice_ip ip {};
  if (client.ss_family == AF_INET)
    std::memcpy(ip.v4, &reinterpret_cast<const sockaddr_in&>(client).sin_addr, 4);
  else
    std::memcpy(ip.v6, &reinterpret_cast<const sockaddr_in6&>(client).sin6_addr, 16);
  const auto& cl = enc.clusters.at(0);
  REQUIRE(cl.maglev);
  const uint32_t h = sluice_hash_ip(&ip, enc.family) % SLUICE_MAGLEV_SIZE;
  return sluice::FromKernel(cl.slots.at((*cl.maglev)[h]).ep).ToString();
}

sluice::EncodedService KernelService(sluice::LbPolicy lb, const std::vector<Ep>& eps,
                                     uint8_t family) {
  sluice::ServiceSpec spec;
  spec.name = "svc";
  spec.vips = {*sluice::IpAddress::Parse(family == 4 ? "10.96.0.1" : "fd96::1")};
  spec.port = 80;
  sluice::ClusterSpec cl;
  cl.name = "c";
  cl.lb = lb;
  for (const Ep& e : eps)
    cl.endpoints.push_back({*sluice::SocketAddress::Parse(e.addr), e.weight, {}});
  spec.clusters.push_back(cl);
  REQUIRE(sluice::Validate(spec));
  auto enc = sluice::Encode(spec, family, 1, 1);
  REQUIRE(enc);
  return *enc;
}

}  // namespace

TEST_CASE("consistent hashing: the proxy builds the kernel's Maglev table and picks its endpoint",
          "[proxy][lb]") {
  const std::vector<Ep> v4 = {
      {"10.1.0.2:8080", 1}, {"10.1.0.3:8080", 2}, {"10.1.0.4:8080", 1}, {"10.1.0.5:9090", 3}};
  const std::vector<Ep> v6 = {{"[fd11::2]:8080", 1}, {"[fd11::3]:8080", 2}, {"[fd11::a:4]:80", 1}};
  for (auto [policy, kernel_policy] :
       {std::pair{LbPolicy::kMaglev, sluice::LbPolicy::kMaglev},
        std::pair{LbPolicy::kRingHash, sluice::LbPolicy::kRingHash}}) {
    for (int family : {4, 6}) {
      const auto& eps = family == 4 ? v4 : v6;
      INFO(proxy::LbPolicyName(policy) << ", IPv" << family);
      auto c = MakeCluster(policy, eps);
      auto enc = KernelService(kernel_policy, eps, static_cast<uint8_t>(family));
      // The names Maglev hashes are the kernel's (SocketAddress::ToString).
      for (std::size_t i = 0; i < eps.size(); ++i)
        CHECK(c->endpoints[i]->address == sluice::SocketAddress::Parse(eps[i].addr)->ToString());
      // The same table, entry by entry.
      REQUIRE(enc.clusters[0].maglev);
      REQUIRE(c->hash_table.entries.size() == SLUICE_MAGLEV_SIZE);
      std::size_t differ = 0;
      for (std::size_t i = 0; i < SLUICE_MAGLEV_SIZE; ++i) {
        const auto& kernel_ep = enc.clusters[0].slots[(*enc.clusters[0].maglev)[i]].ep;
        const auto& proxy_ep = *c->endpoints[c->hash_table.members[c->hash_table.entries[i]]];
        differ += sluice::FromKernel(kernel_ep).ToString() != proxy_ep.address;
      }
      CHECK(differ == 0);
      // And each client address picks the same endpoint on both paths.
      std::set<std::string> used;
      int disagree = 0;
      for (int i = 0; i < 2000; ++i) {
        const sockaddr_storage client = Client(family, i);
        const Endpoint* e = proxy::PickEndpoint(*c, 0, 0, 0, proxy::SourceIpHash(client));
        REQUIRE(e);
        disagree += e->address != KernelPick(enc, client);
        used.insert(e->address);
      }
      CHECK(disagree == 0);
      CHECK(used.size() == eps.size());
    }
  }
}

TEST_CASE("consistent hashing: a source-IP key keeps to the client's family, as the kernel does",
          "[proxy][lb]") {
  // A dual-stack cluster; the kernel serves each family from a table of its own.
  const std::vector<Ep> v4 = {{"10.1.0.2:8080"}, {"10.1.0.3:8080"}, {"10.1.0.4:8080"}};
  const std::vector<Ep> v6 = {{"[fd11::2]:8080"}, {"[fd11::3]:8080"}};
  std::vector<Ep> mixed = {v6[0], v4[0], v4[1], v6[1], v4[2]};
  auto c = MakeCluster(LbPolicy::kMaglev, mixed);
  auto kernel4 = KernelService(sluice::LbPolicy::kMaglev, mixed, 4);
  auto kernel6 = KernelService(sluice::LbPolicy::kMaglev, mixed, 6);
  for (int family : {4, 6}) {
    int disagree = 0;
    for (int i = 0; i < 1000; ++i) {
      const sockaddr_storage client = Client(family, i);
      const Endpoint* e = proxy::PickEndpoint(*c, 0, 0, 0, proxy::SourceIpHash(client));
      REQUIRE(e);
      CHECK(e->addr.ss_family == (family == 4 ? AF_INET : AF_INET6));
      disagree += e->address != KernelPick(family == 4 ? kernel4 : kernel6, client);
    }
    CHECK(disagree == 0);
  }
  // An IPv4 client on a dual-stack listener (::ffff:a.b.c.d) is the IPv4 client.
  auto mapped = proxy::ParseIp("::ffff:10.9.0.7", 40000);
  REQUIRE(mapped);
  const LbHash h = proxy::SourceIpHash(*mapped);
  CHECK(h.family == 4);
  CHECK(h.value == proxy::SourceIpHash(Client(4, 7)).value);
  // Header and cookie keys have no family: every endpoint is a candidate.
  std::set<int> families;
  for (int i = 0; i < 200; ++i) {
    const Endpoint* e =
        proxy::PickEndpoint(*c, 0, 0, 0, LbHash{proxy::HashKey("user" + std::to_string(i)), 0});
    families.insert(e->addr.ss_family);
  }
  CHECK(families.size() == 2);
  // No usable endpoint of the client's family: the other family rather than none.
  for (const auto& e : c->endpoints) {
    if (e->addr.ss_family == AF_INET)
      e->ejected_until_ms = 1000;
  }
  const Endpoint* e = proxy::PickEndpoint(*c, 0, 0, 0, proxy::SourceIpHash(Client(4, 1)));
  REQUIRE(e);
  CHECK(e->addr.ss_family == AF_INET6);
}

TEST_CASE("header and cookie keys are the library's stable hash", "[proxy][lb]") {
  for (const char* key : {"", "user1", "session=abc", "a much longer cookie value than most"})
    CHECK(proxy::HashKey(key) == sluice::StableHash(key, 0));
}

TEST_CASE("Maglev: a key stays on its endpoint, and adding an endpoint moves few keys",
          "[proxy][lb]") {
  auto before = MakeCluster(LbPolicy::kMaglev, Numbered(10));
  auto after = MakeCluster(LbPolicy::kMaglev, Numbered(11));
  int to_new = 0, moved = 0;
  const int keys = 20000;
  for (int k = 0; k < keys; ++k) {
    const LbHash h{proxy::HashKey("key" + std::to_string(k)), 0};
    const int was = Pick(*before, h);
    REQUIRE(was == Pick(*before, h));  // the same key, the same endpoint
    const int now = Pick(*after, h);
    if (now == 10)
      ++to_new;
    else if (now != was)
      ++moved;
  }
  // About 1/11 of the keys go to the newcomer; almost none move between old endpoints.
  CHECK(static_cast<double>(to_new) / keys == Approx(1.0 / 11).margin(0.01));
  CHECK(static_cast<double>(moved) / keys < 0.03);
}

TEST_CASE("consistent hashing walks past an ejected or degraded endpoint, and comes back",
          "[proxy][lb]") {
  for (LbPolicy policy : {LbPolicy::kMaglev, LbPolicy::kRingHash}) {
    INFO(proxy::LbPolicyName(policy));
    auto c = MakeCluster(policy, Numbered(4));
    std::vector<LbHash> keys;
    std::vector<int> home;
    for (int k = 0; k < 400; ++k) {
      keys.push_back({proxy::HashKey("k" + std::to_string(k)), 0});
      home.push_back(Pick(*c, keys.back()));
    }
    c->endpoints[1]->ejected_until_ms = 5000;
    int walked = 0;
    for (std::size_t k = 0; k < keys.size(); ++k) {
      const int now = Pick(*c, keys[k], 1000);
      if (home[k] == 1) {
        CHECK(now == 2);  // the next endpoint of the table
        ++walked;
      } else {
        CHECK(now == home[k]);  // nobody else moves
      }
    }
    CHECK(walked > 50);
    for (std::size_t k = 0; k < keys.size(); ++k)
      CHECK(Pick(*c, keys[k], 6000) == home[k]);  // the ejection is over
    // A degraded endpoint is walked past the same way while healthy ones remain.
    c->endpoints[1]->ejected_until_ms = 0;
    c->endpoints[1]->degraded = true;
    c->endpoints[2]->degraded = true;
    for (std::size_t k = 0; k < keys.size(); ++k) {
      const int want = home[k] == 1 || home[k] == 2 ? 3 : home[k];
      CHECK(Pick(*c, keys[k]) == want);
    }
  }
}

TEST_CASE("smooth weighted round robin: the exact sequence", "[proxy][lb]") {
  struct Row {
    std::vector<uint32_t> weights;
    std::vector<int> sequence;  // one period
  };
  const std::vector<Row> rows = {
      {{5, 1, 1}, {0, 0, 1, 0, 2, 0, 0}},
      {{2, 3}, {1, 0, 1, 0, 1}},
      {{1, 1, 1}, {0, 1, 2}},
      {{100, 100, 300}, {2, 0, 2, 1, 2}},
  };
  for (const Row& row : rows) {
    std::vector<Ep> eps = Numbered(static_cast<int>(row.weights.size()));
    for (std::size_t i = 0; i < eps.size(); ++i)
      eps[i].weight = row.weights[i];
    auto c = MakeCluster(LbPolicy::kRoundRobin, eps);
    std::vector<int> got;
    for (std::size_t i = 0; i < 2 * row.sequence.size(); ++i)
      got.push_back(Pick(*c));
    std::vector<int> want = row.sequence;
    want.insert(want.end(), row.sequence.begin(), row.sequence.end());
    CHECK(got == want);
  }
}

TEST_CASE("endpoint weights are honoured over many picks by every policy", "[proxy][lb]") {
  std::vector<Ep> eps = Numbered(3);
  eps[0].weight = 1;
  eps[1].weight = 2;
  eps[2].weight = 5;
  const int picks = 80000;
  for (LbPolicy policy : {LbPolicy::kRoundRobin, LbPolicy::kRandom, LbPolicy::kLeastRequest}) {
    INFO(proxy::LbPolicyName(policy));
    auto c = MakeCluster(policy, eps);
    auto seen = Spread(*c, picks);
    if (policy == LbPolicy::kRoundRobin) {
      CHECK(seen[0] == picks / 8);  // exact: 80000 is 10000 periods
      CHECK(seen[1] == picks / 8 * 2);
      CHECK(seen[2] == picks / 8 * 5);
    } else {
      CHECK(seen[0] / double(picks) == Approx(1.0 / 8).margin(0.01));
      CHECK(seen[1] / double(picks) == Approx(2.0 / 8).margin(0.01));
      CHECK(seen[2] / double(picks) == Approx(5.0 / 8).margin(0.01));
    }
  }
  // Consistent hashing too: the share of keys follows the weights.
  auto c = MakeCluster(LbPolicy::kMaglev, eps);
  std::map<int, int> keys;
  for (int k = 0; k < picks; ++k)
    keys[Pick(*c, LbHash{proxy::HashKey(std::to_string(k)), 0})]++;
  CHECK(keys[2] / double(picks) == Approx(5.0 / 8).margin(0.01));
  CHECK(keys[0] / double(picks) == Approx(1.0 / 8).margin(0.01));
}

TEST_CASE("least request takes the less loaded of its two random picks", "[proxy][lb]") {
  auto c = MakeCluster(LbPolicy::kLeastRequest, Numbered(3));
  c->endpoints[0]->active_requests = 5;
  c->endpoints[1]->active_requests = 0;
  c->endpoints[2]->active_requests = 9;
  struct Row {
    uint64_t random_a, random_b;  // endpoint random % 3
    int want;
  };
  for (const Row& r : std::vector<Row>{
           {0, 1, 1}, {1, 0, 1}, {0, 2, 0}, {2, 0, 0}, {2, 1, 1}, {2, 2, 2}, {3, 5, 0}}) {
    INFO("random " << r.random_a << ", " << r.random_b);
    CHECK(IndexOf(*c, proxy::PickEndpoint(*c, 0, r.random_a, r.random_b, std::nullopt)) == r.want);
  }
}

TEST_CASE("degraded endpoints only when no healthy one is left, for every policy", "[proxy][lb]") {
  for (LbPolicy policy : {LbPolicy::kRoundRobin, LbPolicy::kRandom, LbPolicy::kLeastRequest,
                          LbPolicy::kMaglev, LbPolicy::kRingHash}) {
    INFO(proxy::LbPolicyName(policy));
    auto c = MakeCluster(policy, Numbered(3));
    c->endpoints[1]->degraded = true;
    auto picks = [&](int64_t now) {
      std::map<int, int> seen = Spread(*c, 600, now);
      for (int k = 0; k < 300; ++k)
        seen[Pick(*c, LbHash{proxy::HashKey(std::to_string(k)), 0}, now)]++;
      return seen;
    };
    auto healthy = picks(0);
    CHECK(healthy.count(1) == 0);
    CHECK(healthy.size() == 2);
    // Both healthy endpoints ejected: the degraded one takes everything.
    c->endpoints[0]->ejected_until_ms = 1000;
    c->endpoints[2]->ejected_until_ms = 1000;
    auto fallback = picks(500);
    CHECK(fallback.size() == 1);
    CHECK(fallback.count(1) == 1);
  }
}

TEST_CASE("panic mode: with every endpoint ejected, all of them are used", "[proxy][lb]") {
  for (LbPolicy policy :
       {LbPolicy::kRoundRobin, LbPolicy::kRandom, LbPolicy::kLeastRequest, LbPolicy::kMaglev}) {
    INFO(proxy::LbPolicyName(policy));
    auto c = MakeCluster(policy, Numbered(3));
    std::vector<int> home;
    for (int k = 0; k < 100; ++k)
      home.push_back(Pick(*c, LbHash{proxy::HashKey(std::to_string(k)), 0}));
    for (const auto& e : c->endpoints)
      e->ejected_until_ms = 1000;
    CHECK(Spread(*c, 300, 500).size() == 3);
    if (policy != LbPolicy::kMaglev)
      continue;
    for (int k = 0; k < 100; ++k)  // keys keep their endpoints
      CHECK(Pick(*c, LbHash{proxy::HashKey(std::to_string(k)), 0}, 500) == home[k]);
  }
}

TEST_CASE("no endpoints, no pick, and consistent hashing without a key picks at random",
          "[proxy][lb]") {
  auto empty = MakeCluster(LbPolicy::kMaglev, {});
  CHECK(proxy::PickEndpoint(*empty, 0, 1, 2, LbHash{7, 0}) == nullptr);
  CHECK(proxy::PickEndpoint(*empty, 0, 1, 2, std::nullopt) == nullptr);
  auto c = MakeCluster(LbPolicy::kRingHash, Numbered(3));
  CHECK(Spread(*c, 300).size() == 3);
}

TEST_CASE("tables: a schedule only for weighted round robin, Maglev only for hashing",
          "[proxy][lb]") {
  std::vector<Ep> eps = Numbered(3);
  eps[2].weight = 3;
  auto rr = MakeCluster(LbPolicy::kRoundRobin, eps);
  const std::vector<uint32_t> w{1, 1, 3};
  CHECK(rr->rr_schedule == sluice::WeightedSlots(w, SLUICE_MAX_BACKENDS));
  CHECK(rr->hash_table.empty());
  auto equal = MakeCluster(LbPolicy::kRoundRobin, Numbered(3));
  CHECK(equal->rr_schedule.empty());
  CHECK(equal->cumulative_weight.empty());
  auto hashed = MakeCluster(LbPolicy::kRingHash, eps);
  CHECK(hashed->rr_schedule.empty());
  CHECK(hashed->hash_table.entries.size() == SLUICE_MAGLEV_SIZE);
  CHECK(hashed->hash_table_v4.empty());  // one family: the one table serves it
}

// ---------------------------------------------------------------- the pick's inputs

namespace {

// A parsed request head over `wire` (which must outlive it).
proxy::http::RequestHead Head(const std::string& wire) {
  proxy::http::RequestHead h;
  REQUIRE(proxy::http::ParseRequest(wire, proxy::http::Limits{}, &h) ==
          proxy::http::ParseStatus::kDone);
  return h;
}

proxy::HashPolicy Policy(proxy::HashKind kind, std::string name = {}, bool terminal = false) {
  proxy::HashPolicy p;
  p.kind = kind;
  p.name = std::move(name);
  p.terminal = terminal;
  return p;
}

}  // namespace

TEST_CASE("request hash: a header, the authority, a cookie or the source address", "[proxy][lb]") {
  using proxy::HashKind;
  const std::string wire =
      "GET /p HTTP/1.1\r\nHost: svc:8080\r\nX-User: alice\r\n"
      "Cookie: a=1; session=xyz; b=2\r\n\r\n";
  const auto req = Head(wire);
  const LbHash src{0x1234, 4};
  auto hash = [&](std::vector<proxy::HashPolicy> ps, LbHash source = {}) {
    return proxy::RequestHash(ps, req, source);
  };
  REQUIRE(hash({Policy(HashKind::kHeader, "x-user")}));
  CHECK(hash({Policy(HashKind::kHeader, "x-user")})->value == proxy::HashKey("alice"));
  CHECK(hash({Policy(HashKind::kHeader, "x-user")})->family == 0);
  CHECK(hash({Policy(HashKind::kHeader, ":authority")})->value == proxy::HashKey("svc:8080"));
  CHECK(hash({Policy(HashKind::kHeader, "host")})->value == proxy::HashKey("svc:8080"));
  CHECK(hash({Policy(HashKind::kCookie, "session")})->value == proxy::HashKey("xyz"));
  CHECK(hash({Policy(HashKind::kCookie, "b")})->value == proxy::HashKey("2"));
  CHECK_FALSE(hash({Policy(HashKind::kCookie, "missing")}));
  CHECK_FALSE(hash({Policy(HashKind::kHeader, "x-missing")}));
  // The source address: the peer's hash as given, with its family.
  CHECK(hash({Policy(HashKind::kSourceIp)}, src)->value == 0x1234);
  CHECK(hash({Policy(HashKind::kSourceIp)}, src)->family == 4);
  CHECK_FALSE(hash({Policy(HashKind::kSourceIp)}, LbHash{}));  // not an IP peer
  CHECK_FALSE(hash({}));
}

TEST_CASE("request hash: keys combine in order, a terminal policy with a key ends the walk",
          "[proxy][lb]") {
  using proxy::HashKind;
  const std::string wire = "GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\nX-B: b\r\n\r\n";
  const auto req = Head(wire);
  const LbHash src{77, 6};
  const uint64_t a = proxy::HashKey("a"), b = proxy::HashKey("b");
  auto both = proxy::RequestHash(
      {Policy(HashKind::kHeader, "x-a"), Policy(HashKind::kHeader, "x-b")}, req, src);
  REQUIRE(both);
  CHECK(both->value == a * 31 + b);
  // A terminal policy that found its key stops; one that did not, does not.
  auto stopped = proxy::RequestHash(
      {Policy(HashKind::kHeader, "x-a", true), Policy(HashKind::kHeader, "x-b")}, req, src);
  CHECK(stopped->value == a);
  auto went_on = proxy::RequestHash(
      {Policy(HashKind::kHeader, "x-none", true), Policy(HashKind::kHeader, "x-b")}, req, src);
  CHECK(went_on->value == b);
  // The source address's family survives a combination.
  auto mixed =
      proxy::RequestHash({Policy(HashKind::kHeader, "x-a"), Policy(HashKind::kSourceIp)}, req, src);
  CHECK(mixed->value == a * 31 + 77);
  CHECK(mixed->family == 6);
}

TEST_CASE("weighted clusters: the point's range of running weights, else the last", "[proxy][lb]") {
  std::vector<proxy::WeightedCluster> w(3);
  w[0].name = "a";
  w[0].weight = 10;
  w[1].name = "b";
  w[1].weight = 0;
  w[2].name = "c";
  w[2].weight = 90;
  CHECK(proxy::PickWeightedCluster(w, 0).name == "a");
  CHECK(proxy::PickWeightedCluster(w, 9).name == "a");
  CHECK(proxy::PickWeightedCluster(w, 10).name == "c");  // a zero weight never wins
  CHECK(proxy::PickWeightedCluster(w, 99).name == "c");
  CHECK(proxy::PickWeightedCluster(w, 1000).name == "c");
  std::vector<proxy::WeightedCluster> zero(2);
  zero[0].name = "x";
  zero[1].name = "y";
  CHECK(proxy::PickWeightedCluster(zero, 0).name == "y");
}

TEST_CASE("outlier detection: consecutive 5xx eject, for longer each time, within the cap",
          "[proxy][lb]") {
  auto c = MakeCluster(LbPolicy::kRoundRobin, Numbered(10));
  c->outlier.enabled = true;
  c->outlier.consecutive_5xx = 3;
  c->outlier.base_ejection_time = proxy::Millis(1000);
  c->outlier.max_ejection_percent = 20;  // two of ten
  Endpoint& e0 = *c->endpoints[0];
  CHECK_FALSE(proxy::RecordEndpointResult(*c, e0, true, 100));
  CHECK_FALSE(proxy::RecordEndpointResult(*c, e0, true, 100));
  CHECK_FALSE(proxy::RecordEndpointResult(*c, e0, false, 100));  // a success resets the run
  CHECK_FALSE(proxy::RecordEndpointResult(*c, e0, true, 100));
  CHECK_FALSE(proxy::RecordEndpointResult(*c, e0, true, 100));
  CHECK(proxy::RecordEndpointResult(*c, e0, true, 100));
  CHECK(e0.ejected_until_ms == 1100);
  CHECK(e0.consecutive_5xx == 0);
  // Ejected already: failures meanwhile do not extend it.
  for (int i = 0; i < 3; ++i)
    CHECK_FALSE(proxy::RecordEndpointResult(*c, e0, true, 500));
  // Back, and ejected again: twice as long.
  CHECK(proxy::RecordEndpointResult(*c, e0, true, 2000));
  CHECK(e0.ejected_until_ms == 4000);
  // The cap: with two of ten out, a third is not ejected.
  Endpoint& e1 = *c->endpoints[1];
  Endpoint& e2 = *c->endpoints[2];
  for (int i = 0; i < 2; ++i)
    proxy::RecordEndpointResult(*c, e1, true, 2000);
  CHECK(proxy::RecordEndpointResult(*c, e1, true, 2000));
  for (int i = 0; i < 2; ++i)
    proxy::RecordEndpointResult(*c, e2, true, 2000);
  CHECK_FALSE(proxy::RecordEndpointResult(*c, e2, true, 2000));
  CHECK(e2.ejected_until_ms == 0);
  // Disabled: failures are counted, nobody is ejected.
  c->outlier.enabled = false;
  for (int i = 0; i < 10; ++i)
    CHECK_FALSE(proxy::RecordEndpointResult(*c, *c->endpoints[3], true, 2000));
}
