// HTTP/2 and TLS on the downstream side of the L7 engine (h2_downstream.h,
// tls_transport.h), with real clients: curl (--http2-prior-knowledge, --http2 and
// --http1.1 over TLS), nghttp -v (frames, trailers), h2load, and a small client on
// h2_session's client role for what those cannot do on cue (a RST_STREAM mid-request).
// Upstreams are the project's HTTP/1.1 test upstream and small raw servers written here.
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <array>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <regex>
#include <sstream>
#include <thread>

#include <catch2/catch.hpp>

#include "h2_test_util.h"
#include "harness.h"
#include "sluice/proxy/config.h"
#include "sluice/proxy/tls_server.h"
#include "test_upstream.h"

using namespace sluice::testing;
namespace fs = std::filesystem;
namespace h2 = sluice::proxy::h2;
namespace tls = sluice::proxy::tls;

namespace {

std::string Sh(const std::string& cmd, int* status = nullptr) {
  std::string out;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p)
    return out;
  std::array<char, 4096> buf{};
  while (std::size_t n = fread(buf.data(), 1, buf.size(), p))
    out.append(buf.data(), n);
  int st = pclose(p);
  if (status)
    *status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return out;
}

std::size_t Count(const std::string& s, const std::string& what) {
  std::size_t n = 0;
  for (std::size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + 1))
    ++n;
  return n;
}

Json Route(const std::string& prefix, const Json& action, const Json& headers = nullptr) {
  Json m = {{"prefix", prefix}};
  if (!headers.is_null())
    m["headers"] = headers;
  return {{"match", m}, {"route", action}};
}

Json FaultFilter() {
  return {{"name", "envoy.filters.http.fault"},
          {"typed_config",
           {{"@type", "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}}}};
}

// One HTTP listener "http" with these routes and codec_type, and these clusters.
Json Doc(const Json& routes, const Json& clusters, const std::string& codec = "AUTO",
         const Json& filters = Json::array()) {
  Json l = HttpListener("http", RouteConfig("r", routes), true, filters);
  l["filter_chains"][0]["filters"][0]["typed_config"]["codec_type"] = codec;
  return {{"listeners", Json::array({l})}, {"clusters", clusters}};
}

std::string Url(uint16_t port, const std::string& path) {
  return "http://127.0.0.1:" + std::to_string(port) + path;
}

// An HTTP/1.1 upstream whose answers are chunked with trailers (as a gRPC server's reply
// would be over HTTP/1.1): "hello " "world", then grpc-status and grpc-message. By path:
// /trailers-only: no body (200, content-length 0); /big: 2 MiB; /partial: 10 of 1000
// body bytes, then the connection closes.
class TrailerUpstream {
 public:
  TrailerUpstream() {
    fd_ = ListenLoopback(16, &port_);
    thread_ = std::thread([this] {
      while (!stop_) {
        int c = accept(fd_, nullptr, nullptr);
        if (c < 0)
          return;
        std::lock_guard lock(mu_);
        conns_.emplace_back([c] { Serve(c); });
      }
    });
  }
  ~TrailerUpstream() {
    stop_ = true;
    shutdown(fd_, SHUT_RDWR);
    close(fd_);
    thread_.join();
    std::lock_guard lock(mu_);
    for (auto& t : conns_)
      t.join();
  }
  uint16_t port() const { return port_; }

 private:
  static void Serve(int c) {
    std::string in;
    char buf[4096];
    while (true) {
      std::size_t end = in.find("\r\n\r\n");
      if (end != std::string::npos) {
        std::string head = in.substr(0, end);
        in.erase(0, end + 4);
        std::string out;
        if (head.find(" /partial") != std::string::npos) {
          // Half a body, then the connection ends: the stream must not look complete.
          out = "HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789";
          send(c, out.data(), out.size(), MSG_NOSIGNAL);
          break;
        }
        if (head.find(" /big") != std::string::npos) {
          // 2 MiB: many windows' worth for a client that reads as it goes.
          out = "HTTP/1.1 200 OK\r\ncontent-length: 2097152\r\n\r\n" + std::string(2097152, 'x');
        } else if (head.find(" /trailers-only") != std::string::npos) {
          out =
              "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ngrpc-status: 7\r\n"
              "content-length: 0\r\n\r\n";
        } else {
          out =
              "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\n"
              "transfer-encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n"
              "grpc-status: 0\r\ngrpc-message: all good\r\n\r\n";
        }
        send(c, out.data(), out.size(), MSG_NOSIGNAL);
        continue;
      }
      ssize_t n = recv(c, buf, sizeof(buf), 0);
      if (n <= 0)
        break;
      in.append(buf, static_cast<std::size_t>(n));
    }
    close(c);
  }

  int fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::mutex mu_;
  std::vector<std::thread> conns_;
};

// An HTTP/2 client over a blocking loopback socket, on h2_session's client role.
class H2Client : public h2test::Recorder {
 public:
  explicit H2Client(uint16_t port) : fd_(Connect(port)), s_(h2::Role::kClient, this) {
    session = &s_;
  }
  ~H2Client() {
    if (fd_ >= 0)
      close(fd_);
  }
  int32_t Get(const std::string& path, std::vector<h2::Field> extra = {}, bool end = true) {
    h2::Head h;
    h.method = end ? "GET" : "POST";
    h.scheme = "http";
    h.authority = "app";
    h.path = path;
    h.fields = std::move(extra);
    return s_.SubmitRequest(h, end);
  }
  h2::Session& session_() { return s_; }
  // Moves bytes until pred() or the timeout; false on timeout or a closed socket.
  template <class F>
  bool RunUntil(F pred, int timeout_ms = 3000) {
    auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (!pred()) {
      std::string_view out = s_.PendingOutput();
      if (!out.empty()) {
        ssize_t n = send(fd_, out.data(), out.size(), MSG_NOSIGNAL);
        if (n <= 0)
          return false;
        s_.ConsumeOutput(static_cast<std::size_t>(n));
        continue;
      }
      int left = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                      end - std::chrono::steady_clock::now())
                                      .count());
      if (left <= 0)
        return false;
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, std::min(left, 50)) < 0)
        return false;
      if (p.revents & (POLLIN | POLLHUP)) {
        char buf[16384];
        ssize_t n = recv(fd_, buf, sizeof(buf), 0);
        if (n <= 0)
          return pred();
        s_.Receive({buf, static_cast<std::size_t>(n)});
      }
    }
    return true;
  }

 private:
  int fd_;
  h2::Session s_;
};

