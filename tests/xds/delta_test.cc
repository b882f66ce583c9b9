// Delta (incremental) xDS between Sluice's ADS client and server over a real gRPC stream on
// loopback: initial sync, add/change/remove, unsubscribe, reconnect with
// initial_resource_versions, per-resource NACK, auto falling back to state of the world,
// and push hints (only what a hint names is compared and sent, in both protocols).
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <mutex>

#include "scripted_ads.h"
#include "sluice/xds/ads_server.h"

using namespace sluice::testing;
using envoy::config::cluster::v3::Cluster;
using sluice::config::ConfigStore;
using Event = sx::AdsServerEvent;

namespace {

std::string Svc(int i) {
  return ClusterName("svc" + std::to_string(i) + ".default.svc.cluster.local", 80);
}

// n services, each an EDS cluster and its ClusterLoadAssignment with one endpoint; plus,
// with `http`, httpbin's listener and route.
sx::ResourceSet Services(int n, bool http = true) {
  sx::ResourceSet rs = http ? HttpbinSet() : sx::ResourceSet{};
  for (int i = 0; i < n; ++i) {
    rs.Add(EdsCluster(Svc(i)));
    rs.Add(Cla(Svc(i), "10.1.0." + std::to_string(i % 250 + 1), 8080));
  }
  return rs;
}

// Sluice's ADS server on a loopback port, serving a set the test replaces, and recording
// every event; and an AdsClient feeding a store.
struct Harness {
  explicit Harness(sx::ResourceSet initial, sx::XdsProtocol protocol = sx::XdsProtocol::kDelta)
      : rs(std::make_shared<const sx::ResourceSet>(std::move(initial))),
        server(sx::AdsServer::SharedResourceFn([this](const auto&) {
          std::lock_guard lock(mu);
          return rs;
        })) {
    server.OnEvent([this](const Event& e) {
      std::lock_guard lock(mu);
      events.push_back(e);
      times.push_back(std::chrono::steady_clock::now());
    });
    auto p = server.Start({.address = "127.0.0.1:0"});
    REQUIRE(p);
    port = *p;
    opts.server = "127.0.0.1:" + std::to_string(port);
    sx::NodeIdentity id;
    id.ips = {"10.0.0.7"};
    id.pod_name = "app-1";
    opts.node = sx::BuildNode(id);
    opts.protocol = protocol;
    opts.backoff.initial = 50ms;
    opts.backoff.max = 200ms;
  }
  ~Harness() {
    if (client)
      client->Stop();
    server.Stop();
  }
  void StartClient() {
    client = std::make_unique<sx::AdsClient>(opts, store);
    REQUIRE(client->Start());
  }
  void Set(sx::ResourceSet next) {
    std::lock_guard lock(mu);
    rs = std::make_shared<const sx::ResourceSet>(std::move(next));
  }
  sx::ResourceSet Get() {
    std::lock_guard lock(mu);
    return *rs;
  }
  size_t Mark() {
    std::lock_guard lock(mu);
    return events.size();
  }
  std::vector<Event> Since(size_t mark, Event::Kind kind, std::string_view type = "") {
    std::lock_guard lock(mu);
    std::vector<Event> out;
    for (size_t i = mark; i < events.size(); ++i) {
      if (events[i].kind == kind && (type.empty() || events[i].type_url == type))
        out.push_back(events[i]);
    }
    return out;
  }
  // When the first response after `mark` went out.
  std::chrono::steady_clock::time_point FirstResponse(size_t mark) {
    std::lock_guard lock(mu);
    for (size_t i = mark; i < events.size(); ++i)
      if (events[i].kind == Event::Kind::kResponse)
        return times[i];
    return {};
  }
  // Resources sent in responses since `mark` (of `type`, or of all types).
  size_t SentSince(size_t mark, std::string_view type = "") {
    size_t n = 0;
    for (const auto& e : Since(mark, Event::Kind::kResponse, type))
      n += e.resource_names.size();
    return n;
  }
  // Waits until every ACK the client owes has arrived: the client's status stops moving.
  void Settle() {
    uint64_t last = ~0ull;
    for (int i = 0; i < 100; ++i) {
      std::this_thread::sleep_for(100ms);
      uint64_t n = Mark();
      if (n == last)
        return;
      last = n;
    }
  }
  bool Synced(size_t clusters, std::chrono::milliseconds limit = 5s) {
    return WaitFor(
        [&] {
          auto s = store.Current();
          return s->clusters.size() == clusters && s->endpoints.size() == clusters &&
                 s->listeners.size() == 1 && s->routes.size() == 1;
        },
        limit);
  }

