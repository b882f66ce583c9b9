// gRPC on the engine's request path (grpc.h wired into the session): retries on the
// grpc-status of a trailers-only response, grpc-timeout turned into the route's timeouts
// and rewritten upstream, the stream's maximum duration answered DEADLINE_EXCEEDED, local
// replies as trailers-only gRPC responses, and the grpc-status in the access log. The
// requests here are gRPC over HTTP/1.1 framing: the engine's internal form, the one an
// HTTP/2 stream is translated into. Each exchange is checked at a real upstream socket.
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "harness.h"

using namespace sluice::testing;

namespace {

// A gRPC server as seen through HTTP/1.1 framing: answers each request with the next
// scripted response (after its delay), or the last one again, and keeps every request
// head it received.
class ScriptedGrpcUpstream {
 public:
  struct Reply {
    std::string raw;
    int delay_ms = 0;
  };
  explicit ScriptedGrpcUpstream(std::vector<Reply> replies) : replies_(std::move(replies)) {
    fd_ = ListenLoopback(64, &port_);
    thread_ = std::thread([this] { Run(); });
  }
  ~ScriptedGrpcUpstream() {
    stop_ = true;
    thread_.join();
    close(fd_);
  }
  uint16_t port() const { return port_; }
  std::vector<std::string> heads() const {
    std::lock_guard l(mu_);
    return heads_;
  }
  // A request head's header value ("" when absent); names lower case.
  static std::string HeaderOf(const std::string& head, const std::string& name) {
    std::size_t at = 0;
    while ((at = head.find("\r\n", at)) != std::string::npos) {
      at += 2;
      std::size_t colon = head.find(':', at);
      std::size_t eol = head.find("\r\n", at);
      if (colon == std::string::npos || eol == std::string::npos || colon > eol)
        continue;
      std::string n = head.substr(at, colon - at);
      for (char& c : n)
        c = static_cast<char>(std::tolower(c));
      if (n == name) {
        std::size_t v = head.find_first_not_of(' ', colon + 1);
        return head.substr(v, eol - v);
      }
    }
    return "";
  }

 private:
  void Run() {
    std::vector<std::thread> conns;
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 50) <= 0)
        continue;
      int c = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c >= 0)
        conns.emplace_back([this, c] { Serve(c); });
    }
    for (auto& t : conns)
      t.join();
  }
  void Serve(int c) {
    std::string buf;
    while (!stop_) {
      std::size_t end = buf.find("\r\n\r\n");
      if (end != std::string::npos) {
        std::string head = buf.substr(0, end + 4);
        std::size_t body = 0;
        std::string cl = HeaderOf(head, "content-length");
        if (!cl.empty())
          body = std::stoul(cl);
        if (buf.size() >= head.size() + body) {
          buf.erase(0, head.size() + body);
          Reply r;
          {
            std::lock_guard l(mu_);
            heads_.push_back(head);
            r = replies_[std::min(next_++, replies_.size() - 1)];
          }
          if (r.delay_ms)
            std::this_thread::sleep_for(std::chrono::milliseconds(r.delay_ms));
          send(c, r.raw.data(), r.raw.size(), MSG_NOSIGNAL);
          continue;
        }
      }
      pollfd p{c, POLLIN, 0};
      if (poll(&p, 1, 50) <= 0)
        continue;
      char tmp[4096];
      ssize_t n = recv(c, tmp, sizeof(tmp), 0);
      if (n <= 0)
        break;
      buf.append(tmp, static_cast<std::size_t>(n));
    }
    close(c);
  }

  int fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  mutable std::mutex mu_;
  std::vector<Reply> replies_;
  std::size_t next_ = 0;
  std::vector<std::string> heads_;
};

// A trailers-only gRPC response (the status in the head, no body).
std::string TrailersOnly(int status) {
  return "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ngrpc-status: " +
         std::to_string(status) + "\r\ncontent-length: 0\r\n\r\n";
}

// A gRPC response with one message and its status in the trailers, as an HTTP/2
// response reads once translated to HTTP/1.1.
std::string WithTrailers(int status, const std::string& extra_trailer = "") {
  std::string msg("\0\0\0\0\x02\x08\x01", 7);  // one length-prefixed message: field 1 = 1
  char size[16];
  snprintf(size, sizeof(size), "%zx", msg.size());
  return "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ntransfer-encoding: chunked\r\n\r\n" +
         std::string(size) + "\r\n" + msg + "\r\n0\r\ngrpc-status: " + std::to_string(status) +
         "\r\n" + extra_trailer + "\r\n";
}

