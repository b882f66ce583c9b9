// `sluicectl local …` end to end, as a user runs it: a real cluster (network namespaces
// made by the real CNI chain, the real agent and control plane as processes, stand-in
// workloads), driven only through the sluicectl binary. Needs root. Each test has its own
// state dir, bridge, subnets, netns prefix, cgroup, pin root and admin port (all named
// "sluicet…" so scripts/cleanup-test-state.sh finds leftovers), and runs `down` on the
// way out even when an assertion failed.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <thread>

#include "harness.h"

namespace fs = std::filesystem;

namespace {

using namespace sluice::local_test;

const char* kHttpbin = R"(apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: Service
metadata:
  name: httpbin
  namespace: shop
spec:
  selector:
    app: httpbin
  ports:
  - name: http
    port: 8000
    targetPort: 80
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: httpbin
  namespace: shop
spec:
  replicas: 1
  selector:
    matchLabels: {app: httpbin}
  template:
    metadata:
      labels: {app: httpbin, version: v1}
    spec:
      containers:
      - name: httpbin
        image: docker.io/kennethreitz/httpbin
        ports:
        - containerPort: 80
)";

// Istio's sleep sample with its ServiceAccount.
const std::string kClient = std::string(R"(apiVersion: v1
kind: ServiceAccount
metadata:
  name: sleep
---
)") + kSleep;

}  // namespace

