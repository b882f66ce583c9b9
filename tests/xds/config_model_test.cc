// The config model: whole-snapshot validation with messages naming resource and field,
// snapshots that stay in force when a candidate is refused, and per-type diffs.
#include <fmt/format.h>

#include <algorithm>
#include <random>

#include <catch2/catch.hpp>

#include "envoy/extensions/transport_sockets/tls/v3/tls.pb.h"
#include "fixtures.h"
#include "sluice/config/store.h"
#include "sluice/config/validate.h"

using namespace sluice;
using config::ConfigStore;
using config::Snapshot;
using envoy::config::cluster::v3::Cluster;

namespace {

const std::string kHost = "httpbin.default.svc.cluster.local";
const std::string kCluster = testing::ClusterName(kHost, 8000);

std::string ErrorOf(const sluice::xds::ResourceSet& rs) {
  auto ok = config::ValidateSnapshot(Snapshot::FromResourceSet(rs));
  return ok ? std::string("<valid>") : ok.error().message;
}

}  // namespace

TEST_CASE("a complete istiod-shaped set is valid") {
  CHECK(ErrorOf(testing::HttpbinSet(3)) == "<valid>");
}

TEST_CASE("validation names the resource and the field") {
  auto rs = testing::HttpbinSet();
  using HCM =
      envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;

  SECTION("cluster lb_policy incompatible with its type") {
    auto& c = rs.clusters.at(kCluster);
    c.set_type(Cluster::ORIGINAL_DST);
    c.clear_eds_cluster_config();
    rs.endpoints.clear();
    CHECK(ErrorOf(rs) == "cluster \"" + kCluster +
                             "\": lb_policy: an ORIGINAL_DST cluster needs CLUSTER_PROVIDED, not "
                             "LEAST_REQUEST");
  }
  SECTION("CLUSTER_PROVIDED on an EDS cluster") {
    rs.clusters.at(kCluster).set_lb_policy(Cluster::CLUSTER_PROVIDED);
    CHECK(ErrorOf(rs) == "cluster \"" + kCluster +
                             "\": lb_policy: CLUSTER_PROVIDED is only valid for an ORIGINAL_DST "
                             "cluster, not EDS");
  }
  SECTION("EDS cluster without eds_config") {
    rs.clusters.at(kCluster).mutable_eds_cluster_config()->clear_eds_config();
    CHECK(ErrorOf(rs) == "cluster \"" + kCluster +
                             "\": eds_cluster_config.eds_config: required for an EDS cluster");
  }
  SECTION("zero connect timeout") {
    rs.clusters.at(kCluster).mutable_connect_timeout()->set_seconds(0);
    CHECK(ErrorOf(rs) == "cluster \"" + kCluster + "\": connect_timeout: must be greater than 0");
  }
  SECTION("STATIC cluster endpoint that is not an IP") {
    Cluster c;
    c.set_name("outbound|80||static.example");
    c.set_type(Cluster::STATIC);
    auto* sa = c.mutable_load_assignment()
                   ->add_endpoints()
                   ->add_lb_endpoints()
                   ->mutable_endpoint()
                   ->mutable_address()
                   ->mutable_socket_address();
    sa->set_address("not-an-ip");
    sa->set_port_value(80);
    rs.Add(c);
    CHECK(ErrorOf(rs) ==
          "cluster \"outbound|80||static.example\": "
          "load_assignment.endpoints[0].lb_endpoints[0].endpoint.address."
          "socket_address.address: \"not-an-ip\" is not an IP address");
  }
  SECTION("endpoint port out of range") {
    rs.endpoints.at(kCluster)
        .mutable_endpoints(0)
        ->mutable_lb_endpoints(0)
        ->mutable_endpoint()
        ->mutable_address()
        ->mutable_socket_address()
        ->set_port_value(70000);
    CHECK(ErrorOf(rs) == "endpoints \"" + kCluster +
                             "\": endpoints[0].lb_endpoints[0].endpoint.address.socket_address."
                             "port_value: 70000 is not a port (0-65535)");
  }
  SECTION("endpoint weight 0") {
    rs.endpoints.at(kCluster)
        .mutable_endpoints(0)
        ->mutable_lb_endpoints(0)
        ->mutable_load_balancing_weight()
        ->set_value(0);
    CHECK(ErrorOf(rs) == "endpoints \"" + kCluster +
                             "\": endpoints[0].lb_endpoints[0].load_balancing_weight: must be at "
                             "least 1");
  }
  SECTION("EDS cluster without its ClusterLoadAssignment") {
    rs.endpoints.clear();
    CHECK(ErrorOf(rs) == "cluster \"" + kCluster +
                             "\": eds_cluster_config.service_name: no ClusterLoadAssignment \"" +
                             kCluster + "\"");
  }
  SECTION("ClusterLoadAssignment no cluster uses") {
    rs.Add(testing::Cla("outbound|1||orphan", "10.0.0.9", 1));
    CHECK(ErrorOf(rs) ==
          "endpoints \"outbound|1||orphan\": cluster_name: no EDS cluster uses this name");
  }
  SECTION("listener whose RDS name has no RouteConfiguration") {
    rs.routes.clear();
    CHECK(ErrorOf(rs) ==
          "listener \"0.0.0.0_8000\": rds.route_config_name: no "
          "RouteConfiguration \"8000\"");
  }
  SECTION("listener without address") {
    rs.listeners.at("0.0.0.0_8000").clear_address();
    CHECK(ErrorOf(rs) == "listener \"0.0.0.0_8000\": address: required");
  }
  SECTION("router filter not last") {
    auto& l = rs.listeners.at("0.0.0.0_8000");
    HCM hcm;
    REQUIRE(l.filter_chains(0).filters(0).typed_config().UnpackTo(&hcm));
    auto* extra = hcm.add_http_filters();
    extra->set_name("envoy.filters.http.fault");
    l.mutable_filter_chains(0)->mutable_filters(0)->mutable_typed_config()->PackFrom(hcm);
    CHECK(ErrorOf(rs) ==
          "listener \"0.0.0.0_8000\": filter_chains[0].filters[0].typed_config."
          "http_filters[0]: the router filter must be the last HTTP filter");
  }
  SECTION("two filter chains with the same match") {
    auto& l = rs.listeners.at("0.0.0.0_8000");
    *l.add_filter_chains() = l.filter_chains(0);
    CHECK(ErrorOf(rs) ==
          "listener \"0.0.0.0_8000\": filter_chains[1].filter_chain_match: same "
          "match as filter_chains[0]");
  }
  SECTION("weighted clusters adding up to 0") {
    auto* ra = rs.routes.at("8000").mutable_virtual_hosts(0)->mutable_routes(0)->mutable_route();
    auto* wc = ra->mutable_weighted_clusters();
    auto* a = wc->add_clusters();
    a->set_name(kCluster);
    a->mutable_weight()->set_value(0);
    CHECK(ErrorOf(rs) ==
          "route \"8000\": virtual_hosts[0].routes[0].route.weighted_clusters: "
          "the weights add up to 0");
  }
  SECTION("bad regex") {
    rs.routes.at("8000")
        .mutable_virtual_hosts(0)
        ->mutable_routes(0)
        ->mutable_match()
        ->mutable_safe_regex()
        ->set_regex("/(unclosed");
    CHECK(ErrorOf(rs) ==
          "route \"8000\": virtual_hosts[0].routes[0].match.safe_regex.regex: "
          "invalid regex \"/(unclosed\": missing ): /(unclosed");
  }
  SECTION("domain claimed by two virtual hosts") {
    auto& r = rs.routes.at("8000");
    auto* vh = r.add_virtual_hosts();
    vh->set_name("other");
    vh->add_domains(kHost);
    CHECK(ErrorOf(rs) == "route \"8000\": virtual_hosts[1].domains[0]: \"" + kHost +
                             "\" is already a domain of virtual host \"" + kHost + ":8000\"");
  }
  SECTION("direct response status out of range") {
    auto* route = rs.routes.at("8000").mutable_virtual_hosts(0)->mutable_routes(0);
    route->mutable_direct_response()->set_status(99);
    CHECK(ErrorOf(rs) ==
          "route \"8000\": virtual_hosts[0].routes[0].direct_response.status: 99 "
          "is not in [200, 600)");
  }
  SECTION("resource stored under another name") {
    auto c = rs.clusters.at(kCluster);
    rs.clusters.erase(kCluster);
    rs.clusters.emplace("wrong-key", c);
    CHECK(ErrorOf(rs) == "cluster \"" + kCluster + "\": stored under the name \"wrong-key\"");
  }
}

