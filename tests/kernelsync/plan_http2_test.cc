// Plan() of HTTP/2 and gRPC services (issue 18), from what Sluice's Istio translator
// makes of Istio YAML: a gRPC channel is one long-lived connection whose calls are
// balanced one by one, and a client speaking HTTP/1.1 to an upgraded cluster needs the
// proxy to speak HTTP/2 for it — the kernel balances per connection and forwards bytes
// as they are, so such services go to the in-pod proxy (L7Reason::kHttp2). Plain HTTP
// services without L7 rules stay in the kernel.
#include <catch2/catch.hpp>

#include "envoy/extensions/upstreams/http/v3/http_protocol_options.pb.h"
#include "fixtures.h"
#include "sluice/config/store.h"
#include "sluice/istio/loader.h"
#include "sluice/istio/registry.h"
#include "sluice/istio/translator.h"
#include "sluice/kernelsync/plan.h"

using namespace sluice;

namespace {

constexpr char kApps[] = R"(apiVersion: v1
kind: Service
metadata: {name: greeter}
spec:
  clusterIP: 10.96.0.70
  selector: {app: greeter}
  ports: [{name: grpc, port: 50051}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.71
  selector: {app: web}
  ports: [{name: http-web, port: 8000}]
---
apiVersion: v1
kind: Pod
metadata: {name: greeter-v1, labels: {app: greeter, version: v1}}
status: {podIP: 10.1.0.71}
---
apiVersion: v1
kind: Pod
metadata: {name: greeter-v2, labels: {app: greeter, version: v2}}
status: {podIP: 10.1.0.72}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, labels: {app: web}}
status: {podIP: 10.1.0.73}
)";

const std::string kGreeter = "greeter.default.svc.cluster.local:50051";
const std::string kWeb = "web.default.svc.cluster.local:8000";

kernelsync::KernelPlan PlanOf(const std::string& extra) {
  istio::LoadResult r;
  istio::LoadText(std::string(kApps) + (extra.empty() ? "" : "---\n" + extra), "t.yaml", r);
  istio::Validate(r);
  INFO((r.errors.empty() ? "" : r.errors.front()));
  REQUIRE(r.errors.empty());
  auto spec = istio::ProxySpec::Parse("sidecar:default");
  REQUIRE(spec);
  auto t = istio::Translate(r.config, istio::Registry::Build(r.config), *spec);
  auto plan = kernelsync::Plan(config::Snapshot::FromResourceSet(t.resources));
  INFO((plan ? "" : plan.error().message));
  REQUIRE(plan);
  return *plan;
}

const ServiceSpec& Find(const kernelsync::KernelPlan& p, const std::string& name) {
  const ServiceSpec* s = p.Find(name);
  INFO(name);
  REQUIRE(s);
  return *s;
}

void RequireHttp2(const kernelsync::KernelPlan& p, const std::string& name,
                  const std::string& cluster) {
  const ServiceSpec& s = Find(p, name);
  CHECK(s.redirect_to_proxy);
  CHECK(s.l7_reason == L7Reason::kHttp2);
  CHECK(s.clusters.empty());
  REQUIRE(p.l7_reasons.count(name) == 1);
  CHECK(p.l7_reasons.at(name) == "cluster '" + cluster +
                                     "' is HTTP/2 upstream (gRPC or HTTP/2): the proxy balances "
                                     "it per request");
}

void RequireKernel(const kernelsync::KernelPlan& p, const std::string& name) {
  const ServiceSpec& s = Find(p, name);
  CHECK_FALSE(s.redirect_to_proxy);
  CHECK(s.l7_reason == L7Reason::kUnspecified);
  CHECK(p.l7_reasons.count(name) == 0);
  REQUIRE(s.clusters.size() == 1);
  CHECK_FALSE(s.clusters[0].endpoints.empty());
}

std::string Dr(const std::string& host, const std::string& body) {
  return "apiVersion: networking.istio.io/v1\n"
         "kind: DestinationRule\n"
         "metadata: {name: " +
         host + "}\nspec:\n  host: " + host + "\n" + body;
}

}  // namespace

TEST_CASE("plan: a gRPC port without any VirtualService goes to the proxy (reason http2)") {
  auto p = PlanOf("");
  RequireHttp2(p, kGreeter, "outbound|50051||greeter.default.svc.cluster.local");
  RequireKernel(p, kWeb);  // an HTTP port without L7 rules stays in the kernel
  CHECK(L7ReasonName(L7Reason::kHttp2) == "HTTP/2 or gRPC: balanced per request");
}

