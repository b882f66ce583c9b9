// Replan(): an update of clusters and endpoints alone decides again only the services
// that read them, and the result is the plan a whole Plan() makes of the new snapshot.
#include <random>

#include "envoy/extensions/upstreams/http/v3/http_protocol_options.pb.h"
#include "fixtures.h"
#include "sluice/config/store.h"
#include "sluice/kernelsync/plan.h"

using namespace sluice;
using namespace sluice::test;
using envoy::config::cluster::v3::Cluster;
using envoy::config::endpoint::v3::ClusterLoadAssignment;
using envoy::config::listener::v3::Listener;
using envoy::config::route::v3::RouteConfiguration;

namespace {

std::string Host(int i) {
  return "svc-" + std::to_string(i) + ".mesh.svc.cluster.local";
}
std::string ClusterOf(int i) {
  return "outbound|80||" + Host(i);
}
std::string Vip(int i) {
  return "10.96." + std::to_string(i / 200) + "." + std::to_string(i % 200 + 1);
}
std::string Ep(int svc, int e) {
  return "10.1." + std::to_string(svc / 200) + "." + std::to_string(svc % 200 + 1) + ":" +
         std::to_string(9000 + e);
}

// A mesh of `n` HTTP services on port 80 (virtual hosts with VIPs): every fourth one has
// a header match (L7), every fifth one splits 50/50 with the next service's cluster; and
// `n / 10` TCP services on listeners of their own.
sluice::xds::ResourceSet Mesh(int n) {
  sluice::xds::ResourceSet rs;
  std::string vhosts;
  for (int i = 0; i < n; ++i) {
    rs.Add(FromJson<Cluster>(Eds(ClusterOf(i), "ROUND_ROBIN")));
    rs.Add(FromJson<ClusterLoadAssignment>(Cla(ClusterOf(i), {Ep(i, 0), Ep(i, 1)})));
    std::string route;
    if (i % 5 == 0 && i + 1 < n) {
      route = R"({"match":{"prefix":"/"},"route":{"weightedClusters":{"clusters":[{"name":")" +
              ClusterOf(i) + R"(","weight":50},{"name":")" + ClusterOf(i + 1) +
              R"(","weight":50}]}}})";
    } else if (i % 4 == 0) {
      route =
          R"({"match":{"prefix":"/","headers":[{"name":"x-v","exactMatch":"2"}]},"route":{"cluster":")" +
          ClusterOf(i) + R"("}},{"match":{"prefix":"/"},"route":{"cluster":")" + ClusterOf(i) +
          R"("}})";
    } else {
      route = R"({"match":{"prefix":"/"},"route":{"cluster":")" + ClusterOf(i) + R"("}})";
    }
    if (!vhosts.empty())
      vhosts += ",";
    vhosts += R"({"name":")" + Host(i) + R"(:80","domains":[")" + Host(i) + R"(",")" + Vip(i) +
              R"("],"routes":[)" + route + "]}";
  }
  rs.Add(FromJson<RouteConfiguration>(R"({"name":"80","virtualHosts":[)" + vhosts + "]}"));
  rs.Add(FromJson<Listener>(HttpListener(80)));
  for (int i = 0; i < n; i += 10)
    rs.Add(FromJson<Listener>(TcpListener(Vip(i), 3306, ClusterOf(i))));
  rs.Add(FromJson<Listener>(VirtualOutbound("PassthroughCluster")));
  return rs;
}

void RequireSamePlan(const kernelsync::KernelPlan& got, const kernelsync::KernelPlan& want) {
  REQUIRE(got.services.size() == want.services.size());
  for (size_t i = 0; i < got.services.size(); ++i) {
    INFO(want.services[i].name);
    CHECK(got.services[i] == want.services[i]);
  }
  CHECK(got.l7_reasons == want.l7_reasons);
  CHECK(got.registry_only == want.registry_only);
}

std::shared_ptr<const ClusterLoadAssignment> Endpoints(int svc, std::initializer_list<int> eps) {
  auto cla = std::make_shared<ClusterLoadAssignment>();
  cla->set_cluster_name(ClusterOf(svc));
  auto* loc = cla->add_endpoints();
  for (int e : eps) {
    auto* sa =
        loc->add_lb_endpoints()->mutable_endpoint()->mutable_address()->mutable_socket_address();
    std::string ep = Ep(svc, e);
    sa->set_address(ep.substr(0, ep.rfind(':')));
    sa->set_port_value(static_cast<uint32_t>(9000 + e));
  }
  return cla;
}

}  // namespace

