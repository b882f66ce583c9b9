// Istio's standard metrics in the proxy (istio_stats.h): the identities Istio derives
// from a pod and from istiod's metadata, the label values its stats filter reports, the
// series a known traffic mix leaves through a real proxy, the cardinality cap, and the
// Prometheus text. (tests/proxy/parse_istio_stats.py parses the same scrape with
// prometheus_client's parser.)
#include <google/protobuf/any.pb.h>
#include <google/protobuf/util/json_util.h>

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
  out = LabelMap({.self = self, .flags = 1u << 16 /* NC */, .code = 503});
  CHECK(out["destination_workload"] == "unknown");
  CHECK(out["destination_service"] == "unknown");
  CHECK(out["destination_canonical_revision"] == "latest");
  CHECK(out["response_flags"] == "NC");
  CHECK(out["request_protocol"] == "http");
  CHECK(out["grpc_response_status"] == "");
  // A gRPC request: its protocol and status, as Istio labels them.
  out = LabelMap({.self = self, .code = 200, .grpc_status = 14, .kind = ist::kGrpc});
  CHECK(out["request_protocol"] == "grpc");
  CHECK(out["grpc_response_status"] == "14");
  CHECK(out["response_code"] == "200");
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

// ---------------------------------------------------------------- the istio.stats filter

namespace {

// The outbound side's istio_requests_total lines for reviews-v2, by the labels they carry.
double SourceReviews(const std::string& text, const std::string& metric,
                     std::vector<std::pair<std::string, std::string>> more = {}) {
  more.emplace_back("reporter", "source");
  more.emplace_back("destination_workload", "reviews-v2");
  return Sum(Find(text, metric, more));
}

}  // namespace

TEST_CASE("a chain without istio.stats records none of Istio's metrics, as in Envoy",
          "[istio_stats]") {
  IstioMixStats f;
  f.outbound = std::nullopt;  // the outbound HTTP chain carries no istio.stats
  auto m = StartIstioMix(f);
  REQUIRE(m->proxy->error.empty());
  RunIstioMix(*m);
  std::string text;
  // The chains that carry it still record.
  REQUIRE(WaitFor([&] {
    text = Scrape(*m->stats);
    return Sum(Find(text, "istio_requests_total", {{"reporter", "destination"}})) == 4 &&
           Sum(Find(text, "istio_tcp_connections_closed_total", {})) == 1;
  }));
  INFO(text);
  CHECK(Find(text, "istio_requests_total", {{"reporter", "source"}}).empty());
  CHECK(Find(text, "istio_request_duration_milliseconds_count", {{"reporter", "source"}}).empty());
  CHECK(Find(text, "istio_response_bytes_count", {{"reporter", "source"}}).empty());
}

TEST_CASE("istio.stats drop: requests_total is gone for that chain, its histograms stay",
          "[istio_stats]") {
  IstioMixStats f;
  f.outbound = Json{{"metrics", Json::array({{{"name", "requests_total"}, {"drop", true}}})}};
  f.tcp = Json{{"metrics", Json::array({{{"name", "tcp_sent_bytes_total"}, {"drop", true}},
                                        // An unnamed drop drops nothing in istio/proxy.
                                        {{"drop", true}}})}};
  auto m = StartIstioMix(f);
  REQUIRE(m->proxy->error.empty());
  RunIstioMix(*m);
  std::string text;
  REQUIRE(WaitFor([&] {
    text = Scrape(*m->stats);
    return Sum(Find(text, "istio_request_duration_milliseconds_count", {{"reporter", "source"}})) ==
               13 &&
           Sum(Find(text, "istio_requests_total", {{"reporter", "destination"}})) == 4 &&
           Sum(Find(text, "istio_tcp_connections_closed_total", {})) == 1;
  }));
  INFO(text);
  CHECK(Find(text, "istio_requests_total", {{"reporter", "source"}}).empty());
  CHECK(SourceReviews(text, "istio_request_duration_milliseconds_count",
                      {{"response_code", "200"}}) == 7);
  CHECK(SourceReviews(text, "istio_request_bytes_count", {{"response_code", "404"}}) == 3);
  // The TCP chain: sent bytes dropped, the rest kept.
  CHECK(Find(text, "istio_tcp_sent_bytes_total", {}).empty());
  CHECK(text.find("# TYPE istio_tcp_sent_bytes_total") == std::string::npos);
  CHECK(Sum(Find(text, "istio_tcp_received_bytes_total", {})) == m->tcp_sent);
  CHECK(Sum(Find(text, "istio_tcp_connections_opened_total", {})) == 1);
}

