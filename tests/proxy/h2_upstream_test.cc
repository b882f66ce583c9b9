// HTTP/2 upstreams (issue 18): a real Proxy on loopback sends HTTP/1.1 clients' requests
// to clusters that say HTTP/2 (typed_extension_protocol_options HttpProtocolOptions,
// the deprecated http2_protocol_options), against h2-only servers: nginx in h2c, and a
// scripted server on the project's own HTTP/2 layer (h2::Session, server role) that
// counts connections and concurrent streams, holds responses, sends trailers, resets
// streams and closes connections. Clients are raw sockets and curl.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "harness.h"
#include "sluice/proxy/h2_session.h"

using namespace sluice::testing;
namespace h2 = sluice::proxy::h2;

namespace {

std::string RunCmd(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p)
    return out;
  char buf[4096];
  std::size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0)
    out.append(buf, n);
  pclose(p);
  return out;
}

// ---- a scripted HTTP/2 server (h2c, prior knowledge) on the project's own h2 layer

struct Req {
  std::string method, path, authority;
  std::vector<std::pair<std::string, std::string>> fields, trailers;
  std::string body;
  std::string Field(const std::string& n) const {
    for (auto& [k, v] : fields)
      if (k == n)
        return v;
    return {};
  }
};

class H2Server {
 public:
  // The answer to a complete request: the server calls it on its own thread.
  struct Conn;
  H2Server() {
    lfd_ = ListenLoopback(128, &port_);
    thread_ = std::thread([this] { Loop(); });
  }
  ~H2Server() {
    stop_ = true;
    thread_.join();
    close(lfd_);
  }
  uint16_t port() const { return port_; }
  int accepted() const { return accepted_.load(); }
  int requests() const { return requests_.load(); }
  int max_open() const { return max_open_.load(); }  // most streams open on one connection
  int closed() const { return closed_.load(); }      // connections ended (by either side)
  int goaways() const { return goaways_.load(); }    // GOAWAYs received on those
  // Responses to /hold wait until this many are held (or 3 s pass).
  std::atomic<int> hold_target{0};
  std::vector<Req> seen() {
    std::lock_guard<std::mutex> l(mu_);
    return seen_;
  }

  struct Conn : h2::Handler {
    H2Server* srv = nullptr;
    int fd = -1;
    std::unique_ptr<h2::Session> s;
    std::map<int32_t, Req> reqs;
    std::set<int32_t> open;
    bool close_now = false;
    void OnHead(int32_t id, const h2::Head& h, bool end) override {
      Req& r = reqs[id];
      r.method = h.method;
      r.path = h.path;
      r.authority = h.authority;
      for (auto& f : h.fields)
        r.fields.emplace_back(std::string(f.name), std::string(f.value));
      open.insert(id);
      srv->max_open_ = std::max<int>(srv->max_open_.load(), static_cast<int>(open.size()));
      if (end)
        srv->Answer(*this, id);
    }
    void OnData(int32_t id, std::string_view d, bool end) override {
      reqs[id].body.append(d);
      if (!d.empty())
        s->Consume(id, d.size());
      if (end)
        srv->Answer(*this, id);
    }
    void OnTrailers(int32_t id, const h2::Head& t) override {
      for (auto& f : t.fields)
        reqs[id].trailers.emplace_back(std::string(f.name), std::string(f.value));
      srv->Answer(*this, id);
    }
    void OnStreamClose(int32_t id, uint32_t) override {
      open.erase(id);
      reqs.erase(id);
    }
  };

 private:
  struct Held {
    Conn* c;
    int32_t id;
  };

  void Respond(Conn& c, int32_t id, int status, const std::string& body,
               std::vector<h2::Field> fields = {}) {
    h2::Head h;
    h.status = status;
    h.fields = std::move(fields);
    std::string len = std::to_string(body.size());
    h.fields.push_back({"content-length", len});
    c.s->SubmitResponse(id, h, body.empty());
    if (!body.empty())
      c.s->SendData(id, body, true);
  }

