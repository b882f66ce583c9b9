// sluicectl proxy-config / x describe / registryz / enroll, run as processes on the
// examples (each test copies the manifests a task needs into its own config directory),
// and proxy-config against live admin endpoints the test serves over TCP and a unix
// socket, reached directly (--admin) and through a local-cluster state file.
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "sluice/inspect/table.h"
#include "sluicectl_run.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const fs::path kExamples = SLUICE_EXAMPLES;

using sluice::testing::Run;
using sluice::testing::Sluicectl;

std::string ReadFile(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A private directory removed with everything in it, even when a test fails.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/sluice-inspect-XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// A config directory made of example files, as `sluicectl local apply -f` would leave it.
// "istio-system" is the demo profile's gateways, as `sluicectl local up --profile demo`
// installs them (agent/local/profiles).
void CopyExamples(const fs::path& dir, const std::vector<std::string>& parts) {
  for (const auto& part : parts) {
    fs::path src = part == "istio-system" ? kExamples.parent_path() / "agent/local/profiles"
                                          : kExamples / part;
    if (fs::is_directory(src)) {
      for (const auto& e : fs::directory_iterator(src)) {
        if (e.path().extension() == ".yaml")
          fs::copy_file(e.path(),
                        dir / (src.filename().string() + "-" + e.path().filename().string()),
                        fs::copy_options::overwrite_existing);
      }
    } else {
      fs::copy_file(src, dir / src.filename(), fs::copy_options::overwrite_existing);
    }
  }
}

// Running pods for the helloworld Deployments (what the cluster would report).
void WriteHelloworldPods(const fs::path& dir) {
  std::ofstream(dir / "pods.yaml") << R"(apiVersion: v1
kind: Pod
metadata:
  name: helloworld-v1-5c9f6d7b8-abcde
  labels: {app: helloworld, version: v1}
status:
  podIP: 10.244.0.21
---
apiVersion: v1
kind: Pod
metadata:
  name: helloworld-v2-7f8d9c6b5-fghij
  labels: {app: helloworld, version: v2}
status:
  podIP: 10.244.0.22
)";
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream ss(text);
  for (std::string l; std::getline(ss, l);)
    out.push_back(l);
  return out;
}

std::vector<std::string> Fields(const std::string& line) {
  std::vector<std::string> out;
  std::stringstream ss(line);
  for (std::string f; ss >> f;)
    out.push_back(f);
  return out;
}

// The cluster of `dump` (a JSON array) named `name`.
json ByName(const json& arr, const std::string& key, const std::string& name) {
  for (const auto& x : arr) {
    if (x.value(key, "") == name)
      return x;
  }
  return nullptr;
}

const std::string kHello = "helloworld.default.svc.cluster.local";

}  // namespace

TEST_CASE("every example loads cleanly with the samples, gateways and external host") {
  auto check = [](const std::string& what, const std::function<void(const fs::path&)>& add) {
    TempDir cfg;
    CopyExamples(cfg.path(), {"samples", "istio-system", "external"});
    add(cfg.path());
    INFO(what);
    Run r = Sluicectl({"translate", "-f", cfg.path().string()});
    CHECK(r.rc == 0);
    CHECK(r.err.find("error:") == std::string::npos);
  };
  for (const char* task : {"01-enrolment", "02-ingress", "03-egress-http", "04-egress-tls",
                           "05-service-entry", "06-destination-rule", "07-traffic-shifting"}) {
    check(task, [&](const fs::path& dir) { CopyExamples(dir, {task}); });
    CHECK(fs::exists(kExamples / task / "README.md"));
  }
  // 08's two VirtualService files are applied one after the other: first the route to v1
  // (with the subsets), then the mirror route replacing it (the subsets stay).
  const fs::path m = kExamples / "08-mirroring";
  check("08 before mirroring", [&](const fs::path& dir) {
    fs::copy_file(m / "httpbin-v1-v2.yaml", dir / "a.yaml");
    fs::copy_file(m / "route-v1.yaml", dir / "b.yaml");
  });
  check("08 with mirroring", [&](const fs::path& dir) {
    fs::copy_file(m / "httpbin-v1-v2.yaml", dir / "a.yaml");
    const std::string v1 = ReadFile(m / "route-v1.yaml");
    std::ofstream(dir / "b.yaml") << v1.substr(
        v1.find("kind: DestinationRule") -
        std::string("apiVersion: networking.istio.io/v1alpha3\n").size());
    fs::copy_file(m / "route-v1-mirror-v2.yaml", dir / "c.yaml");
  });
  CHECK(fs::exists(m / "README.md"));
}