TEST_CASE("an endpoint update decides again only the services reading that cluster") {
  config::ConfigStore store;
  REQUIRE(store.Apply(config::Snapshot::FromResourceSet(Mesh(400))));
  auto plan = kernelsync::Plan(*store.Current());
  REQUIRE(plan);
  const size_t services = plan->services.size();
  REQUIRE(services > 400);  // HTTP and TCP frontends

  // svc-7 is read by its own virtual host only: one service decided, one changed.
  config::SnapshotEdit e;
  e.endpoints[ClusterOf(7)] = Endpoints(7, {0, 1, 2});
  auto diff = store.Edit(std::move(e));
  REQUIRE(diff);
  auto edit = kernelsync::Replan(*plan, *store.Current(), *diff);
  REQUIRE(edit);
  REQUIRE(*edit);
  CHECK((*edit)->replanned == 1);
  REQUIRE((*edit)->services.size() == 1);
  CHECK((*edit)->services[0].name == Host(7) + ":80");
  CHECK((*edit)->services[0].clusters[0].endpoints.size() == 3);
  kernelsync::Commit(*plan, std::move(**edit));
  RequireSamePlan(*plan, *kernelsync::Plan(*store.Current()));

  // svc-11 is read by its own virtual host and by svc-10's 50/50 split.
  config::SnapshotEdit e2;
  e2.endpoints[ClusterOf(11)] = Endpoints(11, {3});
  diff = store.Edit(std::move(e2));
  REQUIRE(diff);
  edit = kernelsync::Replan(*plan, *store.Current(), *diff);
  REQUIRE(edit);
  REQUIRE(*edit);
  CHECK((*edit)->replanned == 2);

  // A route change is the whole plan's to decide.
  config::SnapshotEdit e3;
  auto rc = std::make_shared<RouteConfiguration>(*store.Current()->routes.at("80"));
  rc->mutable_virtual_hosts(3)->add_domains("svc-3.alias");
  e3.routes["80"] = rc;
  diff = store.Edit(std::move(e3));
  REQUIRE(diff);
  edit = kernelsync::Replan(*plan, *store.Current(), *diff);
  REQUIRE(edit);
  CHECK_FALSE(*edit);
}

TEST_CASE("replanning equals planning the whole snapshot, across random cluster changes") {
  const int n = 120;
  config::ConfigStore store;
  REQUIRE(store.Apply(config::Snapshot::FromResourceSet(Mesh(n))));
  auto plan = kernelsync::Plan(*store.Current());
  REQUIRE(plan);
  std::mt19937 rng(20);
  int incremental = 0;
  for (int step = 0; step < 300; ++step) {
    const int svc = static_cast<int>(rng() % n);
    const auto cur = store.Current();
    config::SnapshotEdit e;
    const bool eds = cur->endpoints.contains(ClusterOf(svc));
    switch (rng() % 6) {
      case 0:
      case 1:  // new endpoints
        if (eds)
          e.endpoints[ClusterOf(svc)] = Endpoints(svc, {static_cast<int>(rng() % 4), 5});
        break;
      case 2:  // every endpoint gone
        if (eds)
          e.endpoints[ClusterOf(svc)] = Endpoints(svc, {});
        break;
      case 3: {  // another LB policy, or resolved by DNS (then the proxy's)
        if (!cur->clusters.contains(ClusterOf(svc)))
          break;
        auto c = std::make_shared<Cluster>(*cur->clusters.at(ClusterOf(svc)));
        c->set_lb_policy(rng() % 2 ? Cluster::LEAST_REQUEST : Cluster::RING_HASH);
        if (rng() % 3 == 0 && c->type() == Cluster::EDS) {
          c->set_type(Cluster::STRICT_DNS);
          c->clear_eds_cluster_config();
          e.removed_endpoints.push_back(ClusterOf(svc));
        } else if (c->type() == Cluster::STRICT_DNS) {
          *c = FromJson<Cluster>(Eds(ClusterOf(svc), "ROUND_ROBIN"));
        }
        e.clusters[ClusterOf(svc)] = c;
        break;
      }
      case 5: {  // HTTP/2 upstream (an HTTP service then needs the proxy), or not
        if (!cur->clusters.contains(ClusterOf(svc)))
          break;
        auto c = std::make_shared<Cluster>(*cur->clusters.at(ClusterOf(svc)));
        if (c->typed_extension_protocol_options().empty()) {
          envoy::extensions::upstreams::http::v3::HttpProtocolOptions o;
          o.mutable_explicit_http_config()->mutable_http2_protocol_options();
          (*c->mutable_typed_extension_protocol_options())
              ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
                  .PackFrom(o);
        } else {
          c->clear_typed_extension_protocol_options();
        }
        e.clusters[ClusterOf(svc)] = c;
        break;
      }
      case 4:  // the cluster goes, or comes back
        if (cur->clusters.contains(ClusterOf(svc))) {
          e.removed_clusters.push_back(ClusterOf(svc));
          if (cur->endpoints.contains(ClusterOf(svc)))
            e.removed_endpoints.push_back(ClusterOf(svc));
        } else {
          e.clusters[ClusterOf(svc)] =
              std::make_shared<Cluster>(FromJson<Cluster>(Eds(ClusterOf(svc), "ROUND_ROBIN")));
          e.endpoints[ClusterOf(svc)] = Endpoints(svc, {1});
        }
        break;
    }
    // A STRICT_DNS cluster back to EDS needs its endpoints again.
    if (auto c = e.clusters.find(ClusterOf(svc));
        c != e.clusters.end() && c->second->type() == Cluster::EDS &&
        !cur->endpoints.contains(ClusterOf(svc)) && !e.endpoints.contains(ClusterOf(svc))) {
      e.endpoints[ClusterOf(svc)] = Endpoints(svc, {2});
    }
    if (e.empty())
      continue;
    auto diff = store.Edit(std::move(e));
    INFO("step " << step << ": " << (diff ? "" : diff.error().message));
    REQUIRE(diff);
    auto edit = kernelsync::Replan(*plan, *store.Current(), *diff);
    REQUIRE(edit);
    REQUIRE(*edit);  // clusters and endpoints only: always incremental here
    ++incremental;
    kernelsync::Commit(*plan, std::move(**edit));
    auto whole = kernelsync::Plan(*store.Current());
    REQUIRE(whole);
    RequireSamePlan(*plan, *whole);
  }
  CHECK(incremental > 200);
}
