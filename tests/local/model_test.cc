// The local cluster's pure parts: manifests (errors naming file, document and field),
// VIP allocation, endpoints from selectors, hosts files, the files written for the
// control plane and the agent, and the kube-proxy stand-in's rules.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <set>

#include "sluice/local/derived.h"
#include "sluice/local/manifest.h"
#include "sluice/local/profiles.h"

using namespace sluice::local;

namespace {

const char* kSample = R"(apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    istio.io/dataplane-mode: sluice
---
apiVersion: v1
kind: Service
metadata:
  name: httpbin
  namespace: shop
spec:
  selector:
    app: httpbin
  ports:
  - name: http
    port: 8000
    targetPort: 80
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: httpbin
  namespace: shop
spec:
  replicas: 2
  selector:
    matchLabels: {app: httpbin}
  template:
    metadata:
      labels: {app: httpbin, version: v1}
    spec:
      containers:
      - name: httpbin
        image: docker.io/kennethreitz/httpbin
        ports:
        - containerPort: 80
        env:
        - name: A
          value: "1"
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: httpbin
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts: [httpbin]
  http:
  - route:
    - destination: {host: httpbin}
---
apiVersion: sluice.io/v1
kind: ExternalHost
metadata:
  name: edition.cnn.com
---
apiVersion: example.com/v1
kind: Widget
metadata:
  name: w
)";

template <class T>
const T& As(const Document& d) {
  return std::get<T>(d.object);
}

}  // namespace

TEST_CASE("a manifest decodes document by document, each kind to what the cluster runs") {
  ManifestSet set;
  DecodeText(kSample, "sample.yaml", "default", set);
  CHECK(set.errors.empty());
  REQUIRE(set.documents.size() == 6);
  CHECK(As<NamespaceObj>(set.documents[0]).ns.labels.at("istio.io/dataplane-mode") == "sluice");
  const auto& svc = As<ServiceObj>(set.documents[1]).svc;
  CHECK(svc.ns == "shop");
  REQUIRE(svc.ports.size() == 1);
  CHECK(svc.ports[0].port == 8000);
  CHECK(svc.ports[0].target_port == 80);
  const auto& dep = As<DeploymentObj>(set.documents[2]);
  CHECK(dep.replicas == 2);
  CHECK(dep.spec.labels.at("version") == "v1");
  REQUIRE(dep.spec.containers.size() == 1);
  CHECK(dep.spec.containers[0].ports[0].port == 80);
  CHECK(dep.spec.containers[0].env[0].value == "1");
  CHECK(As<IgnoredObj>(set.documents[3]).kind == "ServiceAccount");
  const auto& vs = As<IstioObj>(set.documents[4]);
  CHECK(vs.kind == "VirtualService");
  CHECK(vs.ns == "default");
  CHECK(vs.text.find("hosts: [httpbin]") != std::string::npos);
  const auto& ext = As<ExternalHostObj>(set.documents[5]).host;
  CHECK(ext.hostnames == std::vector<std::string>{"edition.cnn.com"});
  CHECK(ext.http_port == 80);
  CHECK(ext.https_port == 443);
  REQUIRE(set.warnings.size() == 1);
  CHECK(set.warnings[0].find("sample.yaml: document 7 (Widget default/w)") == 0);
}

TEST_CASE("a bad document is reported with file, document and field, its neighbours stay") {
  const char* text = R"(apiVersion: v1
kind: Pod
metadata:
  name: ok
spec:
  containers:
  - name: c
    image: curlimages/curl
    command: [sleep, infinity]
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: bad
spec:
  template:
    metadata: {labels: {app: x}}
    spec:
      containers:
      - name: c
        image: kennethreitz/httpbin
        ports:
        - containerPort: 99999
---
apiVersion: v1
kind: Service
metadata: {name: two}
spec:
  ports:
  - port: 80
  - port: 81
    name: b
---
apiVersion: v1
kind: Service
metadata: {name: Bad_Name}
spec:
  ports: [{port: 80}]
---
kind: [unclosed
)";
  ManifestSet set;
  DecodeText(text, "m.yaml", "default", set);
  REQUIRE(set.documents.size() == 1);
  CHECK(As<PodObj>(set.documents[0]).name == "ok");
  REQUIRE(set.errors.size() == 4);
  CHECK(set.errors[0] ==
        "m.yaml: document 2 (Deployment default/bad): "
        "spec.template.spec.containers[0].ports[0].containerPort: 99999 is out of range 1..65535");
  CHECK(set.errors[1] ==
        "m.yaml: document 3 (Service default/two): spec.ports[0].name: required "
        "when a Service has more than one port");
  CHECK(set.errors[2].find("m.yaml: document 4 (Service default/Bad_Name): metadata.name:") == 0);
  CHECK(set.errors[3].find("m.yaml: document 5: not valid YAML") == 0);
}

