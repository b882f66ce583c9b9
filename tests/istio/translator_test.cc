// Translator semantics beyond the golden cases, checked field by field on the protos.
#include "sluice/istio/translator.h"

#include <catch2/catch.hpp>

#include "envoy/extensions/filters/http/fault/v3/fault.pb.h"
#include "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.pb.h"
#include "envoy/extensions/transport_sockets/tls/v3/tls.pb.h"
#include "sluice/istio/loader.h"
#include "sluice/istio/registry.h"

using namespace sluice::istio;
namespace route_v3 = envoy::config::route::v3;
namespace cluster_v3 = envoy::config::cluster::v3;
namespace listener_v3 = envoy::config::listener::v3;

namespace {

constexpr char kHelloworld[] = R"(apiVersion: v1
kind: Service
metadata: {name: helloworld}
spec:
  selector: {app: helloworld}
  ports: [{name: http, port: 5000}, {name: grpc-admin, port: 5001}]
---
apiVersion: v1
kind: Pod
metadata: {name: hw-v1, labels: {app: helloworld, version: v1}}
status: {podIP: 10.1.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: hw-v2, labels: {app: helloworld, version: v2}}
status: {podIP: 10.1.0.2}
)";

struct Translated {
  LoadResult loaded;
  Translation t;
};

Translated Run(const std::string& extra, const std::string& proxy = "sidecar:default") {
  Translated out;
  LoadText(std::string(kHelloworld) + "---\n" + extra, "t.yaml", out.loaded);
  Validate(out.loaded);
  auto spec = ProxySpec::Parse(proxy);
  REQUIRE(spec);
  out.t = Translate(out.loaded.config, Registry::Build(out.loaded.config), *spec);
  return out;
}

const route_v3::VirtualHost& HelloHost(const Translated& r, const std::string& port = "5000") {
  REQUIRE(r.t.resources.routes.count(port) == 1);
  const auto& rc = r.t.resources.routes.at(port);
  REQUIRE(rc.virtual_hosts_size() >= 1);
  REQUIRE(rc.virtual_hosts(0).name() == "helloworld.default.svc.cluster.local:" + port);
  return rc.virtual_hosts(0);
}

}  // namespace

TEST_CASE("timeouts, retries, fault injection, rewrites and header operations carry over") {
  auto r = Run(R"(apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: hw}
spec:
  hosts: [helloworld]
  http:
  - match: [{uri: {exact: /hello}, headers: {x-user: {prefix: jas}}, method: {exact: GET}}]
    route: [{destination: {host: helloworld}}]
    timeout: 2.5s
    retries: {attempts: 4, perTryTimeout: 300ms, retryOn: "gateway-error,409"}
    fault:
      delay: {fixedDelay: 7s, percentage: {value: 12.5}}
      abort: {httpStatus: 418}
    rewrite: {uri: /v2/hello, authority: hello.internal}
    headers:
      request: {set: {x-env: prod}, add: {x-trace: "1"}, remove: [cookie]}
      response: {remove: [server]}
  - route: [{destination: {host: helloworld}}]
    retries: {attempts: 0}
)");
  REQUIRE(r.loaded.ok());
  const auto& vh = HelloHost(r);
  REQUIRE(vh.routes_size() == 2);
  const auto& route = vh.routes(0);
  CHECK(route.match().path() == "/hello");
  REQUIRE(route.match().headers_size() == 2);
  CHECK(route.match().headers(0).name() == "x-user");
  CHECK(route.match().headers(0).string_match().prefix() == "jas");
  CHECK(route.match().headers(1).name() == ":method");
  const auto& ra = route.route();
  CHECK(ra.cluster() == "outbound|5000||helloworld.default.svc.cluster.local");
  CHECK(ra.timeout().seconds() == 2);
  CHECK(ra.timeout().nanos() == 500000000);
  CHECK(ra.retry_policy().num_retries().value() == 4);
  CHECK(ra.retry_policy().retry_on() == "gateway-error,retriable-status-codes");
  REQUIRE(ra.retry_policy().retriable_status_codes_size() == 1);
  CHECK(ra.retry_policy().retriable_status_codes(0) == 409);
  CHECK(ra.retry_policy().per_try_timeout().nanos() == 300000000);
  CHECK(ra.prefix_rewrite() == "/v2/hello");
  CHECK(ra.host_rewrite_literal() == "hello.internal");

  envoy::extensions::filters::http::fault::v3::HTTPFault fault;
  REQUIRE(route.typed_per_filter_config().count("envoy.filters.http.fault") == 1);
  REQUIRE(route.typed_per_filter_config().at("envoy.filters.http.fault").UnpackTo(&fault));
  CHECK(fault.delay().fixed_delay().seconds() == 7);
  CHECK(fault.delay().percentage().numerator() == 125000);  // 12.5% per million
  CHECK(fault.delay().percentage().denominator() == envoy::type::v3::FractionalPercent::MILLION);
  CHECK(fault.abort().http_status() == 418);
  CHECK(fault.abort().percentage().numerator() == 1000000);  // unset: always

  REQUIRE(route.request_headers_to_add_size() == 2);
  CHECK(route.request_headers_to_add(0).header().key() == "x-env");
  CHECK(route.request_headers_to_add(0).append_action() ==
        envoy::config::core::v3::HeaderValueOption::OVERWRITE_IF_EXISTS_OR_ADD);
  CHECK(route.request_headers_to_add(1).append_action() ==
        envoy::config::core::v3::HeaderValueOption::APPEND_IF_EXISTS_OR_ADD);
  CHECK(route.request_headers_to_remove(0) == "cookie");
  CHECK(route.response_headers_to_remove(0) == "server");

  // attempts: 0 switches retries off; nothing set means Istio's defaults (2 attempts).
  CHECK_FALSE(vh.routes(1).route().has_retry_policy());
}