TEST_CASE("ConfigStore publishes valid snapshots with a per-type diff") {
  ConfigStore store;
  std::vector<config::Diff> seen;
  std::vector<uint64_t> generations;
  store.Subscribe([&](const config::SnapshotPtr& s, const config::Diff& d) {
    seen.push_back(d);
    generations.push_back(s->generation);
  });
  CHECK(store.Current()->size() == 0);

  auto first = store.Apply(Snapshot::FromResourceSet(testing::HttpbinSet(2)));
  REQUIRE(first);
  CHECK(first->clusters.added == std::vector<std::string>{kCluster});
  CHECK(first->listeners.added == std::vector<std::string>{"0.0.0.0_8000"});
  CHECK(store.Current()->generation == 1);

  SECTION("an endpoint-only update changes only endpoints and keeps other resources shared") {
    auto before = store.Current();
    Snapshot next = *before;  // shares every resource pointer
    next.endpoints[kCluster] =
        std::make_shared<const envoy::config::endpoint::v3::ClusterLoadAssignment>(
            testing::Cla(kCluster, "10.0.0.1", 9000, 3));
    auto d = store.Apply(std::move(next));
    REQUIRE(d);
    CHECK(d->endpoints.changed == std::vector<std::string>{kCluster});
    CHECK(d->clusters.empty());
    CHECK(d->listeners.empty());
    CHECK(d->routes.empty());
    CHECK(store.Current()->generation == 2);
    CHECK(store.Current()->clusters.at(kCluster) == before->clusters.at(kCluster));
    CHECK(before->endpoints.at(kCluster)->endpoints(0).lb_endpoints_size() == 2);  // immutable
  }
  SECTION("an invalid candidate is refused and the snapshot in force stays") {
    auto before = store.Current();
    auto bad = testing::HttpbinSet(5);
    bad.clusters.at(kCluster).set_lb_policy(Cluster::CLUSTER_PROVIDED);
    auto d = store.Apply(Snapshot::FromResourceSet(bad));
    REQUIRE_FALSE(d);
    CHECK(d.error().message.starts_with("cluster \"" + kCluster + "\": lb_policy:"));
    CHECK(store.Current() == before);
    CHECK(store.Current()->endpoints.at(kCluster)->endpoints(0).lb_endpoints_size() == 2);
    CHECK(seen.size() == 1);
  }
  SECTION("resources with unchanged content keep their object across a full resend") {
    auto before = store.Current();
    auto rs = testing::HttpbinSet(2);
    rs.routes.at("8000").mutable_virtual_hosts(0)->add_domains("httpbin");
    auto d = store.Apply(Snapshot::FromResourceSet(rs));  // every resource a new object
    REQUIRE(d);
    CHECK(d->routes.changed == std::vector<std::string>{"8000"});
    CHECK(d->clusters.empty());
    CHECK(store.Current()->clusters.at(kCluster) == before->clusters.at(kCluster));
    CHECK(store.Current()->listeners.at("0.0.0.0_8000") == before->listeners.at("0.0.0.0_8000"));
    CHECK(store.Current()->routes.at("8000") != before->routes.at("8000"));
  }
  SECTION("identical content publishes nothing") {
    auto d = store.Apply(Snapshot::FromResourceSet(testing::HttpbinSet(2)));
    REQUIRE(d);
    CHECK(d->empty());
    CHECK(store.Current()->generation == 1);
    CHECK(seen.size() == 1);
  }
  SECTION("removal is reported per type") {
    auto d = store.Apply(Snapshot{});
    REQUIRE(d);
    CHECK(d->clusters.removed == std::vector<std::string>{kCluster});
    CHECK(d->endpoints.removed == std::vector<std::string>{kCluster});
    CHECK(d->listeners.removed == std::vector<std::string>{"0.0.0.0_8000"});
    CHECK(d->routes.removed == std::vector<std::string>{"8000"});
    CHECK(generations == std::vector<uint64_t>{1, 2});
  }
}

