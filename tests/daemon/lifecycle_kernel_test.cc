// sluice-agent's lifecycle on a node, end to end (issue 19), as real processes: the
// agent chains sluice-cni into a CNI conf dir once ready and re-chains it when the
// "primary CNI" rewrites its file; SIGTERM with its DaemonSet present (the API stand-in,
// tests/kube/apiserver_standin.py) or the API server not answering keeps the pins and
// the kernel's translation; a restart adopts them (the same programs on the cgroup, no
// second set); with the DaemonSet deleted, SIGTERM removes the conflist entry (the
// original back), the pins and the programs. Private pin root and cgroup (tests/kernel
// lab), root only.
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "kernelsync/fixtures.h"
#include "kube/standin_process.h"
#include "lab.h"
#include "sluice/cni/protocol.h"
#include "sluice/xds/ads_server.h"

using namespace sluice;
using namespace sluice::test;
namespace fs = std::filesystem;
using json = nlohmann::json;
using sluice::kube::testing::StandinProcess;

namespace {

using EnvoyCluster = envoy::config::cluster::v3::Cluster;
using envoy::config::endpoint::v3::ClusterLoadAssignment;
using envoy::config::listener::v3::Listener;

// web: a TCP service the kernel serves alone, VIP 10.96.211.90:80 → a (10.211.0.2:8080).
sluice::xds::ResourceSet WebConfig() {
  const std::string c = "outbound|80||web.default.svc.cluster.local";
  sluice::xds::ResourceSet rs;
  rs.Add(FromJson<EnvoyCluster>(Eds(c, "ROUND_ROBIN")));
  rs.Add(FromJson<ClusterLoadAssignment>(Cla(c, {"10.211.0.2:8080"})));
  rs.Add(FromJson<Listener>(TcpListener("10.96.211.90", 80, c)));
  rs.Add(FromJson<Listener>(VirtualOutbound("PassthroughCluster")));
  return rs;
}

const char* kBridge =
    R"({"cniVersion":"1.0.0","name":"sluicet-bridge","plugins":[{"type":"bridge",)"
    R"("bridge":"sluicet-br","isGateway":true,"ipam":{"type":"host-local",)"
    R"("subnet":"10.212.0.0/24"}},{"type":"portmap","capabilities":{"portMappings":true}}]})"
    "\n";

std::string Read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool Chained(const std::string& path) {
  auto j = json::parse(Read(path), nullptr, false);
  return !j.is_discarded() && j.contains("plugins") && j["plugins"].is_array() &&
         !j["plugins"].empty() && j["plugins"].back().value("type", "") == "sluice-cni";
}

// Programs attached to the lab cgroup, over the hooks the data plane uses.
int AttachedPrograms(const std::string& cgroup) {
  int cg = open(cgroup.c_str(), O_RDONLY | O_DIRECTORY);
  REQUIRE(cg >= 0);
  int total = 0;
  for (auto type : {BPF_CGROUP_INET4_CONNECT, BPF_CGROUP_INET6_CONNECT,
                    BPF_CGROUP_INET4_GETPEERNAME, BPF_CGROUP_INET6_GETPEERNAME, BPF_CGROUP_SOCK_OPS,
                    BPF_CGROUP_GETSOCKOPT, BPF_CGROUP_INET_SOCK_CREATE, BPF_CGROUP_UDP4_SENDMSG,
                    BPF_CGROUP_UDP6_SENDMSG, BPF_CGROUP_UDP4_RECVMSG, BPF_CGROUP_UDP6_RECVMSG}) {
    __u32 ids[16], count = 16, flags = 0;
    if (bpf_prog_query(cg, type, 0, &flags, ids, &count) == 0)
      total += static_cast<int>(count);
  }
  close(cg);
  return total;
}

struct Agent {
  std::unique_ptr<Process> proc;
  int admin_port = 0;
  std::string log;
};

}  // namespace

