// TCP services in the kernel, end to end on a local cluster: Istio's tcp-echo sample
// (three versions, each answering with its own prefix) behind a Service, a
// DestinationRule and a VirtualService with a `tcp:` split, as a user writes them. Every
// connection is made from an enrolled pod and must be decided by the connect hook: the
// kernel's `translated` counter moves once per connection and `no_service` does not.
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "harness.h"

using namespace sluice::local_test;

namespace {

std::string Echo(const std::string& version, const std::string& prefix, const std::string& app) {
  return R"(apiVersion: apps/v1
kind: Deployment
metadata:
  name: )" +
         app + "-" + version +
         R"(
spec:
  replicas: 1
  selector:
    matchLabels: {app: )" +
         app + ", version: " + version + R"(}
  template:
    metadata:
      labels: {app: )" +
         app + ", version: " + version + R"(}
    spec:
      containers:
      - name: tcp-echo
        image: registry.istio.io/release/tcp-echo-server:1.3
        args: ["9000", ")" +
         prefix + R"("]
        ports:
        - containerPort: 9000
---
)";
}

std::string Service(const std::string& name, const std::string& app, const std::string& port_name) {
  return R"(apiVersion: v1
kind: Service
metadata:
  name: )" +
         name + R"(
spec:
  selector: {app: )" +
         app + R"(}
  ports:
  - name: )" +
         port_name +
         R"(
    port: 9000
---
)";
}

// A client inside the sleep pod: N connections to HOST:PORT, one after another (or all
// held open at once with --hold), each sending a line and reading the answer; prints
// the answers' prefixes, one per line, in order.
const char* kClientPy = R"(
import socket, sys
host, port, n, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), len(sys.argv) > 4
held = []
for i in range(n):
    s = socket.create_connection((host, port), timeout=5)
    s.sendall(b"ping\n")
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(100)
        if not chunk:
            break
        data += chunk
    print(data.decode().split(" ")[0] if data else "-", flush=True)
    if hold:
        held.append(s)
    else:
        s.close()
)";

struct TcpCluster : TestCluster {
  std::string client_py;
  TcpCluster() { client_py = Write("client.py", kClientPy); }
  // Prefixes answered to `n` connections from the sleep pod to host:port.
  std::vector<std::string> Connect(const std::string& host, int n, bool hold = false,
                                   int port = 9000) {
    std::vector<std::string> args = {
        "exec",           "deploy/sleep", "--", "python3", client_py, host, std::to_string(port),
        std::to_string(n)};
    if (hold)
      args.push_back("hold");
    Run r = Local(args, 180);
    INFO(r.err);
    REQUIRE(r.status == 0);
    std::vector<std::string> out;
    std::istringstream in(r.out);
    for (std::string line; std::getline(in, line);)
      out.push_back(line);
    return out;
  }
};

std::map<std::string, int> Tally(const std::vector<std::string>& v) {
  std::map<std::string, int> t;
  for (const auto& p : v)
    ++t[p];
  return t;
}

}  // namespace

