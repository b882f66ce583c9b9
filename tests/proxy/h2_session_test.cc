// The HTTP/2 connection layer against real peers: our client role against our server role
// in memory (both nghttp2 underneath, but every byte goes through both sessions' framing,
// HPACK and flow control), and the server role on a loopback socket against third-party
// clients from Debian's nghttp2-client (nghttp, h2load) and curl.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "h2_test_util.h"

using namespace h2test;
using sluice::proxy::h2::LooksLikeH2Preface;
using sluice::proxy::h2::Options;
using sluice::proxy::h2::PrefaceMatch;
using sluice::proxy::h2::Role;

namespace {

// A server that answers every request when its client side ends: "hello\n" for GET, the
// request body echoed for POST, with trailers (as gRPC's grpc-status).
struct EchoApp : Recorder {
  EchoApp() {
    on_end = [this](int32_t id, StreamLog& s) {
      Head h;
      h.status = 200;
      std::string len = std::to_string(s.method == "POST" ? s.body.size() : 6);
      h.fields = {{"content-type", "text/plain"}, {"x-path", s.path}};
      session->SubmitResponse(id, h, false);
      session->SendData(id, s.method == "POST" ? std::string_view(s.body) : "hello\n", false);
      std::string n = std::to_string(s.body.size());
      session->SendTrailers(id, {{"grpc-status", "0"}, {"x-received-bytes", n}});
    };
  }
};

struct Pair {
  Recorder client_rec;
  EchoApp server_rec;
  Session client, server;
  explicit Pair(Options co = {}, Options so = {})
      : client(Role::kClient, &client_rec, co), server(Role::kServer, &server_rec, so) {
    client_rec.session = &client;
    server_rec.session = &server;
  }
};

}  // namespace

TEST_CASE("h2: the client preface is recognised for codec AUTO, a prefix asks for more") {
  CHECK(LooksLikeH2Preface("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") == PrefaceMatch::kYes);
  CHECK(LooksLikeH2Preface("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\4") == PrefaceMatch::kYes);
  CHECK(LooksLikeH2Preface("PRI * HT") == PrefaceMatch::kNeedMore);
  CHECK(LooksLikeH2Preface("") == PrefaceMatch::kNeedMore);
  CHECK(LooksLikeH2Preface("GET / HTTP/1.1\r\n") == PrefaceMatch::kNo);
  CHECK(LooksLikeH2Preface("PRI * HTTP/1.1\r\n") == PrefaceMatch::kNo);
}

TEST_CASE("h2: a GET from our client to our server, with response body and trailers") {
  Pair p;
  Head req;
  req.method = "GET";
  req.path = "/a/b?c=1";
  req.authority = "svc.ns:8080";
  // An HTTP/1.1 head translated as is: Host becomes :authority, connection-specific
  // fields are dropped, names go out lowercase.
  req.fields = {{"Host", "svc.ns:8080"},     {"Connection", "keep-alive"}, {"X-Trace", "abc"},
                {"x-longer-Name-here", "1"},  // a capital in the second 8 bytes
                {"x-abcdefgH", "2"},          // ... in the bytes after them
                {"te", "trailers"}};
  int32_t id = p.client.SubmitRequest(req, true);
  REQUIRE(id == 1);
  Pump(p.client, p.server);

  const StreamLog& s = p.server_rec.streams.at(1);
  CHECK(s.method == "GET");
  CHECK(s.scheme == "http");
  CHECK(s.authority == "svc.ns:8080");
  CHECK(s.path == "/a/b?c=1");
  CHECK(s.Field("x-trace") == "abc");
  CHECK(s.Field("x-longer-name-here") == "1");
  CHECK(s.Field("x-abcdefgh") == "2");
  CHECK(s.Field("te") == "trailers");
  CHECK(s.Field("connection").empty());
  CHECK(s.Field("host").empty());

  const StreamLog& r = p.client_rec.streams.at(1);
  CHECK(r.status == 200);
  CHECK(r.Field("x-path") == "/a/b?c=1");
  CHECK(r.body == "hello\n");
  REQUIRE(r.trailers.size() == 2);
  CHECK(r.trailers[0] == std::pair<std::string, std::string>{"grpc-status", "0"});
  CHECK(r.closed);
  CHECK(r.close_code == 0);
  CHECK(p.server.open_streams() == 0);
  CHECK(p.client.open_streams() == 0);
  CHECK(p.server.stats().streams_opened == 1);
  CHECK(p.server.stats().resets_sent == 0);
}

