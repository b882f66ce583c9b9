// sluice_kube against the API stand-in (tests/kube/apiserver_standin.py) over TLS:
// requests and their Status errors, credentials, paged lists, watches, bookmarks, the
// relist after a 410, token rotation, backoff while the server is down, and Stop().
#include <atomic>
#include <chrono>
#include <filesystem>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "sluice/kube/client.h"
#include "standin_process.h"

namespace sluice::kube {
namespace {

using testing::MakePod;
using testing::StandinProcess;
using namespace std::chrono_literals;

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

void MustCreate(Client& c, const std::string& path, const nlohmann::json& obj) {
  auto r = c.Post(path, obj);
  INFO(path << ": " << (r ? "" : r.error().message));
  REQUIRE(r.has_value());
}

void CreateNamespace(Client& c, const std::string& name,
                     const nlohmann::json& labels = nlohmann::json::object()) {
  MustCreate(c, "/api/v1/namespaces", {{"metadata", {{"name", name}, {"labels", labels}}}});
}

void CreatePod(Client& c, const std::string& ns, const std::string& name,
               const std::string& node = "node-1") {
  MustCreate(c, "/api/v1/namespaces/" + ns + "/pods", MakePod(ns, name, node));
}

void Label(Client& c, const std::string& path, const std::string& key,
           const nlohmann::json& value) {
  nlohmann::json patch = {{"metadata", {{"labels", {{key, value}}}}}};
  auto r = c.Request("PATCH", path, &patch, "application/merge-patch+json");
  INFO(path << ": " << (r ? "" : r.error().message));
  REQUIRE(r.has_value());
}

// Events a reflector reported, for assertions.
struct Recorder {
  std::mutex mu;
  std::vector<std::pair<EventType, std::string>> events;
  Reflector::OnEvent Callback() {
    return [this](EventType t, const std::string& key, const nlohmann::json&) {
      std::lock_guard lock(mu);
      events.emplace_back(t, key);
    };
  }
  bool Has(EventType t, const std::string& key) {
    std::lock_guard lock(mu);
    for (auto& [et, k] : events)
      if (et == t && k == key)
        return true;
    return false;
  }
  size_t Size() {
    std::lock_guard lock(mu);
    return events.size();
  }
};

TEST_CASE(
    "kube client: Get answers objects, and 404, 401 and 403 errors name the Status reason and "
    "message",
    "[kube]") {
  StandinProcess api;
  Client c(api.Config());
  CreateNamespace(c, "demo");
  CreatePod(c, "demo", "web");

  auto pod = GetPod(c, "demo", "web");
  REQUIRE(pod.has_value());
  CHECK((*pod)["metadata"]["name"] == "web");
  CHECK((*pod)["kind"] == "Pod");
  auto ns = GetNamespace(c, "demo");
  REQUIRE(ns.has_value());
  CHECK((*ns)["metadata"]["labels"]["kubernetes.io/metadata.name"] == "demo");

  auto missing = GetPod(c, "demo", "nope");
  REQUIRE_FALSE(missing.has_value());
  CHECK(missing.error().code == 404);
  CHECK(missing.error().message ==
        "GET /api/v1/namespaces/demo/pods/nope: 404 NotFound: pods \"nope\" not found");

  Client stranger(api.Config("not-a-token", "stranger-token"));
  auto denied = GetPod(stranger, "demo", "web");
  REQUIRE_FALSE(denied.has_value());
  CHECK(denied.error().code == 401);
  CHECK(denied.error().message ==
        "GET /api/v1/namespaces/demo/pods/web: 401 Unauthorized: Unauthorized");

  api.Control("forbid", {{"rules", {{{"user", "admin"}, {"verb", "list"}, {"resource", "pods"}}}}});
  auto forbidden = c.Get("/api/v1/pods");
  REQUIRE_FALSE(forbidden.has_value());
  CHECK(forbidden.error().code == 403);
  CHECK(forbidden.error().message ==
        "GET /api/v1/pods: 403 Forbidden: pods is forbidden: User \"admin\" cannot list resource "
        "\"pods\" in API group \"\" at the cluster scope");
  CHECK(GetPod(c, "demo", "web").has_value());  // get is still allowed

  auto dup = c.Post("/api/v1/namespaces", {{"metadata", {{"name", "demo"}}}});
  REQUIRE_FALSE(dup.has_value());
  CHECK(dup.error().code == 409);
  CHECK(dup.error().message ==
        "POST /api/v1/namespaces: 409 AlreadyExists: namespaces \"demo\" already exists");

  // No answer at all: code 0, the server named.
  ClientConfig dead = api.Config();
  dead.server = "https://127.0.0.1:1";
  Client nobody(dead);
  auto down = nobody.Get("/api/v1/pods");
  REQUIRE_FALSE(down.has_value());
  CHECK(down.error().code == 0);
  CHECK_THAT(down.error().message, Catch::Contains("https://127.0.0.1:1"));
}

TEST_CASE("kube client: the server's certificate is verified against the CA file", "[kube]") {
  StandinProcess api;
  ClientConfig config = api.Config();
  config.ca_file = "";  // the system's bundle does not know the stand-in's certificate
  Client c(config);
  auto r = c.Get("/version");
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().code == 0);
  CHECK_THAT(r.error().message, Catch::Contains("certificate"));
}

TEST_CASE("kube client: a kubeconfig's server, certificate-authority-data and token or tokenFile",
          "[kube]") {
  StandinProcess api;
  const std::string pem = StandinProcess::ReadFile(api.ca_file());
  static constexpr char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string b64;
  for (size_t i = 0; i < pem.size(); i += 3) {
    uint32_t n = static_cast<unsigned char>(pem[i]) << 16;
    if (i + 1 < pem.size())
      n |= static_cast<unsigned char>(pem[i + 1]) << 8;
    if (i + 2 < pem.size())
      n |= static_cast<unsigned char>(pem[i + 2]);
    b64 += kB64[(n >> 18) & 63];
    b64 += kB64[(n >> 12) & 63];
    b64 += i + 1 < pem.size() ? kB64[(n >> 6) & 63] : '=';
    b64 += i + 2 < pem.size() ? kB64[n & 63] : '=';
  }
  const std::string path = api.dir() + "/kubeconfig";
  SECTION("inline token and certificate-authority-data") {
    StandinProcess::WriteFile(
        path,
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "contexts:\n- name: c\n  context: {cluster: k, user: u}\n"
        "clusters:\n- name: k\n  cluster:\n    server: " +
            api.url() + "\n    certificate-authority-data: " + b64 +
            "\nusers:\n- name: u\n  user:\n    token: " + testing::kAdminToken + "\n");
    auto config = KubeconfigConfig(path);
    REQUIRE(config.has_value());
    CHECK(config->server == api.url());
    CHECK(config->ca_data == pem);
    Client c(*config);
    auto v = c.Get("/version");
    INFO((v ? "" : v.error().message));
    REQUIRE(v.has_value());
    CHECK((*v)["major"] == "1");
  }
  SECTION("tokenFile and certificate-authority relative to the kubeconfig") {
    StandinProcess::WriteFile(api.dir() + "/tok", std::string(testing::kAdminToken) + "\n");
    StandinProcess::WriteFile(path,
                              "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
                              "contexts:\n- name: c\n  context: {cluster: k, user: u}\n"
                              "clusters:\n- name: k\n  cluster:\n    server: " +
                                  api.url() +
                                  "\n    certificate-authority: cert.pem\n"
                                  "users:\n- name: u\n  user:\n    tokenFile: tok\n");
    auto config = KubeconfigConfig(path);
    REQUIRE(config.has_value());
    CHECK(config->ca_file == api.ca_file());
    CHECK(config->token_file == api.dir() + "/tok");
    Client c(*config);
    CHECK(c.Get("/api/v1/namespaces").has_value());
  }
  SECTION("errors name the file and what is missing") {
    StandinProcess::WriteFile(path, "apiVersion: v1\nkind: Config\ncurrent-context: gone\n");
    auto config = KubeconfigConfig(path);
    REQUIRE_FALSE(config.has_value());
    CHECK(config.error().message == "kubeconfig " + path + ": context \"gone\" not found");
    auto none = KubeconfigConfig(api.dir() + "/no-such-file");
    REQUIRE_FALSE(none.has_value());
    CHECK_THAT(none.error().message, Catch::Contains("no-such-file"));
  }
}

TEST_CASE("kube client: in-cluster config from the environment and the service account directory",
          "[kube]") {
  StandinProcess api;
  const std::string sa = api.dir() + "/sa";
  std::filesystem::create_directories(sa);
  ::setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1", 1);
  ::setenv("KUBERNETES_SERVICE_PORT", "443", 1);
  auto missing = InClusterConfig(sa);
  REQUIRE_FALSE(missing.has_value());
  CHECK_THAT(missing.error().message, Catch::Contains(sa + "/token"));
  StandinProcess::WriteFile(sa + "/token", "t");
  StandinProcess::WriteFile(sa + "/ca.crt", "c");
  auto config = InClusterConfig(sa);
  REQUIRE(config.has_value());
  CHECK(config->server == "https://10.96.0.1:443");
  CHECK(config->token_file == sa + "/token");
  CHECK(config->ca_file == sa + "/ca.crt");
  ::unsetenv("KUBERNETES_SERVICE_HOST");
  auto no_env = InClusterConfig(sa);
  REQUIRE_FALSE(no_env.has_value());
  CHECK_THAT(no_env.error().message, Catch::Contains("KUBERNETES_SERVICE_HOST"));
  ::unsetenv("KUBERNETES_SERVICE_PORT");
}

TEST_CASE("kube client: GetDaemonSet is nullopt when it is gone, TokenRequest and TokenReview",
          "[kube]") {
  StandinProcess api;
  Client c(api.Config());
  CreateNamespace(c, "sluice-system");
  auto gone = GetDaemonSet(c, "sluice-system", "sluice-agent");
  REQUIRE(gone.has_value());
  CHECK_FALSE(gone->has_value());
  MustCreate(c, "/apis/apps/v1/namespaces/sluice-system/daemonsets",
             {{"metadata", {{"name", "sluice-agent"}}}, {"spec", nlohmann::json::object()}});
  auto ds = GetDaemonSet(c, "sluice-system", "sluice-agent");
  REQUIRE(ds.has_value());
  REQUIRE(ds->has_value());
  CHECK((**ds)["kind"] == "DaemonSet");

  CreateNamespace(c, "demo");
  CreatePod(c, "demo", "web");
  auto pod = GetPod(c, "demo", "web");
  REQUIRE(pod.has_value());
  TokenRequestSpec spec{.ns = "demo",
                        .service_account = "default",
                        .audience = "istio-ca",
                        .bound_pod_name = "web",
                        .bound_pod_uid = (*pod)["metadata"]["uid"].get<std::string>()};
  auto token = RequestToken(c, spec);
  INFO((token ? "" : token.error().message));
  REQUIRE(token.has_value());
  CHECK_FALSE(token->token.empty());
  const auto left = token->expires - std::chrono::system_clock::now();
  CHECK(left > std::chrono::minutes(55));
  CHECK(left < std::chrono::minutes(61));

  auto review = ReviewToken(c, token->token, {"istio-ca"});
  REQUIRE(review.has_value());
  CHECK(review->authenticated);
  CHECK(review->username == "system:serviceaccount:demo:default");
  auto wrong_audience = ReviewToken(c, token->token, {"somebody-else"});
  REQUIRE(wrong_audience.has_value());
  CHECK_FALSE(wrong_audience->authenticated);
  CHECK_THAT(wrong_audience->error, Catch::Contains("somebody-else"));
  // The token dies with its pod.
  REQUIRE(c.Request("DELETE", "/api/v1/namespaces/demo/pods/web").has_value());
  auto dead = ReviewToken(c, token->token, {"istio-ca"});
  REQUIRE(dead.has_value());
  CHECK_FALSE(dead->authenticated);
  CHECK_THAT(dead->error, Catch::Contains("no longer exists"));

  auto no_sa = RequestToken(c, {.ns = "demo", .service_account = "nobody", .audience = "x"});
  REQUIRE_FALSE(no_sa.has_value());
  CHECK(no_sa.error().code == 404);
  CHECK_THAT(no_sa.error().message, Catch::Contains("serviceaccounts \"nobody\" not found"));
}

TEST_CASE("kube reflector: a paged list follows continue tokens and honours the field selector",
          "[kube]") {
  StandinProcess api;
  Client c(api.Config());
  CreateNamespace(c, "demo");
  for (int i = 0; i < 5; ++i)
    CreatePod(c, "demo", "p" + std::to_string(i));
  CreatePod(c, "demo", "elsewhere", "node-2");
  Recorder rec;
  Reflector r(c, {.path = "/api/v1/pods", .field_selector = "spec.nodeName=node-1", .page_size = 2},
              rec.Callback());
  r.Start();
  REQUIRE(WaitFor([&] { return r.HasSynced(); }));
  auto objects = r.Objects();
  CHECK(objects.size() == 5);
  CHECK_FALSE(objects.contains("demo/elsewhere"));
  CHECK(rec.Has(EventType::kAdded, "demo/p4"));
  // five items in pages of two: three list requests
  CHECK(api.Control("stats")["requests"]["list pods"] == 3);
  CHECK(r.Status().lists == 1);
}

TEST_CASE("kube reflector: a continue token that expires mid-list restarts the list", "[kube]") {
  StandinProcess api;
  Client c(api.Config());
  CreateNamespace(c, "demo");
  for (int i = 0; i < 4; ++i)
    CreatePod(c, "demo", "p" + std::to_string(i));
  // The server answers one page, then compacts: the first page's continue token names
  // a compacted version and the next page is 410 Expired.
  api.Control("compact", {{"after_list_pages", 1}});
  auto page = c.Get("/api/v1/pods?limit=2");
  REQUIRE(page.has_value());
  const std::string cont = (*page)["metadata"]["continue"];
  auto expired = c.Get("/api/v1/pods?limit=2&continue=" + cont);
  REQUIRE_FALSE(expired.has_value());
  CHECK(expired.error().code == 410);
  CHECK_THAT(expired.error().message,
             Catch::Contains("410 Expired: The provided continue parameter is too old"));

  api.Control("compact", {{"after_list_pages", 1}});
  Recorder rec;
  Reflector r(c, {.path = "/api/v1/pods", .page_size = 1}, rec.Callback());
  r.Start();
  REQUIRE(WaitFor([&] { return r.HasSynced(); }));
  CHECK(r.Objects().size() == 4);
  CHECK(rec.Size() == 4);
  auto st = r.Status();
  CHECK(st.gone == 1);
  CHECK(st.lists == 1);
  // one page, the 410, then four pages from the start
  CHECK(api.Control("stats")["requests"]["list pods"] == 2 + 6);
}

TEST_CASE(
    "kube reflector: watch events ADDED, MODIFIED and DELETED reach the cache and the callback",
    "[kube]") {
  StandinProcess api;
  Client c(api.Config());
  CreateNamespace(c, "demo");
  Recorder rec;
  Reflector r(c, {.path = "/api/v1/pods"}, rec.Callback());
  r.Start();
  REQUIRE(WaitFor([&] { return r.HasSynced() && r.Status().watches >= 1; }));
  CreatePod(c, "demo", "web");
  REQUIRE(WaitFor([&] { return rec.Has(EventType::kAdded, "demo/web"); }));
  Label(c, "/api/v1/namespaces/demo/pods/web", "version", "v2");
  REQUIRE(WaitFor([&] { return rec.Has(EventType::kModified, "demo/web"); }));
  CHECK(r.Objects().at("demo/web")["metadata"]["labels"]["version"] == "v2");
  REQUIRE(c.Request("DELETE", "/api/v1/namespaces/demo/pods/web").has_value());
  REQUIRE(WaitFor([&] { return rec.Has(EventType::kDeleted, "demo/web"); }));
  CHECK(r.Objects().empty());
  auto st = r.Status();
  CHECK(st.events == 3);
  CHECK(st.lists == 1);
  CHECK(st.last_error.empty());
}

TEST_CASE("kube reflector: bookmarks move the resourceVersion on without events", "[kube]") {
  StandinProcess api({.bookmark_interval = 0.2});
  Client c(api.Config());
  CreateNamespace(c, "demo");
  Recorder rec;
  Reflector r(c, {.path = "/api/v1/pods"}, rec.Callback());
  r.Start();
  REQUIRE(WaitFor([&] { return r.HasSynced() && r.Status().watches >= 1; }));
  const std::string before = r.Status().resource_version;
  CreateNamespace(c, "more");  // other kinds' writes advance the global version
  const std::string now = std::to_string(api.Control("stats")["resourceVersion"].get<int>());
  REQUIRE(before != now);
  REQUIRE(WaitFor([&] { return r.Status().resource_version == now; }));
  CHECK(r.Status().bookmarks >= 1);
  CHECK(r.Status().events == 0);
  CHECK(rec.Size() == 0);
}

TEST_CASE("kube reflector: a 410 on the watch relists and the diff reports what changed in the gap",
          "[kube]") {
  StandinProcess api;
  Client c(api.Config());
  CreateNamespace(c, "demo");
  CreatePod(c, "demo", "stays");
  CreatePod(c, "demo", "goes");
  CreatePod(c, "demo", "changes");
  Recorder rec;
  Reflector r(c, {.path = "/api/v1/pods", .backoff_initial = 100ms}, rec.Callback());
  r.Start();
  REQUIRE(WaitFor([&] { return r.HasSynced() && r.Status().watches >= 1; }));
  REQUIRE(rec.Size() == 3);
  // A gap: no watch is served; meanwhile objects change and the server compacts past
  // the reflector's version.
  api.Control("stall", {{"watches", true}});
  api.Control("stop-watches");
  REQUIRE(c.Request("DELETE", "/api/v1/namespaces/demo/pods/goes").has_value());
  Label(c, "/api/v1/namespaces/demo/pods/changes", "version", "v2");
  CreatePod(c, "demo", "new");
  api.Control("compact");
  api.Control("stall", {{"watches", false}});
  REQUIRE(WaitFor([&] { return r.Status().lists >= 2; }));
  REQUIRE(WaitFor([&] { return rec.Has(EventType::kAdded, "demo/new"); }));
  CHECK(rec.Has(EventType::kDeleted, "demo/goes"));
  CHECK(rec.Has(EventType::kModified, "demo/changes"));
  CHECK_FALSE(rec.Has(EventType::kModified, "demo/stays"));
  CHECK(rec.Size() == 6);
  auto st = r.Status();
  CHECK(st.gone >= 1);
  CHECK(r.Objects().size() == 3);
  CHECK(r.Objects().at("demo/changes")["metadata"]["labels"]["version"] == "v2");
  // and it watches on from the new list
  CreatePod(c, "demo", "after");
  REQUIRE(WaitFor([&] { return rec.Has(EventType::kAdded, "demo/after"); }));
}

TEST_CASE("kube client: a rotated token is re-read from its file", "[kube]") {
  StandinProcess api;
  StandinProcess::WriteFile(api.dir() + "/tokens", "old-token admin\n");
  ClientConfig config = api.Config("old-token");
  Client c(config);
  REQUIRE(c.Get("/api/v1/namespaces").has_value());
  // The server revokes the old token and knows only the new one: 401 until the file
  // holds the new token.
  StandinProcess::WriteFile(api.dir() + "/tokens", "new-token admin\n");
  auto refused = c.Get("/api/v1/namespaces");
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.error().code == 401);
  StandinProcess::WriteFile(config.token_file, "new-token\n");
  auto ok = c.Get("/api/v1/namespaces");
  INFO((ok ? "" : ok.error().message));
  CHECK(ok.has_value());
}