// A unary gRPC call over HTTP/1.1 framing; everything the proxy sent back, to its FIN.
std::string Call(uint16_t port, const std::string& path, const std::string& extra = "",
                 const std::string& content_type = "application/grpc") {
  std::string msg("\0\0\0\0\x02\x08\x01", 7);
  std::string raw = "POST " + path +
                    " HTTP/1.1\r\nhost: grpc.test\r\ncontent-type: " + content_type +
                    "\r\nte: trailers\r\ncontent-length: " + std::to_string(msg.size()) + "\r\n" +
                    extra + "connection: close\r\n\r\n" + msg;
  int fd = Connect(port);
  if (fd < 0)
    return "";
  send(fd, raw.data(), raw.size(), MSG_NOSIGNAL);
  std::string got;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 100) <= 0)
      continue;
    char tmp[4096];
    ssize_t n = recv(fd, tmp, sizeof(tmp), 0);
    if (n <= 0)
      break;
    got.append(tmp, static_cast<std::size_t>(n));
  }
  close(fd);
  return got;
}

Json Routes(const Json& routes) {
  return RouteConfig("r", routes);
}

Json RouteTo(const std::string& prefix, const Json& action) {
  Json a = action;
  a["cluster"] = "grpc";
  return {{"name", prefix}, {"match", {{"prefix", prefix}}}, {"route", a}};
}

// The access log line of the request whose path is `path` (the last one).
std::string LogLineFor(const RunningProxy& p, const std::string& path, std::size_t min_lines) {
  std::string found;
  for (const std::string& l : p.LogLines(min_lines)) {
    if (l.find(" " + path + " ") != std::string::npos)
      found = l;
  }
  return found;
}

}  // namespace

TEST_CASE("gRPC: retry_on unavailable retries a trailers-only UNAVAILABLE, counted at the server",
          "[proxy][grpc]") {
  ScriptedGrpcUpstream up({{TrailersOnly(14)}, {WithTrailers(0, "x-trailer: kept\r\n")}});
  Json doc = {
      {"listeners",
       {HttpListener(
           "http",
           Routes(
               {RouteTo("/pkg.Svc/Retry",
                        {{"retry_policy", {{"retry_on", "unavailable"}, {"num_retries", 2}}}}),
                RouteTo("/pkg.Svc/NoRetry",
                        {{"retry_policy", {{"retry_on", "cancelled"}, {"num_retries", 2}}}})}))}},
      {"clusters", {StaticCluster("grpc", {up.port()})}}};
  auto p = StartProxy(doc);
  REQUIRE(p->error == "");

  std::string got = Call(p->Port(), "/pkg.Svc/Retry");
  INFO(got);
  CHECK(got.rfind("HTTP/1.1 200", 0) == 0);
  // The second attempt's answer, its trailers intact.
  CHECK(got.find("\r\n0\r\ngrpc-status: 0\r\nx-trailer: kept\r\n\r\n") != std::string::npos);
  auto heads = up.heads();
  REQUIRE(heads.size() == 2);  // counted at the server: one retry
  CHECK(ScriptedGrpcUpstream::HeaderOf(heads[1], "x-envoy-attempt-count") == "2");
  std::string line = LogLineFor(*p, "/pkg.Svc/Retry", 1);
  INFO(line);
  CHECK(line.find("\" 200 ") != std::string::npos);
  CHECK(line.ends_with(" 0"));  // grpc-status from the trailers

  // UNAVAILABLE is not among this route's conditions: no retry, the status is relayed.
  ScriptedGrpcUpstream up2({{TrailersOnly(14)}});
  doc["clusters"] = {StaticCluster("grpc", {up2.port()})};
  auto p2 = StartProxy(doc);
  REQUIRE(p2->error == "");
  got = Call(p2->Port(), "/pkg.Svc/NoRetry");
  CHECK(got.find("grpc-status: 14\r\n") != std::string::npos);
  CHECK(up2.heads().size() == 1);
  CHECK(LogLineFor(*p2, "/pkg.Svc/NoRetry", 1).ends_with(" 14"));
}

