// gRPC semantics as pure functions (sluice/proxy/grpc.h and RetriableGrpcStatus in
// retry.h), against Envoy's behaviour and gRPC's PROTOCOL-HTTP2.md and
// http-grpc-status-mapping.md; and the compile of the route fields they read (retry_on
// gRPC conditions, max_stream_duration, max_grpc_timeout). No sockets.
#include "sluice/proxy/grpc.h"

#include <catch2/catch.hpp>

#include "harness.h"
#include "sluice/proxy/retry.h"

namespace proxy = sluice::proxy;
namespace grpc = sluice::proxy::grpc;
using proxy::Millis;
using sluice::testing::Json;

namespace {

Millis ms(int64_t v) {
  return Millis{v};
}

}  // namespace

// ---------------------------------------------------------------- recognising gRPC

TEST_CASE("grpc: content-type application/grpc, +subtype and parameters", "[proxy][grpc]") {
  CHECK(grpc::IsGrpcContentType("application/grpc"));
  CHECK(grpc::IsGrpcContentType("application/grpc+proto"));
  CHECK(grpc::IsGrpcContentType("application/grpc+json"));
  CHECK(grpc::IsGrpcContentType("application/grpc;charset=utf-8"));
  CHECK_FALSE(grpc::IsGrpcContentType("application/grpc-web"));
  CHECK_FALSE(grpc::IsGrpcContentType("application/grpc-web+proto"));
  CHECK_FALSE(grpc::IsGrpcContentType("application/grpcx"));
  CHECK_FALSE(grpc::IsGrpcContentType("application/json"));
  CHECK_FALSE(grpc::IsGrpcContentType("application/grp"));
  CHECK_FALSE(grpc::IsGrpcContentType(""));
  CHECK_FALSE(grpc::IsGrpcContentType("Application/GRPC"));  // case-sensitive, as Envoy

  CHECK(grpc::IsGrpcRequest("/helloworld.Greeter/SayHello", "application/grpc"));
  CHECK_FALSE(grpc::IsGrpcRequest("", "application/grpc"));  // no :path (CONNECT)
  CHECK_FALSE(grpc::IsGrpcRequest("/x", "text/plain"));
}

// ---------------------------------------------------------------- grpc-timeout

TEST_CASE("grpc-timeout: each unit, sub-millisecond units rounded up", "[proxy][grpc]") {
  CHECK(grpc::ParseGrpcTimeout("2H") == ms(2 * 3600 * 1000));
  CHECK(grpc::ParseGrpcTimeout("3M") == ms(3 * 60 * 1000));
  CHECK(grpc::ParseGrpcTimeout("5S") == ms(5000));
  CHECK(grpc::ParseGrpcTimeout("250m") == ms(250));
  CHECK(grpc::ParseGrpcTimeout("1000u") == ms(1));
  CHECK(grpc::ParseGrpcTimeout("1001u") == ms(2));
  CHECK(grpc::ParseGrpcTimeout("1u") == ms(1));
  CHECK(grpc::ParseGrpcTimeout("0u") == ms(0));
  CHECK(grpc::ParseGrpcTimeout("1000000n") == ms(1));
  CHECK(grpc::ParseGrpcTimeout("1000001n") == ms(2));
  CHECK(grpc::ParseGrpcTimeout("1n") == ms(1));
  CHECK(grpc::ParseGrpcTimeout("0m") == ms(0));
  CHECK(grpc::ParseGrpcTimeout("00000001S") == ms(1000));  // 8 digits, leading zeros
  // The largest value of each unit does not overflow.
  CHECK(grpc::ParseGrpcTimeout("99999999H") == ms(int64_t{99999999} * 3600 * 1000));
  CHECK(grpc::ParseGrpcTimeout("99999999n") == ms(100));
}

