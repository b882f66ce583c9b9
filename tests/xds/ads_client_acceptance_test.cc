// Per-resource acceptance in the ADS client, over a real gRPC stream to a scripted server:
// a listener or cluster Sluice cannot serve is NACKed by name while the others of that
// response are applied (as Envoy's LDS and CDS); a refused resource keeps its earlier
// version; resources Sluice has no use for are skipped (ACKed, not served, one warning).
#include <google/protobuf/struct.pb.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.pb.h"
#include "scripted_ads.h"

using namespace sluice::testing;
using envoy::config::cluster::v3::Cluster;
using envoy::config::listener::v3::Listener;

namespace {

// An Any of a type Sluice does not link, with the given serialized bytes.
google::protobuf::Any Opaque(const std::string& type, const std::string& bytes = "") {
  google::protobuf::Any a;
  a.set_type_url("type.googleapis.com/" + type);
  a.set_value(bytes);
  return a;
}

// A udpa.type.v1.TypedStruct carrying `type` (field 1) and an empty value, as istiod
// sends istio_authn, set_dst_address and istio.stats.
google::protobuf::Any TypedStruct(const std::string& type) {
  std::string inner = "type.googleapis.com/" + type;
  std::string bytes;
  bytes += static_cast<char>((1 << 3) | 2);
  bytes += static_cast<char>(inner.size());
  bytes += inner;
  return Opaque("udpa.type.v1.TypedStruct", bytes);
}

Listener TcpListener(const std::string& name, int port, const std::string& cluster) {
  envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy tp;
  tp.set_stat_prefix(cluster);
  tp.set_cluster(cluster);
  Listener l;
  l.set_name(name);
  auto* sa = l.mutable_address()->mutable_socket_address();
  sa->set_address("0.0.0.0");
  sa->set_port_value(static_cast<uint32_t>(port));
  auto* f = l.add_filter_chains()->add_filters();
  f->set_name("envoy.filters.network.tcp_proxy");
  f->mutable_typed_config()->PackFrom(tp);
  return l;
}

// A network filter in front of the listener's TCP proxy.
Listener WithNetworkFilter(Listener l, const std::string& name, const google::protobuf::Any& any) {
  auto* chain = l.mutable_filter_chains(0);
  auto* f = chain->add_filters();
  f->set_name(name);
  *f->mutable_typed_config() = any;
  // Put it first, as istiod does (rbac, istio_authn before tcp_proxy).
  for (int i = chain->filters_size() - 1; i > 0; --i)
    chain->mutable_filters()->SwapElements(i, i - 1);
  return l;
}

// HBONE's connect_originate as istiod builds it: no socket address, an internal listener.
Listener InternalListener(const std::string& name) {
  Listener l = TcpListener(name, 0, "s");
  l.clear_address();
  l.mutable_internal_listener();
  auto* lf = l.add_listener_filters();
  lf->set_name("set_dst_address");
  *lf->mutable_typed_config() = TypedStruct("istio.set_internal_dst_address.v1.Config");
  return l;
}

// ALLOW_ANY_DYNAMIC_DNS's cluster: a custom cluster_type.
Cluster DynamicForwardProxy(const std::string& name) {
  Cluster c;
  c.set_name(name);
  c.set_lb_policy(Cluster::CLUSTER_PROVIDED);
  c.mutable_cluster_type()->set_name("envoy.clusters.dynamic_forward_proxy");
  *c.mutable_cluster_type()->mutable_typed_config() =
      Opaque("envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig");
  return c;
}

const sx::TypeStatus& TypeOf(const sx::AdsClientStatus& st, std::string_view type) {
  return st.types.at(std::string(type));
}

uint32_t PortOf(const sluice::config::SnapshotPtr& s, const std::string& cluster) {
  return s->clusters.at(cluster)
      ->load_assignment()
      .endpoints(0)
      .lb_endpoints(0)
      .endpoint()
      .address()
      .socket_address()
      .port_value();
}

// CDS with one static cluster "s", ACKed; then the LDS request.
void ClustersIn(Fixture& f) {
  f.Expect(sx::kClusterType);
  REQUIRE(f.ads.Send(std::string(sx::kClusterType), "c1", "cn1", {Pack(StaticCluster("s"))}));
  REQUIRE(f.Expect(sx::kClusterType).version_info() == "c1");
  f.Expect(sx::kListenerType);
}

// Log lines containing `text` so far, from a ring buffer sink on the default logger.
struct LogCapture {
  LogCapture() : sink(std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(512)) {
    spdlog::default_logger()->sinks().push_back(sink);
  }
  ~LogCapture() {
    auto& sinks = spdlog::default_logger()->sinks();
    sinks.erase(std::remove(sinks.begin(), sinks.end(), sink), sinks.end());
  }
  size_t Count(const std::string& text) {
    auto lines = sink->last_formatted();
    return static_cast<size_t>(std::count_if(lines.begin(), lines.end(), [&](const auto& l) {
      return l.find(text) != std::string::npos;
    }));
  }
  std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> sink;
};

}  // namespace