// A test CA and server certificates made with the openssl command line.
struct Certs {
  fs::path dir;
  Certs() {
    dir = fs::temp_directory_path() / ("sluice-h2d-test-" + std::to_string(getpid()));
    fs::create_directories(dir);
    auto run = [&](const std::string& cmd) {
      int st = 0;
      std::string out = Sh("cd " + dir.string() + " && " + cmd, &st);
      INFO(cmd << "\n" << out);
      REQUIRE(st == 0);
    };
    run("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 "
        "-subj /CN=test-ca -keyout ca.key -out ca.pem");
    for (const std::string name : {"a", "b"}) {
      run("openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=" + name +
          ".example.com -keyout " + name + ".key -out " + name + ".csr");
      run("printf 'subjectAltName=DNS:" + name + ".example.com' > " + name +
          ".ext && openssl x509 -req -in " + name + ".csr -CA ca.pem -CAkey ca.key " +
          "-CAcreateserial -days 2 -extfile " + name + ".ext -out " + name + ".pem");
    }
  }
  ~Certs() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  std::string Read(const std::string& file) const {
    std::ifstream f(dir / file);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }
  tls::CertificateConfig Cert(const std::string& name) const {
    return {
        "kubernetes://" + name, Read(name + ".pem"), Read(name + ".key"), {name + ".example.com"}};
  }
  std::string Path(const std::string& file) const { return (dir / file).string(); }
};

