// What /ready and /metrics say about xDS per-resource acceptance (xds_status_text.h), from a
// real AdsClient's status after a real stream: a refused listener is named with its
// reason (both roles' /ready are 503 while this text is not empty), and refused and
// skipped resources and skipped filter types are counted by type and reason class.
#include "../xds/scripted_ads.h"
#include "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.pb.h"
#include "xds_status_text.h"

using namespace sluice::testing;
using envoy::config::listener::v3::Listener;

namespace {

google::protobuf::Any Opaque(const std::string& type) {
  google::protobuf::Any a;
  a.set_type_url("type.googleapis.com/" + type);
  return a;
}

Listener Tcp(const std::string& name, int port) {
  envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy tp;
  tp.set_stat_prefix("s");
  tp.set_cluster("s");
  Listener l;
  l.set_name(name);
  l.mutable_address()->mutable_socket_address()->set_address("0.0.0.0");
  l.mutable_address()->mutable_socket_address()->set_port_value(static_cast<uint32_t>(port));
  auto* f = l.add_filter_chains()->add_filters();
  f->set_name("envoy.filters.network.tcp_proxy");
  f->mutable_typed_config()->PackFrom(tp);
  return l;
}

// `l` with a filter before its TCP proxy.
Listener With(Listener l, const std::string& name, const std::string& type) {
  auto* chain = l.mutable_filter_chains(0);
  auto* f = chain->add_filters();
  f->set_name(name);
  *f->mutable_typed_config() = Opaque(type);
  chain->mutable_filters()->SwapElements(0, 1);
  return l;
}

bool Has(const std::string& text, const std::string& line) {
  return text.find(line + "\n") != std::string::npos;
}

}  // namespace

TEST_CASE("a refused listener is named in /ready and counted in /metrics until fixed") {
  Fixture f;
  f.Expect(sx::kClusterType);
  REQUIRE(f.ads.Send(std::string(sx::kClusterType), "c1", "n1", {Pack(StaticCluster("s"))}));
  f.Expect(sx::kClusterType);
  f.Expect(sx::kListenerType);
  CHECK(sluice::agent::RefusedListeners(f.client->Status()).empty());

  Listener internal = Tcp("connect_originate", 0);
  internal.clear_address();
  internal.mutable_internal_listener();
  REQUIRE(f.ads.Send(std::string(sx::kListenerType), "l1", "n2",
                     {Pack(Tcp("tcp", 9000)),
                      Pack(With(Tcp("guarded", 9001), "envoy.filters.network.ext_authz",
                                "envoy.extensions.filters.network.ext_authz.v3.ExtAuthz")),
                      Pack(With(Tcp("counted", 9002), "istio.metadata_exchange",
                                "envoy.tcp.metadataexchange.config.MetadataExchange")),
                      Pack(internal)}));
  REQUIRE(f.Expect(sx::kListenerType).has_error_detail());

  auto st = f.client->Status();
  CHECK(sluice::agent::RefusedListeners(st, "view default: ") ==
        "view default: listener guarded refused: filter_chains[0].filters[0]: filter "
        "\"envoy.filters.network.ext_authz\" (type "
        "type.googleapis.com/envoy.extensions.filters.network.ext_authz.v3.ExtAuthz) enforces "
        "policy that Sluice does not implement: refused so it fails closed\n");
  std::string m = sluice::agent::XdsAcceptanceMetrics({{"", st}});
  const std::string lds = "type=\"type.googleapis.com/envoy.config.listener.v3.Listener\"";
  CHECK(Has(m, "sluice_xds_refused_resources{" + lds + ",reason_class=\"security_filter\"} 1"));
  CHECK(Has(m, "sluice_xds_skipped_resources{" + lds + ",reason_class=\"internal_listener\"} 1"));
  CHECK(
      Has(m, "sluice_xds_resources_refused_total{" + lds + ",reason_class=\"security_filter\"} 1"));
  CHECK(Has(m,
            "sluice_xds_skipped_filters{filter_type=\"type.googleapis.com/"
            "envoy.tcp.metadataexchange.config.MetadataExchange\"} 1"));
  // /config_dump lists what is not served, and the telemetry filters skipped.
  auto dump = sluice::agent::XdsAcceptanceJson(st);
  const std::string lds_url = "type.googleapis.com/envoy.config.listener.v3.Listener";
  CHECK(dump["refused"][lds_url].contains("guarded"));
  // ... and which protocol the stream speaks (this fixture's server speaks SotW only).
  CHECK(dump["protocol"] == "sotw");
  CHECK(dump["connected"] == true);
  CHECK(Has(m, "sluice_xds_protocol{protocol=\"sotw\"} 1"));
  CHECK(dump["skipped"][lds_url].contains("connect_originate"));
  CHECK_FALSE(dump["refused"][lds_url].contains("tcp"));
  CHECK(dump["skipped_filters"]["type.googleapis.com/"
                                "envoy.tcp.metadataexchange.config.MetadataExchange"] == 1);
  // A view's stream carries its label.
  CHECK(Has(sluice::agent::XdsAcceptanceMetrics({{"view=\"default\"", st}}),
            "sluice_xds_refused_resources{view=\"default\"," + lds +
                ",reason_class=\"security_filter\"} 1"));

  // Fixed: nothing refused, the gauge drops, the counter stays.
  REQUIRE(f.ads.Send(std::string(sx::kListenerType), "l2", "n3",
                     {Pack(Tcp("tcp", 9000)), Pack(Tcp("guarded", 9001))}));
  CHECK_FALSE(f.Expect(sx::kListenerType).has_error_detail());
  st = f.client->Status();
  CHECK(sluice::agent::RefusedListeners(st).empty());
  m = sluice::agent::XdsAcceptanceMetrics({{"", st}});
  CHECK(m.find("sluice_xds_refused_resources{") == std::string::npos);
  CHECK(
      Has(m, "sluice_xds_resources_refused_total{" + lds + ",reason_class=\"security_filter\"} 1"));
}
