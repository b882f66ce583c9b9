// Small, valid Envoy resource sets shaped like istiod's output for a sidecar, used by the
// config model and xDS tests. Tests break one field at a time from these.
#pragma once

#include <string>

#include "envoy/extensions/filters/http/router/v3/router.pb.h"
#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb.h"
#include "sluice/envoy/resource_set.h"

namespace sluice::testing {

inline std::string ClusterName(const std::string& host, int port, const std::string& subset = "") {
  return "outbound|" + std::to_string(port) + "|" + subset + "|" + host;
}

inline envoy::config::cluster::v3::Cluster EdsCluster(const std::string& name) {
  envoy::config::cluster::v3::Cluster c;
  c.set_name(name);
  c.set_type(envoy::config::cluster::v3::Cluster::EDS);
  c.mutable_eds_cluster_config()->set_service_name(name);
  c.mutable_eds_cluster_config()->mutable_eds_config()->mutable_ads();
  c.mutable_connect_timeout()->set_seconds(10);
  c.set_lb_policy(envoy::config::cluster::v3::Cluster::LEAST_REQUEST);
  return c;
}

inline envoy::config::endpoint::v3::ClusterLoadAssignment Cla(const std::string& name,
                                                              const std::string& ip, int port,
                                                              int count = 1) {
  envoy::config::endpoint::v3::ClusterLoadAssignment cla;
  cla.set_cluster_name(name);
  auto* loc = cla.add_endpoints();
  for (int i = 0; i < count; ++i) {
    auto* sa =
        loc->add_lb_endpoints()->mutable_endpoint()->mutable_address()->mutable_socket_address();
    sa->set_address(ip);
    sa->set_port_value(static_cast<uint32_t>(port + i));
  }
  return cla;
}

inline envoy::config::listener::v3::Listener HttpListener(const std::string& name, int port,
                                                          const std::string& rds) {
  using HCM =
      envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
  envoy::config::listener::v3::Listener l;
  l.set_name(name);
  auto* sa = l.mutable_address()->mutable_socket_address();
  sa->set_address("0.0.0.0");
  sa->set_port_value(static_cast<uint32_t>(port));
  HCM hcm;
  hcm.set_stat_prefix("outbound_" + name);
  hcm.mutable_rds()->set_route_config_name(rds);
  hcm.mutable_rds()->mutable_config_source()->mutable_ads();
  auto* router = hcm.add_http_filters();
  router->set_name("envoy.filters.http.router");
  router->mutable_typed_config()->PackFrom(envoy::extensions::filters::http::router::v3::Router());
  auto* f = l.add_filter_chains()->add_filters();
  f->set_name("envoy.filters.network.http_connection_manager");
  f->mutable_typed_config()->PackFrom(hcm);
  return l;
}

inline envoy::config::route::v3::RouteConfiguration RouteTo(const std::string& name,
                                                            const std::string& host,
                                                            const std::string& cluster) {
  envoy::config::route::v3::RouteConfiguration r;
  r.set_name(name);
  auto* vh = r.add_virtual_hosts();
  vh->set_name(host + ":" + name);
  vh->add_domains(host);
  auto* route = vh->add_routes();
  route->mutable_match()->set_prefix("/");
  route->mutable_route()->set_cluster(cluster);
  return r;
}

// One HTTP service (httpbin:8000) with `endpoints` endpoints from 10.0.0.1:9000 up.
inline xds::ResourceSet HttpbinSet(int endpoints = 1) {
  xds::ResourceSet rs;
  const std::string host = "httpbin.default.svc.cluster.local";
  const std::string cn = ClusterName(host, 8000);
  rs.Add(EdsCluster(cn));
  rs.Add(Cla(cn, "10.0.0.1", 9000, endpoints));
  rs.Add(HttpListener("0.0.0.0_8000", 8000, "8000"));
  rs.Add(RouteTo("8000", host, cn));
  return rs;
}

}  // namespace sluice::testing