// Starts the proxy with every HTTP chain of the document terminating TLS with `ctx`
// (what helper T's DownstreamTlsContext compile will fill in).
std::unique_ptr<RunningProxy> StartTlsProxy(const Json& doc,
                                            std::shared_ptr<const tls::ServerContext> ctx) {
  auto rp = std::make_unique<RunningProxy>();
  rp->log_path = rp->dir.path() + "/access.log";
  auto cfg = CompileJson(doc);
  if (!cfg) {
    rp->error = cfg.error().message;
    return rp;
  }
  auto mutable_cfg = std::const_pointer_cast<sluice::proxy::ProxyConfig>(*cfg);
  for (auto& l : mutable_cfg->listeners) {
    for (auto& c : l.chains) {
      if (c.is_http)
        c.tls = ctx;
    }
  }
  sluice::proxy::ProxyOptions opts;
  opts.workers = 1;
  opts.access_log_path = rp->log_path;
  rp->config = *cfg;
  auto p = sluice::proxy::Proxy::Start(*cfg, opts);
  if (!p) {
    rp->error = p.error().message;
    return rp;
  }
  rp->proxy = std::move(*p);
  return rp;
}

}  // namespace

TEST_CASE("h2c: curl with prior knowledge through the proxy to an HTTP/1.1 upstream",
          "[proxy][h2][curl]") {
  TestUpstream up({.name = "app"});
  auto p = StartProxy(Doc(Json::array({Route("/", {{"cluster", "app"}})}),
                          Json::array({StaticCluster("app", {up.port()})})));
  REQUIRE(p->error.empty());
  const uint16_t port = p->Port();

  std::string out =
      Sh("curl -sSv --http2-prior-knowledge --max-time 5 -H 'x-test: one' " + Url(port, "/a?q=1"));
  INFO(out);
  CHECK(out.find("< HTTP/2 200") != std::string::npos);
  CHECK(out.find("x-upstream: app") != std::string::npos);
  // The upstream's body is the request head it received, as HTTP/1.1 (host from
  // :authority, content-length 0 for a head that ended the stream).
  CHECK(out.find("GET /a?q=1 HTTP/1.1\r\nhost: 127.0.0.1:" + std::to_string(port)) !=
        std::string::npos);
  CHECK(out.find("x-test: one") != std::string::npos);
  CHECK(out.find("content-length: 0") != std::string::npos);

  // Several requests on one connection (nghttp: curl 7.88.1 cannot reuse a
  // prior-knowledge connection, curl/curl#10634), each answered with its own body.
  std::string multi =
      Sh("nghttp -v " + Url(port, "/one") + " " + Url(port, "/two") + " " + Url(port, "/three"));
  INFO(multi);
  CHECK(Count(multi, "] Connected") == 1);
  CHECK(Count(multi, ":status: 200") == 3);
  CHECK(multi.find("GET /one HTTP/1.1") != std::string::npos);
  CHECK(multi.find("GET /two HTTP/1.1") != std::string::npos);
  CHECK(multi.find("GET /three HTTP/1.1") != std::string::npos);
  CHECK(up.count() == 4);

  // A request body (POST with a content-length, and one without: chunked upstream).
  std::string post = Sh("curl -s --http2-prior-knowledge --max-time 5 --data-binary 'hello body' " +
                        Url(port, "/post"));
  INFO(post);
  CHECK(post.find("POST /post HTTP/1.1") != std::string::npos);
  CHECK(post.find("content-length: 10") != std::string::npos);
  // A body of unknown length (an upload from a pipe): chunked towards the upstream.
  std::string put =
      Sh("printf 'streamed body' | curl -sS --http2-prior-knowledge --max-time 5 -T - " +
         Url(port, "/put"));
  INFO(put);
  CHECK(put.find("PUT /put HTTP/1.1") != std::string::npos);
  CHECK(put.find("transfer-encoding: chunked") != std::string::npos);

  // The access log says HTTP/2.
  auto lines = p->LogLines(6);
  REQUIRE(lines.size() >= 6);
  CHECK(lines[0].find("\"GET /a?q=1 HTTP/2\" 200") != std::string::npos);
}

