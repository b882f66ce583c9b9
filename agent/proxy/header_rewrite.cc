// Header rewriting: request ids and the mutation lists' lookups (see header_rewrite.h).
#include "header_rewrite.h"

#include <cstring>

namespace sluice::proxy::engine {

namespace {

// Two hex digits per byte from a table: an id is made for every request without one.
struct HexPairs {
  char p[256][2] = {};
  constexpr HexPairs() {
    constexpr char kHex[] = "0123456789abcdef";
    for (int i = 0; i < 256; ++i) {
      p[i][0] = kHex[i >> 4];
      p[i][1] = kHex[i & 0xf];
    }
  }
};
constexpr HexPairs kHexPairs;

}  // namespace

void FormatUuid4(uint64_t a, uint64_t b, char (&out)[40]) {
  a = (a & 0xffffffffffff0fffull) | 0x4000ull;
  b = (b & 0x3fffffffffffffffull) | 0x8000000000000000ull;
  // 8-4-4-4-12: the bytes of a, then of b, most significant first.
  char* p = out;
  auto bytes = [&p](uint64_t v, int from, int to) {
    for (int i = from; i < to; ++i) {
      std::memcpy(p, kHexPairs.p[(v >> (56 - 8 * i)) & 0xff], 2);
      p += 2;
    }
  };
  bytes(a, 0, 4);
  *p++ = '-';
  bytes(a, 4, 6);
  *p++ = '-';
  bytes(a, 6, 8);
  *p++ = '-';
  bytes(b, 0, 2);
  *p++ = '-';
  bytes(b, 2, 8);
  *p = '\0';
}

bool InList(const std::vector<std::string>& names, std::string_view n) {
  for (const auto& x : names) {
    if (http::EqualsIgnoreCase(x, n))
      return true;
  }
  return false;
}

bool Replaced(const HeaderMutations* const* levels, std::size_t n, std::string_view name) {
  for (std::size_t i = 0; i < n; ++i) {
    if (!levels[i])
      continue;
    if (InList(levels[i]->remove, name))
      return true;
    for (const HeaderOp& op : levels[i]->add) {
      if ((op.action == HeaderOp::Action::kOverwriteIfExistsOrAdd ||
           op.action == HeaderOp::Action::kOverwriteIfExists) &&
          http::EqualsIgnoreCase(op.name, name)) {
        return true;
      }
    }
  }
  return false;
}

// (route configuration); when two levels set the same header, the later one wins.
bool OverwrittenLater(const HeaderMutations* const* levels, std::size_t n, std::size_t level,
                      const HeaderOp& op) {
  if (op.action == HeaderOp::Action::kAppend)
    return false;
  for (std::size_t j = level + 1; j < n; ++j) {
    if (!levels[j])
      continue;
    for (const HeaderOp& later : levels[j]->add) {
      if (later.action == HeaderOp::Action::kOverwriteIfExistsOrAdd &&
          http::EqualsIgnoreCase(later.name, op.name)) {
        return true;
      }
    }
  }
  return false;
}

}  // namespace sluice::proxy::engine
