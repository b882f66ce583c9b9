// Istio's sidecar injector as far as the local cluster needs it (see injection.h): the
// selection rules of its webhook and injectRequired (pkg/kube/inject), and the grpc-agent
// template's bootstrap as istio-agent writes it (pkg/istio-agent/grpcxds).
#include "sluice/local/injection.h"

#include <nlohmann/json.hpp>

#include "sluice/enrolment/enrolment.h"

namespace sluice::local {
namespace {

const std::string* Find(const Labels& m, const std::string& key) {
  auto it = m.find(key);
  return it == m.end() ? nullptr : &it->second;
}

// The one revision the local control plane is: istiod's default.
constexpr const char* kRevision = "default";

}  // namespace

bool InjectorSelects(const std::string& ns, const Labels& ns_labels, const Labels& pod_labels,
                     const Labels& pod_annotations, bool host_network) {
  // injectRequired: hostNetwork pods and Kubernetes' own namespaces are never injected.
  if (host_network || ns == "kube-system" || ns == "kube-public")
    return false;
  const std::string* inject_label = Find(pod_labels, "sidecar.istio.io/inject");
  const std::string* pod_rev = Find(pod_labels, "istio.io/rev");
  const std::string* ns_injection = Find(ns_labels, "istio-injection");
  const std::string* ns_rev = Find(ns_labels, "istio.io/rev");
  // The webhook's selectors (mutatingwebhook.yaml, default revision), first match wins.
  bool selected = false;
  if (ns_injection) {
    selected = *ns_injection == "enabled" && !(inject_label && *inject_label == "false");
  } else if (ns_rev) {
    selected = *ns_rev == kRevision && !(inject_label && *inject_label == "false");
  } else if (pod_rev) {
    selected = *pod_rev == kRevision && !(inject_label && *inject_label == "false");
  } else {
    selected = inject_label && *inject_label == "true";
  }
  if (!selected)
    return false;
  // injectRequired: the label, else the (older) annotation, may still say "false".
  const std::string* opt =
      inject_label ? inject_label : Find(pod_annotations, "sidecar.istio.io/inject");
  return !(opt && *opt == "false");
}

bool InjectsGrpcAgent(const std::string& ns, const Labels& ns_labels, const Labels& pod_labels,
                      const Labels& pod_annotations, bool host_network) {
  const std::string* templates =
      Find(pod_annotations, std::string(enrolment::kInjectTemplatesAnnotation));
  return templates && enrolment::NamesGrpcAgentTemplate(*templates) &&
         InjectorSelects(ns, ns_labels, pod_labels, pod_annotations, host_network);
}

bool IsProxylessGrpcPod(const Labels& pod_annotations) {
  return enrolment::IsProxylessGrpc(
      enrolment::Labels(pod_annotations.begin(), pod_annotations.end()));
}

std::string GrpcAgentStatus(const std::vector<std::string>& containers) {
  nlohmann::ordered_json j{{"initContainers", nullptr},
                           {"containers", containers},
                           {"volumes", nlohmann::json::array({"istio-xds"})},
                           {"imagePullSecrets", nullptr},
                           {"revision", kRevision}};
  return j.dump();
}

std::string GrpcBootstrapJson(const GrpcBootstrapInput& in) {
  // Node metadata as istio-agent fills it from the template's ISTIO_META_* variables and
  // the downward API (pkg/bootstrap GetNodeMetaData); nlohmann::json sorts the keys, as
  // Go's encoding of a map does.
  nlohmann::json md;
  md["GENERATOR"] = "grpc";
  md["NAME"] = in.pod_name;
  md["NAMESPACE"] = in.pod_namespace;
  md["INSTANCE_IPS"] = in.pod_ip;
  md["LABELS"] = in.labels;
  md["ANNOTATIONS"] = in.annotations;
  md["SERVICE_ACCOUNT"] = in.service_account;
  md["WORKLOAD_NAME"] = in.workload_name;
  md["OWNER"] = in.owner;
  md["CLUSTER_ID"] = "Kubernetes";
  md["MESH_ID"] = in.domain_suffix;
  md["ISTIO_VERSION"] = "1.24.0";  // what Sluice's own xDS nodes say (agent/xds node.h)
  md["DNS_CAPTURE"] = "false";
  std::string apps;
  for (const auto& c : in.containers)
    apps += (apps.empty() ? "" : ",") + c;
  md["APP_CONTAINERS"] = apps;
  // POD_PORTS is a string holding a JSON list (the template's ISTIO_META_POD_PORTS).
  nlohmann::ordered_json ports = nlohmann::ordered_json::array();
  for (const auto& p : in.ports) {
    nlohmann::ordered_json port;
    if (!p.name.empty())
      port["name"] = p.name;
    port["containerPort"] = p.port;
    port["protocol"] = "TCP";
    ports.push_back(port);
  }
  md["POD_PORTS"] = ports.dump();

  nlohmann::ordered_json node{
      {"id", "sidecar~" + in.pod_ip + "~" + in.pod_name + "." + in.pod_namespace + "~" +
                 in.pod_namespace + ".svc." + in.domain_suffix},
      {"metadata", md},
      {"locality", nlohmann::json::object()}};
  nlohmann::ordered_json server{
      {"server_uri", "unix://" + in.xds_socket},
      {"channel_creds", nlohmann::ordered_json::array({{{"type", "insecure"}}})},
      {"server_features", nlohmann::json::array({"xds_v3"})}};
  nlohmann::ordered_json boot{
      {"xds_servers", nlohmann::ordered_json::array({server})},
      {"node", node},
      {"server_listener_resource_name_template", "xds.istio.io/grpc/lds/inbound/%s"}};
  return boot.dump(2) + "\n";
}

}  // namespace sluice::local
