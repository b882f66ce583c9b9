// Proxyless gRPC against the real translator: Istio YAML (a Service, two versions'
// pods, a DestinationRule with subsets and a VirtualService splitting between them) goes
// through LocalControlPlane and the ADS server, exactly as `sluicectl xds serve` runs
// them, to gRPC's own xDS client (@grpc/grpc-js-xds under node) with GENERATOR: grpc in
// its node metadata. The client resolves the service, balances real RPCs between two
// real gRPC servers by the route's weights, and ACKs every resource type it is sent.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>
#include <catch2/catch.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <regex>
#include <set>

#include "sluice/istio/local_control_plane.h"
#include "sluice/xds/ads_server.h"

namespace fs = std::filesystem;
namespace sx = sluice::xds;
using Kind = sx::AdsServerEvent::Kind;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    char tmpl[] = "/tmp/sluice-grpc-proxyless-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

// A port free on 127.0.0.2 and 127.0.0.3 a moment ago (the two servers bind it there).
int FreePort() {
  for (int attempt = 0; attempt < 20; ++attempt) {
    int port = 0;
    bool ok = true;
    for (const char* ip : {"127.0.0.2", "127.0.0.3"}) {
      int fd = socket(AF_INET, SOCK_STREAM, 0);
      REQUIRE(fd >= 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      inet_pton(AF_INET, ip, &a.sin_addr);
      a.sin_port = htons(static_cast<uint16_t>(port));
      if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        ok = false;
      } else if (port == 0) {
        socklen_t len = sizeof a;
        REQUIRE(getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
        port = ntohs(a.sin_port);
      }
      close(fd);
    }
    if (ok)
      return port;
  }
  FAIL("no port free on both 127.0.0.2 and 127.0.0.3");
  return 0;
}

// The sample's shape (Istio's samples/grpc-echo): Service echo in echo-grpc with a gRPC
// port 7070, pods of versions v1 and v2 on the loopback addresses the client's servers
// bind, and a DestinationRule with a subset per version.
std::string Config(int target_port, int v1_weight, int v2_weight, std::string route_extra = "") {
  return fmt::format(R"(apiVersion: v1
kind: Namespace
metadata: {{name: echo-grpc, labels: {{istio-injection: enabled}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: echo-grpc, labels: {{app: echo}}}}
spec:
  selector: {{app: echo}}
  clusterIP: 10.96.0.20
  ports:
  - {{name: grpc, port: 7070, targetPort: {0}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: echo-v1-aaaaa, namespace: echo-grpc, labels: {{app: echo, version: v1}}}}
spec: {{containers: [{{name: app, image: registry.istio.io/testing/app, ports: [{{containerPort: {0}}}]}}]}}
status: {{podIP: 127.0.0.2}}
---
apiVersion: v1
kind: Pod
metadata: {{name: echo-v2-bbbbb, namespace: echo-grpc, labels: {{app: echo, version: v2}}}}
spec: {{containers: [{{name: app, image: registry.istio.io/testing/app, ports: [{{containerPort: {0}}}]}}]}}
status: {{podIP: 127.0.0.3}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: echo, namespace: echo-grpc}}
spec:
  host: echo.echo-grpc.svc.cluster.local
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo, namespace: echo-grpc}}
spec:
  hosts: [echo.echo-grpc.svc.cluster.local]
  http:
  - route:
    - destination: {{host: echo.echo-grpc.svc.cluster.local, subset: v1}}
      weight: {1}
    - destination: {{host: echo.echo-grpc.svc.cluster.local, subset: v2}}
      weight: {2}
{3}
)",
                     target_port, v1_weight, v2_weight, route_extra);
}

struct Run {
  int status = -1;
  std::string output;
  int v1 = -1, v2 = -1;
  std::vector<sx::AdsServerEvent> events;
};

