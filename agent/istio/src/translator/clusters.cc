// CDS and EDS: an outbound cluster per visible service port and DestinationRule subset
// ("outbound|PORT|SUBSET|FQDN"), its DestinationRule traffic policy (load balancer,
// connect timeout, port-level settings), EDS or DNS endpoints, and the BlackHole and
// Passthrough clusters. istiod's counterparts are pilot/pkg/networking/core/cluster.go,
// cluster_builder.go and cluster_traffic_policy.go.
#include <map>
#include <tuple>

#include "translator/builder.h"

namespace sluice::istio::detail {

namespace {

constexpr uint32_t kMaxU32 = 4294967295u;

void SetCircuitBreakers(cluster_v3::Cluster& c) {
  auto* t = c.mutable_circuit_breakers()->add_thresholds();
  t->mutable_max_connections()->set_value(kMaxU32);
  t->mutable_max_pending_requests()->set_value(kMaxU32);
  t->mutable_max_requests()->set_value(kMaxU32);
  t->mutable_max_retries()->set_value(kMaxU32);
  t->set_track_remaining(true);
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

void ApplyPolicy(const TrafficPolicy& tp, uint32_t port, EffectivePolicy& eff) {
  if (tp.load_balancer)
    eff.lb = tp.load_balancer;
  if (tp.connect_timeout_ms)
    eff.connect_timeout_ms = tp.connect_timeout_ms;
  for (const auto& pl : tp.port_level) {
    if (pl.port != port)
      continue;
    if (pl.load_balancer)
      eff.lb = pl.load_balancer;
    if (pl.connect_timeout_ms)
      eff.connect_timeout_ms = pl.connect_timeout_ms;
  }
}

}  // namespace

std::string ClusterName(uint32_t port, const std::string& subset, const std::string& host) {
  return "outbound|" + std::to_string(port) + "|" + subset + "|" + host;
}

EffectivePolicy Builder::Policy(const DestinationRule* dr, const Subset* subset, uint32_t port) {
  EffectivePolicy eff;
  if (dr && dr->traffic_policy)
    ApplyPolicy(*dr->traffic_policy, port, eff);
  if (subset && subset->traffic_policy)
    ApplyPolicy(*subset->traffic_policy, port, eff);
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
