// sluice-agent end to end, as a real process: xDS config from a real ADS server (standing
// in for istiod), a pod handed over through the real CNI protocol, enrolment following
// namespace labels (from the label file that stands in for the Kubernetes API), kernel
// translation, admin endpoint, clean stop, restart with adoption.
#include <arpa/inet.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "../kernelsync/fixtures.h"
#include "lab.h"
#include "sluice/cni/protocol.h"
#include "sluice/xds/ads_server.h"

using namespace sluice;
using namespace sluice::test;
namespace fs = std::filesystem;

namespace {

using EnvoyCluster = envoy::config::cluster::v3::Cluster;
using envoy::config::endpoint::v3::ClusterLoadAssignment;
using envoy::config::listener::v3::Listener;
using envoy::config::route::v3::RouteConfiguration;

sluice::xds::ResourceSet WebConfig() {
  const std::string c = "outbound|80||web.default.svc.cluster.local";
  sluice::xds::ResourceSet rs;
  rs.Add(FromJson<EnvoyCluster>(Eds(c, "ROUND_ROBIN")));
  rs.Add(FromJson<ClusterLoadAssignment>(Cla(c, {"10.211.0.2:8080"})));
  rs.Add(FromJson<Listener>(HttpListener(80)));
  rs.Add(FromJson<Listener>(VirtualOutbound("PassthroughCluster")));
  rs.Add(FromJson<RouteConfiguration>(
      R"({"name":"80","virtualHosts":[{"name":"web.default.svc.cluster.local:80","domains":["web.default.svc.cluster.local","web","10.96.211.90"],"routes":[{"match":{"prefix":"/"},"route":{"cluster":")" +
      c + R"(","timeout":"0s",)" + kDefaultRetry + "}}]}]}"));
  return rs;
}

std::string HttpGet(int port, const std::string& path, int* status) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_port = htons(static_cast<uint16_t>(port));
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string out;
  *status = 0;
  if (connect(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) == 0) {
    std::string req = "GET " + path + " HTTP/1.1\r\nHost: x\r\n\r\n";
    if (write(fd, req.data(), req.size()) > 0) {
      char buf[8192];
      ssize_t n;
      while ((n = read(fd, buf, sizeof(buf))) > 0)
        out.append(buf, static_cast<size_t>(n));
    }
  }
  close(fd);
  if (out.size() > 12)
    *status = std::atoi(out.c_str() + 9);
  auto body = out.find("\r\n\r\n");
  return body == std::string::npos ? "" : out.substr(body + 4);
}

struct Agent {
  std::unique_ptr<Process> proc;
  int admin_port = 0;
};

// Starts sluice-agent and waits for its admin endpoint and readiness.
Agent StartAgent(Lab& lab, const std::string& dir, int xds_port) {
  Agent a;
  a.proc = std::make_unique<Process>(std::vector<std::string>{
      SLUICE_AGENT_PATH, "--xds-address", "127.0.0.1:" + std::to_string(xds_port), "--pin-root",
      lab.pin_root(), "--cgroup-root", lab.cgroup(), "--cni-socket", dir + "/cni.sock",
      "--state-file", dir + "/pods.json", "--labels-file", dir + "/labels.json", "--admin-address",
      "127.0.0.1:0"});
  for (int i = 0; i < 50 && a.admin_port == 0; i++) {
    std::string line = a.proc->ReadLine(20000);
    auto at = line.find("admin on 127.0.0.1:");
    if (at != std::string::npos)
      a.admin_port = std::atoi(line.c_str() + at + 19);
  }
  REQUIRE(a.admin_port > 0);
  int status = 0;
  for (int i = 0; i < 100 && status != 200; i++) {
    HttpGet(a.admin_port, "/ready", &status);
    if (status != 200)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  REQUIRE(status == 200);
  return a;
}

void WriteLabelsJson(const std::string& dir, const std::string& json) {
  std::ofstream(dir + "/labels.json.tmp") << json;
  fs::rename(dir + "/labels.json.tmp", dir + "/labels.json");
}

void WriteLabels(const std::string& dir, bool enrolled) {
  WriteLabelsJson(dir, enrolled
                           ? R"({"namespaces":{"default":{"istio.io/dataplane-mode":"sluice"}}})"
                           : R"({"namespaces":{"default":{}}})");
}

cni::CniRequest AddRequest(Lab& lab, const std::string& pod, const std::string& ns,
                           const std::string& ip) {
  cni::CniRequest add;
  add.op = cni::Operation::kAdd;
  add.cni_version = "1.0.0";
  add.container_id = "sandbox-" + pod;
  add.ifname = "eth0";
  add.netns = "/run/netns/" + lab.pod(pod).netns;
  add.pod_name = pod;
  add.pod_namespace = ns;
  add.pod_uid = "uid-" + pod;
  add.ips = {ip + "/24"};
  return add;
}

// A lab with server a behind web's VIP, an ADS server with WebConfig, a temp dir.
struct AgentLab {
  Lab lab;
  std::string dir;
  sluice::xds::AdsServer ads{[](const envoy::config::core::v3::Node&) { return WebConfig(); }};
  int xds_port = 0;
  AgentLab() {
    lab.AddPod("a", 2);
    lab.Serve("a", {"10.211.0.2:8080"}, "a");
    dir = "/tmp/" + lab.tag() + "-agent";
    fs::create_directories(dir);
    sluice::xds::AdsServerOptions ao;
    ao.address = "127.0.0.1:0";
    auto port = ads.Start(ao);
    REQUIRE(port);
    xds_port = *port;
  }
  ~AgentLab() {
    ads.Stop();
    fs::remove_all(dir);
  }
};

// Milliseconds until `pred` holds (polling every 20 ms), or -1 after 3 s.
template <class F>
long Within(F pred) {
  auto start = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - start < std::chrono::seconds(3)) {
    if (pred())
      return std::chrono::duration_cast<std::chrono::milliseconds>(
                 std::chrono::steady_clock::now() - start)
          .count();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return -1;
}

}  // namespace