TEST_CASE("grpc-timeout: anything but <1-8 digits><unit> is absent", "[proxy][grpc]") {
  for (const char* bad : {"", "S", "5", "123456789S", "5s", "5X", "-5S", "+5S", " 5S", "5S ", "5 S",
                          "1.5S", "0x5S", "5SS", "abcm"}) {
    INFO(bad);
    CHECK_FALSE(grpc::ParseGrpcTimeout(bad).has_value());
  }
}

TEST_CASE("grpc-timeout: formatted in the smallest unit that fits 8 digits", "[proxy][grpc]") {
  CHECK(grpc::FormatGrpcTimeout(ms(0)) == "0m");
  CHECK(grpc::FormatGrpcTimeout(ms(1)) == "1m");
  CHECK(grpc::FormatGrpcTimeout(ms(15000)) == "15000m");
  CHECK(grpc::FormatGrpcTimeout(ms(99999999)) == "99999999m");
  CHECK(grpc::FormatGrpcTimeout(ms(100000000)) == "100000S");
  CHECK(grpc::FormatGrpcTimeout(ms(100000999)) == "100000S");  // truncated, as Envoy
  CHECK(grpc::FormatGrpcTimeout(ms(int64_t{99999999} * 1000)) == "99999999S");
  CHECK(grpc::FormatGrpcTimeout(ms(int64_t{100000000} * 1000)) == "1666666M");
  CHECK(grpc::FormatGrpcTimeout(ms(int64_t{99999999} * 60 * 1000)) == "99999999M");
  CHECK(grpc::FormatGrpcTimeout(ms(int64_t{100000000} * 60 * 1000)) == "1666666H");
  // Past 99999999 hours: clipped.
  CHECK(grpc::FormatGrpcTimeout(ms(INT64_MAX)) == "99999999H");
  CHECK(grpc::FormatGrpcTimeout(ms(-5)) == "0m");
  // What is formatted parses back to itself (to the unit's precision).
  for (int64_t v : {int64_t{7}, int64_t{123456789}, int64_t{86400000} * 365}) {
    auto back = grpc::ParseGrpcTimeout(grpc::FormatGrpcTimeout(ms(v)));
    REQUIRE(back);
    CHECK(*back <= ms(v));
    CHECK(*back > ms(v) - ms(3600 * 1000));
  }
}

// ---------------------------------------------------------------- route timeouts

TEST_CASE("route timeouts: without gRPC fields the route's timeout applies", "[proxy][grpc]") {
  proxy::RouteAction r;
  r.timeout = ms(15000);
  for (bool is_grpc : {false, true}) {
    auto t = grpc::RouteTimeouts(r, is_grpc, "1S");
    CHECK(t.route == ms(15000));
    CHECK_FALSE(t.stream_duration);
    CHECK(t.grpc_header == grpc::RequestTimeouts::GrpcHeader::kForward);
    CHECK_FALSE(grpc::UpstreamGrpcTimeout(t, ms(0)));
  }
  // max_grpc_timeout is for gRPC requests only.
  r.stream_timeouts.max_grpc_timeout = ms(0);
  auto t = grpc::RouteTimeouts(r, false, "1S");
  CHECK(t.route == ms(15000));
  CHECK_FALSE(grpc::UpstreamGrpcTimeout(t, ms(0)));
}

