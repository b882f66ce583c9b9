// Traffic management through the real engine: weighted clusters, mirroring, retries,
// timeouts, faults, circuit breakers, outlier detection, and the access log. Counts
// are taken at the upstream servers, not from the proxy's own bookkeeping.
#include <sys/socket.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <ctime>
#include <future>
#include <regex>

#include "harness.h"
#include "test_upstream.h"

using namespace sluice::testing;

namespace {

using Clock = std::chrono::steady_clock;

int64_t Ms(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(b - a).count();
}

Json OneRoute(const Json& route_action, const Json& extra = Json::object()) {
  Json r = {{"name", "main"}, {"match", {{"prefix", "/"}}}, {"route", route_action}};
  r.update(extra);
  return RouteConfig("r", Json::array({r}));
}

Json Fault(const Json& f) {
  Json t = f;
  t["@type"] = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
  return t;
}

}  // namespace

TEST_CASE("weighted clusters split 25/75 within 2 points over 4000 requests", "[proxy][traffic]") {
  TestUpstream v1({.name = "v1", .record = false}), v2({.name = "v2", .record = false});
  Json action = {
      {"weighted_clusters",
       {{"clusters", {{{"name", "v1"}, {"weight", 25}}, {{"name", "v2"}, {"weight", 75}}}}}}};
  Json doc = {{"listeners", {HttpListener("http", OneRoute(action), false)}},
              {"clusters", {StaticCluster("v1", {v1.port()}), StaticCluster("v2", {v2.port()})}}};
  auto p = StartProxy(doc);
  REQUIRE(p->error == "");
  Client c(p->Port());
  int n1 = 0, n2 = 0;
  for (int i = 0; i < 4000; ++i) {
    Resp r = c.Get("h", "/");
    REQUIRE(r.status == 200);
    (r.Header("x-upstream") == "v1" ? n1 : n2)++;
  }
  CHECK(v1.count() == static_cast<uint64_t>(n1));
  CHECK(v2.count() == static_cast<uint64_t>(n2));
  double share = 100.0 * n1 / 4000.0;
  CHECK(share > 23.0);
  CHECK(share < 27.0);
  // Keep-alive: the proxy reused a handful of upstream connections, not 4000.
  CHECK(v1.connections() + v2.connections() < 10);
}

TEST_CASE("mirroring at 100% and 30%, counted at the shadow, with the -shadow host",
          "[proxy][mirror]") {
  TestUpstream primary({.name = "primary", .record = false}), shadow({.name = "shadow"});
  Json mirror100 = {{"cluster", "primary"}, {"request_mirror_policies", {{{"cluster", "shadow"}}}}};
  Json mirror30 = {{"cluster", "primary"},
                   {"request_mirror_policies",
                    {{{"cluster", "shadow"},
                      {"runtime_fraction",
                       {{"default_value", {{"numerator", 30}, {"denominator", "HUNDRED"}}}}}}}}};
  Json rc = {{"name", "r"},
             {"virtual_hosts",
              {{{"name", "vh"},
                {"domains", {"*"}},
                {"routes",
                 {{{"name", "all"}, {"match", {{"prefix", "/all"}}}, {"route", mirror100}},
                  {{"name", "some"}, {"match", {{"prefix", "/some"}}}, {"route", mirror30}}}}}}}};
  Json doc = {
      {"listeners", {HttpListener("http", rc, false)}},
      {"clusters",
       {StaticCluster("primary", {primary.port()}), StaticCluster("shadow", {shadow.port()})}}};
  // This case counts the share mirrored; what is dropped past the bounds is the next
  // case's. With the default of 16 shadow connections, a shadow that a loaded machine
  // schedules late makes copies drop, and the share falls short.
  sluice::proxy::ProxyOptions opts;
  opts.mirror_max_connections = 256;
  auto p = StartProxy(doc, 1, opts);
  REQUIRE(p->error == "");
  Client c(p->Port());
  for (int i = 0; i < 200; ++i)
    REQUIRE(c.Get("svc.default:8080", "/all").status == 200);
  CHECK(WaitFor([&] { return shadow.count() == 200; }));
  auto reqs = shadow.Requests();
  REQUIRE(!reqs.empty());
  CHECK(reqs[0].find("host: svc.default-shadow:8080\r\n") != std::string::npos);
  CHECK(reqs[0].rfind("GET /all HTTP/1.1", 0) == 0);

  shadow.Reset();
  for (int i = 0; i < 2000; ++i)
    REQUIRE(c.Get("svc", "/some").status == 200);
  usleep(200000);
  double share = 100.0 * static_cast<double>(shadow.count()) / 2000.0;
  CHECK(share > 26.0);
  CHECK(share < 34.0);
}

