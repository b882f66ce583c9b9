// KubeLabels: the node agent's label source on the Kubernetes API server.
//
// Two reflectors (sluice/kube/client.h) keep the facts the enrolment rule reads: the
// pods of this node (fieldSelector spec.nodeName=NODE) and every namespace. Each change
// wakes the pod poller, which takes a new LabelSnapshot (Poll) and applies it, so a
// label edit takes effect within a second. Until both have listed once, Poll gives
// nothing and Synced() is false (the agent is not ready).
//
// A CNI ADD can come before the watch shows the pod: Fetch() GETs the pod (and its
// namespace, if the cache lacks it) so the decision is made on the pod's real labels.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "labels.h"
#include "sluice/kube/client.h"

namespace sluice::agent {

// A pod (and maybe its namespace) read from the API directly.
struct FetchedPod {
  std::optional<PodLabels> pod;                // nullopt: the API has no such pod
  std::optional<enrolment::Labels> ns_labels;  // when asked for and the namespace exists
};

class KubeLabels : public LabelSource {
 public:
  // `on_change` runs on a reflector's thread after each change (the poller's Wake()).
  KubeLabels(kube::Client& client, std::string node_name, std::function<void()> on_change,
             kube::ReflectorOptions base = {});
  ~KubeLabels() override;

  void Start();
  void Stop();

  [[nodiscard]] Result<std::optional<LabelSnapshot>> Poll() override;
  // Both reflectors have listed once.
  bool Synced() const;
  [[nodiscard]] Result<FetchedPod> Fetch(const std::string& ns, const std::string& name,
                                         bool with_namespace);
  // A running pod of this node in namespace `ns` with exactly these labels (and this
  // service account, when given): what a view's xDS stream authenticates as and binds its
  // token to (docs/kubernetes.md, "istiod's XDS identity check"). The first by name.
  struct ViewPod {
    std::string name, uid, service_account;
  };
  std::optional<ViewPod> PodOfView(const std::string& ns, const enrolment::Labels& labels,
                                   const std::string& service_account = "") const;
  // {"pods": ReflectorStatus, "namespaces": ...} for /kube and /metrics.
  nlohmann::json Status() const;
  const std::string& node_name() const { return node_name_; }

  // The facts of one pod object as the enrolment rule and later work need them.
  static PodLabels FromPod(const nlohmann::json& pod);
  static enrolment::Labels LabelsOf(const nlohmann::json& object);

 private:
  kube::Client& client_;
  std::string node_name_;
  std::function<void()> on_change_;
  std::atomic<bool> dirty_{true};
  std::unique_ptr<kube::Reflector> pods_;
  std::unique_ptr<kube::Reflector> namespaces_;
};

}  // namespace sluice::agent
