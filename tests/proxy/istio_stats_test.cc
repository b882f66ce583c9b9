// Istio's standard metrics in the proxy (istio_stats.h): the identities Istio derives
// from a pod and from istiod's metadata, the label values its stats filter reports, the
// series a known traffic mix leaves through a real proxy, the cardinality cap, and the
// Prometheus text. (tests/proxy/parse_istio_stats.py parses the same scrape with
// prometheus_client's parser.)
#include <catch2/catch.hpp>
#include <map>
#include <sstream>

#include "envoy/config/cluster/v3/cluster.pb.h"
#include "envoy/config/core/v3/base.pb.h"
#include "istio_traffic.h"

using namespace sluice::testing;
namespace ist = sluice::proxy::telemetry;

namespace {

// "name{labels} value" lines of one metric whose labels include every `want`.
std::vector<std::pair<std::string, double>> Find(
    const std::string& text, const std::string& metric,
    const std::vector<std::pair<std::string, std::string>>& want) {
  std::vector<std::pair<std::string, double>> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(metric + "{", 0) != 0)
      continue;
    bool all = true;
    for (const auto& [k, v] : want) {
      const std::string pair = k + "=\"" + v + "\"";
      all = all && (line.find("," + pair) != std::string::npos ||
                    line.find("{" + pair) != std::string::npos);
    }
    if (all)
      out.emplace_back(line, std::stod(line.substr(line.rfind(' ') + 1)));
  }
  return out;
}

double Sum(const std::vector<std::pair<std::string, double>>& v) {
  double s = 0;
  for (const auto& [l, x] : v)
    s += x;
  return s;
}

std::string Scrape(const ist::IstioStats& st) {
  std::vector<ist::Sample> s;
  st.Collect(&s);
  return ist::RenderPrometheus(s);
}

std::map<std::string, std::string> LabelMap(const ist::SeriesKey& k) {
  std::map<std::string, std::string> m;
  for (const auto& [n, v] : ist::Labels(k))
    m[std::string(n)] = v;
  return m;
}

}  // namespace

TEST_CASE("a pod's workload, canonical service and revision are derived as Istio derives them",
          "[istio_stats]") {
  // A Deployment's pod: the name before -<pod-template-hash>-.
  auto d = ist::PodWorkload(
      "default", "reviews-v2-7d79d5bd5d-8zzqd",
      {{"app", "reviews"}, {"version", "v2"}, {"pod-template-hash", "7d79d5bd5d"}});
  CHECK(d.name == "reviews-v2");
  CHECK(d.ns == "default");
  CHECK(d.app == "reviews");
  CHECK(d.version == "v2");
  CHECK(d.canonical_service == "reviews");
  CHECK(d.canonical_revision == "v2");
  CHECK(d.cluster == "Kubernetes");
  // A generated name without a template hash (the local cluster's Deployments, a Job, a
  // DaemonSet): the name before the generated suffix.
  CHECK(ist::PodWorkload("ns", "sleep-7xq2k", {}).name == "sleep");
  // A suffix that is not generated, a StatefulSet's ordinal: the pod's own name.
  CHECK(ist::PodWorkload("ns", "web-0", {}).name == "web-0");
  CHECK(ist::PodWorkload("ns", "my-pod", {}).name == "my-pod");
  // The workload-name label wins; the canonical labels win over app/version.
  auto w = ist::PodWorkload("ns", "x-abcde",
                            {{"service.istio.io/workload-name", "wl"},
                             {"service.istio.io/canonical-name", "cs"},
                             {"app.kubernetes.io/version", "2.0"},
                             {"app", "a"}});
  CHECK(w.name == "wl");
  CHECK(w.canonical_service == "cs");
  CHECK(w.canonical_revision == "2.0");
  CHECK(w.app == "a");
  CHECK(w.version.empty());
  // Without labels: the workload and "latest".
  auto bare = ist::PodWorkload("ns", "solo", {});
  CHECK(bare.canonical_service == "solo");
  CHECK(bare.canonical_revision == "latest");
}

