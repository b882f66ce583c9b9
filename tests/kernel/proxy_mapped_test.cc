// The real L7 proxy behind the connect hook's redirect, for a dual-stack client (issue
// 18): an application that dials an IPv4 service as ::ffff:VIP from an AF_INET6 socket
// (gRPC's C core, Java) is redirected to the pod's capture listener on 127.0.0.1, whose
// original destination (ProxyOptions::original_dst, getsockopt(SO_ORIGINAL_DST)) must be
// the IPv4 VIP, so the use_original_dst hand-over finds the 0.0.0.0_PORT listener as it
// does for an AF_INET client and the HTTP route serves the request.
//
// The lab: pod "a" runs an HTTP server naming itself (x-upstream); the enrolled client
// pod has the proxy (in-process) on 127.0.0.1:15001, its listening socket made inside
// the pod and the lab cgroup as the agent's is, so the getsockopt hook answers it. The
// proxy's workers join the client pod; their upstream sockets are outside the lab cgroup
// and reach pod a directly. curl runs in the client pod and the lab cgroup.
#include <fcntl.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "harness.h"
#include "lab.h"
#include "sluice/proxy/proxy.h"
#include "test_upstream.h"

using sluice::test::Lab;
using sluice::testing::Json;
using sluice::testing::TestUpstream;

