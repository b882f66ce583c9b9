// LDS for a sidecar: per HTTP port a listener with the HTTP connection manager and the
// port's route configuration, per TLS port SNI filter chains, per TCP port listeners on
// each service's VIP (CIDR and address-less services in the port's wildcard listener)
// with the VirtualService's tcp routes as filter chains, and virtualOutbound; also the
// network filters (HTTP connection manager, TCP proxy) gateways use too. istiod's
// counterparts are pilot/pkg/networking/core/listener.go, listener_builder.go and
// networkfilter.go.
#include <algorithm>
#include <charconv>

#include "envoy/extensions/filters/http/cors/v3/cors.pb.h"
#include "envoy/extensions/filters/http/fault/v3/fault.pb.h"
#include "envoy/extensions/filters/http/router/v3/router.pb.h"
#include "envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.pb.h"
#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb.h"
#include "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.pb.h"
#include "translator/builder.h"

namespace sluice::istio::detail {

namespace {

namespace hcm_v3 = envoy::extensions::filters::network::http_connection_manager::v3;
namespace tcp_v3 = envoy::extensions::filters::network::tcp_proxy::v3;

// Parses "10.0.0.0/8" or "10.1.2.3" into a prefix range; false if not an IP.
bool ParseCidr(const std::string& text, core_v3::CidrRange* out) {
  auto slash = text.find('/');
  std::string ip = text.substr(0, slash);
  bool v6 = ip.find(':') != std::string::npos;
  if (!v6 && ip.find_first_not_of("0123456789.") != std::string::npos)
    return false;
  uint32_t len = v6 ? 128 : 32;
  if (slash != std::string::npos) {
    std::string_view digits = std::string_view(text).substr(slash + 1);
    auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), len);
    if (ec != std::errc() || p != digits.data() + digits.size() || len > (v6 ? 128u : 32u))
      return false;
  }
  out->set_address_prefix(ip);
  out->mutable_prefix_len()->set_value(len);
  return true;
}

}  // namespace

// The HTTP filters istiod's sidecars and proxyless gRPC clients share: fault, router.
// Sidecars and gateways also have cors between them (istiod's listener_builder.go: the
// filters routes' typed_per_filter_config needs); proxyless gRPC has no CORS.
void AddFaultAndRouter(hcm_v3::HttpConnectionManager& hcm, bool cors) {
  auto* fault = hcm.add_http_filters();
  fault->set_name("envoy.filters.http.fault");
  fault->mutable_typed_config()->PackFrom(envoy::extensions::filters::http::fault::v3::HTTPFault());
  if (cors) {
    auto* c = hcm.add_http_filters();
    c->set_name("envoy.filters.http.cors");
    c->mutable_typed_config()->PackFrom(envoy::extensions::filters::http::cors::v3::Cors());
  }
  auto* router = hcm.add_http_filters();
  router->set_name("envoy.filters.http.router");
  router->mutable_typed_config()->PackFrom(envoy::extensions::filters::http::router::v3::Router());
}

// A proxyless gRPC client's API listener (grpc.cc): the fault and router filters and RDS
// over ADS. No stat prefix, no access log, no upgrades: gRPC reads none of them.
google::protobuf::Any ApiListenerConnectionManager(const std::string& route_name) {
  hcm_v3::HttpConnectionManager hcm;
  auto* rds = hcm.mutable_rds();
  rds->mutable_config_source()->mutable_ads();
  rds->set_route_config_name(route_name);
  AddFaultAndRouter(hcm, /*cors=*/false);
  google::protobuf::Any any;
  any.PackFrom(hcm);
  return any;
}

google::protobuf::Any Builder::HttpConnectionManager(const std::string& stat_prefix,
                                                     const std::string& route_name) const {
  hcm_v3::HttpConnectionManager hcm;
  hcm.set_stat_prefix(stat_prefix);
  auto* rds = hcm.mutable_rds();
  *rds->mutable_config_source() = AdsSource();
  rds->set_route_config_name(route_name);
  return FinishConnectionManager(hcm);
}

