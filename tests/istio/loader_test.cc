// Loader: documents, dispatch, typed fields, and the invalid corpus with exact messages.
#include "sluice/istio/loader.h"

#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace fs = std::filesystem;
using namespace sluice::istio;

namespace {

const std::string kTestdata = SLUICE_ISTIO_TESTDATA;

std::string ReadFile(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Messages name files as given; show them relative to testdata/ as the .error files do.
std::string Relative(std::string msg) {
  const std::string prefix = kTestdata + "/";
  for (auto pos = msg.find(prefix); pos != std::string::npos; pos = msg.find(prefix)) {
    msg.erase(pos, prefix.size());
  }
  return msg;
}

LoadResult LoadString(const std::string& text) {
  LoadResult r;
  LoadText(text, "t.yaml", r);
  Validate(r);
  return r;
}

// A temporary directory removed on scope exit, even when an assertion fails.
struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() /
           ("sluice-istio-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  void Write(const std::string& rel, const std::string& text) const {
    fs::create_directories((path / rel).parent_path());
    std::ofstream(path / rel) << text;
  }
  static inline int counter = 0;
};

}  // namespace

TEST_CASE("invalid corpus: each file yields exactly its expected error") {
  int cases = 0;
  for (const auto& entry : fs::directory_iterator(kTestdata + "/invalid")) {
    if (entry.path().extension() != ".yaml")
      continue;
    ++cases;
    auto expected_path = entry.path();
    expected_path.replace_extension(".error");
    INFO("case " << entry.path().filename().string());
    REQUIRE(fs::exists(expected_path));
    std::string expected = ReadFile(expected_path);
    while (!expected.empty() && expected.back() == '\n')
      expected.pop_back();

    LoadResult r = LoadPaths({entry.path().string()});
    REQUIRE(r.errors.size() == 1);
    CHECK(Relative(r.errors[0]) == expected);
  }
  CHECK(cases >= 20);
}

TEST_CASE("a bad document never drops its valid neighbours") {
  LoadResult r = LoadPaths({kTestdata + "/invalid/bad-weight.yaml"});
  // Document 1 (the DestinationRule) is fine; only the VirtualService is rejected.
  REQUIRE(r.config.destination_rules.size() == 1);
  CHECK(r.config.destination_rules[0].subsets.size() == 2);
  CHECK(r.config.virtual_services.empty());

  r = LoadString(R"(apiVersion: v1
kind: Service
metadata: {name: a}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: b}
spec: {ports: [{port: nope}]}
---
this: [is, not: yaml
---
apiVersion: v1
kind: Service
metadata: {name: c, namespace: other}
spec: {ports: [{port: 81, name: http}]}
)");
  CHECK(r.errors.size() == 2);
  REQUIRE(r.config.services.size() == 2);
  CHECK(r.config.services[0].meta.name == "a");
  CHECK(r.config.services[1].meta.Key() == "other/c");
  CHECK(r.config.services[1].ports[0].port == 81);
}

