// Istio's TCP metrics of the kernel path: kernel records to the proxy's series
// (kernel_tcp_stats.h).
#include "kernel_tcp_stats.h"

#include <unordered_map>
#include <utility>

#include "envoy/config/cluster/v3/cluster.pb.h"
#include "envoy/config/endpoint/v3/endpoint.pb.h"
#include "sluice/config/validate.h"

namespace sluice::agent {

namespace telemetry = proxy::telemetry;

namespace {

const envoy::config::cluster::v3::Cluster* FindCluster(
    const std::vector<config::SnapshotPtr>& snapshots, const std::string& name) {
  for (const auto& s : snapshots) {
    if (!s)
      continue;
    if (auto it = s->clusters.find(name); it != s->clusters.end())
      return it->second.get();
  }
  return nullptr;
}

const envoy::config::endpoint::v3::ClusterLoadAssignment* FindEndpoints(
    const std::vector<config::SnapshotPtr>& snapshots,
    const envoy::config::cluster::v3::Cluster& c) {
  using envoy::config::cluster::v3::Cluster;
  if (c.has_type() && c.type() == Cluster::STATIC)
    return &c.load_assignment();
  const std::string& eds = config::EdsServiceName(c);
  for (const auto& s : snapshots) {
    if (!s)
      continue;
    if (auto it = s->endpoints.find(eds); it != s->endpoints.end())
      return it->second.get();
  }
  return nullptr;
}

}  // namespace

ServiceTelemetryIndex IndexServiceTelemetry(const kernelsync::KernelPlan& applied,
                                            const std::vector<config::SnapshotPtr>& snapshots) {
  ServiceTelemetryIndex out;
  for (const auto& svc : applied.services) {
    if (svc.redirect_to_proxy)
      continue;  // the in-pod proxy reports these connections itself
    ServiceTelemetry t;
    for (const auto& cs : svc.clusters) {
      const auto* c = FindCluster(snapshots, cs.name);
      if (!c)
        continue;
      const telemetry::Service* service = telemetry::ClusterService(*c);
      if (!t.service)
        t.service = service;
      const auto* cla = FindEndpoints(snapshots, *c);
      if (!cla)
        continue;
      for (const auto& locality : cla->endpoints()) {
        for (const auto& lbe : locality.lb_endpoints()) {
          if (!lbe.endpoint().address().has_socket_address())
            continue;
          const auto& sa = lbe.endpoint().address().socket_address();
          auto ip = IpAddress::Parse(sa.address());
          if (!ip || sa.port_value() == 0 || sa.port_value() > 65535)
            continue;
          const SocketAddress ep{*ip, static_cast<uint16_t>(sa.port_value())};
          t.endpoints.try_emplace(ep, telemetry::EndpointWorkload(lbe.metadata()));
          if (service != t.service)
            t.endpoint_services.try_emplace(ep, service);
        }
      }
    }
    for (const auto& vip : svc.vips)
      out[SocketAddress{vip, svc.port}] = t;
  }
  return out;
}

std::vector<telemetry::Sample> KernelTcpSamples(const std::vector<TcpMetricsRecord>& records,
                                                const KernelTcpLookups& lookups,
                                                std::size_t max_series) {
  struct Totals {
    uint64_t opened = 0, closed = 0, sent = 0, received = 0;
  };
  std::unordered_map<telemetry::SeriesKey, Totals, telemetry::SeriesKeyHash> series;
  std::map<const telemetry::Workload*, std::size_t> per_pod;
  for (const auto& r : records) {
    auto pod = lookups.pods.find(r.netns_cookie);
    if (pod == lookups.pods.end())
      continue;  // the pod left the node: its series went with it
    telemetry::SeriesKey k;
    k.self = pod->second;
    k.kind = telemetry::kTcp;
    if (lookups.services) {
      if (auto t = lookups.services->find(r.service); t != lookups.services->end()) {
        k.service = t->second.service;
        if (auto e = t->second.endpoint_services.find(r.backend);
            e != t->second.endpoint_services.end())
          k.service = e->second;
        if (auto e = t->second.endpoints.find(r.backend); e != t->second.endpoints.end())
          k.peer_eds = e->second;
      }
    }
    if (auto p = lookups.pod_ips.find(r.backend.ip); p != lookups.pod_ips.end())
      k.peer_local = p->second;
    if (!series.contains(k) && per_pod[k.self] >= max_series) {
      // As IstioStats::Get: one overflow series per reporter and protocol.
      k = telemetry::SeriesKey{.kind =
                                   static_cast<uint8_t>(telemetry::kTcp | telemetry::kOverflow)};
    } else if (!series.contains(k)) {
      per_pod[k.self]++;
    }
    Totals& t = series[k];
    // The proxy's meaning: received = from the client, sent = to the client.
    t.opened += r.opened;
    t.closed += r.closed;
    t.sent += r.client_received;
    t.received += r.client_sent;
  }
  std::vector<telemetry::Sample> out;
  out.reserve(series.size());
  for (const auto& [k, t] : series) {
    telemetry::Sample s;
    s.labels = telemetry::Labels(k);
    s.tcp = true;
    s.tcp_opened = t.opened;
    s.tcp_closed = t.closed;
    s.tcp_sent = t.sent;
    s.tcp_received = t.received;
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace sluice::agent
