// The upstream HTTP protocol of translated clusters (issue 18), as istiod chooses it
// (pilot/pkg/networking/core/cluster_builder.go setUpstreamProtocol,
// cluster_traffic_policy.go applyH2Upgrade/shouldH2Upgrade/applyConnectionPool):
// typed_extension_protocol_options envoy.extensions.upstreams.http.v3.HttpProtocolOptions
// with explicit HTTP/2 for HTTP2 and gRPC ports, the client's protocol for a sidecar's
// sniffed ports, and what a DestinationRule's connectionPool and the mesh's
// h2UpgradePolicy change — checked field by field on the protos.
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/message_differencer.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>

#include "envoy/extensions/upstreams/http/v3/http_protocol_options.pb.h"
#include "translate_harness.h"

using namespace sluice::istio;
using sluice::istio::test::Load;
using sluice::istio::test::TranslateFor;
namespace cluster_v3 = envoy::config::cluster::v3;
using envoy::extensions::upstreams::http::v3::HttpProtocolOptions;

namespace {

constexpr char kKey[] = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

// A Service with one port of each kind: gRPC, HTTP, a sniffed one (a name without a
// protocol prefix), TCP, HTTP2 by appProtocol kubernetes.io/h2c; and its pod.
constexpr char kMixed[] = R"(apiVersion: v1
kind: Service
metadata: {name: mixed}
spec:
  selector: {app: mixed}
  ports:
  - {name: grpc, port: 7070}
  - {name: http, port: 80}
  - {name: foo, port: 9000}
  - {name: tcp-db, port: 5432}
  - {name: web, port: 8080, appProtocol: kubernetes.io/h2c}
---
apiVersion: v1
kind: Pod
metadata: {name: mixed-1, labels: {app: mixed, version: v1}}
status: {podIP: 10.1.0.7}
)";

struct Run {
  LoadResult loaded;
  Translation t;
  Run(const std::string& extra, const std::string& proxy = "sidecar:default")
      : loaded(Load(std::string(kMixed) + (extra.empty() ? "" : "---\n" + extra))) {
    REQUIRE(loaded.errors.empty());
    t = TranslateFor(loaded, proxy);
  }
  const cluster_v3::Cluster& Cluster(const std::string& name) const {
    REQUIRE(t.resources.clusters.count(name) == 1);
    return t.resources.clusters.at(name);
  }
  const cluster_v3::Cluster& Outbound(uint32_t port, const std::string& subset = "") const {
    return Cluster("outbound|" + std::to_string(port) + "|" + subset +
                   "|mixed.default.svc.cluster.local");
  }
};

// The cluster's HttpProtocolOptions; nullopt when it has none.
std::optional<HttpProtocolOptions> Options(const cluster_v3::Cluster& c) {
  auto it = c.typed_extension_protocol_options().find(kKey);
  if (it == c.typed_extension_protocol_options().end()) {
    CHECK(c.typed_extension_protocol_options().empty());
    return std::nullopt;
  }
  CHECK(c.typed_extension_protocol_options_size() == 1);
  HttpProtocolOptions o;
  REQUIRE(it->second.UnpackTo(&o));
  return o;
}

// Explicit HTTP/2 and nothing else (istiod's setH2Options).
bool ExplicitH2(const cluster_v3::Cluster& c, uint32_t max_streams = 0) {
  auto o = Options(c);
  if (!o || !o->has_explicit_http_config() ||
      !o->explicit_http_config().has_http2_protocol_options())
    return false;
  const auto& h2 = o->explicit_http_config().http2_protocol_options();
  if (max_streams == 0)
    return !h2.has_max_concurrent_streams() && h2.ByteSizeLong() == 0 &&
           !o->has_common_http_protocol_options();
  return h2.has_max_concurrent_streams() && h2.max_concurrent_streams().value() == max_streams &&
         o->has_common_http_protocol_options();
}

