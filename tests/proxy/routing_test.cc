// Envoy route semantics through the real engine: virtual-host domain selection, every
// match type, and every route action, checked at the client and at the upstream.
#include <catch2/catch.hpp>

#include "harness.h"
#include "test_upstream.h"

using namespace sluice::testing;

namespace {

Json Route(const std::string& name, const Json& match, const Json& action) {
  Json r = {{"name", name}, {"match", match}};
  r.update(action);
  return r;
}

Json To(const std::string& cluster) {
  return {{"route", {{"cluster", cluster}}}};
}

Json Direct(int status, const std::string& body) {
  return {{"direct_response", {{"status", status}, {"body", {{"inline_string", body}}}}}};
}

}  // namespace

TEST_CASE("virtual hosts: exact, *.suffix, prefix* and * in Envoy's order", "[proxy][routing]") {
  Json vhosts = Json::array({
      {{"name", "exact"},
       {"domains", {"www.example.com"}},
       {"routes", {Route("r", {{"prefix", "/"}}, Direct(200, "exact"))}}},
      {{"name", "suffix-long"},
       {"domains", {"*.b.example.com"}},
       {"routes", {Route("r", {{"prefix", "/"}}, Direct(200, "suffix-long"))}}},
      {{"name", "suffix"},
       {"domains", {"*.example.com"}},
       {"routes", {Route("r", {{"prefix", "/"}}, Direct(200, "suffix"))}}},
      {{"name", "prefix"},
       {"domains", {"api.*"}},
       {"routes", {Route("r", {{"prefix", "/"}}, Direct(200, "prefix"))}}},
      {{"name", "any"},
       {"domains", {"*"}},
       {"routes", {Route("r", {{"prefix", "/"}}, Direct(200, "any"))}}},
  });
  Json rc = {{"name", "r80"}, {"virtual_hosts", vhosts}, {"ignore_port_in_host_matching", true}};
  auto p = StartProxy({{"listeners", {HttpListener("http", rc)}}});
  REQUIRE(p->error == "");
  uint16_t port = p->Port();
  CHECK(Get(port, "www.example.com", "/").body == "exact");
  CHECK(Get(port, "WWW.Example.COM:8080", "/").body == "exact");  // case and port ignored
  CHECK(Get(port, "x.b.example.com", "/").body == "suffix-long");
  CHECK(Get(port, "a.example.com", "/").body == "suffix");
  CHECK(Get(port, "example.com", "/").body == "any");  // "*.example.com" needs a label
  CHECK(Get(port, "api.other.org", "/").body == "prefix");
  CHECK(Get(port, "elsewhere", "/").body == "any");
}

TEST_CASE("route matches: prefix, path, regex, case, headers, query parameters",
          "[proxy][routing]") {
  Json routes = Json::array({
      Route("exact", {{"path", "/exact"}}, Direct(200, "exact")),
      Route("nocase", {{"prefix", "/NoCase"}, {"case_sensitive", false}}, Direct(200, "nocase")),
      Route("regex", {{"safe_regex", {{"regex", "/items/[0-9]+"}}}}, Direct(200, "regex")),
      Route("hdr-exact",
            {{"prefix", "/h"},
             {"headers", {{{"name", "x-env"}, {"string_match", {{"exact", "prod"}}}}}}},
            Direct(200, "hdr-exact")),
      Route("hdr-prefix",
            {{"prefix", "/h"},
             {"headers", {{{"name", "x-env"}, {"string_match", {{"prefix", "stag"}}}}}}},
            Direct(200, "hdr-prefix")),
      Route("hdr-suffix",
            {{"prefix", "/h"},
             {"headers", {{{"name", "x-env"}, {"string_match", {{"suffix", "-dev"}}}}}}},
            Direct(200, "hdr-suffix")),
      Route("hdr-regex",
            {{"prefix", "/h"},
             {"headers", {{{"name", "x-env"}, {"safe_regex_match", {{"regex", "v[0-9]"}}}}}}},
            Direct(200, "hdr-regex")),
      Route("hdr-present",
            {{"prefix", "/h"}, {"headers", {{{"name", "x-debug"}, {"present_match", true}}}}},
            Direct(200, "hdr-present")),
      Route(
          "hdr-inverted",
          {{"prefix", "/h"},
           {"headers",
            {{{"name", "x-env"}, {"string_match", {{"exact", "test"}}}, {"invert_match", true}}}}},
          Direct(200, "hdr-inverted")),
      Route("query",
            {{"prefix", "/q"},
             {"query_parameters", {{{"name", "v"}, {"string_match", {{"exact", "2"}}}}}}},
            Direct(200, "query")),
      Route("query-present", {{"prefix", "/q"}, {"query_parameters", {{{"name", "debug"}}}}},
            Direct(200, "query-present")),
      Route("prefix", {{"prefix", "/p"}}, Direct(200, "prefix")),
  });
  auto p = StartProxy({{"listeners", {HttpListener("http", RouteConfig("r", routes))}}});
  REQUIRE(p->error == "");
  uint16_t port = p->Port();
  CHECK(Get(port, "h", "/exact").body == "exact");
  CHECK(Get(port, "h", "/exact/more").status == 404);  // path is exact, not a prefix
  CHECK(Get(port, "h", "/nocase/x").body == "nocase");
  CHECK(Get(port, "h", "/items/42").body == "regex");
  CHECK(Get(port, "h", "/items/42x").status == 404);       // regex must match the whole path
  CHECK(Get(port, "h", "/items/42?x=1").body == "regex");  // query is not part of the path
  CHECK(Get(port, "h", "/h", "x-env: prod\r\n").body == "hdr-exact");
  CHECK(Get(port, "h", "/h", "x-env: staging\r\n").body == "hdr-prefix");
  CHECK(Get(port, "h", "/h", "x-env: my-dev\r\n").body == "hdr-suffix");
  CHECK(Get(port, "h", "/h", "x-env: v2\r\n").body == "hdr-regex");
  CHECK(Get(port, "h", "/h", "x-env: test\r\nx-debug: 1\r\n").body == "hdr-present");
  CHECK(Get(port, "h", "/h", "x-env: other\r\n").body == "hdr-inverted");
  CHECK(Get(port, "h", "/h", "").body == "hdr-inverted");  // absent header + invert matches
  CHECK(Get(port, "h", "/h", "x-env: test\r\n").status == 404);
  CHECK(Get(port, "h", "/q?a=1&v=2").body == "query");
  CHECK(Get(port, "h", "/q?v=3&debug").body == "query-present");
  CHECK(Get(port, "h", "/q?v=3").status == 404);
  CHECK(Get(port, "h", "/pqr").body == "prefix");
  Resp nr = Get(port, "h", "/nothing");
  CHECK(nr.status == 404);
  CHECK(nr.body.empty());
}

