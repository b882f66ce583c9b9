// Manifests for the local cluster: files of YAML documents (Kubernetes, Istio and
// sluice.io/v1 ExternalHost), split and decoded one document at a time so that a bad
// document is reported — "FILE: document N (Kind ns/name): field: what" — and skipped
// while its neighbours still apply. Pure: no I/O beyond reading the files.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "sluice/common/result.h"
#include "sluice/local/state.h"

namespace sluice::local {

struct EnvVar {
  std::string name, value;
  // valueFrom.fieldRef.fieldPath (the downward API: metadata.name, metadata.namespace,
  // status.podIP…), resolved when the container starts; "" for a plain value.
  std::string field_path;
};

struct ContainerSpec {
  std::string name, image;
  std::vector<std::string> command, args;
  std::vector<EnvVar> env;
  std::vector<ContainerPort> ports;
};

struct PodSpec {
  Labels labels;
  Labels annotations;           // metadata.annotations (Istio's injection reads them)
  std::string service_account;  // spec.serviceAccountName ("default" when unset)
  bool host_network = false;
  std::vector<ContainerSpec> containers;
  std::string hash;  // of the whole template (labels, annotations, spec), to tell a changed one
};

struct NamespaceObj {
  NamespaceRec ns;
};
struct PodObj {
  std::string ns, name;
  PodSpec spec;
};
struct DeploymentObj {
  std::string ns, name;
  int replicas = 1;
  PodSpec spec;
};
struct ServiceObj {
  ServiceRec svc;  // cluster_ip as written ("" when the cluster should pick one)
};
struct ExternalHostObj {
  ExternalHostRec host;
};
// Istio resources: copied into the config dir unchanged.
struct IstioObj {
  std::string kind, ns, name, text;
  std::string api;  // apiVersion, e.g. networking.istio.io/v1
};
// Kinds the local cluster accepts and has nothing to do for (ServiceAccount, ConfigMap…).
struct IgnoredObj {
  std::string kind, ns, name;
};

using Object = std::variant<NamespaceObj, PodObj, DeploymentObj, ServiceObj, ExternalHostObj,
                            IstioObj, IgnoredObj>;

struct Document {
  std::string file;
  int index = 0;      // 1-based, counting every document in the file
  std::string where;  // "FILE: document N (Kind ns/name)"
  Object object;
};

struct ManifestSet {
  std::vector<Document> documents;
  std::vector<std::string> errors;    // rejected documents (and unreadable files)
  std::vector<std::string> warnings;  // unknown kinds
};

// Reads every path (a file, or a directory: its *.yaml|*.yml files, recursively, sorted).
// `default_ns` is the namespace of documents that name none (kubectl apply -n).
ManifestSet LoadManifests(const std::vector<std::string>& paths, const std::string& default_ns);

// One file's text (exposed for tests).
void DecodeText(const std::string& text, const std::string& file, const std::string& default_ns,
                ManifestSet& out);

// "key=value" -> {key, value}; "key-" -> {key, nullopt}. Errors name the argument.
Result<std::pair<std::string, std::optional<std::string>>> ParseLabelArg(const std::string& arg);

}  // namespace sluice::local