TEST_CASE("proxy-config cluster shows LEAST_REQUEST, then RANDOM with task 6's DestinationRule") {
  TempDir cfg;
  CopyExamples(cfg.path(), {"samples", "istio-system"});
  auto lb = [&] {
    Run r = Sluicectl({"proxy-config", "cluster", "deploy/sleep", "--config-dir",
                       cfg.path().string(), "--fqdn", kHello, "-o", "json"});
    REQUIRE(r.rc == 0);
    json j = json::parse(r.out);
    REQUIRE(j.size() == 1);  // no subsets yet: only outbound|5000||helloworld…
    CHECK(j[0]["name"] == "outbound|5000||" + kHello);
    return j[0].value("lbPolicy", "ROUND_ROBIN");
  };
  CHECK(lb() == "LEAST_REQUEST");

  CopyExamples(cfg.path(), {"06-destination-rule"});
  CHECK(lb() == "RANDOM");

  // The yaml form reads as `istioctl … -o yaml | grep lbPolicy` does.
  Run y = Sluicectl({"proxy-config", "cluster", "deploy/sleep", "--config-dir", cfg.path().string(),
                     "--fqdn", kHello, "-o", "yaml"});
  REQUIRE(y.rc == 0);
  CHECK(y.out.find("  lbPolicy: RANDOM\n") != std::string::npos);
  CHECK(YAML::Load(y.out)[0]["name"].as<std::string>() == "outbound|5000||" + kHello);
}

TEST_CASE("proxy-config cluster table: a row per subset with istioctl's columns") {
  TempDir cfg;
  CopyExamples(cfg.path(), {"samples", "istio-system", "07-traffic-shifting"});
  Run r = Sluicectl({"proxy-config", "cluster", "deploy/sleep", "--config-dir", cfg.path().string(),
                     "--fqdn", kHello});
  REQUIRE(r.rc == 0);
  auto lines = Lines(r.out);
  REQUIRE(lines.size() == 4);
  CHECK(lines[0] ==
        "SERVICE FQDN                             PORT     SUBSET     DIRECTION     TYPE     "
        "DESTINATION RULE");
  std::vector<std::string> subsets;
  for (std::size_t i = 1; i < lines.size(); ++i) {
    auto f = Fields(lines[i]);
    REQUIRE(f.size() == 6);
    CHECK(f[0] == kHello);
    CHECK(f[1] == "5000");
    CHECK(f[3] == "outbound");
    CHECK(f[4] == "EDS");
    CHECK(f[5] == "helloworld-trafficpolicy.default");
    subsets.push_back(f[2]);
  }
  CHECK(subsets == std::vector<std::string>{"-", "v1", "v2"});

  // The clusters behind the rows carry istiod's names.
  Run j = Sluicectl({"proxy-config", "cluster", "deploy/sleep", "--config-dir", cfg.path().string(),
                     "--fqdn", kHello, "--subset", "v1", "-o", "json"});
  REQUIRE(j.rc == 0);
  auto arr = json::parse(j.out);
  REQUIRE(arr.size() == 1);
  CHECK(arr[0]["name"] == "outbound|5000|v1|" + kHello);
  CHECK(arr[0]["lbPolicy"] == "LEAST_REQUEST");
}

TEST_CASE("proxy-config route shows task 7's 25/75 weights and the VirtualService") {
  TempDir cfg;
  CopyExamples(cfg.path(), {"samples", "istio-system", "07-traffic-shifting"});
  Run r = Sluicectl({"proxy-config", "route", "deploy/sleep", "--config-dir", cfg.path().string(),
                     "--name", "5000", "-o", "json"});
  REQUIRE(r.rc == 0);
  auto routes = json::parse(r.out);
  REQUIRE(routes.size() == 1);
  CHECK(routes[0]["name"] == "5000");
  json vh = ByName(routes[0]["virtualHosts"], "name", kHello + ":5000");
  REQUIRE(vh.is_object());
  auto clusters = vh["routes"][0]["route"]["weightedClusters"]["clusters"];
  REQUIRE(clusters.size() == 2);
  CHECK(clusters[0]["name"] == "outbound|5000|v1|" + kHello);
  CHECK(clusters[0]["weight"] == 25);
  CHECK(clusters[1]["name"] == "outbound|5000|v2|" + kHello);
  CHECK(clusters[1]["weight"] == 75);

  Run t = Sluicectl({"proxy-config", "route", "deploy/sleep", "--config-dir", cfg.path().string(),
                     "--name", "5000"});
  REQUIRE(t.rc == 0);
  auto lines = Lines(t.out);
  REQUIRE(lines.size() == 2);  // header + helloworld's route (passthrough rows hidden)
  CHECK(Fields(lines[0]) == std::vector<std::string>{"NAME", "VHOST", "NAME", "DOMAINS", "MATCH",
                                                     "VIRTUAL", "SERVICE"});
  auto f = Fields(lines[1]);
  CHECK(f.front() == "5000");
  CHECK(f[1] == kHello + ":5000");
  CHECK(f[f.size() - 2] == "/*");
  CHECK(f.back() == "hello-routing.default");

  // `all`: the four tables, one after another.
  Run all = Sluicectl({"proxy-config", "all", "deploy/sleep", "--config-dir", cfg.path().string()});
  REQUIRE(all.rc == 0);
  for (const char* header : {"SERVICE FQDN", "ADDRESSES", "VHOST NAME"})
    CHECK(all.out.find(header) != std::string::npos);
  CHECK(all.out.find("hello-routing.default") != std::string::npos);

  // Without the VirtualService there is no weighted split.
  fs::remove(cfg.path() / "07-traffic-shifting-virtual-service.yaml");
  Run plain = Sluicectl({"proxy-config", "route", "deploy/sleep", "--config-dir",
                         cfg.path().string(), "--name", "5000", "-o", "json"});
  REQUIRE(plain.rc == 0);
  CHECK(plain.out.find("weightedClusters") == std::string::npos);
}

