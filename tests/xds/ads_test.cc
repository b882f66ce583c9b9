// The agent's ADS client against Sluice's ADS server over a real gRPC stream on loopback.
// (istiod cannot run here; the server speaks the same SotW protocol to the client.)
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "fixtures.h"
#include "istiod_cert.h"
#include "sluice/xds/ads_client.h"
#include "sluice/xds/ads_server.h"
#include "sluice/xds/node.h"

using namespace sluice;
using namespace std::chrono_literals;
namespace sx = sluice::xds;
using sluice::xds::AdsServerEvent;
using Kind = AdsServerEvent::Kind;
using envoy::config::cluster::v3::Cluster;

namespace {

const std::string kHost = "httpbin.default.svc.cluster.local";
const std::string kCluster = testing::ClusterName(kHost, 8000);

template <class F>
bool WaitFor(F pred, std::chrono::milliseconds limit = 5s) {
  auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (pred())
      return true;
    std::this_thread::sleep_for(5ms);
  }
  return pred();
}

// The control plane side: a ResourceSet the test edits, served by a real AdsServer, and
// every event the server reports.
class ControlPlane {
 public:
  explicit ControlPlane(sluice::xds::ResourceSet rs) : rs_(std::move(rs)) { Make(); }

  int Start(int port = 0, sluice::xds::AdsServerOptions opts = {}) {
    opts.address = "127.0.0.1:" + std::to_string(port);
    auto p = server_->Start(opts);
    REQUIRE(p);
    return *p;
  }
  void Restart() {  // a fresh server object, as after an istiod restart
    server_->Stop();
    ClearEvents();
    Make();
  }
  void Stop() { server_->Stop(); }
  uint64_t Set(sluice::xds::ResourceSet rs) {
    {
      std::lock_guard lock(mu_);
      rs_ = std::move(rs);
    }
    return server_->Push();
  }
  std::vector<AdsServerEvent> Events() {
    std::lock_guard lock(mu_);
    return events_;
  }
  std::vector<AdsServerEvent> Events(Kind k) {
    std::vector<AdsServerEvent> out;
    for (auto& e : Events()) {
      if (e.kind == k)
        out.push_back(e);
    }
    return out;
  }
  void ClearEvents() {
    std::lock_guard lock(mu_);
    events_.clear();
  }
  sluice::xds::AdsServer& server() { return *server_; }
  std::string last_node_id;
  envoy::config::core::v3::Node last_node;

 private:
  void Make() {
    server_ =
        std::make_unique<sluice::xds::AdsServer>([this](const envoy::config::core::v3::Node& n) {
          std::lock_guard lock(mu_);
          last_node = n;
          return rs_;
        });
    server_->OnEvent([this](const AdsServerEvent& e) {
      std::lock_guard lock(mu_);
      events_.push_back(e);
    });
  }
  std::mutex mu_;
  sluice::xds::ResourceSet rs_;
  std::vector<AdsServerEvent> events_;
  std::unique_ptr<sluice::xds::AdsServer> server_;
};

sx::NodeIdentity TestNode() {
  sx::NodeIdentity id;
  id.ips = {"10.244.1.5"};
  id.pod_name = "sleep-7f8b9c-x2x4z";
  id.pod_namespace = "default";
  id.workload_name = "sleep";
  id.labels = {{"app", "sleep"}};
  return id;
}

sx::AdsClientOptions ClientOptions(int port) {
  sx::AdsClientOptions o;
  o.server = "127.0.0.1:" + std::to_string(port);
  o.node = sx::BuildNode(TestNode());
  o.backoff = {.initial = 20ms, .max = 200ms, .multiplier = 2.0, .jitter = 0.2};
  o.protocol = sx::XdsProtocol::kSotw;  // this file checks the SotW exchange (Delta: delta_test.cc)
  return o;
}

// Records every published snapshot and diff.
struct Recorder {
  explicit Recorder(config::ConfigStore& store) {
    store.Subscribe([this](const config::SnapshotPtr& s, const config::Diff& d) {
      std::lock_guard lock(mu);
      snapshots.push_back(s);
      diffs.push_back(d);
    });
  }
  size_t count() {
    std::lock_guard lock(mu);
    return snapshots.size();
  }
  std::mutex mu;
  std::vector<config::SnapshotPtr> snapshots;
  std::vector<config::Diff> diffs;
};

