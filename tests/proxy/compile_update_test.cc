// CompileUpdate: a config change compiles what it touched and shares the rest with the
// config before (the same cluster and route table objects), and a swap keeps the pooled
// upstream connections of the clusters it did not touch. Counted, not timed: the
// ProxyConfig says what its compile built, and a real loopback upstream counts the
// connections it accepts. The timing at 10,000 services is printed by the case tagged
// [.bench] (run it by name; not asserted).
#include <chrono>
#include <cstdio>

#include <catch2/catch.hpp>

#include "harness.h"
#include "sluice/config/snapshot.h"
#include "sluice/proxy/config.h"
#include "test_upstream.h"
#include "xds/istio_mesh.h"

using namespace sluice::testing;
namespace proxy = sluice::proxy;
namespace config = sluice::config;

namespace {

using namespace sluice::testing::mesh;

// `before` with `edit` applied, as the config store would publish it.
std::pair<config::Snapshot, config::Diff> Apply(const config::Snapshot& before,
                                                config::SnapshotEdit edit) {
  auto r = config::ApplyEdit(before, std::move(edit));
  REQUIRE(r);
  return std::move(*r);
}

std::shared_ptr<const proxy::ProxyConfig> Full(const config::Snapshot& s) {
  auto cfg = proxy::Compile(s);
  REQUIRE(cfg);
  return *cfg;
}

std::shared_ptr<const proxy::ProxyConfig> Update(const proxy::ProxyConfig& prev,
                                                 const config::Snapshot& next,
                                                 const config::Diff& diff) {
  auto cfg = proxy::CompileUpdate(prev, next, diff);
  REQUIRE(cfg);
  return *cfg;
}

// The same routing, cluster by cluster and table by table, as a full compile gives.
void CheckSameAsFull(const proxy::ProxyConfig& got, const config::Snapshot& next) {
  auto full = Full(next);
  CHECK(got.cluster_count == full->cluster_count);
  for (const auto& [name, c] : next.clusters) {
    const proxy::Cluster* a = got.FindCluster(name);
    const proxy::Cluster* b = full->FindCluster(name);
    REQUIRE((a != nullptr) == (b != nullptr));
    if (!a)
      continue;
    REQUIRE(a->endpoints.size() == b->endpoints.size());
    for (std::size_t i = 0; i < a->endpoints.size(); ++i)
      CHECK(a->endpoints[i]->address == b->endpoints[i]->address);
  }
  REQUIRE(got.route_tables.size() == full->route_tables.size());
  for (const auto& [name, t] : full->route_tables) {
    REQUIRE(got.route_tables.contains(name));
    CHECK(got.route_tables.at(name)->vhosts.size() == t->vhosts.size());
  }
  REQUIRE(got.listeners.size() == full->listeners.size());
  for (std::size_t i = 0; i < got.listeners.size(); ++i) {
    CHECK(got.listeners[i].name == full->listeners[i].name);
    // Each listener uses the route table in force in its own config.
    const auto& h = got.listeners[i].chains.at(0).http;
    CHECK(h.routes == got.route_tables.at(h.route_config_name));
  }
  CHECK(got.warnings == full->warnings);
  CHECK(got.refused.size() == full->refused.size());
}

}  // namespace

TEST_CASE("a one-endpoint update compiles one cluster, no route table and no listener",
          "[proxy][compile]") {
  constexpr int kServices = 300;
  const auto s0 = config::Snapshot::FromResourceSet(Build(kServices, 1500));
  auto c0 = Full(s0);
  // A full compile builds everything: the counts below fail if the update does that.
  CHECK(c0->built_clusters == kServices);
  CHECK(c0->built_routes == kPorts);
  CHECK(c0->built_listeners == kPorts);

  config::SnapshotEdit edit;
  edit.endpoints[ClusterOf(7)] =
      std::make_shared<const envoy::config::endpoint::v3::ClusterLoadAssignment>(
          Endpoints(7, 5, 9001));
  auto [s1, diff] = Apply(s0, std::move(edit));
  REQUIRE(diff.endpoints.changed == std::vector<std::string>{ClusterOf(7)});
  auto c1 = Update(*c0, s1, diff);
  CHECK(c1->built_clusters == 1);
  CHECK(c1->built_routes == 0);
  CHECK(c1->built_listeners == 0);
  CHECK(c1->rebound_listeners == 0);
  // The changed cluster is new and has the new port; every other one is the same object.
  const proxy::Cluster* changed = c1->FindCluster(ClusterOf(7));
  REQUIRE(changed != nullptr);
  CHECK(changed != c0->FindCluster(ClusterOf(7)));
  CHECK(changed->endpoints.front()->address.ends_with(":9001"));
  for (int i = 0; i < kServices; ++i) {
    if (i != 7)
      CHECK(c1->FindCluster(ClusterOf(i)) == c0->FindCluster(ClusterOf(i)));
  }
  for (const auto& [name, t] : c0->route_tables)
    CHECK(c1->route_tables.at(name) == t);
  CheckSameAsFull(*c1, s1);
}