TEST_CASE("proxy-config endpoint lists each cluster's endpoints with their status") {
  TempDir cfg;
  CopyExamples(cfg.path(), {"samples", "istio-system", "07-traffic-shifting", "05-service-entry"});
  WriteHelloworldPods(cfg.path());
  Run r = Sluicectl({"proxy-config", "endpoint", "deploy/sleep", "--config-dir",
                     cfg.path().string(), "--cluster", "outbound|5000|v2|" + kHello});
  REQUIRE(r.rc == 0);
  auto lines = Lines(r.out);
  REQUIRE(lines.size() == 2);
  CHECK(Fields(lines[0]) ==
        std::vector<std::string>{"ENDPOINT", "STATUS", "OUTLIER", "CHECK", "CLUSTER"});
  CHECK(Fields(lines[1]) == std::vector<std::string>{"10.244.0.22:5000", "HEALTHY", "OK",
                                                     "outbound|5000|v2|" + kHello});

  // Istio's MESH_INTERNAL STATIC example: its two endpoints.
  Run se =
      Sluicectl({"proxy-config", "endpoints", "deploy/sleep", "--config-dir", cfg.path().string(),
                 "--cluster", "outbound|27018||mymongodb.somedomain", "-o", "json"});
  REQUIRE(se.rc == 0);
  auto cla = json::parse(se.out);
  REQUIRE(cla.size() == 1);
  std::vector<std::string> addrs;
  for (const auto& ep : cla[0]["endpoints"][0]["lbEndpoints"]) {
    addrs.push_back(ep["endpoint"]["address"]["socketAddress"]["address"]);
    CHECK(ep["endpoint"]["address"]["socketAddress"]["portValue"] == 27018);
    CHECK(ep["healthStatus"] == "HEALTHY");
  }
  CHECK(addrs == std::vector<std::string>{"2.2.2.2", "3.3.3.3"});
}

TEST_CASE("proxy-config listener of the ingress gateway with task 2's Gateway") {
  TempDir cfg;
  CopyExamples(cfg.path(), {"samples", "istio-system", "02-ingress"});
  Run r = Sluicectl({"proxy-config", "listener", "deploy/istio-ingressgateway", "-n",
                     "istio-system", "--config-dir", cfg.path().string()});
  REQUIRE(r.rc == 0);
  auto lines = Lines(r.out);
  REQUIRE(lines.size() == 2);
  CHECK(Fields(lines[0]) == std::vector<std::string>{"ADDRESSES", "PORT", "MATCH", "DESTINATION"});
  CHECK(Fields(lines[1]) ==
        std::vector<std::string>{"0.0.0.0", "8080", "ALL", "Route:", "http.8080"});

  Run routes = Sluicectl({"pc", "routes", "deploy/istio-ingressgateway", "-n", "istio-system",
                          "--config-dir", cfg.path().string()});
  REQUIRE(routes.rc == 0);
  auto rl = Lines(routes.out);
  REQUIRE(rl.size() == 3);  // /status* and /delay*
  CHECK(Fields(rl[1]) == std::vector<std::string>{"http.8080", "httpbin.example.com:80",
                                                  "httpbin.example.com", "/status*",
                                                  "httpbin.default"});
  CHECK(Fields(rl[2])[3] == "/delay*");
}

