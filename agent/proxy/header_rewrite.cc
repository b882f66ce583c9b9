// Header rewriting: request ids and the mutation lists' lookups (see header_rewrite.h).
#include "header_rewrite.h"

namespace sluice::proxy::engine {

void FormatUuid4(uint64_t a, uint64_t b, char (&out)[40]) {
  static constexpr char kHex[] = "0123456789abcdef";
  a = (a & 0xffffffffffff0fffull) | 0x4000ull;
  b = (b & 0x3fffffffffffffffull) | 0x8000000000000000ull;
  char* p = out;
  for (int i = 0; i < 16; ++i) {
    if (i == 8 || i == 12)
      *p++ = '-';
    *p++ = kHex[(a >> (60 - 4 * i)) & 0xf];
  }
  for (int i = 0; i < 16; ++i) {
    if (i == 0 || i == 4)
      *p++ = '-';
    *p++ = kHex[(b >> (60 - 4 * i)) & 0xf];
  }
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
