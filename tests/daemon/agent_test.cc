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
#include <mutex>
#include <sstream>
#include <thread>

#include "envoy/extensions/access_loggers/file/v3/file.pb.h"
#include "kernelsync/fixtures.h"
#include "lab.h"
#include "sluice/cni/protocol.h"
#include "sluice/xds/ads_server.h"
#include "sluice/xds/node.h"
#include "udpa/type/v1/typed_struct.pb.h"

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

// WebConfig plus an L7 service: api (VIPs 10.96.211.91 and fd96::91, port 80) routed by path — /one
// to subset v1 (10.211.0.3:8000), /two to v2 (10.211.0.4:8000), both rewritten to /hello. The short
// host name "api" is in its virtual host only for sidecars of namespace `ns` == "default", as
// istiod qualifies short names in the proxy's own namespace.
// `api_routes` false: api's virtual host is left out, as a Sidecar whose egress hosts
// exclude it would leave it out of the config of the pods it selects.
// `dns_cluster`: also a virtual host dns.sluice.test routed to a STRICT_DNS cluster of that
// name (port 8000, re-resolved every 200 ms); only for an agent with a private /etc/hosts.
sluice::xds::ResourceSet L7Config(const std::string& ns, bool api_routes = true,
                                  bool dns_cluster = false) {
  auto rs = WebConfig();
  const std::string web = "outbound|80||web.default.svc.cluster.local";
  const std::string v1 = "outbound|80|v1|api.default.svc.cluster.local";
  const std::string v2 = "outbound|80|v2|api.default.svc.cluster.local";
  rs.Add(FromJson<EnvoyCluster>(Eds(v1, "ROUND_ROBIN")));
  rs.Add(FromJson<EnvoyCluster>(Eds(v2, "ROUND_ROBIN")));
  rs.Add(FromJson<ClusterLoadAssignment>(Cla(v1, {"10.211.0.3:8000"})));
  rs.Add(FromJson<ClusterLoadAssignment>(Cla(v2, {"10.211.0.4:8000"})));
  rs.Add(FromJson<EnvoyCluster>(
      R"({"name":"PassthroughCluster","type":"ORIGINAL_DST","lbPolicy":"CLUSTER_PROVIDED","connectTimeout":"1s"})"));
  // Access logging on, as istiod sets it for meshConfig.accessLogFile. (The type inside
  // the Any must be linked in for the JSON parser to know it.)
  (void)envoy::extensions::access_loggers::file::v3::FileAccessLog::descriptor();
  std::string http80 = HttpListener(80);
  const std::string stat = R"("statPrefix":"outbound_0.0.0.0_80",)";
  http80.replace(
      http80.find(stat), stat.size(),
      stat +
          R"("accessLog":[{"name":"envoy.access_loggers.file","typedConfig":{"@type":"type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog","path":"/dev/stdout"}}],)");
  // Dual stack, as istiod sends it: the same listener on "::" too.
  const std::string addr = R"("address":{"socketAddress":{"address":"0.0.0.0","portValue":80}},)";
  http80.replace(
      http80.find(addr), addr.size(),
      addr +
          R"("additionalAddresses":[{"address":{"socketAddress":{"address":"::","portValue":80}}}],)");
  rs.Add(FromJson<Listener>(http80));
  std::string api_domains = R"("api.default.svc.cluster.local","10.96.211.91","[fd96::91]")";
  if (ns == "default")
    api_domains += R"(,"api","api.default")";
  const std::string api_vh =
      R"({"name":"api.default.svc.cluster.local:80","domains":[)" + api_domains +
      R"(],"routes":[{"name":"one","match":{"prefix":"/one"},"route":{"cluster":")" + v1 +
      R"(","prefixRewrite":"/hello"}},{"name":"two","match":{"prefix":"/two"},"route":{"cluster":")" +
      v2 + R"(","prefixRewrite":"/hello"}}]},)";
  const std::string dns = "outbound|8000||dns.sluice.test";
  if (dns_cluster) {
    rs.Add(FromJson<EnvoyCluster>(
        R"({"name":")" + dns +
        R"(","type":"STRICT_DNS","connectTimeout":"1s","dnsRefreshRate":"0.2s","loadAssignment":{"clusterName":")" +
        dns +
        R"(","endpoints":[{"lbEndpoints":[{"endpoint":{"address":{"socketAddress":{"address":"dns.sluice.test","portValue":8000}}}}]}]}})"));
  }
  const std::string dns_vh =
      R"({"name":"dns.sluice.test:80","domains":["dns.sluice.test"],"routes":[{"match":{"prefix":"/"},"route":{"cluster":")" +
      dns + R"("}}]},)";
  rs.Add(FromJson<RouteConfiguration>(
      R"({"name":"80","virtualHosts":[)"
      R"({"name":"web.default.svc.cluster.local:80","domains":["web.default.svc.cluster.local","web","10.96.211.90"],"routes":[{"match":{"prefix":"/"},"route":{"cluster":")" +
      web + R"(","timeout":"0s"}}]},)" + (api_routes ? api_vh : std::string()) +
      (dns_cluster ? dns_vh : std::string()) +
      R"({"name":"block_all","domains":["*"],"routes":[{"match":{"prefix":"/"},"directResponse":{"status":404}}]}]})"));
  return rs;
}

