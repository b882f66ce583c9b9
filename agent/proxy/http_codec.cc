// The HTTP/1.1 codec's rules, each from RFC 9110/9112 or from Envoy where the RFC
// leaves a choice; docs/l7-proxy.md lists them with the status each error answers.
#include "sluice/proxy/http_codec.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>
#include <utility>

namespace sluice::proxy::http {
namespace {

// RFC 9110 tchar.
constexpr bool IsTokenCharSlow(unsigned char c) {
  if (c >= '0' && c <= '9')
    return true;
  if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z')
    return true;
  switch (c) {
    case '!':
    case '#':
    case '$':
    case '%':
    case '&':
    case '\'':
    case '*':
    case '+':
    case '-':
    case '.':
    case '^':
    case '_':
    case '`':
    case '|':
    case '~':
      return true;
    default:
      return false;
  }
}

// Field values: visible ASCII, obs-text, SP and HTAB. No CR, LF, NUL or other CTLs.
constexpr bool IsValueChar(unsigned char c) {
  return c == '\t' || (c >= 0x20 && c != 0x7f);
}

// The tchar set as a table: header names are scanned byte by byte.
struct TokenTable {
  bool t[256] = {};
  constexpr TokenTable() {
    for (int c = 0; c < 256; ++c)
      t[c] = IsTokenCharSlow(static_cast<unsigned char>(c));
  }
};
inline constexpr TokenTable kTokenTable;

constexpr bool IsTokenChar(unsigned char c) {
  return kTokenTable.t[c];
}

// Skips value characters 8 at a time while none of the 8 is a CTL (HTAB included) or
// DEL; the caller's byte loop then finds where the value ends (or why it is invalid).
const char* SkipPlainValueBytes(const char* p, const char* end) {
  constexpr uint64_t kOnes = 0x0101010101010101ULL, kHigh = 0x8080808080808080ULL;
  while (end - p >= 8) {
    uint64_t x;
    std::memcpy(&x, p, 8);
    const uint64_t below_space = (x - kOnes * 0x20) & ~x & kHigh;  // some byte < 0x20
    const uint64_t d = x ^ (kOnes * 0x7f);
    const uint64_t del = (d - kOnes) & ~d & kHigh;  // some byte == 0x7f
    if (below_space | del)
      break;
    p += 8;
  }
  return p;
}

// Request-target: visible ASCII, no spaces or controls.
constexpr bool IsTargetChar(unsigned char c) {
  return c > 0x20 && c != 0x7f;
}

constexpr bool IsHexDigit(unsigned char c) {
  return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f');
}

// RFC 3986 unreserved / sub-delims: what a reg-name holds besides pct-encoded octets.
constexpr bool IsRegNameChar(unsigned char c) {
  if ((c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z'))
    return true;
  switch (c) {
    case '-':
    case '.':
    case '_':
    case '~':
    case '!':
    case '$':
    case '&':
    case '\'':
    case '(':
    case ')':
    case '*':
    case '+':
    case ',':
    case ';':
    case '=':
      return true;
    default:
      return false;
  }
}

constexpr char Lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c;
}

// ASCII A-Z of 8 bytes at once to a-z; every other byte unchanged.
inline uint64_t Lower8(uint64_t x) {
  constexpr uint64_t kLow7 = 0x7f7f7f7f7f7f7f7fULL, kHigh = 0x8080808080808080ULL;
  const uint64_t h = x & kLow7;
  const uint64_t ge_a = h + 0x3f3f3f3f3f3f3f3fULL;  // high bit: byte >= 'A' (0x41)
  const uint64_t gt_z = h + 0x2525252525252525ULL;  // high bit: byte >= '[' (0x5b)
  const uint64_t upper = ge_a & ~gt_z & ~x & kHigh;
  return x | (upper >> 2);  // 0x80 >> 2 == 0x20
}

inline uint64_t Load8(const char* p) {
  uint64_t x;
  std::memcpy(&x, p, 8);
  return x;
}

// EqualsIgnoreCase, inline here.
inline bool EqualsNoCase(std::string_view a, std::string_view b) {
  const std::size_t n = a.size();
  if (n != b.size())
    return false;
  if (n >= 8) {
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      if (Lower8(Load8(a.data() + i)) != Lower8(Load8(b.data() + i)))
        return false;
    }
    // The last 8 bytes (overlapping the ones compared) cover the tail.
    return i == n || Lower8(Load8(a.data() + n - 8)) == Lower8(Load8(b.data() + n - 8));
  }
  for (std::size_t i = 0; i < n; ++i) {
    if (Lower(a[i]) != Lower(b[i]))
      return false;
  }
  return true;
}

constexpr bool IsOws(char c) {
  return c == ' ' || c == '\t';
}

inline std::string_view TrimOws(std::string_view v) {
  if (v.empty() || (!IsOws(v.front()) && !IsOws(v.back())))
    return v;  // the usual case: nothing to trim
  while (!v.empty() && IsOws(v.front()))
    v.remove_prefix(1);
  while (!v.empty() && IsOws(v.back()))
    v.remove_suffix(1);
  return v;
}

// Does a comma-separated list contain this token (case-insensitive)?
bool ListHasToken(std::string_view list, std::string_view token) {
  while (!list.empty()) {
    std::size_t comma = list.find(',');
    std::string_view item = TrimOws(list.substr(0, comma));
    if (EqualsIgnoreCase(item, token))
      return true;
    if (comma == std::string_view::npos)
      break;
    list.remove_prefix(comma + 1);
  }
  return false;
}

ParseStatus Error(MessageHead* m, int status, const char* why) {
  m->error_status = status;
  m->error = why;
  return ParseStatus::kError;
}

// IP-literal without its brackets: IPv6address or IPvFuture (RFC 3986 §3.2.2). No zone
// identifiers (RFC 6874 is not part of RFC 9110's URI).
bool IsValidIpLiteral(std::string_view s) {
  if (!s.empty() && (s[0] == 'v' || s[0] == 'V')) {
    std::size_t dot = s.find('.');
    if (dot == std::string_view::npos || dot == 1 || dot + 1 == s.size())
      return false;
    for (std::size_t i = 1; i < dot; ++i) {
      if (!IsHexDigit(static_cast<unsigned char>(s[i])))
        return false;
    }
    for (std::size_t i = dot + 1; i < s.size(); ++i) {
      if (!IsRegNameChar(static_cast<unsigned char>(s[i])) && s[i] != ':')
        return false;
    }
    return true;
  }
  char buf[48];  // the longest IPv6 text form is 45 characters
  if (s.size() >= sizeof(buf))
    return false;
  std::memcpy(buf, s.data(), s.size());
  buf[s.size()] = '\0';
  in6_addr a;
  return inet_pton(AF_INET6, buf, &a) == 1;
}

// RFC 9110 §4.2.1 and §7.2: uri-host [ ":" port ], uri-host = IP-literal / IPv4address /
// reg-name, port = *DIGIT. The host may not be empty (an "http" URI with an empty host
// is invalid). IPv4address needs no case of its own: its characters are a reg-name's.
bool IsValidAuthority(std::string_view a) {
  std::size_t host_end;
  if (!a.empty() && a[0] == '[') {
    host_end = a.find(']');
    if (host_end == std::string_view::npos || !IsValidIpLiteral(a.substr(1, host_end - 1)))
      return false;
    ++host_end;
  } else {
    host_end = std::min(a.find(':'), a.size());
    if (host_end == 0)
      return false;
    for (std::size_t i = 0; i < host_end; ++i) {
      auto c = static_cast<unsigned char>(a[i]);
      if (c == '%') {  // pct-encoded
        if (i + 2 >= host_end || !IsHexDigit(static_cast<unsigned char>(a[i + 1])) ||
            !IsHexDigit(static_cast<unsigned char>(a[i + 2]))) {
          return false;
        }
        i += 2;
      } else if (!IsRegNameChar(c)) {
        return false;
      }
    }
  }
  if (host_end == a.size())
    return true;
  if (a[host_end] != ':')
    return false;
  for (std::size_t i = host_end + 1; i < a.size(); ++i) {
    if (a[i] < '0' || a[i] > '9')
      return false;
  }
  return true;
}

// Transfer-Encoding: only "chunked" alone frames a body here. The rest is refused with
// the status RFC 9112 gives: when chunked is not the final coding (or is not there at
// all) a request's length cannot be determined (§6.3: 400, then close); chunked applied
// twice is invalid (§6.1); chunked after codings we do not implement is 501 (§6.1). A
// response gets 502 for all of these (ParseResponse): RFC 9112 would read a response
// without a final chunked as close-delimited, but a proxy that relays it cannot make every
// client read the same framing, and Envoy refuses such a response too.
ParseStatus CheckTransferEncoding(std::string_view value, MessageHead* m) {
  if (EqualsIgnoreCase(value, "chunked")) {
    m->chunked = true;
    return ParseStatus::kDone;
  }
  bool last_chunked = false;
  bool chunked_before_last = false;
  while (true) {
    std::size_t comma = value.find(',');
    std::string_view item = TrimOws(value.substr(0, comma));
    std::string_view coding = TrimOws(item.substr(0, item.find(';')));
    if (coding.empty())
      return Error(m, 400, "invalid Transfer-Encoding");
    for (char c : coding) {
      if (!IsTokenChar(static_cast<unsigned char>(c)))
        return Error(m, 400, "invalid Transfer-Encoding");
    }
    chunked_before_last |= last_chunked;
    last_chunked = EqualsIgnoreCase(coding, "chunked");
    if (comma == std::string_view::npos)
      break;
    value.remove_prefix(comma + 1);
  }
  if (!last_chunked)
    return Error(m, 400, "Transfer-Encoding: chunked is not the final coding");
  if (chunked_before_last)
    return Error(m, 400, "Transfer-Encoding: chunked applied more than once");
  return Error(m, 501, "unsupported Transfer-Encoding");
}

// Finds the end of the head: "\r\n\r\n". A bare LF anywhere in the head is an error,
// reported by the line parser; here we only look for the terminator.
std::size_t FindHeadEnd(std::string_view buf) {
  const char* p = buf.data();
  const char* end = p + buf.size();
  while (true) {
    const void* lf = std::memchr(p, '\n', static_cast<std::size_t>(end - p));
    if (lf == nullptr)
      return std::string_view::npos;
    const char* l = static_cast<const char*>(lf);
    // "\r\n\r\n" ends at l when l[-1]=='\r', l[-2]=='\n', l[-3]=='\r'
    if (l - buf.data() >= 3 && l[-1] == '\r' && l[-2] == '\n' && l[-3] == '\r') {
      return static_cast<std::size_t>(l - buf.data()) + 1;
    }
    // A bare "\n\n" would also end a lenient head; find it so the strict parser can
    // refuse it rather than wait forever.
    if (l - buf.data() >= 1 && l[-1] == '\n')
      return static_cast<std::size_t>(l - buf.data()) + 1;
    p = l + 1;
  }
}

// Parses header lines in [p, end) (end is just after the final CRLF CRLF).
ParseStatus ParseHeaders(const char* p, const char* end, std::size_t max_headers, MessageHead* m) {
  bool seen_cl = false;
  bool seen_te = false;
  while (true) {
    if (p >= end)
      return Error(m, 400, "truncated head");
    if (*p == '\r') {
      if (p + 1 < end && p[1] == '\n')
        return ParseStatus::kDone;
      return Error(m, 400, "bare CR in head");
    }
    if (*p == '\n')
      return Error(m, 400, "bare LF in head");
    if (*p == ' ' || *p == '\t')
      return Error(m, 400, "obsolete line folding");
    const char* name_start = p;
    // Four bytes per step while all four are tchars (one branch), then byte by byte.
    const bool* tc = kTokenTable.t;
    auto at = [&p](int i) { return static_cast<unsigned char>(p[i]); };
    while (end - p >= 4 && (tc[at(0)] & tc[at(1)] & tc[at(2)] & tc[at(3)]))
      p += 4;
    while (p < end && IsTokenChar(static_cast<unsigned char>(*p)))
      ++p;
    if (p == name_start || p >= end || *p != ':') {
      return Error(m, 400,
                   (p < end && (*p == ' ' || *p == '\t')) ? "whitespace before colon"
                                                          : "invalid header name");
    }
    std::string_view name(name_start, static_cast<std::size_t>(p - name_start));
    ++p;
    const char* value_start = p;
    p = SkipPlainValueBytes(p, end);
    while (p < end && IsValueChar(static_cast<unsigned char>(*p)))
      ++p;
    if (p + 1 >= end || p[0] != '\r' || p[1] != '\n') {
      if (p < end && *p == '\n')
        return Error(m, 400, "bare LF in head");
      return Error(m, 400, "invalid character in header value");
    }
    std::string_view value =
        TrimOws(std::string_view(value_start, static_cast<std::size_t>(p - value_start)));
    p += 2;
    if (m->num_headers >= max_headers || m->num_headers >= kMaxHeadersHard) {
      return Error(m, 431, "too many headers");
    }
    const Header& h = m->headers[m->num_headers++] = Header{name, value, ClassifyHeader(name)};

    switch (h.id) {
      case HeaderId::kContentLength: {
        if (seen_cl)
          return Error(m, 400, "duplicate Content-Length");
        seen_cl = true;
        if (value.empty() || value.size() > 18)
          return Error(m, 400, "invalid Content-Length");
        int64_t n = 0;
        for (char c : value) {
          if (c < '0' || c > '9')
            return Error(m, 400, "invalid Content-Length");
          n = n * 10 + (c - '0');
        }
        m->content_length = n;
        break;
      }
      case HeaderId::kTransferEncoding:
        if (seen_te)
          return Error(m, 400, "duplicate Transfer-Encoding");
        seen_te = true;
        if (CheckTransferEncoding(value, m) != ParseStatus::kDone)
          return ParseStatus::kError;
        break;
      case HeaderId::kConnection:
        if (ListHasToken(value, "close"))
          m->connection_close = true;
        if (ListHasToken(value, "keep-alive"))
          m->connection_keep_alive = true;
        if (ListHasToken(value, "upgrade"))
          m->connection_upgrade = true;
        break;
      default:
        break;
    }
  }
}

}  // namespace

namespace {

// name (any case) against a known lowercase name of the same length: only `name` needs
// lowering, 8 bytes at a time (the last 8 overlapping).
inline bool IsKnownName(std::string_view name, std::string_view known) {
  const std::size_t n = known.size();
  if (n < 8) {
    for (std::size_t i = 0; i < n; ++i) {
      if (Lower(name[i]) != known[i])
        return false;
    }
    return true;
  }
  for (std::size_t i = 0; i + 8 <= n; i += 8) {
    if (Lower8(Load8(name.data() + i)) != Load8(known.data() + i))
      return false;
  }
  return Lower8(Load8(name.data() + n - 8)) == Load8(known.data() + n - 8);
}

}  // namespace

HeaderId ClassifyHeader(std::string_view name) {
  // By length first: most names are ruled out by one compare.
  auto is = [&](std::string_view known, HeaderId id) {
    return IsKnownName(name, known) ? id : HeaderId::kOther;
  };
  switch (name.size()) {
    case 2:
      return is("te", HeaderId::kTe);
    case 4:
      return is("host", HeaderId::kHost);
    case 6:
      return Lower(name[0]) == 'c' ? is("cookie", HeaderId::kCookie)
                                   : is("expect", HeaderId::kExpect);
    case 7:
      return is("upgrade", HeaderId::kUpgrade);
    case 10:
      switch (Lower(name[0])) {
        case 'c':
          return is("connection", HeaderId::kConnection);
        case 'k':
          return is("keep-alive", HeaderId::kKeepAlive);
        case 'u':
          return is("user-agent", HeaderId::kUserAgent);
        default:
          return HeaderId::kOther;
      }
    case 12:
      return is("x-request-id", HeaderId::kXRequestId);
    case 14:
      return is("content-length", HeaderId::kContentLength);
    case 15:
      return is("x-forwarded-for", HeaderId::kXForwardedFor);
    case 16:
      return is("proxy-connection", HeaderId::kProxyConnection);
    case 17:
      return Lower(name[0]) == 't' ? is("transfer-encoding", HeaderId::kTransferEncoding)
                                   : is("x-forwarded-proto", HeaderId::kXForwardedProto);
    case 21:
      return is("x-envoy-attempt-count", HeaderId::kXEnvoyAttemptCount);
    case 29:
      return is("x-envoy-upstream-service-time", HeaderId::kXEnvoyUpstreamServiceTime);
    default:
      return HeaderId::kOther;
  }
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  return EqualsNoCase(a, b);
}

bool StartsWithIgnoreCase(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && EqualsIgnoreCase(s.substr(0, prefix.size()), prefix);
}

namespace {

template <class Match>
std::string_view FirstValue(const MessageHead& m, Match match, bool* found) {
  for (std::size_t i = 0; i < m.num_headers; ++i) {
    if (match(m.headers[i])) {
      if (found)
        *found = true;
      return m.headers[i].value;
    }
  }
  if (found)
    *found = false;
  return {};
}

}  // namespace

std::string_view MessageHead::Get(std::string_view name, bool* found) const {
  return FirstValue(
      *this, [&](const Header& h) { return EqualsIgnoreCase(h.name, name); }, found);
}

std::string_view MessageHead::Get(HeaderId id, bool* found) const {
  return FirstValue(
      *this, [&](const Header& h) { return h.id == id; }, found);
}

namespace {

// RFC 9112 §2.2: a server SHOULD ignore at least one empty line (CRLF) received before
// the request-line (some clients send one after a POST body). A few are ignored; more
// are not a client being sloppy.
constexpr int kMaxLeadingEmptyLines = 4;

// absolute-form (RFC 9112 §3.2.2): "http" or "https" "://" authority path-abempty
// [ "?" query ]. On success target becomes the origin-form (the path, "/" when empty,
// and the query) and *authority the authority.
ParseStatus ParseAbsoluteForm(RequestHead* r, std::string_view* authority) {
  std::string_view t = r->target;
  std::size_t sep = t.find("://");
  if (sep == std::string_view::npos)
    return Error(r, 400, "invalid request target");
  std::string_view scheme = t.substr(0, sep);
  if (!EqualsIgnoreCase(scheme, "http") && !EqualsIgnoreCase(scheme, "https"))
    return Error(r, 400, "absolute-form target with a scheme other than http or https");
  t.remove_prefix(sep + 3);
  std::size_t auth_end = t.find_first_of("/?");
  *authority = t.substr(0, auth_end);
  if (!IsValidAuthority(*authority))
    return Error(r, 400, "invalid authority in the absolute-form target");
  if (auth_end == std::string_view::npos) {
    r->target = "/";  // static: the buffer holds no "/" to point at
  } else if (t[auth_end] == '?') {
    // The origin-form would be "/?query", which is not a view into the buffer.
    return Error(r, 400, "absolute-form target with a query but no path");
  } else {
    r->target = t.substr(auth_end);
  }
  return ParseStatus::kDone;
}

// method SP request-target SP HTTP-version CRLF; `line` ends with its LF.
ParseStatus ParseRequestLine(std::string_view line, RequestHead* r) {
  const char* p = line.data();
  const char* end = p + line.size() - 1;  // at the LF
  if (end == p || end[-1] != '\r')
    return Error(r, 400, "bare LF after the request line");
  --end;  // at the CR
  const char* m0 = p;
  while (p < end && IsTokenChar(static_cast<unsigned char>(*p)))
    ++p;
  if (p == m0 || p == end || *p != ' ')
    return Error(r, 400, "invalid method");
  r->method = std::string_view(m0, static_cast<std::size_t>(p - m0));
  ++p;
  const char* t0 = p;
  while (p < end && IsTargetChar(static_cast<unsigned char>(*p)))
    ++p;
  if (p == t0)
    return Error(r, 400, "invalid request target");
  if (p == end)  // HTTP/0.9's "GET /path": we speak 1.0 and 1.1 only
    return Error(r, 400, "request line without an HTTP version");
  if (*p != ' ')
    return Error(r, 400, "invalid request target");
  r->target = std::string_view(t0, static_cast<std::size_t>(p - t0));
  ++p;
  if (end - p != 8 || std::memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '0' && p[7] != '1'))
    return Error(r, 400, "invalid HTTP version");
  r->minor_version = p[7] - '0';
  return ParseStatus::kDone;
}

}  // namespace