  std::mutex mu;
  std::shared_ptr<const sx::ResourceSet> rs;
  std::vector<Event> events;
  std::vector<std::chrono::steady_clock::time_point> times;  // of each event
  sx::AdsServer server;
  int port = 0;
  sx::AdsClientOptions opts;
  ConfigStore store;
  std::unique_ptr<sx::AdsClient> client;
};

const sx::TypeStatus& TypeOf(const sx::AdsClientStatus& st, std::string_view type) {
  static const sx::TypeStatus none;
  auto it = st.types.find(std::string(type));
  return it == st.types.end() ? none : it->second;
}

}  // namespace

TEST_CASE("delta: initial sync over a Delta stream (auto picks Delta when the server has it)") {
  Harness h(Services(3), sx::XdsProtocol::kAuto);
  h.StartClient();
  REQUIRE(h.Synced(4));
  h.Settle();
  auto st = h.client->Status();
  CHECK(st.protocol == "delta");
  CHECK_FALSE(st.delta_unimplemented);
  CHECK(h.server.DeltaStreams() == 1);
  // Every response was Delta, each resource sent once, every response ACKed by its nonce.
  auto responses = h.Since(0, Event::Kind::kResponse);
  REQUIRE_FALSE(responses.empty());
  for (const auto& r : responses)
    CHECK(r.delta);
  CHECK(h.SentSince(0) == h.Get().size());
  CHECK(h.Since(0, Event::Kind::kAck).size() == responses.size());
  CHECK(h.Since(0, Event::Kind::kNack).empty());
  CHECK(TypeOf(st, sx::kClusterType).held == 4);
  CHECK(TypeOf(st, sx::kEndpointType).subscribed == 4);
  CHECK(TypeOf(st, sx::kEndpointType).held == 4);
  // The snapshot's versions carry the server's system_version_info.
  CHECK(h.store.Current()->versions.at(std::string(sx::kClusterType)) ==
        std::to_string(h.server.Version()));
}

TEST_CASE("delta: adding, changing and removing one resource sends only that resource") {
  Harness h(Services(3));
  h.StartClient();
  REQUIRE(h.Synced(4));
  h.Settle();

  SECTION("add one service") {
    auto next = h.Get();
    next.Add(EdsCluster(Svc(7)));
    next.Add(Cla(Svc(7), "10.9.0.1", 9000));
    h.Set(next);
    size_t mark = h.Mark();
    h.server.Push();
    REQUIRE(h.Synced(5));
    h.Settle();
    auto cds = h.Since(mark, Event::Kind::kResponse, sx::kClusterType);
    REQUIRE(cds.size() == 1);
    CHECK(cds[0].resource_names == std::vector<std::string>{Svc(7)});
    // The client subscribed to the new cluster's endpoints by name, and got exactly them.
    auto subs = h.Since(mark, Event::Kind::kRequest, sx::kEndpointType);
    REQUIRE(subs.size() >= 1);
    CHECK(subs[0].resource_names == std::vector<std::string>{Svc(7)});
    CHECK(h.SentSince(mark, sx::kEndpointType) == 1);
    CHECK(h.SentSince(mark) == 2);
    CHECK(Endpoints(h.store.Current(), Svc(7)) == 1);
  }
  SECTION("change one ClusterLoadAssignment") {
    auto before = h.store.Current();
    auto next = h.Get();
    next.Add(Cla(Svc(1), "10.1.0.2", 8080, 3));
    h.Set(next);
    size_t mark = h.Mark();
    h.server.Push();
    REQUIRE(WaitFor([&] { return Endpoints(h.store.Current(), Svc(1)) == 3; }));
    h.Settle();
    CHECK(h.SentSince(mark) == 1);
    CHECK(h.SentSince(mark, sx::kEndpointType) == 1);
    // Everything else is the very same object in the new snapshot.
    auto after = h.store.Current();
    CHECK(after->endpoints.at(Svc(0)) == before->endpoints.at(Svc(0)));
    CHECK(after->clusters.at(Svc(1)) == before->clusters.at(Svc(1)));
  }
  SECTION("remove one service") {
    auto next = h.Get();
    next.clusters.erase(Svc(2));
    next.endpoints.erase(Svc(2));
    h.Set(next);
    size_t mark = h.Mark();
    h.server.Push();
    REQUIRE(h.Synced(3));
    h.Settle();
    auto cds = h.Since(mark, Event::Kind::kResponse, sx::kClusterType);
    REQUIRE(cds.size() == 1);
    CHECK(cds[0].resource_names.empty());
    CHECK(cds[0].removed == std::vector<std::string>{Svc(2)});
    CHECK_FALSE(h.store.Current()->clusters.contains(Svc(2)));
    CHECK_FALSE(h.store.Current()->endpoints.contains(Svc(2)));
    CHECK(h.SentSince(mark) == 0);
    auto st = h.client->Status();
    CHECK(TypeOf(st, sx::kClusterType).removed == 1);
    CHECK(TypeOf(st, sx::kClusterType).held == 3);
  }
}