TEST_CASE("gRPC: grpc-timeout sets the route timeout and is rewritten per attempt upstream",
          "[proxy][grpc]") {
  // max_grpc_timeout (deprecated, istiod does not set it, Envoy honours it): the route
  // timeout is the client's grpc-timeout, and each attempt carries the time left.
  ScriptedGrpcUpstream up({{WithTrailers(0)}, {WithTrailers(0), 1500}});
  Json doc = {
      {"listeners",
       {HttpListener("http", Routes({RouteTo("/pkg.Svc/", {{"max_grpc_timeout", "0s"}})}))}},
      {"clusters", {StaticCluster("grpc", {up.port()})}}};
  auto p = StartProxy(doc);
  REQUIRE(p->error == "");
  std::string got = Call(p->Port(), "/pkg.Svc/Fast", "grpc-timeout: 1S\r\n");
  CHECK(got.find("grpc-status: 0") != std::string::npos);
  REQUIRE(up.heads().size() == 1);
  std::string sent = ScriptedGrpcUpstream::HeaderOf(up.heads()[0], "grpc-timeout");
  INFO(sent);
  REQUIRE(sent.ends_with("m"));
  int ms = std::stoi(sent);
  CHECK(ms <= 1000);
  CHECK(ms >= 900);

  // The second call's server answers after 1.5 s: the 300 ms deadline ends it with a 504,
  // sent to the gRPC client as a trailers-only UNAVAILABLE (Envoy's HTTP-to-gRPC map).
  auto t0 = std::chrono::steady_clock::now();
  got = Call(p->Port(), "/pkg.Svc/Slow", "grpc-timeout: 300m\r\n");
  auto took =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
          .count();
  INFO(got);
  CHECK(got.rfind("HTTP/1.1 200", 0) == 0);
  CHECK(got.find("grpc-status: 14\r\n") != std::string::npos);
  CHECK(got.find("grpc-message: upstream request timeout\r\n") != std::string::npos);
  CHECK(took >= 250);
  CHECK(took < 1400);
  std::string line = LogLineFor(*p, "/pkg.Svc/Slow", 2);
  INFO(line);
  CHECK(line.find("\" 200 UT ") != std::string::npos);
  CHECK(line.ends_with(" 14"));
}

TEST_CASE(
    "gRPC: max_stream_duration with grpc_timeout_header_max ends a late call DEADLINE_EXCEEDED",
    "[proxy][grpc]") {
  ScriptedGrpcUpstream up({{WithTrailers(0), 1500}});
  Json doc = {
      {"listeners",
       {HttpListener("http",
                     Routes({RouteTo("/pkg.Svc/", {{"max_stream_duration",
                                                    {{"grpc_timeout_header_max", "0s"}}}})}))}},
      {"clusters", {StaticCluster("grpc", {up.port()})}}};
  auto p = StartProxy(doc);
  REQUIRE(p->error == "");
  auto t0 = std::chrono::steady_clock::now();
  std::string got = Call(p->Port(), "/pkg.Svc/Late", "grpc-timeout: 200m\r\n");
  auto took =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
          .count();
  INFO(got);
  CHECK(got.find("grpc-status: 4\r\n") != std::string::npos);  // DEADLINE_EXCEEDED
  CHECK(took >= 150);
  CHECK(took < 1400);
  REQUIRE(up.heads().size() == 1);
  // The fixed duration goes upstream as the call's grpc-timeout.
  CHECK(ScriptedGrpcUpstream::HeaderOf(up.heads()[0], "grpc-timeout") == "200m");
  std::string line = LogLineFor(*p, "/pkg.Svc/Late", 1);
  INFO(line);
  CHECK(line.find(" DT max_duration_timeout ") != std::string::npos);
  CHECK(line.ends_with(" 4"));
}