TEST_CASE("route timeouts: max_grpc_timeout caps the header, offset first", "[proxy][grpc]") {
  proxy::RouteAction r;
  r.timeout = ms(15000);
  auto& st = r.stream_timeouts;
  using GH = grpc::RequestTimeouts::GrpcHeader;

  st.max_grpc_timeout = ms(10000);
  // The header below the cap wins over the route's timeout.
  auto t = grpc::RouteTimeouts(r, true, "3S");
  CHECK(t.route == ms(3000));
  CHECK(t.grpc_header == GH::kPerAttempt);
  CHECK(grpc::UpstreamGrpcTimeout(t, ms(0)) == ms(3000));
  // Above the cap, or absent, or invalid, or 0: the cap.
  CHECK(grpc::RouteTimeouts(r, true, "20S").route == ms(10000));
  CHECK(grpc::RouteTimeouts(r, true, std::nullopt).route == ms(10000));
  CHECK(grpc::RouteTimeouts(r, true, "bogus").route == ms(10000));
  CHECK(grpc::RouteTimeouts(r, true, "0S").route == ms(10000));

  // max_grpc_timeout 0: the header uncapped; none when absent (istiod's "no timeout").
  st.max_grpc_timeout = ms(0);
  CHECK(grpc::RouteTimeouts(r, true, "2H").route == ms(2 * 3600 * 1000));
  t = grpc::RouteTimeouts(r, true, std::nullopt);
  CHECK(t.route == ms(0));
  CHECK_FALSE(grpc::UpstreamGrpcTimeout(t, ms(0)));  // nothing to say upstream

  // The offset is taken from the header's value before the cap, only when smaller.
  st.max_grpc_timeout = ms(10000);
  st.grpc_timeout_offset = ms(500);
  CHECK(grpc::RouteTimeouts(r, true, "3S").route == ms(2500));
  CHECK(grpc::RouteTimeouts(r, true, "10400m").route == ms(9900));
  CHECK(grpc::RouteTimeouts(r, true, "20S").route == ms(10000));  // 19.5 s capped
  CHECK(grpc::RouteTimeouts(r, true, "400m").route == ms(400));   // offset not smaller
  CHECK(grpc::RouteTimeouts(r, true, "500m").route == ms(500));
}

TEST_CASE("route timeouts: max_grpc_timeout sets each attempt's grpc-timeout", "[proxy][grpc]") {
  proxy::RouteAction r;
  r.stream_timeouts.max_grpc_timeout = ms(0);
  r.retry.per_try_timeout = ms(1000);
  auto t = grpc::RouteTimeouts(r, true, "5S");
  CHECK(t.route == ms(5000));
  CHECK(t.per_try == ms(1000));
  // The per-try timeout when smaller than what is left; then what is left; 1 ms at
  // the end (0 would mean no deadline).
  CHECK(grpc::UpstreamGrpcTimeout(t, ms(0)) == ms(1000));
  CHECK(grpc::UpstreamGrpcTimeout(t, ms(4500)) == ms(500));
  CHECK(grpc::UpstreamGrpcTimeout(t, ms(5000)) == ms(1));
  CHECK(grpc::UpstreamGrpcTimeout(t, ms(9000)) == ms(1));
  // A per-try timeout not below the route timeout is dropped.
  t = grpc::RouteTimeouts(r, true, "1S");
  CHECK(t.per_try == ms(0));
  CHECK(grpc::UpstreamGrpcTimeout(t, ms(200)) == ms(800));
  // No route timeout: the per-try timeout alone.
  t = grpc::RouteTimeouts(r, true, std::nullopt);
  CHECK(t.route == ms(0));
  CHECK(grpc::UpstreamGrpcTimeout(t, ms(60000)) == ms(1000));
}