void MoveViews(RequestHead* r, const char* from, std::size_t len, const char* to) {
  auto move = [&](std::string_view& v) {
    if (!v.empty() && v.data() >= from && v.data() < from + len)
      v = {to + (v.data() - from), v.size()};
  };
  for (std::string_view* v : {&r->method, &r->target, &r->path, &r->query, &r->host, &r->upgrade})
    move(*v);
  for (std::size_t i = 0; i < r->num_headers; ++i) {
    move(r->headers[i].name);
    move(r->headers[i].value);
  }
}

ParseStatus ParseRequest(std::string_view buf, const Limits& limits, RequestHead* r) {
  r->num_headers = 0;
  r->chunked = false;
  r->content_length = -1;
  r->connection_close = r->connection_keep_alive = r->connection_upgrade = false;
  r->expect_continue = false;
  r->upgrade = {};
  r->host = {};
  r->error_status = 0;
  r->error = nullptr;

  // Skip the empty lines before the request line; they count in head_len, so the caller
  // consumes them with the head.
  std::size_t start = 0;
  for (int n = 0; start < buf.size(); ++n) {
    std::size_t eol = buf[start] == '\n' ? 1 : buf.substr(start, 2) == "\r\n" ? 2 : 0;
    if (eol == 0)
      break;
    if (n == kMaxLeadingEmptyLines)
      return Error(r, 400, "too many empty lines before the request line");
    start += eol;
  }
  std::string_view rest = buf.substr(start);

  // The request line is checked as soon as it is complete: a request that can never be
  // valid (HTTP/0.9, not HTTP at all) is refused without waiting for a head that may
  // never come.
  std::size_t line_end = rest.find('\n');
  if (line_end == std::string_view::npos) {
    if (buf.size() > limits.max_head_bytes)
      return Error(r, 431, "request head too large");
    return ParseStatus::kIncomplete;
  }
  if (start + line_end >= limits.max_head_bytes)
    return Error(r, 431, "request head too large");
  if (ParseRequestLine(rest.substr(0, line_end + 1), r) != ParseStatus::kDone)
    return ParseStatus::kError;

  std::size_t head_end = FindHeadEnd(rest);
  if (head_end == std::string_view::npos) {
    if (buf.size() > limits.max_head_bytes)
      return Error(r, 431, "request head too large");
    return ParseStatus::kIncomplete;
  }
  if (start + head_end > limits.max_head_bytes)
    return Error(r, 431, "request head too large");
  r->head_len = start + head_end;
  const char* end = rest.data() + head_end;
  ParseStatus st = ParseHeaders(rest.data() + line_end + 1, end, limits.max_headers, r);
  if (st != ParseStatus::kDone)
    return st;

  // RFC 9112 §3.2.2: a proxy ignores the Host header of an absolute-form request and
  // uses the target's authority; it forwards the origin-form. (Envoy does the same.)
  std::string_view authority;
  bool absolute_form = r->target[0] != '/' && r->target != "*" && r->method != "CONNECT";
  if (absolute_form && ParseAbsoluteForm(r, &authority) != ParseStatus::kDone)
    return ParseStatus::kError;
  std::size_t q = r->target.find('?');
  r->path = r->target.substr(0, q);
  r->query = q == std::string_view::npos ? std::string_view() : r->target.substr(q + 1);

  // RFC 9112 §3.2: 400 for an HTTP/1.1 request without Host, for more than one Host,
  // and for an invalid Host value, even when absolute-form makes Host unused.
  bool host_seen = false;
  for (std::size_t i = 0; i < r->num_headers; ++i) {
    const Header& h = r->headers[i];
    if (h.id == HeaderId::kHost) {
      if (host_seen)
        return Error(r, 400, "duplicate Host");
      host_seen = true;
      if (!h.value.empty() && !IsValidAuthority(h.value))
        return Error(r, 400, "invalid Host");
      r->host = h.value;
    } else if (h.id == HeaderId::kExpect) {
      if (EqualsIgnoreCase(h.value, "100-continue"))
        r->expect_continue = true;
    } else if (h.id == HeaderId::kUpgrade) {
      r->upgrade = h.value;
    }
  }
  if (r->minor_version == 1 && (!host_seen || r->host.empty()))
    return Error(r, 400, "missing Host");
  if (absolute_form)
    r->host = authority;
  if (r->chunked && r->content_length >= 0) {
    return Error(r, 400, "both Content-Length and Transfer-Encoding");
  }
  if (r->chunked && r->minor_version == 0)
    return Error(r, 400, "Transfer-Encoding in HTTP/1.0");
  if (!r->connection_upgrade)
    r->upgrade = {};
  // RFC 9112 §9.3: close always wins; HTTP/1.0 persists only with keep-alive.
  r->keep_alive = !r->connection_close && (r->minor_version == 1 || r->connection_keep_alive);
  return ParseStatus::kDone;
}