TEST_CASE("a field the Istio networking API does not have is refused by its path") {
  auto first_error = [](const std::string& text) {
    LoadResult r = LoadString(text);
    REQUIRE(r.errors.size() == 1);
    return r.errors[0];
  };
  const std::string vs = "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\n";
  CHECK(first_error(vs + "metadata: {name: r}\nspce: {hosts: [r]}\n") ==
        "t.yaml: document 1 (VirtualService default/r): spce: unknown field (did you mean "
        "\"spec\"?)");
  CHECK(first_error(vs + "metadata: {name: r, nmae: x}\nspec: {hosts: [r]}\n") ==
        "t.yaml: document 1 (VirtualService default/r): metadata.nmae: unknown field (did you "
        "mean \"name\"?)");
  CHECK(first_error(vs + "metadata: {name: r}\nspec: {hosts: [r], export_to: [.], http: "
                         "[{route: [{destination: {host: r}}]}]}\n") ==
        "t.yaml: document 1 (VirtualService default/r): spec.export_to: unknown field (did you "
        "mean \"exportTo\"?)");
  // In a map of messages (header name -> StringMatch), and no near miss to suggest.
  CHECK(first_error(vs + "metadata: {name: r}\nspec:\n  hosts: [r]\n  http:\n"
                         "  - match: [{headers: {x-user: {exakt: a}}}]\n"
                         "    route: [{destination: {host: r}}]\n"
                         "    retryPolicy: {attempts: 2}\n") ==
        "t.yaml: document 1 (VirtualService default/r): "
        "spec.http[0].match[0].headers.x-user.exakt: unknown field (did you mean \"exact\"?)");
  CHECK(first_error(vs + "metadata: {name: r}\nspec:\n  hosts: [r]\n  http:\n"
                         "  - route: [{destination: {host: r}}]\n"
                         "    retryPolicy: {attempts: 2}\n") ==
        "t.yaml: document 1 (VirtualService default/r): spec.http[0].retryPolicy: unknown field");
  CHECK(first_error("apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
                    "metadata: {name: d}\nspec:\n  host: r\n  trafficPolicy:\n"
                    "    connectionPool: {tcp: {maxConnection: 10}}\n") ==
        "t.yaml: document 1 (DestinationRule default/d): "
        "spec.trafficPolicy.connectionPool.tcp.maxConnection: unknown field (did you mean "
        "\"maxConnections\"?)");
  CHECK(first_error("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\n"
                    "spec:\n  selector: {istio: ingressgateway}\n  servers:\n"
                    "  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: ['*']\n"
                    "    tls: {mode: SIMPLE, credentialname: cert}\n") ==
        "t.yaml: document 1 (Gateway default/g): spec.servers[0].tls.credentialname: unknown "
        "field (did you mean \"credentialName\"?)");
  CHECK(first_error("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"
                    "metadata: {name: s}\nspec:\n  hosts: [a.example.com]\n"
                    "  ports: [{number: 80, name: http}]\n  resolution: STATIC\n"
                    "  endpoints: [{adress: 10.0.0.1}]\n") ==
        "t.yaml: document 1 (ServiceEntry default/s): spec.endpoints[0].adress: unknown field "
        "(did you mean \"address\"?)");
  CHECK(first_error("apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: c}\n"
                    "spec: {egress: [{host: [./*]}]}\n") ==
        "t.yaml: document 1 (Sidecar default/c): spec.egress[0].host: unknown field (did you "
        "mean \"hosts\"?)");
  // An egress listener Sluice does not build is refused, never widened to every port.
  CHECK(first_error("apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: c}\n"
                    "spec: {egress: [{port: {number: 9080, protocol: HTTP, name: http}, "
                    "hosts: [./*]}]}\n") ==
        "t.yaml: document 1 (Sidecar default/c): spec.egress[0].port: not supported by Sluice: "
        "an egress listener on one port; Sluice scopes hosts for every port (leave port "
        "unset)");
  CHECK(first_error("apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: c}\n"
                    "spec: {egress: [{bind: 127.0.0.1, hosts: [./*]}]}\n") ==
        "t.yaml: document 1 (Sidecar default/c): spec.egress[0].bind: not supported by Sluice: "
        "bind on an egress listener");

  // The refused document is dropped by name; its neighbours load. Kubernetes kinds keep
  // their fields Sluice does not know, and status is never checked.
  LoadResult r = LoadString(vs + R"(metadata:
  name: reviews
  namespace: shop
  uid: 5b1f3c2e-0000-4000-8000-000000000001
  resourceVersion: "81234"
  generation: 3
  creationTimestamp: "2025-01-01T00:00:00Z"
  annotations: {kubectl.kubernetes.io/last-applied-configuration: "{}"}
  managedFields: [{manager: kubectl, operation: Update}]
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews}}]}]
status: {observedGeneration: 3, anything: [goes]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  ports: [{port: 80}]
  sessionAffinity: None
  notAKubernetesField: true
---
)" + vs + "metadata: {name: broken}\nspec: {hosts: [r], htttp: []}\n");
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0] ==
        "t.yaml: document 3 (VirtualService default/broken): spec.htttp: unknown "
        "field (did you mean \"http\"?)");
  REQUIRE(r.config.virtual_services.size() == 1);
  CHECK(r.config.virtual_services[0].meta.Key() == "shop/reviews");
  CHECK(r.config.services.size() == 1);
}

TEST_CASE("every field of the Istio networking API is known to the loader") {
  // Placeholder values: the decoders refuse most of these documents, but never for an
  // unknown field (that check runs first).
  LoadResult r = LoadPaths({kTestdata + "/api/every-field.yaml"});
  const Config& c = r.config;
  CHECK(r.errors.size() + c.virtual_services.size() + c.destination_rules.size() +
            c.gateways.size() + c.service_entries.size() + c.sidecars.size() ==
        5);
  for (const auto& e : r.errors) {
    INFO(e);
    CHECK(e.find(" default/every-field): spec.") != std::string::npos);  // not a YAML error
    CHECK(e.find("unknown field") == std::string::npos);
  }
}

