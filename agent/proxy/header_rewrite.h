// What the proxy writes into the heads it forwards: the hop-by-hop headers it drops, the
// route's header mutations (Envoy's request_headers_to_add/remove and
// response_headers_to_add/remove at the weighted-cluster, route, virtual-host and
// route-configuration levels), runs of unchanged header lines copied with one append,
// numbers written without formatting, and generated request ids. The request and
// response paths (router.cc, session_response.cc) call these once or twice per
// request, so the small ones are inline.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/proxy/buffer.h"
#include "sluice/proxy/config.h"
#include "sluice/proxy/http_codec.h"

namespace sluice::proxy::engine {

// Decimal digits of v, written by hand (no locale, no format parsing on the hot path).
inline void AppendNum(Buffer& b, uint64_t v) {
  char tmp[20];
  char* end = tmp + sizeof(tmp);
  char* p = end;
  do {
    *--p = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0);
  b.Append(std::string_view(p, static_cast<std::size_t>(end - p)));
}

// A random UUIDv4 in its text form (36 characters and a NUL): a generated x-request-id.
void FormatUuid4(uint64_t a, uint64_t b, char (&out)[40]);

inline bool IsHopByHop(http::HeaderId id) {
  using enum http::HeaderId;
  return id == kConnection || id == kKeepAlive || id == kProxyConnection || id == kTe ||
         id == kUpgrade || id == kExpect;
}

// Is n (case-insensitive) one of names?
bool InList(const std::vector<std::string>& names, std::string_view n);

inline bool AnyMutations(const HeaderMutations* const* levels, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    if (levels[i] && !levels[i]->empty())
      return true;
  }
  return false;
}

// Header lines forwarded as received: adjacent lines of a parsed head are contiguous
// in its buffer, so a run of them goes out with one append.
class LineRun {
 public:
  explicit LineRun(Buffer& dst) : dst_(dst) {}
  void Add(const http::Header& h) {
    std::string_view line = h.line();
    if (run_.empty())
      run_ = line;
    else
      run_ = {run_.data(), static_cast<std::size_t>(line.data() + line.size() - run_.data())};
  }
  // Ends the run (before anything else is appended).
  void Flush() {
    dst_.Append(run_);
    run_ = {};
  }

 private:
  Buffer& dst_;
  std::string_view run_;
};

// Does any mutation list drop or replace this header?
bool Replaced(const HeaderMutations* const* levels, std::size_t n, std::string_view name);

// Envoy applies mutations from the most specific level (weighted cluster) to the least
// (route configuration); when two levels set the same header, the later one wins.
bool OverwrittenLater(const HeaderMutations* const* levels, std::size_t n, std::size_t level,
                      const HeaderOp& op);

// The headers the levels add to a head (request or response) `h`, in Envoy's order.
template <class Head>
void EmitAdds(Buffer& dst, const HeaderMutations* const* levels, std::size_t n, const Head& h) {
  for (std::size_t i = 0; i < n; ++i) {
    if (!levels[i])
      continue;
    for (const HeaderOp& op : levels[i]->add) {
      bool present = false;
      h.Get(op.name, &present);
      if (op.action == HeaderOp::Action::kAddIfAbsent && present)
        continue;
      if (op.action == HeaderOp::Action::kOverwriteIfExists && !present)
        continue;
      if (OverwrittenLater(levels, n, i, op))
        continue;
      dst.Append(op.name);
      dst.Append(": ");
      dst.Append(op.value);
      dst.Append("\r\n");
    }
  }
}

}  // namespace sluice::proxy::engine