TEST_CASE("istio.stats tags_to_remove: response_code gone, 200 and 404 summed in one series",
          "[istio_stats]") {
  IstioMixStats f;
  f.outbound =
      Json{{"metrics",
            Json::array({{{"name", "requests_total"},
                          {"tags_to_remove", Json::array({"response_code", "not_a_tag"})}}})}};
  auto m = StartIstioMix(f);
  REQUIRE(m->proxy->error.empty());
  RunIstioMix(*m);
  std::string text;
  REQUIRE(WaitFor([&] {
    text = Scrape(*m->stats);
    return Sum(Find(text, "istio_requests_total", {{"reporter", "source"}})) == 13 &&
           Sum(Find(text, "istio_requests_total", {{"reporter", "destination"}})) == 4;
  }));
  INFO(text);
  auto lines = Find(text, "istio_requests_total",
                    {{"reporter", "source"}, {"destination_workload", "reviews-v2"}});
  REQUIRE(lines.size() == 1);  // 7 × 200 and 3 × 404, one series
  CHECK(lines[0].second == 10);
  CHECK(lines[0].first.find("response_code") == std::string::npos);
  CHECK(lines[0].first.find("response_flags=\"-\"") != std::string::npos);
  // Only that metric: the histograms keep response_code, and so does the inbound side.
  CHECK(SourceReviews(text, "istio_request_duration_milliseconds_count",
                      {{"response_code", "404"}}) == 3);
  CHECK(Sum(Find(text, "istio_requests_total",
                 {{"reporter", "destination"}, {"response_code", "200"}})) == 4);
  // Still one TYPE line per metric.
  std::size_t types = 0;
  for (std::size_t p = 0; (p = text.find("# TYPE istio_requests_total ", p)) != std::string::npos;
       ++p)
    ++types;
  CHECK(types == 1);
}

TEST_CASE("istio.stats dimensions: a literal value sets or adds a label", "[istio_stats]") {
  IstioMixStats f;
  // As istiod writes a Telemetry tagOverride UPSERT: one MetricConfig per metric.
  f.outbound = Json{
      {"metrics",
       Json::array({{{"name", "requests_total"},
                     {"dimensions",
                      {{"destination_service", "'reviews-alias'"}, {"mesh_id", "\"mesh1\""}}}}})}};
  auto m = StartIstioMix(f);
  REQUIRE(m->proxy->error.empty());
  RunIstioMix(*m);
  std::string text;
  REQUIRE(WaitFor([&] {
    text = Scrape(*m->stats);
    return Sum(Find(text, "istio_requests_total", {{"reporter", "source"}})) == 13;
  }));
  INFO(text);
  CHECK(SourceReviews(text, "istio_requests_total",
                      {{"destination_service", "reviews-alias"}, {"mesh_id", "mesh1"}}) == 10);
  CHECK(SourceReviews(text, "istio_requests_total",
                      {{"destination_service", "reviews.default.svc.cluster.local"}}) == 0);
  // Added labels come after Istio's.
  auto lines = Find(text, "istio_requests_total", {{"mesh_id", "mesh1"}});
  REQUIRE_FALSE(lines.empty());
  CHECK(lines[0].first.find("connection_security_policy=\"unknown\",mesh_id=\"mesh1\"}") !=
        std::string::npos);
  // The histograms are not changed.
  CHECK(SourceReviews(text, "istio_request_duration_milliseconds_count",
                      {{"destination_service", "reviews.default.svc.cluster.local"}}) == 10);
  CHECK(Find(text, "istio_request_duration_milliseconds_count", {{"mesh_id", "mesh1"}}).empty());
}

