// Istio's TCP metrics of the kernel path: the records sockops keeps per (client pod,
// service address, endpoint) in sluice_tcp_metrics (Dataplane::TcpMetrics), turned into
// the same series the in-pod proxy reports for a TCP connection it carries
// (reporter="source", request_protocol="tcp", response_flags "-"), so /stats/prometheus
// shows one set of istio_tcp_* series whichever path served a connection.
//
// Labels come from what the agent knows, by the proxy's own rules (istio_stats.h
// Labels()): the source is the pod whose network namespace made the connection
// (PodWorkload from its labels); destination_service the service of the cluster the
// endpoint belongs to (istiod's cluster metadata istio.services, ClusterService());
// destination_workload the endpoint's metadata istio.workload (EndpointWorkload()), else
// the pod of this node at the endpoint's address. A pod that left the node takes its
// series with it, as a sidecar's scrape does.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "sluice/config/snapshot.h"
#include "sluice/kernelsync/plan.h"
#include "sluice/loader/dataplane.h"
#include "sluice/proxy/istio_stats.h"

namespace sluice::agent {

// The service a kernel service address serves and the workload of each of its endpoints
// (nullptr: unknown), as istiod's metadata says.
struct ServiceTelemetry {
  const proxy::telemetry::Service* service = nullptr;
  std::map<SocketAddress, const proxy::telemetry::Workload*> endpoints;
  // An endpoint's own cluster's service when the clusters differ (rare: one
  // VirtualService route to two services); absent: `service`.
  std::map<SocketAddress, const proxy::telemetry::Service*> endpoint_services;
};
using ServiceTelemetryIndex = std::map<SocketAddress, ServiceTelemetry>;  // by service address

// The index for the services the kernel serves: each cluster looked up by name in the
// snapshots (the first that has it), its endpoints' metadata in its load assignment.
ServiceTelemetryIndex IndexServiceTelemetry(const kernelsync::KernelPlan& applied,
                                            const std::vector<config::SnapshotPtr>& snapshots);

struct KernelTcpLookups {
  std::map<uint64_t, const proxy::telemetry::Workload*> pods;      // by network-namespace cookie
  std::map<IpAddress, const proxy::telemetry::Workload*> pod_ips;  // this node's pods
  std::shared_ptr<const ServiceTelemetryIndex> services;
};

// One sample per label set (records that resolve alike are summed). Each pod has at
// most `max_series` series; past that, its records go to the overflow series, as in the
// proxy (IstioStats). Records of network namespaces that are no pod here are left out.
std::vector<proxy::telemetry::Sample> KernelTcpSamples(const std::vector<TcpMetricsRecord>& records,
                                                       const KernelTcpLookups& lookups,
                                                       std::size_t max_series = 2000);

}  // namespace sluice::agent