  void Answer(Conn& c, int32_t id) {
    ++requests_;
    Req r = c.reqs[id];
    {
      std::lock_guard<std::mutex> l(mu_);
      seen_.push_back(r);
    }
    const std::string p = r.path.substr(0, r.path.find('?'));
    if (p == "/hold") {
      held_.push_back({&c, id});
      return;
    }
    if (p == "/delay") {
      delayed_.push_back(
          {{&c, id}, std::chrono::steady_clock::now() + std::chrono::milliseconds(30)});
      return;
    }
    if (p == "/echo") {
      std::string b = r.method + " " + r.path + " " + r.authority + " te=" + r.Field("te") +
                      " host=" + r.Field("host") + " conn=" + r.Field("connection") +
                      " xff=" + r.Field("x-forwarded-for") + " body=" + r.body;
      Respond(c, id, 200, b, {{"x-h2-server", "yes"}});
      return;
    }
    if (p == "/grpc") {
      h2::Head h;
      h.status = 200;
      h.fields = {{"content-type", "application/grpc"}};
      c.s->SubmitResponse(id, h, false);
      c.s->SendData(id, std::string("\0\0\0\0\3abc", 8), false);
      c.s->SendTrailers(id, {{"grpc-status", "0"}, {"grpc-message", "fine"}});
      return;
    }
    if (p == "/grpc-only") {
      h2::Head h;
      h.status = 200;
      h.fields = {{"content-type", "application/grpc"},
                  {"grpc-status", "14"},
                  {"grpc-message", "unavailable"}};
      c.s->SubmitResponse(id, h, true);
      return;
    }
    if (p == "/nolength") {
      h2::Head h;
      h.status = 200;
      c.s->SubmitResponse(id, h, false);
      c.s->SendData(id, "part1-", false);
      c.s->SendData(id, "part2", true);
      return;
    }
    if (p == "/reset") {
      c.s->ResetStream(id, h2::kInternalError);
      return;
    }
    if (p == "/refuse") {
      c.s->ResetStream(id, h2::kRefusedStream);  // not processed: safe to retry
      return;
    }
    if (p == "/flaky") {
      if (flaky_++ == 0)
        c.s->ResetStream(id, h2::kInternalError);
      else
        Respond(c, id, 200, "second try");
      return;
    }
    if (p == "/close") {
      c.close_now = true;
      return;
    }
    if (p == "/goaway") {
      // GOAWAY naming no stream (last-stream-id 0): this one was refused.
      c.s->Terminate(h2::kNoError);
      return;
    }
    Respond(c, id, 200, "ok " + p);
  }

  void Loop() {
    std::vector<std::unique_ptr<Conn>> conns;
    char buf[65536];
    auto hold_since = std::chrono::steady_clock::now();
    while (!stop_) {
      std::vector<pollfd> pfds;
      pfds.push_back({lfd_, POLLIN, 0});
      for (auto& c : conns)
        pfds.push_back(
            {c->fd, static_cast<short>(POLLIN | (c->s->PendingOutput().empty() ? 0 : POLLOUT)), 0});
      poll(pfds.data(), pfds.size(), 5);
      if (pfds[0].revents & POLLIN) {
        int fd = accept4(lfd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd >= 0) {
          ++accepted_;
          auto c = std::make_unique<Conn>();
          c->srv = this;
          c->fd = fd;
          h2::Options o;
          o.max_concurrent_streams = max_streams_setting;
          c->s = std::make_unique<h2::Session>(h2::Role::kServer, c.get(), o);
          conns.push_back(std::move(c));
        }
      }
      for (std::size_t i = 0; i < conns.size(); ++i) {
        Conn& c = *conns[i];
        if (i + 1 < pfds.size() && (pfds[i + 1].revents & (POLLIN | POLLHUP | POLLERR))) {
          ssize_t n = recv(c.fd, buf, sizeof buf, 0);
          if (n > 0)
            c.s->Receive(std::string_view(buf, static_cast<std::size_t>(n)));
          else if (n == 0 || errno != EAGAIN)
            c.close_now = true;
        }
      }
      // Held responses go when enough are held, or after 3 s.
      if (held_.empty())
        hold_since = std::chrono::steady_clock::now();
      if (!held_.empty() &&
          (static_cast<int>(held_.size()) >= hold_target.load() ||
           std::chrono::steady_clock::now() - hold_since > std::chrono::seconds(3))) {
        for (auto& h : held_)
          if (h.c->open.count(h.id))
            Respond(*h.c, h.id, 200, "held");
        held_.clear();
      }
      auto now = std::chrono::steady_clock::now();
      for (std::size_t i = 0; i < delayed_.size();) {
        if (delayed_[i].second <= now) {
          if (delayed_[i].first.c->open.count(delayed_[i].first.id))
            Respond(*delayed_[i].first.c, delayed_[i].first.id, 200, "delayed");
          delayed_.erase(delayed_.begin() + static_cast<std::ptrdiff_t>(i));
        } else {
          ++i;
        }
      }
      for (auto& c : conns) {
        std::string_view out = c->s->PendingOutput();
        while (!out.empty()) {
          ssize_t n = send(c->fd, out.data(), out.size(), MSG_NOSIGNAL);
          if (n <= 0)
            break;
          c->s->ConsumeOutput(static_cast<std::size_t>(n));
          out = c->s->PendingOutput();
        }
      }
      for (std::size_t i = 0; i < conns.size();) {
        Conn* c = conns[i].get();
        if (c->close_now || c->s->Done()) {
          goaways_ += static_cast<int>(c->s->stats().goaways_received);
          ++closed_;
          std::erase_if(held_, [c](const Held& h) { return h.c == c; });
          std::erase_if(delayed_, [c](const auto& d) { return d.first.c == c; });
          close(c->fd);
          conns.erase(conns.begin() + static_cast<std::ptrdiff_t>(i));
        } else {
          ++i;
        }
      }
    }
    for (auto& c : conns)
      close(c->fd);
  }

