// The ADS server's Delta protocol, checked message by message with a raw
// DeltaAggregatedResources stream acting as the client.
#include <grpcpp/grpcpp.h>
#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include "envoy/service/discovery/v3/ads.grpc.pb.h"
#include "fixtures.h"
#include "sluice/xds/ads_server.h"

using namespace std::chrono_literals;
namespace sx = sluice::xds;
using envoy::service::discovery::v3::DeltaDiscoveryRequest;
using envoy::service::discovery::v3::DeltaDiscoveryResponse;
using Kind = sx::AdsServerEvent::Kind;

namespace {

const std::string kCluster =
    sluice::testing::ClusterName("httpbin.default.svc.cluster.local", 8000);
// A type the server does not serve (SRDS; SDS is served since issue 18).
const std::string kUnservedType =
    "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration";

struct Stream {
  explicit Stream(int port) {
    channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                  grpc::InsecureChannelCredentials());
    stub = envoy::service::discovery::v3::AggregatedDiscoveryService::NewStub(channel);
    stream = stub->DeltaAggregatedResources(&ctx);
    reader = std::thread([this] {
      DeltaDiscoveryResponse resp;
      while (stream->Read(&resp)) {
        std::lock_guard lock(mu);
        inbox.push_back(resp);
        cv.notify_all();
      }
      std::lock_guard lock(mu);
      closed = true;
      cv.notify_all();
    });
  }
  ~Stream() {
    ctx.TryCancel();
    reader.join();
    stream->Finish();
  }
  void Send(std::string_view type, std::vector<std::string> sub = {},
            std::vector<std::string> unsub = {}, std::string nonce = "", std::string error = "",
            std::map<std::string, std::string> initial = {}) {
    DeltaDiscoveryRequest r;
    if (first)
      r.mutable_node()->set_id("sidecar~10.0.0.5~t.default~default.svc.cluster.local");
    first = false;
    r.set_type_url(std::string(type));
    for (auto& n : sub)
      r.add_resource_names_subscribe(n);
    for (auto& n : unsub)
      r.add_resource_names_unsubscribe(n);
    r.set_response_nonce(nonce);
    if (!error.empty())
      r.mutable_error_detail()->set_message(error);
    for (auto& [k, v] : initial)
      (*r.mutable_initial_resource_versions())[k] = v;
    REQUIRE(stream->Write(r));
  }
  DeltaDiscoveryResponse Read() {
    std::unique_lock lock(mu);
    REQUIRE(cv.wait_for(lock, 5s, [&] { return !inbox.empty() || closed; }));
    REQUIRE_FALSE(inbox.empty());
    auto r = std::move(inbox.front());
    inbox.pop_front();
    return r;
  }
  bool Silent(std::chrono::milliseconds quiet = 300ms) {
    std::unique_lock lock(mu);
    return !cv.wait_for(lock, quiet, [&] { return !inbox.empty(); });
  }

  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<envoy::service::discovery::v3::AggregatedDiscoveryService::Stub> stub;
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientReaderWriter<DeltaDiscoveryRequest, DeltaDiscoveryResponse>> stream;
  std::thread reader;
  std::mutex mu;
  std::condition_variable cv;
  std::deque<DeltaDiscoveryResponse> inbox;
  bool closed = false;
  bool first = true;
};

struct Server {
  Server()
      : server([this](const envoy::config::core::v3::Node&) {
          std::lock_guard lock(mu);
          return rs;
        }) {
    rs = sluice::testing::HttpbinSet(1);
    rs.Add(sluice::testing::EdsCluster("other"));
    server.OnEvent([this](const sx::AdsServerEvent& e) {
      std::lock_guard lock(mu);
      events.push_back(e);
    });
    auto p = server.Start({.address = "127.0.0.1:0"});
    REQUIRE(p);
    port = *p;
  }
  ~Server() { server.Stop(); }
  template <class F>
  uint64_t Change(F edit) {
    {
      std::lock_guard lock(mu);
      edit(rs);
    }
    return server.Push();
  }
  std::vector<sx::AdsServerEvent> Events(Kind k) {
    std::lock_guard lock(mu);
    std::vector<sx::AdsServerEvent> out;
    for (auto& e : events)
      if (e.kind == k)
        out.push_back(e);
    return out;
  }
  std::mutex mu;
  sx::ResourceSet rs;
  std::vector<sx::AdsServerEvent> events;
  sx::AdsServer server;
  int port = 0;
};

std::vector<std::string> Names(const DeltaDiscoveryResponse& r) {
  std::vector<std::string> out;
  for (const auto& res : r.resources())
    out.push_back(res.name());
  std::ranges::sort(out);
  return out;
}

}  // namespace

