// AuthorizationPolicy in the local control plane: istiod's own builder goldens (input
// policies, expected rbac filters) run through Sluice's loader and translator and compared
// field by field with the filters on the workload's virtualInbound chains; which workloads
// a policy selects (root namespace, namespace, selector); where the filters go on the
// chains; the loader's refusals with their exact text and the fail-closed policy a refused
// document leaves; and the translated filters compiled by the proxy's RBAC engine, which
// must then allow and deny what the policy says.
#include <arpa/inet.h>
#include <netinet/in.h>

#include <catch2/catch.hpp>

#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/message_differencer.h>
#include <yaml-cpp/yaml.h>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "envoy/config/listener/v3/listener.pb.h"
#include "envoy/extensions/filters/http/rbac/v3/rbac.pb.h"
#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb.h"
#include "envoy/extensions/filters/network/rbac/v3/rbac.pb.h"
#include "sluice/istio/loader.h"
#include "sluice/istio/registry.h"
#include "sluice/istio/translator.h"
#include "sluice/proxy/http_codec.h"
#include "sluice/proxy/rbac.h"
#include "translate_harness.h"

namespace fs = std::filesystem;
using namespace sluice::istio;
using namespace sluice::istio::test;
using nlohmann::json;
namespace hcm_v3 = envoy::extensions::filters::network::http_connection_manager::v3;
namespace listener_v3 = envoy::config::listener::v3;
namespace http_rbac = envoy::extensions::filters::http::rbac::v3;
namespace net_rbac = envoy::extensions::filters::network::rbac::v3;

namespace {

const fs::path kIstiodGoldens = fs::path(SLUICE_ISTIO_TESTDATA) / "authz-istiod";

// httpbin in foo: an HTTP port (8000 -> 8080), a TCP port (9000) and one whose protocol
// is detected (9100); and a second workload, sleep, no Service.
const char kApps[] = R"(
apiVersion: v1
kind: Service
metadata: {name: httpbin, namespace: foo}
spec:
  selector: {app: httpbin}
  ports:
  - {name: http, port: 8000, targetPort: 8080}
  - {name: tcp, port: 9000}
  - {port: 9100}
)";

const listener_v3::Listener* VirtualInbound(const Translation& t) {
  auto it = t.resources.listeners.find("virtualInbound");
  return it == t.resources.listeners.end() ? nullptr : &it->second;
}

// The chains of virtualInbound matching destination port `port` (0: the passthrough
// chains, which match no port), by name.
std::vector<const listener_v3::FilterChain*> Chains(const listener_v3::Listener& l, uint32_t port) {
  std::vector<const listener_v3::FilterChain*> out;
  for (const auto& fc : l.filter_chains()) {
    const uint32_t p = fc.filter_chain_match().has_destination_port()
                           ? fc.filter_chain_match().destination_port().value()
                           : 0;
    if (p == port)
      out.push_back(&fc);
  }
  return out;
}

const listener_v3::FilterChain* Chain(const listener_v3::Listener& l, const std::string& name,
                                      bool http) {
  for (const auto& fc : l.filter_chains()) {
    if (fc.name() != name)
      continue;
    const bool has_hcm =
        fc.filters_size() > 0 &&
        fc.filters(fc.filters_size() - 1).name() == "envoy.filters.network.http_connection_manager";
    if (has_hcm == http)
      return &fc;
  }
  return nullptr;
}

hcm_v3::HttpConnectionManager Hcm(const listener_v3::FilterChain& fc) {
  hcm_v3::HttpConnectionManager hcm;
  REQUIRE(fc.filters_size() > 0);
  REQUIRE(fc.filters(fc.filters_size() - 1).typed_config().UnpackTo(&hcm));
  return hcm;
}

std::vector<std::string> FilterNames(const listener_v3::FilterChain& fc) {
  std::vector<std::string> out;
  for (const auto& f : fc.filters())
    out.push_back(f.name());
  return out;
}

std::vector<std::string> HttpFilterNames(const hcm_v3::HttpConnectionManager& hcm) {
  std::vector<std::string> out;
  for (const auto& f : hcm.http_filters())
    out.push_back(f.name());
  return out;
}

