// The L7 proxy's load balancer: table building and endpoint picking (see lb.h).
#include "sluice/proxy/lb.h"

#include <netinet/in.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "sluice/lb.h"
#include "sluice/loader/lb_tables.h"

namespace sluice::proxy {

uint64_t HashKey(std::string_view value) {
  return StableHash(value, 0);
}

LbHash SourceIpHash(const sockaddr_storage& peer) {
  union sluice_ip ip {};
  uint8_t family = 0;
  if (peer.ss_family == AF_INET) {
    std::memcpy(ip.v4, &reinterpret_cast<const sockaddr_in&>(peer).sin_addr, 4);
    family = SLUICE_FAMILY_IPV4;
  } else if (peer.ss_family == AF_INET6) {
    const in6_addr& a = reinterpret_cast<const sockaddr_in6&>(peer).sin6_addr;
    if (IN6_IS_ADDR_V4MAPPED(&a)) {
      std::memcpy(ip.v4, a.s6_addr + 12, 4);
      family = SLUICE_FAMILY_IPV4;
    } else {
      std::memcpy(ip.v6, a.s6_addr, 16);
      family = SLUICE_FAMILY_IPV6;
    }
  } else {
    return {};
  }
  return {sluice_hash_ip(&ip, family), family};
}

namespace {

// The Maglev table over the endpoints of one family (AF_INET, AF_INET6; 0: all of them).
HashTable BuildHashTable(const Cluster& c, const std::vector<uint32_t>& weights, int family) {
  HashTable t;
  std::vector<std::string> names;
  std::vector<uint32_t> w;
  for (std::size_t i = 0; i < c.endpoints.size(); ++i) {
    if (family != 0 && c.endpoints[i]->addr.ss_family != family)
      continue;
    t.members.push_back(static_cast<uint32_t>(i));
    names.push_back(c.endpoints[i]->address);  // "ip:port", as the kernel's names
    w.push_back(weights[i]);
  }
  if (!t.members.empty())
    t.entries = BuildMaglevTable(names, w, SLUICE_MAGLEV_SIZE);
  return t;
}

}  // namespace

Result<void> BuildLbTables(Cluster& c) {
  c.cumulative_weight.clear();
  c.rr_schedule.clear();
  c.hash_table = {};
  c.hash_table_v4 = {};
  c.hash_table_v6 = {};
  const std::size_t n = c.endpoints.size();
  if (n == 0)
    return {};
  std::vector<uint32_t> weights;
  bool differ = false;
  for (const auto& e : c.endpoints) {
    weights.push_back(std::max<uint32_t>(1, e->weight));
    differ |= weights.back() != weights.front();
  }
  const bool hashed = c.lb == LbPolicy::kRingHash || c.lb == LbPolicy::kMaglev;
  const bool schedule = differ && c.lb == LbPolicy::kRoundRobin;
  if ((hashed || schedule) && n > SLUICE_MAX_BACKENDS) {
    return Fail(std::to_string(n) + " endpoints; " + std::string(LbPolicyName(c.lb)) +
                " handles at most " + std::to_string(SLUICE_MAX_BACKENDS));
  }
  if (differ) {
    uint64_t sum = 0;
    for (uint32_t w : weights) {
      sum += w;
      c.cumulative_weight.push_back(sum);
    }
  }
  if (schedule)
    c.rr_schedule = WeightedSlots(weights, SLUICE_MAX_BACKENDS);
  if (hashed) {
    c.hash_table = BuildHashTable(c, weights, 0);
    const auto v4 = std::count_if(c.endpoints.begin(), c.endpoints.end(),
                                  [](const auto& e) { return e->addr.ss_family == AF_INET; });
    if (v4 > 0 && static_cast<std::size_t>(v4) < n) {
      c.hash_table_v4 = BuildHashTable(c, weights, AF_INET);
      c.hash_table_v6 = BuildHashTable(c, weights, AF_INET6);
    }
  }
  return {};
}

Endpoint* PickEndpoint(const Cluster& c, int64_t now_ms, uint64_t random_a, uint64_t random_b,
                       std::optional<LbHash> hash) {
  const std::size_t n = c.endpoints.size();
  if (n == 0)
    return nullptr;
  std::size_t healthy = 0, degraded = 0;
  for (const auto& e : c.endpoints) {
    if (e->ejected_until_ms.load(std::memory_order_relaxed) <= now_ms)
      ++(e->degraded ? degraded : healthy);
  }
  // DEGRADED endpoints only when no healthy one is left; with neither (all ejected by
  // outlier detection), panic mode: use them all.
  const bool panic = healthy == 0 && degraded == 0;
  const bool use_degraded = healthy == 0;
  const std::size_t eligible = panic ? n : (use_degraded ? degraded : healthy);
  auto ok = [&](std::size_t i) {
    const Endpoint& e = *c.endpoints[i];
    if (panic)
      return true;
    return e.ejected_until_ms.load(std::memory_order_relaxed) <= now_ms &&
           (use_degraded || !e.degraded);
  };
  // Consistent hashing: the table's endpoint for the key, or, when it is not usable, the
  // next usable endpoint among the table's members (in endpoint order).
  auto probe = [&](const HashTable& t, uint64_t key) -> Endpoint* {
    const std::size_t m = t.members.size();
    const std::size_t start = t.entries[key % t.entries.size()];
    for (std::size_t k = 0; k < m; ++k) {
      const uint32_t i = t.members[(start + k) % m];
      if (ok(i))
        return c.endpoints[i].get();
    }
    return nullptr;
  };
  const bool weighted = !c.cumulative_weight.empty();
  auto weight = [&](std::size_t i) -> uint64_t {
    return weighted ? std::max<uint32_t>(1, c.endpoints[i]->weight) : 1;
  };
  // When some endpoints are left out (ejected, or degraded while healthy ones remain),
  // the rest share the traffic by weight: the r-th unit of their weights, r taken modulo
  // its sum. (Walking on from an unusable endpoint would send its share to its
  // neighbour.)
  const bool all_usable = eligible == n;
  uint64_t usable_weight = 0;
  if (!all_usable) {
    for (std::size_t i = 0; i < n; ++i) {
      if (ok(i))
        usable_weight += weight(i);
    }
  }
  auto nth_usable = [&](uint64_t r) -> Endpoint* {
    // Another worker may eject an endpoint between the passes above and this one: then
    // the walk can come up empty, and any endpoint is as good as none.
    if (usable_weight == 0)
      return c.endpoints[r % n].get();
    uint64_t left = r % usable_weight;
    for (std::size_t i = 0; i < n; ++i) {
      if (!ok(i))
        continue;
      if (left < weight(i))
        return c.endpoints[i].get();
      left -= weight(i);
    }
    return c.endpoints[r % n].get();
  };
  auto random_pick = [&](uint64_t r) -> Endpoint* {
    if (!all_usable)
      return nth_usable(r);
    if (!weighted)
      return c.endpoints[r % n].get();
    r %= c.cumulative_weight.back();
    auto it = std::upper_bound(c.cumulative_weight.begin(), c.cumulative_weight.end(), r);
    return c.endpoints[static_cast<std::size_t>(it - c.cumulative_weight.begin())].get();
  };
  switch (c.lb) {
    case LbPolicy::kRoundRobin: {
      uint64_t k = c.rr_next.fetch_add(1, std::memory_order_relaxed);
      if (!all_usable)
        return nth_usable(k);
      // Weighted: a smooth schedule (b, a, b, a, b for 2:3), not runs per endpoint.
      if (!c.rr_schedule.empty())
        return c.endpoints[c.rr_schedule[k % c.rr_schedule.size()]].get();
      return c.endpoints[k % n].get();
    }
    case LbPolicy::kRandom:
      return random_pick(random_a);
    case LbPolicy::kLeastRequest: {
      Endpoint* a = random_pick(random_a);
      Endpoint* b = random_pick(random_b);
      return b->active_requests.load(std::memory_order_relaxed) <
                     a->active_requests.load(std::memory_order_relaxed)
                 ? b
                 : a;
    }
    case LbPolicy::kRingHash:
    case LbPolicy::kMaglev: {
      if (!hash || c.hash_table.empty())
        return random_pick(random_a);
      // A source-IP key keeps to the client's family, as the kernel's table does.
      const HashTable* t = &c.hash_table;
      if (hash->family == SLUICE_FAMILY_IPV4 && !c.hash_table_v4.empty())
        t = &c.hash_table_v4;
      else if (hash->family == SLUICE_FAMILY_IPV6 && !c.hash_table_v6.empty())
        t = &c.hash_table_v6;
      if (Endpoint* e = probe(*t, hash->value))
        return e;
      // No endpoint of the client's family is usable: one of the other family rather
      // than none.
      return t == &c.hash_table ? nullptr : probe(c.hash_table, hash->value);
    }
  }
  return nullptr;
}

std::optional<LbHash> RequestHash(const std::vector<HashPolicy>& policies,
                                  const http::RequestHead& req, const LbHash& source) {
  std::optional<LbHash> hash;
  for (const HashPolicy& hp : policies) {
    std::string_view key;
    bool found = false;
    if (hp.kind == HashKind::kHeader) {
      // The authority is req.host (an absolute-form target's, not the Host line's).
      if (hp.name == "host" || hp.name == ":authority") {
        key = req.host;
        found = !key.empty();
      } else {
        key = req.Get(hp.name, &found);
      }
    } else if (hp.kind == HashKind::kSourceIp) {
      found = source.family != 0;
    } else {
      std::string_view cookies = req.Get(http::HeaderId::kCookie, &found);
      found = false;
      while (!cookies.empty()) {
        std::size_t semi = cookies.find(';');
        std::string_view kv = cookies.substr(0, semi);
        while (!kv.empty() && kv.front() == ' ')
          kv.remove_prefix(1);
        std::size_t eq = kv.find('=');
        if (eq != std::string_view::npos && kv.substr(0, eq) == hp.name) {
          key = kv.substr(eq + 1);
          found = true;
          break;
        }
        if (semi == std::string_view::npos)
          break;
        cookies.remove_prefix(semi + 1);
      }
    }
    if (found) {
      // A source-IP key is the kernel's client hash, so both paths pick alike.
      const LbHash k = hp.kind == HashKind::kSourceIp ? source : LbHash{HashKey(key), 0};
      hash = hash ? LbHash{hash->value * 31 + k.value, std::max(hash->family, k.family)} : k;
      if (hp.terminal)
        break;
    }
  }
  return hash;
}

const WeightedCluster& PickWeightedCluster(const std::vector<WeightedCluster>& clusters,
                                           uint64_t point) {
  uint64_t acc = 0;
  for (const WeightedCluster& c : clusters) {
    acc += c.weight;
    if (point < acc)
      return c;
  }
  return clusters.back();
}

bool RecordEndpointResult(const Cluster& c, Endpoint& ep, bool failure, int64_t now_ms) {
  if (!failure) {
    ep.consecutive_5xx.store(0, std::memory_order_relaxed);
    return false;
  }
  uint32_t n = ep.consecutive_5xx.fetch_add(1, std::memory_order_relaxed) + 1;
  if (!c.outlier.enabled || n < c.outlier.consecutive_5xx)
    return false;
  if (ep.ejected_until_ms.load(std::memory_order_relaxed) > now_ms)
    return false;
  std::size_t ejected = 0;
  for (const auto& e : c.endpoints) {
    if (e->ejected_until_ms.load(std::memory_order_relaxed) > now_ms)
      ++ejected;
  }
  std::size_t max_ejected =
      std::max<std::size_t>(1, c.endpoints.size() * c.outlier.max_ejection_percent / 100);
  if (ejected >= max_ejected)
    return false;
  uint32_t times = ep.times_ejected.fetch_add(1, std::memory_order_relaxed) + 1;
  ep.ejected_until_ms.store(now_ms + c.outlier.base_ejection_time.count() * times,
                            std::memory_order_relaxed);
  ep.consecutive_5xx.store(0, std::memory_order_relaxed);
  return true;
}

}  // namespace sluice::proxy
