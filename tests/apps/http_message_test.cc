// HTTP/1.1 wire rules of the stand-ins' requests (the proxy's codec, seen through the
// apps' adapter) and their response serialiser, without sockets.
#include <catch2/catch.hpp>

#include <random>

#include "http_message.h"

using namespace sluice::apps;
using Kind = ParseStatus::Kind;

namespace {
ParseStatus Parse(std::string_view in, Request& req, ParseLimits limits = {}) {
  return ParseRequest(in, limits, req);
}
}  // namespace

TEST_CASE("a request is complete only once its head and body have arrived") {
  const std::string wire =
      "POST /anything/x?a=1&b=%41+c HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
      "X-Thing:  spaced value \r\n\r\nhelloGET /next";
  std::size_t full = wire.size() - std::string("GET /next").size();
  // Every prefix shorter than the request is incomplete, never an error.
  for (std::size_t n = 0; n < full; ++n) {
    Request req;
    INFO("prefix length " << n);
    REQUIRE(Parse(std::string_view(wire).substr(0, n), req).kind == Kind::kIncomplete);
  }
  Request req;
  ParseStatus st = Parse(wire, req);
  REQUIRE(st.kind == Kind::kComplete);
  CHECK(st.consumed == full);  // the pipelined next request stays in the buffer
  CHECK(req.method == "POST");
  CHECK(req.path == "/anything/x");
  CHECK(req.query == "a=1&b=%41+c");
  CHECK(req.body == "hello");
  CHECK(req.Header("x-thing") == "spaced value");
  CHECK(req.Header("HOST") == "h");
  CHECK_FALSE(req.Header("missing"));
}

TEST_CASE("chunked bodies are decoded - trailers are skipped") {
  Request req;
  std::string wire =
      "PUT /put HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
      "5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
  ParseStatus st = Parse(wire, req);
  REQUIRE(st.kind == Kind::kComplete);
  CHECK(st.consumed == wire.size());
  CHECK(req.body == "hello world");
  CHECK(Parse(wire.substr(0, wire.size() - 2), req).kind == Kind::kIncomplete);
  CHECK(Parse("PUT / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", req).kind ==
        Kind::kBad);
}

TEST_CASE("malformed requests are refused with the right status") {
  Request req;
  auto bad = [&](std::string_view wire) {
    ParseStatus st = Parse(wire, req);
    REQUIRE(st.kind == Kind::kBad);
    return st.error_status;
  };
  CHECK(bad("GARBAGE\r\n\r\n") == 400);
  CHECK(bad("GET  / HTTP/1.1\r\nHost: h\r\n\r\n") == 400);
  CHECK(bad("GET / HTTP/1.1\r\n\r\n") == 400);  // 1.1 needs Host
  // The codec speaks HTTP/1.0 and 1.1; any other version is a 400, as in the proxy.
  CHECK(bad("GET / HTTP/2.0\r\nHost: h\r\n\r\n") == 400);
  CHECK(bad("GET / HTTP/1.2\r\nHost: h\r\n\r\n") == 400);
  CHECK(bad("GET / HTTX/1.1\r\nHost: h\r\n\r\n") == 400);
  CHECK(bad("GET nopath HTTP/1.1\r\nHost: h\r\n\r\n") == 400);
  CHECK(bad("GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n") == 400);
  CHECK(bad("GET / HTTP/1.1\r\nHost : h\r\n\r\n") == 400);
  CHECK(bad("GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1x\r\n\r\n") == 400);
  CHECK(bad("GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n") == 400);
  CHECK(bad("GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked"
            "\r\n\r\n") == 400);
  // RFC 9112 6.3: without a final chunked the length is unknown (400); chunked after a
  // coding nobody here implements is 501.
  CHECK(bad("GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n") == 400);
  CHECK(bad("GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n") == 501);
  // Non-HTTP bytes are refused before any CRLF arrives.
  CHECK(bad(std::string_view("\x16\x03\x01\x02\x00", 5)) == 400);

  ParseLimits small;
  small.max_head_bytes = 64;
  small.max_body_bytes = 4;
  CHECK(Parse("GET / HTTP/1.1\r\nHost: h\r\nX-Long: " + std::string(100, 'a'), req, small)
            .error_status == 431);
  CHECK(Parse("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n", req, small).error_status ==
        413);
  CHECK(Parse("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
              "3\r\nabc\r\n2\r\n",
              req, small)
            .error_status == 413);
}

