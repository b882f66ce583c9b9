// The enrolment rule (agent/enrolment): which pods Sluice serves, from namespace and pod
// labels, and how label, pod and namespace changes enrol or unenrol them.
#include <catch2/catch.hpp>

#include "sluice/enrolment/enrolment.h"

using namespace sluice::enrolment;

namespace {

const Labels kNone;
const Labels kSluice = {{"istio.io/dataplane-mode", "sluice"}};
const Labels kOptOut = {{"istio.io/dataplane-mode", "none"}};
const Labels kAmbient = {{"istio.io/dataplane-mode", "ambient"}};
const Labels kOther = {{"app", "cart"}};

Pod MakePod(std::string ns, std::string name, Labels labels = {}, bool host_network = false,
            std::string uid = "") {
  Pod p;
  p.key = {std::move(ns), std::move(name)};
  p.uid = uid.empty() ? p.key.pod_namespace + "/" + p.key.name : std::move(uid);
  p.labels = std::move(labels);
  p.host_network = host_network;
  return p;
}

std::vector<std::string> Names(const std::vector<Pod>& pods) {
  std::vector<std::string> out;
  for (const auto& p : pods)
    out.push_back(p.key.pod_namespace + "/" + p.key.name);
  return out;
}

using V = std::vector<std::string>;

}  // namespace

TEST_CASE("enrolment rule table") {
  struct Row {
    Labels ns, pod;
    bool host_network;
    bool enrolled;
    Reason reason;
  };
  const Row rows[] = {
      {kNone, kNone, false, false, Reason::kNotLabelled},
      {kOther, kOther, false, false, Reason::kNotLabelled},
      {kSluice, kNone, false, true, Reason::kNamespaceLabel},
      {kSluice, kOther, false, true, Reason::kNamespaceLabel},
      {kSluice, kOptOut, false, false, Reason::kPodOptOut},
      {kSluice, kAmbient, false, false, Reason::kOtherDataplane},
      {kNone, kSluice, false, true, Reason::kPodLabel},
      {kOptOut, kSluice, false, true, Reason::kPodLabel},
      {kAmbient, kNone, false, false, Reason::kNotLabelled},
      {kSluice, kNone, true, false, Reason::kHostNetwork},
      {kNone, kSluice, true, false, Reason::kHostNetwork},
      {kSluice, kSluice, true, false, Reason::kHostNetwork},
  };
  int i = 0;
  for (const auto& row : rows) {
    INFO("row " << i++);
    Decision d = Decide(row.ns, row.pod, row.host_network);
    CHECK(d.enrolled == row.enrolled);
    CHECK(d.reason == row.reason);
  }
  // The value must match exactly: labels are case-sensitive in Kubernetes.
  CHECK_FALSE(Decide({{"istio.io/dataplane-mode", "Sluice"}}, kNone, false).enrolled);
}

TEST_CASE("a pod injected with Istio's grpc-agent template is proxyless: never enrolled") {
  const Labels injected = {{"inject.istio.io/templates", "grpc-agent"},
                           {"sidecar.istio.io/status", R"({"revision":"default"})"}};
  // In an enrolled namespace, and even when the pod asks for Sluice by label: its gRPC
  // library does the routing, a redirect would take the connects away from it.
  for (const Labels& pod : {kNone, kSluice, kOther}) {
    Decision d = Decide(kSluice, pod, false, injected);
    CHECK_FALSE(d.enrolled);
    CHECK(d.reason == Reason::kProxylessGrpc);
    CHECK(ReasonName(d.reason) == "proxyless-grpc");
  }
  CHECK(Decide(kSluice, kNone, true, injected).reason == Reason::kHostNetwork);
  // Asked for but never injected (the namespace is not selected for injection): an
  // ordinary pod, enrolled by its namespace as any other.
  CHECK(Decide(kSluice, kNone, false, {{"inject.istio.io/templates", "grpc-agent"}}) ==
        Decision{true, Reason::kNamespaceLabel});
  // Injected with another template (a sidecar): the labels decide as before.
  CHECK(Decide(kSluice, kNone, false,
               {{"inject.istio.io/templates", "sidecar"}, {"sidecar.istio.io/status", "{}"}})
            .enrolled);
  // The annotation is a comma-separated list, names trimmed as Istio trims them.
  CHECK(NamesGrpcAgentTemplate("grpc-agent"));
  CHECK(NamesGrpcAgentTemplate("custom, grpc-agent "));
  CHECK_FALSE(NamesGrpcAgentTemplate("grpc-agent-v2"));
  CHECK_FALSE(NamesGrpcAgentTemplate("grpc-simple"));
  CHECK_FALSE(NamesGrpcAgentTemplate(""));

  // A running pod's annotations are part of it: the state re-decides on upsert.
  EnrolmentState state;
  state.SetNamespace("echo", kSluice);
  Pod echo = MakePod("echo", "echo-v1");
  CHECK(Names(state.UpsertPod(echo).enrol) == V{"echo/echo-v1"});
  echo.annotations = injected;
  auto changes = state.UpsertPod(echo);
  CHECK(Names(changes.unenrol) == V{"echo/echo-v1"});
  CHECK(changes.enrol.empty());
  CHECK(state.DecisionFor({"echo", "echo-v1"}).reason == Reason::kProxylessGrpc);
  ClusterView before{{{"echo", kSluice}}, {MakePod("echo", "echo-v1")}};
  ClusterView after = before;
  after.pods[0].annotations = injected;
  CHECK(Names(Diff(before, after).unenrol) == V{"echo/echo-v1"});
}