// A YAML node as JSON: plain scalars that read as integers or booleans are numbers and
// booleans (the goldens are protojson printed as YAML), quoted ones strings.
json ToJson(const YAML::Node& n) {
  if (n.IsMap()) {
    json j = json::object();
    for (const auto& kv : n)
      j[kv.first.as<std::string>()] = ToJson(kv.second);
    return j;
  }
  if (n.IsSequence()) {
    json j = json::array();
    for (const auto& e : n)
      j.push_back(ToJson(e));
    return j;
  }
  if (n.IsNull())
    return nullptr;
  const std::string s = n.as<std::string>();
  if (n.Tag() != "!") {
    if (s == "true" || s == "false")
      return s == "true";
    if (!s.empty() && s.find_first_not_of("0123456789") == std::string::npos)
      return std::stoll(s);
  }
  return s;
}

template <class Msg>
Msg FromYamlFile(const fs::path& p) {
  Msg m;
  const std::string text = ToJson(YAML::LoadFile(p.string())).dump();
  auto st = google::protobuf::util::JsonStringToMessage(text, &m);
  INFO(p.string() << ": " << st.ToString());
  REQUIRE(st.ok());
  return m;
}

std::string Json(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.add_whitespace = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  return out;
}

// istiod's expected files for a case: "-out.yaml", or "-out1.yaml", "-out2.yaml", ...
std::vector<fs::path> ExpectedFiles(const fs::path& dir, const std::string& name) {
  if (fs::exists(dir / (name + "-out.yaml")))
    return {dir / (name + "-out.yaml")};
  std::vector<fs::path> out;
  for (int i = 1; fs::exists(dir / (name + "-out" + std::to_string(i) + ".yaml")); ++i)
    out.push_back(dir / (name + "-out" + std::to_string(i) + ".yaml"));
  return out;
}

// The workload istiod's tests build for: app=httpbin, version=v1 in foo.
const char kHttpbin[] = "sidecar:app=httpbin,version=v1@foo";

sockaddr_storage Addr(const char* ip, uint16_t port) {
  sockaddr_storage ss{};
  auto* a = reinterpret_cast<sockaddr_in*>(&ss);
  a->sin_family = AF_INET;
  a->sin_port = htons(port);
  REQUIRE(inet_pton(AF_INET, ip, &a->sin_addr) == 1);
  return ss;
}

// The compiled filters of a chain, in order.
std::vector<sluice::proxy::RbacFilter> CompiledHttp(const listener_v3::FilterChain& fc) {
  std::vector<sluice::proxy::RbacFilter> out;
  const auto hcm = Hcm(fc);
  for (const auto& f : hcm.http_filters()) {
    if (f.name() != "envoy.filters.http.rbac")
      continue;
    http_rbac::RBAC cfg;
    REQUIRE(f.typed_config().UnpackTo(&cfg));
    auto compiled = sluice::proxy::CompileHttpRbac(cfg, "test");
    INFO((compiled ? std::string() : compiled.error().message));
    REQUIRE(compiled.has_value());
    out.push_back(std::move(*compiled));
  }
  return out;
}

std::vector<sluice::proxy::RbacFilter> CompiledTcp(const listener_v3::FilterChain& fc) {
  std::vector<sluice::proxy::RbacFilter> out;
  for (const auto& f : fc.filters()) {
    if (f.name() != "envoy.filters.network.rbac")
      continue;
    net_rbac::RBAC cfg;
    REQUIRE(f.typed_config().UnpackTo(&cfg));
    auto compiled = sluice::proxy::CompileNetworkRbac(cfg, "test");
    INFO((compiled ? std::string() : compiled.error().message));
    REQUIRE(compiled.has_value());
    out.push_back(std::move(*compiled));
  }
  return out;
}

