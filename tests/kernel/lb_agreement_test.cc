// One load-balancing library for both paths, end to end: under consistent hashing a
// client reaches the same endpoint whether the connect hook translates its connection
// to a MAGLEV or RING_HASH service or the L7 proxy routes its request (Envoy route
// hash_policy connection_properties source_ip, and a tcp_proxy), because both build the
// same Maglev table over the same "ip:port" names and hash the client address alike.
//
// The lab: endpoint pods a, b, c run HTTP servers naming themselves (x-upstream); the
// proxy (in-process, started from Envoy JSON) listens in pod "proxy", which the client
// pods reach over the bridge, so the peer address it hashes is the client's own. The
// clients are four enrolled pods, each by its own address, and 24 more source
// addresses bound inside the first of them. curl runs in the pod and the lab cgroup;
// one run asks the two service VIPs (kernel path) and the proxy's three routes.
#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <map>
#include <memory>
#include <set>
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

// Runs f() on a thread that has joined the pod's network namespace (setns is per
// thread); f returns an error message, empty on success.
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

// A listening socket inside the network namespace, as the node agent opens its in-pod
// listeners.
sluice::Result<int> ListenIn(const std::string& netns, const std::string& ip, uint16_t port) {
  int fd = -1;
  std::string error = InNetns(netns, [&]() -> std::string {
    auto addr = sluice::proxy::ParseIp(ip, port);
    if (!addr)
      return "bad listener address " + ip;
    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (bind(fd, reinterpret_cast<const sockaddr*>(&*addr), sizeof(sockaddr_in)) != 0 ||
        listen(fd, 1024) != 0)
      return "listen on " + ip + ": " + std::strerror(errno);
    return "";
  });
  if (!error.empty()) {
    if (fd >= 0)
      close(fd);
    return sluice::Fail(error);
  }
  return fd;
}

// The endpoints as Envoy lb_endpoints: a, b (weight 2), c, and an IPv6 address of pod a
// where nothing listens. The kernel's IPv4 table leaves the IPv6 endpoint out; the
// proxy must too for a source-IP key, or some IPv4 clients would be sent there.
struct EndpointDef {
  std::string ip;
  uint32_t weight;
};
const std::vector<EndpointDef> kEndpoints = {
    {"10.211.0.2", 1}, {"10.211.0.3", 2}, {"10.211.0.4", 1}, {"fd11::2", 1}};
constexpr uint16_t kEndpointPort = 8080;

Json HashCluster(const std::string& name, const std::string& lb) {
  Json lbs = Json::array();
  for (const auto& e : kEndpoints) {
    Json address = {{"socket_address", {{"address", e.ip}, {"port_value", kEndpointPort}}}};
    lbs.push_back(Json{{"endpoint", {{"address", address}}}, {"load_balancing_weight", e.weight}});
  }
  Json locality = Json::object();
  locality["lb_endpoints"] = lbs;
  Json c = Json::object();
  c["name"] = name;
  c["type"] = "STATIC";
  c["connect_timeout"] = "1s";
  c["lb_policy"] = lb;
  c["load_assignment"]["cluster_name"] = name;
  c["load_assignment"]["endpoints"] = Json::array({locality});
  return c;
}

Json At(Json listener, const std::string& ip, uint16_t port) {
  listener["address"]["socket_address"]["address"] = ip;
  listener["address"]["socket_address"]["port_value"] = port;
  return listener;
}

sluice::ServiceSpec KernelService(const std::string& name, const std::string& vip,
                                  sluice::LbPolicy lb) {
  std::vector<sluice::EndpointSpec> eps;
  for (const auto& e : kEndpoints) {
    const std::string addr = e.ip.find(':') == std::string::npos ? e.ip : "[" + e.ip + "]";
    eps.push_back(sluice::test::Ep(addr + ":" + std::to_string(kEndpointPort), e.weight));
  }
  return sluice::test::Service(name, {vip}, 80, {sluice::test::Cluster(name, 1, lb, eps)});
}

}  // namespace

