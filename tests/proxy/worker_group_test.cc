// Worker groups (worker_group.h): many Proxies on a fixed set of shared threads, each
// keeping its own routing, counters and connections. Real loopback sockets, the
// project's own upstream; every case runs on epoll and on io_uring.
#include <dirent.h>
#include <poll.h>
#include <sys/socket.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <future>
#include <thread>

#include "harness.h"
#include "sluice/proxy/worker_group.h"
#include "test_upstream.h"

using namespace sluice::testing;
using sluice::proxy::IoBackend;
using sluice::proxy::WorkerGroup;

namespace {

int ThreadCount() {
  int n = 0;
  DIR* d = opendir("/proc/self/task");
  if (!d)
    return -1;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] != '.')
      ++n;
  }
  closedir(d);
  return n;
}

// One HTTP listener on a free loopback port, every request to cluster `up`.
Json Doc(uint16_t upstream_port) {
  Json route = {{"name", "main"}, {"match", {{"prefix", "/"}}}, {"route", {{"cluster", "up"}}}};
  return {{"listeners", {HttpListener("http", RouteConfig("r", Json::array({route})), false)}},
          {"clusters", {StaticCluster("up", {upstream_port})}}};
}

std::shared_ptr<WorkerGroup> Group(IoBackend io, int threads) {
  auto g = WorkerGroup::Create({.threads = threads, .io = io, .io_buffers = 64});
  REQUIRE(g);
  REQUIRE((*g)->io_backend() == io);
  return *g;
}

sluice::proxy::ProxyOptions On(std::shared_ptr<WorkerGroup> g) {
  sluice::proxy::ProxyOptions o;
  o.group = std::move(g);
  return o;
}

}  // namespace

TEST_CASE("twelve proxies on a 2-thread worker group serve at once, with no thread of their own",
          "[proxy][group]") {
  const IoBackend io = GENERATE(IoBackend::kEpoll, IoBackend::kUring);
  INFO("backend " << sluice::proxy::IoBackendName(io));
  constexpr int kProxies = 12;
  std::vector<std::unique_ptr<TestUpstream>> ups;
  for (int i = 0; i < kProxies; ++i)
    ups.push_back(std::make_unique<TestUpstream>(
        TestUpstream::Options{.name = "u" + std::to_string(i), .record = false}));
  const int before = ThreadCount();
  auto group = Group(io, 2);
  CHECK(ThreadCount() == before + 2);
  std::vector<std::unique_ptr<RunningProxy>> proxies;
  for (int i = 0; i < kProxies; ++i) {
    proxies.push_back(StartProxy(Doc(ups[static_cast<std::size_t>(i)]->port()), 1, On(group)));
    REQUIRE(proxies.back()->error == "");
    CHECK(proxies.back()->proxy->io_backend() == io);
  }
  // Not one thread per proxy: the group's two serve them all, balanced.
  CHECK(ThreadCount() == before + 2);
  CHECK(group->Attached() == std::vector<int>{kProxies / 2, kProxies / 2});

  // Every proxy at once, from a client thread each, on keep-alive connections.
  constexpr int kRequests = 200;
  std::vector<std::future<int>> done;
  for (int i = 0; i < kProxies; ++i) {
    done.push_back(std::async(std::launch::async, [&, i] {
      Client c(proxies[static_cast<std::size_t>(i)]->Port());
      int ok = 0;
      for (int r = 0; r < kRequests; ++r) {
        Resp resp = c.Get("h", "/");
        ok += resp.status == 200 && resp.Header("x-upstream") == "u" + std::to_string(i);
      }
      return ok;
    }));
  }
  for (int i = 0; i < kProxies; ++i) {
    INFO("proxy " << i);
    CHECK(done[static_cast<std::size_t>(i)].get() == kRequests);
    // Per-proxy figures stay per proxy (the node agent's /pods reads them).
    CHECK(proxies[static_cast<std::size_t>(i)]->proxy->stats().requests.load() == kRequests);
    CHECK(proxies[static_cast<std::size_t>(i)]->proxy->stats().downstream_cx.load() == 1);
    CHECK(ups[static_cast<std::size_t>(i)]->count() == kRequests);
  }
  proxies.clear();
  CHECK(group->Attached() == std::vector<int>{0, 0});
}

TEST_CASE("stopping one proxy of a group thread leaves another's request in flight intact",
          "[proxy][group]") {
  const IoBackend io = GENERATE(IoBackend::kEpoll, IoBackend::kUring);
  INFO("backend " << sluice::proxy::IoBackendName(io));
  TestUpstream ua({.name = "a", .record = false}), ub({.name = "b", .record = false});
  auto group = Group(io, 1);  // one thread: both proxies share its loop
  auto a = StartProxy(Doc(ua.port()), 1, On(group));
  auto b = StartProxy(Doc(ub.port()), 1, On(group));
  REQUIRE(a->error == "");
  REQUIRE(b->error == "");
  // A keeps a connection open (and an upstream one pooled); B's request waits 400 ms at
  // its upstream while A stops.
  Client ca(a->Port());
  REQUIRE(ca.Get("h", "/").status == 200);
  auto slow = std::async(std::launch::async,
                         [&] { return Get(b->Port(), "h", "/", "x-delay-ms: 400\r\n", 5000); });
  REQUIRE(WaitFor([&] { return b->proxy->stats().upstream_cx.load() == 1; }));
  a->proxy->Stop();
  Resp r = slow.get();
  CHECK(r.status == 200);
  CHECK(r.Header("x-upstream") == "b");
  // A's connection was closed by its stop, and B serves on.
  char byte;
  CHECK(recv(ca.fd(), &byte, 1, 0) == 0);
  CHECK(Get(b->Port(), "h", "/").status == 200);
  CHECK(group->Attached() == std::vector<int>{1});
}

