// The retry decision: which failed attempts are tried again and after how long (pure
// functions of the route's RetryPolicy, sluice/proxy/retry.h, tested in
// tests/proxy/retry_test.cc), and Session::ScheduleRetry, which applies them within the
// route's num_retries and the cluster's retry budget and arms the backoff. Its callers
// are the failure paths: router.cc (a connect failure, reset or protocol error),
// session_response.cc (a retriable status) and session.cc (a per-try timeout).
// RetriableGrpcStatus has no caller yet: HTTP/2 sessions will apply it to gRPC responses.
#include "sluice/proxy/retry.h"

#include <algorithm>

#include "session.h"

namespace sluice::proxy {

bool RetriableFailure(const RetryPolicy& rp, UpstreamFailure f) {
  if (f == UpstreamFailure::kConnect)
    return rp.on_connect_failure || rp.on_5xx || rp.on_gateway_error || rp.on_reset;
  if (f == UpstreamFailure::kRefused)  // Envoy: refused-stream, and what retries resets
    return rp.on_refused_stream || rp.on_reset || rp.on_5xx || rp.on_gateway_error;
  return rp.on_reset || rp.on_5xx || rp.on_gateway_error;
}

bool RetriableStatus(const RetryPolicy& rp, int status) {
  bool retriable = (rp.on_5xx && status >= 500) ||
                   (rp.on_gateway_error && (status == 502 || status == 503 || status == 504));
  if (!retriable && rp.on_retriable_status_codes) {
    for (uint16_t c : rp.retriable_status_codes)
      retriable |= c == status;
  }
  return retriable;
}

bool RetriableGrpcStatus(const RetryPolicy& rp, int grpc_status) {
  switch (grpc_status) {
    case 1:
      return rp.on_grpc_cancelled;
    case 4:
      return rp.on_grpc_deadline_exceeded;
    case 8:
      return rp.on_grpc_resource_exhausted;
    case 13:
      return rp.on_grpc_internal;
    case 14:
      return rp.on_grpc_unavailable;
    default:
      return false;
  }
}

bool RetriableTimeout(const RetryPolicy& rp) {
  return rp.on_5xx || rp.on_gateway_error || rp.on_reset;
}

int64_t RetryBackoffMs(const RetryPolicy& rp, uint32_t retry, uint64_t random) {
  // Fully jittered exponential backoff, as Envoy: uniform in [0, base * 2^n), capped.
  int64_t base = std::max<int64_t>(1, rp.base_interval.count());
  int64_t ceiling = std::min<int64_t>(base << std::min<uint32_t>(retry, 10),
                                      std::max<int64_t>(base, rp.max_interval.count()));
  return static_cast<int64_t>(random % static_cast<uint64_t>(ceiling));
}

namespace engine {

bool Session::ScheduleRetry() {
  const RetryPolicy& rp = route->action.retry;
  if (retries_done >= rp.num_retries) {
    if (rp.num_retries > 0)
      flags |= kFlagURX;
    return false;
  }
  if (cluster->active_retries.load(std::memory_order_relaxed) >= cluster->limits.max_retries) {
    flags |= kFlagUO;
    w->stats().overflow.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  cluster->active_retries.fetch_add(1, std::memory_order_relaxed);
  retry_counted = true;
  ++retries_done;
  w->stats().retries.fetch_add(1, std::memory_order_relaxed);
  int64_t delay = RetryBackoffMs(rp, retries_done, w->Rand());
  phase = Phase::kBackoff;
  w->Arm(wait_timer, delay);
  return true;
}

}  // namespace engine
}  // namespace sluice::proxy
