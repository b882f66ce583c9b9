// The part of Istio's sidecar injector the local cluster stands in for: which pods the
// injector would take (its webhook's namespace and object selectors, then its own
// injectRequired rule), and what its `grpc-agent` template gives a proxyless gRPC pod —
// the xDS bootstrap istio-agent writes (pkg/istio-agent/grpcxds), GRPC_XDS_BOOTSTRAP
// naming it, and the sidecar.istio.io/status annotation an injected pod carries. There is
// no istio-agent process: the bootstrap points the application's gRPC library straight
// at the local control plane's Unix socket. Pure (no I/O): unit-tested without root.
#pragma once

#include <string>
#include <vector>

#include "sluice/local/state.h"

namespace sluice::local {

inline constexpr const char* kGrpcBootstrapEnv = "GRPC_XDS_BOOTSTRAP";
inline constexpr const char* kGrpcBootstrapFile = "grpc-bootstrap.json";

// Whether Istio's injector (the default revision, autoInject enabled) injects a pod:
//   - never a hostNetwork pod, nor one in kube-system or kube-public;
//   - the namespace labelled istio-injection=enabled, or istio.io/rev=default without an
//     istio-injection label, or (neither label on the namespace) the pod labelled
//     istio.io/rev=default or sidecar.istio.io/inject=true;
//   - and the pod does not opt out: sidecar.istio.io/inject=false (label, else annotation).
bool InjectorSelects(const std::string& ns, const Labels& ns_labels, const Labels& pod_labels,
                     const Labels& pod_annotations, bool host_network);

// The injector selects the pod and its inject.istio.io/templates names grpc-agent.
bool InjectsGrpcAgent(const std::string& ns, const Labels& ns_labels, const Labels& pod_labels,
                      const Labels& pod_annotations, bool host_network);

// The agent's rule on the pod's annotations (enrolment::IsProxylessGrpc): injected with
// the grpc-agent template, so it gets a bootstrap and is never captured.
bool IsProxylessGrpcPod(const Labels& pod_annotations);

// The sidecar.istio.io/status annotation for a grpc-agent pod: the containers the
// template changed (the app's; no istio-proxy runs here) and the volume of the bootstrap.
std::string GrpcAgentStatus(const std::vector<std::string>& containers);

// What istio-agent puts in the bootstrap of one pod.
struct GrpcBootstrapInput {
  std::string xds_socket;  // absolute path of the control plane's Unix socket
  std::string pod_name, pod_namespace, pod_ip;
  Labels labels, annotations;
  std::string workload_name;  // the Deployment's name, or the pod's
  std::string owner;          // kubernetes://apis/apps/v1/namespaces/NS/deployments/NAME
  std::string service_account = "default";
  std::vector<std::string> containers;  // APP_CONTAINERS
  std::vector<ContainerPort> ports;     // POD_PORTS
  std::string domain_suffix = "cluster.local";
};

// The bootstrap file's JSON, in the shape GenerateBootstrap writes: xds_servers (the
// socket as unix:///PATH, insecure channel creds, xds_v3), node (id
// sidecar~IP~POD.NS~NS.svc.cluster.local, metadata with GENERATOR "grpc", locality {}),
// server_listener_resource_name_template. No certificate_providers: the local cluster has
// no workload certificates (istio-agent writes them only when it has some).
std::string GrpcBootstrapJson(const GrpcBootstrapInput& in);

}  // namespace sluice::local
