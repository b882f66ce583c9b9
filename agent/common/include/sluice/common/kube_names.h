// The workload name Istio gives a pod (istiod's GetWorkloadMetaFromPod, which the stats
// filter reports as source_workload / destination_workload), from what Sluice knows of a
// pod: its name and labels (no owner references). Shared by the local control plane's
// endpoint metadata (agent/istio) and the proxy's metrics (agent/proxy), so both ends of
// a request name a workload the same way.
#pragma once

#include <algorithm>
#include <map>
#include <string>
#include <string_view>

namespace sluice::kube {

// Kubernetes' generateName suffix: 5 characters of its safe alphabet.
inline bool GeneratedSuffix(std::string_view s) {
  constexpr std::string_view kAlphabet = "bcdfghjklmnpqrstvwxz2456789";
  return s.size() == 5 && std::all_of(s.begin(), s.end(), [&](char c) {
           return kAlphabet.find(c) != std::string_view::npos;
         });
}

// The label service.istio.io/workload-name; else a Deployment's name (the pod's name
// before "-<pod-template-hash>-"); else the name before a generated "-xxxxx" suffix (a
// bare ReplicaSet, a Job, a DaemonSet, and the local cluster's Deployments, whose pods
// have no template hash); else the pod's name.
inline std::string PodWorkloadName(const std::string& name,
                                   const std::map<std::string, std::string>& labels) {
  if (auto it = labels.find("service.istio.io/workload-name"); it != labels.end())
    return it->second;
  if (auto h = labels.find("pod-template-hash"); h != labels.end() && !h->second.empty()) {
    if (auto at = name.rfind("-" + h->second + "-"); at != std::string::npos)
      return name.substr(0, at);
  }
  if (auto dash = name.rfind('-'); dash != std::string::npos && dash > 0 &&
                                   GeneratedSuffix(std::string_view(name).substr(dash + 1)))
    return name.substr(0, dash);
  return name;
}

}  // namespace sluice::kube
