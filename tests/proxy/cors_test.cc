// Envoy's CORS filter (envoy.filters.http.cors) through the real engine, with the
// project's upstream behind it and raw HTTP/1.1 and curl as clients: preflights answered
// here (allowed and refused origins, methods, headers, max-age, credentials), forwarded
// when the origin does not match, the headers an actual request's response gets, every
// origin matcher, the most specific policy winning field by field, the deprecated
// RouteAction.cors istiod 1.18 and 1.19 send, and the filter's place after the fault
// filter.
#include <netinet/in.h>
#include <sys/socket.h>

#include <array>
#include <atomic>
#include <cstdio>
#include <thread>

#include <catch2/catch.hpp>

#include "harness.h"
#include "test_upstream.h"

using namespace sluice::testing;

namespace {

Json CorsFilter() {
  return {{"name", "envoy.filters.http.cors"},
          {"typed_config",
           {{"@type", "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}}}};
}

Json FaultFilter() {
  return {{"name", "envoy.filters.http.fault"},
          {"typed_config",
           {{"@type", "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}}}};
}

// A CorsPolicy as typed_per_filter_config holds it.
Json Policy(Json fields) {
  fields["@type"] = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy";
  return fields;
}

Json Exact(const std::string& s) {
  return {{"exact", s}};
}

Json RouteTo(const std::string& name, const std::string& prefix, const std::string& cluster,
             const Json& cors = nullptr) {
  Json r = {{"name", name}, {"match", {{"prefix", prefix}}}, {"route", {{"cluster", cluster}}}};
  if (!cors.is_null())
    r["typed_per_filter_config"] = {{"envoy.filters.http.cors", Policy(cors)}};
  return r;
}

Json Doc(const Json& route_config, uint16_t upstream, const Json& filters) {
  return {{"listeners", Json::array({HttpListener("http", route_config, true, filters)})},
          {"clusters", Json::array({StaticCluster("app", {upstream})})}};
}

std::string Preflight(const std::string& path, const std::string& origin, const std::string& method,
                      const std::string& extra = "") {
  return "OPTIONS " + path + " HTTP/1.1\r\nhost: app\r\norigin: " + origin +
         "\r\naccess-control-request-method: " + method + "\r\n" + extra +
         "connection: close\r\n\r\n";
}

std::string Run(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p)
    return out;
  std::array<char, 4096> buf;
  std::size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0)
    out.append(buf.data(), n);
  pclose(p);
  return out;
}

// An upstream that answers every request with its own CORS headers (as an app that does
// CORS itself would), to see which of them the filter replaces.
class CorsApp {
 public:
  CorsApp() {
    fd_ = ListenLoopback(16, &port_);
    thread_ = std::thread([this] {
      while (!stop_) {
        int c = accept(fd_, nullptr, nullptr);
        if (c < 0)
          return;
        std::string in;
        char buf[4096];
        while (in.find("\r\n\r\n") == std::string::npos) {
          ssize_t n = recv(c, buf, sizeof(buf), 0);
          if (n <= 0)
            break;
          in.append(buf, static_cast<std::size_t>(n));
        }
        std::string out =
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\naccess-control-allow-origin: *\r\n"
            "access-control-allow-credentials: false\r\n"
            "access-control-expose-headers: x-app\r\nx-app: 1\r\nconnection: close\r\n\r\nok";
        send(c, out.data(), out.size(), MSG_NOSIGNAL);
        close(c);
      }
    });
  }
  ~CorsApp() {
    stop_ = true;
    shutdown(fd_, SHUT_RDWR);
    close(fd_);
    thread_.join();
  }
  uint16_t port() const { return port_; }

 private:
  int fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace

TEST_CASE("cors: an allowed origin's preflight is answered by the proxy with the policy",
          "[proxy][cors]") {
  TestUpstream up({.name = "app"});
  Json rc = RouteConfig(
      "r", Json::array({RouteTo("api", "/", "app",
                                {{"allow_origin_string_match", {Exact("https://web.example")}},
                                 {"allow_methods", "GET,PUT"},
                                 {"allow_headers", "content-type,x-token"},
                                 {"expose_headers", "x-upstream"},
                                 {"max_age", "600"},
                                 {"allow_credentials", true}})}));
  auto p = StartProxy(Doc(rc, up.port(), Json::array({CorsFilter()})));
  REQUIRE(p->error.empty());

  Resp r = SendRaw(p->Port(), Preflight("/items", "https://web.example", "PUT"));
  REQUIRE(r.status == 200);
  CHECK(r.Header("access-control-allow-origin") == "https://web.example");
  CHECK(r.Header("access-control-allow-methods") == "GET,PUT");
  CHECK(r.Header("access-control-allow-headers") == "content-type,x-token");
  CHECK(r.Header("access-control-max-age") == "600");
  CHECK(r.Header("access-control-allow-credentials") == "true");
  CHECK(r.Header("content-length") == "0");
  CHECK(r.Header("x-upstream").empty());
  CHECK(up.count() == 0);  // answered here, not by the app
  auto log = p->LogLines(1);
  REQUIRE(log.size() == 1);
  CHECK(log[0].find("\"OPTIONS /items HTTP/1.1\" 200 - cors_response") != std::string::npos);

  // Origins are compared whole: a longer one is another origin.
  Resp other = SendRaw(p->Port(), Preflight("/items", "https://web.example.evil", "PUT"));
  CHECK(other.Header("access-control-allow-origin").empty());
}

TEST_CASE(
    "cors: a refused origin's preflight is forwarded, or answered without an allowed "
    "origin when forward_not_matching_preflights is false",
    "[proxy][cors]") {
  TestUpstream up({.name = "app"});
  Json allow = {{"allow_origin_string_match", {Exact("https://web.example")}},
                {"allow_methods", "GET"},
                {"max_age", "60"}};
  Json keep = allow;
  keep["forward_not_matching_preflights"] = false;
  Json rc = RouteConfig("r", Json::array({RouteTo("keep", "/keep", "app", keep),
                                          RouteTo("forward", "/", "app", allow)}));
  auto p = StartProxy(Doc(rc, up.port(), Json::array({CorsFilter()})));
  REQUIRE(p->error.empty());

  // Envoy's default: the app sees a preflight whose origin the policy does not allow.
  Resp fwd = SendRaw(p->Port(), Preflight("/x", "https://other.example", "GET"));
  REQUIRE(fwd.status == 200);
  CHECK(fwd.Header("x-upstream") == "app");
  CHECK(fwd.Header("access-control-allow-origin").empty());
  CHECK(fwd.body.find("OPTIONS /x HTTP/1.1") == 0);
  CHECK(up.count() == 1);

  // forward_not_matching_preflights: false (istiod's unmatchedPreflights: IGNORE).
  Resp kept = SendRaw(p->Port(), Preflight("/keep", "https://other.example", "GET"));
  REQUIRE(kept.status == 200);
  CHECK(kept.Header("x-upstream").empty());
  CHECK(kept.headers.count("access-control-allow-origin") == 0);
  CHECK(kept.Header("access-control-allow-methods") == "GET");
  CHECK(kept.Header("access-control-max-age") == "60");
  CHECK(up.count() == 1);

  // An OPTIONS without Access-Control-Request-Method is no preflight: it goes upstream
  // and, its origin allowed, comes back with the CORS headers.
  Resp plain = SendRaw(p->Port(),
                       "OPTIONS /keep HTTP/1.1\r\nhost: app\r\norigin: "
                       "https://web.example\r\nconnection: close\r\n\r\n");
  CHECK(plain.Header("x-upstream") == "app");
  CHECK(plain.Header("access-control-allow-origin") == "https://web.example");
  CHECK(up.count() == 2);
}

TEST_CASE(
    "cors: an actual request's response carries the allowed origin, credentials and "
    "expose headers, and others get none",
    "[proxy][cors]") {
  TestUpstream up({.name = "app"});
  Json rc = RouteConfig(
      "r", Json::array({RouteTo("api", "/", "app",
                                {{"allow_origin_string_match", {Exact("https://web.example")}},
                                 {"allow_methods", "GET"},
                                 {"expose_headers", "x-upstream,x-trace"},
                                 {"allow_credentials", true}})}));
  auto p = StartProxy(Doc(rc, up.port(), Json::array({CorsFilter()})));
  REQUIRE(p->error.empty());

  Resp ok = Get(p->Port(), "app", "/a", "origin: https://web.example\r\n");
  REQUIRE(ok.status == 200);
  CHECK(ok.Header("x-upstream") == "app");
  CHECK(ok.Header("access-control-allow-origin") == "https://web.example");
  CHECK(ok.Header("access-control-allow-credentials") == "true");
  CHECK(ok.Header("access-control-expose-headers") == "x-upstream,x-trace");
  // Preflight-only headers are not on an actual response.
  CHECK(ok.headers.count("access-control-allow-methods") == 0);
  // The Origin header still reaches the app.
  CHECK(ok.body.find("origin: https://web.example") != std::string::npos);

  Resp refused = Get(p->Port(), "app", "/a", "origin: https://other.example\r\n");
  REQUIRE(refused.status == 200);
  CHECK(refused.headers.count("access-control-allow-origin") == 0);
  CHECK(refused.headers.count("access-control-allow-credentials") == 0);
  CHECK(refused.headers.count("access-control-expose-headers") == 0);

  Resp no_origin = Get(p->Port(), "app", "/a");
  REQUIRE(no_origin.status == 200);
  CHECK(no_origin.headers.count("access-control-allow-origin") == 0);

  // A keep-alive connection: the second request's origin decides, not the first's.
  Client c(p->Port());
  Resp first = c.Get("app", "/1", "origin: https://web.example\r\n");
  Resp second = c.Get("app", "/2");
  CHECK(first.Header("access-control-allow-origin") == "https://web.example");
  CHECK(second.status == 200);
  CHECK(second.headers.count("access-control-allow-origin") == 0);
}

TEST_CASE("cors: origins match by exact, prefix, suffix, contains and regex, with ignore_case",
          "[proxy][cors]") {
  TestUpstream up({.name = "app"});
  auto policy = [](Json m) { return Json{{"allow_origin_string_match", Json::array({m})}}; };
  Json rc = RouteConfig(
      "r", Json::array({
               RouteTo("regex", "/regex", "app",
                       policy({{"safe_regex", {{"regex", R"(https://[a-z]+\.example\.com)"}}}})),
               RouteTo("prefix", "/prefix", "app",
                       policy({{"prefix", "https://APP."}, {"ignore_case", true}})),
               RouteTo("suffix", "/suffix", "app", policy({{"suffix", ".example.org"}})),
               RouteTo("contains", "/contains", "app", policy({{"contains", "internal"}})),
               RouteTo("any", "/any", "app", policy(Exact("*"))),
           }));
  auto p = StartProxy(Doc(rc, up.port(), Json::array({CorsFilter()})));
  REQUIRE(p->error.empty());
  auto acao = [&](const std::string& path, const std::string& origin) {
    return Get(p->Port(), "app", path, "origin: " + origin + "\r\n")
        .Header("access-control-allow-origin");
  };
  CHECK(acao("/regex", "https://shop.example.com") == "https://shop.example.com");
  CHECK(acao("/regex", "https://shop.example.com.evil") == "");  // a full match only
  CHECK(acao("/regex", "https://SHOP.example.com") == "");
  CHECK(acao("/prefix", "https://app.example") == "https://app.example");
  CHECK(acao("/prefix", "http://app.example") == "");
  CHECK(acao("/suffix", "https://a.example.org") == "https://a.example.org");
  CHECK(acao("/suffix", "https://a.example.org.evil") == "");
  CHECK(acao("/contains", "https://internal.corp") == "https://internal.corp");
  CHECK(acao("/contains", "https://public.corp") == "");
  // A matcher that matches "*" allows every origin (and echoes it, as Envoy).
  CHECK(acao("/any", "https://anything.test") == "https://anything.test");
}

TEST_CASE("cors: the most specific policy wins field by field, and filter_enabled 0 turns it off",
          "[proxy][cors]") {
  TestUpstream up({.name = "app"});
  Json rc = RouteConfig(
      "r", Json::array({RouteTo("own-origins", "/own", "app",
                                {{"allow_origin_string_match", {Exact("https://route.example")}}}),
                        RouteTo("off", "/off", "app",
                                {{"filter_enabled", {{"default_value", {{"numerator", 0}}}}}}),
                        RouteTo("inherit", "/", "app")}));
  rc["virtual_hosts"][0]["typed_per_filter_config"] = {
      {"envoy.filters.http.cors",
       Policy({{"allow_origin_string_match", {Exact("https://vhost.example")}},
               {"allow_methods", "POST"},
               {"max_age", "30"}})}};
  auto p = StartProxy(Doc(rc, up.port(), Json::array({CorsFilter()})));
  REQUIRE(p->error.empty());

  // The route's origins replace the virtual host's; its methods and max-age come from
  // the virtual host.
  Resp own = SendRaw(p->Port(), Preflight("/own", "https://route.example", "POST"));
  CHECK(own.Header("access-control-allow-origin") == "https://route.example");
  CHECK(own.Header("access-control-allow-methods") == "POST");
  CHECK(own.Header("access-control-max-age") == "30");
  Resp vhost_origin = Get(p->Port(), "app", "/own", "origin: https://vhost.example\r\n");
  CHECK(vhost_origin.headers.count("access-control-allow-origin") == 0);

  // A route without a policy of its own takes the virtual host's.
  Resp inherit = SendRaw(p->Port(), Preflight("/x", "https://vhost.example", "POST"));
  CHECK(inherit.Header("access-control-allow-origin") == "https://vhost.example");
  CHECK(inherit.Header("x-upstream").empty());

  // filter_enabled 0% on the route: the preflight goes to the app, untouched.
  Resp off = SendRaw(p->Port(), Preflight("/off", "https://vhost.example", "POST"));
  CHECK(off.Header("x-upstream") == "app");
  CHECK(off.headers.count("access-control-allow-origin") == 0);
}

TEST_CASE(
    "cors: the deprecated RouteAction.cors (istiod 1.18/1.19) applies, and without the cors "
    "filter in the connection manager no policy does",
    "[proxy][cors]") {
  TestUpstream up({.name = "app"});
  Json route = {{"name", "old"},
                {"match", {{"prefix", "/"}}},
                {"route",
                 {{"cluster", "app"},
                  {"cors",
                   {{"allow_origin_string_match", {Exact("https://web.example")}},
                    {"allow_methods", "GET,POST"},
                    {"allow_headers", "*"},
                    {"max_age", "86400"},
                    {"filter_enabled",
                     {{"default_value", {{"numerator", 100}, {"denominator", "HUNDRED"}}}}}}}}}};
  Json rc = RouteConfig("r", Json::array({route}));
  auto p = StartProxy(Doc(rc, up.port(), Json::array({FaultFilter(), CorsFilter()})));
  REQUIRE(p->error.empty());
  Resp r = SendRaw(p->Port(), Preflight("/", "https://web.example", "POST",
                                        "access-control-request-headers: x-a,x-b\r\n"));
  REQUIRE(r.status == 200);
  CHECK(r.Header("access-control-allow-origin") == "https://web.example");
  CHECK(r.Header("access-control-allow-methods") == "GET,POST");
  CHECK(r.Header("access-control-allow-headers") == "x-a,x-b");  // "*" echoes the request's
  CHECK(r.Header("access-control-max-age") == "86400");
  CHECK(up.count() == 0);

  auto q = StartProxy(Doc(rc, up.port(), Json::array({FaultFilter()})));
  REQUIRE(q->error.empty());
  Resp none = SendRaw(q->Port(), Preflight("/", "https://web.example", "POST"));
  CHECK(none.Header("x-upstream") == "app");
  CHECK(none.headers.count("access-control-allow-origin") == 0);
}

TEST_CASE(
    "cors: the filter's headers replace the app's own, local replies after it carry "
    "them, a fault abort before it does not",
    "[proxy][cors]") {
  CorsApp app;
  Json cors = {{"allow_origin_string_match", {Exact("https://web.example")}},
               {"expose_headers", "x-proxy"},
               {"allow_credentials", true}};
  Json abort_route = RouteTo("abort", "/abort", "app", cors);
  abort_route["typed_per_filter_config"]["envoy.filters.http.fault"] = {
      {"@type", "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"},
      {"abort", {{"http_status", 418}, {"percentage", {{"numerator", 100}}}}}};
  Json rc = RouteConfig("r", Json::array({abort_route, RouteTo("gone", "/gone", "nowhere", cors),
                                          RouteTo("app", "/", "app", cors)}));
  // istiod's order: fault, then cors, then the router.
  auto p = StartProxy(Doc(rc, app.port(), Json::array({FaultFilter(), CorsFilter()})));
  REQUIRE(p->error.empty());

  Resp r = Get(p->Port(), "app", "/x", "origin: https://web.example\r\n");
  REQUIRE(r.status == 200);
  CHECK(r.Header("x-app") == "1");
  CHECK(r.Header("access-control-allow-origin") == "https://web.example");
  CHECK(r.Header("access-control-allow-credentials") == "true");
  CHECK(r.Header("access-control-expose-headers") == "x-proxy");
  // Each replaced, not doubled: the app's "*" is gone.
  CHECK(r.raw_head.find("access-control-allow-origin: *") == std::string::npos);
  CHECK(r.raw_head.find("access-control-allow-credentials: false") == std::string::npos);
  CHECK(r.raw_head.find("x-app\r\n") == std::string::npos);

  // Without an allowed origin the app's own headers pass untouched.
  Resp other = Get(p->Port(), "app", "/x", "origin: https://other.example\r\n");
  CHECK(other.Header("access-control-allow-origin") == "*");
  CHECK(other.Header("access-control-expose-headers") == "x-app");

  // 503 NC from the router: the reply passes back through the filter.
  Resp gone = Get(p->Port(), "app", "/gone", "origin: https://web.example\r\n");
  CHECK(gone.status == 503);
  CHECK(gone.Header("access-control-allow-origin") == "https://web.example");

  // The fault filter aborts before the cors filter sees the request.
  Resp aborted = Get(p->Port(), "app", "/abort", "origin: https://web.example\r\n");
  CHECK(aborted.status == 418);
  CHECK(aborted.headers.count("access-control-allow-origin") == 0);
}

TEST_CASE("cors: curl's preflight and actual request through the proxy", "[proxy][cors][curl]") {
  TestUpstream up({.name = "app"});
  Json rc = RouteConfig(
      "r", Json::array({RouteTo("api", "/", "app",
                                {{"allow_origin_string_match",
                                  {{{"safe_regex", {{"regex", R"(https://.*\.example\.com)"}}}}}},
                                 {"allow_methods", "*"},
                                 {"allow_headers", "authorization"},
                                 {"max_age", "120"},
                                 {"allow_credentials", true}})}));
  auto p = StartProxy(Doc(rc, up.port(), Json::array({CorsFilter()})));
  REQUIRE(p->error.empty());
  const std::string url = "http://127.0.0.1:" + std::to_string(p->Port()) + "/res";
  std::string pre =
      Run("curl -s -i --max-time 5 -X OPTIONS -H 'Origin: https://ui.example.com' "
          "-H 'Access-Control-Request-Method: DELETE' " +
          url);
  CHECK(pre.rfind("HTTP/1.1 200", 0) == 0);
  CHECK(pre.find("access-control-allow-origin: https://ui.example.com\r\n") != std::string::npos);
  CHECK(pre.find("access-control-allow-methods: DELETE\r\n") != std::string::npos);
  CHECK(pre.find("access-control-allow-headers: authorization\r\n") != std::string::npos);
  CHECK(pre.find("access-control-max-age: 120\r\n") != std::string::npos);
  CHECK(pre.find("access-control-allow-credentials: true\r\n") != std::string::npos);
  CHECK(up.count() == 0);

  std::string get = Run("curl -s -i --max-time 5 -H 'Origin: https://ui.example.com' " + url);
  CHECK(get.rfind("HTTP/1.1 200", 0) == 0);
  CHECK(get.find("x-upstream: app\r\n") != std::string::npos);
  CHECK(get.find("access-control-allow-origin: https://ui.example.com\r\n") != std::string::npos);
  CHECK(up.count() == 1);
}