TEST_CASE("destination header operations go on their weighted cluster") {
  auto r = Run(R"(apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: hw}
spec:
  host: helloworld
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: hw}
spec:
  hosts: [helloworld]
  http:
  - route:
    - destination: {host: helloworld, subset: v1}
      weight: 90
      headers: {request: {set: {x-canary: "no"}}}
    - destination: {host: helloworld, subset: v2}
      weight: 10
      headers: {request: {set: {x-canary: "yes"}}, response: {add: {x-served-by: v2}}}
)");
  REQUIRE(r.loaded.ok());
  const auto& wc = HelloHost(r).routes(0).route().weighted_clusters();
  REQUIRE(wc.clusters_size() == 2);
  CHECK(wc.clusters(0).request_headers_to_add(0).header().value() == "no");
  CHECK(wc.clusters(1).request_headers_to_add(0).header().value() == "yes");
  CHECK(wc.clusters(1).response_headers_to_add(0).header().key() == "x-served-by");
  CHECK(wc.clusters(0).response_headers_to_add_size() == 0);
}

TEST_CASE("VirtualService hosts outside the registry get a virtual host on port 80") {
  auto r = Run(R"(apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ports: [{name: http, port: 80}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: external}
spec:
  hosts: [www.example.com]
  http: [{route: [{destination: {host: web}}], timeout: 3s}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: hw-alias}
spec:
  hosts: [helloworld, hello.example.com]
  http: [{route: [{destination: {host: helloworld, port: {number: 5000}}}]}]
)");
  REQUIRE(r.loaded.ok());
  const auto& rc80 = r.t.resources.routes.at("80");
  REQUIRE(rc80.virtual_hosts_size() == 3);  // web, www.example.com, allow_any
  CHECK(rc80.virtual_hosts(1).name() == "www.example.com:80");
  CHECK(rc80.virtual_hosts(1).domains(0) == "www.example.com");
  CHECK(rc80.virtual_hosts(1).routes(0).route().cluster() ==
        "outbound|80||web.default.svc.cluster.local");
  CHECK(rc80.virtual_hosts(1).routes(0).route().timeout().seconds() == 3);
  // An extra host beside a service rides on that service's HTTP ports, not on 80.
  const auto& rc5000 = r.t.resources.routes.at("5000");
  bool alias = false;
  for (const auto& vh : rc5000.virtual_hosts())
    alias = alias || vh.name() == "hello.example.com:5000";
  CHECK(alias);
  for (const auto& vh : rc80.virtual_hosts())
    CHECK(vh.name() != "hello.example.com:80");
}