TEST_CASE("proxy-config deploy/NAME finds a running cluster's pod of that deployment") {
  // A local cluster's config dir holds Pods (with IPs), not Deployments.
  TempDir cfg;
  CopyExamples(cfg.path(), {"02-ingress"});
  std::ofstream(cfg.path() / "k8s.yaml") << R"(apiVersion: v1
kind: Service
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  ports:
  - {name: http2, port: 80, targetPort: 8080}
---
apiVersion: v1
kind: Pod
metadata:
  name: istio-ingressgateway-5f8c7-abcde
  namespace: istio-system
  labels: {app: istio-ingressgateway, istio: ingressgateway}
status: {podIP: 10.244.0.3}
)";
  Run r = Sluicectl({"proxy-config", "listener", "deploy/istio-ingressgateway", "-n",
                     "istio-system", "--config-dir", cfg.path().string()});
  REQUIRE(r.rc == 0);
  CHECK(r.out.find("Route: http.8080") != std::string::npos);
}

TEST_CASE("proxy-config errors name what was not found") {
  TempDir cfg;
  CopyExamples(cfg.path(), {"samples", "istio-system"});
  const std::string dir = cfg.path().string();

  Run fqdn = Sluicectl({"proxy-config", "cluster", "deploy/sleep", "--config-dir", dir, "--fqdn",
                        "nosuch.default.svc.cluster.local"});
  CHECK(fqdn.rc == 1);
  CHECK(fqdn.out.empty());
  CHECK(fqdn.err.find("no cluster matches --fqdn nosuch.default.svc.cluster.local") !=
        std::string::npos);

  Run deploy = Sluicectl({"proxy-config", "cluster", "deploy/nosuch", "--config-dir", dir});
  CHECK(deploy.rc == 1);
  CHECK(deploy.err.find("deployment default/nosuch not found in " + dir) != std::string::npos);

  Run ns = Sluicectl({"proxy-config", "cluster", "--config-dir", dir, "-n", "nosuch"});
  CHECK(ns.rc == 1);
  CHECK(ns.err.find("namespace nosuch not found in " + dir) != std::string::npos);

  Run route =
      Sluicectl({"proxy-config", "route", "deploy/sleep", "--config-dir", dir, "--name", "9999"});
  CHECK(route.rc == 1);
  CHECK(route.err.find("no route matches --name 9999") != std::string::npos);

  // Through a state file: the pod is looked up there.
  TempDir state;
  std::ofstream(state.path() / "state.json")
      << R"({"version": 1, "agent_admin": "127.0.0.1:1", "config_dir": ")" << dir
      << R"(", "pods": [{"namespace": "default", "name": "sleep-1", "owner": "Deployment/sleep"}]})";
  const std::string sf = (state.path() / "state.json").string();
  Run pod = Sluicectl({"proxy-config", "cluster", "x", "--state-file", sf});
  CHECK(pod.rc == 1);
  CHECK(pod.err.find("pod default/x not found in " + sf) != std::string::npos);
  Run other_ns =
      Sluicectl({"proxy-config", "cluster", "sleep-1", "-n", "other", "--state-file", sf});
  CHECK(other_ns.rc == 1);
  CHECK(other_ns.err.find("pod other/sleep-1 not found in " + sf) != std::string::npos);

  Run nostate = Sluicectl({"proxy-config", "cluster", "deploy/sleep", "--state-file",
                           (state.path() / "none.json").string()});
  CHECK(nostate.rc == 1);
  CHECK(nostate.err.find("no local cluster state at") != std::string::npos);
}

namespace {

// A tiny admin endpoint: answers every GET with `body` (as sluice-agent's admin does:
// HTTP/1.0 style, Connection: close) and records the request paths.
class FakeAdmin {
 public:
  // tcp: 127.0.0.1 on an ephemeral port; else a unix socket at `unix_path`.
  FakeAdmin(std::string body, const std::string& unix_path = "") : body_(std::move(body)) {
    if (unix_path.empty()) {
      fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_in sin{};
      sin.sin_family = AF_INET;
      sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      REQUIRE(bind(fd_, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) == 0);
      socklen_t len = sizeof(sin);
      getsockname(fd_, reinterpret_cast<sockaddr*>(&sin), &len);
      address_ = "127.0.0.1:" + std::to_string(ntohs(sin.sin_port));
    } else {
      fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_un sun{};
      sun.sun_family = AF_UNIX;
      std::strncpy(sun.sun_path, unix_path.c_str(), sizeof(sun.sun_path) - 1);
      REQUIRE(bind(fd_, reinterpret_cast<sockaddr*>(&sun), sizeof(sun)) == 0);
      address_ = "unix:" + unix_path;
    }
    REQUIRE(listen(fd_, 8) == 0);
    thread_ = std::thread([this] { Serve(); });
  }
  ~FakeAdmin() {
    stop_ = true;
    thread_.join();
    close(fd_);
  }
  const std::string& address() const { return address_; }
  std::vector<std::string> paths() {
    std::lock_guard lock(mu_);
    return paths_;
  }