TEST_CASE("delta: the client unsubscribes from endpoints no cluster uses, and gets no more") {
  Harness h(Services(2));
  h.StartClient();
  REQUIRE(h.Synced(3));
  h.Settle();
  // The cluster goes; its ClusterLoadAssignment stays on the server.
  auto next = h.Get();
  next.clusters.erase(Svc(1));
  h.Set(next);
  size_t mark = h.Mark();
  h.server.Push();
  REQUIRE(WaitFor([&] { return !h.store.Current()->clusters.contains(Svc(1)); }));
  h.Settle();
  auto reqs = h.Since(mark, Event::Kind::kRequest, sx::kEndpointType);
  bool unsubscribed = std::ranges::any_of(
      reqs, [&](const Event& e) { return e.removed == std::vector<std::string>{Svc(1)}; });
  CHECK(unsubscribed);
  CHECK_FALSE(h.store.Current()->endpoints.contains(Svc(1)));
  CHECK(TypeOf(h.client->Status(), sx::kEndpointType).subscribed == 2);
  // A change to what it unsubscribed from is not sent.
  next.Add(Cla(Svc(1), "10.1.0.9", 8080, 2));
  h.Set(next);
  mark = h.Mark();
  h.server.Push();
  h.Settle();
  CHECK(h.SentSince(mark) == 0);
}

TEST_CASE("delta: a reconnect sends initial_resource_versions, and nothing unchanged is resent") {
  Harness h(Services(5));
  h.StartClient();
  REQUIRE(h.Synced(6));
  h.Settle();
  // The server goes away; meanwhile one CLA changes and one service goes.
  h.server.Stop();
  auto next = h.Get();
  next.Add(Cla(Svc(0), "10.1.0.1", 8080, 2));
  next.clusters.erase(Svc(4));
  next.endpoints.erase(Svc(4));
  h.Set(next);
  size_t mark = h.Mark();
  REQUIRE(h.server.Start({.address = "127.0.0.1:" + std::to_string(h.port)}));
  REQUIRE(h.Synced(5));
  REQUIRE(WaitFor([&] { return Endpoints(h.store.Current(), Svc(0)) == 2; }));
  h.Settle();
  // The first CDS request of the new stream named what the client held, by version.
  auto cds = h.Since(mark, Event::Kind::kRequest, sx::kClusterType);
  REQUIRE_FALSE(cds.empty());
  // Only the changed CLA was sent again; the gone cluster came as removed_resources.
  CHECK(h.SentSince(mark) == 1);
  CHECK(h.SentSince(mark, sx::kEndpointType) == 1);
  auto removed = h.Since(mark, Event::Kind::kResponse, sx::kClusterType);
  REQUIRE(removed.size() == 1);
  CHECK(removed[0].removed == std::vector<std::string>{Svc(4)});
  CHECK(h.client->Status().streams >= 2);
}