// The namespace a node asks for (sidecar~IP~NAME.NS~NS.svc.cluster.local).
std::string NodeNamespace(const envoy::config::core::v3::Node& node) {
  auto id = sluice::xds::ParseNodeId(node.id());
  return id ? id->pod_namespace : "";
}

// The view a node asks for: "NS", or "NS{k=v,...}" with the LABELS of its metadata.
std::string NodeView(const envoy::config::core::v3::Node& node) {
  std::map<std::string, std::string> labels;
  auto it = node.metadata().fields().find("LABELS");
  if (it != node.metadata().fields().end())
    for (const auto& [k, v] : it->second.struct_value().fields())
      labels[k] = v.string_value();
  std::string id = NodeNamespace(node);
  if (labels.empty())
    return id;
  id += "{";
  for (const auto& [k, v] : labels)
    id += (id.back() == '{' ? "" : ",") + k + "=" + v;
  return id + "}";
}

// curl inside a pod (its network namespace, in the lab's cgroup where the hooks are):
// "STATUS BODY".
std::string CurlInPod(Lab& lab, const std::string& pod, const std::string& url,
                      const std::string& host = "") {
  std::string cmd = "sh -c 'echo $$ > " + lab.cgroup() + "/cgroup.procs && ip netns exec " +
                    lab.pod(pod).netns + " curl -sS -m 2 -o - -w \" %{http_code}\" " +
                    (host.empty() ? "" : "-H \"Host: " + host + "\" ") + url + "; true' 2>&1";
  std::string out = Sh(cmd);
  auto sp = out.rfind(' ');
  return sp == std::string::npos ? out : out.substr(sp + 1) + " " + out.substr(0, sp);
}

// helloworld (the project's stand-in) in a pod; its access log (stdout) shows each
// request's TCP peer.
std::unique_ptr<Process> Helloworld(Lab& lab, const std::string& pod, const std::string& version) {
  // stderr (the "listening" line) joins stdout (the access log).
  return std::make_unique<Process>(std::vector<std::string>{
      "/bin/sh", "-c",
      "exec ip netns exec " + lab.pod(pod).netns + " " + SLUICE_APPS_PATH +
          " helloworld --port 8000 --service-version " + version + " --instance " + pod + " 2>&1"});
}

// The agent runs in the cgroup its hooks are attached to, as it does on a node (there,
// the cgroup2 root): its L7 workers ask SO_ORIGINAL_DST of the cgroup/getsockopt hook.
std::vector<std::string> InCgroup(Lab& lab, const std::vector<std::string>& argv) {
  std::string cmd = "echo $$ > " + lab.cgroup() + "/cgroup.procs && exec";
  for (const auto& a : argv)
    cmd += " '" + a + "'";
  return {"/bin/sh", "-c", cmd};
}

struct Agent {
  std::unique_ptr<Process> proc;
  int admin_port = 0;
};

// sluice-agent's command line for a test: the lab's pins and cgroup, files under `dir`.
// Under SLUICE_AGENT_CAPS, only with those capabilities (tests/kernel/capabilities_test.sh).
std::vector<std::string> AgentArgv(Lab& lab, const std::string& dir, int xds_port) {
  std::vector<std::string> argv = AgentCapsPrefix();
  for (const std::string& a :
       {std::string(SLUICE_AGENT_PATH), std::string("--xds-address"),
        "127.0.0.1:" + std::to_string(xds_port), std::string("--pin-root"), lab.pin_root(),
        std::string("--cgroup-root"), lab.cgroup(), std::string("--cni-socket"), dir + "/cni.sock",
        std::string("--state-file"), dir + "/pods.json", std::string("--labels-file"),
        dir + "/labels.json", std::string("--admin-address"), std::string("127.0.0.1:0"),
        std::string("--access-log"), dir + "/access.log"})
    argv.push_back(a);
  return argv;
}

