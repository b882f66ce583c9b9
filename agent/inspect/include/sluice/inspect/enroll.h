// `sluicectl enroll`: the `istioctl kube-inject` habit for Sluice. Adds the enrolment
// label istio.io/dataplane-mode: sluice to the pod metadata of every workload in a
// manifest (Pod; the pod template of Deployment, StatefulSet, DaemonSet, ReplicaSet,
// ReplicationController, Job; CronJob's job template; the items of a List).
//
// The manifest is edited as text, not re-emitted: each insertion is placed from the
// YAML parser's positions, so everything else — comments, key order, quoting, blank
// lines, other documents — stays byte-for-byte as it was. Flow-style ({...}, JSON)
// mappings get a quoted "key": "value" entry so JSON input stays JSON.
#pragma once

#include <string>
#include <string_view>

#include "sluice/common/result.h"

namespace sluice::inspect {

inline constexpr std::string_view kEnrolmentLabel = "istio.io/dataplane-mode";
inline constexpr std::string_view kEnrolmentValue = "sluice";

struct EnrollResult {
  std::string text;
  int workloads = 0;  // pod templates / pods labelled (already-labelled ones included)
};

// `file` names the input in errors: "FILE: document N (Kind ns/name): field: problem".
Result<EnrollResult> Enroll(std::string_view text, const std::string& file);

}  // namespace sluice::inspect
