// Whether a failed attempt is tried again, and after how long: the router's retry
// decision as pure functions of the route's RetryPolicy (Envoy's retry_on conditions
// and its fully jittered exponential backoff). A session applies them
// (Session::ScheduleRetry in agent/proxy/retry.cc), which also keeps to the route's
// num_retries and the cluster's retry budget (max_retries). Tested without sockets in
// tests/proxy/retry_test.cc.
#pragma once

#include <cstdint>

#include "sluice/proxy/config.h"

namespace sluice::proxy {

// How an attempt's upstream connection failed before its response began.
enum class UpstreamFailure {
  kConnect,   // could not connect (or the connect timed out)
  kReset,     // closed or reset before the response was complete
  kProtocol,  // answered something that is not a valid HTTP/1.1 response
  kRefused,   // an HTTP/2 stream the server refused (REFUSED_STREAM, or above its GOAWAY):
              // it never reached the application
};

// A connect failure is retried on connect-failure, 5xx, gateway-error or reset; a reset
// or a protocol error on reset, 5xx or gateway-error.
bool RetriableFailure(const RetryPolicy& rp, UpstreamFailure f);

// A response head: on 5xx (status >= 500), gateway-error (502, 503, 504), or a status
// among retriable_status_codes when retriable-status-codes is set.
bool RetriableStatus(const RetryPolicy& rp, int status);

// A gRPC response's grpc-status (a trailers-only response: grpc-status in its head, as
// Envoy reads it; a response whose head went downstream can no longer be retried): on
// cancelled (1), deadline-exceeded (4), resource-exhausted (8), internal (13) or
// unavailable (14), each when its retry_on condition is set.
bool RetriableGrpcStatus(const RetryPolicy& rp, int grpc_status);

// An attempt past its per_try_timeout: on 5xx, gateway-error or reset.
bool RetriableTimeout(const RetryPolicy& rp);

// The wait before retry number `retry` (1 for the first): `random` reduced into
// [0, base * 2^retry), the bound capped at max(base, max_interval); base is at least
// 1 ms. Envoy's fully jittered exponential backoff.
int64_t RetryBackoffMs(const RetryPolicy& rp, uint32_t retry, uint64_t random);

}  // namespace sluice::proxy