TEST_CASE("a Sidecar resource limits what the proxy sees and can set REGISTRY_ONLY") {
  const std::string other = R"(apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: shop}
spec:
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: details, namespace: shop}
spec:
  ports: [{name: http, port: 9080}]
---
)";
  auto r = Run(other + R"(apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: default}
spec:
  egress:
  - hosts: ["./*", "shop/ratings.shop.svc.cluster.local"]
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
)");
  REQUIRE(r.loaded.ok());
  const auto& clusters = r.t.resources.clusters;
  CHECK(clusters.count("outbound|5000||helloworld.default.svc.cluster.local") == 1);
  CHECK(clusters.count("outbound|9080||ratings.shop.svc.cluster.local") == 1);
  CHECK(clusters.count("outbound|9080||details.shop.svc.cluster.local") == 0);
  const auto& rc = r.t.resources.routes.at("9080");
  REQUIRE(rc.virtual_hosts_size() == 2);
  CHECK(rc.virtual_hosts(1).name() == "block_all");

  // A workloadSelector Sidecar applies only to the pods it selects; others fall back to
  // the namespace-wide one (none here: they see everything).
  const std::string selected = other + R"(apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: sleep-only, namespace: default}
spec:
  workloadSelector: {labels: {app: sleep}}
  egress: [{hosts: ["./*"]}]
)";
  auto sleep = Run(selected, "gateway:x=y");  // gateways ignore Sidecars
  CHECK(sleep.t.resources.clusters.count("outbound|9080||details.shop.svc.cluster.local") == 1);
  Translated sleep_pod;
  LoadText(std::string(kHelloworld) + "---\n" + selected, "t.yaml", sleep_pod.loaded);
  Validate(sleep_pod.loaded);
  ProxySpec spec;
  spec.ns = "default";
  spec.labels = {{"app", "sleep"}};
  auto t = Translate(sleep_pod.loaded.config, Registry::Build(sleep_pod.loaded.config), spec);
  CHECK(t.resources.clusters.count("outbound|9080||details.shop.svc.cluster.local") == 0);
  spec.labels = {{"app", "other"}};
  t = Translate(sleep_pod.loaded.config, Registry::Build(sleep_pod.loaded.config), spec);
  CHECK(t.resources.clusters.count("outbound|9080||details.shop.svc.cluster.local") == 1);
}

TEST_CASE("redirects and direct responses") {
  auto r = Run(R"(apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: hw}
spec:
  hosts: [helloworld]
  http:
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, authority: new.example.com, redirectCode: 308}
  - match: [{uri: {prefix: /gone}}]
    directResponse: {status: 410, body: {string: "gone"}}
  - route: [{destination: {host: helloworld}}]
)");
  REQUIRE(r.loaded.ok());
  const auto& vh = HelloHost(r);
  REQUIRE(vh.routes_size() == 3);
  CHECK(vh.routes(0).redirect().path_redirect() == "/new");
  CHECK(vh.routes(0).redirect().host_redirect() == "new.example.com");
  CHECK(vh.routes(0).redirect().response_code() == route_v3::RedirectAction::PERMANENT_REDIRECT);
  CHECK(vh.routes(1).direct_response().status() == 410);
  CHECK(vh.routes(1).direct_response().body().inline_string() == "gone");
}

