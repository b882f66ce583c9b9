// A known mix of traffic through a real proxy that keeps Istio's metrics (istio_stats.h),
// shared by istio_stats_test.cc and the scrape tool the Prometheus parser test runs
// (istio_stats_scrape.cc): an outbound HTTP listener to a cluster of two workloads
// (reviews-v1, reviews-v2, each endpoint with istiod's istio.workload metadata, the
// cluster with istiod's istio.services), a route with no cluster, an inbound listener
// (original_dst, no hand-over: the pod's inbound side) and a TCP proxy. Each chain
// carries istiod's istio.stats filter (as istiod puts it on every sidecar chain), with
// the PluginConfig a test gives, or none.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "harness.h"
#include "sluice/proxy/istio_stats.h"
#include "test_upstream.h"

namespace sluice::testing {

inline Json IstioEndpoint(uint16_t port, const std::string& workload) {
  return {{"endpoint",
           {{"address", {{"socket_address", {{"address", "127.0.0.1"}, {"port_value", port}}}}}}},
          {"metadata", {{"filter_metadata", {{"istio", {{"workload", workload}}}}}}}};
}

inline Json IstioCluster(const std::string& name, const Json& lb_endpoints,
                         const std::string& service) {
  return {
      {"name", name},
      {"type", "STATIC"},
      {"connect_timeout", "1s"},
      {"lb_policy", "ROUND_ROBIN"},
      {"metadata",
       {{"filter_metadata",
         {{"istio",
           {{"services", Json::array({{{"host", service + ".default.svc.cluster.local"},
                                       {"name", service},
                                       {"namespace", "default"}}})}}}}}}},
      {"load_assignment",
       {{"cluster_name", name}, {"endpoints", Json::array({{{"lb_endpoints", lb_endpoints}}})}}}};
}

// istiod's istio.stats filter: a stats.PluginConfig (its fields as proto3 JSON).
inline Json IstioStatsFilter(const Json& plugin_config = Json::object()) {
  Json tc = plugin_config;
  tc["@type"] = "type.googleapis.com/stats.PluginConfig";
  return {{"name", "istio.stats"}, {"typed_config", tc}};
}

// The istio.stats filter of each of the mix's listeners; nullopt: the chain has none.
struct IstioMixStats {
  std::optional<Json> outbound = Json::object(), inbound = Json::object(), tcp = Json::object();
};

struct IstioMix {
  std::unique_ptr<TestUpstream> v1, v2, ratings;
  std::shared_ptr<proxy::telemetry::PeerDirectory> peers =
      std::make_shared<proxy::telemetry::PeerDirectory>();
  std::shared_ptr<proxy::telemetry::IstioStats> stats;
  std::unique_ptr<RunningProxy> proxy;
  // What the client sent and received over the TCP proxy.
  std::size_t tcp_sent = 0, tcp_received = 0;
};

// Starts it all; the pod is productpage-v1-6f9c7d8b5d-x2k4p (default) with app/version
// labels. 127.0.0.1 (every peer here) is registered as a pod of the node, ratings-v1.
inline std::unique_ptr<IstioMix> StartIstioMix(const IstioMixStats& filters = {}) {
  namespace ist = proxy::telemetry;
  auto m = std::make_unique<IstioMix>();
  m->v1 = std::make_unique<TestUpstream>(TestUpstream::Options{.name = "v1"});
  m->v2 = std::make_unique<TestUpstream>(TestUpstream::Options{.name = "v2"});
  m->ratings = std::make_unique<TestUpstream>(TestUpstream::Options{.name = "ratings"});
  const ist::Workload* self = ist::Intern(ist::PodWorkload(
      "default", "productpage-v1-6f9c7d8b5d-x2k4p",
      {{"app", "productpage"}, {"version", "v1"}, {"pod-template-hash", "6f9c7d8b5d"}}));
  m->stats = std::make_shared<ist::IstioStats>(self, m->peers);
  auto loopback = IpAddress::Parse("127.0.0.1");
  m->peers->Set(*loopback,
                ist::Intern(ist::PodWorkload(
                    "default", "ratings-v1-5d8f9c7b6-qq7zt",
                    {{"app", "ratings"}, {"version", "v1"}, {"pod-template-hash", "5d8f9c7b6"}})));
  Json routes = Json::array(
      {{{"match", {{"prefix", "/nocluster"}}}, {"route", {{"cluster", "missing"}}}},
       {{"match", {{"prefix", "/v1"}}}, {"route", {{"cluster", "outbound|9080|v1|reviews"}}}},
       {{"match", {{"prefix", "/"}}}, {"route", {{"cluster", "outbound|9080|v2|reviews"}}}}});
  auto http_filters = [](const std::optional<Json>& cfg) {
    return cfg ? Json::array({IstioStatsFilter(*cfg)}) : Json::array();
  };
  Json inbound =
      HttpListener("inbound",
                   RouteConfig("in", Json::array({{{"match", {{"prefix", "/"}}},
                                                   {"route", {{"cluster", "inbound|9080||"}}}}})),
                   true, http_filters(filters.inbound));
  inbound["listener_filters"] =
      Json::array({{{"name", "envoy.filters.listener.original_dst"},
                    {"typed_config",
                     {{"@type",
                       "type.googleapis.com/"
                       "envoy.extensions.filters.listener.original_dst.v3.OriginalDst"}}}}});
  Json tcp_filters = http_filters(filters.tcp);
  tcp_filters.push_back(
      {{"name", "envoy.filters.network.tcp_proxy"},
       {"typed_config",
        {{"@type", "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"},
         {"stat_prefix", "tcp"},
         {"cluster", "outbound|9080||ratings"}}}});
  Json tcp = Listener("tcp", Json::array({{{"filters", tcp_filters}}}));
  Json doc = {
      {"listeners", Json::array({HttpListener("http", RouteConfig("rc", routes), true,
                                              http_filters(filters.outbound)),
                                 inbound, tcp})},
      {"clusters",
       Json::array(
           {IstioCluster("outbound|9080|v1|reviews",
                         Json::array({IstioEndpoint(m->v1->port(),
                                                    "reviews-v1;default;reviews;v1;Kubernetes")}),
                         "reviews"),
            IstioCluster("outbound|9080|v2|reviews",
                         Json::array({IstioEndpoint(m->v2->port(),
                                                    "reviews-v2;default;reviews;v2;Kubernetes")}),
                         "reviews"),
            // istiod's inbound clusters carry no istio.services.
            StaticCluster("inbound|9080||", {m->v1->port()}),
            IstioCluster("outbound|9080||ratings",
                         Json::array({IstioEndpoint(m->ratings->port(),
                                                    "ratings-v1;default;ratings;v1;Kubernetes")}),
                         "ratings")})}};
  proxy::ProxyOptions o;
  o.istio_stats = m->stats;
  o.original_dst = [](int, int) { return std::optional<sockaddr_storage>(); };
  m->proxy = StartProxy(doc, 1, o);
  return m;
}

// The mix: 7 × 200 and 3 × 404 (the upstream's) to reviews-v2, 2 × 503 to reviews-v1,
// one request whose route names no known cluster (503 NC), 4 × 200 on the inbound side,
// and one HTTP request over the TCP proxy.
inline void RunIstioMix(IstioMix& m) {
  const uint16_t http = m.proxy->Port("http");
  Client c(http);
  for (int i = 0; i < 7; ++i)
    c.Request("GET /ok HTTP/1.1\r\nhost: reviews\r\n\r\n");
  for (int i = 0; i < 3; ++i)
    c.Request("GET /missing HTTP/1.1\r\nhost: reviews\r\nx-status: 404\r\n\r\n");
  for (int i = 0; i < 2; ++i)
    c.Request("GET /v1 HTTP/1.1\r\nhost: reviews\r\nx-status: 503\r\n\r\n");
  c.Request("GET /nocluster HTTP/1.1\r\nhost: reviews\r\n\r\n");
  Client in(m.proxy->Port("inbound"));
  for (int i = 0; i < 4; ++i)
    in.Request("GET /in HTTP/1.1\r\nhost: reviews:9080\r\n\r\n");
  const std::string req = "GET /tcp HTTP/1.1\r\nhost: ratings\r\nconnection: close\r\n\r\n";
  Resp r = SendRaw(m.proxy->Port("tcp"), req);
  m.tcp_sent = req.size();
  m.tcp_received = r.raw_head.size() + r.body.size();
}

}  // namespace sluice::testing