TEST_CASE("a slow or dead shadow leaves the primary untouched, and mirror memory is bounded",
          "[proxy][mirror]") {
  TestUpstream primary({.name = "primary", .record = false});
  TestUpstream slow({.name = "slow", .delay_ms = 2000, .record = false});
  uint16_t dead = FreeLoopbackPort();
  Json rc = {
      {"name", "r"},
      {"virtual_hosts",
       {{{"name", "vh"},
         {"domains", {"*"}},
         {"routes",
          {{{"name", "slow"},
            {"match", {{"prefix", "/slow"}}},
            {"route",
             {{"cluster", "primary"}, {"request_mirror_policies", {{{"cluster", "slow"}}}}}}},
           {{"name", "dead"},
            {"match", {{"prefix", "/dead"}}},
            {"route",
             {{"cluster", "primary"}, {"request_mirror_policies", {{{"cluster", "dead"}}}}}}}}}}}}};
  Json doc = {{"listeners", {HttpListener("http", rc, false)}},
              {"clusters",
               {StaticCluster("primary", {primary.port()}), StaticCluster("slow", {slow.port()}),
                StaticCluster("dead", {dead})}}};
  sluice::proxy::ProxyOptions opts;
  opts.mirror_max_inflight = 16;
  auto p = StartProxy(doc, 1, opts);
  REQUIRE(p->error == "");
  Client c(p->Port());
  int64_t worst = 0;
  for (int i = 0; i < 100; ++i) {
    auto t0 = Clock::now();
    Resp r = c.Get("h", i % 2 ? "/slow" : "/dead");
    worst = std::max(worst, Ms(t0, Clock::now()));
    REQUIRE(r.status == 200);
    REQUIRE(r.Header("x-upstream") == "primary");
  }
  CHECK(worst < 150);  // the shadow answers after 2 s; the primary never waits for it
  CHECK(primary.count() == 100);
  // At most 16 copies were in flight to the slow shadow; the rest were dropped.
  const auto& st = p->proxy->stats();
  CHECK(st.mirrors_dropped.load() >= 50 - 16);
  CHECK(slow.count() <= 16);
}

TEST_CASE("mirror copies reuse the shadow's pooled connections and never open more than the cap",
          "[proxy][mirror]") {
  TestUpstream primary({.name = "primary", .record = false});
  // The shadow answers after a second: the burst below is over long before that.
  TestUpstream slow({.name = "slow", .delay_ms = 1000, .record = false});
  Json action = {{"cluster", "primary"}, {"request_mirror_policies", {{{"cluster", "slow"}}}}};
  Json doc = {{"listeners", {HttpListener("http", OneRoute(action), false)}},
              {"clusters",
               {StaticCluster("primary", {primary.port()}), StaticCluster("slow", {slow.port()})}}};
  sluice::proxy::ProxyOptions opts;
  opts.mirror_max_connections = 4;  // in-flight copies stay at the default (256)
  auto p = StartProxy(doc, 1, opts);
  REQUIRE(p->error == "");
  const auto& st = p->proxy->stats();
  Client c(p->Port());
  // A burst while the shadow is slow: four copies get a connection each, the rest are
  // dropped and counted instead of opening one connection per copy.
  for (int i = 0; i < 100; ++i)
    REQUIRE(c.Get("h", "/a").status == 200);
  CHECK(primary.count() == 100);
  CHECK(st.mirrors_sent.load() == 4);
  CHECK(st.mirrors_dropped.load() == 96);
  CHECK(WaitFor([&] { return slow.count() == 4; }));
  CHECK(slow.connections() == 4);
  // Once the shadow has answered, its connections wait in the pool and the next copies
  // go over them: more requests at the shadow, no new connection.
  CHECK(st.upstream_cx.load() == 5);                             // 1 primary + 4 shadow
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));  // the shadow has answered
  for (int i = 0; i < 4; ++i)
    REQUIRE(c.Get("h", "/b").status == 200);
  CHECK(WaitFor([&] { return slow.count() == 8; }));
  CHECK(slow.connections() == 4);
  CHECK(st.upstream_cx.load() == 5);
}