TEST_CASE("h2c: h2load with 2 connections and 10 streams each, all 2xx", "[proxy][h2][h2load]") {
  TestUpstream up({.name = "app", .echo = false, .record = false});
  auto p = StartProxy(Doc(Json::array({Route("/", {{"cluster", "app"}})}),
                          Json::array({StaticCluster("app", {up.port()})})));
  REQUIRE(p->error.empty());
  std::string out = Sh("h2load -n 200 -c 2 -m 10 " + Url(p->Port(), "/load"));
  INFO(out);
  CHECK(out.find("200 total, 200 started, 200 done, 200 succeeded, 0 failed, 0 errored") !=
        std::string::npos);
  CHECK(out.find("status codes: 200 2xx") != std::string::npos);
}

TEST_CASE("h2c: routing by :path and by header, a split, a fault abort and a route timeout",
          "[proxy][h2][routing]") {
  TestUpstream a({.name = "a"}), b({.name = "b"});
  Json fault = {{"@type", "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"},
                {"abort", {{"http_status", 418}, {"percentage", {{"numerator", 100}}}}}};
  Json abort_route = Route("/abort", {{"cluster", "a"}});
  abort_route["typed_per_filter_config"]["envoy.filters.http.fault"] = fault;
  Json split = {{"weighted_clusters",
                 {{"clusters", Json::array({{{"name", "a"}, {"weight", 50}},
                                            {{"name", "b"}, {"weight", 50}}})}}}};
  Json pick = Json::array({{{"name", "x-pick"}, {"string_match", {{"exact", "b"}}}}});
  Json routes =
      Json::array({Route("/b/", {{"cluster", "b"}}), abort_route,
                   Route("/slow", {{"cluster", "a"}, {"timeout", "0.2s"}}), Route("/split", split),
                   Route("/", {{"cluster", "b"}}, pick), Route("/", {{"cluster", "a"}})});
  auto p = StartProxy(
      Doc(routes, Json::array({StaticCluster("a", {a.port()}), StaticCluster("b", {b.port()})}),
          "AUTO", Json::array({FaultFilter()})));
  REQUIRE(p->error.empty());
  const uint16_t port = p->Port();

  // By :path, and by a header, on streams of one connection.
  std::string out = Sh("nghttp -v " + Url(port, "/b/x") + " " + Url(port, "/plain"));
  INFO(out);
  CHECK(out.find("x-upstream: b") != std::string::npos);
  CHECK(out.find("x-upstream: a") != std::string::npos);
  CHECK(b.Requests().size() == 1);
  CHECK(a.Requests().size() == 1);
  std::string picked = Sh("nghttp -v -H 'x-pick: b' " + Url(port, "/plain"));
  INFO(picked);
  CHECK(picked.find("x-upstream: b") != std::string::npos);
  CHECK(b.Requests().size() == 2);

  // A fault's abort and a route timeout are answered on the stream.
  std::string aborted = Sh("nghttp -v " + Url(port, "/abort"));
  INFO(aborted);
  CHECK(aborted.find(":status: 418") != std::string::npos);
  std::string slow = Sh("nghttp -v -H 'x-delay-ms: 1500' " + Url(port, "/slow"));
  INFO(slow);
  CHECK(slow.find(":status: 504") != std::string::npos);
  CHECK(slow.find("upstream request timeout") != std::string::npos);

  // A 50/50 split is still a split on HTTP/2 streams.
  a.Reset();
  b.Reset();
  std::string load = Sh("h2load -n 200 -c 1 -m 10 " + Url(port, "/split"));
  INFO(load);
  CHECK(load.find("status codes: 200 2xx") != std::string::npos);
  CHECK(a.count() + b.count() == 200);
  CHECK(a.count() > 50);
  CHECK(b.count() > 50);

  auto lines = p->LogLines(6);
  bool timeout_logged = false, abort_logged = false;
  for (const auto& l : lines) {
    timeout_logged |= l.find("\"GET /slow HTTP/2\" 504 UT") != std::string::npos;
    abort_logged |= l.find("\"GET /abort HTTP/2\" 418 FI") != std::string::npos;
  }
  CHECK(timeout_logged);
  CHECK(abort_logged);
}

