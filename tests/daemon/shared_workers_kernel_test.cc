// The node agent's pods on shared L7 workers (pod_proxies.h): two pods' proxies on one
// worker group, each pod with an upstream of its own at the same loopback address and
// port inside its network namespace. A request through each pod's proxy must reach that
// pod's upstream: the shared thread made the upstream socket in the pod's namespace
// (make_socket). Were it made in the thread's own namespace, both would reach the
// host's server at that address instead (one is started there to make that visible).
// Kernel label: makes two network namespaces (removed even on failure), needs root.
#include <fcntl.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>

#include "harness.h"
#include "pod_proxies.h"
#include "sluice/netns/netns.h"
#include "test_upstream.h"

using namespace sluice::testing;
using sluice::agent::PodProxies;

namespace {

struct TestNetns {
  std::string name;
  explicit TestNetns(std::string n) : name(std::move(n)) {
    (void)!std::system(("ip netns del " + name + " 2>/dev/null").c_str());
    ok = std::system(("ip netns add " + name + " && ip -n " + name + " link set lo up").c_str()) ==
         0;
  }
  ~TestNetns() { (void)!std::system(("ip netns del " + name + " 2>/dev/null").c_str()); }
  std::string path() const { return "/var/run/netns/" + name; }
  bool ok = false;
};

// The pods' config: the capture listener (use_original_dst) routes everything to
// 127.0.0.1:port, wherever the connecting socket's namespace puts that.
std::shared_ptr<const sluice::proxy::ProxyConfig> Config(uint16_t port) {
  Json route = {{"name", "main"}, {"match", {{"prefix", "/"}}}, {"route", {{"cluster", "up"}}}};
  Json l = HttpListener("virtualOutbound", RouteConfig("r", Json::array({route})), false);
  l["use_original_dst"] = true;
  auto cfg = CompileJson({{"listeners", {l}}, {"clusters", {StaticCluster("up", {port})}}});
  REQUIRE(cfg);
  return *cfg;
}

}  // namespace

TEST_CASE("two pods on shared workers: each one's upstream connection leaves from its own netns",
          "[daemon][group]") {
  REQUIRE(geteuid() == 0);
  const sluice::proxy::IoBackend io =
      GENERATE(sluice::proxy::IoBackend::kEpoll, sluice::proxy::IoBackend::kUring);
  INFO("backend " << sluice::proxy::IoBackendName(io));
  setenv("SLUICE_PROXY_IO", sluice::proxy::IoBackendName(io), 1);
  const std::string tag = "sl-shw-" + std::to_string(getpid());
  TestNetns na(tag + "-a"), nb(tag + "-b");
  REQUIRE(na.ok);
  REQUIRE(nb.ok);
  auto a = sluice::netns::Netns::Open(na.path());
  auto b = sluice::netns::Netns::Open(nb.path());
  REQUIRE(a);
  REQUIRE(b);

  // An upstream in each pod at the same 127.0.0.1 port (made on a thread in that
  // namespace: its socket stays there), and one in the host's if the port is free here.
  std::unique_ptr<TestUpstream> ua, ub, host;
  REQUIRE(
      a->Run([&] { ua = std::make_unique<TestUpstream>(TestUpstream::Options{.name = "pod-a"}); }));
  const uint16_t port = ua->port();
  REQUIRE(b->Run([&] {
    ub = std::make_unique<TestUpstream>(TestUpstream::Options{.name = "pod-b", .port = port});
  }));
  try {
    host = std::make_unique<TestUpstream>(TestUpstream::Options{.name = "host", .port = port});
  } catch (const std::exception&) {
    // taken here: then nothing of ours answers there, and a wrong namespace gets 503
  }

  constexpr uint16_t kCapture = 15001;
  PodProxies pods({.workers = 2, .port = kCapture, .inbound_port = 0});
  pods.SetNodeConfig(Config(port));
  const std::vector<std::string> no_ips;
  for (const auto& [name, ns] : {std::pair{"a", &na}, std::pair{"b", &nb}}) {
    auto socks = sluice::agent::OpenPodSockets(ns->path(), kCapture, 0);
    REQUIRE(socks);
    REQUIRE(pods.Open({"default", std::string("pod-") + name}, ns->path(), {}, no_ips,
                      std::move(*socks)));
  }
  // Each pod's client, inside its pod, to its capture listener.
  auto through = [&](const sluice::netns::Netns& ns) {
    Resp r;
    REQUIRE(ns.Run([&] { r = Get(kCapture, "h", "/", "", 3000); }));
    return r;
  };
  for (int i = 0; i < 3; ++i) {
    Resp ra = through(*a), rb = through(*b);
    CHECK(ra.status == 200);
    CHECK(ra.Header("x-upstream") == "pod-a");
    CHECK(rb.status == 200);
    CHECK(rb.Header("x-upstream") == "pod-b");
  }
  CHECK(ua->count() == 3);
  CHECK(ub->count() == 3);
  if (host)
    CHECK(host->count() == 0);
  // /pods' figures stay per pod.
  for (const auto& s : pods.List()) {
    INFO(s.key.name);
    CHECK(s.listening);
    CHECK(s.requests == 3);
    CHECK(s.downstream_cx == 3);
  }
  pods.CloseAll();
  unsetenv("SLUICE_PROXY_IO");
}

// Not CI: what making an upstream socket in a pod's namespace costs a shared worker (the
// make_socket of pod_proxies.cc: setns there, socket(), setns back) against socket()
// alone. Run: kernel_shared_workers "[.bench]".
TEST_CASE("bench: an upstream socket made in a pod's netns from a shared thread", "[.bench]") {
  REQUIRE(geteuid() == 0);
  TestNetns n("sl-shw-bench-" + std::to_string(getpid()));
  REQUIRE(n.ok);
  auto pod = sluice::netns::Netns::Open(n.path());
  REQUIRE(pod);
  int host = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  REQUIRE(host >= 0);
  constexpr int kN = 20000;
  auto time = [&](bool in_pod) {
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < kN; ++i) {
      if (in_pod && setns(pod->fd(), CLONE_NEWNET) != 0)
        FAIL("setns into the pod");
      int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (in_pod && setns(host, CLONE_NEWNET) != 0)
        FAIL("setns back");
      close(fd);
    }
    return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0)
               .count() /
           kN;
  };
  // On a thread of its own (a failure must not leave this one elsewhere).
  double plain = 0, pod_ns = 0;
  std::thread([&] {
    plain = time(false);
    pod_ns = time(true);
  }).join();
  close(host);
  WARN("socket()+close(): " << plain << " us; setns(pod)+socket()+setns(host)+close(): " << pod_ns
                            << " us; make_socket adds " << (pod_ns - plain)
                            << " us per connection");
}