 private:
  void Serve() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 50) <= 0)
        continue;
      int c = accept(fd_, nullptr, nullptr);
      if (c < 0)
        continue;
      std::string req;
      char buf[4096];
      while (req.find("\r\n\r\n") == std::string::npos) {
        ssize_t n = read(c, buf, sizeof(buf));
        if (n <= 0)
          break;
        req.append(buf, static_cast<size_t>(n));
      }
      auto sp1 = req.find(' '), sp2 = req.find(' ', sp1 + 1);
      {
        std::lock_guard lock(mu_);
        paths_.push_back(req.substr(sp1 + 1, sp2 - sp1 - 1));
      }
      std::string resp = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " +
                         std::to_string(body_.size()) + "\r\nConnection: close\r\n\r\n" + body_;
      for (size_t off = 0; off < resp.size();) {
        ssize_t n = write(c, resp.data() + off, resp.size() - off);
        if (n <= 0)
          break;
        off += static_cast<size_t>(n);
      }
      close(c);
    }
  }

  std::string body_;
  int fd_ = -1;
  std::string address_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::mutex mu_;
  std::vector<std::string> paths_;
};

}  // namespace

TEST_CASE(
    "proxy-config against live admin endpoints: --admin TCP and unix:, and via the state file") {
  TempDir cfg;
  CopyExamples(cfg.path(), {"samples", "istio-system", "06-destination-rule", "02-ingress"});
  // What the agents would serve: the translator's resources for a sidecar of default and
  // for the ingress gateway, with the agent's extra "kernel" section.
  Run sidecar = Sluicectl({"translate", "-f", cfg.path().string(), "--proxy", "sidecar:default"});
  REQUIRE(!sidecar.out.empty());
  json node_dump = json::parse(sidecar.out);
  node_dump["kernel"] = {{"services", json::array()}};
  Run gw = Sluicectl({"translate", "-f", cfg.path().string(), "--proxy",
                      "gateway:istio=ingressgateway@istio-system"});
  REQUIRE(!gw.out.empty());

  TempDir run;
  FakeAdmin node(node_dump.dump());
  FakeAdmin gateway(gw.out, (run.path() / "admin.sock").string());

  SECTION("--admin HOST:PORT") {
    Run r = Sluicectl(
        {"proxy-config", "cluster", "--admin", node.address(), "--fqdn", kHello, "-o", "json"});
    REQUIRE(r.rc == 0);
    CHECK(json::parse(r.out)[0]["lbPolicy"] == "RANDOM");
    CHECK(node.paths() == std::vector<std::string>{"/config_dump"});
  }
  SECTION("--admin unix:PATH") {
    Run r = Sluicectl({"proxy-config", "listener", "--admin", gateway.address()});
    REQUIRE(r.rc == 0);
    CHECK(r.out.find("Route: http.8080") != std::string::npos);
    CHECK(gateway.paths() == std::vector<std::string>{"/config_dump"});
  }
  SECTION("POD through the state file: the node agent per namespace, a gateway on its socket") {
    std::ofstream(run.path() / "state.json") << json{
        {"version", 1},
        {"agent_admin", node.address()},
        {"config_dir", cfg.path().string()},
        {"pods",
         {{{"namespace", "default"},
           {"name", "sleep-6d68f9c8d-q2x4z"},
           {"owner", "Deployment/sleep"}},
          {{"namespace", "istio-system"},
           {"name", "istio-ingressgateway-5f8c7-abcde"},
           {"owner", "Deployment/istio-ingressgateway"},
           {"admin", gateway.address()}}}}}.dump();
    const std::string sf = (run.path() / "state.json").string();

    Run r = Sluicectl(
        {"proxy-config", "cluster", "deploy/sleep", "--state-file", sf, "--fqdn", kHello});
    REQUIRE(r.rc == 0);
    CHECK(Fields(Lines(r.out).at(1)).back() == "helloworld-trafficpolicy.default");
    CHECK(node.paths() ==
          std::vector<std::string>{"/config_dump?namespace=default&pod=sleep-6d68f9c8d-q2x4z"});

    Run g = Sluicectl({"proxy-config", "route", "istio-ingressgateway-5f8c7-abcde.istio-system",
                       "--state-file", sf});
    REQUIRE(g.rc == 0);
    CHECK(g.out.find("/status*") != std::string::npos);
    CHECK(gateway.paths() == std::vector<std::string>{"/config_dump"});

    // registryz and x describe read the cluster's config dir; describe the live labels.
    std::ofstream(run.path() / "labels.json")
        << R"({"namespaces": {"default": {"istio.io/dataplane-mode": "sluice"}}, "pods": {}})";
    Run reg = Sluicectl({"registryz", "--state-dir", run.path().string()});
    REQUIRE(reg.rc == 0);
    CHECK(ByName(json::parse(reg.out), "hostname", kHello).is_object());
    Run d = Sluicectl({"x", "describe", "svc", "helloworld", "--state-dir", run.path().string()});
    REQUIRE(d.rc == 0);
    CHECK(d.out.find("   Load balancer: RANDOM\n") != std::string::npos);
    CHECK(d.out.find("Enrolment: namespace default is enrolled") != std::string::npos);

    // `agent config-dump` reaches the same endpoints.
    Run cd = Sluicectl({"agent", "--admin", gateway.address(), "config-dump"});
    REQUIRE(cd.rc == 0);
    CHECK(json::parse(cd.out).contains("listeners"));
  }
  SECTION("the node agent's notes reach stderr, the table stdout") {
    json ns_dump = node_dump;
    ns_dump["source"] = "node stream (no pods of default here yet)";
    ns_dump["l7_error"] = "listener 0.0.0.0_5000: bind failed";
    FakeAdmin noted(ns_dump.dump());
    Run r = Sluicectl(
        {"proxy-config", "cluster", "--admin", noted.address(), "-n", "default", "--fqdn", kHello});
    REQUIRE(r.rc == 0);
    CHECK(noted.paths() == std::vector<std::string>{"/config_dump?namespace=default"});
    CHECK(r.out.starts_with("SERVICE FQDN"));
    CHECK(r.err.find("node stream (no pods of default here yet)") != std::string::npos);
    CHECK(r.err.find("the agent reports: listener 0.0.0.0_5000: bind failed") != std::string::npos);
  }
  SECTION("an admin endpoint that is not there") {
    Run r = Sluicectl(
        {"proxy-config", "cluster", "--admin", "unix:" + (run.path() / "nothing.sock").string()});
    CHECK(r.rc == 1);
    CHECK(r.err.find("cannot reach the admin socket " + (run.path() / "nothing.sock").string()) !=
          std::string::npos);
  }
}