TEST_CASE("route timeouts: grpc_timeout_header_max caps, then the offset", "[proxy][grpc]") {
  proxy::RouteAction r;
  r.timeout = ms(15000);
  auto& st = r.stream_timeouts;
  using GH = grpc::RequestTimeouts::GrpcHeader;
  st.has_max_stream_duration = true;
  st.grpc_timeout_header_max = ms(10000);

  auto t = grpc::RouteTimeouts(r, true, "3S");
  CHECK(t.route == ms(0));  // the route's timeout does not apply with max_stream_duration
  REQUIRE(t.stream_duration);
  CHECK(*t.stream_duration == ms(3000));
  CHECK(t.grpc_header == GH::kFixed);
  CHECK(grpc::UpstreamGrpcTimeout(t, ms(0)) == ms(3000));
  CHECK(grpc::UpstreamGrpcTimeout(t, ms(2000)) == ms(3000));  // set once, at the start

  CHECK(grpc::RouteTimeouts(r, true, "20S").stream_duration == ms(10000));
  // A grpc-timeout of 0 is a deadline already past, not "none".
  CHECK(grpc::RouteTimeouts(r, true, "0m").stream_duration == ms(0));

  // The offset comes after the cap; one at least as large leaves 0.
  st.grpc_timeout_header_offset = ms(500);
  CHECK(grpc::RouteTimeouts(r, true, "3S").stream_duration == ms(2500));
  CHECK(grpc::RouteTimeouts(r, true, "20S").stream_duration == ms(9500));
  CHECK(grpc::RouteTimeouts(r, true, "500m").stream_duration == ms(0));
  CHECK(grpc::RouteTimeouts(r, true, "100m").stream_duration == ms(0));

  // Envoy's connection manager reads the header on any request; only a gRPC request's
  // is rewritten upstream.
  t = grpc::RouteTimeouts(r, false, "3S");
  CHECK(t.stream_duration == ms(2500));
  CHECK_FALSE(grpc::UpstreamGrpcTimeout(t, ms(0)));

  // grpc_timeout_header_max 0: uncapped (istiod's inbound routes).
  st.grpc_timeout_header_max = ms(0);
  st.grpc_timeout_header_offset.reset();
  CHECK(grpc::RouteTimeouts(r, true, "2H").stream_duration == ms(2 * 3600 * 1000));
}

TEST_CASE("route timeouts: max_stream_duration without a usable header", "[proxy][grpc]") {
  proxy::RouteAction r;
  r.timeout = ms(15000);
  auto& st = r.stream_timeouts;
  st.has_max_stream_duration = true;
  st.max_stream_duration = ms(7000);

  // No grpc_timeout_header_max: the header is not read; max_stream_duration applies and
  // becomes the gRPC request's grpc-timeout.
  auto t = grpc::RouteTimeouts(r, true, "1S");
  CHECK(t.stream_duration == ms(7000));
  CHECK(t.route == ms(0));
  CHECK(grpc::UpstreamGrpcTimeout(t, ms(0)) == ms(7000));
  // Not gRPC: the same limit, no header.
  t = grpc::RouteTimeouts(r, false, "1S");
  CHECK(t.stream_duration == ms(7000));
  CHECK_FALSE(grpc::UpstreamGrpcTimeout(t, ms(0)));
  // With a header max but no header: max_stream_duration.
  st.grpc_timeout_header_max = ms(3000);
  CHECK(grpc::RouteTimeouts(r, true, std::nullopt).stream_duration == ms(7000));
  CHECK(grpc::RouteTimeouts(r, true, "soon").stream_duration == ms(7000));

  // max_stream_duration 0: no limit, the header left as it came.
  st.max_stream_duration = ms(0);
  t = grpc::RouteTimeouts(r, true, std::nullopt, ms(60000));
  CHECK_FALSE(t.stream_duration);
  CHECK_FALSE(grpc::UpstreamGrpcTimeout(t, ms(0)));
  // Unset on the route: the connection manager's.
  st.max_stream_duration.reset();
  t = grpc::RouteTimeouts(r, true, std::nullopt, ms(60000));
  CHECK(t.stream_duration == ms(60000));
  CHECK(grpc::UpstreamGrpcTimeout(t, ms(0)) == ms(60000));
  CHECK_FALSE(grpc::RouteTimeouts(r, true, std::nullopt).stream_duration);
  // Without max_stream_duration on the route the connection manager's still limits the
  // stream, and the route's timeout stays.
  proxy::RouteAction plain;
  t = grpc::RouteTimeouts(plain, true, "1S", ms(60000));
  CHECK(t.stream_duration == ms(60000));
  CHECK(t.route == ms(15000));
  CHECK_FALSE(grpc::UpstreamGrpcTimeout(t, ms(0)));
}

// ---------------------------------------------------------------- retries