google::protobuf::Any Builder::FinishConnectionManager(hcm_v3::HttpConnectionManager& hcm) const {
  // A gateway's connection managers enforce the AuthorizationPolicies selecting it, before
  // any other filter (a sidecar's inbound one adds its own; its outbound ones have none).
  if (proxy_.kind == ProxySpec::Kind::kGateway) {
    for (const auto& rbac : authz_http_) {
      auto* f = hcm.add_http_filters();
      f->set_name("envoy.filters.http.rbac");
      *f->mutable_typed_config() = rbac;
    }
  }
  AddFaultAndRouter(hcm, /*cors=*/true);
  // As istiod: WebSocket upgrades are allowed; any other upgrade is refused (403).
  hcm.add_upgrade_configs()->set_upgrade_type("websocket");
  AddAccessLog(hcm.mutable_access_log());
  google::protobuf::Any any;
  any.PackFrom(hcm);
  return any;
}

google::protobuf::Any Builder::TcpProxy(
    const std::vector<std::pair<std::string, uint32_t>>& clusters, bool source_ip_hash) const {
  tcp_v3::TcpProxy tcp;
  if (source_ip_hash)  // as istiod's maybeSetHashPolicy: consistent hashing on the client
    tcp.add_hash_policy()->mutable_source_ip();
  if (clusters.size() == 1) {
    tcp.set_stat_prefix(clusters[0].first);
    tcp.set_cluster(clusters[0].first);
  } else {
    tcp.set_stat_prefix("outbound_weighted");
    for (const auto& [name, w] : clusters) {
      auto* c = tcp.mutable_weighted_clusters()->add_clusters();
      c->set_name(name);
      c->set_weight(w);
    }
  }
  AddAccessLog(tcp.mutable_access_log());
  google::protobuf::Any any;
  any.PackFrom(tcp);
  return any;
}

listener_v3::Listener Builder::NewListener(const std::string& address, uint32_t port,
                                           bool outbound) {
  listener_v3::Listener l;
  l.set_name(address + "_" + std::to_string(port));
  auto* sa = l.mutable_address()->mutable_socket_address();
  sa->set_address(address);
  sa->set_port_value(port);
  if (outbound) {
    l.set_traffic_direction(core_v3::OUTBOUND);
    l.mutable_bind_to_port()->set_value(false);
  }
  return l;
}

void Builder::AddTlsInspector(listener_v3::Listener& l) {
  auto* lf = l.add_listener_filters();
  lf->set_name("envoy.filters.listener.tls_inspector");
  lf->mutable_typed_config()->PackFrom(
      envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector());
}

// Whether a DestinationRule puts consistent hashing on the client's IP on this
// destination (the subset's load balancer, when it has one, decides).
bool Builder::SourceIpHash(const RegistryService* svc, const std::string& subset,
                           uint32_t port) const {
  const DestinationRule* dr = svc ? FindDestinationRule(*svc) : nullptr;
  if (!dr)
    return false;
  const Subset* sub = nullptr;
  for (const auto& s : dr->subsets) {
    if (s.name == subset)
      sub = &s;
  }
  auto policy = Policy(dr, sub, port);
  return policy.lb && policy.lb->consistent_hash && policy.lb->consistent_hash->source_ip;
}

