#include "http_message.h"

#include <charconv>
#include <ctime>

namespace sluice::apps {
namespace {

constexpr std::string_view kCrlf = "\r\n";

bool IsTokenChar(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
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

bool IsToken(std::string_view s) {
  if (s.empty())
    return false;
  for (char c : s)
    if (!IsTokenChar(c))
      return false;
  return true;
}

char Lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}
char Upper(char c) {
  return (c >= 'a' && c <= 'z') ? static_cast<char>(c - 'a' + 'A') : c;
}

std::string_view TrimOws(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t'))
    s.remove_suffix(1);
  return s;
}

ParseStatus Bad(int status, std::string message) {
  ParseStatus st;
  st.kind = ParseStatus::Kind::kBad;
  st.error_status = status;
  st.error = std::move(message);
  return st;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  c = Lower(c);
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  return -1;
}

// Decodes a chunked body starting at `in`. Returns kIncomplete until the last chunk
// and the trailers are all there; `consumed` counts the encoded bytes. With `out` null it
// only walks the chunk headers, so the caller can wait for a whole body without copying
// it again on every read.
ParseStatus DecodeChunked(std::string_view in, std::size_t max_body, std::string* out) {
  if (out)
    out->clear();
  std::size_t decoded = 0;
  std::size_t pos = 0;
  for (;;) {
    std::size_t eol = in.find(kCrlf, pos);
    if (eol == std::string_view::npos) {
      if (in.size() - pos > 1024)
        return Bad(400, "chunk size line too long");
      return {};
    }
    std::string_view line = in.substr(pos, eol - pos);
    if (std::size_t semi = line.find(';'); semi != std::string_view::npos)
      line = line.substr(0, semi);  // chunk extensions are ignored
    line = TrimOws(line);
    if (line.empty() || line.size() > 15)
      return Bad(400, "bad chunk size");
    std::size_t size = 0;
    for (char c : line) {
      int v = HexValue(c);
      if (v < 0)
        return Bad(400, "bad chunk size");
      size = size * 16 + static_cast<std::size_t>(v);
    }
    pos = eol + 2;
    if (size == 0) {
      // Trailer section: header lines until an empty line; their content is dropped.
      for (;;) {
        std::size_t tl = in.find(kCrlf, pos);
        if (tl == std::string_view::npos)
          return {};
        bool empty = tl == pos;
        pos = tl + 2;
        if (empty) {
          ParseStatus st;
          st.kind = ParseStatus::Kind::kComplete;
          st.consumed = pos;
          return st;
        }
      }
    }
    if (decoded + size > max_body)
      return Bad(413, "request body too large");
    if (in.size() - pos < size + 2)
      return {};
    decoded += size;
    if (out)
      out->append(in.substr(pos, size));
    pos += size;
    if (in.substr(pos, 2) != kCrlf)
      return Bad(400, "chunk data not followed by CRLF");
    pos += 2;
  }
}

}  // namespace

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size())
    return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (Lower(a[i]) != Lower(b[i]))
      return false;
  return true;
}

std::optional<std::string_view> Request::Header(std::string_view name) const {
  for (const auto& [k, v] : headers)
    if (EqualsIgnoreCase(k, name))
      return std::string_view(v);
  return std::nullopt;
}

bool Request::KeepAlive() const {
  // Connection is a token list ("keep-alive, Upgrade"); look for close / keep-alive.
  bool close = false, keep = false;
  for (const auto& [k, v] : headers) {
    if (!EqualsIgnoreCase(k, "connection"))
      continue;
    std::string_view rest = v;
    while (!rest.empty()) {
      std::size_t comma = rest.find(',');
      std::string_view tok = TrimOws(rest.substr(0, comma));
      if (EqualsIgnoreCase(tok, "close"))
        close = true;
      else if (EqualsIgnoreCase(tok, "keep-alive"))
        keep = true;
      if (comma == std::string_view::npos)
        break;
      rest.remove_prefix(comma + 1);
    }
  }
  if (close)
    return false;
  return version_minor >= 1 || keep;
}