TEST_CASE(
    "local cluster: up, get, exec by name, label, logs, port-forward, bad manifest, delete, down") {
  // IP forwarding off before `up` (the machine's own value comes back at the end): the
  // bridge plugin turns it on for the pods, `down` must turn it off again.
  const std::string fwd = "/proc/sys/net/ipv4/ip_forward";
  struct Sysctl {
    std::string path, saved;
    ~Sysctl() { std::ofstream(path) << saved << "\n"; }
  } keep{fwd, Sh("cat " + fwd + " | tr -d '\\n'")};
  std::ofstream(fwd) << "0\n";
  TestCluster tc;
  std::string httpbin = tc.Write("httpbin.yaml", kHttpbin);
  std::string client = tc.Write("client.yaml", kClient);

  Run up = Ctl([&] {
    auto a = tc.UpArgs();
    for (const auto& f : {httpbin, client}) {
      a.push_back("-f");
      a.push_back(f);
    }
    return a;
  }());
  INFO(up.out << up.err);
  REQUIRE(up.status == 0);
  CHECK(up.out.find("node agent ready") != std::string::npos);
  CHECK(up.out.find("ServiceAccount/sleep accepted") != std::string::npos);
  int agent_pid = PidFromFile(tc.state + "/agent.pid");
  int xds_pid = PidFromFile(tc.state + "/xds.pid");
  REQUIRE(PidAlive(agent_pid));
  REQUIRE(PidAlive(xds_pid));

  // get pods: both Running, with addresses from the pod subnet.
  Run get = tc.Local({"get", "pods", "-A"});
  INFO(get.out << get.err);
  REQUIRE(get.status == 0);
  auto rows = Rows(get.out);
  REQUIRE(rows.size() == 2);
  for (const auto& r : rows) {
    REQUIRE(r.size() == 7);
    CHECK(r[2] == "1/1");
    CHECK(r[3] == "Running");
    CHECK(r[6].rfind("10.231.", 0) == 0);
  }
  std::string httpbin_pod = PodOf(rows, "httpbin-");
  std::string sleep_pod = PodOf(rows, "sleep-");
  REQUIRE(httpbin_pod.size() == std::string("httpbin-").size() + 5);
  REQUIRE(!sleep_pod.empty());
  // The pod is a network namespace made through the CNI chain, in its own cgroup.
  CHECK(tc.Netns().find(tc.netns_prefix + "shop-" + httpbin_pod) != std::string::npos);
  CHECK(fs::exists(tc.cgroup + "/shop/" + httpbin_pod + "/cgroup.procs"));

  // exec: curl from the client pod to the Service by name (its hosts file), not enrolled
  // yet (the kernel sees the connect and leaves it alone; the kube-proxy stand-in routes).
  uint64_t not_enrolled = Counter(tc.admin, "not_enrolled");
  Run curl = tc.Local({"exec", "deploy/sleep", "--", "curl", "-s", "-m", "5",
                       "http://httpbin.shop:8000/get?via=name"});
  INFO(curl.out << curl.err);
  CHECK(curl.status == 0);
  CHECK(curl.out.find("\"url\": \"http://httpbin.shop:8000/get?via=name\"") != std::string::npos);
  CHECK(Counter(tc.admin, "not_enrolled") > not_enrolled);
  // exit status passes through
  CHECK(tc.Local({"exec", sleep_pod, "--", "sh", "-c", "exit 7"}).status == 7);
  // No DNS server: a name in no hosts file fails at once, and the pod's resolver names
  // only the loopback (nothing is asked of the machine's DNS server).
  Run resolv = tc.Local({"exec", sleep_pod, "--", "cat", "/etc/resolv.conf"});
  CHECK(resolv.out.find("nameserver 127.0.0.1") != std::string::npos);
  CHECK(resolv.out.find("nameserver", resolv.out.find("nameserver 127.0.0.1") + 1) ==
        std::string::npos);
  const auto t0 = std::chrono::steady_clock::now();
  CHECK(tc.Local({"exec", sleep_pod, "--", "getent", "hosts", "api.facebook.com"}).status != 0);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(3));

  // label namespace: the agent enrols the running pod, and the next request is translated
  // in the kernel.
  Run label = tc.Local({"label", "namespace", "default", "istio.io/dataplane-mode=sluice"});
  INFO(label.out << label.err);
  REQUIRE(label.status == 0);
  bool enrolled = false;
  for (int i = 0; i < 30 && !enrolled; ++i) {
    auto pods = nlohmann::json::parse(Sh("curl -s http://" + tc.admin + "/pods"), nullptr, false);
    for (const auto& p : pods.is_array() ? pods : nlohmann::json::array())
      if (p.value("name", "") == sleep_pod)
        enrolled = p.value("enrolled", false);
    if (!enrolled)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  CHECK(enrolled);
  uint64_t translated = Counter(tc.admin, "translated");
  curl = tc.Local({"exec", "deploy/sleep", "-n", "default", "--", "curl", "-s", "-m", "5",
                   "http://httpbin.shop.svc.cluster.local:8000/get?via=sluice"});
  CHECK(curl.status == 0);
  CHECK(curl.out.find("via=sluice") != std::string::npos);
  CHECK(Counter(tc.admin, "translated") > translated);

  // logs: httpbin's access log line for that request.
  Run logs = tc.Local({"logs", httpbin_pod, "-n", "shop"});
  CHECK(logs.status == 0);
  CHECK(logs.out.find("\"GET /get?via=sluice HTTP/1.1\" 200") != std::string::npos);

  // port-forward: 127.0.0.1:L -> the Service port, through a pod.
  {
    PortForward svc(tc.state, "svc/httpbin", "0:8000", "shop");
    INFO(svc.line());
    REQUIRE(svc.port() > 0);
    CHECK(svc.line() == "Forwarding from 127.0.0.1:" + std::to_string(svc.port()) + " -> 8000");
    std::string url = "http://127.0.0.1:" + std::to_string(svc.port());
    std::string body = Sh("curl -s -m 5 " + url + "/headers");
    CHECK(body.find("\"Host\": \"127.0.0.1:" + std::to_string(svc.port()) + "\"") !=
          std::string::npos);
    // pod/NAME: REMOTE is the pod's own port.
    PortForward pod(tc.state, "pod/" + httpbin_pod, "0:80", "shop");
    REQUIRE(pod.port() > 0);
    CHECK(Sh("curl -s -m 5 -o /dev/null -w '%{http_code}' http://127.0.0.1:" +
             std::to_string(pod.port()) + "/status/204") == "204");
    // A Service port that does not exist is refused at once.
    Run badport = tc.Local({"port-forward", "svc/httpbin", "0:9999", "-n", "shop"});
    CHECK(badport.status == 1);
    CHECK(badport.err.find("service shop/httpbin has no port 9999") != std::string::npos);
  }

  // A bad manifest: refused naming file, document and field; nothing of it applied, the
  // cluster keeps serving.
  std::string bad = tc.Write("bad.yaml", std::string(kClient) + R"(---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: broken
  namespace: shop
spec:
  template:
    metadata: {labels: {app: broken}}
    spec:
      containers:
      - name: c
        image: kennethreitz/httpbin
        ports:
        - containerPort: 99999
)");
  std::string more = tc.Write("more.yaml", R"(apiVersion: apps/v1
kind: Deployment
metadata:
  name: noimage
  namespace: shop
spec:
  selector: {matchLabels: {app: noimage}}
  template:
    metadata: {labels: {app: noimage}}
    spec:
      containers:
      - name: c
        image: example.com/not/a/standin:1.0
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: badvs
  namespace: shop
spec:
  hosts: [httpbin]
  http:
  - route:
    - destination: {host: httpbin}
      weight: -5
)");
  Run applied = tc.Local({"apply", "-f", bad, "-f", more});
  CHECK(applied.status == 1);
  CHECK(applied.err.find(bad + ": document 3 (Deployment shop/broken): "
                               "spec.template.spec.containers[0].ports[0].containerPort: 99999 is "
                               "out of range 1..65535") != std::string::npos);
  CHECK(applied.err.find(more + ": document 1 (Deployment shop/noimage): "
                                "spec.template.spec.containers[0].image: "
                                "example.com/not/a/standin:1.0 has no stand-in") !=
        std::string::npos);
  CHECK(applied.err.find(more + ": document 2 (VirtualService shop/badvs): ") != std::string::npos);
  CHECK(applied.err.find("weight") != std::string::npos);
  CHECK(applied.out.find("deployment.apps/sleep unchanged") != std::string::npos);
  CHECK(applied.out.find("noimage") == std::string::npos);
  CHECK(fs::directory_iterator(tc.state + "/config/istio") == fs::directory_iterator());
  CHECK(nlohmann::json::parse(std::ifstream(tc.state + "/state.json"))["deployments"].size() == 2);
  get = tc.Local({"get", "pods", "-A"});
  CHECK(get.out.find("broken") == std::string::npos);
  CHECK(Rows(get.out).size() == 2);
  CHECK(tc.Local({"exec", "deploy/sleep", "--", "curl", "-s", "-m", "5", "-o", "/dev/null", "-w",
                  "%{http_code}", "http://httpbin.shop:8000/status/418"})
            .out == "418");

  // An external host: its own namespace on the bridge, reachable by name from pods, HTTP
  // and HTTPS with the cluster's CA.
  std::string ext = tc.Write("ext.yaml", R"(apiVersion: sluice.io/v1
kind: ExternalHost
metadata:
  name: edition.cnn.com
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: cnn
spec:
  hosts: [edition.cnn.com]
  ports:
  - {number: 80, name: http-port, protocol: HTTP}
  resolution: DNS
---
apiVersion: v1
kind: Pod
metadata:
  name: hostnet
spec:
  hostNetwork: true
  containers:
  - name: c
    image: curlimages/curl
    command: [sleep, infinity]
---
apiVersion: v1
kind: Pod
metadata:
  name: done
spec:
  containers:
  - name: c
    image: curlimages/curl
    command: ["true"]
---
apiVersion: v1
kind: Pod
metadata:
  name: fails
spec:
  containers:
  - name: c
    image: curlimages/curl
    command: [sh, -c, "echo bye; exit 3"]
)");
  Run again = Ctl([&] {
    auto a = tc.UpArgs();
    a.push_back("-f");
    a.push_back(ext);
    return a;
  }());
  INFO(again.out << again.err);
  CHECK(again.status == 0);
  CHECK(again.out.find("already up") != std::string::npos);
  CHECK(again.out.find("externalhost/edition.cnn.com created (10.231.255.") != std::string::npos);
  CHECK(tc.Local({"exec", "deploy/sleep", "--", "curl", "-s", "-m", "5",
                  "http://edition.cnn.com/politics"})
            .out.find("edition.cnn.com") != std::string::npos);
  CHECK(tc.Local({"exec", "deploy/sleep", "--", "curl", "-s", "-m", "5", "-o", "/dev/null", "-w",
                  "%{http_code}", "--cacert", tc.state + "/certs/ca.pem",
                  "https://edition.cnn.com/politics"})
            .out == "200");
  CHECK(tc.Local({"get", "externalhosts"}).out.find("Running") != std::string::npos);
  // The client is enrolled: its HTTP request went through the agent's in-pod proxy (which
  // found the original destination, and resolved the DNS cluster through the cluster's
  // names).
  // (apply returns before the control plane's push reaches the agent: retry until it has.)
  std::string access;
  for (int i = 0; i < 30 && access.find("outbound|80||edition.cnn.com") == std::string::npos; ++i) {
    tc.Local({"exec", "deploy/sleep", "--", "curl", "-s", "-m", "5", "-o", "/dev/null",
              "http://edition.cnn.com/politics"});
    std::ifstream in(tc.state + "/logs/agent-access.log");
    std::stringstream ss;
    ss << in.rdbuf();
    access = ss.str();
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  INFO(access);
  CHECK(access.find("\"GET /politics HTTP/1.1\" 200") != std::string::npos);
  CHECK(access.find("outbound|80||edition.cnn.com") != std::string::npos);
  // hostNetwork: no namespace, no CNI — the agent never hears of it.
  get = tc.Local({"get", "pods"});
  CHECK(get.out.find("hostnet") != std::string::npos);
  CHECK(tc.Netns().find("hostnet") == std::string::npos);
  CHECK(Sh("curl -s http://" + tc.admin + "/pods").find("hostnet") == std::string::npos);

  // No restart policy: a container that exits shows how it ended.
  std::string phases;
  for (int i = 0; i < 40; ++i) {
    phases.clear();
    for (const auto& r : Rows(tc.Local({"get", "pods", "-A"}).out))
      if (r.size() > 3 && (r[1] == "done" || r[1] == "fails"))
        phases += r[1] + "=" + r[3] + " ";
    if (phases == "done=Completed fails=Error ")
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  CHECK(phases == "done=Completed fails=Error ");
  CHECK(tc.Local({"logs", "fails"}).out == "bye\n");

  // Removing the label takes the running pod out of the mesh again.
  REQUIRE(tc.Local({"label", "namespace", "default", "istio.io/dataplane-mode-"}).status == 0);
  for (int i = 0; i < 30 && enrolled; ++i) {
    auto pods = nlohmann::json::parse(Sh("curl -s http://" + tc.admin + "/pods"), nullptr, false);
    for (const auto& p : pods.is_array() ? pods : nlohmann::json::array())
      if (p.value("name", "") == sleep_pod)
        enrolled = p.value("enrolled", false);
    if (enrolled)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  CHECK_FALSE(enrolled);
  CHECK(tc.Local({"get", "ns"}).out.find("istio.io/dataplane-mode") == std::string::npos);

  // delete -f: the pods go, with their network namespace and cgroup.
  Run del = tc.Local({"delete", "-f", httpbin});
  INFO(del.out << del.err);
  CHECK(del.status == 0);
  CHECK(tc.Netns().find(tc.netns_prefix + "shop-") == std::string::npos);
  CHECK_FALSE(fs::exists(tc.cgroup + "/shop/" + httpbin_pod));
  get = tc.Local({"get", "pods", "-A"});
  CHECK(get.out.find(httpbin_pod) == std::string::npos);
  CHECK(get.out.find(sleep_pod) != std::string::npos);

  // down: nothing left — netns, cgroup, pins, bridge, NAT chain, processes, state.
  Run down = tc.Local({"down"});
  INFO(down.out << down.err);
  CHECK(down.status == 0);
  CHECK(tc.Netns().empty());
  CHECK_FALSE(fs::exists(tc.cgroup));
  CHECK_FALSE(fs::exists(tc.pins));
  CHECK(Sh("ip link show " + tc.bridge + " 2>/dev/null").empty());
  CHECK(Sh("iptables -t nat -S 2>/dev/null | grep SLUICE-LOCAL-" + tc.bridge + " || true").empty());
  CHECK_FALSE(PidAlive(agent_pid));
  CHECK_FALSE(PidAlive(xds_pid));
  CHECK_FALSE(fs::exists(tc.state));
  CHECK(Sh("cat " + fwd) == "0\n");  // as it was before `up`
}

TEST_CASE("local cluster: an up whose agent cannot start says why and leaves nothing behind") {
  TestCluster tc;
  auto args = tc.UpArgs();
  args.push_back("--agent-bin");
  args.push_back("/bin/false");
  Run up = Ctl(args);
  INFO(up.out << up.err);
  CHECK(up.status == 1);
  CHECK(up.err.find("the agent exited (exited 1") != std::string::npos);
  CHECK(up.err.find(tc.state + "/logs/agent.log") != std::string::npos);
  CHECK_FALSE(fs::exists(tc.state));
  CHECK_FALSE(fs::exists(tc.cgroup));
  CHECK(Sh("ip link show " + tc.bridge + " 2>/dev/null").empty());
  CHECK(Sh("iptables -t nat -S 2>/dev/null | grep SLUICE-LOCAL-" + tc.bridge + " || true").empty());
  // ([x]: the pattern does not match the shell running pgrep)
  CHECK(Sh("pgrep -f '[x]ds serve --config-dir " + tc.state + "' || true").empty());
}

TEST_CASE(
    "local cluster: a gateway pod runs the agent's gateway role, Istio's ingress task works") {
  TestCluster tc;
  std::string gw = tc.Write("gateway.yaml", R"(apiVersion: apps/v1
kind: Deployment
metadata:
  name: istio-ingressgateway
  namespace: istio-system
spec:
  selector:
    matchLabels: {istio: ingressgateway}
  template:
    metadata:
      labels: {istio: ingressgateway, app: istio-ingressgateway}
    spec:
      containers:
      - name: istio-proxy
        image: docker.io/istio/proxyv2:1.24.0
        ports:
        - containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: istio-ingressgateway
  namespace: istio-system
spec:
  selector: {istio: ingressgateway}
  ports:
  - {name: http2, port: 80, targetPort: 8080}
  - {name: https, port: 443, targetPort: 8443}
)");
  std::string app = tc.Write("httpbin.yaml", R"(apiVersion: v1
kind: Service
metadata:
  name: httpbin
spec:
  selector: {app: httpbin}
  ports:
  - {name: http, port: 8000, targetPort: 80}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: httpbin
spec:
  selector: {matchLabels: {app: httpbin}}
  template:
    metadata: {labels: {app: httpbin, version: v1}}
    spec:
      containers:
      - name: httpbin
        image: docker.io/kennethreitz/httpbin
        ports: [{containerPort: 80}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: httpbin-gateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["httpbin.example.com"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts: ["httpbin.example.com"]
  gateways: [httpbin-gateway]
  http:
  - match:
    - uri: {prefix: /status}
    - uri: {prefix: /delay}
    route:
    - destination:
        port: {number: 8000}
        host: httpbin
)");
  auto args = tc.UpArgs();
  for (const auto& f : {gw, app}) {
    args.push_back("-f");
    args.push_back(f);
  }
  Run up = Ctl(args);
  INFO(up.out << up.err);
  REQUIRE(up.status == 0);

  // The gateway pod: Running, its admin on the Unix socket the state file names.
  auto state = nlohmann::json::parse(std::ifstream(tc.state + "/state.json"));
  std::string admin;
  for (const auto& p : state["pods"])
    if (p["namespace"] == "istio-system")
      admin = p.value("admin", "");
  REQUIRE(admin.rfind("unix:" + tc.state + "/pods/istio-system/istio-ingressgateway-", 0) == 0);
  CHECK(Sh("curl -s --unix-socket " + admin.substr(5) + " http://gw/ready") == "ready\n");
  Run get = tc.Local({"get", "pods", "-n", "istio-system"});
  CHECK(get.out.find("Running") != std::string::npos);

  // Istio's ingress task: 127.0.0.1:L -> svc/istio-ingressgateway:80 -> the gateway's
  // 8080 listener -> httpbin.
  PortForward fwd(tc.state, "svc/istio-ingressgateway", "0:80", "istio-system");
  INFO(fwd.line());
  REQUIRE(fwd.port() > 0);
  std::string url = "http://127.0.0.1:" + std::to_string(fwd.port());
  std::string code;
  for (int i = 0; i < 50 && code != "200"; ++i) {  // the gateway may still be taking config
    code = Sh("curl -s -m 5 -o /dev/null -w '%{http_code}' -H Host:httpbin.example.com " + url +
              "/status/200");
    if (code != "200")
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  CHECK(code == "200");
  CHECK(Sh("curl -s -m 5 -o /dev/null -w '%{http_code}' -H Host:httpbin.example.com " + url +
           "/headers") == "404");
  // The gateway's access log is its container log.
  std::string gw_pod;
  for (const auto& p : state["pods"])
    if (p["namespace"] == "istio-system")
      gw_pod = p["name"];
  Run gw_log;
  for (int i = 0; i < 20 && gw_log.out.find("/status/200") == std::string::npos; ++i) {
    gw_log = tc.Local({"logs", gw_pod, "-n", "istio-system"});
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  INFO(gw_log.out);
  CHECK(gw_log.out.find("\"GET /status/200 HTTP/1.1\" 200") != std::string::npos);
}
