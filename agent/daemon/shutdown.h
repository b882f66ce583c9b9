// What the node agent leaves behind when it stops (issue 19): an upgrade or a reboot
// keeps everything, an uninstall removes everything.
//
// On SIGTERM (or SIGINT) the agent looks up its own DaemonSet (--daemonset NS/NAME):
//   - present (and not being deleted), or the API server unreachable or answering an
//     error → an upgrade, a reboot or a rollout: the kernel state, the pins and the
//     conflist entry stay, so traffic keeps flowing, and the next agent adopts the pins
//     (no second set of programs);
//   - 404, or its metadata.deletionTimestamp set (a foreground deletion waits for its
//     pods), or 401 (the agent's token refused: its service account was deleted, which
//     `kubectl delete -k` does; Istio's CNI agent reads a 401 the same way; a 403 is
//     not, as RBAC may be edited for other reasons) → an uninstall: the conflist entry goes (the
//     original back, as install-cni.sh --uninstall does), every pod is unenrolled, the programs are
//     detached and every pin under the pin root is removed (Dataplane::Cleanup, what
//     `sluicectl bpf cleanup` does), and the files the agent wrote for sluice-cni go.
// Doubt means upgrade: removing the data plane of a node whose agent is merely being
// restarted would cut every enrolled pod's traffic, while a missed uninstall leaves state
// that `install-cni.sh --uninstall` and `sluicectl bpf cleanup` still remove.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "sluice/common/result.h"
#include "sluice/loader/dataplane.h"

namespace sluice::agent {

// "NS/NAME" of --daemonset.
struct DaemonSetRef {
  std::string ns, name;
  [[nodiscard]] static Result<DaemonSetRef> Parse(const std::string& text);
  std::string ToString() const { return ns + "/" + name; }
};

// kube::GetDaemonSet's answer: the object, nullopt when it is gone (404), or an error.
using DaemonSetLookup = std::function<Result<std::optional<nlohmann::json>>()>;

struct StopDecision {
  bool uninstall = false;
  std::string why;  // for the log
};

// The rule above, from the lookup's answer (pure).
StopDecision DecideStop(const DaemonSetRef& ref,
                        const Result<std::optional<nlohmann::json>>& lookup);

struct UninstallPlan {
  std::string cni_conf_dir;  // empty: the agent did not chain itself (nothing to remove)
  std::string pin_root;
  std::string state_file;          // the agent's record of its pods
  Dataplane* dataplane = nullptr;  // the running data plane, to unenrol and detach pods
};

// Removes what UninstallPlan names, each step logged; goes on after a failed step and
// returns the first error (so an uninstall leaves as little as it can).
[[nodiscard]] Result<void> Uninstall(const UninstallPlan& plan,
                                     std::vector<std::string>* log = nullptr);

}  // namespace sluice::agent