// use_downstream_protocol_config{http_protocol_options{}, http2_protocol_options{}}.
bool UseDownstream(const cluster_v3::Cluster& c) {
  auto o = Options(c);
  if (!o || !o->has_use_downstream_protocol_config())
    return false;
  const auto& d = o->use_downstream_protocol_config();
  return d.has_http_protocol_options() && d.has_http2_protocol_options() &&
         d.http_protocol_options().ByteSizeLong() == 0 &&
         d.http2_protocol_options().ByteSizeLong() == 0;
}

std::string Dr(const std::string& traffic_policy) {
  return "apiVersion: networking.istio.io/v1\n"
         "kind: DestinationRule\n"
         "metadata: {name: mixed}\n"
         "spec:\n"
         "  host: mixed\n"
         "  trafficPolicy:\n" +
         traffic_policy;
}

std::string Mesh(const std::string& mesh) {
  return "apiVersion: v1\n"
         "kind: ConfigMap\n"
         "metadata: {name: istio, namespace: istio-system}\n"
         "data:\n"
         "  mesh: |\n"
         "    " +
         mesh + "\n";
}

uint32_t MaxRequests(const cluster_v3::Cluster& c) {
  REQUIRE(c.circuit_breakers().thresholds_size() == 1);
  return c.circuit_breakers().thresholds(0).max_requests().value();
}

}  // namespace

TEST_CASE("HTTP/2: a sidecar's outbound clusters by port protocol") {
  Run r("");
  CHECK(ExplicitH2(r.Outbound(7070)));     // grpc
  CHECK(ExplicitH2(r.Outbound(8080)));     // appProtocol kubernetes.io/h2c
  CHECK_FALSE(Options(r.Outbound(80)));    // http: HTTP/1.1, no options
  CHECK_FALSE(Options(r.Outbound(5432)));  // tcp
  CHECK(UseDownstream(r.Outbound(9000)));  // sniffed: the client's protocol
  CHECK(MaxRequests(r.Outbound(7070)) == 4294967295u);
  // istiod's passthroughHttpProtocolOptions: the client's protocol, idle timeout 5 min.
  const auto& pt = r.Cluster("PassthroughCluster");
  REQUIRE(Options(pt));
  CHECK(Options(pt)->has_use_downstream_protocol_config());
  CHECK(Options(pt)->common_http_protocol_options().idle_timeout().seconds() == 300);
  CHECK(Registry::Build(r.loaded.config).services()[0].ports[4].protocol == Protocol::kHttp2);
}

TEST_CASE("HTTP/2: a gateway's clusters: gRPC is HTTP/2, a sniffed port is not followed") {
  Run r("", "gateway:istio=ingressgateway");
  CHECK(ExplicitH2(r.Outbound(7070)));
  CHECK_FALSE(Options(r.Outbound(80)));
  CHECK_FALSE(Options(r.Outbound(9000)));  // a gateway does not sniff (istiod)
}

TEST_CASE("HTTP/2: DestinationRule h2UpgradePolicy, as istiod's shouldH2Upgrade") {
  SECTION("UPGRADE makes an HTTP port HTTP/2, and a TCP port too (the user says HTTP)") {
    Run r(Dr("    connectionPool: {http: {h2UpgradePolicy: UPGRADE}}\n"));
    CHECK(ExplicitH2(r.Outbound(80)));
    CHECK(ExplicitH2(r.Outbound(7070)));
    CHECK(ExplicitH2(r.Outbound(5432)));
    // A sniffed port already follows the client; the upgrade does not replace that.
    CHECK(UseDownstream(r.Outbound(9000)));
    CHECK(r.Outbound(80).metadata().filter_metadata().at("istio").fields().contains("config"));
  }
  SECTION("the mesh's UPGRADE: HTTP ports only; DO_NOT_UPGRADE in a rule keeps HTTP/1.1") {
    Run mesh(Mesh("h2UpgradePolicy: UPGRADE"));
    CHECK(ExplicitH2(mesh.Outbound(80)));
    CHECK_FALSE(Options(mesh.Outbound(5432)));
    CHECK(UseDownstream(mesh.Outbound(9000)));
    Run r(Mesh("h2UpgradePolicy: UPGRADE") + "---\n" +
          Dr("    connectionPool: {http: {h2UpgradePolicy: DO_NOT_UPGRADE}}\n"));
    CHECK_FALSE(Options(r.Outbound(80)));
    CHECK(ExplicitH2(r.Outbound(7070)));  // the port's own protocol stays HTTP/2
  }
  SECTION("port-level settings replace the policy's connectionPool, subsets theirs") {
    Run r(
        Dr("    connectionPool: {http: {h2UpgradePolicy: UPGRADE}}\n"
           "    portLevelSettings:\n"
           "    - port: {number: 80}\n"
           "      loadBalancer: {simple: RANDOM}\n"
           "  subsets:\n"
           "  - name: v1\n"
           "    labels: {version: v1}\n"
           "  - name: v2\n"
           "    labels: {version: v2}\n"
           "    trafficPolicy:\n"
           "      connectionPool: {http: {h2UpgradePolicy: DO_NOT_UPGRADE}}\n"));
    CHECK_FALSE(Options(r.Outbound(80)));  // port 80's settings have no connectionPool
    CHECK(ExplicitH2(r.Outbound(5432)));
    CHECK(ExplicitH2(r.Outbound(5432, "v1")));  // inherits the rule's
    CHECK_FALSE(Options(r.Outbound(5432, "v2")));
  }
}

