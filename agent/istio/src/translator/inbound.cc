// A sidecar's inbound side: the virtualInbound listener (0.0.0.0:15006) with one chain
// per inbound port and istiod's passthrough chains, the "inbound|PORT||" clusters that
// deliver to the defaultEndpoint (or, unset, to the pod's own address on the same port)
// and InboundPassthroughCluster. The inbound ports are the Sidecar resource's ingress
// listeners when it has some, else, when an AuthorizationPolicy selects the workload, the
// target ports of the Services that select it (istiod's buildInboundChainConfigs; the
// Sidecar's ports replace the Services', as without PILOT_ENABLE_SIDECAR_SERVICE_INBOUND_
// LISTENER_MERGE). The policy's rbac filters (authz.cc) go where istiod puts them: the
// HTTP filter first in every inbound connection manager, the network filter before
// tcp_proxy on every TCP chain, the passthrough chains included.
//
// The shape is istiod's (pilot/pkg/networking/core/listener_inbound.go,
// cluster.go buildInboundClustersFromSidecar, cluster_builder.go buildInboundCluster) for
// a proxy with redirected inbound traffic and no mTLS — Sluice terminates no TLS (issue
// 18), so the chains are istiod's plaintext ones (transport_protocol raw_buffer). A proxy
// with neither ingress listeners nor a policy gets no inbound listener: istiod always
// builds one, but the node agent's inbound side only needs it where it changes behaviour.
#include <algorithm>
#include <set>

#include "envoy/config/accesslog/v3/accesslog.pb.h"
#include "envoy/extensions/filters/listener/http_inspector/v3/http_inspector.pb.h"
#include "envoy/extensions/filters/listener/original_dst/v3/original_dst.pb.h"
#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb.h"
#include "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.pb.h"
#include "translator/builder.h"

