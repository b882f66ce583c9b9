// KernelSync: keeps the kernel data plane equal to the plan of the config in force.
//
// Called for each snapshot the ConfigStore accepts (the agent subscribes it), it turns each
// accepted snapshot into a KernelPlan and applies only the difference from what it applied before
// (changed and new services upserted, vanished ones deleted) in one Dataplane::Apply — one RCU
// grace period per config change. When planning or applying fails, the error is logged and
// returned, and the services the kernel already serves stay as they were.
#pragma once

#include <map>
#include <optional>
#include <string>

#include "sluice/config/snapshot.h"
#include "sluice/kernelsync/plan.h"
#include "sluice/loader/dataplane.h"

namespace sluice::kernelsync {

// What the last sync did, for tests and the admin page.
struct SyncStats {
  bool incremental = false;         // Replan (only the services reading changed clusters)
  size_t replanned = 0;             // services decided again (every service on a whole plan)
  size_t upserts = 0, deletes = 0;  // kernel services written and removed
};

class KernelSync {
 public:
  explicit KernelSync(Dataplane& dp) : dp_(dp) {}

  // `diff` is the change from the previous snapshot of the same source (the store's
  // diff). With it, when that previous snapshot is the one planned last (diff.base is its
  // id) and only
  // clusters and endpoints changed, only the services reading them are planned, merged
  // and compared (Replan); otherwise the whole snapshot is planned.
  [[nodiscard]] Result<void> OnSnapshot(const config::Snapshot& snapshot,
                                        const config::Diff* diff = nullptr);
  // Another view of the mesh: the config the sidecars of one namespace and label set get
  // (the agent keeps one xDS stream per such view of its pods). The kernel serves one
  // service per VIP and port for every enrolled pod, so the views are merged: a service
  // only a view sees is added, and a service the views route differently (one needs L7,
  // or its clusters, weights or LB differ) goes to the in-pod proxy for every pod, which
  // routes it with its own view's config. Endpoint differences are not compared (they
  // pass as updates reach the streams). nullptr removes the view. `diff` as OnSnapshot.
  [[nodiscard]] Result<void> OnView(const std::string& name, const config::Snapshot* snapshot,
                                    const config::Diff* diff = nullptr);

  [[nodiscard]] const KernelPlan& applied() const { return applied_; }
  [[nodiscard]] uint64_t applied_generation() const { return generation_; }
  [[nodiscard]] const SyncStats& last_sync() const { return last_; }

 private:
  struct Source {
    KernelPlan plan;
    uint64_t generation = 0;   // of the snapshot `plan` was made from
    uint64_t snapshot_id = 0;  // its Snapshot::id (0: unknown)
  };
  // The merged spec and reason of one service name, with `source`'s spec for it taken
  // from `edit` ("" is the node's own source).
  struct Merged {
    ServiceSpec spec;
    std::optional<std::string> reason;
  };
  std::optional<Merged> MergeOne(const std::string& name, const std::string* source,
                                 const PlanEdit* edit) const;
  KernelPlan MergeAll() const;
  Result<void> ApplyMerged(uint64_t generation);
  // An incremental change of one source: plans, merges and writes only its services.
  Result<bool> TryReplan(Source& src, const std::string* view, const config::Snapshot& snapshot,
                         const config::Diff* diff, uint64_t generation);

  Dataplane& dp_;
  Source node_;                          // the plan of the node's own config
  std::map<std::string, Source> views_;  // by view name (namespace)
  KernelPlan applied_;
  uint64_t generation_ = 0;
  SyncStats last_;
};

}  // namespace sluice::kernelsync