TEST_CASE("HTTP/2: useClientProtocol, maxConcurrentStreams and the circuit breakers") {
  SECTION("useClientProtocol follows the client, even on a gRPC port") {
    Run r(Dr("    connectionPool: {http: {useClientProtocol: true}}\n"));
    CHECK(UseDownstream(r.Outbound(7070)));
    CHECK(UseDownstream(r.Outbound(80)));
    CHECK(UseDownstream(r.Outbound(5432)));
  }
  SECTION("maxConcurrentStreams on HTTP/2 clusters; limits into the thresholds") {
    Run r(
        Dr("    connectionPool:\n"
           "      tcp: {maxConnections: 7}\n"
           "      http: {maxConcurrentStreams: 100, http2MaxRequests: 500,\n"
           "             http1MaxPendingRequests: 20, maxRetries: 4}\n"));
    CHECK(ExplicitH2(r.Outbound(7070), 100));
    // An HTTP/1.1 cluster: istiod still makes the options (common ones set), HTTP/1.1.
    auto http = Options(r.Outbound(80));
    REQUIRE(http);
    CHECK(http->has_common_http_protocol_options());
    CHECK(http->explicit_http_config().has_http_protocol_options());
    // The sniffed port's use_downstream_protocol_config is kept, without the limit.
    CHECK(Options(r.Outbound(9000))->has_use_downstream_protocol_config());
    const auto& t = r.Outbound(7070).circuit_breakers().thresholds(0);
    CHECK(t.max_requests().value() == 500);
    CHECK(t.max_pending_requests().value() == 20);
    CHECK(t.max_retries().value() == 4);
    CHECK(t.max_connections().value() == 7);
    CHECK(t.track_remaining());
    CHECK(MaxRequests(r.Outbound(80)) == 500);
  }
}

TEST_CASE("HTTP/2: a proxyless gRPC client gets http2MaxRequests as max_requests only") {
  Run plain("", "grpc:default");
  CHECK_FALSE(plain.Outbound(7070).has_circuit_breakers());
  CHECK_FALSE(Options(plain.Outbound(7070)));  // gRPC speaks HTTP/2 itself
  Run r(Dr("    connectionPool: {http: {http2MaxRequests: 64, maxRetries: 3}}\n"), "grpc:default");
  const auto& c = r.Outbound(7070);
  REQUIRE(c.circuit_breakers().thresholds_size() == 1);
  const auto& t = c.circuit_breakers().thresholds(0);
  CHECK(t.max_requests().value() == 64);
  CHECK_FALSE(t.has_max_retries());
  CHECK_FALSE(t.has_max_connections());
  CHECK_FALSE(Options(c));
}