TEST_CASE("h2: a 1 MiB POST goes through flow control only as the server consumes it") {
  Pair p;
  p.server_rec.auto_consume = false;
  std::string body(1 << 20, '\0');
  for (std::size_t i = 0; i < body.size(); ++i)
    body[i] = static_cast<char>('a' + i % 26);
  Head req;
  req.method = "POST";
  req.path = "/upload";
  req.authority = "svc";
  int32_t id = p.client.SubmitRequest(req, false);
  REQUIRE(id > 0);
  REQUIRE(p.client.SendData(id, body, true));
  Pump(p.client, p.server);
  // Nothing consumed: the peer may send one stream window (64 KiB), no more.
  CHECK(p.server_rec.data_bytes == 64 * 1024);
  CHECK(p.client.QueuedBytes(id) == body.size() - 64 * 1024);

  // Consuming opens the window: the rest arrives in window-sized steps.
  for (int rounds = 0; rounds < 100 && !p.server_rec.streams[id].ended; ++rounds) {
    p.server.Consume(id, 64 * 1024);
    Pump(p.client, p.server);
  }
  const StreamLog& s = p.server_rec.streams.at(id);
  REQUIRE(s.ended);
  CHECK(s.body == body);
  // The echo (1 MiB back) flowed through the client's windows as it consumed.
  Pump(p.client, p.server);
  const StreamLog& r = p.client_rec.streams.at(id);
  CHECK(r.body == body);
  CHECK(r.Field("content-type") == "text/plain");
  CHECK(!r.trailers.empty());
  CHECK(r.closed);
}

TEST_CASE("h2: a client that does not consume holds the response in the server's queue") {
  Pair p;
  p.client_rec.auto_consume = false;
  p.server_rec.on_end = [&p](int32_t id, StreamLog&) {
    Head h;
    h.status = 200;
    p.server.SubmitResponse(id, h, false);
    p.server.SendData(id, std::string(512 * 1024, 'x'), true);
  };
  Head req;
  req.method = "GET";
  req.path = "/big";
  req.authority = "svc";
  int32_t id = p.client.SubmitRequest(req, true);
  Pump(p.client, p.server);
  CHECK(p.client_rec.streams[id].body.size() == 64 * 1024);
  CHECK(p.server.QueuedBytes(id) == 512 * 1024 - 64 * 1024);
  for (int i = 0; i < 100 && !p.client_rec.streams[id].closed; ++i) {
    p.client.Consume(id, p.client_rec.streams[id].body.size());
    Pump(p.client, p.server);
  }
  CHECK(p.client_rec.streams[id].body.size() == 512 * 1024);
  CHECK(p.server.QueuedBytes(id) == 0);
}

TEST_CASE("h2: the client honours the server's SETTINGS_MAX_CONCURRENT_STREAMS") {
  Options so;
  so.max_concurrent_streams = 2;
  Pair p({}, so);
  p.server_rec.on_end = nullptr;  // requests stay open until answered below
  Pump(p.client, p.server);       // SETTINGS exchanged
  Head req;
  req.method = "GET";
  req.path = "/";
  req.authority = "svc";
  REQUIRE(p.client.CanOpenStream());
  int32_t a = p.client.SubmitRequest(req, true);
  int32_t b = p.client.SubmitRequest(req, true);
  CHECK(a > 0);
  CHECK(b > 0);
  CHECK_FALSE(p.client.CanOpenStream());
  CHECK(p.client.SubmitRequest(req, true) == -1);
  Pump(p.client, p.server);
  Head resp;
  resp.status = 204;
  REQUIRE(p.server.SubmitResponse(a, resp, true));
  Pump(p.client, p.server);
  CHECK(p.client_rec.streams[a].closed);
  CHECK(p.client.CanOpenStream());
  CHECK(p.server.stats().refused_streams == 0);

  // Graceful shutdown: no new streams, the open one finishes.
  p.server.GracefulShutdown();
  Pump(p.client, p.server);
  CHECK_FALSE(p.client.CanOpenStream());
  REQUIRE(p.server.SubmitResponse(b, resp, true));
  Pump(p.client, p.server);
  CHECK(p.client_rec.streams[b].status == 204);
  CHECK(p.server.Done());
}

