// KernelSync: keeps the kernel data plane equal to the plan of the config in force.
//
// Called for each snapshot the ConfigStore accepts (the agent subscribes it), it turns each
// accepted snapshot into a KernelPlan and applies only the difference from what it applied before
// (changed and new services upserted, vanished ones deleted) in one Dataplane::Apply — one RCU
// grace period per config change. When planning or applying fails, the error is logged and
// returned, and the services the kernel already serves stay as they were.
#pragma once

#include <map>
#include <string>

#include "sluice/config/snapshot.h"
#include "sluice/kernelsync/plan.h"
#include "sluice/loader/dataplane.h"

namespace sluice::kernelsync {

class KernelSync {
 public:
  explicit KernelSync(Dataplane& dp) : dp_(dp) {}

  [[nodiscard]] Result<void> OnSnapshot(const config::Snapshot& snapshot);
  // Another view of the mesh: the config the sidecars of one namespace and label set get
  // (the agent keeps one xDS stream per such view of its pods). The kernel serves one
  // service per VIP and port for every enrolled pod, so the views are merged: a service
  // only a view sees is added, and a service the views route differently (one needs L7,
  // or its clusters, weights or LB differ) goes to the in-pod proxy for every pod, which
  // routes it with its own view's config. Endpoint differences are not compared (they
  // pass as updates reach the streams). nullptr removes the view.
  [[nodiscard]] Result<void> OnView(const std::string& name, const config::Snapshot* snapshot);

  [[nodiscard]] const KernelPlan& applied() const { return applied_; }
  [[nodiscard]] uint64_t applied_generation() const { return generation_; }

 private:
  Result<void> ApplyMerged(uint64_t generation);

  Dataplane& dp_;
  KernelPlan node_;                          // the plan of the node's own config
  std::map<std::string, KernelPlan> views_;  // by view name (namespace)
  KernelPlan applied_;
  uint64_t generation_ = 0;
};

}  // namespace sluice::kernelsync
