// The inbound side of a pod without iptables (pod_inbound.bpf.c): an sk_lookup program in
// the pod's network namespace sends connections for a registered (pod address, port) to
// the pod's inbound listener, with the original destination intact; everything else —
// other ports, the proxy's own loopback-sourced upstream connections, and every port once
// the entry or the link is gone — reaches the application.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <thread>

#include "lab.h"

using namespace sluice;
using namespace sluice::test;

namespace {

// Runs f on a thread inside network namespace `ns`; returns what f returns.
template <class F>
auto InPod(const std::string& ns, F f) -> decltype(f()) {
  decltype(f()) out{};
  std::thread t([&] {
    int fd = open(("/run/netns/" + ns).c_str(), O_RDONLY | O_CLOEXEC);
    if (fd >= 0 && setns(fd, CLONE_NEWNET) == 0)
      out = f();
    if (fd >= 0)
      close(fd);
  });
  t.join();
  return out;
}

// A stand-in inbound proxy: a listener on 127.0.0.1:15006 inside the pod that greets each
// connection with "inbound ADDR:PORT\n", ADDR:PORT being the connection's local address
// (what the proxy reads as the original destination).
class InboundListener {
 public:
  explicit InboundListener(const std::string& ns) {
    fd_ = InPod(ns, [] {
      int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      int one = 1;
      setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_port = htons(15006);
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      if (bind(s, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || listen(s, 64) != 0) {
        close(s);
        return -1;
      }
      return s;
    });
    REQUIRE(fd_ >= 0);
    thread_ = std::thread([this] {
      while (!stop_) {
        int c = accept(fd_, nullptr, nullptr);
        if (c < 0)
          return;
        sockaddr_in self{};
        socklen_t len = sizeof(self);
        getsockname(c, reinterpret_cast<sockaddr*>(&self), &len);
        char ip[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &self.sin_addr, ip, sizeof(ip));
        std::string line =
            "inbound " + std::string(ip) + ":" + std::to_string(ntohs(self.sin_port)) + "\n";
        (void)!write(c, line.data(), line.size());
        close(c);
      }
    });
  }
  ~InboundListener() {
    stop_ = true;
    shutdown(fd_, SHUT_RDWR);
    thread_.join();
    close(fd_);
  }
  int fd() const { return fd_; }

 private:
  int fd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// From inside the pod, bound to 127.0.0.6 (istiod's upstream_bind_config), as the
// inbound proxy dials the application: the greeting line.
std::string DialFromProxy(const std::string& ns, const std::string& ip, uint16_t port) {
  return InPod(ns, [&] {
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in src{};
    src.sin_family = AF_INET;
    inet_pton(AF_INET, "127.0.0.6", &src.sin_addr);
    sockaddr_in dst{};
    dst.sin_family = AF_INET;
    dst.sin_port = htons(port);
    inet_pton(AF_INET, ip.c_str(), &dst.sin_addr);
    std::string out;
    if (bind(s, reinterpret_cast<sockaddr*>(&src), sizeof(src)) == 0 &&
        connect(s, reinterpret_cast<sockaddr*>(&dst), sizeof(dst)) == 0) {
      char buf[128];
      ssize_t n = read(s, buf, sizeof(buf));
      if (n > 0)
        out.assign(buf, static_cast<size_t>(n));
    } else {
      out = std::string("error: ") + std::strerror(errno);
    }
    close(s);
    return out;
  });
}

uint64_t Steered(Lab& lab) {
  return lab.ReadCounters()[SLUICE_CNT_INBOUND_STEERED];
}

}  // namespace

TEST_CASE(
    "sk_lookup sends a registered pod port to the pod's inbound listener, original "
    "destination intact") {
  Lab lab;
  lab.AddClientAndServers();  // client .10; a .2 and b .3 serve their names on 8080
  lab.Serve("a", {"10.211.0.2:9090"}, "a-9090");
  const std::string ns = lab.pod("a").netns;
  InboundListener inbound(ns);
  const auto pod_ip = *IpAddress::Parse("10.211.0.2");
  const uint64_t cookie = lab.Cookie("a");
  {
    int nsfd = open(("/run/netns/" + ns).c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE(nsfd >= 0);
    auto r = lab.dp().AttachInbound(nsfd, cookie);
    close(nsfd);
    INFO((r ? "" : r.error().message));
    REQUIRE(r);
  }
  REQUIRE(lab.dp().SetInbound(pod_ip, 8080, inbound.fd()));
  const uint64_t before = Steered(lab);

  // Registered: a client outside the pod reaches the inbound side, which sees the
  // address and port the client dialled.
  auto r = lab.Connect("client", "10.211.0.2:8080", 5);
  INFO(r.dump());
  CHECK(r["ok"] == 5);
  CHECK(r["by_server"]["inbound 10.211.0.2:8080"] == 5);
  CHECK(Steered(lab) - before == 5);
  // The entry is visible (sluicectl and tests read it back).
  auto entries = lab.dp().Inbound();
  REQUIRE(entries);
  REQUIRE(entries->size() == 1);
  CHECK(entries->front().first.first == pod_ip);
  CHECK(entries->front().first.second == 8080);

  // Another port of the same pod is not registered: the application answers.
  r = lab.Connect("client", "10.211.0.2:9090", 3);
  CHECK(r["by_server"]["a-9090"] == 3);
  // Another pod is untouched.
  r = lab.Connect("client", "10.211.0.3:8080", 2);
  CHECK(r["by_server"]["b"] == 2);

  // The proxy's own upstream connection (source 127.0.0.6) reaches the application, not
  // the proxy again.
  CHECK(DialFromProxy(ns, "10.211.0.2", 8080) == "a\n");

  // Unregistered: straight to the application again.
  REQUIRE(lab.dp().ClearInbound(pod_ip, 8080));
  r = lab.Connect("client", "10.211.0.2:8080", 3);
  CHECK(r["by_server"]["a"] == 3);

  // Registered again, then the link detached: the program no longer runs in the pod.
  REQUIRE(lab.dp().SetInbound(pod_ip, 8080, inbound.fd()));
  r = lab.Connect("client", "10.211.0.2:8080", 1);
  CHECK(r["by_server"]["inbound 10.211.0.2:8080"] == 1);
  REQUIRE(lab.dp().DetachInbound(cookie));
  CHECK_FALSE(std::filesystem::exists(lab.pin_root() + "/links/inbound-" + std::to_string(cookie)));
  r = lab.Connect("client", "10.211.0.2:8080", 2);
  CHECK(r["by_server"]["a"] == 2);
}

TEST_CASE("the inbound link is pinned: it outlives the loader and is taken over by the next") {
  Lab lab;
  lab.AddClientAndServers();
  const std::string ns = lab.pod("a").netns;
  InboundListener inbound(ns);
  const auto pod_ip = *IpAddress::Parse("10.211.0.2");
  const uint64_t cookie = lab.Cookie("a");
  int nsfd = open(("/run/netns/" + ns).c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(nsfd >= 0);
  REQUIRE(lab.dp().AttachInbound(nsfd, cookie));
  REQUIRE(lab.dp().SetInbound(pod_ip, 8080, inbound.fd()));
  // The agent goes away (its handle to the data plane closes; pins stay).
  lab.CloseDataplane();
  auto r = lab.Connect("client", "10.211.0.2:8080", 2);
  CHECK(r["by_server"]["inbound 10.211.0.2:8080"] == 2);
  // The next one adopts and attaches again: the pinned link is kept and runs its program.
  auto again = lab.dp().AttachInbound(nsfd, cookie);
  close(nsfd);
  INFO((again ? "" : again.error().message));
  REQUIRE(again);
  r = lab.Connect("client", "10.211.0.2:8080", 2);
  CHECK(r["by_server"]["inbound 10.211.0.2:8080"] == 2);
  REQUIRE(lab.dp().DetachInbound(cookie));
}

TEST_CASE(
    "a steered port's guard decides when its inbound socket is gone: a policy port is "
    "refused and counted, the others reach the application, guards outlive the loader") {
  Lab lab;
  lab.AddClientAndServers();  // client .10; a .2 and b .3 serve their names on 8080
  lab.Serve("a", {"10.211.0.2:9090", "10.211.0.2:7000"}, "a-other");
  const std::string ns = lab.pod("a").netns;
  const auto pod_ip = *IpAddress::Parse("10.211.0.2");
  const uint64_t cookie = lab.Cookie("a");
  int nsfd = open(("/run/netns/" + ns).c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(nsfd >= 0);
  REQUIRE(lab.dp().AttachInbound(nsfd, cookie));
  auto unserved = [&] { return lab.ReadCounters()[SLUICE_CNT_INBOUND_UNSERVED]; };

  // 8080 carries a policy only the proxy enforces (guard closed); 9090 is steered for
  // routing only (guard open). Both reach the inbound listener while it is there.
  REQUIRE(lab.dp().SetInboundGuard(pod_ip, 8080, true));
  REQUIRE(lab.dp().SetInboundGuard(pod_ip, 9090, false));
  {
    InboundListener inbound(ns);
    REQUIRE(lab.dp().SetInbound(pod_ip, 8080, inbound.fd()));
    REQUIRE(lab.dp().SetInbound(pod_ip, 9090, inbound.fd()));
    auto r = lab.Connect("client", "10.211.0.2:8080", 2);
    CHECK(r["by_server"]["inbound 10.211.0.2:8080"] == 2);
    r = lab.Connect("client", "10.211.0.2:9090", 1);
    CHECK(r["by_server"]["inbound 10.211.0.2:9090"] == 1);
  }  // the listener closes, as the agent's sockets do when it exits: its entries go

  uint64_t before = unserved();
  auto r = lab.Connect("client", "10.211.0.2:8080", 3);
  INFO(r.dump());
  CHECK(Count(r, "errors", "ECONNREFUSED") == 3);  // never the application's "a"
  CHECK(unserved() - before == 3);
  r = lab.Connect("client", "10.211.0.2:9090", 2);
  CHECK(r["by_server"]["a-other"] == 2);
  // A port with no guard of its own and no port-0 guard: the application's.
  r = lab.Connect("client", "10.211.0.2:7000", 1);
  CHECK(r["by_server"]["a-other"] == 1);
  // A port-0 guard (passthrough chains with a policy) covers every port without its own;
  // a port's own open guard still wins.
  REQUIRE(lab.dp().SetInboundGuard(pod_ip, 0, true));
  before = unserved();
  r = lab.Connect("client", "10.211.0.2:7000", 2);
  CHECK(Count(r, "errors", "ECONNREFUSED") == 2);
  r = lab.Connect("client", "10.211.0.2:9090", 1);
  CHECK(r["by_server"]["a-other"] == 1);
  CHECK(unserved() - before == 2);
  // The proxy's own connections (from 127.0.0.6) are never the guard's.
  CHECK(DialFromProxy(ns, "10.211.0.2", 8080) == "a\n");

  // The agent goes away: guards stay in force, and the next one reads them back.
  lab.CloseDataplane();
  r = lab.Connect("client", "10.211.0.2:8080", 1);
  CHECK(Count(r, "errors", "ECONNREFUSED") == 1);
  auto guards = lab.dp().InboundGuards();
  REQUIRE(guards);
  CHECK(*guards == std::map<std::pair<IpAddress, uint16_t>, bool>{
                       {{pod_ip, 0}, true}, {{pod_ip, 8080}, true}, {{pod_ip, 9090}, false}});

  // Cleared: the application again.
  REQUIRE(lab.dp().ClearInboundGuard(pod_ip, 0));
  REQUIRE(lab.dp().ClearInboundGuard(pod_ip, 8080));
  r = lab.Connect("client", "10.211.0.2:8080", 1);
  CHECK(r["by_server"]["a"] == 1);
  REQUIRE(lab.dp().DetachInbound(cookie));
  close(nsfd);
}
