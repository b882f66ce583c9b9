// sluice-agent on the API server, end to end (kernel): the agent follows the API
// stand-in (tests/kube/apiserver_standin.py) with --kube-server, pods reach it through
// the real CNI chain (sluicectl cni add runs a conflist ending in sluice-cni), config
// comes from a real ADS server. Namespace labels set through the API enrol and unenrol a
// running pod within a second; a 410 after a compaction relists and converges; a
// SIGKILLed agent converges on restart; /ready waits for the first lists.
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <arpa/inet.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "kernelsync/fixtures.h"
#include "lab.h"
#include "sluice/kube/identity.h"
#include "sluice/xds/ads_server.h"
#include "standin_process.h"
#include "xds/istiod_cert.h"

using namespace sluice;
using namespace sluice::test;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

using EnvoyCluster = envoy::config::cluster::v3::Cluster;
using envoy::config::endpoint::v3::ClusterLoadAssignment;
using envoy::config::listener::v3::Listener;
using envoy::config::route::v3::RouteConfiguration;

// web (VIP 10.96.211.90:80) served by pod a's 10.211.0.2:8080, in the kernel.
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

// A CNI plugin standing in for the node's network plugin: the lab already wired the
// pod, so it only reports the address its configuration names ("ip").
constexpr const char* kLabNet = R"SH(#!/bin/sh
conf=$(cat)
if [ "$CNI_COMMAND" = ADD ]; then
  ip=$(printf '%s' "$conf" | sed -n 's/.*"ip": *"\([^"]*\)".*/\1/p')
  printf '{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"%s"}],"ips":[{"address":"%s","interface":0}]}' "$CNI_NETNS" "$ip"
fi
exit 0
)SH";

struct KubeAgentLab {
  Lab lab;
  std::string dir;
  const sluice::xds::ResourceSet web = WebConfig();  // not built on the stream threads
  sluice::xds::AdsServer ads{[this](const envoy::config::core::v3::Node&) { return web; }};
  int xds_port = 0;
  kube::testing::StandinProcess api;
  std::unique_ptr<kube::Client> admin;
  std::unique_ptr<Process> agent;
  int admin_port = 0;
  std::string xds_address;              // default: the lab's plaintext ADS server
  std::vector<std::string> extra_args;  // more agent flags

  KubeAgentLab() {
    lab.AddPod("client", 10);
    lab.AddPod("a", 2);
    lab.Serve("a", {"10.211.0.2:8080"}, "a");
    dir = "/tmp/" + lab.tag() + "-kube";
    fs::create_directories(dir + "/cni-bin");
    std::ofstream(dir + "/cni-bin/labnet") << kLabNet;
    ::chmod((dir + "/cni-bin/labnet").c_str(), 0755);
    sluice::xds::AdsServerOptions ao;
    ao.address = "127.0.0.1:0";
    auto port = ads.Start(ao);
    REQUIRE(port);
    xds_port = *port;
    admin = std::make_unique<kube::Client>(api.Config());
  }
  ~KubeAgentLab() {
    if (agent)
      agent->Kill();
    ads.Stop();
    fs::remove_all(dir);
  }