TEST_CASE("the examples and the test apps load with no error") {
  int files = 0;
  for (const std::string& root :
       {std::string(SLUICE_EXAMPLES), kTestdata + "/apps", kTestdata + "/golden"}) {
    for (const auto& file : ListConfigFiles({root}, nullptr)) {
      if (file.ends_with(".json"))
        continue;  // golden expectations, not config
      LoadResult r;
      LoadText(ReadFile(file), file, r);
      for (const auto& e : r.errors)
        FAIL_CHECK(e);
      ++files;
    }
  }
  CHECK(files >= 30);
}

TEST_CASE("YAML errors report the file's own line numbers") {
  LoadResult r = LoadString(
      "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n"
      "apiVersion: v1\nkind: Service\nmetadata:\n  name: [b\n");
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0].starts_with("t.yaml: document 2: line "));
  CHECK(r.config.namespaces.size() == 1);
}

TEST_CASE(
    "unknown kinds and foreign Gateway APIs are skipped with a warning, and Sidecar is read") {
  LoadResult r = LoadString(R"(apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default}
spec:
  egress: [{hosts: ["./*", "istio-system/*"]}]
)");
  CHECK(r.ok());
  REQUIRE(r.warnings.size() == 2);
  CHECK(r.config.sidecars.size() == 1);
  CHECK(r.warnings[0] ==
        "t.yaml: document 1 (StatefulSet default/db): kind StatefulSet (apps/v1) is not used by "
        "Sluice; skipped");
  CHECK(r.config.gateways.empty());
}

TEST_CASE("every Istio networking version is read") {
  for (const char* v : {"v1alpha3", "v1beta1", "v1"}) {
    LoadResult r = LoadString(std::string("apiVersion: networking.istio.io/") + v + R"(
kind: DestinationRule
metadata: {name: hw}
spec:
  host: helloworld
  trafficPolicy: {loadBalancer: {simple: RANDOM}}
)");
    INFO(v);
    REQUIRE(r.ok());
    REQUIRE(r.config.destination_rules.size() == 1);
    CHECK(r.config.destination_rules[0].traffic_policy->load_balancer->simple ==
          LoadBalancer::Simple::kRandom);
  }
}

TEST_CASE("VirtualService fields are decoded with Istio's meaning") {
  LoadResult r = LoadString(R"(apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin, namespace: web}
spec:
  hosts: [httpbin]
  http:
  - name: primary
    match:
    - uri: {prefix: /status}
      headers: {x-user: {exact: jason}}
      port: 8000
    route:
    - destination: {host: httpbin, subset: v1, port: {number: 8000}}
      weight: 25
    - destination: {host: httpbin, subset: v2}
      weight: 75
    timeout: 1.5s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: 5xx}
    fault:
      delay: {fixedDelay: 2s, percentage: {value: 10}}
      abort: {httpStatus: 503, percentage: {value: 0.5}}
    mirror: {host: httpbin, subset: v2}
    mirrorPercentage: {value: 12.5}
    rewrite: {uri: /, authority: other}
    headers:
      request: {set: {x-a: "1"}, remove: [x-b]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin, namespace: web}
spec:
  host: httpbin.web.svc.cluster.local
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
)");
  REQUIRE(r.ok());
  REQUIRE(r.config.virtual_services.size() == 1);
  const auto& h = r.config.virtual_services[0].http.at(0);
  CHECK(h.name == "primary");
  CHECK(h.match.at(0).uri->kind == StringMatch::Kind::kPrefix);
  CHECK(h.match.at(0).headers.at(0).first == "x-user");
  CHECK(h.match.at(0).port == 8000u);
  CHECK(h.route.at(0).weight == 25);
  CHECK(h.route.at(0).destination.port == 8000u);
  CHECK_FALSE(h.route.at(1).destination.port.has_value());
  CHECK(h.timeout_ms == 1500);
  CHECK(h.retries->attempts == 3);
  CHECK(h.retries->per_try_timeout_ms == 500);
  CHECK(h.fault->delay->fixed_delay_ms == 2000);
  CHECK(h.fault->abort->percentage->value == Approx(0.5));
  CHECK(h.mirror->subset == "v2");
  CHECK(h.mirror_percentage->value == Approx(12.5));
  CHECK(h.rewrite->authority == "other");
  CHECK(h.headers.request.set.at(0).second == "1");
  CHECK(h.headers.request.remove.at(0) == "x-b");
}

TEST_CASE("mesh config comes from the istio ConfigMap") {
  LoadResult r = LoadString(R"(apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |-
    accessLogFile: /dev/stdout
    outboundTrafficPolicy:
      mode: REGISTRY_ONLY
)");
  REQUIRE(r.ok());
  CHECK(r.config.mesh.outbound == MeshConfig::OutboundPolicy::kRegistryOnly);
  CHECK(r.config.mesh.access_log_file == "/dev/stdout");

  r = LoadString(R"(apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: "outboundTrafficPolicy: {mode: DENY}"
)");
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0] ==
        "t.yaml: document 1 (ConfigMap istio-system/istio): "
        "data.mesh.outboundTrafficPolicy.mode: must be ALLOW_ANY or REGISTRY_ONLY");
  CHECK(r.config.mesh.outbound == MeshConfig::OutboundPolicy::kAllowAny);
}

