// The filter classification table (sluice/config/filters.h) on filters as istiod sends
// them. The filters are those of a real istiod-fed sidecar's config dump, Istio 1.18:
// istio/istio, istioctl/pkg/authz/testdata/configdump.yaml (inbound and outbound HTTP
// connection managers, virtualInbound's network filters, the HBONE internal listeners).
// Types Sluice does not link (RBAC, Wasm, TypedStruct, ...) are built as a
// google.protobuf.Any with the type URL and hand-encoded bytes.
#include <google/protobuf/struct.pb.h>
#include <catch2/catch.hpp>

#include "envoy/extensions/filters/http/fault/v3/fault.pb.h"
#include "envoy/extensions/filters/http/router/v3/router.pb.h"
#include "envoy/extensions/filters/listener/http_inspector/v3/http_inspector.pb.h"
#include "envoy/extensions/filters/listener/original_dst/v3/original_dst.pb.h"
#include "envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.pb.h"
#include "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.pb.h"
#include "sluice/config/filters.h"
#include "sluice/config/validate.h"

namespace sc = sluice::config;
using envoy::config::listener::v3::Filter;
using envoy::config::listener::v3::Listener;
using envoy::config::listener::v3::ListenerFilter;
using HCM = envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
using HttpFilter = envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;

namespace {

// Protobuf wire encoding of a length-delimited field.
std::string Ld(int field, const std::string& bytes) {
  std::string out;
  uint32_t tag = static_cast<uint32_t>(field << 3 | 2);
  for (uint64_t v : {static_cast<uint64_t>(tag), static_cast<uint64_t>(bytes.size())}) {
    while (v >= 0x80) {
      out += static_cast<char>(v | 0x80);
      v >>= 7;
    }
    out += static_cast<char>(v);
  }
  return out + bytes;
}

google::protobuf::Any Opaque(const std::string& type, const std::string& bytes = "") {
  google::protobuf::Any a;
  a.set_type_url("type.googleapis.com/" + type);
  a.set_value(bytes);
  return a;
}

// udpa.type.v1.TypedStruct{type_url = 1, value = 2 (google.protobuf.Struct)}.
google::protobuf::Any TypedStruct(const std::string& type,
                                  const google::protobuf::Struct& value = {}) {
  return Opaque("udpa.type.v1.TypedStruct",
                Ld(1, "type.googleapis.com/" + type) + Ld(2, value.SerializeAsString()));
}

// envoy.extensions.filters.http.wasm.v3.Wasm{config = 1: PluginConfig{root_id = 2,
// vm_config = 3: VmConfig{runtime = 2, code = 3: {local = 1: {inline_string = 3}}}}}.
google::protobuf::Any NullVmWasm(const std::string& root_id, const std::string& code) {
  std::string vm = Ld(2, "envoy.wasm.runtime.null") + Ld(3, Ld(1, Ld(3, code)));
  std::string plugin = (root_id.empty() ? "" : Ld(2, root_id)) + Ld(3, vm);
  return Opaque("envoy.extensions.filters.http.wasm.v3.Wasm", Ld(1, plugin));
}

HttpFilter Http(const std::string& name, const google::protobuf::Any& any) {
  HttpFilter f;
  f.set_name(name);
  *f.mutable_typed_config() = any;
  return f;
}

Filter Network(const std::string& name, const google::protobuf::Any& any) {
  Filter f;
  f.set_name(name);
  *f.mutable_typed_config() = any;
  return f;
}

template <class T>
google::protobuf::Any Packed(const T& m) {
  google::protobuf::Any a;
  a.PackFrom(m);
  return a;
}

// istiod's outbound HTTP connection manager's filters, in its order (configdump.yaml,
// listener 0.0.0.0_80), with `extra` before the router.
Listener HttpListenerWith(std::vector<HttpFilter> extra) {
  HCM hcm;
  hcm.set_stat_prefix("outbound_0.0.0.0_80");
  hcm.mutable_rds()->set_route_config_name("80");
  hcm.mutable_rds()->mutable_config_source()->mutable_ads();
  *hcm.add_http_filters() =
      Http("istio.metadata_exchange", NullVmWasm("", "envoy.wasm.metadata_exchange"));
  *hcm.add_http_filters() =
      Http("envoy.filters.http.grpc_stats",
           Opaque("envoy.extensions.filters.http.grpc_stats.v3.FilterConfig"));
  *hcm.add_http_filters() =
      Http("istio.alpn", Opaque("istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig"));
  *hcm.add_http_filters() = Http("envoy.filters.http.fault",
                                 Packed(envoy::extensions::filters::http::fault::v3::HTTPFault()));
  *hcm.add_http_filters() =
      Http("envoy.filters.http.cors", Opaque("envoy.extensions.filters.http.cors.v3.Cors"));
  *hcm.add_http_filters() = Http("istio.stats", TypedStruct("stats.PluginConfig"));
  for (auto& f : extra)
    *hcm.add_http_filters() = f;
  *hcm.add_http_filters() = Http("envoy.filters.http.router",
                                 Packed(envoy::extensions::filters::http::router::v3::Router()));
  Listener l;
  l.set_name("0.0.0.0_80");
  auto* sa = l.mutable_address()->mutable_socket_address();
  sa->set_address("0.0.0.0");
  sa->set_port_value(80);
  *l.add_listener_filters()->mutable_typed_config() =
      Packed(envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector());
  l.mutable_listener_filters(0)->set_name("envoy.filters.listener.tls_inspector");
  *l.add_filter_chains()->add_filters() =
      Network("envoy.filters.network.http_connection_manager", Packed(hcm));
  return l;
}

}  // namespace