  // Starts sluice-agent on the stand-in; waits for its admin port (and /ready 200 when
  // `wait_ready`).
  void StartAgent(bool wait_ready = true) {
    const auto cfg = api.Config(kube::testing::kAdminToken, "agent-token");
    std::string cmd = "echo $$ > " + lab.cgroup() + "/cgroup.procs && exec";
    // Under SLUICE_AGENT_CAPS, only with those capabilities (capabilities_test.sh).
    for (const std::string& a : AgentCapsPrefix())
      cmd += " '" + a + "'";
    for (const std::string& a :
         {std::string(SLUICE_AGENT_PATH),
          std::string("--xds-address"),
          xds_address.empty() ? "127.0.0.1:" + std::to_string(xds_port) : xds_address,
          std::string("--pin-root"),
          lab.pin_root(),
          std::string("--cgroup-root"),
          lab.cgroup(),
          std::string("--cni-socket"),
          dir + "/cni.sock",
          std::string("--state-file"),
          dir + "/pods.json",
          std::string("--admin-address"),
          std::string("127.0.0.1:0"),
          std::string("--access-log"),
          dir + "/access.log",
          std::string("--kube-server"),
          api.url(),
          std::string("--kube-token-file"),
          cfg.token_file,
          std::string("--kube-ca-file"),
          cfg.ca_file,
          std::string("--node-name"),
          std::string("node-1")})
      cmd += " '" + a + "'";
    for (const std::string& a : extra_args)
      cmd += " '" + a + "'";
    agent = std::make_unique<Process>(std::vector<std::string>{"/bin/sh", "-c", cmd});
    admin_port = 0;
    for (int i = 0; i < 50 && admin_port == 0; i++) {
      std::string line = agent->ReadLine(20000);
      auto at = line.find("admin on 127.0.0.1:");
      if (at != std::string::npos)
        admin_port = std::atoi(line.c_str() + at + 19);
    }
    REQUIRE(admin_port > 0);
    if (wait_ready)
      REQUIRE(Within([&] { return Ready() == 200; }, 10000ms) >= 0);
  }
  int Ready(std::string* body = nullptr) {
    int status = 0;
    std::string b = HttpGet(admin_port, "/ready", &status);
    if (body)
      *body = b;
    return status;
  }
  nlohmann::json Get(const std::string& path) {
    int status = 0;
    auto body = HttpGet(admin_port, path, &status);
    REQUIRE(status == 200);
    return nlohmann::json::parse(body);
  }
  // The agent's view of a pod: {"enrolled": ..., "reason": ...}, or null.
  nlohmann::json AgentPod(const std::string& ns, const std::string& name) {
    for (const auto& p : Get("/pods"))
      if (p["namespace"] == ns && p["name"] == name)
        return p;
    return nullptr;
  }
  bool Enrolled(const std::string& ns, const std::string& name) {
    auto p = AgentPod(ns, name);
    return !p.is_null() && p["enrolled"].get<bool>();
  }
  bool ViaVip(const std::string& pod = "client") {
    return Count(lab.Connect(pod, "10.96.211.90:80", 1), "by_server", "a") == 1;
  }

  void CreatePod(const std::string& ns, const std::string& name,
                 const nlohmann::json& labels = nlohmann::json::object()) {
    auto r = admin->Post("/api/v1/namespaces/" + ns + "/pods",
                         kube::testing::MakePod(ns, name, "node-1", labels));
    INFO((r ? "" : r.error().message));
    REQUIRE(r);
  }
  void LabelNamespace(const std::string& ns, bool on) {
    nlohmann::json patch = {
        {"metadata",
         {{"labels",
           {{"istio.io/dataplane-mode", on ? nlohmann::json("sluice") : nlohmann::json()}}}}}};
    auto r =
        admin->Request("PATCH", "/api/v1/namespaces/" + ns, &patch, "application/merge-patch+json");
    INFO((r ? "" : r.error().message));
    REQUIRE(r);
  }
  // CNI ADD through the real chain: labnet, then sluice-cni to the agent's socket.
  nlohmann::json CniAdd(const std::string& pod, const std::string& ns) {
    const auto& p = lab.pod(pod);
    nlohmann::json conflist = {
        {"cniVersion", "1.0.0"},
        {"name", "sluicet-kube"},
        {"plugins",
         {{{"type", "labnet"}, {"ip", p.ip4 + "/24"}},
          {{"type", "sluice-cni"}, {"agentSocket", dir + "/cni.sock"}, {"agentTimeoutMs", 5000}}}}};
    const std::string file = dir + "/" + pod + ".conflist";
    std::ofstream(file) << conflist.dump();
    const std::string out =
        Sh(std::string(SLUICECTL_PATH) + " cni add --conflist " + file + " --netns /run/netns/" +
           p.netns + " --container-id sandbox-" + pod + " --pod " + ns + "/" + pod +
           " --pod-uid uid-" + pod + " --cni-path " + dir + "/cni-bin --cni-path " +
           fs::path(SLUICE_CNI_PATH).parent_path().string() + " --cache-dir " + dir +
           "/cni-cache 2>&1");
    auto j = nlohmann::json::parse(out, nullptr, false);
    INFO(out);
    REQUIRE(j.is_object());
    return j;
  }
};

}  // namespace

