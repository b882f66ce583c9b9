// Where the node agent learns namespace and pod labels.
//
// In a cluster this is a watch on the Kubernetes API server; that cannot run here, so
// the agent reads the same facts from a JSON file it polls (the local cluster writes
// it; tests edit it). Shape:
//   {"namespaces": {"default": {"istio.io/dataplane-mode": "sluice"}},
//    "pods": {"default/sleep-1": {"labels": {"app": "sleep"}, "hostNetwork": false,
//                                 "annotations": {"inject.istio.io/templates": "grpc-agent"}}}}
// ("annotations" is optional: the enrolment rule reads Istio's injection annotations.)
#pragma once

#include <ctime>
#include <map>
#include <optional>
#include <string>

#include "sluice/common/result.h"
#include "sluice/enrolment/enrolment.h"

namespace sluice::agent {

struct PodLabels {
  enrolment::Labels labels;
  bool host_network = false;
  enrolment::Labels annotations;
};

struct LabelSnapshot {
  std::map<std::string, enrolment::Labels> namespaces;
  std::map<enrolment::PodKey, PodLabels> pods;
};

// Parses the file's text; errors name the file and the field.
[[nodiscard]] Result<LabelSnapshot> ParseLabels(const std::string& text, const std::string& file);

class LabelFile {
 public:
  explicit LabelFile(std::string path) : path_(std::move(path)) {}
  // The file's content when it changed since the last call (nullopt when unchanged);
  // an error when it cannot be read or parsed (the caller keeps the last good one).
  [[nodiscard]] Result<std::optional<LabelSnapshot>> Poll();
  [[nodiscard]] const std::string& path() const { return path_; }

 private:
  std::string path_;
  timespec mtime_{};
  off_t size_ = -1;
};

}  // namespace sluice::agent