TEST_CASE("retries: 5xx, retriable status codes, connect failure, counted at the upstream",
          "[proxy][retry]") {
  TestUpstream up({.name = "up", .record = false});
  uint16_t dead = FreeLoopbackPort();
  Json rc = {
      {"name", "r"},
      {"virtual_hosts",
       {{{"name", "vh"},
         {"domains", {"*"}},
         {"routes",
          {{{"name", "5xx"},
            {"match", {{"prefix", "/5xx"}}},
            {"route",
             {{"cluster", "up"}, {"retry_policy", {{"retry_on", "5xx"}, {"num_retries", 2}}}}}},
           {{"name", "codes"},
            {"match", {{"prefix", "/codes"}}},
            {"route",
             {{"cluster", "up"},
              {"retry_policy",
               {{"retry_on", "retriable-status-codes"},
                {"num_retries", 3},
                {"retriable_status_codes", {409}}}}}}},
           {{"name", "cf"},
            {"match", {{"prefix", "/cf"}}},
            {"route",
             {{"cluster", "mixed"},
              {"retry_policy", {{"retry_on", "connect-failure"}, {"num_retries", 1}}}}}},
           {{"name", "none"},
            {"match", {{"prefix", "/none"}}},
            {"route", {{"cluster", "up"}}}}}}}}}};
  Json mixed = StaticCluster("mixed", {dead, up.port()}, "ROUND_ROBIN");
  Json doc = {{"listeners", {HttpListener("http", rc)}},
              {"clusters", {StaticCluster("up", {up.port()}), mixed}}};
  auto p = StartProxy(doc);
  REQUIRE(p->error == "");
  uint16_t port = p->Port();

  Resp r = Get(port, "h", "/5xx", "x-status: 503\r\n");
  CHECK(r.status == 503);
  CHECK(up.count() == 3);  // 1 + 2 retries
  up.Reset();
  r = Get(port, "h", "/codes", "x-status: 409\r\n");
  CHECK(r.status == 409);
  CHECK(up.count() == 4);
  up.Reset();
  r = Get(port, "h", "/codes", "x-status: 500\r\n");  // not in the list
  CHECK(r.status == 500);
  CHECK(up.count() == 1);
  up.Reset();
  r = Get(port, "h", "/none", "x-status: 503\r\n");
  CHECK(r.status == 503);
  CHECK(up.count() == 1);
  up.Reset();
  // Half the picks hit the dead endpoint; the retry moves to the live one.
  for (int i = 0; i < 10; ++i)
    CHECK(Get(port, "h", "/cf").status == 200);
  CHECK(up.count() == 10);
  p.reset();  // flush the access log... (logged before stop)
}