TEST_CASE("retry on: each gRPC condition retries its status only", "[proxy][grpc][retry]") {
  proxy::RetryPolicy none;
  for (int s = 0; s <= 16; ++s)
    CHECK_FALSE(proxy::RetriableGrpcStatus(none, s));

  struct Case {
    bool proxy::RetryPolicy::*flag;
    int status;
  };
  const Case cases[] = {
      {&proxy::RetryPolicy::on_grpc_cancelled, grpc::kCancelled},
      {&proxy::RetryPolicy::on_grpc_deadline_exceeded, grpc::kDeadlineExceeded},
      {&proxy::RetryPolicy::on_grpc_resource_exhausted, grpc::kResourceExhausted},
      {&proxy::RetryPolicy::on_grpc_internal, grpc::kInternal},
      {&proxy::RetryPolicy::on_grpc_unavailable, grpc::kUnavailable},
  };
  CHECK(grpc::kCancelled == 1);
  CHECK(grpc::kDeadlineExceeded == 4);
  CHECK(grpc::kResourceExhausted == 8);
  CHECK(grpc::kInternal == 13);
  CHECK(grpc::kUnavailable == 14);
  for (const Case& c : cases) {
    proxy::RetryPolicy rp;
    rp.*c.flag = true;
    INFO("status " << c.status);
    for (int s = -1; s <= 17; ++s)
      CHECK(proxy::RetriableGrpcStatus(rp, s) == (s == c.status));
  }
  // HTTP conditions do not retry gRPC statuses.
  proxy::RetryPolicy http;
  http.on_5xx = http.on_gateway_error = http.on_reset = http.on_connect_failure = true;
  CHECK_FALSE(proxy::RetriableGrpcStatus(http, grpc::kUnavailable));
  // Nor do gRPC conditions retry HTTP statuses.
  proxy::RetryPolicy g;
  g.on_grpc_unavailable = true;
  CHECK_FALSE(proxy::RetriableStatus(g, 503));
}

// ---------------------------------------------------------------- local replies

TEST_CASE("local reply: HTTP status to gRPC status, Envoy's table", "[proxy][grpc]") {
  CHECK(grpc::HttpToGrpcStatus(400) == grpc::kInternal);
  CHECK(grpc::HttpToGrpcStatus(401) == grpc::kUnauthenticated);
  CHECK(grpc::HttpToGrpcStatus(403) == grpc::kPermissionDenied);
  CHECK(grpc::HttpToGrpcStatus(404) == grpc::kUnimplemented);
  CHECK(grpc::HttpToGrpcStatus(429) == grpc::kUnavailable);
  CHECK(grpc::HttpToGrpcStatus(502) == grpc::kUnavailable);
  CHECK(grpc::HttpToGrpcStatus(503) == grpc::kUnavailable);
  CHECK(grpc::HttpToGrpcStatus(504) == grpc::kUnavailable);
  for (int other : {200, 301, 408, 413, 431, 500, 501, 505})
    CHECK(grpc::HttpToGrpcStatus(other) == grpc::kUnknown);
}

TEST_CASE("local reply: grpc-message percent-encoding", "[proxy][grpc]") {
  CHECK(grpc::PercentEncodeGrpcMessage("no healthy upstream") == "no healthy upstream");
  CHECK(grpc::PercentEncodeGrpcMessage("100%") == "100%25");
  CHECK(grpc::PercentEncodeGrpcMessage("a\r\nb\tc") == "a%0D%0Ab%09c");
  CHECK(grpc::PercentEncodeGrpcMessage("caf\xc3\xa9") == "caf%C3%A9");
  CHECK(grpc::PercentEncodeGrpcMessage(std::string_view("\0\x7f~ ", 4)) == "%00%7F~ ");
  CHECK(grpc::PercentEncodeGrpcMessage("") == "");
}