TEST_CASE("HTTP/2: inbound clusters by port protocol, the rule's pool, never an upgrade") {
  SECTION("Sidecar ingress listeners") {
    Run r(R"(apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: mixed}
spec:
  workloadSelector: {labels: {app: mixed}}
  ingress:
  - port: {number: 7070, protocol: GRPC, name: grpc}
  - port: {number: 80, protocol: HTTP, name: http}
  - port: {number: 9000}
  - port: {number: 8080, protocol: HTTP2, name: h2}
)",
          "sidecar:app=mixed@default");
    CHECK(ExplicitH2(r.Cluster("inbound|7070||")));
    CHECK(ExplicitH2(r.Cluster("inbound|8080||")));
    CHECK_FALSE(Options(r.Cluster("inbound|80||")));
    CHECK(UseDownstream(r.Cluster("inbound|9000||")));
    CHECK(Options(r.Cluster("InboundPassthroughCluster"))->has_use_downstream_protocol_config());
  }
  SECTION("a Service's ports (with a policy): its DestinationRule's connection pool") {
    Run r(Dr("    connectionPool:\n"
             "      tcp: {connectTimeout: 3s}\n"
             "      http: {h2UpgradePolicy: UPGRADE, http2MaxRequests: 50,\n"
             "             maxConcurrentStreams: 10}\n") +
              R"(---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all}
spec:
  selector: {matchLabels: {app: mixed}}
  rules: [{}]
)",
          "sidecar:app=mixed@default");
    CHECK(ExplicitH2(r.Cluster("inbound|7070||"), 10));
    // UPGRADE is outbound only: the inbound HTTP cluster stays HTTP/1.1.
    auto http = Options(r.Cluster("inbound|80||"));
    REQUIRE(http);
    CHECK(http->explicit_http_config().has_http_protocol_options());
    CHECK(MaxRequests(r.Cluster("inbound|80||")) == 50);
    CHECK(r.Cluster("inbound|80||").connect_timeout().seconds() == 3);
    CHECK(UseDownstream(r.Cluster("inbound|9000||")));
    CHECK(Options(r.Cluster("inbound|9000||"))->has_common_http_protocol_options());
    CHECK(ExplicitH2(r.Outbound(80), 10));
  }
}

TEST_CASE("HTTP/2: the loader refuses what istio's validation refuses, by field") {
  auto error = [](const std::string& pool) {
    auto r = Load(Dr("    connectionPool: " + pool + "\n"));
    return r.errors.empty() ? std::string() : r.errors.front();
  };
  CHECK_THAT(error("{http: {h2UpgradePolicy: SOMETIMES}}"),
             Catch::Contains("spec.trafficPolicy.connectionPool.http.h2UpgradePolicy: must be one "
                             "of DEFAULT, DO_NOT_UPGRADE, UPGRADE (got \"SOMETIMES\")"));
  CHECK_THAT(error("{http: {h2UpgradePolicy: UPGRADE, useClientProtocol: true}}"),
             Catch::Contains("spec.trafficPolicy.connectionPool.http.useClientProtocol: must not "
                             "be true when h2UpgradePolicy is UPGRADE"));
  CHECK_THAT(error("{http: {maxConcurrentStreams: -1}}"),
             Catch::Contains("spec.trafficPolicy.connectionPool.http.maxConcurrentStreams"));
  CHECK(error("{http: {h2UpgradePolicy: DEFAULT, maxConcurrentStreams: 5}}").empty());
  auto mesh = Load(Mesh("h2UpgradePolicy: ALWAYS"));
  REQUIRE_FALSE(mesh.errors.empty());
  CHECK_THAT(mesh.errors.front(), Catch::Contains("h2UpgradePolicy: must be DO_NOT_UPGRADE or "
                                                  "UPGRADE (got \"ALWAYS\")"));
}