TEST_CASE("missing required fields are named") {
  auto first_error = [](const std::string& text) {
    ManifestSet set;
    DecodeText(text, "f.yaml", "ns1", set);
    REQUIRE(set.errors.size() == 1);
    return set.errors[0];
  };
  CHECK(first_error("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n") ==
        "f.yaml: document 1 (Pod ns1/p): spec.containers: must list at least one container");
  CHECK(first_error("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - "
                    "name: c\n") ==
        "f.yaml: document 1 (Pod ns1/p): spec.containers[0].image: required");
  CHECK(first_error("apiVersion: v1\nkind: Service\nmetadata: {}\n") ==
        "f.yaml: document 1: metadata.name: required");
  CHECK(first_error("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  "
                    "selector: {matchLabels: {app: y}}\n  template:\n    metadata: {labels: {app: "
                    "x}}\n    spec: {containers: [{name: c, image: i}]}\n") ==
        "f.yaml: document 1 (Deployment ns1/d): spec.selector.matchLabels.app: does not match "
        "spec.template.metadata.labels");
}

TEST_CASE(
    "the mesh config (ConfigMap istio-system/istio) goes to the control plane, others are "
    "ignored") {
  ManifestSet set;
  DecodeText(R"(apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: "outboundTrafficPolicy: {mode: REGISTRY_ONLY}"
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio}
data: {}
)",
             "cm.yaml", "default", set);
  REQUIRE(set.documents.size() == 2);
  CHECK(As<IstioObj>(set.documents[0]).kind == "ConfigMap");
  CHECK(As<IgnoredObj>(set.documents[1]).ns == "default");
}

TEST_CASE("a Secret goes to the control plane, which serves it to gateways over SDS") {
  ManifestSet set;
  DecodeText(R"(apiVersion: v1
kind: Secret
metadata: {name: httpbin-credential, namespace: istio-system}
type: kubernetes.io/tls
data: {tls.crt: Q0VSVA==, tls.key: S0VZ}
)",
             "secret.yaml", "default", set);
  REQUIRE(set.errors.empty());
  REQUIRE(set.documents.size() == 1);
  const auto& o = As<IstioObj>(set.documents[0]);
  CHECK(o.kind == "Secret");
  CHECK(o.ns == "istio-system");
  CHECK(o.name == "httpbin-credential");
}

TEST_CASE("label arguments: key=value sets, key- removes, anything else is refused") {
  auto set = ParseLabelArg("istio.io/dataplane-mode=sluice");
  REQUIRE(set);
  CHECK(set->first == "istio.io/dataplane-mode");
  CHECK(set->second == "sluice");
  auto del = ParseLabelArg("istio.io/dataplane-mode-");
  REQUIRE(del);
  CHECK(del->first == "istio.io/dataplane-mode");
  CHECK_FALSE(del->second.has_value());
  CHECK_FALSE(ParseLabelArg("novalue"));
  CHECK_FALSE(ParseLabelArg("a=b c"));
  CHECK(ParseLabelArg("=x").error().message == "label \"=x\": not a valid label key");
}

namespace {

ClusterState TwoPodCluster() {
  ClusterState s;
  s.namespaces = {{"default", {}}, {"shop", {{"istio.io/dataplane-mode", "sluice"}}}};
  ServiceRec svc;
  svc.ns = "shop";
  svc.name = "httpbin";
  svc.cluster_ip = "10.96.0.2";
  svc.selector = {{"app", "httpbin"}};
  svc.ports = {{"http", 8000, 80, "", "TCP"}, {"named", 9000, 0, "metrics", "TCP"}};
  s.services.push_back(svc);
  for (auto [name, ip] :
       {std::pair{"httpbin-aaaaa", "10.244.0.2"}, {"httpbin-bbbbb", "10.244.0.3"}}) {
    PodRec p;
    p.ns = "shop";
    p.name = name;
    p.ip = ip;
    p.labels = {{"app", "httpbin"}, {"version", "v1"}};
    p.ports = {{"http", 80}, {"metrics", 9100}};
    p.containers = {{"httpbin", "kennethreitz/httpbin", 1, 0, "", ""}};
    s.pods.push_back(p);
  }
  PodRec other;
  other.ns = "default";
  other.name = "curl";
  other.ip = "10.244.0.4";
  other.labels = {{"app", "httpbin"}};  // same labels, other namespace: not selected
  s.pods.push_back(other);
  return s;
}

const auto kAllReady = [](const PodRec&) { return true; };

}  // namespace

