// RFC 9110/9112 points of the HTTP/1.1 codec as the running proxy shows them to real
// clients and upstreams: absolute-form targets, empty lines before a request, HTTP/0.9
// request lines. (The refusals that are only a status go in codec_test.cc's corpus.)
#include <catch2/catch.hpp>

#include "harness.h"
#include "test_upstream.h"

using namespace sluice::testing;

namespace {

Json OneCluster(uint16_t port) {
  return {{"listeners",
           {HttpListener("http",
                         RouteConfig("r", {{{"name", "all"},
                                            {"match", {{"prefix", "/"}}},
                                            {"route", {{"cluster", "up"}}}}}),
                         false)}},
          {"clusters", {StaticCluster("up", {port})}}};
}

}  // namespace

TEST_CASE("absolute-form: routed and forwarded by the target's authority, not Host",
          "[proxy][protocol]") {
  // RFC 9112 §3.2.2: the proxy ignores the received Host and uses the authority; the
  // upstream gets the origin-form and that authority as Host (as from Envoy).
  TestUpstream a({.name = "a"}), b({.name = "b"});
  auto route_to = [](const std::string& cluster) {
    return Json::array(
        {{{"name", "r"}, {"match", {{"prefix", "/"}}}, {"route", {{"cluster", cluster}}}}});
  };
  Json rc = {
      {"name", "r"},
      {"virtual_hosts",
       Json::array({{{"name", "a"}, {"domains", {"example.com:8080"}}, {"routes", route_to("a")}},
                    {{"name", "b"}, {"domains", {"*"}}, {"routes", route_to("b")}}})}};
  auto p =
      StartProxy({{"listeners", {HttpListener("http", rc, false)}},
                  {"clusters", {StaticCluster("a", {a.port()}), StaticCluster("b", {b.port()})}}});
  REQUIRE(p->error == "");
  Resp r = SendRaw(p->Port(),
                   "GET http://example.com:8080/p?q=1 HTTP/1.1\r\nhost: other.example\r\n"
                   "connection: close\r\n\r\n");
  CHECK(r.status == 200);
  CHECK(r.Header("x-upstream") == "a");
  CHECK(r.body.rfind("GET /p?q=1 HTTP/1.1\r\n", 0) == 0);
  CHECK(r.body.find("host: example.com:8080\r\n") != std::string::npos);
  CHECK(r.body.find("other.example") == std::string::npos);
  // No path: "/" upstream. The origin-form is unchanged for an ordinary request.
  r = SendRaw(p->Port(), "GET HTTP://EXAMPLE.com:8080 HTTP/1.1\r\nhost: x\r\n\r\n");
  CHECK(r.Header("x-upstream") == "a");
  CHECK(r.body.rfind("GET / HTTP/1.1\r\nhost: EXAMPLE.com:8080\r\n", 0) == 0);
  r = Get(p->Port(), "example.com:8080", "/o");
  CHECK(r.Header("x-upstream") == "a");
  CHECK(a.count() == 3);
  CHECK(b.count() == 0);
}

TEST_CASE("empty lines before a request are skipped, and its head is forwarded as received",
          "[proxy][protocol]") {
  // RFC 9112 §2.2: some clients send a CRLF after a POST body. The proxy consumes it with
  // the next head, and that head's header lines still go upstream byte for byte.
  TestUpstream up({.name = "up"});
  auto p = StartProxy(OneCluster(up.port()));
  REQUIRE(p->error == "");
  int fd = Connect(p->Port());
  REQUIRE(fd >= 0);
  std::string raw =
      "POST /a HTTP/1.1\r\nhost: h\r\ncontent-length: 3\r\n\r\nabc\r\n"
      "GET /b HTTP/1.1\r\nhost: h\r\nx-a:  v \r\nx-b: w\r\n\r\n"
      "\r\n\nGET /c HTTP/1.1\r\nhost: h\r\n\r\n";
  send(fd, raw.data(), raw.size(), MSG_NOSIGNAL);
  std::string buf;
  auto rs = ReadResponses(fd, buf, 3, 3000);
  close(fd);
  REQUIRE(rs.size() == 3);
  for (const Resp& r : rs)
    CHECK(r.status == 200);
  CHECK(rs[0].body.rfind("POST /a ", 0) == 0);
  CHECK(rs[1].body.rfind("GET /b HTTP/1.1\r\n", 0) == 0);
  CHECK(rs[1].body.find("\r\nx-a:  v \r\nx-b: w\r\n") != std::string::npos);
  CHECK(rs[2].body.rfind("GET /c HTTP/1.1\r\n", 0) == 0);
  CHECK(up.count() == 3);
}

TEST_CASE("an HTTP/0.9 request line is answered 400 at once", "[proxy][protocol]") {
  // Without a version there is no head to wait for: the line alone is refused.
  TestUpstream up({.name = "up"});
  auto p = StartProxy(OneCluster(up.port()));
  REQUIRE(p->error == "");
  for (const char* raw : {"GET /\r\n", "GET /\r\n\r\n"}) {
    INFO(raw);
    auto t0 = std::chrono::steady_clock::now();
    Resp r = SendRaw(p->Port(), raw, 2000);
    CHECK(r.status == 400);
    CHECK(r.Header("connection") == "close");
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(1000));
  }
  CHECK(up.count() == 0);
}
