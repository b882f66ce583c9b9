// What sluice-cni does with a pod when the agent cannot be reached (issue 19): an agent
// outage must never block pods that are not in the mesh.
//
//   - a pod of an excluded namespace (excludeNamespaces, default kube-system) passes:
//     the mesh never takes those;
//   - else, with a kubeconfig, the plugin asks the API server for the pod and its
//     namespace (a short timeout) and applies the enrolment rule (enrolment::Decide):
//     not a mesh pod → it passes; a mesh pod → TryAgainLater naming the pod and why it is
//     in the mesh, so the runtime retries until the agent is back;
//   - no kubeconfig, or the API server unreachable or answering an error → TryAgainLater:
//     the plugin cannot tell, and starting a mesh pod outside the mesh would bypass its
//     policy (fail closed). failOpen (checked before) lets every pod through instead.
#pragma once

#include <chrono>
#include <string>
#include <vector>

namespace sluice::cni {

inline constexpr const char* kDefaultExcludedNamespace = "kube-system";

struct AgentDownPolicy {
  std::vector<std::string> exclude_namespaces{kDefaultExcludedNamespace};
  std::string kubeconfig;  // empty: no API server to ask
  std::chrono::milliseconds api_timeout{2000};
};

struct AgentDownVerdict {
  bool pass = false;  // the pod continues without the mesh
  std::string why;    // for the log, or the error's details
};

AgentDownVerdict DecideAgentDown(const AgentDownPolicy& policy, const std::string& pod_namespace,
                                 const std::string& pod_name);

}  // namespace sluice::cni