TEST_CASE("per-try timeout and route timeout", "[proxy][retry]") {
  TestUpstream up({.name = "up", .record = false});
  Json rc = {{"name", "r"},
             {"virtual_hosts",
              {{{"name", "vh"},
                {"domains", {"*"}},
                {"routes",
                 {{{"name", "pertry"},
                   {"match", {{"prefix", "/pertry"}}},
                   {"route",
                    {{"cluster", "up"},
                     {"timeout", "5s"},
                     {"retry_policy",
                      {{"retry_on", "5xx"}, {"num_retries", 2}, {"per_try_timeout", "0.1s"}}}}}},
                  {{"name", "timeout"},
                   {"match", {{"prefix", "/timeout"}}},
                   {"route", {{"cluster", "up"}, {"timeout", "0.2s"}}}}}}}}}};
  Json doc = {{"listeners", {HttpListener("http", rc)}},
              {"clusters", {StaticCluster("up", {up.port()})}}};
  auto p = StartProxy(doc);
  REQUIRE(p->error == "");
  auto t0 = Clock::now();
  Resp r = Get(p->Port(), "h", "/pertry", "x-delay-ms: 400\r\n");
  int64_t took = Ms(t0, Clock::now());
  CHECK(r.status == 504);
  CHECK(took >= 300);
  CHECK(took < 1500);
  CHECK(WaitFor([&] { return up.count() == 3; }));

  t0 = Clock::now();
  r = Get(p->Port(), "h", "/timeout", "x-delay-ms: 2000\r\n");
  took = Ms(t0, Clock::now());
  CHECK(r.status == 504);
  CHECK(r.body == "upstream request timeout");
  CHECK(took >= 190);
  CHECK(took < 1000);
  // A fast answer is not affected.
  CHECK(Get(p->Port(), "h", "/timeout").status == 200);
  auto lines = p->LogLines(3);
  REQUIRE(lines.size() >= 2);
  CHECK(lines[0].find("\" 504 UT,URX ") != std::string::npos);
  CHECK(lines[1].find("\" 504 UT ") != std::string::npos);
}

TEST_CASE("fault injection: abort, partial abort, delay (route and listener level)",
          "[proxy][fault]") {
  TestUpstream up({.name = "up", .record = false});
  Json abort100 = Fault({{"abort", {{"http_status", 418}, {"percentage", {{"numerator", 100}}}}}});
  Json abort50 = Fault({{"abort", {{"http_status", 503}, {"percentage", {{"numerator", 50}}}}}});
  Json delay = Fault({{"delay", {{"fixed_delay", "0.3s"}, {"percentage", {{"numerator", 100}}}}}});
  auto route = [&](const std::string& name, const Json& fault) {
    return Json{{"name", name},
                {"match", {{"prefix", "/" + name}}},
                {"route", {{"cluster", "up"}}},
                {"typed_per_filter_config", {{"envoy.filters.http.fault", fault}}}};
  };
  Json rc =
      RouteConfig("r", {route("abort", abort100), route("half", abort50), route("delay", delay)});
  Json doc = {{"listeners", {HttpListener("http", rc)}},
              {"clusters", {StaticCluster("up", {up.port()})}}};
  auto p = StartProxy(doc);
  REQUIRE(p->error == "");
  Client c(p->Port());
  Resp r = c.Get("h", "/abort");
  CHECK(r.status == 418);
  CHECK(up.count() == 0);
  int aborted = 0;
  for (int i = 0; i < 400; ++i)
    aborted += c.Get("h", "/half").status == 503;
  CHECK(aborted > 150);
  CHECK(aborted < 250);
  CHECK(up.count() == static_cast<uint64_t>(400 - aborted));
  up.Reset();
  auto t0 = Clock::now();
  r = c.Get("h", "/delay");
  CHECK(r.status == 200);
  CHECK(Ms(t0, Clock::now()) >= 290);
  CHECK(up.count() == 1);
  auto lines = p->LogLines(402);
  REQUIRE(!lines.empty());
  CHECK(lines.front().find("\" 418 FI fault_filter_abort ") != std::string::npos);
  CHECK(lines.back().find("\" 200 DI via_upstream ") != std::string::npos);

  // The same fault as the listener's HTTP filter applies to every route.
  Json hcm_fault = {{"name", "envoy.filters.http.fault"}, {"typed_config", abort100}};
  Json doc2 = {{"listeners",
                {HttpListener("http",
                              RouteConfig("r", {{{"name", "x"},
                                                 {"match", {{"prefix", "/"}}},
                                                 {"route", {{"cluster", "up"}}}}}),
                              false, Json::array({hcm_fault}))}},
               {"clusters", {StaticCluster("up", {up.port()})}}};
  auto p2 = StartProxy(doc2);
  REQUIRE(p2->error == "");
  CHECK(Get(p2->Port(), "h", "/any").status == 418);
}