TEST_CASE("filters Sluice serves") {
  CHECK(sc::ClassifyHttpFilter(Http("envoy.filters.http.router",
                                    Packed(envoy::extensions::filters::http::router::v3::Router())))
            .use == sc::Use::kServed);
  CHECK(sc::ClassifyHttpFilter(
            Http("envoy.filters.http.cors", Opaque("envoy.extensions.filters.http.cors.v3.Cors")))
            .use == sc::Use::kServed);
  CHECK(sc::ClassifyNetworkFilter(
            Network("envoy.filters.network.tcp_proxy",
                    Packed(envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy())))
            .use == sc::Use::kServed);
  for (auto [name, any] :
       {std::pair{"envoy.filters.listener.tls_inspector",
                  Packed(envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector())},
        std::pair{
            "envoy.filters.listener.http_inspector",
            Packed(envoy::extensions::filters::listener::http_inspector::v3::HttpInspector())},
        std::pair{"envoy.filters.listener.original_dst",
                  Packed(envoy::extensions::filters::listener::original_dst::v3::OriginalDst())}}) {
    ListenerFilter lf;
    lf.set_name(name);
    *lf.mutable_typed_config() = any;
    CHECK(sc::ClassifyListenerFilter(lf).use == sc::Use::kServed);
  }
}

TEST_CASE("istiod's telemetry filters: istio.stats served, the others skipped, the listener served") {
  auto v = sc::ClassifyListener(HttpListenerWith({}));
  CHECK(v.use == sc::Use::kServed);
  CHECK(v.reason.empty());
  CHECK(v.skipped_filters ==
        std::vector<std::string>{"type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3."
                                 "FilterConfig",
                                 "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                                 "type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1."
                                 "FilterConfig"});
  // virtualInbound's TCP chain: istio.metadata_exchange (MetadataExchange) and istio.stats.
  CHECK(
      sc::ClassifyNetworkFilter(Network("istio.metadata_exchange",
                                        Opaque("envoy.tcp.metadataexchange.config.MetadataExchange",
                                               Ld(1, "istio-peer-exchange"))))
          .use == sc::Use::kSkipped);
  // istio.stats is served: the proxy records Istio's metrics where it is, as it says.
  auto stats = sc::ClassifyNetworkFilter(Network("istio.stats", TypedStruct("stats.PluginConfig")));
  CHECK(stats.use == sc::Use::kServed);
  CHECK(stats.reason_class.empty());
  CHECK(stats.type == "type.googleapis.com/stats.PluginConfig");
  CHECK(sc::ClassifyHttpFilter(Http("istio.stats", TypedStruct("stats.PluginConfig"))).use ==
        sc::Use::kServed);
  // Istio 1.22+: HTTP metadata exchange as io.istio.http.peer_metadata in a TypedStruct.
  CHECK(sc::ClassifyHttpFilter(
            Http("istio.metadata_exchange", TypedStruct("io.istio.http.peer_metadata.Config")))
            .use == sc::Use::kSkipped);
  // Older Istio: the stats filter as Wasm in a TypedStruct with root_id stats_outbound.
  google::protobuf::Struct wasm;
  (*(*wasm.mutable_fields())["config"].mutable_struct_value()->mutable_fields())["root_id"]
      .set_string_value("stats_outbound");
  CHECK(sc::ClassifyHttpFilter(
            Http("istio.stats", TypedStruct("envoy.extensions.filters.http.wasm.v3.Wasm", wasm)))
            .use == sc::Use::kSkipped);
}

