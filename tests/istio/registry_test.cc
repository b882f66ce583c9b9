// Service registry: endpoints from every Kubernetes source, ServiceEntry resolution, and
// how hosts resolve from a namespace.
#include "sluice/istio/registry.h"

#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "sluice/istio/loader.h"
#include "sluice/istio/translator.h"

using namespace sluice::istio;

namespace {

Config Load(const std::string& text) {
  LoadResult r;
  LoadText(text, "t.yaml", r);
  Validate(r);
  REQUIRE(r.errors.empty());
  return r.config;
}

std::vector<std::string> Addresses(const RegistryService& s, uint32_t port) {
  std::vector<std::string> out;
  for (const auto& e : s.endpoints) {
    auto it = e.ports.find(port);
    if (it != e.ports.end())
      out.push_back(e.address + ":" + std::to_string(it->second));
  }
  return out;
}

}  // namespace

TEST_CASE("Endpoints objects map service ports by name and take labels from the Pods") {
  Config c = Load(R"(apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  selector: {app: reviews}
  ports: [{name: http, port: 9080, targetPort: web}, {name: metrics, port: 9090}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: reviews, namespace: shop}
subsets:
- addresses:
  - {ip: 10.2.0.1, targetRef: {kind: Pod, name: reviews-v1}}
  - {ip: 10.2.0.2, targetRef: {kind: Pod, name: reviews-v2}}
  ports: [{name: http, port: 8080}, {name: metrics, port: 15020}]
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v2, namespace: shop, labels: {app: reviews, version: v2}}
status: {podIP: 10.2.0.2}
)");
  Registry r = Registry::Build(c);
  const RegistryService* s = r.Resolve("reviews", "shop");
  REQUIRE(s != nullptr);
  CHECK(s->hostname == "reviews.shop.svc.cluster.local");
  CHECK(s->addresses == std::vector<std::string>{"10.96.0.20"});
  CHECK(Addresses(*s, 9080) == std::vector<std::string>{"10.2.0.1:8080", "10.2.0.2:8080"});
  CHECK(Addresses(*s, 9090) == std::vector<std::string>{"10.2.0.1:15020", "10.2.0.2:15020"});
  CHECK(s->endpoints[1].labels.at("version") == "v2");
  CHECK(s->endpoints[0].labels.empty());  // no Pod document for reviews-v1
  // Short names resolve only from the service's namespace; "name.ns" from anywhere.
  CHECK(r.Resolve("reviews", "default") == nullptr);
  CHECK(r.Resolve("reviews.shop", "default") == s);
}

TEST_CASE("EndpointSlices and named container ports") {
  Config c = Load(R"(apiVersion: v1
kind: Service
metadata: {name: ratings}
spec:
  selector: {app: ratings}
  ports: [{name: http, port: 9080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ratings-abc, labels: {kubernetes.io/service-name: ratings}}
endpoints:
- addresses: [10.3.0.1]
- addresses: [10.3.0.2]
  conditions: {ready: false}
ports: [{name: http, port: 9081}]
---
apiVersion: v1
kind: Service
metadata: {name: details}
spec:
  selector: {app: details}
  ports: [{name: http, port: 9080, targetPort: http-web}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: details-v1, annotations: {sluice.io/pod-ips: "10.4.0.1, 10.4.0.2"}}
spec:
  template:
    metadata: {labels: {app: details, version: v1}}
    spec: {containers: [{name: d, ports: [{name: http-web, containerPort: 9443}]}]}
)");
  Registry r = Registry::Build(c);
  const auto* ratings = r.Resolve("ratings", "default");
  REQUIRE(ratings);
  CHECK(Addresses(*ratings, 9080) ==
        std::vector<std::string>{"10.3.0.1:9081"});  // not-ready left out
  const auto* details = r.Resolve("details", "default");
  REQUIRE(details);
  CHECK(Addresses(*details, 9080) == std::vector<std::string>{"10.4.0.1:9443", "10.4.0.2:9443"});
}

TEST_CASE("ServiceEntry resolution NONE is passthrough: an ORIGINAL_DST cluster") {
  Config c = Load(R"(apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: any-db}
spec:
  hosts: [db.example.com]
  addresses: [172.20.0.0/16]
  ports: [{number: 5432, name: tcp-pg, protocol: TCP}]
  resolution: NONE
)");
  Registry r = Registry::Build(c);
  REQUIRE(r.services().size() == 1);
  CHECK(r.services()[0].resolution == RegistryService::Resolution::kPassthrough);
  CHECK(r.services()[0].mesh_external);
  auto t = Translate(c, r, *ProxySpec::Parse("sidecar:default"));
  const auto& cl = t.resources.clusters.at("outbound|5432||db.example.com");
  CHECK(cl.type() == envoy::config::cluster::v3::Cluster::ORIGINAL_DST);
  CHECK(t.resources.endpoints.count("outbound|5432||db.example.com") == 0);
  auto j = nlohmann::json::parse(r.RegistryzJson());
  CHECK(j[0]["Resolution"] == 2);
  CHECK(j[0]["MeshExternal"] == true);
}

TEST_CASE("port protocols are inferred as Istio does") {
  CHECK(ParseProtocol("http") == Protocol::kHttp);
  CHECK(ParseProtocol("GRPC") == Protocol::kGrpc);
  CHECK(ParseProtocol("tls") == Protocol::kTls);
  CHECK(ParseProtocol("mongodb") == Protocol::kUnknown);
  Config c = Load(R"(apiVersion: v1
kind: Service
metadata: {name: mix}
spec:
  ports:
  - {name: http-web, port: 80}
  - {name: tcp-db, port: 5432}
  - {name: x, port: 9000, appProtocol: https}
  - {name: dns, port: 53, protocol: UDP}
)");
  const auto& ports = Registry::Build(c).services()[0].ports;
  CHECK(ports[0].protocol == Protocol::kHttp);
  CHECK(ports[1].protocol == Protocol::kTcp);
  CHECK(ports[2].protocol == Protocol::kHttps);
  CHECK(ports[3].protocol == Protocol::kUdp);
}

TEST_CASE("two ServiceEntries for one host: the first wins, with a warning") {
  Config c = Load(R"(apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: first}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: second}
spec:
  hosts: [api.example.com]
  ports: [{number: 8443, name: tls, protocol: TLS}]
  resolution: DNS
)");
  Registry r = Registry::Build(c);
  REQUIRE(r.services().size() == 1);
  CHECK(r.services()[0].name == "first");
  REQUIRE(r.warnings().size() == 1);
  CHECK(r.warnings()[0] ==
        "host api.example.com in namespace default is defined by first and "
        "again by second; the first one is used");
}
