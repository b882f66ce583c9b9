// A second, independent xDS client: gRPC C++'s own xDS resolver (Debian 12's gRPC 1.51
// has it built in and registered; no call is needed) in `sluice-apps grpc-client
// --url xds:///…`, resolving through a Sluice ADS server to real grpc-echo servers, as
// Istio's proxyless gRPC clients do. The resources are hand-built here (the shape
// istiod's gRPC generator serves); tests of the real translator's output live with it.
#include <catch2/catch.hpp>

#include <fstream>
#include <mutex>
#include <set>
#include <string>

#include "envoy/extensions/filters/http/router/v3/router.pb.h"
#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb.h"
#include "process_util.h"
#include "sluice/xds/ads_server.h"

using namespace sluice::apps::testing;
namespace sx = sluice::xds;
using Kind = sx::AdsServerEvent::Kind;

namespace {

struct Run {
  int exit_code = -1;
  std::string out, err;
};

Run RunApps(const TempDir& dir, std::vector<std::string> args,
            const std::map<std::string, std::string>& env) {
  static int counter = 0;
  std::string tag = "xds-run-" + std::to_string(++counter);
  args.insert(args.begin(), AppsBin());
  Child child(std::move(args), dir / (tag + ".out"), dir / (tag + ".err"), env);
  Run r;
  r.exit_code = child.Wait(std::chrono::seconds(40));
  r.out = ReadFile(dir / (tag + ".out"));
  r.err = ReadFile(dir / (tag + ".err"));
  return r;
}

int CountOf(const std::string& text, const std::string& needle) {
  int n = 0;
  for (auto at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1))
    ++n;
  return n;
}

// istiod's shape for a proxyless client of echo.test:7070: an API listener named
// host:port whose HCM points at RDS "outbound|7070||echo.test"; the route splits by
// weight between one EDS cluster per version; each ClusterLoadAssignment has a locality
// (empty region, as istiod sends for an unlabelled node) with a weight.
sx::ResourceSet EchoSet(const std::vector<std::pair<std::string, int>>& versions_ports,
                        const std::vector<int>& weights) {
  using HCM =
      envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
  const std::string route_name = "outbound|7070||echo.test";
  sx::ResourceSet rs;
  envoy::config::listener::v3::Listener l;
  l.set_name("echo.test:7070");
  HCM hcm;
  hcm.set_stat_prefix(route_name);
  hcm.mutable_rds()->set_route_config_name(route_name);
  hcm.mutable_rds()->mutable_config_source()->mutable_ads();
  auto* router = hcm.add_http_filters();
  router->set_name("envoy.filters.http.router");
  router->mutable_typed_config()->PackFrom(envoy::extensions::filters::http::router::v3::Router());
  l.mutable_api_listener()->mutable_api_listener()->PackFrom(hcm);
  rs.Add(l);

  envoy::config::route::v3::RouteConfiguration r;
  r.set_name(route_name);
  auto* vh = r.add_virtual_hosts();
  vh->set_name("echo.test:7070");
  vh->add_domains("echo.test");
  vh->add_domains("echo.test:7070");
  auto* route = vh->add_routes();
  route->mutable_match()->set_prefix("");
  auto* wc = route->mutable_route()->mutable_weighted_clusters();
  for (std::size_t i = 0; i < versions_ports.size(); ++i) {
    const std::string cluster = "outbound|7070|" + versions_ports[i].first + "|echo.test";
    auto* c = wc->add_clusters();
    c->set_name(cluster);
    c->mutable_weight()->set_value(static_cast<uint32_t>(weights[i]));

    envoy::config::cluster::v3::Cluster cl;
    cl.set_name(cluster);
    cl.set_type(envoy::config::cluster::v3::Cluster::EDS);
    cl.mutable_eds_cluster_config()->set_service_name(cluster);
    cl.mutable_eds_cluster_config()->mutable_eds_config()->mutable_ads();
    cl.set_lb_policy(envoy::config::cluster::v3::Cluster::ROUND_ROBIN);
    rs.Add(cl);

    envoy::config::endpoint::v3::ClusterLoadAssignment cla;
    cla.set_cluster_name(cluster);
    auto* loc = cla.add_endpoints();
    loc->mutable_locality()->set_region("");
    loc->mutable_load_balancing_weight()->set_value(1);
    auto* sa =
        loc->add_lb_endpoints()->mutable_endpoint()->mutable_address()->mutable_socket_address();
    sa->set_address("127.0.0.1");
    sa->set_port_value(static_cast<uint32_t>(versions_ports[i].second));
    rs.Add(cla);
  }
  rs.Add(r);
  return rs;
}

// A gRPC xDS bootstrap as Istio's grpc-agent writes one: the control plane, plaintext,
// xDS v3, and a node whose metadata says GENERATOR: grpc. (gRPC 1.51 speaks only v3 and
// does not need server_features ["xds_v3"]: this test passes without it too.)
std::string WriteBootstrap(const TempDir& dir, int ads_port, const std::string& node_id) {
  std::string path = dir / "bootstrap.json";
  std::ofstream(path) << R"({"xds_servers": [{"server_uri": "127.0.0.1:)" << ads_port
                      << R"(", "channel_creds": [{"type": "insecure"}],)"
                      << R"( "server_features": ["xds_v3"]}],)"
                      << R"( "node": {"id": ")" << node_id << R"(", "locality": {},)"
                      << R"( "metadata": {"GENERATOR": "grpc", "NAMESPACE": "default"}}})";
  return path;
}

}  // namespace

