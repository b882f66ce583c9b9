// A pod's inbound side, end to end on a local cluster: a Sidecar `ingress` exposes port
// 9080 of a pod whose application listens only on its own loopback (127.0.0.1:8080,
// Python's http.server). Another enrolled pod reaches it through the Service on 9080
// only because the kernel's sk_lookup program steers 9080 to the pod's inbound proxy
// listener, whose chain delivers to 127.0.0.1:8080 — the agent decides that from the
// configuration and undoes it when the Sidecar goes.
#include "harness.h"

using namespace sluice::local_test;

namespace {

// The application: a plain HTTP server bound to the pod's loopback only, serving the
// test's manifest directory (it holds hello.txt).
std::string Inner(const std::string& dir) {
  return R"(apiVersion: apps/v1
kind: Deployment
metadata:
  name: inner
spec:
  replicas: 1
  selector:
    matchLabels: {app: inner}
  template:
    metadata:
      labels: {app: inner}
    spec:
      containers:
      - name: server
        image: curlimages/curl
        command: ["python3", "-m", "http.server", "8080", "--bind", "127.0.0.1", "--directory", ")" +
         dir + R"("]
---
apiVersion: v1
kind: Service
metadata:
  name: inner
spec:
  selector: {app: inner}
  ports:
  - {name: http, port: 9080}
)";
}

const char* kSidecar = R"(apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: inner
spec:
  workloadSelector:
    labels: {app: inner}
  ingress:
  - port: {number: 9080, protocol: HTTP, name: http}
    defaultEndpoint: 127.0.0.1:8080
)";

}  // namespace

TEST_CASE(
    "local cluster: a port exposed only by a Sidecar ingress is reached through the pod's "
    "inbound side, and only while the Sidecar says so") {
  TestCluster tc;
  const std::string hello = "hello from the loopback-only app " + tc.tag + "\n";
  tc.Write("hello.txt", hello);
  REQUIRE(tc.UpEnrolled(Inner(tc.dir) + "---\n" + kSleep));
  // curl from the client pod: the body, or curl's exit status ("exit N").
  auto get = [&](const std::string& url) {
    Run r = tc.Local({"exec", "deploy/sleep", "--", "curl", "-sS", "--max-time", "5", url}, 30);
    return r.status == 0 ? r.out : "exit " + std::to_string(r.status);
  };
  auto inbound_ports = [&] {
    Run r = Ctl({"agent", "--admin", tc.admin, "pods"});
    std::string ports;
    for (const auto& row : Rows(r.out))
      if (row.size() > 5 && row[1].rfind("inner-", 0) == 0)
        ports = row[5];
    return ports;
  };
  // Enrolment reaches both pods; until then nothing is known of them.
  REQUIRE(WaitUntil([&] { return inbound_ports() == "-"; }, 20));

  // Without the Sidecar, 9080 reaches the application's own port 9080: nothing listens.
  CHECK(get("http://inner:9080/hello.txt") == "exit 7");  // connection refused
  // The application is not reachable from outside its pod on its own port either.
  const std::string pod_ip = [&] {
    for (const auto& row : Rows(tc.Local({"get", "pods", "-A"}).out))
      if (row.size() > 6 && row[1].rfind("inner-", 0) == 0)
        return row[6];
    return std::string();
  }();
  REQUIRE(!pod_ip.empty());
  CHECK(get("http://" + pod_ip + ":8080/hello.txt") == "exit 7");

  // With it, the kernel steers 9080 to the inbound listener, whose chain delivers to
  // 127.0.0.1:8080. (15006 too: istiod's virtualInbound blackholes connections dialled to
  // the inbound port itself, and the pod's proxy does the same.)
  Run applied = tc.Local({"apply", "-f", tc.Write("sidecar.yaml", kSidecar)});
  INFO(applied.out << applied.err);
  REQUIRE(applied.status == 0);
  REQUIRE(WaitUntil([&] { return inbound_ports() == "9080,15006"; }, 20));
  const uint64_t steered = Counter(tc.admin, "inbound_steered");
  CHECK(get("http://inner:9080/hello.txt") == hello);
  CHECK(get("http://" + pod_ip + ":9080/hello.txt") == hello);
  CHECK(Counter(tc.admin, "inbound_steered") >= steered + 2);
  // Other ports are not steered: 8080 from outside is still refused.
  CHECK(get("http://" + pod_ip + ":8080/hello.txt") == "exit 7");
  // The pod's proxy served them on the port's own chain: the inbound cluster, the app's
  // loopback endpoint, the original destination (the pod's address and 9080).
  const std::string log = Sh("cat " + tc.state + "/logs/agent-access.log");
  CHECK(log.find("\"127.0.0.1:8080\" inbound|9080|| ") != std::string::npos);
  CHECK(log.find(" " + pod_ip + ":9080 ") != std::string::npos);

  // Without the Sidecar again, the steering goes: 9080 is refused as before.
  Run removed = tc.Local({"delete", "-f", tc.dir + "/sidecar.yaml"});
  INFO(removed.out << removed.err);
  REQUIRE(removed.status == 0);
  REQUIRE(WaitUntil([&] { return inbound_ports() == "-"; }, 20));
  CHECK(get("http://inner:9080/hello.txt") == "exit 7");
}