bool CouldBeRequest(std::string_view buf) {
  std::size_t i = 0;
  while (i < buf.size() && (buf[i] == '\r' || buf[i] == '\n'))
    ++i;  // empty lines before the request line (ParseRequest bounds how many)
  for (; i < buf.size() && buf[i] != ' '; ++i) {
    if (!IsTokenChar(static_cast<unsigned char>(buf[i])))
      return false;
  }
  return true;
}

ParseStatus ParseResponse(std::string_view buf, bool head_request, ResponseHead* r) {
  r->num_headers = 0;
  r->chunked = false;
  r->content_length = -1;
  r->drop_content_length = false;
  r->connection_close = r->connection_keep_alive = r->connection_upgrade = false;
  r->error_status = 0;
  r->error = nullptr;
  std::size_t head_end = FindHeadEnd(buf);
  if (head_end == std::string_view::npos) {
    if (buf.size() > 256 * 1024)
      return Error(r, 502, "response head too large");
    return ParseStatus::kIncomplete;
  }
  r->head_len = head_end;
  const char* p = buf.data();
  const char* end = p + head_end;
  if (end - p < 14 || std::memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '0' && p[7] != '1') ||
      p[8] != ' ') {
    return Error(r, 502, "invalid status line");
  }
  r->minor_version = p[7] - '0';
  p += 9;
  int status = 0;
  for (int i = 0; i < 3; ++i) {
    if (p[i] < '0' || p[i] > '9')
      return Error(r, 502, "invalid status code");
    status = status * 10 + (p[i] - '0');
  }
  if (status < 100)
    return Error(r, 502, "invalid status code");
  r->status = status;
  p += 3;
  const char* reason0 = p;
  while (p < end && *p != '\r' && *p != '\n')
    ++p;
  if (p + 1 >= end || p[0] != '\r' || p[1] != '\n')
    return Error(r, 502, "invalid status line");
  r->reason = TrimOws(std::string_view(reason0, static_cast<std::size_t>(p - reason0)));
  p += 2;
  ParseStatus st = ParseHeaders(p, end, kMaxHeadersHard, r);
  if (st != ParseStatus::kDone) {
    r->error_status = 502;
    return st;
  }
  if (r->chunked && r->content_length >= 0)
    return Error(r, 502, "both Content-Length and Transfer-Encoding");
  // RFC 9110 §8.6, RFC 9112 §6.1: a server MUST NOT send Content-Length or
  // Transfer-Encoding in a 1xx or 204 response. As in Envoy (strict 1xx/204 headers),
  // either is an upstream protocol error, except "Content-Length: 0", which is harmless
  // and only dropped. A 304's Content-Length describes the representation: it stays.
  // 101 is left alone: the connection stops being HTTP after it.
  if ((status >= 100 && status < 200 && status != 101) || status == 204) {
    if (r->chunked)
      return Error(r, 502, "Transfer-Encoding in a 1xx or 204 response");
    if (r->content_length > 0)
      return Error(r, 502, "non-zero Content-Length in a 1xx or 204 response");
    r->drop_content_length = r->content_length == 0;
  }
  r->no_body = head_request || (status >= 100 && status < 200) || status == 204 || status == 304;
  r->close_delimited = !r->no_body && !r->chunked && r->content_length < 0;
  r->keep_alive = !r->close_delimited && !r->connection_close &&
                  (r->minor_version == 1 || r->connection_keep_alive);
  return ParseStatus::kDone;
}