TEST_CASE("delta server: legacy wildcard, named EDS, versions per resource, fresh nonces") {
  Server s;
  Stream c(s.port);
  c.Send(sx::kClusterType);  // names nothing: the legacy wildcard
  auto cds = c.Read();
  CHECK(cds.type_url() == sx::kClusterType);
  CHECK(Names(cds) == std::vector<std::string>{"other", kCluster});
  CHECK(cds.system_version_info() == std::to_string(s.server.Version()));
  CHECK_FALSE(cds.nonce().empty());
  for (const auto& r : cds.resources()) {
    CHECK(r.version().size() == 16);
    CHECK(r.resource().type_url() == sx::kClusterType);
  }
  c.Send(sx::kClusterType, {}, {}, cds.nonce());  // ACK
  c.Send(sx::kEndpointType, {kCluster});
  auto eds = c.Read();
  CHECK(Names(eds) == std::vector<std::string>{kCluster});
  CHECK(eds.nonce() != cds.nonce());
  const std::string v1 = eds.resources(0).version();
  c.Send(sx::kEndpointType, {}, {}, eds.nonce());
  CHECK(c.Silent());
  // A change of the CLA: only it, at a new version, with a new nonce and system version.
  auto version =
      s.Change([](auto& rs) { rs.Add(sluice::testing::Cla(kCluster, "10.0.0.1", 9000, 2)); });
  auto eds2 = c.Read();
  CHECK(Names(eds2) == std::vector<std::string>{kCluster});
  CHECK(eds2.resources(0).version() != v1);
  CHECK(eds2.nonce() != eds.nonce());
  CHECK(eds2.system_version_info() == std::to_string(version));
  CHECK(c.Silent());
  // A deletion is a removed_resources entry.
  s.Change([](auto& rs) { rs.clusters.erase("other"); });
  auto cds2 = c.Read();
  CHECK(cds2.resources_size() == 0);
  CHECK(
      std::vector<std::string>(cds2.removed_resources().begin(), cds2.removed_resources().end()) ==
      std::vector<std::string>{"other"});
  CHECK(s.Events(Kind::kAck).size() == 2);
  CHECK(s.server.DeltaStreams() == 1);
}

TEST_CASE("delta server: a stale nonce is ignored, a NACK is recorded and not answered") {
  Server s;
  Stream c(s.port);
  c.Send(sx::kClusterType);
  auto cds = c.Read();
  s.Change([](auto& rs) { rs.Add(sluice::testing::EdsCluster("third")); });
  auto cds2 = c.Read();
  // The ACK of the first response arrives after the second went out: stale.
  c.Send(sx::kClusterType, {}, {}, cds.nonce());
  REQUIRE(c.Silent());
  CHECK(s.Events(Kind::kStale).size() == 1);
  CHECK(s.Events(Kind::kAck).empty());
  c.Send(sx::kClusterType, {}, {}, cds2.nonce(), "third: no thanks");
  CHECK(c.Silent());
  auto nacks = s.Events(Kind::kNack);
  REQUIRE(nacks.size() == 1);
  CHECK(nacks[0].error == "third: no thanks");
  CHECK(nacks[0].delta);
}

TEST_CASE("delta server: explicit wildcard, unsubscribing it, and subscribing a name again") {
  Server s;
  Stream c(s.port);
  c.Send(sx::kClusterType, {"*"});
  auto cds = c.Read();
  CHECK(Names(cds) == std::vector<std::string>{"other", kCluster});
  c.Send(sx::kClusterType, {}, {}, cds.nonce());
  // Named on top of the wildcard: nothing new to send (already held at this version).
  c.Send(sx::kClusterType, {"other"});
  CHECK(c.Silent());
  // Without the wildcard, only "other" stays subscribed: a change to the other cluster is
  // not sent, a change to "other" is.
  c.Send(sx::kClusterType, {}, {"*"});
  CHECK(c.Silent());
  s.Change([](auto& rs) { rs.clusters.at(kCluster).mutable_connect_timeout()->set_seconds(3); });
  CHECK(c.Silent());
  s.Change([](auto& rs) { rs.clusters.at("other").mutable_connect_timeout()->set_seconds(3); });
  auto changed = c.Read();
  CHECK(Names(changed) == std::vector<std::string>{"other"});
  c.Send(sx::kClusterType, {}, {}, changed.nonce());
  // Unsubscribed, then subscribed again: sent again (the client forgot it).
  c.Send(sx::kClusterType, {}, {"other"});
  CHECK(c.Silent());
  c.Send(sx::kClusterType, {"other"});
  CHECK(Names(c.Read()) == std::vector<std::string>{"other"});
}

TEST_CASE("delta server: initial_resource_versions: nothing held is resent, gone names removed") {
  Server s;
  std::map<std::string, std::string> held;
  {
    Stream c(s.port);
    c.Send(sx::kClusterType);
    auto cds = c.Read();
    for (const auto& r : cds.resources())
      held[r.name()] = r.version();
  }
  REQUIRE(held.size() == 2);
  SECTION("all held at their versions, plus one that no longer exists") {
    held["gone"] = "0123";
    Stream c(s.port);
    c.Send(sx::kClusterType, {}, {}, "", "", held);
    auto cds = c.Read();  // a wildcard's first request is answered
    CHECK(cds.resources_size() == 0);
    CHECK(
        std::vector<std::string>(cds.removed_resources().begin(), cds.removed_resources().end()) ==
        std::vector<std::string>{"gone"});
  }
  SECTION("one held at another version: only it is sent") {
    held["other"] = "stale";
    Stream c(s.port);
    c.Send(sx::kClusterType, {}, {}, "", "", held);
    auto cds = c.Read();
    CHECK(Names(cds) == std::vector<std::string>{"other"});
    CHECK(cds.removed_resources_size() == 0);
  }
}

TEST_CASE("delta server: a type it does not serve is answered empty") {
  Server s;
  Stream c(s.port);
  c.Send(kUnservedType, {"default"});
  auto r = c.Read();
  CHECK(r.type_url() == kUnservedType);
  CHECK(r.resources_size() == 0);
  CHECK_FALSE(r.nonce().empty());
  c.Send(kUnservedType, {}, {}, r.nonce());
  CHECK(c.Silent());
  CHECK(s.Events(Kind::kUnsupportedType).size() == 1);
}