TEST_CASE("istiod's endpoint and cluster metadata give the destination workload and service",
          "[istio_stats]") {
  envoy::config::core::v3::Metadata md;
  (*(*md.mutable_filter_metadata())["istio"].mutable_fields())["workload"].set_string_value(
      "reviews-v2;default;reviews;v2;Kubernetes");
  const ist::Workload* w = ist::EndpointWorkload(md);
  REQUIRE(w);
  CHECK(w->name == "reviews-v2");
  CHECK(w->ns == "default");
  CHECK(w->canonical_service == "reviews");
  CHECK(w->canonical_revision == "v2");
  CHECK(w->cluster == "Kubernetes");
  CHECK(ist::EndpointWorkload(md) == w);  // interned
  (*(*md.mutable_filter_metadata())["istio"].mutable_fields())["workload"].set_string_value(
      ";;;;Kubernetes");
  CHECK(ist::EndpointWorkload(md) == nullptr);
  CHECK(ist::EndpointWorkload(envoy::config::core::v3::Metadata()) == nullptr);

  envoy::config::cluster::v3::Cluster c;
  c.set_name("outbound|9080||reviews.default.svc.cluster.local");
  auto* svc =
      (*(*c.mutable_metadata()->mutable_filter_metadata())["istio"].mutable_fields())["services"]
          .mutable_list_value()
          ->add_values()
          ->mutable_struct_value();
  (*svc->mutable_fields())["host"].set_string_value("reviews.default.svc.cluster.local");
  (*svc->mutable_fields())["namespace"].set_string_value("default");
  const ist::Service* s = ist::ClusterService(c);
  REQUIRE(s);
  CHECK(s->host == "reviews.default.svc.cluster.local");
  CHECK(s->name == "reviews");  // no name: the host up to its first dot, as Istio
  envoy::config::cluster::v3::Cluster pass;
  pass.set_name("PassthroughCluster");
  REQUIRE(ist::ClusterService(pass));
  CHECK(ist::ClusterService(pass)->name == "PassthroughCluster");
  pass.set_name("outbound|80||x");
  CHECK(ist::ClusterService(pass) == nullptr);
}

TEST_CASE("labels carry Istio's values on the client and the server side", "[istio_stats]") {
  const ist::Workload* self = ist::Intern(ist::PodWorkload(
      "default", "productpage-v1-abc12-x2k4p",
      {{"app", "productpage"}, {"version", "v1"}, {"pod-template-hash", "abc12"}}));
  const ist::Workload* eds = ist::Intern(ist::Workload{.name = "reviews-v2",
                                                       .ns = "default",
                                                       .canonical_service = "reviews",
                                                       .canonical_revision = "v2",
                                                       .cluster = "Kubernetes"});
  const ist::Service* svc =
      ist::Intern(ist::Service{"reviews.default.svc.cluster.local", "reviews", "default"});
  // Client side, the endpoint known only from istiod: no app or version (Istio's
  // endpoint metadata has none).
  auto out = LabelMap({.self = self, .peer_eds = eds, .service = svc, .code = 200});
  CHECK(out["reporter"] == "source");
  CHECK(out["source_workload"] == "productpage-v1");
  CHECK(out["source_app"] == "productpage");
  CHECK(out["source_principal"] == "unknown");
  CHECK(out["destination_workload"] == "reviews-v2");
  CHECK(out["destination_workload_namespace"] == "default");
  CHECK(out["destination_app"] == "unknown");
  CHECK(out["destination_version"] == "unknown");
  CHECK(out["destination_canonical_revision"] == "v2");
  CHECK(out["destination_service"] == "reviews.default.svc.cluster.local");
  CHECK(out["destination_service_name"] == "reviews");
  CHECK(out["destination_service_namespace"] == "default");
  CHECK(out["destination_cluster"] == "Kubernetes");
  CHECK(out["request_protocol"] == "http");
  CHECK(out["response_code"] == "200");
  CHECK(out["grpc_response_status"] == "");
  CHECK(out["response_flags"] == "-");
  CHECK(out["connection_security_policy"] == "unknown");
  CHECK(out.size() == 25);
  // The endpoint is a pod of this node: its labels, as metadata exchange would give.
  const ist::Workload* local = ist::Intern(ist::PodWorkload(
      "default", "reviews-v2-7d79d5bd5d-8zzqd",
      {{"app", "reviews"}, {"version", "v2"}, {"pod-template-hash", "7d79d5bd5d"}}));
  out = LabelMap({.self = self, .peer_local = local, .peer_eds = eds, .service = svc});
  CHECK(out["destination_app"] == "reviews");
  CHECK(out["destination_version"] == "v2");
  // Nothing known of the destination (no route, no cluster): Istio's unknowns.
  out = LabelMap({.self = self, .flags = 1u << 15, .code = 503});
  CHECK(out["destination_workload"] == "unknown");
  CHECK(out["destination_service"] == "unknown");
  CHECK(out["destination_canonical_revision"] == "latest");
  CHECK(out["response_flags"] == "NC");
  // Server side: the pod is the destination; plaintext is "none"; no istio.services on
  // the inbound cluster: the service is the canonical service.
  out = LabelMap({.self = self, .peer_local = local, .code = 200, .kind = ist::kInbound});
  CHECK(out["reporter"] == "destination");
  CHECK(out["source_workload"] == "reviews-v2");
  CHECK(out["source_app"] == "reviews");
  CHECK(out["destination_workload"] == "productpage-v1");
  CHECK(out["destination_service"] == "productpage");
  CHECK(out["destination_service_namespace"] == "default");
  CHECK(out["connection_security_policy"] == "none");
  // TCP: no response_code, no grpc_response_status.
  out = LabelMap({.self = self, .peer_eds = eds, .service = svc, .kind = ist::kTcp});
  CHECK(out["request_protocol"] == "tcp");
  CHECK(out.count("response_code") == 0);
  CHECK(out.count("grpc_response_status") == 0);
  CHECK(out.size() == 23);
  CHECK(ist::FlagString((1u << 0) | (1u << 4)) == "UH,UF");
}

