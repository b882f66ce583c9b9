// Proxyless gRPC pods on a local cluster, end to end: a pod whose template carries Istio's
// `inject.istio.io/templates: grpc-agent` annotation, in a namespace selected for
// injection, gets what istio-agent would give it — a gRPC xDS bootstrap pointing at the
// local control plane, GRPC_XDS_BOOTSTRAP in its containers and in `exec` — and no
// capture: in a namespace enrolled in Sluice its connects are left alone, while an
// ordinary pod next to it is enrolled and its connects are translated by the kernel.
#include <nlohmann/json.hpp>

#include "harness.h"

using namespace sluice::local_test;

namespace {

// Two namespaces enrolled in Sluice; only `echo` is selected for Istio's injection.
const char* kManifests = R"(apiVersion: v1
kind: Namespace
metadata:
  name: echo
  labels:
    istio-injection: enabled
    istio.io/dataplane-mode: sluice
---
apiVersion: v1
kind: Namespace
metadata:
  name: plain
  labels:
    istio.io/dataplane-mode: sluice
---
apiVersion: v1
kind: Service
metadata:
  name: httpbin
  namespace: echo
spec:
  selector: {app: httpbin}
  ports:
  - name: http
    port: 8000
    targetPort: 80
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: httpbin
  namespace: echo
spec:
  selector: {matchLabels: {app: httpbin}}
  template:
    metadata:
      labels: {app: httpbin}
    spec:
      containers:
      - name: httpbin
        image: docker.io/kennethreitz/httpbin
        ports:
        - containerPort: 80
---
)";

std::string Client(const std::string& ns, const std::string& name, bool grpc_agent) {
  return R"(apiVersion: apps/v1
kind: Deployment
metadata:
  name: )" +
         name + R"(
  namespace: )" +
         ns + R"(
spec:
  selector: {matchLabels: {app: )" +
         name + R"(}}
  template:
    metadata:
)" + (grpc_agent ? "      annotations:\n        inject.istio.io/templates: grpc-agent\n" : "") +
         R"(      labels: {app: )" + name + R"(}
    spec:
      containers:
      - name: app
        image: curlimages/curl
        command: ["/bin/sh", "-c", "echo \"bootstrap=$GRPC_XDS_BOOTSTRAP\"; exec sleep infinity"]
---
)";
}

// The agent's /pods entry of a pod: {enrolled, reason}; waits until the pod is known and
// its enrolment settled to `enrolled`.
nlohmann::json AgentPod(const std::string& admin, const std::string& pod) {
  nlohmann::json found;
  for (int i = 0; i < 50; ++i) {
    auto pods = nlohmann::json::parse(Sh("curl -s http://" + admin + "/pods"), nullptr, false);
    for (const auto& p : pods.is_array() ? pods : nlohmann::json::array())
      if (p.value("name", "") == pod)
        found = p;
    if (!found.is_null())
      return found;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return found;
}

}  // namespace

