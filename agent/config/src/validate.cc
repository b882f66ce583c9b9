#include "sluice/config/validate.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <re2/re2.h>

#include <set>

#include "envoy/extensions/filters/http/fault/v3/fault.pb.h"
#include "envoy/extensions/filters/http/router/v3/router.pb.h"
#include "envoy/extensions/filters/listener/http_inspector/v3/http_inspector.pb.h"
#include "envoy/extensions/filters/listener/original_dst/v3/original_dst.pb.h"
#include "envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.pb.h"
#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb.h"
#include "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.pb.h"
#include "envoy/extensions/transport_sockets/tls/v3/tls.pb.h"

namespace sluice::config {
namespace {

using envoy::config::cluster::v3::Cluster;
using envoy::config::endpoint::v3::ClusterLoadAssignment;
using envoy::config::listener::v3::Listener;
using envoy::config::route::v3::RouteConfiguration;
using HttpConnectionManager =
    envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
using TcpProxy = envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
using Secret = envoy::extensions::transport_sockets::tls::v3::Secret;
using DownstreamTlsContext = envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;

// Field errors are collected relative to the resource, then prefixed with its kind and
// name by the public entry points.
using FieldResult = Result<void>;

std::unexpected<Error> Field(std::string path, std::string_view problem) {
  return Fail(fmt::format("{}: {}", path, problem));
}

std::unexpected<Error> Named(std::string_view kind, std::string_view name, const Error& e) {
  if (name.empty())
    return Fail(fmt::format("{} (unnamed): {}", kind, e.message));
  return Fail(fmt::format("{} \"{}\": {}", kind, name, e.message));
}

bool IsIp(const std::string& s) {
  in6_addr a6;
  in_addr a4;
  return inet_pton(AF_INET, s.c_str(), &a4) == 1 || inet_pton(AF_INET6, s.c_str(), &a6) == 1;
}

bool Negative(const google::protobuf::Duration& d) {
  return d.seconds() < 0 || d.nanos() < 0;
}

template <class T>
bool Is(const google::protobuf::Any& any) {
  return any.Is<T>();
}

FieldResult CheckRegex(const std::string& path, const std::string& regex) {
  RE2 re(regex, RE2::Quiet);
  if (!re.ok())
    return Field(path, fmt::format("invalid regex \"{}\": {}", regex, re.error()));
  return {};
}

FieldResult CheckSocketAddress(const std::string& path,
                               const envoy::config::core::v3::Address& addr, bool require_ip,
                               bool allow_port_zero) {
  if (!addr.has_socket_address())
    return Field(path + ".socket_address", "required");
  const auto& sa = addr.socket_address();
  if (sa.address().empty())
    return Field(path + ".socket_address.address", "must not be empty");
  if (require_ip && !IsIp(sa.address())) {
    return Field(path + ".socket_address.address",
                 fmt::format("\"{}\" is not an IP address", sa.address()));
  }
  if (sa.port_specifier_case() == envoy::config::core::v3::SocketAddress::kNamedPort) {
    return Field(path + ".socket_address.named_port", "named ports are not supported");
  }
  if (sa.port_value() > 65535) {
    return Field(path + ".socket_address.port_value",
                 fmt::format("{} is not a port (0-65535)", sa.port_value()));
  }
  if (!allow_port_zero && sa.port_value() == 0) {
    return Field(path + ".socket_address.port_value", "must not be 0");
  }
  return {};
}

FieldResult CheckLocalities(const std::string& prefix, const ClusterLoadAssignment& cla,
                            bool require_ip) {
  for (int i = 0; i < cla.endpoints_size(); ++i) {
    const auto& loc = cla.endpoints(i);
    std::string lp = fmt::format("{}endpoints[{}]", prefix, i);
    if (loc.has_load_balancing_weight() && loc.load_balancing_weight().value() < 1) {
      return Field(lp + ".load_balancing_weight", "must be at least 1");
    }
    for (int j = 0; j < loc.lb_endpoints_size(); ++j) {
      const auto& lbe = loc.lb_endpoints(j);
      std::string ep = fmt::format("{}.lb_endpoints[{}]", lp, j);
      if (!lbe.has_endpoint())
        return Field(ep + ".endpoint", "required");
      if (!lbe.endpoint().has_address())
        return Field(ep + ".endpoint.address", "required");
      if (auto ok = CheckSocketAddress(ep + ".endpoint.address", lbe.endpoint().address(),
                                       require_ip, false);
          !ok) {
        return ok;
      }
      if (lbe.has_load_balancing_weight() && lbe.load_balancing_weight().value() < 1) {
        return Field(ep + ".load_balancing_weight", "must be at least 1");
      }
    }
  }
  if (cla.has_policy() && cla.policy().has_overprovisioning_factor() &&
      cla.policy().overprovisioning_factor().value() == 0) {
    return Field(prefix + "policy.overprovisioning_factor", "must be greater than 0");
  }
  return {};
}

FieldResult CheckClusterFields(const Cluster& c) {
  if (c.name().empty())
    return Field("name", "must not be empty");
  if (c.has_connect_timeout() &&
      (Negative(c.connect_timeout()) ||
       (c.connect_timeout().seconds() == 0 && c.connect_timeout().nanos() == 0))) {
    return Field("connect_timeout", "must be greater than 0");
  }
  if (c.has_cluster_type()) {
    return Field("cluster_type", fmt::format("custom cluster type \"{}\" is not supported",
                                             c.cluster_type().name()));
  }
  switch (c.type()) {
    case Cluster::STATIC:
    case Cluster::STRICT_DNS:
    case Cluster::LOGICAL_DNS:
    case Cluster::EDS:
    case Cluster::ORIGINAL_DST:
      break;
    default:
      return Field("type", fmt::format("unknown discovery type {}", static_cast<int>(c.type())));
  }
  const std::string policy = Cluster::LbPolicy_Name(c.lb_policy());
  switch (c.lb_policy()) {
    case Cluster::ROUND_ROBIN:
    case Cluster::LEAST_REQUEST:
    case Cluster::RANDOM:
    case Cluster::RING_HASH:
    case Cluster::MAGLEV:
      if (c.type() == Cluster::ORIGINAL_DST) {
        return Field("lb_policy", fmt::format("an ORIGINAL_DST cluster needs CLUSTER_PROVIDED, "
                                              "not {}",
                                              policy));
      }
      break;
    case Cluster::CLUSTER_PROVIDED:
      if (c.type() != Cluster::ORIGINAL_DST) {
        return Field("lb_policy", fmt::format("CLUSTER_PROVIDED is only valid for an "
                                              "ORIGINAL_DST cluster, not {}",
                                              Cluster::DiscoveryType_Name(c.type())));
      }
      break;
    case Cluster::LOAD_BALANCING_POLICY_CONFIG:
      if (c.load_balancing_policy().policies_size() == 0) {
        return Field("load_balancing_policy.policies",
                     "must not be empty when lb_policy is LOAD_BALANCING_POLICY_CONFIG");
      }
      break;
    default:
      return Field("lb_policy",
                   fmt::format("unsupported policy {}", static_cast<int>(c.lb_policy())));
  }
  if (c.has_ring_hash_lb_config()) {
    const auto& rh = c.ring_hash_lb_config();
    if (rh.has_minimum_ring_size() && rh.has_maximum_ring_size() &&
        rh.minimum_ring_size().value() > rh.maximum_ring_size().value()) {
      return Field("ring_hash_lb_config.minimum_ring_size", "is larger than maximum_ring_size");
    }
  }
  if (c.type() == Cluster::EDS) {
    if (!c.eds_cluster_config().has_eds_config()) {
      return Field("eds_cluster_config.eds_config", "required for an EDS cluster");
    }
    const auto& src = c.eds_cluster_config().eds_config();
    if (!src.has_ads() && !src.has_self()) {
      return Field("eds_cluster_config.eds_config", "only ADS is supported");
    }
  } else if (c.type() != Cluster::ORIGINAL_DST) {
    bool static_ips = c.type() == Cluster::STATIC;
    if (auto ok = CheckLocalities("load_assignment.", c.load_assignment(), static_ips); !ok) {
      return ok;
    }
    if (c.type() == Cluster::LOGICAL_DNS) {
      int n = 0;
      for (const auto& loc : c.load_assignment().endpoints())
        n += loc.lb_endpoints_size();
      if (n != 1) {
        return Field("load_assignment", fmt::format("a LOGICAL_DNS cluster needs exactly one "
                                                    "endpoint, has {}",
                                                    n));
      }
    }
  }
  return {};
}

FieldResult CheckRouteConfigFields(const RouteConfiguration& r, const std::string& prefix);

FieldResult CheckFaultConfig(const std::string& path, const google::protobuf::Any& any) {
  envoy::extensions::filters::http::fault::v3::HTTPFault fault;
  if (!any.UnpackTo(&fault))
    return Field(path, "cannot decode HTTPFault");
  if (fault.has_delay() && fault.delay().has_fixed_delay() &&
      Negative(fault.delay().fixed_delay())) {
    return Field(path + ".delay.fixed_delay", "must not be negative");
  }
  if (fault.has_abort() && fault.abort().has_http_status()) {
    uint32_t s = fault.abort().http_status();
    if (s < 200 || s >= 600) {
      return Field(path + ".abort.http_status", fmt::format("{} is not in [200, 600)", s));
    }
  }
  return {};
}

FieldResult CheckHcm(const std::string& path, const google::protobuf::Any& any) {
  HttpConnectionManager hcm;
  if (!any.UnpackTo(&hcm))
    return Field(path, "cannot decode HttpConnectionManager");
  if (hcm.stat_prefix().empty())
    return Field(path + ".stat_prefix", "must not be empty");
  switch (hcm.route_specifier_case()) {
    case HttpConnectionManager::kRds:
      if (hcm.rds().route_config_name().empty()) {
        return Field(path + ".rds.route_config_name", "must not be empty");
      }
      if (hcm.rds().has_config_source() && !hcm.rds().config_source().has_ads()) {
        return Field(path + ".rds.config_source", "only ADS is supported");
      }
      break;
    case HttpConnectionManager::kRouteConfig:
      if (auto ok = CheckRouteConfigFields(hcm.route_config(), path + ".route_config."); !ok) {
        return ok;
      }
      break;
    case HttpConnectionManager::kScopedRoutes:
      return Field(path + ".scoped_routes", "scoped routes are not supported");
    default:
      return Field(path, "rds or route_config required");
  }
  for (int i = 0; i < hcm.http_filters_size(); ++i) {
    const auto& f = hcm.http_filters(i);
    std::string fp = fmt::format("{}.http_filters[{}]", path, i);
    if (f.name().empty())
      return Field(fp + ".name", "must not be empty");
    if (f.has_config_discovery())
      continue;  // ECDS: filters.h refuses it, saying why
    if (!f.has_typed_config())
      continue;  // Envoy picks the factory by name
    bool router = Is<envoy::extensions::filters::http::router::v3::Router>(f.typed_config());
    if (router && i != hcm.http_filters_size() - 1) {
      return Field(fp, "the router filter must be the last HTTP filter");
    }
    if (Is<envoy::extensions::filters::http::fault::v3::HTTPFault>(f.typed_config())) {
      if (auto ok = CheckFaultConfig(fp + ".typed_config", f.typed_config()); !ok)
        return ok;
    }
  }
  return {};
}

FieldResult CheckTcpProxy(const std::string& path, const google::protobuf::Any& any) {
  TcpProxy tp;
  if (!any.UnpackTo(&tp))
    return Field(path, "cannot decode TcpProxy");
  if (tp.stat_prefix().empty())
    return Field(path + ".stat_prefix", "must not be empty");
  switch (tp.cluster_specifier_case()) {
    case TcpProxy::kCluster:
      if (tp.cluster().empty())
        return Field(path + ".cluster", "must not be empty");
      break;
    case TcpProxy::kWeightedClusters: {
      const auto& wc = tp.weighted_clusters();
      if (wc.clusters_size() == 0)
        return Field(path + ".weighted_clusters.clusters", "must not be empty");
      for (int i = 0; i < wc.clusters_size(); ++i) {
        std::string cp = fmt::format("{}.weighted_clusters.clusters[{}]", path, i);
        if (wc.clusters(i).name().empty())
          return Field(cp + ".name", "must not be empty");
        if (wc.clusters(i).weight() < 1)
          return Field(cp + ".weight", "must be at least 1");
      }
      break;
    }
    default:
      return Field(path, "cluster or weighted_clusters required");
  }
  return {};
}

FieldResult CheckFilterChain(const std::string& path,
                             const envoy::config::listener::v3::FilterChain& fc) {
  if (fc.filters_size() == 0)
    return Field(path + ".filters", "must not be empty");
  const auto& m = fc.filter_chain_match();
  if (m.has_destination_port() && m.destination_port().value() > 65535) {
    return Field(path + ".filter_chain_match.destination_port",
                 fmt::format("{} is not a port", m.destination_port().value()));
  }
  for (int j = 0; j < fc.filters_size(); ++j) {
    const auto& f = fc.filters(j);
    std::string fp = fmt::format("{}.filters[{}]", path, j);
    if (f.name().empty())
      return Field(fp + ".name", "must not be empty");
    if (!f.has_typed_config() && !f.has_config_discovery())  // ECDS: see filters.h
      return Field(fp + ".typed_config", "required");
    if (Is<HttpConnectionManager>(f.typed_config())) {
      if (auto ok = CheckHcm(fp + ".typed_config", f.typed_config()); !ok)
        return ok;
    } else if (Is<TcpProxy>(f.typed_config())) {
      if (auto ok = CheckTcpProxy(fp + ".typed_config", f.typed_config()); !ok)
        return ok;
    }
  }
  return {};
}

FieldResult CheckListenerFields(const Listener& l) {
  if (l.name().empty())
    return Field("name", "must not be empty");
  if (!l.has_internal_listener()) {
    if (!l.has_address())
      return Field("address", "required");
    if (auto ok = CheckSocketAddress("address", l.address(), false, true); !ok)
      return ok;
  }
  if (l.filter_chains_size() == 0 && !l.has_default_filter_chain()) {
    return Field("filter_chains", "at least one filter chain (or default_filter_chain) required");
  }
  std::map<std::string, int> matches;  // canonical filter_chain_match -> first index
  for (int i = 0; i < l.filter_chains_size(); ++i) {
    std::string path = fmt::format("filter_chains[{}]", i);
    if (auto ok = CheckFilterChain(path, l.filter_chains(i)); !ok)
      return ok;
    auto [it, fresh] = matches.emplace(CanonicalBytes(l.filter_chains(i).filter_chain_match()), i);
    if (!fresh) {
      return Field(path + ".filter_chain_match",
                   fmt::format("same match as filter_chains[{}]", it->second));
    }
  }
  if (l.has_default_filter_chain()) {
    if (auto ok = CheckFilterChain("default_filter_chain", l.default_filter_chain()); !ok) {
      return ok;
    }
  }
  for (int i = 0; i < l.listener_filters_size(); ++i) {
    const auto& lf = l.listener_filters(i);
    std::string path = fmt::format("listener_filters[{}]", i);
    if (lf.name().empty())
      return Field(path + ".name", "must not be empty");
  }
  return {};
}

FieldResult CheckDomain(const std::string& path, const std::string& d) {
  if (d.empty())
    return Field(path, "must not be empty");
  if (d == "*")
    return {};
  auto star = d.find('*');
  if (star != std::string::npos && star != 0 && star != d.size() - 1) {
    return Field(path, fmt::format("\"{}\": a wildcard must be a prefix or suffix", d));
  }
  if (d.find('*', star + 1) != std::string::npos && star != std::string::npos) {
    return Field(path, fmt::format("\"{}\": at most one wildcard", d));
  }
  return {};
}

FieldResult CheckRoute(const std::string& rp, const envoy::config::route::v3::Route& route) {
  using envoy::config::route::v3::Route;
  using envoy::config::route::v3::RouteMatch;
  const auto& m = route.match();
  switch (m.path_specifier_case()) {
    case RouteMatch::kPrefix:
    case RouteMatch::kPath:
    case RouteMatch::kPathSeparatedPrefix:
    case RouteMatch::kConnectMatcher:
      break;
    case RouteMatch::kSafeRegex:
      if (auto ok = CheckRegex(rp + ".match.safe_regex.regex", m.safe_regex().regex()); !ok) {
        return ok;
      }
      break;
    default:
      return Field(rp + ".match", "prefix, path or safe_regex required");
  }
  for (int h = 0; h < m.headers_size(); ++h) {
    std::string hp = fmt::format("{}.match.headers[{}]", rp, h);
    if (m.headers(h).name().empty())
      return Field(hp + ".name", "must not be empty");
    const auto& sm = m.headers(h).string_match();
    if (m.headers(h).has_string_match() && sm.has_safe_regex()) {
      if (auto ok = CheckRegex(hp + ".string_match.safe_regex.regex", sm.safe_regex().regex());
          !ok) {
        return ok;
      }
    }
  }
  switch (route.action_case()) {
    case Route::kRoute: {
      const auto& ra = route.route();
      std::string ap = rp + ".route";
      switch (ra.cluster_specifier_case()) {
        case envoy::config::route::v3::RouteAction::kCluster:
          if (ra.cluster().empty())
            return Field(ap + ".cluster", "must not be empty");
          break;
        case envoy::config::route::v3::RouteAction::kClusterHeader:
          if (ra.cluster_header().empty())
            return Field(ap + ".cluster_header", "must not be empty");
          break;
        case envoy::config::route::v3::RouteAction::kWeightedClusters: {
          const auto& wc = ra.weighted_clusters();
          if (wc.clusters_size() == 0) {
            return Field(ap + ".weighted_clusters.clusters", "must not be empty");
          }
          uint64_t sum = 0;
          for (int k = 0; k < wc.clusters_size(); ++k) {
            if (wc.clusters(k).name().empty()) {
              return Field(fmt::format("{}.weighted_clusters.clusters[{}].name", ap, k),
                           "must not be empty");
            }
            sum += wc.clusters(k).weight().value();
          }
          if (sum == 0)
            return Field(ap + ".weighted_clusters", "the weights add up to 0");
          break;
        }
        default:
          return Field(ap, "cluster, weighted_clusters or cluster_header required");
      }
      if (ra.has_timeout() && Negative(ra.timeout())) {
        return Field(ap + ".timeout", "must not be negative");
      }
      if (ra.has_retry_policy() && ra.retry_policy().has_per_try_timeout() &&
          Negative(ra.retry_policy().per_try_timeout())) {
        return Field(ap + ".retry_policy.per_try_timeout", "must not be negative");
      }
      for (int k = 0; k < ra.request_mirror_policies_size(); ++k) {
        const auto& mp = ra.request_mirror_policies(k);
        std::string mpp = fmt::format("{}.request_mirror_policies[{}]", ap, k);
        if (mp.cluster().empty() && mp.cluster_header().empty()) {
          return Field(mpp + ".cluster", "must not be empty");
        }
      }
      break;
    }
    case Route::kRedirect:
      break;
    case Route::kDirectResponse: {
      uint32_t s = route.direct_response().status();
      if (s < 200 || s >= 600) {
        return Field(rp + ".direct_response.status", fmt::format("{} is not in [200, 600)", s));
      }
      break;
    }
    default:
      return Field(rp, "route, redirect or direct_response required");
  }
  for (const auto& [filter, any] : route.typed_per_filter_config()) {
    if (Is<envoy::extensions::filters::http::fault::v3::HTTPFault>(any)) {
      if (auto ok =
              CheckFaultConfig(fmt::format("{}.typed_per_filter_config[{}]", rp, filter), any);
          !ok) {
        return ok;
      }
    }
  }
  return {};
}

FieldResult CheckRouteConfigFields(const RouteConfiguration& r, const std::string& prefix) {
  std::map<std::string, std::string> domain_owner;
  for (int i = 0; i < r.virtual_hosts_size(); ++i) {
    const auto& vh = r.virtual_hosts(i);
    std::string vp = fmt::format("{}virtual_hosts[{}]", prefix, i);
    if (vh.name().empty())
      return Field(vp + ".name", "must not be empty");
    if (vh.domains_size() == 0)
      return Field(vp + ".domains", "must not be empty");
    for (int d = 0; d < vh.domains_size(); ++d) {
      std::string dp = fmt::format("{}.domains[{}]", vp, d);
      if (auto ok = CheckDomain(dp, vh.domains(d)); !ok)
        return ok;
      auto [it, fresh] = domain_owner.emplace(vh.domains(d), vh.name());
      if (!fresh) {
        return Field(dp, fmt::format("\"{}\" is already a domain of virtual host \"{}\"",
                                     vh.domains(d), it->second));
      }
    }
    for (int j = 0; j < vh.routes_size(); ++j) {
      if (auto ok = CheckRoute(fmt::format("{}.routes[{}]", vp, j), vh.routes(j)); !ok)
        return ok;
    }
  }
  return {};
}

// A field check's outcome as an Acceptance: served, or refused as invalid.
Acceptance Refusal(const FieldResult& r) {
  if (r)
    return Acceptance{};
  return Acceptance{Use::kRefused, r.error().message, std::string(kInvalid), {}};
}

// `base` (may be null) holds resources already validated: the same object under the
// same key is not checked again.
template <class M, class T, class F>
Result<void> CheckMap(std::string_view kind, const M& m, const M* base, F name_of,
                      Result<void> (*check)(const T&)) {
  for (const auto& [key, res] : m) {
    if (!res)
      return Fail(fmt::format("{} \"{}\": missing resource", kind, key));
    if (base) {
      auto it = base->find(key);
      if (it != base->end() && it->second == res)
        continue;
    }
    if (name_of(*res) != key) {
      return Fail(fmt::format("{} \"{}\": stored under the name \"{}\"", kind, name_of(*res), key));
    }
    if (auto ok = check(*res); !ok)
      return ok;
  }
  return {};
}

}  // namespace

const std::string& EdsServiceName(const Cluster& c) {
  static const std::string kNone;
  if (c.type() != Cluster::EDS)
    return kNone;
  if (!c.eds_cluster_config().service_name().empty())
    return c.eds_cluster_config().service_name();
  return c.name();
}

std::vector<std::string> RdsNames(const Listener& l) {
  std::vector<std::string> out;
  auto scan = [&out](const envoy::config::listener::v3::FilterChain& fc) {
    for (const auto& f : fc.filters()) {
      if (!f.has_typed_config() || !f.typed_config().Is<HttpConnectionManager>())
        continue;
      HttpConnectionManager hcm;
      if (f.typed_config().UnpackTo(&hcm) && hcm.has_rds() &&
          !hcm.rds().route_config_name().empty()) {
        out.push_back(hcm.rds().route_config_name());
      }
    }
  };
  for (const auto& fc : l.filter_chains())
    scan(fc);
  if (l.has_default_filter_chain())
    scan(l.default_filter_chain());
  return out;
}

std::vector<std::string> SdsNames(const Listener& l) {
  std::vector<std::string> out;
  auto add = [&out](const auto& sds) {
    if (!sds.name().empty() && std::ranges::find(out, sds.name()) == out.end())
      out.push_back(sds.name());
  };
  auto scan = [&](const envoy::config::listener::v3::FilterChain& fc) {
    if (!fc.has_transport_socket() ||
        !fc.transport_socket().typed_config().Is<DownstreamTlsContext>())
      return;
    DownstreamTlsContext ctx;
    if (!fc.transport_socket().typed_config().UnpackTo(&ctx))
      return;
    const auto& common = ctx.common_tls_context();
    for (const auto& sds : common.tls_certificate_sds_secret_configs())
      add(sds);
    if (common.has_validation_context_sds_secret_config())
      add(common.validation_context_sds_secret_config());
    if (common.combined_validation_context().has_validation_context_sds_secret_config())
      add(common.combined_validation_context().validation_context_sds_secret_config());
  };
  for (const auto& fc : l.filter_chains())
    scan(fc);
  if (l.has_default_filter_chain())
    scan(l.default_filter_chain());
  return out;
}

Acceptance AcceptCluster(const Cluster& c) {
  if (Verdict v = ClassifyCluster(c); v.use == Use::kSkipped)
    return Acceptance{Use::kSkipped, std::move(v.reason), std::move(v.reason_class), {}};
  return Refusal(CheckClusterFields(c));
}

Acceptance AcceptEndpoints(const ClusterLoadAssignment& cla) {
  if (cla.cluster_name().empty())
    return Refusal(Field("cluster_name", "must not be empty"));
  return Refusal(CheckLocalities("", cla, true));
}

Acceptance AcceptListener(const Listener& l) {
  ListenerVerdict v = ClassifyListener(l);
  if (v.use == Use::kSkipped)
    return Acceptance{Use::kSkipped, std::move(v.reason), std::move(v.reason_class), {}};
  // A field error first: it names what is malformed, which a filter verdict cannot.
  if (auto ok = CheckListenerFields(l); !ok)
    return Refusal(ok);
  if (v.use == Use::kRefused)
    return Acceptance{Use::kRefused, std::move(v.reason), std::move(v.reason_class), {}};
  return Acceptance{Use::kServed, "", "", std::move(v.skipped_filters)};
}

Acceptance AcceptRoute(const RouteConfiguration& r) {
  if (r.name().empty())
    return Refusal(Field("name", "must not be empty"));
  return Refusal(CheckRouteConfigFields(r, ""));
}

namespace {
// A data source the agent can use: the bytes themselves. A file or environment variable
// names something on istiod's side of the wire, not here.
FieldResult CheckInline(const std::string& path, const envoy::config::core::v3::DataSource& d,
                        bool required) {
  switch (d.specifier_case()) {
    case envoy::config::core::v3::DataSource::kInlineBytes:
    case envoy::config::core::v3::DataSource::kInlineString:
      return {};
    case envoy::config::core::v3::DataSource::SPECIFIER_NOT_SET:
      if (required)
        return Field(path, "must be set (inline_bytes)");
      return {};
    default:
      return Field(path, "only inline_bytes and inline_string are served");
  }
}
}  // namespace

Acceptance AcceptSecret(const Secret& s) {
  if (s.name().empty())
    return Refusal(Field("name", "must not be empty"));
  switch (s.type_case()) {
    case Secret::kTlsCertificate: {
      const auto& c = s.tls_certificate();
      if (auto ok = CheckInline("tls_certificate.certificate_chain", c.certificate_chain(), true);
          !ok)
        return Refusal(ok);
      if (c.has_private_key_provider())
        return Refusal(Field("tls_certificate.private_key_provider", "not served"));
      return Refusal(CheckInline("tls_certificate.private_key", c.private_key(), true));
    }
    case Secret::kValidationContext:
      return Refusal(
          CheckInline("validation_context.trusted_ca", s.validation_context().trusted_ca(), false));
    case Secret::TYPE_NOT_SET:
      return Refusal(Field("type", "one of tls_certificate or validation_context must be set"));
    default:
      return Refusal(
          Field("type", "only tls_certificate and validation_context secrets are served"));
  }
}

Result<void> ValidateSecret(const Secret& s) {
  if (Acceptance a = AcceptSecret(s); a.use == Use::kRefused)
    return Named("secret", s.name(), Error{a.reason});
  return {};
}

Result<void> ValidateCluster(const Cluster& c) {
  if (auto ok = CheckClusterFields(c); !ok)
    return Named("cluster", c.name(), ok.error());
  return {};
}

Result<void> ValidateEndpoints(const ClusterLoadAssignment& cla) {
  if (Acceptance a = AcceptEndpoints(cla); a.use == Use::kRefused)
    return Named("endpoints", cla.cluster_name(), Error{a.reason});
  return {};
}

Result<void> ValidateListener(const Listener& l) {
  if (Acceptance a = AcceptListener(l); a.use == Use::kRefused)
    return Named("listener", l.name(), Error{a.reason});
  return {};
}

Result<void> ValidateRoute(const RouteConfiguration& r) {
  if (Acceptance a = AcceptRoute(r); a.use == Use::kRefused)
    return Named("route", r.name(), Error{a.reason});
  return {};
}

Result<void> ValidateSnapshot(const Snapshot& s, const Snapshot* base) {
  auto by_name = [](const auto& r) -> const std::string& { return r.name(); };
  if (auto ok = CheckMap("cluster", s.clusters, base ? &base->clusters : nullptr, by_name,
                         &ValidateCluster);
      !ok)
    return ok;
  if (auto ok = CheckMap(
          "endpoints", s.endpoints, base ? &base->endpoints : nullptr,
          [](const ClusterLoadAssignment& c) -> const std::string& { return c.cluster_name(); },
          &ValidateEndpoints);
      !ok) {
    return ok;
  }
  if (auto ok = CheckMap("listener", s.listeners, base ? &base->listeners : nullptr, by_name,
                         &ValidateListener);
      !ok)
    return ok;
  if (auto ok =
          CheckMap("route", s.routes, base ? &base->routes : nullptr, by_name, &ValidateRoute);
      !ok)
    return ok;
  // A secret no listener names yet is kept (SDS pushes may precede the listener), and a
  // listener whose secret has not come is accepted: its chain fails closed until it does,
  // as Envoy keeps such a listener warming.
  if (auto ok =
          CheckMap("secret", s.secrets, base ? &base->secrets : nullptr, by_name, &ValidateSecret);
      !ok)
    return ok;

  std::set<std::string_view> eds_names;
  for (const auto& [name, c] : s.clusters) {
    const std::string& svc = EdsServiceName(*c);
    if (svc.empty())
      continue;
    if (!s.endpoints.contains(svc)) {
      return Fail(
          fmt::format("cluster \"{}\": eds_cluster_config.service_name: no "
                      "ClusterLoadAssignment \"{}\"",
                      name, svc));
    }
    eds_names.insert(svc);
  }
  for (const auto& [name, cla] : s.endpoints) {
    if (!eds_names.contains(name)) {
      return Fail(
          fmt::format("endpoints \"{}\": cluster_name: no EDS cluster uses this name", name));
    }
  }
  for (const auto& [name, l] : s.listeners) {
    for (const auto& rds : RdsNames(*l)) {
      if (!s.routes.contains(rds)) {
        return Fail(
            fmt::format("listener \"{}\": rds.route_config_name: no RouteConfiguration "
                        "\"{}\"",
                        name, rds));
      }
    }
  }
  return {};
}

}  // namespace sluice::config