TEST_CASE("a known request mix through the proxy gives exact Istio counts per code and workload",
          "[istio_stats]") {
  auto m = StartIstioMix();
  REQUIRE(m->proxy->error.empty());
  RunIstioMix(*m);
  const std::string reviews = "reviews.default.svc.cluster.local";
  std::string text;
  REQUIRE(WaitFor([&] {
    text = Scrape(*m->stats);
    return Sum(Find(text, "istio_requests_total", {{"reporter", "source"}})) == 13 &&
           Sum(Find(text, "istio_requests_total", {{"reporter", "destination"}})) == 4 &&
           Sum(Find(text, "istio_tcp_connections_closed_total", {})) == 1;
  }));
  INFO(text);
  auto at = [&](const std::string& code, const std::string& workload) {
    return Sum(Find(text, "istio_requests_total",
                    {{"reporter", "source"},
                     {"response_code", code},
                     {"destination_workload", workload},
                     {"source_workload", "productpage-v1"},
                     {"source_app", "productpage"},
                     {"source_version", "v1"}}));
  };
  CHECK(at("200", "reviews-v2") == 7);
  CHECK(at("404", "reviews-v2") == 3);
  CHECK(at("503", "reviews-v1") == 2);
  CHECK(at("200", "reviews-v1") == 0);
  CHECK(Sum(Find(text, "istio_requests_total",
                 {{"destination_service", reviews},
                  {"destination_version", "unknown"},
                  {"destination_canonical_revision", "v2"}})) == 10);
  // The route to a cluster that does not exist: 503 NC, destination unknown.
  CHECK(Sum(Find(text, "istio_requests_total",
                 {{"response_code", "503"},
                  {"response_flags", "NC"},
                  {"destination_workload", "unknown"},
                  {"destination_service", "unknown"}})) == 1);
  // The inbound side: the pod is the destination, the peer (127.0.0.1) a pod of the node.
  CHECK(Sum(Find(text, "istio_requests_total",
                 {{"reporter", "destination"},
                  {"source_workload", "ratings-v1"},
                  {"source_app", "ratings"},
                  {"destination_workload", "productpage-v1"},
                  {"destination_service", "productpage"},
                  {"connection_security_policy", "none"},
                  {"response_code", "200"}})) == 4);
  // Histograms: one observation per request, cumulative buckets ending at the count.
  CHECK(Sum(Find(text, "istio_request_duration_milliseconds_count",
                 {{"response_code", "200"}, {"destination_workload", "reviews-v2"}})) == 7);
  CHECK(Sum(Find(
            text, "istio_request_duration_milliseconds_bucket",
            {{"response_code", "200"}, {"destination_workload", "reviews-v2"}, {"le", "+Inf"}})) ==
        7);
  CHECK(Sum(Find(text, "istio_request_bytes_count",
                 {{"response_code", "404"}, {"destination_workload", "reviews-v2"}})) == 3);
  // A 404 request is "GET /missing HTTP/1.1\r\nhost: reviews\r\nx-status: 404\r\n\r\n".
  CHECK(Sum(Find(text, "istio_request_bytes_sum",
                 {{"response_code", "404"}, {"destination_workload", "reviews-v2"}})) ==
        3 * std::string("GET /missing HTTP/1.1\r\nhost: reviews\r\nx-status: 404\r\n\r\n").size());
  CHECK(Sum(Find(text, "istio_response_bytes_sum",
                 {{"response_code", "200"}, {"destination_workload", "reviews-v2"}})) > 0);
  // TCP through the proxy: the bytes each way, as the client counted them.
  const std::vector<std::pair<std::string, std::string>> tcp = {
      {"reporter", "source"},
      {"destination_workload", "ratings-v1"},
      {"destination_service", "ratings.default.svc.cluster.local"},
      {"request_protocol", "tcp"}};
  CHECK(Sum(Find(text, "istio_tcp_connections_opened_total", tcp)) == 1);
  CHECK(Sum(Find(text, "istio_tcp_connections_closed_total", tcp)) == 1);
  CHECK(Sum(Find(text, "istio_tcp_received_bytes_total", tcp)) == m->tcp_sent);
  CHECK(Sum(Find(text, "istio_tcp_sent_bytes_total", tcp)) == m->tcp_received);
  // Counters only grow: the same mix again doubles them.
  RunIstioMix(*m);
  REQUIRE(WaitFor([&] {
    text = Scrape(*m->stats);
    return Sum(Find(text, "istio_requests_total", {{"reporter", "source"}})) == 26;
  }));
  CHECK(at("200", "reviews-v2") == 14);
}

