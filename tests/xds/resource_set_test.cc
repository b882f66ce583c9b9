#include "sluice/envoy/resource_set.h"

#include <catch2/catch.hpp>

#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb.h"

using sluice::xds::ResourceSet;

TEST_CASE("ResourceSet keys each resource by its own name") {
  ResourceSet rs;
  envoy::config::cluster::v3::Cluster c;
  c.set_name("outbound|8000||httpbin.default.svc.cluster.local");
  rs.Add(c);
  envoy::config::endpoint::v3::ClusterLoadAssignment cla;
  cla.set_cluster_name(c.name());
  rs.Add(cla);
  envoy::config::listener::v3::Listener l;
  l.set_name("0.0.0.0_8000");
  rs.Add(l);
  envoy::config::route::v3::RouteConfiguration r;
  r.set_name("8000");
  rs.Add(r);
  CHECK(rs.size() == 4);
  CHECK(rs.clusters.count("outbound|8000||httpbin.default.svc.cluster.local") == 1);
  CHECK(rs.endpoints.count("outbound|8000||httpbin.default.svc.cluster.local") == 1);
  CHECK(rs.listeners.count("0.0.0.0_8000") == 1);
  CHECK(rs.routes.count("8000") == 1);
  // Adding again under the same name replaces, never duplicates.
  c.mutable_connect_timeout()->set_seconds(3);
  rs.Add(c);
  CHECK(rs.clusters.size() == 1);
  CHECK(rs.clusters.begin()->second.connect_timeout().seconds() == 3);
}

TEST_CASE("Envoy protos round-trip through Any with their real type URLs") {
  envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager hcm;
  hcm.set_stat_prefix("outbound_0.0.0.0_8000");
  hcm.mutable_rds()->set_route_config_name("8000");
  google::protobuf::Any any;
  any.PackFrom(hcm);
  CHECK(any.type_url() ==
        "type.googleapis.com/"
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager");
  envoy::config::cluster::v3::Cluster c;
  any.PackFrom(c);
  CHECK(any.type_url() == sluice::xds::kClusterType);
}
