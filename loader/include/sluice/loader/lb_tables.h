// The load-balancing algorithms of both paths (pure functions, unit-tested): the kernel's
// tables are encoded with them (encoding.cc) and the L7 proxy builds its clusters' tables
// with them (agent/proxy/lb.cc), so both hold the same table for the same endpoints. The
// client-address hash that indexes a Maglev table is sluice_hash_ip, in the header the
// BPF programs share (bpf/include/sluice/lb.h).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "sluice/common/result.h"

namespace sluice {

// Cumulative ends of relative weights: {25, 75} -> {25, 100}. Zero weights own no range.
[[nodiscard]] Result<std::vector<uint32_t>> CumulativeWeights(std::span<const uint32_t> weights);

// The slot sequence of smooth weighted round robin: endpoint i appears weight_i / g
// times (g = gcd), spread out rather than bunched ({5,1,1} -> a a b a c a a). When the
// reduced weights sum past max_slots they are scaled down (each endpoint keeps >= 1).
[[nodiscard]] std::vector<uint16_t> WeightedSlots(std::span<const uint32_t> weights,
                                                  size_t max_slots);

// A weighted Maglev lookup table of `size` entries (size prime) over backends named by
// stable strings ("10.0.0.1:80", "[fd00::1]:80"): entry -> backend index (at most 65535
// backends). It depends only on the set of (name, weight) pairs, not on their order, so
// an agent restart or an update that merely reorders endpoints rebuilds the same table;
// adding a backend moves about 1/(n+1) of entries.
[[nodiscard]] std::vector<uint16_t> BuildMaglevTable(std::span<const std::string> names,
                                                     std::span<const uint32_t> weights,
                                                     uint32_t size);

// 64-bit FNV-1a with a seed, stable across builds and machines.
[[nodiscard]] uint64_t StableHash(std::string_view s, uint64_t seed);

}  // namespace sluice