TEST_CASE("h2c: upstream chunked trailers arrive as HTTP/2 trailers (gRPC's grpc-status)",
          "[proxy][h2][trailers]") {
  TrailerUpstream up;
  auto p = StartProxy(Doc(Json::array({Route("/", {{"cluster", "grpc"}})}),
                          Json::array({StaticCluster("grpc", {up.port()})})));
  REQUIRE(p->error.empty());
  const uint16_t port = p->Port();
  std::string out = Sh("nghttp -v " + Url(port, "/pkg.Svc/Call"));
  INFO(out);
  const std::size_t data = out.find("recv DATA frame");
  const std::size_t status = out.find("grpc-status: 0");
  REQUIRE(data != std::string::npos);
  REQUIRE(status != std::string::npos);
  CHECK(data < status);  // after the body, in a HEADERS frame that ends the stream
  const std::size_t trailers = out.find("recv HEADERS frame", status);
  REQUIRE(trailers != std::string::npos);
  CHECK(out.substr(trailers, out.find('\n', trailers) - trailers).find("flags=0x05") !=
        std::string::npos);  // END_STREAM | END_HEADERS
  CHECK(out.find("grpc-message: all good") != std::string::npos);
  CHECK(out.find("recv DATA frame <length=6") != std::string::npos);  // "hello "
  CHECK(out.find("recv DATA frame <length=5") != std::string::npos);  // "world"
  CHECK(out.find("transfer-encoding") == std::string::npos);

  // A trailers-only reply: one HEADERS frame with END_STREAM, no DATA.
  std::string only = Sh("nghttp -v " + Url(port, "/trailers-only"));
  INFO(only);
  CHECK(only.find("grpc-status: 7") != std::string::npos);
  CHECK(only.find("recv DATA frame") == std::string::npos);
  CHECK(Count(only, "recv HEADERS frame") == 1);
  const std::size_t head = only.find("recv HEADERS frame");
  CHECK(only.substr(head, only.find('\n', head) - head).find("flags=0x05") != std::string::npos);
}

TEST_CASE("h2c: a client's RST_STREAM mid-request aborts only that stream", "[proxy][h2][reset]") {
  TestUpstream up({.name = "app"});
  auto p = StartProxy(Doc(Json::array({Route("/", {{"cluster", "app"}})}),
                          Json::array({StaticCluster("app", {up.port()})})));
  REQUIRE(p->error.empty());
  H2Client c(p->Port());
  // A POST whose body is not finished, and two slow GETs on the same connection.
  const int32_t post = c.Get("/upload", {{"content-length", "100"}}, /*end=*/false);
  REQUIRE(post > 0);
  REQUIRE(c.session_().SendData(post, "partial", false));
  const int32_t g1 = c.Get("/one", {{"x-delay-ms", "300"}});
  const int32_t g2 = c.Get("/two", {{"x-delay-ms", "300"}});
  c.RunUntil([] { return false; }, 100);  // the proxy has them all
  REQUIRE(c.session_().ResetStream(post, h2::kCancel));
  REQUIRE(c.RunUntil([&] { return c.streams[g1].closed && c.streams[g2].closed; }));
  CHECK(c.streams[g1].status == 200);
  CHECK(c.streams[g2].status == 200);
  CHECK(c.streams[g1].close_code == h2::kNoError);
  CHECK(c.streams[g2].body.find("GET /two HTTP/1.1") != std::string::npos);
  CHECK(c.streams[post].status == 0);
  // The reset request is logged as a downstream disconnect, without an upstream.
  auto lines = p->LogLines(3);
  bool dc = false;
  for (const auto& l : lines)
    dc |= l.find("\"POST /upload HTTP/2\" 0 DC") != std::string::npos;
  CHECK(dc);
  CHECK(up.count() == 2);
}

