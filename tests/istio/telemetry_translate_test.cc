// Telemetry metrics in the local control plane: istiod's own TestTelemetryFilters cases
// (testdata/telemetry-istiod, attributed in its README) run through Sluice's loader and
// translator and compared with the stats.PluginConfig istiod builds; where the
// istio.stats filters go (every sidecar and gateway chain: before the router, before
// tcp_proxy) and which side's config each gets; the scope (root namespace, namespace,
// selector) and mode (CLIENT, SERVER); the loader's refusals by name; and the
// translated filter compiled by the proxy, which then drops what the Telemetry disabled.
#include <catch2/catch.hpp>

#include <google/protobuf/util/json_util.h>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "envoy/config/listener/v3/listener.pb.h"
#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb.h"
#include "istio-proxy/stats/config.pb.h"
#include "sluice/envoy/resource_set.h"
#include "sluice/istio/loader.h"
#include "sluice/istio/registry.h"
#include "sluice/istio/translator.h"
#include "sluice/proxy/config.h"
#include "sluice/proxy/istio_stats.h"
#include "translate_harness.h"

namespace fs = std::filesystem;
using namespace sluice::istio;
using namespace sluice::istio::test;
using nlohmann::json;
namespace hcm_v3 = envoy::extensions::filters::network::http_connection_manager::v3;
namespace listener_v3 = envoy::config::listener::v3;

namespace {

const fs::path kGoldens = fs::path(SLUICE_ISTIO_TESTDATA) / "telemetry-istiod";

// A service in default (an HTTP port and a TCP port) and the sidecar's own pod.
const char kApps[] = R"(
apiVersion: v1
kind: Service
metadata: {name: sample, namespace: default}
spec:
  clusterIP: 10.0.0.20
  selector: {app: test}
  ports:
  - {name: http, port: 8080}
  - {name: tcp, port: 9000}
)";

// An AuthorizationPolicy selecting the pod, so it has virtualInbound (the server side).
const char kAllowAll[] = R"(---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: default}
spec:
  selector: {matchLabels: {app: test}}
  action: ALLOW
  rules: [{}]
)";

std::string ConfigJson(const google::protobuf::Any& any) {
  stats::PluginConfig pc;
  REQUIRE(any.UnpackTo(&pc));
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  std::string out;
  REQUIRE(google::protobuf::util::MessageToJsonString(pc, &out, o).ok());
  return out;
}

// Each chain's istio.stats configs (JSON), by what carries them: "http" (the connection
// manager's filter) or "tcp" (a network filter); and whether each sits where istiod puts
// it (before the router, before tcp_proxy).
struct ChainStats {
  std::string listener, kind;
  std::vector<std::string> configs;
  bool placed = true;
};

std::vector<ChainStats> StatsOf(const listener_v3::Listener& l) {
  std::vector<ChainStats> out;
  auto chain = [&](const listener_v3::FilterChain& fc) {
    for (int i = 0; i < fc.filters_size(); ++i) {
      const auto& f = fc.filters(i);
      if (f.name() == "envoy.filters.network.tcp_proxy") {
        ChainStats c{l.name(), "tcp"};
        for (int j = 0; j < i; ++j) {
          if (fc.filters(j).name() == "istio.stats") {
            c.configs.push_back(ConfigJson(fc.filters(j).typed_config()));
            c.placed = c.placed && j == i - 1;
          }
        }
        out.push_back(c);
      }
      hcm_v3::HttpConnectionManager hcm;
      if (f.typed_config().Is<hcm_v3::HttpConnectionManager>() && f.typed_config().UnpackTo(&hcm)) {
        ChainStats c{l.name(), "http"};
        const int n = hcm.http_filters_size();
        for (int j = 0; j < n; ++j) {
          if (hcm.http_filters(j).name() == "istio.stats") {
            c.configs.push_back(ConfigJson(hcm.http_filters(j).typed_config()));
            c.placed = c.placed && j == n - 2 &&
                       hcm.http_filters(n - 1).name() == "envoy.filters.http.router";
          }
        }
        out.push_back(c);
      }
    }
  };
  for (const auto& fc : l.filter_chains())
    chain(fc);
  if (l.has_default_filter_chain())
    chain(l.default_filter_chain());
  return out;
}

std::vector<ChainStats> AllStats(const Translation& t) {
  std::vector<ChainStats> out;
  for (const auto& [name, l] : t.resources.listeners)
    for (auto& c : StatsOf(l))
      out.push_back(std::move(c));
  return out;
}

}  // namespace

