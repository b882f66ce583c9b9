// L4 policy in the kernel (issue 17): the pod's sk_lookup program (pod_inbound.bpf.c)
// refuses a connect to (pod address, port) whose kernel policy denies its source, before
// any socket is chosen: the client's connect fails with ECONNREFUSED (the kernel answers
// the SYN with a RST) and policy_denied counts it. DENY of a prefix, ALLOW of one source,
// an ALLOW without sources, IPv6, a replaced and a removed policy, and the proxy's own
// loopback-sourced upstream connection, which the policy never sees.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <thread>

#include "lab.h"

using namespace sluice;
using namespace sluice::test;

namespace {

uint64_t Denied(Lab& lab) {
  return lab.ReadCounters()[SLUICE_CNT_POLICY_DENIED];
}

Cidr Prefix(const std::string& s) {
  auto c = Cidr::Parse(s);
  REQUIRE(c);
  return *c;
}

// From inside pod `ns`, bound to 127.0.0.6 as the inbound proxy dials the application.
std::string DialFromLoopback(const std::string& ns, const std::string& ip, uint16_t port) {
  std::string out = "not run";
  std::thread t([&] {
    int fd = open(("/run/netns/" + ns).c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0 || setns(fd, CLONE_NEWNET) != 0) {
      out = "setns failed";
      if (fd >= 0)
        close(fd);
      return;
    }
    close(fd);
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in src{}, dst{};
    src.sin_family = dst.sin_family = AF_INET;
    inet_pton(AF_INET, "127.0.0.6", &src.sin_addr);
    dst.sin_port = htons(port);
    inet_pton(AF_INET, ip.c_str(), &dst.sin_addr);
    if (bind(s, reinterpret_cast<sockaddr*>(&src), sizeof(src)) == 0 &&
        connect(s, reinterpret_cast<sockaddr*>(&dst), sizeof(dst)) == 0) {
      char buf[64];
      ssize_t n = read(s, buf, sizeof(buf));
      out = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "empty";
    } else {
      out = std::string("error: ") + std::strerror(errno);
    }
    close(s);
  });
  t.join();
  return out;
}

}  // namespace

