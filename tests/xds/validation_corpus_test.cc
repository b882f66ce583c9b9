// A corpus of invalid Envoy resources, each broken in one field from a valid istiod-shaped
// set, with the exact message the config model (and so the client's NACK) gives.
#include <catch2/catch.hpp>
#include <functional>

#include "envoy/extensions/filters/http/fault/v3/fault.pb.h"
#include "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.pb.h"
#include "fixtures.h"
#include "sluice/config/validate.h"

namespace {

using envoy::config::cluster::v3::Cluster;
using HCM = envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
using TcpProxy = envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
using Fault = envoy::extensions::filters::http::fault::v3::HTTPFault;

const std::string kHost = "httpbin.default.svc.cluster.local";
const std::string kCluster = sluice::testing::ClusterName(kHost, 8000);
const std::string kListener = "0.0.0.0_8000";

struct Case {
  const char* what;
  std::function<void(sluice::xds::ResourceSet&)> breakit;
  std::string want;
};

envoy::config::listener::v3::Listener& L(sluice::xds::ResourceSet& rs) {
  return rs.listeners.at(kListener);
}
envoy::config::route::v3::Route& R(sluice::xds::ResourceSet& rs) {
  return *rs.routes.at("8000").mutable_virtual_hosts(0)->mutable_routes(0);
}
// Rewrites the listener's HTTP connection manager.
void EditHcm(sluice::xds::ResourceSet& rs, const std::function<void(HCM&)>& f) {
  auto* any = L(rs).mutable_filter_chains(0)->mutable_filters(0)->mutable_typed_config();
  HCM hcm;
  REQUIRE(any->UnpackTo(&hcm));
  f(hcm);
  any->PackFrom(hcm);
}
// Replaces the listener's only filter by a TcpProxy.
void UseTcpProxy(sluice::xds::ResourceSet& rs, const TcpProxy& tp) {
  auto* f = L(rs).mutable_filter_chains(0)->mutable_filters(0);
  f->set_name("envoy.filters.network.tcp_proxy");
  f->mutable_typed_config()->PackFrom(tp);
  rs.routes.clear();
}

const std::string kL = "listener \"0.0.0.0_8000\": ";
const std::string kR = "route \"8000\": ";
const std::string kC = "cluster \"" + kCluster + "\": ";
const std::string kHcmPath = "filter_chains[0].filters[0].typed_config";

std::vector<Case> Corpus() {
  return {
      {"cluster without a name",
       [](auto& rs) {
         auto c = sluice::testing::EdsCluster("");
         c.clear_eds_cluster_config();
         c.set_type(Cluster::STATIC);
         rs.clusters.emplace("", c);
       },
       "cluster (unnamed): name: must not be empty"},
      {"custom cluster type",
       [](auto& rs) {
         rs.clusters.at(kCluster).mutable_cluster_type()->set_name("envoy.clusters.aggregate");
       },
       kC + "cluster_type: custom cluster type \"envoy.clusters.aggregate\" is not supported"},
      {"EDS over a non-ADS config source",
       [](auto& rs) {
         rs.clusters.at(kCluster)
             .mutable_eds_cluster_config()
             ->mutable_eds_config()
             ->mutable_path_config_source()
             ->set_path("/x");
       },
       kC + "eds_cluster_config.eds_config: only ADS is supported"},
      {"ring hash minimum above maximum",
       [](auto& rs) {
         auto& c = rs.clusters.at(kCluster);
         c.set_lb_policy(Cluster::RING_HASH);
         c.mutable_ring_hash_lb_config()->mutable_minimum_ring_size()->set_value(2048);
         c.mutable_ring_hash_lb_config()->mutable_maximum_ring_size()->set_value(1024);
       },
       kC + "ring_hash_lb_config.minimum_ring_size: is larger than maximum_ring_size"},
      {"LOGICAL_DNS with two endpoints",
       [](auto& rs) {
         Cluster c;
         c.set_name("outbound|443||api.example.com");
         c.set_type(Cluster::LOGICAL_DNS);
         auto* loc = c.mutable_load_assignment()->add_endpoints();
         for (int i = 0; i < 2; ++i) {
           auto* sa = loc->add_lb_endpoints()
                          ->mutable_endpoint()
                          ->mutable_address()
                          ->mutable_socket_address();
           sa->set_address("api.example.com");
           sa->set_port_value(443);
         }
         rs.Add(c);
       },
       "cluster \"outbound|443||api.example.com\": load_assignment: a LOGICAL_DNS cluster needs "
       "exactly one endpoint, has 2"},
      {"named endpoint port",
       [](auto& rs) {
         rs.endpoints.at(kCluster)
             .mutable_endpoints(0)
             ->mutable_lb_endpoints(0)
             ->mutable_endpoint()
             ->mutable_address()
             ->mutable_socket_address()
             ->set_named_port("http");
       },
       "endpoints \"" + kCluster +
           "\": endpoints[0].lb_endpoints[0].endpoint.address.socket_address.named_port: named "
           "ports are not supported"},
      {"endpoint without an address",
       [](auto& rs) {
         rs.endpoints.at(kCluster)
             .mutable_endpoints(0)
             ->mutable_lb_endpoints(0)
             ->mutable_endpoint()
             ->clear_address();
       },
       "endpoints \"" + kCluster + "\": endpoints[0].lb_endpoints[0].endpoint.address: required"},
      {"locality weight 0",
       [](auto& rs) {
         rs.endpoints.at(kCluster).mutable_endpoints(0)->mutable_load_balancing_weight()->set_value(
             0);
       },
       "endpoints \"" + kCluster + "\": endpoints[0].load_balancing_weight: must be at least 1"},
      {"listener without filter chains", [](auto& rs) { L(rs).clear_filter_chains(); },
       kL + "filter_chains: at least one filter chain (or default_filter_chain) required"},
      {"network filter without typed_config",
       [](auto& rs) { L(rs).mutable_filter_chains(0)->mutable_filters(0)->clear_typed_config(); },
       kL + "filter_chains[0].filters[0].typed_config: required"},
      {"listener filter without a name", [](auto& rs) { L(rs).add_listener_filters(); },
       kL + "listener_filters[0].name: must not be empty"},
      {"HCM without stat_prefix",
       [](auto& rs) { EditHcm(rs, [](HCM& h) { h.clear_stat_prefix(); }); },
       kL + kHcmPath + ".stat_prefix: must not be empty"},
      {"HCM with scoped routes",
       [](auto& rs) { EditHcm(rs, [](HCM& h) { h.mutable_scoped_routes()->set_name("s"); }); },
       kL + kHcmPath + ".scoped_routes: scoped routes are not supported"},
      {"HCM RDS over a non-ADS config source",
       [](auto& rs) {
         EditHcm(rs, [](HCM& h) {
           h.mutable_rds()->mutable_config_source()->mutable_path_config_source()->set_path("/r");
         });
       },
       kL + kHcmPath + ".rds.config_source: only ADS is supported"},
      {"HTTP fault abort status out of range",
       [](auto& rs) {
         EditHcm(rs, [](HCM& h) {
           Fault fault;
           fault.mutable_abort()->set_http_status(700);
           auto* f = h.add_http_filters();
           f->set_name("envoy.filters.http.fault");
           f->mutable_typed_config()->PackFrom(fault);
           h.mutable_http_filters()->SwapElements(0, 1);  // router stays last
         });
       },
       kL + kHcmPath + ".http_filters[0].typed_config.abort.http_status: 700 is not in [200, 600)"},
      {"TcpProxy without a cluster",
       [](auto& rs) {
         TcpProxy tp;
         tp.set_stat_prefix("outbound|8000||" + kHost);
         UseTcpProxy(rs, tp);
       },
       kL + kHcmPath + ": cluster or weighted_clusters required"},
      {"TcpProxy weighted cluster of weight 0",
       [](auto& rs) {
         TcpProxy tp;
         tp.set_stat_prefix("s");
         auto* wc = tp.mutable_weighted_clusters()->add_clusters();
         wc->set_name(kCluster);
         wc->set_weight(0);
         UseTcpProxy(rs, tp);
       },
       kL + kHcmPath + ".weighted_clusters.clusters[0].weight: must be at least 1"},
      {"virtual host without domains",
       [](auto& rs) { rs.routes.at("8000").mutable_virtual_hosts(0)->clear_domains(); },
       kR + "virtual_hosts[0].domains: must not be empty"},
      {"wildcard in the middle of a domain",
       [](auto& rs) {
         rs.routes.at("8000").mutable_virtual_hosts(0)->add_domains("api.*.example.com");
       },
       kR + "virtual_hosts[0].domains[1]: \"api.*.example.com\": a wildcard must be a prefix or "
            "suffix"},
      {"two wildcards",
       [](auto& rs) { rs.routes.at("8000").mutable_virtual_hosts(0)->add_domains("*.example.*"); },
       kR + "virtual_hosts[0].domains[1]: \"*.example.*\": at most one wildcard"},
      {"route without a path matcher", [](auto& rs) { R(rs).mutable_match()->clear_prefix(); },
       kR + "virtual_hosts[0].routes[0].match: prefix, path or safe_regex required"},
      {"header matcher without a name", [](auto& rs) { R(rs).mutable_match()->add_headers(); },
       kR + "virtual_hosts[0].routes[0].match.headers[0].name: must not be empty"},
      {"route without an action", [](auto& rs) { R(rs).clear_route(); },
       kR + "virtual_hosts[0].routes[0]: route, redirect or direct_response required"},
      {"negative route timeout",
       [](auto& rs) { R(rs).mutable_route()->mutable_timeout()->set_seconds(-1); },
       kR + "virtual_hosts[0].routes[0].route.timeout: must not be negative"},
      {"mirror policy without a cluster",
       [](auto& rs) { R(rs).mutable_route()->add_request_mirror_policies(); },
       kR + "virtual_hosts[0].routes[0].route.request_mirror_policies[0].cluster: must not be "
            "empty"},
      {"weighted cluster without a name",
       [](auto& rs) {
         auto* wc = R(rs).mutable_route()->mutable_weighted_clusters();
         wc->add_clusters()->mutable_weight()->set_value(25);
       },
       kR + "virtual_hosts[0].routes[0].route.weighted_clusters.clusters[0].name: must not be "
            "empty"},
      {"per-route fault with a negative delay",
       [](auto& rs) {
         Fault fault;
         fault.mutable_delay()->mutable_fixed_delay()->set_seconds(-5);
         (*R(rs).mutable_typed_per_filter_config())["envoy.filters.http.fault"].PackFrom(fault);
       },
       kR + "virtual_hosts[0].routes[0].typed_per_filter_config[envoy.filters.http.fault].delay."
            "fixed_delay: must not be negative"},
  };
}

}  // namespace

TEST_CASE("invalid resource corpus: each case names its resource and field") {
  for (const auto& c : Corpus()) {
    auto rs = sluice::testing::HttpbinSet();
    c.breakit(rs);
    auto ok = sluice::config::ValidateSnapshot(sluice::config::Snapshot::FromResourceSet(rs));
    INFO(c.what);
    REQUIRE_FALSE(ok);
    CHECK(ok.error().message == c.want);
  }
}