TEST_CASE("VIPs come from the service subnet, skip .0.1 and the ones taken") {
  ClusterState s;
  s.settings.service_subnet = "10.96.0.0/16";
  CHECK(AllocateVip(s, "").value() == "10.96.0.2");
  s.services.push_back({"a", "b", "10.96.0.2", {}, {}, {}});
  CHECK(AllocateVip(s, "").value() == "10.96.0.3");
  CHECK(AllocateVip(s, "10.96.7.7").value() == "10.96.7.7");
  CHECK(AllocateVip(s, "10.96.0.2").error().message ==
        "spec.clusterIP: 10.96.0.2 is already allocated");
  CHECK(AllocateVip(s, "10.97.0.9").error().message ==
        "spec.clusterIP: 10.97.0.9 is outside the service subnet 10.96.0.0/16");
  CHECK_FALSE(AllocateVip(s, "10.96.0.1"));
  s.settings.service_subnet = "10.96.0.0/24";
  CHECK_FALSE(AllocateVip(s, ""));
}

TEST_CASE("pod names of a Deployment: NAME-xxxxx with Kubernetes' alphabet") {
  std::set<std::string> names;
  for (unsigned i = 0; i < 50; ++i) {
    std::string n = PodNameFor("httpbin-v1", i);
    REQUIRE(n.size() == std::string("httpbin-v1-").size() + 5);
    CHECK(n.rfind("httpbin-v1-", 0) == 0);
    for (char c : n.substr(11))
      CHECK(std::string("bcdfghjklmnpqrstvwxz2456789").find(c) != std::string::npos);
    names.insert(n);
  }
  CHECK(names.size() == 50);
}

TEST_CASE(
    "endpoints: ready pods the selector picks in the Service's namespace, targetPort resolved") {
  ClusterState s = TwoPodCluster();
  const ServiceRec& svc = s.services[0];
  auto eps = EndpointsFor(s, svc, svc.ports[0], kAllReady);
  REQUIRE(eps.size() == 2);
  CHECK(eps[0].ip == "10.244.0.2");
  CHECK(eps[0].port == 80);
  auto named = EndpointsFor(s, svc, svc.ports[1], kAllReady);
  REQUIRE(named.size() == 2);
  CHECK(named[1].port == 9100);
  auto some =
      EndpointsFor(s, svc, svc.ports[0], [](const PodRec& p) { return p.name == "httpbin-bbbbb"; });
  REQUIRE(some.size() == 1);
  CHECK(some[0].pod == "httpbin-bbbbb");
}

TEST_CASE(
    "a pod's hosts file names every Service (short name in its own namespace) and external host") {
  ClusterState s = TwoPodCluster();
  ExternalHostRec ext;
  ext.name = "edition.cnn.com";
  ext.hostnames = {"edition.cnn.com", "cnn.com"};
  ext.pod.ip = "10.244.255.2";
  s.external_hosts.push_back(ext);
  std::string in_shop = HostsFile(s, "shop", "httpbin-aaaaa", "10.244.0.2");
  CHECK(in_shop.find("10.244.0.2\thttpbin-aaaaa\n") != std::string::npos);
  CHECK(in_shop.find("10.96.0.2\thttpbin.shop.svc.cluster.local httpbin.shop.svc httpbin.shop "
                     "httpbin\n") != std::string::npos);
  CHECK(in_shop.find("10.244.255.2\tedition.cnn.com cnn.com\n") != std::string::npos);
  CHECK(in_shop.find("127.0.0.1\tlocalhost") != std::string::npos);
  std::string in_default = HostsFile(s, "default", "curl", "10.244.0.4");
  CHECK(in_default.find("httpbin.shop\n") != std::string::npos);  // no short name here
}