TEST_CASE("ConfigStore::Edit applies a change at the cost of the change, with the same checks") {
  using CLA = envoy::config::endpoint::v3::ClusterLoadAssignment;
  ConfigStore store;
  std::vector<config::Diff> seen;
  store.Subscribe([&](const config::SnapshotPtr&, const config::Diff& d) { seen.push_back(d); });
  REQUIRE(store.Apply(Snapshot::FromResourceSet(testing::HttpbinSet(2))));
  auto before = store.Current();

  SECTION("an endpoint put changes only that resource, every other object is shared") {
    config::SnapshotEdit e;
    e.endpoints[kCluster] =
        std::make_shared<const CLA>(testing::Cla(kCluster, "10.0.0.1", 9000, 3));
    e.versions["eds"] = "v2";
    auto d = store.Edit(std::move(e));
    REQUIRE(d);
    CHECK(d->endpoints.changed == std::vector<std::string>{kCluster});
    CHECK(d->clusters.empty());
    CHECK(d->listeners.empty());
    CHECK(store.Current()->generation == 2);
    CHECK(store.Current()->versions.at("eds") == "v2");
    CHECK(store.Current()->clusters.at(kCluster) == before->clusters.at(kCluster));
    CHECK(store.Current()->routes.at("8000") == before->routes.at("8000"));
    CHECK(store.Current()->endpoints.at(kCluster)->endpoints(0).lb_endpoints_size() == 3);
  }
  SECTION("a put equal to the resource in force is no change and publishes nothing") {
    config::SnapshotEdit e;
    e.endpoints[kCluster] = std::make_shared<const CLA>(*before->endpoints.at(kCluster));
    auto d = store.Edit(std::move(e));
    REQUIRE(d);
    CHECK(d->empty());
    CHECK(seen.size() == 1);
    CHECK(store.Current() == before);
  }
  SECTION("an invalid put is refused by name and the snapshot in force stays") {
    config::SnapshotEdit e;
    auto c = std::make_shared<Cluster>(*before->clusters.at(kCluster));
    c->set_lb_policy(Cluster::CLUSTER_PROVIDED);
    e.clusters[kCluster] = c;
    auto d = store.Edit(std::move(e));
    REQUIRE_FALSE(d);
    CHECK(d.error().message.starts_with("cluster \"" + kCluster + "\": lb_policy:"));
    CHECK(store.Current() == before);
  }
  SECTION("removing endpoints a cluster still uses is refused, naming the cluster") {
    config::SnapshotEdit e;
    e.removed_endpoints = {kCluster};
    auto d = store.Edit(std::move(e));
    REQUIRE_FALSE(d);
    CHECK(d.error().message == "cluster \"" + kCluster +
                                   "\": eds_cluster_config.service_name: no "
                                   "ClusterLoadAssignment \"" +
                                   kCluster + "\"");
    CHECK(store.Current() == before);
  }
  SECTION("removing a cluster alone leaves its endpoints unused, which is refused") {
    config::SnapshotEdit e;
    e.removed_clusters = {kCluster};
    auto d = store.Edit(std::move(e));
    REQUIRE_FALSE(d);
    CHECK(d.error().message ==
          "endpoints \"" + kCluster + "\": cluster_name: no EDS cluster uses this name");
  }
  SECTION("a cluster and its endpoints removed together go, reported per type") {
    config::SnapshotEdit e;
    e.removed_clusters = {kCluster};
    e.removed_endpoints = {kCluster};
    auto d = store.Edit(std::move(e));
    REQUIRE(d);
    CHECK(d->clusters.removed == std::vector<std::string>{kCluster});
    CHECK(d->endpoints.removed == std::vector<std::string>{kCluster});
    CHECK_FALSE(store.Current()->clusters.contains(kCluster));
  }
  SECTION("a route removed while a listener asks for it is refused, naming the listener") {
    config::SnapshotEdit e;
    e.removed_routes = {"8000"};
    auto d = store.Edit(std::move(e));
    REQUIRE_FALSE(d);
    CHECK(d.error().message ==
          "listener \"0.0.0.0_8000\": rds.route_config_name: no RouteConfiguration \"8000\"");
  }
  SECTION("a name both put and removed is an error") {
    config::SnapshotEdit e;
    e.endpoints[kCluster] = before->endpoints.at(kCluster);
    e.removed_endpoints = {kCluster};
    auto d = store.Edit(std::move(e));
    REQUIRE_FALSE(d);
    CHECK(d.error().message ==
          "endpoints \"" + kCluster + "\": both updated and removed in one change");
  }
}