TEST_CASE("directories are read recursively in sorted order, hidden files skipped") {
  TempDir dir;
  dir.Write("b/2.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: two}\n");
  dir.Write("a.yml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: one}\n");
  dir.Write("b/1.json", R"({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})");
  dir.Write(".hidden.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: hidden}\n");
  dir.Write("notes.txt", "not config");
  LoadResult r = LoadPaths({dir.path.string()});
  REQUIRE(r.ok());
  REQUIRE(r.config.namespaces.size() == 3);
  CHECK(r.config.namespaces[0].meta.name == "one");
  CHECK(r.config.namespaces[1].meta.name == "x");
  CHECK(r.config.namespaces[2].meta.name == "two");

  r = LoadPaths({(dir.path / "missing.yaml").string()});
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0] == (dir.path / "missing.yaml").string() + ": no such file or directory");
}

TEST_CASE("durations parse as Go's time.ParseDuration does") {
  auto timeout = [](const std::string& d) -> std::optional<int64_t> {
    auto r = LoadString(R"(apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: t, namespace: default}
spec:
  hosts: [t]
  http:
  - route: [{destination: {host: t}}]
    timeout: )" + d + "\n");
    if (!r.ok() || r.config.virtual_services.empty())
      return std::nullopt;
    return r.config.virtual_services[0].http.at(0).timeout_ms;
  };
  CHECK(timeout("1.5s") == 1500);
  CHECK(timeout("100ms") == 100);
  CHECK(timeout("2m") == 120000);
  CHECK(timeout("1h30m") == 5400000);
  CHECK_FALSE(timeout("5").has_value());
  CHECK_FALSE(timeout("\"5 s\"").has_value());
  CHECK_FALSE(timeout("\"\"").has_value());
}

TEST_CASE(
    "a Secret is read as a gateway's credential: tls.crt/tls.key or cert/key, ca.crt for MUTUAL") {
  // base64 of "CERT", "KEY", "CA" (kubectl create secret tls writes data like this).
  auto r = LoadString(R"(apiVersion: v1
kind: Secret
metadata: {name: httpbin-credential, namespace: istio-system}
type: kubernetes.io/tls
data: {tls.crt: Q0VSVA==, tls.key: S0VZ, ca.crt: Q0E=}
---
apiVersion: v1
kind: Secret
metadata: {name: generic, namespace: istio-system}
stringData: {cert: PLAIN-CERT, key: PLAIN-KEY, cacert: PLAIN-CA}
---
apiVersion: v1
kind: Secret
metadata: {name: other, namespace: istio-system}
data: {password: cGFzcw==, token: dA==, username: dQ==, extra: eA==}
---
apiVersion: v1
kind: Secret
metadata: {name: broken, namespace: istio-system}
data: {tls.crt: "not base64!"}
)");
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0] ==
        "t.yaml: document 4 (Secret istio-system/broken): data.tls.crt: value: not base64 "
        "(character '!')");
  REQUIRE(r.config.secrets.size() == 3);
  const auto& tls = r.config.secrets[0];
  CHECK(tls.meta.ns == "istio-system");
  CHECK(tls.type == "kubernetes.io/tls");
  auto cert = ExtractCertInfo(tls);
  REQUIRE(cert);
  CHECK(cert->cert == "CERT");
  CHECK(cert->key == "KEY");
  CHECK(ExtractRoot(tls).value() == "CA");
  // cert/key come first, as istiod reads them; stringData is plain text.
  auto generic = ExtractCertInfo(r.config.secrets[1]);
  REQUIRE(generic);
  CHECK(generic->cert == "PLAIN-CERT");
  CHECK(ExtractRoot(r.config.secrets[1]).value() == "PLAIN-CA");
  // istiod's words for a Secret without the keys.
  CHECK(ExtractCertInfo(r.config.secrets[2]).error().message ==
        "Secret istio-system/other: found secret, but didn't have expected keys (cert and key) "
        "or (tls.crt and tls.key); found: extra, password, token, and 1 more...");
  CHECK(ExtractRoot(r.config.secrets[2]).error().message ==
        "Secret istio-system/other: found secret, but didn't have expected keys cacert or "
        "ca.crt; found: extra, password, token, and 1 more...");
}