namespace {

constexpr uint16_t kCapturePort = 15001;

// Runs f() on a thread that has joined the pod's network namespace; f returns an error
// message, empty on success.
template <class F>
std::string InNetns(const std::string& netns, F f) {
  std::string error;
  std::thread t([&] {
    int fd = open(("/run/netns/" + netns).c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0 || setns(fd, CLONE_NEWNET) != 0) {
      error = "cannot enter netns " + netns;
      if (fd >= 0)
        close(fd);
      return;
    }
    close(fd);
    error = f();
  });
  t.join();
  return error;
}

// A non-blocking listening socket on ip:port made by a child process inside `cgroup` and
// the pod's network namespace (a socket belongs to its maker's cgroup, and so do the
// connections it accepts), handed back over a socket pair.
sluice::Result<int> ListenInPod(const std::string& cgroup, const std::string& netns,
                                const std::string& ip, uint16_t port) {
  auto addr = sluice::proxy::ParseIp(ip, port);
  if (!addr)
    return sluice::Fail("bad listener address " + ip);
  int sp[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) != 0)
    return sluice::FailErrno("socketpair", errno);
  // The child of a threaded process only makes system calls: everything it needs is
  // prepared here.
  const std::string procs = cgroup + "/cgroup.procs", ns_path = "/run/netns/" + netns;
  pid_t pid = fork();
  if (pid < 0)
    return sluice::FailErrno("fork", errno);
  if (pid == 0) {
    close(sp[0]);
    int cg = open(procs.c_str(), O_WRONLY | O_CLOEXEC);
    if (cg < 0 || write(cg, "0", 1) != 1)  // "0": the writing process itself
      _exit(1);
    int ns = open(ns_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (ns < 0 || setns(ns, CLONE_NEWNET) != 0)
      _exit(2);
    int fd = socket(addr->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    const socklen_t len = addr->ss_family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6);
    if (fd < 0 || bind(fd, reinterpret_cast<const sockaddr*>(&*addr), len) != 0 ||
        listen(fd, 1024) != 0)
      _exit(3);
    char byte = 0;
    iovec iov{&byte, 1};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &fd, sizeof(int));
    _exit(sendmsg(sp[1], &msg, 0) == 1 ? 0 : 4);
  }
  close(sp[1]);
  char byte = 0;
  iovec iov{&byte, 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n = recvmsg(sp[0], &msg, MSG_CMSG_CLOEXEC);
  close(sp[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  cmsghdr* c = n == 1 ? CMSG_FIRSTHDR(&msg) : nullptr;
  if (!c || c->cmsg_type != SCM_RIGHTS)
    return sluice::Fail("listener " + ip + ":" + std::to_string(port) + " in " + netns +
                        ": the child failed (exit " + std::to_string(WEXITSTATUS(status)) + ")");
  int fd;
  std::memcpy(&fd, CMSG_DATA(c), sizeof(int));
  return fd;
}

Json SocketAddress(const std::string& ip, uint16_t port) {
  return {{"socket_address", {{"address", ip}, {"port_value", port}}}};
}

Json OneEndpointCluster(const std::string& name, const std::string& ip, uint16_t port) {
  Json endpoint = Json::object();
  endpoint["endpoint"]["address"] = SocketAddress(ip, port);
  Json locality = Json::object();
  locality["lb_endpoints"] = Json::array({endpoint});
  Json c = Json::object();
  c["name"] = name;
  c["type"] = "STATIC";
  c["connect_timeout"] = "1s";
  c["lb_policy"] = "ROUND_ROBIN";
  c["load_assignment"]["cluster_name"] = name;
  c["load_assignment"]["endpoints"] = Json::array({locality});
  return c;
}

}  // namespace

TEST_CASE("a dual-stack client's ::ffff:VIP reaches the L7 proxy as the IPv4 VIP and is routed") {
  Lab lab;
  const auto& a = lab.AddPod("a", 2);
  std::unique_ptr<TestUpstream> server;
  std::string error = InNetns(a.netns, [&]() -> std::string {
    try {
      server = std::make_unique<TestUpstream>(
          TestUpstream::Options{.name = "a", .port = 8080, .address = a.ip4, .record = false});
    } catch (const std::exception& e) {
      return e.what();
    }
    return "";
  });
  INFO(error);
  REQUIRE(error.empty());
  const auto& client = lab.AddPod("client", 10);
  lab.Enrol("client", kCapturePort);
  sluice::ServiceSpec reviews = sluice::test::Service("reviews", {"10.96.213.1"}, 9080, {});
  reviews.redirect_to_proxy = true;
  sluice::test::Apply(lab, reviews);

  // Istio's shape: virtualOutbound (use_original_dst) on the capture port hands each
  // connection to the listener of its original destination, here 0.0.0.0_9080; what it
  // keeps goes to a port where nothing listens.
  Json tcp_proxy = {
      {"@type", "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"},
      {"stat_prefix", "blackhole"},
      {"cluster", "blackhole"}};
  Json tcp_filter = Json::object();
  tcp_filter["name"] = "envoy.filters.network.tcp_proxy";
  tcp_filter["typed_config"] = tcp_proxy;
  Json chain = Json::object();
  chain["filters"] = Json::array({tcp_filter});
  Json capture = sluice::testing::Listener("virtualOutbound", Json::array({chain}));
  capture["address"] = SocketAddress("127.0.0.1", kCapturePort);
  capture["use_original_dst"] = true;
  Json route = {{"name", "reviews"},
                {"match", {{"prefix", "/"}}},
                {"route", {{"cluster", "outbound|9080||reviews"}}}};
  Json http = sluice::testing::HttpListener(
      "0.0.0.0_9080", sluice::testing::RouteConfig("9080", Json::array({route})), false);
  http["address"] = SocketAddress("0.0.0.0", 9080);
  http["bind_to_port"] = false;
  Json doc = {{"listeners", Json::array({capture, http})},
              {"clusters", Json::array({OneEndpointCluster("outbound|9080||reviews", a.ip4, 8080),
                                        OneEndpointCluster("blackhole", a.ip4, 9)})}};
  auto config = sluice::testing::CompileJson(doc);
  INFO((config ? "" : config.error().message));
  REQUIRE(config);

  sluice::proxy::ProxyOptions opts;
  opts.workers = 1;
  opts.open_listener = [&](const sluice::proxy::ListenerConfig& l, uint16_t port) {
    return ListenInPod(lab.cgroup(), client.netns, l.address, port);
  };
  opts.on_worker_start = [&](int) -> sluice::Result<void> {
    int fd = open(("/run/netns/" + client.netns).c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0 || setns(fd, CLONE_NEWNET) != 0)
      return sluice::FailErrno("joining the client pod", errno);
    close(fd);
    return {};
  };
  auto proxy = sluice::proxy::Proxy::Start(*config, opts);
  INFO((proxy ? "" : proxy.error().message));
  REQUIRE(proxy);

  auto before = lab.ReadCounters();
  // curl in the client pod, in the lab cgroup: the IPv4 VIP, then the same VIP mapped
  // (an IPv6 literal: curl dials it from an AF_INET6 socket).
  const std::vector<std::string> urls = {"http://10.96.213.1:9080/",
                                         "http://[::ffff:10.96.213.1]:9080/"};
  std::string cmd = "echo $$ > " + lab.cgroup() + "/cgroup.procs && ip netns exec " + client.netns +
                    " curl -s --max-time 5 -w '%{http_code} %header{x-upstream}\\n'";
  for (const auto& u : urls)
    cmd += " -o /dev/null " + u;
  cmd += "; true";
  std::istringstream out(sluice::test::Sh(cmd));
  std::vector<std::string> got;
  for (std::string line; std::getline(out, line);)
    got.push_back(line);
  (*proxy)->Stop();
  INFO("IPv4, mapped: " << Json(got).dump());
  REQUIRE(got.size() == 2);
  CHECK(got[0] == "200 a");
  CHECK(got[1] == "200 a");  // routed by the 0.0.0.0_9080 listener: the VIP came as IPv4
  auto after = lab.ReadCounters();
  CHECK(sluice::test::Delta(before, after, SLUICE_CNT_REDIRECTED) == 2);
  CHECK(sluice::test::Delta(before, after, SLUICE_CNT_ORIG_DST) == 2);
}
