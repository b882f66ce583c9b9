// Where the node agent learns namespace and pod labels: a LabelSource.
//
// In a cluster the source is the Kubernetes API server (KubeLabels, kube_labels.h: a
// list-then-watch of the node's pods and of all namespaces). Without one, the agent
// reads the same facts from a JSON file it polls (LabelFile; the local cluster writes it,
// tests edit it). Shape:
//   {"namespaces": {"default": {"istio.io/dataplane-mode": "sluice"}},
//    "pods": {"default/sleep-1": {"labels": {"app": "sleep"}, "hostNetwork": false,
//                                 "annotations": {"inject.istio.io/templates": "grpc-agent"},
//                                 "uid": "...", "serviceAccount": "sleep",
//                                 "podIPs": ["10.244.0.5"]}}}
// ("annotations" is optional: the enrolment rule reads Istio's injection annotations;
// "uid", "serviceAccount" and "podIPs" are optional too: what the API gives of a pod.)
#pragma once

#include <ctime>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "sluice/common/result.h"
#include "sluice/enrolment/enrolment.h"

namespace sluice::agent {

struct PodLabels {
  enrolment::Labels labels;
  bool host_network = false;
  enrolment::Labels annotations;
  std::string uid;               // metadata.uid ("" when the source does not say)
  std::string service_account;   // spec.serviceAccountName
  std::vector<std::string> ips;  // status.podIPs, without prefix length
};

struct LabelSnapshot {
  std::map<std::string, enrolment::Labels> namespaces;
  std::map<enrolment::PodKey, PodLabels> pods;
};

// Parses the file's text; errors name the file and the field.
[[nodiscard]] Result<LabelSnapshot> ParseLabels(const std::string& text, const std::string& file);

// What the pod poller reads labels from.
class LabelSource {
 public:
  virtual ~LabelSource() = default;
  // The whole label state when it changed since the last call (nullopt when unchanged or
  // not known yet); an error when it cannot be read (the caller keeps the last good one).
  [[nodiscard]] virtual Result<std::optional<LabelSnapshot>> Poll() = 0;
};

class LabelFile : public LabelSource {
 public:
  explicit LabelFile(std::string path) : path_(std::move(path)) {}
  // The file's content when it changed since the last call (nullopt when unchanged);
  // an error when it cannot be read or parsed (the caller keeps the last good one).
  [[nodiscard]] Result<std::optional<LabelSnapshot>> Poll() override;
  [[nodiscard]] const std::string& path() const { return path_; }

 private:
  std::string path_;
  timespec mtime_{};
  off_t size_ = -1;
};

}  // namespace sluice::agent
