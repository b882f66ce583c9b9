// gRPC semantics as pure functions (sluice/proxy/grpc.h): content-type, grpc-timeout,
// route timeouts, trailers-only local replies and grpc-status. Tested in
// tests/proxy/grpc_test.cc.
#include "sluice/proxy/grpc.h"

#include <algorithm>
#include <cstdio>

namespace sluice::proxy::grpc {

namespace {

constexpr std::string_view kGrpcContentType = "application/grpc";

bool AllDigits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

uint64_t ToNumber(std::string_view digits) {
  uint64_t v = 0;
  for (char c : digits)
    v = v * 10 + static_cast<uint64_t>(c - '0');
  return v;
}

// A sub-millisecond count in milliseconds, rounded up.
Millis CeilMillis(uint64_t count, uint64_t per_ms) {
  return Millis{static_cast<int64_t>((count + per_ms - 1) / per_ms)};
}

}  // namespace

bool IsGrpcContentType(std::string_view content_type) {
  if (content_type.substr(0, kGrpcContentType.size()) != kGrpcContentType)
    return false;
  if (content_type.size() == kGrpcContentType.size())
    return true;
  char next = content_type[kGrpcContentType.size()];
  return next == '+' || next == ';';
}

bool IsGrpcRequest(std::string_view path, std::string_view content_type) {
  return !path.empty() && IsGrpcContentType(content_type);
}

std::optional<Millis> ParseGrpcTimeout(std::string_view value) {
  if (value.size() < 2)
    return std::nullopt;
  std::string_view digits = value.substr(0, value.size() - 1);
  if (digits.size() > 8 || !AllDigits(digits))
    return std::nullopt;
  uint64_t n = ToNumber(digits);
  switch (value.back()) {
    case 'H':
      return Millis{static_cast<int64_t>(n) * 3600 * 1000};
    case 'M':
      return Millis{static_cast<int64_t>(n) * 60 * 1000};
    case 'S':
      return Millis{static_cast<int64_t>(n) * 1000};
    case 'm':
      return Millis{static_cast<int64_t>(n)};
    case 'u':
      return CeilMillis(n, 1000);
    case 'n':
      return CeilMillis(n, 1000 * 1000);
    default:
      return std::nullopt;
  }
}

std::string FormatGrpcTimeout(Millis timeout) {
  uint64_t t = timeout.count() > 0 ? static_cast<uint64_t>(timeout.count()) : 0;
  char unit = 'm';
  if (t > kMaxTimeoutValue) {
    t /= 1000;
    unit = 'S';
  }
  if (t > kMaxTimeoutValue) {
    t /= 60;
    unit = 'M';
  }
  if (t > kMaxTimeoutValue) {
    t /= 60;
    unit = 'H';
  }
  t = std::min(t, kMaxTimeoutValue);
  return std::to_string(t) + unit;
}

RequestTimeouts RouteTimeouts(const RouteAction& route, bool grpc_request,
                              std::optional<std::string_view> grpc_timeout,
                              Millis hcm_max_stream_duration) {
  const StreamTimeouts& st = route.stream_timeouts;
  RequestTimeouts t;
  std::optional<Millis> header;
  if (grpc_timeout)
    header = ParseGrpcTimeout(*grpc_timeout);

  if (st.has_max_stream_duration) {
    // Envoy's connection manager (refreshDurationTimeout), which reads grpc-timeout on
    // any request (only a gRPC one has it rewritten); the router's own timeout is none
    // on such a route.
    std::optional<Millis> d;
    if (header && st.grpc_timeout_header_max) {
      Millis v = *header;
      Millis cap = *st.grpc_timeout_header_max;
      if (cap.count() != 0 && v > cap)
        v = cap;
      if (v.count() != 0 && st.grpc_timeout_header_offset)
        v = *st.grpc_timeout_header_offset < v ? v - *st.grpc_timeout_header_offset : Millis{0};
      d = v;
    } else if (st.max_stream_duration) {
      if (st.max_stream_duration->count() != 0)
        d = *st.max_stream_duration;
    } else if (hcm_max_stream_duration.count() != 0) {
      d = hcm_max_stream_duration;
    }
    t.stream_duration = d;
    if (d && grpc_request) {
      t.grpc_header = RequestTimeouts::GrpcHeader::kFixed;
      t.grpc_timeout_fixed = *d;
    }
  } else {
    if (grpc_request && st.max_grpc_timeout) {
      // Envoy's router (finalTimeout): the offset first, then the cap.
      Millis v = header.value_or(Millis{0});
      if (st.grpc_timeout_offset && *st.grpc_timeout_offset < v)
        v -= *st.grpc_timeout_offset;
      Millis cap = *st.max_grpc_timeout;
      if (cap.count() != 0 && (v.count() == 0 || v > cap))
        v = cap;
      t.route = v;
      t.grpc_header = RequestTimeouts::GrpcHeader::kPerAttempt;
    } else {
      t.route = route.timeout;
    }
    // Outside Envoy's "new timeouts" a stream has the connection manager's duration.
    if (hcm_max_stream_duration.count() != 0)
      t.stream_duration = hcm_max_stream_duration;
  }

  t.per_try = route.retry.per_try_timeout;
  if (t.route.count() != 0 && t.per_try >= t.route)
    t.per_try = Millis{0};
  return t;
}

std::optional<Millis> UpstreamGrpcTimeout(const RequestTimeouts& t, Millis elapsed) {
  switch (t.grpc_header) {
    case RequestTimeouts::GrpcHeader::kForward:
      return std::nullopt;
    case RequestTimeouts::GrpcHeader::kFixed:
      return t.grpc_timeout_fixed;
    case RequestTimeouts::GrpcHeader::kPerAttempt:
      break;
  }
  // Envoy's setTimeoutHeaders.
  Millis expected = t.per_try.count() != 0 ? t.per_try : t.route;
  if (expected.count() == 0)
    return std::nullopt;
  if (t.route.count() != 0)
    expected = elapsed >= t.route ? Millis{1} : std::min(expected, t.route - elapsed);
  return expected;
}

Status HttpToGrpcStatus(int http_status) {
  switch (http_status) {
    case 400:
      return kInternal;
    case 401:
      return kUnauthenticated;
    case 403:
      return kPermissionDenied;
    case 404:
      return kUnimplemented;
    case 429:
    case 502:
    case 503:
    case 504:
      return kUnavailable;
    default:
      return kUnknown;
  }
}

std::string PercentEncodeGrpcMessage(std::string_view message) {
  std::string out;
  out.reserve(message.size());
  for (char ch : message) {
    auto c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c > 0x7e || c == '%') {
      char buf[4];
      std::snprintf(buf, sizeof buf, "%%%02X", c);
      out += buf;
    } else {
      out += ch;
    }
  }
  return out;
}