TEST_CASE("one bad cluster among good ones: NACKed by name, the good ones in force") {
  Fixture f;
  f.Expect(sx::kClusterType);
  Cluster bad = StaticCluster("bad");
  bad.set_lb_policy(Cluster::CLUSTER_PROVIDED);  // only valid for ORIGINAL_DST
  REQUIRE(f.ads.Send(std::string(sx::kClusterType), "c1", "n1",
                     {Pack(StaticCluster("good-a")), Pack(bad), Pack(StaticCluster("good-b"))}));
  auto nack = f.Expect(sx::kClusterType);
  CHECK(nack.version_info().empty());  // nothing fully accepted yet
  CHECK(nack.response_nonce() == "n1");
  CHECK(nack.error_detail().code() == 3);
  CHECK(nack.error_detail().message() ==
        "Error adding/updating cluster(s) bad: lb_policy: CLUSTER_PROVIDED is only valid for an "
        "ORIGINAL_DST cluster, not STATIC");
  // The others of the response are applied, and the init order goes on (LDS).
  f.Expect(sx::kListenerType);
  auto snap = f.store.Current();
  CHECK(snap->clusters.contains("good-a"));
  CHECK(snap->clusters.contains("good-b"));
  CHECK_FALSE(snap->clusters.contains("bad"));
  auto st = TypeOf(f.client->Status(), sx::kClusterType);
  REQUIRE(st.refused.size() == 1);
  CHECK(st.refused.at("bad").reason_class == "invalid");
  CHECK(st.nacks == 1);
  CHECK(st.acked_version.empty());

  // The fixed resend is ACKed and served.
  REQUIRE(f.ads.Send(
      std::string(sx::kClusterType), "c2", "n2",
      {Pack(StaticCluster("good-a")), Pack(StaticCluster("bad")), Pack(StaticCluster("good-b"))}));
  auto ack = f.Expect(sx::kClusterType);
  CHECK(ack.version_info() == "c2");
  CHECK_FALSE(ack.has_error_detail());
  CHECK(f.store.Current()->clusters.contains("bad"));
  CHECK(TypeOf(f.client->Status(), sx::kClusterType).refused.empty());

  // A broken update of an accepted cluster: refused, and its earlier version stays.
  Cluster worse = StaticCluster("good-a");
  worse.mutable_load_assignment()
      ->mutable_endpoints(0)
      ->mutable_lb_endpoints(0)
      ->mutable_endpoint()
      ->mutable_address()
      ->mutable_socket_address()
      ->set_port_value(0);
  Cluster moved = StaticCluster("good-b");
  moved.mutable_load_assignment()
      ->mutable_endpoints(0)
      ->mutable_lb_endpoints(0)
      ->mutable_endpoint()
      ->mutable_address()
      ->mutable_socket_address()
      ->set_port_value(9100);
  REQUIRE(f.ads.Send(std::string(sx::kClusterType), "c3", "n3",
                     {Pack(worse), Pack(StaticCluster("bad")), Pack(moved)}));
  nack = f.Expect(sx::kClusterType);
  CHECK(nack.version_info() == "c2");
  CHECK(nack.error_detail().message() ==
        "Error adding/updating cluster(s) good-a: load_assignment.endpoints[0].lb_endpoints[0]."
        "endpoint.address.socket_address.port_value: must not be 0");
  snap = f.store.Current();
  CHECK(PortOf(snap, "good-a") == 9000);  // the version accepted before
  CHECK(PortOf(snap, "good-b") == 9100);  // the good update of the same response
  CHECK(snap->clusters.contains("bad"));
}