TEST_CASE("local reply: a trailers-only response for a gRPC request", "[proxy][grpc]") {
  using F = grpc::Field;
  CHECK(grpc::LocalReplyHead(503, "no healthy upstream") ==
        std::vector<F>{{":status", "200"},
                       {"content-type", "application/grpc"},
                       {"grpc-status", "14"},
                       {"grpc-message", "no healthy upstream"}});
  // No route: 404 becomes UNIMPLEMENTED; an empty body gives no grpc-message.
  CHECK(grpc::LocalReplyHead(404, "") == std::vector<F>{{":status", "200"},
                                                        {"content-type", "application/grpc"},
                                                        {"grpc-status", "12"}});
  // One trailing newline dropped; the rest percent-encoded.
  CHECK(grpc::LocalReplyHead(504, "upstream request timeout\n").back() ==
        F{"grpc-message", "upstream request timeout"});
  CHECK(grpc::LocalReplyHead(403, "RBAC: access denied\r\n").back() ==
        F{"grpc-message", "RBAC: access denied%0D"});
  // A status the caller gives wins (a stream past its deadline: 408 as
  // DEADLINE_EXCEEDED).
  auto h = grpc::LocalReplyHead(408, "stream timeout", grpc::kDeadlineExceeded);
  CHECK(h[2] == F{"grpc-status", "4"});
  CHECK(grpc::LocalReplyHead(408, "")[2] == F{"grpc-status", "2"});
  for (const auto& f : grpc::LocalReplyHead(500, "x"))
    CHECK(f.name != "content-length");
}

// ---------------------------------------------------------------- grpc-status

TEST_CASE("grpc-status: trailers, then headers, then the HTTP status", "[proxy][grpc]") {
  CHECK(grpc::ParseGrpcStatus("0") == 0);
  CHECK(grpc::ParseGrpcStatus("14") == 14);
  CHECK(grpc::ParseGrpcStatus("99") == 99);  // user-defined codes are kept
  CHECK_FALSE(grpc::ParseGrpcStatus(""));
  CHECK_FALSE(grpc::ParseGrpcStatus("-1"));
  CHECK_FALSE(grpc::ParseGrpcStatus("1 "));
  CHECK_FALSE(grpc::ParseGrpcStatus("OK"));
  CHECK_FALSE(grpc::ParseGrpcStatus("99999999999"));
  CHECK_FALSE(grpc::ParseGrpcStatus("2147483648"));
  CHECK(grpc::ParseGrpcStatus("2147483647") == 2147483647);

  // A normal response: the trailers'.
  CHECK(grpc::GrpcStatusForLog(std::nullopt, "0", 200) == "0");
  CHECK(grpc::GrpcStatusForLog("3", "0", 200) == "0");
  // A trailers-only response: its head's.
  CHECK(grpc::GrpcStatusForLog("14", std::nullopt, 200) == "14");
  CHECK(grpc::GrpcStatusForLog("14", "", 200) == "14");  // empty counts as absent
  // Neither: inferred from the HTTP status (an HTTP/1.1 upstream's 503, a 200 cut off).
  CHECK(grpc::GrpcStatusForLog(std::nullopt, std::nullopt, 503) == "14");
  CHECK(grpc::GrpcStatusForLog(std::nullopt, std::nullopt, 200) == "2");
  // No response at all: empty.
  CHECK(grpc::GrpcStatusForLog(std::nullopt, std::nullopt, 0) == "");
  // Not a number: empty, not a guess.
  CHECK(grpc::GrpcStatusForLog("x", std::nullopt, 200) == "");
}

// ---------------------------------------------------------------- compile

