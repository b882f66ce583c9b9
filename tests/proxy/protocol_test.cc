// RFC 9110/9112 points of the HTTP/1.1 codec as the running proxy shows them to real
// clients and upstreams: absolute-form targets, empty lines before a request, HTTP/0.9
// request lines, 1xx/204/304 response framing, HTTP/1.0 keep-alive. (The refusals that
// are only a status go in codec_test.cc's corpus.)
#include <catch2/catch.hpp>

#include <atomic>
#include <thread>

#include "harness.h"
#include "test_upstream.h"

using namespace sluice::testing;

namespace {

// An upstream that answers every request head it reads with the same bytes: for the
// responses TestUpstream never sends. One connection at a time.
class CannedUpstream {
 public:
  explicit CannedUpstream(std::string response) : response_(std::move(response)) {
    listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    listen(listen_fd_, 16);
    socklen_t len = sizeof(a);
    getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { Run(); });
  }
  ~CannedUpstream() {
    stop_ = true;
    thread_.join();
    close(listen_fd_);
  }
  CannedUpstream(const CannedUpstream&) = delete;
  CannedUpstream& operator=(const CannedUpstream&) = delete;
  uint16_t port() const { return port_; }

 private:
  void Run() {
    while (!stop_) {
      pollfd pl{listen_fd_, POLLIN, 0};
      if (poll(&pl, 1, 50) <= 0)
        continue;
      int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0)
        continue;
      std::string in;
      while (!stop_) {
        pollfd pc{fd, POLLIN, 0};
        if (poll(&pc, 1, 50) <= 0)
          continue;
        char buf[4096];
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n <= 0)
          break;
        in.append(buf, static_cast<std::size_t>(n));
        for (std::size_t end; (end = in.find("\r\n\r\n")) != std::string::npos;) {
          in.erase(0, end + 4);  // the proxy's requests here have no body
          send(fd, response_.data(), response_.size(), MSG_NOSIGNAL);
        }
      }
      close(fd);
    }
  }

  std::string response_;
  int listen_fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

Json OneCluster(uint16_t port) {
  return {{"listeners",
           {HttpListener("http",
                         RouteConfig("r", {{{"name", "all"},
                                            {"match", {{"prefix", "/"}}},
                                            {"route", {{"cluster", "up"}}}}}),
                         false)}},
          {"clusters", {StaticCluster("up", {port})}}};
}

// Waits for the peer to close fd: true if it did within timeout_ms.
bool ClosedByPeer(int fd, int timeout_ms) {
  pollfd pf{fd, POLLIN, 0};
  if (poll(&pf, 1, timeout_ms) != 1)
    return false;
  char c;
  return recv(fd, &c, 1, 0) == 0;
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

TEST_CASE("1xx and 204 with Transfer-Encoding or a Content-Length are upstream errors",
          "[proxy][protocol]") {
  // Envoy's strict 1xx/204 rule: the client never gets such a response passed on.
  for (const char* resp :
       {"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\nhello",
        "HTTP/1.1 204 No Content\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        "HTTP/1.1 100 Continue\r\ncontent-length: 2\r\n\r\nxxHTTP/1.1 200 OK\r\ncontent-length: "
        "0\r\n\r\n"}) {
    INFO(resp);
    CannedUpstream up(resp);
    auto p = StartProxy(OneCluster(up.port()));
    REQUIRE(p->error == "");
    Resp r = Get(p->Port(), "h", "/");
    // 503 from today's proxy (every upstream protocol error is a reset); Envoy says 502.
    CHECK(r.status >= 502);
    CHECK(r.status <= 503);
  }
}

TEST_CASE("304 keeps its Content-Length and has no body", "[proxy][protocol]") {
  CannedUpstream up("HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\netag: \"e\"\r\n\r\n");
  auto p = StartProxy(OneCluster(up.port()));
  REQUIRE(p->error == "");
  Client c(p->Port());
  for (int i = 0; i < 2; ++i) {  // the connection stays in step: no body was read
    Resp r = c.Get("h", "/");
    CHECK(r.status == 304);
    CHECK(r.Header("content-length") == "10");
    CHECK(r.body.empty());
  }
}

TEST_CASE("204 with Content-Length: 0 is passed on without it, and protocol errors are 502",
          "[proxy][protocol]") {
  {
    CannedUpstream up("HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nx-u: 1\r\n\r\n");
    auto p = StartProxy(OneCluster(up.port()));
    REQUIRE(p->error == "");
    Resp r = Get(p->Port(), "h", "/");
    CHECK(r.status == 204);
    CHECK(r.Header("x-u") == "1");
    CHECK(r.headers.count("content-length") == 0);
  }
  CannedUpstream up("HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\nhello");
  auto p = StartProxy(OneCluster(up.port()));
  REQUIRE(p->error == "");
  CHECK(Get(p->Port(), "h", "/").status == 502);
}

TEST_CASE("HTTP/1.0: keep-alive only with Connection: keep-alive, and close wins",
          "[proxy][protocol]") {
  // RFC 9112 §9.3.
  TestUpstream up({.name = "up"});
  auto p = StartProxy(OneCluster(up.port()));
  REQUIRE(p->error == "");
  struct Case {
    const char* connection;
    bool persists;
  };
  for (const Case& c : {Case{"keep-alive", true}, Case{"keep-alive, close", false},
                        Case{"close, keep-alive", false}, Case{nullptr, false}}) {
    INFO("connection: " << (c.connection ? c.connection : "-"));
    int fd = Connect(p->Port());
    REQUIRE(fd >= 0);
    std::string req = "GET / HTTP/1.0\r\nhost: h\r\n";
    if (c.connection)
      req += std::string("connection: ") + c.connection + "\r\n";
    req += "\r\n";
    send(fd, req.data(), req.size(), MSG_NOSIGNAL);
    std::string buf;
    auto rs = ReadResponses(fd, buf, 1, 3000);
    REQUIRE(rs.size() == 1);
    CHECK(rs[0].status == 200);
    CHECK((rs[0].Header("connection") == "close") == !c.persists);
    CHECK(ClosedByPeer(fd, c.persists ? 200 : 2000) == !c.persists);
    close(fd);
  }
}