TEST_CASE("x describe svc: ports, DestinationRule subsets and load balancer, weighted routes") {
  TempDir cfg;
  CopyExamples(cfg.path(), {"samples", "istio-system", "07-traffic-shifting", "01-enrolment"});
  WriteHelloworldPods(cfg.path());
  Run r = Sluicectl({"x", "describe", "svc", "helloworld", "--config-dir", cfg.path().string()});
  REQUIRE(r.rc == 0);
  const std::string& o = r.out;
  CHECK(o.find("Service: helloworld\n   Port: http 5000/HTTP targets pod port 5000\n") == 0);
  CHECK(o.find("DestinationRule: helloworld-trafficpolicy for \"" + kHello +
               "\"\n   Matching subsets: v1,v2\n") != std::string::npos);
  CHECK(o.find("   Load balancer: LEAST_REQUEST\n") != std::string::npos);
  CHECK(o.find("VirtualService: hello-routing\n") != std::string::npos);
  CHECK(o.find("   Route to host \"" + kHello + "\" subset \"v1\" with weight 25%\n") !=
        std::string::npos);
  CHECK(o.find("   Route to host \"" + kHello + "\" subset \"v2\" with weight 75%\n") !=
        std::string::npos);
  CHECK(o.find("Enrolment: namespace default is enrolled (istio.io/dataplane-mode=sluice)") !=
        std::string::npos);

  // Task 6's rule alone: the load balancer changes, no subsets, no VirtualService.
  TempDir cfg6;
  CopyExamples(cfg6.path(), {"samples", "06-destination-rule"});
  Run r6 = Sluicectl({"x", "describe", "svc", "helloworld", "--config-dir", cfg6.path().string()});
  REQUIRE(r6.rc == 0);
  CHECK(r6.out.find("   Load balancer: RANDOM\n") != std::string::npos);
  CHECK(r6.out.find("Matching subsets") == std::string::npos);
  CHECK(r6.out.find("VirtualService: none") != std::string::npos);
  CHECK(r6.out.find("namespace default is not enrolled") != std::string::npos);

  Run missing = Sluicectl({"x", "describe", "svc", "nosuch", "--config-dir", cfg6.path().string()});
  CHECK(missing.rc == 1);
  CHECK(missing.err.find("service default/nosuch not found in " + cfg6.path().string()) !=
        std::string::npos);
}

