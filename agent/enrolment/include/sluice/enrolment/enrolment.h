// Which pods Sluice serves, decided from Kubernetes labels alone (pure logic, no I/O).
//
// The rule (issue 5; proxyless gRPC: issue 23):
//   - hostNetwork pods are never enrolled: they share the node's network namespace;
//   - proxyless gRPC pods are never enrolled: Istio's injector gave them its `grpc-agent`
//     template (annotation inject.istio.io/templates naming grpc-agent, and the
//     sidecar.istio.io/status annotation the injector leaves on every pod it injected),
//     which runs no Envoy and installs no traffic redirect — the application's own gRPC
//     library talks xDS and picks endpoints itself, so nothing may sit in its path. Like
//     ambient's CNI, which leaves a pod alone once a sidecar template was injected;
//   - a pod labelled istio.io/dataplane-mode=sluice is enrolled;
//   - a pod labelled istio.io/dataplane-mode with any other value is not ("none" is the
//     documented opt-out; another value names another data plane, e.g. "ambient");
//   - otherwise the pod follows its namespace: enrolled when the namespace is labelled
//     istio.io/dataplane-mode=sluice.
//
// EnrolmentState keeps the last label state seen for namespaces and pods and, for every
// change, says which pods to enrol and which to unenrol, so label edits take effect on
// running pods without restarting them.
#pragma once

#include <compare>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace sluice::enrolment {

inline constexpr std::string_view kDataplaneModeLabel = "istio.io/dataplane-mode";
inline constexpr std::string_view kModeSluice = "sluice";
inline constexpr std::string_view kModeNone = "none";
// Istio's injection: the templates a pod asks for, and the mark of an injected pod.
inline constexpr std::string_view kInjectTemplatesAnnotation = "inject.istio.io/templates";
inline constexpr std::string_view kGrpcAgentTemplate = "grpc-agent";
inline constexpr std::string_view kSidecarStatusAnnotation = "sidecar.istio.io/status";

using Labels = std::map<std::string, std::string, std::less<>>;

enum class Reason {
  kPodLabel,        // enrolled: the pod carries the label
  kNamespaceLabel,  // enrolled: the namespace carries it, the pod does not opt out
  kHostNetwork,     // not enrolled: hostNetwork pod
  kProxylessGrpc,   // not enrolled: injected with Istio's grpc-agent template
  kPodOptOut,       // not enrolled: pod says dataplane-mode=none
  kOtherDataplane,  // not enrolled: pod names another data plane
  kNotLabelled,     // not enrolled: neither pod nor namespace asks for Sluice
};
std::string_view ReasonName(Reason r);

struct Decision {
  bool enrolled = false;
  Reason reason = Reason::kNotLabelled;
  friend bool operator==(const Decision&, const Decision&) = default;
};

// Whether the annotation's comma-separated template list names `grpc-agent`
// (Istio trims spaces around each name).
bool NamesGrpcAgentTemplate(std::string_view templates);
// A pod Istio's injector gave the grpc-agent template: it names the template and carries
// the injector's status annotation (a pod with the annotation that was never injected —
// its namespace not selected for injection — is an ordinary pod).
bool IsProxylessGrpc(const Labels& pod_annotations);

// The rule itself. ns_labels are the labels of the pod's namespace (empty when unknown).
Decision Decide(const Labels& ns_labels, const Labels& pod_labels, bool host_network,
                const Labels& pod_annotations = {});

struct PodKey {
  std::string pod_namespace;
  std::string name;
  auto operator<=>(const PodKey&) const = default;
};

struct Pod {
  PodKey key;
  std::string uid;  // a pod re-created under the same name is a different pod
  Labels labels;
  bool host_network = false;
  Labels annotations;
  friend bool operator==(const Pod&, const Pod&) = default;
};

// What the agent has to do after a change. A pod re-created under the same name (new
// uid) may appear in both lists: unenrol the old one first, then enrol the new one.
struct Changes {
  std::vector<Pod> enrol;
  std::vector<Pod> unenrol;
  bool empty() const { return enrol.empty() && unenrol.empty(); }
};

class EnrolmentState {
 public:
  // Namespace labels changed (or the namespace appeared): re-decides its pods.
  Changes SetNamespace(const std::string& name, Labels labels);
  // The namespace is gone: its labels no longer enrol anything.
  Changes RemoveNamespace(const std::string& name);
  // A pod appeared or its labels changed.
  Changes UpsertPod(Pod pod);
  // The pod is gone: unenrol it when it was enrolled.
  Changes RemovePod(const PodKey& key);

  bool IsEnrolled(const PodKey& key) const;
  Decision DecisionFor(const PodKey& key) const;
  std::vector<Pod> EnrolledPods() const;
  std::size_t pod_count() const { return pods_.size(); }

 private:
  struct Entry {
    Pod pod;
    Decision decision;
  };
  Decision Evaluate(const Pod& pod) const;

  std::map<std::string, Labels, std::less<>> namespaces_;
  std::map<PodKey, Entry> pods_;
};

// Stateless form for a full resync: given the whole label state before and after, the
// pods whose enrolment differs (including pods that appeared or disappeared).
struct ClusterView {
  std::map<std::string, Labels, std::less<>> namespaces;
  std::vector<Pod> pods;
};
Changes Diff(const ClusterView& before, const ClusterView& after);

}  // namespace sluice::enrolment