TEST_CASE("a route table change rebuilds that table and re-points its listener only",
          "[proxy][compile]") {
  const auto s0 = config::Snapshot::FromResourceSet(Build(40, 40));
  auto c0 = Full(s0);
  auto rc = std::make_shared<envoy::config::route::v3::RouteConfiguration>(*s0.routes.at("8003"));
  rc->mutable_virtual_hosts(0)->add_domains("extra.example");
  config::SnapshotEdit edit;
  edit.routes["8003"] = rc;
  auto [s1, diff] = Apply(s0, std::move(edit));
  auto c1 = Update(*c0, s1, diff);
  CHECK(c1->built_clusters == 0);
  CHECK(c1->built_routes == 1);
  CHECK(c1->built_listeners == 0);
  CHECK(c1->rebound_listeners == 1);
  CHECK(c1->route_tables.at("8003") != c0->route_tables.at("8003"));
  CHECK(c1->route_tables.at("8003")->FindVirtualHost("extra.example") != nullptr);
  CHECK(c1->route_tables.at("8004") == c0->route_tables.at("8004"));
  CheckSameAsFull(*c1, s1);

  // Removed: its listener answers from an empty table (404 NR, as while RDS is pending).
  config::SnapshotEdit remove;
  remove.removed_routes = {"8003"};
  auto [s2, diff2] = Apply(s1, std::move(remove));
  auto c2 = Update(*c1, s2, diff2);
  CHECK(c2->built_routes == 0);
  CHECK(c2->rebound_listeners == 1);
  REQUIRE(c2->route_tables.contains("8003"));
  CHECK(c2->route_tables.at("8003")->vhosts.empty());
  CheckSameAsFull(*c2, s2);
}

TEST_CASE("a listener change compiles that listener, and clusters come and go by name",
          "[proxy][compile]") {
  const auto s0 = config::Snapshot::FromResourceSet(Build(40, 40));
  auto c0 = Full(s0);
  auto l =
      std::make_shared<envoy::config::listener::v3::Listener>(*s0.listeners.at("0.0.0.0_8005"));
  l->mutable_listener_filters_timeout()->set_seconds(3);
  config::SnapshotEdit edit;
  edit.listeners[l->name()] = l;
  auto [s1, diff] = Apply(s0, std::move(edit));
  auto c1 = Update(*c0, s1, diff);
  CHECK(c1->built_clusters == 0);
  CHECK(c1->built_routes == 0);
  CHECK(c1->built_listeners == 1);
  REQUIRE(c1->listeners.size() == c0->listeners.size());
  for (const auto& lc : c1->listeners) {
    if (lc.name == "0.0.0.0_8005")
      CHECK(lc.filters_timeout.count() == 3000);
  }
  CheckSameAsFull(*c1, s1);

  // A cluster removed: its routes answer 503 NC (no slot), the tables naming it unchanged;
  // added back, the same unchanged tables reach it.
  config::SnapshotEdit remove;
  remove.removed_clusters = {ClusterOf(3)};
  remove.removed_endpoints = {ClusterOf(3)};
  auto r2 = config::ApplyEdit(s1, std::move(remove));
  REQUIRE(r2);
  auto c2 = Update(*c1, r2->first, r2->second);
  CHECK(c2->built_clusters == 0);
  CHECK(c2->built_routes == 0);
  CHECK(c2->FindCluster(ClusterOf(3)) == nullptr);
  CHECK(c2->cluster_count == c1->cluster_count - 1);
  CheckSameAsFull(*c2, r2->first);
  config::SnapshotEdit back;
  back.clusters[ClusterOf(3)] = s1.clusters.at(ClusterOf(3));
  back.endpoints[ClusterOf(3)] = s1.endpoints.at(ClusterOf(3));
  auto r3 = config::ApplyEdit(r2->first, std::move(back));
  REQUIRE(r3);
  auto c3 = Update(*c2, r3->first, r3->second);
  CHECK(c3->built_clusters == 1);
  CHECK(c3->built_routes == 0);
  const auto& route = c3->route_tables.at(std::to_string(PortOf(3)))
                          ->FindVirtualHost(Host(3))
                          ->routes.front()
                          .action;
  CHECK(c3->ClusterAt(route.cluster) == c3->FindCluster(ClusterOf(3)));
  CheckSameAsFull(*c3, r3->first);
}

TEST_CASE("an update that refuses what the full compile refuses: a mirror to a removed cluster",
          "[proxy][compile]") {
  Json doc = {{"clusters", Json::array({StaticCluster("a", {1}), StaticCluster("shadow", {2})})},
              {"routes", Json::array({RouteConfig(
                             "r", Json::array({{{"match", {{"prefix", "/"}}},
                                                {"route",
                                                 {{"cluster", "a"},
                                                  {"request_mirror_policies",
                                                   Json::array({{{"cluster", "shadow"}}})}}}}}))})},
              {"listeners", Json::array()}};
  auto rs = proxy::ParseResourceSetJson(doc.dump());
  REQUIRE(rs);
  const auto s0 = config::Snapshot::FromResourceSet(*rs);
  auto c0 = Full(s0);
  config::SnapshotEdit edit;
  edit.removed_clusters = {"shadow"};
  auto r = config::ApplyEdit(s0, std::move(edit));
  REQUIRE(r);
  auto update = proxy::CompileUpdate(*c0, r->first, r->second);
  auto full = proxy::Compile(r->first);
  CHECK_FALSE(full);
  REQUIRE_FALSE(update);
  CHECK(update.error().message == full.error().message);
}

