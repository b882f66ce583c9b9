// The ADS client's side of the protocol, checked request by request against a scripted
// gRPC server that sends exactly the responses a test writes, including ones Sluice's
// own server never would (wrong types, duplicates, partial EDS, wrapped resources).
#include "scripted_ads.h"

using namespace sluice::testing;

TEST_CASE("the first request is a wildcard CDS carrying the node, later ones do not repeat it") {
  Fixture f;
  auto cds = f.Expect(sx::kClusterType);
  CHECK(cds.node().id() == "sidecar~10.0.0.7~app-1.default~default.svc.cluster.local");
  CHECK(cds.resource_names_size() == 0);
  CHECK(cds.version_info().empty());
  CHECK(cds.response_nonce().empty());
  REQUIRE(f.ads.Send(std::string(sx::kClusterType), "v1", "n1", {Pack(StaticCluster("s"))}));
  auto ack = f.Expect(sx::kClusterType);
  CHECK_FALSE(ack.has_node());
  CHECK(ack.version_info() == "v1");
  CHECK(ack.response_nonce() == "n1");
  CHECK_FALSE(ack.has_error_detail());
  // No EDS cluster: nothing to warm, so LDS follows at once.
  auto lds = f.Expect(sx::kListenerType);
  CHECK(lds.resource_names_size() == 0);
  CHECK(f.store.Current()->clusters.contains("s"));
}

TEST_CASE("NACKs carry the version in force, the response's nonce and what was wrong") {
  Fixture f;
  f.Expect(sx::kClusterType);
  REQUIRE(f.ads.Send(std::string(sx::kClusterType), "v1", "n1", {Pack(StaticCluster("s"))}));
  f.Expect(sx::kClusterType);  // ACK
  f.Expect(sx::kListenerType);

  SECTION("a resource of another type") {
    envoy::config::listener::v3::Listener l;
    l.set_name("x");
    REQUIRE(
        f.ads.Send(std::string(sx::kClusterType), "v2", "n2", {Pack(StaticCluster("s")), Pack(l)}));
    auto nack = f.Expect(sx::kClusterType);
    CHECK(nack.version_info() == "v1");
    CHECK(nack.response_nonce() == "n2");
    CHECK(nack.error_detail().code() == 3);
    CHECK(nack.error_detail().message() ==
          "resources[1]: type type.googleapis.com/envoy.config.listener.v3.Listener in a response "
          "of type type.googleapis.com/envoy.config.cluster.v3.Cluster");
  }
  SECTION("the same name twice") {
    REQUIRE(f.ads.Send(std::string(sx::kClusterType), "v2", "n2",
                       {Pack(StaticCluster("t")), Pack(StaticCluster("t"))}));
    auto nack = f.Expect(sx::kClusterType);
    CHECK(nack.version_info() == "v1");
    CHECK(nack.error_detail().message() == "resources[1]: \"t\" appears twice in one response");
  }
  SECTION("bytes that do not decode") {
    google::protobuf::Any junk;
    junk.set_type_url(std::string(sx::kClusterType));
    junk.set_value("\xff\xff\xff");
    REQUIRE(f.ads.Send(std::string(sx::kClusterType), "v2", "n2", {junk}));
    auto nack = f.Expect(sx::kClusterType);
    CHECK(nack.error_detail().message() ==
          "resources[0]: cannot decode as envoy.config.cluster.v3.Cluster");
  }
  // Nothing of v2 was applied, and the next good response is ACKed normally.
  CHECK(f.store.Current()->clusters.size() == 1);
  CHECK(f.store.Current()->clusters.contains("s"));
  REQUIRE(f.ads.Send(std::string(sx::kClusterType), "v3", "n3",
                     {Pack(StaticCluster("s")), Pack(StaticCluster("u"))}));
  auto ack = f.Expect(sx::kClusterType);
  CHECK(ack.version_info() == "v3");
  CHECK(ack.response_nonce() == "n3");
  CHECK_FALSE(ack.has_error_detail());
  CHECK(f.store.Current()->clusters.size() == 2);
}

TEST_CASE("EDS: subscription before the CDS ACK, partial responses merge, unsubscribed names go") {
  Fixture f;
  const std::string a = sluice::testing::ClusterName("a.default.svc.cluster.local", 80);
  const std::string b = sluice::testing::ClusterName("b.default.svc.cluster.local", 80);
  f.Expect(sx::kClusterType);
  REQUIRE(f.ads.Send(std::string(sx::kClusterType), "c1", "n1",
                     {Pack(sluice::testing::EdsCluster(a)), Pack(sluice::testing::EdsCluster(b))}));
  // As Envoy: the EDS subscription for the new clusters first, then the CDS ACK.
  auto eds = f.Expect(sx::kEndpointType);
  CHECK(std::set<std::string>(eds.resource_names().begin(), eds.resource_names().end()) ==
        std::set<std::string>{a, b});
  CHECK(f.Expect(sx::kClusterType).version_info() == "c1");
  // Warming: the clusters are not active before their endpoints, and LDS waits.
  std::this_thread::sleep_for(50ms);
  CHECK(f.store.Current()->clusters.empty());
  CHECK(f.ads.Pending() == 0);

  REQUIRE(f.ads.Send(std::string(sx::kEndpointType), "e1", "n2",
                     {Pack(sluice::testing::Cla(a, "10.0.0.1", 80)),
                      Pack(sluice::testing::Cla(b, "10.0.0.2", 80))}));
  CHECK(f.Expect(sx::kEndpointType).version_info() == "e1");
  f.Expect(sx::kListenerType);
  CHECK(f.store.Current()->clusters.size() == 2);

  // A response with only `a`: `b` keeps its endpoints.
  REQUIRE(f.ads.Send(std::string(sx::kEndpointType), "e2", "n3",
                     {Pack(sluice::testing::Cla(a, "10.0.0.1", 80, 3))}));
  CHECK(f.Expect(sx::kEndpointType).version_info() == "e2");
  CHECK(Endpoints(f.store.Current(), a) == 3);
  CHECK(Endpoints(f.store.Current(), b) == 1);

  // `b` leaves CDS: EDS drops it from the subscription (request before the ACK again).
  REQUIRE(f.ads.Send(std::string(sx::kClusterType), "c2", "n4",
                     {Pack(sluice::testing::EdsCluster(a))}));
  auto eds2 = f.Expect(sx::kEndpointType);
  CHECK(std::vector<std::string>(eds2.resource_names().begin(), eds2.resource_names().end()) ==
        std::vector<std::string>{a});
  CHECK(eds2.version_info() == "e2");
  CHECK(eds2.response_nonce() == "n3");
  CHECK(f.Expect(sx::kClusterType).version_info() == "c2");
  CHECK_FALSE(f.store.Current()->clusters.contains(b));
  CHECK_FALSE(f.store.Current()->endpoints.contains(b));
  CHECK(Endpoints(f.store.Current(), a) == 3);
}

TEST_CASE("resources wrapped in envoy.service.discovery.v3.Resource are unwrapped") {
  Fixture f;
  f.Expect(sx::kClusterType);
  envoy::service::discovery::v3::Resource w;
  w.set_name("s");
  w.set_version("1");
  w.mutable_resource()->PackFrom(StaticCluster("s"));
  REQUIRE(f.ads.Send(std::string(sx::kClusterType), "v1", "n1", {Pack(w)}));
  auto ack = f.Expect(sx::kClusterType);
  CHECK_FALSE(ack.has_error_detail());
  CHECK(f.store.Current()->clusters.contains("s"));
}