bool Synced(config::ConfigStore& store, size_t clusters = 1) {
  auto s = store.Current();
  return s->clusters.size() == clusters && s->endpoints.size() == clusters &&
         s->listeners.size() == 1 && s->routes.size() == 1;
}

size_t EndpointCount(const config::SnapshotPtr& s, const std::string& cluster) {
  auto it = s->endpoints.find(cluster);
  if (it == s->endpoints.end())
    return 0;
  size_t n = 0;
  for (const auto& loc : it->second->endpoints())
    n += loc.lb_endpoints_size();
  return n;
}

}  // namespace

TEST_CASE("initial sync: CDS, EDS, LDS, RDS applied and ACKed with the server's version") {
  ControlPlane cp(testing::HttpbinSet(3));
  int port = cp.Start();
  config::ConfigStore store;
  sx::AdsClient client(ClientOptions(port), store);
  REQUIRE(client.Start());

  REQUIRE(WaitFor([&] { return Synced(store) && cp.Events(Kind::kAck).size() >= 4; }));
  auto snap = store.Current();
  CHECK(EndpointCount(snap, kCluster) == 3);
  CHECK(snap->routes.at("8000")->virtual_hosts(0).domains(0) == kHost);
  // The snapshot records the version of each type it was built from.
  CHECK(snap->versions.size() == 4);
  for (const auto& [type, v] : snap->versions)
    CHECK(v == "1");

  // The server saw an ACK for each type, with the version it sent and its nonce.
  std::set<std::string> acked;
  for (const auto& e : cp.Events(Kind::kAck)) {
    CHECK(e.version == "1");
    CHECK_FALSE(e.nonce.empty());
    acked.insert(e.type_url);
  }
  const std::set<std::string> all_types{
      std::string(sx::kClusterType), std::string(sx::kEndpointType), std::string(sx::kListenerType),
      std::string(sx::kRouteType)};
  CHECK(acked == all_types);
  CHECK(cp.Events(Kind::kNack).empty());
  auto st = client.Status();
  CHECK(st.connected);
  CHECK(st.types.at(std::string(sx::kClusterType)).acked_version == "1");
  CHECK(st.types.at(std::string(sx::kEndpointType)).subscribed == 1);

  // The node arrived as sent: istiod's ID shape and metadata.
  CHECK(cp.Events(Kind::kConnect).at(0).node_id ==
        "sidecar~10.244.1.5~sleep-7f8b9c-x2x4z.default~default.svc.cluster.local");
  const auto& md = cp.last_node.metadata().fields();
  CHECK(md.at("NAMESPACE").string_value() == "default");
  CHECK(md.at("INSTANCE_IPS").string_value() == "10.244.1.5");
  CHECK(md.at("LABELS").struct_value().fields().at("app").string_value() == "sleep");
  client.Stop();
}

TEST_CASE("warming: requests go CDS, EDS, LDS, RDS and no snapshot holds a dangling reference") {
  ControlPlane cp(testing::HttpbinSet(2));
  int port = cp.Start();
  config::ConfigStore store;
  Recorder rec(store);
  sx::AdsClient client(ClientOptions(port), store);
  REQUIRE(client.Start());
  REQUIRE(WaitFor([&] { return Synced(store) && cp.Events(Kind::kAck).size() >= 4; }));
  client.Stop();

  // The first request of each type, in the order the server received them.
  std::vector<std::string> order;
  for (const auto& e : cp.Events(Kind::kRequest)) {
    if (std::find(order.begin(), order.end(), e.type_url) == order.end())
      order.push_back(e.type_url);
  }
  const std::vector<std::string> want{std::string(sx::kClusterType), std::string(sx::kEndpointType),
                                      std::string(sx::kListenerType), std::string(sx::kRouteType)};
  CHECK(order == want);
  // EDS and RDS name exactly what the cluster and listener refer to.
  for (const auto& e : cp.Events(Kind::kRequest)) {
    if (e.type_url == sx::kEndpointType)
      CHECK(e.resource_names == std::vector<std::string>{kCluster});
    if (e.type_url == sx::kRouteType)
      CHECK(e.resource_names == std::vector<std::string>{"8000"});
    if (e.type_url == sx::kClusterType)
      CHECK(e.resource_names.empty());  // wildcard
  }
  // The cluster became active together with its endpoints, the listener with its route.
  std::lock_guard lock(rec.mu);
  REQUIRE(rec.snapshots.size() == 2);
  CHECK(rec.diffs[0].clusters.added == std::vector<std::string>{kCluster});
  CHECK(rec.diffs[0].endpoints.added == std::vector<std::string>{kCluster});
  CHECK(rec.snapshots[0]->listeners.empty());
  CHECK(rec.diffs[1].listeners.added == std::vector<std::string>{"0.0.0.0_8000"});
  CHECK(rec.diffs[1].routes.added == std::vector<std::string>{"8000"});
  CHECK(rec.diffs[1].clusters.empty());
}