std::size_t ChunkedDecoder::Feed(std::string_view data, std::string* out) {
  std::size_t i = 0;
  auto fail = [&](const char* why) {
    state_ = State::kError;
    error_ = why;
    return i;
  };
  while (i < data.size()) {
    char c = data[i];
    switch (state_) {
      case State::kSize: {
        int v = -1;
        if (c >= '0' && c <= '9')
          v = c - '0';
        else if (c >= 'a' && c <= 'f')
          v = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
          v = c - 'A' + 10;
        if (v >= 0) {
          if (++size_digits_ > 15)
            return fail("chunk size too large");
          remaining_ = remaining_ * 16 + static_cast<uint64_t>(v);
          ++i;
          break;
        }
        if (size_digits_ == 0)
          return fail("invalid chunk size");
        if (c == ';') {
          state_ = State::kSizeExt;
          ++i;
        } else if (c == '\r') {
          state_ = State::kSizeLf;
          ++i;
        } else {
          return fail("invalid chunk size");
        }
        break;
      }
      case State::kSizeExt:
        if (c == '\r')
          state_ = State::kSizeLf;
        else if (!IsValueChar(static_cast<unsigned char>(c)))
          return fail("invalid chunk extension");
        ++i;
        break;
      case State::kSizeLf:
        if (c != '\n')
          return fail("bare CR after chunk size");
        ++i;
        size_digits_ = 0;
        if (remaining_ == 0) {
          state_ = State::kTrailer;
        } else {
          body_size_ += remaining_;  // < 2^60 per chunk, whose data comes first
          state_ = State::kData;
        }
        break;
      case State::kData: {
        std::size_t n = data.size() - i;
        if (n > remaining_)
          n = static_cast<std::size_t>(remaining_);
        if (out)
          out->append(data.data() + i, n);
        i += n;
        remaining_ -= n;
        if (remaining_ == 0)
          state_ = State::kDataCr;
        break;
      }
      case State::kDataCr:
        if (c != '\r')
          return fail("missing CRLF after chunk data");
        state_ = State::kDataLf;
        ++i;
        break;
      case State::kDataLf:
        if (c != '\n')
          return fail("missing CRLF after chunk data");
        state_ = State::kSize;
        ++i;
        break;
      // Trailer fields: "name: value" lines, checked as strictly as the head's, until an
      // empty line. Their bytes are counted against a bound and otherwise dropped.
      case State::kTrailer:  // at the start of a line
        if (c == '\r') {
          state_ = State::kTrailerLf;
          trailer_empty_line_ = true;
          ++i;
          break;
        }
        if (c == ' ' || c == '\t')
          return fail("obsolete line folding in trailer");
        state_ = State::kTrailerName;
        trailer_name_len_ = 0;
        break;  // the same byte again, as part of the name
      case State::kTrailerName:
        if (++trailer_bytes_ > kMaxTrailerBytes)
          return fail("trailers too large");
        if (IsTokenChar(static_cast<unsigned char>(c))) {
          if (trailer_name_len_ < sizeof(trailer_name_))
            trailer_name_[trailer_name_len_] = c;
          ++trailer_name_len_;
          if (capture_trailers_)
            trailers_.push_back(c);
          ++i;
          break;
        }
        if (c != ':' || trailer_name_len_ == 0)
          return fail("invalid trailer field");
        if (trailer_name_len_ <= sizeof(trailer_name_)) {
          // RFC 9110 §6.5.1: fields that frame or route the message are not allowed in
          // trailers; a hop that merged them into the head would read them as real.
          switch (ClassifyHeader(std::string_view(trailer_name_, trailer_name_len_))) {
            case HeaderId::kContentLength:
              return fail("Content-Length in trailers");
            case HeaderId::kTransferEncoding:
              return fail("Transfer-Encoding in trailers");
            case HeaderId::kHost:
              return fail("Host in trailers");
            default:
              break;
          }
        }
        in_grpc_status_ =
            EqualsIgnoreCase(
                std::string_view(trailer_name_, std::min(trailer_name_len_, sizeof(trailer_name_))),
                "grpc-status") &&
            trailer_name_len_ == sizeof("grpc-status") - 1;
        if (in_grpc_status_) {
          has_grpc_status_ = true;
          grpc_status_len_ = 0;
        }
        if (capture_trailers_)
          trailers_.push_back(':');
        state_ = State::kTrailerValue;
        ++i;
        break;
      case State::kTrailerValue:
        if (++trailer_bytes_ > kMaxTrailerBytes)
          return fail("trailers too large");
        if (in_grpc_status_ && c != '\r' && !(grpc_status_len_ == 0 && (c == ' ' || c == '\t'))) {
          if (grpc_status_len_ < sizeof(grpc_status_))
            grpc_status_[grpc_status_len_] = c;
          ++grpc_status_len_;
        }
        if (c == '\r') {
          state_ = State::kTrailerLf;
          trailer_empty_line_ = false;
        } else if (c == '\n') {
          return fail("bare LF in trailer");
        } else if (!IsValueChar(static_cast<unsigned char>(c))) {
          return fail("invalid character in trailer value");
        }
        if (capture_trailers_)
          trailers_.push_back(c);
        ++i;
        break;
      case State::kTrailerLf:
        if (c != '\n')
          return fail("bare CR in trailer");
        ++i;
        if (trailer_empty_line_) {
          state_ = State::kDone;
          return i;
        }
        if (capture_trailers_)
          trailers_.push_back('\n');
        state_ = State::kTrailer;
        break;
      case State::kDone:
      case State::kError:
        return i;
    }
  }
  return i;
}

