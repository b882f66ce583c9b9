// An istiod-shaped outbound configuration of any size, for the scale tests and
// benchmarks (tests/bench/xds_bench.cc, tests/proxy/compile_update_test.cc): N services,
// each one EDS cluster `outbound|PORT||svc-N.mesh.svc.cluster.local` and one virtual host
// (three names and a VIP) with one catch-all route and istiod's default retry policy,
// spread over kPorts listeners and RouteConfigurations; M endpoints in all.
#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <string>

#include "envoy/extensions/filters/http/router/v3/router.pb.h"
#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb.h"
#include "sluice/envoy/resource_set.h"

namespace sluice::testing::mesh {

inline constexpr int kPorts = 10;  // route configurations / listeners, as istiod's per-port RDS

inline std::string Host(int i) {
  return "svc-" + std::to_string(i) + ".mesh.svc.cluster.local";
}
inline int PortOf(int i) {
  return 8000 + i % kPorts;
}
inline std::string Vip(int i) {
  return fmt::format("10.{}.{}.{}", 96 + i / 65536, (i / 256) % 256, i % 256);
}
inline std::string ClusterOf(int i) {
  return "outbound|" + std::to_string(PortOf(i)) + "||" + Host(i);
}

inline envoy::config::endpoint::v3::ClusterLoadAssignment Endpoints(int svc, int count,
                                                                    uint32_t port) {
  envoy::config::endpoint::v3::ClusterLoadAssignment cla;
  cla.set_cluster_name(ClusterOf(svc));
  auto* loc = cla.add_endpoints();
  loc->mutable_locality()->set_region("mesh");
  for (int e = 0; e < count; ++e) {
    uint32_t ip = 0x0a000000u + static_cast<uint32_t>(svc) * 16u + static_cast<uint32_t>(e);
    auto* lbe = loc->add_lb_endpoints();
    auto* sa = lbe->mutable_endpoint()->mutable_address()->mutable_socket_address();
    sa->set_address(
        fmt::format("{}.{}.{}.{}", ip >> 24, (ip >> 16) & 255, (ip >> 8) & 255, ip & 255));
    sa->set_port_value(port);
    lbe->mutable_load_balancing_weight()->set_value(1);
  }
  return cla;
}

inline sluice::xds::ResourceSet Build(int services, int endpoints) {
  using HCM =
      envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
  sluice::xds::ResourceSet rs;
  for (int p = 0; p < kPorts; ++p) {
    const int port = 8000 + p;
    envoy::config::route::v3::RouteConfiguration r;
    r.set_name(std::to_string(port));
    rs.Add(std::move(r));
    envoy::config::listener::v3::Listener l;
    l.set_name("0.0.0.0_" + std::to_string(port));
    l.mutable_address()->mutable_socket_address()->set_address("0.0.0.0");
    l.mutable_address()->mutable_socket_address()->set_port_value(static_cast<uint32_t>(port));
    HCM hcm;
    hcm.set_stat_prefix("outbound_0.0.0.0_" + std::to_string(port));
    hcm.mutable_rds()->set_route_config_name(std::to_string(port));
    hcm.mutable_rds()->mutable_config_source()->mutable_ads();
    auto* router = hcm.add_http_filters();
    router->set_name("envoy.filters.http.router");
    router->mutable_typed_config()->PackFrom(
        envoy::extensions::filters::http::router::v3::Router());
    auto* f = l.add_filter_chains()->add_filters();
    f->set_name("envoy.filters.network.http_connection_manager");
    f->mutable_typed_config()->PackFrom(hcm);
    rs.Add(std::move(l));
  }
  for (int i = 0; i < services; ++i) {
    envoy::config::cluster::v3::Cluster c;
    c.set_name(ClusterOf(i));
    c.set_type(envoy::config::cluster::v3::Cluster::EDS);
    c.mutable_eds_cluster_config()->set_service_name(c.name());
    c.mutable_eds_cluster_config()->mutable_eds_config()->mutable_ads();
    c.mutable_connect_timeout()->set_seconds(10);
    c.set_lb_policy(envoy::config::cluster::v3::Cluster::LEAST_REQUEST);
    rs.Add(std::move(c));
    // Endpoints spread evenly; the remainder goes to the first services.
    int n = endpoints / services + (i < endpoints % services ? 1 : 0);
    rs.Add(Endpoints(i, n, 9000));
    auto* vh = rs.routes.at(std::to_string(PortOf(i))).add_virtual_hosts();
    vh->set_name(Host(i) + ":" + std::to_string(PortOf(i)));
    vh->add_domains(Host(i));
    vh->add_domains(Host(i) + ":" + std::to_string(PortOf(i)));
    vh->add_domains("svc-" + std::to_string(i));
    vh->add_domains(Vip(i));
    vh->add_domains(Vip(i) + ":" + std::to_string(PortOf(i)));
    auto* route = vh->add_routes();
    route->mutable_match()->set_prefix("/");
    auto* ra = route->mutable_route();
    ra->set_cluster(ClusterOf(i));
    ra->mutable_timeout()->set_seconds(0);
    // istiod's default policy: the kernel serves such a service.
    ra->mutable_retry_policy()->set_retry_on(
        "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes");
    ra->mutable_retry_policy()->mutable_num_retries()->set_value(2);
    ra->mutable_retry_policy()->add_retriable_status_codes(503);
  }
  return rs;
}

}  // namespace sluice::testing::mesh