TEST_CASE("labelling a namespace enrols its pods, removing the label unenrols them") {
  EnrolmentState state;
  CHECK(state.UpsertPod(MakePod("shop", "cart")).empty());
  CHECK(state.UpsertPod(MakePod("shop", "opt", kOptOut)).empty());
  CHECK(state.UpsertPod(MakePod("shop", "node-agent", {}, /*host_network=*/true)).empty());
  CHECK(state.UpsertPod(MakePod("other", "db")).empty());

  auto on = state.SetNamespace("shop", kSluice);
  CHECK(Names(on.enrol) == V{"shop/cart"});
  CHECK(on.unenrol.empty());
  CHECK(state.IsEnrolled({"shop", "cart"}));
  CHECK_FALSE(state.IsEnrolled({"shop", "opt"}));
  CHECK(state.DecisionFor({"shop", "node-agent"}).reason == Reason::kHostNetwork);
  CHECK_FALSE(state.IsEnrolled({"other", "db"}));

  // Re-applying the same labels changes nothing.
  CHECK(state.SetNamespace("shop", kSluice).empty());

  // A new pod in a labelled namespace is enrolled on arrival.
  auto arrive = state.UpsertPod(MakePod("shop", "web"));
  CHECK(Names(arrive.enrol) == V{"shop/web"});

  auto off = state.SetNamespace("shop", kOther);
  CHECK(off.enrol.empty());
  CHECK(Names(off.unenrol) == V{"shop/cart", "shop/web"});
  CHECK(state.EnrolledPods().empty());
}

TEST_CASE("pod label changes act on the running pod, both directions") {
  EnrolmentState state;
  state.SetNamespace("shop", kSluice);
  state.UpsertPod(MakePod("shop", "cart"));
  state.UpsertPod(MakePod("plain", "api"));
  REQUIRE(state.IsEnrolled({"shop", "cart"}));

  auto opt_out = state.UpsertPod(MakePod("shop", "cart", kOptOut));
  CHECK(Names(opt_out.unenrol) == V{"shop/cart"});
  auto opt_in_again = state.UpsertPod(MakePod("shop", "cart", kOther));
  CHECK(Names(opt_in_again.enrol) == V{"shop/cart"});

  auto pod_label = state.UpsertPod(MakePod("plain", "api", kSluice));
  CHECK(Names(pod_label.enrol) == V{"plain/api"});
  CHECK(state.DecisionFor({"plain", "api"}).reason == Reason::kPodLabel);
  auto pod_unlabel = state.UpsertPod(MakePod("plain", "api"));
  CHECK(Names(pod_unlabel.unenrol) == V{"plain/api"});

  // A pod enrolled by its own label stays when its namespace label goes away.
  state.UpsertPod(MakePod("shop", "pinned", kSluice));
  auto ns_off = state.SetNamespace("shop", {});
  CHECK(Names(ns_off.unenrol) == V{"shop/cart"});
  CHECK(state.IsEnrolled({"shop", "pinned"}));
}

TEST_CASE("removing pods and namespaces unenrols, re-created pods are distinct") {
  EnrolmentState state;
  state.SetNamespace("shop", kSluice);
  state.UpsertPod(MakePod("shop", "cart", {}, false, "uid-1"));
  state.UpsertPod(MakePod("shop", "web"));

  auto gone = state.RemovePod({"shop", "web"});
  CHECK(Names(gone.unenrol) == V{"shop/web"});
  CHECK(state.RemovePod({"shop", "web"}).empty());  // idempotent

  // Same name, new uid (a StatefulSet pod re-created): old out, new in.
  auto again = state.UpsertPod(MakePod("shop", "cart", {}, false, "uid-2"));
  REQUIRE(again.unenrol.size() == 1);
  REQUIRE(again.enrol.size() == 1);
  CHECK(again.unenrol[0].uid == "uid-1");
  CHECK(again.enrol[0].uid == "uid-2");

  auto ns_gone = state.RemoveNamespace("shop");
  CHECK(Names(ns_gone.unenrol) == V{"shop/cart"});
  CHECK(state.RemoveNamespace("shop").empty());
}

TEST_CASE("a pod seen before its namespace follows the namespace once it arrives") {
  EnrolmentState state;
  CHECK(state.UpsertPod(MakePod("late", "p")).empty());
  auto ns = state.SetNamespace("late", kSluice);
  CHECK(Names(ns.enrol) == V{"late/p"});
}

TEST_CASE("Diff of two full views lists exactly the pods whose enrolment changed") {
  ClusterView before;
  before.namespaces = {{"shop", kSluice}, {"plain", {}}};
  before.pods = {MakePod("shop", "cart"), MakePod("shop", "opt", kOptOut), MakePod("plain", "api"),
                 MakePod("shop", "gone"), MakePod("shop", "stay")};
  ClusterView after;
  after.namespaces = {{"shop", kSluice}, {"plain", kSluice}};
  after.pods = {MakePod("shop", "cart", kOptOut), MakePod("shop", "opt"),
                MakePod("plain", "api"),          MakePod("shop", "stay"),
                MakePod("plain", "new"),          MakePod("plain", "hostnet", {}, true)};
  auto d = Diff(before, after);
  CHECK(Names(d.unenrol) == V{"shop/cart", "shop/gone"});
  CHECK(Names(d.enrol) == V{"plain/api", "plain/new", "shop/opt"});
  CHECK(Diff(after, after).empty());
}