TEST_CASE("a bad resource is NACKed with its error and the previous config stays") {
  ControlPlane cp(testing::HttpbinSet(2));
  int port = cp.Start();
  config::ConfigStore store;
  sx::AdsClient client(ClientOptions(port), store);
  REQUIRE(client.Start());
  REQUIRE(WaitFor([&] { return Synced(store) && cp.Events(Kind::kAck).size() >= 4; }));
  auto before = store.Current();

  auto bad = testing::HttpbinSet(2);
  bad.clusters.at(kCluster).set_lb_policy(Cluster::CLUSTER_PROVIDED);
  uint64_t v = cp.Set(bad);
  REQUIRE(v == 2);
  REQUIRE(WaitFor([&] { return !cp.Events(Kind::kNack).empty(); }));
  auto nack = cp.Events(Kind::kNack).at(0);
  CHECK(nack.type_url == sx::kClusterType);
  CHECK(nack.version == "1");  // the version the client still runs
  // Envoy's CDS text: the refused clusters by name, each with its reason.
  CHECK(nack.error == "Error adding/updating cluster(s) " + kCluster +
                          ": lb_policy: CLUSTER_PROVIDED is only valid for an ORIGINAL_DST "
                          "cluster, not EDS");
  std::this_thread::sleep_for(100ms);
  CHECK(store.Current()->generation == before->generation);
  CHECK(store.Current()->clusters.at(kCluster) == before->clusters.at(kCluster));
  auto st = client.Status().types.at(std::string(sx::kClusterType));
  CHECK(st.acked_version == "1");
  CHECK(st.nacks == 1);
  CHECK(st.last_nack == nack.error);

  // Types are independent, as in Envoy: new endpoints are taken for the cluster in force
  // while its refused update stays refused.
  bad = testing::HttpbinSet(5);
  bad.clusters.at(kCluster).set_lb_policy(Cluster::CLUSTER_PROVIDED);
  cp.Set(bad);
  REQUIRE(WaitFor([&] { return EndpointCount(store.Current(), kCluster) == 5; }));
  CHECK(store.Current()->clusters.at(kCluster)->lb_policy() == Cluster::LEAST_REQUEST);
  // The server does not resend a refused CDS whose content did not change.
  CHECK(cp.Events(Kind::kNack).size() == 1);

  // The next good push is taken.
  auto good = testing::HttpbinSet(4);
  good.clusters.at(kCluster).set_lb_policy(Cluster::ROUND_ROBIN);
  cp.Set(good);
  REQUIRE(WaitFor([&] { return EndpointCount(store.Current(), kCluster) == 4; }));
  REQUIRE(WaitFor(
      [&] { return client.Status().types.at(std::string(sx::kClusterType)).last_nack.empty(); }));
  CHECK(store.Current()->clusters.at(kCluster)->lb_policy() == Cluster::ROUND_ROBIN);
  CHECK(client.Status().types.at(std::string(sx::kClusterType)).acked_version == "4");
  client.Stop();
}

