// The ADS server's side of the protocol, checked message by message with a raw gRPC
// stream acting as the xDS client.
#include <grpcpp/grpcpp.h>
#include <catch2/catch.hpp>
#include <chrono>
#include <mutex>
#include <thread>

#include "envoy/service/discovery/v3/ads.grpc.pb.h"
#include "fixtures.h"
#include "sluice/xds/ads_server.h"

using namespace std::chrono_literals;
namespace sx = sluice::xds;
using envoy::service::discovery::v3::DiscoveryRequest;
using envoy::service::discovery::v3::DiscoveryResponse;
using Kind = sx::AdsServerEvent::Kind;

namespace {

const std::string kCluster =
    sluice::testing::ClusterName("httpbin.default.svc.cluster.local", 8000);

struct Harness {
  Harness()
      : server([this](const envoy::config::core::v3::Node&) {
          std::lock_guard lock(mu);
          return rs;
        }) {
    rs = sluice::testing::HttpbinSet(1);
    server.OnEvent([this](const sx::AdsServerEvent& e) {
      std::lock_guard lock(mu);
      events.push_back(e);
    });
    auto p = server.Start({.address = "127.0.0.1:0"});
    REQUIRE(p);
    channel =
        grpc::CreateChannel("127.0.0.1:" + std::to_string(*p), grpc::InsecureChannelCredentials());
    stub = envoy::service::discovery::v3::AggregatedDiscoveryService::NewStub(channel);
    stream = stub->StreamAggregatedResources(&ctx);
  }
  ~Harness() {
    if (!finished) {
      ctx.TryCancel();
      stream->Finish();
    }
    server.Stop();
  }
  void Send(std::string_view type, std::vector<std::string> names = {}, std::string version = "",
            std::string nonce = "", std::string error = "") {
    DiscoveryRequest r;
    if (first)
      r.mutable_node()->set_id("sidecar~10.0.0.5~t.default~default.svc.cluster.local");
    first = false;
    r.set_type_url(std::string(type));
    for (auto& n : names)
      r.add_resource_names(n);
    r.set_version_info(version);
    r.set_response_nonce(nonce);
    if (!error.empty())
      r.mutable_error_detail()->set_message(error);
    REQUIRE(stream->Write(r));
  }
  DiscoveryResponse Read() {
    DiscoveryResponse resp;
    REQUIRE(stream->Read(&resp));
    return resp;
  }
  std::vector<sx::AdsServerEvent> Events(Kind k) {
    std::lock_guard lock(mu);
    std::vector<sx::AdsServerEvent> out;
    for (auto& e : events)
      if (e.kind == k)
        out.push_back(e);
    return out;
  }
  template <class F>
  bool WaitFor(F pred) {
    for (int i = 0; i < 500 && !pred(); ++i)
      std::this_thread::sleep_for(5ms);
    return pred();
  }

  std::mutex mu;
  sx::ResourceSet rs;
  std::vector<sx::AdsServerEvent> events;
  sx::AdsServer server;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<envoy::service::discovery::v3::AggregatedDiscoveryService::Stub> stub;
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientReaderWriter<DiscoveryRequest, DiscoveryResponse>> stream;
  bool first = true;
  bool finished = false;
};

}  // namespace

TEST_CASE("server: wildcard CDS, named EDS, fresh nonces, stale nonces ignored") {
  Harness h;
  h.Send(sx::kClusterType);
  auto cds = h.Read();
  CHECK(cds.type_url() == sx::kClusterType);
  CHECK(cds.version_info() == "1");
  REQUIRE(cds.resources_size() == 1);
  CHECK(cds.resources(0).type_url() == sx::kClusterType);
  envoy::config::cluster::v3::Cluster c;
  REQUIRE(cds.resources(0).UnpackTo(&c));
  CHECK(c.name() == kCluster);

  // EDS serves exactly the names asked for; unknown names are simply absent.
  h.Send(sx::kEndpointType, {kCluster, "outbound|1||nope"});
  auto eds = h.Read();
  CHECK(eds.type_url() == sx::kEndpointType);
  REQUIRE(eds.resources_size() == 1);
  CHECK(eds.nonce() != cds.nonce());

  // Two pushes; then the ACK of the older one is stale and ignored.
  h.Send(sx::kClusterType, {}, cds.version_info(), cds.nonce());  // ACK v1
  REQUIRE(h.WaitFor([&] { return h.Events(Kind::kAck).size() == 1; }));
  {
    std::lock_guard lock(h.mu);
    h.rs = sluice::testing::HttpbinSet(2);
  }
  h.server.Push();
  auto eds2 = h.Read();
  CHECK(eds2.type_url() == sx::kEndpointType);  // only EDS changed
  CHECK(eds2.version_info() == "2");
  h.Send(sx::kEndpointType, {kCluster}, eds.version_info(), eds.nonce());  // answers eds, not eds2
  REQUIRE(h.WaitFor([&] { return h.Events(Kind::kStale).size() == 1; }));
  CHECK(h.Events(Kind::kStale)[0].nonce == eds.nonce());
  h.Send(sx::kEndpointType, {kCluster}, eds2.version_info(), eds2.nonce());
  REQUIRE(h.WaitFor([&] { return h.Events(Kind::kAck).size() == 2; }));
  CHECK(h.Events(Kind::kAck)[1].version == "2");
}

TEST_CASE("server: a NACK is reported and not answered, a changed subscription is") {
  Harness h;
  h.Send(sx::kClusterType);
  auto cds = h.Read();
  h.Send(sx::kEndpointType, {kCluster});
  auto eds = h.Read();

  h.Send(sx::kEndpointType, {kCluster}, "", eds.nonce(), "endpoints \"x\": bad");
  REQUIRE(h.WaitFor([&] { return h.Events(Kind::kNack).size() == 1; }));
  auto nack = h.Events(Kind::kNack)[0];
  CHECK(nack.error == "endpoints \"x\": bad");
  CHECK(nack.type_url == sx::kEndpointType);
  CHECK(nack.node_id == "sidecar~10.0.0.5~t.default~default.svc.cluster.local");

  // An ACK that also adds a name is answered with the whole new subscription.
  {
    std::lock_guard lock(h.mu);
    h.rs.Add(sluice::testing::EdsCluster("outbound|9||other"));
    h.rs.Add(sluice::testing::Cla("outbound|9||other", "10.0.0.9", 9));
  }
  h.Send(sx::kEndpointType, {kCluster, "outbound|9||other"}, eds.version_info(), eds.nonce());
  auto eds2 = h.Read();  // the NACK produced nothing before this
  CHECK(eds2.type_url() == sx::kEndpointType);
  CHECK(eds2.resources_size() == 1);  // the set is recomputed on Push, not per request
  CHECK(eds2.nonce() != eds.nonce());
}

TEST_CASE("server: a nonce from an earlier stream is a new subscription, not stale") {
  Harness h;
  h.Send(sx::kClusterType, {}, "7", "nonce-from-the-previous-server");
  auto cds = h.Read();
  CHECK(cds.type_url() == sx::kClusterType);
  CHECK(cds.resources_size() == 1);
  CHECK(h.Events(Kind::kStale).empty());
}

TEST_CASE("server: the first request must name the node") {
  Harness h;
  h.first = false;  // no node
  h.Send(sx::kClusterType);
  DiscoveryResponse resp;
  CHECK_FALSE(h.stream->Read(&resp));
  auto st = h.stream->Finish();
  h.finished = true;
  CHECK(st.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(st.error_message() == "the first request must carry node.id");
}
