// LocalControlPlane without gRPC: node -> proxy, per-file last good config, the cache.
#include "sluice/istio/local_control_plane.h"

#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>

#include "sluice/xds/node.h"

namespace fs = std::filesystem;
using namespace sluice::istio;
namespace sx = sluice::xds;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    char tmpl[] = "/tmp/sluice-lcp-test-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  void Write(const std::string& name, const std::string& text) const {
    std::ofstream(path / name) << text;
  }
};

envoy::config::core::v3::Node SidecarNode(const std::string& pod, const std::string& ns) {
  sx::NodeIdentity id;
  id.ips = {"10.244.1.5"};
  id.pod_name = pod;
  id.pod_namespace = ns;
  return sx::BuildNode(id);
}

const char kService[] = R"(apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ports:
  - {name: http, port: 80}
)";

}  // namespace

TEST_CASE("nodes map to proxies as istiod reads them") {
  auto spec = LocalControlPlane::ProxyFor(SidecarNode("sleep-1", "shop"));
  REQUIRE(spec);
  CHECK(spec->kind == ProxySpec::Kind::kSidecar);
  CHECK(spec->ns == "shop");

  sx::NodeIdentity gw;
  gw.role = sx::ProxyRole::kRouter;
  gw.ips = {"10.244.0.7"};
  gw.pod_name = "istio-egressgateway-1";
  gw.pod_namespace = "istio-system";
  gw.labels = {{"istio", "egressgateway"}};
  spec = LocalControlPlane::ProxyFor(sx::BuildNode(gw));
  REQUIRE(spec);
  CHECK(spec->kind == ProxySpec::Kind::kGateway);
  CHECK(spec->labels.at("istio") == "egressgateway");

  // Istio's grpc-agent template: a sidecar ID with GENERATOR: grpc in the metadata.
  auto grpc_node = SidecarNode("echo-v1-1", "echo-grpc");
  (*grpc_node.mutable_metadata()->mutable_fields())["GENERATOR"].set_string_value("grpc");
  spec = LocalControlPlane::ProxyFor(grpc_node);
  REQUIRE(spec);
  CHECK(spec->kind == ProxySpec::Kind::kGrpc);
  CHECK(spec->ns == "echo-grpc");
  CHECK(spec->Describe() == "grpc:echo-grpc");

  envoy::config::core::v3::Node bad;
  bad.set_id("envoy-without-istio-id");
  CHECK_FALSE(LocalControlPlane::ProxyFor(bad).has_value());
}

TEST_CASE("a file that turns invalid keeps its last good version, and others still change") {
  TempDir dir;
  dir.Write("svc.yaml", kService);
  dir.Write("dr.yaml", R"(apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web}
spec: {host: web, trafficPolicy: {loadBalancer: {simple: RANDOM}}}
)");
  LocalControlPlane cp({dir.path.string()});
  auto report = cp.Reload();
  CHECK(report.errors.empty());
  CHECK(report.files == 2);
  const std::string cluster = "outbound|80||web.default.svc.cluster.local";
  auto rs = cp.ResourcesFor(SidecarNode("a", "default"));
  REQUIRE(rs.clusters.count(cluster) == 1);
  CHECK(rs.clusters.at(cluster).lb_policy() == envoy::config::cluster::v3::Cluster::RANDOM);

  // dr.yaml breaks while svc.yaml gains a port: the new port appears, RANDOM stays.
  dir.Write("dr.yaml",
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
            "metadata: {name: web}\nspec: {host: web, trafficPolicy: "
            "{loadBalancer: {simple: FASTEST}}}\n");
  dir.Write("svc.yaml", std::string(kService) + "  - {name: http-alt, port: 8080}\n");
  report = cp.Reload();
  REQUIRE(report.errors.size() == 1);
  CHECK(report.errors[0] ==
        (dir.path / "dr.yaml").string() +
            ": document 1 (DestinationRule default/web): spec.trafficPolicy.loadBalancer.simple: "
            "must be one of LEAST_REQUEST, ROUND_ROBIN, RANDOM, PASSTHROUGH (got \"FASTEST\") "
            "(keeping the file's last good version)");
  rs = cp.ResourcesFor(SidecarNode("a", "default"));
  CHECK(rs.clusters.at(cluster).lb_policy() == envoy::config::cluster::v3::Cluster::RANDOM);
  CHECK(rs.clusters.count("outbound|8080||web.default.svc.cluster.local") == 1);

  // A reload with nothing changed reports the standing error again.
  CHECK(cp.Reload().errors.size() == 1);

  // Fixed: the new version applies; removed: its policy goes.
  dir.Write("dr.yaml",
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
            "metadata: {name: web}\nspec: {host: web, trafficPolicy: "
            "{loadBalancer: {simple: ROUND_ROBIN}}}\n");
  CHECK(cp.Reload().errors.empty());
  CHECK(cp.ResourcesFor(SidecarNode("a", "default")).clusters.at(cluster).lb_policy() ==
        envoy::config::cluster::v3::Cluster::ROUND_ROBIN);
  fs::remove(dir.path / "dr.yaml");
  CHECK(cp.Reload().files == 1);
  CHECK(cp.ResourcesFor(SidecarNode("a", "default")).clusters.at(cluster).lb_policy() ==
        envoy::config::cluster::v3::Cluster::LEAST_REQUEST);
}