// Starts sluice-agent and waits for its admin endpoint and readiness. With `etc_dir`, the
// agent runs in a mount namespace of its own with ETC_DIR/hosts on /etc/hosts and
// ETC_DIR/resolv.conf on /etc/resolv.conf (its names are the test's; no DNS server).
Agent StartAgent(Lab& lab, const std::string& dir, int xds_port,
                 std::vector<std::string> extra = {}, const std::string& etc_dir = "") {
  Agent a;
  std::vector<std::string> argv = AgentArgv(lab, dir, xds_port);
  argv.insert(argv.end(), extra.begin(), extra.end());
  if (!etc_dir.empty()) {
    argv.insert(argv.begin(), {"unshare", "-m", "sh", "-c",
                               "mount --make-rslave / && mount --bind " + etc_dir +
                                   "/hosts /etc/hosts && mount --bind " + etc_dir +
                                   "/resolv.conf /etc/resolv.conf && exec \"$@\"",
                               "sh"});
  }
  a.proc = std::make_unique<Process>(InCgroup(lab, argv));
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
  // Built here, not in the server's callback: that runs on gRPC stream threads, where the
  // fixtures' Catch2 assertions (not thread-safe) must not run.
  const sluice::xds::ResourceSet web = WebConfig();
  sluice::xds::AdsServer ads{[this](const envoy::config::core::v3::Node&) { return web; }};
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

// How many network namespaces the kernel's enrolment map holds, read from the pins.
std::size_t KernelEnrolledCount(Lab& lab) {
  DataplaneOptions ro;
  ro.pin_root = lab.pin_root();
  ro.maps_only = true;
  ro.cgroup_path = lab.cgroup();
  auto maps = Dataplane::Open(ro);
  REQUIRE(maps);
  auto in_kernel = (*maps)->Enrolled();
  REQUIRE(in_kernel);
  return in_kernel->size();
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

  const auto web = WebConfig();  // not on the stream threads (see AgentLab)
  sluice::xds::AdsServer ads([&web](const envoy::config::core::v3::Node&) { return web; });
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
  CHECK(KernelEnrolledCount(t.lab) == 1);
  agent.proc->Kill();
}

// The L7 half of the node agent: the in-pod capture listener, per-namespace config, and
// the kernel's split between L4 and L7 services, all from one client pod.
struct L7Lab : AgentLab {
  std::unique_ptr<Process> v1, v2;
  L7Lab() {
    lab.AddPod("v1", 3);
    lab.AddPod("v2", 4);
    lab.AddPod("client", 10);
    lab.AddPod("other", 11);
    v1 = Helloworld(lab, "v1", "v1");
    v2 = Helloworld(lab, "v2", "v2");
    ads.Stop();
    for (const char* ns : {"default", "other", "istio-system"})
      by_namespace[ns] = L7Config(ns);  // not on the stream threads (see AgentLab)
    // A Sidecar with workloadSelector app=locked in default, without api in its egress.
    by_namespace["default{app=locked}"] = L7Config("default", /*api_routes=*/false);
    ads2 = std::make_unique<sluice::xds::AdsServer>([this](const envoy::config::core::v3::Node& n) {
      std::lock_guard lock(mu);
      auto it = by_namespace.find(NodeView(n));
      if (it == by_namespace.end())
        it = by_namespace.find(NodeNamespace(n));
      return it != by_namespace.end() ? it->second : by_namespace.at("istio-system");
    });
    sluice::xds::AdsServerOptions ao;
    ao.address = "127.0.0.1:0";
    auto port = ads2->Start(ao);
    REQUIRE(port);
    xds_port = *port;
    // Both stand-ins print their listening line once they serve.
    REQUIRE_THAT(v1->ReadLine(5000), Catch::Contains("listening"));
    REQUIRE_THAT(v2->ReadLine(5000), Catch::Contains("listening"));
    WriteLabelsJson(dir, R"({"namespaces":{"default":{"istio.io/dataplane-mode":"sluice"},)"
                         R"("other":{"istio.io/dataplane-mode":"sluice"}}})");
  }
  ~L7Lab() {
    if (ads2)
      ads2->Stop();
  }
  std::mutex mu;  // by_namespace, once the server runs
  std::map<std::string, sluice::xds::ResourceSet> by_namespace;
  std::unique_ptr<sluice::xds::AdsServer> ads2;
};

// The agent's L7 process: its only child.
pid_t L7Process(const Agent& agent) {
  std::string out = Sh("pgrep -P " + std::to_string(agent.proc->pid()) + " || true");
  return static_cast<pid_t>(std::atol(out.c_str()));
}

int64_t WallMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Hands the client pod (default, 10.211.0.10) to the agent over CNI and waits until it
// runs its own namespace's config (that stream's first answer is in).
void EnrolClient(L7Lab& t, const Agent& agent) {
  auto r =
      cni::CallAgent(t.dir + "/cni.sock", AddRequest(t.lab, "client", "default", "10.211.0.10"),
                     std::chrono::seconds(5));
  REQUIRE(r);
  REQUIRE(r->enrolled);
  int status = 0;
  REQUIRE(Within([&] {
            return HttpGet(agent.admin_port, "/pods", &status)
                       .find("\"config\": \"namespace default\"") != std::string::npos;
          }) >= 0);
}

TEST_CASE(
    "sluice-agent: an L4 service in the kernel and an L7 service routed by path, from one pod") {
  L7Lab t;
  auto agent = StartAgent(t.lab, t.dir, t.xds_port);
  EnrolClient(t, agent);
  int status = 0;
  auto before = t.lab.ReadCounters();

  // L4: web's VIP is translated in the kernel, straight to server a.
  CHECK(Count(t.lab.Connect("client", "10.96.211.90:80", 20), "by_server", "a") == 20);
  // L7: api's VIP goes to the pod's capture listener; the route is chosen by path.
  CHECK(CurlInPod(t.lab, "client", "http://10.96.211.91/one") ==
        "200 Hello version: v1, instance: v1\n");
  CHECK(CurlInPod(t.lab, "client", "http://10.96.211.91/two") ==
        "200 Hello version: v2, instance: v2\n");
  CHECK(CurlInPod(t.lab, "client", "http://10.96.211.91/one", "api") ==
        "200 Hello version: v1, instance: v1\n");
  CHECK(CurlInPod(t.lab, "client", "http://10.96.211.91/three").starts_with("404"));
  // A dual-stack socket dialling the IPv4 VIP mapped (gRPC's C core, Java): connect6
  // takes the IPv4 path, to the 127.0.0.1 capture listener, and the proxy reads the IPv4
  // VIP as the original destination (issue 18). The Host is the service's name, as such
  // a client sends it (a mapped literal matches no virtual host, as in Envoy).
  CHECK(CurlInPod(t.lab, "client", "http://[::ffff:10.96.211.91]/two", "api") ==
        "200 Hello version: v2, instance: v2\n");
  // Over IPv6: connect6 redirects to the pod's [::1] capture listener, and the proxy
  // asks the original destination at SOL_IPV6.
  CHECK(CurlInPod(t.lab, "client", "http://[fd96::91]/two") ==
        "200 Hello version: v2, instance: v2\n");

  // The servers saw the client pod's own address: the proxy's upstream connections
  // leave from inside the pod.
  CHECK_THAT(t.v1->ReadLine(2000), Catch::StartsWith("10.211.0.10 - - ["));
  CHECK_THAT(t.v2->ReadLine(2000), Catch::StartsWith("10.211.0.10 - - ["));

  // The kernel: web's connects were translated; api's were redirected to the proxy, and
  // the proxy's own upstream connects carried the bypass mark.
  auto after = t.lab.ReadCounters();
  CHECK(Delta(before, after, SLUICE_CNT_TRANSLATED) >= 20);
  CHECK(Delta(before, after, SLUICE_CNT_REDIRECTED) >= 5);
  CHECK(Delta(before, after, SLUICE_CNT_ORIG_DST) >= 5);
  CHECK(Delta(before, after, SLUICE_CNT_BYPASS) >= 2);

  // Visible to an operator: the pod's listener, the access log, the metrics.
  auto pods = HttpGet(agent.admin_port, "/pods", &status);
  CHECK_THAT(pods, Catch::Contains("\"listening\": true"));
  CHECK_THAT(pods, Catch::Contains("\"[::1]:15001\""));
  CHECK_THAT(pods, Catch::Contains("\"config\": \"namespace default\""));
  auto metrics = HttpGet(agent.admin_port, "/metrics", &status);
  CHECK_THAT(metrics, Catch::Contains("sluice_kernel_services{path=\"proxy\"} 1"));
  CHECK_THAT(metrics, Catch::Contains(
                          "sluice_proxy_requests_total{namespace=\"default\",pod=\"client\"} 6"));
  CHECK_THAT(metrics, Catch::Contains("sluice_xds_namespace_connected{namespace=\"default\"} 1"));
  std::ifstream log(t.dir + "/access.log");
  std::string text((std::istreambuf_iterator<char>(log)), {});
  CHECK_THAT(text, Catch::Contains("\"GET /one HTTP/1.1\" 200"));
  CHECK_THAT(text, Catch::Contains("outbound|80|v1|api.default.svc.cluster.local"));
  // The client is the pod's application at the pod's address, as a sidecar sees it (the
  // redirected connection itself comes from the pod's loopback).
  CHECK_THAT(text, Catch::Contains(" 10.211.0.10:"));
  CHECK_THAT(text, !Catch::Contains(" 127.0.0.1:"));
  // The kernel's connections are in the same log: one L4 line per translated connect.
  CHECK(Within([&] {
          std::ifstream again(t.dir + "/access.log");
          std::string all((std::istreambuf_iterator<char>(again)), {});
          size_t n = 0;
          for (size_t at = 0; (at = all.find("\"TCP\" kernel src=default/client (10.211.0.10) "
                                             "dst=10.96.211.90:80 service=",
                                             at)) != std::string::npos;
               at++)
            n++;
          return n == 20;
        }) >= 0);
  CHECK_THAT(text, Catch::Contains("upstream=10.211.0.2:8080"));

  // Unenrolled: no redirect, so the L7 VIP is no longer reachable at all, and the
  // capture listener is gone.
  WriteLabelsJson(t.dir, R"({"namespaces":{"default":{}}})");
  CHECK(Within([&] {
          return !CurlInPod(t.lab, "client", "http://10.96.211.91/one").starts_with("200");
        }) >= 0);
  pods = HttpGet(agent.admin_port, "/pods", &status);
  CHECK_THAT(pods, !Catch::Contains("\"listening\""));
  agent.proc->Kill();
}

TEST_CASE("sluice-agent: short host names resolve in the client pod's own namespace") {
  L7Lab t;
  auto agent = StartAgent(t.lab, t.dir, t.xds_port);
  REQUIRE(cni::CallAgent(t.dir + "/cni.sock", AddRequest(t.lab, "client", "default", "10.211.0.10"),
                         std::chrono::seconds(5)));
  REQUIRE(cni::CallAgent(t.dir + "/cni.sock", AddRequest(t.lab, "other", "other", "10.211.0.11"),
                         std::chrono::seconds(5)));
  // Each namespace's pods get their own xDS answer (one stream per namespace).
  int status = 0;
  CHECK(Within([&] {
          auto m = HttpGet(agent.admin_port, "/metrics", &status);
          return m.find("sluice_xds_namespace_connected{namespace=\"other\"} 1") !=
                     std::string::npos &&
                 HttpGet(agent.admin_port, "/pods", &status).find("pending") == std::string::npos;
        }) >= 0);
  // "api" is api.default for a pod of default, and nothing known for a pod of other.
  CHECK(CurlInPod(t.lab, "client", "http://10.96.211.91/one", "api") ==
        "200 Hello version: v1, instance: v1\n");
  CHECK(CurlInPod(t.lab, "other", "http://10.96.211.91/one", "api").starts_with("404"));
  // The fully qualified name works from both.
  CHECK(CurlInPod(t.lab, "other", "http://10.96.211.91/one", "api.default.svc.cluster.local") ==
        "200 Hello version: v1, instance: v1\n");
  auto dump = HttpGet(agent.admin_port, "/config_dump?namespace=other", &status);
  CHECK(status == 200);
  CHECK_THAT(dump, Catch::Contains("\"source\": \"namespace stream\""));
  CHECK_THAT(dump, !Catch::Contains("\"api.default\""));
  agent.proc->Kill();
}

TEST_CASE("sluice-agent: a pod's labels choose its view (a Sidecar's workloadSelector), live") {
  L7Lab t;
  t.lab.AddPod("locked", 12);
  const std::string ns_labels = R"("namespaces":{"default":{"istio.io/dataplane-mode":"sluice"}})";
  WriteLabelsJson(t.dir,
                  "{" + ns_labels + R"(,"pods":{"default/locked":{"labels":{"app":"locked"}}}})");
  auto agent = StartAgent(t.lab, t.dir, t.xds_port);
  for (auto [pod, ip] : {std::pair{"client", "10.211.0.10"}, {"locked", "10.211.0.12"}}) {
    auto r = cni::CallAgent(t.dir + "/cni.sock", AddRequest(t.lab, pod, "default", ip),
                            std::chrono::seconds(5));
    REQUIRE(r);
    REQUIRE(r->enrolled);
  }
  int status = 0;
  REQUIRE(Within([&] {
            auto pods = HttpGet(agent.admin_port, "/pods", &status);
            return pods.find("\"config\": \"namespace default{app=locked}\"") !=
                       std::string::npos &&
                   pods.find("\"config\": \"namespace default\"") != std::string::npos;
          }) >= 0);
  // Same namespace, same VIP: the unlabelled pod is routed, the selected one gets its
  // Sidecar's config, in which api has no routes.
  CHECK(CurlInPod(t.lab, "client", "http://10.96.211.91/one") ==
        "200 Hello version: v1, instance: v1\n");
  CHECK(CurlInPod(t.lab, "locked", "http://10.96.211.91/one").starts_with("404"));
  auto metrics = HttpGet(agent.admin_port, "/metrics", &status);
  CHECK_THAT(metrics, Catch::Contains("sluice_xds_namespace_connected{namespace=\"default\"} 1"));
  CHECK_THAT(metrics,
             Catch::Contains(
                 "sluice_xds_namespace_connected{namespace=\"default\",labels=\"app=locked\"} 1"));
  auto dump = HttpGet(agent.admin_port, "/config_dump?namespace=default&pod=locked", &status);
  CHECK(status == 200);
  CHECK_THAT(dump, Catch::Contains("\"view\": \"default{app=locked}\""));

  // The label goes: the running pod moves to the namespace's view (no restart), and the
  // stream of the view nobody has any more closes.
  WriteLabelsJson(t.dir, "{" + ns_labels + "}");
  CHECK(Within([&] {
          return CurlInPod(t.lab, "locked", "http://10.96.211.91/one") ==
                 "200 Hello version: v1, instance: v1\n";
        }) >= 0);
  CHECK(Within([&] {
          return HttpGet(agent.admin_port, "/metrics", &status).find("app=locked") ==
                 std::string::npos;
        }) >= 0);
  agent.proc->Kill();
}

TEST_CASE("sluice-agent: a DNS cluster follows its name, live (re-resolved and recompiled)") {
  L7Lab t;
  t.by_namespace["default"] = L7Config("default", true, /*dns_cluster=*/true);  // no stream yet
  const std::string etc = t.dir + "/etc";
  fs::create_directories(etc);
  std::ofstream(etc + "/resolv.conf") << "nameserver 127.0.0.1\n";
  std::ofstream(etc + "/hosts") << "127.0.0.1 localhost\n10.211.0.3 dns.sluice.test\n";
  auto agent = StartAgent(t.lab, t.dir, t.xds_port, {}, etc);
  EnrolClient(t, agent);
  const std::string url = "http://10.96.211.91/hello";
  CHECK(Within([&] {
          return CurlInPod(t.lab, "client", url, "dns.sluice.test") ==
                 "200 Hello version: v1, instance: v1\n";
        }) >= 0);
  // The name moves to v2's pod (rewritten in place: the bind mount keeps the inode).
  {
    std::ofstream f(etc + "/hosts", std::ios::in | std::ios::out | std::ios::trunc);
    f << "127.0.0.1 localhost\n10.211.0.4 dns.sluice.test\n";
  }
  CHECK(Within([&] {
          return CurlInPod(t.lab, "client", url, "dns.sluice.test") ==
                 "200 Hello version: v2, instance: v2\n";
        }) >= 0);
  agent.proc->Kill();
}

TEST_CASE("sluice-agent: after SIGKILL, L7 traffic recovers within a second of the restart") {
  L7Lab t;
  auto agent = StartAgent(t.lab, t.dir, t.xds_port);
  REQUIRE(cni::CallAgent(t.dir + "/cni.sock", AddRequest(t.lab, "client", "default", "10.211.0.10"),
                         std::chrono::seconds(5)));
  REQUIRE(CurlInPod(t.lab, "client", "http://10.96.211.91/one").starts_with("200"));
  kill(agent.proc->pid(), SIGKILL);
  agent.proc->Wait();
  // L4 goes on in the kernel; L7 has no listener while the agent is down.
  CHECK(Count(t.lab.Connect("client", "10.96.211.90:80", 5), "by_server", "a") == 5);
  CHECK(CurlInPod(t.lab, "client", "http://10.96.211.91/one").starts_with("000"));

  auto start = std::chrono::steady_clock::now();
  Process restarted(InCgroup(t.lab, AgentArgv(t.lab, t.dir, t.xds_port)));
  long recovered_ms = -1;
  while (std::chrono::steady_clock::now() - start < std::chrono::seconds(5)) {
    if (CurlInPod(t.lab, "client", "http://10.96.211.91/one").starts_with("200")) {
      recovered_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                         std::chrono::steady_clock::now() - start)
                         .count();
      break;
    }
  }
  WARN("L7 answered " << recovered_ms << " ms after the restart");
  CHECK(recovered_ms >= 0);
  CHECK(recovered_ms < 1000);

  // Reconciled: one capture listener per address in the pod, 127.0.0.1 and [::1] (the
  // old ones died with the process), one enrolment entry.
  std::string ss =
      Sh("ip netns exec " + t.lab.pod("client").netns + " ss -Htln 'sport = :15001' | wc -l");
  CHECK(std::atoi(ss.c_str()) == 2);
  CHECK(KernelEnrolledCount(t.lab) == 1);
  restarted.Kill();
}