 public:
  uint32_t max_streams_setting = 100;

 private:
  int lfd_ = -1;
  uint16_t port_ = 0;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<int> accepted_{0}, requests_{0}, max_open_{0}, closed_{0}, goaways_{0};
  std::vector<Held> held_;
  std::vector<std::pair<Held, std::chrono::steady_clock::time_point>> delayed_;
  int flaky_ = 0;
  std::mutex mu_;
  std::vector<Req> seen_;
};

// nginx serving h2c by prior knowledge (and, on a second port, HTTP/1.1), logging each
// request's connection serial number and protocol; a private prefix removed afterwards.
class Nginx {
 public:
  // huge: also /huge, 32 MiB.
  explicit Nginx(bool huge = false) {
    char tmpl[] = "/tmp/sluice-h2up-nginx-XXXXXX";
    REQUIRE(mkdtemp(tmpl));
    dir_ = tmpl;
    REQUIRE(system(("mkdir -p " + dir_ + "/www").c_str()) == 0);
    {
      std::ofstream big(dir_ + "/www/big", std::ios::binary);
      for (int i = 0; i < (1 << 20); ++i)
        big.put(static_cast<char>('a' + i % 23));
    }
    if (huge) {
      std::ofstream f(dir_ + "/www/huge", std::ios::binary);
      for (int i = 0; i < (32 << 20); ++i)
        f.put(static_cast<char>('a' + i % 19));
    }
    h2_port_ = FreeLoopbackPort();
    h1_port_ = FreeLoopbackPort();
    std::ofstream conf(dir_ + "/nginx.conf");
    conf
        << "daemon off; master_process off; worker_processes 1;\n"
        << "pid " << dir_ << "/nginx.pid; error_log " << dir_ << "/error.log;\n"
        << "events { worker_connections 256; }\n"
        << "http { log_format c '$connection $server_protocol $request';\n"
        << "  access_log " << dir_ << "/access.log c;\n"
        << "  client_body_temp_path " << dir_ << "; proxy_temp_path " << dir_
        << "; fastcgi_temp_path " << dir_ << "; uwsgi_temp_path " << dir_ << "; scgi_temp_path "
        << dir_ << ";\n"
        << "  server { listen 127.0.0.1:" << h2_port_ << " http2; listen 127.0.0.1:" << h1_port_
        << "; root " << dir_ << "/www;\n"
        << "    location = /hello { add_header x-served-by nginx; return 200 \"hello\\n\"; } } }\n";
    conf.close();
    pid_ = fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      execlp("nginx", "nginx", "-p", dir_.c_str(), "-e", (dir_ + "/error.log").c_str(), "-c",
             (dir_ + "/nginx.conf").c_str(), nullptr);
      _exit(127);
    }
    for (int i = 0; i < 100; ++i) {
      int fd = Connect(h2_port_);
      if (fd >= 0) {
        close(fd);
        return;
      }
      usleep(50'000);
    }
    FAIL("nginx did not start: " << RunCmd("cat " + dir_ + "/error.log"));
  }
  ~Nginx() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      waitpid(pid_, nullptr, 0);
    }
    RunCmd("rm -rf " + dir_);
  }
  uint16_t h2_port() const { return h2_port_; }
  uint16_t h1_port() const { return h1_port_; }
  std::string Big() const { return RunCmd("cat " + dir_ + "/www/big"); }
  // Access log lines (nginx writes them as each request ends).
  std::vector<std::string> Log() const {
    std::ifstream f(dir_ + "/access.log");
    std::vector<std::string> v;
    std::string l;
    while (std::getline(f, l))
      v.push_back(l);
    return v;
  }

 private:
  std::string dir_;
  uint16_t h2_port_ = 0, h1_port_ = 0;
  pid_t pid_ = -1;
};

