// sluice-cni while the agent is unreachable (agent_down.h).
#include "agent_down.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "sluice/enrolment/enrolment.h"
#include "sluice/kube/client.h"

namespace sluice::cni {
namespace {

enrolment::Labels MapOf(const nlohmann::json& obj, const char* field) {
  enrolment::Labels out;
  auto meta = obj.find("metadata");
  if (meta == obj.end() || !meta->is_object())
    return out;
  auto m = meta->find(field);
  if (m == meta->end() || !m->is_object())
    return out;
  for (const auto& [k, v] : m->items()) {
    if (v.is_string())
      out[k] = v.get<std::string>();
  }
  return out;
}

}  // namespace

AgentDownVerdict DecideAgentDown(const AgentDownPolicy& policy, const std::string& pod_namespace,
                                 const std::string& pod_name) {
  const std::string pod = pod_namespace + "/" + pod_name;
  if (!pod_namespace.empty() &&
      std::find(policy.exclude_namespaces.begin(), policy.exclude_namespaces.end(),
                pod_namespace) != policy.exclude_namespaces.end()) {
    return {true, "namespace " + pod_namespace + " is excluded from the mesh (excludeNamespaces)"};
  }
  if (policy.kubeconfig.empty()) {
    return {false, "no kubeconfig to ask the API server whether pod " + pod +
                       " is in the mesh, so it must wait for the agent"};
  }
  if (pod_namespace.empty() || pod_name.empty()) {
    return {false,
            "CNI_ARGS carry no K8S_POD_NAMESPACE/K8S_POD_NAME: cannot tell whether the "
            "pod is in the mesh"};
  }
  auto config = kube::KubeconfigConfig(policy.kubeconfig);
  if (!config) {
    return {false, "cannot tell whether pod " + pod + " is in the mesh: kubeconfig " +
                       policy.kubeconfig + ": " + config.error().message};
  }
  config->request_timeout = policy.api_timeout;
  config->connect_timeout = std::min(policy.api_timeout, config->connect_timeout);
  config->user_agent = "sluice-cni";
  kube::Client client(*config);
  auto p = kube::GetPod(client, pod_namespace, pod_name);
  if (!p) {
    return {false, "cannot tell whether pod " + pod + " is in the mesh: " + p.error().message};
  }
  auto ns = kube::GetNamespace(client, pod_namespace);
  if (!ns) {
    return {false, "cannot tell whether pod " + pod + " is in the mesh: " + ns.error().message};
  }
  bool host_network = false;
  if (auto spec = p->find("spec"); spec != p->end() && spec->is_object()) {
    auto hn = spec->find("hostNetwork");
    host_network = hn != spec->end() && hn->is_boolean() && hn->get<bool>();
  }
  auto d = enrolment::Decide(MapOf(*ns, "labels"), MapOf(*p, "labels"), host_network,
                             MapOf(*p, "annotations"));
  std::string reason(enrolment::ReasonName(d.reason));
  if (d.reason == enrolment::Reason::kPodLabel)
    reason = "the pod is labelled istio.io/dataplane-mode=sluice";
  else if (d.reason == enrolment::Reason::kNamespaceLabel)
    reason = "namespace " + pod_namespace + " is labelled istio.io/dataplane-mode=sluice";
  if (d.enrolled) {
    return {false, "pod " + pod + " is in the mesh (" + reason +
                       ") and the agent is unreachable; the runtime retries until it is back"};
  }
  return {true, "pod " + pod + " is not in the mesh (" + reason + ")"};
}

}  // namespace sluice::cni
