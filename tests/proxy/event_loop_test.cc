// The workers' event loop on each backend: real TCP sockets on loopback, real io_uring.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "harness.h"
#include "sluice/proxy/event_loop.h"

using sluice::proxy::Buffer;
using sluice::proxy::EventLoop;
using sluice::proxy::IoBackend;
using sluice::proxy::IoHandler;
using sluice::testing::Connect;
using sluice::testing::FreeLoopbackPort;

namespace {

constexpr uint32_t kStreamEvents = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;

std::unique_ptr<EventLoop> MakeLoop(IoBackend b) {
  EventLoop::Options o;
  o.backend = b;
  o.buffers = 64;  // small, so a test can run the shared buffers out
  auto l = EventLoop::Create(o);
  INFO((l ? "" : l.error().message));
  REQUIRE(l);
  REQUIRE((*l)->backend() == b);
  REQUIRE((*l)->Activate());
  return std::move(*l);
}

// A listening socket and connected pairs: first the client end, then the accepted one.
struct Pairs {
  int lfd = -1;
  uint16_t port = 0;
  Pairs() {
    lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
    REQUIRE(listen(lfd, 1024) == 0);
    socklen_t len = sizeof(a);
    getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
  }
  ~Pairs() { close(lfd); }
  std::pair<int, int> Make() {
    int c = Connect(port);
    REQUIRE(c >= 0);
    int s = accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    REQUIRE(s >= 0);
    return {c, s};
  }
};

// Runs the loop until done() or the deadline; false on the deadline.
bool RunUntil(EventLoop& loop, const std::function<bool()>& done, int ms = 5000) {
  auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  while (!done()) {
    if (std::chrono::steady_clock::now() > end)
      return false;
    loop.Poll(10);
    loop.Dispatch();
  }
  return true;
}

// Echoes what it reads; at the end of the stream, half-closes once the echo is out.
struct Echo : IoHandler {
  EventLoop* loop;
  int fd;
  Buffer out;
  bool eof = false, closed = false;
  std::size_t echoed = 0;
  void OnEvent(uint32_t ev) override {
    if (closed)
      return;
    if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP)) {
      while (true) {
        std::size_t avail;
        char* p = out.WritePtr(16384, &avail);
        ssize_t n = loop->Recv(fd, p, avail);
        if (n > 0) {
          out.Commit(static_cast<std::size_t>(n));
          echoed += static_cast<std::size_t>(n);
          continue;
        }
        if (n == 0)
          eof = true;
        break;
      }
    }
    if (!out.empty())
      REQUIRE(loop->Send(fd, out) == 0);
    if (eof && out.empty() && !closed) {
      loop->ShutdownWrite(fd);
      loop->Close(fd);  // after the echo and the FIN are out
      closed = true;
    }
  }
};

std::string RandomBytes(std::size_t n) {
  std::mt19937_64 rng(n);
  std::string s(n, '\0');
  for (auto& c : s)
    c = static_cast<char>(rng());
  return s;
}

std::string ReadAll(int fd) {
  std::string got;
  char buf[65536];
  while (true) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n <= 0)
      break;
    got.append(buf, static_cast<std::size_t>(n));
  }
  return got;
}

}  // namespace

TEST_CASE("event loop: 8 MiB echoed intact with backpressure, then the half-close", "[proxy][io]") {
  for (IoBackend b : {IoBackend::kEpoll, IoBackend::kUring}) {
    DYNAMIC_SECTION(sluice::proxy::IoBackendName(b)) {
      auto loop = MakeLoop(b);
      Pairs pairs;
      auto [c, s] = pairs.Make();
      Echo echo;
      echo.loop = loop.get();
      echo.fd = s;
      REQUIRE(loop->Add(s, kStreamEvents, &echo, EventLoop::Kind::kStream));
      const std::string data = RandomBytes(8 << 20);
      // The client writes everything before it reads anything back on another thread:
      // the echo has to stop and go with the client's reading.
      std::string got;
      std::thread reader([&, fd = c] { got = ReadAll(fd); });
      std::thread writer([&, fd = c] {
        std::size_t off = 0;
        while (off < data.size()) {
          ssize_t n = write(fd, data.data() + off, data.size() - off);
          if (n <= 0)
            break;
          off += static_cast<std::size_t>(n);
        }
        shutdown(fd, SHUT_WR);
      });
      bool finished = RunUntil(
          *loop, [&] { return echo.closed; }, 20000);
      writer.join();
      // The FIN the loop sent after the echo ends the reader.
      RunUntil(
          *loop, [&] { return false; }, 50);
      reader.join();
      close(c);
      CHECK(finished);
      CHECK(echo.echoed == data.size());
      CHECK(got.size() == data.size());
      CHECK(got == data);
    }
  }
}