TEST_CASE("an endpoint-only update reaches the client as an EDS-only diff") {
  auto rs = testing::HttpbinSet(2);
  const std::string other = testing::ClusterName("reviews.default.svc.cluster.local", 9080);
  rs.Add(testing::EdsCluster(other));
  rs.Add(testing::Cla(other, "10.0.1.1", 9080, 2));
  ControlPlane cp(rs);
  int port = cp.Start();
  config::ConfigStore store;
  Recorder rec(store);
  sx::AdsClient client(ClientOptions(port), store);
  REQUIRE(client.Start());
  REQUIRE(WaitFor([&] { return Synced(store, 2) && cp.Events(Kind::kAck).size() >= 4; }));
  auto before = store.Current();
  size_t published = rec.count();
  cp.ClearEvents();

  rs.endpoints.at(kCluster) = testing::Cla(kCluster, "10.0.0.1", 9000, 3);
  cp.Set(rs);
  REQUIRE(WaitFor([&] { return rec.count() == published + 1; }));
  std::lock_guard lock(rec.mu);
  const auto& d = rec.diffs.back();
  CHECK(d.endpoints.changed == std::vector<std::string>{kCluster});
  CHECK(d.endpoints.added.empty());
  CHECK(d.clusters.empty());
  CHECK(d.listeners.empty());
  CHECK(d.routes.empty());
  auto after = rec.snapshots.back();
  CHECK(EndpointCount(after, kCluster) == 3);
  CHECK(EndpointCount(after, other) == 2);  // the untouched service keeps its endpoints
  // Unchanged resources are the very same objects: consumers can skip them by pointer.
  CHECK(after->clusters.at(kCluster) == before->clusters.at(kCluster));
  CHECK(after->endpoints.at(other) == before->endpoints.at(other));
  // Only EDS went over the wire (the server ACKs nothing else for version 2).
  REQUIRE(WaitFor([&] { return !cp.Events(Kind::kAck).empty(); }));
  std::this_thread::sleep_for(50ms);
  for (const auto& e : cp.Events(Kind::kAck))
    CHECK(e.type_url == sx::kEndpointType);
  client.Stop();
}

TEST_CASE("server restart: the client keeps its config, reconnects, and resyncs") {
  ControlPlane cp(testing::HttpbinSet(2));
  int port = cp.Start();
  config::ConfigStore store;
  sx::AdsClient client(ClientOptions(port), store);
  REQUIRE(client.Start());
  REQUIRE(WaitFor([&] { return Synced(store) && cp.Events(Kind::kAck).size() >= 4; }));
  auto before = store.Current();

  cp.Restart();  // the server is gone
  REQUIRE(WaitFor([&] { return !client.Status().connected; }));
  std::this_thread::sleep_for(300ms);  // several failed reconnects
  CHECK(store.Current() == before);    // last good config, untouched
  CHECK(client.Status().failed_attempts >= 1);

  cp.Set(testing::HttpbinSet(4));  // istiod comes back with newer endpoints
  cp.Start(port);
  REQUIRE(WaitFor([&] { return EndpointCount(store.Current(), kCluster) == 4; }));
  CHECK(store.Current()->clusters.at(kCluster) == before->clusters.at(kCluster));
  auto st = client.Status();
  CHECK(st.connected);
  CHECK(st.streams >= 2);
  // The new stream announced what the client already runs: versions, no stale nonces.
  auto reqs = cp.Events(Kind::kRequest);
  REQUIRE_FALSE(reqs.empty());
  CHECK(reqs.front().type_url == sx::kClusterType);
  CHECK(reqs.front().version == "1");
  CHECK(reqs.front().nonce.empty());
  client.Stop();
}

TEST_CASE("reconnect attempts back off, bounded by the policy's maximum") {
  // A port with nothing listening: bind one, note it, close it.
  ControlPlane cp(testing::HttpbinSet());
  int port = cp.Start();
  cp.Stop();
  config::ConfigStore store;
  auto opts = ClientOptions(port);
  opts.backoff = {.initial = 10ms, .max = 60ms, .multiplier = 2.0, .jitter = 0.2};
  sx::AdsClient client(opts, store);
  REQUIRE(client.Start());
  // 10, 20, 40, then at most 60 ms each: by the 8th attempt unbounded doubling would wait
  // 1.28 s. Counted by attempts, not in a fixed time, so a loaded machine's slower
  // connects do not matter.
  CHECK(WaitFor([&] { return client.Status().failed_attempts >= 8; }, 20s));
  auto st = client.Status();
  client.Stop();
  CHECK(st.failed_attempts >= 8);
  CHECK(st.last_backoff <= 60ms);
  CHECK(st.last_backoff >= 40ms);
  CHECK_FALSE(st.last_stream_error.empty());
  CHECK(store.Current()->size() == 0);
}