// The 1.10 capture in tests/conformance/istiod (sidecar of bookinfo's details, istiod-fed):
// the same services, with the port names Istio's and Kubernetes' manifests give them,
// translated for the same proxy; every cluster's HttpProtocolOptions (or their absence)
// must match istiod's field by field, but for what istiod itself has changed since 1.10:
// max_concurrent_streams 1073741824 on every HTTP/2 option, removed in istio/istio#40009
// (cluster_builder.go http2ProtocolOptions() is empty since), and the passthrough
// clusters' 5 min idle timeout, added in istio/istio#41775 ("original_dst: set idle
// timeout to 5min").
TEST_CASE("HTTP/2: protocol options match istiod 1.10's for the same services") {
  const std::string manifests = R"(apiVersion: v1
kind: Service
metadata: {name: details}
spec:
  selector: {app: details}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Pod
metadata: {name: details-v1, labels: {app: details, version: v1}}
status: {podIP: 10.1.0.30}
---
apiVersion: v1
kind: Service
metadata: {name: productpage}
spec: {ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: ratings}
spec: {ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews}
spec: {ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: kubernetes}
spec: {ports: [{name: https, port: 443}]}
---
apiVersion: v1
kind: Service
metadata: {name: istiod, namespace: istio-system}
spec:
  ports:
  - {name: grpc-xds, port: 15010}
  - {name: https-dns, port: 15012}
  - {name: https-webhook, port: 443}
  - {name: http-monitoring, port: 15014}
---
apiVersion: v1
kind: Service
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec:
  ports:
  - {name: status-port, port: 15021}
  - {name: http2, port: 80}
  - {name: https, port: 443}
  - {name: tcp, port: 31400}
  - {name: tls, port: 15443}
---
apiVersion: v1
kind: Service
metadata: {name: istio-egressgateway, namespace: istio-system}
spec:
  ports:
  - {name: http2, port: 80}
  - {name: https, port: 443}
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec:
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53}
  - {name: metrics, port: 9153}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: details}
spec:
  selector: {matchLabels: {app: details}}
  rules: [{}]
)";
  auto loaded = Load(manifests);
  REQUIRE(loaded.errors.empty());
  const Translation t = TranslateFor(loaded, "sidecar:app=details@default");

  std::ifstream in(std::string(SLUICE_CORPUS) + "/sidecar-1.10-details.json");
  REQUIRE(in);
  auto dump = nlohmann::json::parse(in);
  int compared = 0, with_options = 0;
  for (const auto& config : dump["configs"]) {
    if (!config.contains("dynamicActiveClusters"))
      continue;
    for (const auto& entry : config["dynamicActiveClusters"]) {
      const auto& ic = entry["cluster"];
      std::string name = ic["name"];
      if (name == "InboundPassthroughClusterIpv6")
        continue;  // Sluice's one inbound passthrough cluster is IPv4's
      if (name == "InboundPassthroughClusterIpv4")
        name = "InboundPassthroughCluster";
      INFO(name);
      REQUIRE(t.resources.clusters.count(name) == 1);
      auto ours = Options(t.resources.clusters.at(name));
      const auto& teo = ic.value("typedExtensionProtocolOptions", nlohmann::json::object());
      if (!teo.contains(kKey)) {
        CHECK_FALSE(ours);
        ++compared;
        continue;
      }
      nlohmann::json want_json = teo[kKey];
      want_json.erase("@type");
      HttpProtocolOptions want;
      REQUIRE(google::protobuf::util::JsonStringToMessage(want_json.dump(), &want).ok());
      // istiod's changes since 1.10 (above).
      auto* h2 =
          want.has_explicit_http_config()
              ? want.mutable_explicit_http_config()->mutable_http2_protocol_options()
              : want.mutable_use_downstream_protocol_config()->mutable_http2_protocol_options();
      CHECK(h2->max_concurrent_streams().value() == 1073741824);
      h2->clear_max_concurrent_streams();
      if (name.find("Passthrough") != std::string::npos)
        want.mutable_common_http_protocol_options()->mutable_idle_timeout()->set_seconds(300);
      REQUIRE(ours);
      std::string diff;
      google::protobuf::util::MessageDifferencer d;
      d.ReportDifferencesToString(&diff);
      CHECK(d.Compare(want, *ours));
      CHECK(diff == "");
      ++compared;
      ++with_options;
    }
  }
  CHECK(compared == 22);  // every dynamic cluster but the IPv6 inbound passthrough
  CHECK(with_options == 7);
}
