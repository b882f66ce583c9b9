// Zero-copy HTTP/1.1 codec: request and response heads are parsed in place, every
// field a string_view into the caller's buffer. Strict where a lenient parser would
// let a request be smuggled past another hop: anything ambiguous is an error with the
// status the proxy must answer (400, 413, 431, 501; 502 for a response).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace sluice::proxy::http {

// The headers the proxy acts on. The parser names each header once, so the proxy's
// per-header checks are an integer compare, not a case-insensitive string compare.
enum class HeaderId : uint8_t {
  kOther,
  kHost,
  kContentLength,
  kTransferEncoding,
  kConnection,
  kKeepAlive,
  kProxyConnection,
  kTe,
  kUpgrade,
  kExpect,
  kCookie,
  kUserAgent,
  kXRequestId,
  kXForwardedFor,
  kXForwardedProto,
  kXEnvoyAttemptCount,
  kXEnvoyUpstreamServiceTime,
};

// kOther for a name not in HeaderId.
HeaderId ClassifyHeader(std::string_view name);

struct Header {
  std::string_view name;   // as sent; compare with EqualsIgnoreCase
  std::string_view value;  // optional whitespace trimmed
  HeaderId id = HeaderId::kOther;

  // The header's whole line as received, "Name: value\r\n". A parsed head's lines are
  // contiguous, so headers i..j are the bytes from headers[i].line() to headers[j]'s end.
  std::string_view line() const {
    const char* end = value.data() + value.size();
    while (*end != '\n')  // past trailing whitespace; the parser checked the CRLF
      ++end;
    return {name.data(), static_cast<std::size_t>(end + 1 - name.data())};
  }
};

inline constexpr std::size_t kMaxHeadersHard = 128;

struct Limits {
  std::size_t max_head_bytes = 60 * 1024;  // Envoy's default max_request_headers_kb
  std::size_t max_headers = 100;           // Envoy's default max_headers_count
};

enum class ParseStatus { kIncomplete, kDone, kError };

// What both heads share: headers and the framing derived from them.
struct MessageHead {
  int minor_version = 1;
  Header headers[kMaxHeadersHard];
  std::size_t num_headers = 0;
  std::size_t head_len = 0;  // bytes of the head, final CRLF included
  bool chunked = false;
  int64_t content_length = -1;  // -1: none
  bool connection_close = false;
  bool connection_keep_alive = false;
  bool connection_upgrade = false;
  // Set when the result is kError.
  int error_status = 0;
  const char* error = nullptr;

  // First header with this name (case-insensitive), or empty with found=false.
  std::string_view Get(std::string_view name, bool* found = nullptr) const;
  std::string_view Get(HeaderId id, bool* found = nullptr) const;
};

struct RequestHead : MessageHead {
  std::string_view method;
  // As sent, except that an absolute-form target ("http://a.b:8080/p?q") becomes its
  // origin-form ("/p?q"; a static "/" when the path is empty).
  std::string_view target;
  std::string_view path;   // target up to '?'
  std::string_view query;  // after '?', without it
  // The Host header's value, or the absolute-form target's authority (RFC 9112 §3.2.2:
  // that replaces Host). Always a valid uri-host [ ":" port ], or empty in HTTP/1.0.
  std::string_view host;
  std::string_view upgrade;  // the Upgrade header when Connection: upgrade
  bool expect_continue = false;
  bool keep_alive = true;  // after this request, by version and Connection
};

struct ResponseHead : MessageHead {
  int status = 0;
  std::string_view reason;
  bool keep_alive = true;
  // No body by rule (1xx, 204, 304, or a response to HEAD).
  bool no_body = false;
  // Body runs until the connection closes.
  bool close_delimited = false;
  // A 1xx or 204 with "Content-Length: 0": accepted, but the header is not to be
  // forwarded (RFC 9110 §8.6: such a response has no Content-Length).
  bool drop_content_length = false;
};

bool EqualsIgnoreCase(std::string_view a, std::string_view b);
bool StartsWithIgnoreCase(std::string_view s, std::string_view prefix);