TEST_CASE("telemetry: istiod's TestTelemetryFilters cases give istiod's stats.PluginConfig") {
  const json expected = json::parse(ReadFile(kGoldens / "expected.json"));
  REQUIRE(expected.size() == 16);
  for (const auto& [name, want] : expected.items()) {
    INFO("case " << name);
    auto r = Load(ReadFile(kGoldens / (name + ".yaml")) + "\n---\n" + kApps);
    REQUIRE(r.errors.empty());
    auto t = TranslateFor(r, "sidecar:app=test@default");
    // The outbound chains of the case's protocol: the service's port 8080 (HTTP) or the
    // VIP listener of port 9000 (TCP).
    const std::string listener = want["protocol"] == "tcp" ? "10.0.0.20_9000" : "0.0.0.0_8080";
    REQUIRE(t.resources.listeners.contains(listener));
    auto chains = StatsOf(t.resources.listeners.at(listener));
    REQUIRE_FALSE(chains.empty());
    for (const auto& c : chains) {
      if (c.kind != want["protocol"])
        continue;
      if (want["istio.stats"].is_null()) {
        CHECK(c.configs.empty());
        continue;
      }
      REQUIRE(c.configs.size() == 1);
      CHECK(c.placed);
      CHECK(json::parse(c.configs[0]) == want["istio.stats"]);
    }
  }
}

TEST_CASE(
    "telemetry: every sidecar chain carries istio.stats where istiod puts it, server "
    "config on virtualInbound") {
  auto r = Load(std::string(kApps) + kAllowAll + R"(---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh, namespace: istio-system}
spec:
  metrics:
  - overrides:
    - match: {metric: REQUEST_COUNT, mode: SERVER}
      disabled: true
)");
  REQUIRE(r.errors.empty());
  auto t = TranslateFor(r, "sidecar:app=test@default");
  std::size_t server = 0, client = 0;
  for (const auto& c : AllStats(t)) {
    INFO(c.listener << " " << c.kind);
    REQUIRE(c.configs.size() == 1);
    CHECK(c.placed);
    if (c.listener == "virtualInbound") {
      ++server;
      CHECK(json::parse(c.configs[0]) == json::parse(R"({"disable_host_header_fallback":true,
                            "metrics":[{"name":"requests_total","drop":true}]})"));
    } else {
      ++client;
      CHECK(c.configs[0] == "{}");  // the client side: nothing changed, Host fallback on
    }
  }
  CHECK(server > 0);
  CHECK(client > 2);  // 0.0.0.0_8080, the 9000 VIP listener, virtualOutbound, ...
}

TEST_CASE("telemetry: scope is the root namespace, then the namespace, then a selector") {
  const std::string root = R"(---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh, namespace: istio-system}
spec:
  metrics:
  - overrides: [{match: {metric: REQUEST_COUNT}, tagOverrides: {a: {value: "'root'"}}}]
)";
  const std::string ns = R"(---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: ns, namespace: default}
spec:
  metrics:
  - overrides: [{match: {metric: REQUEST_COUNT}, tagOverrides: {a: {value: "'ns'"}}}]
)";
  const std::string selected = R"(---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: wl, namespace: default}
spec:
  selector: {matchLabels: {app: test}}
  metrics:
  - overrides: [{match: {metric: REQUEST_COUNT}, tagOverrides: {a: {value: "'wl'"}}}]
)";
  auto value = [](const Translation& t) {
    auto c = StatsOf(t.resources.listeners.at("0.0.0.0_8080"));
    REQUIRE(c.size() == 1);
    REQUIRE(c[0].configs.size() == 1);
    return json::parse(c[0].configs[0])["metrics"][0]["dimensions"]["a"].get<std::string>();
  };
  auto r = Load(std::string(kApps) + root + ns + selected);
  REQUIRE(r.errors.empty());
  CHECK(value(TranslateFor(r, "sidecar:app=test@default")) == "'wl'");
  CHECK(value(TranslateFor(r, "sidecar:app=other@default")) == "'ns'");
  CHECK(value(TranslateFor(r, "sidecar:app=test@elsewhere")) == "'root'");
  // A gateway: the root namespace's, as the client side (no Host fallback at a gateway).
  auto gw = Load(std::string(kApps) + root + R"(---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - {port: {number: 8080, name: http, protocol: HTTP}, hosts: ["*"]}
  - {port: {number: 9000, name: tcp, protocol: TCP}, hosts: ["*"]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: istio-system}
spec:
  hosts: ["*"]
  gateways: [gw]
  http: [{route: [{destination: {host: sample.default.svc.cluster.local, port: {number: 8080}}}]}]
  tcp: [{match: [{port: 9000}], route: [{destination: {host: sample.default.svc.cluster.local, port: {number: 9000}}}]}]
)");
  REQUIRE(gw.errors.empty());
  auto g = TranslateFor(gw, "gateway:istio=ingressgateway@istio-system");
  auto all = AllStats(g);
  REQUIRE(all.size() == 2);
  for (const auto& c : all) {
    INFO(c.listener << " " << c.kind);
    REQUIRE(c.configs.size() == 1);
    CHECK(c.placed);
    auto j = json::parse(c.configs[0]);
    CHECK(j["disable_host_header_fallback"] == true);
    CHECK(j["metrics"][0]["dimensions"]["a"] == "'root'");
  }
}