TEST_CASE("one bad listener among good ones: NACKed by name, the good ones in force") {
  Fixture f;
  ClustersIn(f);
  // A network ext_authz filter: policy Sluice does not enforce, so the listener is refused
  // (fails closed); a listener with an unknown filter is refused too, never served without it.
  Listener rbac =
      WithNetworkFilter(TcpListener("rbac", 9001, "s"), "envoy.filters.network.ext_authz",
                        Opaque("envoy.extensions.filters.network.ext_authz.v3.ExtAuthz"));
  Listener sni =
      WithNetworkFilter(TcpListener("sni", 9002, "s"), "envoy.filters.network.sni_cluster",
                        Opaque("envoy.extensions.filters.network.sni_cluster.v3.SniCluster"));
  REQUIRE(f.ads.Send(std::string(sx::kListenerType), "l1", "n1",
                     {Pack(HttpListener("http", 8080, "r1")), Pack(rbac),
                      Pack(TcpListener("tcp", 9000, "s")), Pack(sni)}));
  // The RDS subscription of the accepted HTTP listener, then the NACK naming both.
  auto rds = f.Expect(sx::kRouteType);
  CHECK(std::vector<std::string>(rds.resource_names().begin(), rds.resource_names().end()) ==
        std::vector<std::string>{"r1"});
  auto nack = f.Expect(sx::kListenerType);
  CHECK(nack.version_info().empty());
  CHECK(nack.response_nonce() == "n1");
  CHECK(nack.error_detail().message() ==
        "Error adding/updating listener(s) "
        "rbac: filter_chains[0].filters[0]: filter \"envoy.filters.network.ext_authz\" (type "
        "type.googleapis.com/envoy.extensions.filters.network.ext_authz.v3.ExtAuthz) enforces "
        "policy that Sluice does not implement: refused so it fails closed\n"
        "sni: filter_chains[0].filters[0]: filter \"envoy.filters.network.sni_cluster\" (type "
        "type.googleapis.com/envoy.extensions.filters.network.sni_cluster.v3.SniCluster) is not "
        "supported\n");
  auto snap = f.store.Current();
  CHECK(snap->listeners.contains("tcp"));
  CHECK_FALSE(snap->listeners.contains("rbac"));
  CHECK_FALSE(snap->listeners.contains("sni"));
  CHECK_FALSE(snap->listeners.contains("http"));  // warming: no route yet
  auto st = TypeOf(f.client->Status(), sx::kListenerType);
  REQUIRE(st.refused.size() == 2);
  CHECK(st.refused.at("rbac").reason_class == "security_filter");
  CHECK(st.refused.at("sni").reason_class == "unknown_filter");

  // The route arrives: the HTTP listener warms and is served.
  REQUIRE(f.ads.Send(std::string(sx::kRouteType), "r1", "n2", {Pack(RouteTo("r1", "*", "s"))}));
  CHECK(f.Expect(sx::kRouteType).version_info() == "r1");
  CHECK(f.store.Current()->listeners.contains("http"));

  // The fixed resend (without the refused filters) is ACKed and served.
  REQUIRE(f.ads.Send(std::string(sx::kListenerType), "l2", "n3",
                     {Pack(HttpListener("http", 8080, "r1")), Pack(TcpListener("rbac", 9001, "s")),
                      Pack(TcpListener("tcp", 9000, "s")), Pack(TcpListener("sni", 9002, "s"))}));
  auto ack = f.Expect(sx::kListenerType);
  CHECK(ack.version_info() == "l2");
  CHECK_FALSE(ack.has_error_detail());
  snap = f.store.Current();
  CHECK(snap->listeners.size() == 4);
  CHECK(TypeOf(f.client->Status(), sx::kListenerType).refused.empty());

  // A refused update of a served listener keeps the version in force.
  auto before = snap->listeners.at("tcp");
  Listener tcp_rbac =
      WithNetworkFilter(TcpListener("tcp", 9000, "other"), "envoy.filters.network.ext_authz",
                        Opaque("envoy.extensions.filters.network.ext_authz.v3.ExtAuthz"));
  REQUIRE(f.ads.Send(std::string(sx::kListenerType), "l3", "n4",
                     {Pack(HttpListener("http", 8080, "r1")), Pack(TcpListener("rbac", 9001, "s")),
                      Pack(tcp_rbac), Pack(TcpListener("sni", 9002, "s"))}));
  nack = f.Expect(sx::kListenerType);
  CHECK(nack.version_info() == "l2");
  CHECK(nack.error_detail().message().starts_with("Error adding/updating listener(s) tcp: "));
  CHECK(f.store.Current()->listeners.at("tcp") == before);
  CHECK(TypeOf(f.client->Status(), sx::kListenerType).refused.contains("tcp"));

  // A listener istiod drops goes, refused or not (SotW).
  REQUIRE(f.ads.Send(std::string(sx::kListenerType), "l4", "n5",
                     {Pack(HttpListener("http", 8080, "r1"))}));
  CHECK(f.Expect(sx::kListenerType).version_info() == "l4");
  CHECK(f.store.Current()->listeners.size() == 1);
  CHECK(TypeOf(f.client->Status(), sx::kListenerType).refused.empty());
}

