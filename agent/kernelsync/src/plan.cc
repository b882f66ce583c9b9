#include "sluice/kernelsync/plan.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <optional>
#include <set>

#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb.h"
#include "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.pb.h"
#include "envoy/extensions/upstreams/http/v3/http_protocol_options.pb.h"
#include "sluice/bpf_abi.h"
#include "sluice/config/validate.h"
#include "sluice/filterchain/envoy.h"
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

// Does the cluster speak HTTP/2 upstream whatever the client speaks? HttpProtocolOptions
// with explicit HTTP/2 (istiod's shape for HTTP2 and gRPC ports, and for an HTTP port
// upgraded by h2UpgradePolicy), or the deprecated cluster-level http2_protocol_options
// of older control planes. use_downstream_protocol_config follows the client, which the
// kernel's pass-through does as well.
bool Http2Upstream(const Cluster& c) {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  if (c.has_http2_protocol_options())
    return true;
#pragma GCC diagnostic pop
  auto it = c.typed_extension_protocol_options().find(
      "envoy.extensions.upstreams.http.v3.HttpProtocolOptions");
  if (it == c.typed_extension_protocol_options().end())
    return false;
  envoy::extensions::upstreams::http::v3::HttpProtocolOptions o;
  return it->second.UnpackTo(&o) && o.has_explicit_http_config() &&
         o.explicit_http_config().has_http2_protocol_options();
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
std::string HttpL7Reason(const VirtualHost& vh, std::vector<Destination>* dests) {
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

std::vector<IpAddress> AnyAddress() {
  return {*IpAddress::Parse("0.0.0.0"), *IpAddress::Parse("::")};
}

bool IsWildcard(const IpAddress& a) {
  return std::all_of(a.bytes.begin(), a.bytes.end(), [](uint8_t b) { return b == 0; });
}

// A listener's addresses on its port: the primary and the additional ones.
std::vector<IpAddress> ListenerAddresses(const Listener& l) {
  std::vector<IpAddress> out;
  if (auto a = IpAddress::Parse(l.address().socket_address().address()))
    out.push_back(*a);
  for (const auto& aa : l.additional_addresses()) {
    const auto& sa = aa.address().socket_address();
    if (sa.port_value() != l.address().socket_address().port_value())
      continue;
    if (auto a = IpAddress::Parse(sa.address()))
      out.push_back(*a);
  }
  return out;
}

// What one filter chain does with a connection.
struct ChainAction {
  std::optional<TcpProxy> tcp;
  const envoy::config::route::v3::RouteConfiguration* routes = nullptr;  // HTTP
  bool http = false;
};

ChainAction ActionOf(const config::Snapshot& s,
                     const envoy::config::listener::v3::FilterChain& fc) {
  ChainAction a;
  for (const auto& f : fc.filters()) {
    HttpConnectionManager hcm;
    TcpProxy tp;
    if (Unpack(f, &hcm)) {
      a.http = true;
      if (hcm.has_rds()) {
        auto it = s.routes.find(hcm.rds().route_config_name());
        if (it != s.routes.end())
          a.routes = it->second.get();
      } else if (hcm.has_route_config()) {
        a.routes = &hcm.route_config();
      }
    } else if (Unpack(f, &tp)) {
      a.tcp = std::move(tp);
    }
  }
  return a;
}

std::vector<Destination> TcpDestinations(const TcpProxy& tp) {
  std::vector<Destination> dests;
  if (tp.cluster_specifier_case() == TcpProxy::kCluster) {
    dests.push_back({tp.cluster(), 1});
  } else {
    for (const auto& wc : tp.weighted_clusters().clusters())
      if (wc.weight() > 0)
        dests.push_back({wc.name(), wc.weight()});
  }
  return dests;
}

bool IsPassthroughOrBlackhole(const std::string& cluster) {
  return cluster == "PassthroughCluster" || cluster == "InboundPassthroughClusterIpv4" ||
         cluster == "InboundPassthroughClusterIpv6" || cluster == "BlackHoleCluster";
}

// The decision for one frontend: a kernel service, or a redirect and why.
struct Decision {
  std::vector<ClusterSpec> clusters;
  L7Reason reason = L7Reason::kUnspecified;
  std::string why;    // empty: the kernel serves it
  bool skip = false;  // nothing to plan (passthrough, or a chain that does nothing)
  // What it read of the clusters (ServiceInputs).
  std::vector<Destination> destinations;
  bool resolvable = false;
  bool http = false;           // the destinations of an HTTP virtual host
  std::set<std::string> read;  // every cluster consulted
};

// The decision made from destinations alone: the kernel serves them when each resolves
// and, for HTTP (`http`), none is HTTP/2 upstream. gRPC and HTTP/2 clients hold one
// connection for many requests, balanced per request (a weighted split of a gRPC channel
// is a split of its calls); and a client speaking HTTP/1.1 to an upgraded (h2UpgradePolicy
// UPGRADE) cluster needs the proxy to speak HTTP/2 for it. The kernel balances per
// connection and forwards bytes as they are, so both go to the proxy.
Decision FromDestinations(const config::Snapshot& s, std::vector<Destination> dests, bool http) {
  Decision d;
  d.http = http;
  auto clusters = Resolve(s, dests);
  if (clusters) {
    for (const auto& c : *clusters) {
      if (http && Http2Upstream(*s.clusters.at(c.name))) {
        d.reason = L7Reason::kHttp2;
        d.why = "cluster '" + c.name +
                "' is HTTP/2 upstream (gRPC or HTTP/2): the proxy balances it per request";
        break;
      }
    }
    if (d.why.empty())
      d.clusters = std::move(*clusters);
  } else {
    d.reason = L7Reason::kCluster;
    d.why = clusters.error().message;
  }
  for (const auto& dest : dests)
    d.read.insert(dest.cluster);
  d.destinations = std::move(dests);
  d.resolvable = true;
  return d;
}

class Planner {
 public:
  explicit Planner(const config::Snapshot& s) : s_(s) {}

  Result<KernelPlan> Run() {
    for (const auto& [name, lp] : s_.listeners) {
      const Listener& l = *lp;
      if (l.traffic_direction() == envoy::config::core::v3::INBOUND)
        continue;
      if (l.has_use_original_dst() && l.use_original_dst().value()) {
        plan_.registry_only |= RegistryOnly(l);
        continue;
      }
      if (!l.address().has_socket_address())
        continue;  // internal listeners (HBONE) and pipes: nothing the connect hook sees
      const uint32_t port = l.address().socket_address().port_value();
      if (port == 0 || port > 65535)
        continue;
      auto addrs = ListenerAddresses(l);
      if (addrs.empty())
        continue;
      (IsWildcard(addrs.front()) ? wildcard_ : exact_).push_back(&l);
    }
    // Envoy hands a redirected connection to the listener of its exact destination first,
    // and only without one to the wildcard listener of its port: so exact listeners
    // claim their frontends before any wildcard chain can.
    for (const Listener* l : exact_) {
      SLUICE_RETURN_IF_ERROR(PlanExact(*l));
    }
    for (const Listener* l : wildcard_) {
      SLUICE_RETURN_IF_ERROR(PlanWildcard(*l));
    }
    for (auto& [name, spec] : by_name_) {
      SLUICE_RETURN_IF_ERROR_CTX(Validate(spec), "planning kernel services");
      plan_.services.push_back(std::move(spec));
    }
    for (const auto& [cluster, _] : plan_.services_by_cluster) {
      auto it = s_.clusters.find(cluster);
      if (it == s_.clusters.end())
        continue;
      if (const std::string& eds = config::EdsServiceName(*it->second); !eds.empty())
        plan_.clusters_by_eds_name[eds].push_back(cluster);
    }
    return std::move(plan_);
  }

 private:
  // virtualOutbound: where connections to no known destination go (its default chain,
  // or istiod's catch-all chains on 0.0.0.0/0 and ::/0). BlackHoleCluster there is
  // outboundTrafficPolicy REGISTRY_ONLY.
  bool RegistryOnly(const Listener& l) {
    auto blackhole = [&](const envoy::config::listener::v3::FilterChain& fc) {
      ChainAction a = ActionOf(s_, fc);
      return a.tcp && a.tcp->cluster() == "BlackHoleCluster";
    };
    std::vector<filterchain::Match> matches;
    for (const auto& fc : l.filter_chains()) {
      auto m = filterchain::FromEnvoy(fc.filter_chain_match());
      matches.push_back(m ? *m : filterchain::Match{});
    }
    // An address no service has (TEST-NET-1 and its IPv6 documentation twin).
    bool any = false;
    for (const char* unknown : {"192.0.2.1", "2001:db8::1"}) {
      filterchain::Connection c;
      c.destination = *IpAddress::Parse(unknown);
      c.destination_port = 9;
      auto chosen = filterchain::Select(matches, c);
      if (chosen.empty()) {
        any |= l.has_default_filter_chain() && blackhole(l.default_filter_chain());
      } else {
        any |= std::all_of(chosen.begin(), chosen.end(),
                           [&](std::size_t i) { return blackhole(l.filter_chains(i)); });
      }
    }
    return any;
  }

  Result<std::vector<filterchain::Match>> Matches(const Listener& l) {
    std::vector<filterchain::Match> out;
    for (int i = 0; i < l.filter_chains_size(); ++i) {
      auto m = filterchain::FromEnvoy(l.filter_chains(i).filter_chain_match());
      if (!m)
        return Wrap(fmt::format("listener {}: filter_chains[{}].filter_chain_match", l.name(), i),
                    m.error());
      out.push_back(std::move(*m));
    }
    return out;
  }

  // A listener on a service's own address ("10.96.0.20_3306"): each of its addresses is a
  // frontend, served by the chain Envoy would pick for it.
  Result<void> PlanExact(const Listener& l) {
    auto matches = Matches(l);
    SLUICE_RETURN_IF_ERROR(matches);
    const auto port = static_cast<uint16_t>(l.address().socket_address().port_value());
    for (const IpAddress& vip : ListenerAddresses(l)) {
      Decision d = ForDestination(l, *matches, vip, port);
      if (!d.skip)
        Add(KernelName(l.name()), {vip}, port, std::move(d));
    }
    return {};
  }

  // A wildcard listener ("0.0.0.0_PORT"): its frontends are the addresses its chains name
  // (TCP chains' host prefixes, HTTP virtual hosts' VIP domains); ranges, chains that
  // match any address, and routing by SNI or Host make the whole port the proxy's.
  Result<void> PlanWildcard(const Listener& l) {
    auto matches = Matches(l);
    SLUICE_RETURN_IF_ERROR(matches);
    const auto port = static_cast<uint16_t>(l.address().socket_address().port_value());
    std::optional<std::pair<L7Reason, std::string>> port_wide;
    auto whole_port = [&](L7Reason r, std::string why) {
      if (!port_wide)
        port_wide = {r, std::move(why)};
    };
    std::set<IpAddress> hosts;
    for (int i = 0; i < l.filter_chains_size(); ++i) {
      const auto& fc = l.filter_chains(i);
      const auto& m = (*matches)[static_cast<std::size_t>(i)];
      if (!m.server_names.empty() || m.transport_protocol == "tls") {
        whole_port(L7Reason::kTlsSni, "TLS routing by SNI");
        continue;
      }
      ChainAction a = ActionOf(s_, fc);
      bool any_address = m.prefix_ranges.empty();
      for (const auto& p : m.prefix_ranges) {
        if (p.IsHost())
          hosts.insert(p.address);
        else if (p.length == 0)
          any_address = true;
        else if (!(a.tcp && IsPassthroughOrBlackhole(a.tcp->cluster())))
          whole_port(L7Reason::kCidr, "destinations in the range " + p.ToString());
      }
      if (a.http && a.routes) {
        // Istio's HTTP ports: one chain for every service, virtual hosts by Host.
        PlanVirtualHosts(*a.routes, port, &hosts, &whole_port);
      } else if (any_address && a.tcp && !IsPassthroughOrBlackhole(a.tcp->cluster()) &&
                 !TcpDestinations(*a.tcp).empty()) {
        whole_port(L7Reason::kCidr, "a TCP service without an address of its own on this port");
      }
    }
    if (l.has_default_filter_chain()) {
      ChainAction a = ActionOf(s_, l.default_filter_chain());
      if (a.tcp && !IsPassthroughOrBlackhole(a.tcp->cluster()))
        whole_port(L7Reason::kCidr, "a TCP service without an address of its own on this port");
    }
    for (const IpAddress& vip : hosts) {
      if (claimed_.count({vip, port}))
        continue;
      Decision d = ForDestination(l, *matches, vip, port);
      if (!d.skip)
        Add(fmt::format("{}_{}", vip.ToString(), port), {vip}, port, std::move(d));
    }
    if (port_wide) {
      Decision d;
      d.reason = port_wide->first;
      d.why = port_wide->second;
      Add(fmt::format("0.0.0.0_{}", port), AnyAddress(), port, std::move(d));
    }
    return {};
  }

  // Istio's HTTP listeners: each virtual host with VIPs among its domains is a frontend
  // of its own (kernel or proxy by its routes); hosts without a VIP mean the port's
  // remaining addresses are routed by Host in the proxy.
  template <class WholePort>
  void PlanVirtualHosts(const envoy::config::route::v3::RouteConfiguration& rc, uint16_t port,
                        std::set<IpAddress>* taken, WholePort* whole_port) {
    bool hosts_without_vip = false;
    for (const auto& vh : rc.virtual_hosts()) {
      const bool star = vh.domains_size() == 1 && vh.domains(0) == "*";
      std::vector<IpAddress> vips;
      for (const auto& ip : VipsOf(vh, port)) {
        if (!claimed_.count({ip, port}) && !taken->count(ip))
          vips.push_back(ip);
      }
      if (vips.empty()) {
        hosts_without_vip |= !star && VipsOf(vh, port).empty();
        continue;
      }
      Add(vh.name(), std::move(vips), port, ForVirtualHost(vh));
    }
    if (hosts_without_vip)
      (*whole_port)(L7Reason::kByHost,
                    "hosts without a VIP (e.g. ServiceEntry, resolved by DNS) are routed by Host");
  }

  // The chain Envoy picks for a connection to vip:port, and what the kernel makes of it.
  Decision ForDestination(const Listener& l, const std::vector<filterchain::Match>& matches,
                          const IpAddress& vip, uint16_t port) {
    filterchain::Connection c;
    c.destination = vip;
    c.destination_port = port;
    auto chosen = filterchain::Select(matches, c);
    std::vector<const envoy::config::listener::v3::FilterChain*> chains;
    for (std::size_t i : chosen)
      chains.push_back(&l.filter_chains(static_cast<int>(i)));
    if (chains.empty() && l.has_default_filter_chain())
      chains.push_back(&l.default_filter_chain());
    if (chains.empty()) {
      Decision d;
      d.skip = true;  // no chain: Envoy closes such connections; nothing to plan
      return d;
    }
    std::vector<Decision> options;
    for (const auto* fc : chains)
      options.push_back(ForChain(*fc, vip, port));
    if (options.size() == 1)
      return options.front();
    // Several chains possible: the choice is made on what the client sends (SNI, ALPN,
    // its address). The kernel can still serve it when every chain would route alike.
    // Either way the decision compared them all, endpoints included: only a whole plan
    // decides it again.
    std::set<std::string> read;
    for (const auto& o : options)
      read.insert(o.read.begin(), o.read.end());
    const bool alike = std::all_of(options.begin(), options.end(), [&](const Decision& d) {
      return d.why.empty() && !d.skip && SameClusters(d.clusters, options.front().clusters);
    });
    if (alike) {
      Decision d = options.front();
      d.resolvable = false;
      d.read = std::move(read);
      return d;
    }
    Decision d;
    d.read = std::move(read);
    bool by_source = false, by_bytes = false;
    for (std::size_t i : chosen) {
      const auto& m = matches[i];
      by_bytes |= !m.server_names.empty() || !m.transport_protocol.empty() ||
                  !m.application_protocols.empty();
      by_source |= !m.source_prefix_ranges.empty() || !m.direct_source_prefix_ranges.empty() ||
                   !m.source_ports.empty() || m.source_type != filterchain::SourceType::kAny;
    }
    if (by_bytes && !by_source) {
      d.reason = L7Reason::kSniffed;
      d.why = "the protocol is sniffed (HTTP or TCP) and the two are routed differently";
    } else {
      d.reason = L7Reason::kBySource;
      d.why = "the filter chain depends on the client's address or port";
    }
    return d;
  }

  Decision ForChain(const envoy::config::listener::v3::FilterChain& fc, const IpAddress& vip,
                    uint16_t port) {
    ChainAction a = ActionOf(s_, fc);
    Decision d;
    if (a.tcp) {
      if (IsPassthroughOrBlackhole(a.tcp->cluster())) {
        d.skip = true;
        return d;
      }
      return FromDestinations(s_, TcpDestinations(*a.tcp), false);
    }
    if (a.http && a.routes) {
      // The virtual host Envoy serves for this address: one naming it, else the only one.
      const envoy::config::route::v3::VirtualHost* chosen = nullptr;
      int naming = 0;
      for (const auto& vh : a.routes->virtual_hosts()) {
        auto vips = VipsOf(vh, port);
        if (std::find(vips.begin(), vips.end(), vip) != vips.end()) {
          chosen = &vh;
          ++naming;
        }
      }
      if (naming == 0 && a.routes->virtual_hosts_size() == 1)
        chosen = &a.routes->virtual_hosts(0);
      if (!chosen || naming > 1) {
        d.reason = L7Reason::kByHost;
        d.why = "the virtual host is chosen by the Host header";
        return d;
      }
      return ForVirtualHost(*chosen);
    }
    d.skip = true;
    return d;
  }

  Decision ForVirtualHost(const VirtualHost& vh) {
    Decision d;
    std::vector<Destination> dests;
    d.why = HttpL7Reason(vh, &dests);
    if (!d.why.empty()) {
      d.reason = L7Reason::kHttpRouting;
      return d;
    }
    return FromDestinations(s_, std::move(dests), true);
  }

  static bool SameClusters(const std::vector<ClusterSpec>& a, const std::vector<ClusterSpec>& b) {
    return a == b;
  }

  // One frontend, one service: the first listener or virtual host to claim it wins.
  void Add(const std::string& name, std::vector<IpAddress> vips, uint16_t port, Decision d) {
    std::vector<IpAddress> fresh;
    for (const auto& ip : vips)
      if (claimed_.insert({ip, port}).second)
        fresh.push_back(ip);
    if (fresh.empty())
      return;
    ServiceSpec spec;
    spec.name = KernelName(name);
    spec.vips = std::move(fresh);
    spec.port = port;
    if (by_name_.contains(spec.name))
      return;  // the first of a name wins
    if (d.why.empty()) {
      spec.clusters = std::move(d.clusters);
    } else {
      spec.redirect_to_proxy = true;
      spec.l7_reason = d.reason;
      plan_.l7_reasons.emplace(spec.name, std::move(d.why));
    }
    if (!d.read.empty()) {
      ServiceInputs& in = plan_.inputs[spec.name];
      in.resolvable = d.resolvable;
      in.http = d.http;
      for (const auto& dest : d.destinations)
        in.destinations.emplace_back(dest.cluster, dest.weight);
      for (const auto& c : d.read)
        plan_.services_by_cluster[c].push_back(spec.name);
    }
    by_name_.emplace(spec.name, std::move(spec));
  }

  const config::Snapshot& s_;
  KernelPlan plan_;
  std::vector<const Listener*> exact_, wildcard_;
  std::map<std::string, ServiceSpec> by_name_;
  std::set<std::pair<IpAddress, uint16_t>> claimed_;  // frontends already planned
};

}  // namespace

std::string KernelName(const std::string& name) {
  if (name.size() < SLUICE_SERVICE_NAME_LEN)
    return name;
  return fmt::format("{}~{:012x}", name.substr(0, SLUICE_SERVICE_NAME_LEN - 15),
                     StableHash(name, 7) & 0xffffffffffffULL);
}

Result<KernelPlan> Plan(const config::Snapshot& s) {
  return Planner(s).Run();
}

const ServiceSpec* KernelPlan::Find(const std::string& name) const {
  auto it = std::lower_bound(services.begin(), services.end(), name,
                             [](const ServiceSpec& s, const std::string& n) { return s.name < n; });
  return it != services.end() && it->name == name ? &*it : nullptr;
}

Result<std::optional<PlanEdit>> Replan(const KernelPlan& plan, const config::Snapshot& s,
                                       const config::Diff& diff) {
  using Out = std::optional<PlanEdit>;
  if (!diff.listeners.empty() || !diff.routes.empty())
    return Out();  // frontends, chains and virtual hosts: a whole plan
  // The clusters whose reading may differ now: changed, added or removed themselves, or
  // their endpoints changed. A ClusterLoadAssignment added or removed comes with its
  // cluster (the store refuses dangling references), and a cluster that changes its EDS
  // name is itself changed.
  std::set<std::string> clusters;
  for (const auto* names : {&diff.clusters.added, &diff.clusters.changed, &diff.clusters.removed})
    clusters.insert(names->begin(), names->end());
  for (const auto* names :
       {&diff.endpoints.added, &diff.endpoints.changed, &diff.endpoints.removed}) {
    for (const auto& n : *names) {
      if (auto it = plan.clusters_by_eds_name.find(n); it != plan.clusters_by_eds_name.end())
        clusters.insert(it->second.begin(), it->second.end());
    }
  }
  std::set<std::string> services;
  for (const auto& c : clusters) {
    auto it = plan.services_by_cluster.find(c);
    if (it == plan.services_by_cluster.end())
      continue;
    for (const auto& svc : it->second) {
      if (!plan.inputs.at(svc).resolvable)
        return Out();
      services.insert(svc);
    }
  }
  PlanEdit edit;
  for (const auto& name : services) {
    const ServiceSpec* cur = plan.Find(name);
    if (!cur)
      return Out();
    std::vector<Destination> dests;
    for (const auto& [cluster, weight] : plan.inputs.at(name).destinations)
      dests.push_back({cluster, weight});
    Decision d = FromDestinations(s, std::move(dests), plan.inputs.at(name).http);
    ++edit.replanned;
    ServiceSpec spec = *cur;
    std::optional<std::string> reason;
    if (d.why.empty()) {
      spec.clusters = std::move(d.clusters);
      spec.redirect_to_proxy = false;
      spec.l7_reason = L7Reason::kUnspecified;
    } else {
      spec.clusters.clear();
      spec.redirect_to_proxy = true;
      spec.l7_reason = d.reason;
      reason = std::move(d.why);
    }
    SLUICE_RETURN_IF_ERROR_CTX(Validate(spec), "planning kernel services");
    auto old = plan.l7_reasons.find(name);
    const bool same_reason =
        old == plan.l7_reasons.end() ? !reason : reason && *reason == old->second;
    if (spec == *cur && same_reason)
      continue;
    edit.reasons[name] = std::move(reason);
    edit.services.push_back(std::move(spec));
  }
  for (const auto* names : {&diff.clusters.added, &diff.clusters.changed}) {
    for (const auto& c : *names) {
      if (!plan.services_by_cluster.contains(c))
        continue;
      if (const std::string& eds = config::EdsServiceName(*s.clusters.at(c)); !eds.empty())
        edit.eds_names.emplace_back(eds, c);
    }
  }
  return Out(std::move(edit));
}

void Commit(KernelPlan& plan, PlanEdit edit) {
  for (auto& spec : edit.services) {
    auto it =
        std::lower_bound(plan.services.begin(), plan.services.end(), spec.name,
                         [](const ServiceSpec& x, const std::string& n) { return x.name < n; });
    if (auto r = edit.reasons.find(spec.name); r != edit.reasons.end()) {
      if (r->second)
        plan.l7_reasons[spec.name] = std::move(*r->second);
      else
        plan.l7_reasons.erase(spec.name);
    }
    if (it != plan.services.end() && it->name == spec.name)
      *it = std::move(spec);
    else
      plan.services.insert(it, std::move(spec));
  }
  // A cluster whose EDS name changed keeps its old entry too: it only costs a needless
  // re-decision when that name's endpoints change.
  for (auto& [eds, cluster] : edit.eds_names) {
    auto& users = plan.clusters_by_eds_name[eds];
    if (std::find(users.begin(), users.end(), cluster) == users.end())
      users.push_back(std::move(cluster));
  }
}

}  // namespace sluice::kernelsync