ParseStatus ParseRequest(std::string_view buffer, const ParseLimits& limits, Request& request) {
  // RFC 9112 2.2: ignore empty lines before the request line.
  std::size_t start = 0;
  while (buffer.substr(start, 2) == kCrlf)
    start += 2;
  std::size_t head_end = buffer.find("\r\n\r\n", start);
  if (head_end == std::string_view::npos) {
    if (buffer.size() - start > limits.max_head_bytes)
      return Bad(431,
                 "request head larger than " + std::to_string(limits.max_head_bytes) + " bytes");
    // The method can be checked before the head is complete, so a client that sends
    // nonsense (a TLS hello on the plain port) and waits gets its 400 instead of a hang.
    std::string_view first = buffer.substr(start);
    std::size_t sp = first.find(' ');
    std::string_view method = first.substr(0, sp);
    if (method.size() > 32 || (!method.empty() && !IsToken(method)))
      return Bad(400, "malformed method");
    return {};
  }
  if (head_end - start > limits.max_head_bytes)
    return Bad(431, "request head larger than " + std::to_string(limits.max_head_bytes) + " bytes");

  std::string_view head = buffer.substr(start, head_end - start);
  std::size_t line_end = head.find(kCrlf);
  std::string_view line = head.substr(0, line_end);
  std::string_view rest =
      line_end == std::string_view::npos ? std::string_view{} : head.substr(line_end + 2);

  // Request line: method SP target SP version, exactly one space each.
  std::size_t sp1 = line.find(' ');
  std::size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp1 == std::string_view::npos || sp2 == std::string_view::npos ||
      line.find(' ', sp2 + 1) != std::string_view::npos)
    return Bad(400, "malformed request line");
  std::string_view method = line.substr(0, sp1);
  std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  std::string_view version = line.substr(sp2 + 1);
  if (!IsToken(method))
    return Bad(400, "malformed method");
  if (version.size() != 8 || version.substr(0, 5) != "HTTP/" || version[6] != '.' ||
      version[5] < '0' || version[5] > '9' || version[7] < '0' || version[7] > '9')
    return Bad(400, "malformed HTTP version");
  if (version[5] != '1')
    return Bad(505, "HTTP version not supported");
  for (char c : target)
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f)
      return Bad(400, "control character in request target");
  // Absolute form (as sent to proxies): keep only the path and query.
  if (target.starts_with("http://") || target.starts_with("https://")) {
    std::size_t authority = target.find("//") + 2;
    std::size_t slash = target.find('/', authority);
    std::size_t qmark = target.find('?', authority);
    if (slash == std::string_view::npos || (qmark != std::string_view::npos && qmark < slash))
      target = "/";
    else
      target = target.substr(slash);
  }
  if (target.empty() || (target.front() != '/' && !(target == "*" && method == "OPTIONS")))
    return Bad(400, "malformed request target");

  request = Request{};
  request.method = std::string(method);
  request.target = std::string(target);
  std::size_t q = target.find('?');
  request.path = std::string(target.substr(0, q));
  if (q != std::string_view::npos)
    request.query = std::string(target.substr(q + 1));
  request.version_minor = version[7] - '0';

  while (!rest.empty()) {
    std::size_t eol = rest.find(kCrlf);
    std::string_view hl = rest.substr(0, eol);
    rest = eol == std::string_view::npos ? std::string_view{} : rest.substr(eol + 2);
    if (!hl.empty() && (hl.front() == ' ' || hl.front() == '\t'))
      return Bad(400, "obsolete header line folding");
    std::size_t colon = hl.find(':');
    if (colon == std::string_view::npos)
      return Bad(400, "header line without ':'");
    std::string_view name = hl.substr(0, colon);
    if (!IsToken(name))
      return Bad(400, "malformed header name");
    std::string_view value = TrimOws(hl.substr(colon + 1));
    for (char c : value)
      if ((static_cast<unsigned char>(c) < 0x20 && c != '\t') || c == 0x7f)
        return Bad(400, "control character in header " + std::string(name));
    request.headers.emplace_back(std::string(name), std::string(value));
  }
  if (request.version_minor >= 1 && !request.Header("host"))
    return Bad(400, "HTTP/1.1 request without Host header");

  std::size_t body_start = head_end + 4;
  std::string_view body_bytes = buffer.substr(body_start);
  bool expects_continue = false;
  if (auto e = request.Header("expect"); e && EqualsIgnoreCase(*e, "100-continue"))
    expects_continue = true;

  auto te = request.Header("transfer-encoding");
  std::optional<std::string_view> cl;
  for (const auto& [k, v] : request.headers) {
    if (!EqualsIgnoreCase(k, "content-length"))
      continue;
    if (cl && *cl != v)
      return Bad(400, "conflicting Content-Length headers");
    cl = v;
  }
  if (te) {
    if (cl)
      return Bad(400, "both Transfer-Encoding and Content-Length");
    if (!EqualsIgnoreCase(TrimOws(*te), "chunked"))
      return Bad(501, "unsupported Transfer-Encoding " + std::string(*te));
    ParseStatus st = DecodeChunked(body_bytes, limits.max_body_bytes, nullptr);
    if (st.kind == ParseStatus::Kind::kComplete) {
      DecodeChunked(body_bytes, limits.max_body_bytes, &request.body);
      st.consumed += body_start;
    } else if (st.kind == ParseStatus::Kind::kIncomplete)
      st.expects_continue = expects_continue && body_bytes.empty();
    return st;
  }
  std::size_t length = 0;
  if (cl) {
    auto [p, ec] = std::from_chars(cl->data(), cl->data() + cl->size(), length);
    if (ec != std::errc{} || p != cl->data() + cl->size())
      return Bad(400, "malformed Content-Length");
    if (length > limits.max_body_bytes)
      return Bad(413, "request body too large");
  }
  if (body_bytes.size() < length) {
    ParseStatus st;
    st.expects_continue = expects_continue && body_bytes.empty();
    return st;
  }
  request.body = std::string(body_bytes.substr(0, length));
  ParseStatus st;
  st.kind = ParseStatus::Kind::kComplete;
  st.consumed = body_start + length;
  return st;
}