// ---- third-party clients over loopback --------------------------------------------

namespace {

// The server role on a loopback port, a thread per connection, each a plain poll loop:
// read -> Receive, PendingOutput -> write.
class LoopbackServer {
 public:
  LoopbackServer() {
    lfd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(bind(lfd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(listen(lfd_, 64) == 0);
    socklen_t len = sizeof a;
    getsockname(lfd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    acceptor_ = std::thread([this] { Accept(); });
  }
  ~LoopbackServer() {
    stop_ = true;
    acceptor_.join();
    for (auto& t : conns_)
      t.join();
    close(lfd_);
  }
  int port() const { return port_; }
  std::atomic<uint64_t> requests{0}, goaways{0}, resets{0};

 private:
  void Accept() {
    while (!stop_) {
      pollfd p{lfd_, POLLIN, 0};
      if (poll(&p, 1, 50) <= 0)
        continue;
      int fd = accept4(lfd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd >= 0)
        conns_.emplace_back([this, fd] { Serve(fd); });
    }
  }
  void Serve(int fd) {
    EchoApp app;
    Session s(Role::kServer, &app);
    app.session = &s;
    auto on_end = app.on_end;
    app.on_end = [&](int32_t id, StreamLog& log) {
      ++requests;
      on_end(id, log);
    };
    char buf[65536];
    while (!stop_) {
      std::string_view out = s.PendingOutput();
      if (!out.empty()) {
        ssize_t n = send(fd, out.data(), out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0)
          s.ConsumeOutput(static_cast<std::size_t>(n));
        else if (errno != EAGAIN)
          break;
      } else if (s.Done()) {
        break;
      }
      pollfd p{fd, static_cast<short>(POLLIN | (s.PendingOutput().empty() ? 0 : POLLOUT)), 0};
      if (poll(&p, 1, 50) <= 0 || !(p.revents & (POLLIN | POLLHUP | POLLERR)))
        continue;
      ssize_t n = read(fd, buf, sizeof buf);
      if (n <= 0) {
        s.ReceiveEof();
        break;
      }
      s.Receive(std::string_view(buf, static_cast<std::size_t>(n)));
    }
    goaways += s.stats().goaways_sent;
    resets += s.stats().resets_sent;
    close(fd);
  }

  int lfd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread acceptor_;
  std::vector<std::thread> conns_;
};

std::string Run(const std::string& cmd) {
  std::string out;
  FILE* f = popen((cmd + " 2>&1").c_str(), "r");
  REQUIRE(f);
  char buf[4096];
  std::size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0)
    out.append(buf, n);
  pclose(f);
  return out;
}

bool Contains(const std::string& hay, std::string_view needle) {
  return hay.find(needle) != std::string::npos;
}

}  // namespace

TEST_CASE("h2: curl with prior knowledge gets a response from the server role") {
  LoopbackServer srv;
  std::string url = "http://127.0.0.1:" + std::to_string(srv.port());
  std::string out = Run("curl -sS --http2-prior-knowledge -D - " + url + "/hello");
  INFO(out);
  CHECK(Contains(out, "HTTP/2 200"));
  CHECK(Contains(out, "x-path: /hello"));
  CHECK(Contains(out, "hello\n"));
  CHECK(srv.requests == 1);
}

TEST_CASE("h2: nghttp sends a GET and a 1 MiB POST, trailers and the echo come back") {
  LoopbackServer srv;
  std::string url = "http://127.0.0.1:" + std::to_string(srv.port());
  std::string out = Run("nghttp -nv " + url + "/get");
  INFO(out);
  CHECK(Contains(out, ":status: 200"));
  CHECK(Contains(out, "grpc-status: 0"));  // the trailers
  CHECK(Contains(out, "x-received-bytes: 0"));

  // 1 MiB through the 64 KiB stream window: it only completes if the consumption
  // opens the window again, and the 1 MiB echo goes through nghttp's windows.
  std::string path = "/tmp/sluice-h2-post-" + std::to_string(getpid());
  {
    std::ofstream f(path, std::ios::binary);
    for (int i = 0; i < (1 << 20); ++i)
      f.put(static_cast<char>('a' + i % 26));
  }
  std::string post = Run("nghttp -v -d " + path + " " + url + "/echo | grep -v DATA");
  std::string body = Run("nghttp -d " + path + " " + url + "/echo | md5sum; md5sum < " + path);
  std::remove(path.c_str());
  INFO(post);
  CHECK(Contains(post, ":method: POST"));
  CHECK(Contains(post, "x-received-bytes: 1048576"));
  CHECK(Contains(post, "grpc-status: 0"));
  INFO(body);
  auto nl = body.find('\n');
  REQUIRE(nl != std::string::npos);
  CHECK(body.substr(0, 32) == body.substr(nl + 1, 32));  // the echo is the same bytes
  CHECK(srv.resets == 0);
}

TEST_CASE("h2: h2load multiplexes 2000 requests over 4 connections") {
  LoopbackServer srv;
  std::string url = "http://127.0.0.1:" + std::to_string(srv.port()) + "/load";
  std::string out = Run("h2load -n 2000 -c 4 -m 20 " + url);
  INFO(out);
  CHECK(Contains(out, "2000 succeeded, 0 failed, 0 errored"));
  CHECK(srv.requests == 2000);
}

TEST_CASE("h2: client trailers reach the server, a 1xx head comes before the final one") {
  Pair p;
  p.server_rec.on_end = [&p](int32_t id, StreamLog&) {
    Head interim;
    interim.status = 103;
    interim.fields = {{"link", "</a.css>; rel=preload"}};
    REQUIRE(p.server.SubmitResponse(id, interim, false));
    Head h;
    h.status = 101;
    CHECK_FALSE(p.server.SubmitResponse(id, h, false));  // no 101 in HTTP/2
    h.status = 200;
    REQUIRE(p.server.SubmitResponse(id, h, true));
    CHECK_FALSE(p.server.SubmitResponse(id, h, true));  // one final head
  };
  Head req;
  req.method = "POST";
  req.path = "/pkg.Service/Method";
  req.authority = "grpc.svc";
  req.fields = {{"content-type", "application/grpc"}, {"te", "trailers"}};
  int32_t id = p.client.SubmitRequest(req, false);
  REQUIRE(p.client.SendData(id, std::string("\0\0\0\0\5hello", 10), false));
  REQUIRE(p.client.SendTrailers(id, {{"x-checksum", "42"}}));
  Pump(p.client, p.server);
  const StreamLog& s = p.server_rec.streams.at(id);
  CHECK(s.body.size() == 10);
  REQUIRE(s.trailers.size() == 1);
  CHECK(s.trailers[0].second == "42");
  const StreamLog& r = p.client_rec.streams.at(id);
  CHECK(r.heads == 2);  // 103, then 200
  CHECK(r.status == 200);
  CHECK(r.trailers.empty());
  CHECK(r.closed);
  CHECK(r.close_code == 0);
}

// ---- the client role against a third-party server -----------------------------------

namespace {

// nginx serving h2c by prior knowledge on a loopback port, from a private prefix that
// is removed afterwards; the process is ours and stopped by its pid.
class Nginx {
 public:
  explicit Nginx(uint32_t max_streams) {
    char tmpl[] = "/tmp/sluice-h2-nginx-XXXXXX";
    REQUIRE(mkdtemp(tmpl));
    dir_ = tmpl;
    REQUIRE(system(("mkdir -p " + dir_ + "/www").c_str()) == 0);
    {
      std::ofstream big(dir_ + "/www/big", std::ios::binary);
      for (int i = 0; i < (1 << 20); ++i)
        big.put(static_cast<char>('a' + i % 23));
    }
    port_ = FreePort();
    std::ofstream conf(dir_ + "/nginx.conf");
    conf
        << "daemon off; master_process off; worker_processes 1;\n"
        << "pid " << dir_ << "/nginx.pid; error_log " << dir_ << "/error.log;\n"
        << "events { worker_connections 64; }\n"
        << "http { access_log off; client_body_temp_path " << dir_ << "; proxy_temp_path " << dir_
        << "; fastcgi_temp_path " << dir_ << "; uwsgi_temp_path " << dir_ << "; scgi_temp_path "
        << dir_ << ";\n"
        << "  server { listen 127.0.0.1:" << port_ << " http2; http2_max_concurrent_streams "
        << max_streams << "; root " << dir_ << "/www;\n"
        << "    location = /hello { add_header x-served-by nginx; return 200 \"hello\\n\"; } } }\n";
    conf.close();
    pid_ = fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      execlp("nginx", "nginx", "-p", dir_.c_str(), "-e", (dir_ + "/error.log").c_str(), "-c",
             (dir_ + "/nginx.conf").c_str(), nullptr);
      _exit(127);
    }
    for (int i = 0; i < 100; ++i) {  // up within 5 s
      int fd = Connect();
      if (fd >= 0) {
        close(fd);
        return;
      }
      usleep(50'000);
    }
    FAIL("nginx did not start: " << Run("cat " + dir_ + "/error.log"));
  }
  ~Nginx() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      waitpid(pid_, nullptr, 0);
    }
    std::string rm = "rm -rf " + dir_;
    if (system(rm.c_str()) != 0) {
    }
  }
  int Connect() const {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<uint16_t>(port_));
    if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      close(fd);
      return -1;
    }
    return fd;
  }
  std::string Big() const { return Run("cat " + dir_ + "/www/big"); }

 private:
  static int FreePort() {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t len = sizeof a;
    getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    close(fd);
    return ntohs(a.sin_port);
  }
  std::string dir_;
  int port_ = 0;
  pid_t pid_ = -1;
};

