// The local cluster's stand-in for Istio's injector (agent/local/injection.cc) and the
// manifest and state parts proxyless gRPC pods need: which pods get the grpc-agent
// template, the bootstrap file istio-agent would write for them, pod annotations and
// downward-API env in manifests, and the annotations reaching the agent's labels file.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "sluice/local/derived.h"
#include "sluice/local/injection.h"
#include "sluice/local/manifest.h"

using namespace sluice::local;

namespace {

const Labels kGrpcAgent = {{"inject.istio.io/templates", "grpc-agent"}};

// Istio's samples/grpc-echo Deployment, as the sample writes it (probes, imagePullPolicy
// and the downward-API INSTANCE_IP included).
const char* kEchoV1 = R"(apiVersion: apps/v1
kind: Deployment
metadata:
  name: echo-v1
  namespace: echo-grpc
spec:
  replicas: 1
  selector:
    matchLabels:
      app: echo
      version: v1
  template:
    metadata:
      annotations:
        inject.istio.io/templates: grpc-agent
        proxy.istio.io/config: '{"holdApplicationUntilProxyStarts": true}'
      labels:
        app: echo
        version: v1
    spec:
      containers:
        - args: [--metrics=15014, --port, "18080", --xds-grpc-server=17070, --grpc, "17070"]
          env:
          - name: INSTANCE_IP
            valueFrom:
              fieldRef:
                apiVersion: v1
                fieldPath: status.podIP
          image: registry.istio.io/testing/app:latest
          imagePullPolicy: Always
          name: app
          ports:
          - containerPort: 17070
            protocol: TCP
          readinessProbe:
            httpGet: {path: /, port: 8080}
)";

}  // namespace

TEST_CASE("the injector stand-in selects pods as Istio's webhook and injectRequired do") {
  struct Row {
    const char* what;
    std::string ns;
    Labels ns_labels, pod_labels, pod_annotations;
    bool host_network;
    bool injected;
  };
  const Labels enabled = {{"istio-injection", "enabled"}};
  const Labels rev = {{"istio.io/rev", "default"}};
  const Row rows[] = {
      {"namespace istio-injection=enabled", "echo", enabled, {}, {}, false, true},
      {"namespace not labelled", "echo", {}, {}, {}, false, false},
      {"namespace istio-injection=disabled",
       "echo",
       {{"istio-injection", "disabled"}},
       {},
       {},
       false,
       false},
      {"namespace istio.io/rev=default", "echo", rev, {}, {}, false, true},
      {"namespace istio.io/rev of another revision",
       "echo",
       {{"istio.io/rev", "canary"}},
       {},
       {},
       false,
       false},
      {"istio-injection wins over istio.io/rev",
       "echo",
       {{"istio-injection", "disabled"}, {"istio.io/rev", "default"}},
       {},
       {},
       false,
       false},
      {"pod label sidecar.istio.io/inject=true",
       "echo",
       {},
       {{"sidecar.istio.io/inject", "true"}},
       {},
       false,
       true},
      {"pod label istio.io/rev=default",
       "echo",
       {},
       {{"istio.io/rev", "default"}},
       {},
       false,
       true},
      {"pod label inject=false in an enabled namespace",
       "echo",
       enabled,
       {{"sidecar.istio.io/inject", "false"}},
       {},
       false,
       false},
      {"pod annotation inject=false in an enabled namespace",
       "echo",
       enabled,
       {},
       {{"sidecar.istio.io/inject", "false"}},
       false,
       false},
      {"the label wins over the annotation",
       "echo",
       enabled,
       {{"sidecar.istio.io/inject", "true"}},
       {{"sidecar.istio.io/inject", "false"}},
       false,
       true},
      {"hostNetwork", "echo", enabled, {}, {}, true, false},
      {"kube-system", "kube-system", enabled, {}, {}, false, false},
  };
  for (const auto& r : rows) {
    INFO(r.what);
    CHECK(InjectorSelects(r.ns, r.ns_labels, r.pod_labels, r.pod_annotations, r.host_network) ==
          r.injected);
    Labels annotations = r.pod_annotations;
    annotations.insert(kGrpcAgent.begin(), kGrpcAgent.end());
    CHECK(InjectsGrpcAgent(r.ns, r.ns_labels, r.pod_labels, annotations, r.host_network) ==
          r.injected);
  }
  // Selected, but without the annotation: a sidecar pod, not a proxyless one.
  CHECK_FALSE(InjectsGrpcAgent("echo", enabled, {}, {}, false));
  CHECK(
      InjectsGrpcAgent("echo", enabled, {}, {{"inject.istio.io/templates", "grpc-agent"}}, false));

  // The status annotation it leaves is what the agent reads to call the pod proxyless.
  auto status = nlohmann::json::parse(GrpcAgentStatus({"app"}));
  CHECK(status["containers"] == nlohmann::json::array({"app"}));
  CHECK(status["revision"] == "default");
  Labels injected = kGrpcAgent;
  injected["sidecar.istio.io/status"] = GrpcAgentStatus({"app"});
  CHECK(IsProxylessGrpcPod(injected));
  CHECK_FALSE(IsProxylessGrpcPod(kGrpcAgent));  // asked for, never injected
}