TEST_CASE("a swap keeps pooled upstream connections of the clusters it did not change",
          "[proxy][compile][traffic]") {
  TestUpstream a({.name = "a"}), b({.name = "b"});
  Json routes = Json::array({{{"match", {{"prefix", "/a"}}}, {"route", {{"cluster", "a"}}}},
                             {{"match", {{"prefix", "/b"}}}, {"route", {{"cluster", "b"}}}}});
  Json doc = {
      {"clusters", Json::array({StaticCluster("a", {a.port()}), StaticCluster("b", {b.port()})})},
      {"routes", Json::array({RouteConfig("r", routes)})},
      {"listeners", Json::array({HttpListener("http", "r", /*access_log=*/false)})}};
  auto rs = proxy::ParseResourceSetJson(doc.dump());
  REQUIRE(rs);
  auto snap = config::Snapshot::FromResourceSet(*rs);
  auto cfg = Full(snap);
  proxy::ProxyOptions opts;
  opts.workers = 1;  // one worker: one pool
  auto p = proxy::Proxy::Start(cfg, opts);
  REQUIRE(p);
  const uint16_t port = (*p)->Port("http");
  REQUIRE(port != 0);
  auto get = [&](const std::string& path) { return Get(port, "x", path).status; };
  REQUIRE(get("/a") == 200);
  REQUIRE(get("/b") == 200);
  CHECK(a.connections() == 1);
  CHECK(b.connections() == 1);

  // Change cluster b (its connect timeout): a's pooled connection carries over.
  auto change = [&](const std::string& name, int timeout_s) {
    auto c = std::make_shared<envoy::config::cluster::v3::Cluster>(*snap.clusters.at(name));
    c->mutable_connect_timeout()->set_seconds(timeout_s);
    config::SnapshotEdit edit;
    edit.clusters[name] = c;
    auto [next, diff] = Apply(snap, std::move(edit));
    auto ncfg = Update(*cfg, next, diff);
    CHECK(ncfg->built_clusters == 1);
    CHECK(ncfg->built_routes == 0);
    REQUIRE((*p)->Update(ncfg));
    snap = std::move(next);
    cfg = ncfg;
  };
  change("b", 3);
  REQUIRE(get("/a") == 200);
  CHECK(a.connections() == 1);  // reused across the swap
  REQUIRE(get("/b") == 200);
  CHECK(b.connections() == 2);  // b changed: its old connection is not reused

  // Change a: its connection is not reused across the change.
  change("a", 4);
  REQUIRE(get("/a") == 200);
  CHECK(a.connections() == 2);
  REQUIRE(get("/b") == 200);
  CHECK(b.connections() == 2);  // b's (made on the last config) carries over this time
  CHECK(a.count() == 3);        // every request reached its upstream
  CHECK(b.count() == 3);
  (*p)->Stop();
}

TEST_CASE("compile time: a one-endpoint update against a full compile at 10,000 services",
          "[.bench][proxy][compile]") {
  using Clock = std::chrono::steady_clock;
  auto ms = [](Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); };
  const auto s0 = config::Snapshot::FromResourceSet(Build(10000, 50000));
  auto t0 = Clock::now();
  auto c0 = Full(s0);
  const double full_ms = ms(Clock::now() - t0);
  std::vector<double> update_ms, edit_ms;
  auto cfg = c0;
  auto snap = std::make_shared<const config::Snapshot>(s0);
  for (int i = 0; i < 50; ++i) {
    config::SnapshotEdit edit;
    edit.endpoints[ClusterOf(i * 97 % 10000)] =
        std::make_shared<const envoy::config::endpoint::v3::ClusterLoadAssignment>(
            Endpoints(i * 97 % 10000, 5, static_cast<uint32_t>(9001 + i)));
    auto e0 = Clock::now();
    auto r = config::ApplyEdit(*snap, std::move(edit));
    REQUIRE(r);
    auto u0 = Clock::now();
    auto next = Update(*cfg, r->first, r->second);
    const auto u1 = Clock::now();
    edit_ms.push_back(ms(u0 - e0));
    update_ms.push_back(ms(u1 - u0));
    CHECK(next->built_clusters == 1);
    cfg = next;
    snap = std::make_shared<const config::Snapshot>(std::move(r->first));
  }
  std::sort(update_ms.begin(), update_ms.end());
  std::sort(edit_ms.begin(), edit_ms.end());
  std::printf(
      "10000 services / 50000 endpoints: full compile %.1f ms; one-endpoint CompileUpdate median "
      "%.3f ms, p99 %.3f ms (ApplyEdit median %.3f ms)\n",
      full_ms, update_ms[update_ms.size() / 2], update_ms[update_ms.size() * 99 / 100],
      edit_ms[edit_ms.size() / 2]);
}