TEST_CASE(
    "sluice-agent lifecycle: chains itself, keeps the data plane on upgrade, removes it on "
    "uninstall") {
  Lab lab;
  lab.AddPod("client", 10);
  lab.AddPod("a", 2);
  lab.Serve("a", {"10.211.0.2:8080"}, "a");
  const std::string dir = "/tmp/" + lab.tag() + "-life";
  const std::string net_d = dir + "/net.d";
  fs::create_directories(net_d);
  struct Rm {
    std::string d;
    ~Rm() { fs::remove_all(d); }
  } rm{dir};
  std::ofstream(net_d + "/10-bridge.conflist") << kBridge;
  std::ofstream(dir + "/labels.json")
      << R"({"namespaces":{"default":{"istio.io/dataplane-mode":"sluice"}}})";

  // The API server with the agent's DaemonSet.
  StandinProcess api;
  kube::Client admin(api.Config());
  auto ns = admin.Post(
      "/api/v1/namespaces",
      {{"apiVersion", "v1"}, {"kind", "Namespace"}, {"metadata", {{"name", "sluice-system"}}}});
  REQUIRE(ns);
  const json ds = {
      {"apiVersion", "apps/v1"},
      {"kind", "DaemonSet"},
      {"metadata", {{"name", "sluice-agent"}, {"namespace", "sluice-system"}}},
      {"spec",
       {{"selector", {{"matchLabels", {{"app", "sluice-agent"}}}}},
        {"template",
         {{"metadata", {{"labels", {{"app", "sluice-agent"}}}}},
          {"spec", {{"containers", json::array({{{"name", "agent"}, {"image", "sluice"}}})}}}}}}}};
  REQUIRE(admin.Post("/apis/apps/v1/namespaces/sluice-system/daemonsets", ds));
  // The pod and its labelled namespace, as the labels file says, for an agent that reads
  // labels from the API server.
  const json label = {{"metadata", {{"labels", {{"istio.io/dataplane-mode", "sluice"}}}}}};
  REQUIRE(
      admin.Request("PATCH", "/api/v1/namespaces/default", &label, "application/merge-patch+json"));
  REQUIRE(admin.Post("/api/v1/namespaces/default/pods",
                     kube::testing::MakePod("default", "client", "sluicet-node")));
  const auto agent_cfg = api.Config(kube::testing::kAdminToken, "agent-token");

  const auto web = WebConfig();  // not on the stream threads
  sluice::xds::AdsServer ads([&web](const envoy::config::core::v3::Node&) { return web; });
  sluice::xds::AdsServerOptions ao;
  ao.address = "127.0.0.1:0";
  auto xds_port = ads.Start(ao);
  REQUIRE(xds_port);

  // Each agent logs to a file of its own (read after it exits).
  int started = 0;
  auto start_agent = [&] {
    Agent a;
    a.log = dir + "/agent-" + std::to_string(++started) + ".log";
    std::vector<std::string> argv = {SLUICE_AGENT_PATH,
                                     "--xds-address",
                                     "127.0.0.1:" + std::to_string(*xds_port),
                                     "--pin-root",
                                     lab.pin_root(),
                                     "--cgroup-root",
                                     lab.cgroup(),
                                     "--cni-socket",
                                     dir + "/cni.sock",
                                     "--state-file",
                                     dir + "/pods.json",
                                     "--labels-file",
                                     dir + "/labels.json",
                                     "--admin-address",
                                     "127.0.0.1:0",
                                     "--access-log",
                                     dir + "/access.log",
                                     "--proxy-port",
                                     "0",
                                     "--cni-conf-dir",
                                     net_d,
                                     "--daemonset",
                                     "sluice-system/sluice-agent",
                                     "--node-name",
                                     "sluicet-node",
                                     "--kube-server",
                                     agent_cfg.server,
                                     "--kube-ca-file",
                                     agent_cfg.ca_file,
                                     "--kube-token-file",
                                     agent_cfg.token_file};
    // The agent runs in the cgroup its hooks are attached to, as on a node.
    std::string cmd = "echo $$ > " + lab.cgroup() + "/cgroup.procs && exec";
    for (const auto& arg : argv)
      cmd += " '" + arg + "'";
    a.proc = std::make_unique<Process>(
        std::vector<std::string>{"/bin/sh", "-c", cmd + " >" + a.log + " 2>&1"});
    for (int i = 0; i < 400 && a.admin_port == 0; i++) {
      const std::string text = Read(a.log);
      auto at = text.find("admin on 127.0.0.1:");
      if (at != std::string::npos)
        a.admin_port = std::atoi(text.c_str() + at + 19);
      else
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    INFO(Read(a.log));
    REQUIRE(a.admin_port > 0);
    return a;
  };
  // SIGTERM; returns the agent's whole log once it exited.
  auto stop_agent = [](Agent& a, int* status) {
    kill(a.proc->pid(), SIGTERM);
    *status = a.proc->Wait();
    return Read(a.log);
  };
  auto via_vip = [&] {
    return Count(lab.Connect("client", "10.96.211.90:80", 1), "by_server", "a") == 1;
  };

  // 1. Ready → chained, within a few seconds of the start.
  auto agent = start_agent();
  CHECK(Within([&] { return Chained(net_d + "/10-bridge.conflist"); }) >= 0);
  CHECK(Read(net_d + "/.10-bridge.conflist.sluice-orig") == kBridge);
  int status = 0;
  auto cni_status = HttpGet(agent.admin_port, "/cni_conf", &status);
  CHECK(status == 200);
  CHECK_THAT(cni_status, Catch::Contains("chained: yes"));

  // 2. The primary CNI rewrites its file: re-chained within 3 s.
  {
    std::ofstream(net_d + "/.primary.tmp") << kBridge;
    fs::rename(net_d + "/.primary.tmp", net_d + "/10-bridge.conflist");
  }
  long rechained = Within([&] { return Chained(net_d + "/10-bridge.conflist"); });
  CHECK(rechained >= 0);
  CHECK(rechained < 3000);

  // A pod through the real protocol; the kernel translates its connects.
  cni::CniRequest add;
  add.op = cni::Operation::kAdd;
  add.cni_version = "1.0.0";
  add.container_id = "sandbox-client";
  add.ifname = "eth0";
  add.netns = "/run/netns/" + lab.pod("client").netns;
  add.pod_name = "client";
  add.pod_namespace = "default";
  add.pod_uid = "uid-client";
  add.ips = {"10.211.0.10/24"};
  auto reply = cni::CallAgent(dir + "/cni.sock", add, std::chrono::seconds(5));
  REQUIRE(reply);
  CHECK(reply->enrolled);
  CHECK(Within(via_vip, std::chrono::seconds(10)) >= 0);
  const int programs = AttachedPrograms(lab.cgroup());
  CHECK(programs > 0);

  // 3. SIGTERM with the DaemonSet there: an upgrade. Everything stays, traffic flows.
  auto out = stop_agent(agent, &status);
  CHECK(status == 0);
  CHECK_THAT(out, Catch::Contains("is still there"));
  CHECK(fs::exists(lab.pin_root()));
  CHECK(Chained(net_d + "/10-bridge.conflist"));
  CHECK(via_vip());
  CHECK(AttachedPrograms(lab.cgroup()) == programs);

  // 4. The next agent adopts the pins: the same number of programs, no second set.
  agent = start_agent();
  CHECK(Within(via_vip, std::chrono::seconds(10)) >= 0);
  CHECK(AttachedPrograms(lab.cgroup()) == programs);

  // 5. The API server not answering: doubt means upgrade.
  api.Control("stall", {{"all", true}});
  out = stop_agent(agent, &status);
  api.Control("stall", {{"all", false}});
  CHECK(status == 0);
  CHECK_THAT(out, Catch::Contains("could not look up"));
  CHECK(fs::exists(lab.pin_root()));
  CHECK(via_vip());

  // 6. The DaemonSet deleted (kubectl delete -k): an uninstall.
  agent = start_agent();
  CHECK(Within(via_vip, std::chrono::seconds(10)) >= 0);
  CHECK(AttachedPrograms(lab.cgroup()) == programs);
  REQUIRE(
      admin.Request("DELETE", "/apis/apps/v1/namespaces/sluice-system/daemonsets/sluice-agent"));
  CHECK_FALSE(admin.Get("/apis/apps/v1/namespaces/sluice-system/daemonsets/sluice-agent"));
  out = stop_agent(agent, &status);
  INFO(out);
  CHECK(status == 0);
  CHECK_THAT(out, Catch::Contains("is gone (404)"));
  CHECK_FALSE(fs::exists(lab.pin_root()));
  CHECK(Read(net_d + "/10-bridge.conflist") == kBridge);
  CHECK_FALSE(fs::exists(net_d + "/.10-bridge.conflist.sluice-orig"));
  CHECK_FALSE(fs::exists(dir + "/pods.json"));
  CHECK(AttachedPrograms(lab.cgroup()) == 0);
  CHECK_FALSE(via_vip());
  ads.Stop();
}