TEST_CASE("security filters refuse the listener by name, so it fails closed") {
  // configdump.yaml's inbound HTTP chain: envoy.filters.http.rbac before the router is
  // served (the proxy enforces it, agent/proxy/session_rbac.cc) ...
  CHECK(sc::ClassifyListener(
            HttpListenerWith({Http("envoy.filters.http.rbac",
                                   Opaque("envoy.extensions.filters.http.rbac.v3.RBAC"))}))
            .use == sc::Use::kServed);
  // ... but a filter Sluice does not implement refuses its listener, named.
  auto v = sc::ClassifyListener(
      HttpListenerWith({Http("envoy.filters.http.ext_authz",
                             Opaque("envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"))}));
  CHECK(v.use == sc::Use::kRefused);
  CHECK(v.reason_class == "security_filter");
  CHECK(v.reason ==
        "filter_chains[0].filters[0].typed_config.http_filters[6]: filter "
        "\"envoy.filters.http.ext_authz\" (type "
        "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz) enforces policy "
        "that Sluice does not implement: refused so it fails closed");
  // ... and through validation: the listener is refused, named.
  auto ok = sc::ValidateListener(
      HttpListenerWith({Http("envoy.filters.http.ext_authz",
                             Opaque("envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"))}));
  REQUIRE_FALSE(ok);
  CHECK(
      ok.error().message.starts_with("listener \"0.0.0.0_80\": filter_chains[0].filters[0]."
                                     "typed_config.http_filters[6]: filter "
                                     "\"envoy.filters.http.ext_authz\""));
  // virtualInbound: istio_authn as a TypedStruct of io.istio.network.authn.Config.
  auto authn = sc::ClassifyNetworkFilter(
      Network("istio_authn", TypedStruct("io.istio.network.authn.Config")));
  // It only records an mTLS peer's identity: nothing on a plaintext connection.
  CHECK(authn.use == sc::Use::kSkipped);
  CHECK(authn.reason_class == "mtls_only_filter");
  CHECK(sc::ClassifyNetworkFilter(Network("envoy.filters.network.rbac",
                                          Opaque("envoy.extensions.filters.network.rbac.v3.RBAC")))
            .use == sc::Use::kServed);
  CHECK(sc::ClassifyNetworkFilter(
            Network("envoy.filters.network.ext_authz",
                    Opaque("envoy.extensions.filters.network.ext_authz.v3.ExtAuthz")))
            .use == sc::Use::kRefused);
  // The old HTTP authn filter also authenticates JWTs: refused.
  CHECK(
      sc::ClassifyHttpFilter(
          Http("istio_authn", Opaque("istio.envoy.config.filter.http.authn.v2alpha1.FilterConfig")))
          .use == sc::Use::kRefused);
  CHECK(sc::ClassifyHttpFilter(Http("envoy.filters.http.jwt_authn",
                                    Opaque("envoy.extensions.filters.http.jwt_authn.v3."
                                           "JwtAuthentication")))
            .use == sc::Use::kRefused);
  // A WasmPlugin's module (not Istio's telemetry) may enforce policy.
  auto plugin = sc::ClassifyHttpFilter(
      Http("extensions.istio.io/wasmplugin/default.auth", NullVmWasm("auth", "my.module")));
  CHECK(plugin.use == sc::Use::kRefused);
  CHECK(plugin.reason_class == "wasm_filter");
  // ... as does anything served by ECDS.
  HttpFilter ecds;
  ecds.set_name("extensions.istio.io/wasmplugin/default.openid");
  ecds.mutable_config_discovery()->add_type_urls(
      "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm");
  auto e = sc::ClassifyHttpFilter(ecds);
  CHECK(e.use == sc::Use::kRefused);
  CHECK(e.reason_class == "ecds_filter");
  CHECK(e.reason.find("WasmPlugin") != std::string::npos);
  // ... and so is the listener carrying it, with that reason (not as malformed).
  auto a = sc::AcceptListener(HttpListenerWith({ecds}));
  CHECK(a.use == sc::Use::kRefused);
  CHECK(a.reason_class == "ecds_filter");
  CHECK(
      a.reason.starts_with("filter_chains[0].filters[0].typed_config.http_filters[6]: filter "
                           "\"extensions.istio.io/wasmplugin/default.openid\" comes from ECDS"));
}