namespace sluice::config {
namespace {

// Whether some cluster of `s` takes its endpoints from the ClusterLoadAssignment `svc`:
// the cluster of that name first (istiod names them alike), then all of them.
bool EdsNameUsed(const Snapshot& s, const std::string& svc) {
  if (auto it = s.clusters.find(svc); it != s.clusters.end() && EdsServiceName(*it->second) == svc)
    return true;
  return std::ranges::any_of(s.clusters,
                             [&](const auto& kv) { return EdsServiceName(*kv.second) == svc; });
}

template <class M, class T, class F>
Result<void> CheckNames(std::string_view kind, const M& m, const TypeDiff& d, F name_of,
                        Result<void> (*check)(const T&)) {
  for (const auto* names : {&d.added, &d.changed}) {
    for (const auto& key : *names) {
      auto it = m.find(key);
      if (it == m.end() || !it->second)
        return Fail(fmt::format("{} \"{}\": missing resource", kind, key));
      if (name_of(*it->second) != key) {
        return Fail(fmt::format("{} \"{}\": stored under the name \"{}\"", kind,
                                name_of(*it->second), key));
      }
      if (auto ok = check(*it->second); !ok)
        return ok;
    }
  }
  return {};
}

Result<void> CheckClusterHasEndpoints(const Snapshot& s, const std::string& name) {
  const std::string& svc = EdsServiceName(*s.clusters.at(name));
  if (!svc.empty() && !s.endpoints.contains(svc)) {
    return Fail(fmt::format(
        "cluster \"{}\": eds_cluster_config.service_name: no ClusterLoadAssignment \"{}\"", name,
        svc));
  }
  return {};
}

Result<void> CheckEndpointsUsed(const Snapshot& s, const std::string& name) {
  if (s.endpoints.contains(name) && !EdsNameUsed(s, name))
    return Fail(fmt::format("endpoints \"{}\": cluster_name: no EDS cluster uses this name", name));
  return {};
}

}  // namespace

Result<void> ValidateEdit(const Snapshot& before, const Snapshot& after, const Diff& diff) {
  auto by_name = [](const auto& r) -> const std::string& { return r.name(); };
  SLUICE_RETURN_IF_ERROR(
      CheckNames("cluster", after.clusters, diff.clusters, by_name, &ValidateCluster));
  SLUICE_RETURN_IF_ERROR(CheckNames(
      "endpoints", after.endpoints, diff.endpoints,
      [](const ClusterLoadAssignment& c) -> const std::string& { return c.cluster_name(); },
      &ValidateEndpoints));
  SLUICE_RETURN_IF_ERROR(
      CheckNames("listener", after.listeners, diff.listeners, by_name, &ValidateListener));
  SLUICE_RETURN_IF_ERROR(CheckNames("route", after.routes, diff.routes, by_name, &ValidateRoute));
  SLUICE_RETURN_IF_ERROR(
      CheckNames("secret", after.secrets, diff.secrets, by_name, &ValidateSecret));

  // Clusters put: their endpoints exist. Clusters changed or removed: the endpoints they
  // used are still used by some cluster.
  for (const auto* names : {&diff.clusters.added, &diff.clusters.changed})
    for (const auto& name : *names)
      SLUICE_RETURN_IF_ERROR(CheckClusterHasEndpoints(after, name));
  for (const auto* names : {&diff.clusters.changed, &diff.clusters.removed}) {
    for (const auto& name : *names) {
      const std::string& old_svc = EdsServiceName(*before.clusters.at(name));
      if (!old_svc.empty())
        SLUICE_RETURN_IF_ERROR(CheckEndpointsUsed(after, old_svc));
    }
  }
  // Endpoints put: some cluster uses them. Endpoints removed: no cluster needs them.
  for (const auto* names : {&diff.endpoints.added, &diff.endpoints.changed})
    for (const auto& name : *names)
      SLUICE_RETURN_IF_ERROR(CheckEndpointsUsed(after, name));
  for (const auto& name : diff.endpoints.removed) {
    for (const auto& [cname, c] : after.clusters) {
      if (EdsServiceName(*c) == name) {
        return Fail(fmt::format(
            "cluster \"{}\": eds_cluster_config.service_name: no ClusterLoadAssignment \"{}\"",
            cname, name));
      }
    }
  }
  // Listeners put: their routes exist. Routes removed: no listener asks for them.
  auto check_listener = [&](const std::string& name, const Listener& l) -> Result<void> {
    for (const auto& rds : RdsNames(l)) {
      if (!after.routes.contains(rds)) {
        return Fail(fmt::format(
            "listener \"{}\": rds.route_config_name: no RouteConfiguration \"{}\"", name, rds));
      }
    }
    return {};
  };
  for (const auto* names : {&diff.listeners.added, &diff.listeners.changed})
    for (const auto& name : *names)
      SLUICE_RETURN_IF_ERROR(check_listener(name, *after.listeners.at(name)));
  if (!diff.routes.removed.empty()) {
    for (const auto& [name, l] : after.listeners)
      SLUICE_RETURN_IF_ERROR(check_listener(name, *l));
  }
  return {};
}

}  // namespace sluice::config