TEST_CASE("local cluster: a grpc-agent pod gets a bootstrap and env, and is never captured") {
  TestCluster tc;
  std::string file =
      tc.Write("grpc.yaml", std::string(kManifests) + Client("echo", "grpc", true) +
                                Client("echo", "sleep", false) + Client("plain", "asked", true));
  Run up = Ctl([&] {
    auto a = tc.UpArgs();
    a.push_back("-f");
    a.push_back(file);
    return a;
  }());
  INFO(up.out << up.err);
  REQUIRE(up.status == 0);
  auto state = nlohmann::json::parse(std::ifstream(tc.state + "/state.json"));
  auto pod_of = [&](const std::string& ns, const std::string& prefix) {
    for (const auto& p : state["pods"])
      if (p["namespace"] == ns && p["name"].get<std::string>().rfind(prefix, 0) == 0)
        return p;
    return nlohmann::json();
  };
  auto grpc = pod_of("echo", "grpc-");
  auto sleep = pod_of("echo", "sleep-");
  auto asked = pod_of("plain", "asked-");
  REQUIRE(grpc.is_object());
  REQUIRE(sleep.is_object());
  REQUIRE(asked.is_object());
  const std::string grpc_pod = grpc["name"], sleep_pod = sleep["name"], asked_pod = asked["name"];
  const std::string ip = grpc["ip"];

  // The bootstrap: next to the pod's other files, in istio-agent's shape, naming this pod
  // and the control plane's socket by an absolute unix:/// URI.
  const std::string boot_path = tc.state + "/pods/echo/" + grpc_pod + "/grpc-bootstrap.json";
  CHECK(grpc.value("grpc_bootstrap", "") == boot_path);
  std::ifstream boot_in(boot_path);
  REQUIRE(boot_in);
  auto boot = nlohmann::json::parse(boot_in, nullptr, false);
  REQUIRE(boot.is_object());
  CHECK(boot["xds_servers"][0]["server_uri"] == "unix://" + tc.state + "/xds.sock");
  CHECK(boot["xds_servers"][0]["channel_creds"][0]["type"] == "insecure");
  CHECK(boot["node"]["id"] == "sidecar~" + ip + "~" + grpc_pod + ".echo~echo.svc.cluster.local");
  CHECK(boot["node"]["metadata"]["GENERATOR"] == "grpc");
  CHECK(boot["node"]["metadata"]["NAMESPACE"] == "echo");
  CHECK(boot["node"]["metadata"]["INSTANCE_IPS"] == ip);
  CHECK(boot["node"]["metadata"]["LABELS"]["app"] == "grpc");
  CHECK(boot["server_listener_resource_name_template"] == "xds.istio.io/grpc/lds/inbound/%s");
  // Neither the ordinary pod nor the one whose namespace is not selected for injection.
  CHECK_FALSE(sleep.contains("grpc_bootstrap"));
  CHECK_FALSE(asked.contains("grpc_bootstrap"));
  CHECK_FALSE(fs::exists(tc.state + "/pods/plain/" + asked_pod + "/grpc-bootstrap.json"));

  // GRPC_XDS_BOOTSTRAP in the container (its log) and in exec; the file and the control
  // plane's socket are there from inside the pod.
  Run logs = tc.Local({"logs", grpc_pod, "-n", "echo"});
  CHECK(logs.out == "bootstrap=" + boot_path + "\n");
  CHECK(tc.Local({"logs", sleep_pod, "-n", "echo"}).out == "bootstrap=\n");
  Run env = tc.Local({"exec", "deploy/grpc", "-n", "echo", "--", "sh", "-c",
                      "echo \"$GRPC_XDS_BOOTSTRAP\"; test -S " + tc.state + "/xds.sock"});
  INFO(env.out << env.err);
  CHECK(env.status == 0);
  CHECK(env.out == boot_path + "\n");
  Run cat =
      tc.Local({"exec", grpc_pod, "-n", "echo", "--", "sh", "-c", "cat \"$GRPC_XDS_BOOTSTRAP\""});
  CHECK(nlohmann::json::parse(cat.out, nullptr, false) == boot);
  CHECK(tc.Local(
              {"exec", sleep_pod, "-n", "echo", "--", "sh", "-c", "echo \"[$GRPC_XDS_BOOTSTRAP]\""})
            .out == "[]\n");

  // The agent: the grpc-agent pod is proxyless (not enrolled, though its namespace is),
  // its neighbour is enrolled; a pod only asking for the template without being injected
  // is an ordinary pod.
  auto g = AgentPod(tc.admin, grpc_pod);
  auto s = AgentPod(tc.admin, sleep_pod);
  auto a = AgentPod(tc.admin, asked_pod);
  INFO(g.dump() << s.dump() << a.dump());
  CHECK(g.value("enrolled", true) == false);
  CHECK(g.value("reason", "") == "proxyless-grpc");
  CHECK(s.value("enrolled", false) == true);
  CHECK(a.value("enrolled", false) == true);
  CHECK(a.value("reason", "") == "namespace-label");

  // Connects to the Service VIP: the ordinary pod's are translated by the kernel; the
  // proxyless pod's are not (the kernel sees them and leaves them alone — not_enrolled
  // moves), and still reach httpbin, through the kube-proxy stand-in as in Kubernetes.
  const std::string url = "http://httpbin.echo.svc.cluster.local:8000/get";
  uint64_t translated = Counter(tc.admin, "translated");
  Run ordinary = tc.Local({"exec", sleep_pod, "-n", "echo", "--", "curl", "-s", "-m", "5", url});
  CHECK(ordinary.status == 0);
  CHECK(ordinary.out.find("\"url\": \"" + url + "\"") != std::string::npos);
  CHECK(Counter(tc.admin, "translated") > translated);

  translated = Counter(tc.admin, "translated");
  uint64_t not_enrolled = Counter(tc.admin, "not_enrolled");
  for (int i = 0; i < 3; ++i) {
    Run direct = tc.Local({"exec", grpc_pod, "-n", "echo", "--", "curl", "-s", "-m", "5", url});
    CHECK(direct.status == 0);
    CHECK(direct.out.find("\"url\": \"" + url + "\"") != std::string::npos);
  }
  CHECK(Counter(tc.admin, "translated") == translated);
  CHECK(Counter(tc.admin, "not_enrolled") >= not_enrolled + 3);
}