TEST_CASE(
    "sluice-agent --kube-server: namespace labels from the API enrol a running pod within a "
    "second, both ways") {
  KubeAgentLab t;
  t.CreatePod("default", "client");
  t.StartAgent();
  auto added = t.CniAdd("client", "default");
  CHECK(added["ips"][0]["address"] == "10.211.0.10/24");
  REQUIRE(Within([&] { return !t.AgentPod("default", "client").is_null(); }) >= 0);
  CHECK_FALSE(t.Enrolled("default", "client"));
  CHECK(t.AgentPod("default", "client")["reason"] == "not-labelled");
  CHECK_FALSE(t.ViaVip());

  t.LabelNamespace("default", true);
  long on = Within([&] { return t.ViaVip(); });
  CHECK(on >= 0);
  CHECK(on < 1000);
  CHECK(t.Enrolled("default", "client"));

  t.LabelNamespace("default", false);
  long off = Within([&] { return !t.ViaVip(); });
  CHECK(off >= 0);
  CHECK(off < 1000);
  CHECK_FALSE(t.Enrolled("default", "client"));

  auto kube = t.Get("/kube");
  CHECK(kube["synced"] == true);
  CHECK(kube["pods"]["lists"] == 1);
  CHECK(kube["namespaces"]["events"].get<int>() >= 2);
}

TEST_CASE(
    "sluice-agent --kube-server: a pod the watch has not shown is read from the API, and excluded "
    "namespaces are never enrolled") {
  KubeAgentLab t;
  t.lab.AddPod("late", 11);
  t.lab.AddPod("sys", 12);
  t.LabelNamespace("default", true);
  t.LabelNamespace("kube-system", true);
  t.StartAgent();
  // The watch serves nothing: the CNI ADD comes before the agent could see the pod.
  t.api.Control("stall", {{"watches", true}});
  t.api.Control("stop-watches");
  t.CreatePod("default", "late");
  t.CreatePod("kube-system", "sys", {{"istio.io/dataplane-mode", "sluice"}});
  t.CniAdd("late", "default");
  CHECK(t.Enrolled("default", "late"));
  CHECK(t.AgentPod("default", "late")["reason"] == "namespace-label");
  CHECK(t.ViaVip("late"));
  auto stats = t.api.Control("stats");
  CHECK(stats["requests"]["get pods"].get<int>() >= 1);

  t.CniAdd("sys", "kube-system");
  REQUIRE_FALSE(t.AgentPod("kube-system", "sys").is_null());
  CHECK_FALSE(t.Enrolled("kube-system", "sys"));
  CHECK(t.AgentPod("kube-system", "sys")["reason"] == "excluded-namespace");
  CHECK_FALSE(t.ViaVip("sys"));
  t.api.Control("stall", {{"watches", false}});
  // The watch catches up; the looked-up pod stays enrolled.
  std::this_thread::sleep_for(1500ms);
  CHECK(t.Enrolled("default", "late"));
  CHECK_FALSE(t.Enrolled("kube-system", "sys"));
}

TEST_CASE("sluice-agent --kube-server: a 410 after compaction relists and the agent converges") {
  KubeAgentLab t;
  t.CreatePod("default", "client");
  t.StartAgent();
  t.CniAdd("client", "default");
  REQUIRE(Within([&] { return !t.AgentPod("default", "client").is_null(); }) >= 0);
  CHECK_FALSE(t.ViaVip());
  // A gap in the watch; the label changes in it; the server compacts past the agent's
  // resourceVersion, so the agent's next watch gets 410 Gone.
  t.api.Control("stall", {{"watches", true}});
  t.api.Control("stop-watches");
  t.LabelNamespace("default", true);
  t.api.Control("compact");
  std::this_thread::sleep_for(300ms);
  CHECK_FALSE(t.ViaVip());  // the agent cannot know yet
  t.api.Control("stall", {{"watches", false}});
  long on = Within([&] { return t.ViaVip(); }, 5000ms);
  CHECK(on >= 0);
  auto kube = t.Get("/kube");
  CHECK(kube["namespaces"]["gone"].get<int>() >= 1);
  CHECK(kube["namespaces"]["lists"].get<int>() >= 2);
  int status = 0;
  auto metrics = HttpGet(t.admin_port, "/metrics", &status);
  CHECK_THAT(metrics, Catch::Contains("sluice_kube_gone_total{collection=\"namespaces\"}"));
}