TEST_CASE("Resources behaves as an ordered map, and copies share every chunk not written") {
  using R = config::Resources<std::string>;
  std::map<std::string, std::shared_ptr<const std::string>> model;
  R r;
  std::mt19937 rng(7);
  auto key = [&] { return fmt::format("k{:05}", rng() % 3000); };
  for (int i = 0; i < 20000; ++i) {
    const std::string k = key();
    switch (rng() % 4) {
      case 0:
      case 1: {
        auto v = std::make_shared<const std::string>(std::to_string(i));
        CHECK(r.insert_or_assign(k, v) == !model.contains(k));
        model.insert_or_assign(k, v);
        break;
      }
      case 2:
        CHECK(r.erase(k) == model.erase(k));
        break;
      case 3:
        CHECK(r.contains(k) == model.contains(k));
        if (model.contains(k))
          CHECK(r.at(k) == model.at(k));
        break;
    }
  }
  REQUIRE(r.size() == model.size());
  CHECK(r.ToMap() == model);  // every entry, in order
  CHECK(std::ranges::equal(r, model));
  CHECK_THROWS_AS(r.at("absent"), std::out_of_range);

  // A copy shares everything; one write copies one chunk, and the original stays.
  R copy = r;
  REQUIRE(r.Chunks() > 10);
  CHECK(copy.SharedChunks(r) == r.Chunks());
  const std::string some = r.begin()->first;
  copy.insert_or_assign(some, std::make_shared<const std::string>("new"));
  CHECK(copy.SharedChunks(r) == r.Chunks() - 1);
  CHECK(*copy.at(some) == "new");
  CHECK(r.at(some) == model.at(some));
  copy[some] = std::make_shared<const std::string>("newer");
  CHECK(*copy.at(some) == "newer");
  CHECK(copy.EraseIf([](const auto& kv) { return kv.first < "k01000"; }) > 0);
  CHECK(copy.begin()->first >= "k01000");
  CHECK(r.ToMap() == model);
}

