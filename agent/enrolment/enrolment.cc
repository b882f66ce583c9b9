#include "sluice/enrolment/enrolment.h"

#include <utility>

namespace sluice::enrolment {
namespace {

const std::string* ModeOf(const Labels& labels) {
  auto it = labels.find(kDataplaneModeLabel);
  return it == labels.end() ? nullptr : &it->second;
}

const Labels& Empty() {
  static const Labels empty;
  return empty;
}

// Records the transition of one pod from `was` to `now` in `out`.
void Transition(const Pod* was_pod, bool was, const Pod* now_pod, bool now, Changes& out) {
  const bool same_pod = was_pod && now_pod && was_pod->uid == now_pod->uid;
  if (was && (!now || !same_pod))
    out.unenrol.push_back(*was_pod);
  if (now && (!was || !same_pod))
    out.enrol.push_back(*now_pod);
}

}  // namespace

std::string_view ReasonName(Reason r) {
  switch (r) {
    case Reason::kPodLabel:
      return "pod-label";
    case Reason::kNamespaceLabel:
      return "namespace-label";
    case Reason::kHostNetwork:
      return "host-network";
    case Reason::kProxylessGrpc:
      return "proxyless-grpc";
    case Reason::kPodOptOut:
      return "pod-opt-out";
    case Reason::kOtherDataplane:
      return "other-dataplane";
    case Reason::kNotLabelled:
      return "not-labelled";
  }
  return "unknown";
}

bool NamesGrpcAgentTemplate(std::string_view templates) {
  while (!templates.empty()) {
    auto comma = templates.find(',');
    std::string_view name = templates.substr(0, comma);
    while (!name.empty() && (name.front() == ' ' || name.front() == '\t'))
      name.remove_prefix(1);
    while (!name.empty() && (name.back() == ' ' || name.back() == '\t'))
      name.remove_suffix(1);
    if (name == kGrpcAgentTemplate)
      return true;
    if (comma == std::string_view::npos)
      break;
    templates.remove_prefix(comma + 1);
  }
  return false;
}

bool IsProxylessGrpc(const Labels& pod_annotations) {
  auto templates = pod_annotations.find(kInjectTemplatesAnnotation);
  return templates != pod_annotations.end() && NamesGrpcAgentTemplate(templates->second) &&
         pod_annotations.contains(kSidecarStatusAnnotation);
}

Decision Decide(const Labels& ns_labels, const Labels& pod_labels, bool host_network,
                const Labels& pod_annotations) {
  if (host_network)
    return {false, Reason::kHostNetwork};
  // Before the labels: even a pod that asks for Sluice by label runs its own xDS client
  // once it has the grpc-agent template, and a redirect would only get in its way.
  if (IsProxylessGrpc(pod_annotations))
    return {false, Reason::kProxylessGrpc};
  if (const std::string* mode = ModeOf(pod_labels)) {
    if (*mode == kModeSluice)
      return {true, Reason::kPodLabel};
    if (*mode == kModeNone)
      return {false, Reason::kPodOptOut};
    return {false, Reason::kOtherDataplane};
  }
  if (const std::string* mode = ModeOf(ns_labels); mode && *mode == kModeSluice)
    return {true, Reason::kNamespaceLabel};
  return {false, Reason::kNotLabelled};
}

Decision EnrolmentState::Evaluate(const Pod& pod) const {
  auto ns = namespaces_.find(pod.key.pod_namespace);
  return Decide(ns == namespaces_.end() ? Empty() : ns->second, pod.labels, pod.host_network,
                pod.annotations);
}

Changes EnrolmentState::SetNamespace(const std::string& name, Labels labels) {
  namespaces_[name] = std::move(labels);
  Changes out;
  // Pods are ordered by namespace first: walk only this namespace's range.
  for (auto it = pods_.lower_bound(PodKey{name, ""});
       it != pods_.end() && it->first.pod_namespace == name; ++it) {
    Decision now = Evaluate(it->second.pod);
    Transition(&it->second.pod, it->second.decision.enrolled, &it->second.pod, now.enrolled, out);
    it->second.decision = now;
  }
  return out;
}

Changes EnrolmentState::RemoveNamespace(const std::string& name) {
  auto it = namespaces_.find(name);
  if (it == namespaces_.end())
    return {};
  namespaces_.erase(it);
  Changes out;
  for (auto p = pods_.lower_bound(PodKey{name, ""});
       p != pods_.end() && p->first.pod_namespace == name; ++p) {
    Decision now = Evaluate(p->second.pod);
    Transition(&p->second.pod, p->second.decision.enrolled, &p->second.pod, now.enrolled, out);
    p->second.decision = now;
  }
  return out;
}

Changes EnrolmentState::UpsertPod(Pod pod) {
  Changes out;
  Decision now = Evaluate(pod);
  auto it = pods_.find(pod.key);
  if (it == pods_.end()) {
    Transition(nullptr, false, &pod, now.enrolled, out);
    PodKey key = pod.key;
    pods_.emplace(std::move(key), Entry{std::move(pod), now});
    return out;
  }
  Transition(&it->second.pod, it->second.decision.enrolled, &pod, now.enrolled, out);
  it->second = Entry{std::move(pod), now};
  return out;
}

Changes EnrolmentState::RemovePod(const PodKey& key) {
  Changes out;
  auto it = pods_.find(key);
  if (it == pods_.end())
    return out;
  Transition(&it->second.pod, it->second.decision.enrolled, nullptr, false, out);
  pods_.erase(it);
  return out;
}

bool EnrolmentState::IsEnrolled(const PodKey& key) const {
  auto it = pods_.find(key);
  return it != pods_.end() && it->second.decision.enrolled;
}

Decision EnrolmentState::DecisionFor(const PodKey& key) const {
  auto it = pods_.find(key);
  if (it == pods_.end())
    return {false, Reason::kNotLabelled};
  return it->second.decision;
}

std::vector<Pod> EnrolmentState::EnrolledPods() const {
  std::vector<Pod> out;
  for (const auto& [key, entry] : pods_) {
    if (entry.decision.enrolled)
      out.push_back(entry.pod);
  }
  return out;
}

Changes Diff(const ClusterView& before, const ClusterView& after) {
  auto enrolled = [](const ClusterView& view) {
    std::map<PodKey, const Pod*> out;
    for (const auto& pod : view.pods) {
      auto ns = view.namespaces.find(pod.key.pod_namespace);
      if (Decide(ns == view.namespaces.end() ? Empty() : ns->second, pod.labels, pod.host_network,
                 pod.annotations)
              .enrolled) {
        out[pod.key] = &pod;
      }
    }
    return out;
  };
  const auto was = enrolled(before);
  const auto now = enrolled(after);
  Changes out;
  for (const auto& [key, pod] : was) {
    auto it = now.find(key);
    if (it == now.end() || it->second->uid != pod->uid)
      out.unenrol.push_back(*pod);
  }
  for (const auto& [key, pod] : now) {
    auto it = was.find(key);
    if (it == was.end() || it->second->uid != pod->uid)
      out.enrol.push_back(*pod);
  }
  return out;
}

}  // namespace sluice::enrolment