namespace {

Json RouteDoc(const Json& route_action) {
  Json route = {{"name", "rt"}, {"match", {{"prefix", "/"}}}, {"route", route_action}};
  return {{"listeners",
           Json::array({sluice::testing::HttpListener(
               "http", sluice::testing::RouteConfig("r80", Json::array({route})), false)})},
          {"clusters", Json::array({sluice::testing::StaticCluster("c", {1})})}};
}

// The compiled action of the document's only route; fails the test when refused.
const proxy::RouteAction& Action(const std::shared_ptr<const proxy::ProxyConfig>& cfg) {
  REQUIRE(cfg->refused.empty());
  REQUIRE(cfg->listeners.size() == 1);
  const auto& routes = cfg->listeners[0].chains.at(0).http.routes;
  REQUIRE(routes);
  return routes->vhosts.at(0).routes.at(0).action;
}

std::string Refusal(const Json& doc) {
  auto c = sluice::testing::CompileJson(doc);
  if (!c)
    return c.error().message;
  std::string out;
  for (const auto& r : (*c)->refused)
    out += r.reason;
  return out;
}

}  // namespace

TEST_CASE("compile: the gRPC retry_on conditions set their flags", "[proxy][grpc][config]") {
  auto cfg = sluice::testing::CompileJson(RouteDoc(
      {{"cluster", "c"},
       {"retry_policy",
        {{"retry_on",
          "connect-failure, cancelled,deadline-exceeded ,resource-exhausted,internal,unavailable"},
         {"num_retries", 2}}}}));
  REQUIRE(cfg);
  const proxy::RetryPolicy& rp = Action(*cfg).retry;
  CHECK(rp.num_retries == 2);
  CHECK(rp.on_connect_failure);
  CHECK(rp.on_grpc_cancelled);
  CHECK(rp.on_grpc_deadline_exceeded);
  CHECK(rp.on_grpc_resource_exhausted);
  CHECK(rp.on_grpc_internal);
  CHECK(rp.on_grpc_unavailable);
  CHECK_FALSE(rp.on_5xx);
  for (int s : {1, 4, 8, 13, 14})
    CHECK(proxy::RetriableGrpcStatus(rp, s));
  CHECK_FALSE(proxy::RetriableGrpcStatus(rp, 2));

  // istiod's default: one gRPC condition among HTTP ones.
  cfg = sluice::testing::CompileJson(
      RouteDoc({{"cluster", "c"},
                {"retry_policy",
                 {{"retry_on",
                   "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"},
                  {"num_retries", 2}}}}));
  REQUIRE(cfg);
  const proxy::RetryPolicy& istio = Action(*cfg).retry;
  CHECK(istio.on_grpc_unavailable);
  CHECK(istio.on_grpc_cancelled);
  CHECK_FALSE(istio.on_grpc_internal);
  CHECK_FALSE(istio.on_grpc_deadline_exceeded);
  CHECK(istio.on_refused_stream);
}

TEST_CASE("compile: an unknown retry_on name is refused by name", "[proxy][grpc][config]") {
  std::string e = Refusal(
      RouteDoc({{"cluster", "c"}, {"retry_policy", {{"retry_on", "unavailable,unavailible"}}}}));
  INFO(e);
  CHECK(e.find("route rt") != std::string::npos);
  CHECK(e.find("retry_policy.retry_on") != std::string::npos);
  CHECK(e.find("\"unavailible\"") != std::string::npos);
  // Names are exact: Envoy's grpc-status names in other spellings are unknown.
  CHECK(Refusal(RouteDoc({{"cluster", "c"}, {"retry_policy", {{"retry_on", "UNAVAILABLE"}}}}))
            .find("\"UNAVAILABLE\"") != std::string::npos);
  CHECK(Refusal(RouteDoc({{"cluster", "c"}, {"retry_policy", {{"retry_on", "canceled"}}}}))
            .find("\"canceled\"") != std::string::npos);
}