TEST_CASE("match.port and gateways decide where a VirtualService route applies") {
  auto r = Run(R"(apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: hw}
spec:
  hosts: [helloworld]
  http:
  - match: [{port: 5001}]
    route: [{destination: {host: helloworld, port: {number: 5001}}}]
  - match: [{port: 5000, gateways: [some-gateway]}]
    route: [{destination: {host: helloworld, subset: v9}}]
  - route: [{destination: {host: helloworld, port: {number: 5000}}}]
)");
  // subset v9 is not defined: the loader rejects the VirtualService.
  REQUIRE(r.loaded.errors.size() == 1);
  CHECK(r.loaded.errors[0].find("spec.http[1].route[0].destination.subset") != std::string::npos);
  CHECK(HelloHost(r).routes(0).name() == "default");

  r = Run(R"(apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: hw}
spec:
  hosts: [helloworld]
  gateways: [mesh, some-gateway]
  http:
  - match: [{port: 5001}]
    route: [{destination: {host: helloworld, port: {number: 5001}}}]
  - match: [{port: 5000, gateways: [some-gateway]}]
    route: [{destination: {host: helloworld, port: {number: 5001}}}]
  - route: [{destination: {host: helloworld, port: {number: 5000}}}]
)");
  REQUIRE(r.loaded.ok());
  const auto& on5000 = HelloHost(r, "5000");
  REQUIRE(on5000.routes_size() == 1);  // the port-5001 and gateway-only matches are left out
  CHECK(on5000.routes(0).route().cluster() ==
        "outbound|5000||helloworld.default.svc.cluster.local");
  const auto& on5001 = HelloHost(r, "5001");
  REQUIRE(on5001.routes_size() == 2);
  CHECK(on5001.routes(0).route().cluster() ==
        "outbound|5001||helloworld.default.svc.cluster.local");
}

TEST_CASE("consistent hash becomes RING_HASH or MAGLEV plus a hash policy on the route") {
  auto r = Run(R"(apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: hw}
spec:
  host: helloworld
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: x-user, minimumRingSize: 2048}
    portLevelSettings:
    - port: {number: 5001}
      loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 65537}}}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
)");
  REQUIRE(r.loaded.ok());
  const auto& clusters = r.t.resources.clusters;
  const auto& c5000 = clusters.at("outbound|5000||helloworld.default.svc.cluster.local");
  CHECK(c5000.lb_policy() == cluster_v3::Cluster::RING_HASH);
  CHECK(c5000.ring_hash_lb_config().minimum_ring_size().value() == 2048);
  const auto& c5001 = clusters.at("outbound|5001||helloworld.default.svc.cluster.local");
  CHECK(c5001.lb_policy() == cluster_v3::Cluster::MAGLEV);
  CHECK(c5001.maglev_lb_config().table_size().value() == 65537);
  // The subset's own policy replaces the top-level one.
  CHECK(clusters.at("outbound|5000|v1|helloworld.default.svc.cluster.local").lb_policy() ==
        cluster_v3::Cluster::ROUND_ROBIN);
  // The subset cluster only holds the v1 pod.
  const auto& cla =
      r.t.resources.endpoints.at("outbound|5000|v1|helloworld.default.svc.cluster.local");
  REQUIRE(cla.endpoints(0).lb_endpoints_size() == 1);
  CHECK(cla.endpoints(0).lb_endpoints(0).endpoint().address().socket_address().address() ==
        "10.1.0.1");

  const auto& route = HelloHost(r).routes(0).route();
  REQUIRE(route.hash_policy_size() == 1);
  CHECK(route.hash_policy(0).header().header_name() == "x-user");
}

TEST_CASE("PASSTHROUGH load balancing gives an ORIGINAL_DST cluster without EDS") {
  auto r = Run(R"(apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: hw}
spec:
  host: helloworld.default.svc.cluster.local
  trafficPolicy: {loadBalancer: {simple: PASSTHROUGH}}
)");
  REQUIRE(r.loaded.ok());
  const auto& c = r.t.resources.clusters.at("outbound|5000||helloworld.default.svc.cluster.local");
  CHECK(c.type() == cluster_v3::Cluster::ORIGINAL_DST);
  CHECK(c.lb_policy() == cluster_v3::Cluster::CLUSTER_PROVIDED);
  CHECK(r.t.resources.endpoints.count(c.name()) == 0);
}

TEST_CASE("REGISTRY_ONLY answers unknown hosts with 502 and blackholes unknown TCP") {
  auto r = Run(R"(apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data: {mesh: "outboundTrafficPolicy: {mode: REGISTRY_ONLY}"}
)");
  REQUIRE(r.loaded.ok());
  const auto& rc = r.t.resources.routes.at("5000");
  const auto& last = rc.virtual_hosts(rc.virtual_hosts_size() - 1);
  CHECK(last.name() == "block_all");
  CHECK(last.domains(0) == "*");
  CHECK(last.routes(0).direct_response().status() == 502);
  envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy tcp;
  // tcp_proxy is the chain's last filter (istio.stats comes before it).
  const auto& vo_chain = r.t.resources.listeners.at("virtualOutbound").default_filter_chain();
  REQUIRE(vo_chain.filters(vo_chain.filters_size() - 1).typed_config().UnpackTo(&tcp));
  CHECK(tcp.cluster() == "BlackHoleCluster");
}