TEST_CASE("series are capped per pod, the rest going to one overflow series", "[istio_stats]") {
  ist::IstioStats st(ist::Intern(ist::PodWorkload("ns", "p", {})), nullptr, /*max_series=*/3);
  for (uint16_t code = 200; code < 210; ++code)
    st.Get({.code = code}).requests.fetch_add(1);
  st.Get({.code = 200}).requests.fetch_add(1);  // an existing series still counts
  CHECK(st.size() == 4);                        // three, and the overflow series
  const std::string text = Scrape(st);
  CHECK(Sum(Find(text, "istio_requests_total", {{"response_code", "overflow"}})) == 7);
  CHECK(Sum(Find(text, "istio_requests_total", {{"response_code", "200"}})) == 2);
  CHECK(Sum(Find(text, "istio_requests_total", {})) == 11);
}

TEST_CASE("the Prometheus text has one TYPE line per metric and sums equal label sets",
          "[istio_stats]") {
  const ist::Workload* self = ist::Intern(ist::PodWorkload("ns", "app-1", {{"app", "x\"y"}}));
  ist::IstioStats a(self, nullptr), b(self, nullptr);  // two pods of one workload
  a.Get({.code = 200}).requests.fetch_add(2);
  a.Get({.code = 200}).duration_ms.Record(3);
  b.Get({.code = 200}).requests.fetch_add(5);
  b.Get({.code = 200}).duration_ms.Record(7000);
  std::vector<ist::Sample> s;
  a.Collect(&s);
  b.Collect(&s);
  const std::string text = ist::RenderPrometheus(s);
  INFO(text);
  auto count = [&](const std::string& needle) {
    std::size_t n = 0;
    for (auto p = text.find(needle); p != std::string::npos; p = text.find(needle, p + 1))
      ++n;
    return n;
  };
  CHECK(count("# TYPE istio_requests_total counter\n") == 1);
  CHECK(count("# TYPE istio_request_duration_milliseconds histogram\n") == 1);
  CHECK(count("istio_requests_total{") == 1);  // one series, summed
  CHECK(Sum(Find(text, "istio_requests_total", {})) == 7);
  CHECK(text.find("source_app=\"x\\\"y\"") != std::string::npos);  // escaped
  CHECK(Sum(Find(text, "istio_request_duration_milliseconds_bucket", {{"le", "1"}})) == 0);
  CHECK(Sum(Find(text, "istio_request_duration_milliseconds_bucket", {{"le", "5"}})) == 1);
  CHECK(Sum(Find(text, "istio_request_duration_milliseconds_bucket", {{"le", "5000"}})) == 1);
  CHECK(Sum(Find(text, "istio_request_duration_milliseconds_bucket", {{"le", "10000"}})) == 2);
  CHECK(Sum(Find(text, "istio_request_duration_milliseconds_bucket", {{"le", "3600000"}})) == 2);
  CHECK(Sum(Find(text, "istio_request_duration_milliseconds_sum", {})) == 7003);
  // No TCP series: no TCP families at all.
  CHECK(text.find("istio_tcp_") == std::string::npos);
}
