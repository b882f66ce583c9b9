// istiod's XDS authentication and identity check end to end, with the API stand-in as
// the API server: the xDS server reviews each stream's token (TokenReview, audience
// istio-ca) and holds the node against the identity (issue 19). The agent's design — a
// token per view, requested for the view's service account and bound to one of its pods
// (TokenRequest) — passes; the agent's own token for a pod's namespace does not.
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <thread>

#include "../xds/fixtures.h"
#include "../xds/istiod_cert.h"
#include "sluice/kube/identity.h"
#include "sluice/xds/ads_client.h"
#include "sluice/xds/ads_server.h"
#include "sluice/xds/node.h"
#include "standin_process.h"

using namespace sluice;
using namespace std::chrono_literals;
using kube::testing::MakePod;
using kube::testing::StandinProcess;

namespace {

template <class F>
bool WaitFor(F&& pred, std::chrono::milliseconds limit = 5000ms) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (pred())
      return true;
    std::this_thread::sleep_for(20ms);
  }
  return pred();
}

envoy::config::core::v3::Node ViewNode(const std::string& ns, const std::string& sa) {
  sluice::xds::NodeIdentity id;
  id.ips = {"10.244.1.5"};
  id.pod_name = "sluice-agent-node-1";
  id.pod_namespace = ns;
  id.service_account = sa;
  return sluice::xds::BuildNode(id);
}

}  // namespace

TEST_CASE("xDS identity: per-view tokens from TokenRequest pass istiod's check, others do not",
          "[kube]") {
  StandinProcess api;
  kube::Client admin(api.Config());
  auto must = [&](const std::string& path, const nlohmann::json& obj) {
    auto r = admin.Post(path, obj);
    INFO(path << ": " << (r ? "" : r.error().message));
    REQUIRE(r.has_value());
    return *r;
  };
  must("/api/v1/namespaces", {{"metadata", {{"name", "demo"}}}});
  must("/api/v1/namespaces", {{"metadata", {{"name", "sluice-system"}}}});
  must("/api/v1/namespaces/demo/serviceaccounts", {{"metadata", {{"name", "sleep"}}}});
  must("/api/v1/namespaces/sluice-system/serviceaccounts",
       {{"metadata", {{"name", "sluice-agent"}}}});
  auto pod_json = MakePod("demo", "sleep-1");
  pod_json["spec"]["serviceAccountName"] = "sleep";
  auto pod = must("/api/v1/namespaces/demo/pods", pod_json);

  // The xDS server, TLS as istiod's 15012, authenticating with TokenReviews.
  char tmpl[] = "/tmp/sluice-xds-kubeid-XXXXXX";
  REQUIRE(mkdtemp(tmpl) != nullptr);
  const std::string dir = tmpl;
  struct Cleanup {
    std::string d;
    ~Cleanup() { std::filesystem::remove_all(d); }
  } cleanup{dir};
  REQUIRE(testing::MakeIstiodCert(dir));
  sluice::xds::AdsServer server(
      [](const envoy::config::core::v3::Node&) { return testing::HttpbinSet(1); });
  sluice::xds::AdsServerOptions so;
  so.address = "127.0.0.1:0";
  so.cert_file = dir + "/cert.pem";
  so.key_file = dir + "/key.pem";
  kube::Client reviewer(api.Config());
  so.authenticate = [&](const std::string& token) {
    return kube::IstioIdentities(reviewer, token, "cluster.local");
  };
  auto port = server.Start(so);
  REQUIRE(port);

  auto token_for = [&](const std::string& ns, const std::string& sa, const std::string& bound_pod,
                       const std::string& uid) {
    auto t = kube::RequestToken(admin, {.ns = ns,
                                        .service_account = sa,
                                        .audience = "istio-ca",
                                        .bound_pod_name = bound_pod,
                                        .bound_pod_uid = uid});
    INFO((t ? "" : t.error().message));
    REQUIRE(t.has_value());
    return t->token;
  };
  const std::string pod_uid = pod["metadata"]["uid"].get<std::string>();
  const std::string view_token = token_for("demo", "sleep", "sleep-1", pod_uid);
  const std::string agent_token = token_for("sluice-system", "sluice-agent", "", "");

  auto stream = [&](envoy::config::core::v3::Node node, std::string token) {
    sluice::xds::AdsClientOptions o;
    o.server = "127.0.0.1:" + std::to_string(*port);
    o.tls = true;
    o.ca_file = dir + "/cert.pem";
    o.tls_server_name = "istiod.istio-system.svc";
    o.node = std::move(node);
    o.backoff = {.initial = 20ms, .max = 200ms, .multiplier = 2.0, .jitter = 0.2};
    o.token_source = [token]() -> Result<std::string> { return token; };
    return o;
  };
  auto synced = [](config::ConfigStore& s) { return s.Current()->clusters.size() == 1; };
  auto refused_with = [&](sluice::xds::AdsClientOptions o, const std::string& why) {
    config::ConfigStore store;
    sluice::xds::AdsClient client(std::move(o), store);
    REQUIRE(client.Start());
    REQUIRE(WaitFor([&] { return client.Status().failed_attempts >= 2; }));
    INFO(client.Status().last_stream_error);
    CHECK(client.Status().last_stream_error.find(why) != std::string::npos);
    CHECK(store.Current()->clusters.empty());
    client.Stop();
  };

  SECTION("the view's own token and account sync") {
    config::ConfigStore store;
    sluice::xds::AdsClient client(stream(ViewNode("demo", "sleep"), view_token), store);
    REQUIRE(client.Start());
    REQUIRE(WaitFor([&] { return synced(store); }));
    client.Stop();
  }
  SECTION("the view's token for another account of its namespace is refused") {
    refused_with(stream(ViewNode("demo", "httpbin"), view_token),
                 "authorization failed: no identities ([spiffe://cluster.local/ns/demo/sa/"
                 "sleep]) matched demo/httpbin");
  }
  SECTION("the agent's own token for a pod's namespace is refused") {
    refused_with(stream(ViewNode("demo", "sleep"), agent_token),
                 "authorization failed: no identities ([spiffe://cluster.local/ns/sluice-system/"
                 "sa/sluice-agent]) matched demo/sleep");
  }
  SECTION("a token of another audience, and one whose pod is gone, are unauthenticated") {
    auto other = kube::RequestToken(
        admin,
        {.ns = "demo", .service_account = "sleep", .audience = "https://kubernetes.default.svc"});
    REQUIRE(other.has_value());
    refused_with(stream(ViewNode("demo", "sleep"), other->token), "authentication failure");
    REQUIRE(admin.Request("DELETE", "/api/v1/namespaces/demo/pods/sleep-1", nullptr, ""));
    refused_with(stream(ViewNode("demo", "sleep"), view_token),
                 "authentication failure: the service account authentication returns an error");
  }
  server.Stop();
}