TEST_CASE("resources Sluice has no use for are skipped: ACKed, not served, one warning") {
  LogCapture log;
  Fixture f;
  f.Expect(sx::kClusterType);
  std::vector<google::protobuf::Any> clusters{Pack(StaticCluster("s")),
                                              Pack(DynamicForwardProxy("dfp"))};
  REQUIRE(f.ads.Send(std::string(sx::kClusterType), "c1", "n1", clusters));
  auto ack = f.Expect(sx::kClusterType);
  CHECK(ack.version_info() == "c1");
  CHECK_FALSE(ack.has_error_detail());
  f.Expect(sx::kListenerType);
  CHECK(f.store.Current()->clusters.contains("s"));
  CHECK_FALSE(f.store.Current()->clusters.contains("dfp"));

  std::vector<google::protobuf::Any> listeners{Pack(TcpListener("tcp", 9000, "s")),
                                               Pack(InternalListener("connect_originate"))};
  for (int i = 1; i <= 2; ++i) {  // the same push twice: one warning per resource
    REQUIRE(f.ads.Send(std::string(sx::kListenerType), "l" + std::to_string(i),
                       "ln" + std::to_string(i), listeners));
    auto lack = f.Expect(sx::kListenerType);
    CHECK(lack.version_info() == "l" + std::to_string(i));
    CHECK_FALSE(lack.has_error_detail());
  }
  auto snap = f.store.Current();
  CHECK(snap->listeners.contains("tcp"));
  CHECK_FALSE(snap->listeners.contains("connect_originate"));

  auto st = f.client->Status();
  CHECK(TypeOf(st, sx::kClusterType).skipped.at("dfp").reason_class == "custom_cluster_type");
  CHECK(TypeOf(st, sx::kClusterType).skipped_total.at("custom_cluster_type") == 1);
  CHECK(TypeOf(st, sx::kListenerType).skipped.at("connect_originate").reason_class ==
        "internal_listener");
  CHECK(TypeOf(st, sx::kListenerType).skipped_total.at("internal_listener") == 2);
  CHECK(TypeOf(st, sx::kListenerType).refused.empty());
  CHECK(log.Count(
            "cluster \"dfp\": custom cluster type \"envoy.clusters.dynamic_forward_proxy\"") == 1);
  CHECK(log.Count("listener \"connect_originate\": an internal listener") == 1);
}

TEST_CASE("telemetry filters are skipped with one warning per type, and counted") {
  LogCapture log;
  Fixture f;
  ClustersIn(f);
  // TCP metadata exchange (istio.stats itself is served by the proxy).
  auto stats = [](const std::string& name, int port) {
    return WithNetworkFilter(TcpListener(name, port, "s"), "istio.metadata_exchange",
                             TypedStruct("envoy.tcp.metadataexchange.config.MetadataExchange"));
  };
  REQUIRE(f.ads.Send(std::string(sx::kListenerType), "l1", "n1",
                     {Pack(stats("a", 9001)), Pack(stats("b", 9002))}));
  auto ack = f.Expect(sx::kListenerType);
  CHECK_FALSE(ack.has_error_detail());
  CHECK(f.store.Current()->listeners.size() == 2);
  auto st = TypeOf(f.client->Status(), sx::kListenerType);
  CHECK(st.skipped_filters.at(
            "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange") == 2);
  CHECK(log.Count(
            "filter type type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange") ==
        1);
}
