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

[[maybe_unused]] Json FaultFilter() {
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

// An HTTP/1.1 upstream whose every answer is chunked with trailers (as a gRPC server's
// reply would be over HTTP/1.1): "hello " "world", then grpc-status and grpc-message.
// With path /trailers-only the answer has no body: 200, content-length 0.
class TrailerUpstream {
 public:
  TrailerUpstream() {
    fd_ = ListenLoopback(16, &port_);
    thread_ = std::thread([this] {
      while (!stop_) {
        int c = accept(fd_, nullptr, nullptr);
        if (c < 0)
          return;
        std::string in;
        char buf[4096];
        while (true) {
          std::size_t end = in.find("\r\n\r\n");
          if (end != std::string::npos) {
            std::string head = in.substr(0, end);
            in.erase(0, end + 4);
            std::string out;
            if (head.find(" /trailers-only") != std::string::npos) {
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
    });
  }
  ~TrailerUpstream() {
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
[[maybe_unused]] std::unique_ptr<RunningProxy> StartTlsProxy(
    const Json& doc, std::shared_ptr<const tls::ServerContext> ctx) {
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