TEST_CASE("SDS secrets in snapshots: diffed, edited, validated by name, named by listeners",
          "[config][sds]") {
  using Secret = envoy::extensions::transport_sockets::tls::v3::Secret;
  auto cert = [](const std::string& name, const std::string& pem) {
    Secret s;
    s.set_name(name);
    s.mutable_tls_certificate()->mutable_certificate_chain()->set_inline_bytes(pem);
    s.mutable_tls_certificate()->mutable_private_key()->set_inline_bytes("KEY");
    return s;
  };
  sluice::xds::ResourceSet rs = testing::HttpbinSet(1);
  rs.Add(cert("kubernetes://a", "A"));
  ConfigStore store;
  auto d = store.Apply(Snapshot::FromResourceSet(rs));
  REQUIRE(d);
  CHECK(d->secrets.added == std::vector<std::string>{"kubernetes://a"});
  CHECK(store.Current()->ToResourceSet().secrets.size() == 1);

  // An edit: one secret rotated, one added; the diff names them, nothing else.
  config::SnapshotEdit e;
  e.secrets["kubernetes://a"] = std::make_shared<const Secret>(cert("kubernetes://a", "A2"));
  e.secrets["kubernetes://b"] = std::make_shared<const Secret>(cert("kubernetes://b", "B"));
  d = store.Edit(std::move(e));
  REQUIRE(d);
  CHECK(d->secrets.changed == std::vector<std::string>{"kubernetes://a"});
  CHECK(d->secrets.added == std::vector<std::string>{"kubernetes://b"});
  CHECK(d->clusters.empty());
  CHECK(d->listeners.empty());
  config::SnapshotEdit rm;
  rm.removed_secrets = {"kubernetes://b"};
  d = store.Edit(std::move(rm));
  REQUIRE(d);
  CHECK(d->secrets.removed == std::vector<std::string>{"kubernetes://b"});

  // What the agent cannot use is refused, naming the secret and the field.
  Secret file = cert("kubernetes://f", "");
  file.mutable_tls_certificate()->mutable_private_key()->set_filename("/etc/key.pem");
  config::SnapshotEdit bad;
  bad.secrets["kubernetes://f"] = std::make_shared<const Secret>(file);
  auto refused = store.Edit(std::move(bad));
  REQUIRE_FALSE(refused);
  CHECK(refused.error().message ==
        "secret \"kubernetes://f\": tls_certificate.private_key: only inline_bytes and "
        "inline_string are served");
  Secret empty;
  empty.set_name("kubernetes://e");
  CHECK(
      config::ValidateSecret(empty).error().message ==
      "secret \"kubernetes://e\": type: one of tls_certificate or validation_context must be set");

  // The names a listener's TLS contexts ask for, once each.
  auto l = testing::HttpListener("0.0.0.0_443", 443, "https");
  envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext ctx;
  auto* common = ctx.mutable_common_tls_context();
  common->add_tls_certificate_sds_secret_configs()->set_name("kubernetes://a");
  common->mutable_combined_validation_context()
      ->mutable_validation_context_sds_secret_config()
      ->set_name("kubernetes://a-cacert");
  l.mutable_filter_chains(0)->mutable_transport_socket()->mutable_typed_config()->PackFrom(ctx);
  *l.add_filter_chains() = l.filter_chains(0);
  CHECK(config::SdsNames(l) == std::vector<std::string>{"kubernetes://a", "kubernetes://a-cacert"});
}