// Whether every filter lets the request through, as the filter chain runs them.
bool HttpAllowed(const std::vector<sluice::proxy::RbacFilter>& filters, const std::string& raw,
                 const char* peer = "10.0.0.5") {
  sluice::proxy::http::RequestHead head;
  REQUIRE(sluice::proxy::http::ParseRequest(raw, {}, &head) ==
          sluice::proxy::http::ParseStatus::kDone);
  sockaddr_storage local = Addr("10.1.2.3", 8080);
  sockaddr_storage from = Addr(peer, 40000);
  sluice::proxy::RbacRequest r;
  r.http = &head;
  r.local = &local;
  r.direct_remote = &from;
  for (const auto& f : filters) {
    if (!f.Evaluate(r).allowed())
      return false;
  }
  return true;
}

bool TcpAllowed(const std::vector<sluice::proxy::RbacFilter>& filters, const char* peer,
                uint16_t port) {
  sockaddr_storage local = Addr("10.1.2.3", port);
  sockaddr_storage from = Addr(peer, 40000);
  sluice::proxy::RbacRequest r;
  r.local = &local;
  r.direct_remote = &from;
  for (const auto& f : filters) {
    if (!f.Evaluate(r).allowed())
      return false;
  }
  return true;
}

}  // namespace

TEST_CASE("authz: istiod's HTTP goldens are the filters of the workload's HTTP chain") {
  const fs::path dir = kIstiodGoldens / "http";
  int compared = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string file = e.path().filename().string();
    if (!file.ends_with("-in.yaml"))
      continue;
    const std::string name = file.substr(0, file.size() - 8);
    INFO("case http/" << name);
    auto r = Load(std::string(kApps) + "---\n" + ReadFile(e.path()));
    INFO((r.errors.empty() ? "" : r.errors.front()));
    REQUIRE(r.errors.empty());
    auto t = TranslateFor(r, kHttpbin);
    const auto* l = VirtualInbound(t);
    REQUIRE(l);
    const auto* fc = Chain(*l, "0.0.0.0_8080", true);
    REQUIRE(fc);
    std::vector<hcm_v3::HttpFilter> got;
    const auto hcm = Hcm(*fc);
    for (const auto& f : hcm.http_filters()) {
      if (f.name() == "envoy.filters.http.rbac")
        got.push_back(f);
    }
    auto want_files = ExpectedFiles(dir, name);
    REQUIRE_FALSE(want_files.empty());
    REQUIRE(got.size() == want_files.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
      auto want = FromYamlFile<hcm_v3::HttpFilter>(want_files[i]);
      INFO("want " << want_files[i].filename().string() << ":\n"
                   << Json(want) << "\ngot:\n"
                   << Json(got[i]));
      google::protobuf::util::MessageDifferencer diff;
      std::string report;
      diff.ReportDifferencesToString(&report);
      // Any payloads are compared unpacked (their bytes differ only in map order).
      const bool equal = diff.Compare(want, got[i]);
      INFO(report);
      CHECK(equal);
      ++compared;
    }
  }
  CHECK(compared >= 13);
}

TEST_CASE("authz: istiod's TCP goldens are the network filters of the workload's TCP chain") {
  const fs::path dir = kIstiodGoldens / "tcp";
  int compared = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string file = e.path().filename().string();
    if (!file.ends_with("-in.yaml"))
      continue;
    const std::string name = file.substr(0, file.size() - 8);
    INFO("case tcp/" << name);
    auto r = Load(std::string(kApps) + "---\n" + ReadFile(e.path()));
    INFO((r.errors.empty() ? "" : r.errors.front()));
    REQUIRE(r.errors.empty());
    auto t = TranslateFor(r, kHttpbin);
    const auto* l = VirtualInbound(t);
    REQUIRE(l);
    const auto* fc = Chain(*l, "0.0.0.0_9000", false);
    REQUIRE(fc);
    std::vector<listener_v3::Filter> got;
    for (const auto& f : fc->filters()) {
      if (f.name() == "envoy.filters.network.rbac")
        got.push_back(f);
    }
    auto want_files = ExpectedFiles(dir, name);
    REQUIRE(got.size() == want_files.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
      auto want = FromYamlFile<listener_v3::Filter>(want_files[i]);
      INFO("want " << want_files[i].filename().string() << ":\n"
                   << Json(want) << "\ngot:\n"
                   << Json(got[i]));
      CHECK(google::protobuf::util::MessageDifferencer::Equals(want, got[i]));
      ++compared;
    }
  }
  CHECK(compared == 5);
}