std::string_view ReasonPhrase(int status) {
  switch (status) {
    case 100:
      return "Continue";
    case 200:
      return "OK";
    case 201:
      return "Created";
    case 202:
      return "Accepted";
    case 204:
      return "No Content";
    case 206:
      return "Partial Content";
    case 301:
      return "Moved Permanently";
    case 302:
      return "Found";
    case 303:
      return "See Other";
    case 304:
      return "Not Modified";
    case 307:
      return "Temporary Redirect";
    case 308:
      return "Permanent Redirect";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 409:
      return "Conflict";
    case 411:
      return "Length Required";
    case 413:
      return "Content Too Large";
    case 418:
      return "I'm a teapot";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "Unknown";
  }
}

std::string Serialize(const Response& response, std::string_view request_method, bool keep_alive) {
  std::string out;
  out.reserve(256 + response.body.size());
  out += "HTTP/1.1 ";
  out += std::to_string(response.status);
  out += ' ';
  out += ReasonPhrase(response.status);
  out += kCrlf;
  char date[64];
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  std::strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
  out += "Date: ";
  out += date;
  out += kCrlf;
  for (const auto& [k, v] : response.headers) {
    out += k;
    out += ": ";
    out += v;
    out += kCrlf;
  }
  // 1xx, 204 and 304 never carry a body or a length (RFC 9110 8.6).
  bool bodiless = response.status < 200 || response.status == 204 || response.status == 304;
  if (!bodiless) {
    out += "Content-Length: ";
    out += std::to_string(response.body.size());
    out += kCrlf;
  }
  out += keep_alive ? "Connection: keep-alive\r\n" : "Connection: close\r\n";
  out += kCrlf;
  if (!bodiless && request_method != "HEAD")
    out += response.body;
  return out;
}

std::string CanonicalHeaderName(std::string_view name) {
  std::string out(name);
  bool up = true;
  for (char& c : out) {
    c = up ? Upper(c) : Lower(c);
    up = c == '-';
  }
  return out;
}

std::string DecodeQueryComponent(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (std::size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (c == '+') {
      out += ' ';
    } else if (c == '%' && i + 2 < in.size() && HexValue(in[i + 1]) >= 0 &&
               HexValue(in[i + 2]) >= 0) {
      out += static_cast<char>(HexValue(in[i + 1]) * 16 + HexValue(in[i + 2]));
      i += 2;
    } else {
      out += c;
    }
  }
  return out;
}

std::vector<std::pair<std::string, std::string>> ParseQuery(std::string_view query) {
  std::vector<std::pair<std::string, std::string>> out;
  while (!query.empty()) {
    std::size_t amp = query.find('&');
    std::string_view part = query.substr(0, amp);
    if (!part.empty()) {
      std::size_t eq = part.find('=');
      std::string_view k = part.substr(0, eq);
      std::string_view v = eq == std::string_view::npos ? std::string_view{} : part.substr(eq + 1);
      out.emplace_back(DecodeQueryComponent(k), DecodeQueryComponent(v));
    }
    if (amp == std::string_view::npos)
      break;
    query.remove_prefix(amp + 1);
  }
  return out;
}

}  // namespace sluice::apps