Json H2Options(const Json& h2opts = Json::object()) {
  return {{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
           {{"@type", "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"},
            {"explicit_http_config", {{"http2_protocol_options", h2opts}}}}}};
}

Json Doc(const Json& cluster, const Json& route_extra = Json::object()) {
  Json action = {{"cluster", cluster["name"]}, {"timeout", "5s"}};
  for (auto& [k, v] : route_extra.items())
    action[k] = v;
  return {{"listeners", Json::array({HttpListener("http", "rc")})},
          {"routes", Json::array({RouteConfig(
                         "rc", Json::array({{{"match", {{"prefix", "/"}}}, {"route", action}}}))})},
          {"clusters", Json::array({cluster})}};
}

Json H2Cluster(uint16_t port, const Json& h2opts = Json::object(),
               const Json& thresholds = Json()) {
  Json c = StaticCluster("h2c", {port});
  c["typed_extension_protocol_options"] = H2Options(h2opts);
  if (!thresholds.is_null())
    c["circuit_breakers"] = {{"thresholds", Json::array({thresholds})}};
  return c;
}

// `n` clients at once, each one GET on its own connection; their responses.
std::vector<Resp> Concurrent(uint16_t port, const std::string& path, int n) {
  std::vector<int> fds;
  for (int i = 0; i < n; ++i) {
    int fd = Connect(port);
    REQUIRE(fd >= 0);
    std::string raw = "GET " + path + " HTTP/1.1\r\nhost: svc\r\nconnection: close\r\n\r\n";
    send(fd, raw.data(), raw.size(), MSG_NOSIGNAL);
    fds.push_back(fd);
  }
  std::vector<Resp> out;
  for (int fd : fds) {
    std::string buf;
    auto v = ReadResponses(fd, buf, 1, 8000);
    out.push_back(v.empty() ? Resp{} : v[0]);
    close(fd);
  }
  return out;
}

std::string RawExchange(uint16_t port, const std::string& raw) {
  int fd = Connect(port);
  send(fd, raw.data(), raw.size(), MSG_NOSIGNAL);
  std::string got;
  char buf[65536];
  auto end = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (std::chrono::steady_clock::now() < end) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 200) <= 0)
      continue;
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0)
      break;
    got.append(buf, static_cast<std::size_t>(n));
  }
  close(fd);
  return got;
}

}  // namespace

TEST_CASE("h2 upstream: curl over HTTP/1.1 to an h2-only nginx, 200 and the body, 1 MiB") {
  Nginx nginx;
  auto rp = StartProxy(Doc(H2Cluster(nginx.h2_port())));
  REQUIRE(rp->error.empty());
  const std::string url = "http://127.0.0.1:" + std::to_string(rp->Port());
  std::string out = RunCmd("curl -s -i --http1.1 " + url + "/hello");
  INFO(out);
  CHECK(out.rfind("HTTP/1.1 200", 0) == 0);
  CHECK(out.find("x-served-by: nginx") != std::string::npos);
  CHECK(out.find("\r\n\r\nhello\n") != std::string::npos);
  // 1 MiB through the stream's flow control, byte for byte.
  std::string big = RunCmd("curl -s --http1.1 " + url + "/big");
  CHECK(big.size() == (1u << 20));
  CHECK(big == nginx.Big());
  // nginx saw HTTP/2, both on one connection.
  REQUIRE(WaitFor([&] { return nginx.Log().size() >= 2; }));
  auto log = nginx.Log();
  INFO(log[0] << " | " << log[1]);
  CHECK(log[0].find("HTTP/2.0 GET /hello HTTP/2.0") != std::string::npos);
  CHECK(log[0].substr(0, log[0].find(' ')) == log[1].substr(0, log[1].find(' ')));
  CHECK(rp->proxy->stats().upstream_cx_http2.load() == 1);
  CHECK(rp->proxy->stats().upstream_rq_http2.load() == 2);
}