// Drives a client session on a socket until `done` or 10 s.
void Drive(int fd, Session& s, const std::function<bool()>& done) {
  char buf[65536];
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!done() && std::chrono::steady_clock::now() < deadline) {
    std::string_view out = s.PendingOutput();
    if (!out.empty()) {
      ssize_t n = send(fd, out.data(), out.size(), MSG_NOSIGNAL);
      REQUIRE(n > 0);
      s.ConsumeOutput(static_cast<std::size_t>(n));
      continue;
    }
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 50) <= 0)
      continue;
    ssize_t n = read(fd, buf, sizeof buf);
    REQUIRE(n > 0);
    REQUIRE(s.Receive(std::string_view(buf, static_cast<std::size_t>(n))));
  }
}

}  // namespace

TEST_CASE(
    "h2: our client role against nginx, 1 MiB through flow control, streams under its limit") {
  Nginx nginx(4);
  int fd = nginx.Connect();
  REQUIRE(fd >= 0);
  Recorder rec;
  Session s(Role::kClient, &rec);
  rec.session = &s;

  Head get;
  get.method = "GET";
  get.authority = "nginx.test";
  get.path = "/big";
  int32_t big = s.SubmitRequest(get, true);
  REQUIRE(big > 0);
  Drive(fd, s, [&] { return rec.streams[big].closed; });
  const StreamLog& r = rec.streams[big];
  CHECK(r.status == 200);
  CHECK(r.close_code == 0);
  CHECK(r.body.size() == (1u << 20));
  CHECK(r.body == nginx.Big());

  // nginx says SETTINGS_MAX_CONCURRENT_STREAMS 4: ten requests go four at a time.
  get.path = "/hello";
  int done = 0;
  std::size_t most_open = 0;
  std::vector<int32_t> ids;
  rec.on_end = [&](int32_t, StreamLog&) { ++done; };
  Drive(fd, s, [&] {
    while (ids.size() < 10 && s.CanOpenStream()) {
      ids.push_back(s.SubmitRequest(get, true));
      most_open = std::max(most_open, s.open_streams());
    }
    return done == 10;
  });
  CHECK(done == 10);
  CHECK(most_open == 4);
  for (int32_t id : ids) {
    CHECK(rec.streams[id].body == "hello\n");
    CHECK(rec.streams[id].Field("x-served-by") == "nginx");
  }
  close(fd);
}
