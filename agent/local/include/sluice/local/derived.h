// What the local cluster derives from its state, as pure functions (unit-tested without
// root): Service VIPs, endpoints from selectors, each pod's /etc/hosts, the Kubernetes
// objects written for the control plane, the agent's labels file, and the kube-proxy
// stand-in's NAT rules.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "sluice/common/result.h"
#include "sluice/local/state.h"

namespace sluice::local {

// "10.244.0.0/16" -> {10.244.}; only /16 subnets are supported (the layout is fixed:
// .0.1 is the gateway, pods from .0.2, external hosts from .255.2).
struct Subnet16 {
  unsigned a = 0, b = 0;
  std::string Address(unsigned c, unsigned d) const;
  std::string Cidr() const;
};
Result<Subnet16> ParseSubnet16(const std::string& cidr, const std::string& what);

// The next free VIP in the service subnet (from .0.2; .0.1 is reserved), or `wanted` when
// given, inside the subnet and free. Errors name the field.
Result<std::string> AllocateVip(const ClusterState& s, const std::string& wanted);

// A Deployment's pod name: NAME-xxxxx with Kubernetes' suffix alphabet.
std::string PodNameFor(const std::string& deployment, unsigned seed);

bool SelectorMatches(const Labels& selector, const Labels& labels);

// A pod is ready when every container is running; hostNetwork pods included.
struct Endpoint {
  std::string pod, ip;
  int port = 0;
};
// The endpoints of one Service port: its ready pods, targetPort resolved (a named
// targetPort through the pod's container ports). `ready(pod)` says which pods count.
std::vector<Endpoint> EndpointsFor(const ClusterState& s, const ServiceRec& svc,
                                   const ServicePortRec& port,
                                   const std::function<bool(const PodRec&)>& ready);

// /etc/hosts for a pod of namespace `ns` (name/ip its own).
std::string HostsFile(const ClusterState& s, const std::string& ns, const std::string& name,
                      const std::string& ip);

// Kubernetes YAML the Istio translator reads: Namespaces, Services (with clusterIP),
// Pods (with status.podIP) of the ready pods.
std::string NamespacesYaml(const ClusterState& s);
std::string ServicesYaml(const ClusterState& s);
std::string PodsYaml(const ClusterState& s, const std::function<bool(const PodRec&)>& ready);

// The agent's --labels-file (agent/daemon/labels.h).
std::string LabelsJson(const ClusterState& s);

// iptables-restore input for the kube-proxy stand-in: chain `chain` in the nat table,
// one DNAT per Service port spread over its endpoints.
std::string NatRules(const ClusterState& s, const std::string& chain,
                     const std::function<bool(const PodRec&)>& ready);

}  // namespace sluice::local