TEST_CASE("h2c: codec_type HTTP1 refuses the preface, AUTO serves HTTP/1.1 and h2c on one port",
          "[proxy][h2][codec]") {
  TestUpstream up({.name = "app"});
  Json routes = Json::array({Route("/", {{"cluster", "app"}})});
  Json clusters = Json::array({StaticCluster("app", {up.port()})});
  {
    auto p = StartProxy(Doc(routes, clusters, "HTTP1"));
    REQUIRE(p->error.empty());
    std::string h2 = Sh("curl -sSv --http2-prior-knowledge --max-time 3 " + Url(p->Port(), "/"));
    INFO(h2);
    CHECK(h2.find("< HTTP/2 200") == std::string::npos);
    Resp raw = SendRaw(p->Port(), std::string(h2::kClientPreface));
    CHECK(raw.status == 400);
    CHECK(Get(p->Port(), "app", "/").status == 200);
  }
  {
    auto p = StartProxy(Doc(routes, clusters, "AUTO"));
    REQUIRE(p->error.empty());
    std::string h1 = Sh("curl -sSv --http1.1 --max-time 3 " + Url(p->Port(), "/h1"));
    std::string h2 = Sh("curl -sSv --http2-prior-knowledge --max-time 3 " + Url(p->Port(), "/h2"));
    INFO(h1 << h2);
    CHECK(h1.find("< HTTP/1.1 200") != std::string::npos);
    CHECK(h2.find("< HTTP/2 200") != std::string::npos);
    auto lines = p->LogLines(2);
    REQUIRE(lines.size() == 2);
    CHECK(lines[0].find("\"GET /h1 HTTP/1.1\" 200") != std::string::npos);
    CHECK(lines[1].find("\"GET /h2 HTTP/2\" 200") != std::string::npos);
  }
  {
    // HTTP2: only HTTP/2 (an HTTP/1.1 request is not answered as one).
    auto p = StartProxy(Doc(routes, clusters, "HTTP2"));
    REQUIRE(p->error.empty());
    std::string h1 = Sh("curl -sSv --http1.1 --max-time 3 " + Url(p->Port(), "/h1"));
    INFO(h1);
    CHECK(h1.find("< HTTP/1.1 200") == std::string::npos);
    std::string h2 = Sh("curl -sSv --http2-prior-knowledge --max-time 3 " + Url(p->Port(), "/h2"));
    CHECK(h2.find("< HTTP/2 200") != std::string::npos);
  }
}

TEST_CASE("tls: HTTP/2 and HTTP/1.1 by ALPN, the certificate by SNI, unknown SNI refused",
          "[proxy][h2][tls]") {
  Certs certs;
  tls::ServerConfig sc;
  sc.certificates = {certs.Cert("a"), certs.Cert("b")};
  auto ctx = tls::ServerContext::Create(sc);
  REQUIRE(ctx.has_value());
  TestUpstream up({.name = "app"});
  auto p = StartTlsProxy(Doc(Json::array({Route("/", {{"cluster", "app"}})}),
                             Json::array({StaticCluster("app", {up.port()})})),
                         *ctx);
  REQUIRE(p->error.empty());
  const std::string port = std::to_string(p->Port());
  auto curl = [&](const std::string& host, const std::string& flags, const std::string& paths) {
    std::string urls;
    for (const char* path = paths.c_str(); *path;) {
      const char* end = std::strchr(path, ' ');
      std::string one = end ? std::string(path, end) : std::string(path);
      urls += " https://" + host + ":" + port + one;
      path = end ? end + 1 : path + one.size();
    }
    return Sh("curl -sSv --max-time 5 --cacert " + certs.Path("ca.pem") + " --resolve " + host +
              ":" + port + ":127.0.0.1 " + flags + urls);
  };

  // ALPN h2: HTTP/2 over TLS, two requests on one connection.
  std::string h2 = curl("a.example.com", "--http2", "/x /y");
  INFO(h2);
  CHECK(h2.find("ALPN: server accepted h2") != std::string::npos);
  CHECK(Count(h2, "< HTTP/2 200") == 2);
  CHECK(Count(h2, "Connected to") == 1);
  CHECK(h2.find("subject: CN=a.example.com") != std::string::npos);
  CHECK(h2.find("GET /y HTTP/1.1") != std::string::npos);

  // ALPN http/1.1: the HTTP/1.1 Session over the same TLS transport; SNI picks b's.
  std::string h1 = curl("b.example.com", "--http1.1", "/z");
  INFO(h1);
  CHECK(h1.find("ALPN: server accepted http/1.1") != std::string::npos);
  CHECK(h1.find("< HTTP/1.1 200") != std::string::npos);
  CHECK(h1.find("subject: CN=b.example.com") != std::string::npos);
  CHECK(h1.find("x-forwarded-proto") != std::string::npos);

  // A larger body both ways over TLS and HTTP/2 (many records, flow control).
  std::string big = Sh("head -c 300000 /dev/urandom | base64 -w0 > " + certs.Path("big.txt") +
                       " && curl -sS --http2 --max-time 10 --cacert " + certs.Path("ca.pem") +
                       " --resolve a.example.com:" + port + ":127.0.0.1 --data-binary @" +
                       certs.Path("big.txt") + " -o /dev/null -w '%{http_code} %{size_upload}' " +
                       "https://a.example.com:" + port + "/big");
  INFO(big);
  CHECK(big.find("200 400000") != std::string::npos);

  // An unknown SNI fails the handshake (and is counted).
  const uint64_t before = p->proxy->stats().tls_handshake_errors.load();
  int st = 0;
  std::string unknown =
      Sh("curl -sS --max-time 5 --cacert " + certs.Path("ca.pem") +
             " --resolve c.example.com:" + port + ":127.0.0.1 https://c.example.com:" + port + "/",
         &st);
  INFO(unknown);
  CHECK(st == 35);
  CHECK(WaitFor([&] { return p->proxy->stats().tls_handshake_errors.load() == before + 1; }));
  CHECK(up.count() == 4);

  // The access log: the protocol per request and the SNI.
  auto lines = p->LogLines(4);
  REQUIRE(lines.size() >= 4);
  CHECK(lines[0].find("\"GET /x HTTP/2\" 200") != std::string::npos);
  CHECK(lines[0].find(" a.example.com ") != std::string::npos);
  CHECK(lines[2].find("\"GET /z HTTP/1.1\" 200") != std::string::npos);
  CHECK(lines[2].find(" b.example.com ") != std::string::npos);
}

