#include "sluice/loader/lb_tables.h"

#include <algorithm>
#include <numeric>

namespace sluice {

Result<std::vector<uint32_t>> CumulativeWeights(std::span<const uint32_t> weights) {
  std::vector<uint32_t> ends;
  uint64_t sum = 0;
  for (uint32_t w : weights) {
    sum += w;
    if (sum > UINT32_MAX)
      return Fail("weights add up past 2^32-1");
    ends.push_back(static_cast<uint32_t>(sum));
  }
  if (!weights.empty() && sum == 0)
    return Fail("all weights are zero");
  return ends;
}

std::vector<uint16_t> WeightedSlots(std::span<const uint32_t> weights, size_t max_slots) {
  std::vector<uint64_t> w;
  uint64_t g = 0;
  for (uint32_t x : weights)
    g = std::gcd(g, static_cast<uint64_t>(x));
  for (uint32_t x : weights)
    w.push_back(g ? x / g : 0);
  uint64_t total = std::accumulate(w.begin(), w.end(), uint64_t{0});
  if (total > max_slots) {
    // Scale down proportionally; every endpoint with weight keeps at least one slot.
    uint64_t nonzero = std::count_if(w.begin(), w.end(), [](uint64_t x) { return x > 0; });
    uint64_t budget = max_slots > nonzero ? max_slots - nonzero : 0;
    uint64_t new_total = 0;
    for (auto& x : w) {
      if (x)
        x = 1 + x * budget / total;
      new_total += x;
    }
    total = new_total;
  }
  std::vector<uint16_t> slots;
  slots.reserve(total);
  std::vector<int64_t> current(w.size(), 0);
  for (uint64_t step = 0; step < total; step++) {
    size_t best = 0;
    for (size_t i = 0; i < w.size(); i++) {
      current[i] += static_cast<int64_t>(w[i]);
      if (current[i] > current[best])
        best = i;
    }
    current[best] -= static_cast<int64_t>(total);
    slots.push_back(static_cast<uint16_t>(best));
  }
  return slots;
}

uint64_t StableHash(std::string_view s, uint64_t seed) {
  uint64_t h = 0xcbf29ce484222325ULL ^ (seed * 0x9e3779b97f4a7c15ULL);
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  // Final avalanche so nearby names spread over the table.
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  return h;
}

std::vector<uint16_t> BuildMaglevTable(std::span<const std::string> names,
                                       std::span<const uint32_t> weights, uint32_t size) {
  const size_t n = names.size();
  std::vector<uint16_t> table(size, 0);
  if (n == 0 || size < 2)
    return table;

  std::vector<uint64_t> offset(n), skip(n), next(n, 0);
  for (size_t i = 0; i < n; i++) {
    offset[i] = StableHash(names[i], 1) % size;
    skip[i] = StableHash(names[i], 2) % (size - 1) + 1;
  }
  // Weighted turns: per round, backend i fills weight_i / g entries.
  uint64_t g = 0;
  for (size_t i = 0; i < n; i++)
    g = std::gcd(g, static_cast<uint64_t>(i < weights.size() ? weights[i] : 1));
  std::vector<uint64_t> turns(n, 1);
  for (size_t i = 0; i < n; i++) {
    uint64_t w = i < weights.size() ? weights[i] : 1;
    turns[i] = g ? w / g : 0;
  }
  if (std::all_of(turns.begin(), turns.end(), [](uint64_t t) { return t == 0; }))
    return table;

  // Backends take their turns in name order: who wins a contested entry must not
  // depend on the order the endpoints were listed in.
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return names[a] < names[b]; });

  std::vector<bool> filled(size, false);
  uint32_t count = 0;
  while (true) {
    for (size_t i : order) {
      for (uint64_t t = 0; t < turns[i]; t++) {
        uint64_t c;
        do {
          c = (offset[i] + next[i] * skip[i]) % size;
          next[i]++;
        } while (filled[c]);
        filled[c] = true;
        table[c] = static_cast<uint16_t>(i);
        if (++count == size)
          return table;
      }
    }
  }
}

}  // namespace sluice