TEST_CASE("event loop: Close after Send delivers every byte, then the end of stream",
          "[proxy][io]") {
  for (IoBackend b : {IoBackend::kEpoll, IoBackend::kUring}) {
    DYNAMIC_SECTION(sluice::proxy::IoBackendName(b)) {
      auto loop = MakeLoop(b);
      Pairs pairs;
      auto [c, s] = pairs.Make();
      struct Quiet : IoHandler {
        void OnEvent(uint32_t) override {}
      } quiet;
      REQUIRE(loop->Add(s, kStreamEvents, &quiet, EventLoop::Kind::kStream));
      const std::string data = RandomBytes(1 << 20);
      Buffer out;
      out.Append(data);
      // More than the socket buffers take at once: the rest waits in the loop.
      std::string got;
      std::thread reader([&, fd = c] { got = ReadAll(fd); });
      while (!out.empty()) {
        REQUIRE(loop->Send(s, out) == 0);
        if (!out.empty())
          RunUntil(
              *loop, [] { return false; }, 5);
      }
      loop->Close(s);
      RunUntil(
          *loop, [&] { return false; }, 300);
      reader.join();
      close(c);
      CHECK(got.size() == data.size());
      CHECK(got == data);
    }
  }
}

TEST_CASE("event loop: connections nobody reads hold none of the shared receive buffers",
          "[proxy][io]") {
  for (IoBackend b : {IoBackend::kEpoll, IoBackend::kUring}) {
    DYNAMIC_SECTION(sluice::proxy::IoBackendName(b)) {
      auto loop = MakeLoop(b);  // 64 buffers
      Pairs pairs;
      struct Count : IoHandler {
        int events = 0;
        void OnEvent(uint32_t) override { ++events; }  // never reads
      };
      // 200 connections with 6 KiB each, unread: more than the 64 buffers several times.
      std::vector<std::pair<int, int>> idle;
      std::vector<std::unique_ptr<Count>> handlers;
      const std::string chunk = RandomBytes(6144);
      for (int i = 0; i < 200; ++i) {
        auto pr = pairs.Make();
        idle.push_back(pr);
        handlers.push_back(std::make_unique<Count>());
        REQUIRE(
            loop->Add(pr.second, kStreamEvents, handlers.back().get(), EventLoop::Kind::kStream));
        REQUIRE(write(pr.first, chunk.data(), chunk.size()) == static_cast<ssize_t>(chunk.size()));
      }
      RunUntil(
          *loop, [] { return false; }, 200);
      // A new connection is still served at once.
      auto [c, s] = pairs.Make();
      Echo echo;
      echo.loop = loop.get();
      echo.fd = s;
      REQUIRE(loop->Add(s, kStreamEvents, &echo, EventLoop::Kind::kStream));
      REQUIRE(write(c, "ping", 4) == 4);
      CHECK(RunUntil(
          *loop, [&] { return echo.echoed == 4; }, 2000));
      RunUntil(
          *loop, [] { return false; }, 50);  // the echo goes out with the next Poll
      char pong[4] = {};
      CHECK(read(c, pong, 4) == 4);
      CHECK(std::string(pong, 4) == "ping");
      // And every unread byte is still there for its reader, in order.
      for (std::size_t i = 0; i < idle.size(); i += 37) {
        std::string got;
        char buf[8192];
        RunUntil(
            *loop,
            [&] {
              ssize_t n = loop->Recv(idle[i].second, buf, sizeof(buf));
              if (n > 0)
                got.append(buf, static_cast<std::size_t>(n));
              return got.size() >= chunk.size();
            },
            2000);
        CHECK(got == chunk);
      }
      for (auto& [cl, sv] : idle) {
        loop->Close(sv);
        close(cl);
      }
      loop->Close(s);
      close(c);
      RunUntil(
          *loop, [] { return false; }, 20);
    }
  }
}

TEST_CASE("event loop: a connect reports writable, a refused one an error", "[proxy][io]") {
  for (IoBackend b : {IoBackend::kEpoll, IoBackend::kUring}) {
    DYNAMIC_SECTION(sluice::proxy::IoBackendName(b)) {
      auto loop = MakeLoop(b);
      struct Seen : IoHandler {
        uint32_t ev = 0;
        void OnEvent(uint32_t e) override { ev |= e; }
      };
      auto dial = [](uint16_t port) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a.sin_port = htons(port);
        connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
        return fd;
      };
      Pairs pairs;
      Seen ok, refused;
      int good = dial(pairs.port);
      REQUIRE(loop->Add(good, EPOLLOUT, &ok, EventLoop::Kind::kConnecting));
      int bad = dial(FreeLoopbackPort());  // nobody listens there
      REQUIRE(loop->Add(bad, EPOLLOUT, &refused, EventLoop::Kind::kConnecting));
      CHECK(RunUntil(
          *loop, [&] { return ok.ev != 0 && refused.ev != 0; }, 2000));
      CHECK((ok.ev & EPOLLOUT));
      CHECK(!(ok.ev & EPOLLERR));
      CHECK((refused.ev & (EPOLLERR | EPOLLHUP)));
      loop->Close(good);
      loop->Close(bad);
      RunUntil(
          *loop, [] { return false; }, 20);
    }
  }
}

TEST_CASE("event loop: backend names parse, and an unknown one is refused by name", "[proxy][io]") {
  CHECK(*sluice::proxy::ParseIoBackend("") == IoBackend::kAuto);
  CHECK(*sluice::proxy::ParseIoBackend("epoll") == IoBackend::kEpoll);
  CHECK(*sluice::proxy::ParseIoBackend("io_uring") == IoBackend::kUring);
  auto bad = sluice::proxy::ParseIoBackend("kqueue");
  REQUIRE(!bad);
  CHECK(bad.error().message.find("\"kqueue\"") != std::string::npos);
}