TEST_CASE("sluice-agent: xDS to kernel, CNI pods enrolled by labels, restart keeps the data path") {
  Lab lab;
  lab.AddPod("client", 10);
  lab.AddPod("a", 2);
  lab.Serve("a", {"10.211.0.2:8080"}, "a");
  const std::string dir = "/tmp/" + lab.tag() + "-agent";
  fs::create_directories(dir);
  struct Rm {
    std::string d;
    ~Rm() { fs::remove_all(d); }
  } rm{dir};
  WriteLabels(dir, true);

  sluice::xds::AdsServer ads([](const envoy::config::core::v3::Node&) { return WebConfig(); });
  sluice::xds::AdsServerOptions ao;
  ao.address = "127.0.0.1:0";
  auto xds_port = ads.Start(ao);
  REQUIRE(xds_port);

  auto agent = StartAgent(lab, dir, *xds_port);

  // The runtime hands the pod over (the real protocol sluice-cni speaks).
  cni::CniRequest add;
  add.op = cni::Operation::kAdd;
  add.cni_version = "1.0.0";
  add.container_id = "sandbox-client";
  add.ifname = "eth0";
  add.netns = "/run/netns/" + lab.pod("client").netns;
  add.pod_name = "client";
  add.pod_namespace = "default";
  add.pod_uid = "uid-1";
  add.ips = {"10.211.0.10/24"};
  auto reply = cni::CallAgent(dir + "/cni.sock", add, std::chrono::seconds(5));
  REQUIRE(reply);
  INFO(reply->msg << " " << reply->details);
  CHECK(reply->ok);
  CHECK(reply->enrolled);

  auto via_vip = [&] {
    return Count(lab.Connect("client", "10.96.211.90:80", 1), "by_server", "a") == 1;
  };
  CHECK(via_vip());

  // Labels drive enrolment of the running pod, both ways, within a second.
  WriteLabels(dir, false);
  long off = Within([&] { return !via_vip(); });
  CHECK(off >= 0);
  CHECK(off < 1000);
  WriteLabels(dir, true);
  long on = Within(via_vip);
  CHECK(on >= 0);
  CHECK(on < 1000);

  int status = 0;
  auto metrics = HttpGet(agent.admin_port, "/metrics", &status);
  CHECK(status == 200);
  CHECK_THAT(metrics, Catch::Contains("sluice_kernel_connects_total{reason=\"translated\"}"));
  CHECK_THAT(metrics, Catch::Contains("sluice_kernel_services{path=\"kernel\"} 1"));
  CHECK_THAT(metrics, Catch::Contains("sluice_xds_connected 1"));
  auto pods = HttpGet(agent.admin_port, "/pods", &status);
  CHECK_THAT(pods, Catch::Contains("\"enrolled\": true"));
  // The same, as an operator reads it.
  auto listing = Sh(std::string(SLUICECTL_PATH) +
                    " agent --admin 127.0.0.1:" + std::to_string(agent.admin_port) + " pods");
  CHECK_THAT(listing, Catch::Matches("(.|\n)*default +client +10\\.211\\.0\\.10/24 +yes(.|\n)*"));
  auto dump = HttpGet(agent.admin_port, "/config_dump", &status);
  CHECK_THAT(dump, Catch::Contains("outbound|80||web.default.svc.cluster.local"));

  // SIGTERM: a clean stop; the kernel keeps translating with no agent running.
  kill(agent.proc->pid(), SIGTERM);
  CHECK(agent.proc->Wait() == 0);
  CHECK(via_vip());

  // Restart: adopts the pins, restores the pod from its state file, stays enrolled.
  agent = StartAgent(lab, dir, *xds_port);
  CHECK(via_vip());
  pods = HttpGet(agent.admin_port, "/pods", &status);
  CHECK_THAT(pods, Catch::Contains("\"name\": \"client\""));
  CHECK_THAT(pods, Catch::Contains("\"enrolled\": true"));

  // DEL takes the pod out; a second DEL is fine.
  cni::CniRequest del = add;
  del.op = cni::Operation::kDel;
  REQUIRE(cni::CallAgent(dir + "/cni.sock", del, std::chrono::seconds(5)));
  CHECK_FALSE(via_vip());
  auto again = cni::CallAgent(dir + "/cni.sock", del, std::chrono::seconds(5));
  REQUIRE(again);
  CHECK(again->ok);

  agent.proc->Kill();
  ads.Stop();
}