// Parses a request head from the start of buf. kIncomplete: read more (unless buf
// already exceeds the limit, which is a 431 error). Up to four empty lines before the
// request line are skipped and counted in head_len. A request line is refused as soon as
// it is complete and invalid, before the rest of the head arrives.
ParseStatus ParseRequest(std::string_view buf, const Limits& limits, RequestHead* out);

// For a server that answers nonsense at once: false when the bytes received so far (an
// incomplete request line) cannot begin a request, because the method has a byte that is
// not a token character (a TLS ClientHello on a plain-text port does). ParseRequest
// itself waits for the line to end.
bool CouldBeRequest(std::string_view buf);

// Parses a response head; head_request tells that the request was HEAD.
ParseStatus ParseResponse(std::string_view buf, bool head_request, ResponseHead* out);

// A parsed head's views point into the buffer it was parsed from. When that buffer moves
// (it grew, or compacted before growing), MoveViews points every view that lay in the old
// bytes [from, from + len) at the same offset from `to`; views elsewhere (the static "/"
// of an absolute-form target) are left alone.
void MoveViews(RequestHead* r, const char* from, std::size_t len, const char* to);

// Incremental chunked-body decoder. Feed raw bytes; it consumes what it can and, when
// `out` is given, appends the payload. Trailers are checked and dropped: a malformed
// trailer line, or Content-Length, Transfer-Encoding or Host in the trailers, fails.
class ChunkedDecoder {
 public:
  enum class State {
    kSize,
    kSizeExt,
    kSizeLf,
    kData,
    kDataCr,
    kDataLf,
    kTrailer,  // at the start of a trailer line
    kTrailerName,
    kTrailerValue,
    kTrailerLf,
    kDone,
    kError
  };
  // Returns bytes consumed; stops at the end of the body (Done) or on error.
  std::size_t Feed(std::string_view data, std::string* out);
  bool done() const { return state_ == State::kDone; }
  bool failed() const { return state_ == State::kError; }
  const char* error() const { return error_; }
  // The payload size of every chunk whose size line has been read, the current chunk's
  // whole size included: a server can refuse a body that would be too large before its
  // data arrives.
  uint64_t body_size() const { return body_size_; }
  // The value of a grpc-status trailer, once read (a gRPC response relayed as HTTP/1.1
  // carries its status there; the access log and Istio's metrics read it). nullopt:
  // none; a value longer than any status reads as "" (not a number).
  std::optional<std::string_view> grpc_status() const {
    if (!has_grpc_status_)
      return std::nullopt;
    std::string_view v(grpc_status_,
                       grpc_status_len_ <= sizeof(grpc_status_) ? grpc_status_len_ : 0);
    while (!v.empty() && (v.back() == ' ' || v.back() == '\t'))
      v.remove_suffix(1);
    return v;
  }
  // Keeps the trailer section's field lines ("name: value\r\n" each) as they are read,
  // for a hop that passes trailers on (an HTTP/2 upstream; TrailerFields splits them).
  void CaptureTrailers() { capture_trailers_ = true; }
  std::string_view trailers() const { return trailers_; }
  void Reset() { *this = ChunkedDecoder(); }

 private:
  bool capture_trailers_ = false;
  std::string trailers_;
  State state_ = State::kSize;
  uint64_t remaining_ = 0;
  uint64_t body_size_ = 0;
  int size_digits_ = 0;
  static constexpr std::size_t kMaxTrailerBytes = 16 * 1024;
  // A trailer name's first bytes, enough to tell the fields trailers may not carry.
  char trailer_name_[sizeof("transfer-encoding") - 1] = {};
  std::size_t trailer_name_len_ = 0;
  bool trailer_empty_line_ = false;
  std::size_t trailer_bytes_ = 0;
  bool in_grpc_status_ = false, has_grpc_status_ = false;
  char grpc_status_[11] = {};
  std::size_t grpc_status_len_ = 0;
  const char* error_ = nullptr;
};

// The fields of trailer lines as ChunkedDecoder::trailers() holds them, in order, values
// without their surrounding whitespace.
std::vector<std::pair<std::string_view, std::string_view>> TrailerFields(std::string_view lines);

// Standard reason phrase ("Not Found"), "Unknown" for others.
std::string_view ReasonPhrase(int status);

}  // namespace sluice::proxy::http
