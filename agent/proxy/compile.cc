// Compile: Envoy resources (Listener, RouteConfiguration, Cluster,
// ClusterLoadAssignment) → the proxy's runtime structures. Field by field, the
// semantics are Envoy's; what Sluice does not support is refused with an error naming
// the resource and field, never silently ignored when it would change routing.
// Deprecated Envoy fields (HeaderValueOption.append, HeaderMatcher.exact_match, ...)
// are still sent by control planes, so they are read, not refused.
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>

#include <cstring>
#include <functional>
#include <set>

#include <google/protobuf/util/json_util.h>
#include <nlohmann/json.hpp>

#include "envoy/extensions/access_loggers/file/v3/file.pb.h"
#include "envoy/extensions/filters/http/cors/v3/cors.pb.h"
#include "envoy/extensions/filters/http/fault/v3/fault.pb.h"
#include "envoy/extensions/filters/http/rbac/v3/rbac.pb.h"
#include "envoy/extensions/filters/http/router/v3/router.pb.h"
#include "envoy/extensions/filters/listener/http_inspector/v3/http_inspector.pb.h"
#include "envoy/extensions/filters/listener/original_dst/v3/original_dst.pb.h"
#include "envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.pb.h"
#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb.h"
#include "envoy/extensions/filters/network/rbac/v3/rbac.pb.h"
#include "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.pb.h"
#include "envoy/extensions/transport_sockets/tls/v3/tls.pb.h"
#include "envoy/extensions/upstreams/http/v3/http_protocol_options.pb.h"
#include "matchers.h"
#include "sluice/common/base64.h"
#include "sluice/config/filters.h"
#include "sluice/config/snapshot.h"
#include "sluice/config/validate.h"
#include "sluice/envoy/resource_set.h"
#include "sluice/filterchain/envoy.h"
#include "sluice/proxy/config.h"
#include "sluice/proxy/dns.h"
#include "sluice/proxy/istio_stats.h"
#include "sluice/proxy/lb.h"
#include "sluice/proxy/tls_server.h"