TEST_CASE(
    "sluice-agent: the L7 process crashing under load is back within a second, and kernel sync, "
    "CNI, xDS and L4 traffic carry on") {
  L7Lab t;
  auto agent = StartAgent(t.lab, t.dir, t.xds_port);
  EnrolClient(t, agent);
  REQUIRE(CurlInPod(t.lab, "client", "http://10.96.211.91/one").starts_with("200"));
  const pid_t first = L7Process(agent);
  REQUIRE(first > 0);

  // Load on both paths: L4 connects through the kernel, and L7 requests one after another,
  // each line "START_MS END_MS STATUS".
  auto l4 = t.lab.ConnectAsync("client", "10.96.211.90:80", 4000);
  Process l7load({"/bin/sh", "-c",
                  "echo $$ > " + t.lab.cgroup() + "/cgroup.procs && exec ip netns exec " +
                      t.lab.pod("client").netns +
                      " sh -c 'for i in $(seq 60); do s=$(date +%s%3N); c=$(curl -s -m 3 -o "
                      "/dev/null -w %{http_code} http://10.96.211.91/one); echo $s $(date "
                      "+%s%3N) $c; done'"});
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const int64_t killed_at = WallMs();
  REQUIRE(kill(first, SIGSEGV) == 0);  // as a fault in the engine would end it

  // While it is down and coming back, the rest of the agent works:
  // xDS and the kernel sync: a new L4 service is pushed and is served in the kernel;
  auto with_db = L7Config("default");
  const std::string db = "outbound|5432||db.default.svc.cluster.local";
  with_db.Add(FromJson<EnvoyCluster>(Eds(db, "ROUND_ROBIN")));
  with_db.Add(FromJson<ClusterLoadAssignment>(Cla(db, {"10.211.0.2:8080"})));
  with_db.Add(FromJson<Listener>(TcpListener("10.96.211.92", 5432, db)));
  {
    std::lock_guard lock(t.mu);
    t.by_namespace["default"] = with_db;
    t.by_namespace["istio-system"] = with_db;
  }
  t.ads2->Push();
  // the CNI server: another pod is taken and enrolled.
  auto other =
      cni::CallAgent(t.dir + "/cni.sock", AddRequest(t.lab, "other", "other", "10.211.0.11"),
                     std::chrono::seconds(5));
  REQUIRE(other);
  CHECK(other->enrolled);
  CHECK(Within([&] {
          return Count(t.lab.Connect("client", "10.96.211.92:5432", 1), "by_server", "a") == 1;
        }) >= 0);

  // L4 connects through the kernel never noticed.
  auto report = nlohmann::json::parse(l4->ReadLine(60000));
  INFO(report.dump());
  CHECK(report["ok"] == 4000);
  CHECK(report["errors"].empty());

  // L7: requests started after the crash waited in the capture socket's backlog (the
  // agent holds it) and were answered by the new process; the first within a second.
  int64_t recovered_at = -1;
  int failed_after = 0, lines = 0;
  for (int i = 0; i < 60; ++i) {
    std::istringstream in(l7load.ReadLine(10000));
    int64_t start = 0, end = 0;
    std::string code;
    in >> start >> end >> code;
    ++lines;
    if (start <= killed_at)
      continue;  // in flight at the crash: may have died with the process
    if (code == "200" && recovered_at < 0)
      recovered_at = end;
    if (code != "200")
      ++failed_after;
  }
  CHECK(lines == 60);
  WARN("L7 answered " << recovered_at - killed_at << " ms after the crash");
  REQUIRE(recovered_at > 0);
  CHECK(recovered_at - killed_at < 1000);
  CHECK(failed_after == 0);

  // A new process, counted; the first is gone, and the pods are served again.
  const pid_t second = L7Process(agent);
  CHECK(second > 0);
  CHECK(second != first);
  CHECK(kill(first, 0) != 0);
  int status = 0;
  auto metrics = HttpGet(agent.admin_port, "/metrics", &status);
  CHECK_THAT(metrics, Catch::Contains("sluice_l7_restarts_total 1"));
  CHECK_THAT(metrics, Catch::Contains("sluice_l7_up 1"));
  CHECK(Within([&] {
          auto pods = HttpGet(agent.admin_port, "/pods", &status);
          return pods.find("\"listening\": false") == std::string::npos &&
                 pods.find("\"name\": \"other\"") != std::string::npos;
        }) >= 0);
  CHECK(CurlInPod(t.lab, "other", "http://10.96.211.91/two", "api.default.svc.cluster.local")
            .starts_with("200"));
  agent.proc->Kill();
}