TEST_CASE("an unknown filter refuses its listener, and Envoy's type decides, not the name") {
  auto v = sc::ClassifyHttpFilter(Http("envoy.filters.http.local_ratelimit",
                                       Opaque("envoy.extensions.filters.http.local_ratelimit.v3."
                                              "LocalRateLimit")));
  CHECK(v.use == sc::Use::kRefused);
  CHECK(v.reason ==
        "filter \"envoy.filters.http.local_ratelimit\" (type "
        "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit) is "
        "not supported");
  // A known name over an unknown type is what the type says (unknown), as in Envoy.
  CHECK(sc::ClassifyHttpFilter(
            Http("envoy.filters.http.router", Opaque("envoy.extensions.filters.http.lua.v3.Lua")))
            .use == sc::Use::kRefused);
  // A known type under any name is what the type says.
  CHECK(sc::ClassifyHttpFilter(
            Http("my-router", Packed(envoy::extensions::filters::http::router::v3::Router())))
            .use == sc::Use::kServed);
  // Without typed_config the name decides.
  HttpFilter bare;
  bare.set_name("envoy.filters.http.jwt_authn");
  CHECK(sc::ClassifyHttpFilter(bare).use == sc::Use::kRefused);
  bare.set_name("envoy.filters.http.rbac");
  CHECK(sc::ClassifyHttpFilter(bare).use == sc::Use::kServed);
  // An optional filter Sluice does not know is skipped, as Envoy skips one it lacks.
  HttpFilter opt = Http("x.custom", Opaque("x.Custom"));
  opt.set_is_optional(true);
  CHECK(sc::ClassifyHttpFilter(opt).use == sc::Use::kSkipped);
  // An unknown listener filter (original_src changes the source address).
  ListenerFilter src;
  src.set_name("envoy.filters.listener.original_src");
  *src.mutable_typed_config() =
      Opaque("envoy.extensions.filters.listener.original_src.v3.OriginalSrc");
  CHECK(sc::ClassifyListenerFilter(src).use == sc::Use::kRefused);
}

TEST_CASE("internal listeners and clusters Sluice has no use for are skipped") {
  // configdump.yaml's connect_originate / main_internal: internal_listener, set_dst_address.
  Listener internal;
  internal.set_name("main_internal");
  internal.mutable_internal_listener();
  auto* lf = internal.add_listener_filters();
  lf->set_name("set_dst_address");
  *lf->mutable_typed_config() = TypedStruct("istio.set_internal_dst_address.v1.Config");
  auto v = sc::ClassifyListener(internal);
  CHECK(v.use == sc::Use::kSkipped);
  CHECK(v.reason_class == "internal_listener");
  CHECK(sc::AcceptListener(internal).use == sc::Use::kSkipped);

  envoy::config::cluster::v3::Cluster dfp;
  dfp.set_name("outbound|443||*.example.com");
  dfp.mutable_cluster_type()->set_name("envoy.clusters.dynamic_forward_proxy");
  auto c = sc::ClassifyCluster(dfp);
  CHECK(c.use == sc::Use::kSkipped);
  CHECK(c.reason_class == "custom_cluster_type");
  CHECK(sc::AcceptCluster(dfp).use == sc::Use::kSkipped);

  envoy::config::cluster::v3::Cluster tunnel;
  tunnel.set_name("outbound-tunnel;outbound|80||a.default.svc.cluster.local");
  tunnel.set_type(envoy::config::cluster::v3::Cluster::STATIC);
  tunnel.mutable_load_assignment()
      ->add_endpoints()
      ->add_lb_endpoints()
      ->mutable_endpoint()
      ->mutable_address()
      ->mutable_envoy_internal_address()
      ->set_server_listener_name("connect_originate");
  CHECK(sc::ClassifyCluster(tunnel).reason_class == "internal_upstream");
  CHECK(sc::AcceptCluster(tunnel).use == sc::Use::kSkipped);
}