TEST_CASE("updating one proxy of a group changes its routing only", "[proxy][group]") {
  const IoBackend io = GENERATE(IoBackend::kEpoll, IoBackend::kUring);
  INFO("backend " << sluice::proxy::IoBackendName(io));
  TestUpstream u1({.name = "one", .record = false}), u2({.name = "two", .record = false});
  auto group = Group(io, 1);
  auto a = StartProxy(Doc(u1.port()), 1, On(group));
  auto b = StartProxy(Doc(u1.port()), 1, On(group));
  REQUIRE(a->error == "");
  REQUIRE(b->error == "");
  Client ca(a->Port()), cb(b->Port());
  CHECK(ca.Get("h", "/").Header("x-upstream") == "one");
  CHECK(cb.Get("h", "/").Header("x-upstream") == "one");
  auto next = CompileJson(Doc(u2.port()));
  REQUIRE(next);
  REQUIRE(a->proxy->Update(*next));
  // At once (Update wakes the shared thread), on the open connections too.
  CHECK(ca.Get("h", "/").Header("x-upstream") == "two");
  CHECK(cb.Get("h", "/").Header("x-upstream") == "one");
  CHECK(Get(a->Port(), "h", "/").Header("x-upstream") == "two");
  CHECK(Get(b->Port(), "h", "/").Header("x-upstream") == "one");
}

TEST_CASE("a group's proxy makes its upstream sockets with make_socket", "[proxy][group]") {
  const IoBackend io = GENERATE(IoBackend::kEpoll, IoBackend::kUring);
  INFO("backend " << sluice::proxy::IoBackendName(io));
  TestUpstream u({.name = "u", .record = false});
  auto group = Group(io, 2);
  std::atomic<int> made{0};
  auto o = On(group);
  o.make_socket = [&made](int family, int type) {
    ++made;
    return socket(family, type, 0);
  };
  auto p = StartProxy(Doc(u.port()), 1, o);
  REQUIRE(p->error == "");
  Client c(p->Port());
  for (int i = 0; i < 5; ++i)
    CHECK(c.Get("h", "/").status == 200);
  CHECK(made.load() == 1);  // one connection, pooled for the other four
  // A factory that fails: the request fails (503), nothing connects behind its back.
  auto o2 = On(group);
  o2.make_socket = [](int, int) {
    errno = EACCES;
    return -1;
  };
  auto q = StartProxy(Doc(u.port()), 1, o2);
  REQUIRE(q->error == "");
  const uint64_t seen = u.connections();
  CHECK(Get(q->Port(), "h", "/").status == 503);
  CHECK(u.connections() == seen);
}

TEST_CASE("a group refuses on_worker_start (a shared thread cannot move into a namespace)",
          "[proxy][group]") {
  auto group = Group(IoBackend::kEpoll, 1);
  auto o = On(group);
  o.on_worker_start = [](int) -> sluice::Result<void> { return {}; };
  auto p = StartProxy(Doc(1), 1, o);
  CHECK(p->error.find("on_worker_start") != std::string::npos);
  CHECK(group->Attached() == std::vector<int>{0});
}

TEST_CASE("draining one proxy of a group closes its idle connections with no event of theirs",
          "[proxy][group]") {
  const IoBackend io = GENERATE(IoBackend::kEpoll, IoBackend::kUring);
  INFO("backend " << sluice::proxy::IoBackendName(io));
  TestUpstream u({.name = "u", .record = false});
  auto group = Group(io, 1);
  auto a = StartProxy(Doc(u.port()), 1, On(group));
  auto b = StartProxy(Doc(u.port()), 1, On(group));
  REQUIRE(a->error == "");
  REQUIRE(b->error == "");
  const uint16_t a_port = a->Port();
  Client ca(a_port), cb(b->Port());
  REQUIRE(ca.Get("h", "/").status == 200);
  REQUIRE(cb.Get("h", "/").status == 200);
  // A's connection is idle: only its worker's due idle sweep can close it.
  REQUIRE(a->proxy->Drain());
  pollfd p{ca.fd(), POLLIN, 0};
  REQUIRE(poll(&p, 1, 2000) == 1);
  char byte;
  CHECK(recv(ca.fd(), &byte, 1, 0) == 0);
  CHECK(WaitFor([&] { return a->proxy->stats().active_cx.load() == 0; }));
  CHECK(Get(a_port, "h", "/", "", 500).status == 0);  // its listener is closed
  // B, on the same thread, neither drained nor disturbed.
  CHECK(cb.Get("h", "/").status == 200);
  CHECK(b->proxy->stats().active_cx.load() == 1);
}