TEST_CASE("plan: a 50/50 split of a gRPC service is the proxy's, per call") {
  auto p = PlanOf(Dr("greeter",
                     "  subsets:\n"
                     "  - {name: v1, labels: {version: v1}}\n"
                     "  - {name: v2, labels: {version: v2}}\n") +
                  R"(---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: greeter}
spec:
  hosts: [greeter]
  http:
  - route:
    - {destination: {host: greeter, subset: v1}, weight: 50}
    - {destination: {host: greeter, subset: v2}, weight: 50}
)");
  RequireHttp2(p, kGreeter, "outbound|50051|v1|greeter.default.svc.cluster.local");
  // The same split of an HTTP/1.1 service is the kernel's (per connection).
  auto http = PlanOf(Dr("web",
                        "  subsets:\n"
                        "  - {name: a, labels: {app: web}}\n"
                        "  - {name: b, labels: {app: web}}\n") +
                     R"(---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: [web]
  http:
  - route:
    - {destination: {host: web, subset: a}, weight: 50}
    - {destination: {host: web, subset: b}, weight: 50}
)");
  const ServiceSpec& web = Find(http, kWeb);
  CHECK_FALSE(web.redirect_to_proxy);
  CHECK(web.clusters.size() == 2);
}

TEST_CASE("plan: h2UpgradePolicy UPGRADE moves an HTTP port to the proxy") {
  SECTION("by DestinationRule") {
    auto p = PlanOf(Dr("web",
                       "  trafficPolicy:\n"
                       "    connectionPool: {http: {h2UpgradePolicy: UPGRADE}}\n"));
    RequireHttp2(p, kWeb, "outbound|8000||web.default.svc.cluster.local");
  }
  SECTION("by the mesh's default") {
    auto p = PlanOf(R"(apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    h2UpgradePolicy: UPGRADE
)");
    RequireHttp2(p, kWeb, "outbound|8000||web.default.svc.cluster.local");
  }
  SECTION("useClientProtocol on the gRPC port: the client's protocol, the kernel's") {
    auto p = PlanOf(Dr("greeter",
                       "  trafficPolicy:\n"
                       "    connectionPool: {http: {useClientProtocol: true}}\n"));
    RequireKernel(p, kGreeter);
  }
}

TEST_CASE("plan: a TCP service to an HTTP/2 cluster stays in the kernel") {
  // h2 options on a cluster only a tcp_proxy uses change nothing for its bytes.
  using namespace sluice::test;
  namespace http_v3 = envoy::extensions::upstreams::http::v3;
  const std::string c = "outbound|3306||db.default.svc.cluster.local";
  auto cluster = FromJson<envoy::config::cluster::v3::Cluster>(Eds(c));
  http_v3::HttpProtocolOptions o;
  o.mutable_explicit_http_config()->mutable_http2_protocol_options();
  (*cluster.mutable_typed_extension_protocol_options())
      ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
          .PackFrom(o);
  sluice::xds::ResourceSet rs;
  rs.Add(std::move(cluster));
  rs.Add(FromJson<envoy::config::endpoint::v3::ClusterLoadAssignment>(Cla(c, {"10.1.0.9:3306"})));
  rs.Add(FromJson<envoy::config::listener::v3::Listener>(TcpListener("10.96.0.9", 3306, c)));
  auto plan = kernelsync::Plan(config::Snapshot::FromResourceSet(rs));
  REQUIRE(plan);
  REQUIRE(plan->services.size() == 1);
  CHECK_FALSE(plan->services[0].redirect_to_proxy);
}

TEST_CASE("replan: a cluster turned HTTP/2 (or back) moves its service, as a whole plan would") {
  namespace http_v3 = envoy::extensions::upstreams::http::v3;
  istio::LoadResult r;
  istio::LoadText(kApps, "t.yaml", r);
  istio::Validate(r);
  auto t = istio::Translate(r.config, istio::Registry::Build(r.config),
                            *istio::ProxySpec::Parse("sidecar:default"));
  config::ConfigStore store;
  REQUIRE(store.Apply(config::Snapshot::FromResourceSet(t.resources)));
  auto plan = kernelsync::Plan(*store.Current());
  REQUIRE(plan);
  const std::string web = "outbound|8000||web.default.svc.cluster.local";
  for (bool h2 : {true, false}) {
    auto c =
        std::make_shared<envoy::config::cluster::v3::Cluster>(*store.Current()->clusters.at(web));
    c->clear_typed_extension_protocol_options();
    if (h2) {
      http_v3::HttpProtocolOptions o;
      o.mutable_explicit_http_config()->mutable_http2_protocol_options();
      (*c->mutable_typed_extension_protocol_options())
          ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
              .PackFrom(o);
    }
    config::SnapshotEdit e;
    e.clusters[web] = c;
    auto diff = store.Edit(std::move(e));
    REQUIRE(diff);
    auto edit = kernelsync::Replan(*plan, *store.Current(), *diff);
    REQUIRE(edit);
    REQUIRE(*edit);  // a cluster change alone: decided again without a whole plan
    REQUIRE((*edit)->services.size() == 1);
    CHECK((*edit)->services[0].redirect_to_proxy == h2);
    kernelsync::Commit(*plan, std::move(**edit));
    auto whole = kernelsync::Plan(*store.Current());
    REQUIRE(whole);
    CHECK(plan->services == whole->services);
    CHECK(plan->l7_reasons == whole->l7_reasons);
    CHECK(Find(*plan, kWeb).l7_reason == (h2 ? L7Reason::kHttp2 : L7Reason::kUnspecified));
  }
}