TEST_CASE("the gRPC bootstrap has the shape istio-agent writes, pointing at the local socket") {
  GrpcBootstrapInput in;
  in.xds_socket = "/tmp/state/xds.sock";
  in.pod_name = "echo-v1-abcde";
  in.pod_namespace = "echo-grpc";
  in.pod_ip = "10.244.0.7";
  in.labels = {{"app", "echo"}, {"version", "v1"}};
  in.annotations = {{"inject.istio.io/templates", "grpc-agent"}};
  in.workload_name = "echo-v1";
  in.owner = "kubernetes://apis/apps/v1/namespaces/echo-grpc/deployments/echo-v1";
  in.containers = {"app"};
  in.ports = {{"", 17070}, {"tcp-health-port", 3333}};
  auto j = nlohmann::json::parse(GrpcBootstrapJson(in));

  REQUIRE(j["xds_servers"].size() == 1);
  const auto& server = j["xds_servers"][0];
  CHECK(server["server_uri"] == "unix:///tmp/state/xds.sock");
  CHECK(server["channel_creds"] == nlohmann::json::parse(R"([{"type": "insecure"}])"));
  CHECK(server["server_features"] == nlohmann::json::array({"xds_v3"}));
  CHECK(j["node"]["id"] ==
        "sidecar~10.244.0.7~echo-v1-abcde.echo-grpc~echo-grpc.svc.cluster.local");
  CHECK(j["node"]["locality"] == nlohmann::json::object());
  const auto& md = j["node"]["metadata"];
  CHECK(md["GENERATOR"] == "grpc");
  CHECK(md["NAMESPACE"] == "echo-grpc");
  CHECK(md["NAME"] == "echo-v1-abcde");
  CHECK(md["INSTANCE_IPS"] == "10.244.0.7");
  CHECK(md["LABELS"] == nlohmann::json{{"app", "echo"}, {"version", "v1"}});
  CHECK(md["ANNOTATIONS"]["inject.istio.io/templates"] == "grpc-agent");
  CHECK(md["WORKLOAD_NAME"] == "echo-v1");
  CHECK(md["OWNER"] == "kubernetes://apis/apps/v1/namespaces/echo-grpc/deployments/echo-v1");
  CHECK(md["SERVICE_ACCOUNT"] == "default");
  CHECK(md["CLUSTER_ID"] == "Kubernetes");
  CHECK(md["MESH_ID"] == "cluster.local");
  CHECK(md["APP_CONTAINERS"] == "app");
  // POD_PORTS is a string holding JSON, as the template's ISTIO_META_POD_PORTS is.
  REQUIRE(md["POD_PORTS"].is_string());
  auto ports = nlohmann::json::parse(md["POD_PORTS"].get<std::string>());
  CHECK(ports[0]["containerPort"] == 17070);
  CHECK(ports[1]["name"] == "tcp-health-port");
  CHECK(j["server_listener_resource_name_template"] == "xds.istio.io/grpc/lds/inbound/%s");
  // No workload certificates on the local cluster: no certificate providers.
  CHECK_FALSE(j.contains("certificate_providers"));
}