TEST_CASE("gRPC C++'s xDS resolver: grpc-client resolves xds:/// through Sluice's ADS server") {
  TempDir dir;
  AppServer v1(dir,
               {"grpc-echo", "--address", "127.0.0.1", "--grpc", "0", "--port", "0", "--tcp", "0",
                "--version", "v1"},
               {{"HOSTNAME", "echo-v1-pod"}}, 3);
  AppServer v2(dir,
               {"grpc-echo", "--address", "127.0.0.1", "--grpc", "0", "--port", "0", "--tcp", "0",
                "--version", "v2"},
               {{"HOSTNAME", "echo-v2-pod"}}, 3);

  std::mutex mu;
  std::vector<sx::AdsServerEvent> events;
  std::vector<envoy::config::core::v3::Node> nodes;
  const auto set = EchoSet({{"v1", v1.port("grpc")}, {"v2", v2.port("grpc")}}, {25, 75});
  sx::AdsServer ads([&](const envoy::config::core::v3::Node& n) {
    std::lock_guard lock(mu);
    nodes.push_back(n);
    return set;
  });
  ads.OnEvent([&](const sx::AdsServerEvent& e) {
    std::lock_guard lock(mu);
    events.push_back(e);
  });
  auto ads_port = ads.Start({.address = "127.0.0.1:0"});
  REQUIRE(ads_port);
  const std::string node_id = "sidecar~127.0.0.1~grpc-client.default~default.svc.cluster.local";
  const std::string bootstrap = WriteBootstrap(dir, *ads_port, node_id);

  Run r = RunApps(
      dir, {"grpc-client", "--url", "xds:///echo.test:7070", "--count", "100", "--timeout", "20s"},
      {{"GRPC_XDS_BOOTSTRAP", bootstrap}});
  INFO(r.out.substr(0, 3000) << r.err);
  REQUIRE(r.exit_code == 0);
  // Every reply came from one of the two servers, both were reached, and the split
  // follows the 25/75 weights (binomial: 25 expected, 99.99% within 8..45).
  int from_v1 = CountOf(r.out, "body] ServiceVersion=v1\n");
  int from_v2 = CountOf(r.out, "body] ServiceVersion=v2\n");
  CHECK(from_v1 + from_v2 == 100);
  CHECK(CountOf(r.out, "body] Hostname=echo-v1-pod\n") == from_v1);
  CHECK(from_v1 >= 8);
  CHECK(from_v1 <= 45);
  // The channel's authority is the target's host:port, as gRPC sets it for xds:///.
  CHECK(r.out.find("[0 body] Host=echo.test:7070\n") != std::string::npos);
  CHECK(r.err.find("All 100 requests succeeded") != std::string::npos);

  SECTION("grpc-echo's ForwardEcho resolves xds:/// through the server's own bootstrap") {
    AppServer fwd(dir,
                  {"grpc-echo", "--address", "127.0.0.1", "--grpc", "0", "--port", "0", "--tcp",
                   "0", "--version", "client"},
                  {{"GRPC_XDS_BOOTSTRAP", bootstrap}}, 3);
    // grpc-client itself has no bootstrap here: the pod it asks does the resolving.
    Run f =
        RunApps(dir,
                {"grpc-client", "--forward-via", "127.0.0.1:" + std::to_string(fwd.port("grpc")),
                 "--url", "xds:///echo.test:7070", "--count", "20", "--timeout", "20s"},
                {{"GRPC_XDS_BOOTSTRAP", ""}});
    INFO(f.out.substr(0, 2000) << f.err);
    CHECK(f.exit_code == 0);
    CHECK(CountOf(f.out, "body] ServiceVersion=v1\n") +
              CountOf(f.out, "body] ServiceVersion=v2\n") ==
          20);
    CHECK(f.out.find("ServiceVersion=client") == std::string::npos);
  }

  ads.Stop();
  std::lock_guard lock(mu);
  // The client identified itself as a proxyless gRPC node.
  REQUIRE_FALSE(nodes.empty());
  CHECK(nodes.front().id() == node_id);
  CHECK(nodes.front().metadata().fields().at("GENERATOR").string_value() == "grpc");
  // It asked for the API listener by its host:port name, and ACKed every type (no NACK).
  std::set<std::string> acked;
  bool asked_listener = false;
  for (const auto& e : events) {
    if (e.kind == Kind::kAck)
      acked.insert(e.type_url);
    if (e.kind == Kind::kNack)
      FAIL_CHECK(e.type_url << " NACKed: " << e.error);
    if (e.kind == Kind::kRequest && e.type_url == sx::kListenerType)
      asked_listener =
          asked_listener || e.resource_names == std::vector<std::string>{"echo.test:7070"};
  }
  CHECK(asked_listener);
  CHECK(acked == std::set<std::string>{std::string(sx::kListenerType), std::string(sx::kRouteType),
                                       std::string(sx::kClusterType),
                                       std::string(sx::kEndpointType)});
}