TEST_CASE(
    "local cluster: TCP services are decided in the kernel — a weighted tcp route, "
    "ROUND_ROBIN, LEAST_REQUEST by default, and a STATIC ServiceEntry") {
  TcpCluster tc;
  std::string echo = Echo("v1", "one", "tcp-echo") + Echo("v2", "two", "tcp-echo") +
                     Echo("v3", "three", "tcp-echo") + Service("tcp-echo", "tcp-echo", "tcp");
  // Another service over the same three pods, as MySQL: a TCP-family protocol.
  echo += Service("tcp-rr", "tcp-echo", "mysql");
  std::string routing = R"(apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: tcp-echo
spec:
  host: tcp-echo
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: tcp-echo
spec:
  hosts: [tcp-echo]
  tcp:
  - route:
    - {destination: {host: tcp-echo, subset: v1, port: {number: 9000}}, weight: 15}
    - {destination: {host: tcp-echo, subset: v2, port: {number: 9000}}, weight: 35}
    - {destination: {host: tcp-echo, subset: v3, port: {number: 9000}}, weight: 50}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: tcp-rr
spec:
  host: tcp-rr
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
)";
  Run up = Ctl([&] {
    auto a = tc.UpArgs();
    for (const auto& f : {tc.Write("echo.yaml", echo), tc.Write("sleep.yaml", kSleep),
                          tc.Write("routing.yaml", routing)}) {
      a.push_back("-f");
      a.push_back(f);
    }
    return a;
  }());
  INFO(up.out << up.err);
  REQUIRE(up.status == 0);
  REQUIRE(tc.Local({"label", "namespace", "default", "istio.io/dataplane-mode=sluice"}).status ==
          0);
  // The kernel has the service (it used to be skipped, leaving the split to iptables).
  const std::string pins = "--pin-root=" + tc.pins;
  REQUIRE(WaitUntil([&] {
    return Ctl({"bpf", pins, "dump", "services"}).out.find("tcp-echo") != std::string::npos ||
           Ctl({"bpf", pins, "dump", "services"}).out.find("_9000") != std::string::npos;
  }));
  // And the client pod is enrolled: the namespace label reaches the agent on its next
  // poll, which may come after the services (connects before it are not_enrolled).
  REQUIRE(WaitUntil([&] {
    auto pods = nlohmann::json::parse(Sh("curl -s http://" + tc.admin + "/pods"), nullptr, false);
    for (const auto& p : pods.is_array() ? pods : nlohmann::json::array())
      if (p.value("name", "").rfind("sleep-", 0) == 0 && p.value("enrolled", false))
        return true;
    return false;
  }));

  SECTION("a three-way tcp split, 15/35/50, in the kernel") {
    const uint64_t translated = Counter(tc.admin, "translated");
    const uint64_t no_service = Counter(tc.admin, "no_service");
    auto t = Tally(tc.Connect("tcp-echo", 2400));
    INFO("one " << t["one"] << ", two " << t["two"] << ", three " << t["three"]);
    CHECK(t["one"] + t["two"] + t["three"] == 2400);
    CHECK(std::abs(100.0 * t["one"] / 2400 - 15) <= 3);
    CHECK(std::abs(100.0 * t["two"] / 2400 - 35) <= 3);
    CHECK(std::abs(100.0 * t["three"] / 2400 - 50) <= 3);
    // The kernel decided every one of them.
    CHECK(Counter(tc.admin, "translated") - translated >= 2400);
    CHECK(Counter(tc.admin, "no_service") == no_service);
  }

  SECTION("ROUND_ROBIN from a DestinationRule cycles the endpoints exactly") {
    auto seq = tc.Connect("tcp-rr", 30);
    REQUIRE(seq.size() == 30);
    std::set<std::string> first(seq.begin(), seq.begin() + 3);
    CHECK(first == std::set<std::string>{"one", "two", "three"});
    for (std::size_t i = 3; i < seq.size(); ++i) {
      INFO("connection " << i);
      CHECK(seq[i] == seq[i - 3]);
    }
    auto dump = Ctl({"bpf", pins, "dump", "services"}).out;
    CHECK_THAT(dump, Catch::Contains("ROUND_ROBIN"));
  }

  SECTION("no VirtualService, no DestinationRule: LEAST_REQUEST in the kernel") {
    REQUIRE(
        tc.Local({"apply", "-f", tc.Write("plain.yaml", Service("tcp-plain", "tcp-echo", "tcp"))})
            .status == 0);
    std::string dump;
    REQUIRE(WaitUntil([&] {
      dump = Ctl({"bpf", pins, "dump", "services"}).out;
      return dump.find("LEAST_REQUEST") != std::string::npos;
    }));
    // 30 connections held open at once: least request keeps the three endpoints level
    // (random choice would not: its spread is several connections).
    const uint64_t translated = Counter(tc.admin, "translated");
    auto t = Tally(tc.Connect("tcp-plain", 30, /*hold=*/true));
    INFO("one " << t["one"] << ", two " << t["two"] << ", three " << t["three"]);
    CHECK(t["one"] + t["two"] + t["three"] == 30);
    for (const char* p : {"one", "two", "three"})
      CHECK(std::abs(t[p] - 10) <= 2);
    CHECK(Counter(tc.admin, "translated") - translated >= 30);
  }

  SECTION("a MESH_INTERNAL STATIC ServiceEntry with a VIP and a TCP port, through the kernel") {
    // Its endpoints are two of the echo pods, by address.
    auto rows = Rows(tc.Local({"get", "pods", "-A"}).out);
    std::string ip_v1, ip_v3;
    for (const auto& r : rows) {
      if (r.size() >= 7 && r[1].rfind("tcp-echo-v1", 0) == 0)
        ip_v1 = r[6];
      if (r.size() >= 7 && r[1].rfind("tcp-echo-v3", 0) == 0)
        ip_v3 = r[6];
    }
    REQUIRE(!ip_v1.empty());
    REQUIRE(!ip_v3.empty());
    const std::string se = R"(apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: db
spec:
  hosts: [db.internal.example]
  addresses: [10.232.250.9]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 9000, name: tcp-db, protocol: TCP}
  endpoints:
  - address: )" + ip_v1 + R"(
  - address: )" + ip_v3 + "\n";
    REQUIRE(tc.Local({"apply", "-f", tc.Write("se.yaml", se)}).status == 0);
    REQUIRE(WaitUntil([&] {
      return Ctl({"bpf", pins, "dump", "services"}).out.find("10.232.250.9:9000") !=
             std::string::npos;
    }));
    const uint64_t translated = Counter(tc.admin, "translated");
    auto t = Tally(tc.Connect("10.232.250.9", 40));
    INFO("one " << t["one"] << ", three " << t["three"]);
    CHECK(t["one"] + t["three"] == 40);
    CHECK(t["one"] > 0);
    CHECK(t["three"] > 0);
    CHECK(Counter(tc.admin, "translated") - translated >= 40);
  }
}
