// The ADS server's side of the protocol, checked message by message with a raw gRPC
// stream acting as the xDS client.
#include <grpcpp/grpcpp.h>
#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <deque>
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
const std::string kListener = "0.0.0.0_8000";
// A type the server does not serve (SRDS; SDS is served since issue 18).
const std::string kUnservedType =
    "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration";

// A server with a ResourceSet the test edits, and one raw client stream. Responses are
// read by a thread into a queue, so a test can also check that nothing arrives.
struct Harness {
  explicit Harness(sx::ResourceSet initial = sluice::testing::HttpbinSet(1))
      : server([this](const envoy::config::core::v3::Node&) {
          std::lock_guard lock(mu);
          return rs;
        }) {
    rs = std::move(initial);
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
    reader = std::thread([this] {
      DiscoveryResponse resp;
      while (stream->Read(&resp)) {
        std::lock_guard lock(rmu);
        inbox.push_back(resp);
        rcv.notify_all();
      }
      std::lock_guard lock(rmu);
      closed = true;
      rcv.notify_all();
    });
  }
  ~Harness() {
    if (!finished)
      ctx.TryCancel();
    reader.join();
    if (!finished)
      stream->Finish();
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
  // ACK `resp` with the given subscription.
  void Ack(const DiscoveryResponse& resp, std::vector<std::string> names) {
    Send(resp.type_url(), std::move(names), resp.version_info(), resp.nonce());
  }
  // The next response; fails the test if none comes within 5 s.
  DiscoveryResponse Read() {
    std::unique_lock lock(rmu);
    REQUIRE(rcv.wait_for(lock, 5s, [&] { return !inbox.empty() || closed; }));
    REQUIRE_FALSE(inbox.empty());
    DiscoveryResponse resp = std::move(inbox.front());
    inbox.pop_front();
    return resp;
  }
  // True if no response arrives within `quiet` (the server has answered everything it
  // will: responses to one stream are written in order by one thread).
  bool Silent(std::chrono::milliseconds quiet = 300ms) {
    std::unique_lock lock(rmu);
    return !rcv.wait_for(lock, quiet, [&] { return !inbox.empty(); });
  }
  // Waits for the server to end the stream; returns the status.
  grpc::Status WaitClosed() {
    {
      std::unique_lock lock(rmu);
      REQUIRE(rcv.wait_for(lock, 5s, [&] { return closed; }));
    }
    finished = true;
    return stream->Finish();
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
  template <class F>
  uint64_t Change(F edit) {
    {
      std::lock_guard lock(mu);
      edit(rs);
    }
    return server.Push();
  }

  std::mutex mu;
  sx::ResourceSet rs;
  std::vector<sx::AdsServerEvent> events;
  sx::AdsServer server;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<envoy::service::discovery::v3::AggregatedDiscoveryService::Stub> stub;
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientReaderWriter<DiscoveryRequest, DiscoveryResponse>> stream;
  std::thread reader;
  std::mutex rmu;
  std::condition_variable rcv;
  std::deque<DiscoveryResponse> inbox;
  bool closed = false;
  bool first = true;
  bool finished = false;
};

// The names of the resources in a response, in order.
std::vector<std::string> Names(const DiscoveryResponse& resp) {
  std::vector<std::string> out;
  for (const auto& any : resp.resources()) {
    if (resp.type_url() == sx::kListenerType) {
      envoy::config::listener::v3::Listener m;
      REQUIRE(any.UnpackTo(&m));
      out.push_back(m.name());
    } else if (resp.type_url() == sx::kClusterType) {
      envoy::config::cluster::v3::Cluster m;
      REQUIRE(any.UnpackTo(&m));
      out.push_back(m.name());
    } else if (resp.type_url() == sx::kEndpointType) {
      envoy::config::endpoint::v3::ClusterLoadAssignment m;
      REQUIRE(any.UnpackTo(&m));
      out.push_back(m.cluster_name());
    } else if (resp.type_url() == sx::kRouteType) {
      envoy::config::route::v3::RouteConfiguration m;
      REQUIRE(any.UnpackTo(&m));
      out.push_back(m.name());
    }
  }
  return out;
}
using Strings = std::vector<std::string>;

// HttpbinSet plus a second service (cluster, endpoints, listener, route), so a
// subscription can cover one and not the other.
sx::ResourceSet TwoServices() {
  auto rs = sluice::testing::HttpbinSet(1);
  const std::string other = "outbound|9000||other.default.svc.cluster.local";
  rs.Add(sluice::testing::EdsCluster(other));
  rs.Add(sluice::testing::Cla(other, "10.0.1.1", 9000));
  rs.Add(sluice::testing::HttpListener("0.0.0.0_9000", 9000, "9000"));
  rs.Add(sluice::testing::RouteTo("9000", "other.default.svc.cluster.local", other));
  return rs;
}
const std::string kOther = "outbound|9000||other.default.svc.cluster.local";

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
  h.Send(sx::kClusterType, {}, cds.version_info(), cds.nonce());  // ACK v1 (still wildcard)
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
  Harness h(TwoServices());
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
  CHECK(h.Silent());  // the same content is not sent again

  // An ACK that also adds a name is answered with the newly named resource.
  h.Send(sx::kEndpointType, {kCluster, kOther}, eds.version_info(), eds.nonce());
  auto eds2 = h.Read();  // the NACK produced nothing before this
  CHECK(eds2.type_url() == sx::kEndpointType);
  CHECK(Names(eds2) == Strings{kOther});
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
  auto st = h.WaitClosed();
  CHECK(h.inbox.empty());
  CHECK(st.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(st.error_message() == "the first request must carry node.id");
}

// xds_protocol.rst, "How the client specifies what resources to return": once a client
// has named resources, an empty list unsubscribes from all of them, for LDS and CDS too.
TEST_CASE("server: [] after names unsubscribes LDS and CDS, and pushes send nothing of them") {
  Harness h(TwoServices());
  h.Send(sx::kClusterType, {kCluster});
  auto cds = h.Read();
  CHECK(Names(cds) == Strings{kCluster});
  h.Send(sx::kEndpointType, {kCluster});
  auto eds = h.Read();
  h.Send(sx::kListenerType, {kListener});
  auto lds = h.Read();
  CHECK(Names(lds) == Strings{kListener});
  h.Send(sx::kRouteType, {"8000"});
  auto rds = h.Read();

  h.Ack(cds, {});
  h.Ack(lds, {});
  REQUIRE(h.WaitFor([&] { return h.Events(Kind::kAck).size() == 2; }));
  CHECK(h.Silent());  // not the wildcard: nothing of either type comes back

  // A push that changes every resource: only EDS and RDS, still subscribed, are sent.
  // Pushes go CDS, EDS, LDS, RDS, so a CDS or LDS response would come before these.
  h.Change([](sx::ResourceSet& s) {
    for (auto& [n, c] : s.clusters)
      c.mutable_connect_timeout()->set_seconds(3);
    for (auto& [n, l] : s.listeners)
      l.mutable_address()->mutable_socket_address()->set_address("127.0.0.2");
    s.Add(sluice::testing::Cla(kCluster, "10.0.0.7", 9000));
    s.Add(sluice::testing::RouteTo("8000", "httpbin", kOther));
  });
  auto eds2 = h.Read();
  CHECK(eds2.type_url() == sx::kEndpointType);
  auto rds2 = h.Read();
  CHECK(rds2.type_url() == sx::kRouteType);
  CHECK(h.Silent());
}

TEST_CASE("server: [*, X] is the wildcard plus X, and then [X] keeps X alone") {
  // X is an alias, so it is served only because it is named: the wildcard part of the
  // answer never carries aliases.
  auto rs = TwoServices();
  rs.listener_aliases["httpbin:8000"] = kListener;
  Harness h(std::move(rs));
  h.Send(sx::kListenerType, {"*", "httpbin:8000"});
  auto lds = h.Read();
  CHECK(Names(lds) == Strings{kListener, "0.0.0.0_9000", "httpbin:8000"});

  h.Ack(lds, {"httpbin:8000"});  // drops the wildcard, keeps X
  auto lds2 = h.Read();
  CHECK(Names(lds2) == Strings{"httpbin:8000"});  // the complete set the client now holds

  // Changing a listener only the wildcard covered sends nothing of LDS (an RDS change in
  // the same push would come after LDS: here nothing at all may come).
  h.Ack(lds2, {"httpbin:8000"});
  h.Change([](sx::ResourceSet& s) {
    s.listeners["0.0.0.0_9000"].mutable_address()->mutable_socket_address()->set_port_value(9001);
  });
  CHECK(h.Silent());
  // Changing X's listener sends X.
  h.Change([](sx::ResourceSet& s) {
    s.listeners[kListener].mutable_address()->mutable_socket_address()->set_port_value(8001);
  });
  auto lds3 = h.Read();
  REQUIRE(Names(lds3) == Strings{"httpbin:8000"});
  envoy::config::listener::v3::Listener l;
  REQUIRE(lds3.resources(0).UnpackTo(&l));
  CHECK(l.address().socket_address().port_value() == 8001);
}

TEST_CASE("server: a NACK that changes names gets only what is new, never the rejected") {
  Harness h(TwoServices());
  h.Send(sx::kEndpointType, {kCluster});
  auto eds = h.Read();
  CHECK(Names(eds) == Strings{kCluster});

  // EDS: the NACK of kCluster also subscribes to kOther; only kOther comes back.
  h.Send(sx::kEndpointType, {kCluster, kOther}, "", eds.nonce(), "endpoints: bad");
  auto eds2 = h.Read();
  CHECK(Names(eds2) == Strings{kOther});
  CHECK(h.Silent());
  // A NACK that only drops a name is recorded and not answered ...
  h.Send(sx::kEndpointType, {kOther}, "", eds2.nonce(), "endpoints: bad");
  CHECK(h.Silent());
  // ... and the dropped name counts as new when named again.
  h.Ack(eds2, {kCluster, kOther});
  auto eds3 = h.Read();
  CHECK(Names(eds3) == Strings{kCluster});
  CHECK(h.Events(Kind::kNack).size() == 2);

  // LDS: every response is the complete set, so a NACK that adds an existing name gets
  // the whole set (see Send() in ads_server.cc); one that adds nothing new gets nothing.
  h.Send(sx::kListenerType, {kListener});
  auto lds = h.Read();
  h.Send(sx::kListenerType, {kListener, "nope"}, "", lds.nonce(), "listener: bad");
  CHECK(h.Silent());
  h.Send(sx::kListenerType, {kListener, "nope", "0.0.0.0_9000"}, "", lds.nonce(), "listener: bad");
  auto lds2 = h.Read();
  CHECK(Names(lds2) == Strings{kListener, "0.0.0.0_9000"});
}

TEST_CASE("server: after WritesDone every pending request is answered, then OK") {
  Harness h(TwoServices());
  h.Send(sx::kClusterType);
  h.Send(sx::kEndpointType, {kCluster, kOther});
  h.Send(sx::kListenerType);
  h.Send(sx::kRouteType, {"8000"});
  REQUIRE(h.stream->WritesDone());
  auto st = h.WaitClosed();
  CHECK(st.ok());
  CHECK(st.error_message().empty());
  REQUIRE(h.inbox.size() == 4);
  CHECK(h.inbox[0].type_url() == sx::kClusterType);
  CHECK(h.inbox[1].type_url() == sx::kEndpointType);
  CHECK(h.inbox[1].resources_size() == 2);
  CHECK(h.inbox[2].type_url() == sx::kListenerType);
  CHECK(h.inbox[3].type_url() == sx::kRouteType);
  REQUIRE(h.WaitFor([&] { return !h.Events(Kind::kDisconnect).empty(); }));
}

TEST_CASE("server: Stop() still ends a stream the client keeps open") {
  Harness h;
  h.Send(sx::kClusterType);
  h.Read();
  h.server.Stop();
  auto st = h.WaitClosed();
  CHECK_FALSE(st.ok());
  CHECK(h.server.Connected() == 0);
}

TEST_CASE("server: an unsupported type is answered empty, other types are unaffected") {
  Harness h;
  h.Send(kUnservedType, {"default"});
  auto sds = h.Read();
  CHECK(sds.type_url() == kUnservedType);
  CHECK(sds.resources_size() == 0);
  CHECK(sds.version_info() == "1");
  CHECK_FALSE(sds.nonce().empty());
  REQUIRE(h.Events(Kind::kUnsupportedType).size() == 1);
  CHECK(h.Events(Kind::kUnsupportedType)[0].type_url == kUnservedType);

  const std::string made_up = "type.googleapis.com/sluice.test.NoSuchThing";
  h.Send(made_up);
  auto other = h.Read();
  CHECK(other.type_url() == made_up);
  CHECK(other.resources_size() == 0);
  CHECK(other.nonce() != sds.nonce());

  // Their ACKs are not answered; the usual types are served as before.
  h.Ack(sds, {"default"});
  h.Ack(other, {});
  CHECK(h.Silent());
  h.Send(sx::kClusterType);
  auto cds = h.Read();
  CHECK(Names(cds) == Strings{kCluster});
  CHECK(h.Events(Kind::kStale).empty());
}

// "Knowing When a Requested Resource Does Not Exist": no response for names that match
// nothing (the client's timer decides), and the resource is sent once it exists.
TEST_CASE("server: names that match nothing get no response until they exist") {
  Harness h;
  const std::string nope = "outbound|1||nope.default.svc.cluster.local";
  h.Send(sx::kClusterType, {nope});
  h.Send(sx::kEndpointType, {nope});
  h.Send(sx::kListenerType, {"0.0.0.0_1"});
  h.Send(sx::kRouteType, {"1"});
  CHECK(h.Silent());
  CHECK(h.Events(Kind::kRequest).size() == 4);

  h.Change([&](sx::ResourceSet& rs) {
    rs.Add(sluice::testing::EdsCluster(nope));
    rs.Add(sluice::testing::Cla(nope, "10.0.9.1", 1));
    rs.Add(sluice::testing::HttpListener("0.0.0.0_1", 1, "1"));
    rs.Add(sluice::testing::RouteTo("1", "nope", nope));
  });
  auto cds = h.Read();
  CHECK(cds.type_url() == sx::kClusterType);
  CHECK(Names(cds) == Strings{nope});
  auto eds = h.Read();
  CHECK(Names(eds) == Strings{nope});
  auto lds = h.Read();
  CHECK(Names(lds) == Strings{"0.0.0.0_1"});
  auto rds = h.Read();
  CHECK(Names(rds) == Strings{"1"});
  CHECK(h.Silent());
}

TEST_CASE("server: a listener alias is served under its name, only when named") {
  auto rs = TwoServices();
  rs.listener_aliases["httpbin:8000"] = kListener;
  rs.listener_aliases["httpbin.default:8000"] = kListener;
  Harness h(rs);
  h.Send(sx::kListenerType, {"httpbin:8000"});
  auto lds = h.Read();
  REQUIRE(Names(lds) == Strings{"httpbin:8000"});
  envoy::config::listener::v3::Listener l;
  REQUIRE(lds.resources(0).UnpackTo(&l));
  auto want = rs.listeners[kListener];
  want.set_name("httpbin:8000");
  CHECK(l.SerializeAsString() == want.SerializeAsString());  // the canonical, renamed

  // A wildcard subscriber on another stream sees the listeners, not the aliases.
  Harness w(rs);
  w.Send(sx::kListenerType);
  CHECK(Names(w.Read()) == Strings{kListener, "0.0.0.0_9000"});

  // A change to the canonical listener re-sends the alias (the named stream).
  h.Ack(lds, {"httpbin:8000"});
  h.Change([](sx::ResourceSet& s) {
    s.listeners[kListener].mutable_address()->mutable_socket_address()->set_port_value(8080);
  });
  auto lds2 = h.Read();
  REQUIRE(Names(lds2) == Strings{"httpbin:8000"});
  REQUIRE(lds2.resources(0).UnpackTo(&l));
  CHECK(l.address().socket_address().port_value() == 8080);
  // An alias whose canonical listener is gone is absent: the SotW LDS response is empty.
  h.Ack(lds2, {"httpbin:8000"});
  h.Change([](sx::ResourceSet& s) { s.listeners.erase(kListener); });
  auto lds3 = h.Read();
  CHECK(lds3.resources_size() == 0);
}