std::vector<Field> LocalReplyHead(int http_status, std::string_view body,
                                  std::optional<Status> grpc_status) {
  std::vector<Field> head;
  head.push_back({":status", "200"});
  head.push_back({"content-type", std::string(kGrpcContentType)});
  head.push_back({"grpc-status", std::to_string(static_cast<int>(
                                     grpc_status.value_or(HttpToGrpcStatus(http_status))))});
  if (!body.empty() && body.back() == '\n')
    body.remove_suffix(1);
  if (!body.empty())
    head.push_back({"grpc-message", PercentEncodeGrpcMessage(body)});
  return head;
}

std::optional<int> ParseGrpcStatus(std::string_view value) {
  if (value.size() > 10 || !AllDigits(value))
    return std::nullopt;
  uint64_t n = ToNumber(value);
  if (n > static_cast<uint64_t>(INT32_MAX))
    return std::nullopt;
  return static_cast<int>(n);
}

std::string GrpcStatusForLog(std::optional<std::string_view> header_status,
                             std::optional<std::string_view> trailer_status, int http_status) {
  // Envoy's order: trailers, then headers (trailers-only), then the HTTP status.
  for (const auto& v : {trailer_status, header_status}) {
    if (v && !v->empty()) {  // an empty value is no value, as in Envoy
      std::optional<int> s = ParseGrpcStatus(*v);
      return s ? std::to_string(*s) : std::string();
    }
  }
  if (http_status != 0)
    return std::to_string(static_cast<int>(HttpToGrpcStatus(http_status)));
  return {};
}

}  // namespace sluice::proxy::grpc
