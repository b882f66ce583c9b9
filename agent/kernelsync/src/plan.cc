#include "sluice/kernelsync/plan.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <set>

#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb.h"
#include "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.pb.h"
#include "sluice/config/validate.h"
#include "sluice/dataplane.h"
#include "sluice/loader/lb_tables.h"

namespace sluice::kernelsync {
namespace {

using envoy::config::cluster::v3::Cluster;
using envoy::config::endpoint::v3::ClusterLoadAssignment;
using envoy::config::listener::v3::Listener;
using envoy::config::route::v3::Route;
using envoy::config::route::v3::RouteAction;
using envoy::config::route::v3::VirtualHost;
using envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
using envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;

constexpr const char* kIstioDefaultRetryOn =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

// A weighted destination, before its endpoints are resolved.
struct Destination {
  std::string cluster;
  uint32_t weight = 1;
};

Result<LbPolicy> KernelPolicy(const Cluster& c) {
  switch (c.lb_policy()) {
    case Cluster::ROUND_ROBIN:
      return LbPolicy::kRoundRobin;
    case Cluster::LEAST_REQUEST:
      return LbPolicy::kLeastRequest;
    case Cluster::RANDOM:
      return LbPolicy::kRandom;
    case Cluster::RING_HASH:
      return LbPolicy::kRingHash;
    case Cluster::MAGLEV:
      return LbPolicy::kMaglev;
    default:
      return Fail("lb_policy " + Cluster::LbPolicy_Name(c.lb_policy()) + " has no kernel form");
  }
}

void AddEndpoints(const ClusterLoadAssignment& cla, ClusterSpec* out) {
  using envoy::config::core::v3::HealthStatus;
  for (const auto& locality : cla.endpoints()) {
    for (const auto& lbe : locality.lb_endpoints()) {
      const auto h = lbe.health_status();
      if (h == HealthStatus::UNHEALTHY || h == HealthStatus::DRAINING || h == HealthStatus::TIMEOUT)
        continue;
      if (!lbe.has_endpoint() || !lbe.endpoint().address().has_socket_address())
        continue;
      const auto& sa = lbe.endpoint().address().socket_address();
      auto ip = IpAddress::Parse(sa.address());
      if (!ip || sa.port_value() == 0 || sa.port_value() > 65535)
        continue;
      EndpointSpec ep;
      ep.address = SocketAddress{*ip, static_cast<uint16_t>(sa.port_value())};
      ep.weight = lbe.has_load_balancing_weight() && lbe.load_balancing_weight().value() > 0
                      ? lbe.load_balancing_weight().value()
                      : 1;
      out->endpoints.push_back(std::move(ep));
    }
  }
}

// Resolves destinations to kernel clusters; an error says why the kernel cannot serve it.
Result<std::vector<ClusterSpec>> Resolve(const config::Snapshot& s,
                                         const std::vector<Destination>& dests) {
  if (dests.size() > SLUICE_MAX_CLUSTERS)
    return Fail(fmt::format("{} weighted clusters (the kernel holds {})", dests.size(),
                            SLUICE_MAX_CLUSTERS));
  std::vector<ClusterSpec> out;
  for (const auto& d : dests) {
    auto it = s.clusters.find(d.cluster);
    if (it == s.clusters.end())
      return Fail("cluster '" + d.cluster + "' is not defined");
    const Cluster& c = *it->second;
    auto lb = KernelPolicy(c);
    if (!lb)
      return Fail("cluster '" + d.cluster + "': " + lb.error().message);
    ClusterSpec cs;
    cs.name = d.cluster;
    cs.weight = d.weight;
    cs.lb = *lb;
    const auto type = c.has_type() ? c.type() : Cluster::EDS;
    if (type == Cluster::EDS) {
      auto cla = s.endpoints.find(config::EdsServiceName(c));
      if (cla != s.endpoints.end())
        AddEndpoints(*cla->second, &cs);
    } else if (type == Cluster::STATIC) {
      AddEndpoints(c.load_assignment(), &cs);
    } else {
      return Fail("cluster '" + d.cluster + "' is " + Cluster::DiscoveryType_Name(type) +
                  " (needs resolution in the proxy)");
    }
    out.push_back(std::move(cs));
  }
  return out;
}

bool IsIstioDefaultRetry(const envoy::config::route::v3::RetryPolicy& r) {
  return r.retry_on() == kIstioDefaultRetryOn &&
         (!r.has_num_retries() || r.num_retries().value() == 2) &&
         (r.retriable_status_codes_size() == 0 ||
          (r.retriable_status_codes_size() == 1 && r.retriable_status_codes(0) == 503)) &&
         !r.has_per_try_timeout() && r.retriable_headers_size() == 0;
}

bool NonZero(const google::protobuf::Duration& d) {
  return d.seconds() != 0 || d.nanos() != 0;
}

// Why a virtual host needs the proxy; empty when the kernel can serve it. Fills dests.
std::string L7Reason(const VirtualHost& vh, std::vector<Destination>* dests) {
  if (vh.routes_size() != 1)
    return fmt::format("{} routes (the kernel serves one catch-all)", vh.routes_size());
  if (vh.request_headers_to_add_size() || vh.request_headers_to_remove_size() ||
      vh.response_headers_to_add_size() || vh.response_headers_to_remove_size())
    return "virtual host header changes";
  if (vh.typed_per_filter_config_size())
    return "per-filter config on the virtual host (e.g. fault injection)";
  if (vh.has_retry_policy() && !IsIstioDefaultRetry(vh.retry_policy()))
    return "retries";
  const Route& r = vh.routes(0);
  const auto& m = r.match();
  const bool catch_all =
      (m.path_specifier_case() == envoy::config::route::v3::RouteMatch::kPrefix &&
       (m.prefix().empty() || m.prefix() == "/"));
  if (!catch_all || m.headers_size() || m.query_parameters_size() || m.has_runtime_fraction() ||
      m.has_grpc() || m.dynamic_metadata_size())
    return "route matches beyond one catch-all";
  if (r.action_case() == Route::kRedirect)
    return "redirect";
  if (r.action_case() == Route::kDirectResponse)
    return "direct response";
  if (r.action_case() != Route::kRoute)
    return "route action other than forwarding";
  if (r.typed_per_filter_config_size())
    return "per-filter config on the route (e.g. fault injection)";
  if (r.request_headers_to_add_size() || r.request_headers_to_remove_size() ||
      r.response_headers_to_add_size() || r.response_headers_to_remove_size())
    return "header changes";
  const RouteAction& a = r.route();
  if (a.request_mirror_policies_size())
    return "mirroring";
  if (!a.prefix_rewrite().empty() || a.has_regex_rewrite() ||
      a.host_rewrite_specifier_case() != RouteAction::HOST_REWRITE_SPECIFIER_NOT_SET)
    return "rewrites";
  if (a.has_timeout() && NonZero(a.timeout()))
    return "a request timeout";
  if (a.has_retry_policy() && !IsIstioDefaultRetry(a.retry_policy()))
    return "retries";
  for (const auto& h : a.hash_policy())
    if (h.policy_specifier_case() !=
        envoy::config::route::v3::RouteAction::HashPolicy::kConnectionProperties)
      return "hashing on request attributes (header, cookie, query)";
  if (a.cluster_specifier_case() == RouteAction::kCluster) {
    dests->push_back({a.cluster(), 1});
  } else if (a.cluster_specifier_case() == RouteAction::kWeightedClusters) {
    for (const auto& wc : a.weighted_clusters().clusters()) {
      if (wc.request_headers_to_add_size() || wc.request_headers_to_remove_size() ||
          wc.response_headers_to_add_size() || wc.response_headers_to_remove_size() ||
          wc.typed_per_filter_config_size())
        return "header changes on a weighted cluster";
      const uint32_t w = wc.has_weight() ? wc.weight().value() : 0;
      if (w > 0)
        dests->push_back({wc.name(), w});
    }
    if (dests->empty())
      return "weighted clusters all of weight 0";
  } else {
    return "cluster chosen from a header or plugin";
  }
  return {};
}

// VIPs among a virtual host's domains: "10.96.0.10", "10.96.0.10:9080", "[fd00::10]:9080".
std::vector<IpAddress> VipsOf(const VirtualHost& vh, uint32_t port) {
  std::set<IpAddress> vips;
  for (const auto& d : vh.domains()) {
    if (auto ip = IpAddress::Parse(d); ip) {
      vips.insert(*ip);
    } else if (auto sa = SocketAddress::Parse(d); sa && sa->port == port) {
      vips.insert(sa->ip);
    } else if (d.size() > 2 && d.front() == '[' && d.back() == ']') {
      if (auto ip6 = IpAddress::Parse(d.substr(1, d.size() - 2)); ip6)
        vips.insert(*ip6);
    }
  }
  return {vips.begin(), vips.end()};
}

template <class T>
bool Unpack(const envoy::config::listener::v3::Filter& f, T* out) {
  return f.has_typed_config() && f.typed_config().UnpackTo(out);
}

ServiceSpec Redirect(const std::string& name, std::vector<IpAddress> vips, uint16_t port) {
  ServiceSpec s;
  s.name = KernelName(name);
  s.vips = std::move(vips);
  s.port = port;
  s.redirect_to_proxy = true;
  return s;
}

std::vector<IpAddress> AnyAddress() {
  return {*IpAddress::Parse("0.0.0.0"), *IpAddress::Parse("::")};
}

}  // namespace

std::string KernelName(const std::string& name) {
  if (name.size() < SLUICE_SERVICE_NAME_LEN)
    return name;
  return fmt::format("{}~{:012x}", name.substr(0, SLUICE_SERVICE_NAME_LEN - 15),
                     StableHash(name, 7) & 0xffffffffffffULL);
}

Result<KernelPlan> Plan(const config::Snapshot& s) {
  KernelPlan plan;
  std::map<std::string, ServiceSpec> by_name;
  std::set<std::pair<IpAddress, uint16_t>> claimed;  // frontends already planned
  auto add = [&](ServiceSpec spec, const std::string& reason) {
    // One frontend, one service: the first listener or virtual host to claim it wins.
    std::vector<IpAddress> fresh;
    for (const auto& ip : spec.vips)
      if (claimed.insert({ip, spec.port}).second)
        fresh.push_back(ip);
    if (fresh.empty())
      return;
    spec.vips = std::move(fresh);
    if (!reason.empty())
      plan.l7_reasons.push_back(spec.name + ": " + reason);
    by_name.emplace(spec.name, std::move(spec));
  };

  for (const auto& [lname, lp] : s.listeners) {
    const Listener& l = *lp;
    if (l.traffic_direction() == envoy::config::core::v3::INBOUND)
      continue;
    if (l.has_use_original_dst() && l.use_original_dst().value()) {
      // virtualOutbound: where unknown destinations go.
      if (l.has_default_filter_chain()) {
        for (const auto& f : l.default_filter_chain().filters()) {
          TcpProxy tp;
          if (Unpack(f, &tp) && tp.cluster() == "BlackHoleCluster")
            plan.registry_only = true;
        }
      }
      continue;
    }
    if (!l.address().has_socket_address())
      continue;
    const auto& sa = l.address().socket_address();
    const uint32_t port = sa.port_value();
    if (port == 0 || port > 65535)
      continue;
    auto laddr = IpAddress::Parse(sa.address());
    if (!laddr)
      continue;
    const bool wildcard =
        std::all_of(laddr->bytes.begin(), laddr->bytes.end(), [](uint8_t b) { return b == 0; });
    const auto p16 = static_cast<uint16_t>(port);

    bool sni_chains = false;
    for (const auto& fc : l.filter_chains())
      if (fc.filter_chain_match().server_names_size() ||
          fc.filter_chain_match().transport_protocol() == "tls")
        sni_chains = true;
    if (sni_chains) {
      // TLS passthrough by SNI: only the proxy can read the ClientHello.
      add(Redirect(fmt::format("tls:{}", port), wildcard ? AnyAddress() : std::vector{*laddr}, p16),
          "TLS routing by SNI");
      continue;
    }

    for (const auto& fc : l.filter_chains()) {
      for (const auto& f : fc.filters()) {
        HttpConnectionManager hcm;
        TcpProxy tp;
        if (Unpack(f, &hcm)) {
          const envoy::config::route::v3::RouteConfiguration* rc = nullptr;
          if (hcm.has_rds()) {
            auto it = s.routes.find(hcm.rds().route_config_name());
            if (it != s.routes.end())
              rc = it->second.get();
          } else if (hcm.has_route_config()) {
            rc = &hcm.route_config();
          }
          if (!rc)
            continue;
          bool hosts_without_vip = false;
          for (const auto& vh : rc->virtual_hosts()) {
            const bool star = vh.domains_size() == 1 && vh.domains(0) == "*";
            auto vips = wildcard ? VipsOf(vh, port) : std::vector<IpAddress>{*laddr};
            if (vips.empty()) {
              hosts_without_vip |= !star;
              continue;
            }
            std::vector<Destination> dests;
            std::string reason = L7Reason(vh, &dests);
            if (reason.empty()) {
              auto clusters = Resolve(s, dests);
              if (clusters) {
                ServiceSpec spec;
                spec.name = KernelName(vh.name());
                spec.vips = std::move(vips);
                spec.port = p16;
                spec.clusters = std::move(*clusters);
                add(std::move(spec), "");
                continue;
              }
              reason = clusters.error().message;
            }
            add(Redirect(vh.name(), std::move(vips), p16), reason);
          }
          if (hosts_without_vip && wildcard)
            add(Redirect(fmt::format("http:{}", port), AnyAddress(), p16),
                "hosts without a VIP (e.g. ServiceEntry, resolved by DNS) are routed by Host");
        } else if (Unpack(f, &tp)) {
          if (wildcard)
            continue;  // passthrough-style TCP listeners stay with the catch-all policy
          std::vector<Destination> dests;
          if (tp.cluster_specifier_case() == TcpProxy::kCluster)
            dests.push_back({tp.cluster(), 1});
          else
            for (const auto& wc : tp.weighted_clusters().clusters())
              if (wc.weight() > 0)
                dests.push_back({wc.name(), wc.weight()});
          auto clusters = Resolve(s, dests);
          if (!clusters) {
            add(Redirect(lname, {*laddr}, p16), clusters.error().message);
            continue;
          }
          ServiceSpec spec;
          spec.name = KernelName(lname);
          spec.vips = {*laddr};
          spec.port = p16;
          spec.clusters = std::move(*clusters);
          add(std::move(spec), "");
        }
      }
    }
  }
  for (auto& [name, spec] : by_name) {
    if (auto v = Validate(spec); !v)
      return Wrap("planning kernel services", v.error());
    plan.services.push_back(std::move(spec));
  }
  return plan;
}

}  // namespace sluice::kernelsync
