// A sidecar's inbound side, from its Sidecar resource's ingress listeners: the
// virtualInbound listener (0.0.0.0:15006) with one chain per ingress port and istiod's
// passthrough chains, the "inbound|PORT||" clusters that deliver to the defaultEndpoint
// (or, unset, to the pod's own address on the same port) and InboundPassthroughCluster.
//
// The shape is istiod's (pilot/pkg/networking/core/listener_inbound.go,
// cluster.go buildInboundClustersFromSidecar, cluster_builder.go buildInboundCluster) for
// a proxy with redirected inbound traffic and no mTLS — Sluice terminates no TLS (issue
// 18), so the chains are istiod's plaintext ones (transport_protocol raw_buffer). A proxy
// whose Sidecar has no ingress gets no inbound listener: istiod would build chains from
// the Services selecting the pod, which the node agent's inbound side does not take yet.
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

}  // namespace

// istiod's buildInboundCluster for one ingress listener: STATIC to the defaultEndpoint,
// or ORIGINAL_DST when it is unset. Every inbound cluster but one to loopback leaves from
// 127.0.0.6, so the pod's redirection does not loop the proxy's own connection back to it.
cluster_v3::Cluster Builder::InboundCluster(const SidecarIngress& in) const {
  cluster_v3::Cluster c;
  c.set_name(InboundClusterName(in.port));
  SetDurationMs(c.mutable_connect_timeout(),
                in.connect_timeout_ms.value_or(config_.mesh.connect_timeout_ms));
  SetCircuitBreakerDefaults(c);
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
google::protobuf::Any Builder::InboundHttpConnectionManager(const std::string& stat_prefix,
                                                            const std::string& cluster,
                                                            uint32_t port) const {
  hcm_v3::HttpConnectionManager hcm;
  hcm.set_stat_prefix(stat_prefix);
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
  // istiod's trace operation: the Sidecar's synthetic host ("name.namespace"), or ":0"
  // for the passthrough chain.
  r->mutable_decorator()->set_operation(
      (port && sidecar_ ? sidecar_->meta.name + "." + sidecar_->meta.ns : std::string()) + ":" +
      std::to_string(port) + "/*");
  return FinishConnectionManager(hcm);
}

void Builder::BuildInbound() {
  if (!sidecar_ || sidecar_->ingress.empty())
    return;

  auto tcp_filter = [&](listener_v3::FilterChain& fc, const std::string& cluster) {
    tcp_v3::TcpProxy tcp;
    tcp.set_stat_prefix(cluster);
    tcp.set_cluster(cluster);
    AddAccessLog(tcp.mutable_access_log());
    auto* f = fc.add_filters();
    f->set_name("envoy.filters.network.tcp_proxy");
    f->mutable_typed_config()->PackFrom(tcp);
  };
  auto http_filter = [&](listener_v3::FilterChain& fc, const std::string& stat_prefix,
                         const std::string& cluster, uint32_t port) {
    auto* f = fc.add_filters();
    f->set_name("envoy.filters.network.http_connection_manager");
    *f->mutable_typed_config() = InboundHttpConnectionManager(stat_prefix, cluster, port);
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
  // address unchanged, HTTP through a connection manager.
  auto blackhole = PlainChain("virtualInbound-blackhole", kInboundListenPort, false);
  blackhole.mutable_filter_chain_match()->clear_transport_protocol();
  tcp_filter(blackhole, kBlackHole);
  *l.add_filter_chains() = std::move(blackhole);
  auto catchall_http = PlainChain("virtualInbound-catchall-http", 0, true);
  http_filter(catchall_http, kInboundPassthrough, kInboundPassthrough, 0);
  *l.add_filter_chains() = std::move(catchall_http);
  auto catchall_tcp = PlainChain(kVirtualInbound, 0, false);
  tcp_filter(catchall_tcp, kInboundPassthrough);
  *l.add_filter_chains() = std::move(catchall_tcp);

  // One chain per ingress port (two when the protocol is detected), in port order.
  std::vector<const SidecarIngress*> ingress;
  for (const auto& in : sidecar_->ingress)
    ingress.push_back(&in);
  std::sort(ingress.begin(), ingress.end(),
            [](const SidecarIngress* a, const SidecarIngress* b) { return a->port < b->port; });
  std::set<uint32_t> no_http_inspection = {kInboundListenPort};
  for (const SidecarIngress* in : ingress) {
    const std::string cluster = InboundClusterName(in->port);
    const std::string name = ChainName(in->port);
    const ChainKind kind = KindOf(*in);
    if (kind != ChainKind::kSniffed)
      no_http_inspection.insert(in->port);
    if (kind != ChainKind::kTcp) {
      auto fc = PlainChain(name, in->port, kind == ChainKind::kSniffed);
      http_filter(fc, "inbound_" + name, cluster, in->port);
      *l.add_filter_chains() = std::move(fc);
    }
    if (kind != ChainKind::kHttp) {
      auto fc = PlainChain(name, in->port, false);
      tcp_filter(fc, cluster);
      *l.add_filter_chains() = std::move(fc);
    }
    out_.resources.Add(InboundCluster(*in));
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
  SetPassthroughBind(passthrough);
  out_.resources.Add(std::move(passthrough));
}

}  // namespace sluice::istio::detail