TEST_CASE("x describe svc: each port's data path, the kernel or the in-pod proxy and why") {
  TempDir cfg;
  std::ofstream(cfg.path() / "echo.yaml") << R"(apiVersion: v1
kind: Service
metadata: {name: tcp-echo, namespace: default}
spec:
  selector: {app: tcp-echo}
  clusterIP: 10.96.0.90
  ports:
  - {name: tcp, port: 9000}
  - {name: http, port: 8080}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: tcp-echo, namespace: default}
spec:
  host: tcp-echo
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcp-echo, namespace: default}
spec:
  hosts: [tcp-echo]
  http:
  - match: [{uri: {prefix: /admin}}]
    route: [{destination: {host: tcp-echo}}]
)";
  Run r = Sluicectl({"x", "describe", "svc", "tcp-echo", "--config-dir", cfg.path().string()});
  REQUIRE(r.rc == 0);
  CHECK(r.out.find("   Data path, port 9000: the kernel, at connect time "
                   "(outbound|9000||tcp-echo.default.svc.cluster.local weight 1 ROUND_ROBIN)\n") !=
        std::string::npos);
  CHECK(r.out.find("   Data path, port 8080: the in-pod L7 proxy (route matches beyond one "
                   "catch-all)\n") != std::string::npos);
}

TEST_CASE(
    "registryz: MESH_EXTERNAL entries true, the STATIC MESH_INTERNAL entry false with VIPs and "
    "endpoints") {
  TempDir cfg;
  CopyExamples(cfg.path(), {"samples", "05-service-entry"});
  Run r = Sluicectl({"registryz", "-f", cfg.path().string()});
  REQUIRE(r.rc == 0);
  auto reg = json::parse(r.out);
  json mongo = ByName(reg, "hostname", "mymongodb.somedomain");
  REQUIRE(mongo.is_object());
  CHECK(mongo["MeshExternal"] == false);
  CHECK(mongo["Resolution"] == 0);  // ClientSideLB: STATIC
  CHECK(mongo["clusterVIPs"]["Addresses"]["Kubernetes"] == json::array({"192.192.192.192/24"}));
  CHECK(mongo["ports"][0] == json({{"name", "mongodb"}, {"port", 27018}, {"protocol", "Mongo"}}));
  REQUIRE(mongo["endpoints"].size() == 2);
  CHECK(mongo["endpoints"][0]["address"] == "2.2.2.2");
  CHECK(mongo["endpoints"][1]["address"] == "3.3.3.3");
  for (const char* h :
       {"api.dropboxapi.com", "www.googleapis.com", "api.facebook.com", "edition.cnn.com"}) {
    json e = ByName(reg, "hostname", h);
    REQUIRE(e.is_object());
    CHECK(e["MeshExternal"] == true);
    CHECK(e["Resolution"] == 1);  // DNSLB
    CHECK(e["Attributes"]["ServiceRegistry"] == "External");
  }
  json httpbin = ByName(reg, "hostname", "httpbin.default.svc.cluster.local");
  REQUIRE(httpbin.is_object());
  CHECK(httpbin["MeshExternal"] == false);
  CHECK(httpbin["Attributes"]["ServiceRegistry"] == "Kubernetes");
  CHECK_FALSE(httpbin.contains("endpoints"));
}

TEST_CASE("enroll adds the label to every workload's pods and changes nothing else") {
  const std::string input = ReadFile(kExamples / "samples" / "helloworld.yaml") + "---\n" +
                            ReadFile(kExamples / "samples" / "sleep.yaml") +
                            "---\n# a bare pod\napiVersion: v1\nkind: Pod\nmetadata:\n"
                            "  name: client  # no labels yet\nspec:\n  containers: []\n";
  Run r = Sluicectl({"enroll", "-f", "-"}, input);
  REQUIRE(r.rc == 0);

  // Every input line is there, in order; the only additions are label lines.
  auto in = Lines(input), out = Lines(r.out);
  std::vector<std::string> added;
  std::size_t i = 0;
  for (const auto& l : out) {
    if (i < in.size() && l == in[i])
      ++i;
    else
      added.push_back(l);
  }
  CHECK(i == in.size());
  // helloworld-v1, helloworld-v2, sleep: one line in their existing labels; the pod: a
  // labels: block.
  CHECK(added == std::vector<std::string>{"        istio.io/dataplane-mode: sluice",
                                          "        istio.io/dataplane-mode: sluice",
                                          "        istio.io/dataplane-mode: sluice",
                                          "  labels:", "    istio.io/dataplane-mode: sluice"});

  // And the result parses to the same objects with the label on each pod.
  auto docs = YAML::LoadAll(r.out);
  int workloads = 0;
  for (const auto& d : docs) {
    const std::string kind = d["kind"].as<std::string>();
    YAML::Node meta;
    if (kind == "Deployment")
      meta = d["spec"]["template"]["metadata"];
    else if (kind == "Pod")
      meta = d["metadata"];
    else {
      const YAML::Node labels = d["metadata"]["labels"];
      if (labels)
        CHECK_FALSE(labels["istio.io/dataplane-mode"]);  // Services untouched
      continue;
    }
    ++workloads;
    CHECK(meta["labels"]["istio.io/dataplane-mode"].as<std::string>() == "sluice");
  }
  CHECK(workloads == 4);

  // Idempotent: enrolling an enrolled manifest changes nothing.
  Run again = Sluicectl({"enroll", "-f", "-"}, r.out);
  REQUIRE(again.rc == 0);
  CHECK(again.out == r.out);
}