TEST_CASE("h2 upstream: the request head and bodies are translated (authority, no hop-by-hop)") {
  H2Server srv;
  auto rp = StartProxy(Doc(H2Cluster(srv.port())));
  REQUIRE(rp->error.empty());
  Client c(rp->Port());
  Resp r = c.Request(
      "POST /echo?x=1 HTTP/1.1\r\nhost: svc.test:8080\r\nte: trailers\r\ncontent-length: "
      "5\r\n\r\nhello");
  INFO(r.body);
  CHECK(r.status == 200);
  CHECK(r.Header("x-h2-server") == "yes");
  // te: trailers goes on (the one TE value Envoy forwards; gRPC servers require it).
  CHECK(r.body.rfind("POST /echo?x=1 svc.test:8080 te=trailers host= conn= xff=127.0.0.1", 0) == 0);
  CHECK(r.body.find("body=hello") != std::string::npos);
  // A chunked request body goes as DATA; the response comes on the same client connection.
  r = c.Request(
      "PUT /echo HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: "
      "chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n");
  CHECK(r.status == 200);
  CHECK(r.body.find("body=abcdefg") != std::string::npos);
  // Its trailers end the stream as HTTP/2 trailers (a gRPC-over-HTTP/2 client's request
  // trailers come to the engine this way too).
  r = c.Request(
      "POST /echo HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: chunked\r\n\r\n3\r\nxyz\r\n"
      "0\r\nx-checksum:  abc \r\nx-second: 2\r\n\r\n");
  CHECK(r.status == 200);
  CHECK(r.body.find("body=xyz") != std::string::npos);
  auto seen = srv.seen();
  REQUIRE(!seen.empty());
  CHECK(seen.back().body == "xyz");
  CHECK(seen.back().trailers ==
        std::vector<std::pair<std::string, std::string>>{{"x-checksum", "abc"}, {"x-second", "2"}});
  // A response without content-length reaches the HTTP/1.1 client chunked.
  r = c.Get("svc", "/nolength");
  CHECK(r.status == 200);
  CHECK(r.Header("transfer-encoding") == "chunked");
  CHECK(r.body == "part1-part2");
  CHECK(srv.accepted() == 1);
}

TEST_CASE("h2 upstream: 20 concurrent requests share one connection") {
  H2Server srv;
  srv.hold_target = 20;
  auto rp = StartProxy(Doc(H2Cluster(srv.port())));
  REQUIRE(rp->error.empty());
  auto rs = Concurrent(rp->Port(), "/hold", 20);
  for (auto& r : rs)
    CHECK(r.status == 200);
  CHECK(srv.accepted() == 1);
  CHECK(srv.max_open() == 20);
}

TEST_CASE("h2 upstream: max_concurrent_streams 2 opens more connections, as Envoy") {
  H2Server srv;
  srv.hold_target = 20;
  auto rp = StartProxy(Doc(H2Cluster(srv.port(), {{"max_concurrent_streams", 2}})));
  REQUIRE(rp->error.empty());
  auto rs = Concurrent(rp->Port(), "/hold", 20);
  for (auto& r : rs)
    CHECK(r.status == 200);
  CHECK(srv.accepted() == 10);
  CHECK(srv.max_open() == 2);
}

TEST_CASE("h2 upstream: at max_connections, requests wait for a stream slot") {
  H2Server srv;
  auto rp = StartProxy(Doc(H2Cluster(srv.port(), {{"max_concurrent_streams", 2}},
                                     {{"max_connections", 1}, {"max_pending_requests", 100}})));
  REQUIRE(rp->error.empty());
  auto rs = Concurrent(rp->Port(), "/delay", 20);
  for (auto& r : rs) {
    CHECK(r.status == 200);
    CHECK(r.body == "delayed");
  }
  CHECK(srv.accepted() == 1);
  CHECK(srv.max_open() == 2);
}

TEST_CASE("h2 upstream: the server's SETTINGS_MAX_CONCURRENT_STREAMS bounds a connection") {
  H2Server srv;
  srv.max_streams_setting = 3;
  auto rp = StartProxy(Doc(H2Cluster(srv.port(), Json::object(),
                                     {{"max_connections", 1}, {"max_pending_requests", 100}})));
  REQUIRE(rp->error.empty());
  // One request first, so the server's SETTINGS are known before the burst.
  CHECK(Get(rp->Port(), "svc", "/x").status == 200);
  auto rs = Concurrent(rp->Port(), "/delay", 12);
  for (auto& r : rs)
    CHECK(r.status == 200);
  CHECK(srv.accepted() == 1);
  CHECK(srv.max_open() <= 3);
}

TEST_CASE("h2 upstream: max_requests bounds concurrent streams (503 UO)") {
  H2Server srv;
  srv.hold_target = 100;  // held until the 3 s timeout: the 4 streams are all open at once
  auto rp = StartProxy(Doc(H2Cluster(srv.port(), Json::object(), {{"max_requests", 4}})));
  REQUIRE(rp->error.empty());
  auto rs = Concurrent(rp->Port(), "/hold", 12);
  int ok = 0, overflow = 0;
  for (auto& r : rs) {
    if (r.status == 200)
      ++ok;
    else if (r.status == 503 && r.body.find("overflow") != std::string::npos &&
             r.Header("x-envoy-overloaded") == "true")
      ++overflow;
  }
  CHECK(ok == 4);
  CHECK(overflow == 8);
  CHECK(srv.max_open() == 4);
  CHECK(srv.accepted() == 1);
}

