// gRPC semantics of the L7 engine as pure functions (issue 18): recognising a gRPC
// request, the grpc-timeout header, a route's timeouts for a gRPC request (Envoy's
// max_stream_duration.grpc_timeout_header_max/offset and the deprecated
// max_grpc_timeout/grpc_timeout_offset), local replies as trailers-only gRPC responses,
// and the grpc-status a response carries (for the access log and istio_stats'
// grpc_response_status). The reference is Envoy's router and connection manager and
// gRPC's PROTOCOL-HTTP2.md and http-grpc-status-mapping.md. The retry side is
// RetriableGrpcStatus in retry.h. Nothing here touches a session yet: wiring these into
// HTTP/2 streams (h2_session.h) is the next step. Tested in tests/proxy/grpc_test.cc.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/proxy/config.h"

namespace sluice::proxy::grpc {

// The gRPC status codes (grpc/include/grpcpp/impl/codegen/status_code_enum.h).
enum Status : int {
  kOk = 0,
  kCancelled = 1,
  kUnknown = 2,
  kInvalidArgument = 3,
  kDeadlineExceeded = 4,
  kNotFound = 5,
  kAlreadyExists = 6,
  kPermissionDenied = 7,
  kResourceExhausted = 8,
  kFailedPrecondition = 9,
  kAborted = 10,
  kOutOfRange = 11,
  kUnimplemented = 12,
  kInternal = 13,
  kUnavailable = 14,
  kDataLoss = 15,
  kUnauthenticated = 16,
  kMaximumKnown = kUnauthenticated,
};

// ---------------------------------------------------------------- recognising gRPC

// A content-type of gRPC: "application/grpc" alone or followed by "+" (a subtype:
// "application/grpc+proto") or by ";" (parameters). Envoy's hasGrpcContentType accepts
// the first two; gRPC's own servers (grpc-go) accept ";" as well. Case-sensitive, as
// both are; "application/grpc-web" is not gRPC.
bool IsGrpcContentType(std::string_view content_type);

// Envoy's isGrpcRequestHeaders: a request with a :path and a gRPC content-type.
bool IsGrpcRequest(std::string_view path, std::string_view content_type);

// ---------------------------------------------------------------- grpc-timeout

// The largest TimeoutValue: at most 8 ASCII digits.
inline constexpr uint64_t kMaxTimeoutValue = 99999999;

// A grpc-timeout value ("<1 to 8 digits><unit>", units H M S m u n) in milliseconds,
// micro- and nanoseconds rounded up to the next millisecond (as Envoy). Anything else
// (empty, a sign, spaces, 9 digits, an unknown unit) is absent: nullopt, as a request
// without the header. "0m" is 0 ms.
std::optional<Millis> ParseGrpcTimeout(std::string_view value);

// A timeout as a grpc-timeout value, Envoy's toGrpcTimeout: in milliseconds when that
// fits in 8 digits, else in the first of seconds, minutes and hours that does (each
// conversion truncates); past 99999999 hours, 99999999H.
std::string FormatGrpcTimeout(Millis timeout);

// ---------------------------------------------------------------- route timeouts

// The timeouts a request runs under, from its route (RouteTimeouts). 0 is none.
struct RequestTimeouts {
  // The router's timeout (Envoy's global timeout): from the end of the request until
  // the response is complete; 504 UT when it fires.
  Millis route{0};
  // The retry policy's per_try_timeout, 0 when not below a non-zero route timeout.
  Millis per_try{0};
  // The stream's maximum duration (Envoy's max_stream_duration timer, from the
  // request's start): on expiry a 408 (gRPC: DEADLINE_EXCEEDED) if the response has not
  // begun, else a reset; flag DT. nullopt: none. 0: already expired (a grpc-timeout of
  // 0, or an offset that consumes it).
  std::optional<Millis> stream_duration;
  // What the grpc-timeout sent upstream becomes (UpstreamGrpcTimeout).
  enum class GrpcHeader {
    kForward,     // as received (or absent)
    kFixed,       // grpc_timeout_fixed (max_stream_duration: set once, at the start)
    kPerAttempt,  // the time left for each attempt (max_grpc_timeout: Envoy's router
                  // rewrites it on every attempt)
  };
  GrpcHeader grpc_header = GrpcHeader::kForward;
  Millis grpc_timeout_fixed{0};
};

// Envoy's rules for a request on `route`:
// - the route has max_stream_duration (Envoy's "new timeouts"): the route's `timeout`
//   does not apply. A request with a valid grpc-timeout header (any request, as
//   Envoy's connection manager reads it), on a route with grpc_timeout_header_max, runs for the
//   header's value capped by that max (0: no cap), then less grpc_timeout_header_offset (an offset
//   at least as large leaves 0); any other request runs for max_stream_duration (0: no limit) or,
//   without it, the connection manager's `hcm_max_stream_duration` (0: none). A gRPC request's
//   grpc-timeout upstream becomes that duration.
// - otherwise a gRPC request on a route with max_grpc_timeout: the route timeout is the
//   header's value (none when absent or 0) less grpc_timeout_offset when the offset is
//   smaller, capped by max_grpc_timeout (0: no cap); each attempt's grpc-timeout
//   upstream becomes the time it has left.
// - otherwise the route's `timeout`.
// grpc_timeout: the request's grpc-timeout header value, nullopt when absent.
RequestTimeouts RouteTimeouts(const RouteAction& route, bool grpc_request,
                              std::optional<std::string_view> grpc_timeout,
                              Millis hcm_max_stream_duration = Millis{0});

// The grpc-timeout to send upstream with an attempt that starts `elapsed` after the
// request completed (0 for the first), as Envoy's router sets it: kForward gives
// nullopt (leave the header alone); kFixed its value; kPerAttempt the per-try timeout
// or the route timeout, whichever is smaller and set, less the elapsed time (1 ms when
// none is left), or nullopt when neither is set.
std::optional<Millis> UpstreamGrpcTimeout(const RequestTimeouts& t, Millis elapsed);

// ---------------------------------------------------------------- local replies

// Envoy's httpToGrpcStatus (gRPC's http-grpc-status-mapping.md): 400 INTERNAL, 401
// UNAUTHENTICATED, 403 PERMISSION_DENIED, 404 UNIMPLEMENTED, 429/502/503/504
// UNAVAILABLE, anything else UNKNOWN.
Status HttpToGrpcStatus(int http_status);

// A grpc-message value: bytes outside 0x20-0x7E, and '%', as %XX (upper-case hex),
// the rest as is (PROTOCOL-HTTP2.md's Percent-Encoded).
std::string PercentEncodeGrpcMessage(std::string_view message);

struct Field {
  std::string name, value;
  bool operator==(const Field&) const = default;
};

// The head of the trailers-only response that replaces a local reply of `http_status`
// (no route 404, connect failure 503, timeout 504, ...) to a gRPC request, as Envoy's
// sendLocalReply: ":status" 200, "content-type" application/grpc, "grpc-status"
// (`grpc_status` when given, else HttpToGrpcStatus), and "grpc-message" with `body`
// percent-encoded (one trailing newline dropped) when the body is not empty. The
// response ends with this head: no body, no content-length.
std::vector<Field> LocalReplyHead(int http_status, std::string_view body,
                                  std::optional<Status> grpc_status = std::nullopt);

// ---------------------------------------------------------------- grpc-status

// A grpc-status value as a number: 1 to 10 digits, at most INT32_MAX (codes above 16
// are user-defined, as Envoy allows for logging); nullopt otherwise.
std::optional<int> ParseGrpcStatus(std::string_view value);

// The grpc-status of a response for the access log and istio_stats'
// grpc_response_status, as Envoy's getGrpcStatus(trailers, headers, info): the
// trailers' grpc-status if present (and not empty), else the response headers' (a trailers-only
// response), else, for a response that had a status, HttpToGrpcStatus of it; "" when
// none of these is there (no response), or the value found is not a number. Pass
// nullopt for a header that is absent, 0 for no HTTP status. Only meaningful for a gRPC
// request: the caller leaves the label empty for others.
std::string GrpcStatusForLog(std::optional<std::string_view> header_status,
                             std::optional<std::string_view> trailer_status, int http_status);

}  // namespace sluice::proxy::grpc
