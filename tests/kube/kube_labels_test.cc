// The node agent's label sources (agent/daemon/labels.h, kube_labels.h): KubeLabels
// against the API stand-in (the node's pods and all namespaces into a LabelSnapshot,
// woken per change, a direct read for a pod not seen yet), and the label file's
// optional pod fields.
#include <atomic>
#include <chrono>
#include <thread>

#include <catch2/catch.hpp>

#include "kube_labels.h"
#include "labels.h"
#include "standin_process.h"

namespace sluice::agent {
namespace {

using kube::testing::MakePod;
using kube::testing::StandinProcess;
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

void Must(const Result<nlohmann::json>& r) {
  INFO((r ? "" : r.error().message));
  REQUIRE(r.has_value());
}

// Polls until a snapshot comes (the source gives one only after a change).
std::optional<LabelSnapshot> NextSnapshot(KubeLabels& src) {
  std::optional<LabelSnapshot> out;
  WaitFor([&] {
    auto r = src.Poll();
    REQUIRE(r.has_value());
    if (*r)
      out = std::move(*r);
    return out.has_value();
  });
  return out;
}

TEST_CASE(
    "kube labels: the node's pods and every namespace become the label snapshot, and each change "
    "wakes the poller",
    "[kube]") {
  StandinProcess api;
  kube::Client c(api.Config());
  Must(c.Post(
      "/api/v1/namespaces",
      {{"metadata", {{"name", "shop"}, {"labels", {{"istio.io/dataplane-mode", "sluice"}}}}}}));
  auto web = MakePod("shop", "web", "node-1", {{"app", "web"}});
  web["metadata"]["annotations"] = {{"inject.istio.io/templates", "grpc-agent"}};
  web["spec"]["serviceAccountName"] = "web-sa";
  web["status"] = {{"podIP", "10.244.0.5"},
                   {"podIPs", {{{"ip", "10.244.0.5"}}, {{"ip", "fd00::5"}}}}};
  Must(c.Post("/api/v1/namespaces/shop/pods", web));
  auto host = MakePod("shop", "hostnet", "node-1");
  host["spec"]["hostNetwork"] = true;
  Must(c.Post("/api/v1/namespaces/shop/pods", host));
  Must(c.Post("/api/v1/namespaces/shop/pods", MakePod("shop", "elsewhere", "node-2")));

  std::atomic<int> wakes{0};
  KubeLabels src(c, "node-1", [&] { ++wakes; });
  auto before = src.Poll();
  REQUIRE(before.has_value());
  CHECK_FALSE(before->has_value());  // nothing before the first lists
  src.Start();
  auto snap = NextSnapshot(src);
  REQUIRE(snap);
  CHECK(src.Synced());
  CHECK(snap->namespaces.at("shop").at("istio.io/dataplane-mode") == "sluice");
  CHECK(snap->namespaces.contains("default"));
  CHECK(snap->namespaces.contains("kube-system"));
  REQUIRE(snap->pods.size() == 2);  // not the pod of node-2
  const auto& p = snap->pods.at({"shop", "web"});
  CHECK(p.labels.at("app") == "web");
  CHECK(p.annotations.at("inject.istio.io/templates") == "grpc-agent");
  CHECK(p.service_account == "web-sa");
  CHECK(p.ips == std::vector<std::string>{"10.244.0.5", "fd00::5"});
  CHECK_FALSE(p.uid.empty());
  CHECK_FALSE(p.host_network);
  CHECK(snap->pods.at({"shop", "hostnet"}).host_network);
  auto again = src.Poll();
  REQUIRE(again.has_value());
  CHECK_FALSE(again->has_value());  // unchanged

  const int woken = wakes.load();
  nlohmann::json patch = {{"metadata", {{"labels", {{"istio.io/dataplane-mode", nullptr}}}}}};
  Must(c.Request("PATCH", "/api/v1/namespaces/shop", &patch, "application/merge-patch+json"));
  REQUIRE(WaitFor([&] { return wakes.load() > woken; }));
  auto changed = NextSnapshot(src);
  REQUIRE(changed);
  CHECK_FALSE(changed->namespaces.at("shop").contains("istio.io/dataplane-mode"));

  Must(c.Request("DELETE", "/api/v1/namespaces/shop/pods/web"));
  auto deleted = NextSnapshot(src);
  REQUIRE(deleted);
  CHECK_FALSE(deleted->pods.contains({"shop", "web"}));

  auto status = src.Status();
  CHECK(status["synced"] == true);
  CHECK(status["pods"]["lists"] == 1);
  CHECK(status["namespaces"]["events"].get<int>() >= 1);
  src.Stop();
}

TEST_CASE(
    "kube labels: Fetch reads a pod (and its namespace) directly, and a missing pod is no error",
    "[kube]") {
  StandinProcess api;
  kube::Client c(api.Config());
  Must(c.Post("/api/v1/namespaces",
              {{"metadata", {{"name", "shop"}, {"labels", {{"team", "a"}}}}}}));
  Must(c.Post("/api/v1/namespaces/shop/pods", MakePod("shop", "web", "node-1", {{"app", "web"}})));
  KubeLabels src(c, "node-1", {});
  auto f = src.Fetch("shop", "web", true);
  REQUIRE(f.has_value());
  REQUIRE(f->pod);
  CHECK(f->pod->labels.at("app") == "web");
  REQUIRE(f->ns_labels);
  CHECK(f->ns_labels->at("team") == "a");
  auto missing = src.Fetch("shop", "nope", false);
  REQUIRE(missing.has_value());
  CHECK_FALSE(missing->pod);
  CHECK_FALSE(missing->ns_labels);

  api.Control("forbid", {{"rules", {{{"verb", "get"}, {"resource", "pods"}}}}});
  auto denied = src.Fetch("shop", "web", false);
  REQUIRE_FALSE(denied.has_value());
  CHECK(denied.error().code == 403);
}

TEST_CASE("label file: uid, serviceAccount and podIPs are optional pod fields", "[kube]") {
  auto ok = ParseLabels(
      R"({"pods": {"shop/web": {"labels": {"app": "web"}, "uid": "u-1", "serviceAccount": "sa",
          "podIPs": ["10.0.0.5", "fd00::5"]}, "shop/plain": {}}})",
      "labels.json");
  REQUIRE(ok.has_value());
  const auto& web = ok->pods.at({"shop", "web"});
  CHECK(web.uid == "u-1");
  CHECK(web.service_account == "sa");
  CHECK(web.ips == std::vector<std::string>{"10.0.0.5", "fd00::5"});
  CHECK(ok->pods.at({"shop", "plain"}).ips.empty());
  auto bad = ParseLabels(R"({"pods": {"shop/web": {"podIPs": "10.0.0.5"}}})", "labels.json");
  REQUIRE_FALSE(bad.has_value());
  CHECK(bad.error().message == "labels.json: pods.shop/web.podIPs: must be an array of strings");
  auto bad_sa = ParseLabels(R"({"pods": {"shop/web": {"serviceAccount": 3}}})", "labels.json");
  REQUIRE_FALSE(bad_sa.has_value());
  CHECK(bad_sa.error().message == "labels.json: pods.shop/web.serviceAccount: must be a string");
}

}  // namespace
}  // namespace sluice::agent