TEST_CASE("circuit breakers: max_requests and max_connections/pending overflow with 503 UO",
          "[proxy][breaker]") {
  TestUpstream up({.name = "up", .delay_ms = 300, .record = false});
  Json c1 = StaticCluster("req1", {up.port()});
  c1["circuit_breakers"] = {{"thresholds", {{{"max_requests", 1}}}}};
  Json c2 = StaticCluster("conn1", {up.port()});
  c2["circuit_breakers"] = {
      {"thresholds", {{{"max_connections", 1}, {"max_pending_requests", 1}}}}};
  Json rc = RouteConfig(
      "r",
      {{{"name", "req"}, {"match", {{"prefix", "/req"}}}, {"route", {{"cluster", "req1"}}}},
       {{"name", "conn"}, {"match", {{"prefix", "/conn"}}}, {"route", {{"cluster", "conn1"}}}}});
  Json doc = {{"listeners", {HttpListener("http", rc)}}, {"clusters", {c1, c2}}};
  auto p = StartProxy(doc);
  REQUIRE(p->error == "");
  uint16_t port = p->Port();
  {
    auto a = std::async(std::launch::async, [&] { return Get(port, "h", "/req").status; });
    usleep(50000);
    auto b = std::async(std::launch::async, [&] { return Get(port, "h", "/req").status; });
    int sa = a.get(), sb = b.get();
    CHECK(sa == 200);
    CHECK(sb == 503);
  }
  {
    std::vector<std::future<int>> fs;
    for (int i = 0; i < 3; ++i) {
      fs.push_back(std::async(std::launch::async, [&] { return Get(port, "h", "/conn").status; }));
      usleep(30000);
    }
    std::vector<int> st;
    for (auto& f : fs)
      st.push_back(f.get());
    CHECK(std::count(st.begin(), st.end(), 200) == 2);  // one on the connection, one pending
    CHECK(std::count(st.begin(), st.end(), 503) == 1);  // pending queue full
  }
  auto lines = p->LogLines(5);
  int uo = 0;
  for (const auto& l : lines)
    uo += l.find("\" 503 UO ") != std::string::npos;
  CHECK(uo == 2);
  CHECK(p->proxy->stats().overflow.load() == 2);
}

TEST_CASE("outlier detection ejects an endpoint after consecutive 5xx", "[proxy][outlier]") {
  TestUpstream bad({.name = "bad", .status = 500, .record = false}),
      good({.name = "good", .record = false});
  Json c = StaticCluster("svc", {bad.port(), good.port()}, "ROUND_ROBIN");
  c["outlier_detection"] = {
      {"consecutive_5xx", 3}, {"base_ejection_time", "30s"}, {"max_ejection_percent", 100}};
  Json doc = {{"listeners", {HttpListener("http", OneRoute({{"cluster", "svc"}}), false)}},
              {"clusters", {c}}};
  auto p = StartProxy(doc);
  REQUIRE(p->error == "");
  Client cl(p->Port());
  int errors = 0;
  for (int i = 0; i < 40; ++i)
    errors += cl.Get("h", "/").status == 500;
  CHECK(errors == 3);
  CHECK(bad.count() == 3);
  CHECK(good.count() == 37);
  CHECK(p->proxy->stats().ejections.load() == 1);
}