TEST_CASE("gRPC: local replies are trailers-only gRPC responses, other requests keep HTTP codes",
          "[proxy][grpc]") {
  ScriptedGrpcUpstream up({{WithTrailers(0)}});
  Json doc = {{"listeners", {HttpListener("http", Routes({RouteTo("/pkg.Svc/", Json::object())}))}},
              {"clusters", {StaticCluster("grpc", {up.port()})}}};
  auto p = StartProxy(doc);
  REQUIRE(p->error == "");
  // No route: Envoy's 404 becomes UNIMPLEMENTED.
  std::string got = Call(p->Port(), "/other.Svc/M");
  INFO(got);
  CHECK(got.rfind("HTTP/1.1 200", 0) == 0);
  CHECK(got.find("content-type: application/grpc\r\n") != std::string::npos);
  CHECK(got.find("grpc-status: 12\r\n") != std::string::npos);
  CHECK(got.find("content-length: 0\r\n") != std::string::npos);
  std::string line = LogLineFor(*p, "/other.Svc/M", 1);
  INFO(line);
  CHECK(line.find("\" 200 NR route_not_found ") != std::string::npos);
  CHECK(line.ends_with(" 12"));
  // The same request without a gRPC content-type: a plain 404, no grpc-status logged.
  got = Call(p->Port(), "/other.Svc/M2", "", "application/json");
  CHECK(got.rfind("HTTP/1.1 404", 0) == 0);
  CHECK(got.find("grpc-status") == std::string::npos);
  line = LogLineFor(*p, "/other.Svc/M2", 2);
  CHECK(line.ends_with(" -"));  // the route name ends a non-gRPC line ("-": no route)
  CHECK(up.heads().empty());
}

namespace {

// A bidirectional-streaming gRPC server as seen through HTTP/1.1 framing: answers a
// request's head at once, then echoes each chunk of its body as it arrives and ends with
// grpc-status 0 when the body ends. With drop_first, the first connection is closed
// once the head and a chunk of the body were read, before any answer (a reset the route
// retries). Keeps, per request, the body it received.
class EchoStreamUpstream {
 public:
  explicit EchoStreamUpstream(bool drop_first = false) : drop_first_(drop_first) {
    fd_ = ListenLoopback(16, &port_);
    thread_ = std::thread([this] { Run(); });
  }
  ~EchoStreamUpstream() {
    stop_ = true;
    thread_.join();
    close(fd_);
  }
  uint16_t port() const { return port_; }
  std::vector<std::string> bodies() const {
    std::lock_guard l(mu_);
    return bodies_;
  }
  int connections() const { return conns_; }

 private:
  void Run() {
    std::vector<std::thread> conns;
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 50) <= 0)
        continue;
      int c = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c >= 0)
        conns.emplace_back([this, c, first = conns_++ == 0] { Serve(c, first); });
    }
    for (auto& t : conns)
      t.join();
  }
  bool Fill(int c, std::string& buf) {
    while (!stop_) {
      pollfd p{c, POLLIN, 0};
      if (poll(&p, 1, 50) <= 0)
        continue;
      char tmp[4096];
      ssize_t n = recv(c, tmp, sizeof(tmp), 0);
      if (n <= 0)
        return false;
      buf.append(tmp, static_cast<std::size_t>(n));
      return true;
    }
    return false;
  }
  void Serve(int c, bool first) {
    std::string buf, body;
    std::size_t head_end;
    while ((head_end = buf.find("\r\n\r\n")) == std::string::npos) {
      if (!Fill(c, buf)) {
        close(c);
        return;
      }
    }
    buf.erase(0, head_end + 4);
    if (first && drop_first_) {
      while (buf.find("\r\n", buf.find("\r\n") + 2) == std::string::npos && Fill(c, buf)) {
      }
      close(c);  // a reset before the response: the attempt fails
      return;
    }
    const std::string head =
        "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ntransfer-encoding: chunked\r\n\r\n";
    send(c, head.data(), head.size(), MSG_NOSIGNAL);
    while (true) {
      std::size_t eol = buf.find("\r\n");
      if (eol == std::string::npos) {
        if (!Fill(c, buf))
          break;
        continue;
      }
      const std::size_t size = std::stoul(buf.substr(0, eol), nullptr, 16);
      if (size == 0) {
        if (buf.find("\r\n\r\n", eol) == std::string::npos && Fill(c, buf))
          continue;
        {
          std::lock_guard l(mu_);
          bodies_.push_back(body);
        }
        const std::string end = "0\r\ngrpc-status: 0\r\n\r\n";
        send(c, end.data(), end.size(), MSG_NOSIGNAL);
        break;
      }
      if (buf.size() < eol + 2 + size + 2) {
        if (!Fill(c, buf))
          break;
        continue;
      }
      const std::string chunk = buf.substr(0, eol + 2 + size + 2);
      body += buf.substr(eol + 2, size);
      buf.erase(0, chunk.size());
      send(c, chunk.data(), chunk.size(), MSG_NOSIGNAL);  // echoed as it came
    }
    close(c);
  }

  bool drop_first_;
  int fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> conns_{0};
  std::thread thread_;
  mutable std::mutex mu_;
  std::vector<std::string> bodies_;
};