namespace sluice::proxy {
namespace {

namespace route_v3 = envoy::config::route::v3;
namespace cluster_v3 = envoy::config::cluster::v3;
namespace listener_v3 = envoy::config::listener::v3;
namespace core_v3 = envoy::config::core::v3;
using HCM = envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
using TcpProxyProto = envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
using HTTPFault = envoy::extensions::filters::http::fault::v3::HTTPFault;

using CorsProto = envoy::extensions::filters::http::cors::v3::CorsPolicy;
using CorsFilterProto = envoy::extensions::filters::http::cors::v3::Cors;

constexpr std::string_view kFaultFilter = "envoy.filters.http.fault";
constexpr std::string_view kCorsFilter = "envoy.filters.http.cors";
constexpr std::string_view kHttpRbacFilter = "envoy.filters.http.rbac";
constexpr std::string_view kIstioStatsFilter = "istio.stats";
using HttpRbacProto = envoy::extensions::filters::http::rbac::v3::RBAC;
using HttpRbacPerRoute = envoy::extensions::filters::http::rbac::v3::RBACPerRoute;
using NetworkRbacProto = envoy::extensions::filters::network::rbac::v3::RBAC;

// A per-route (or virtual host, or route config) RBAC override would replace or switch
// off the connection manager's policy for those routes; Sluice does not apply one, so a
// level carrying it fails its listener rather than serve the route with the wrong policy.
Result<void> NoRbacOverride(
    const google::protobuf::Map<std::string, google::protobuf::Any>& per_filter,
    const std::string& where) {
  for (const auto& [name, any] : per_filter) {
    if (name == kHttpRbacFilter || any.Is<HttpRbacPerRoute>()) {
      return Fail(where + ": typed_per_filter_config[" + name +
                  "]: per-route RBAC (RBACPerRoute) is not supported");
    }
  }
  return {};
}

// istiod's istio.stats filter (stats.PluginConfig, typed or in a TypedStruct): the chain
// records Istio's metrics as it says. One per chain: a second would count twice.
bool IsIstioStats(const std::string& name, const google::protobuf::Any& typed) {
  return config::EffectiveTypeUrl(typed).ends_with("/stats.PluginConfig") ||
         (name == kIstioStatsFilter && typed.type_url().empty());
}

Result<void> CompileIstioStats(const google::protobuf::Any& typed, bool disabled, FilterChain* out,
                               const std::string& where) {
  const std::string& fw = where;
  if (disabled)
    return Fail(fw + ": a disabled istio.stats (enabled per route) is not supported");
  if (typed.type_url().empty())
    return Fail(fw + ": istio.stats without typed_config");
  if (out->istio_stats)
    return Fail(fw + ": a second istio.stats filter in one chain is not supported");
  auto c = telemetry::CompileStatsConfig(typed);
  SLUICE_RETURN_IF_ERROR_CTX(c, fw);
  out->istio_stats = *c;
  return {};
}

Millis ToMillis(const google::protobuf::Duration& d) {
  return Millis(d.seconds() * 1000 + d.nanos() / 1000000);
}

// A socket address's port; port_value is a uint32 in the proto, and one that does not
// fit 16 bits is an error, never a silently wrapped port.
Result<uint16_t> PortOf(const core_v3::SocketAddress& sa, const std::string& where) {
  if (sa.port_value() > 65535) {
    return Fail(where + ": socket_address.port_value " + std::to_string(sa.port_value()) +
                " is not a port (0-65535)");
  }
  return static_cast<uint16_t>(sa.port_value());
}

uint32_t PerMillion(const envoy::type::v3::FractionalPercent& p) {
  uint64_t n = p.numerator();
  switch (p.denominator()) {
    case envoy::type::v3::FractionalPercent::HUNDRED:
      n *= 10000;
      break;
    case envoy::type::v3::FractionalPercent::TEN_THOUSAND:
      n *= 100;
      break;
    default:
      break;
  }
  return static_cast<uint32_t>(std::min<uint64_t>(n, 1000000));
}

std::string Lower(std::string s) {
  for (char& c : s) {
    if (c >= 'A' && c <= 'Z')
      c = static_cast<char>(c + 32);
  }
  return s;
}

template <class Configs>
std::vector<UpgradeConfig> CompileUpgrades(const Configs& configs) {
  std::vector<UpgradeConfig> out;
  for (const auto& u : configs) {
    UpgradeConfig c;
    c.type = Lower(u.upgrade_type());
    c.enabled = !u.has_enabled() || u.enabled().value();
    out.push_back(std::move(c));
  }
  return out;
}

Result<void> CompileHeaderOps(
    const google::protobuf::RepeatedPtrField<core_v3::HeaderValueOption>& add,
    const google::protobuf::RepeatedPtrField<std::string>& remove, HeaderMutations* out,
    const std::string& where) {
  for (const auto& hv : add) {
    HeaderOp op;
    op.name = Lower(hv.header().key());
    if (op.name.empty())
      return Fail(where + ": header to add has an empty key");
    op.value = hv.header().value();
    if (hv.has_append()) {
      op.action = hv.append().value() ? HeaderOp::Action::kAppend
                                      : HeaderOp::Action::kOverwriteIfExistsOrAdd;
    } else {
      switch (hv.append_action()) {
        case core_v3::HeaderValueOption::ADD_IF_ABSENT:
          op.action = HeaderOp::Action::kAddIfAbsent;
          break;
        case core_v3::HeaderValueOption::OVERWRITE_IF_EXISTS_OR_ADD:
          op.action = HeaderOp::Action::kOverwriteIfExistsOrAdd;
          break;
        case core_v3::HeaderValueOption::OVERWRITE_IF_EXISTS:
          op.action = HeaderOp::Action::kOverwriteIfExists;
          break;
        default:
          op.action = HeaderOp::Action::kAppend;
          break;
      }
    }
    out->add.push_back(std::move(op));
  }
  for (const auto& r : remove)
    out->remove.push_back(Lower(r));
  return {};
}

Result<FaultPolicy> CompileFault(const HTTPFault& f, const std::string& where) {
  FaultPolicy p;
  if (f.has_delay()) {
    if (!f.delay().has_fixed_delay())
      return Fail(where + ": delay: only fixed_delay is supported");
    p.delay = ToMillis(f.delay().fixed_delay());
    p.delay_per_million = f.delay().has_percentage() ? PerMillion(f.delay().percentage()) : 1000000;
  }
  if (f.has_abort()) {
    if (f.abort().error_type_case() !=
        envoy::extensions::filters::http::fault::v3::FaultAbort::kHttpStatus) {
      return Fail(where + ": abort: only http_status is supported");
    }
    uint32_t s = f.abort().http_status();
    if (s < 200 || s > 599)
      return Fail(where + ": abort: http_status " + std::to_string(s) + " out of range");
    p.abort_status = static_cast<uint16_t>(s);
    p.abort_per_million = f.abort().has_percentage() ? PerMillion(f.abort().percentage()) : 1000000;
  }
  return p;
}

Result<void> CompileRouteMatch(const route_v3::RouteMatch& m, Route* r, const std::string& where) {
  switch (m.path_specifier_case()) {
    case route_v3::RouteMatch::kPrefix:
      r->path_kind = Route::PathKind::kPrefix;
      r->path = m.prefix();
      break;
    case route_v3::RouteMatch::kPath:
      r->path_kind = Route::PathKind::kPath;
      r->path = m.path();
      break;
    case route_v3::RouteMatch::kPathSeparatedPrefix:
      r->path_kind = Route::PathKind::kPathSeparatedPrefix;
      r->path = m.path_separated_prefix();
      break;
    case route_v3::RouteMatch::kSafeRegex: {
      r->path_kind = Route::PathKind::kRegex;
      auto re = CompileRegex(m.safe_regex().regex(), where + ": match.safe_regex");
      SLUICE_RETURN_IF_ERROR(re);
      r->path_regex = *re;
      break;
    }
    default:
      return Fail(where + ": match: unsupported path specifier");
  }
  r->case_sensitive = m.has_case_sensitive() ? m.case_sensitive().value() : true;
  if (!r->case_sensitive && r->path_regex) {
    RE2::Options o;
    o.set_case_sensitive(false);
    o.set_log_errors(false);
    r->path_regex = std::make_shared<const RE2>(r->path_regex->pattern(), o);
  }
  for (int i = 0; i < m.headers_size(); ++i) {
    const route_v3::HeaderMatcher& h = m.headers(i);
    std::string hw = where + ": match.headers[" + std::to_string(i) + "] (" + h.name() + ")";
    HeaderMatcher hm;
    hm.name = Lower(h.name());
    hm.invert = h.invert_match();
    hm.kind = HeaderMatcher::Kind::kString;
    using HM = route_v3::HeaderMatcher;
    switch (h.header_match_specifier_case()) {
      case HM::kExactMatch:
        hm.match = {StringMatcher::Kind::kExact, h.exact_match()};
        break;
      case HM::kPrefixMatch:
        hm.match = {StringMatcher::Kind::kPrefix, h.prefix_match()};
        break;
      case HM::kSuffixMatch:
        hm.match = {StringMatcher::Kind::kSuffix, h.suffix_match()};
        break;
      case HM::kContainsMatch:
        hm.match = {StringMatcher::Kind::kContains, h.contains_match()};
        break;
      case HM::kSafeRegexMatch: {
        auto re = CompileRegex(h.safe_regex_match().regex(), hw);
        SLUICE_RETURN_IF_ERROR(re);
        hm.match.kind = StringMatcher::Kind::kRegex;
        hm.match.regex = *re;
        break;
      }
      case HM::kPresentMatch:
        hm.kind = HeaderMatcher::Kind::kPresent;
        hm.present = h.present_match();
        break;
      case HM::kStringMatch: {
        auto sm = CompileStringMatcher(h.string_match(), hw);
        SLUICE_RETURN_IF_ERROR(sm);
        hm.match = std::move(*sm);
        break;
      }
      case HM::HEADER_MATCH_SPECIFIER_NOT_SET:
        // Envoy: no specifier means "present".
        hm.kind = HeaderMatcher::Kind::kPresent;
        hm.present = true;
        break;
      default:
        return Fail(hw + ": unsupported header matcher (range_match)");
    }
    r->headers.push_back(std::move(hm));
  }
  for (int i = 0; i < m.query_parameters_size(); ++i) {
    const route_v3::QueryParameterMatcher& q = m.query_parameters(i);
    std::string qw =
        where + ": match.query_parameters[" + std::to_string(i) + "] (" + q.name() + ")";
    QueryParamMatcher qm;
    qm.name = q.name();
    if (q.has_string_match()) {
      auto sm = CompileStringMatcher(q.string_match(), qw);
      SLUICE_RETURN_IF_ERROR(sm);
      qm.match = std::move(*sm);
    } else {
      qm.present_only = true;
    }
    r->query_params.push_back(std::move(qm));
  }
  return {};
}

Result<void> CompileRetry(const route_v3::RetryPolicy& p, RetryPolicy* out,
                          const std::string& where) {
  std::string_view on = p.retry_on();
  while (!on.empty()) {
    std::size_t comma = on.find(',');
    std::string_view t = on.substr(0, comma);
    while (!t.empty() && t.front() == ' ')
      t.remove_prefix(1);
    while (!t.empty() && t.back() == ' ')
      t.remove_suffix(1);
    if (t == "5xx")
      out->on_5xx = true;
    else if (t == "gateway-error")
      out->on_gateway_error = true;
    else if (t == "connect-failure")
      out->on_connect_failure = true;
    else if (t == "reset")
      out->on_reset = true;
    else if (t == "refused-stream")
      out->on_refused_stream = true;
    else if (t == "retriable-status-codes")
      out->on_retriable_status_codes = true;
    // The gRPC conditions (Envoy's x-envoy-retry-grpc-on names, also valid in retry_on):
    // read from a trailers-only response's grpc-status (RetriableGrpcStatus).
    else if (t == "cancelled")
      out->on_grpc_cancelled = true;
    else if (t == "deadline-exceeded")
      out->on_grpc_deadline_exceeded = true;
    else if (t == "resource-exhausted")
      out->on_grpc_resource_exhausted = true;
    else if (t == "internal")
      out->on_grpc_internal = true;
    else if (t == "unavailable")
      out->on_grpc_unavailable = true;
    else if (t.empty() || t == "retriable-4xx" || t == "retriable-headers" ||
             t == "envoy-ratelimited" || t == "http3-post-connect-failure") {
      // Envoy conditions not implemented yet: they never fire; the others still do.
    } else {
      return Fail(where + ": retry_policy.retry_on: unknown condition \"" + std::string(t) + "\"");
    }
    if (comma == std::string_view::npos)
      break;
    on.remove_prefix(comma + 1);
  }
  out->num_retries = p.has_num_retries() ? p.num_retries().value() : 1;
  for (uint32_t c : p.retriable_status_codes())
    out->retriable_status_codes.push_back(static_cast<uint16_t>(c));
  if (p.has_per_try_timeout())
    out->per_try_timeout = ToMillis(p.per_try_timeout());
  if (p.has_retry_back_off()) {
    out->base_interval = ToMillis(p.retry_back_off().base_interval());
    out->max_interval = p.retry_back_off().has_max_interval()
                            ? ToMillis(p.retry_back_off().max_interval())
                            : out->base_interval * 10;
  }
  return {};
}

Result<void> CompileRouteAction(const route_v3::RouteAction& a, Route* r, const ProxyConfig& cfg,
                                const std::string& where) {
  RouteAction& out = r->action;
  switch (a.cluster_specifier_case()) {
    case route_v3::RouteAction::kCluster:
      out.cluster_name = a.cluster();
      out.cluster = InternCluster(a.cluster());
      break;
    case route_v3::RouteAction::kWeightedClusters: {
      const auto& wcs = a.weighted_clusters();
      for (int i = 0; i < wcs.clusters_size(); ++i) {
        const auto& c = wcs.clusters(i);
        std::string cw =
            where + ": weighted_clusters.clusters[" + std::to_string(i) + "] (" + c.name() + ")";
        WeightedCluster w;
        w.name = c.name();
        w.cluster = InternCluster(c.name());
        w.weight = c.has_weight() ? c.weight().value() : 0;
        w.host_rewrite = c.host_rewrite_literal();
        if (auto e = CompileHeaderOps(c.request_headers_to_add(), c.request_headers_to_remove(),
                                      &w.request_headers, cw);
            !e) {
          return e;
        }
        if (auto e = CompileHeaderOps(c.response_headers_to_add(), c.response_headers_to_remove(),
                                      &w.response_headers, cw);
            !e) {
          return e;
        }
        out.total_weight += w.weight;
        out.weighted.push_back(std::move(w));
      }
      if (out.weighted.empty())
        return Fail(where + ": weighted_clusters: no clusters");
      if (out.total_weight == 0)
        return Fail(where + ": weighted_clusters: weights sum to 0");
      break;
    }
    default:
      return Fail(where + ": route: unsupported cluster specifier (cluster_header / plugin)");
  }
  if (!a.prefix_rewrite().empty())
    out.prefix_rewrite = a.prefix_rewrite();
  if (a.has_regex_rewrite()) {
    auto re = CompileRegex(a.regex_rewrite().pattern().regex(), where + ": regex_rewrite");
    SLUICE_RETURN_IF_ERROR(re);
    out.regex_rewrite = *re;
    out.regex_substitution = a.regex_rewrite().substitution();
  }
  out.host_rewrite = a.host_rewrite_literal();
  out.upgrades = CompileUpgrades(a.upgrade_configs());
  if (a.has_timeout())
    out.timeout = ToMillis(a.timeout());
  // gRPC and stream-duration timeouts (grpc::RouteTimeouts applies them); Envoy's
  // validation refuses a negative one.
  auto duration = [&](const google::protobuf::Duration& d, std::string_view field,
                      std::optional<Millis>* to) -> Result<void> {
    if (d.seconds() < 0 || d.nanos() < 0)
      return Fail(where + ": " + std::string(field) + ": must not be negative");
    *to = ToMillis(d);
    return {};
  };
  StreamTimeouts& st = out.stream_timeouts;
  if (a.has_max_stream_duration()) {
    const auto& msd = a.max_stream_duration();
    st.has_max_stream_duration = true;
    if (msd.has_max_stream_duration()) {
      SLUICE_RETURN_IF_ERROR(duration(msd.max_stream_duration(),
                                      "max_stream_duration.max_stream_duration",
                                      &st.max_stream_duration));
    }
    if (msd.has_grpc_timeout_header_max()) {
      SLUICE_RETURN_IF_ERROR(duration(msd.grpc_timeout_header_max(),
                                      "max_stream_duration.grpc_timeout_header_max",
                                      &st.grpc_timeout_header_max));
    }
    if (msd.has_grpc_timeout_header_offset()) {
      SLUICE_RETURN_IF_ERROR(duration(msd.grpc_timeout_header_offset(),
                                      "max_stream_duration.grpc_timeout_header_offset",
                                      &st.grpc_timeout_header_offset));
    }
  }
  if (a.has_max_grpc_timeout()) {
    SLUICE_RETURN_IF_ERROR(
        duration(a.max_grpc_timeout(), "max_grpc_timeout", &st.max_grpc_timeout));
  }
  if (a.has_grpc_timeout_offset()) {
    SLUICE_RETURN_IF_ERROR(
        duration(a.grpc_timeout_offset(), "grpc_timeout_offset", &st.grpc_timeout_offset));
  }
  if (a.has_retry_policy()) {
    if (auto e = CompileRetry(a.retry_policy(), &out.retry, where); !e)
      return e;
  }
  for (int i = 0; i < a.request_mirror_policies_size(); ++i) {
    const auto& m = a.request_mirror_policies(i);
    MirrorPolicy mp;
    mp.cluster_name = m.cluster();
    mp.cluster = InternCluster(m.cluster());
    if (!cfg.ClusterAt(mp.cluster)) {
      return Fail(where + ": request_mirror_policies[" + std::to_string(i) + "]: unknown cluster " +
                  m.cluster());
    }
    mp.per_million =
        m.has_runtime_fraction() ? PerMillion(m.runtime_fraction().default_value()) : 1000000;
    mp.disable_shadow_host_suffix = m.disable_shadow_host_suffix_append();
    out.mirrors.push_back(std::move(mp));
  }
  for (const auto& h : a.hash_policy()) {
    HashPolicy hp;
    hp.terminal = h.terminal();
    if (h.has_header()) {
      hp.kind = HashKind::kHeader;
      hp.name = Lower(h.header().header_name());
    } else if (h.has_cookie()) {
      hp.kind = HashKind::kCookie;
      hp.name = h.cookie().name();
    } else if (h.has_connection_properties() && h.connection_properties().source_ip()) {
      hp.kind = HashKind::kSourceIp;
    } else {
      continue;  // query_parameter / filter_state: not hashed (falls back to random)
    }
    out.hash_policies.push_back(std::move(hp));
  }
  return {};
}

// One level's CORS policy (route, virtual host or route configuration) before the levels
// are merged: which fields it sets.
struct CorsLevel {
  std::vector<StringMatcher> allow_origins;
  std::string allow_methods, allow_headers, expose_headers, max_age;
  std::optional<bool> allow_credentials, allow_private_network_access,
      forward_not_matching_preflights;
  std::optional<uint32_t> enabled_per_million, shadow_per_million;
};

// The filter's CorsPolicy and the deprecated route-level one have the same fields.
template <class Proto>
Result<CorsLevel> CompileCorsLevel(const Proto& p, const std::string& where) {
  CorsLevel l;
  for (int i = 0; i < p.allow_origin_string_match_size(); ++i) {
    auto m = CompileStringMatcher(p.allow_origin_string_match(i),
                                  where + ": allow_origin_string_match[" + std::to_string(i) + "]");
    SLUICE_RETURN_IF_ERROR(m);
    l.allow_origins.push_back(std::move(*m));
  }
  l.allow_methods = p.allow_methods();
  l.allow_headers = p.allow_headers();
  l.expose_headers = p.expose_headers();
  l.max_age = p.max_age();
  if (p.has_allow_credentials())
    l.allow_credentials = p.allow_credentials().value();
  if (p.has_allow_private_network_access())
    l.allow_private_network_access = p.allow_private_network_access().value();
  if (p.has_forward_not_matching_preflights())
    l.forward_not_matching_preflights = p.forward_not_matching_preflights().value();
  if (p.has_filter_enabled())
    l.enabled_per_million = PerMillion(p.filter_enabled().default_value());
  if (p.has_shadow_enabled())
    l.shadow_per_million = PerMillion(p.shadow_enabled().default_value());
  return l;
}

// A level's typed_per_filter_config entry for the cors filter: its policy, none, or
// "disabled here" (a FilterConfig wrapper with disabled: true).
struct CorsEntry {
  bool present = false;
  bool disabled = false;
  CorsLevel level;
};

Result<CorsEntry> CorsFromTypedConfig(
    const google::protobuf::Map<std::string, google::protobuf::Any>& typed,
    const std::string& where) {
  CorsEntry e;
  auto it = typed.find(std::string(kCorsFilter));
  if (it == typed.end())
    return e;
  const std::string w = where + ": typed_per_filter_config[" + std::string(kCorsFilter) + "]";
  const google::protobuf::Any* any = &it->second;
  route_v3::FilterConfig wrapper;
  if (any->Is<route_v3::FilterConfig>()) {
    if (!any->UnpackTo(&wrapper))
      return Fail(w + ": FilterConfig does not parse");
    if (wrapper.disabled()) {
      e.present = e.disabled = true;
      return e;
    }
    if (!wrapper.has_config())
      return e;
    any = &wrapper.config();
  }
  CorsProto p;
  if (!any->Is<CorsProto>() || !any->UnpackTo(&p)) {
    return Fail(w + ": not an envoy.extensions.filters.http.cors.v3.CorsPolicy (" +
                any->type_url() + ")");
  }
  auto l = CompileCorsLevel(p, w);
  SLUICE_RETURN_IF_ERROR(l);
  e.present = true;
  e.level = std::move(*l);
  return e;
}

// Envoy's CORS filter reads each field from the most specific policy that sets it;
// filter_enabled and shadow_enabled come from the most specific policy alone.
std::shared_ptr<const CorsPolicy> MergeCors(const std::vector<const CorsLevel*>& levels) {
  if (levels.empty())
    return nullptr;
  auto p = std::make_shared<CorsPolicy>();
  p->enabled_per_million = levels.front()->enabled_per_million.value_or(1000000);
  p->shadow_per_million = levels.front()->shadow_per_million.value_or(0);
  auto first_string = [&](std::string CorsLevel::*field) {
    for (const CorsLevel* l : levels) {
      if (!(l->*field).empty())
        return l->*field;
    }
    return std::string();
  };
  auto first_bool = [&](std::optional<bool> CorsLevel::*field, bool dflt) {
    for (const CorsLevel* l : levels) {
      if (l->*field)
        return *(l->*field);
    }
    return dflt;
  };
  for (const CorsLevel* l : levels) {
    if (!l->allow_origins.empty()) {
      p->allow_origins = l->allow_origins;
      break;
    }
  }
  p->allow_methods = first_string(&CorsLevel::allow_methods);
  p->allow_headers = first_string(&CorsLevel::allow_headers);
  p->expose_headers = first_string(&CorsLevel::expose_headers);
  p->max_age = first_string(&CorsLevel::max_age);
  p->allow_credentials = first_bool(&CorsLevel::allow_credentials, false);
  p->allow_private_network_access = first_bool(&CorsLevel::allow_private_network_access, false);
  p->forward_not_matching_preflights =
      first_bool(&CorsLevel::forward_not_matching_preflights, true);
  return p;
}

// The policy a route runs with. typed_per_filter_config at any level (route, virtual
// host, route configuration) decides; only when no level has one are the deprecated
// RouteAction.cors and VirtualHost.cors read, route first (Envoy's filter does the same).
// A level whose entry is a FilterConfig with disabled: true turns the filter off there
// unless a more specific level sets it.
std::shared_ptr<const CorsPolicy> RouteCors(const CorsEntry& route, const CorsEntry& vhost,
                                            const CorsEntry& config,
                                            const std::optional<CorsLevel>& route_deprecated,
                                            const std::optional<CorsLevel>& vhost_deprecated) {
  std::vector<const CorsLevel*> levels;
  for (const CorsEntry* e : {&route, &vhost, &config}) {
    if (!e->present)
      continue;
    if (e->disabled) {
      if (levels.empty())
        return nullptr;
      continue;
    }
    levels.push_back(&e->level);
  }
  if (levels.empty()) {
    if (route_deprecated)
      levels.push_back(&*route_deprecated);
    if (vhost_deprecated)
      levels.push_back(&*vhost_deprecated);
  }
  return MergeCors(levels);
}

Result<std::shared_ptr<RouteTable>> CompileRouteConfig(const route_v3::RouteConfiguration& rc,
                                                       const ProxyConfig& cfg) {
  auto t = std::make_shared<RouteTable>();
  t->name = rc.name();
  t->ignore_port = rc.ignore_port_in_host_matching();
  std::string rwhere = "route config " + rc.name();
  if (auto e = CompileHeaderOps(rc.request_headers_to_add(), rc.request_headers_to_remove(),
                                &t->request_headers, rwhere);
      !e) {
    return std::unexpected(e.error());
  }
  if (auto e = CompileHeaderOps(rc.response_headers_to_add(), rc.response_headers_to_remove(),
                                &t->response_headers, rwhere);
      !e) {
    return std::unexpected(e.error());
  }
  auto config_cors = CorsFromTypedConfig(rc.typed_per_filter_config(), rwhere);
  SLUICE_RETURN_IF_ERROR(config_cors);
  SLUICE_RETURN_IF_ERROR(NoRbacOverride(rc.typed_per_filter_config(), rwhere));
  for (const auto& v : rc.virtual_hosts()) {
    VirtualHost vh;
    vh.name = v.name();
    std::string vwhere = rwhere + ": virtual host " + v.name();
    for (const auto& d : v.domains())
      vh.domains.push_back(d);
    if (vh.domains.empty())
      return Fail(vwhere + ": domains is empty");
    switch (v.require_tls()) {
      case route_v3::VirtualHost::ALL:
        vh.require_tls = VirtualHost::TlsRequirement::kAll;
        break;
      case route_v3::VirtualHost::EXTERNAL_ONLY:
        vh.require_tls = VirtualHost::TlsRequirement::kExternalOnly;
        break;
      default:
        break;
    }
    if (auto e = CompileHeaderOps(v.request_headers_to_add(), v.request_headers_to_remove(),
                                  &vh.request_headers, vwhere);
        !e) {
      return std::unexpected(e.error());
    }
    if (auto e = CompileHeaderOps(v.response_headers_to_add(), v.response_headers_to_remove(),
                                  &vh.response_headers, vwhere);
        !e) {
      return std::unexpected(e.error());
    }
    auto vhost_cors = CorsFromTypedConfig(v.typed_per_filter_config(), vwhere);
    SLUICE_RETURN_IF_ERROR(vhost_cors);
    SLUICE_RETURN_IF_ERROR(NoRbacOverride(v.typed_per_filter_config(), vwhere));
    std::optional<CorsLevel> vhost_cors_deprecated;
    if (v.has_cors()) {
      auto l = CompileCorsLevel(v.cors(), vwhere + ": cors");
      SLUICE_RETURN_IF_ERROR(l);
      vhost_cors_deprecated = std::move(*l);
    }
    for (int i = 0; i < v.routes_size(); ++i) {
      const route_v3::Route& pr = v.routes(i);
      std::string where = vwhere + ": route " + (pr.name().empty() ? std::to_string(i) : pr.name());
      Route r;
      r.name = pr.name();
      SLUICE_RETURN_IF_ERROR(CompileRouteMatch(pr.match(), &r, where));
      switch (pr.action_case()) {
        case route_v3::Route::kRoute:
          r.kind = Route::Kind::kRoute;
          SLUICE_RETURN_IF_ERROR(CompileRouteAction(pr.route(), &r, cfg, where));
          break;
        case route_v3::Route::kRedirect: {
          r.kind = Route::Kind::kRedirect;
          const auto& rd = pr.redirect();
          r.redirect.scheme = rd.https_redirect() ? "https" : rd.scheme_redirect();
          r.redirect.host = rd.host_redirect();
          r.redirect.port = rd.port_redirect();
          r.redirect.path = rd.path_redirect();
          r.redirect.prefix_rewrite = rd.prefix_rewrite();
          r.redirect.strip_query = rd.strip_query();
          switch (rd.response_code()) {
            case route_v3::RedirectAction::FOUND:
              r.redirect.status = 302;
              break;
            case route_v3::RedirectAction::SEE_OTHER:
              r.redirect.status = 303;
              break;
            case route_v3::RedirectAction::TEMPORARY_REDIRECT:
              r.redirect.status = 307;
              break;
            case route_v3::RedirectAction::PERMANENT_REDIRECT:
              r.redirect.status = 308;
              break;
            default:
              r.redirect.status = 301;
              break;
          }
          break;
        }
        case route_v3::Route::kDirectResponse: {
          r.kind = Route::Kind::kDirectResponse;
          r.direct_status = static_cast<int>(pr.direct_response().status());
          if (r.direct_status < 200 || r.direct_status > 599) {
            return Fail(where + ": direct_response.status " + std::to_string(r.direct_status) +
                        " out of range");
          }
          const auto& body = pr.direct_response().body();
          r.direct_body = body.has_inline_string()  ? body.inline_string()
                          : body.has_inline_bytes() ? body.inline_bytes()
                                                    : "";
          break;
        }
        default:
          return Fail(where + ": unsupported action");
      }
      if (auto e = CompileHeaderOps(pr.request_headers_to_add(), pr.request_headers_to_remove(),
                                    &r.request_headers, where);
          !e) {
        return std::unexpected(e.error());
      }
      if (auto e = CompileHeaderOps(pr.response_headers_to_add(), pr.response_headers_to_remove(),
                                    &r.response_headers, where);
          !e) {
        return std::unexpected(e.error());
      }
      SLUICE_RETURN_IF_ERROR(NoRbacOverride(pr.typed_per_filter_config(), where));
      auto it = pr.typed_per_filter_config().find(std::string(kFaultFilter));
      if (it != pr.typed_per_filter_config().end()) {
        HTTPFault f;
        if (!it->second.UnpackTo(&f))
          return Fail(where +
                      ": typed_per_filter_config[envoy.filters.http.fault]: not an HTTPFault");
        auto fp = CompileFault(f, where + ": fault");
        SLUICE_RETURN_IF_ERROR(fp);
        r.fault = *fp;
      }
      // CORS applies to routes that forward (Envoy's filter skips redirects and direct
      // responses: they have no route entry).
      if (r.kind == Route::Kind::kRoute) {
        auto route_cors = CorsFromTypedConfig(pr.typed_per_filter_config(), where);
        SLUICE_RETURN_IF_ERROR(route_cors);
        std::optional<CorsLevel> route_cors_deprecated;
        if (pr.route().has_cors()) {
          auto l = CompileCorsLevel(pr.route().cors(), where + ": route.cors");
          SLUICE_RETURN_IF_ERROR(l);
          route_cors_deprecated = std::move(*l);
        }
        r.cors = RouteCors(*route_cors, *vhost_cors, *config_cors, route_cors_deprecated,
                           vhost_cors_deprecated);
      }
      vh.routes.push_back(std::move(r));
    }
    t->vhosts.push_back(std::move(vh));
  }
  t->BuildIndex();
  for (const auto& vh : t->vhosts) {
    for (const auto& r : vh.routes) {
      for (const auto& m : r.action.mirrors) {
        if (std::find(t->mirror_clusters.begin(), t->mirror_clusters.end(), m.cluster_name) ==
            t->mirror_clusters.end())
          t->mirror_clusters.push_back(m.cluster_name);
      }
    }
  }
  return t;
}

// http2_protocol_options for the upstream connection layer (h2_upstream.h): what Sluice
// honours is copied, what it cannot is refused by name (a cluster is never served with
// half of its HTTP/2 settings).
Result<void> CompileHttp2Options(const core_v3::Http2ProtocolOptions& o, Cluster::Http2* out,
                                 const std::string& where) {
  if (o.has_connection_keepalive())
    return Fail(where + ".connection_keepalive: HTTP/2 PING keepalive is not supported");
  if (o.custom_settings_parameters_size() > 0)
    return Fail(where + ".custom_settings_parameters: custom SETTINGS are not supported");
  if (o.allow_metadata())
    return Fail(where + ".allow_metadata: METADATA frames are not supported");
  if (o.has_max_concurrent_streams())
    out->max_concurrent_streams = std::max<uint32_t>(1, o.max_concurrent_streams().value());
  if (o.has_initial_stream_window_size())
    out->initial_stream_window = o.initial_stream_window_size().value();
  if (o.has_initial_connection_window_size())
    out->initial_connection_window = o.initial_connection_window_size().value();
  if (o.has_hpack_table_size())
    out->hpack_table_size = o.hpack_table_size().value();
  if (o.has_max_outbound_frames())
    out->max_outbound_frames = o.max_outbound_frames().value();
  if (o.has_max_outbound_control_frames())
    out->max_outbound_control_frames = o.max_outbound_control_frames().value();
  if (o.has_max_consecutive_inbound_frames_with_empty_payload())
    out->max_consecutive_inbound_frames_with_empty_payload =
        o.max_consecutive_inbound_frames_with_empty_payload().value();
  if (o.has_max_inbound_priority_frames_per_stream())
    out->max_inbound_priority_frames_per_stream =
        o.max_inbound_priority_frames_per_stream().value();
  if (o.has_max_inbound_window_update_frames_per_data_frame_sent())
    out->max_inbound_window_update_frames_per_data_frame_sent =
        o.max_inbound_window_update_frames_per_data_frame_sent().value();
  return {};
}

void CompileCommonHttpOptions(const core_v3::HttpProtocolOptions& o, Cluster* c) {
  if (o.has_idle_timeout())
    c->idle_timeout = ToMillis(o.idle_timeout());
  if (o.has_max_requests_per_connection())
    c->max_requests_per_connection = o.max_requests_per_connection().value();
}

// The cluster's upstream protocol: typed_extension_protocol_options'
// envoy.extensions.upstreams.http.v3.HttpProtocolOptions (istiod's setH2Options and
// setUseDownstreamProtocol), else the deprecated Cluster fields, which Envoy refuses
// beside it.
Result<void> CompileUpstreamProtocol(const cluster_v3::Cluster& pc, Cluster* c,
                                     const std::string& where) {
  using UpstreamHttp = envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
  constexpr std::string_view kKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
  const google::protobuf::Any* any = nullptr;
  for (const auto& [name, a] : pc.typed_extension_protocol_options()) {
    if (name == kKey || a.Is<UpstreamHttp>())
      any = &a;
  }
  const bool deprecated = pc.has_http2_protocol_options() || pc.has_http_protocol_options() ||
                          pc.has_common_http_protocol_options() ||
                          pc.protocol_selection() == cluster_v3::Cluster::USE_DOWNSTREAM_PROTOCOL;
  if (!any) {
    if (pc.has_common_http_protocol_options())
      CompileCommonHttpOptions(pc.common_http_protocol_options(), c);
    if (pc.has_http2_protocol_options()) {
      c->protocol = pc.protocol_selection() == cluster_v3::Cluster::USE_DOWNSTREAM_PROTOCOL
                        ? Cluster::Protocol::kDownstream
                        : Cluster::Protocol::kHttp2;
      return CompileHttp2Options(pc.http2_protocol_options(), &c->http2,
                                 where + ": http2_protocol_options");
    }
    return {};
  }
  const std::string at = where + ": typed_extension_protocol_options[" + std::string(kKey) + "]";
  if (deprecated) {
    return Fail(at +
                ": set beside the deprecated http_protocol_options / http2_protocol_options "
                "/ common_http_protocol_options / protocol_selection (Envoy refuses both)");
  }
  UpstreamHttp o;
  if (!any->UnpackTo(&o))
    return Fail(at + ": not an HttpProtocolOptions");
  if (o.http_filters_size() > 0)
    return Fail(at + ".http_filters: upstream HTTP filters are not supported");
  if (o.has_header_validation_config())
    return Fail(at + ".header_validation_config: is not supported");
  if (o.has_common_http_protocol_options())
    CompileCommonHttpOptions(o.common_http_protocol_options(), c);
  switch (o.upstream_protocol_options_case()) {
    case UpstreamHttp::kExplicitHttpConfig: {
      const auto& e = o.explicit_http_config();
      if (e.has_http3_protocol_options())
        return Fail(at + ".explicit_http_config.http3_protocol_options: HTTP/3 is not supported");
      if (e.has_http2_protocol_options()) {
        c->protocol = Cluster::Protocol::kHttp2;
        return CompileHttp2Options(e.http2_protocol_options(), &c->http2,
                                   at + ".explicit_http_config.http2_protocol_options");
      }
      return {};  // HTTP/1.1
    }
    case UpstreamHttp::kUseDownstreamProtocolConfig: {
      const auto& d = o.use_downstream_protocol_config();
      if (d.has_http3_protocol_options()) {
        return Fail(at +
                    ".use_downstream_protocol_config.http3_protocol_options: HTTP/3 is not "
                    "supported");
      }
      c->protocol = Cluster::Protocol::kDownstream;
      return CompileHttp2Options(d.http2_protocol_options(), &c->http2,
                                 at + ".use_downstream_protocol_config.http2_protocol_options");
    }
    case UpstreamHttp::kAutoConfig:
      return Fail(at +
                  ".auto_config: needs ALPN over an upstream TLS connection, which Sluice "
                  "does not originate");
    default:
      return {};  // HTTP/1.1
  }
}

// `eds`: the set's ClusterLoadAssignment of the cluster's name (nullptr: none).
Result<std::shared_ptr<Cluster>> CompileCluster(
    const cluster_v3::Cluster& pc, const envoy::config::endpoint::v3::ClusterLoadAssignment* eds,
    std::vector<std::string>* warnings, DnsCache* dns_cache) {
  auto c = std::make_shared<Cluster>();
  c->name = pc.name();
  c->id = InternCluster(pc.name());
  c->istio_service = telemetry::ClusterService(pc);
  std::string where = "cluster " + pc.name();
  c->original_dst = pc.has_type() && pc.type() == cluster_v3::Cluster::ORIGINAL_DST;
  if (pc.has_upstream_bind_config()) {
    const auto& src = pc.upstream_bind_config().source_address();
    auto port = PortOf(src, where + ": upstream_bind_config.source_address");
    SLUICE_RETURN_IF_ERROR(port);
    c->bind_source = ParseIp(src.address(), *port);
    if (!c->bind_source) {
      return Fail(where + ": upstream_bind_config.source_address: \"" + src.address() +
                  "\" is not an IP address");
    }
  }
  switch (c->original_dst ? cluster_v3::Cluster::ROUND_ROBIN : pc.lb_policy()) {
    case cluster_v3::Cluster::ROUND_ROBIN:
      c->lb = LbPolicy::kRoundRobin;
      break;
    case cluster_v3::Cluster::LEAST_REQUEST:
      c->lb = LbPolicy::kLeastRequest;
      break;
    case cluster_v3::Cluster::RANDOM:
      c->lb = LbPolicy::kRandom;
      break;
    case cluster_v3::Cluster::RING_HASH:
      c->lb = LbPolicy::kRingHash;
      break;
    case cluster_v3::Cluster::MAGLEV:
      c->lb = LbPolicy::kMaglev;
      break;
    default:
      return Fail(where + ": lb_policy " + cluster_v3::Cluster::LbPolicy_Name(pc.lb_policy()) +
                  " is not supported");
  }
  if (pc.has_connect_timeout())
    c->connect_timeout = ToMillis(pc.connect_timeout());
  else
    c->connect_timeout = Millis(5000);  // Envoy's default
  SLUICE_RETURN_IF_ERROR(CompileUpstreamProtocol(pc, c.get(), where));
  for (const auto& t : pc.circuit_breakers().thresholds()) {
    if (t.priority() != core_v3::DEFAULT)
      continue;
    if (t.has_max_connections())
      c->limits.max_connections = t.max_connections().value();
    if (t.has_max_pending_requests())
      c->limits.max_pending_requests = t.max_pending_requests().value();
    if (t.has_max_requests())
      c->limits.max_requests = t.max_requests().value();
    if (t.has_max_retries())
      c->limits.max_retries = t.max_retries().value();
  }
  if (pc.has_outlier_detection()) {
    const auto& od = pc.outlier_detection();
    c->outlier.enabled = true;
    if (od.has_consecutive_5xx())
      c->outlier.consecutive_5xx = od.consecutive_5xx().value();
    if (od.has_base_ejection_time())
      c->outlier.base_ejection_time = ToMillis(od.base_ejection_time());
    if (od.has_max_ejection_percent())
      c->outlier.max_ejection_percent = od.max_ejection_percent().value();
  }
  const std::chrono::milliseconds dns_refresh =
      pc.has_dns_refresh_rate() && ToMillis(pc.dns_refresh_rate()).count() > 0
          ? std::chrono::milliseconds(ToMillis(pc.dns_refresh_rate()).count())
          : std::chrono::milliseconds(5000);  // Envoy's default
  const envoy::config::endpoint::v3::ClusterLoadAssignment* cla = nullptr;
  bool dns = false, every_address = false;
  switch (pc.cluster_discovery_type_case()) {
    case cluster_v3::Cluster::kType:
      switch (pc.type()) {
        case cluster_v3::Cluster::STATIC:
          cla = &pc.load_assignment();
          break;
        case cluster_v3::Cluster::STRICT_DNS:
        case cluster_v3::Cluster::LOGICAL_DNS:
          cla = &pc.load_assignment();
          dns = true;
          every_address = pc.type() == cluster_v3::Cluster::STRICT_DNS;
          c->dns = true;
          break;
        case cluster_v3::Cluster::ORIGINAL_DST:
          break;
        case cluster_v3::Cluster::EDS:
          cla = eds;
          break;
        default:
          return Fail(where + ": type " + cluster_v3::Cluster::DiscoveryType_Name(pc.type()) +
                      " is not supported");
      }
      break;
    default:
      cla = &pc.load_assignment();
  }
  if (pc.type() == cluster_v3::Cluster::EDS && (!cla || cla->endpoints_size() == 0) &&
      pc.load_assignment().endpoints_size() > 0) {
    cla = &pc.load_assignment();
  }
  if (cla) {
    for (const auto& le : cla->endpoints()) {
      for (const auto& lb : le.lb_endpoints()) {
        // Envoy routes to HEALTHY and UNKNOWN endpoints, to DEGRADED ones only when no
        // healthy one is left, and never to UNHEALTHY, DRAINING or TIMEOUT ones.
        bool degraded = false;
        switch (lb.health_status()) {
          case core_v3::UNHEALTHY:
          case core_v3::DRAINING:
          case core_v3::TIMEOUT:
            continue;
          case core_v3::DEGRADED:
            degraded = true;
            break;
          default:
            break;
        }
        if (!lb.endpoint().address().has_socket_address()) {
          return Fail(where + ": endpoint without a socket_address");
        }
        const auto& sa = lb.endpoint().address().socket_address();
        const uint32_t weight = lb.has_load_balancing_weight()
                                    ? std::max<uint32_t>(1, lb.load_balancing_weight().value())
                                    : 1;
        auto ep = std::make_unique<Endpoint>();
        ep->degraded = degraded;
        ep->weight = weight;
        ep->istio_workload = telemetry::EndpointWorkload(lb.metadata());
        auto port_or = PortOf(sa, where);
        SLUICE_RETURN_IF_ERROR(port_or);
        const uint16_t port = *port_or;
        if (auto ip = ParseIp(sa.address(), port)) {
          SetAddress(*ep, *ip);
          c->endpoints.push_back(std::move(ep));
          continue;
        }
        if (!dns)
          return Fail(where + ": address \"" + sa.address() +
                      "\" is not an IP (cluster type is not DNS)");
        // A name without an answer (yet) costs this cluster the endpoint, not the whole
        // config: its requests get 503 UH, every other route keeps working, and the
        // answer, when it comes, is compiled in.
        // The process's cache (and its resolver thread) only once a name needs it.
        auto answer =
            (dns_cache ? *dns_cache : DnsCache::Default()).Lookup(sa.address(), dns_refresh);
        if (answer.addrs.empty()) {
          warnings->push_back(where + ": " +
                              (answer.error.empty() ? "\"" + sa.address() + "\" is still resolving"
                                                    : answer.error) +
                              "; the endpoint is left out");
          continue;
        }
        // STRICT_DNS: a host per address; LOGICAL_DNS: the first address only.
        const std::size_t n = every_address ? answer.addrs.size() : 1;
        for (std::size_t i = 0; i < n; ++i) {
          if (i > 0) {
            ep = std::make_unique<Endpoint>();
            ep->degraded = degraded;
            ep->weight = weight;
            ep->istio_workload = telemetry::EndpointWorkload(lb.metadata());
          }
          sockaddr_storage resolved = answer.addrs[i];
          if (resolved.ss_family == AF_INET6)
            reinterpret_cast<sockaddr_in6*>(&resolved)->sin6_port = htons(port);
          else
            reinterpret_cast<sockaddr_in*>(&resolved)->sin_port = htons(port);
          SetAddress(*ep, resolved);
          c->endpoints.push_back(std::move(ep));
        }
      }
    }
  }
  // Envoy refuses a Maglev table size that is not a prime up to 5000011; that is
  // checked, but the table is the kernel's size on both paths (see lb.h), for RING_HASH
  // too.
  const bool hashed = c->lb == LbPolicy::kRingHash || c->lb == LbPolicy::kMaglev;
  if (hashed && pc.has_maglev_lb_config() && pc.maglev_lb_config().has_table_size()) {
    const uint64_t table = pc.maglev_lb_config().table_size().value();
    bool prime = table > 2 && table <= 5000011;
    for (uint64_t d = 2; prime && d * d <= table; ++d)
      prime = table % d != 0;
    if (!prime)
      return Fail(where + ": maglev_lb_config.table_size " + std::to_string(table) +
                  " is not a prime up to 5000011");
  }
  SLUICE_RETURN_IF_ERROR_CTX(BuildLbTables(*c), where);
  return c;
}

// The RDS table of that name in `cfg`; until RDS brings it, an empty one (Envoy waits for
// RDS; meanwhile every request gets 404 NR).
std::shared_ptr<RouteTable> RdsTable(ProxyConfig& cfg, const std::string& name) {
  auto it = cfg.route_tables.find(name);
  if (it != cfg.route_tables.end())
    return it->second;
  auto table = std::make_shared<RouteTable>();
  table->name = name;
  cfg.route_tables.emplace(name, table);
  return table;
}

// ---------------------------------------------------------------- downstream TLS
//
// A filter chain's DownstreamTlsContext (istiod's shape for a Gateway server with
// tls.mode SIMPLE or MUTUAL and a credentialName) → tls::ServerConfig → ServerContext.
// What Sluice does not honour fails the chain closed, naming the field: a TLS chain is
// never served as plaintext, and a client-certificate requirement is never dropped.

namespace tls_v3 = envoy::extensions::transport_sockets::tls::v3;

// The SDS secrets a compile resolves names against (the snapshot's, or a ResourceSet's).
using SecretFinder = std::function<const tls_v3::Secret*(const std::string&)>;

std::string DataSourceBytes(const core_v3::DataSource& d) {
  return d.has_inline_bytes() ? d.inline_bytes() : d.inline_string();
}

// Data sources the compile reads: the bytes themselves (config::ValidateSecret refuses
// the others in secrets; inline contexts are checked here).
std::string InlineOnly(const core_v3::DataSource& d, const std::string& field) {
  if (d.specifier_case() == core_v3::DataSource::kInlineBytes ||
      d.specifier_case() == core_v3::DataSource::kInlineString ||
      d.specifier_case() == core_v3::DataSource::SPECIFIER_NOT_SET) {
    return {};
  }
  return field + ": only inline_bytes and inline_string are served";
}

// The SDS config of a secret reference: only ADS (istiod's `ads {}`) brings secrets here.
std::string AdsOnly(const tls_v3::SdsSecretConfig& sds, const std::string& field) {
  if (sds.name().empty())
    return field + ".name: empty";
  if (sds.has_sds_config() && !sds.sds_config().has_ads())
    return field + ".sds_config: only ads {} is served (secret " + sds.name() + ")";
  return {};
}

// A StringMatcher compiled by the proxy's one compiler, as a SAN matcher of `type`.
tls::SanMatcher SanMatcherOf(tls::SanType type, StringMatcher m) {
  static constexpr const char* kKinds[] = {"exact", "prefix", "suffix", "contains", "safe_regex"};
  tls::SanMatcher out;
  out.type = type;
  out.text = std::string(tls::SanTypeName(type)) + " " + kKinds[static_cast<int>(m.kind)] + " " +
             (m.kind == StringMatcher::Kind::kRegex && m.regex ? m.regex->pattern() : m.value) +
             (m.ignore_case ? " (ignore_case)" : "");
  if (m.kind == StringMatcher::Kind::kExact)
    out.exact = m.value;
  out.matches = [m = std::move(m)](std::string_view s) { return m.Matches(s); };
  return out;
}

// The client certificate SAN checks of a validation context, as Envoy builds them
// (CertificateValidationContextConfigImpl::getSubjectAltNameMatchers): the typed matchers,
// or each deprecated untyped one as a matcher per DNS, URI, EMAIL and IP_ADDRESS; both
// lists at once is an error there, and here. "" or why they cannot be honoured.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
std::string CompileSanMatchers(const tls_v3::CertificateValidationContext& v,
                               const std::string& field, std::vector<tls::SanMatcher>* out) {
  using SAN = tls_v3::SubjectAltNameMatcher;
  if (v.match_subject_alt_names_size() > 0 && v.match_typed_subject_alt_names_size() > 0) {
    return field +
           ": match_typed_subject_alt_names and the deprecated match_subject_alt_names are "
           "both set (Envoy refuses SAN checks from both)";
  }
  for (int i = 0; i < v.match_typed_subject_alt_names_size(); ++i) {
    const SAN& t = v.match_typed_subject_alt_names(i);
    const std::string f = field + ".match_typed_subject_alt_names[" + std::to_string(i) + "]";
    tls::SanType type;
    switch (t.san_type()) {
      case SAN::DNS:
        type = tls::SanType::kDns;
        break;
      case SAN::URI:
        type = tls::SanType::kUri;
        break;
      case SAN::EMAIL:
        type = tls::SanType::kEmail;
        break;
      case SAN::IP_ADDRESS:
        type = tls::SanType::kIpAddress;
        break;
      case SAN::OTHER_NAME:
        return f + ".san_type: OTHER_NAME (oid \"" + t.oid() + "\") is not implemented";
      default:
        return f + ".san_type: " + SAN::SanType_Name(t.san_type()) + " is not a SAN type";
    }
    auto m = CompileStringMatcher(t.matcher(), f + ".matcher", ".");
    if (!m)
      return m.error().message;
    out->push_back(SanMatcherOf(type, std::move(*m)));
  }
  for (int i = 0; i < v.match_subject_alt_names_size(); ++i) {
    auto m =
        CompileStringMatcher(v.match_subject_alt_names(i),
                             field + ".match_subject_alt_names[" + std::to_string(i) + "]", ".");
    if (!m)
      return m.error().message;
    for (tls::SanType type :
         {tls::SanType::kDns, tls::SanType::kUri, tls::SanType::kEmail, tls::SanType::kIpAddress}) {
      out->push_back(SanMatcherOf(type, *m));
    }
  }
  return {};
}
#pragma GCC diagnostic pop

// The pinned client certificate hashes of a validation context, as Envoy reads them
// (DefaultCertValidator): verify_certificate_hash as hex SHA-256 of the certificate's DER,
// optionally colon-separated ("DF:6F:..." from `openssl x509 -fingerprint -sha256`);
// verify_certificate_spki as base64 SHA-256 of its SubjectPublicKeyInfo. Each must be 32
// bytes once decoded. "" or what is wrong, naming the entry.
std::string CompileCertificatePins(const tls_v3::CertificateValidationContext& v,
                                   const std::string& field, tls::ServerConfig* sc) {
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9')
      return c - '0';
    if (c >= 'a' && c <= 'f')
      return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
      return c - 'A' + 10;
    return -1;
  };
  for (int i = 0; i < v.verify_certificate_hash_size(); ++i) {
    std::string hex = v.verify_certificate_hash(i);
    const std::string f = field + ".verify_certificate_hash[" + std::to_string(i) + "]";
    if (hex.size() == 95)  // the colon-separated fingerprint
      std::erase(hex, ':');
    std::string raw;
    for (std::size_t k = 0; hex.size() == 64 && k < hex.size(); k += 2) {
      const int hi = nibble(hex[k]), lo = nibble(hex[k + 1]);
      if (hi < 0 || lo < 0)
        break;
      raw.push_back(static_cast<char>(hi << 4 | lo));
    }
    if (raw.size() != 32)
      return f + ": \"" + v.verify_certificate_hash(i) + "\" is not a hex-encoded SHA-256";
    sc->client_cert_sha256.push_back(std::move(raw));
  }
  for (int i = 0; i < v.verify_certificate_spki_size(); ++i) {
    const std::string f = field + ".verify_certificate_spki[" + std::to_string(i) + "]";
    auto raw = DecodeBase64(v.verify_certificate_spki(i), f);
    if (!raw || raw->size() != 32)
      return f + ": \"" + v.verify_certificate_spki(i) + "\" is not a base64-encoded SHA-256";
    sc->client_spki_sha256.push_back(std::move(*raw));
  }
  return {};
}

// The fields of a validation context Sluice does not check: set, they fail the chain.
std::string UnhonouredValidation(const tls_v3::CertificateValidationContext& v,
                                 const std::string& field) {
  if (v.has_crl())
    return field + ".crl: certificate revocation lists are not implemented";
  if (v.only_verify_leaf_cert_crl())
    return field + ".only_verify_leaf_cert_crl: not implemented";
  if (v.allow_expired_certificate())
    return field + ".allow_expired_certificate: not implemented";
  if (v.trust_chain_verification() != tls_v3::CertificateValidationContext::VERIFY_TRUST_CHAIN)
    return field + ".trust_chain_verification: only VERIFY_TRUST_CHAIN is served";
  if (v.has_custom_validator_config())
    return field + ".custom_validator_config: not implemented";
  if (v.has_max_verify_depth())
    return field + ".max_verify_depth: not implemented";
  if (v.has_watched_directory())
    return field + ".watched_directory: not implemented";
  if (v.has_system_root_certs())
    return field + ".system_root_certs: not implemented";
  if (v.has_ca_certificate_provider_instance())
    return field + ".ca_certificate_provider_instance: not implemented";
  if (auto why = InlineOnly(v.trusted_ca(), field + ".trusted_ca"); !why.empty())
    return why;
  return {};
}

int TlsVersion(tls_v3::TlsParameters::TlsProtocol p, int automatic) {
  if (p == tls_v3::TlsParameters::TLS_AUTO)
    return automatic;
  return 0x0300 + static_cast<int>(p);  // TLSv1_0 = 1 → 0x0301 (TLS1_VERSION), ...
}

// The chain's TLS context, or why it cannot be served (*why set, nullptr returned).
std::shared_ptr<const tls::ServerContext> CompileDownstreamTls(const listener_v3::FilterChain& fc,
                                                               const SecretFinder& secrets,
                                                               std::string* why) {
  const auto& ts = fc.transport_socket();
  tls_v3::DownstreamTlsContext ctx;
  if (!ts.typed_config().Is<tls_v3::DownstreamTlsContext>() || !ts.typed_config().UnpackTo(&ctx)) {
    *why = "transport_socket.typed_config: not a DownstreamTlsContext (" +
           ts.typed_config().type_url() + ")";
    return nullptr;
  }
  const std::string f = "transport_socket.typed_config";
  auto fail = [&](std::string reason) {
    *why = std::move(reason);
    return nullptr;
  };
  // Fields of DownstreamTlsContext Sluice does not honour.
  if (ctx.has_require_sni() && ctx.require_sni().value())
    return fail(f + ".require_sni: not implemented");
  if (ctx.has_session_ticket_keys() || ctx.has_session_ticket_keys_sds_secret_config())
    return fail(f + ".session_ticket_keys: session ticket keys are not implemented");
  if (ctx.disable_stateless_session_resumption())
    return fail(f + ".disable_stateless_session_resumption: not implemented");
  if (ctx.disable_stateful_session_resumption())
    return fail(f + ".disable_stateful_session_resumption: not implemented");
  if (ctx.has_session_timeout())
    return fail(f + ".session_timeout: not implemented");
  if (ctx.ocsp_staple_policy() != tls_v3::DownstreamTlsContext::LENIENT_STAPLING)
    return fail(f + ".ocsp_staple_policy: OCSP stapling is not implemented");
  if (ctx.full_scan_certs_on_sni_mismatch().value())
    return fail(f + ".full_scan_certs_on_sni_mismatch: not implemented");

  const auto& common = ctx.common_tls_context();
  const std::string c = f + ".common_tls_context";
  if (common.has_tls_certificate_provider_instance() ||
      common.has_tls_certificate_certificate_provider_instance()) {
    return fail(c + ".tls_certificate_provider_instance: not implemented");
  }
  if (common.has_custom_handshaker())
    return fail(c + ".custom_handshaker: not implemented");
  if (common.has_key_log())
    return fail(c + ".key_log: not implemented");
  if (common.has_validation_context_certificate_provider() ||
      common.has_validation_context_certificate_provider_instance()) {
    return fail(c + ".validation_context_certificate_provider: not implemented");
  }

  tls::ServerConfig sc;
  // TLS parameters: versions; cipher suites, curves and signature algorithms are not
  // configurable here (OpenSSL's defaults), so a context that names them fails.
  const auto& p = common.tls_params();
  if (p.cipher_suites_size() > 0)
    return fail(c + ".tls_params.cipher_suites: not implemented");
  if (p.ecdh_curves_size() > 0)
    return fail(c + ".tls_params.ecdh_curves: not implemented");
  if (p.signature_algorithms_size() > 0)
    return fail(c + ".tls_params.signature_algorithms: not implemented");
  sc.min_version = TlsVersion(p.tls_minimum_protocol_version(), 0x0303);
  sc.max_version = TlsVersion(p.tls_maximum_protocol_version(), 0x0304);
  if (sc.min_version > sc.max_version)
    return fail(c + ".tls_params: tls_minimum_protocol_version above the maximum");

  sc.alpn.assign(common.alpn_protocols().begin(), common.alpn_protocols().end());
  auto match = filterchain::FromEnvoy(fc.filter_chain_match());
  std::vector<std::string> names = match ? match->server_names : std::vector<std::string>{};

  // Certificates: inline, then SDS, in order.
  for (int i = 0; i < common.tls_certificates_size(); ++i) {
    const auto& tc = common.tls_certificates(i);
    const std::string cf = c + ".tls_certificates[" + std::to_string(i) + "]";
    for (auto [ds, name] : {std::pair{&tc.certificate_chain(), ".certificate_chain"},
                            std::pair{&tc.private_key(), ".private_key"}}) {
      if (auto w = InlineOnly(*ds, cf + name); !w.empty())
        return fail(w);
    }
    if (tc.has_private_key_provider() || tc.has_password())
      return fail(cf + ": private_key_provider and password are not implemented");
    sc.certificates.push_back(
        {cf, DataSourceBytes(tc.certificate_chain()), DataSourceBytes(tc.private_key()), names});
  }
  for (int i = 0; i < common.tls_certificate_sds_secret_configs_size(); ++i) {
    const auto& sds = common.tls_certificate_sds_secret_configs(i);
    const std::string cf = c + ".tls_certificate_sds_secret_configs[" + std::to_string(i) + "]";
    if (auto w = AdsOnly(sds, cf); !w.empty())
      return fail(w);
    const tls_v3::Secret* secret = secrets ? secrets(sds.name()) : nullptr;
    if (!secret)
      return fail(cf + ": secret " + sds.name() + " not received");
    if (!secret->has_tls_certificate())
      return fail(cf + ": secret " + sds.name() + " is not a tls_certificate");
    const auto& tc = secret->tls_certificate();
    if (tc.has_private_key_provider() || tc.has_password())
      return fail(cf + ": secret " + sds.name() +
                  ": private_key_provider and password are not implemented");
    sc.certificates.push_back({sds.name(), DataSourceBytes(tc.certificate_chain()),
                               DataSourceBytes(tc.private_key()), names});
  }
  if (sc.certificates.empty())
    return fail(c + ": no tls_certificates or tls_certificate_sds_secret_configs");

  // Client certificate validation (MUTUAL): the inline context, the SDS one, or the
  // combined one (the default context with the SDS one merged over it, as Envoy does).
  std::optional<tls_v3::CertificateValidationContext> validation;
  std::string vfield;
  auto from_sds = [&](const tls_v3::SdsSecretConfig& sds, const std::string& field) -> std::string {
    if (auto w = AdsOnly(sds, field); !w.empty())
      return w;
    const tls_v3::Secret* secret = secrets ? secrets(sds.name()) : nullptr;
    if (!secret)
      return field + ": secret " + sds.name() + " not received";
    if (!secret->has_validation_context())
      return field + ": secret " + sds.name() + " is not a validation_context";
    if (!validation)
      validation.emplace();
    validation->MergeFrom(secret->validation_context());
    return {};
  };
  switch (common.validation_context_type_case()) {
    case tls_v3::CommonTlsContext::kValidationContext:
      validation = common.validation_context();
      vfield = c + ".validation_context";
      break;
    case tls_v3::CommonTlsContext::kValidationContextSdsSecretConfig:
      vfield = c + ".validation_context_sds_secret_config";
      if (auto w = from_sds(common.validation_context_sds_secret_config(), vfield); !w.empty())
        return fail(w);
      break;
    case tls_v3::CommonTlsContext::kCombinedValidationContext: {
      const auto& cv = common.combined_validation_context();
      vfield = c + ".combined_validation_context";
      if (cv.has_validation_context_certificate_provider() ||
          cv.has_validation_context_certificate_provider_instance()) {
        return fail(vfield + ".validation_context_certificate_provider: not implemented");
      }
      validation = cv.default_validation_context();
      if (auto w = from_sds(cv.validation_context_sds_secret_config(),
                            vfield + ".validation_context_sds_secret_config");
          !w.empty()) {
        return fail(w);
      }
      break;
    }
    case tls_v3::CommonTlsContext::VALIDATION_CONTEXT_TYPE_NOT_SET:
      break;
    default:
      return fail(c + ": this validation context type is not implemented");
  }
  sc.require_client_certificate = ctx.require_client_certificate().value();
  if (validation) {
    if (auto w = UnhonouredValidation(*validation, vfield); !w.empty())
      return fail(w);
    sc.client_ca_pem = DataSourceBytes(validation->trusted_ca());
    if (auto w = CompileSanMatchers(*validation, vfield, &sc.client_san_matchers); !w.empty())
      return fail(w);
    if (auto w = CompileCertificatePins(*validation, vfield, &sc); !w.empty())
      return fail(w);
    if (!sc.require_client_certificate) {
      // Envoy asks for a certificate and checks one that comes (OPTIONAL_MUTUAL);
      // ServerContext either requires one or does not ask.
      return fail(vfield +
                  ": a validation context without require_client_certificate "
                  "(optional client certificates) is not implemented");
    }
    if (sc.client_ca_pem.empty())
      return fail(vfield + ".trusted_ca: empty, so no client certificate could be verified");
  } else if (sc.require_client_certificate) {
    return fail(f + ".require_client_certificate: set without a validation context");
  }
  auto made = tls::ServerContext::Create(sc);
  if (!made)
    return fail(f + ": " + made.error().message);
  return std::move(*made);
}

Result<void> CompileChain(const listener_v3::FilterChain& fc, FilterChain* out, ProxyConfig& cfg,
                          std::vector<std::string>* warnings, const std::string& where,
                          const SecretFinder& secrets) {
  out->name = fc.name();
  auto match = filterchain::FromEnvoy(fc.filter_chain_match());
  SLUICE_RETURN_IF_ERROR_CTX(match, where + ": filter_chain_match");
  out->match = std::move(*match);
  if (fc.has_transport_socket()) {
    // A plaintext transport socket, or TLS terminated with the chain's
    // DownstreamTlsContext. Anything else (istiod's upstream contexts, ALTS, ...), and a
    // TLS context that cannot be honoured or whose secret has not come yet (Envoy keeps
    // such a listener warming), fails the chain closed: its filters are not compiled
    // and no byte of it is served.
    const auto& ts = fc.transport_socket();
    const std::string& type = ts.typed_config().type_url();
    const bool raw =
        ts.name() == "envoy.transport_sockets.raw_buffer" || type.ends_with(".RawBuffer");
    if (!raw) {
      std::string why;
      if (ts.typed_config().Is<tls_v3::DownstreamTlsContext>() ||
          (type.empty() && ts.name() == "envoy.transport_sockets.tls")) {
        out->tls = CompileDownstreamTls(fc, secrets, &why);
      } else {
        why = "transport_socket " + (type.empty() ? ts.name() : type) + ": not served";
      }
      if (!out->tls) {
        out->fail_closed = "filter chain \"" + fc.name() + "\": " + why +
                           "; connections that select it are closed";
        warnings->push_back(where + ": " + out->fail_closed);
        out->is_http = false;
        return {};
      }
    }
  }
  bool found = false;
  for (const auto& f : fc.filters()) {
    if (IsIstioStats(f.name(), f.typed_config())) {
      SLUICE_RETURN_IF_ERROR(
          CompileIstioStats(f.typed_config(), false, out, where + ": filters[" + f.name() + "]"));
      continue;
    }
    if (f.name() == "envoy.filters.network.rbac" && !f.has_typed_config())
      return Fail(where + ": filters[" + f.name() + "]: rbac without typed_config");
    if (f.typed_config().Is<NetworkRbacProto>()) {
      auto proto = std::make_shared<NetworkRbacProto>();
      if (!f.typed_config().UnpackTo(proto.get()))
        return Fail(where + ": filters[" + f.name() + "]: not a network RBAC config");
      auto rf = CompileNetworkRbac(*proto, where + ": filters[" + f.name() + "]");
      SLUICE_RETURN_IF_ERROR(rf);
      out->network_rbac.push_back(NetworkRbac{f.name(), std::move(*rf), std::move(proto)});
      continue;
    }
    if (f.typed_config().Is<HCM>()) {
      HCM h;
      f.typed_config().UnpackTo(&h);
      out->is_http = true;
      found = true;
      out->access_log = h.access_log_size() > 0;
      out->http.strip_any_host_port = h.strip_any_host_port();
      out->http.use_remote_address = h.use_remote_address().value();
      out->http.xff_num_trusted_hops = h.xff_num_trusted_hops();
      if (h.common_http_protocol_options().has_idle_timeout()) {
        out->http.idle_timeout = ToMillis(h.common_http_protocol_options().idle_timeout());
      }
      if (h.common_http_protocol_options().has_max_stream_duration()) {
        out->http.max_stream_duration =
            ToMillis(h.common_http_protocol_options().max_stream_duration());
      }
      if (h.has_request_headers_timeout())
        out->http.request_headers_timeout = ToMillis(h.request_headers_timeout());
      if (h.has_request_timeout())
        out->http.request_timeout = ToMillis(h.request_timeout());
      if (h.has_stream_idle_timeout())
        out->http.stream_idle_timeout = ToMillis(h.stream_idle_timeout());
      out->http.upgrades = CompileUpgrades(h.upgrade_configs());
      switch (h.codec_type()) {
        case HCM::HTTP1:
          out->http.codec = HttpSettings::Codec::kHttp1;
          break;
        case HCM::HTTP2:
          out->http.codec = HttpSettings::Codec::kHttp2;
          break;
        case HCM::AUTO:
          break;
        default:
          return Fail(where + ": http_connection_manager: codec_type " +
                      HCM::CodecType_Name(h.codec_type()) + " is not served (AUTO, HTTP1, HTTP2)");
      }
      if (h.has_http2_protocol_options()) {
        const auto& o = h.http2_protocol_options();
        if (o.has_max_concurrent_streams())
          out->http.h2_max_concurrent_streams = o.max_concurrent_streams().value();
        if (o.has_initial_stream_window_size())
          out->http.h2_initial_stream_window = o.initial_stream_window_size().value();
        if (o.has_initial_connection_window_size())
          out->http.h2_initial_connection_window = o.initial_connection_window_size().value();
      }
      if (h.has_max_request_headers_kb())
        out->http.limits.max_head_bytes = h.max_request_headers_kb().value() * 1024;
      if (h.common_http_protocol_options().has_max_headers_count()) {
        out->http.limits.max_headers = std::min<std::size_t>(
            h.common_http_protocol_options().max_headers_count().value(), http::kMaxHeadersHard);
      }
      std::shared_ptr<RouteTable> table;
      if (h.has_rds()) {
        // The set's route tables are compiled before its listeners.
        out->http.route_config_name = h.rds().route_config_name();
        out->http.rds = true;
        table = RdsTable(cfg, out->http.route_config_name);
      } else if (h.has_route_config()) {
        auto t = CompileRouteConfig(h.route_config(), cfg);
        SLUICE_RETURN_IF_ERROR_CTX(t, where);
        table = *t;
        out->http.route_config_name = h.route_config().name();
      } else {
        return Fail(where + ": http_connection_manager needs rds or route_config");
      }
      // strip_any_host_port is applied at lookup (HttpSettings::StripPort), so the
      // listener shares the RDS table rather than a copy of it.
      out->http.routes = table;
      bool seen_fault = false;
      for (const auto& hf : h.http_filters()) {
        if (IsIstioStats(hf.name(), hf.typed_config())) {
          SLUICE_RETURN_IF_ERROR(CompileIstioStats(hf.typed_config(), hf.disabled(), out,
                                                   where + ": http_filters[" + hf.name() + "]"));
          continue;
        }
        if (hf.name() == kHttpRbacFilter && !hf.has_typed_config() && !hf.disabled())
          return Fail(where + ": http_filters[" + hf.name() + "]: rbac without typed_config");
        if (hf.typed_config().Is<HttpRbacProto>()) {
          const std::string fw = where + ": http_filters[" + hf.name() + "]";
          // disabled: runs only where a route enables it, and per-route RBAC is refused.
          if (hf.disabled())
            continue;
          if (seen_fault || out->http.cors) {
            return Fail(fw +
                        ": an rbac filter after the fault or CORS filter is not "
                        "supported (istiod puts it before them)");
          }
          HttpRbacProto rp;
          if (!hf.typed_config().UnpackTo(&rp))
            return Fail(fw + ": not an HTTP RBAC config");
          auto rf = CompileHttpRbac(rp, fw);
          SLUICE_RETURN_IF_ERROR(rf);
          out->http.rbac.push_back(HttpRbac{hf.name(), std::move(*rf)});
          continue;
        }
        if ((hf.name() == kCorsFilter || hf.typed_config().Is<CorsFilterProto>()) &&
            !hf.disabled()) {
          out->http.cors = true;
          out->http.cors_before_fault = !seen_fault;
        }
        if (hf.name() == kFaultFilter || hf.typed_config().Is<HTTPFault>()) {
          seen_fault = true;
          HTTPFault fault;
          if (hf.typed_config().UnpackTo(&fault)) {
            auto fp = CompileFault(fault, where + ": http_filters[" + hf.name() + "]");
            SLUICE_RETURN_IF_ERROR(fp);
            out->http.fault = *fp;
          }
        }
      }
    } else if (f.typed_config().Is<TcpProxyProto>()) {
      TcpProxyProto t;
      f.typed_config().UnpackTo(&t);
      out->is_http = false;
      found = true;
      out->access_log = t.access_log_size() > 0;
      out->tcp.stat_prefix = t.stat_prefix();
      if (t.has_weighted_clusters()) {
        for (const auto& c : t.weighted_clusters().clusters()) {
          WeightedCluster w;
          w.name = c.name();
          w.cluster = InternCluster(c.name());
          w.weight = c.weight();
          out->tcp.total_weight += w.weight;
          out->tcp.weighted.push_back(std::move(w));
        }
      } else {
        out->tcp.cluster_name = t.cluster();
        out->tcp.cluster = InternCluster(t.cluster());
      }
    }
  }
  if (!found)
    return Fail(where + ": no http_connection_manager or tcp_proxy filter");
  return {};
}

// filter_disabled of a listener filter: destination_port_range, or an or_match of them
// (what istiod sends); anything else is refused, since the filter would run where
// Envoy's would not.
Result<void> CompileDisabled(const listener_v3::ListenerFilterChainMatchPredicate& p,
                             Inspector* out, const std::string& where) {
  using P = listener_v3::ListenerFilterChainMatchPredicate;
  switch (p.rule_case()) {
    case P::kDestinationPortRange:
      out->disabled_ports.emplace_back(
          static_cast<uint32_t>(std::clamp<int64_t>(p.destination_port_range().start(), 0, 65536)),
          static_cast<uint32_t>(std::clamp<int64_t>(p.destination_port_range().end(), 0, 65536)));
      return {};
    case P::kOrMatch:
      for (const auto& r : p.or_match().rules())
        SLUICE_RETURN_IF_ERROR(CompileDisabled(r, out, where));
      return {};
    default:
      return Fail(where +
                  ": filter_disabled: only destination_port_range (and or_match of "
                  "them) is supported");
  }
}

// One Listener: the entries it is served at (its address and each additional address).
Result<std::vector<ListenerConfig>> CompileListener(const listener_v3::Listener& pl,
                                                    ProxyConfig& cfg,
                                                    std::vector<std::string>* warnings,
                                                    const SecretFinder& secrets) {
  ListenerConfig l;
  l.name = pl.name();
  l.resource = pl.name();
  std::string where = "listener " + l.name;
  if (!pl.address().has_socket_address()) {
    // An internal listener (HBONE's connect_originate) or a pipe: nothing Sluice binds.
    return Fail(where + ": no address.socket_address (internal listener); not served");
  }
  l.address = pl.address().socket_address().address();
  auto port = PortOf(pl.address().socket_address(), where + ": address");
  SLUICE_RETURN_IF_ERROR(port);
  l.port = *port;
  l.use_original_dst = pl.has_use_original_dst() && pl.use_original_dst().value();
  // Envoy adds the original_dst listener filter itself to a use_original_dst listener.
  l.restore_original_dst = l.use_original_dst;
  l.bind_to_port = !pl.has_bind_to_port() || pl.bind_to_port().value();
  if (pl.has_listener_filters_timeout())
    l.filters_timeout = ToMillis(pl.listener_filters_timeout());
  l.continue_on_filters_timeout = pl.continue_on_listener_filters_timeout();
  l.access_log = pl.access_log_size() > 0;
  for (const auto& lf : pl.listener_filters()) {
    const std::string fw = where + ": listener_filters[" + lf.name() + "]";
    Inspector* inspector = nullptr;
    if (lf.name() == "envoy.filters.listener.original_dst" ||
        lf.typed_config()
            .Is<envoy::extensions::filters::listener::original_dst::v3::OriginalDst>()) {
      l.restore_original_dst = true;  // restores the destination; no hand-over
    } else if (lf.name() == "envoy.filters.listener.tls_inspector" ||
               lf.typed_config()
                   .Is<envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector>()) {
      inspector = &l.tls_inspector;
    } else if (lf.name() == "envoy.filters.listener.http_inspector" ||
               lf.typed_config()
                   .Is<envoy::extensions::filters::listener::http_inspector::v3::HttpInspector>()) {
      inspector = &l.http_inspector;
    }
    if (inspector) {
      inspector->enabled = true;
      if (lf.has_filter_disabled())
        SLUICE_RETURN_IF_ERROR(CompileDisabled(lf.filter_disabled(), inspector, fw));
    }
  }
  for (int i = 0; i < pl.filter_chains_size(); ++i) {
    FilterChain fc;
    std::string cw = where + ": filter_chains[" + std::to_string(i) + "]";
    SLUICE_RETURN_IF_ERROR(CompileChain(pl.filter_chains(i), &fc, cfg, warnings, cw, secrets));
    l.matches.push_back(fc.match);
    l.chains.push_back(std::move(fc));
  }
  if (pl.has_default_filter_chain()) {
    FilterChain fc;
    SLUICE_RETURN_IF_ERROR(CompileChain(pl.default_filter_chain(), &fc, cfg, warnings,
                                        where + ": default_filter_chain", secrets));
    l.default_chain = std::move(fc);
  }
  if (pl.has_per_connection_buffer_limit_bytes()) {
    for (auto& fc : l.chains)
      fc.http.max_request_body = pl.per_connection_buffer_limit_bytes().value();
  }
  if (l.chains.empty() && !l.default_chain)
    return Fail(where + ": no filter chains");
  // Dual-stack listeners (istiod's 0.0.0.0_80 with an additional "::"): the same
  // listener at each further address, so binding and the use_original_dst hand-over
  // (which matches by address and family) treat every address alike.
  std::vector<ListenerConfig> out;
  for (int i = 0; i < pl.additional_addresses_size(); ++i) {
    const auto& aa = pl.additional_addresses(i).address();
    if (!aa.has_socket_address()) {
      return Fail(where + ": additional_addresses[" + std::to_string(i) +
                  "]: address.socket_address is required");
    }
    ListenerConfig extra = l;
    extra.address = aa.socket_address().address();
    auto extra_port =
        PortOf(aa.socket_address(), where + ": additional_addresses[" + std::to_string(i) + "]");
    SLUICE_RETURN_IF_ERROR(extra_port);
    extra.port = *extra_port;
    extra.name = l.name + "~" + extra.address;
    out.push_back(std::move(extra));
  }
  out.insert(out.begin(), std::move(l));
  return out;
}

// ---------------------------------------------------------------- whole configs and updates
//
// One set of steps for Compile (everything, from an empty config) and CompileUpdate (the
// resources a change touched, over a copy of the config before): each step redoes one
// resource and its bookkeeping (slot, warnings, refusal) in `cfg`; Finish lists the
// warnings and refusals of the whole config.

template <class T>
const T* Ptr(const T& t) {
  return &t;
}
template <class T>
const T* Ptr(const std::shared_ptr<const T>& t) {
  return t.get();
}
// A resource of the set by name: ResourceSet maps hold them by value, Snapshot maps by
// pointer. nullptr: not in the set.
template <class Map>
auto Find(const Map& m, const std::string& name) -> decltype(Ptr(m.begin()->second)) {
  auto it = m.find(name);
  return it == m.end() ? nullptr : Ptr(it->second);
}

void SetSlot(ProxyConfig& cfg, ClusterId id, std::shared_ptr<Cluster> c) {
  if (id >= cfg.cluster_slots.size()) {
    if (!c)
      return;
    cfg.cluster_slots.resize(id + 1);
  }
  auto& slot = cfg.cluster_slots[id];
  cfg.cluster_count += (c ? 1 : 0) - (slot ? 1 : 0);
  slot = std::move(c);
}

// The cluster `name` as the set has it (pc nullptr: gone).
void BuildCluster(ProxyConfig& cfg, const std::string& name, const cluster_v3::Cluster* pc,
                  const envoy::config::endpoint::v3::ClusterLoadAssignment* eds, DnsCache* dns) {
  cfg.cluster_warnings.erase(name);
  cfg.refused_clusters.erase(name);
  const ClusterId id = InternCluster(name);
  SetSlot(cfg, id, nullptr);
  if (!pc)
    return;
  // Envoy's per-resource acceptance: a cluster that cannot be built is left out and
  // named; the others are served. What Sluice must refuse or may skip is
  // config::Classify*'s one table (filters.h), the same the xDS client applies before a
  // resource gets here: a file given to sluice-proxy gets the same answers.
  if (auto v = config::ClassifyCluster(*pc); v.use == config::Use::kSkipped) {
    cfg.cluster_warnings[name].push_back("cluster " + name + ": skipped: " + v.reason);
    return;
  }
  ++cfg.built_clusters;
  std::vector<std::string> warnings;
  auto c = CompileCluster(*pc, eds, &warnings, dns);
  if (!warnings.empty())
    cfg.cluster_warnings[name] = std::move(warnings);
  if (!c) {
    cfg.refused_clusters[name] = c.error().message;
    return;
  }
  SetSlot(cfg, id, std::move(*c));
}

// The route table `name` (rc nullptr: gone). A table that does not compile fails the
// whole config.
Result<void> BuildRoute(ProxyConfig& cfg, const std::string& name,
                        const route_v3::RouteConfiguration* rc) {
  if (!rc) {
    cfg.route_tables.erase(name);
    return {};
  }
  ++cfg.built_routes;
  auto t = CompileRouteConfig(*rc, cfg);
  SLUICE_RETURN_IF_ERROR(t);
  cfg.route_tables.insert_or_assign(name, std::move(*t));
  return {};
}

// The entries of listener `name` (pl nullptr: gone), appended to `out`.
void BuildListener(ProxyConfig& cfg, const std::string& name, const listener_v3::Listener* pl,
                   std::vector<ListenerConfig>* out, const SecretFinder& secrets) {
  cfg.listener_warnings.erase(name);
  cfg.refused_listeners.erase(name);
  if (!pl)
    return;
  auto v = config::ClassifyListener(*pl);
  if (v.use == config::Use::kSkipped) {
    cfg.listener_warnings[name].push_back("listener " + name + ": skipped: " + v.reason);
    return;
  }
  if (v.use == config::Use::kRefused) {
    cfg.refused_listeners[name] = v.reason;
    return;
  }
  ++cfg.built_listeners;
  std::vector<std::string> warnings;
  auto ls = CompileListener(*pl, cfg, &warnings, secrets);
  if (!warnings.empty())
    cfg.listener_warnings[name] = std::move(warnings);
  if (!ls) {
    cfg.refused_listeners[name] = ls.error().message;
    return;
  }
  for (auto& l : *ls)
    out->push_back(std::move(l));
}

void Finish(ProxyConfig& cfg) {
  cfg.warnings.clear();
  cfg.refused.clear();
  for (const auto& [name, w] : cfg.cluster_warnings)
    cfg.warnings.insert(cfg.warnings.end(), w.begin(), w.end());
  for (const auto& [name, w] : cfg.listener_warnings)
    cfg.warnings.insert(cfg.warnings.end(), w.begin(), w.end());
  for (const auto& [name, why] : cfg.refused_clusters)
    cfg.refused.push_back({"cluster", name, why});
  for (const auto& [name, why] : cfg.refused_listeners)
    cfg.refused.push_back({"listener", name, why});
}

// The set's secrets by name (nullptr: not received).
template <class Set>
SecretFinder SecretsOf(const Set& rs) {
  return [&rs](const std::string& name) { return Find(rs.secrets, name); };
}

template <class Set>
Result<std::shared_ptr<const ProxyConfig>> CompileAll(const Set& rs, DnsCache* dns) {
  auto cfg = std::make_shared<ProxyConfig>();
  for (const auto& [name, pc] : rs.clusters)
    BuildCluster(*cfg, name, Ptr(pc), Find(rs.endpoints, name), dns);
  for (const auto& [name, rc] : rs.routes)
    SLUICE_RETURN_IF_ERROR(BuildRoute(*cfg, name, Ptr(rc)));
  for (const auto& [name, pl] : rs.listeners)
    BuildListener(*cfg, name, Ptr(pl), &cfg->listeners, SecretsOf(rs));
  Finish(*cfg);
  return std::shared_ptr<const ProxyConfig>(std::move(cfg));
}

void Insert(std::set<std::string>* s, const std::vector<std::string>& names) {
  s->insert(names.begin(), names.end());
}

}  // namespace