TEST_CASE("short names are relative to the VirtualService's namespace and exportTo hides") {
  auto r = Run(R"(apiVersion: v1
kind: Service
metadata: {name: helloworld, namespace: other}
spec:
  ports: [{name: http, port: 5000}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: hw, namespace: other}
spec:
  hosts: [helloworld]
  http: [{route: [{destination: {host: helloworld}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: private, namespace: default}
spec:
  hosts: [helloworld]
  exportTo: ["."]
  http: [{route: [{destination: {host: helloworld}}], timeout: 1s}]
)",
               "sidecar:third");
  REQUIRE(r.loaded.ok());
  const auto& rc = r.t.resources.routes.at("5000");
  REQUIRE(rc.virtual_hosts_size() == 3);
  // default/helloworld: the "private" VirtualService is not exported to namespace third.
  CHECK(rc.virtual_hosts(0).name() == "helloworld.default.svc.cluster.local:5000");
  CHECK(rc.virtual_hosts(0).routes(0).name() == "default");
  // other/helloworld: its VirtualService's short name resolves in namespace other.
  CHECK(rc.virtual_hosts(1).name() == "helloworld.other.svc.cluster.local:5000");
  CHECK(rc.virtual_hosts(1).routes(0).route().cluster() ==
        "outbound|5000||helloworld.other.svc.cluster.local");
  // A proxy in namespace third gets no bare "helloworld" domain for either service.
  for (const auto& d : rc.virtual_hosts(1).domains())
    CHECK(d.find("helloworld.") == 0);
}

TEST_CASE("a valid document beside an invalid one still translates") {
  LoadResult loaded = LoadPaths({std::string(SLUICE_ISTIO_TESTDATA) + "/invalid/bad-weight.yaml",
                                 std::string(SLUICE_ISTIO_TESTDATA) + "/apps/helloworld.yaml"});
  REQUIRE(loaded.errors.size() == 1);
  // The file's DestinationRule (document 1) is valid and its subsets reach the proxy even
  // though the VirtualService next to it was rejected. Its host "reviews" has no service,
  // so check it on helloworld by giving it that host.
  REQUIRE(loaded.config.destination_rules.size() == 1);
  loaded.config.destination_rules[0].host = "helloworld";
  auto t = Translate(loaded.config, Registry::Build(loaded.config),
                     *ProxySpec::Parse("sidecar:default"));
  CHECK(t.resources.clusters.count("outbound|5000|v1|helloworld.default.svc.cluster.local") == 1);
  CHECK(t.resources.clusters.count("outbound|5000|v2|helloworld.default.svc.cluster.local") == 1);
}

TEST_CASE(
    "gateway without a matching VirtualService answers 404, and other selectors see nothing") {
  auto r = Run(R"(apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: ["*"]}]
)",
               "gateway:istio=ingressgateway");
  REQUIRE(r.loaded.ok());
  const auto& rc = r.t.resources.routes.at("http.8080");
  REQUIRE(rc.virtual_hosts_size() == 1);
  CHECK(rc.virtual_hosts(0).name() == "blackhole:8080");
  CHECK(rc.virtual_hosts(0).routes(0).direct_response().status() == 404);
  CHECK(r.t.resources.listeners.count("0.0.0.0_8080") == 1);

  auto other = Run(R"(apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: ["*"]}]
)",
                   "gateway:istio=egressgateway");
  CHECK(other.t.resources.listeners.empty());
  CHECK(other.t.resources.routes.empty());
}