TEST_CASE("compile: max_stream_duration and max_grpc_timeout", "[proxy][grpc][config]") {
  // istiod's inbound route: timeout 0, max_stream_duration 0 with grpc_timeout_header_max 0.
  auto cfg = sluice::testing::CompileJson(RouteDoc({{"cluster", "c"},
                                                    {"timeout", "0s"},
                                                    {"max_stream_duration",
                                                     {{"max_stream_duration", "0s"},
                                                      {"grpc_timeout_header_max", "0s"},
                                                      {"grpc_timeout_header_offset", "0.250s"}}}}));
  REQUIRE(cfg);
  const proxy::StreamTimeouts& in = Action(*cfg).stream_timeouts;
  CHECK(in.has_max_stream_duration);
  CHECK(in.max_stream_duration == ms(0));
  CHECK(in.grpc_timeout_header_max == ms(0));
  CHECK(in.grpc_timeout_header_offset == ms(250));
  CHECK_FALSE(in.max_grpc_timeout);
  auto t = grpc::RouteTimeouts(Action(*cfg), true, "2S");
  CHECK(t.stream_duration == ms(1750));
  CHECK(grpc::UpstreamGrpcTimeout(t, ms(0)) == ms(1750));

  // An empty max_stream_duration still switches to the new timeouts.
  cfg = sluice::testing::CompileJson(
      RouteDoc({{"cluster", "c"}, {"timeout", "3s"}, {"max_stream_duration", Json::object()}}));
  REQUIRE(cfg);
  CHECK(Action(*cfg).stream_timeouts.has_max_stream_duration);
  CHECK_FALSE(Action(*cfg).stream_timeouts.max_stream_duration);
  CHECK(grpc::RouteTimeouts(Action(*cfg), false, std::nullopt).route == ms(0));

  // istiod's outbound route: the deprecated max_grpc_timeout set to the route's timeout.
  cfg = sluice::testing::CompileJson(RouteDoc({{"cluster", "c"},
                                               {"timeout", "5s"},
                                               {"max_grpc_timeout", "5s"},
                                               {"grpc_timeout_offset", "0.1s"}}));
  REQUIRE(cfg);
  const proxy::StreamTimeouts& out = Action(*cfg).stream_timeouts;
  CHECK_FALSE(out.has_max_stream_duration);
  CHECK(out.max_grpc_timeout == ms(5000));
  CHECK(out.grpc_timeout_offset == ms(100));
  CHECK(grpc::RouteTimeouts(Action(*cfg), true, "1S").route == ms(900));
  CHECK(grpc::RouteTimeouts(Action(*cfg), true, "1M").route == ms(5000));
  CHECK(grpc::RouteTimeouts(Action(*cfg), false, "1S").route == ms(5000));

  // Neither: nothing set.
  cfg = sluice::testing::CompileJson(RouteDoc({{"cluster", "c"}}));
  REQUIRE(cfg);
  const proxy::StreamTimeouts& plain = Action(*cfg).stream_timeouts;
  CHECK_FALSE(plain.has_max_stream_duration);
  CHECK_FALSE(plain.max_grpc_timeout);
  CHECK_FALSE(plain.grpc_timeout_offset);

  // Negative durations are refused, naming the field.
  std::string e = Refusal(
      RouteDoc({{"cluster", "c"}, {"max_stream_duration", {{"grpc_timeout_header_max", "-1s"}}}}));
  INFO(e);
  CHECK(e.find("route rt") != std::string::npos);
  CHECK(e.find("max_stream_duration.grpc_timeout_header_max: must not be negative") !=
        std::string::npos);
  CHECK(
      Refusal(RouteDoc({{"cluster", "c"}, {"max_grpc_timeout", "-2s"}})).find("max_grpc_timeout") !=
      std::string::npos);
}

TEST_CASE("compile: the connection manager's max_stream_duration", "[proxy][grpc][config]") {
  Json doc = RouteDoc({{"cluster", "c"}});
  doc["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
     ["common_http_protocol_options"] = {{"max_stream_duration", "30s"}};
  auto cfg = sluice::testing::CompileJson(doc);
  REQUIRE(cfg);
  CHECK((*cfg)->listeners.at(0).chains.at(0).http.max_stream_duration == ms(30000));
  cfg = sluice::testing::CompileJson(RouteDoc({{"cluster", "c"}}));
  REQUIRE(cfg);
  CHECK((*cfg)->listeners.at(0).chains.at(0).http.max_stream_duration == ms(0));
}