TEST_CASE(
    "sluice-agent --kube-server: SIGKILLed and restarted, it converges, and /ready waits for the "
    "first lists") {
  KubeAgentLab t;
  t.CreatePod("default", "client");
  t.LabelNamespace("default", true);
  t.StartAgent();
  t.CniAdd("client", "default");
  REQUIRE(Within([&] { return t.ViaVip(); }) >= 0);

  // Killed: the kernel keeps serving the pod; the label goes off meanwhile.
  kill(t.agent->pid(), SIGKILL);
  t.agent->Wait();
  t.LabelNamespace("default", false);
  CHECK(t.ViaVip());
  // Restarted while the API answers nothing: not ready, and the pod stays as it was.
  t.api.Control("stall", {{"all", true}});
  t.StartAgent(false);
  std::this_thread::sleep_for(1s);
  std::string why;
  CHECK(t.Ready(&why) == 503);
  CHECK(why ==
        "not ready: waiting for the first list of pods and namespaces from the API server\n");
  CHECK(t.ViaVip());
  t.api.Control("stall", {{"all", false}});
  CHECK(Within([&] { return t.Ready() == 200; }, 10000ms) >= 0);
  // Converged: the label is off, so the restored pod is unenrolled.
  CHECK(Within([&] { return !t.ViaVip(); }, 3000ms) >= 0);
  auto p = t.AgentPod("default", "client");
  REQUIRE_FALSE(p.is_null());
  CHECK(p["enrolled"] == false);
  t.LabelNamespace("default", true);
  CHECK(Within([&] { return t.ViaVip(); }) >= 0);
}

TEST_CASE(
    "sluice-agent --kube-server: a pod that ran before the agent is found by its cgroup and "
    "enrolled, no CNI ADD") {
  KubeAgentLab t;
  const auto& early = t.lab.AddPod("early", 11);
  t.LabelNamespace("default", true);
  // The pod as the API shows it once the kubelet ran it: its UID and IP.
  auto pod_json = kube::testing::MakePod("default", "early", "node-1");
  pod_json["status"] = {
      {"phase", "Running"}, {"podIP", "10.211.0.11"}, {"podIPs", {{{"ip", "10.211.0.11"}}}}};
  auto created = t.admin->Post("/api/v1/namespaces/default/pods", pod_json);
  REQUIRE(created);
  std::string uid = (*created)["metadata"]["uid"].get<std::string>();
  // Its container, as the kubelet places it (systemd driver): a process in the pod's
  // netns under kubepods-besteffort-pod<UID with _>.slice.
  std::string slice_uid = uid;
  for (char& c : slice_uid)
    if (c == '-')
      c = '_';
  const fs::path slice = fs::path(t.lab.cgroup()) / "kubepods.slice" /
                         ("kubepods-besteffort-pod" + slice_uid + ".slice");
  fs::create_directories(slice);
  Process container({"/bin/sh", "-c",
                     "echo $$ > " + (slice / "cgroup.procs").string() + " && exec ip netns exec " +
                         early.netns + " sleep 600"});
  struct Reap {
    Process& p;
    fs::path slice;
    ~Reap() {
      p.Kill();
      rmdir(slice.c_str());
      rmdir(slice.parent_path().c_str());
    }
  } reap{container, slice};

  t.StartAgent();
  // No CNI ADD: the agent finds it by /proc scan, checks 10.211.0.11 inside that netns.
  long found = Within([&] { return t.Enrolled("default", "early"); }, 5000ms);
  INFO(t.Get("/pods").dump());
  CHECK(found >= 0);
  CHECK(t.AgentPod("default", "early")["netns"] == "/var/run/netns/" + early.netns);
  CHECK(t.ViaVip("early"));
}