// What istiod sends an ingress gateway selected by istio=ingressgateway: a listener on
// the gateway pod's 8080 with route http.8080 for host httpbin.example.com.
sluice::xds::ResourceSet GatewayConfig() {
  (void)udpa::type::v1::TypedStruct::descriptor();  // istio.stats' config, as istiod sends it
  (void)envoy::extensions::access_loggers::file::v3::FileAccessLog::descriptor();
  const std::string v1 = "outbound|80|v1|api.default.svc.cluster.local";
  sluice::xds::ResourceSet rs;
  rs.Add(FromJson<EnvoyCluster>(Eds(v1, "ROUND_ROBIN")));
  rs.Add(FromJson<ClusterLoadAssignment>(Cla(v1, {"10.211.0.3:8000"})));
  rs.Add(FromJson<Listener>(
      R"({"name":"0.0.0.0_8080","address":{"socketAddress":{"address":"0.0.0.0","portValue":8080}},"filterChains":[{"filters":[{"name":"envoy.filters.network.http_connection_manager","typedConfig":{"@type":"type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager","statPrefix":"outbound_0.0.0.0_8080","rds":{"configSource":{"ads":{}},"routeConfigName":"http.8080"},"accessLog":[{"name":"envoy.access_loggers.file","typedConfig":{"@type":"type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog","path":"/dev/stdout"}}],"httpFilters":[{"name":"istio.stats","typedConfig":{"@type":"type.googleapis.com/udpa.type.v1.TypedStruct","typeUrl":"type.googleapis.com/stats.PluginConfig","value":{}}},{"name":"envoy.filters.http.router","typedConfig":{"@type":"type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]})"));
  rs.Add(FromJson<RouteConfiguration>(
      R"({"name":"http.8080","virtualHosts":[{"name":"httpbin.example.com:80","domains":["httpbin.example.com","httpbin.example.com:*"],"routes":[{"match":{"prefix":"/hello"},"route":{"cluster":")" +
      v1 + R"("}}]}]})"));
  return rs;
}

