// The stand-ins' requests, parsed by the proxy's HTTP/1.1 codec and copied into owned
// strings; their responses, serialised.
#include "http_message.h"

#include <ctime>

namespace sluice::apps {
namespace {

namespace http = proxy::http;

constexpr std::string_view kCrlf = "\r\n";

char Lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}
char Upper(char c) {
  return (c >= 'a' && c <= 'z') ? static_cast<char>(c - 'a' + 'A') : c;
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

}  // namespace

std::optional<std::string_view> Request::Header(std::string_view name) const {
  for (const auto& [k, v] : headers)
    if (EqualsIgnoreCase(k, name))
      return std::string_view(v);
  return std::nullopt;
}

ParseStatus ParseRequest(std::string_view buffer, const ParseLimits& limits, Request& request) {
  http::Limits head_limits;
  head_limits.max_head_bytes = limits.max_head_bytes;
  head_limits.max_headers = http::kMaxHeadersHard;
  http::RequestHead head;
  switch (http::ParseRequest(buffer, head_limits, &head)) {
    case http::ParseStatus::kIncomplete:
      // A client that sends nonsense (a TLS hello on the plain port) and waits gets its
      // 400 now instead of a hang.
      if (!http::CouldBeRequest(buffer))
        return Bad(400, "invalid method");
      return {};
    case http::ParseStatus::kError:
      return Bad(head.error_status, head.error ? head.error : "bad request");
    case http::ParseStatus::kDone:
      break;
  }
  std::string_view body_bytes = buffer.substr(head.head_len);
  if (head.content_length > 0 &&
      static_cast<uint64_t>(head.content_length) > limits.max_body_bytes) {
    return Bad(413, "request body too large");
  }
  std::size_t length = 0;  // of the body as sent
  if (head.chunked) {
    http::ChunkedDecoder walk;  // the framing only: the body is copied once it is whole
    length = walk.Feed(body_bytes, nullptr);
    if (walk.failed())
      return Bad(400, walk.error());
    if (walk.body_size() > limits.max_body_bytes)
      return Bad(413, "request body too large");
    if (!walk.done()) {
      ParseStatus st;
      st.expects_continue = head.expect_continue && body_bytes.empty();
      return st;
    }
  } else if (head.content_length > 0) {
    length = static_cast<std::size_t>(head.content_length);
    if (body_bytes.size() < length) {
      ParseStatus st;
      st.expects_continue = head.expect_continue && body_bytes.empty();
      return st;
    }
  }

  request = Request{};
  request.method = std::string(head.method);
  request.target = std::string(head.target);
  request.path = std::string(head.path);
  request.query = std::string(head.query);
  request.version_minor = head.minor_version;
  request.keep_alive = head.keep_alive;
  request.headers.reserve(head.num_headers);
  for (std::size_t i = 0; i < head.num_headers; ++i)
    request.headers.emplace_back(std::string(head.headers[i].name),
                                 std::string(head.headers[i].value));
  if (head.chunked) {
    http::ChunkedDecoder decode;
    decode.Feed(body_bytes.substr(0, length), &request.body);
  } else {
    request.body = std::string(body_bytes.substr(0, length));
  }
  ParseStatus st;
  st.kind = ParseStatus::Kind::kComplete;
  st.consumed = head.head_len + length;
  return st;
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