TEST_CASE("a pod port's L4 policy refuses denied sources at connect time, counted") {
  Lab lab;
  lab.AddClientAndServers();  // client .10; a .2 and b .3 serve their names on 8080
  lab.AddPod("other", 4);     // a second client
  lab.Serve("a", {"10.211.0.2:9000", "[fd11::2]:9000"}, "a-9000");
  const std::string ns = lab.pod("a").netns;
  const auto pod4 = *IpAddress::Parse("10.211.0.2");
  const auto pod6 = *IpAddress::Parse("fd11::2");
  const uint64_t cookie = lab.Cookie("a");
  {
    int nsfd = open(("/run/netns/" + ns).c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE(nsfd >= 0);
    auto r = lab.dp().AttachInbound(nsfd, cookie);
    close(nsfd);
    INFO((r ? "" : r.error().message));
    REQUIRE(r);
  }

  // No policy yet: both clients get in.
  auto r = lab.Connect("client", "10.211.0.2:9000", 2);
  REQUIRE(r["ok"] == 2);

  // DENY 10.211.0.8/29 (holds the client, .10, not .4) on port 9000.
  REQUIRE(lab.dp().SetInboundPolicy(pod4, 9000, {{true, {Prefix("10.211.0.8/29")}}}));
  uint64_t before = Denied(lab);
  r = lab.Connect("client", "10.211.0.2:9000", 4);
  INFO(r.dump());
  CHECK(Count(r, "errors", "ECONNREFUSED") == 4);
  CHECK(Denied(lab) - before == 4);
  r = lab.Connect("other", "10.211.0.2:9000", 3);
  CHECK(r["by_server"]["a-9000"] == 3);
  // Another port of the pod, and the same port of another pod, have no policy.
  r = lab.Connect("client", "10.211.0.2:8080", 2);
  CHECK(r["by_server"]["a"] == 2);
  CHECK(Denied(lab) - before == 4);
  // Read back as written (sluicectl and /pods show it).
  auto pols = lab.dp().InboundPolicies();
  REQUIRE(pols);
  REQUIRE(pols->size() == 1);
  CHECK(pols->front().pod == pod4);
  CHECK(pols->front().port == 9000);
  REQUIRE(pols->front().rules.size() == 1);
  CHECK(pols->front().rules[0].deny);
  CHECK(pols->front().rules[0].sources == std::vector<Cidr>{Prefix("10.211.0.8/29")});

  // Replaced by ALLOW of the other client only (ipBlocks: ["10.211.0.4"]).
  REQUIRE(lab.dp().SetInboundPolicy(pod4, 9000, {{false, {Prefix("10.211.0.4/32")}}}));
  before = Denied(lab);
  r = lab.Connect("other", "10.211.0.2:9000", 3);
  CHECK(r["by_server"]["a-9000"] == 3);
  r = lab.Connect("client", "10.211.0.2:9000", 2);
  CHECK(Count(r, "errors", "ECONNREFUSED") == 2);
  CHECK(Denied(lab) - before == 2);
  pols = lab.dp().InboundPolicies();
  REQUIRE(pols);
  REQUIRE(pols->size() == 1);
  CHECK_FALSE(pols->front().rules[0].deny);
  CHECK(pols->front().rules[0].sources == std::vector<Cidr>{Prefix("10.211.0.4/32")});

  // The inbound proxy's own upstream connection (from 127.0.0.6) is not the policy's.
  CHECK(DialFromLoopback(ns, "10.211.0.2", 9000) == "a-9000\n");

  // Two rules in chain order: DENY the other client, then ALLOW the /24: the other client
  // is refused by the first, the client passes both.
  REQUIRE(lab.dp().SetInboundPolicy(
      pod4, 9000, {{true, {Prefix("10.211.0.4/32")}}, {false, {Prefix("10.211.0.0/24")}}}));
  before = Denied(lab);
  r = lab.Connect("other", "10.211.0.2:9000", 2);
  CHECK(Count(r, "errors", "ECONNREFUSED") == 2);
  r = lab.Connect("client", "10.211.0.2:9000", 1);
  CHECK(r["ok"] == 1);  // the ALLOW rule holds .10, the DENY rule does not
  CHECK(Denied(lab) - before == 2);

  // IPv6: ALLOW fd11::4 on [fd11::2]:9000; the IPv4 address keeps its own policy.
  REQUIRE(lab.dp().SetInboundPolicy(pod6, 9000, {{false, {Prefix("fd11::4/128")}}}));
  before = Denied(lab);
  r = lab.Connect("other", "[fd11::2]:9000", 2);
  CHECK(r["by_server"]["a-9000"] == 2);
  r = lab.Connect("client", "[fd11::2]:9000", 3);
  CHECK(Count(r, "errors", "ECONNREFUSED") == 3);
  CHECK(Denied(lab) - before == 3);

  // ALLOW without sources (istiod's TCP deny-all): everyone refused.
  REQUIRE(lab.dp().SetInboundPolicy(pod4, 9000, {{false, {}}}));
  before = Denied(lab);
  r = lab.Connect("other", "10.211.0.2:9000", 2);
  CHECK(Count(r, "errors", "ECONNREFUSED") == 2);
  CHECK(Denied(lab) - before == 2);

  // Removed: access is back, nothing is left in the maps.
  REQUIRE(lab.dp().ClearInboundPolicy(pod4, 9000).value_or(false));
  REQUIRE(lab.dp().ClearInboundPolicy(pod6, 9000).value_or(false));
  before = Denied(lab);
  r = lab.Connect("client", "10.211.0.2:9000", 2);
  CHECK(r["by_server"]["a-9000"] == 2);
  r = lab.Connect("client", "[fd11::2]:9000", 2);
  CHECK(r["by_server"]["a-9000"] == 2);
  CHECK(Denied(lab) == before);
  pols = lab.dp().InboundPolicies();
  REQUIRE(pols);
  CHECK(pols->empty());
  CHECK(nlohmann::json::parse(
            Sh("bpftool -j map dump pinned " + lab.pin_root() + "/sluice_policy_prefixes"))
            .empty());
  REQUIRE(lab.dp().DetachInbound(cookie));
}
