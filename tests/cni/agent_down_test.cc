// sluice-cni with the agent down (issue 19): pods outside the mesh start, mesh pods get
// TryAgainLater. The real sluice-cni binary, as a runtime runs it, against the API
// stand-in (tests/kube/apiserver_standin.py, TLS) through the kubeconfig the agent writes
// for it (agent/daemon/cni_conf.h). No root.
#include <catch2/catch.hpp>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "cni/test_support.h"
#include "cni_conf.h"
#include "kube/standin_process.h"
#include "sluice/cni/protocol.h"

using namespace sluice;
using namespace sluice::cni::testing;
using json = nlohmann::json;
using sluice::kube::testing::MakePod;
using sluice::kube::testing::StandinProcess;

namespace {

const char* kPrevResult =
    R"({"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/x"}],)"
    R"("ips":[{"interface":0,"address":"10.77.0.5/24","gateway":"10.77.0.1"}]})";

// The stand-in with the objects of the cases: namespaces shop (enrolled) and plain (not),
// and pods in them.
struct Cluster {
  StandinProcess api;
  kube::Client admin{api.Config()};
  Cluster() {
    Create("/api/v1/namespaces",
           {{"apiVersion", "v1"},
            {"kind", "Namespace"},
            {"metadata", {{"name", "shop"}, {"labels", {{"istio.io/dataplane-mode", "sluice"}}}}}});
    Create("/api/v1/namespaces",
           {{"apiVersion", "v1"}, {"kind", "Namespace"}, {"metadata", {{"name", "plain"}}}});
    Create("/api/v1/namespaces/shop/pods", MakePod("shop", "cart"));
    Create("/api/v1/namespaces/plain/pods", MakePod("plain", "web"));
    Create("/api/v1/namespaces/plain/pods",
           MakePod("plain", "tagged", "node-1", {{"istio.io/dataplane-mode", "sluice"}}));
    auto hostnet = MakePod("shop", "hostnet");
    hostnet["spec"]["hostNetwork"] = true;
    Create("/api/v1/namespaces/shop/pods", hostnet);
    Create("/api/v1/namespaces/shop/pods",
           MakePod("shop", "optout", "node-1", {{"istio.io/dataplane-mode", "none"}}));
  }
  void Create(const std::string& path, const json& obj) {
    auto r = admin.Post(path, obj);
    if (!r)
      FAIL("creating " << path << ": " << r.error().message);
  }
};

struct Outage {
  TempDir dir;
  std::string kubeconfig;
  // Writes the kubeconfig as the agent would (server, CA data, its token).
  explicit Outage(Cluster* c) {
    if (c == nullptr)
      return;
    auto cfg = c->api.Config();
    auto kc =
        agent::WriteCniKubeconfig(dir.path().string(), {cfg.server, cfg.ca_file, cfg.token_file});
    REQUIRE(kc);
    kubeconfig = *kc;
  }
  json Conf(std::optional<std::vector<std::string>> exclude = std::nullopt) const {
    json conf = {{"cniVersion", "1.0.0"},
                 {"name", "sluicet-net"},
                 {"type", "sluice-cni"},
                 {"agentSocket", dir / "nobody-listens.sock"},  // the agent is down
                 {"agentTimeoutMs", 1000},
                 {"prevResult", json::parse(kPrevResult)}};
    if (!kubeconfig.empty())
      conf["kubeconfig"] = kubeconfig;
    if (exclude)
      conf["excludeNamespaces"] = *exclude;
    return conf;
  }
};

local::ProcessResult Add(const json& conf, const std::string& ns, const std::string& pod,
                         const std::string& command = "ADD") {
  CniEnv e;
  e.command = command;
  e.args = "K8S_POD_NAMESPACE=" + ns + ";K8S_POD_NAME=" + pod + ";K8S_POD_UID=uid-" + pod;
  return RunSluiceCni(e, conf.dump());
}

void ExpectPass(const local::ProcessResult& r) {
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  CHECK(r.exit_status == 0);
  auto j = json::parse(r.out, nullptr, false);
  REQUIRE(j.is_object());
  CHECK(j["ips"][0]["address"] == "10.77.0.5/24");  // prevResult passed through
  CHECK_THAT(r.err, Catch::Contains("without the mesh"));
}

std::string ExpectRetry(const local::ProcessResult& r) {
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  CHECK(r.exit_status != 0);
  auto j = json::parse(r.out, nullptr, false);
  REQUIRE(j.is_object());
  CHECK(j["code"] == cni::codes::kTryAgainLater);
  CHECK(j["code"] == 11);
  return j.value("msg", "");
}

}  // namespace