TEST_CASE("route actions: redirect, direct response, rewrites, header mutations",
          "[proxy][routing]") {
  TestUpstream up({.name = "up"});
  Json routes = Json::array({
      Route("redirect", {{"prefix", "/old"}},
            {{"redirect",
              {{"host_redirect", "new.example.com"},
               {"prefix_rewrite", "/new"},
               {"response_code", "FOUND"}}}}),
      Route("https", {{"prefix", "/secure"}},
            {{"redirect", {{"https_redirect", true}, {"strip_query", true}}}}),
      Route("direct", {{"prefix", "/direct"}}, Direct(418, "short and stout")),
      Route("prefix-rewrite", {{"prefix", "/api/v1/"}},
            {{"route",
              {{"cluster", "up"},
               {"prefix_rewrite", "/v1/"},
               {"host_rewrite_literal", "backend.internal"}}}}),
      Route("regex-rewrite", {{"prefix", "/users/"}},
            {{"route",
              {{"cluster", "up"},
               {"regex_rewrite",
                {{"pattern", {{"regex", "^/users/([0-9]+)/profile$"}}},
                 {"substitution", "/profile?id=\\1"}}}}}}),
      {{"name", "headers"},
       {"match", {{"prefix", "/headers"}}},
       {"route", {{"cluster", "up"}}},
       {"request_headers_to_add",
        {{{"header", {{"key", "x-added"}, {"value", "route"}}},
          {"append_action", "OVERWRITE_IF_EXISTS_OR_ADD"}}}},
       {"request_headers_to_remove", {"x-secret"}},
       {"response_headers_to_add", {{{"header", {{"key", "x-resp"}, {"value", "1"}}}}}},
       {"response_headers_to_remove", {"x-upstream"}}},
  });
  Json doc = {{"listeners", {HttpListener("http", RouteConfig("r", routes))}},
              {"clusters", {StaticCluster("up", {up.port()})}}};
  auto p = StartProxy(doc);
  REQUIRE(p->error == "");
  uint16_t port = p->Port();

  Resp r = Get(port, "old.example.com", "/old/page?x=1");
  CHECK(r.status == 302);
  CHECK(r.Header("location") == "http://new.example.com/new/page?x=1");
  r = Get(port, "h.example.com", "/secure/a?x=1");
  CHECK(r.status == 301);
  CHECK(r.Header("location") == "https://h.example.com/secure/a");

  r = Get(port, "h", "/direct");
  CHECK(r.status == 418);
  CHECK(r.body == "short and stout");
  CHECK(up.count() == 0);

  r = Get(port, "h", "/api/v1/items?q=1");
  REQUIRE(r.status == 200);
  CHECK(r.body.rfind("GET /v1/items?q=1 HTTP/1.1\r\n", 0) == 0);
  CHECK(r.body.find("host: backend.internal\r\n") != std::string::npos);

  r = Get(port, "h", "/users/42/profile");
  CHECK(r.body.rfind("GET /profile?id=42 HTTP/1.1\r\n", 0) == 0);

  r = Get(port, "h", "/headers", "x-added: client\r\nx-secret: s3cr3t\r\n");
  REQUIRE(r.status == 200);
  CHECK(r.body.find("x-added: route\r\n") != std::string::npos);
  CHECK(r.body.find("x-added: client") == std::string::npos);
  CHECK(r.body.find("s3cr3t") == std::string::npos);
  CHECK(r.Header("x-resp") == "1");
  CHECK(r.Header("x-upstream") == "");
}

