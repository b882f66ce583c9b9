// The HTTP/1.1 codec: parser units, then the smuggling / malformed-request corpus and
// the framing features (keep-alive, pipelining, chunked, 100-continue, Upgrade)
// through the running proxy with real clients.
#include <sys/wait.h>
#include <catch2/catch.hpp>
#include <cstdio>

#include "harness.h"
#include "test_upstream.h"

using namespace sluice::testing;
namespace http = sluice::proxy::http;

TEST_CASE("parser: a request head, parsed in place", "[codec]") {
  std::string raw =
      "POST /a/b?x=1&y=2 HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\nX-Sp:  v  "
      "\r\n\r\nabc";
  http::RequestHead r;
  REQUIRE(http::ParseRequest(raw, {}, &r) == http::ParseStatus::kDone);
  CHECK(r.method == "POST");
  CHECK(r.path == "/a/b");
  CHECK(r.query == "x=1&y=2");
  CHECK(r.host == "example.com");
  CHECK(r.content_length == 3);
  CHECK(r.Get("x-sp") == "v");
  CHECK(r.head_len == raw.size() - 3);
  CHECK(r.path.data() >= raw.data());  // a view into the buffer, not a copy
  CHECK(r.path.data() < raw.data() + raw.size());
  for (std::size_t cut = 0; cut + 3 < raw.size(); ++cut) {
    http::RequestHead p;
    CHECK(http::ParseRequest(std::string_view(raw).substr(0, cut), {}, &p) ==
          http::ParseStatus::kIncomplete);
  }
}