TEST_CASE("h2 upstream: trailers reach an HTTP/1.1 client as chunked trailers") {
  H2Server srv;
  auto rp = StartProxy(Doc(H2Cluster(srv.port())));
  REQUIRE(rp->error.empty());
  std::string raw =
      RawExchange(rp->Port(),
                  "POST /grpc HTTP/1.1\r\nhost: svc\r\ncontent-type: application/grpc\r\nte: "
                  "trailers\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
  INFO(raw);
  CHECK(raw.rfind("HTTP/1.1 200", 0) == 0);
  CHECK(raw.find("transfer-encoding: chunked\r\n") != std::string::npos);
  CHECK(raw.find(std::string(
            "8\r\n\0\0\0\0\3abc\r\n0\r\ngrpc-status: 0\r\ngrpc-message: fine\r\n\r\n", 36)) !=
        std::string::npos);
  // curl --raw shows the same.
  std::string out =
      RunCmd("curl -s --raw -i --http1.1 -X POST -H 'te: trailers' http://127.0.0.1:" +
             std::to_string(rp->Port()) + "/grpc");
  CHECK(out.find("grpc-status: 0") != std::string::npos);
}

TEST_CASE("h2 upstream: a gRPC trailers-only reply keeps grpc-status in its head") {
  H2Server srv;
  auto rp = StartProxy(Doc(H2Cluster(srv.port())));
  REQUIRE(rp->error.empty());
  Resp r = SendRaw(rp->Port(),
                   "POST /grpc-only HTTP/1.1\r\nhost: svc\r\ncontent-type: "
                   "application/grpc\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
  CHECK(r.status == 200);
  CHECK(r.Header("grpc-status") == "14");
  CHECK(r.Header("grpc-message") == "unavailable");
  CHECK(r.Header("content-length") == "0");
}

TEST_CASE("h2 upstream: a stream reset or a closed connection fails as a reset, retried") {
  H2Server srv;
  Json retry = {{"retry_policy", {{"retry_on", "reset"}, {"num_retries", 1}}}};
  auto rp = StartProxy(Doc(H2Cluster(srv.port()), retry));
  REQUIRE(rp->error.empty());
  // Reset before the head: retried once, then 503.
  Resp r = Get(rp->Port(), "svc", "/reset");
  CHECK(r.status == 503);
  CHECK(r.body.find("reset") != std::string::npos);
  // Reset the first time, answered the second: the client sees only the answer.
  r = Get(rp->Port(), "svc", "/flaky");
  CHECK(r.status == 200);
  CHECK(r.body == "second try");
  // The connection closed mid-stream: every stream on it fails.
  r = Get(rp->Port(), "svc", "/close");
  CHECK(r.status == 503);
  // GOAWAY: the stream fails, the next request gets a new connection.
  int before = srv.accepted();
  r = Get(rp->Port(), "svc", "/goaway");
  CHECK(r.status == 503);
  r = Get(rp->Port(), "svc", "/after");
  CHECK(r.status == 200);
  CHECK(r.body == "ok /after");
  CHECK(srv.accepted() > before);
}

TEST_CASE("h2 upstream: a refused stream is retried under refused-stream (istiod's default)") {
  H2Server srv;
  Json retry = {{"retry_policy", {{"retry_on", "refused-stream"}, {"num_retries", 1}}}};
  auto rp = StartProxy(Doc(H2Cluster(srv.port()), retry));
  REQUIRE(rp->error.empty());
  // Every attempt is refused (RST_STREAM REFUSED_STREAM): two attempts reach the server,
  // then a 503 UR.
  Resp r = Get(rp->Port(), "svc", "/refuse");
  CHECK(r.status == 503);
  INFO(r.body);
  CHECK(r.body.find("remote refused stream reset") != std::string::npos);
  CHECK(srv.requests() == 2);
  // A reset is not a refusal: not retried under refused-stream alone.
  int before = srv.requests();
  r = Get(rp->Port(), "svc", "/reset");
  CHECK(r.status == 503);
  CHECK(srv.requests() == before + 1);
}

TEST_CASE("h2 upstream: use_downstream_protocol_config sends an HTTP/1.1 request as HTTP/1.1") {
  Nginx nginx;
  Json c = StaticCluster("h2c", {nginx.h1_port()});
  c["typed_extension_protocol_options"] = {
      {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
       {{"@type", "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"},
        {"use_downstream_protocol_config",
         {{"http_protocol_options", Json::object()},
          {"http2_protocol_options", {{"max_concurrent_streams", 1073741824}}}}}}}};
  auto rp = StartProxy(Doc(c));
  REQUIRE(rp->error.empty());
  Resp r = Get(rp->Port(), "svc", "/hello");
  CHECK(r.status == 200);
  CHECK(r.body == "hello\n");
  REQUIRE(WaitFor([&] { return !nginx.Log().empty(); }));
  CHECK(nginx.Log()[0].find("HTTP/1.1 GET /hello HTTP/1.1") != std::string::npos);
  CHECK(rp->proxy->stats().upstream_cx_http2.load() == 0);
  const auto* cl = rp->config->FindCluster("h2c");
  REQUIRE(cl);
  CHECK(cl->protocol == sluice::proxy::Cluster::Protocol::kDownstream);
  CHECK(cl->http2.max_concurrent_streams == 1073741824u);
  // The router's choice: HTTP/2 for a request that came on HTTP/2, HTTP/1.1 otherwise.
  CHECK(cl->Http2For(/*downstream_h2=*/true));
  CHECK_FALSE(cl->Http2For(/*downstream_h2=*/false));
}

TEST_CASE("h2 upstream: mirrors to an HTTP/2 cluster go as streams too") {
  H2Server primary, shadow;
  Json pc = StaticCluster("primary", {primary.port()});
  pc["typed_extension_protocol_options"] = H2Options();
  Json sc = StaticCluster("shadow", {shadow.port()});
  sc["typed_extension_protocol_options"] = H2Options();
  Json action = {{"cluster", "primary"},
                 {"request_mirror_policies", Json::array({{{"cluster", "shadow"}}})}};
  Json doc = {
      {"listeners", Json::array({HttpListener("http", "rc")})},
      {"routes", Json::array({RouteConfig(
                     "rc", Json::array({{{"match", {{"prefix", "/"}}}, {"route", action}}}))})},
      {"clusters", Json::array({pc, sc})}};
  auto rp = StartProxy(doc);
  REQUIRE(rp->error.empty());
  Resp r = Get(rp->Port(), "svc:80", "/m");
  CHECK(r.status == 200);
  REQUIRE(WaitFor([&] { return shadow.requests() == 1; }));
  CHECK(shadow.seen()[0].authority == "svc-shadow:80");
}

TEST_CASE(
    "h2 upstream: a mirror to a use_downstream_protocol_config cluster follows an HTTP/2 request") {
  // Both clusters use the downstream's protocol and point at nginx's h2c-only port: a
  // request that came on HTTP/2 reaches it as HTTP/2 twice, the primary and its copy (an
  // HTTP/1.1 copy would not be understood there).
  Nginx nginx;
  auto downstream_cluster = [&](const std::string& name) {
    Json c = StaticCluster(name, {nginx.h2_port()});
    c["typed_extension_protocol_options"] = {
        {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
         {{"@type", "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"},
          {"use_downstream_protocol_config",
           {{"http_protocol_options", Json::object()},
            {"http2_protocol_options", Json::object()}}}}}};
    return c;
  };
  Json action = {{"cluster", "primary"},
                 {"request_mirror_policies", Json::array({{{"cluster", "shadow"}}})}};
  Json doc = {
      {"listeners", Json::array({HttpListener("http", "rc")})},
      {"routes", Json::array({RouteConfig(
                     "rc", Json::array({{{"match", {{"prefix", "/"}}}, {"route", action}}}))})},
      {"clusters", Json::array({downstream_cluster("primary"), downstream_cluster("shadow")})}};
  auto rp = StartProxy(doc);
  REQUIRE(rp->error.empty());
  std::string out =
      RunCmd("curl -s --http2-prior-knowledge -w '\\n%{http_code}' http://127.0.0.1:" +
             std::to_string(rp->Port()) + "/hello");
  CHECK(out == "hello\n\n200");
  REQUIRE(WaitFor([&] { return nginx.Log().size() == 2; }));
  for (const std::string& l : nginx.Log()) {
    INFO(l);
    CHECK(l.find("HTTP/2.0 GET /hello HTTP/2.0") != std::string::npos);
  }
  CHECK(rp->proxy->stats().upstream_rq_http2.load() == 2);
}

TEST_CASE("h2 upstream: the cluster's protocol options compile, or are refused by name") {
  Json c = StaticCluster("old", {1});
  c["http2_protocol_options"] = {{"max_concurrent_streams", 7}};
  auto cfg = CompileJson({{"clusters", Json::array({c})}});
  REQUIRE(cfg);
  const auto* old = (*cfg)->FindCluster("old");
  REQUIRE(old);
  CHECK(old->protocol == sluice::proxy::Cluster::Protocol::kHttp2);
  CHECK(old->http2.max_concurrent_streams == 7u);

  auto refused = [](const Json& opts) {
    Json x = StaticCluster("x", {1});
    x["typed_extension_protocol_options"] = {
        {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
         Json({{"@type",
                "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"}})}};
    for (auto& [k, v] : opts.items())
      x["typed_extension_protocol_options"]
       ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"][k] = v;
    auto xcfg = CompileJson({{"clusters", Json::array({x})}});
    REQUIRE(xcfg);
    for (const auto& r : (*xcfg)->refused)
      if (r.name == "x")
        return r.reason;
    return std::string();
  };
  CHECK(refused({{"auto_config", {{"http2_protocol_options", Json::object()}}}})
            .find(".auto_config: needs ALPN") != std::string::npos);
  CHECK(refused({{"explicit_http_config", {{"http3_protocol_options", Json::object()}}}})
            .find("http3_protocol_options") != std::string::npos);
  CHECK(refused({{"explicit_http_config",
                  {{"http2_protocol_options",
                    {{"connection_keepalive", {{"interval", "1s"}, {"timeout", "1s"}}}}}}}})
            .find("http2_protocol_options.connection_keepalive") != std::string::npos);
  CHECK(refused({{"explicit_http_config", {{"http_protocol_options", Json::object()}}},
                 {"common_http_protocol_options", {{"idle_timeout", "5s"}}}})
            .empty());
}

TEST_CASE(
    "h2 upstream: idle_timeout closes an idle connection (GOAWAY), max_requests_per_connection") {
  H2Server srv;
  Json c = StaticCluster("h2c", {srv.port()});
  c["typed_extension_protocol_options"] = H2Options();
  c["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
   ["common_http_protocol_options"] = {{"idle_timeout", "0.2s"},
                                       {"max_requests_per_connection", 2}};
  auto rp = StartProxy(Doc(c));
  REQUIRE(rp->error.empty());
  Client cl(rp->Port());
  for (int i = 0; i < 3; ++i)
    CHECK(cl.Get("svc", "/r" + std::to_string(i)).status == 200);
  // Two requests per connection: the third opened a second one; the first closed after
  // its second stream.
  CHECK(srv.accepted() == 2);
  REQUIRE(WaitFor([&] { return srv.closed() == 2; }, 3000));
  CHECK(srv.goaways() == 2);
  CHECK(rp->config->FindCluster("h2c")->active_connections.load() == 0);
}

TEST_CASE(
    "h2 upstream: a client that does not read holds back its own stream, not the connection") {
  Nginx nginx(/*huge=*/true);
  auto rp = StartProxy(Doc(H2Cluster(nginx.h2_port())));
  REQUIRE(rp->error.empty());
  // A 32 MiB response to a client that does not read: the proxy stops taking its stream's
  // DATA once 4 MiB wait for the client; nginx's stream waits for its window.
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int small = 64 * 1024;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(rp->Port());
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
  std::string raw = "GET /huge HTTP/1.1\r\nhost: svc\r\nconnection: close\r\n\r\n";
  send(fd, raw.data(), raw.size(), MSG_NOSIGNAL);
  usleep(500'000);
  // Meanwhile another request goes on the same HTTP/2 connection.
  Resp r = Get(rp->Port(), "svc", "/hello");
  CHECK(r.status == 200);
  CHECK(r.body == "hello\n");
  CHECK(rp->proxy->stats().upstream_cx_http2.load() == 1);
  // What the proxy holds for it is bounded by the pause (4 MiB) and one stream window,
  // not the 32 MiB nginx would send if its DATA were taken regardless.
  CHECK(rp->proxy->stats().buffered_bytes.load() < (6u << 20));
  // Then the slow client reads all of it, byte for byte.
  std::string buf;
  auto v = ReadResponses(fd, buf, 1, 20000);
  close(fd);
  REQUIRE(v.size() == 1);
  CHECK(v[0].status == 200);
  CHECK(v[0].body.size() == (32u << 20));
  bool same = true;
  for (std::size_t i = 0; same && i < v[0].body.size(); ++i)
    same = v[0].body[i] == static_cast<char>('a' + i % 19);
  CHECK(same);
}