namespace sluice::istio::detail {

namespace {

namespace hcm_v3 = envoy::extensions::filters::network::http_connection_manager::v3;
namespace tcp_v3 = envoy::extensions::filters::network::tcp_proxy::v3;

constexpr char kVirtualInbound[] = "virtualInbound";
constexpr char kInboundPassthrough[] = "InboundPassthroughCluster";
constexpr uint32_t kInboundListenPort = 15006;  // MeshConfig proxyInboundListenPort
// istiod's InboundPassthroughBindIpv4: the source of the proxy's connections to the app,
// which the pod's redirection lets through instead of sending back to the proxy.
constexpr char kPassthroughBindIpv4[] = "127.0.0.6";
// istiod's maxSecondsValue: cleanup of an inbound ORIGINAL_DST cluster's hosts is off.
constexpr int64_t kNoCleanupSeconds = 9223372035;

// HTTP/1.1 and h2c, as http_inspector reports them: istiod's plaintextHTTPALPNs.
const char* const kPlaintextHttpAlpns[] = {"http/1.1", "h2c"};

enum class ChainKind { kHttp, kTcp, kSniffed };

// The listener protocol istiod derives from a port's protocol
// (ModelProtocolToListenerProtocol): HTTP for the HTTP family, TCP for the rest, and
// detection (an HTTP chain and a TCP chain) when the protocol is unset.
ChainKind KindOf(const SidecarIngress& in) {
  if (in.protocol.empty())
    return ChainKind::kSniffed;
  return IsHttp(ParseProtocol(in.protocol)) ? ChainKind::kHttp : ChainKind::kTcp;
}

// A Service port as istiod's inbound side sees it: an unknown protocol is detected.
ChainKind KindOf(Protocol p) {
  if (p == Protocol::kUnknown)
    return ChainKind::kSniffed;
  return IsHttp(p) ? ChainKind::kHttp : ChainKind::kTcp;
}

// One inbound port: its chains and its "inbound|PORT||" cluster.
struct InboundPort {
  SidecarIngress cluster;  // port = the target port the chains match
  ChainKind kind = ChainKind::kTcp;
  Protocol protocol = Protocol::kUnknown;    // the port's: its cluster's upstream HTTP protocol
  const RegistryService* service = nullptr;  // the Service (not for Sidecar ingress)
  uint32_t service_port = 0;                 // the virtual host's and the trace decorator's port
  std::string decorator_host;  // the Service's FQDN, or the Sidecar's "name.namespace"
};

// "0.0.0.0_9080": istiod's chain name for an ingress port without bind (the wildcard
// address, since Sluice does not give the translator the pod's own IP).
std::string ChainName(uint32_t port) {
  return "0.0.0.0_" + std::to_string(port);
}

std::string InboundClusterName(uint32_t port) {
  return "inbound|" + std::to_string(port) + "||";
}

void SetCircuitBreakerDefaults(cluster_v3::Cluster& c) {
  constexpr uint32_t kMax = 4294967295u;  // istiod's getDefaultCircuitBreakerThresholds
  auto* t = c.mutable_circuit_breakers()->add_thresholds();
  t->mutable_max_connections()->set_value(kMax);
  t->mutable_max_pending_requests()->set_value(kMax);
  t->mutable_max_requests()->set_value(kMax);
  t->mutable_max_retries()->set_value(kMax);
  t->set_track_remaining(true);
}

void SetPassthroughBind(cluster_v3::Cluster& c) {
  auto* sa = c.mutable_upstream_bind_config()->mutable_source_address();
  sa->set_address(kPassthroughBindIpv4);
  sa->set_port_value(0);
}

listener_v3::FilterChain PlainChain(const std::string& name, uint32_t port, bool http_alpns) {
  listener_v3::FilterChain fc;
  fc.set_name(name);
  auto* m = fc.mutable_filter_chain_match();
  if (port)
    m->mutable_destination_port()->set_value(port);
  m->set_transport_protocol("raw_buffer");
  if (http_alpns) {
    for (const char* a : kPlaintextHttpAlpns)
      m->add_application_protocols(a);
  }
  return fc;
}

// filter_disabled of http_inspector: the ports none of whose chains match an application
// protocol, as istiod's buildHTTPInspector (one range, or an or_match of them, in order).
void DisableOnPorts(listener_v3::ListenerFilter& lf, const std::set<uint32_t>& ports) {
  if (ports.empty())
    return;
  auto range = [](listener_v3::ListenerFilterChainMatchPredicate* p, uint32_t port) {
    p->mutable_destination_port_range()->set_start(static_cast<int32_t>(port));
    p->mutable_destination_port_range()->set_end(static_cast<int32_t>(port + 1));
  };
  if (ports.size() == 1) {
    range(lf.mutable_filter_disabled(), *ports.begin());
    return;
  }
  auto* rules = lf.mutable_filter_disabled()->mutable_or_match();
  for (uint32_t p : ports)
    range(rules->add_rules(), p);
}

// The target ports of the Services in the proxy's namespace that select it, one per
// target port (the first Service in name order wins a conflict, as istiod keeps the
// oldest), each with the Service port's protocol.
std::vector<InboundPort> ServiceInboundPorts(const Config& config_, const Registry& registry_,
                                             const ProxySpec& proxy_,
                                             std::vector<std::string>& warnings) {
  std::vector<InboundPort> out;
  std::set<uint32_t> seen;
  std::vector<const Service*> services;
  for (const auto& svc : config_.services) {
    if (svc.meta.ns == proxy_.ns && !svc.selector.empty() &&
        SelectorMatches(svc.selector, proxy_.labels))
      services.push_back(&svc);
  }
  std::sort(services.begin(), services.end(),
            [](const Service* a, const Service* b) { return a->meta.name < b->meta.name; });
  for (const Service* svc : services) {
    const std::string fqdn = svc->meta.name + "." + svc->meta.ns + ".svc." + registry_.domain();
    const RegistryService* reg = registry_.Resolve(fqdn, proxy_.ns);
    for (const auto& sp : svc->ports) {
      if (sp.protocol == "UDP" || sp.protocol == "SCTP")
        continue;
      uint32_t target = sp.target_port ? sp.target_port : sp.port;
      if (!sp.target_port_name.empty()) {
        // A named targetPort: the container port of this workload's pods.
        target = 0;
        for (const auto& w : config_.workloads) {
          if (w.meta.ns != proxy_.ns || !SelectorMatches(proxy_.labels, w.pod_labels))
            continue;
          for (const auto& cp : w.container_ports)
            if (cp.name == sp.target_port_name)
              target = cp.port;
        }
        if (!target) {
          warnings.push_back("Service " + svc->meta.Key() + " port " + std::to_string(sp.port) +
                             ": targetPort \"" + sp.target_port_name +
                             "\" names no container port of this workload; its traffic "
                             "takes the inbound passthrough chains");
          continue;
        }
      }
      if (!seen.insert(target).second)
        continue;
      InboundPort p;
      p.cluster.port = target;
      const RegistryPort* rp = reg ? reg->FindPort(sp.port) : nullptr;
      p.protocol = rp ? rp->protocol : Protocol::kUnknown;
      p.kind = KindOf(p.protocol);
      p.service = reg;
      p.service_port = sp.port;
      p.decorator_host = fqdn;
      out.push_back(std::move(p));
    }
  }
  return out;
}

}  // namespace

// istiod's buildInboundCluster for one ingress listener: STATIC to the defaultEndpoint,
// or ORIGINAL_DST when it is unset. Every inbound cluster but one to loopback leaves from
// 127.0.0.6, so the pod's redirection does not loop the proxy's own connection back to it.
// Its upstream HTTP protocol is the port's (HTTP/2 for HTTP2 and gRPC ports, the client's
// for a sniffed one), and the connection pool of the DestinationRule of its Service (port
// level by the Service port) applies, limits and connect timeout, as istiod applies it
// server side too; never an h2 upgrade (istiod's applyH2Upgrade is outbound only).
cluster_v3::Cluster Builder::InboundCluster(const SidecarIngress& in, Protocol protocol,
                                            const RegistryService* svc,
                                            uint32_t service_port) const {
  cluster_v3::Cluster c;
  c.set_name(InboundClusterName(in.port));
  EffectivePolicy policy;
  if (svc)
    policy = Policy(FindDestinationRule(*svc), nullptr, service_port);
  SetDurationMs(c.mutable_connect_timeout(),
                in.connect_timeout_ms.value_or(
                    policy.connect_timeout_ms.value_or(config_.mesh.connect_timeout_ms)));
  SetCircuitBreakerDefaults(c);
  ApplyHttpProtocol(c, protocol, true, false, policy.connection_pool, config_.mesh.h2_upgrade);
  if (in.endpoint_address.empty()) {
    c.set_type(cluster_v3::Cluster::ORIGINAL_DST);
    c.set_lb_policy(cluster_v3::Cluster::CLUSTER_PROVIDED);
    c.mutable_cleanup_interval()->set_seconds(kNoCleanupSeconds);
    SetPassthroughBind(c);
    return c;
  }
  c.set_type(cluster_v3::Cluster::STATIC);
  auto* cla = c.mutable_load_assignment();
  cla->set_cluster_name(c.name());
  auto* sa = cla->add_endpoints()
                 ->add_lb_endpoints()
                 ->mutable_endpoint()
                 ->mutable_address()
                 ->mutable_socket_address();
  sa->set_address(in.endpoint_address);
  sa->set_port_value(in.endpoint_port);
  return c;  // 127.0.0.1 or ::1: no upstream_bind_config (istiod's LocalhostAddress rule)
}

// istiod's inbound HTTP connection manager (buildSidecarInboundHTTPOpts): an inline route
// configuration named after the cluster, one virtual host "inbound|http|PORT" for every
// domain, its "default" route to the cluster with no timeout.
google::protobuf::Any Builder::InboundHttpConnectionManager(
    const std::string& stat_prefix, const std::string& cluster, uint32_t port,
    const std::string& decorator_host) const {
  hcm_v3::HttpConnectionManager hcm;
  hcm.set_stat_prefix(stat_prefix);
  // AuthorizationPolicy first, as istiod's buildHTTPConnectionManager orders them (no
  // metadata exchange or authn filter precedes it without mTLS).
  for (const auto& rbac : authz_http_) {
    auto* f = hcm.add_http_filters();
    f->set_name("envoy.filters.http.rbac");
    *f->mutable_typed_config() = rbac;
  }
  auto* rc = hcm.mutable_route_config();
  rc->set_name(cluster);
  rc->mutable_validate_clusters()->set_value(false);
  auto* vh = rc->add_virtual_hosts();
  vh->set_name("inbound|http|" + std::to_string(port));
  vh->add_domains("*");
  auto* r = vh->add_routes();
  r->set_name("default");
  r->mutable_match()->set_prefix("/");
  auto* ra = r->mutable_route();
  ra->set_cluster(cluster);
  ra->mutable_timeout();  // 0s: none, inbound
  ra->mutable_max_stream_duration()->mutable_max_stream_duration();
  ra->mutable_max_stream_duration()->mutable_grpc_timeout_header_max();
  // istiod's trace operation: the Service's FQDN or the Sidecar's synthetic host
  // ("name.namespace"), or ":0" for the passthrough chain.
  r->mutable_decorator()->set_operation(decorator_host + ":" + std::to_string(port) + "/*");
  return FinishConnectionManager(hcm);
}

void Builder::BuildInbound() {
  BuildAuthz();
  std::vector<InboundPort> ports;
  if (sidecar_ && !sidecar_->ingress.empty()) {
    for (const auto& in : sidecar_->ingress) {
      InboundPort p;
      p.cluster = in;
      p.kind = KindOf(in);
      p.protocol = in.protocol.empty() ? Protocol::kUnknown : ParseProtocol(in.protocol);
      p.service_port = in.port;
      p.decorator_host = sidecar_->meta.name + "." + sidecar_->meta.ns;
      ports.push_back(std::move(p));
    }
  } else if (authz_) {
    ports = ServiceInboundPorts(config_, registry_, proxy_, out_.warnings);
  } else {
    return;
  }

  auto tcp_filter = [&](listener_v3::FilterChain& fc, const std::string& cluster, bool rbac) {
    if (rbac) {
      for (const auto& config : authz_tcp_) {
        auto* f = fc.add_filters();
        f->set_name("envoy.filters.network.rbac");
        *f->mutable_typed_config() = config;
      }
    }
    tcp_v3::TcpProxy tcp;
    tcp.set_stat_prefix(cluster);
    tcp.set_cluster(cluster);
    AddAccessLog(tcp.mutable_access_log());
    auto* f = fc.add_filters();
    f->set_name("envoy.filters.network.tcp_proxy");
    f->mutable_typed_config()->PackFrom(tcp);
  };
  auto http_filter = [&](listener_v3::FilterChain& fc, const std::string& stat_prefix,
                         const std::string& cluster, uint32_t port, const std::string& host) {
    auto* f = fc.add_filters();
    f->set_name("envoy.filters.network.http_connection_manager");
    *f->mutable_typed_config() = InboundHttpConnectionManager(stat_prefix, cluster, port, host);
  };

  listener_v3::Listener l;
  l.set_name(kVirtualInbound);
  auto* sa = l.mutable_address()->mutable_socket_address();
  sa->set_address("0.0.0.0");
  sa->set_port_value(kInboundListenPort);
  l.set_traffic_direction(core_v3::INBOUND);
  l.set_continue_on_listener_filters_timeout(true);
  l.mutable_listener_filters_timeout();  // 0s: MeshConfig protocolDetectionTimeout's default

  // Passthrough chains (istiod's buildInboundPassthroughChains): connections to the
  // listener's own port are dropped (they would loop); the rest go to the pod's own
  // address unchanged, HTTP through a connection manager. Policy applies to them too:
  // a port no Service names is no way around it.
  auto blackhole = PlainChain("virtualInbound-blackhole", kInboundListenPort, false);
  blackhole.mutable_filter_chain_match()->clear_transport_protocol();
  tcp_filter(blackhole, kBlackHole, false);
  *l.add_filter_chains() = std::move(blackhole);
  auto catchall_http = PlainChain("virtualInbound-catchall-http", 0, true);
  http_filter(catchall_http, kInboundPassthrough, kInboundPassthrough, 0, "");
  *l.add_filter_chains() = std::move(catchall_http);
  auto catchall_tcp = PlainChain(kVirtualInbound, 0, false);
  tcp_filter(catchall_tcp, kInboundPassthrough, true);
  *l.add_filter_chains() = std::move(catchall_tcp);

  // One chain per inbound port (two when the protocol is detected), in port order.
  std::sort(ports.begin(), ports.end(), [](const InboundPort& a, const InboundPort& b) {
    return a.cluster.port < b.cluster.port;
  });
  std::set<uint32_t> no_http_inspection = {kInboundListenPort};
  for (const InboundPort& in : ports) {
    const uint32_t port = in.cluster.port;
    const std::string cluster = InboundClusterName(port);
    const std::string name = ChainName(port);
    if (in.kind != ChainKind::kSniffed)
      no_http_inspection.insert(port);
    if (in.kind != ChainKind::kTcp) {
      auto fc = PlainChain(name, port, in.kind == ChainKind::kSniffed);
      http_filter(fc, "inbound_" + name, cluster, in.service_port, in.decorator_host);
      *l.add_filter_chains() = std::move(fc);
    }
    if (in.kind != ChainKind::kHttp) {
      auto fc = PlainChain(name, port, false);
      tcp_filter(fc, cluster, true);
      *l.add_filter_chains() = std::move(fc);
    }
    out_.resources.Add(InboundCluster(in.cluster, in.protocol, in.service, in.service_port));
  }

  // original_dst first (the chains match on the destination the connection was
  // redirected from), then http_inspector for the chains that match HTTP by ALPN.
  auto* od = l.add_listener_filters();
  od->set_name("envoy.filters.listener.original_dst");
  od->mutable_typed_config()->PackFrom(
      envoy::extensions::filters::listener::original_dst::v3::OriginalDst());
  auto* hi = l.add_listener_filters();
  hi->set_name("envoy.filters.listener.http_inspector");
  hi->mutable_typed_config()->PackFrom(
      envoy::extensions::filters::listener::http_inspector::v3::HttpInspector());
  DisableOnPorts(*hi, no_http_inspection);

  // istiod's listener access log: connections no chain took (response flag NR).
  if (access_log_) {
    AddAccessLog(l.mutable_access_log());
    for (auto& log : *l.mutable_access_log())
      log.mutable_filter()->mutable_response_flag_filter()->add_flags("NR");
  }
  out_.resources.Add(std::move(l));

  cluster_v3::Cluster passthrough;
  passthrough.set_name(kInboundPassthrough);
  passthrough.set_type(cluster_v3::Cluster::ORIGINAL_DST);
  passthrough.set_lb_policy(cluster_v3::Cluster::CLUSTER_PROVIDED);
  SetDurationMs(passthrough.mutable_connect_timeout(), config_.mesh.connect_timeout_ms);
  SetCircuitBreakerDefaults(passthrough);
  SetPassthroughHttpProtocol(passthrough);  // istiod's buildDefaultPassthroughCluster
  SetPassthroughBind(passthrough);
  out_.resources.Add(std::move(passthrough));
}

}  // namespace sluice::istio::detail