TEST_CASE(
    "telemetry: ALL_METRICS disabled for the client side leaves the outbound chains "
    "without the filter") {
  auto r = Load(std::string(kApps) + kAllowAll + R"(---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: ns, namespace: default}
spec:
  metrics:
  - providers: [{name: prometheus}]
    overrides: [{match: {mode: CLIENT}, disabled: true}]
)");
  REQUIRE(r.errors.empty());
  auto t = TranslateFor(r, "sidecar:app=test@default");
  std::size_t inbound = 0;
  for (const auto& c : AllStats(t)) {
    INFO(c.listener);
    inbound += c.listener == "virtualInbound";
    CHECK(c.configs.size() == (c.listener == "virtualInbound" ? 1u : 0u));
  }
  CHECK(inbound > 0);
}

TEST_CASE("telemetry: what the loader cannot honour is refused by file, document and field") {
  auto error = [](const std::string& metrics) {
    auto r = Load(
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\n"
        "metadata: {name: t, namespace: default}\nspec:\n" +
        metrics);
    REQUIRE(r.errors.size() == 1);
    CHECK(r.config.telemetries.empty());
    return r.errors[0];
  };
  auto e = error("  metrics: [{providers: [{name: stackdriver}]}]\n");
  CHECK(e.find("t.yaml: document 1") != std::string::npos);
  CHECK(e.find("spec.metrics[0].providers[0].name") != std::string::npos);
  CHECK(e.find("\"stackdriver\"") != std::string::npos);
  e = error("  metrics: [{overrides: [{tagOverrides: {host: {value: request.host}}}]}]\n");
  CHECK(e.find("spec.metrics[0].overrides[0].tagOverrides.host.value") != std::string::npos);
  CHECK(e.find("request.host") != std::string::npos);
  e = error("  metrics: [{overrides: [{match: {metric: REQUEST_COUNTS}}]}]\n");
  CHECK(e.find("spec.metrics[0].overrides[0].match.metric") != std::string::npos);
  e = error("  metrics: [{overrides: [{match: {mode: BOTH}}]}]\n");
  CHECK(e.find("match.mode") != std::string::npos);
  e = error("  targetRefs: [{kind: Service, name: s}]\n  metrics: [{}]\n");
  CHECK(e.find("spec.targetRefs") != std::string::npos);
  e = error("  metrics: [{overrides: [{tagOverrides: {a-b: {value: \"'v'\"}}}]}]\n");
  CHECK(e.find("\"a-b\"") != std::string::npos);
}

TEST_CASE("telemetry: the translated filter compiles in the proxy and drops what was disabled") {
  auto r = Load(std::string(kApps) + kAllowAll + R"(---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: ns, namespace: default}
spec:
  metrics:
  - overrides:
    - match: {metric: REQUEST_COUNT}
      disabled: true
    - match: {metric: REQUEST_DURATION}
      tagOverrides: {response_code: {operation: REMOVE}, mesh: {value: "'m1'"}}
)");
  REQUIRE(r.errors.empty());
  auto t = TranslateFor(r, "sidecar:app=test@default");
  auto cfg = sluice::proxy::Compile(t.resources);
  REQUIRE(cfg);
  for (const auto& x : (*cfg)->refused)
    FAIL_CHECK(x.kind << " " << x.name << ": " << x.reason);
  namespace ist = sluice::proxy::telemetry;
  std::size_t chains = 0;
  for (const auto& l : (*cfg)->listeners) {
    for (const auto& c : l.chains) {
      if (!c.fail_closed.empty())
        continue;
      INFO(l.name << " " << c.name);
      REQUIRE(c.istio_stats);
      ++chains;
      CHECK(c.istio_stats->Dropped(ist::kRequestsTotal));
      CHECK_FALSE(c.istio_stats->Dropped(ist::kRequestDuration));
      const auto& d = c.istio_stats->tags[ist::kRequestDuration];
      CHECK((d.removed >> ist::TagIndex("response_code") & 1) == 1);
      REQUIRE(d.added.size() == 1);
      CHECK(d.added[0] == std::pair<std::string, std::string>{"mesh", "m1"});
    }
  }
  CHECK(chains > 2);
}