TEST_CASE("HTTP/1.0 without Host is fine - keep-alive follows the version and Connection") {
  Request req;
  REQUIRE(Parse("GET /get HTTP/1.0\r\n\r\n", req).kind == Kind::kComplete);
  CHECK_FALSE(req.KeepAlive());
  REQUIRE(Parse("GET /get HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", req).kind ==
          Kind::kComplete);
  CHECK(req.KeepAlive());
  REQUIRE(Parse("GET /get HTTP/1.1\r\nHost: h\r\n\r\n", req).kind == Kind::kComplete);
  CHECK(req.KeepAlive());
  REQUIRE(Parse("GET /get HTTP/1.1\r\nHost: h\r\nConnection: TE, close\r\n\r\n", req).kind ==
          Kind::kComplete);
  CHECK_FALSE(req.KeepAlive());
}

TEST_CASE("absolute-form targets keep only the path - Expect: 100-continue is reported") {
  Request req;
  REQUIRE(Parse("GET http://edition.cnn.com/politics?x=1 HTTP/1.1\r\nHost: edition.cnn.com\r\n\r\n",
                req)
              .kind == Kind::kComplete);
  CHECK(req.path == "/politics");
  CHECK(req.query == "x=1");
  ParseStatus st = Parse(
      "POST /post HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n", req);
  CHECK(st.kind == Kind::kIncomplete);
  CHECK(st.expects_continue);
}

TEST_CASE("responses carry length and connection - HEAD and 204 carry no body") {
  Response r;
  r.status = 418;
  r.body = "teapot";
  std::string wire = Serialize(r, "GET", true);
  CHECK(wire.starts_with("HTTP/1.1 418 I'm a teapot\r\n"));
  CHECK(wire.find("Content-Length: 6\r\n") != std::string::npos);
  CHECK(wire.find("Connection: keep-alive\r\n") != std::string::npos);
  CHECK(wire.ends_with("\r\n\r\nteapot"));
  std::string head = Serialize(r, "HEAD", false);
  CHECK(head.find("Content-Length: 6\r\n") != std::string::npos);
  CHECK(head.find("Connection: close\r\n") != std::string::npos);
  CHECK(head.ends_with("\r\n\r\n"));
  r.status = 204;
  CHECK(Serialize(r, "GET", true).find("Content-Length") == std::string::npos);
  CHECK(Serialize(r, "GET", true).ends_with("\r\n\r\n"));
}

TEST_CASE("header names are canonicalised like httpbin - queries are decoded") {
  CHECK(CanonicalHeaderName("x-request-id") == "X-Request-Id");
  CHECK(CanonicalHeaderName("X-B3-TRACEID") == "X-B3-Traceid");
  CHECK(CanonicalHeaderName("user-agent") == "User-Agent");
  auto q = ParseQuery("a=1&b=x+y%2Fz&&c&d=%zz");
  REQUIRE(q.size() == 4);
  CHECK(q[0] == std::pair<std::string, std::string>{"a", "1"});
  CHECK(q[1] == std::pair<std::string, std::string>{"b", "x y/z"});
  CHECK(q[2] == std::pair<std::string, std::string>{"c", ""});
  CHECK(q[3] == std::pair<std::string, std::string>{"d", "%zz"});
}

TEST_CASE("random and mutated bytes never crash the parser or over-consume") {
  std::mt19937 rng(12345);  // fixed seed: a failure reproduces
  const std::string seed =
      "POST /anything?a=1 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
      "4\r\nwiki\r\n0\r\n\r\n";
  int complete = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string in = seed;
    int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      std::size_t at = rng() % in.size();
      switch (rng() % 3) {
        case 0:
          in[at] = static_cast<char>(rng() % 256);
          break;
        case 1:
          in.erase(at, 1 + rng() % 8);
          break;
        default:
          in.insert(at, 1, static_cast<char>(rng() % 256));
          break;
      }
      if (in.empty())
        in = "x";
    }
    Request req;
    ParseStatus st = ParseRequest(in, ParseLimits{}, req);
    if (st.kind == Kind::kComplete) {
      ++complete;
      REQUIRE(st.consumed <= in.size());
      REQUIRE(req.body.size() <= st.consumed);
    }
    if (st.kind == Kind::kBad)
      REQUIRE(st.error_status >= 400);
  }
  CHECK(complete > 0);  // some mutations keep a valid request
}