TEST_CASE("sluice-agent --role gateway: xDS as a router, listeners in the gateway's namespace") {
  L7Lab t;
  t.lab.AddPod("gw", 20);
  std::atomic<int> router_asks{0};
  std::string seen_labels;
  std::mutex mu;
  t.ads2->Stop();
  const std::string admin = t.dir + "/gw-admin.sock";
  // The xDS server on a Unix socket: reachable from the gateway pod's namespace (the
  // local cluster serves xDS this way; on Kubernetes, istiod is a Service).
  auto gateway_config = GatewayConfig();  // not on the stream threads (see AgentLab)
  sluice::xds::AdsServer uads([&](const envoy::config::core::v3::Node& n) {
    auto id = sluice::xds::ParseNodeId(n.id());
    if (!id || id->role != sluice::xds::ProxyRole::kRouter)
      return sluice::xds::ResourceSet{};
    ++router_asks;
    std::lock_guard lock(mu);
    seen_labels = n.metadata().fields().at("LABELS").DebugString();
    return gateway_config;
  });
  sluice::xds::AdsServerOptions uo;
  uo.address = "unix:" + t.dir + "/xds.sock";
  REQUIRE(uads.Start(uo));
  Process gw2({"/usr/bin/ip",
               "netns",
               "exec",
               t.lab.pod("gw").netns,
               SLUICE_AGENT_PATH,
               "--role",
               "gateway",
               "--xds-address",
               "unix:" + t.dir + "/xds.sock",
               "--pod-name",
               "istio-ingressgateway-7d4f8b9c6-abcde",
               "--pod-namespace",
               "istio-system",
               "--pod-ip",
               "10.211.0.20",
               "--pod-labels",
               "istio=ingressgateway,app=istio-ingressgateway,pod-template-hash=7d4f8b9c6",
               "--admin-address",
               "unix:" + admin,
               "--access-log",
               t.dir + "/gw.log"});
  auto admin_get = [&](const std::string& path) {
    return Sh("curl -s --unix-socket " + admin + " http://admin" + path + "; true");
  };
  CHECK(Within([&] { return admin_get("/ready") == "ready\n"; }) >= 0);
  CHECK(router_asks.load() > 0);
  {
    std::lock_guard lock(mu);
    CHECK_THAT(seen_labels, Catch::Contains("ingressgateway"));
  }
  // A client outside the mesh reaches the gateway pod's 8080; the route picks by host.
  CHECK(CurlInPod(t.lab, "other", "http://10.211.0.20:8080/hello", "httpbin.example.com") ==
        "200 Hello version: v1, instance: v1\n");
  CHECK(CurlInPod(t.lab, "other", "http://10.211.0.20:8080/hello", "elsewhere.example.com")
            .starts_with("404"));
  CHECK(CurlInPod(t.lab, "other", "http://10.211.0.20:8080/headers", "httpbin.example.com")
            .starts_with("404"));
  // helloworld saw the gateway pod's address.
  CHECK_THAT(t.v1->ReadLine(2000), Catch::StartsWith("10.211.0.20 - - ["));
  auto dump = admin_get("/config_dump");
  CHECK_THAT(dump, Catch::Contains("\"role\": \"gateway\""));
  CHECK_THAT(dump, Catch::Contains(
                       "router~10.211.0.20~istio-ingressgateway-7d4f8b9c6-abcde.istio-system"));
  CHECK_THAT(admin_get("/metrics"), Catch::Contains("sluice_proxy_requests_total 3"));
  // Istio's standard metrics, as a gateway reports them: reporter "source", the gateway's
  // workload (its Deployment's name) the source, the route's service the destination.
  const std::string istio = admin_get("/stats/prometheus");
  INFO(istio);
  CHECK_THAT(istio, Catch::Contains("# TYPE istio_requests_total counter"));
  CHECK_THAT(istio, Catch::Contains("reporter=\"source\",source_workload=\"istio-ingressgateway\","
                                    "source_canonical_service=\"istio-ingressgateway\""));
  CHECK_THAT(istio, Catch::Contains("source_workload_namespace=\"istio-system\""));
  CHECK_THAT(istio, Catch::Contains("response_code=\"200\""));
  CHECK_THAT(istio, Catch::Contains("response_code=\"404\""));
  CHECK_THAT(istio, Catch::Contains("response_flags=\"NR\""));
  std::ifstream log(t.dir + "/gw.log");
  std::string text((std::istreambuf_iterator<char>(log)), {});
  CHECK_THAT(text, Catch::Contains("\"GET /hello HTTP/1.1\" 200"));
  CHECK_THAT(text, Catch::Contains(" NR "));  // no route: Envoy's flag

  // A route change is compiled alone: the route table again, no cluster. The virtual
  // host now answers elsewhere.example.com too.
  CHECK_THAT(admin_get("/metrics"), Catch::Contains("sluice_l7_last_compile_built{kind="));
  {
    std::lock_guard lock(mu);
    gateway_config.routes.clear();
    gateway_config.Add(FromJson<RouteConfiguration>(
        R"({"name":"http.8080","virtualHosts":[{"name":"httpbin.example.com:80","domains":["httpbin.example.com","httpbin.example.com:*","elsewhere.example.com"],"routes":[{"match":{"prefix":"/hello"},"route":{"cluster":"outbound|80|v1|api.default.svc.cluster.local"}}]}]})"));
  }
  uads.Push();
  CHECK(Within([&] {
          return CurlInPod(t.lab, "other", "http://10.211.0.20:8080/hello", "elsewhere.example.com")
              .starts_with("200");
        }) >= 0);
  const std::string metrics = admin_get("/metrics");
  CHECK_THAT(metrics, Catch::Contains("sluice_l7_last_compile_built{kind=\"clusters\"} 0"));
  CHECK_THAT(metrics, Catch::Contains("sluice_l7_last_compile_built{kind=\"routes\"} 1"));

  // SIGTERM: a clean stop; the admin socket is removed.
  kill(gw2.pid(), SIGTERM);
  CHECK(gw2.Wait() == 0);
  CHECK_FALSE(fs::exists(admin));
  uads.Stop();
}