TEST_CASE("kube reflector: backs off while the server is down and recovers when it is back",
          "[kube]") {
  StandinProcess api;
  Client c(api.Config());
  CreateNamespace(c, "demo");
  CreatePod(c, "demo", "before");
  Recorder rec;
  Reflector r(c, {.path = "/api/v1/pods", .backoff_initial = 100ms, .backoff_max = 800ms},
              rec.Callback());
  r.Start();
  REQUIRE(WaitFor([&] { return r.HasSynced() && r.Status().watches >= 1; }));
  api.Kill();
  std::this_thread::sleep_for(3s);
  auto st = r.Status();
  CHECK(st.errors >= 2);
  // 100, 200, 400, 800, 800 ms (each ×0.5..1.5): no more than about eight tries in 3 s
  CHECK(st.errors <= 8);
  CHECK_FALSE(st.last_error.empty());
  api.Restart();  // a fresh store: "before" is gone, "after" is new
  Client c2(api.Config());
  CreateNamespace(c2, "demo");
  CreatePod(c2, "demo", "after");
  REQUIRE(WaitFor([&] { return rec.Has(EventType::kAdded, "demo/after"); }, 5000ms));
  REQUIRE(WaitFor([&] { return rec.Has(EventType::kDeleted, "demo/before"); }));
  CHECK(r.Status().last_error.empty());
}

TEST_CASE("kube reflector: Stop ends a quiet watch within a second", "[kube]") {
  StandinProcess api;
  Client c(api.Config());
  Reflector r(c, {.path = "/api/v1/namespaces", .watch_timeout_min = 300s}, {});
  r.Start();
  REQUIRE(WaitFor([&] { return r.HasSynced() && r.Status().watches >= 1; }));
  std::this_thread::sleep_for(300ms);
  const auto t0 = std::chrono::steady_clock::now();
  r.Stop();
  const auto took = std::chrono::steady_clock::now() - t0;
  CHECK(took < 1s);
  CHECK(r.Objects().contains("default"));
}

}  // namespace
}  // namespace sluice::kube