TEST_CASE("authz: filters sit where istiod puts them, on every inbound chain") {
  auto r = Load(std::string(kApps) + R"(---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin"]}}]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: allow-some, namespace: foo}
spec:
  rules:
  - from: [{source: {ipBlocks: ["10.0.0.5"]}}]
)");
  REQUIRE(r.errors.empty());
  auto t = TranslateFor(r, kHttpbin);
  const auto* l = VirtualInbound(t);
  REQUIRE(l);

  // HTTP: the rbac filters first in the connection manager, DENY before ALLOW; no network
  // rbac before the connection manager (istiod adds none on HTTP chains).
  const auto* http = Chain(*l, "0.0.0.0_8080", true);
  REQUIRE(http);
  CHECK(FilterNames(*http) ==
        std::vector<std::string>{"envoy.filters.network.http_connection_manager"});
  auto hcm = Hcm(*http);
  CHECK(HttpFilterNames(hcm) ==
        std::vector<std::string>{"envoy.filters.http.rbac", "envoy.filters.http.rbac",
                                 "envoy.filters.http.fault", "envoy.filters.http.cors",
                                 "istio.stats", "envoy.filters.http.router"});
  http_rbac::RBAC first;
  REQUIRE(hcm.http_filters(0).typed_config().UnpackTo(&first));
  CHECK(first.rules().action() == envoy::config::rbac::v3::RBAC::DENY);
  // The Service's own port and name, as istiod's inbound route for a Service.
  CHECK(hcm.route_config().name() == "inbound|8080||");
  CHECK(hcm.route_config().virtual_hosts(0).name() == "inbound|http|8000");
  CHECK(hcm.route_config().virtual_hosts(0).routes(0).decorator().operation() ==
        "httpbin.foo.svc.cluster.local:8000/*");

  // TCP: network rbac (DENY, then ALLOW), then istio.stats, before tcp_proxy.
  const auto* tcp = Chain(*l, "0.0.0.0_9000", false);
  REQUIRE(tcp);
  CHECK(FilterNames(*tcp) == std::vector<std::string>{"envoy.filters.network.rbac",
                                                      "envoy.filters.network.rbac", "istio.stats",
                                                      "envoy.filters.network.tcp_proxy"});
  CHECK_FALSE(Chain(*l, "0.0.0.0_9000", true));

  // Detected protocol: both chains, each with its filters.
  REQUIRE(Chain(*l, "0.0.0.0_9100", true));
  CHECK(HttpFilterNames(Hcm(*Chain(*l, "0.0.0.0_9100", true))).front() ==
        "envoy.filters.http.rbac");
  REQUIRE(Chain(*l, "0.0.0.0_9100", false));
  CHECK(FilterNames(*Chain(*l, "0.0.0.0_9100", false)).front() == "envoy.filters.network.rbac");

  // The passthrough chains carry the policy too (a port no Service names is no way
  // around it); the blackhole chain does not.
  CHECK(FilterNames(*Chain(*l, "virtualInbound", false)).front() == "envoy.filters.network.rbac");
  CHECK(HttpFilterNames(Hcm(*Chain(*l, "virtualInbound-catchall-http", true))).front() ==
        "envoy.filters.http.rbac");
  CHECK(FilterNames(*Chain(*l, "virtualInbound-blackhole", false)) ==
        std::vector<std::string>{"istio.stats", "envoy.filters.network.tcp_proxy"});

  // The inbound clusters of the service ports exist.
  CHECK(t.resources.clusters.count("inbound|8080||"));
  CHECK(t.resources.clusters.count("inbound|9000||"));
  CHECK(t.resources.clusters.count("inbound|9100||"));
  CHECK(t.resources.clusters.count("InboundPassthroughCluster"));
}

