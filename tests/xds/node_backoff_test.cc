// Node identity in istiod's shape, and the reconnect backoff's bounds.
#include <catch2/catch.hpp>

#include "sluice/xds/backoff.h"
#include "sluice/xds/node.h"

using namespace sluice::xds;
using namespace std::chrono_literals;

TEST_CASE("sidecar node ID and metadata are what istiod parses") {
  NodeIdentity id;
  id.ips = {"10.1.2.3", "fd00::3"};
  id.pod_name = "productpage-v1-6b746f74dc-9stvs";
  id.pod_namespace = "bookinfo";
  id.workload_name = "productpage-v1";
  id.labels = {{"app", "productpage"}, {"version", "v1"}};
  id.node_name = "worker-1";
  auto node = BuildNode(id);
  CHECK(node.id() ==
        "sidecar~10.1.2.3~productpage-v1-6b746f74dc-9stvs.bookinfo~bookinfo.svc.cluster.local");
  CHECK(node.cluster() == "productpage-v1.bookinfo");
  const auto& f = node.metadata().fields();
  CHECK(f.at("NAMESPACE").string_value() == "bookinfo");
  CHECK(f.at("INSTANCE_IPS").string_value() == "10.1.2.3,fd00::3");
  CHECK(f.at("ISTIO_VERSION").string_value() == id.istio_version);
  CHECK(f.at("CLUSTER_ID").string_value() == "Kubernetes");
  CHECK(f.at("INTERCEPTION_MODE").string_value() == "REDIRECT");
  CHECK(f.at("NODE_NAME").string_value() == "worker-1");
  CHECK(f.at("LABELS").struct_value().fields().at("version").string_value() == "v1");

  auto parsed = ParseNodeId(node.id());
  REQUIRE(parsed);
  CHECK(parsed->role == ProxyRole::kSidecar);
  CHECK(parsed->ip == "10.1.2.3");
  CHECK(parsed->pod_name == "productpage-v1-6b746f74dc-9stvs");
  CHECK(parsed->pod_namespace == "bookinfo");
  CHECK(parsed->domain == "bookinfo.svc.cluster.local");
}

TEST_CASE("gateway nodes are routers") {
  NodeIdentity id;
  id.role = ProxyRole::kRouter;
  id.ips = {"10.1.0.7"};
  id.pod_name = "istio-ingressgateway-5d8f8c7b9-abcde";
  id.pod_namespace = "istio-system";
  auto node = BuildNode(id);
  CHECK(node.id() ==
        "router~10.1.0.7~istio-ingressgateway-5d8f8c7b9-abcde.istio-system~istio-system.svc."
        "cluster.local");
  auto parsed = ParseNodeId(node.id());
  REQUIRE(parsed);
  CHECK(parsed->role == ProxyRole::kRouter);
}

TEST_CASE("malformed node IDs are refused with the reason") {
  auto a = ParseNodeId("sidecar~10.0.0.1~pod.ns");
  REQUIRE_FALSE(a);
  CHECK(a.error().message ==
        "node id \"sidecar~10.0.0.1~pod.ns\": want 4 '~'-separated parts, got 3");
  auto b = ParseNodeId("waypoint~10.0.0.1~pod.ns~ns.svc.cluster.local");
  REQUIRE_FALSE(b);
  CHECK(
      b.error().message ==
      "node id \"waypoint~10.0.0.1~pod.ns~ns.svc.cluster.local\": unknown proxy type \"waypoint\"");
  auto c = ParseNodeId("sidecar~10.0.0.300~pod.ns~ns.svc.cluster.local");
  REQUIRE_FALSE(c);
  CHECK(c.error().message ==
        "node id \"sidecar~10.0.0.300~pod.ns~ns.svc.cluster.local\": "
        "\"10.0.0.300\" is not an IP address");
}

TEST_CASE("backoff grows exponentially, jitters, and never exceeds its cap") {
  BackoffPolicy p{.initial = 100ms, .max = 1000ms, .multiplier = 2.0, .jitter = 0.2};
  Backoff b(p, 42);
  const double bases[] = {100, 200, 400, 800, 1000, 1000, 1000, 1000};
  std::set<int64_t> distinct;
  for (double base : bases) {
    auto d = b.Next().count();
    CHECK(d >= static_cast<int64_t>(base * 0.8) - 1);
    CHECK(d <= std::min<int64_t>(static_cast<int64_t>(base * 1.2) + 1, 1000));
    distinct.insert(d);
  }
  CHECK(distinct.size() > 4);  // jitter spreads the capped delays too
  b.Reset();
  CHECK(b.Next().count() <= 120);

  // Two agents with different seeds do not retry in lockstep.
  Backoff x(p, 1), y(p, 2);
  int same = 0;
  for (int i = 0; i < 8; ++i)
    same += x.Next() == y.Next();
  CHECK(same < 8);
}
