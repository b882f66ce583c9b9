// The label source on the API server (kube_labels.h).
#include "kube_labels.h"

#include <spdlog/spdlog.h>

namespace sluice::agent {
namespace {

nlohmann::json StatusJson(const kube::ReflectorStatus& s) {
  return {{"synced", s.synced},       {"resourceVersion", s.resource_version},
          {"lists", s.lists},         {"watches", s.watches},
          {"events", s.events},       {"bookmarks", s.bookmarks},
          {"gone", s.gone},           {"errors", s.errors},
          {"lastError", s.last_error}};
}

}  // namespace

KubeLabels::KubeLabels(kube::Client& client, std::string node_name, std::function<void()> on_change,
                       kube::ReflectorOptions base)
    : client_(client), node_name_(std::move(node_name)), on_change_(std::move(on_change)) {
  auto changed = [this](kube::EventType, const std::string&, const nlohmann::json&) {
    dirty_ = true;
    if (on_change_)
      on_change_();
  };
  auto synced = [this] {
    dirty_ = true;
    if (on_change_)
      on_change_();
  };
  kube::ReflectorOptions pods = base;
  pods.path = "/api/v1/pods";
  pods.field_selector = "spec.nodeName=" + node_name_;
  pods_ = std::make_unique<kube::Reflector>(client_, pods, changed, synced);
  kube::ReflectorOptions namespaces = base;
  namespaces.path = "/api/v1/namespaces";
  namespaces.field_selector.clear();
  namespaces_ = std::make_unique<kube::Reflector>(client_, namespaces, changed, synced);
}

KubeLabels::~KubeLabels() {
  Stop();
}

void KubeLabels::Start() {
  spdlog::info("labels from the API server {}: pods of node {} and all namespaces",
               client_.config().server, node_name_);
  pods_->Start();
  namespaces_->Start();
}

void KubeLabels::Stop() {
  pods_->Stop();
  namespaces_->Stop();
}

bool KubeLabels::Synced() const {
  return pods_->HasSynced() && namespaces_->HasSynced();
}

enrolment::Labels KubeLabels::LabelsOf(const nlohmann::json& object) {
  enrolment::Labels out;
  const auto& meta = object.contains("metadata") ? object["metadata"] : nlohmann::json();
  if (meta.is_object() && meta.contains("labels") && meta["labels"].is_object())
    for (const auto& [k, v] : meta["labels"].items())
      if (v.is_string())
        out[k] = v.get<std::string>();
  return out;
}

PodLabels KubeLabels::FromPod(const nlohmann::json& pod) {
  PodLabels p;
  p.labels = LabelsOf(pod);
  const auto& meta = pod.value("metadata", nlohmann::json::object());
  if (meta.contains("annotations") && meta["annotations"].is_object())
    for (const auto& [k, v] : meta["annotations"].items())
      if (v.is_string())
        p.annotations[k] = v.get<std::string>();
  p.uid = meta.value("uid", "");
  const auto& spec = pod.value("spec", nlohmann::json::object());
  p.host_network = spec.value("hostNetwork", false);
  p.service_account = spec.value("serviceAccountName", "");
  const auto& status = pod.value("status", nlohmann::json::object());
  if (status.contains("podIPs") && status["podIPs"].is_array()) {
    for (const auto& ip : status["podIPs"])
      if (ip.is_object() && ip.contains("ip") && ip["ip"].is_string())
        p.ips.push_back(ip["ip"].get<std::string>());
  } else if (status.contains("podIP") && status["podIP"].is_string()) {
    p.ips.push_back(status["podIP"].get<std::string>());
  }
  return p;
}

Result<std::optional<LabelSnapshot>> KubeLabels::Poll() {
  if (!Synced() || !dirty_.exchange(false))
    return std::optional<LabelSnapshot>();
  LabelSnapshot snap;
  for (const auto& [key, ns] : namespaces_->Objects())
    snap.namespaces[key] = LabelsOf(ns);
  for (const auto& [key, pod] : pods_->Objects()) {
    const auto& meta = pod.value("metadata", nlohmann::json::object());
    snap.pods[{meta.value("namespace", ""), meta.value("name", "")}] = FromPod(pod);
  }
  return std::optional<LabelSnapshot>(std::move(snap));
}

Result<FetchedPod> KubeLabels::Fetch(const std::string& ns, const std::string& name,
                                     bool with_namespace) {
  FetchedPod out;
  auto pod = kube::GetPod(client_, ns, name);
  if (pod)
    out.pod = FromPod(*pod);
  else if (pod.error().code != 404)
    return std::unexpected(pod.error());
  if (with_namespace) {
    auto n = kube::GetNamespace(client_, ns);
    if (n)
      out.ns_labels = LabelsOf(*n);
    else if (n.error().code != 404)
      return std::unexpected(n.error());
  }
  return out;
}

std::optional<KubeLabels::ViewPod> KubeLabels::PodOfView(const std::string& ns,
                                                         const enrolment::Labels& labels,
                                                         const std::string& service_account) const {
  for (const auto& [key, pod] : pods_->Objects()) {  // ordered by "NS/NAME"
    const auto& meta = pod.value("metadata", nlohmann::json::object());
    if (meta.value("namespace", "") != ns || meta.contains("deletionTimestamp"))
      continue;
    PodLabels p = FromPod(pod);
    if (p.labels != labels || p.host_network)
      continue;
    const std::string sa = p.service_account.empty() ? "default" : p.service_account;
    if (!service_account.empty() && sa != service_account)
      continue;
    return ViewPod{meta.value("name", ""), p.uid, sa};
  }
  return std::nullopt;
}

nlohmann::json KubeLabels::Status() const {
  return {{"server", client_.config().server},
          {"node", node_name_},
          {"synced", Synced()},
          {"pods", StatusJson(pods_->Status())},
          {"namespaces", StatusJson(namespaces_->Status())}};
}

}  // namespace sluice::agent
