// VirtualService corsPolicy through the translator, field by field against istiod's
// TranslateCORSPolicy (route/route.go) and its HTTP filter list (listener_builder.go:
// fault, cors, ..., router), then compiled by the proxy, so the policy the translator
// writes is the one the proxy enforces.
#include <catch2/catch.hpp>

#include "envoy/extensions/filters/http/cors/v3/cors.pb.h"
#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb.h"
#include "sluice/istio/loader.h"
#include "sluice/istio/registry.h"
#include "sluice/istio/translator.h"
#include "sluice/proxy/config.h"

using namespace sluice::istio;
namespace route_v3 = envoy::config::route::v3;
using CorsPolicyProto = envoy::extensions::filters::http::cors::v3::CorsPolicy;
using HCM = envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;

namespace {

constexpr char kApp[] = R"(apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 8000}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, labels: {app: web}}
status: {podIP: 10.1.0.1}
---
)";

struct Translated {
  LoadResult loaded;
  Translation t;
};

Translated Run(const std::string& vs, const std::string& proxy = "sidecar:default") {
  Translated out;
  LoadText(std::string(kApp) + vs, "t.yaml", out.loaded);
  Validate(out.loaded);
  auto spec = ProxySpec::Parse(proxy);
  REQUIRE(spec);
  out.t = Translate(out.loaded.config, Registry::Build(out.loaded.config), *spec);
  return out;
}

const route_v3::Route& WebRoute(const Translated& r, int i) {
  REQUIRE(r.t.resources.routes.count("8000") == 1);
  const auto& vh = r.t.resources.routes.at("8000").virtual_hosts(0);
  REQUIRE(vh.name() == "web.default.svc.cluster.local:8000");
  REQUIRE(vh.routes_size() > i);
  return vh.routes(i);
}

CorsPolicyProto CorsOf(const route_v3::Route& r) {
  CorsPolicyProto p;
  auto it = r.typed_per_filter_config().find("envoy.filters.http.cors");
  REQUIRE(it != r.typed_per_filter_config().end());
  REQUIRE(it->second.UnpackTo(&p));
  return p;
}

constexpr char kVs[] = R"(apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: [web]
  http:
  - match: [{uri: {prefix: /api}}]
    route: [{destination: {host: web}}]
    corsPolicy:
      allowOrigins: [{exact: "https://a.example"}, {prefix: "https://b."}, {regex: "https://.*\\.c\\.example"}]
      allowMethods: [GET, POST]
      allowHeaders: [authorization, content-type]
      exposeHeaders: [x-request-id, x-trace]
      maxAge: 90m
      allowCredentials: false
      unmatchedPreflights: IGNORE
  - route: [{destination: {host: web}}]
    corsPolicy:
      allowOrigin: ["https://old.example", "https://older.example"]
  - match: [{uri: {prefix: /plain}}]
    route: [{destination: {host: web}}]
)";

}  // namespace

TEST_CASE("corsPolicy becomes the route's cors filter policy, as istiod writes it") {
  auto r = Run(kVs);
  REQUIRE(r.loaded.errors.empty());

  CorsPolicyProto p = CorsOf(WebRoute(r, 0));
  REQUIRE(p.allow_origin_string_match_size() == 3);
  CHECK(p.allow_origin_string_match(0).exact() == "https://a.example");
  CHECK(p.allow_origin_string_match(1).prefix() == "https://b.");
  CHECK(p.allow_origin_string_match(2).safe_regex().regex() == R"(https://.*\.c\.example)");
  CHECK(p.allow_methods() == "GET,POST");
  CHECK(p.allow_headers() == "authorization,content-type");
  CHECK(p.expose_headers() == "x-request-id,x-trace");
  CHECK(p.max_age() == "5400");
  // An explicit false is carried (a BoolValue), as istiod copies it.
  REQUIRE(p.has_allow_credentials());
  CHECK_FALSE(p.allow_credentials().value());
  REQUIRE(p.has_forward_not_matching_preflights());
  CHECK_FALSE(p.forward_not_matching_preflights().value());
  CHECK(p.filter_enabled().default_value().numerator() == 100);
  CHECK(p.filter_enabled().default_value().denominator() ==
        envoy::type::v3::FractionalPercent::HUNDRED);
  CHECK_FALSE(p.has_shadow_enabled());

  // The deprecated allowOrigin list: exact matches; istiod's defaults for the rest.
  CorsPolicyProto old = CorsOf(WebRoute(r, 1));
  REQUIRE(old.allow_origin_string_match_size() == 2);
  CHECK(old.allow_origin_string_match(0).exact() == "https://old.example");
  CHECK(old.allow_origin_string_match(1).exact() == "https://older.example");
  CHECK(old.forward_not_matching_preflights().value());
  CHECK_FALSE(old.has_allow_credentials());
  CHECK(old.allow_methods().empty());
  CHECK(old.max_age().empty());

  // A route without corsPolicy has no entry.
  CHECK(WebRoute(r, 2).typed_per_filter_config().count("envoy.filters.http.cors") == 0);
}