TEST_CASE("stale ACKs are ignored and a second client gets its own stream") {
  ControlPlane cp(testing::HttpbinSet(1));
  int port = cp.Start();
  config::ConfigStore a, b;
  sx::AdsClient ca(ClientOptions(port), a);
  auto ob = ClientOptions(port);
  auto id = TestNode();
  id.role = sx::ProxyRole::kRouter;
  id.pod_name = "istio-ingressgateway-1";
  id.pod_namespace = "istio-system";
  ob.node = sx::BuildNode(id);
  sx::AdsClient cb(ob, b);
  REQUIRE(ca.Start());
  REQUIRE(cb.Start());
  REQUIRE(WaitFor([&] { return Synced(a) && Synced(b); }));
  CHECK(cp.server().Connected() == 2);
  // Two pushes back to back: the ACK of the first answers a replaced nonce.
  cp.Set(testing::HttpbinSet(2));
  cp.Set(testing::HttpbinSet(3));
  REQUIRE(WaitFor([&] {
    return EndpointCount(a.Current(), kCluster) == 3 && EndpointCount(b.Current(), kCluster) == 3;
  }));
  std::set<std::string> nodes;
  for (const auto& e : cp.Events(Kind::kConnect))
    nodes.insert(e.node_id);
  CHECK(nodes.contains(
      "router~10.244.1.5~istio-ingressgateway-1.istio-system~istio-system.svc.cluster.local"));
  ca.Stop();
  cb.Stop();
  REQUIRE(WaitFor([&] { return cp.server().Connected() == 0; }));
}

TEST_CASE("TLS with a bearer token file, as istiod's port 15012") {
  char tmpl[] = "/tmp/sluice-xds-tls-XXXXXX";
  REQUIRE(mkdtemp(tmpl) != nullptr);
  std::filesystem::path dir(tmpl);
  struct Cleanup {
    std::filesystem::path d;
    ~Cleanup() { std::filesystem::remove_all(d); }
  } cleanup{dir};
  REQUIRE(testing::MakeIstiodCert(dir.string()));
  std::ofstream(dir / "token") << "s3cr3t-jwt\n";
  std::ofstream(dir / "wrong") << "not-the-token\n";

  ControlPlane cp(testing::HttpbinSet(2));
  sx::AdsServerOptions so;
  so.cert_file = (dir / "cert.pem").string();
  so.key_file = (dir / "key.pem").string();
  so.required_token = "s3cr3t-jwt";
  int port = cp.Start(0, so);

  auto opts = ClientOptions(port);
  opts.tls = true;
  opts.ca_file = (dir / "cert.pem").string();
  opts.tls_server_name = "istiod.istio-system.svc";

  SECTION("the right token syncs") {
    opts.token_file = (dir / "token").string();
    config::ConfigStore store;
    sx::AdsClient client(opts, store);
    REQUIRE(client.Start());
    REQUIRE(WaitFor([&] { return Synced(store); }));
    client.Stop();
  }
  SECTION("a wrong token is refused and nothing is applied") {
    opts.token_file = (dir / "wrong").string();
    config::ConfigStore store;
    sx::AdsClient client(opts, store);
    REQUIRE(client.Start());
    REQUIRE(WaitFor([&] { return client.Status().failed_attempts >= 2; }));
    CHECK(client.Status().last_stream_error.find("bearer token") != std::string::npos);
    CHECK(store.Current()->size() == 0);
    client.Stop();
  }
  SECTION("a token without TLS is refused up front") {
    opts.tls = false;
    opts.token_file = (dir / "token").string();
    config::ConfigStore store;
    sx::AdsClient client(opts, store);
    auto r = client.Start();
    REQUIRE_FALSE(r);
    CHECK(r.error().message ==
          "xds: token_file needs TLS (gRPC sends no call credentials in plaintext)");
  }
  cp.Stop();
}