TEST_CASE("access log: Istio's default format, field by field", "[proxy][accesslog]") {
  TestUpstream up({.name = "up", .record = false});
  Json doc = {
      {"listeners",
       {HttpListener("http",
                     OneRoute({{"cluster", "outbound|8000||httpbin.default.svc.cluster.local"}}))}},
      {"clusters",
       {StaticCluster("outbound|8000||httpbin.default.svc.cluster.local", {up.port()})}}};
  auto p = StartProxy(doc);
  REQUIRE(p->error == "");
  auto wall_ms = [] {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
  };
  int64_t sent_ms = wall_ms();
  Resp r = SendRaw(
      p->Port(),
      "POST /status/201?x=1 HTTP/1.1\r\nhost: httpbin.example.com\r\nuser-agent: test-agent/1\r\n"
      "x-request-id: rid-1\r\nx-status: 201\r\nx-delay-ms: 300\r\ncontent-length: 5\r\n"
      "connection: close\r\n\r\nhello");
  int64_t answered_ms = wall_ms();
  REQUIRE(r.status == 201);
  CHECK(Get(p->Port(), "h", "/", "x-close: 1\r\n").status == 503);
  auto lines = p->LogLines(2);
  REQUIRE(lines.size() == 2);
  std::regex re(
      R"re(^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)\] "(\S+) (\S+) (\S+)" (\d+) (\S+) (\S+) (\S+) "(\S+)" (\d+) (\d+) (\d+) (\S+) "([^"]*)" "([^"]*)" "([^"]*)" "([^"]*)" "([^"]*)" (\S+) (\S+) (\S+) (\S+) (\S+) (\S+)$)re");
  std::smatch m;
  REQUIRE(std::regex_match(lines[0], m, re));
  // START_TIME is when the request arrived, not when it was logged 300 ms later.
  std::tm tm{};
  std::string start = m[1];
  REQUIRE(strptime(start.c_str(), "%Y-%m-%dT%H:%M:%S", &tm) != nullptr);
  int64_t start_ms = int64_t{timegm(&tm)} * 1000 + std::stoi(start.substr(20, 3));
  CHECK(start_ms >= sent_ms - 5);
  CHECK(start_ms <= answered_ms - 290);
  CHECK(m[2] == "POST");
  CHECK(m[3] == "/status/201?x=1");
  CHECK(m[4] == "HTTP/1.1");
  CHECK(m[5] == "201");
  CHECK(m[6] == "-");             // response flags
  CHECK(m[7] == "via_upstream");  // response code details
  CHECK(m[8] == "-");             // connection termination details
  CHECK(m[10] == "5");            // bytes received (body)
  CHECK(std::stoi(m[11]) == static_cast<int>(r.raw_head.size() + r.body.size()));  // bytes sent
  CHECK(m[13] != "-");  // upstream service time
  CHECK(m[14] == "-");  // x-forwarded-for (from the client: none)
  CHECK(m[15] == "test-agent/1");
  CHECK(m[16] == "rid-1");
  CHECK(m[17] == "httpbin.example.com");
  CHECK(m[18] == "127.0.0.1:" + std::to_string(up.port()));
  CHECK(m[19] == "outbound|8000||httpbin.default.svc.cluster.local");
  CHECK(std::string(m[20]).rfind("127.0.0.1:", 0) == 0);  // upstream local address
  CHECK(m[21] == "127.0.0.1:" + std::to_string(p->Port()));
  CHECK(std::string(m[22]).rfind("127.0.0.1:", 0) == 0);  // downstream remote
  CHECK(m[23] == "-");                                    // SNI
  CHECK(m[24] == "main");                                 // route name
  REQUIRE(std::regex_match(lines[1], m, re));
  CHECK(m[5] == "503");
  CHECK(m[6] == "UC");
}

TEST_CASE("access log can be switched off per listener", "[proxy][accesslog]") {
  TestUpstream up({.name = "up", .record = false});
  Json doc = {
      {"listeners", {HttpListener("http", OneRoute({{"cluster", "up"}}), /*access_log=*/false)}},
      {"clusters", {StaticCluster("up", {up.port()})}}};
  auto p = StartProxy(doc);
  REQUIRE(p->error == "");
  CHECK(Get(p->Port(), "h", "/").status == 200);
  usleep(50000);
  CHECK(p->LogLines().empty());
}