TEST_CASE("agent down: a kube-system pod starts, with or without an API server") {
  Outage none(nullptr);
  ExpectPass(Add(none.Conf(), "kube-system", "coredns-1"));
  // The default is kube-system only; a configured list replaces it.
  ExpectRetry(Add(none.Conf(), "plain", "web"));
  ExpectPass(Add(none.Conf(std::vector<std::string>{"infra", "kube-system"}), "infra", "x"));
  ExpectRetry(Add(none.Conf(std::vector<std::string>{"infra"}), "kube-system", "coredns-1"));
  // CHECK follows the same rule.
  auto check = Add(none.Conf(), "kube-system", "coredns-1", "CHECK");
  CHECK(check.exit_status == 0);
  CHECK(check.out.empty());  // CHECK prints nothing on success
  ExpectRetry(Add(none.Conf(), "plain", "web", "CHECK"));
}

TEST_CASE("agent down: the API server decides who waits") {
  Cluster c;
  Outage o(&c);
  SECTION("a pod of an unlabelled namespace starts") {
    ExpectPass(Add(o.Conf(), "plain", "web"));
  }
  SECTION("a pod of a labelled namespace gets TryAgainLater naming it and why") {
    auto msg = ExpectRetry(Add(o.Conf(), "shop", "cart"));
    CHECK_THAT(msg, Catch::Contains("shop/cart"));
    CHECK_THAT(msg, Catch::Contains("namespace shop is labelled istio.io/dataplane-mode=sluice"));
  }
  SECTION("a labelled pod of an unlabelled namespace gets TryAgainLater") {
    auto msg = ExpectRetry(Add(o.Conf(), "plain", "tagged"));
    CHECK_THAT(msg, Catch::Contains("the pod is labelled"));
  }
  SECTION("hostNetwork and opted-out pods of a labelled namespace start") {
    ExpectPass(Add(o.Conf(), "shop", "hostnet"));
    ExpectPass(Add(o.Conf(), "shop", "optout"));
  }
  SECTION("a pod the API server does not know: cannot tell, so wait") {
    auto msg = ExpectRetry(Add(o.Conf(), "plain", "ghost"));
    CHECK_THAT(msg, Catch::Contains("cannot tell"));
    CHECK_THAT(msg, Catch::Contains("404"));
  }
  SECTION("the API server down: cannot tell, so wait (fail closed)") {
    c.api.Kill();
    auto msg = ExpectRetry(Add(o.Conf(), "plain", "web"));
    CHECK_THAT(msg, Catch::Contains("cannot tell"));
    // kube-system still needs no answer.
    ExpectPass(Add(o.Conf(), "kube-system", "coredns-1"));
  }
  SECTION("failOpen still lets every pod through") {
    auto conf = o.Conf();
    conf["failOpen"] = true;
    auto r = Add(conf, "shop", "cart");
    CHECK(r.exit_status == 0);
  }
}

TEST_CASE("agent down: bad excludeNamespaces or kubeconfig fields are refused") {
  Outage none(nullptr);
  auto conf = none.Conf();
  conf["excludeNamespaces"] = "kube-system";
  auto r = Add(conf, "kube-system", "x");
  CHECK(r.exit_status != 0);
  CHECK(json::parse(r.out)["code"] == 7);
  CHECK_THAT(r.out, Catch::Contains("excludeNamespaces"));
  conf = none.Conf();
  conf["kubeconfig"] = 5;
  r = Add(conf, "kube-system", "x");
  CHECK(json::parse(r.out)["code"] == 7);
  // A kubeconfig that does not exist: cannot tell, so wait; the error names the file.
  conf = none.Conf();
  conf["kubeconfig"] = "/nonexistent/sluice-kubeconfig";
  auto msg = ExpectRetry(Add(conf, "plain", "web"));
  CHECK_THAT(msg, Catch::Contains("/nonexistent/sluice-kubeconfig"));
}
