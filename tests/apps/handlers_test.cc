// The httpbin and helloworld handlers called directly (no sockets).
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "helloworld.h"
#include "httpbin.h"

using namespace sluice::apps;
using nlohmann::json;

namespace {
Request Req(std::string method, std::string target, HeaderList headers = {{"Host", "h"}},
            std::string body = "") {
  Request r;
  r.method = std::move(method);
  r.target = target;
  std::size_t q = target.find('?');
  r.path = target.substr(0, q);
  if (q != std::string::npos)
    r.query = target.substr(q + 1);
  r.headers = std::move(headers);
  r.body = std::move(body);
  return r;
}
ConnectionInfo Conn() {
  return ConnectionInfo{"10.1.2.3", 40000, 80, false, ""};
}
}  // namespace

TEST_CASE("status specs: single, uniform list, weighted list, and rejects") {
  auto one = ParseStatusSpec("418");
  REQUIRE(one.size() == 1);
  CHECK(one[0].code == 418);
  CHECK(ParseStatusSpec("500,503").size() == 2);
  auto weighted = ParseStatusSpec("200:3,500:1");
  REQUIRE(weighted.size() == 2);
  CHECK(weighted[0].weight == 3);
  CHECK(weighted[1].code == 500);
  for (std::string_view bad : {"", "abc", "99", "600", "200,", "200:-1", "200:x", "200:0", "2 00"})
    CHECK(ParseStatusSpec(bad).empty());
}

TEST_CASE("weighted /status follows the weights") {
  Handler h = MakeHttpbinHandler({});
  int ok = 0;
  for (int i = 0; i < 2000; ++i)
    ok += h(Req("GET", "/status/200:9,500:1"), Conn()).status == 200;
  CHECK(ok > 1700);  // expected 1800, sd about 13
  CHECK(ok < 1900);
}

TEST_CASE("repeated headers join like httpbin - X-Forwarded-For is the origin") {
  Handler h = MakeHttpbinHandler({});
  Response r = h(Req("GET", "/get",
                     {{"Host", "h"}, {"x-a", "1"}, {"X-A", "2"}, {"X-Forwarded-For", "1.2.3.4"}}),
                 Conn());
  json j = json::parse(r.body);
  CHECK(j["headers"]["X-A"] == "1,2");
  CHECK(j["origin"] == "1.2.3.4");
  CHECK(j["url"] == "http://h/get");
  CHECK(h(Req("GET", "/ip"), Conn()).body.find("10.1.2.3") != std::string::npos);
}

TEST_CASE("/anything echoes any bytes as valid JSON and parses forms") {
  Handler h = MakeHttpbinHandler({});
  Response r = h(Req("POST", "/anything", {{"Host", "h"}}, std::string("\xff\xfe bin", 6)), Conn());
  REQUIRE(r.status == 200);
  json j = json::parse(r.body, nullptr, false);
  REQUIRE_FALSE(j.is_discarded());
  CHECK(j["json"].is_null());
  Response f =
      h(Req("POST", "/post", {{"Host", "h"}, {"Content-Type", "application/x-www-form-urlencoded"}},
            "a=1&b=two+words"),
        Conn());
  json fj = json::parse(f.body);
  CHECK(fj["form"]["b"] == "two words");
  CHECK(h(Req("GET", "/post"), Conn()).status == 405);
  CHECK(h(Req("DELETE", "/delete"), Conn()).status == 200);
}

TEST_CASE("unknown paths: 404 for httpbin, a 200 page naming host and path for an external host") {
  Handler bin = MakeHttpbinHandler({});
  CHECK(bin(Req("GET", "/politics"), Conn()).status == 404);
  HttpbinOptions ext_opts;
  ext_opts.catch_all_page = true;
  Handler ext = MakeHttpbinHandler(ext_opts);
  Response r = ext(Req("GET", "/politics", {{"Host", "edition.cnn.com"}}), Conn());
  CHECK(r.status == 200);
  CHECK(r.body.find("<h1>edition.cnn.com</h1>") != std::string::npos);
  CHECK(r.body.find("<p>/politics</p>") != std::string::npos);
  // Echoed text cannot become markup.
  Response x = ext(Req("GET", "/<script>", {{"Host", "a"}}), Conn());
  CHECK(x.body.find("<script>") == std::string::npos);
}

TEST_CASE("/delay clamps to the maximum and rejects non-numbers") {
  HttpbinOptions opts;
  opts.max_delay_seconds = 0.05;
  Handler h = MakeHttpbinHandler(opts);
  auto t0 = std::chrono::steady_clock::now();
  CHECK(h(Req("GET", "/delay/30"), Conn()).status == 200);
  auto took = std::chrono::steady_clock::now() - t0;
  CHECK(took >= std::chrono::milliseconds(50));
  CHECK(took < std::chrono::seconds(1));
  CHECK(h(Req("GET", "/delay/soon"), Conn()).status == 400);
  CHECK(h(Req("GET", "/delay/"), Conn()).status == 400);
}

TEST_CASE("helloworld: exact body, None for unset variables like the Python sample") {
  Handler h = MakeHelloworldHandler({"v1", "helloworld-v1-abc"});
  Response r = h(Req("GET", "/hello"), Conn());
  CHECK(r.status == 200);
  CHECK(r.body == "Hello version: v1, instance: helloworld-v1-abc\n");
  CHECK(HelloBody({}) == "Hello version: None, instance: None\n");
  CHECK(h(Req("POST", "/hello"), Conn()).status == 405);
  CHECK(h(Req("GET", "/hello/x"), Conn()).status == 404);
}

TEST_CASE("redirect to https: plain HTTP gets 301 to the https URL, TLS is served") {
  HttpbinOptions opts;
  opts.catch_all_page = true;
  opts.redirect_to_https = true;
  Handler h = MakeHttpbinHandler(opts);
  Response r = h(Req("GET", "/politics?x=1", {{"Host", "edition.cnn.com:80"}}), Conn());
  CHECK(r.status == 301);
  bool found = false;
  for (const auto& [k, v] : r.headers)
    found = found || (k == "Location" && v == "https://edition.cnn.com/politics?x=1");
  CHECK(found);
  ConnectionInfo tls = Conn();
  tls.tls = true;
  CHECK(h(Req("GET", "/politics", {{"Host", "edition.cnn.com"}}), tls).status == 200);
}