TEST_CASE("authz: selection by root namespace, namespace and selector, as istiod") {
  const std::string policies = R"(---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-wide, namespace: istio-system}
spec:
  action: AUDIT
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ns-wide, namespace: foo}
spec:
  action: DENY
  rules: [{to: [{operation: {methods: ["DELETE"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-httpbin, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules: [{to: [{operation: {paths: ["/ok"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: root-selector, namespace: istio-system}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/root"]}}]}]
)";
  auto r = Load(std::string(kApps) + policies);
  REQUIRE(r.errors.empty());

  // The policy names in a chain's filters, in order.
  auto names = [&](const std::string& proxy) {
    std::vector<std::string> out;
    auto t = TranslateFor(r, proxy);
    const auto* l = VirtualInbound(t);
    if (!l)
      return out;
    const auto* fc = Chain(*l, "virtualInbound-catchall-http", true);
    REQUIRE(fc);
    const auto hcm = Hcm(*fc);
    for (const auto& f : hcm.http_filters()) {
      if (f.name() != "envoy.filters.http.rbac")
        continue;
      http_rbac::RBAC cfg;
      REQUIRE(f.typed_config().UnpackTo(&cfg));
      std::vector<std::string> keys;
      for (const auto& [k, v] : cfg.rules().policies())
        keys.push_back(k);
      std::sort(keys.begin(), keys.end());
      for (const auto& k : keys)
        out.push_back(k);
    }
    return out;
  };
  // httpbin in foo: the mesh-wide AUDIT, then DENY (root selector and namespace-wide),
  // then the selected ALLOW.
  CHECK(names("sidecar:app=httpbin@foo") ==
        std::vector<std::string>{"ns[istio-system]-policy[mesh-wide]-rule[0]",
                                 "ns[foo]-policy[ns-wide]-rule[0]",
                                 "ns[istio-system]-policy[root-selector]-rule[0]",
                                 "ns[foo]-policy[only-httpbin]-rule[0]"});
  // Another workload of foo: the namespace-wide and mesh-wide ones only.
  CHECK(names("sidecar:app=sleep@foo") ==
        std::vector<std::string>{"ns[istio-system]-policy[mesh-wide]-rule[0]",
                                 "ns[foo]-policy[ns-wide]-rule[0]"});
  // A workload labelled app=httpbin in another namespace: the root namespace's only.
  CHECK(names("sidecar:app=httpbin@bar") ==
        std::vector<std::string>{"ns[istio-system]-policy[mesh-wide]-rule[0]",
                                 "ns[istio-system]-policy[root-selector]-rule[0]"});

  // Without the mesh-wide policy, a workload no policy selects gets no inbound listener
  // (nothing changes for it); one that is selected does.
  auto no_mesh = Load(std::string(kApps) + R"(---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-httpbin, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules: [{to: [{operation: {paths: ["/ok"]}}]}]
)");
  REQUIRE(no_mesh.errors.empty());
  CHECK(VirtualInbound(TranslateFor(no_mesh, "sidecar:app=httpbin@foo")));
  CHECK_FALSE(VirtualInbound(TranslateFor(no_mesh, "sidecar:app=sleep@bar")));
}

TEST_CASE("authz: a mesh config's rootNamespace moves the mesh-wide scope") {
  auto r = Load(std::string(kApps) + R"(---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    rootNamespace: mesh-root
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: everywhere, namespace: mesh-root}
spec: {rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: not-root-any-more, namespace: istio-system}
spec: {action: DENY, rules: [{}]}
)");
  REQUIRE(r.errors.empty());
  auto t = TranslateFor(r, "sidecar:app=sleep@bar");
  const auto* l = VirtualInbound(t);
  REQUIRE(l);
  auto filters = CompiledTcp(*Chain(*l, "virtualInbound", false));
  REQUIRE(filters.size() == 1);  // the ALLOW of mesh-root only
  CHECK(TcpAllowed(filters, "10.0.0.9", 5000));
}

TEST_CASE("authz: Sidecar ingress ports replace the Services' ports") {
  auto r = Load(std::string(kApps) + R"(---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: httpbin, namespace: foo}
spec:
  workloadSelector: {labels: {app: httpbin}}
  ingress:
  - port: {number: 7070, protocol: HTTP, name: http}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin"]}}]}]
)");
  REQUIRE(r.errors.empty());
  auto t = TranslateFor(r, kHttpbin);
  const auto* l = VirtualInbound(t);
  REQUIRE(l);
  CHECK(Chains(*l, 8080).empty());
  CHECK(Chains(*l, 9000).empty());
  const auto* fc = Chain(*l, "0.0.0.0_7070", true);
  REQUIRE(fc);
  CHECK(HttpFilterNames(Hcm(*fc)).front() == "envoy.filters.http.rbac");
  CHECK(Hcm(*fc).route_config().virtual_hosts(0).routes(0).decorator().operation() ==
        "httpbin.foo:7070/*");
}

TEST_CASE("authz: the proxy's RBAC engine enforces the translated filters") {
  auto r = Load(std::string(kApps) + R"(---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: from-one-pod, namespace: foo}
spec:
  rules:
  - from: [{source: {ipBlocks: ["10.0.0.5"]}}]
  - from: [{source: {principals: ["cluster.local/ns/foo/sa/sleep"]}}]
)");
  REQUIRE(r.errors.empty());
  auto t = TranslateFor(r, kHttpbin);
  const auto* l = VirtualInbound(t);
  REQUIRE(l);
  auto http = CompiledHttp(*Chain(*l, "0.0.0.0_8080", true));
  REQUIRE(http.size() == 2);
  CHECK(HttpAllowed(http, "GET /status HTTP/1.1\r\nHost: httpbin\r\n\r\n"));
  CHECK_FALSE(HttpAllowed(http, "GET /admin/x HTTP/1.1\r\nHost: httpbin\r\n\r\n"));
  // Another pod: its address is not allowed, and its identity cannot be (no mTLS).
  CHECK_FALSE(HttpAllowed(http, "GET /status HTTP/1.1\r\nHost: httpbin\r\n\r\n", "10.0.0.6"));

  // TCP: the path rule of the DENY cannot be evaluated, so istiod's DENY widens to every
  // connection on a TCP chain.
  auto tcp = CompiledTcp(*Chain(*l, "0.0.0.0_9000", false));
  REQUIRE(tcp.size() == 2);
  CHECK_FALSE(TcpAllowed(tcp, "10.0.0.5", 9000));
}

TEST_CASE("authz: a TCP ALLOW on ipBlocks lets one pod in and keeps another out") {
  auto r = Load(std::string(kApps) + R"(---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: tcp-allow, namespace: foo}
spec:
  rules:
  - from: [{source: {ipBlocks: ["10.0.0.5/32"]}}]
    to: [{operation: {ports: ["9000"]}}]
  - to: [{operation: {methods: ["GET"]}}]
)");
  REQUIRE(r.errors.empty());
  auto t = TranslateFor(r, kHttpbin);
  auto tcp = CompiledTcp(*Chain(*VirtualInbound(t), "0.0.0.0_9000", false));
  REQUIRE(tcp.size() == 1);
  CHECK(TcpAllowed(tcp, "10.0.0.5", 9000));
  CHECK_FALSE(TcpAllowed(tcp, "10.0.0.6", 9000));
  // rule[1] names an HTTP method: dropped on TCP (less is allowed), so not a way in.
  CHECK_FALSE(TcpAllowed(tcp, "10.0.0.5", 9100));
}

namespace {

const char kPolicyHead[] =
    "apiVersion: security.istio.io/v1\n"
    "kind: AuthorizationPolicy\n"
    "metadata: {name: p, namespace: foo}\n"
    "spec:\n";

// The one error loading a policy whose spec is `spec` gives, without the document prefix.
std::string ErrorOf(const std::string& spec) {
  auto r = Load(std::string(kPolicyHead) + spec);
  if (r.errors.empty())
    return "";
  const std::string prefix = "t.yaml: document 1 (AuthorizationPolicy foo/p): ";
  std::string e = r.errors.front();
  if (e.starts_with(prefix))
    e = e.substr(prefix.size());
  return e;
}

const char kClosed[] = " (refused; the workloads it selects fail closed)";

}  // namespace

TEST_CASE("authz: the loader refuses what istio's validation or Sluice cannot take, by name") {
  CHECK(ErrorOf("  action: CUSTOM\n  provider: {name: opa}\n  rules: [{}]\n") ==
        std::string("spec.action: CUSTOM is not supported: it delegates to an ext_authz "
                    "provider, which Sluice does not have") +
            kClosed);
  CHECK(ErrorOf("  targetRefs: [{kind: Gateway, name: gw}]\n") ==
        std::string("spec.targetRefs: not supported: targetRef attaches a policy to a waypoint "
                    "or a Gateway API gateway, which Sluice does not have; use spec.selector") +
            kClosed);
  CHECK(ErrorOf("  action: DENY\n") ==
        std::string("spec.rules: required: a DENY policy without rules never matches; add an "
                    "empty rule {} to deny every request") +
            kClosed);
  CHECK(ErrorOf("  action: REJECT\n") ==
        std::string("spec.action: must be ALLOW, DENY, AUDIT or CUSTOM (got \"REJECT\")") +
            kClosed);
  CHECK(ErrorOf("  rules:\n  - from: [{source: {ipBlocks: [\"10.0.0.300\"]}}]\n") ==
        std::string("spec.rules[0].from[0].source.ipBlocks[0]: must be an IP address or CIDR "
                    "range (got \"10.0.0.300\")") +
            kClosed);
  CHECK(ErrorOf("  rules:\n  - to: [{operation: {ports: [\"http\"]}}]\n") ==
        std::string("spec.rules[0].to[0].operation.ports[0]: must be a port number 0..65535 "
                    "(got \"http\")") +
            kClosed);
  CHECK(ErrorOf("  rules:\n  - to: [{operation: {paths: [\"/a/{*}\"]}}]\n") ==
        std::string("spec.rules[0].to[0].operation.paths[0]: path templates ({*}, {**}) are "
                    "not supported: Sluice's RBAC engine has no uri_template matcher (got "
                    "\"/a/{*}\")") +
            kClosed);
  CHECK(ErrorOf("  rules:\n  - when: [{key: request.time, values: [\"x\"]}]\n")
            .starts_with("spec.rules[0].when[0].key: unknown attribute \"request.time\""));
  CHECK(ErrorOf("  rules:\n  - when: [{key: source.ip}]\n") ==
        std::string("spec.rules[0].when[0]: at least one of values or notValues must be set "
                    "for key source.ip") +
            kClosed);
  CHECK(ErrorOf("  rules:\n  - from: [{source: {}}]\n") ==
        std::string("spec.rules[0].from[0].source: must not be empty") + kClosed);
  CHECK(ErrorOf("  rules:\n  - to: []\n") ==
        std::string("spec.rules[0].to: must not be empty") + kClosed);
  CHECK(ErrorOf("  rules:\n  - fromm: []\n") ==
        std::string("spec.rules[0].fromm: unknown field (did you mean \"from\"?)") + kClosed);

  auto ra = Load(
      "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n"
      "metadata: {name: jwt, namespace: foo}\nspec: {}\n");
  REQUIRE(ra.errors.size() == 1);
  CHECK(ra.errors.front() ==
        "t.yaml: document 1 (RequestAuthentication foo/jwt): RequestAuthentication is not "
        "supported: Sluice has no JWT authentication (jwt_authn); refused");

  auto old = Load(
      "apiVersion: security.istio.io/v1alpha1\nkind: AuthorizationPolicy\n"
      "metadata: {name: p, namespace: foo}\nspec: {}\n");
  REQUIRE(old.errors.size() == 1);
  CHECK(old.errors.front() ==
        std::string("t.yaml: document 1 (AuthorizationPolicy foo/p): apiVersion: "
                    "security.istio.io/v1alpha1 is not a version of AuthorizationPolicy that "
                    "Sluice reads (security.istio.io/v1beta1, v1)") +
            kClosed);
}

TEST_CASE("authz: a refused policy fails closed for the workloads it selects") {
  // A DENY the loader refuses (a CIDR it cannot read) denies everything to httpbin; an
  // ALLOW it refuses allows nothing. Workloads it does not select are untouched.
  auto r = Load(std::string(kApps) + R"(---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad-deny, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules: [{from: [{source: {ipBlocks: ["not-an-ip"]}}]}]
)");
  REQUIRE(r.errors.size() == 1);
  REQUIRE(r.config.authorization_policies.size() == 1);
  auto t = TranslateFor(r, kHttpbin);
  const auto* l = VirtualInbound(t);
  REQUIRE(l);
  auto http = CompiledHttp(*Chain(*l, "0.0.0.0_8080", true));
  CHECK_FALSE(HttpAllowed(http, "GET / HTTP/1.1\r\nHost: h\r\n\r\n"));
  CHECK_FALSE(TcpAllowed(CompiledTcp(*Chain(*l, "0.0.0.0_9000", false)), "10.0.0.5", 9000));
  CHECK_FALSE(VirtualInbound(TranslateFor(r, "sidecar:app=sleep@foo")));

  auto allow = Load(std::string(kApps) + R"(---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad-allow, namespace: foo}
spec:
  rules: [{to: [{operation: {paths: ["/x/{**}"]}}]}]
)");
  REQUIRE(allow.errors.size() == 1);
  auto ta = TranslateFor(allow, "sidecar:app=sleep@foo");
  const auto* la = VirtualInbound(ta);
  REQUIRE(la);
  CHECK_FALSE(HttpAllowed(CompiledHttp(*Chain(*la, "virtualInbound-catchall-http", true)),
                          "GET /x/y HTTP/1.1\r\nHost: h\r\n\r\n"));
}

TEST_CASE("authz: a policy selecting a gateway goes on the gateway's own listeners") {
  auto r = Load(R"(apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - {port: {number: 8080, name: http, protocol: HTTP}, hosts: ["*"]}
  - {port: {number: 9000, name: tcp, protocol: TCP}, hosts: ["*"]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: istio-system}
spec:
  hosts: ["*"]
  gateways: [gw]
  http: [{route: [{destination: {host: httpbin.foo.svc.cluster.local, port: {number: 8000}}}]}]
  tcp: [{match: [{port: 9000}], route: [{destination: {host: httpbin.foo.svc.cluster.local, port: {number: 9000}}}]}]
---
)" + std::string(kApps) +
                R"(---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: gw-deny, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
  - from: [{source: {ipBlocks: ["10.0.0.6"]}}]
)");
  REQUIRE(r.errors.empty());
  auto t = TranslateFor(r, "gateway:istio=ingressgateway@istio-system");
  CHECK(t.warnings.empty());
  // HTTP: rbac first in the server's connection manager, and it denies /admin.
  const auto& http_l = t.resources.listeners.at("0.0.0.0_8080");
  REQUIRE(http_l.filter_chains_size() == 1);
  auto hcm = Hcm(http_l.filter_chains(0));
  REQUIRE(hcm.http_filters_size() > 1);
  CHECK(hcm.http_filters(0).name() == "envoy.filters.http.rbac");
  auto http = CompiledHttp(http_l.filter_chains(0));
  REQUIRE(http.size() == 1);
  CHECK(HttpAllowed(http, "GET /status HTTP/1.1\r\nHost: x\r\n\r\n"));
  CHECK_FALSE(HttpAllowed(http, "GET /admin/x HTTP/1.1\r\nHost: x\r\n\r\n"));
  // TCP: the network rbac before tcp_proxy; the ipBlocks rule holds there (and the path
  // rule widens to every connection, as istiod's DENY on a TCP chain).
  const auto& tcp_l = t.resources.listeners.at("0.0.0.0_9000");
  REQUIRE(tcp_l.filter_chains_size() == 1);
  CHECK(FilterNames(tcp_l.filter_chains(0)) ==
        std::vector<std::string>{"envoy.filters.network.rbac", "istio.stats",
                                 "envoy.filters.network.tcp_proxy"});
  auto tcp = CompiledTcp(tcp_l.filter_chains(0));
  REQUIRE(tcp.size() == 1);
  CHECK_FALSE(TcpAllowed(tcp, "10.0.0.6", 9000));
  // A gateway no policy selects gets none.
  auto other = TranslateFor(r, "gateway:istio=egressgateway@istio-system");
  for (const auto& [name, l] : other.resources.listeners) {
    for (const auto& fc : l.filter_chains())
      for (const auto& f : fc.filters())
        CHECK(f.name() != "envoy.filters.network.rbac");
  }
}
