// KernelSync against the real kernel: config snapshots in, connections out.
#include "sluice/kernelsync/kernel_sync.h"

#include "fixtures.h"
#include "lab.h"
#include "sluice/config/store.h"

using namespace sluice;
using namespace sluice::test;
using EnvoyCluster = envoy::config::cluster::v3::Cluster;
using envoy::config::endpoint::v3::ClusterLoadAssignment;
using envoy::config::listener::v3::Listener;
using envoy::config::route::v3::RouteConfiguration;

namespace {

const std::string kSvc = "web.default.svc.cluster.local";
const std::string kV1 = "outbound|80|v1|" + kSvc;
const std::string kV2 = "outbound|80|v2|" + kSvc;

config::Snapshot WebSnapshot(int w1, int w2, uint64_t generation, bool mirror = false,
                             const std::string& v1_endpoint = "10.211.0.2:8080") {
  sluice::xds::ResourceSet rs;
  rs.Add(FromJson<EnvoyCluster>(Eds(kV1, "RANDOM")));
  rs.Add(FromJson<EnvoyCluster>(Eds(kV2, "RANDOM")));
  rs.Add(FromJson<ClusterLoadAssignment>(Cla(kV1, {v1_endpoint})));
  rs.Add(FromJson<ClusterLoadAssignment>(Cla(kV2, {"10.211.0.3:8080"})));
  rs.Add(FromJson<Listener>(HttpListener(80)));
  const std::string mirror_json =
      mirror ? R"(,"requestMirrorPolicies":[{"cluster":")" + kV2 + R"("}])" : "";
  rs.Add(FromJson<RouteConfiguration>(
      R"({"name":"80","virtualHosts":[{"name":")" + kSvc + R"(:80","domains":[")" + kSvc +
      R"(","10.96.211.70"],"routes":[{"match":{"prefix":"/"},"route":{"weightedClusters":{"clusters":[{"name":")" +
      kV1 + R"(","weight":)" + std::to_string(w1) + R"(},{"name":")" + kV2 + R"(","weight":)" +
      std::to_string(w2) + "}]}" + mirror_json + "}}]}]}"));
  auto s = config::Snapshot::FromResourceSet(rs);
  s.generation = generation;
  return s;
}

}  // namespace

TEST_CASE("kernel sync applies config snapshots to the kernel, as diffs") {
  Lab lab;
  lab.AddClientAndServers();
  lab.Enrol("client");
  kernelsync::KernelSync sync(lab.dp());

  REQUIRE(sync.OnSnapshot(WebSnapshot(25, 75, 1)));
  auto r = lab.Connect("client", "10.96.211.70:80", 4000);
  INFO(r.dump());
  CHECK(Share(r, "a") == Approx(0.25).margin(0.025));
  CHECK(Share(r, "b") == Approx(0.75).margin(0.025));

  // New weights: the same kernel service, a new revision.
  REQUIRE(sync.OnSnapshot(WebSnapshot(100, 0, 2)));
  auto all_a = lab.Connect("client", "10.96.211.70:80", 50);
  CHECK(Count(all_a, "by_server", "a") == 50);
  auto services = lab.dp().Services();
  REQUIRE(services);
  REQUIRE(services->size() == 1);
  CHECK(services->front().revision == 2);

  // An unchanged snapshot changes nothing in the kernel.
  REQUIRE(sync.OnSnapshot(WebSnapshot(100, 0, 3)));
  CHECK(lab.dp().Services()->front().revision == 2);

  // Mirroring needs the proxy: the service becomes a redirect (no proxy port here, so
  // the kernel refuses rather than bypassing the mirror).
  REQUIRE(sync.OnSnapshot(WebSnapshot(100, 0, 4, true)));
  auto refused = lab.Connect("client", "10.96.211.70:80", 3);
  CHECK(Count(refused, "errors", "ECONNREFUSED") == 3);

  // The service disappears from the config: it is deleted from the kernel.
  sluice::xds::ResourceSet empty;
  auto gone = config::Snapshot::FromResourceSet(empty);
  gone.generation = 5;
  REQUIRE(sync.OnSnapshot(gone));
  CHECK(lab.dp().Services()->empty());
  CHECK(Count(lab.Connect("client", "10.96.211.70:80", 2), "errors", "ENETUNREACH") == 2);
  CHECK(sync.applied_generation() == 5);
}

TEST_CASE("views: a service views route differently goes to the proxy, endpoints aside") {
  Lab lab;
  lab.AddClientAndServers();
  lab.Enrol("client");  // no proxy port: a redirected service is refused, visibly
  kernelsync::KernelSync sync(lab.dp());

  REQUIRE(sync.OnSnapshot(WebSnapshot(100, 0, 1)));
  CHECK(Count(lab.Connect("client", "10.96.211.70:80", 10), "by_server", "a") == 10);
  // A namespace whose sidecars see the same config changes nothing.
  auto same = WebSnapshot(100, 0, 1);
  REQUIRE(sync.OnView("team-a", &same));
  CHECK(Count(lab.Connect("client", "10.96.211.70:80", 10), "by_server", "a") == 10);
  // A view whose endpoints differ (an EDS update that reached one stream first) does not
  // move the service: the node's view is served.
  auto moved = WebSnapshot(100, 0, 1, false, "10.211.0.3:8080");
  REQUIRE(sync.OnView("team-b", &moved));
  CHECK(Count(lab.Connect("client", "10.96.211.70:80", 10), "by_server", "a") == 10);
  // A view with another split (team-b's own VirtualService, exported to team-b only):
  // one kernel service cannot serve both, so it goes to the in-pod proxy, which routes
  // it with each pod's view (no proxy port here, so the kernel refuses, visibly).
  auto other = WebSnapshot(0, 100, 1);
  REQUIRE(sync.OnView("team-b", &other));
  CHECK(Count(lab.Connect("client", "10.96.211.70:80", 3), "errors", "ECONNREFUSED") == 3);
  CHECK_THAT(sync.applied().l7_reasons.begin()->second,
             Catch::Contains("routed differently in view team-b"));
  // The views agree again: back in the kernel.
  auto agreed = WebSnapshot(100, 0, 1);
  REQUIRE(sync.OnView("team-b", &agreed));
  CHECK(Count(lab.Connect("client", "10.96.211.70:80", 10), "by_server", "a") == 10);
  // A namespace whose own VirtualService needs L7 (a mirror): the service goes to the
  // in-pod proxy for everyone (no proxy port here, so the kernel refuses, visibly).
  auto mirrored = WebSnapshot(100, 0, 1, true);
  REQUIRE(sync.OnView("team-b", &mirrored));
  CHECK(Count(lab.Connect("client", "10.96.211.70:80", 3), "errors", "ECONNREFUSED") == 3);
  CHECK_THAT(sync.applied().l7_reasons.begin()->second, Catch::Contains("view team-b"));
  // The view goes (its last pod left): back in the kernel.
  REQUIRE(sync.OnView("team-b", nullptr));
  CHECK(Count(lab.Connect("client", "10.96.211.70:80", 10), "by_server", "a") == 10);
  // A service only a namespace's view has is served too.
  sluice::xds::ResourceSet empty;
  auto none = config::Snapshot::FromResourceSet(empty);
  none.generation = 2;
  REQUIRE(sync.OnSnapshot(none));
  CHECK(Count(lab.Connect("client", "10.96.211.70:80", 10), "by_server", "a") == 10);
  REQUIRE(sync.OnView("team-a", nullptr));
  CHECK(lab.dp().Services()->empty());
}

TEST_CASE("an endpoint update reaches the kernel for its service alone") {
  Lab lab;
  lab.AddClientAndServers();
  lab.Enrol("client");
  kernelsync::KernelSync sync(lab.dp());
  config::ConfigStore store;
  store.Subscribe([&](const config::SnapshotPtr& s, const config::Diff& d) {
    REQUIRE(sync.OnSnapshot(*s, &d));
  });
  REQUIRE(store.Apply(WebSnapshot(100, 0, 0)));
  CHECK_FALSE(sync.last_sync().incremental);  // the first one is planned whole
  CHECK(Count(lab.Connect("client", "10.96.211.70:80", 10), "by_server", "a") == 10);

  // v1's one endpoint moves to server b: only the service reading v1 is decided again
  // and written, and connections follow at once.
  config::SnapshotEdit e;
  e.endpoints[kV1] = std::make_shared<const ClusterLoadAssignment>(
      FromJson<ClusterLoadAssignment>(Cla(kV1, {"10.211.0.3:8080"})));
  REQUIRE(store.Edit(std::move(e)));
  CHECK(sync.last_sync().incremental);
  CHECK(sync.last_sync().replanned == 1);
  CHECK(sync.last_sync().upserts == 1);
  CHECK(Count(lab.Connect("client", "10.96.211.70:80", 10), "by_server", "b") == 10);
  CHECK(sync.applied_generation() == 2);

  // Endpoints of a cluster no kernel service reads: nothing decided, nothing written.
  config::SnapshotEdit e2;
  e2.endpoints[kV2] = std::make_shared<const ClusterLoadAssignment>(
      FromJson<ClusterLoadAssignment>(Cla(kV2, {"10.211.0.2:8080"})));
  REQUIRE(store.Edit(std::move(e2)));
  CHECK(sync.last_sync().incremental);
  CHECK(sync.last_sync().upserts == 0);  // weight 0: v2 is not among its clusters

  // A route change (a mirror) is planned whole: the service goes to the proxy.
  REQUIRE(store.Apply(WebSnapshot(100, 0, 0, true, "10.211.0.3:8080")));
  CHECK_FALSE(sync.last_sync().incremental);
  CHECK(Count(lab.Connect("client", "10.96.211.70:80", 3), "errors", "ECONNREFUSED") == 3);
}