TEST_CASE(
    "sluice-agent --kube-server: each view's stream passes istiod's XDS identity check with a "
    "token the API issued for its pods' account") {
  KubeAgentLab t;
  // istiod's 15012 stand-in: TLS, every stream's token reviewed by the API stand-in, the
  // node held against the identity.
  const std::string pki = t.dir + "/istiod";
  fs::create_directories(pki);
  REQUIRE(sluice::testing::MakeIstiodCert(pki));
  std::mutex mu;
  std::vector<std::string> acked, refused;
  sluice::xds::AdsServer istiod{[&t](const envoy::config::core::v3::Node&) { return t.web; }};
  istiod.OnEvent([&](const sluice::xds::AdsServerEvent& e) {
    std::lock_guard lock(mu);
    if (e.kind == sluice::xds::AdsServerEvent::Kind::kAck)
      acked.push_back(e.node_id);
  });
  kube::Client reviewer(t.api.Config());
  sluice::xds::AdsServerOptions so;
  so.address = "127.0.0.1:0";
  so.cert_file = pki + "/cert.pem";
  so.key_file = pki + "/key.pem";
  so.authenticate = [&](const std::string& token) {
    auto ids = kube::IstioIdentities(reviewer, token, "cluster.local");
    if (!ids) {
      std::lock_guard lock(mu);
      refused.push_back(ids.error().message);
    }
    return ids;
  };
  auto port = istiod.Start(so);
  REQUIRE(port);
  // The agent's own account and token (the DaemonSet's projected istio-ca token).
  auto must = [&](const std::string& path, const nlohmann::json& obj) {
    auto r = t.admin->Post(path, obj);
    INFO(path << ": " << (r ? "" : r.error().message));
    REQUIRE(r);
  };
  must("/api/v1/namespaces", {{"metadata", {{"name", "sluice-system"}}}});
  must("/api/v1/namespaces/sluice-system/serviceaccounts",
       {{"metadata", {{"name", "sluice-agent"}}}});
  must("/api/v1/namespaces/default/serviceaccounts", {{"metadata", {{"name", "sleep"}}}});
  auto own = kube::RequestToken(
      *t.admin, {.ns = "sluice-system", .service_account = "sluice-agent", .audience = "istio-ca"});
  REQUIRE(own);
  std::ofstream(t.dir + "/istio-token") << own->token;
  auto pod_json = kube::testing::MakePod("default", "client", "node-1");
  pod_json["spec"]["serviceAccountName"] = "sleep";
  must("/api/v1/namespaces/default/pods", pod_json);
  t.LabelNamespace("default", true);

  auto run = [&](std::vector<std::string> extra) {
    t.xds_address = "127.0.0.1:" + std::to_string(*port);
    t.extra_args = {"--xds-tls",
                    "--xds-ca",
                    pki + "/cert.pem",
                    "--xds-server-name",
                    "istiod.istio-system.svc",
                    "--xds-token",
                    t.dir + "/istio-token",
                    "--xds-namespace",
                    "sluice-system",
                    "--xds-service-account",
                    "sluice-agent"};
    t.extra_args.insert(t.extra_args.end(), extra.begin(), extra.end());
    t.StartAgent();
    t.CniAdd("client", "default");
  };
  auto view_acked = [&] {
    std::lock_guard lock(mu);
    for (const auto& id : acked)
      if (id.find(".default~default.svc") != std::string::npos)
        return true;
    return false;
  };
  SECTION("with tokens per view: the node stream and the view's stream are both served") {
    run({});
    CHECK(Within([&] { return view_acked(); }, 5000ms) >= 0);
    int status = 0;
    CHECK_THAT(HttpGet(t.admin_port, "/metrics", &status),
               Catch::Contains("sluice_xds_namespace_connected{namespace=\"default\"} 1"));
    std::lock_guard lock(mu);
    bool node_acked = false;
    for (const auto& id : acked)
      node_acked |= id.find(".sluice-system~sluice-system.svc") != std::string::npos;
    CHECK(node_acked);
    auto stats = t.api.Control("stats");
    CHECK(stats["requests"]["create serviceaccounts/token"].get<int>() >= 1);
  }
  SECTION("with the agent's own token for the view, istiod's check refuses it") {
    run({"--no-view-tokens"});
    std::this_thread::sleep_for(2s);
    CHECK_FALSE(view_acked());
    int status = 0;
    auto metrics = HttpGet(t.admin_port, "/metrics", &status);
    INFO(metrics);
    CHECK_THAT(metrics, Catch::Contains("sluice_xds_namespace_connected{namespace=\"default\"} 0"));
  }
  istiod.Stop();
}