TEST_CASE("delta: one refused resource is NACKed by name, the rest of the response applies") {
  Harness h(Services(2));
  h.StartClient();
  REQUIRE(h.Synced(3));
  h.Settle();
  auto next = h.Get();
  Cluster bad = EdsCluster(Svc(0));
  bad.set_lb_policy(Cluster::CLUSTER_PROVIDED);  // only valid for ORIGINAL_DST
  next.Add(bad);
  next.Add(StaticCluster("good"));
  h.Set(next);
  size_t mark = h.Mark();
  auto before = h.store.Current()->clusters.at(Svc(0));
  h.server.Push();
  REQUIRE(WaitFor([&] { return h.store.Current()->clusters.contains("good"); }));
  h.Settle();
  auto nacks = h.Since(mark, Event::Kind::kNack, sx::kClusterType);
  REQUIRE(nacks.size() == 1);
  CHECK(nacks[0].error.find(Svc(0)) != std::string::npos);
  CHECK(nacks[0].error.find("CLUSTER_PROVIDED") != std::string::npos);
  // The refused cluster keeps its earlier version; the good one is in force.
  CHECK(h.store.Current()->clusters.at(Svc(0)) == before);
  auto st = TypeOf(h.client->Status(), sx::kClusterType);
  CHECK(st.refused.contains(Svc(0)));
  CHECK(st.nacks == 1);
  // The fix is ACKed and clears the refusal.
  next.Add(EdsCluster(Svc(0)));
  next.clusters.at(Svc(0)).mutable_connect_timeout()->set_seconds(3);
  h.Set(next);
  mark = h.Mark();
  h.server.Push();
  REQUIRE(WaitFor(
      [&] { return h.store.Current()->clusters.at(Svc(0))->connect_timeout().seconds() == 3; }));
  h.Settle();
  CHECK(h.Since(mark, Event::Kind::kAck, sx::kClusterType).size() == 1);
  CHECK(TypeOf(h.client->Status(), sx::kClusterType).refused.empty());
}

TEST_CASE("auto: a server without Delta (UNIMPLEMENTED) gets state of the world") {
  // ScriptedAds implements only StreamAggregatedResources.
  ScriptedAds ads;
  int port = 0;
  grpc::ServerBuilder b;
  b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  b.RegisterService(&ads);
  auto server = b.BuildAndStart();
  REQUIRE(server);
  ConfigStore store;
  sx::AdsClientOptions o;
  o.server = "127.0.0.1:" + std::to_string(port);
  sx::NodeIdentity id;
  id.ips = {"10.0.0.7"};
  id.pod_name = "app-1";
  o.node = sx::BuildNode(id);
  SECTION("auto falls back on the same attempt") {
    o.protocol = sx::XdsProtocol::kAuto;
    sx::AdsClient client(o, store);
    REQUIRE(client.Start());
    auto first = ads.Next();
    REQUIRE(first);
    CHECK(first->type_url() == sx::kClusterType);
    CHECK(first->has_node());
    REQUIRE(ads.Send(std::string(sx::kClusterType), "v1", "n1", {Pack(StaticCluster("s"))}));
    REQUIRE(WaitFor([&] { return store.Current()->clusters.contains("s"); }));
    auto st = client.Status();
    CHECK(st.protocol == "sotw");
    CHECK(st.delta_unimplemented);
    CHECK(st.configured == sx::XdsProtocol::kAuto);
    client.Stop();
  }
  SECTION("delta only: no fallback, the stream keeps failing") {
    o.protocol = sx::XdsProtocol::kDelta;
    o.backoff.initial = 20ms;
    sx::AdsClient client(o, store);
    REQUIRE(client.Start());
    REQUIRE(WaitFor([&] { return client.Status().failed_attempts >= 2; }));
    CHECK_FALSE(ads.Next(100ms));
    auto st = client.Status();
    CHECK(st.last_stream_error.find("(12)") != std::string::npos);  // UNIMPLEMENTED
    CHECK_FALSE(st.delta_unimplemented);
    client.Stop();
  }
  server->Shutdown(std::chrono::system_clock::now() + 1s);
}

TEST_CASE("sotw: the client can be told to speak state of the world to a Delta-capable server") {
  Harness h(Services(2), sx::XdsProtocol::kSotw);
  h.StartClient();
  REQUIRE(h.Synced(3));
  CHECK(h.client->Status().protocol == "sotw");
  CHECK(h.server.DeltaStreams() == 0);
}