TEST_CASE("parser: names compare without case and values are checked at every byte position",
          "[codec]") {
  // EqualsIgnoreCase (8 bytes at a time) against the byte-by-byte rule: ASCII A-Z only,
  // around the letters ('@', '[', '`', '{') and bytes >= 0x80 included.
  auto lower = [](unsigned char c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; };
  for (std::size_t n : {1, 7, 8, 9, 15, 16, 17, 29}) {
    std::string a(n, 'k'), b(n, 'k');
    for (std::size_t pos : {std::size_t{0}, n / 2, n - 1}) {
      for (int c = 0; c < 256; ++c) {
        for (int d = 0; d < 256; ++d) {
          a[pos] = static_cast<char>(c);
          b[pos] = static_cast<char>(d);
          if (http::EqualsIgnoreCase(a, b) != (lower(c) == lower(d))) {
            FAIL("EqualsIgnoreCase, length " << n << ", byte " << pos << ": " << c << " vs " << d);
          }
        }
      }
      a[pos] = b[pos] = 'k';
    }
  }
  CHECK(http::EqualsIgnoreCase("X-Envoy-Upstream-Service-Time", "x-envoy-upstream-service-time"));
  CHECK_FALSE(
      http::EqualsIgnoreCase("x-envoy-upstream-service-timf", "x-envoy-upstream-service-time"));

  // Known names are told in any case, and only they: each byte changed in turn (in case,
  // or to another letter) is checked.
  const std::pair<std::string, http::HeaderId> known[] = {
      {"te", http::HeaderId::kTe},
      {"host", http::HeaderId::kHost},
      {"cookie", http::HeaderId::kCookie},
      {"expect", http::HeaderId::kExpect},
      {"upgrade", http::HeaderId::kUpgrade},
      {"connection", http::HeaderId::kConnection},
      {"keep-alive", http::HeaderId::kKeepAlive},
      {"user-agent", http::HeaderId::kUserAgent},
      {"x-request-id", http::HeaderId::kXRequestId},
      {"content-length", http::HeaderId::kContentLength},
      {"x-forwarded-for", http::HeaderId::kXForwardedFor},
      {"proxy-connection", http::HeaderId::kProxyConnection},
      {"transfer-encoding", http::HeaderId::kTransferEncoding},
      {"x-forwarded-proto", http::HeaderId::kXForwardedProto},
      {"x-envoy-attempt-count", http::HeaderId::kXEnvoyAttemptCount},
      {"x-envoy-upstream-service-time", http::HeaderId::kXEnvoyUpstreamServiceTime},
  };
  for (const auto& [name, id] : known) {
    CHECK(http::ClassifyHeader(name) == id);
    for (std::size_t i = 0; i < name.size(); ++i) {
      std::string n = name;
      if (n[i] >= 'a' && n[i] <= 'z') {
        n[i] = static_cast<char>(n[i] - 32);
        CHECK(http::ClassifyHeader(n) == id);
        n[i] = n[i] == 'Z' ? 'a' : static_cast<char>(n[i] + 33);  // another letter
      } else {
        n[i] = 'q';
      }
      INFO(n);
      CHECK(http::ClassifyHeader(n) == http::HeaderId::kOther);
    }
  }

  // A field value: visible ASCII, obs-text, SP and HTAB; any other control byte or DEL at
  // any position of a long value makes the head invalid.
  for (std::size_t pos = 0; pos < 20; ++pos) {
    for (int c = 0; c < 256; ++c) {
      std::string v(20, 'v');
      v[pos] = static_cast<char>(c);
      std::string raw = "GET / HTTP/1.1\r\nHost: a\r\nX-Long: " + v + "\r\n\r\n";
      http::RequestHead r;
      const bool valid = c == '\t' || (c >= 0x20 && c != 0x7f);
      const http::ParseStatus st = http::ParseRequest(raw, {}, &r);
      if ((st == http::ParseStatus::kDone) != valid)
        FAIL("value byte " << c << " at " << pos << ": parse status " << static_cast<int>(st));
      if (valid) {
        std::string_view want = v;
        while (!want.empty() && (want.front() == ' ' || want.front() == '\t'))
          want.remove_prefix(1);
        while (!want.empty() && (want.back() == ' ' || want.back() == '\t'))
          want.remove_suffix(1);
        if (r.Get("x-long") != want)
          FAIL("value byte " << c << " at " << pos << ": got '" << r.Get("x-long") << "'");
      }
    }
  }
  // A header name with a byte that is not a tchar is refused.
  for (int c = 0; c < 256; ++c) {
    std::string raw = "GET / HTTP/1.1\r\nHost: a\r\nX-N";
    raw += static_cast<char>(c);
    raw += "me: 1\r\n\r\n";
    http::RequestHead r;
    const bool tchar =
        (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
        std::string_view("!#$%&'*+-.^_`|~").find(static_cast<char>(c)) != std::string_view::npos;
    // (":" ends the name early: "X-N" with the value "me: 1".)
    if ((http::ParseRequest(raw, {}, &r) == http::ParseStatus::kDone) != (tchar || c == ':'))
      FAIL("name byte " << c);
  }
}

TEST_CASE("parser: a head's views follow its buffer when the buffer moves", "[codec]") {
  const std::string raw =
      "GET http://h.example:81/p?q=1 HTTP/1.1\r\nHost: h.example:81\r\nUpgrade: websocket\r\n"
      "Connection: upgrade\r\n\r\n";
  std::string first = raw, moved = raw;
  http::RequestHead r;
  REQUIRE(http::ParseRequest(first, {}, &r) == http::ParseStatus::kDone);
  http::MoveViews(&r, first.data(), first.size(), moved.data());
  first.assign(first.size(), 'x');  // the old bytes are gone
  CHECK(r.method == "GET");
  CHECK(r.path == "/p");
  CHECK(r.query == "q=1");
  CHECK(r.host == "h.example:81");
  CHECK(r.upgrade == "websocket");
  CHECK(r.Get("connection") == "upgrade");
  CHECK(r.headers[0].line() == "Host: h.example:81\r\n");
  CHECK(r.method.data() == moved.data());
  // An absolute-form target with no path has the parser's static "/": left alone.
  std::string bare = "GET http://h.example HTTP/1.1\r\nHost: h.example\r\n\r\n";
  http::RequestHead b;
  REQUIRE(http::ParseRequest(bare, {}, &b) == http::ParseStatus::kDone);
  const char* slash = b.target.data();
  std::string copy = bare;
  http::MoveViews(&b, bare.data(), bare.size(), copy.data());
  CHECK(b.target.data() == slash);
  CHECK(b.host.data() >= copy.data());
}

TEST_CASE("parser: headers are named once, and each keeps its line as received", "[codec]") {
  std::string raw =
      "GET / HTTP/1.1\r\nHOST: h\r\nX-Forwarded-Proto:https\r\ncookie: a=1\r\nExpect:\t \r\n"
      "X-Request-Id: r1  \r\nTransfer-Encodinx: y\r\nUser-Agent: ua\r\nKeep-Alive: 5\r\n\r\n";
  http::RequestHead r;
  REQUIRE(http::ParseRequest(raw, {}, &r) == http::ParseStatus::kDone);
  REQUIRE(r.num_headers == 8);
  using enum http::HeaderId;
  const http::HeaderId want[] = {kHost,       kXForwardedProto, kCookie,    kExpect,
                                 kXRequestId, kOther,           kUserAgent, kKeepAlive};
  for (std::size_t i = 0; i < 8; ++i) {
    INFO("header " << i << " " << r.headers[i].name);
    CHECK(r.headers[i].id == want[i]);
  }
  CHECK(r.Get(kXRequestId) == "r1");
  CHECK(r.headers[3].value.empty());
  // Lines come back byte for byte, whitespace included, and adjacent lines touch.
  CHECK(r.headers[1].line() == "X-Forwarded-Proto:https\r\n");
  CHECK(r.headers[3].line() == "Expect:\t \r\n");
  CHECK(r.headers[4].line() == "X-Request-Id: r1  \r\n");
  for (std::size_t i = 0; i + 1 < r.num_headers; ++i) {
    std::string_view l = r.headers[i].line();
    CHECK(l.data() + l.size() == r.headers[i + 1].name.data());
  }
  CHECK(http::ClassifyHeader("Proxy-Connection") == kProxyConnection);
  CHECK(http::ClassifyHeader("x-envoy-upstream-service-time") == kXEnvoyUpstreamServiceTime);
  CHECK(http::ClassifyHeader("x-envoy-attempt-counts") == kOther);
}

TEST_CASE("parser: responses and chunked bodies", "[codec]") {
  http::ResponseHead h;
  REQUIRE(http::ParseResponse("HTTP/1.1 204 No Content\r\n\r\n", false, &h) ==
          http::ParseStatus::kDone);
  CHECK(h.no_body);
  REQUIRE(http::ParseResponse("HTTP/1.0 200 OK\r\n\r\n", false, &h) == http::ParseStatus::kDone);
  CHECK(h.close_delimited);
  CHECK_FALSE(h.keep_alive);
  http::ChunkedDecoder d;
  std::string body;
  std::string in = "4;ext=1\r\nwiki\r\n5\r\npedia\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
  CHECK(d.Feed(in, &body) == in.size() - 4);
  CHECK(d.done());
  CHECK(body == "wikipedia");
}

namespace {

http::RequestHead Req(std::string_view raw, http::ParseStatus want = http::ParseStatus::kDone) {
  http::RequestHead r;
  CHECK(http::ParseRequest(raw, {}, &r) == want);
  return r;
}

// An error text, "" for none (a check that fails must not crash the run).
std::string_view Why(const char* error) {
  return error ? error : "";
}

}  // namespace

TEST_CASE("parser: Host is a uri-host with an optional port (RFC 9110 7.2), and only one",
          "[codec]") {
  for (const char* host : {"example.com", "Example.COM:8080", "h:", "10.0.0.1:80", "[::1]:8080",
                           "[::1]:", "[2001:db8::7]", "[::ffff:10.0.0.1]", "[v1.fe:x]",
                           "a%2Db.example", "xn--bcher-kva.example", "a_b~!$&'()*+,;=-.c"}) {
    INFO(host);
    std::string raw = "GET / HTTP/1.1\r\nHost: " + std::string(host) + " \r\n\r\n";
    http::RequestHead r = Req(raw);  // views into raw
    CHECK(r.host == host);
  }
  for (const char* host : {"a b",
                           "user@example.com",
                           "example.com/x",
                           "a?b",
                           "a#b",
                           "a\"b",
                           "a<b>",
                           "a\\b",
                           "a|b",
                           "a^b",
                           "a`b",
                           "a{b}",
                           "\xc3\xa9.example",
                           "a%zz",
                           "a%2",
                           ":80",
                           "h:8o",
                           "h:80:81",
                           "::1",
                           "[::1",
                           "[::1]x",
                           "[zz::1]",
                           "[fe80::1%25eth0]",
                           "[v.x]",
                           "[vx.y]",
                           "[v1.]",
                           "[]"}) {
    INFO(host);
    http::RequestHead r =
        Req("GET / HTTP/1.1\r\nHost: " + std::string(host) + "\r\n\r\n", http::ParseStatus::kError);
    CHECK(r.error_status == 400);
    CHECK(Why(r.error) == "invalid Host");
  }
  // RFC 9112 §3.2: no Host in HTTP/1.1, an empty one, or two of them: 400.
  CHECK(Req("GET / HTTP/1.1\r\n\r\n", http::ParseStatus::kError).error_status == 400);
  CHECK(Req("GET / HTTP/1.1\r\nHost:\r\n\r\n", http::ParseStatus::kError).error_status == 400);
  CHECK(
      Req("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", http::ParseStatus::kError).error_status ==
      400);
  // HTTP/1.0 needs none; if it sends one, it must be valid.
  CHECK(Req("GET / HTTP/1.0\r\n\r\n").host.empty());
  CHECK(Req("GET / HTTP/1.0\r\nHost: a/b\r\n\r\n", http::ParseStatus::kError).error_status == 400);
}

TEST_CASE("parser: an absolute-form target gives the host and the origin-form", "[codec]") {
  // RFC 9112 §3.2.2: the target's authority replaces Host; the proxy forwards origin-form.
  std::string raw = "GET http://example.com:8080/p?q=1 HTTP/1.1\r\nHost: other\r\n\r\n";
  http::RequestHead r = Req(raw);
  CHECK(r.host == "example.com:8080");
  CHECK(r.target == "/p?q=1");
  CHECK(r.path == "/p");
  CHECK(r.query == "q=1");
  CHECK(r.Get(http::HeaderId::kHost) == "other");  // the header itself is as received
  CHECK(r.host.data() > raw.data());
  CHECK(r.target.data() + r.target.size() < raw.data() + raw.size());
  r = Req("GET HTTPS://[::1]:8443 HTTP/1.1\r\nHost: x\r\n\r\n");
  CHECK(r.host == "[::1]:8443");
  CHECK(r.target == "/");
  CHECK(r.path == "/");
  r = Req("GET http://h/ HTTP/1.0\r\n\r\n");  // HTTP/1.0: no Host needed
  CHECK(r.host == "h");
  // Refused: another scheme, userinfo, an empty or invalid authority, "?" with no path,
  // no scheme at all; and still, as RFC 9112 §3.2 says, a missing or invalid Host.
  for (const char* bad :
       {"GET ftp://h/p HTTP/1.1\r\nHost: h\r\n\r\n", "GET http://u@h/p HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET http:///p HTTP/1.1\r\nHost: h\r\n\r\n", "GET http://h:x/p HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET http://h?q HTTP/1.1\r\nHost: h\r\n\r\n", "GET h/p HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET http://h/p HTTP/1.1\r\n\r\n", "GET http://h/p HTTP/1.1\r\nHost: a b\r\n\r\n"}) {
    INFO(bad);
    CHECK(Req(bad, http::ParseStatus::kError).error_status == 400);
  }
}

TEST_CASE("parser: Transfer-Encoding other than chunked is 400 or 501 (RFC 9112 6)", "[codec]") {
  struct TeCase {
    const char* te;
    int request_status;
  };
  // Chunked not final (or absent): the length cannot be known, 400. Chunked last after
  // codings we do not implement: 501. A response gets 502 for all of them.
  for (const TeCase& c :
       {TeCase{"chunked, identity", 400}, TeCase{"identity", 400}, TeCase{"gzip", 400},
        TeCase{"chunked, gzip", 400}, TeCase{"chunked, chunked", 400}, TeCase{"chunked,", 400},
        TeCase{"", 400}, TeCase{"chu nked", 400}, TeCase{"gzip, chunked", 501},
        TeCase{"gzip,chunked", 501}, TeCase{"chunked;x=1", 501}}) {
    INFO("transfer-encoding: " << c.te);
    std::string te = std::string("transfer-encoding: ") + c.te + "\r\n";
    http::RequestHead r =
        Req("POST / HTTP/1.1\r\nhost: h\r\n" + te + "\r\n", http::ParseStatus::kError);
    CHECK(r.error_status == c.request_status);
    http::ResponseHead h;
    CHECK(http::ParseResponse("HTTP/1.1 200 OK\r\n" + te + "\r\n", false, &h) ==
          http::ParseStatus::kError);
    CHECK(h.error_status == 502);
  }
  CHECK(Req("POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: Chunked\r\n\r\n").chunked);
}

TEST_CASE("chunked trailers: no Content-Length, Transfer-Encoding or Host", "[codec]") {
  auto feed = [](std::string_view in, bool byte_by_byte) {
    http::ChunkedDecoder d;
    if (!byte_by_byte) {
      d.Feed(in, nullptr);
      return d;
    }
    for (std::size_t i = 0; i < in.size() && !d.done() && !d.failed(); ++i) {
      std::size_t used = d.Feed(in.substr(i, 1), nullptr);
      CHECK(used == (d.failed() ? 0u : 1u));
    }
    return d;
  };
  for (bool bytes : {false, true}) {
    INFO("byte by byte: " << bytes);
    for (const char* trailer :
         {"Content-Length: 5", "transfer-encoding: chunked", "HOST: evil", "content-length:0"}) {
      INFO(trailer);
      http::ChunkedDecoder d =
          feed(std::string("2\r\nab\r\n0\r\nx-ok: 1\r\n") + trailer + "\r\n\r\n", bytes);
      CHECK(d.failed());
      CHECK(Why(d.error()).ends_with(" in trailers"));
    }
    // Malformed trailer lines would let such a field slip past a lenient next hop.
    for (const char* trailer : {"Content-Length : 5", " folded", ": v", "no-colon", "x: a\x01"}) {
      INFO(trailer);
      CHECK(feed(std::string("0\r\n") + trailer + "\r\n\r\n", bytes).failed());
    }
    // Other trailers are fine, long names included.
    std::string ok = "0\r\nx-checksum: abc\r\nx-transfer-encodings: v\r\nhost-x: y\r\n\r\n";
    http::ChunkedDecoder d = feed(ok, bytes);
    CHECK(d.done());
  }
}

TEST_CASE("parser: a request line without a version (HTTP/0.9) is refused at once", "[codec]") {
  // No need to wait for the rest of the head: the request line alone is decisive.
  for (const char* raw : {"GET /\r\n", "GET /\r\n\r\n", "GET /index.html\n", "GET\r\n",
                          "\x16\x03\x01\x02\x10\x01\n"}) {
    INFO(raw);
    http::RequestHead r = Req(raw, http::ParseStatus::kError);
    CHECK(r.error_status == 400);
  }
  CHECK(Why(Req("GET /\r\n", http::ParseStatus::kError).error) ==
        "request line without an HTTP version");
  Req("GET / HTTP/1.1\r\n", http::ParseStatus::kIncomplete);  // a valid line: wait
  Req("GET / HTTP/1.1\r\nhost: h\r\n", http::ParseStatus::kIncomplete);
}

TEST_CASE("parser: a method that cannot be one is told before its line ends", "[codec]") {
  // For servers that answer a TLS ClientHello on a plain-text port at once (the
  // stand-in apps); ParseRequest itself waits for the line.
  for (const char* raw : {"", "G", "GET", "GET ", "GET /x", "\r\nPOS", "GET /\x01 HTTP"}) {
    INFO(raw);
    CHECK(http::CouldBeRequest(raw));
  }
  for (std::string_view raw : {std::string_view("\x16\x03\x01\x02\x00", 5),
                               std::string_view("GE(T"), std::string_view("\r\nG\x7f")}) {
    INFO(raw);
    CHECK_FALSE(http::CouldBeRequest(raw));
    http::RequestHead r;
    CHECK(http::ParseRequest(raw, {}, &r) == http::ParseStatus::kIncomplete);
  }
}

TEST_CASE("chunked: the declared body size is known before the data arrives", "[codec]") {
  http::ChunkedDecoder d;
  CHECK(d.body_size() == 0);
  d.Feed("3\r\nabc\r\n", nullptr);
  CHECK(d.body_size() == 3);
  d.Feed("10;ext=1\r\n", nullptr);  // 16 more, none of it here yet
  CHECK(d.body_size() == 19);
  d.Feed(std::string(16, 'x') + "\r\n0\r\n\r\n", nullptr);
  CHECK(d.done());
  CHECK(d.body_size() == 19);
  http::ChunkedDecoder large;  // the size counts before any data: the 15-digit maximum
  large.Feed("fffffffffffffff\r\n", nullptr);
  CHECK(large.body_size() == 0xfffffffffffffffull);
}

TEST_CASE("parser: empty lines before the request line are skipped, a few", "[codec]") {
  // RFC 9112 §2.2. They belong to the head (head_len), and every view still points at
  // the bytes as received.
  std::string raw = "\r\n\nGET /p HTTP/1.1\r\nHost: h\r\nX-A:  v \r\n\r\nNEXT";
  http::RequestHead r = Req(raw);
  CHECK(r.head_len == raw.size() - 4);
  CHECK(r.method == "GET");
  CHECK(r.method.data() == raw.data() + 3);
  CHECK(r.target == "/p");
  CHECK(r.host == "h");
  REQUIRE(r.num_headers == 2);
  CHECK(r.headers[1].line() == "X-A:  v \r\n");
  CHECK(r.headers[1].line().data() + r.headers[1].line().size() + 2 == raw.data() + r.head_len);
  Req("\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n");  // four: fine
  CHECK(Req("\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", http::ParseStatus::kError)
            .error_status == 400);  // five: no
  Req("\r\n", http::ParseStatus::kIncomplete);
  Req("\r\n\r", http::ParseStatus::kIncomplete);
  CHECK(Req("\r\n\rGET / HTTP/1.1\r\nHost: h\r\n\r\n", http::ParseStatus::kError).error_status ==
        400);
}

TEST_CASE("parser: 1xx and 204 responses carry no framing, while 304 keeps Content-Length",
          "[codec]") {
  auto resp = [](std::string_view raw, http::ParseStatus want = http::ParseStatus::kDone) {
    http::ResponseHead h;
    CHECK(http::ParseResponse(raw, false, &h) == want);
    return h;
  };
  // Envoy (strict 1xx/204 headers): Transfer-Encoding, or a Content-Length other than 0,
  // is an upstream protocol error.
  for (const char* raw : {"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\nhello",
                          "HTTP/1.1 204 No Content\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
                          "HTTP/1.1 100 Continue\r\ncontent-length: 1\r\n\r\n",
                          "HTTP/1.1 103 Early Hints\r\ntransfer-encoding: chunked\r\n\r\n"}) {
    INFO(raw);
    CHECK(resp(raw, http::ParseStatus::kError).error_status == 502);
  }
  // "Content-Length: 0" is accepted, and marked to be dropped.
  http::ResponseHead h = resp("HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n");
  CHECK(h.no_body);
  CHECK(h.drop_content_length);
  CHECK(resp("HTTP/1.1 100 Continue\r\nContent-Length: 0\r\n\r\n").drop_content_length);
  CHECK_FALSE(resp("HTTP/1.1 204 No Content\r\n\r\n").drop_content_length);
  // 304: Content-Length describes the representation; it stays, and there is no body.
  h = resp("HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n");
  CHECK(h.no_body);
  CHECK(h.content_length == 10);
  CHECK_FALSE(h.drop_content_length);
  CHECK_FALSE(resp("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").drop_content_length);
}

TEST_CASE("parser: keep-alive by version and Connection, and close always wins", "[codec]") {
  // RFC 9112 §9.3.
  struct KaCase {
    const char* version;
    const char* connection;
    bool keep_alive;
  };
  for (const KaCase& c :
       {KaCase{"1.1", nullptr, true}, KaCase{"1.1", "close", false},
        KaCase{"1.1", "keep-alive, close", false}, KaCase{"1.0", nullptr, false},
        KaCase{"1.0", "keep-alive", true}, KaCase{"1.0", "Keep-Alive", true},
        KaCase{"1.0", "keep-alive, close", false}, KaCase{"1.0", "close, keep-alive", false}}) {
    INFO("HTTP/" << c.version << " connection: " << (c.connection ? c.connection : "-"));
    std::string conn = c.connection ? std::string("connection: ") + c.connection + "\r\n" : "";
    CHECK(Req(std::string("GET / HTTP/") + c.version + "\r\nhost: h\r\n" + conn + "\r\n")
              .keep_alive == c.keep_alive);
    http::ResponseHead h;
    REQUIRE(http::ParseResponse(std::string("HTTP/") + c.version + " 200 OK\r\n" + conn +
                                    "content-length: 0\r\n\r\n",
                                false, &h) == http::ParseStatus::kDone);
    CHECK(h.keep_alive == c.keep_alive);
  }
}

namespace {

struct Case {
  const char* name;
  std::string raw;
  int status;
};

std::vector<Case> Corpus() {
  const std::string big_header = "x-big: " + std::string(70 * 1024, 'a') + "\r\n";
  std::string many;
  for (int i = 0; i < 101; ++i)
    many += "x-h" + std::to_string(i) + ": v\r\n";
  return {
      {"CL and TE together",
       "POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 4\r\ntransfer-encoding: "
       "chunked\r\n\r\n0\r\n\r\n",
       400},
      {"duplicate CL",
       "POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\na", 400},
      {"CL list", "POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 1, 1\r\n\r\na", 400},
      {"CL not a number", "POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 12a\r\n\r\n", 400},
      {"CL negative", "POST / HTTP/1.1\r\nhost: h\r\ncontent-length: -1\r\n\r\n", 400},
      {"CL with plus", "POST / HTTP/1.1\r\nhost: h\r\ncontent-length: +5\r\n\r\nhello", 400},
      {"TE not chunked", "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
       501},
      {"TE twice",
       "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\ntransfer-encoding: "
       "chunked\r\n\r\n",
       400},
      {"TE in HTTP/1.0",
       "POST / HTTP/1.0\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n", 400},
      {"bad chunk size",
       "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
       400},
      {"chunk size overflow",
       "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\nfffffffffffffffff\r\na\r\n",
       400},
      {"chunk without CRLF",
       "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabcd\r\n0\r\n\r\n",
       400},
      {"chunk size bare LF",
       "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n2\nab\r\n0\r\n\r\n", 400},
      {"obs-fold", "GET / HTTP/1.1\r\nhost: h\r\nx-a: b\r\n c\r\n\r\n", 400},
      {"bare LF in head", "GET / HTTP/1.1\r\nhost: h\nx-a: b\r\n\r\n", 400},
      {"bare LF request line", "GET / HTTP/1.1\nhost: h\r\n\r\n", 400},
      {"space before colon", "GET / HTTP/1.1\r\nhost : h\r\n\r\n", 400},
      {"NUL in value", std::string("GET / HTTP/1.1\r\nhost: h\r\nx-a: a\0b\r\n\r\n", 37), 400},
      {"missing Host", "GET / HTTP/1.1\r\nx-a: b\r\n\r\n", 400},
      {"duplicate Host", "GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n", 400},
      {"bad method", "G(T / HTTP/1.1\r\nhost: h\r\n\r\n", 400},
      {"bad version", "GET / HTTP/2.0\r\nhost: h\r\n\r\n", 400},
      {"no target", "GET  HTTP/1.1\r\nhost: h\r\n\r\n", 400},
      {"head too large", "GET / HTTP/1.1\r\nhost: h\r\n" + big_header + "\r\n", 431},
      {"too many headers", "GET / HTTP/1.1\r\nhost: h\r\n" + many + "\r\n", 431},
      {"body too large", "POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 2000000\r\n\r\n", 413},
      {"Host with a space", "GET / HTTP/1.1\r\nhost: a b\r\n\r\n", 400},
      {"Host with userinfo", "GET / HTTP/1.1\r\nhost: u@h\r\n\r\n", 400},
      {"Host with a path", "GET / HTTP/1.1\r\nhost: h/p\r\n\r\n", 400},
      {"absolute-form, other scheme", "GET ftp://h/p HTTP/1.1\r\nhost: h\r\n\r\n", 400},
      {"absolute-form, bad authority", "GET http://[::1/p HTTP/1.1\r\nhost: h\r\n\r\n", 400},
      {"absolute-form, userinfo", "GET http://u@h/p HTTP/1.1\r\nhost: h\r\n\r\n", 400},
      {"TE chunked then identity",
       "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400},
      {"TE identity", "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: identity\r\n\r\n", 400},
      {"Content-Length in trailers",
       "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n0\r\n"
       "content-length: 40\r\n\r\n",
       400},
      {"Transfer-Encoding in trailers",
       "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n0\r\n"
       "transfer-encoding: chunked\r\n\r\n",
       400},
      {"Host in trailers",
       "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n0\r\nhost: "
       "evil\r\n\r\n",
       400},
      {"HTTP/0.9 request line", "GET /\r\n\r\n", 400},
      {"five empty lines first", "\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nhost: h\r\n\r\n", 400},
  };
}

Json ProxyDoc(uint16_t up_port) {
  return {{"listeners",
           {HttpListener("http",
                         RouteConfig("r", {{{"name", "all"},
                                            {"match", {{"prefix", "/"}}},
                                            {"route", {{"cluster", "up"}}}}}),
                         false)}},
          {"clusters", {StaticCluster("up", {up_port})}}};
}

std::string Run(const std::string& cmd) {
  std::string out;
  FILE* f = popen(cmd.c_str(), "r");
  if (!f)
    return out;
  char buf[4096];
  std::size_t n;
  while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
    out.append(buf, n);
  pclose(f);
  return out;
}

}  // namespace

TEST_CASE("smuggling and malformed-request corpus: each refused with its status",
          "[codec][proxy]") {
  TestUpstream up({.name = "up"});
  auto p = StartProxy(ProxyDoc(up.port()));
  REQUIRE(p->error == "");
  for (const Case& c : Corpus()) {
    INFO(c.name);
    // A second request rides behind each bad one: it must never reach the upstream.
    std::string raw = c.raw + "GET /smuggled HTTP/1.1\r\nhost: h\r\n\r\n";
    Resp r = SendRaw(p->Port(), raw);
    CHECK(r.status == c.status);
    CHECK(r.Header("connection") == "close");
  }
  CHECK(up.count() == 0);
}

TEST_CASE("keep-alive and pipelining: responses in order on one connection", "[codec][proxy]") {
  TestUpstream up({.name = "up"});
  auto p = StartProxy(ProxyDoc(up.port()));
  REQUIRE(p->error == "");
  int fd = Connect(p->Port());
  REQUIRE(fd >= 0);
  std::string raw;
  for (int i = 0; i < 5; ++i)
    raw += "GET /p" + std::to_string(i) + " HTTP/1.1\r\nhost: h\r\n\r\n";
  send(fd, raw.data(), raw.size(), 0);
  std::string buf;
  auto rs = ReadResponses(fd, buf, 5, 3000);
  close(fd);
  REQUIRE(rs.size() == 5);
  for (int i = 0; i < 5; ++i)
    CHECK(rs[i].body.rfind("GET /p" + std::to_string(i) + " ", 0) == 0);
  CHECK(up.connections() == 1);
}

TEST_CASE("chunked request bodies are forwarded intact, and HEAD has no body", "[codec][proxy]") {
  TestUpstream up({.name = "up"});
  auto p = StartProxy(ProxyDoc(up.port()));
  REQUIRE(p->error == "");
  Client c(p->Port());
  Resp r = c.Request(
      "POST /upload HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n "
      "world\r\n0\r\n\r\n");
  CHECK(r.status == 200);
  CHECK(r.body.find("transfer-encoding: chunked\r\n") != std::string::npos);
  // The upstream parsed the whole chunked body, so the connection is still in sync.
  r = c.Request("GET /after HTTP/1.1\r\nhost: h\r\n\r\n");
  CHECK(r.body.rfind("GET /after ", 0) == 0);
  CHECK(up.count() == 2);
  r = SendRaw(p->Port(), "HEAD /h HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n");
  CHECK(r.status == 200);
  CHECK(r.body.empty());
}

TEST_CASE("curl through the proxy, with Expect: 100-continue", "[codec][proxy][curl]") {
  TestUpstream up({.name = "up"});
  auto p = StartProxy(ProxyDoc(up.port()));
  REQUIRE(p->error == "");
  std::string url = "http://127.0.0.1:" + std::to_string(p->Port());
  std::string out = Run("curl -s -i --max-time 5 " + url + "/hello");
  CHECK(out.rfind("HTTP/1.1 200", 0) == 0);
  CHECK(out.find("x-upstream: up") != std::string::npos);
  // curl waits up to 1 s for "100 Continue" before sending the body; the proxy sends it
  // at once, so this finishes well before that.
  std::string file = p->dir.path() + "/body";
  {
    std::ofstream f(file);
    f << std::string(4096, 'b');
  }
  auto t0 = std::chrono::steady_clock::now();
  out =
      Run("curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H 'Expect: 100-continue' "
          "--data-binary @" +
          file + " " + url + "/upload");
  auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
          .count();
  CHECK(out == "200");
  CHECK(ms < 800);
  auto reqs = up.Requests();
  REQUIRE(reqs.size() == 2);
  std::string head = reqs[1];
  for (char& ch : head)
    ch = static_cast<char>(std::tolower(ch));
  CHECK(head.find("content-length: 4096\r\n") != std::string::npos);
  CHECK(head.find("expect") ==
        std::string::npos);  // Expect is hop-by-hop here  // Expect is hop-by-hop here
}

TEST_CASE("Upgrade is passed through and the connection becomes a tunnel", "[codec][proxy]") {
  TestUpstream up({.name = "up"});
  auto p = StartProxy(WithUpgrades(ProxyDoc(up.port()), {"echo"}));
  REQUIRE(p->error == "");
  int fd = Connect(p->Port());
  std::string req = "GET /ws HTTP/1.1\r\nhost: h\r\nconnection: Upgrade\r\nupgrade: echo\r\n\r\n";
  send(fd, req.data(), req.size(), 0);
  std::string buf;
  auto rs = ReadResponses(fd, buf, 1, 3000, true);
  REQUIRE(rs.size() == 1);
  CHECK(rs[0].status == 101);
  CHECK(rs[0].Header("upgrade") == "echo");
  send(fd, "ping-pong", 9, 0);
  std::string got = buf;
  while (got.size() < 9) {
    pollfd pf{fd, POLLIN, 0};
    if (poll(&pf, 1, 2000) <= 0)
      break;
    char tmp[64];
    ssize_t n = recv(fd, tmp, sizeof(tmp), 0);
    if (n <= 0)
      break;
    got.append(tmp, static_cast<std::size_t>(n));
  }
  close(fd);
  CHECK(got == "ping-pong");
}

TEST_CASE("a tunnel carries 8 MiB each way with backpressure, bytes intact", "[codec][proxy]") {
  TestUpstream up({.name = "up", .record = false});
  auto p = StartProxy(WithUpgrades(ProxyDoc(up.port()), {"echo"}));
  REQUIRE(p->error == "");
  int fd = Connect(p->Port());
  std::string req = "GET /ws HTTP/1.1\r\nhost: h\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n";
  send(fd, req.data(), req.size(), 0);
  std::string buf;
  auto rs = ReadResponses(fd, buf, 1, 3000, true);
  REQUIRE(rs.size() == 1);
  REQUIRE(rs[0].status == 101);
  std::string data(8 * 1024 * 1024, '\0');
  for (std::size_t i = 0; i < data.size(); ++i)
    data[i] = static_cast<char>((i * 7919) >> 3);
  std::string got = buf;
  std::size_t sent = 0;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (got.size() < data.size() && std::chrono::steady_clock::now() < deadline) {
    pollfd pf{fd, static_cast<short>(POLLIN | (sent < data.size() ? POLLOUT : 0)), 0};
    if (poll(&pf, 1, 1000) <= 0)
      continue;
    if ((pf.revents & POLLOUT) && sent < data.size()) {
      ssize_t n = send(fd, data.data() + sent, std::min<std::size_t>(65536, data.size() - sent),
                       MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n > 0)
        sent += static_cast<std::size_t>(n);
    }
    if (pf.revents & POLLIN) {
      char tmp[65536];
      ssize_t n = recv(fd, tmp, sizeof(tmp), MSG_DONTWAIT);
      if (n <= 0)
        break;
      got.append(tmp, static_cast<std::size_t>(n));
    }
  }
  close(fd);
  REQUIRE(got.size() == data.size());
  CHECK(got == data);
}

TEST_CASE("idle keep-alive connections are closed after the HCM idle_timeout", "[codec][proxy]") {
  TestUpstream up({.name = "up", .record = false});
  Json doc = ProxyDoc(up.port());
  doc["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
     ["common_http_protocol_options"] = {{"idle_timeout", "0.3s"}};
  auto p = StartProxy(doc);
  REQUIRE(p->error == "");
  Client busy(p->Port()), idle(p->Port());
  REQUIRE(idle.Get("h", "/").status == 200);
  // The busy connection keeps sending every 100 ms and stays open past the timeout.
  for (int i = 0; i < 8; ++i) {
    REQUIRE(busy.Get("h", "/").status == 200);
    usleep(100000);
  }
  pollfd pf{idle.fd(), POLLIN, 0};
  REQUIRE(poll(&pf, 1, 1000) == 1);
  char c;
  CHECK(recv(idle.fd(), &c, 1, 0) == 0);  // closed by the proxy
  CHECK(busy.Get("h", "/").status == 200);
}
