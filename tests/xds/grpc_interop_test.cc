// Interop: a standard xDS client -- gRPC's own (@grpc/grpc-js-xds, run with node) --
// consumes Sluice's ADS server and routes a real RPC by what it was served.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>
#include <catch2/catch.hpp>

#include <cstdio>
#include <mutex>

#include "envoy/extensions/filters/http/router/v3/router.pb.h"
#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb.h"
#include "sluice/xds/ads_server.h"

namespace sx = sluice::xds;
using Kind = sx::AdsServerEvent::Kind;

namespace {

// A loopback port that was free a moment ago (the node backend binds it).
int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  socklen_t len = sizeof a;
  REQUIRE(getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  close(fd);
  return ntohs(a.sin_port);
}

// What a gRPC xDS client needs: an API listener named after the target, its route
// configuration, an EDS cluster and its endpoints.
sx::ResourceSet GrpcSet(int backend_port) {
  using HCM =
      envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
  const std::string cluster = "outbound|50051||echo.test";
  sx::ResourceSet rs;
  envoy::config::listener::v3::Listener l;
  l.set_name("echo.test");
  HCM hcm;
  hcm.set_stat_prefix("echo");
  hcm.mutable_rds()->set_route_config_name("echo-route");
  hcm.mutable_rds()->mutable_config_source()->mutable_ads();
  auto* router = hcm.add_http_filters();
  router->set_name("envoy.filters.http.router");
  router->mutable_typed_config()->PackFrom(envoy::extensions::filters::http::router::v3::Router());
  l.mutable_api_listener()->mutable_api_listener()->PackFrom(hcm);
  rs.Add(l);

  envoy::config::route::v3::RouteConfiguration r;
  r.set_name("echo-route");
  auto* vh = r.add_virtual_hosts();
  vh->set_name("echo");
  vh->add_domains("echo.test");
  auto* route = vh->add_routes();
  route->mutable_match()->set_prefix("");
  route->mutable_route()->set_cluster(cluster);
  rs.Add(r);

  envoy::config::cluster::v3::Cluster c;
  c.set_name(cluster);
  c.set_type(envoy::config::cluster::v3::Cluster::EDS);
  c.mutable_eds_cluster_config()->mutable_eds_config()->mutable_ads();
  c.set_lb_policy(envoy::config::cluster::v3::Cluster::ROUND_ROBIN);
  rs.Add(c);

  envoy::config::endpoint::v3::ClusterLoadAssignment cla;
  cla.set_cluster_name(cluster);
  auto* loc = cla.add_endpoints();
  // gRPC wants a locality with a weight (it drops unweighted ones).
  loc->mutable_locality()->set_region("local");
  loc->mutable_load_balancing_weight()->set_value(1);
  auto* sa =
      loc->add_lb_endpoints()->mutable_endpoint()->mutable_address()->mutable_socket_address();
  sa->set_address("127.0.0.1");
  sa->set_port_value(static_cast<uint32_t>(backend_port));
  rs.Add(cla);
  return rs;
}

}  // namespace

TEST_CASE("gRPC's own xDS client resolves through Sluice's ADS server and makes an RPC") {
  const int backend = FreePort();
  std::mutex mu;
  std::vector<sx::AdsServerEvent> events;
  sx::AdsServer server([&](const envoy::config::core::v3::Node&) { return GrpcSet(backend); });
  server.OnEvent([&](const sx::AdsServerEvent& e) {
    std::lock_guard lock(mu);
    events.push_back(e);
  });
  auto port = server.Start({.address = "127.0.0.1:0"});
  REQUIRE(port);

  const std::string cmd = fmt::format(
      "NODE_PATH={} timeout 30 node {} {} {} sidecar~127.0.0.1~echo-client.default~default.svc."
      "cluster.local 2>&1",
      SLUICE_NODE_MODULES, SLUICE_GRPC_JS_CLIENT, *port, backend);
  std::string output;
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  char buf[512];
  while (fgets(buf, sizeof buf, p))
    output += buf;
  int status = pclose(p);
  server.Stop();
  INFO(output);
  CHECK(status == 0);
  CHECK(output.find("reply: pong") != std::string::npos);

  // It subscribed by name to each type (gRPC clients never use wildcards) and ACKed all.
  std::lock_guard lock(mu);
  std::set<std::string> acked;
  for (const auto& e : events) {
    if (e.kind == Kind::kAck)
      acked.insert(e.type_url);
    if (e.kind == Kind::kNack)
      FAIL_CHECK(e.type_url << " NACKed: " << e.error);
    if (e.kind == Kind::kRequest && e.type_url == sx::kListenerType) {
      CHECK(e.resource_names == std::vector<std::string>{"echo.test"});
    }
  }
  CHECK(acked.size() == 4);
}