TEST_CASE("sluice-agent --config-dir: local Istio YAML through the same xDS pipeline") {
  Lab lab;
  lab.AddClientAndServers();
  const std::string dir = "/tmp/" + lab.tag() + "-agent";
  fs::create_directories(dir + "/config");
  struct Rm {
    std::string d;
    ~Rm() { fs::remove_all(d); }
  } rm{dir};
  WriteLabels(dir, true);
  auto write_config = [&](const std::string& endpoint_ip) {
    std::ofstream(dir + "/config/web.yaml.tmp") << R"(apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.211.90
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: web, namespace: default}
subsets:
- addresses: [{ip: )" + endpoint_ip + R"(}]
  ports: [{name: http, port: 8080}]
)";
    fs::rename(dir + "/config/web.yaml.tmp", dir + "/config/web.yaml");
  };
  write_config("10.211.0.2");
  auto agent = StartAgent(lab, dir, 0, {"--config-dir", dir + "/config"});
  REQUIRE(cni::CallAgent(dir + "/cni.sock", AddRequest(lab, "client", "default", "10.211.0.10"),
                         std::chrono::seconds(5)));
  CHECK(Count(lab.Connect("client", "10.96.211.90:80", 10), "by_server", "a") == 10);

  // An edit is picked up (the directory is watched)...
  write_config("10.211.0.3");
  CHECK(Within([&] {
          return Count(lab.Connect("client", "10.96.211.90:80", 1), "by_server", "b") == 1;
        }) >= 0);
  // ...and a broken file is reported while its last good version stays in force.
  std::ofstream(dir + "/config/web.yaml") << "kind: Service\nmetadata: [not, a, map\n";
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  CHECK(Count(lab.Connect("client", "10.96.211.90:80", 10), "by_server", "b") == 10);
  int status = 0;
  auto dump = HttpGet(agent.admin_port, "/config_dump", &status);
  CHECK_THAT(dump, Catch::Contains("outbound|80||web.default.svc.cluster.local"));
  agent.proc->Kill();
}