TEST_CASE("the control plane's Kubernetes objects and the agent's labels file") {
  ClusterState s = TwoPodCluster();
  std::string pods = PodsYaml(s, [](const PodRec& p) { return p.name != "httpbin-bbbbb"; });
  CHECK(pods.find("name: \"httpbin-aaaaa\"") != std::string::npos);
  CHECK(pods.find("podIP: \"10.244.0.2\"") != std::string::npos);
  CHECK(pods.find("httpbin-bbbbb") == std::string::npos);  // not ready: no endpoint
  std::string svcs = ServicesYaml(s);
  CHECK(svcs.find("clusterIP: \"10.96.0.2\"") != std::string::npos);
  CHECK(svcs.find("targetPort: \"metrics\"") != std::string::npos);
  auto labels = nlohmann::json::parse(LabelsJson(s));
  CHECK(labels["namespaces"]["shop"]["istio.io/dataplane-mode"] == "sluice");
  CHECK(labels["pods"]["shop/httpbin-aaaaa"]["labels"]["version"] == "v1");
  CHECK(labels["pods"]["shop/httpbin-aaaaa"]["hostNetwork"] == false);
}

TEST_CASE("the kube-proxy stand-in spreads a VIP over its endpoints evenly") {
  ClusterState s = TwoPodCluster();
  std::string rules = NatRules(s, "SLUICE-LOCAL-x", kAllReady);
  CHECK(rules.rfind("*nat\n:SLUICE-LOCAL-x - [0:0]\n", 0) == 0);
  CHECK(rules.find("-A SLUICE-LOCAL-x -d 10.96.0.2/32 -p tcp --dport 8000 -m comment --comment "
                   "\"shop/httpbin:8000\" -m statistic --mode random --probability 0.500000 -j "
                   "DNAT --to-destination 10.244.0.2:80\n") != std::string::npos);
  CHECK(rules.find("--dport 8000 -m comment --comment \"shop/httpbin:8000\" -j DNAT "
                   "--to-destination 10.244.0.3:80\n") != std::string::npos);
  CHECK(rules.find("--to-destination 10.244.0.3:9100") != std::string::npos);
  CHECK(rules.size() - rules.rfind("COMMIT\n") == 7);
  std::string none = NatRules(s, "C", [](const PodRec&) { return false; });
  CHECK(none == "*nat\n:C - [0:0]\nCOMMIT\n");
}

TEST_CASE("state.json round-trips, in the shape the contract gives") {
  ClusterState s = TwoPodCluster();
  s.state_dir = "/tmp/x";
  s.xds = "unix:/tmp/x/xds.sock";
  s.pods[0].admin = "unix:/tmp/x/pods/shop/httpbin-aaaaa/admin.sock";
  auto j = ToJson(s);
  CHECK(j["version"] == 1);
  CHECK(j["agent_admin"] == "127.0.0.1:15000");
  CHECK(j["pods"][0]["namespace"] == "shop");
  CHECK(j["pods"][0]["admin"] == "unix:/tmp/x/pods/shop/httpbin-aaaaa/admin.sock");
  CHECK_FALSE(j["pods"][1].contains("admin"));
  CHECK(j["services"][0]["ports"][0]["target_port"] == 80);
  CHECK(j["services"][0]["ports"][1]["target_port"] == "metrics");
  auto back = FromJson(j, "state.json");
  REQUIRE(back);
  CHECK(ToJson(*back) == j);
  CHECK_FALSE(FromJson(nlohmann::json{{"version", 2}}, "state.json"));
}

TEST_CASE("installation profiles: what istio-system gets, as istioctl's profiles") {
  auto deployments = [](std::string_view profile) {
    auto m = ProfileManifests(profile);
    REQUIRE(m);
    std::vector<std::string> names;
    for (const auto& pm : *m) {
      ManifestSet set;
      DecodeText(std::string(pm.yaml), std::string(pm.name) + ".yaml", "default", set);
      CHECK(set.errors.empty());
      for (const auto& d : set.documents) {
        if (const auto* dep = std::get_if<DeploymentObj>(&d.object)) {
          CHECK(dep->ns == "istio-system");
          CHECK(dep->spec.containers.at(0).image.find("istio/proxyv2") != std::string::npos);
          names.push_back(dep->name);
        }
      }
    }
    return names;
  };
  CHECK(deployments("default") == std::vector<std::string>{"istio-ingressgateway"});
  CHECK(deployments("demo") ==
        std::vector<std::string>{"istio-ingressgateway", "istio-egressgateway"});
  CHECK(deployments("minimal").empty());
  auto bad = ProfileManifests("ambient");
  REQUIRE_FALSE(bad);
  CHECK(bad.error().message.find("--profile \"ambient\": not a profile; use default") == 0);
}