Result<std::shared_ptr<const ProxyConfig>> Compile(const xds::ResourceSet& rs, DnsCache* dns) {
  return CompileAll(rs, dns);
}

Result<std::shared_ptr<const ProxyConfig>> Compile(const config::Snapshot& s, DnsCache* dns) {
  return CompileAll(s, dns);
}

std::vector<std::string> DnsClusters(const ProxyConfig& cfg) {
  std::vector<std::string> out;
  for (const auto& c : cfg.cluster_slots) {
    if (c && c->dns)
      out.push_back(c->name);
  }
  return out;
}

Result<std::shared_ptr<const ProxyConfig>> CompileUpdate(
    const ProxyConfig& prev, const config::Snapshot& next, const config::Diff& diff, DnsCache* dns,
    const std::vector<std::string>& dns_changed) {
  // A copy of the config before: pointers to its clusters and route tables (shared, not
  // copied), its listeners (copied), its bookkeeping.
  auto cfg = std::make_shared<ProxyConfig>(prev);
  cfg->built_clusters = cfg->built_routes = cfg->built_listeners = cfg->rebound_listeners = 0;

  // Clusters: a cluster is compiled with its ClusterLoadAssignment, so a change to either
  // rebuilds it.
  std::set<std::string> clusters;
  for (const config::TypeDiff* d : {&diff.clusters, &diff.endpoints}) {
    Insert(&clusters, d->added);
    Insert(&clusters, d->changed);
    Insert(&clusters, d->removed);
  }
  Insert(&clusters, dns_changed);
  std::set<std::string> gone;  // served before, not now: what mirrors to it fails
  for (const auto& name : clusters) {
    const bool had = prev.FindCluster(name) != nullptr;
    BuildCluster(*cfg, name, Find(next.clusters, name), Find(next.endpoints, name), dns);
    if (had && !cfg->FindCluster(name))
      gone.insert(name);
  }

  // Route tables: the changed ones, and those that mirror to a cluster that went away
  // (Compile refuses them). Routes name clusters by id, so a rebuilt cluster needs none.
  std::set<std::string> routes;
  Insert(&routes, diff.routes.added);
  Insert(&routes, diff.routes.changed);
  Insert(&routes, diff.routes.removed);
  auto mirrors_gone = [&](const RouteTable& t) {
    for (const auto& m : t.mirror_clusters) {
      if (gone.contains(m))
        return true;
    }
    return false;
  };
  if (!gone.empty()) {
    for (const auto& [name, t] : prev.route_tables) {
      if (mirrors_gone(*t))
        routes.insert(name);
    }
  }
  for (const auto& name : routes)
    SLUICE_RETURN_IF_ERROR(BuildRoute(*cfg, name, Find(next.routes, name)));

  // Listeners: the changed ones (and those whose own route_config mirrors to a cluster
  // that went away) are compiled; the others keep their entries, re-pointed at the route
  // tables now in force.
  std::set<std::string> listeners;
  Insert(&listeners, diff.listeners.added);
  Insert(&listeners, diff.listeners.changed);
  Insert(&listeners, diff.listeners.removed);
  // A secret that came, changed or went rebuilds the listeners whose TLS contexts name
  // it (a chain waiting for its secret is served once it comes). Secrets change rarely;
  // the listeners are looked through only then.
  if (!diff.secrets.empty()) {
    std::set<std::string> changed;
    for (const auto* names : {&diff.secrets.added, &diff.secrets.changed, &diff.secrets.removed})
      Insert(&changed, *names);
    for (const auto& [name, pl] : next.listeners) {
      for (const auto& sds : config::SdsNames(*pl)) {
        if (changed.contains(sds)) {
          listeners.insert(name);
          break;
        }
      }
    }
  }
  if (!gone.empty()) {
    for (const auto& l : prev.listeners) {
      auto inline_gone = [&](const FilterChain& c) {
        return c.is_http && !c.http.rds && c.http.routes && mirrors_gone(*c.http.routes);
      };
      bool hit = l.default_chain && inline_gone(*l.default_chain);
      for (const auto& c : l.chains)
        hit = hit || inline_gone(c);
      if (hit)
        listeners.insert(l.resource);
    }
  }
  std::set<const ListenerConfig*> compiled;
  if (!listeners.empty()) {
    // Listeners in the set's order, as Compile lists them; the entries of one listener
    // are contiguous.
    std::vector<ListenerConfig> out;
    out.reserve(prev.listeners.size());
    std::map<std::string, std::pair<std::size_t, std::size_t>> kept;  // resource → range
    for (std::size_t i = 0; i < cfg->listeners.size(); ++i) {
      auto [it, fresh] = kept.try_emplace(cfg->listeners[i].resource, i, i + 1);
      if (!fresh)
        it->second.second = i + 1;
    }
    for (const auto& name : listeners) {
      if (!next.listeners.contains(name))
        BuildListener(*cfg, name, nullptr, &out, SecretsOf(next));
    }
    std::vector<std::size_t> fresh_ranges;  // [begin, end) pairs into out
    for (const auto& [name, pl] : next.listeners) {
      if (listeners.contains(name)) {
        fresh_ranges.push_back(out.size());
        BuildListener(*cfg, name, pl.get(), &out, SecretsOf(next));
        fresh_ranges.push_back(out.size());
      } else if (auto it = kept.find(name); it != kept.end()) {
        for (std::size_t i = it->second.first; i < it->second.second; ++i)
          out.push_back(std::move(cfg->listeners[i]));
      }
    }
    cfg->listeners = std::move(out);
    for (std::size_t r = 0; r < fresh_ranges.size(); r += 2) {
      for (std::size_t i = fresh_ranges[r]; i < fresh_ranges[r + 1]; ++i)
        compiled.insert(&cfg->listeners[i]);
    }
  }
  // A listener of RDS whose table was rebuilt (or went away, or came) points at the one
  // in force now.
  if (!routes.empty()) {
    for (auto& l : cfg->listeners) {
      if (compiled.contains(&l))
        continue;
      bool rebound = false;
      auto rebind = [&](FilterChain& c) {
        if (!c.is_http || !c.http.rds || !routes.contains(c.http.route_config_name))
          return;
        auto table = RdsTable(*cfg, c.http.route_config_name);
        if (table != c.http.routes) {
          c.http.routes = std::move(table);
          rebound = true;
        }
      };
      for (auto& c : l.chains)
        rebind(c);
      if (l.default_chain)
        rebind(*l.default_chain);
      cfg->rebound_listeners += rebound ? 1 : 0;
    }
  }
  Finish(*cfg);
  return std::shared_ptr<const ProxyConfig>(std::move(cfg));
}

}  // namespace sluice::proxy
