// The node agent's config fan-out: node and view snapshots to the kernel and the L7
// process (config_fanout.h).
#include "config_fanout.h"

namespace sluice::agent {

ConfigFanout::ConfigFanout(Dataplane& dp, NodeAgent& node, L7Supervisor& l7, bool node_l7)
    : node_(node), l7_(l7), node_l7_(node_l7), ksync_(dp) {}

void ConfigFanout::AfterSyncLocked(bool synced) {
  telemetry_ = nullptr;
  if (synced && ksync_.last_sync().incremental)
    return;
  service_by_addr_.clear();
  for (const auto& svc : ksync_.applied().services)
    for (const auto& v : svc.vips)
      service_by_addr_[SocketAddress{v, svc.port}] = svc.name;
}

void ConfigFanout::OnNodeSnapshot(const config::SnapshotPtr& s, const config::Diff& diff) {
  // The L7 process first: handing over only queues (its compile runs there, beside the
  // kernel sync below). Its config holds every service, whichever side serves it.
  if (node_l7_)
    l7_.SetNodeConfig(s, &diff);  // compiled (and refused, if it must be) by the L7 process
  bool registry_only;
  {
    std::lock_guard lock(mu_);
    // Errors are logged; the kernel keeps its last good state.
    const bool synced = ksync_.OnSnapshot(*s, &diff).has_value();
    node_snapshot_ = s;
    AfterSyncLocked(synced);
    registry_only = ksync_.applied().registry_only;
  }
  node_.SetRegistryOnly(registry_only);
}

void ConfigFanout::OnViewSnapshot(const std::string& view, const config::SnapshotPtr& s,
                                  const config::Diff& diff) {
  l7_.SetViewConfig(view, s, &diff);
  std::lock_guard lock(mu_);
  // Errors logged; the last good view stays.
  const bool synced = ksync_.OnView(view, s.get(), &diff).has_value();
  view_snapshots_[view] = s;
  AfterSyncLocked(synced);
}

void ConfigFanout::OnViewClosed(const std::string& view) {
  l7_.SetViewConfig(view, nullptr);
  std::lock_guard lock(mu_);
  (void)ksync_.OnView(view, nullptr);
  view_snapshots_.erase(view);
  AfterSyncLocked(false);
}

std::string ConfigFanout::ServiceAt(const SocketAddress& dialled) const {
  std::lock_guard lock(mu_);
  auto it = service_by_addr_.find(dialled);
  return it == service_by_addr_.end() ? std::string() : it->second;
}

std::shared_ptr<const ServiceTelemetryIndex> ConfigFanout::KernelServiceTelemetry() const {
  std::lock_guard lock(mu_);
  if (!telemetry_) {
    std::vector<config::SnapshotPtr> snapshots{node_snapshot_};
    for (const auto& [view, s] : view_snapshots_)
      snapshots.push_back(s);
    telemetry_ = std::make_shared<const ServiceTelemetryIndex>(
        IndexServiceTelemetry(ksync_.applied(), snapshots));
  }
  return telemetry_;
}

void ConfigFanout::ReadKernel(
    const std::function<void(const kernelsync::KernelSync&)>& read) const {
  std::lock_guard lock(mu_);
  read(ksync_);
}

}  // namespace sluice::agent