TEST_CASE("a push hint: only the resources it names are compared and sent") {
  auto protocol = GENERATE(sx::XdsProtocol::kDelta, sx::XdsProtocol::kSotw);
  CAPTURE(sx::XdsProtocolName(protocol));
  Harness h(Services(50), protocol);
  h.StartClient();
  REQUIRE(h.Synced(51));
  h.Settle();
  // Two CLAs change, the hint names one: a full recompute would send both.
  auto next = h.Get();
  next.Add(Cla(Svc(3), "10.1.0.4", 8080, 2));
  next.Add(Cla(Svc(4), "10.1.0.5", 8080, 2));
  h.Set(next);
  size_t mark = h.Mark();
  sx::PushHint hint;
  hint.Add(sx::kEndpointType, Svc(3));
  h.server.Push(hint);
  REQUIRE(WaitFor([&] { return Endpoints(h.store.Current(), Svc(3)) == 2; }));
  h.Settle();
  auto eds = h.Since(mark, Event::Kind::kResponse, sx::kEndpointType);
  REQUIRE(eds.size() == 1);
  CHECK(eds[0].resource_names == std::vector<std::string>{Svc(3)});
  CHECK(h.SentSince(mark) == 1);
  CHECK(Endpoints(h.store.Current(), Svc(4)) == 1);
  // A hint naming something unchanged sends nothing; a full push then finds the other.
  mark = h.Mark();
  sx::PushHint same;
  same.Add(sx::kClusterType, Svc(3));
  h.server.Push(same);
  h.Settle();
  CHECK(h.SentSince(mark) == 0);
  h.server.Push();
  REQUIRE(WaitFor([&] { return Endpoints(h.store.Current(), Svc(4)) == 2; }));
  h.Settle();
  CHECK(h.SentSince(mark) == 1);
}

TEST_CASE("a push hint at 10,000 services: the cost of a one-endpoint push, hinted and full") {
  auto protocol = GENERATE(sx::XdsProtocol::kDelta, sx::XdsProtocol::kSotw);
  CAPTURE(sx::XdsProtocolName(protocol));
  constexpr int kServices = 10'000;
  if (std::getenv("SLUICE_XDS_DEBUG"))
    spdlog::set_level(spdlog::level::debug);  // per-response costs of client and server
  Harness h(Services(kServices), protocol);
  h.StartClient();
  REQUIRE(h.Synced(kServices + 1, 60s));
  h.Settle();
  // When the store published the last snapshot (the subscriber runs as it is applied).
  std::atomic<int64_t> published_ns{0};
  int sub = h.store.Subscribe([&](const auto&, const auto&) {
    published_ns = std::chrono::steady_clock::now().time_since_epoch().count();
  });
  auto one = [&](int port, const sx::PushHint* hint) {
    auto next = h.Get();
    next.Add(Cla(Svc(5), "10.1.0.6", port));
    h.Set(next);
    size_t mark = h.Mark();
    auto t0 = std::chrono::steady_clock::now();
    if (hint)
      h.server.Push(*hint);
    else
      h.server.Push();
    REQUIRE(WaitFor(
        [&] {
          return h.store.Current()
                     ->endpoints.at(Svc(5))
                     ->endpoints(0)
                     .lb_endpoints(0)
                     .endpoint()
                     .address()
                     .socket_address()
                     .port_value() == static_cast<uint32_t>(port);
        },
        10s));
    auto ms = [](auto d) { return std::chrono::duration<double, std::milli>(d).count(); };
    double applied = ms(std::chrono::steady_clock::time_point(
                            std::chrono::steady_clock::duration(published_ns.load())) -
                        t0);
    h.Settle();
    CHECK(h.SentSince(mark) == 1);
    return std::pair{ms(h.FirstResponse(mark) - t0), applied};
  };
  sx::PushHint hint;
  hint.Add(sx::kEndpointType, Svc(5));
  std::vector<double> full_sent, full_applied, hinted_sent, hinted_applied;
  for (int i = 0; i < 5; ++i) {
    auto [fs, fa] = one(9000 + i, nullptr);
    auto [hs, ha] = one(9100 + i, &hint);
    full_sent.push_back(fs);
    full_applied.push_back(fa);
    hinted_sent.push_back(hs);
    hinted_applied.push_back(ha);
  }
  for (auto* v : {&full_sent, &full_applied, &hinted_sent, &hinted_applied})
    std::ranges::sort(*v);
  h.store.Unsubscribe(sub);
  // "written": the server wrote the response (its event follows the write, so the client
  // may have applied it already); "applied": the store published it.
  WARN(
      fmt::format("{}: one-endpoint update at {} services (median of 5): full push: written "
                  "{:.2f} ms, applied {:.2f} ms; hinted push: written {:.2f} ms, applied {:.2f} ms",
                  sx::XdsProtocolName(protocol), kServices, full_sent[2], full_applied[2],
                  hinted_sent[2], hinted_applied[2]));
}