TEST_CASE(
    "sidecar and gateway connection managers have fault, cors, istio.stats and router in "
    "istiod's order") {
  auto r = Run(kVs);
  REQUIRE(r.t.resources.listeners.count("0.0.0.0_8000") == 1);
  const auto& l = r.t.resources.listeners.at("0.0.0.0_8000");
  HCM hcm;
  REQUIRE(l.filter_chains(0).filters(0).typed_config().UnpackTo(&hcm));
  REQUIRE(hcm.http_filters_size() == 4);
  CHECK(hcm.http_filters(0).name() == "envoy.filters.http.fault");
  CHECK(hcm.http_filters(1).name() == "envoy.filters.http.cors");
  CHECK(hcm.http_filters(1).typed_config().type_url() ==
        "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors");
  CHECK(hcm.http_filters(2).name() == "istio.stats");  // Istio's metrics (Telemetry)
  CHECK(hcm.http_filters(3).name() == "envoy.filters.http.router");
}

TEST_CASE("the proxy compiles the translated CORS policy and enforces what it says") {
  auto r = Run(kVs);
  auto cfg = sluice::proxy::Compile(r.t.resources);
  REQUIRE(cfg);
  const auto& listener_chain = [&]() -> const sluice::proxy::FilterChain& {
    for (const auto& l : (*cfg)->listeners) {
      if (l.name == "0.0.0.0_8000")
        return l.chains.at(0);
    }
    FAIL("no listener 0.0.0.0_8000");
    return (*cfg)->listeners.at(0).chains.at(0);
  }();
  CHECK(listener_chain.http.cors);
  CHECK_FALSE(listener_chain.http.cors_before_fault);
  const auto* vh = listener_chain.http.routes->FindVirtualHost("web");
  REQUIRE(vh);
  REQUIRE(vh->routes.size() == 3);
  const auto& api = vh->routes[0].cors;
  REQUIRE(api);
  CHECK(api->OriginAllowed("https://a.example"));
  CHECK(api->OriginAllowed("https://b.anything"));
  CHECK(api->OriginAllowed("https://x.c.example"));
  CHECK_FALSE(api->OriginAllowed("https://x.c.example.evil"));
  CHECK_FALSE(api->forward_not_matching_preflights);
  CHECK(api->max_age == "5400");
  CHECK(api->enabled_per_million == 1000000);
  REQUIRE(vh->routes[1].cors);
  CHECK(vh->routes[1].cors->forward_not_matching_preflights);
  CHECK(vh->routes[2].cors == nullptr);
}

TEST_CASE("a corsPolicy the loader cannot read is refused, naming the field") {
  const std::pair<std::string, std::string> cases[] = {
      {"allowOrigins: [{regex: \"(\"}]", "corsPolicy.allowOrigins[0].regex: invalid RE2 regex"},
      {"maxAge: soon", "corsPolicy.maxAge"},
      {"unmatchedPreflights: DROP", "corsPolicy.unmatchedPreflights"},
      {"allowCredentials: maybe", "corsPolicy.allowCredentials"},
  };
  for (const auto& [field, want] : cases) {
    auto r = Run(R"(apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: [web]
  http:
  - route: [{destination: {host: web}}]
    corsPolicy:
      )" + field +
                 "\n");
    INFO(field);
    REQUIRE(r.loaded.errors.size() == 1);
    CHECK(r.loaded.errors[0].find("spec.http[0]." + want) != std::string::npos);
    CHECK(r.loaded.config.virtual_services.empty());
  }
}
