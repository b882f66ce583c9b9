// Which endpoint of a cluster a request or a TCP connection goes to: the L7 proxy's load
// balancer. Picking is a pure function of the cluster (its endpoints, their health and
// load, its tables), the time, two random numbers and the request's hash; the only
// state it changes is the cluster's round-robin cursor. The inputs it is given are made
// here too: the request's hash from the route's hash policies, the weighted cluster, and
// the endpoints' health from outlier detection. Tested without sockets in
// tests/proxy/lb_test.cc.
//
// One library for both paths: the tables are built with the algorithms the kernel's
// tables are encoded with (loader/include/sluice/loader/lb_tables.h) — the smooth
// weighted round-robin schedule, and the weighted Maglev table over the endpoints'
// "ip:port" names ("[ip]:port" for IPv6) with the kernel's table size — and a source-IP
// key is the kernel's client hash, sluice_hash_ip (bpf/include/sluice/lb.h). With every
// endpoint healthy, a client under consistent hashing therefore lands on the same
// endpoint whether the connect hook or this proxy serves it.
//
// RING_HASH is served by Maglev, here as in the kernel. Envoy does not specify which
// endpoint a key maps to; the properties kept are that a key stays on its endpoint and
// that few keys move when endpoints come and go. (ring_hash_lb_config and
// maglev_lb_config.table_size are therefore not used: the table is SLUICE_MAGLEV_SIZE
// entries on both paths.)
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "sluice/common/result.h"
#include "sluice/proxy/config.h"
#include "sluice/proxy/http_codec.h"

namespace sluice::proxy {

// A request's consistent-hash key.
struct LbHash {
  uint64_t value = 0;
  // 4 or 6 when a source-IP policy contributed: the pick keeps to the endpoints of the
  // client's address family when the cluster has any, as the kernel's per-family tables
  // do. 0: any endpoint.
  uint8_t family = 0;
};

// The key of a header or cookie value: the library's stable string hash.
uint64_t HashKey(std::string_view value);

// The key of a source-IP policy: sluice_hash_ip over the peer's address, as the connect
// hook hashes its client. An IPv4-mapped IPv6 peer counts as the IPv4 client it is.
// family 0 for a peer that is not an IP address.
LbHash SourceIpHash(const sockaddr_storage& peer);

// Fills the cluster's tables from its endpoints, their weights and its policy (Compile
// calls it once per cluster). Fails when a table would have to index more endpoints
// than it can (65535, the kernel's limit too).
Result<void> BuildLbTables(Cluster& c);

// The endpoint for one request or connection; nullptr only when the cluster has no
// endpoints. As Envoy: DEGRADED endpoints only when no healthy one is left; when all are
// ejected by outlier detection, panic mode uses them all. ROUND_ROBIN follows the smooth
// schedule; RANDOM uses random_a; LEAST_REQUEST takes the less loaded of the picks for
// random_a and random_b. MAGLEV and RING_HASH look `hash` up in the Maglev table and,
// when that endpoint is not usable, walk on to the next usable endpoint of the table;
// without a hash they pick at random. Allocates nothing.
Endpoint* PickEndpoint(const Cluster& c, int64_t now_ms, uint64_t random_a, uint64_t random_b,
                       std::optional<LbHash> hash);

// A request's consistent-hash key from the route's hash policies, in order: a header
// ("host" and ":authority" are the request's authority), a cookie, or the peer's
// address (`source`, its SourceIpHash). Keys combine as value * 31 + next; a terminal
// policy that produced a key ends the walk. nullopt when no policy produced one (the
// pick is then random). Allocates nothing.
std::optional<LbHash> RequestHash(const std::vector<HashPolicy>& policies,
                                  const http::RequestHead& req, const LbHash& source);

// Weighted clusters (a route's or a TCP proxy's): the cluster whose range of the running
// weight sums holds `point` (the caller draws it in [0, total weight)); the last one
// when none does. `clusters` is not empty.
const WeightedCluster& PickWeightedCluster(const std::vector<WeightedCluster>& clusters,
                                           uint64_t point);

// Outlier detection (consecutive 5xx): records one request's result on an endpoint at
// now_ms. A success resets the endpoint's run of failures; the failure that completes a
// run of outlier.consecutive_5xx ejects it for base_ejection_time times the number of
// times it was ejected, unless max_ejection_percent of the cluster's endpoints (at least
// one) are out already. Returns true when it ejected the endpoint.
bool RecordEndpointResult(const Cluster& c, Endpoint& ep, bool failure, int64_t now_ms);

}  // namespace sluice::proxy