// A length-prefixed gRPC message carrying `s`, as one HTTP/1.1 chunk.
std::string MessageChunk(const std::string& s) {
  std::string msg = std::string("\0\0\0\0", 4) + static_cast<char>(s.size()) + s;
  char size[16];
  snprintf(size, sizeof(size), "%zx\r\n", msg.size());
  return size + msg + "\r\n";
}

// Reads from fd until `needle` is in `got` or two seconds pass.
bool ReadUntil(int fd, std::string& got, const std::string& needle) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (got.find(needle) == std::string::npos && std::chrono::steady_clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 50) <= 0)
      continue;
    char tmp[4096];
    ssize_t n = recv(fd, tmp, sizeof(tmp), 0);
    if (n <= 0)
      break;
    got.append(tmp, static_cast<std::size_t>(n));
  }
  return got.find(needle) != std::string::npos;
}

// A bidirectional call: each message waits for its echo before the next is sent, then the
// client half-closes its stream (the terminal chunk) and reads the status.
void BidiCall(uint16_t port) {
  int fd = Connect(port);
  REQUIRE(fd >= 0);
  const std::string head =
      "POST /pkg.Echo/Chat HTTP/1.1\r\nhost: grpc.test\r\ncontent-type: application/grpc\r\n"
      "te: trailers\r\ntransfer-encoding: chunked\r\n\r\n";
  std::string got;
  for (const char* m : {"ping-1", "ping-2", "ping-3"}) {
    std::string out = (std::string(m) == "ping-1" ? head : "") + MessageChunk(m);
    send(fd, out.data(), out.size(), MSG_NOSIGNAL);
    INFO("message " << m << ", received so far: " << got);
    // Before the request ends: the proxy streamed the message and relays its echo.
    CHECK(ReadUntil(fd, got, m));
  }
  send(fd, "0\r\n\r\n", 5, MSG_NOSIGNAL);
  INFO(got);
  CHECK(ReadUntil(fd, got, "0\r\ngrpc-status: 0\r\n\r\n"));
  CHECK(got.rfind("HTTP/1.1 200 OK", 0) == 0);
  close(fd);
}

}  // namespace

TEST_CASE("gRPC: a bidirectional stream flows both ways before the client half-closes",
          "[proxy][grpc]") {
  EchoStreamUpstream up;
  Json doc = {{"listeners", {HttpListener("http", Routes({RouteTo("/pkg.Echo/", {})}))}},
              {"clusters", {StaticCluster("grpc", {up.port()})}}};
  auto p = StartProxy(doc);
  REQUIRE(p->error == "");
  BidiCall(p->Port());
  auto bodies = up.bodies();
  REQUIRE(bodies.size() == 1);
  CHECK(bodies[0].find("ping-1") < bodies[0].find("ping-2"));
  CHECK(bodies[0].find("ping-3") != std::string::npos);
  std::string line = LogLineFor(*p, "/pkg.Echo/Chat", 1);
  INFO(line);
  CHECK(line.find("\" 200 ") != std::string::npos);
  CHECK(line.ends_with(" 0"));  // the grpc-status from the trailers
}

TEST_CASE("gRPC: a streamed request is sent again whole on a retry", "[proxy][grpc]") {
  // The first connection is reset after the head and the first message: the retry
  // carries what was received so far, then the rest as it comes.
  EchoStreamUpstream up(/*drop_first=*/true);
  Json doc = {
      {"listeners",
       {HttpListener("http", Routes({RouteTo("/pkg.Echo/",
                                             {{"retry_policy",
                                               {{"retry_on", "reset"}, {"num_retries", 1}}}})}))}},
      {"clusters", {StaticCluster("grpc", {up.port()})}}};
  auto p = StartProxy(doc);
  REQUIRE(p->error == "");
  BidiCall(p->Port());
  CHECK(up.connections() == 2);
  auto bodies = up.bodies();
  REQUIRE(bodies.size() == 1);
  CHECK(bodies[0].find("ping-1") != std::string::npos);
  CHECK(bodies[0].find("ping-3") != std::string::npos);
}