TEST_CASE("sluice-agent: pod label, opt-out and hostNetwork decide enrolment") {
  AgentLab t;
  t.lab.AddPod("labelled", 11);
  t.lab.AddPod("optout", 12);
  t.lab.AddPod("hostnet", 13);
  WriteLabelsJson(t.dir, R"({"namespaces": {"shop": {"istio.io/dataplane-mode": "sluice"}},
      "pods": {"plain/labelled": {"labels": {"istio.io/dataplane-mode": "sluice"}},
               "shop/optout": {"labels": {"istio.io/dataplane-mode": "none"}},
               "shop/hostnet": {"labels": {}, "hostNetwork": true}}})");
  auto agent = StartAgent(t.lab, t.dir, t.xds_port);
  const std::pair<const char*, const char*> pods[] = {
      {"labelled", "plain"}, {"optout", "shop"}, {"hostnet", "shop"}};
  const char* ips[] = {"10.211.0.11", "10.211.0.12", "10.211.0.13"};
  std::map<std::string, bool> enrolled;
  for (size_t i = 0; i < 3; i++) {
    auto r = cni::CallAgent(t.dir + "/cni.sock",
                            AddRequest(t.lab, pods[i].first, pods[i].second, ips[i]),
                            std::chrono::seconds(5));
    REQUIRE(r);
    INFO(r->msg);
    REQUIRE(r->ok);
    enrolled[pods[i].first] = r->enrolled;
  }
  CHECK(enrolled["labelled"]);       // the pod's own label, namespace unlabelled
  CHECK_FALSE(enrolled["optout"]);   // namespace labelled, pod opts out
  CHECK_FALSE(enrolled["hostnet"]);  // hostNetwork: never
  CHECK(Count(t.lab.Connect("labelled", "10.96.211.90:80", 2), "by_server", "a") == 2);
  CHECK(Count(t.lab.Connect("optout", "10.96.211.90:80", 2), "errors", "ENETUNREACH") == 2);
  agent.proc->Kill();
}

TEST_CASE("sluice-agent: SIGKILL under continuous L4 load fails no connection") {
  AgentLab t;
  t.lab.AddPod("client", 10);
  WriteLabels(t.dir, true);
  auto agent = StartAgent(t.lab, t.dir, t.xds_port);
  auto r =
      cni::CallAgent(t.dir + "/cni.sock", AddRequest(t.lab, "client", "default", "10.211.0.10"),
                     std::chrono::seconds(5));
  REQUIRE(r);
  REQUIRE(r->enrolled);

  auto load = t.lab.ConnectAsync("client", "10.96.211.90:80", 8000);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  REQUIRE(load->Running());  // the agent dies in the middle of the load...
  kill(agent.proc->pid(), SIGKILL);
  agent.proc->Wait();
  CHECK(load->Running());                        // ...and stays dead while connects go on
  agent = StartAgent(t.lab, t.dir, t.xds_port);  // restarts while the load runs
  auto report = nlohmann::json::parse(load->ReadLine(60000));
  INFO(report.dump());
  CHECK(report["ok"] == 8000);
  CHECK(report["errors"].empty());

  // Reconciled: the pod is known and enrolled again, nothing else is.
  int status = 0;
  auto pods = HttpGet(agent.admin_port, "/pods", &status);
  CHECK_THAT(pods, Catch::Contains("\"enrolled\": true"));
  DataplaneOptions ro;
  ro.pin_root = t.lab.pin_root();
  ro.maps_only = true;
  ro.cgroup_path = t.lab.cgroup();
  auto maps = Dataplane::Open(ro);
  REQUIRE(maps);
  auto in_kernel = (*maps)->Enrolled();
  REQUIRE(in_kernel);
  CHECK(in_kernel->size() == 1);
  agent.proc->Kill();
}