// The filter chains of a TCP service on `port`, as istiod's
// buildSidecarOutboundTCPFilterChainOpts: its VirtualService's tcp routes in order — a
// route whose applying matches name destinationSubnets gets a chain on those; one that
// applies to any destination ends the list — then, unless that happened, a chain to the
// service's own cluster. `own`: the service's prefixes (a wildcard listener's chains
// match on them; a VIP listener's on nothing).
std::vector<listener_v3::FilterChain> Builder::TcpChains(
    const RegistryService& svc, uint32_t port, const std::vector<std::string>& own) const {
  std::vector<listener_v3::FilterChain> out;
  auto chain = [&](const std::vector<std::string>& prefixes,
                   const std::vector<std::pair<std::string, uint32_t>>& clusters,
                   bool source_ip_hash) {
    listener_v3::FilterChain c;
    for (const auto& p : prefixes) {
      core_v3::CidrRange range;
      if (ParseCidr(p, &range))
        *c.mutable_filter_chain_match()->add_prefix_ranges() = std::move(range);
    }
    auto* f = c.add_filters();
    f->set_name("envoy.filters.network.tcp_proxy");
    *f->mutable_typed_config() = TcpProxy(clusters, source_ip_hash);
    out.push_back(std::move(c));
  };
  auto hashed = [&](const L4Route& tr, const std::string& vs_ns) {
    if (tr.route.size() != 1)
      return false;  // istiod hashes a single destination only
    const RegistryService* dest = nullptr;
    DestinationCluster(tr.route[0].destination, vs_ns, port, &dest);
    return SourceIpHash(dest, tr.route[0].destination.subset, port);
  };
  bool terminal = false;
  if (const VirtualService* vs = FindMeshVs(svc)) {
    for (const auto& tr : vs->tcp) {
      if (tr.route.empty())
        continue;
      std::vector<std::string> subnets;
      bool any_destination = tr.match.empty();
      for (const auto& m : tr.match) {
        if (!MatchApplies(m, kMesh, vs->meta.ns, port))
          continue;
        if (m.destination_subnets.empty()) {
          any_destination = true;
          break;
        }
        subnets.insert(subnets.end(), m.destination_subnets.begin(), m.destination_subnets.end());
      }
      if (any_destination) {
        chain(own, L4Clusters(tr, vs->meta.ns, port), hashed(tr, vs->meta.ns));
        terminal = true;
        break;
      }
      if (!subnets.empty()) {
        chain(subnets, L4Clusters(tr, vs->meta.ns, port), hashed(tr, vs->meta.ns));
        std::vector<std::string> a = subnets, b = own;
        std::sort(a.begin(), a.end());
        std::sort(b.begin(), b.end());
        terminal |= a == b;  // the service's own chain would be its duplicate
      }
    }
  }
  if (!terminal)
    chain(own, {{ClusterName(port, "", svc.hostname), 100}}, SourceIpHash(&svc, "", port));
  return out;
}

std::vector<std::pair<std::string, uint32_t>> Builder::L4Clusters(const L4Route& r,
                                                                  const std::string& vs_ns,
                                                                  uint32_t port) const {
  std::vector<std::pair<std::string, uint32_t>> out;
  for (const auto& rd : r.route) {
    uint32_t w = static_cast<uint32_t>(rd.weight.value_or(r.route.size() == 1 ? 100 : 0));
    if (w == 0 && r.route.size() > 1)
      continue;
    out.emplace_back(DestinationCluster(rd.destination, vs_ns, port, nullptr), w);
  }
  return out;
}