TEST_CASE("an edit with a misspelled field is refused by path and the last good version stays") {
  TempDir dir;
  dir.Write("svc.yaml", kService);
  const std::string head =
      "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: web}\n";
  dir.Write("dr.yaml",
            head + "spec: {host: web, trafficPolicy: {loadBalancer: {simple: RANDOM}}}\n");
  LocalControlPlane cp({dir.path.string()});
  REQUIRE(cp.Reload().errors.empty());
  const std::string cluster = "outbound|80||web.default.svc.cluster.local";

  // Without the check this edit applied ROUND_ROBIN and silently dropped the limits.
  dir.Write("dr.yaml", head +
                           "spec: {host: web, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}, "
                           "conectionPool: {tcp: {maxConnections: 10}}}}\n");
  auto report = cp.Reload();
  REQUIRE(report.errors.size() == 1);
  CHECK(report.errors[0] == (dir.path / "dr.yaml").string() +
                                ": document 1 (DestinationRule default/web): "
                                "spec.trafficPolicy.conectionPool: unknown field (did you mean "
                                "\"connectionPool\"?) (keeping the file's last good version)");
  CHECK(cp.ResourcesFor(SidecarNode("a", "default")).clusters.at(cluster).lb_policy() ==
        envoy::config::cluster::v3::Cluster::RANDOM);
}

TEST_CASE("proxies of one namespace share one translation per config version") {
  TempDir dir;
  dir.Write("svc.yaml", kService);
  LocalControlPlane cp({dir.path.string()});
  cp.Reload();
  auto a = cp.ResourcesFor(SidecarNode("a", "default"));
  auto b = cp.ResourcesFor(SidecarNode("b", "default"));
  CHECK(cp.Translations() == 1);
  CHECK(a.size() == b.size());
  cp.ResourcesFor(SidecarNode("c", "other"));
  CHECK(cp.Translations() == 2);
  cp.Reload();  // a new config version starts with no translations
  CHECK(cp.Translations() == 0);
}

TEST_CASE("DirWatcher sees writes, renames and new subdirectories") {
  TempDir dir;
  auto w = DirWatcher::Open(dir.path.string());
  REQUIRE(w);
  auto changed = w->Wait(10);
  REQUIRE(changed);
  CHECK_FALSE(*changed);
  dir.Write("a.yaml", "x: 1\n");
  changed = w->Wait(2000);
  REQUIRE(changed);
  CHECK(*changed);
  fs::create_directory(dir.path / "sub");
  changed = w->Wait(2000);
  REQUIRE(changed);
  CHECK(*changed);
  std::ofstream(dir.path / "sub" / "b.yaml") << "y: 2\n";
  changed = w->Wait(2000);
  REQUIRE(changed);
  CHECK(*changed);  // the new subdirectory is watched too
  CHECK(!DirWatcher::Open((dir.path / "missing").string()).has_value());
}

TEST_CASE("a gateway is served its namespace's Secrets as SDS secrets, a sidecar none") {
  TempDir dir;
  // base64 of "CERT", "KEY", "CA".
  dir.Write("secrets.yaml", R"(apiVersion: v1
kind: Secret
metadata: {name: httpbin-credential, namespace: istio-system}
type: kubernetes.io/tls
data: {tls.crt: Q0VSVA==, tls.key: S0VZ, ca.crt: Q0E=}
---
apiVersion: v1
kind: Secret
metadata: {name: plain-credential, namespace: istio-system}
type: kubernetes.io/tls
data: {tls.crt: Q0VSVA==, tls.key: S0VZ}
---
apiVersion: v1
kind: Secret
metadata: {name: elsewhere, namespace: default}
type: kubernetes.io/tls
data: {tls.crt: Q0VSVA==, tls.key: S0VZ}
)");
  LocalControlPlane cp({dir.path.string()});
  auto report = cp.Reload();
  REQUIRE(report.errors.empty());

  sx::NodeIdentity gw;
  gw.role = sx::ProxyRole::kRouter;
  gw.ips = {"10.244.0.8"};
  gw.pod_name = "istio-ingressgateway-1";
  gw.pod_namespace = "istio-system";
  gw.labels = {{"istio", "ingressgateway"}};
  auto rs = cp.ResourcesFor(sx::BuildNode(gw));
  std::vector<std::string> names;
  for (const auto& [n, _] : rs.secrets)
    names.push_back(n);
  CHECK(names == std::vector<std::string>{"kubernetes://httpbin-credential",
                                          "kubernetes://httpbin-credential-cacert",
                                          "kubernetes://plain-credential"});
  const auto& cert = rs.secrets.at("kubernetes://httpbin-credential").tls_certificate();
  CHECK(cert.certificate_chain().inline_bytes() == "CERT");
  CHECK(cert.private_key().inline_bytes() == "KEY");
  CHECK(rs.secrets.at("kubernetes://httpbin-credential-cacert")
            .validation_context()
            .trusted_ca()
            .inline_bytes() == "CA");

  CHECK(cp.ResourcesFor(SidecarNode("sleep-1", "default")).secrets.empty());
}
