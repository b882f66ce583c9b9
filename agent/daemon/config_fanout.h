// ConfigFanout: where the node agent's configuration goes once it arrives.
//
// Three streams of config reach a node: the node's own xDS stream (a snapshot for the
// whole node), one stream per view of its pods (namespace and labels, view_streams.h),
// and the end of a view when its last pod left. Each one goes to two places: the L7
// process (L7Supervisor: it compiles the config, and refuses it when it must, for the
// pods' proxies; DNS clusters are re-resolved and recompiled there too), handed over
// first because that only queues it, so its compile runs beside the kernel's update; then
// the kernel (KernelSync: its services, its registry-only mode). The kernel side is
// guarded by one lock, which the admin pages and the kernel's access log read through.
#pragma once

#include <functional>
#include <map>
#include <mutex>
#include <string>

#include "kernel_tcp_stats.h"
#include "l7_supervisor.h"
#include "node_agent.h"
#include "sluice/config/snapshot.h"
#include "sluice/kernelsync/kernel_sync.h"
#include "sluice/loader/ip.h"

namespace sluice::agent {

class ConfigFanout {
 public:
  // `node_l7`: hand the node's config to `l7` (false when the agent runs no L7 proxies).
  ConfigFanout(Dataplane& dp, NodeAgent& node, L7Supervisor& l7, bool node_l7);
  ConfigFanout(const ConfigFanout&) = delete;
  ConfigFanout& operator=(const ConfigFanout&) = delete;

  // A snapshot of the node's stream (a ConfigStore subscriber), with the store's diff
  // from the previous one: an update of clusters and endpoints alone is planned and
  // written for the services it touches only (KernelSync).
  void OnNodeSnapshot(const config::SnapshotPtr& s, const config::Diff& diff);
  // A snapshot of a view's stream (ViewStreams' callback, on that stream's thread).
  void OnViewSnapshot(const std::string& view, const config::SnapshotPtr& s,
                      const config::Diff& diff);
  // A view whose stream was stopped: the kernel and the L7 process forget it.
  void OnViewClosed(const std::string& view);

  // The kernel service dialled at this address ("" if none), for the kernel's access log.
  std::string ServiceAt(const SocketAddress& dialled) const;
  // Each kernel service address's Istio service and endpoint workloads (the kernel
  // path's TCP metrics), rebuilt on the first call after a kernel sync (off the config
  // path: an endpoint update does not wait for it).
  std::shared_ptr<const ServiceTelemetryIndex> KernelServiceTelemetry() const;
  // Runs `read` on the kernel sync's state, under the lock its updates take.
  void ReadKernel(const std::function<void(const kernelsync::KernelSync&)>& read) const;

 private:
  // After a kernel sync: the address index when services may have moved (a whole plan),
  // and the telemetry index on its next use.
  void AfterSyncLocked(bool synced);

  NodeAgent& node_;
  L7Supervisor& l7_;
  const bool node_l7_;
  mutable std::mutex mu_;  // the kernel sync's view, shared with the admin handlers
  kernelsync::KernelSync ksync_;
  // Dialled address -> kernel service name, for the kernel's access-log lines (under
  // mu_; rebuilt after a kernel sync that planned everything: an incremental one moves
  // no address).
  std::map<SocketAddress, std::string> service_by_addr_;
  // The snapshots the kernel's services came from (under mu_): their clusters' and
  // endpoints' Istio metadata label the kernel path's metrics.
  config::SnapshotPtr node_snapshot_;
  std::map<std::string, config::SnapshotPtr> view_snapshots_;
  mutable std::shared_ptr<const ServiceTelemetryIndex> telemetry_;  // null: to rebuild
};

}  // namespace sluice::agent