TEST_CASE("istiod's XDS identity check: a stream acts only as its token's namespace and account") {
  // The rule of istiod's checkConnectionIdentity (pilot/pkg/xds/auth.go), on the node
  // itself: the config namespace must be the identity's, and a set SERVICE_ACCOUNT too.
  auto node_of = [](std::string ns, std::string sa) {
    sx::NodeIdentity id = TestNode();
    id.pod_namespace = std::move(ns);
    id.service_account = std::move(sa);
    return sx::BuildNode(id);
  };
  const std::vector<std::string> ids = {"not-a-spiffe-id",
                                        "spiffe://cluster.local/ns/default/sa/sleep"};
  auto ok = sx::CheckConnectionIdentity(node_of("default", "sleep"), ids);
  REQUIRE(ok);
  CHECK(*ok == 1);
  CHECK(sx::CheckConnectionIdentity(node_of("default", ""), ids));  // no SA: namespace only
  auto other_ns = sx::CheckConnectionIdentity(node_of("bookinfo", "sleep"), ids);
  REQUIRE_FALSE(other_ns);
  CHECK(other_ns.error().message ==
        "no identities ([not-a-spiffe-id spiffe://cluster.local/ns/default/sa/sleep]) matched "
        "bookinfo/sleep");
  CHECK_FALSE(sx::CheckConnectionIdentity(node_of("default", "httpbin"), ids));
  CHECK_FALSE(sx::CheckConnectionIdentity(node_of("default", "sleep"), {}));

  // The same rule on a real stream: a token table stands in for istiod's TokenReview.
  char tmpl[] = "/tmp/sluice-xds-idcheck-XXXXXX";
  REQUIRE(mkdtemp(tmpl) != nullptr);
  std::filesystem::path dir(tmpl);
  struct Cleanup {
    std::filesystem::path d;
    ~Cleanup() { std::filesystem::remove_all(d); }
  } cleanup{dir};
  REQUIRE(testing::MakeIstiodCert(dir.string()));
  ControlPlane cp(testing::HttpbinSet(2));
  sx::AdsServerOptions so;
  so.cert_file = (dir / "cert.pem").string();
  so.key_file = (dir / "key.pem").string();
  so.authenticate = [](const std::string& token) -> Result<std::vector<std::string>> {
    if (token == "token-default-sleep")
      return std::vector<std::string>{"spiffe://cluster.local/ns/default/sa/sleep"};
    return Fail("the token is not authenticated");
  };
  int port = cp.Start(0, so);
  auto opts = ClientOptions(port);
  opts.tls = true;
  opts.ca_file = (dir / "cert.pem").string();
  opts.tls_server_name = "istiod.istio-system.svc";
  auto run = [&](std::string token, std::string ns, std::string sa) {
    auto o = opts;
    o.node = node_of(std::move(ns), std::move(sa));
    o.token_source = [token]() -> Result<std::string> { return token; };
    return o;
  };

  SECTION("the pods' own namespace and account sync") {
    config::ConfigStore store;
    sx::AdsClient client(run("token-default-sleep", "default", "sleep"), store);
    REQUIRE(client.Start());
    REQUIRE(WaitFor([&] { return Synced(store); }));
    client.Stop();
  }
  SECTION("another namespace is refused as istiod refuses it") {
    config::ConfigStore store;
    sx::AdsClient client(run("token-default-sleep", "bookinfo", "sleep"), store);
    REQUIRE(client.Start());
    REQUIRE(WaitFor([&] { return client.Status().failed_attempts >= 2; }));
    CHECK(client.Status().last_stream_error.find(
              "authorization failed: no identities ([spiffe://cluster.local/ns/default/sa/"
              "sleep]) matched bookinfo/sleep") != std::string::npos);
    CHECK(store.Current()->size() == 0);
    client.Stop();
  }
  SECTION("an unknown token is unauthenticated") {
    config::ConfigStore store;
    sx::AdsClient client(run("forged", "default", "sleep"), store);
    REQUIRE(client.Start());
    REQUIRE(WaitFor([&] { return client.Status().failed_attempts >= 2; }));
    CHECK(client.Status().last_stream_error.find(
              "authentication failure: the token is not authenticated") != std::string::npos);
    CHECK(store.Current()->size() == 0);
    client.Stop();
  }
  cp.Stop();
}

TEST_CASE("a shared, immutable set serves without a copy per stream and push") {
  std::mutex mu;
  auto current = std::make_shared<const sluice::xds::ResourceSet>(testing::HttpbinSet(1));
  std::vector<const sluice::xds::ResourceSet*> served;
  sluice::xds::AdsServer server(
      sluice::xds::AdsServer::SharedResourceFn([&](const envoy::config::core::v3::Node&) {
        std::lock_guard lock(mu);
        served.push_back(current.get());
        return current;
      }));
  auto port = server.Start({.address = "127.0.0.1:0"});
  REQUIRE(port);
  config::ConfigStore store;
  sx::AdsClient client(ClientOptions(*port), store);
  REQUIRE(client.Start());
  REQUIRE(WaitFor([&] { return Synced(store); }));
  {
    std::lock_guard lock(mu);
    current = std::make_shared<const sluice::xds::ResourceSet>(testing::HttpbinSet(2));
  }
  server.Push();
  REQUIRE(WaitFor([&] { return EndpointCount(store.Current(), kCluster) == 2; }));
  client.Stop();
  server.Stop();
  std::lock_guard lock(mu);
  REQUIRE(served.size() == 2);
  CHECK(served.back() == current.get());
}