// Sidecar outbound: per HTTP port a listener + route config named after the port; per
// TLS port SNI filter chains; per TCP port chains matched on the services' addresses.
void Builder::BuildSidecarListenersAndRoutes() {
  emitted_listeners_.clear();
  std::map<uint32_t, std::vector<const RegistryService*>> http_ports, tls_ports, tcp_ports;
  for (const RegistryService* svc_ptr : visible_) {
    const RegistryService& svc = *svc_ptr;
    for (const auto& p : svc.ports) {
      if (p.protocol == Protocol::kUdp)
        continue;
      if (IsHttp(p.protocol)) {
        http_ports[p.port].push_back(&svc);
      } else if (p.protocol == Protocol::kTls || p.protocol == Protocol::kHttps) {
        tls_ports[p.port].push_back(&svc);
      } else {
        tcp_ports[p.port].push_back(&svc);
      }
    }
  }

  for (const auto& [port, services] : http_ports) {
    route_v3::RouteConfiguration rc;
    rc.set_name(std::to_string(port));
    rc.mutable_validate_clusters()->set_value(false);
    rc.set_ignore_port_in_host_matching(true);
    // A domain may name one virtual host only (Envoy rejects the config otherwise); the
    // first claim wins, e.g. Kubernetes "a" in namespace "b" over a ServiceEntry "a.b".
    std::set<std::string> used_domains;
    auto add_domains = [&](route_v3::VirtualHost* vh, const std::vector<std::string>& ds) {
      for (const auto& d : ds) {
        if (used_domains.insert(d).second)
          vh->add_domains(d);
      }
    };
    for (const auto* svc : services) {
      auto* vh = rc.add_virtual_hosts();
      vh->set_name(svc->hostname + ":" + std::to_string(port));
      add_domains(vh, ServiceDomains(*svc, port));
      const VirtualService* vs = FindMeshVs(*svc);
      std::vector<route_v3::Route> routes;
      if (vs)
        routes = VsRoutes(*vs, kMesh, port);
      if (routes.empty())
        routes.push_back(DefaultRoute(*svc, port));
      for (auto& r : routes)
        *vh->add_routes() = std::move(r);
    }
    // VirtualService hosts that name no service (istiod: "no port information, default
    // to 80"): a virtual host on the ports of the services the VirtualService does
    // cover, or on port 80 when it covers none.
    for (const auto& [vs, hosts] : UnregisteredVsHosts()) {
      std::set<uint32_t> ports;
      for (const auto* svc : services_by_vs_[vs]) {
        for (const auto& p : svc->ports) {
          if (IsHttp(p.protocol))
            ports.insert(p.port);
        }
      }
      if (ports.empty())
        ports.insert(80);
      if (!ports.count(port))
        continue;
      auto routes = VsRoutes(*vs, kMesh, port);
      if (routes.empty())
        continue;
      for (const auto& host : hosts) {
        route_v3::VirtualHost vh;
        vh.set_name(host + ":" + std::to_string(port));
        add_domains(&vh, {host, host + ":" + std::to_string(port)});
        if (vh.domains_size() == 0)
          continue;
        for (const auto& r : routes)
          *vh.add_routes() = r;
        *rc.add_virtual_hosts() = std::move(vh);
      }
    }
    AddCatchAllVirtualHost(rc);
    out_.resources.Add(std::move(rc));

    auto l = NewListener("0.0.0.0", port, true);
    auto* fc = l.add_filter_chains();
    auto* f = fc->add_filters();
    f->set_name("envoy.filters.network.http_connection_manager");
    *f->mutable_typed_config() =
        HttpConnectionManager("outbound_0.0.0.0_" + std::to_string(port), std::to_string(port));
    out_.resources.Add(std::move(l));
  }

  for (const auto& [port, services] : tls_ports) {
    auto l = NewListener("0.0.0.0", port, true);
    AddTlsInspector(l);
    for (const auto* svc : services) {
      std::vector<std::pair<std::string, uint32_t>> clusters;
      const VirtualService* vs = FindMeshVs(*svc);
      if (vs) {
        for (const auto& tr : vs->tls) {
          for (const auto& m : tr.match) {
            if (!MatchApplies(m, kMesh, vs->meta.ns, port))
              continue;
            bool sni = std::any_of(m.sni_hosts.begin(), m.sni_hosts.end(), [&](auto& h) {
              return HostsIntersect(registry_.Qualify(h, vs->meta.ns), svc->hostname);
            });
            if (sni && clusters.empty())
              clusters = L4Clusters(tr, vs->meta.ns, port);
          }
        }
      }
      if (clusters.empty())
        clusters.emplace_back(ClusterName(port, "", svc->hostname), 100);
      auto* fc = l.add_filter_chains();
      fc->mutable_filter_chain_match()->add_server_names(svc->hostname);
      auto* f = fc->add_filters();
      f->set_name("envoy.filters.network.tcp_proxy");
      *f->mutable_typed_config() = TcpProxy(clusters);
    }
    out_.resources.Add(std::move(l));
  }

  // TCP ports, as istiod builds them (its buildSidecarOutboundListener): a listener on
  // each service's VIP, "VIP_PORT" (further VIPs as additional addresses); a service
  // whose address is a CIDR gets chains matched on it in the port's wildcard listener,
  // and one without an address the wildcard's default chain.
  for (const auto& [port, services] : tcp_ports) {
    std::optional<listener_v3::Listener> wildcard;
    std::set<std::string> seen_ranges;
    for (const auto* svc : services) {
      std::vector<std::string> ips, cidrs;
      for (const auto& a : svc->addresses) {
        core_v3::CidrRange range;
        if (!ParseCidr(a, &range))
          continue;
        const bool host =
            a.find('/') == std::string::npos ||
            range.prefix_len().value() == (a.find(':') == std::string::npos ? 32u : 128u);
        (host ? ips : cidrs).push_back(range.address_prefix());
        if (!host)
          cidrs.back() = a;
      }
      if (!ips.empty()) {
        auto l = NewListener(ips.front(), port, true);
        if (emitted_listeners_.count(l.name())) {
          out_.warnings.push_back("port " + std::to_string(port) + ": TCP service " +
                                  svc->hostname + " has the address " + ips.front() +
                                  " of another service on that port; skipped");
        } else {
          for (std::size_t k = 1; k < ips.size(); ++k) {
            auto* sa = l.add_additional_addresses()->mutable_address()->mutable_socket_address();
            sa->set_address(ips[k]);
            sa->set_port_value(port);
          }
          for (auto& chain : TcpChains(*svc, port, {}))
            *l.add_filter_chains() = std::move(chain);
          emitted_listeners_.insert(l.name());
          out_.resources.Add(std::move(l));
        }
      }
      if (!cidrs.empty() || ips.empty()) {
        if (!wildcard)
          wildcard = NewListener("0.0.0.0", port, true);
        for (auto& chain : TcpChains(*svc, port, cidrs)) {
          std::string key;
          for (const auto& r : chain.filter_chain_match().prefix_ranges())
            key += r.address_prefix() + "/" + std::to_string(r.prefix_len().value()) + ",";
          if (!chain.filter_chain_match().prefix_ranges().empty()) {
            if (seen_ranges.insert(key).second)
              *wildcard->add_filter_chains() = std::move(chain);
            else
              out_.warnings.push_back("port " + std::to_string(port) + ": TCP service " +
                                      svc->hostname +
                                      " has the same addresses as another service on that "
                                      "port; skipped");
          } else if (!wildcard->has_default_filter_chain()) {
            *wildcard->mutable_default_filter_chain() = std::move(chain);
          } else {
            out_.warnings.push_back("port " + std::to_string(port) + ": TCP service " +
                                    svc->hostname +
                                    " has no address to tell it apart from another service "
                                    "on the same port; skipped");
          }
        }
      }
    }
    if (wildcard)
      out_.resources.Add(std::move(*wildcard));
  }

  // Everything the proxy intercepts without a more specific listener.
  auto vo = NewListener("0.0.0.0", 15001, false);
  vo.set_name("virtualOutbound");
  vo.mutable_use_original_dst()->set_value(true);
  vo.set_traffic_direction(core_v3::OUTBOUND);
  auto* f = vo.mutable_default_filter_chain()->add_filters();
  f->set_name("envoy.filters.network.tcp_proxy");
  const char* fallback = registry_only_ ? kBlackHole : kPassthrough;
  *f->mutable_typed_config() = TcpProxy({{fallback, 100}});
  out_.resources.Add(std::move(vo));
}

}  // namespace sluice::istio::detail
