// AuthorizationPolicy end to end on a local cluster (issue 17): Istio YAML in, the local
// control plane's rbac filters on the destination's inbound listener, the destination
// pod's inbound side steered through its proxy (HTTP) or the kernel refusing the connect
// (L4-only TCP policy), and real curl clients in enrolled pods.
//   - a DENY on one path: 403 "RBAC: access denied" there, 200 elsewhere;
//   - an ALLOW with ipBlocks: one client pod in, another kept out;
//   - a TCP-only DENY on a port: the connect is refused by the kernel (counter);
//   - while the node's agent restarts, a port whose policy only the proxy enforces is
//     refused, not handed to the application.
#include "harness.h"

using namespace sluice::local_test;

namespace {

// The server: Python's http.server on 0.0.0.0 serving the test's manifest directory,
// exposed on an HTTP port (8000) and a TCP port (9000, named tcp-): the same app, so the
// only difference between the two is the policy.
std::string Server(const std::string& dir) {
  return R"(apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web, version: v1}
    spec:
      containers:
      - name: http
        image: curlimages/curl
        command: ["python3", "-m", "http.server", "8000", "--directory", ")" +
         dir + R"("]
      - name: tcp
        image: curlimages/curl
        command: ["python3", "-m", "http.server", "9000", "--directory", ")" +
         dir + R"("]
      - name: undeclared
        image: curlimages/curl
        command: ["python3", "-m", "http.server", "7000", "--directory", ")" +
         dir + R"("]
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 8000}
  - {name: tcp-raw, port: 9000}
)";
}

// A second client, like sleep.
std::string SecondClient() {
  std::string s = kSleep;
  for (std::size_t at; (at = s.find("sleep\n")) != std::string::npos;)
    s.replace(at, 5, "other");
  for (std::size_t at; (at = s.find("app: sleep")) != std::string::npos;)
    s.replace(at, 10, "app: other");
  return s;
}

struct Cluster {
  TestCluster tc;
  std::string hello;
  Cluster() {
    hello = "hello " + tc.tag + "\n";
    tc.Write("hello.txt", hello);
    std::filesystem::create_directories(tc.dir + "/admin");
    tc.Write("admin/secret.txt", "secret\n");
  }
  bool Up() { return tc.UpEnrolled(Server(tc.dir) + "---\n" + kSleep + "---\n" + SecondClient()); }
  // curl from a client pod: "STATUS body" or curl's exit status ("exit N").
  std::string Get(const std::string& from, const std::string& url) {
    Run r = tc.Local({"exec", "deploy/" + from, "--", "curl", "-sS", "--max-time", "5", "-w",
                      " %{http_code}", url},
                     30);
    return r.status == 0 ? r.out : "exit " + std::to_string(r.status);
  }
  std::string PodIp(const std::string& prefix) {
    for (const auto& row : Rows(tc.Local({"get", "pods", "-A"}).out))
      if (row.size() > 6 && row[1].rfind(prefix, 0) == 0)
        return row[6];
    return "";
  }
  bool Apply(const std::string& name, const std::string& yaml) {
    Run r = tc.Local({"apply", "-f", tc.Write(name, yaml)});
    UNSCOPED_INFO(r.out << r.err);
    return r.status == 0;
  }
};

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