TEST_CASE("h2c: a large response under flow control, and an upstream reset mid-body",
          "[proxy][h2][flow]") {
  TrailerUpstream up;
  auto p = StartProxy(Doc(Json::array({Route("/", {{"cluster", "raw"}})}),
                          Json::array({StaticCluster("raw", {up.port()})})));
  REQUIRE(p->error.empty());
  H2Client c(p->Port());
  const int32_t big = c.Get("/big");
  const int32_t partial = c.Get("/partial");
  const int32_t small = c.Get("/small");
  REQUIRE(c.RunUntil(
      [&] { return c.streams[big].closed && c.streams[partial].closed && c.streams[small].closed; },
      10000));
  CHECK(c.streams[big].status == 200);
  CHECK(c.streams[big].body.size() == 2097152);
  CHECK(c.streams[big].close_code == h2::kNoError);
  CHECK(c.streams[small].trailers.size() == 2);
  // The head went out, the body did not complete: reset with INTERNAL_ERROR, as Envoy.
  CHECK(c.streams[partial].status == 200);
  CHECK(c.streams[partial].body == "0123456789");
  CHECK(c.streams[partial].close_code == h2::kInternalError);
}

TEST_CASE("h2c: drain sends GOAWAY and lets the open stream finish", "[proxy][h2][drain]") {
  TestUpstream up({.name = "app"});
  auto p = StartProxy(Doc(Json::array({Route("/", {{"cluster", "app"}})}),
                          Json::array({StaticCluster("app", {up.port()})})));
  REQUIRE(p->error.empty());
  H2Client c(p->Port());
  const int32_t slow = c.Get("/slow", {{"x-delay-ms", "400"}});
  c.RunUntil([] { return false; }, 100);
  std::thread drain([&] { (void)p->proxy->Drain(); });
  REQUIRE(c.RunUntil([&] { return c.streams[slow].closed; }, 5000));
  drain.join();
  CHECK(c.streams[slow].status == 200);
  CHECK(c.streams[slow].close_code == h2::kNoError);
  CHECK(c.session_().stats().goaways_received == 1);
}
