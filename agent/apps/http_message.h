// HTTP/1.1 messages for the stand-in workloads: requests as owned strings for the
// handlers, parsed from a byte buffer by the proxy's codec (sluice/proxy/http_codec.h:
// one HTTP/1.1 parser, with one set of rules, for the proxy and the apps), and a
// response serialiser. Plain functions over plain structs, so the wire rules are tested
// without sockets.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "sluice/common/result.h"
#include "sluice/proxy/http_codec.h"

namespace sluice::apps {

// Header names keep the spelling the client sent; lookups ignore case.
using HeaderList = std::vector<std::pair<std::string, std::string>>;

struct Request {
  std::string method;
  std::string target;     // as sent: "/get?a=1"
  std::string path;       // target without the query: "/get"
  std::string query;      // after '?', undecoded: "a=1"
  int version_minor = 1;  // HTTP/1.<minor>
  HeaderList headers;
  std::string body;
  // Whether the connection stays open after the response (HTTP/1.1 default, 1.0 opt-in,
  // `Connection: close` wins), as the codec reads the head.
  bool keep_alive = true;

  // First header with this name (case-insensitive), if any.
  [[nodiscard]] std::optional<std::string_view> Header(std::string_view name) const;
  [[nodiscard]] bool KeepAlive() const { return keep_alive; }
};

struct Response {
  int status = 200;
  HeaderList headers;  // Content-Length and Connection are added by Serialize
  std::string body;
};

struct ParseLimits {
  std::size_t max_head_bytes = 64 * 1024;         // request line + headers
  std::size_t max_body_bytes = 10 * 1024 * 1024;  // decoded body
};

// Outcome of one parse attempt over the bytes received so far.
struct ParseStatus {
  enum class Kind {
    kIncomplete,  // need more bytes
    kComplete,    // `request` filled, `consumed` bytes used
    kBad,         // malformed: answer `error_status` with `error` and close
  };
  Kind kind = Kind::kIncomplete;
  std::size_t consumed = 0;
  int error_status = 400;
  std::string error;
  // Set once the head is complete and the client waits for "100 Continue".
  bool expects_continue = false;
};

// Parses one request from the front of `buffer`. Call again with more bytes while it
// answers kIncomplete (parsing restarts from the front; heads are small). The head is
// the codec's (http::ParseRequest, with its statuses: 400, 431, 501); a method that
// cannot be one is refused before its line ends (http::CouldBeRequest); the body is
// read by Content-Length or the codec's chunked decoder, within max_body_bytes (413).
ParseStatus ParseRequest(std::string_view buffer, const ParseLimits& limits, Request& request);

// Wire form of a response to `request_method` (HEAD gets no body); adds Content-Length,
// Date and Connection.
std::string Serialize(const Response& response, std::string_view request_method, bool keep_alive);

// One reason-phrase table for the proxy and the apps: the codec's.
using proxy::http::ReasonPhrase;

// "x-request-id" -> "X-Request-Id", the spelling httpbin prints.
std::string CanonicalHeaderName(std::string_view name);

// Percent-decoding of a query component ('+' is a space). Bad escapes stay as they are.
std::string DecodeQueryComponent(std::string_view in);

// "a=1&b=2&a=3" -> [(a,1),(b,2),(a,3)], decoded, order kept.
std::vector<std::pair<std::string, std::string>> ParseQuery(std::string_view query);

using proxy::http::EqualsIgnoreCase;

}  // namespace sluice::apps