TEST_CASE("mesh headers: x-request-id, x-forwarded-for, x-forwarded-proto, attempt count",
          "[proxy][routing]") {
  TestUpstream up({.name = "up"});
  Json doc = {
      {"listeners",
       {HttpListener("http", RouteConfig("r", {Route("all", {{"prefix", "/"}}, To("up"))}))}},
      {"clusters", {StaticCluster("up", {up.port()})}}};
  auto p = StartProxy(doc);
  REQUIRE(p->error == "");
  Resp r = Get(p->Port(), "h", "/");
  REQUIRE(r.status == 200);
  CHECK(r.body.find("x-forwarded-for: 127.0.0.1\r\n") != std::string::npos);
  CHECK(r.body.find("x-forwarded-proto: http\r\n") != std::string::npos);
  CHECK(r.body.find("x-envoy-attempt-count: 1\r\n") != std::string::npos);
  auto id = r.body.find("x-request-id: ");
  REQUIRE(id != std::string::npos);
  std::string rid = r.body.substr(id + 14, 36);
  CHECK(rid[8] == '-');
  CHECK(rid[14] == '4');  // UUID version 4
  // A client's id is kept; an existing x-forwarded-for is appended to.
  r = Get(p->Port(), "h", "/", "x-request-id: abc-123\r\nx-forwarded-for: 10.1.2.3\r\n");
  CHECK(r.body.find("x-request-id: abc-123\r\n") != std::string::npos);
  CHECK(r.body.find("x-forwarded-for: 10.1.2.3,127.0.0.1\r\n") != std::string::npos);
  CHECK(r.Header("x-envoy-upstream-service-time") != "");
  // Hop-by-hop headers between ordinary ones are dropped; the ordinary ones arrive as
  // sent, in order, with their own spacing.
  r = Get(p->Port(), "h", "/",
          "a: 1\r\nConnection: keep-alive\r\nB:2 \r\nKeep-Alive: 5\r\nTE: x\r\nc: 3\r\n");
  REQUIRE(r.status == 200);
  CHECK(r.body.find("a: 1\r\nB:2 \r\nc: 3\r\n") != std::string::npos);
  CHECK(r.body.find("Keep-Alive") == std::string::npos);
  CHECK(r.body.find("TE: x") == std::string::npos);
}

TEST_CASE("header mutations at several levels: the least specific overwrite wins, as in Envoy",
          "[proxy][routing]") {
  TestUpstream up({.name = "up"});
  auto set = [](const std::string& k, const std::string& v) {
    return Json{{"header", {{"key", k}, {"value", v}}},
                {"append_action", "OVERWRITE_IF_EXISTS_OR_ADD"}};
  };
  auto add = [](const std::string& k, const std::string& v) {
    return Json{{"header", {{"key", k}, {"value", v}}},
                {"append_action", "APPEND_IF_EXISTS_OR_ADD"}};
  };
  Json route = {
      {"name", "r"},
      {"match", {{"prefix", "/"}}},
      {"route", {{"cluster", "up"}}},
      {"request_headers_to_add", Json::array({set("x-level", "route"), add("x-multi", "route")})}};
  Json vh = {
      {"name", "vh"},
      {"domains", Json::array({"*"})},
      {"routes", Json::array({route})},
      {"request_headers_to_add", Json::array({set("x-level", "vhost"), add("x-multi", "vhost")})}};
  Json rc = {{"name", "rc"},
             {"virtual_hosts", Json::array({vh})},
             {"request_headers_to_add", Json::array({set("x-level", "config")})}};
  Json doc = {{"listeners", Json::array({HttpListener("http", rc)})},
              {"clusters", Json::array({StaticCluster("up", {up.port()})})}};
  auto p = StartProxy(doc);
  REQUIRE(p->error == "");
  Resp r = Get(p->Port(), "h", "/", "x-level: client\r\n");
  REQUIRE(r.status == 200);
  CHECK(r.body.find("x-level: config\r\n") != std::string::npos);
  CHECK(r.body.find("x-level: route") == std::string::npos);
  CHECK(r.body.find("x-level: vhost") == std::string::npos);
  CHECK(r.body.find("x-level: client") == std::string::npos);
  CHECK(r.body.find("x-multi: route\r\n") != std::string::npos);  // appends accumulate
  CHECK(r.body.find("x-multi: vhost\r\n") != std::string::npos);
}