TEST_CASE(
    "a client reaches the same endpoint through the connect hook and through the L7 proxy "
    "under MAGLEV and RING_HASH") {
  Lab lab;
  // Endpoints: HTTP servers in pods a, b, c (opened inside each pod's namespace).
  std::vector<std::unique_ptr<TestUpstream>> servers;
  int host = 2;
  for (const char* name : {"a", "b", "c"}) {
    const auto& pod = lab.AddPod(name, host++);
    std::string error = InNetns(pod.netns, [&]() -> std::string {
      try {
        servers.push_back(std::make_unique<TestUpstream>(TestUpstream::Options{
            .name = name, .port = kEndpointPort, .address = pod.ip4, .record = false}));
      } catch (const std::exception& e) {
        return e.what();
      }
      return "";
    });
    INFO(error);
    REQUIRE(error.empty());
  }
  // Clients: four enrolled pods; the first also owns 10.212.0.0/24 (a local route), and
  // whoever answers those addresses routes them back through it.
  std::vector<std::string> clients = {"c1", "c2", "c3", "c4"};
  for (std::size_t i = 0; i < clients.size(); ++i) {
    lab.AddPod(clients[i], 11 + static_cast<int>(i));
    lab.Enrol(clients[i]);
  }
  const auto& proxy_pod = lab.AddPod("proxy", 20);
  sluice::test::Sh("ip -n " + lab.pod("c1").netns + " route add local 10.212.0.0/24 dev lo");
  for (const char* p : {"a", "b", "c", "proxy"})
    sluice::test::Sh("ip -n " + lab.pod(p).netns + " route add 10.212.0.0/24 via 10.211.0.11");

  // The kernel path: two L4 services over the same endpoints.
  sluice::test::Apply(lab, KernelService("maglev", "10.96.212.1", sluice::LbPolicy::kMaglev));
  sluice::test::Apply(lab, KernelService("ring", "10.96.212.2", sluice::LbPolicy::kRingHash));

  // The L7 path: the same endpoints as Envoy clusters, routes hashing the source IP, and
  // a tcp_proxy (which hashes the client's address too).
  Json source_ip = Json::array({{{"connection_properties", {{"source_ip", true}}}}});
  auto route = [&](const std::string& prefix, const std::string& cluster) {
    return Json{{"name", cluster},
                {"match", {{"prefix", prefix}}},
                {"route", {{"cluster", cluster}, {"hash_policy", source_ip}}}};
  };
  Json tcp_proxy = Json::object();
  tcp_proxy["@type"] = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
  tcp_proxy["stat_prefix"] = "tcp";
  tcp_proxy["cluster"] = "maglev";
  Json by_source = Json::object();
  by_source["source_ip"] = Json::object();
  tcp_proxy["hash_policy"] = Json::array({by_source});
  Json tcp_filter = Json::object();
  tcp_filter["name"] = "envoy.filters.network.tcp_proxy";
  tcp_filter["typed_config"] = tcp_proxy;
  Json tcp_chain = Json::object();
  tcp_chain["filters"] = Json::array({tcp_filter});
  Json tcp = sluice::testing::Listener("tcp", Json::array({tcp_chain}));
  Json doc = {{"listeners", Json::array({At(sluice::testing::HttpListener(
                                                "http",
                                                sluice::testing::RouteConfig(
                                                    "r", Json::array({route("/maglev", "maglev"),
                                                                      route("/ring", "ring")})),
                                                false),
                                            proxy_pod.ip4, 8000),
                                         At(tcp, proxy_pod.ip4, 8001)})},
              {"clusters",
               Json::array({HashCluster("maglev", "MAGLEV"), HashCluster("ring", "RING_HASH")})}};
  auto config = sluice::testing::CompileJson(doc);
  INFO((config ? "" : config.error().message));
  REQUIRE(config);
  sluice::proxy::ProxyOptions opts;
  opts.workers = 2;
  opts.open_listener = [&](const sluice::proxy::ListenerConfig& l, uint16_t port) {
    return ListenIn(proxy_pod.netns, l.address, port);
  };
  // Workers join the proxy pod, so upstream connections leave from it.
  opts.on_worker_start = [&](int) -> sluice::Result<void> {
    int fd = open(("/run/netns/" + proxy_pod.netns).c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0 || setns(fd, CLONE_NEWNET) != 0)
      return sluice::FailErrno("joining the proxy pod", errno);
    close(fd);
    return {};
  };
  auto proxy = sluice::proxy::Proxy::Start(*config, opts);
  INFO((proxy ? "" : proxy.error().message));
  REQUIRE(proxy);

  // Each client identity asks all five once: the two VIPs, then the proxy's routes.
  const std::vector<std::string> urls = {
      "http://10.96.212.1/", "http://10.96.212.2/", "http://" + proxy_pod.ip4 + ":8000/maglev",
      "http://" + proxy_pod.ip4 + ":8000/ring", "http://" + proxy_pod.ip4 + ":8001/"};
  struct Identity {
    std::string pod, source;  // source "": the pod's own address
  };
  std::vector<Identity> identities;
  for (const auto& c : clients)
    identities.push_back({c, ""});
  for (int i = 1; i <= 24; ++i)
    identities.push_back({"c1", "10.212.0." + std::to_string(i)});

  std::map<std::string, std::vector<std::string>> reached;  // identity -> endpoint per URL
  for (const auto& id : identities) {
    std::string cmd = "echo $$ > " + lab.cgroup() + "/cgroup.procs && ip netns exec " +
                      lab.pod(id.pod).netns + " curl -s --max-time 5";
    if (!id.source.empty())
      cmd += " --interface " + id.source;
    cmd += " -w '%{http_code} %header{x-upstream}\\n'";
    for (const auto& u : urls)
      cmd += " -o /dev/null " + u;
    cmd += "; true";
    std::istringstream out(sluice::test::Sh(cmd));
    const std::string who = id.pod + (id.source.empty() ? "" : " from " + id.source);
    std::vector<std::string> got;
    for (std::string line; std::getline(out, line);)
      got.push_back(line);
    INFO(who << " reached: " << Json(got).dump());
    REQUIRE(got.size() == urls.size());
    reached[who] = got;
  }
  (*proxy)->Stop();

  // Every request answered, and each client on the same endpoint on both paths.
  std::set<std::string> used_maglev, used_ring;
  int disagree = 0;
  for (const auto& [who, got] : reached) {
    INFO(who << ": kernel MAGLEV, kernel RING_HASH, proxy MAGLEV, proxy RING_HASH, tcp_proxy: "
             << Json(got).dump());
    for (const auto& g : got)
      CHECK(g.rfind("200 ", 0) == 0);
    CHECK(got[2] == got[0]);  // route hash_policy source_ip, MAGLEV
    CHECK(got[3] == got[1]);  // route hash_policy source_ip, RING_HASH
    CHECK(got[4] == got[0]);  // tcp_proxy to the MAGLEV cluster
    disagree += got[2] != got[0] || got[3] != got[1] || got[4] != got[0];
    used_maglev.insert(got[0]);
    used_ring.insert(got[1]);
  }
  CHECK(disagree == 0);
  // The clients do spread: agreement is not everyone on one endpoint.
  CHECK(used_maglev.size() == 3);
  CHECK(used_ring.size() == 3);
}