TEST_CASE("enroll: flow style, JSON, other kinds, opt-out overridden, -o FILE, errors") {
  const std::string input =
      "{\"apiVersion\": \"apps/v1\", \"kind\": \"DaemonSet\", \"metadata\": {\"name\": \"d\"}, "
      "\"spec\": {\"template\": {\"metadata\": {\"labels\": {\"app\": \"d\"}}, \"spec\": {}}}}\n"
      "---\n"
      "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: s}\nspec:\n  template:\n"
      "    spec: {}\n"
      "---\n"
      "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: j\nspec:\n  template:\n"
      "    metadata:\n      labels:\n        istio.io/dataplane-mode: none # opted out\n"
      "    spec: {}\n"
      "---\n"
      "apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {name: v}\n"
      "spec: {hosts: [x]}\n";
  TempDir dir;
  const fs::path out = dir.path() / "enrolled.yaml";
  Run r = Sluicectl({"enroll", "-f", "-", "-o", out.string()}, input);
  REQUIRE(r.rc == 0);
  CHECK(r.out.empty());
  const std::string text = ReadFile(out);
  // JSON stays JSON.
  auto first = text.substr(0, text.find("\n---\n"));
  auto j = json::parse(first);
  CHECK(j["spec"]["template"]["metadata"]["labels"] ==
        json({{"istio.io/dataplane-mode", "sluice"}, {"app", "d"}}));
  auto docs = YAML::LoadAll(text);
  REQUIRE(docs.size() == 4);
  CHECK(docs[1]["spec"]["template"]["metadata"]["labels"]["istio.io/dataplane-mode"]
            .as<std::string>() == "sluice");
  CHECK(docs[2]["spec"]["template"]["metadata"]["labels"]["istio.io/dataplane-mode"]
            .as<std::string>() == "sluice");
  CHECK(text.find("istio.io/dataplane-mode: sluice # opted out") != std::string::npos);
  CHECK_FALSE(docs[3]["metadata"]["labels"]);  // not a workload
  CHECK(text.substr(text.rfind("---\n")) == input.substr(input.rfind("---\n")));

  TempDir bad;
  std::ofstream(bad.path() / "bad.yaml") << "apiVersion: v1\nkind: Pod\nmetadata: {name: ok}\n---\n"
                                            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n"
                                            "  name: broken\nspec:\n  replicas: 1\n";
  Run e = Sluicectl({"enroll", "-f", (bad.path() / "bad.yaml").string()});
  CHECK(e.rc == 1);
  CHECK(e.out.empty());
  CHECK(e.err.find((bad.path() / "bad.yaml").string() +
                   ": document 2 (Deployment default/broken): spec.template: required") !=
        std::string::npos);
}

TEST_CASE("tables align as Go's tabwriter and YAML quotes what would change type") {
  sluice::inspect::Table t(5);
  t.Row({"NAME", "VIRTUAL HOSTS"});
  t.Row({"5000", "2"});
  CHECK(t.Render() == "NAME     VIRTUAL HOSTS\n5000     2\n");
  nlohmann::ordered_json j = {{"name", "5000"},
                              {"on", true},
                              {"list", {"a", "yes", ""}},
                              {"nested", {{"x", 1}}},
                              {"empty", nlohmann::ordered_json::object()}};
  CHECK(sluice::inspect::JsonToYaml(j) ==
        "name: '5000'\n'on': true\nlist:\n- a\n- 'yes'\n- ''\nnested:\n  x: 1\nempty: {}\n");
}