std::vector<std::pair<std::string_view, std::string_view>> TrailerFields(std::string_view lines) {
  std::vector<std::pair<std::string_view, std::string_view>> fields;
  while (!lines.empty()) {
    const std::size_t eol = lines.find("\r\n");
    std::string_view line = lines.substr(0, eol);
    lines.remove_prefix(eol == std::string_view::npos ? lines.size() : eol + 2);
    const std::size_t colon = line.find(':');
    if (colon == std::string_view::npos || colon == 0)
      continue;
    std::string_view value = line.substr(colon + 1);
    while (!value.empty() && (value.front() == ' ' || value.front() == '\t'))
      value.remove_prefix(1);
    while (!value.empty() && (value.back() == ' ' || value.back() == '\t'))
      value.remove_suffix(1);
    fields.emplace_back(line.substr(0, colon), value);
  }
  return fields;
}

std::string_view ReasonPhrase(int status) {
  // Envoy's phrases (Http::CodeUtility::toString) for the statuses Sluice and its
  // stand-in apps send; 413 is "Payload Too Large" there, RFC 9110's older name.
  static constexpr std::pair<int, std::string_view> kPhrases[] = {
      {100, "Continue"},
      {101, "Switching Protocols"},
      {200, "OK"},
      {201, "Created"},
      {202, "Accepted"},
      {204, "No Content"},
      {206, "Partial Content"},
      {301, "Moved Permanently"},
      {302, "Found"},
      {303, "See Other"},
      {304, "Not Modified"},
      {307, "Temporary Redirect"},
      {308, "Permanent Redirect"},
      {400, "Bad Request"},
      {401, "Unauthorized"},
      {403, "Forbidden"},
      {404, "Not Found"},
      {405, "Method Not Allowed"},
      {408, "Request Timeout"},
      {409, "Conflict"},
      {411, "Length Required"},
      {413, "Payload Too Large"},
      {418, "I'm a teapot"},
      {429, "Too Many Requests"},
      {431, "Request Header Fields Too Large"},
      {500, "Internal Server Error"},
      {501, "Not Implemented"},
      {502, "Bad Gateway"},
      {503, "Service Unavailable"},
      {504, "Gateway Timeout"},
      {505, "HTTP Version Not Supported"},
  };
  for (const auto& [code, phrase] : kPhrases) {
    if (code == status)
      return phrase;
  }
  return "Unknown";
}

}  // namespace sluice::proxy::http