// Serves `config` as `sluicectl xds serve` does and runs the node client against it.
Run RunClient(const std::string& config, int port, const std::string& target, int count) {
  TempDir dir;
  std::ofstream(dir.path / "echo.yaml") << config;
  sluice::istio::LocalControlPlane cp({dir.path.string()});
  auto report = cp.Reload();
  INFO(fmt::format("{}", fmt::join(report.errors, "\n")));
  REQUIRE(report.errors.empty());

  Run run;
  std::mutex mu;
  sx::AdsServer server(
      [&cp](const envoy::config::core::v3::Node& node) { return cp.ResourcesFor(node); });
  server.OnEvent([&](const sx::AdsServerEvent& e) {
    std::lock_guard lock(mu);
    run.events.push_back(e);
  });
  auto ads = server.Start({.address = "127.0.0.1:0"});
  REQUIRE(ads);
  const std::string cmd = fmt::format(
      "NODE_PATH={} timeout 60 node {} {} {} {} {} "
      "sidecar~127.0.0.9~client-1.echo-grpc~echo-grpc.svc.cluster.local echo-grpc 2>&1",
      SLUICE_NODE_MODULES, SLUICE_GRPC_PROXYLESS_CLIENT, *ads, port, target, count);
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  char buf[512];
  while (fgets(buf, sizeof buf, p))
    run.output += buf;
  run.status = pclose(p);
  server.Stop();
  std::smatch m;
  if (std::regex_search(run.output, m, std::regex(R"(v1 (\d+) v2 (\d+))"))) {
    run.v1 = std::stoi(m[1]);
    run.v2 = std::stoi(m[2]);
  }
  return run;
}

void CheckAllTypesAcked(const Run& run) {
  std::set<std::string> acked;
  for (const auto& e : run.events) {
    if (e.kind == Kind::kAck)
      acked.insert(e.type_url);
    if (e.kind == Kind::kNack)
      FAIL_CHECK(e.type_url << " NACKed: " << e.error);
  }
  CHECK(acked == std::set<std::string>{std::string(sx::kListenerType), std::string(sx::kRouteType),
                                       std::string(sx::kClusterType),
                                       std::string(sx::kEndpointType)});
}

}  // namespace

TEST_CASE("proxyless gRPC: a 25/75 VirtualService split is honoured by gRPC's own client") {
  const int port = FreePort();
  const int count = 200;
  Run run = RunClient(Config(port, 25, 75), port, "echo.echo-grpc.svc.cluster.local:7070", count);
  INFO(run.output);
  REQUIRE(run.status == 0);
  CHECK(run.v1 + run.v2 == count);
  // Binomial(200, 0.25): mean 50, sd 6.1. 25..80 is beyond 4 sd on either side.
  CHECK(run.v1 >= 25);
  CHECK(run.v1 <= 80);
  CheckAllTypesAcked(run);
  // It asked for exactly the listener of the name it dialled.
  bool named = false;
  for (const auto& e : run.events) {
    if (e.kind == Kind::kRequest && e.type_url == sx::kListenerType &&
        e.resource_names == std::vector<std::string>{"echo.echo-grpc.svc.cluster.local:7070"})
      named = true;
  }
  CHECK(named);
}

TEST_CASE("proxyless gRPC: a route to one subset reaches only that subset's endpoints") {
  const int port = FreePort();
  // Weight 0 drops v1 from the route (as istiod): the route names subset v2's cluster
  // alone, and that cluster's endpoints must be v2's pod only.
  Run run = RunClient(Config(port, 0, 100), port, "echo.echo-grpc.svc.cluster.local:7070", 40);
  INFO(run.output);
  REQUIRE(run.status == 0);
  CHECK(run.v1 == 0);
  CHECK(run.v2 == 40);
  CheckAllTypesAcked(run);
}

TEST_CASE("proxyless gRPC: a short name from the service's namespace resolves like istiod's") {
  const int port = FreePort();
  // "echo:7070" — what a client in echo-grpc writes; istiod expands it to the FQDN's
  // listener and answers under the name asked for.
  Run run = RunClient(Config(port, 0, 100), port, "echo:7070", 10);
  INFO(run.output);
  REQUIRE(run.status == 0);
  CHECK(run.v2 == 10);
  CheckAllTypesAcked(run);
}

TEST_CASE("proxyless gRPC: a VirtualService abort with grpcStatus fails the RPCs with it") {
  const int port = FreePort();
  // Istio's fault.abort.grpcStatus: gRPC's client injects it itself (its fault filter
  // reads the route's envoy.filters.http.fault config).
  Run run = RunClient(Config(port, 0, 100,
                             "    fault:\n      abort:\n        grpcStatus: UNAVAILABLE\n"
                             "        percentage: {value: 100}"),
                      port, "echo.echo-grpc.svc.cluster.local:7070", 5);
  INFO(run.output);
  CHECK(run.status != 0);
  CHECK(run.output.find("rpc: 14 ") != std::string::npos);  // UNAVAILABLE
  CheckAllTypesAcked(run);
}