TEST_CASE("gateway httpsRedirect makes the virtual host require TLS") {
  auto r = Run(R"(apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["hello.example.com"]
    tls: {httpsRedirect: true}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: hello}
spec:
  hosts: [hello.example.com]
  gateways: [istio-system/gw]
  http: [{route: [{destination: {host: helloworld, port: {number: 5000}}}]}]
)",
               "gateway:istio=ingressgateway");
  REQUIRE(r.loaded.ok());
  const auto& vh = r.t.resources.routes.at("http.80").virtual_hosts(0);
  CHECK(vh.name() == "hello.example.com:80");
  CHECK(vh.require_tls() == route_v3::VirtualHost::ALL);
  CHECK(vh.routes(0).route().cluster() == "outbound|5000||helloworld.default.svc.cluster.local");
}

TEST_CASE(
    "gateway HTTPS servers terminating TLS take istiod's shape: SDS secrets, SNI chains, https "
    "routes") {
  auto r = Run(R"(apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: mygateway, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    tls: {mode: SIMPLE, credentialName: httpbin-credential}
    hosts: ["httpbin.example.com"]
  - port: {number: 443, name: https-helloworld, protocol: HTTPS}
    tls: {mode: MUTUAL, credentialName: helloworld-credential, subjectAltNames: [spiffe://cluster.local/ns/x/sa/y]}
    hosts: ["istio-system/helloworld.example.com"]
  - port: {number: 443, name: https-files, protocol: HTTPS}
    tls: {mode: SIMPLE, serverCertificate: /etc/certs/cert.pem, privateKey: /etc/certs/key.pem}
    hosts: ["files.example.com"]
  - port: {number: 443, name: https-pinned, protocol: HTTPS}
    tls: {mode: SIMPLE, credentialName: pinned-credential, minProtocolVersion: TLSV1_3}
    hosts: ["pinned.example.com"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin}
spec:
  hosts: [httpbin.example.com]
  gateways: [istio-system/mygateway]
  http: [{route: [{destination: {host: httpbin, port: {number: 8000}}}]}]
)",
               "gateway:istio=ingressgateway");
  REQUIRE(r.loaded.ok());
  namespace tls_v3 = envoy::extensions::transport_sockets::tls::v3;
  REQUIRE(r.t.resources.listeners.count("0.0.0.0_443"));
  const auto& l = r.t.resources.listeners.at("0.0.0.0_443");
  REQUIRE(l.listener_filters_size() == 1);
  CHECK(l.listener_filters(0).name() == "envoy.filters.listener.tls_inspector");
  // The server with certificate files, and one with a TLS field Sluice does not honour,
  // are refused by name, not served half.
  REQUIRE(l.filter_chains_size() == 2);
  bool files = false, pinned = false;
  for (const auto& w : r.t.warnings) {
    UNSCOPED_INFO(w);
    files |= w.find("server https-files (port 443): TLS mode SIMPLE without credentialName") !=
             std::string::npos;
    pinned |= w.find("server https-pinned (port 443): tls.minProtocolVersion not supported") !=
              std::string::npos;
  }
  CHECK(files);
  CHECK(pinned);

  auto context = [](const listener_v3::FilterChain& fc) {
    REQUIRE(fc.transport_socket().name() == "envoy.transport_sockets.tls");
    tls_v3::DownstreamTlsContext ctx;
    REQUIRE(fc.transport_socket().typed_config().UnpackTo(&ctx));
    return ctx;
  };
  const auto& simple = l.filter_chains(0);
  CHECK(simple.filter_chain_match().server_names(0) == "httpbin.example.com");
  auto s = context(simple);
  CHECK_FALSE(s.require_client_certificate().value());
  REQUIRE(s.common_tls_context().tls_certificate_sds_secret_configs_size() == 1);
  const auto& cert = s.common_tls_context().tls_certificate_sds_secret_configs(0);
  CHECK(cert.name() == "kubernetes://httpbin-credential");
  CHECK(cert.sds_config().has_ads());
  CHECK(cert.sds_config().resource_api_version() == envoy::config::core::v3::V3);
  CHECK(s.common_tls_context().alpn_protocols(0) == "h2");
  CHECK(s.common_tls_context().alpn_protocols(1) == "http/1.1");
  CHECK_FALSE(s.common_tls_context().has_combined_validation_context());

  const auto& mutual = l.filter_chains(1);
  CHECK(mutual.filter_chain_match().server_names(0) == "helloworld.example.com");
  auto m = context(mutual);
  CHECK(m.require_client_certificate().value());
  const auto& cvc = m.common_tls_context().combined_validation_context();
  CHECK(cvc.validation_context_sds_secret_config().name() ==
        "kubernetes://helloworld-credential-cacert");
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  CHECK(cvc.default_validation_context().match_subject_alt_names(0).exact() ==
        "spiffe://cluster.local/ns/x/sa/y");
#pragma GCC diagnostic pop

  // Each server its own route configuration, named as istiod names it.
  CHECK(r.t.resources.routes.count("https.443.https.mygateway.istio-system"));
  CHECK(r.t.resources.routes.count("https.443.https-helloworld.mygateway.istio-system"));
  const auto& rc = r.t.resources.routes.at("https.443.https.mygateway.istio-system");
  CHECK(rc.virtual_hosts(0).name() == "httpbin.example.com:443");
  CHECK(rc.virtual_hosts(0).routes(0).route().cluster() ==
        "outbound|8000||httpbin.default.svc.cluster.local");
  // No VirtualService for helloworld.example.com: istiod's 404 blackhole.
  CHECK(r.t.resources.routes.at("https.443.https-helloworld.mygateway.istio-system")
            .virtual_hosts(0)
            .name() == "blackhole:443");
}

TEST_CASE("proxy specs parse and reject malformed input") {
  auto s = ProxySpec::Parse("gateway:istio=ingressgateway,app=gw@edge");
  REQUIRE(s);
  CHECK(s->kind == ProxySpec::Kind::kGateway);
  CHECK(s->ns == "edge");
  CHECK(s->labels.at("app") == "gw");
  CHECK(s->Describe() == "gateway:app=gw,istio=ingressgateway@edge");
  CHECK_FALSE(ProxySpec::Parse("sidecar:").has_value());
  CHECK_FALSE(ProxySpec::Parse("grpc:").has_value());
  auto g = ProxySpec::Parse("grpc:echo-grpc");
  REQUIRE(g);
  CHECK(g->kind == ProxySpec::Kind::kGrpc);
  CHECK(g->Describe() == "grpc:echo-grpc");
  CHECK_FALSE(ProxySpec::Parse("gateway:istio").has_value());
  CHECK(ProxySpec::Parse("router:x").error().message ==
        "--proxy \"router:x\": want sidecar:NAMESPACE, sidecar:KEY=VALUE[,KEY=VALUE]@NAMESPACE, "
        "grpc:NAMESPACE or gateway:KEY=VALUE[,KEY=VALUE]");
}

TEST_CASE("proxyless gRPC: a Maglev DestinationRule refuses its cluster by name, never sends it") {
  auto t = Run(R"(apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: hw}
spec:
  host: helloworld
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      loadBalancer:
        consistentHash: {maglev: {tableSize: 65537}, httpHeaderName: x-user}
  - name: v2
    labels: {version: v2}
)",
               "grpc:default");
  const auto& clusters = t.t.resources.clusters;
  // gRPC has no Maglev: the v1 subset's cluster is refused (the client's route to it
  // fails its RPCs), v2 and the service's default cluster are served.
  CHECK_FALSE(clusters.contains("outbound|5000|v1|helloworld.default.svc.cluster.local"));
  CHECK(clusters.contains("outbound|5000|v2|helloworld.default.svc.cluster.local"));
  CHECK(clusters.contains("outbound|5000||helloworld.default.svc.cluster.local"));
  REQUIRE(t.t.warnings.size() == 2);  // one per port (5000, 5001)
  CHECK(t.t.warnings[0].find("DestinationRule default/hw asks for maglev") != std::string::npos);
  // No Passthrough or BlackHole for a gRPC client, and only API listeners, one per port.
  CHECK_FALSE(clusters.contains("PassthroughCluster"));
  CHECK(t.t.resources.listeners.size() == 2);
  CHECK(t.t.resources.listeners.contains("helloworld.default.svc.cluster.local:5000"));
  CHECK(t.t.resources.listeners.at("helloworld.default.svc.cluster.local:5001").has_api_listener());
}
