// The classification table (filters.h): one row per filter Sluice may meet in istiod's
// config, by name and type, with what Sluice does with it and why. Anything not in the
// table refuses its listener by name; nothing is dropped silently.
#include "sluice/config/filters.h"

#include <fmt/format.h>
#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/wire_format_lite.h>

#include <array>
#include <optional>
#include <set>
#include <string_view>

namespace sluice::config {
namespace {

using envoy::config::cluster::v3::Cluster;
using envoy::config::listener::v3::Listener;
using HttpConnectionManager =
    envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
using HttpFilter = envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;

enum class Kind { kNetwork, kHttp, kListener };
// How a row is used: served, skipped (no effect on routing), skipped because it acts only
// on mTLS connections, refused for enforcing policy Sluice does not implement, or Wasm
// (decided by what the module is, see WasmVerdict).
enum class Row { kServe, kSkip, kPlaintextNoop, kSecurity, kWasm };

struct Entry {
  Kind kind;
  std::string_view name;  // Envoy's (or istiod's) filter name
  std::string_view type;  // typed_config type, without "type.googleapis.com/"
  Row row;
};

// The table. Comments say why a filter is skipped: it has no effect on where traffic
// goes or on what is let through, in a mesh without mTLS (Sluice has none yet).
constexpr std::array kTable{
    // Served by the proxy (agent/proxy).
    Entry{Kind::kNetwork, "envoy.filters.network.http_connection_manager",
          "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
          Row::kServe},
    Entry{Kind::kNetwork, "envoy.filters.network.tcp_proxy",
          "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", Row::kServe},
    Entry{Kind::kHttp, "envoy.filters.http.router",
          "envoy.extensions.filters.http.router.v3.Router", Row::kServe},
    Entry{Kind::kHttp, "envoy.filters.http.fault",
          "envoy.extensions.filters.http.fault.v3.HTTPFault", Row::kServe},
    // VirtualService corsPolicy: a traffic-management feature the proxy implements.
    Entry{Kind::kHttp, "envoy.filters.http.cors", "envoy.extensions.filters.http.cors.v3.Cors",
          Row::kServe},
    Entry{Kind::kListener, "envoy.filters.listener.tls_inspector",
          "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector", Row::kServe},
    Entry{Kind::kListener, "envoy.filters.listener.http_inspector",
          "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector", Row::kServe},
    Entry{Kind::kListener, "envoy.filters.listener.original_dst",
          "envoy.extensions.filters.listener.original_dst.v3.OriginalDst", Row::kServe},

    // AuthorizationPolicy: Envoy's RBAC engine, served by the proxy (agent/proxy/rbac.cc);
    // a config it cannot enforce exactly refuses its listener there, by field.
    Entry{Kind::kHttp, "envoy.filters.http.rbac", "envoy.extensions.filters.http.rbac.v3.RBAC",
          Row::kServe},
    Entry{Kind::kNetwork, "envoy.filters.network.rbac",
          "envoy.extensions.filters.network.rbac.v3.RBAC", Row::kServe},
    // Istio's network authn filter (1.18+, a TypedStruct) only records the peer identity
    // of a verified mTLS certificate (io.istio.peer_principal / peer_namespace) for rbac
    // to read; on a plaintext connection it records nothing, which is what Sluice's rbac
    // assumes (those matchers never match).
    Entry{Kind::kNetwork, "istio_authn", "io.istio.network.authn.Config", Row::kPlaintextNoop},

    // Security: they decide what is let through, and Sluice does not implement them: a
    // listener carrying one is refused, so it fails closed rather than open.
    Entry{Kind::kHttp, "envoy.filters.http.ext_authz",
          "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz", Row::kSecurity},
    Entry{Kind::kNetwork, "envoy.filters.network.ext_authz",
          "envoy.extensions.filters.network.ext_authz.v3.ExtAuthz", Row::kSecurity},
    Entry{Kind::kHttp, "envoy.filters.http.jwt_authn",
          "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication", Row::kSecurity},
    // Istio's old HTTP authn filter also validates JWTs (origin authentication).
    Entry{Kind::kHttp, "istio_authn", "istio.envoy.config.filter.http.authn.v2alpha1.FilterConfig",
          Row::kSecurity},
    Entry{Kind::kHttp, "istio.authn", "istio.envoy.config.filter.http.authn.v2alpha1.FilterConfig",
          Row::kSecurity},
    // An external processor may rewrite or reject any request.
    Entry{Kind::kHttp, "envoy.filters.http.ext_proc",
          "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor", Row::kSecurity},

    // Wasm: Istio's own stats and metadata-exchange modules are telemetry; any other
    // module (a WasmPlugin) may enforce policy.
    Entry{Kind::kHttp, "envoy.filters.http.wasm", "envoy.extensions.filters.http.wasm.v3.Wasm",
          Row::kWasm},
    Entry{Kind::kNetwork, "envoy.filters.network.wasm",
          "envoy.extensions.filters.network.wasm.v3.Wasm", Row::kWasm},

    // Istio's metrics (stats.PluginConfig, typed or in a TypedStruct): served by the
    // proxy (agent/proxy/istio_stats.h), which records them only on chains that carry it,
    // as its config says; a config it cannot follow exactly refuses its listener there.
    Entry{Kind::kHttp, "istio.stats", "stats.PluginConfig", Row::kServe},
    Entry{Kind::kNetwork, "istio.stats", "stats.PluginConfig", Row::kServe},

    // Telemetry: metadata exchange: the TCP one speaks only on ALPN "istio-peer-exchange", which
    // needs mTLS; the HTTP ones add and read x-envoy-peer-metadata headers.
    Entry{Kind::kNetwork, "istio.metadata_exchange",
          "envoy.tcp.metadataexchange.config.MetadataExchange", Row::kSkip},
    Entry{Kind::kHttp, "istio.metadata_exchange",
          "envoy.tcp.metadataexchange.config.MetadataExchange", Row::kSkip},
    Entry{Kind::kHttp, "istio.metadata_exchange", "io.istio.http.peer_metadata.Config", Row::kSkip},
    Entry{Kind::kNetwork, "upstream_hbone_peer_metadata",
          "envoy.extensions.network_filters.peer_metadata.Config", Row::kSkip},
    // ... gRPC request/message counters (emit_filter_state feeds istio.stats);
    Entry{Kind::kHttp, "envoy.filters.http.grpc_stats",
          "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig", Row::kSkip},
    // istio.alpn sets the upstream ALPN for Istio mTLS ("istio-http/1.1"...); without
    // mTLS no upstream handshake reads it.
    Entry{Kind::kHttp, "istio.alpn", "istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig",
          Row::kSkip},
    // grpc_web converts browser gRPC-Web requests (content-type application/grpc-web*) to
    // gRPC; it never changes where a request goes and leaves other requests alone.
    // Skipped: a gRPC-Web client reaches its backend unconverted (the warning says so).
    Entry{Kind::kHttp, "envoy.filters.http.grpc_web",
          "envoy.extensions.filters.http.grpc_web.v3.GrpcWeb", Row::kSkip},
    // set_filter_state: istiod's connect_authority / request_source copy the authority
    // and x-istio-source into filter state for HBONE tunnels (internal listeners, which
    // are skipped while mTLS is absent) and ambient's east-west gateways; the listener
    // routes as it would without it.
    Entry{Kind::kHttp, "envoy.filters.http.set_filter_state",
          "envoy.extensions.filters.http.set_filter_state.v3.Config", Row::kSkip},
    Entry{Kind::kNetwork, "envoy.filters.network.set_filter_state",
          "envoy.extensions.filters.network.set_filter_state.v3.Config", Row::kSkip},
};

std::string_view Short(std::string_view type_url) {
  auto slash = type_url.rfind('/');
  return slash == std::string_view::npos ? type_url : type_url.substr(slash + 1);
}

// Length-delimited field `number` of a serialized message (the last occurrence, as
// protobuf merges), without needing the message's descriptor: the Wasm and TypedStruct
// types are not linked into Sluice.
std::optional<std::string> WireField(const std::string& bytes, int number) {
  namespace wfl = google::protobuf::internal;
  google::protobuf::io::CodedInputStream in(reinterpret_cast<const uint8_t*>(bytes.data()),
                                            static_cast<int>(bytes.size()));
  std::optional<std::string> out;
  while (uint32_t tag = in.ReadTag()) {
    if (static_cast<int>(wfl::WireFormatLite::GetTagFieldNumber(tag)) == number &&
        wfl::WireFormatLite::GetTagWireType(tag) ==
            wfl::WireFormatLite::WIRETYPE_LENGTH_DELIMITED) {
      uint32_t len = 0;
      std::string v;
      if (!in.ReadVarint32(&len) || !in.ReadString(&v, static_cast<int>(len)))
        return std::nullopt;
      out = std::move(v);
    } else if (!wfl::WireFormatLite::SkipField(&in, tag)) {
      return std::nullopt;
    }
  }
  return out;
}

bool IsTypedStruct(std::string_view type_url) {
  auto t = Short(type_url);
  return t == "udpa.type.v1.TypedStruct" || t == "xds.type.v3.TypedStruct";
}

// A TypedStruct's value (field 2), a google.protobuf.Struct.
google::protobuf::Struct TypedStructValue(const google::protobuf::Any& any) {
  google::protobuf::Struct s;
  if (auto v = WireField(any.value(), 2))
    (void)s.ParseFromString(*v);
  return s;
}

const google::protobuf::Value* Path(const google::protobuf::Struct& s,
                                    std::initializer_list<std::string_view> keys) {
  const google::protobuf::Struct* cur = &s;
  const google::protobuf::Value* v = nullptr;
  for (auto k : keys) {
    if (!cur)
      return nullptr;
    auto it = cur->fields().find(std::string(k));
    if (it == cur->fields().end())
      return nullptr;
    v = &it->second;
    cur = v->has_struct_value() ? &v->struct_value() : nullptr;
  }
  return v;
}

// What Wasm module a filter runs: its root_id and, for a null VM, the registered name
// (vm_config.code.local.inline_string), from the binary message or a TypedStruct.
struct WasmModule {
  std::string root_id, code;
};

WasmModule ReadWasm(const google::protobuf::Any& any) {
  WasmModule m;
  if (IsTypedStruct(any.type_url())) {
    auto s = TypedStructValue(any);
    if (auto* v = Path(s, {"config", "root_id"}))
      m.root_id = v->string_value();
    if (auto* v = Path(s, {"config", "vm_config", "code", "local", "inline_string"}))
      m.code = v->string_value();
    return m;
  }
  // Wasm{config=1: PluginConfig{root_id=2, vm_config=3: VmConfig{code=3:
  // AsyncDataSource{local=1: DataSource{inline_string=3}}}}}
  auto config = WireField(any.value(), 1);
  if (!config)
    return m;
  m.root_id = WireField(*config, 2).value_or("");
  std::optional<std::string> cur = WireField(*config, 3);
  for (int field : {3, 1, 3}) {
    if (!cur)
      break;
    cur = WireField(*cur, field);
  }
  m.code = cur.value_or("");
  return m;
}

Verdict WasmVerdict(std::string_view name, const google::protobuf::Any& any) {
  // Istio's null-VM modules and the root ids its stats filters use (stats_inbound,
  // stats_outbound); both are telemetry.
  static const std::set<std::string, std::less<>> kTelemetryRoots = {"stats_inbound",
                                                                     "stats_outbound"};
  static const std::set<std::string, std::less<>> kTelemetryCode = {"envoy.wasm.stats",
                                                                    "envoy.wasm.metadata_exchange"};
  WasmModule m = ReadWasm(any);
  const std::string type = EffectiveTypeUrl(any);
  if (kTelemetryRoots.contains(m.root_id) || kTelemetryCode.contains(m.code)) {
    return Verdict{Use::kSkipped,
                   fmt::format("filter \"{}\" (Wasm {}) is Istio telemetry: skipped", name,
                               m.code.empty() ? m.root_id : m.code),
                   std::string(kTelemetryFilter), type};
  }
  return Verdict{Use::kRefused,
                 fmt::format("filter \"{}\" (Wasm, root_id \"{}\") is not supported: a Wasm "
                             "plugin may enforce policy (issue 17)",
                             name, m.root_id),
                 std::string(kWasmFilter), type};
}

Verdict Classify(Kind kind, std::string_view name, const google::protobuf::Any* typed,
                 bool optional) {
  std::string type = typed ? EffectiveTypeUrl(*typed) : std::string();
  std::string_view key = typed && !type.empty() ? Short(type) : std::string_view();
  const Entry* hit = nullptr;
  for (const auto& e : kTable) {
    if (e.kind != kind)
      continue;
    // As Envoy: the type decides; only a filter without one is known by its name.
    if (key.empty() ? e.name == name : e.type == key) {
      hit = &e;
      break;
    }
  }
  std::string shown = type.empty() ? std::string(name) : type;
  if (!hit) {
    if (optional) {
      return Verdict{
          Use::kSkipped,
          fmt::format("optional filter \"{}\" (type {}) is not supported: skipped", name, shown),
          std::string(kUnknownFilter), shown};
    }
    return Verdict{Use::kRefused,
                   fmt::format("filter \"{}\" (type {}) is not supported", name, shown),
                   std::string(kUnknownFilter), shown};
  }
  switch (hit->row) {
    case Row::kServe:
      return Verdict{Use::kServed, "", "", shown};
    case Row::kSkip:
      return Verdict{
          Use::kSkipped,
          fmt::format("filter \"{}\" (type {}) has no effect on routing: skipped", name, shown),
          std::string(kTelemetryFilter), shown};
    case Row::kPlaintextNoop:
      return Verdict{Use::kSkipped,
                     fmt::format("filter \"{}\" (type {}) acts only on mTLS peers, and Sluice "
                                 "has no mTLS: no effect on plaintext connections",
                                 name, shown),
                     std::string(kMtlsOnlyFilter), shown};
    case Row::kSecurity:
      return Verdict{Use::kRefused,
                     fmt::format("filter \"{}\" (type {}) enforces policy that Sluice does not "
                                 "implement: refused so it fails closed",
                                 name, shown),
                     std::string(kSecurityFilter), shown};
    case Row::kWasm:
      if (!typed)
        break;
      return WasmVerdict(name, *typed);
  }
  return Verdict{Use::kRefused,
                 fmt::format("filter \"{}\" (type {}) is not supported: a Wasm filter needs "
                             "typed_config",
                             name, shown),
                 std::string(kWasmFilter), shown};
}

Verdict Ecds(std::string_view name) {
  return Verdict{Use::kRefused,
                 fmt::format("filter \"{}\" comes from ECDS (config_discovery), which is not "
                             "supported: a WasmPlugin served that way may enforce policy",
                             name),
                 std::string(kEcdsFilter), std::string(name)};
}

const std::string kInternalUpstreamSocket = "envoy.transport_sockets.internal_upstream";

bool InternalUpstream(const envoy::config::core::v3::TransportSocket& ts) {
  if (ts.has_typed_config()) {
    return Short(EffectiveTypeUrl(ts.typed_config())) ==
           "envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport";
  }
  return ts.name() == kInternalUpstreamSocket;
}

}  // namespace

std::string EffectiveTypeUrl(const google::protobuf::Any& any) {
  if (IsTypedStruct(any.type_url())) {
    if (auto inner = WireField(any.value(), 1); inner && !inner->empty())
      return *inner;
  }
  return any.type_url();
}

Verdict ClassifyNetworkFilter(const envoy::config::listener::v3::Filter& f) {
  if (f.has_config_discovery())
    return Ecds(f.name());
  return Classify(Kind::kNetwork, f.name(), f.has_typed_config() ? &f.typed_config() : nullptr,
                  false);
}

Verdict ClassifyHttpFilter(const HttpFilter& f) {
  if (f.has_config_discovery())
    return Ecds(f.name());
  return Classify(Kind::kHttp, f.name(), f.has_typed_config() ? &f.typed_config() : nullptr,
                  f.is_optional());
}

Verdict ClassifyListenerFilter(const envoy::config::listener::v3::ListenerFilter& f) {
  if (f.has_config_discovery())
    return Ecds(f.name());
  return Classify(Kind::kListener, f.name(), f.has_typed_config() ? &f.typed_config() : nullptr,
                  false);
}

ListenerVerdict ClassifyListener(const Listener& l) {
  ListenerVerdict out;
  if (l.has_internal_listener() || l.address().has_envoy_internal_address()) {
    out.use = Use::kSkipped;
    out.reason =
        "an internal listener (HBONE) has no socket; Sluice has no use for it while mTLS is "
        "absent: skipped";
    out.reason_class = std::string(kInternalListener);
    return out;
  }
  std::set<std::string> skipped;
  auto note = [&](const Verdict& v, const std::string& path) {
    if (v.use == Use::kSkipped) {
      skipped.insert(v.type);
    } else if (v.use == Use::kRefused && out.use != Use::kRefused) {
      out.use = Use::kRefused;
      out.reason = path + ": " + v.reason;
      out.reason_class = v.reason_class;
    }
  };
  for (int i = 0; i < l.listener_filters_size(); ++i)
    note(ClassifyListenerFilter(l.listener_filters(i)), fmt::format("listener_filters[{}]", i));
  auto chain = [&](const envoy::config::listener::v3::FilterChain& fc, const std::string& path) {
    for (int j = 0; j < fc.filters_size(); ++j) {
      const auto& f = fc.filters(j);
      std::string fp = fmt::format("{}.filters[{}]", path, j);
      note(ClassifyNetworkFilter(f), fp);
      HttpConnectionManager hcm;
      if (!f.has_typed_config() || !f.typed_config().Is<HttpConnectionManager>() ||
          !f.typed_config().UnpackTo(&hcm)) {
        continue;
      }
      for (int k = 0; k < hcm.http_filters_size(); ++k) {
        note(ClassifyHttpFilter(hcm.http_filters(k)),
             fmt::format("{}.typed_config.http_filters[{}]", fp, k));
      }
    }
  };
  for (int i = 0; i < l.filter_chains_size(); ++i)
    chain(l.filter_chains(i), fmt::format("filter_chains[{}]", i));
  if (l.has_default_filter_chain())
    chain(l.default_filter_chain(), "default_filter_chain");
  if (out.use != Use::kRefused)
    out.skipped_filters.assign(skipped.begin(), skipped.end());
  return out;
}

Verdict ClassifyCluster(const Cluster& c) {
  if (c.has_cluster_type()) {
    std::string type = c.cluster_type().has_typed_config()
                           ? EffectiveTypeUrl(c.cluster_type().typed_config())
                           : c.cluster_type().name();
    return Verdict{Use::kSkipped,
                   fmt::format("custom cluster type \"{}\" ({}) is not supported: skipped",
                               c.cluster_type().name(), type),
                   std::string(kCustomClusterType), type};
  }
  bool internal = c.has_transport_socket() && InternalUpstream(c.transport_socket());
  for (const auto& loc : c.load_assignment().endpoints()) {
    for (const auto& lbe : loc.lb_endpoints())
      internal = internal || lbe.endpoint().address().has_envoy_internal_address();
  }
  if (internal) {
    return Verdict{Use::kSkipped,
                   "an internal-upstream cluster (HBONE) leads to an internal listener; Sluice has "
                   "no use for it while mTLS is absent: skipped",
                   std::string(kInternalUpstream), kInternalUpstreamSocket};
  }
  return Verdict{};
}

}  // namespace sluice::config