TEST_CASE(
    "local cluster: an AuthorizationPolicy DENY on one path answers 403 there and 200 elsewhere, "
    "an ALLOW with ipBlocks lets one pod in and keeps another out") {
  Cluster c;
  REQUIRE(c.Up());
  // Enrolled and served before any policy: both paths answer.
  REQUIRE(
      WaitUntil([&] { return EndsWith(c.Get("sleep", "http://web:8000/hello.txt"), " 200"); }, 30));
  CHECK(EndsWith(c.Get("sleep", "http://web:8000/admin/secret.txt"), " 200"));
  // A port no Service declares (7000) answers too.
  const std::string web_ip = c.PodIp("web-");
  REQUIRE(!web_ip.empty());
  CHECK(EndsWith(c.Get("other", "http://" + web_ip + ":7000/hello.txt"), " 200"));

  REQUIRE(c.Apply("deny.yaml", R"(apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-admin
spec:
  selector:
    matchLabels: {app: web}
  action: DENY
  rules:
  - to:
    - operation:
        paths: ["/admin/*"]
)"));
  REQUIRE(WaitUntil(
      [&] {
        return c.Get("sleep", "http://web:8000/admin/secret.txt") == "RBAC: access denied 403";
      },
      20));
  CHECK(c.Get("sleep", "http://web:8000/hello.txt") == c.hello + " 200");
  CHECK(c.Get("other", "http://web:8000/admin/secret.txt") == "RBAC: access denied 403");
  // The destination's proxy logged the denial with the policy's name.
  const std::string log = Sh("cat " + c.tc.state + "/logs/agent-access.log");
  CHECK(log.find("\"GET /admin/secret.txt HTTP/1.1\" 403 - "
                 "rbac_access_denied_matched_policy[ns[default]-policy[deny-admin]-rule[0]]") !=
        std::string::npos);
  // ... and counted it per policy.
  const std::string metrics = Sh("curl -s http://" + c.tc.admin + "/metrics");
  CHECK(metrics.find("policy=\"ns[default]-policy[deny-admin]-rule[0]\",decision=\"denied\"") !=
        std::string::npos);

  // The node's agent restarts (killed here, as a crash or an upgrade would stop it): its
  // sockets go with it, and while no proxy can take the pod's ports, those whose policy
  // only the proxy enforces are refused at connect — never handed to the application
  // unchecked, where /admin would answer 200. The node itself is the client here (its own
  // traffic never passes through a pod's proxy).
  auto direct = [&](const std::string& path) {
    return Sh("curl -s -o /dev/null --max-time 5 -w '%{http_code}' http://" + web_ip + ":8000" +
              path + "; printf ' exit %d' $?");
  };
  CHECK(direct("/admin/secret.txt") == "403 exit 0");
  const int agent_pid = PidFromFile(c.tc.state + "/agent.pid");
  REQUIRE(agent_pid > 0);
  REQUIRE(kill(agent_pid, SIGKILL) == 0);
  REQUIRE(WaitUntil([&] { return !PidAlive(agent_pid); }, 10));
  // (The L7 process follows its agent within moments.)
  CHECK(WaitUntil([&] { return direct("/admin/secret.txt") == "000 exit 7"; }, 10));
  CHECK(direct("/hello.txt") == "000 exit 7");
  // `local up` starts the agent again: it adopts the pinned data plane and its pods, and
  // the policy is served again.
  {
    Run up = Ctl(c.tc.UpArgs());
    INFO(up.out << up.err);
    REQUIRE(up.status == 0);
  }
  CHECK(WaitUntil([&] { return direct("/admin/secret.txt") == "403 exit 0"; }, 20));
  CHECK(direct("/hello.txt") == "200 exit 0");
  CHECK(Counter(c.tc.admin, "inbound_unserved") >= 2);

  // ALLOW only sleep's address: other is kept out on every path, sleep keeps its access
  // (the DENY still holds for /admin).
  const std::string sleep_ip = c.PodIp("sleep-");
  REQUIRE(!sleep_ip.empty());
  REQUIRE(c.Apply("allow.yaml", R"(apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-sleep
spec:
  selector:
    matchLabels: {app: web}
  action: ALLOW
  rules:
  - from:
    - source:
        ipBlocks: [")" + sleep_ip + R"(/32"]
)"));
  REQUIRE(WaitUntil(
      [&] { return c.Get("other", "http://web:8000/hello.txt") == "RBAC: access denied 403"; },
      20));
  CHECK(c.Get("sleep", "http://web:8000/hello.txt") == c.hello + " 200");
  CHECK(c.Get("sleep", "http://web:8000/admin/secret.txt") == "RBAC: access denied 403");
  // The undeclared port is no way around it: istiod's passthrough chains carry the policy,
  // and every port not registered on its own goes through the pod's proxy.
  CHECK(c.Get("other", "http://" + web_ip + ":7000/hello.txt") == "RBAC: access denied 403");
  CHECK(c.Get("sleep", "http://" + web_ip + ":7000/hello.txt") == c.hello + " 200");

  // Deleting the policies restores access.
  REQUIRE(c.tc.Local({"delete", "-f", c.tc.dir + "/allow.yaml"}).status == 0);
  REQUIRE(c.tc.Local({"delete", "-f", c.tc.dir + "/deny.yaml"}).status == 0);
  CHECK(WaitUntil(
      [&] { return EndsWith(c.Get("other", "http://web:8000/admin/secret.txt"), " 200"); }, 20));
}

TEST_CASE(
    "local cluster: a TCP-only AuthorizationPolicy DENY on a port refuses the connect in the "
    "kernel") {
  Cluster c;
  REQUIRE(c.Up());
  REQUIRE(
      WaitUntil([&] { return EndsWith(c.Get("sleep", "http://web:9000/hello.txt"), " 200"); }, 30));
  const std::string other_ip = c.PodIp("other-");
  REQUIRE(!other_ip.empty());
  REQUIRE(c.Apply("deny-tcp.yaml", R"(apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-tcp
spec:
  selector:
    matchLabels: {app: web}
  action: DENY
  rules:
  - from:
    - source:
        ipBlocks: [")" + other_ip + R"(/32"]
    to:
    - operation:
        ports: ["9000"]
)"));
  const uint64_t before = Counter(c.tc.admin, "policy_denied");
  // curl exit 7: the connection was refused.
  REQUIRE(WaitUntil([&] { return c.Get("other", "http://web:9000/hello.txt") == "exit 7"; }, 20));
  CHECK(Counter(c.tc.admin, "policy_denied") > before);
  const uint64_t after = Counter(c.tc.admin, "policy_denied");
  CHECK(c.Get("other", "http://web:9000/hello.txt") == "exit 7");
  CHECK(Counter(c.tc.admin, "policy_denied") >= after + 1);
  // Another source, and another port, are untouched.
  CHECK(c.Get("sleep", "http://web:9000/hello.txt") == c.hello + " 200");
  CHECK(c.Get("other", "http://web:8000/hello.txt") == c.hello + " 200");
  // No proxy was involved in the refusal: nothing steered on 9000.
  Run pods = Ctl({"agent", "--admin", c.tc.admin, "pods"});
  for (const auto& row : Rows(pods.out)) {
    if (row.size() > 5 && row[1].rfind("web-", 0) == 0)
      CHECK(row[5].find("9000") == std::string::npos);
  }
  // Removing the policy lets the connection through again.
  REQUIRE(c.tc.Local({"delete", "-f", c.tc.dir + "/deny-tcp.yaml"}).status == 0);
  CHECK(
      WaitUntil([&] { return EndsWith(c.Get("other", "http://web:9000/hello.txt"), " 200"); }, 20));
}
