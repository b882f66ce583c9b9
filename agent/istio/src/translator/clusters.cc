// CDS and EDS: an outbound cluster per visible service port and DestinationRule subset
// ("outbound|PORT|SUBSET|FQDN"), its DestinationRule traffic policy (load balancer,
// connect timeout, connection pool, port-level settings), its upstream HTTP protocol
// (HttpProtocolOptions: HTTP/2, or the client's), EDS or DNS endpoints, and the BlackHole and
// Passthrough clusters. istiod's counterparts are pilot/pkg/networking/core/cluster.go,
// cluster_builder.go and cluster_traffic_policy.go.
#include <map>
#include <tuple>

#include "envoy/extensions/upstreams/http/v3/http_protocol_options.pb.h"
#include "translator/builder.h"

namespace sluice::istio::detail {

namespace {

namespace upstream_http_v3 = envoy::extensions::upstreams::http::v3;

constexpr uint32_t kMaxU32 = 4294967295u;
constexpr char kHttpProtocolOptionsKey[] = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

void SetCircuitBreakers(cluster_v3::Cluster& c) {
  auto* t = c.mutable_circuit_breakers()->add_thresholds();
  t->mutable_max_connections()->set_value(kMaxU32);
  t->mutable_max_pending_requests()->set_value(kMaxU32);
  t->mutable_max_requests()->set_value(kMaxU32);
  t->mutable_max_retries()->set_value(kMaxU32);
  t->set_track_remaining(true);
}

// istiod's protocol.Instance IsHTTP2 (HTTP2, GRPC, GRPC-Web) and IsHTTP (those and HTTP;
// not a sniffed port).
bool IsHttp2Protocol(Protocol p) {
  return p == Protocol::kHttp2 || p == Protocol::kGrpc;
}
bool IsExplicitHttp(Protocol p) {
  return p == Protocol::kHttp || IsHttp2Protocol(p);
}

// istiod's shouldH2Upgrade (outbound clusters only): useClientProtocol never upgrades;
// the DestinationRule's UPGRADE does on any port (the user says it is HTTP),
// DO_NOT_UPGRADE never; else the mesh's h2UpgradePolicy, on HTTP ports only (a sniffed
// port keeps the client's protocol).
bool ShouldH2Upgrade(Protocol p, const ConnectionPool& pool, H2UpgradePolicy mesh) {
  if (pool.use_client_protocol)
    return false;
  if (pool.h2_upgrade == H2UpgradePolicy::kUpgrade)
    return true;
  if (pool.h2_upgrade == H2UpgradePolicy::kDoNotUpgrade)
    return false;
  if (!IsExplicitHttp(p))
    return false;
  return mesh == H2UpgradePolicy::kUpgrade;
}

// istiod's setUseDownstreamProtocol: HTTP/1.1 or HTTP/2 upstream as the client spoke,
// keeping explicit HTTP/1.1 options if there were any.
void SetUseDownstreamProtocol(upstream_http_v3::HttpProtocolOptions& o) {
  core_v3::Http1ProtocolOptions h1;
  if (o.has_explicit_http_config() && o.explicit_http_config().has_http_protocol_options())
    h1 = o.explicit_http_config().http_protocol_options();
  auto* d = o.mutable_use_downstream_protocol_config();
  *d->mutable_http_protocol_options() = std::move(h1);
  d->mutable_http2_protocol_options();
}

// istiod's setH2Options: HTTP/2 upstream, unless the upstream protocol is already chosen.
void SetH2Options(upstream_http_v3::HttpProtocolOptions& o) {
  if (o.upstream_protocol_options_case() ==
      upstream_http_v3::HttpProtocolOptions::UPSTREAM_PROTOCOL_OPTIONS_NOT_SET)
    o.mutable_explicit_http_config()->mutable_http2_protocol_options();
}

// clusterWrapper.build(): the options under their extension key, HTTP/1.1 explicitly
// when nothing chose the upstream protocol (Envoy requires one).
void PackHttpProtocolOptions(cluster_v3::Cluster& c, upstream_http_v3::HttpProtocolOptions o) {
  if (o.upstream_protocol_options_case() ==
      upstream_http_v3::HttpProtocolOptions::UPSTREAM_PROTOCOL_OPTIONS_NOT_SET)
    o.mutable_explicit_http_config()->mutable_http_protocol_options();
  (*c.mutable_typed_extension_protocol_options())[kHttpProtocolOptionsKey].PackFrom(o);
}

void SetLbPolicy(cluster_v3::Cluster& c, const std::optional<LoadBalancer>& lb) {
  if (lb && lb->consistent_hash) {
    const auto& h = *lb->consistent_hash;
    if (h.maglev) {
      c.set_lb_policy(cluster_v3::Cluster::MAGLEV);
      if (h.table_size)
        c.mutable_maglev_lb_config()->mutable_table_size()->set_value(h.table_size);
    } else {
      c.set_lb_policy(cluster_v3::Cluster::RING_HASH);
      if (h.table_size) {
        c.mutable_ring_hash_lb_config()->mutable_minimum_ring_size()->set_value(h.table_size);
      }
    }
    return;
  }
  auto simple = lb ? lb->simple : LoadBalancer::Simple::kUnset;
  switch (simple) {
    case LoadBalancer::Simple::kRoundRobin:
      c.set_lb_policy(cluster_v3::Cluster::ROUND_ROBIN);
      break;
    case LoadBalancer::Simple::kRandom:
      c.set_lb_policy(cluster_v3::Cluster::RANDOM);
      break;
    default:  // unset and LEAST_REQUEST: Istio's default
      c.set_lb_policy(cluster_v3::Cluster::LEAST_REQUEST);
      break;
  }
}

// istiod's locality of an endpoint, from its pod's labels: `istio-locality`
// ("region.zone.subzone"), else topology.kubernetes.io/region and /zone (node labels on a
// real cluster, copied to the pod here) and topology.istio.io/subzone. Empty if none.
// istiod's telemetry metadata on an endpoint (AppendLbEndpointMetadata):
// filter_metadata.istio.workload = "name;namespace;canonical service;canonical revision
// (empty for "latest");cluster", the canonical pair as labels.CanonicalService derives it.
// Proxies label Istio's metrics with it when the peer is not otherwise known.
void SetWorkloadMetadata(endpoint_v3::LbEndpoint& lb, const RegistryEndpoint& ep,
                         const std::string& ns) {
  auto first = [&](std::initializer_list<const char*> keys, const std::string& def) {
    for (const char* k : keys)
      if (auto it = ep.labels.find(k); it != ep.labels.end())
        return it->second;
    return def;
  };
  std::string revision =
      first({"service.istio.io/canonical-revision", "app.kubernetes.io/version", "version"}, "");
  if (revision == "latest")
    revision.clear();
  const std::string value =
      ep.workload + ";" + (ep.workload.empty() ? "" : ns) + ";" +
      first({"service.istio.io/canonical-name", "app.kubernetes.io/name", "app"}, ep.workload) +
      ";" + revision + ";Kubernetes";
  (*(*lb.mutable_metadata()->mutable_filter_metadata())["istio"].mutable_fields())["workload"]
      .set_string_value(value);
}

core_v3::Locality LocalityOf(const Labels& labels) {
  core_v3::Locality l;
  auto get = [&](const char* key) -> std::string {
    auto it = labels.find(key);
    return it == labels.end() ? "" : it->second;
  };
  if (std::string v = get("istio-locality"); !v.empty()) {
    auto dot = v.find('.');
    l.set_region(v.substr(0, dot));
    if (dot != std::string::npos) {
      auto dot2 = v.find('.', dot + 1);
      l.set_zone(v.substr(dot + 1, dot2 == std::string::npos ? std::string::npos : dot2 - dot - 1));
      if (dot2 != std::string::npos)
        l.set_sub_zone(v.substr(dot2 + 1));
    }
    return l;
  }
  l.set_region(get("topology.kubernetes.io/region"));
  l.set_zone(get("topology.kubernetes.io/zone"));
  l.set_sub_zone(get("topology.istio.io/subzone"));
  return l;
}

}  // namespace

// The endpoints of one service port, filtered by the subset's labels, grouped by
// locality as istiod groups them: every group names its locality (empty when the pods
// carry none — gRPC clients reject a group without one) and weighs the sum of its
// endpoints' weights. DNS clusters with no endpoints resolve the hostname itself.
endpoint_v3::ClusterLoadAssignment Endpoints(const RegistryService& svc, const RegistryPort& port,
                                             const Subset* subset, const std::string& name,
                                             bool dns) {
  endpoint_v3::ClusterLoadAssignment cla;
  cla.set_cluster_name(name);
  if (dns && svc.endpoints.empty()) {
    auto* group = cla.add_endpoints();
    group->mutable_locality();
    auto* lb = group->add_lb_endpoints();
    auto* sa = lb->mutable_endpoint()->mutable_address()->mutable_socket_address();
    sa->set_address(svc.hostname);
    sa->set_port_value(port.port);
    lb->mutable_load_balancing_weight()->set_value(1);
    return cla;
  }
  // Groups in order of (region, zone, subzone), so the output is deterministic.
  std::map<std::tuple<std::string, std::string, std::string>, endpoint_v3::LocalityLbEndpoints>
      groups;
  for (const auto& ep : svc.endpoints) {
    if (subset && !SelectorMatches(subset->labels, ep.labels))
      continue;
    auto pit = ep.ports.find(port.port);
    if (pit == ep.ports.end())
      continue;
    core_v3::Locality loc = LocalityOf(ep.labels);
    auto& group = groups[{loc.region(), loc.zone(), loc.sub_zone()}];
    *group.mutable_locality() = std::move(loc);
    auto* lb = group.add_lb_endpoints();
    auto* sa = lb->mutable_endpoint()->mutable_address()->mutable_socket_address();
    sa->set_address(ep.address);
    sa->set_port_value(pit->second);
    if (!dns)
      lb->set_health_status(core_v3::HEALTHY);
    SetWorkloadMetadata(*lb, ep, svc.ns);
    lb->mutable_load_balancing_weight()->set_value(ep.weight);
    if (!dns) {
      auto* w = group.mutable_load_balancing_weight();
      w->set_value(w->value() + ep.weight);
    }
  }
  for (auto& [key, group] : groups)
    *cla.add_endpoints() = std::move(group);
  return cla;
}

namespace {

// The connection pool as istiod merges it (GetPortLevelTrafficPolicy,
// MergeSubsetTrafficPolicy): a port's settings replace the policy's whole, so its
// connectionPool (or none) is the one; a subset's replaces the DestinationRule's when it
// has one or port-level settings for the port.
void ApplyPolicy(const TrafficPolicy& tp, uint32_t port, EffectivePolicy& eff, bool subset) {
  if (tp.load_balancer)
    eff.lb = tp.load_balancer;
  if (tp.connect_timeout_ms)
    eff.connect_timeout_ms = tp.connect_timeout_ms;
  const TrafficPolicy::PortPolicy* own = nullptr;
  for (const auto& pl : tp.port_level) {
    if (pl.port != port)
      continue;
    own = &pl;
    if (pl.load_balancer)
      eff.lb = pl.load_balancer;
    if (pl.connect_timeout_ms)
      eff.connect_timeout_ms = pl.connect_timeout_ms;
  }
  if (own)
    eff.connection_pool = own->connection_pool;
  else if (!subset || tp.connection_pool)
    eff.connection_pool = tp.connection_pool;
}

}  // namespace

void ApplyHttpProtocol(cluster_v3::Cluster& c, Protocol protocol, bool sidecar, bool outbound,
                       const std::optional<ConnectionPool>& pool, H2UpgradePolicy mesh_h2) {
  std::optional<upstream_http_v3::HttpProtocolOptions> opts;
  auto options = [&]() -> upstream_http_v3::HttpProtocolOptions& {
    if (!opts)
      opts.emplace();
    return *opts;
  };
  // setUpstreamProtocol (buildCluster): HTTP/2 ports are HTTP/2 upstream; a sniffed port
  // of a sidecar follows the client (a gateway does not sniff).
  if (IsHttp2Protocol(protocol))
    SetH2Options(options());
  else if (sidecar && protocol == Protocol::kUnknown)
    SetUseDownstreamProtocol(options());
  // applyTrafficPolicy: the h2 upgrade (outbound only), then applyConnectionPool.
  const ConnectionPool cp = pool.value_or(ConnectionPool{});
  if (outbound && ShouldH2Upgrade(protocol, cp, mesh_h2))
    SetH2Options(options());
  if (c.circuit_breakers().thresholds_size() == 0)
    SetCircuitBreakers(c);
  auto* t = c.mutable_circuit_breakers()->mutable_thresholds(0);
  if (cp.http2_max_requests > 0)
    t->mutable_max_requests()->set_value(cp.http2_max_requests);
  if (cp.http1_max_pending_requests > 0)
    t->mutable_max_pending_requests()->set_value(cp.http1_max_pending_requests);
  if (cp.max_retries > 0)
    t->mutable_max_retries()->set_value(cp.max_retries);
  if (cp.max_connections > 0)
    t->mutable_max_connections()->set_value(cp.max_connections);
  if (cp.max_concurrent_streams > 0) {
    auto& o = options();
    o.mutable_common_http_protocol_options();
    if (o.has_explicit_http_config() && o.explicit_http_config().has_http2_protocol_options()) {
      o.mutable_explicit_http_config()
          ->mutable_http2_protocol_options()
          ->mutable_max_concurrent_streams()
          ->set_value(cp.max_concurrent_streams);
    }
  }
  if (cp.use_client_protocol)
    SetUseDownstreamProtocol(options());
  if (opts)
    PackHttpProtocolOptions(c, std::move(*opts));
}

void SetPassthroughHttpProtocol(cluster_v3::Cluster& c) {
  upstream_http_v3::HttpProtocolOptions o;
  o.mutable_common_http_protocol_options()->mutable_idle_timeout()->set_seconds(300);
  SetUseDownstreamProtocol(o);
  PackHttpProtocolOptions(c, std::move(o));
}

std::string ClusterName(uint32_t port, const std::string& subset, const std::string& host) {
  return "outbound|" + std::to_string(port) + "|" + subset + "|" + host;
}

EffectivePolicy Builder::Policy(const DestinationRule* dr, const Subset* subset, uint32_t port) {
  EffectivePolicy eff;
  if (dr && dr->traffic_policy)
    ApplyPolicy(*dr->traffic_policy, port, eff, false);
  if (subset && subset->traffic_policy)
    ApplyPolicy(*subset->traffic_policy, port, eff, true);
  return eff;
}

void Builder::BuildClusters() {
  for (const RegistryService* svc_ptr : visible_) {
    const RegistryService& svc = *svc_ptr;
    const DestinationRule* dr = FindDestinationRule(svc);
    for (const auto& port : svc.ports) {
      if (port.protocol == Protocol::kUdp)
        continue;
      AddServiceCluster(svc, port, dr, nullptr);
      if (!dr)
        continue;
      for (const auto& subset : dr->subsets)
        AddServiceCluster(svc, port, dr, &subset);
    }
  }

  cluster_v3::Cluster blackhole;
  blackhole.set_name(kBlackHole);
  blackhole.set_type(cluster_v3::Cluster::STATIC);
  SetDurationMs(blackhole.mutable_connect_timeout(), config_.mesh.connect_timeout_ms);
  out_.resources.Add(std::move(blackhole));

  cluster_v3::Cluster passthrough;
  passthrough.set_name(kPassthrough);
  passthrough.set_type(cluster_v3::Cluster::ORIGINAL_DST);
  passthrough.set_lb_policy(cluster_v3::Cluster::CLUSTER_PROVIDED);
  SetDurationMs(passthrough.mutable_connect_timeout(), config_.mesh.connect_timeout_ms);
  SetCircuitBreakers(passthrough);
  SetPassthroughHttpProtocol(passthrough);
  out_.resources.Add(std::move(passthrough));
}

void Builder::AddServiceCluster(const RegistryService& svc, const RegistryPort& port,
                                const DestinationRule* dr, const Subset* subset) {
  const std::string subset_name = subset ? subset->name : "";
  cluster_v3::Cluster c;
  c.set_name(ClusterName(port.port, subset_name, svc.hostname));
  EffectivePolicy policy = Policy(dr, subset, port.port);
  SetDurationMs(c.mutable_connect_timeout(),
                policy.connect_timeout_ms.value_or(config_.mesh.connect_timeout_ms));

  bool passthrough = svc.resolution == RegistryService::Resolution::kPassthrough ||
                     (policy.lb && policy.lb->simple == LoadBalancer::Simple::kPassthrough);
  if (passthrough) {
    c.set_type(cluster_v3::Cluster::ORIGINAL_DST);
    c.set_lb_policy(cluster_v3::Cluster::CLUSTER_PROVIDED);
  } else {
    SetLbPolicy(c, policy.lb);
    switch (svc.resolution) {
      case RegistryService::Resolution::kDnsLb:
      case RegistryService::Resolution::kDnsRoundRobinLb:
        c.set_type(svc.resolution == RegistryService::Resolution::kDnsLb
                       ? cluster_v3::Cluster::STRICT_DNS
                       : cluster_v3::Cluster::LOGICAL_DNS);
        c.set_dns_lookup_family(cluster_v3::Cluster::V4_ONLY);
        c.mutable_dns_refresh_rate()->set_seconds(60);
        c.set_respect_dns_ttl(true);
        *c.mutable_load_assignment() = Endpoints(svc, port, subset, c.name(), true);
        break;
      default:
        c.set_type(cluster_v3::Cluster::EDS);
        *c.mutable_eds_cluster_config()->mutable_eds_config() = AdsSource();
        c.mutable_eds_cluster_config()->set_service_name(c.name());
        out_.resources.Add(Endpoints(svc, port, subset, c.name(), false));
        break;
    }
  }
  SetCircuitBreakers(c);
  // The upstream HTTP protocol and the connection pool's limits (istiod's
  // setUpstreamProtocol, applyH2Upgrade, applyConnectionPool).
  ApplyHttpProtocol(c, port.protocol, proxy_.kind == ProxySpec::Kind::kSidecar, true,
                    policy.connection_pool, config_.mesh.h2_upgrade);

  // istiod's metadata: which service (and DestinationRule, subset) a cluster serves;
  // `proxy-config cluster` reads its DESTINATION RULE column from here.
  auto& istio = (*c.mutable_metadata()->mutable_filter_metadata())["istio"];
  auto& fields = *istio.mutable_fields();
  if (dr) {
    fields["config"].set_string_value("/apis/networking.istio.io/v1alpha3/namespaces/" +
                                      dr->meta.ns + "/destination-rule/" + dr->meta.name);
  }
  fields["default_original_port"].set_number_value(port.port);
  if (subset)
    fields["subset"].set_string_value(subset->name);
  auto* service = fields["services"].mutable_list_value()->add_values()->mutable_struct_value();
  (*service->mutable_fields())["host"].set_string_value(svc.hostname);
  (*service->mutable_fields())["name"].set_string_value(svc.name);
  (*service->mutable_fields())["namespace"].set_string_value(svc.ns);

  out_.resources.Add(std::move(c));
}

}  // namespace sluice::istio::detail
