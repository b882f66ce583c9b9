// The retry decision as pure functions of a route's RetryPolicy (sluice/proxy/retry.h):
// which failures and statuses are retried, and the jittered backoff. No sockets; the
// proxy's behaviour around them (budgets, 503 URX, per-try timeouts) is tested end to
// end in routing_test.cc and traffic_test.cc.
#include "sluice/proxy/retry.h"

#include <catch2/catch.hpp>

namespace proxy = sluice::proxy;
using proxy::RetryPolicy;
using proxy::UpstreamFailure;

TEST_CASE("retry on: each condition retries the failures Envoy's does", "[proxy][retry]") {
  RetryPolicy none;
  for (auto f : {UpstreamFailure::kConnect, UpstreamFailure::kReset, UpstreamFailure::kProtocol})
    CHECK_FALSE(proxy::RetriableFailure(none, f));
  CHECK_FALSE(proxy::RetriableTimeout(none));
  CHECK_FALSE(proxy::RetriableStatus(none, 503));

  RetryPolicy connect;
  connect.on_connect_failure = true;
  CHECK(proxy::RetriableFailure(connect, UpstreamFailure::kConnect));
  CHECK_FALSE(proxy::RetriableFailure(connect, UpstreamFailure::kReset));
  CHECK_FALSE(proxy::RetriableFailure(connect, UpstreamFailure::kProtocol));
  CHECK_FALSE(proxy::RetriableTimeout(connect));

  for (int which = 0; which < 3; ++which) {
    RetryPolicy rp;  // 5xx, gateway-error and reset each cover every failure and timeouts
    (which == 0 ? rp.on_5xx : which == 1 ? rp.on_gateway_error : rp.on_reset) = true;
    for (auto f : {UpstreamFailure::kConnect, UpstreamFailure::kReset, UpstreamFailure::kProtocol})
      CHECK(proxy::RetriableFailure(rp, f));
    CHECK(proxy::RetriableTimeout(rp));
  }
}

TEST_CASE("retry on: statuses by 5xx, gateway-error and retriable status codes", "[proxy][retry]") {
  RetryPolicy five;
  five.on_5xx = true;
  CHECK(proxy::RetriableStatus(five, 500));
  CHECK(proxy::RetriableStatus(five, 503));
  CHECK(proxy::RetriableStatus(five, 599));
  CHECK_FALSE(proxy::RetriableStatus(five, 404));

  RetryPolicy gw;
  gw.on_gateway_error = true;
  CHECK(proxy::RetriableStatus(gw, 502));
  CHECK(proxy::RetriableStatus(gw, 503));
  CHECK(proxy::RetriableStatus(gw, 504));
  CHECK_FALSE(proxy::RetriableStatus(gw, 500));

  RetryPolicy codes;
  codes.retriable_status_codes = {409, 429};
  CHECK_FALSE(proxy::RetriableStatus(codes, 409));  // listed, but not enabled
  codes.on_retriable_status_codes = true;
  CHECK(proxy::RetriableStatus(codes, 409));
  CHECK(proxy::RetriableStatus(codes, 429));
  CHECK_FALSE(proxy::RetriableStatus(codes, 503));
}

TEST_CASE("backoff: fully jittered, doubling per retry, capped at max_interval", "[proxy][retry]") {
  RetryPolicy rp;
  rp.base_interval = proxy::Millis(25);
  rp.max_interval = proxy::Millis(250);
  // The bound for retry n is min(base * 2^n, max): 50, 100, 200, 250, 250, ...
  const int64_t bounds[] = {50, 100, 200, 250, 250, 250};
  for (uint32_t n = 1; n <= 6; ++n) {
    INFO("retry " << n);
    const int64_t bound = bounds[n - 1];
    CHECK(proxy::RetryBackoffMs(rp, n, 0) == 0);
    CHECK(proxy::RetryBackoffMs(rp, n, static_cast<uint64_t>(bound - 1)) == bound - 1);
    CHECK(proxy::RetryBackoffMs(rp, n, static_cast<uint64_t>(bound)) == 0);
    for (uint64_t r : {7ull, 123456789ull, ~0ull})
      CHECK(proxy::RetryBackoffMs(rp, n, r) < bound);
  }
  // A max below the base: the base bounds it. A zero base counts as 1 ms.
  rp.max_interval = proxy::Millis(10);
  CHECK(proxy::RetryBackoffMs(rp, 3, 24) == 24);
  CHECK(proxy::RetryBackoffMs(rp, 3, 25) == 0);
  rp.base_interval = proxy::Millis(0);
  rp.max_interval = proxy::Millis(0);
  CHECK(proxy::RetryBackoffMs(rp, 1, 12345) == 0);
  // The doubling stops at 2^10.
  rp.base_interval = proxy::Millis(1);
  rp.max_interval = proxy::Millis(1 << 20);
  CHECK(proxy::RetryBackoffMs(rp, 30, (1 << 10) - 1) == (1 << 10) - 1);
  CHECK(proxy::RetryBackoffMs(rp, 30, 1 << 10) == 0);
}
