// Finding pods that were running before the agent: no CNI ADD ever told the agent about
// them, so it looks for them the way the kubelet placed them — by cgroup.
//
// The kubelet puts every container of a pod under the pod's cgroup, whose name carries
// the pod UID with either cgroup driver:
//   systemd:  .../kubepods-besteffort.slice/kubepods-besteffort-pod<UID with '_'>.slice/...
//   cgroupfs: .../kubepods/besteffort/pod<UID>/<container>
// Scanning /proc/<pid>/cgroup maps pod UIDs to processes; a process's /proc/<pid>/ns/net
// is the pod's network namespace. The runtime's own name for it (the path CNI would have
// been given, e.g. /var/run/netns/cni-…) is preferred when one of that directory's entries
// is the same namespace, since it outlives any one process. The pod's IP is then checked
// inside the namespace, so a reused UID-lookalike or a process that changed namespace is
// never enrolled as the pod.
#pragma once

#include <sys/types.h>

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/common/result.h"

namespace sluice::agent {

// The pod UID (with '-') named by one line of /proc/<pid>/cgroup, or nullopt.
std::optional<std::string> PodUidFromCgroupLine(std::string_view line);

struct FoundPod {
  pid_t pid = 0;
  std::string netns;  // the runtime's path under netns_dir, else /proc/<pid>/ns/net
};

// Every pod UID with a process on this host, from `proc_root` (normally /proc); netns_dir
// (normally /var/run/netns; may be absent) names the namespaces. Unreadable processes
// (exited meanwhile, or no permission) are skipped.
Result<std::map<std::string, FoundPod>> ScanPods(const std::string& proc_root = "/proc",
                                                 const std::string& netns_dir = "/var/run/netns");

// Whether the network namespace at `netns` has `ip` (no prefix) on one of its interfaces.
Result<bool> NetnsHasAddress(const std::string& netns, const std::string& ip);

// Adds to the node agent every pod of `labels` that it does not know yet (no CNI ADD came:
// it ran before the agent) and that has a UID, an IP and no host network, when the scan
// finds its namespace and the pod's IP is in it: as a CNI ADD would (enrolled or not by
// the rule). Returns how many were added. Pods the scan cannot find are left alone (not
// started yet, or on another runtime's layout) and looked for again on the next call.
class NodeAgent;
struct LabelSnapshot;
size_t AddRunningPods(NodeAgent& node, const LabelSnapshot& labels,
                      const std::string& proc_root = "/proc",
                      const std::string& netns_dir = "/var/run/netns");

}  // namespace sluice::agent
