// NodeAgent: the pods of one node and their place in the mesh.
//
// Pods arrive from the CNI plugin (OnAdd/OnDel, with the pod's network namespace);
// labels arrive from the label source. The enrolment rule decides; the agent puts the
// pod's network-namespace cookie in the kernel's enrolment map (or takes it out) right
// away, so label changes take effect on running pods without restarting them.
//
// The pods it knows are written to a state file after every change, so a restarted
// agent reopens them, re-checks their cookies and reconciles the enrolment map (entries
// of pods it no longer knows are removed).
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "cni_server.h"
#include "labels.h"
#include "pod_l7.h"
#include "sluice/enrolment/enrolment.h"
#include "sluice/loader/dataplane.h"

namespace sluice::agent {

struct NodeAgentOptions {
  std::string state_file = "/var/run/sluice/pods.json";
  // Port of the in-pod outbound listener (0: no L7 proxy attached; L7 services are then
  // refused by the kernel rather than bypassing their policy).
  uint16_t proxy_port = 0;
  // Port of the in-pod inbound listener (127.0.0.1), where the kernel steers the ports
  // whose inbound config needs the pod's proxy (0: no inbound side).
  uint16_t inbound_port = 15006;
  // Namespaces whose pods are never enrolled, whatever their labels (--excluded-namespaces;
  // the cluster's own, kube-system, by default). Their pods are listed with the reason
  // "excluded-namespace".
  std::set<std::string> excluded_namespaces = {"kube-system"};
};

// A CNI ADD of a pod the label source has not shown yet: its labels (and its namespace's,
// when asked for) read directly, e.g. a GET on the API server (KubeLabels::Fetch).
struct LookedUpPod {
  std::optional<PodLabels> pod;
  std::optional<enrolment::Labels> ns_labels;
};
using PodLookup = std::function<Result<LookedUpPod>(const std::string& ns, const std::string& name,
                                                    bool with_namespace)>;

struct PodStatus {
  enrolment::PodKey key;
  std::string uid, netns;
  std::vector<std::string> ips;
  uint64_t cookie = 0;
  int host_ifindex = 0;
  bool enrolled = false;
  std::string reason;  // why (not) enrolled
};

// A pod's identity as telemetry needs it: who it is, its labels, and where its traffic
// comes from (its network namespace and addresses).
struct PodIdentity {
  enrolment::PodKey key;
  enrolment::Labels labels;
  std::vector<std::string> ips;  // as the CNI reported them ("10.244.0.5/24")
  uint64_t cookie = 0;
};

class NodeAgent : public cni::CniHandler {
 public:
  // `l7` (may be null: no L7 proxy) gets a capture listener in each pod before the pod
  // is enrolled, and loses it after the pod is unenrolled.
  NodeAgent(Dataplane& dp, NodeAgentOptions opts, PodL7* l7 = nullptr)
      : dp_(dp), opts_(std::move(opts)), l7_(l7) {}

  Result<cni::AddReply> OnAdd(const cni::PodInfo& pod) override;
  Result<void> OnDel(const cni::PodInfo& pod) override;
  Result<cni::AddReply> OnCheck(const cni::PodInfo& pod) override;

  // New label state: re-decides every pod and enrols/unenrols at once.
  void ApplyLabels(const LabelSnapshot& labels);
  // outboundTrafficPolicy of the config in force; re-enrols pods when it changes.
  void SetRegistryOnly(bool registry_only);
  // At start: reads the state file, reopens the pods that still exist, and makes the
  // kernel's enrolment map match (stale entries removed). With `until_labels` (a label
  // source that lists asynchronously, the API server), the kernel's map is left as it is
  // until the first ApplyLabels, so a restarted agent does not unenrol pods it merely
  // has no labels for yet.
  Result<void> Restore(bool until_labels = false);
  // Pods of CNI ADDs the label source does not know yet are looked up with this.
  void SetPodLookup(PodLookup lookup);

  std::vector<PodStatus> Pods() const;
  // "namespace/name (ip)" of the pod with this network-namespace cookie, or "".
  std::string PodByCookie(uint64_t cookie) const;
  // Every pod here with its labels (the kernel path's Istio metrics name them).
  std::vector<PodIdentity> PodIdentities() const;

 private:
  struct Record {
    cni::PodInfo info;
    uint64_t cookie = 0;
    int host_ifindex = 0;  // the pod's veth peer in the agent's namespace (tc), 0: none
  };
  int HostIfindex(const cni::PodInfo& pod) const;
  void AttachTc(Record& r);
  Result<void> Apply(const enrolment::Changes& changes);
  EnrolmentInfo InfoFor(const Record& r) const;
  enrolment::Pod PodFor(const cni::PodInfo& info) const;
  // The enrolment state's view of a pod: excluded namespaces' pods are not in it.
  enrolment::Changes Upsert(const cni::PodInfo& info);
  bool Excluded(const std::string& ns) const { return opts_.excluded_namespaces.contains(ns); }
  void ReconcileKernel();
  void Save() const;

  Dataplane& dp_;
  NodeAgentOptions opts_;
  PodL7* l7_ = nullptr;
  mutable std::mutex mu_;
  enrolment::EnrolmentState state_;
  LabelSnapshot labels_;
  std::map<enrolment::PodKey, Record> pods_;
  bool registry_only_ = false;
  PodLookup lookup_;
  // Looked-up labels, kept over label snapshots that do not have them yet (for a while).
  std::map<enrolment::PodKey, std::pair<PodLabels, std::chrono::steady_clock::time_point>>
      fetched_pods_;
  std::map<std::string, std::pair<enrolment::Labels, std::chrono::steady_clock::time_point>>
      fetched_namespaces_;
  bool reconcile_pending_ = false;
};

}  // namespace sluice::agent
