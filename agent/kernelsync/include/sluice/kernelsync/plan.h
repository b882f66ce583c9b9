// What the kernel serves for one sidecar configuration.
//
// Plan() reads the Envoy resources istiod (or Sluice's own translator) produced for a
// sidecar and decides, service by service, where its connections are handled:
//
//  - In the kernel (L4): an HTTP virtual host whose only route is a catch-all to one
//    cluster or weighted clusters, with nothing that needs a request read (no matches,
//    mirroring, faults, rewrites, header changes, explicit retries or timeouts, header
//    or cookie hashing) and no cluster HTTP/2 upstream; and every TCP service
//    (tcp_proxy). Clusters must have their endpoints at hand (EDS or STATIC). The kernel
//    picks the cluster by weight and the endpoint by the cluster's lb_policy.
//  - In the in-pod proxy (L7 redirect): every other service with a VIP — among them the
//    HTTP services whose clusters are HTTP/2 upstream (gRPC and HTTP2 ports, an HTTP port
//    upgraded by h2UpgradePolicy: per-request balancing and HTTP/1.1 -> HTTP/2 need the
//    proxy; reason kHttp2) — and a port-wide
//    catch-all (0.0.0.0 and ::) for HTTP ports that serve hosts without VIPs (ServiceEntry
//    hosts resolved by DNS) and for TLS-passthrough ports (the proxy reads the SNI).
//
// Istio's implicit default retry policy (connect-failure,refused-stream,unavailable,
// cancelled,retriable-status-codes; 2 retries; 503) is not treated as a reason for L7:
// it is on every route istiod emits, and keeping every HTTP service out of the kernel
// for it would defeat the kernel path. A VirtualService that sets retries explicitly
// (anything else) sends the service to the proxy.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "sluice/common/result.h"
#include "sluice/config/snapshot.h"
#include "sluice/loader/service.h"

namespace sluice::kernelsync {

// What a service's decision read of the clusters, so that an update of clusters and
// endpoints alone re-plans only the services that read them (Replan).
struct ServiceInputs {
  std::vector<std::pair<std::string, uint32_t>> destinations;  // (cluster, weight)
  // The decision is Resolve(destinations) alone: in the kernel with those clusters, or
  // in the proxy because one cannot be resolved. Otherwise (several filter chains
  // compared) only a whole plan decides again.
  bool resolvable = false;
  // The destinations are an HTTP virtual host's: an HTTP/2 upstream cluster among them
  // sends the service to the proxy (L7Reason::kHttp2).
  bool http = false;
};

struct KernelPlan {
  std::vector<ServiceSpec> services;  // sorted by name, names unique
  // virtualOutbound's default route is BlackHoleCluster: outboundTrafficPolicy
  // REGISTRY_ONLY for the pods served by this configuration.
  bool registry_only = false;
  // Why each redirected service needs L7, by service name, for logs and sluicectl.
  std::map<std::string, std::string> l7_reasons;

  // For Replan: each service's inputs (services that read no cluster are absent), the
  // services reading each cluster, and the clusters reading each ClusterLoadAssignment.
  std::map<std::string, ServiceInputs> inputs;
  std::map<std::string, std::vector<std::string>> services_by_cluster;
  std::map<std::string, std::vector<std::string>> clusters_by_eds_name;

  const ServiceSpec* Find(const std::string& name) const;
};

[[nodiscard]] Result<KernelPlan> Plan(const config::Snapshot& snapshot);

// What changes in a plan when only clusters and endpoints changed (Replan).
struct PlanEdit {
  std::vector<ServiceSpec> services;  // the services decided again whose spec or reason
                                      // changed, their new spec (sorted by name)
  std::map<std::string, std::optional<std::string>> reasons;   // their new L7 reason, if any
  std::vector<std::pair<std::string, std::string>> eds_names;  // (EDS name, cluster) to index
  size_t replanned = 0;  // services decided again (changed or not)
};

// The change to `plan` (the plan of the snapshot `diff` was taken against) that makes it
// the plan of `snapshot`, when the change allows it: when no listener or route changed,
// only the services reading a changed, added or removed cluster (or its endpoints) are
// decided again. nullopt when only a whole Plan can decide. With Commit, the result
// equals Plan(snapshot) (tests/kernelsync/replan_test.cc checks it).
[[nodiscard]] Result<std::optional<PlanEdit>> Replan(const KernelPlan& plan,
                                                     const config::Snapshot& snapshot,
                                                     const config::Diff& diff);
void Commit(KernelPlan& plan, PlanEdit edit);

// Kernel service names hold 63 bytes; longer names keep their head and a hash suffix.
[[nodiscard]] std::string KernelName(const std::string& name);

}  // namespace sluice::kernelsync