TEST_CASE(
    "istio.stats a dimension Sluice cannot evaluate refuses the listener, naming metric and "
    "tag",
    "[istio_stats]") {
  Json doc = {
      {"listeners",
       Json::array(
           {HttpListener(
                "http", RouteConfig("rc", Json::array()), true,
                Json::array({IstioStatsFilter(
                    {{"metrics",
                      Json::array({{{"name", "requests_total"},
                                    {"dimensions", {{"request_host", "request.host"}}}}})}})})),
            HttpListener("plain", RouteConfig("rc2", Json::array()), true,
                         Json::array({IstioStatsFilter()}))})}};
  auto cfg = CompileJson(doc);
  REQUIRE(cfg);
  REQUIRE((*cfg)->refused.size() == 1);
  const auto& r = (*cfg)->refused[0];
  CHECK(r.name == "http");
  INFO(r.reason);
  CHECK(r.reason.find("istio.stats") != std::string::npos);
  CHECK(r.reason.find("\"requests_total\"") != std::string::npos);
  CHECK(r.reason.find("dimensions[\"request_host\"]") != std::string::npos);
  CHECK(r.reason.find("request.host") != std::string::npos);
  // The other listener is served, with its filter.
  REQUIRE((*cfg)->listeners.size() == 1);
  CHECK((*cfg)->listeners[0].chains[0].istio_stats != nullptr);
}

TEST_CASE("istio.stats config: istiod's encodings, and what is refused by name", "[istio_stats]") {
  auto compile = [](const Json& pc) {
    google::protobuf::Any any;
    Json j = pc;
    j["@type"] = "type.googleapis.com/stats.PluginConfig";
    REQUIRE(google::protobuf::util::JsonStringToMessage(j.dump(), &any).ok());
    return ist::CompileStatsConfig(any);
  };
  // Empty (istiod's default): a config that changes nothing, one interned pointer.
  auto plain = compile(Json::object());
  REQUIRE(plain);
  CHECK((*plain)->drop == 0);
  CHECK(*compile({{"disable_host_header_fallback", true}, {"tcp_reporting_duration", "10s"}}) ==
        *plain);
  // An unnamed entry applies to every metric; a later one overrides an earlier.
  auto all = compile({{"metrics", Json::array({{{"tags_to_remove", Json::array({"source_app"})}},
                                               {{"name", "request_bytes"},
                                                {"dimensions", {{"source_app", "'x'"}}}}})}});
  REQUIRE(all);
  const int app = ist::TagIndex("source_app");
  CHECK(((*all)->tags[ist::kTcpClosed].removed >> app & 1) == 1);
  CHECK(((*all)->tags[ist::kRequestBytes].removed >> app & 1) == 0);
  REQUIRE((*all)->tags[ist::kRequestBytes].replaced.size() == 1);
  CHECK((*all)->tags[ist::kRequestBytes].replaced[0].second == "x");
  // A TypedStruct of one (Istio's waypoints and older control planes).
  google::protobuf::Any ts;
  REQUIRE(google::protobuf::util::JsonStringToMessage(
              R"({"@type":"type.googleapis.com/udpa.type.v1.TypedStruct",
                  "type_url":"type.googleapis.com/stats.PluginConfig",
                  "value":{"metrics":[{"name":"requests_total","drop":true}]}})",
              &ts)
              .ok());
  auto fromStruct = ist::CompileStatsConfig(ts);
  REQUIRE(fromStruct);
  CHECK((*fromStruct)->Dropped(ist::kRequestsTotal));
  CHECK_FALSE((*fromStruct)->Dropped(ist::kRequestDuration));
  // Refused, by name.
  auto waypoint = compile({{"reporter", "SERVER_GATEWAY"}});
  REQUIRE_FALSE(waypoint);
  CHECK(waypoint.error().message.find("SERVER_GATEWAY") != std::string::npos);
  auto custom = compile({{"definitions", Json::array({{{"name", "my_count"}, {"value", "1"}}})}});
  REQUIRE_FALSE(custom);
  CHECK(custom.error().message.find("\"my_count\"") != std::string::npos);
  auto expr = compile({{"metrics", Json::array({{{"dimensions", {{"x", "'a' + 'b'"}}}}})}});
  REQUIRE_FALSE(expr);
  CHECK(expr.error().message.find("metric \"all\"") != std::string::npos);
  auto bad_name = compile({{"metrics", Json::array({{{"dimensions", {{"a-b", "'v'"}}}}})}});
  REQUIRE_FALSE(bad_name);
  CHECK(bad_name.error().message.find("\"a-b\"") != std::string::npos);
}
