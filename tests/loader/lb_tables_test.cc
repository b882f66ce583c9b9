// The load-balancing tables of both paths (the kernel's encoding and the L7 proxy):
// weighted cluster ranges, smooth weighted round-robin slots, and the weighted Maglev
// table.
#include "sluice/loader/lb_tables.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <map>
#include <string>
#include <vector>

using sluice::BuildMaglevTable;
using sluice::CumulativeWeights;
using sluice::WeightedSlots;

namespace {
std::vector<std::string> Names(int n, int first = 1) {
  std::vector<std::string> out;
  for (int i = first; i < first + n; i++)
    out.push_back("10.1." + std::to_string(i / 250) + "." + std::to_string(i % 250) + ":8080");
  return out;
}

std::map<uint16_t, size_t> Histogram(const std::vector<uint16_t>& v) {
  std::map<uint16_t, size_t> h;
  for (auto x : v)
    h[x]++;
  return h;
}
}  // namespace

TEST_CASE("cluster weights become cumulative ranges") {
  auto ends = CumulativeWeights(std::vector<uint32_t>{25, 75});
  REQUIRE(ends);
  CHECK(*ends == std::vector<uint32_t>{25, 100});

  // Relative weights, as Envoy's: 1:3 is the same split as 25:75.
  auto rel = CumulativeWeights(std::vector<uint32_t>{1, 3});
  REQUIRE(rel);
  CHECK(*rel == std::vector<uint32_t>{1, 4});

  // A zero weight owns an empty range.
  auto zero = CumulativeWeights(std::vector<uint32_t>{0, 10, 0, 5});
  REQUIRE(zero);
  CHECK(*zero == std::vector<uint32_t>{0, 10, 10, 15});
}

TEST_CASE("cluster weights that cannot be represented are errors") {
  auto all_zero = CumulativeWeights(std::vector<uint32_t>{0, 0});
  REQUIRE_FALSE(all_zero);
  CHECK_THAT(all_zero.error().message, Catch::Contains("all weights are zero"));

  auto overflow = CumulativeWeights(std::vector<uint32_t>{0xffffffffu, 1});
  REQUIRE_FALSE(overflow);
  CHECK_THAT(overflow.error().message, Catch::Contains("2^32"));
}

TEST_CASE("round-robin slots follow the weights, spread out") {
  auto slots = WeightedSlots(std::vector<uint32_t>{5, 1, 1}, 65535);
  // gcd-reduced: 7 slots, endpoint 0 five times, and never more than two in a row.
  REQUIRE(slots.size() == 7);
  auto h = Histogram(slots);
  CHECK(h[0] == 5);
  CHECK(h[1] == 1);
  CHECK(h[2] == 1);
  int run = 0, longest = 0;
  for (auto s : slots) {
    run = s == 0 ? run + 1 : 0;
    longest = std::max(longest, run);
  }
  CHECK(longest <= 2);

  // Equal weights reduce to one slot each, in order.
  CHECK(WeightedSlots(std::vector<uint32_t>{100, 100, 100}, 65535) ==
        std::vector<uint16_t>{0, 1, 2});
}

TEST_CASE("round-robin slots scale down past the slot budget and keep every endpoint") {
  std::vector<uint32_t> w{1000000, 1, 999983};
  auto slots = WeightedSlots(w, 1000);
  CHECK(slots.size() <= 1000);
  auto h = Histogram(slots);
  CHECK(h[1] >= 1);  // the light endpoint is not starved out of the rotation
  CHECK(h[0] > 400);
  CHECK(h[2] > 400);
}

TEST_CASE("the Maglev table fills every entry, evenly for equal weights") {
  constexpr uint32_t kSize = 16381;
  auto names = Names(7);
  std::vector<uint32_t> w(7, 1);
  auto table = BuildMaglevTable(names, w, kSize);
  REQUIRE(table.size() == kSize);
  auto h = Histogram(table);
  REQUIRE(h.size() == 7);
  for (auto [slot, count] : h) {
    CHECK(slot < 7);
    // Maglev guarantees near-perfect balance: within one entry of size/n.
    CHECK(count >= kSize / 7 - 1);
    CHECK(count <= kSize / 7 + 1);
  }
}

TEST_CASE("the Maglev table honours endpoint weights") {
  constexpr uint32_t kSize = 16381;
  auto names = Names(2);
  auto table = BuildMaglevTable(names, std::vector<uint32_t>{1, 3}, kSize);
  auto h = Histogram(table);
  const double share = static_cast<double>(h[1]) / kSize;
  CHECK(share == Approx(0.75).margin(0.01));
}

TEST_CASE("the Maglev table is deterministic and disrupts little when a backend is added") {
  constexpr uint32_t kSize = 16381;
  auto names = Names(10);
  std::vector<uint32_t> w(10, 1);
  auto a = BuildMaglevTable(names, w, kSize);
  CHECK(a == BuildMaglevTable(names, w, kSize));  // a restarted agent rebuilds the same

  auto more = Names(11);
  std::vector<uint32_t> w11(11, 1);
  auto b = BuildMaglevTable(more, w11, kSize);
  size_t moved = 0;
  for (uint32_t i = 0; i < kSize; i++)
    if (a[i] != b[i] && b[i] != 10)  // an entry that went to an old backend other than before
      moved++;
  // Ideal: only the ~1/11 of entries taken by the newcomer change; Maglev adds a little.
  CHECK(static_cast<double>(moved) / kSize < 0.03);
  size_t to_new = std::count(b.begin(), b.end(), uint16_t{10});
  CHECK(static_cast<double>(to_new) / kSize == Approx(1.0 / 11).margin(0.01));
}

TEST_CASE("the Maglev table depends on the set of backends, not the order they are listed in") {
  constexpr uint32_t kSize = 16381;
  auto names = Names(6);
  std::vector<uint32_t> w{1, 2, 1, 3, 1, 1};
  auto table = BuildMaglevTable(names, w, kSize);
  // The same backends reversed: every entry names the same backend (at its new index).
  std::vector<std::string> rnames(names.rbegin(), names.rend());
  std::vector<uint32_t> rw(w.rbegin(), w.rend());
  auto reversed = BuildMaglevTable(rnames, rw, kSize);
  size_t differ = 0;
  for (uint32_t i = 0; i < kSize; i++)
    differ += names[table[i]] != rnames[reversed[i]];
  CHECK(differ == 0);
}

TEST_CASE("an empty backend list gives an all-zero table, not a crash") {
  auto table = BuildMaglevTable(std::vector<std::string>{}, std::vector<uint32_t>{}, 13);
  CHECK(table == std::vector<uint16_t>(13, 0));
}
