// GatewayRole: sluice-agent as the container of an ingress or egress gateway pod.
//
// In that pod's network namespace it asks xDS as a router with the pod's labels (istiod
// selects Gateways by them) and serves the listeners it gets with the L7 proxy; no kernel
// data plane. A config that does not compile is refused and the running one kept; a DNS
// answer that changed recompiles the current one. Its admin endpoint has /ready,
// /config_dump, /metrics and /stats/prometheus (Istio's standard metrics, reported as
// Istio's gateways report them: reporter "source", the gateway's own workload the
// source). SIGTERM drains the proxy (requests in flight finish).
#pragma once

#include <signal.h>

#include <chrono>
#include <memory>
#include <mutex>
#include <string>

#include "admin.h"
#include "sluice/config/store.h"
#include "sluice/proxy/proxy.h"
#include "sluice/xds/ads_client.h"
#include "sluice/xds/node.h"

namespace sluice::agent {

struct GatewayOptions {
  xds::AdsClientOptions ads;
  xds::NodeIdentity id;
  std::string pod_ip, pod_labels, admin_address, access_log;
  int workers = 1;
  std::chrono::milliseconds drain{5000};
};

class GatewayRole {
 public:
  explicit GatewayRole(GatewayOptions opts) : g_(std::move(opts)) {}
  GatewayRole(const GatewayRole&) = delete;
  GatewayRole& operator=(const GatewayRole&) = delete;

  // Runs until a signal of `sigs` (blocked in every thread) arrives; the exit status.
  int Run(sigset_t sigs);

 private:
  // Compiles and applies a snapshot; from the xDS stream (with the store's diff: when it
  // starts from the snapshot running, only what changed is compiled) and, when a DNS
  // answer changed, from the DNS watch (no diff: compiled whole). Under `mu_`: one at a
  // time, so an older compile never lands last.
  void Apply(const config::SnapshotPtr& s, const config::Diff* diff = nullptr);

  // The admin pages.
  AdminReply Ready();
  AdminReply ConfigDump();
  AdminReply Metrics();
  AdminReply IstioStats();

  GatewayOptions g_;
  config::ConfigStore store_;
  proxy::ProxyOptions po_;
  std::shared_ptr<proxy::telemetry::IstioStats> istio_;  // this gateway's Istio metrics
  std::mutex mu_;                                        // guards proxy_ and last_error_
  std::unique_ptr<proxy::Proxy> proxy_;
  std::shared_ptr<const proxy::ProxyConfig> compiled_;  // what proxy_ runs
  uint64_t compiled_id_ = 0;                            // ... compiled from this snapshot
  std::string last_error_;
  // Last, so it stops (and calls Apply no more) before the proxy goes.
  std::unique_ptr<xds::AdsClient> client_;
};

}  // namespace sluice::agent