TEST_CASE("Istio's grpc-echo Deployment decodes: annotations, downward-API env, the rest ignored") {
  ManifestSet set;
  DecodeText(kEchoV1, "grpc-echo.yaml", "default", set);
  INFO((set.errors.empty() ? "" : set.errors.front()));
  REQUIRE(set.errors.empty());
  REQUIRE(set.documents.size() == 1);
  const auto& dep = std::get<DeploymentObj>(set.documents[0].object);
  CHECK(dep.spec.annotations.at("inject.istio.io/templates") == "grpc-agent");
  CHECK(dep.spec.service_account == "default");
  REQUIRE(dep.spec.containers[0].env.size() == 1);
  CHECK(dep.spec.containers[0].env[0].name == "INSTANCE_IP");
  CHECK(dep.spec.containers[0].env[0].field_path == "status.podIP");

  // Changing only an annotation changes the template: the pods are re-made.
  std::string other = kEchoV1;
  other.replace(other.find("templates: grpc-agent"), 21, "templates: sidecar");
  ManifestSet set2;
  DecodeText(other, "grpc-echo.yaml", "default", set2);
  REQUIRE(set2.documents.size() == 1);
  CHECK(std::get<DeploymentObj>(set2.documents[0].object).spec.hash != dep.spec.hash);

  // Other valueFrom sources, and fields the cluster cannot fill, are refused by name.
  ManifestSet bad;
  DecodeText(R"(apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  containers:
  - name: c
    image: curlimages/curl
    env:
    - name: A
      valueFrom: {secretKeyRef: {name: s, key: k}}
---
apiVersion: v1
kind: Pod
metadata: {name: q}
spec:
  containers:
  - name: c
    image: curlimages/curl
    env:
    - name: B
      valueFrom: {fieldRef: {fieldPath: metadata.labels}}
)",
             "bad.yaml", "default", bad);
  REQUIRE(bad.errors.size() == 2);
  CHECK(bad.errors[0] ==
        "bad.yaml: document 1 (Pod default/p): spec.containers[0].env[0].valueFrom: "
        "only fieldRef is supported by the local cluster");
  CHECK(bad.errors[1].find("bad.yaml: document 2 (Pod default/q): "
                           "spec.containers[0].env[0].valueFrom.fieldRef.fieldPath: "
                           "\"metadata.labels\" is not one the local cluster fills") == 0);
}

TEST_CASE("a pod's annotations reach the agent's labels file and survive state.json") {
  ClusterState s;
  s.namespaces = {{"echo", {{"istio.io/dataplane-mode", "sluice"}}}};
  PodRec p;
  p.ns = "echo";
  p.name = "echo-v1-abcde";
  p.labels = {{"app", "echo"}};
  p.annotations = {{"inject.istio.io/templates", "grpc-agent"},
                   {"sidecar.istio.io/status", GrpcAgentStatus({"app"})}};
  p.grpc_bootstrap = "/tmp/state/pods/echo/echo-v1-abcde/grpc-bootstrap.json";
  s.pods.push_back(p);
  PodRec plain;
  plain.ns = "echo";
  plain.name = "sleep-fghij";
  s.pods.push_back(plain);

  auto labels = nlohmann::json::parse(LabelsJson(s));
  CHECK(labels["pods"]["echo/echo-v1-abcde"]["annotations"]["inject.istio.io/templates"] ==
        "grpc-agent");
  CHECK(labels["pods"]["echo/echo-v1-abcde"]["annotations"].contains("sidecar.istio.io/status"));
  CHECK_FALSE(labels["pods"]["echo/sleep-fghij"].contains("annotations"));

  auto j = ToJson(s);
  CHECK(j["pods"][0]["grpc_bootstrap"] == p.grpc_bootstrap);
  auto back = FromJson(j, "state.json");
  REQUIRE(back);
  CHECK(back->pods[0].annotations == p.annotations);
  CHECK(back->pods[0].grpc_bootstrap == p.grpc_bootstrap);
  CHECK(back->pods[1].grpc_bootstrap.empty());
}
