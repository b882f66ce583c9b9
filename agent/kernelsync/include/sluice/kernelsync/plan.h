// What the kernel serves for one sidecar configuration.
//
// Plan() reads the Envoy resources istiod (or Sluice's own translator) produced for a
// sidecar and decides, service by service, where its connections are handled:
//
//  - In the kernel (L4): an HTTP virtual host whose only route is a catch-all to one
//    cluster or weighted clusters, with nothing that needs a request read (no matches,
//    mirroring, faults, rewrites, header changes, explicit retries or timeouts, header
//    or cookie hashing); and every TCP service (tcp_proxy). Clusters must have their
//    endpoints at hand (EDS or STATIC). The kernel picks the cluster by weight and the
//    endpoint by the cluster's lb_policy.
//  - In the in-pod proxy (L7 redirect): every other service with a VIP, and a port-wide
//    catch-all (0.0.0.0 and ::) for HTTP ports that serve hosts without VIPs (ServiceEntry
//    hosts resolved by DNS) and for TLS-passthrough ports (the proxy reads the SNI).
//
// Istio's implicit default retry policy (connect-failure,refused-stream,unavailable,
// cancelled,retriable-status-codes; 2 retries; 503) is not treated as a reason for L7:
// it is on every route istiod emits, and keeping every HTTP service out of the kernel
// for it would defeat the kernel path. A VirtualService that sets retries explicitly
// (anything else) sends the service to the proxy.
#pragma once

#include <string>
#include <vector>

#include "sluice/common/result.h"
#include "sluice/config/snapshot.h"
#include "sluice/loader/service.h"

namespace sluice::kernelsync {

struct KernelPlan {
  std::vector<ServiceSpec> services;  // sorted by name, names unique
  // virtualOutbound's default route is BlackHoleCluster: outboundTrafficPolicy
  // REGISTRY_ONLY for the pods served by this configuration.
  bool registry_only = false;
  // Why each redirected service needs L7 ("name: reason"), for logs and sluicectl.
  std::vector<std::string> l7_reasons;
};

[[nodiscard]] Result<KernelPlan> Plan(const config::Snapshot& snapshot);

// Kernel service names hold 63 bytes; longer names keep their head and a hash suffix.
[[nodiscard]] std::string KernelName(const std::string& name);

}  // namespace sluice::kernelsync
