// Which of a pod's ports its inbound side serves (InboundPorts), and where a pod's proxy
// binds its inbound listener (PodProxies::ForPods): on real istiod output (a 1.10
// sidecar's virtualInbound, tests/conformance/istiod) and on small configs that tell the
// rules apart. The kernel steers exactly these ports (tests/kernel/inbound_test.cc); a
// port left out here reaches the application directly.
#include <arpa/inet.h>

#include <google/protobuf/util/json_util.h>
#include <algorithm>
#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>

#include "envoy/config/cluster/v3/cluster.pb.h"
#include "envoy/config/listener/v3/listener.pb.h"
#include "envoy/extensions/filters/listener/original_dst/v3/original_dst.pb.h"
#include "envoy/extensions/filters/network/rbac/v3/rbac.pb.h"
#include "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.pb.h"
#include "pod_proxies.h"
#include "sluice/proxy/config_json.h"

using namespace sluice;
using namespace sluice::agent;

namespace {

// A real istiod dump, compiled as the pod's proxy would; `strip`: HTTP filters of this
// type are taken out first (the policy issue's filters, which Sluice refuses today).
std::shared_ptr<const proxy::ProxyConfig> CompileDump(const std::string& file,
                                                      const std::string& strip) {
  std::ifstream in(std::string(SLUICE_CORPUS) + "/" + file);
  REQUIRE(in);
  auto dump = nlohmann::json::parse(in);
  std::size_t stripped = 0;
  for (auto& section : dump["configs"]) {
    if (!section.contains("dynamicListeners"))
      continue;
    for (auto& l : section["dynamicListeners"]) {
      for (auto& chain : l["activeState"]["listener"]["filterChains"]) {
        for (auto& f : chain["filters"]) {
          auto& tc = f["typedConfig"];
          if (!tc.contains("httpFilters"))
            continue;
          auto& hf = tc["httpFilters"];
          const auto before = hf.size();
          hf.erase(std::remove_if(hf.begin(), hf.end(),
                                  [&](const nlohmann::json& h) {
                                    return h.value("typedConfig", nlohmann::json::object())
                                        .value("@type", "")
                                        .ends_with(strip);
                                  }),
                   hf.end());
          stripped += before - hf.size();
        }
      }
    }
  }
  REQUIRE(stripped > 0);
  auto loaded = proxy::LoadConfigJson(dump.dump());
  REQUIRE(loaded);
  REQUIRE(loaded->unparsed.empty());
  auto cfg = proxy::Compile(loaded->resources);
  REQUIRE(cfg);
  return *cfg;
}

// An inbound listener (original_dst, no hand-over) with one TCP chain for `port` to
// `cluster`, and that cluster: STATIC at `endpoint` ("127.0.0.1:8080"), or ORIGINAL_DST
// when `endpoint` is empty. Plus an outbound capture listener, as every pod config has.
// `rbac`: network rbac filters (proto JSON) put before the tcp_proxy, in this order.
std::shared_ptr<const proxy::ProxyConfig> TcpInbound(uint32_t port, const std::string& endpoint,
                                                     const std::vector<nlohmann::json>& rbac = {}) {
  namespace listener_v3 = envoy::config::listener::v3;
  sluice::xds::ResourceSet rs;
  listener_v3::Listener in;
  in.set_name("virtualInbound");
  in.mutable_address()->mutable_socket_address()->set_address("0.0.0.0");
  in.mutable_address()->mutable_socket_address()->set_port_value(15006);
  auto* od = in.add_listener_filters();
  od->set_name("envoy.filters.listener.original_dst");
  od->mutable_typed_config()->PackFrom(
      envoy::extensions::filters::listener::original_dst::v3::OriginalDst());
  auto* chain = in.add_filter_chains();
  chain->set_name("inbound|" + std::to_string(port) + "||");
  chain->mutable_filter_chain_match()->mutable_destination_port()->set_value(port);
  envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy tcp;
  tcp.set_stat_prefix("inbound");
  tcp.set_cluster("inbound|" + std::to_string(port) + "||");
  for (const auto& r : rbac) {
    envoy::extensions::filters::network::rbac::v3::RBAC proto;
    REQUIRE(google::protobuf::util::JsonStringToMessage(r.dump(), &proto).ok());
    auto* rf = chain->add_filters();
    rf->set_name("envoy.filters.network.rbac");
    rf->mutable_typed_config()->PackFrom(proto);
  }
  auto* f = chain->add_filters();
  f->set_name("envoy.filters.network.tcp_proxy");
  f->mutable_typed_config()->PackFrom(tcp);
  listener_v3::Listener out;
  out.set_name("virtualOutbound");
  out.mutable_address()->mutable_socket_address()->set_address("0.0.0.0");
  out.mutable_address()->mutable_socket_address()->set_port_value(15001);
  out.mutable_use_original_dst()->set_value(true);
  auto* oc = out.add_filter_chains();
  auto* of = oc->add_filters();
  of->set_name("envoy.filters.network.tcp_proxy");
  tcp.set_cluster("inbound|" + std::to_string(port) + "||");
  of->mutable_typed_config()->PackFrom(tcp);
  rs.listeners[in.name()] = in;
  rs.listeners[out.name()] = out;

  envoy::config::cluster::v3::Cluster c;
  c.set_name("inbound|" + std::to_string(port) + "||");
  c.mutable_connect_timeout()->set_seconds(1);
  if (endpoint.empty()) {
    c.set_type(envoy::config::cluster::v3::Cluster::ORIGINAL_DST);
    c.set_lb_policy(envoy::config::cluster::v3::Cluster::CLUSTER_PROVIDED);
  } else {
    c.set_type(envoy::config::cluster::v3::Cluster::STATIC);
    auto colon = endpoint.rfind(':');
    auto* sa = c.mutable_load_assignment()
                   ->add_endpoints()
                   ->add_lb_endpoints()
                   ->mutable_endpoint()
                   ->mutable_address()
                   ->mutable_socket_address();
    sa->set_address(endpoint.substr(0, colon));
    sa->set_port_value(std::stoi(endpoint.substr(colon + 1)));
    c.mutable_load_assignment()->set_cluster_name(c.name());
  }
  rs.clusters[c.name()] = c;
  auto cfg = proxy::Compile(rs);
  REQUIRE(cfg);
  REQUIRE((*cfg)->refused.empty());
  return *cfg;
}

}  // namespace

TEST_CASE(
    "istiod 1.10 sidecar: its HTTP service port and the blackhole port need the inbound side") {
  // Its virtualInbound carries Istio's authn filter, which Sluice refuses until the
  // policy issue lands; without it, the listener is as istiod built it.
  auto cfg = CompileDump("sidecar-1.10-details.json", "authn.v2alpha1.FilterConfig");
  auto ports = InboundPorts(*cfg);
  REQUIRE(ports.size() == 2);
  // 9080: the details service's port, an HTTP connection manager (and an mTLS chain
  // Sluice closes) — never delivered around the proxy.
  CHECK(ports[0].port == 9080);
  CHECK_THAT(ports[0].reason, Catch::Contains("0.0.0.0_9080"));
  // The chain Sluice closes is never bypassed either: refused while no proxy takes it.
  CHECK(ports[0].guard);
  // 15006 itself: istiod blackholes connections dialled to the inbound port.
  CHECK(ports[1].port == 15006);
  CHECK_THAT(ports[1].reason, Catch::Contains("BlackHoleCluster"));
  CHECK_FALSE(ports[1].guard);  // no policy: the application's while no proxy runs
  // The passthrough chains (no destination port) are not steered: every other port
  // reaches the application directly.
}

TEST_CASE(
    "a TCP inbound chain is steered only when its cluster changes where the connection goes") {
  SECTION("defaultEndpoint on another port: steered") {
    auto ports = InboundPorts(*TcpInbound(9080, "127.0.0.1:8080"));
    REQUIRE(ports.size() == 1);
    CHECK(ports[0].port == 9080);
    CHECK(ports[0].reason == "cluster inbound|9080|| sends to 127.0.0.1:8080");
    CHECK_FALSE(ports[0].guard);
  }
  SECTION("the same port on the loopback: delivered unchanged, not steered") {
    CHECK(InboundPorts(*TcpInbound(9080, "127.0.0.1:9080")).empty());
  }
  SECTION("ORIGINAL_DST: delivered unchanged, not steered") {
    CHECK(InboundPorts(*TcpInbound(9080, "")).empty());
  }
  SECTION("another host: steered") {
    auto ports = InboundPorts(*TcpInbound(9080, "10.9.9.9:9080"));
    REQUIRE(ports.size() == 1);
    CHECK(ports[0].reason == "cluster inbound|9080|| sends to 10.9.9.9:9080");
  }
}

TEST_CASE("a pod's proxy binds its inbound listener on the pod's loopback inbound port") {
  auto pods = PodProxies::ForPods(*TcpInbound(9080, "127.0.0.1:8080"), 15001, 15006);
  REQUIRE(pods);
  const proxy::ListenerConfig *in = nullptr, *in6 = nullptr, *capture = nullptr;
  for (const auto& l : pods->listeners) {
    if (l.name == "virtualInbound")
      in = &l;
    else if (l.name == "virtualInbound~ipv6")
      in6 = &l;
    else if (l.name == "virtualOutbound")
      capture = &l;
  }
  REQUIRE(in);
  REQUIRE(in6);
  REQUIRE(capture);
  CHECK(in->bind_to_port);
  CHECK(in->address == "127.0.0.1");
  CHECK(in->port == 15006);
  CHECK(in->optional);  // a pod whose inbound socket could not open runs without it
  CHECK(in->restore_original_dst);
  CHECK_FALSE(in->use_original_dst);  // never the outbound hand-over
  CHECK(in6->address == "::1");
  CHECK(capture->port == 15001);
  CHECK(capture->use_original_dst);

  SECTION("no inbound port: the inbound listener stays unbound") {
    auto off = PodProxies::ForPods(*TcpInbound(9080, "127.0.0.1:8080"), 15001, 0);
    REQUIRE(off);
    for (const auto& l : off->listeners) {
      if (l.name.starts_with("virtualInbound"))
        CHECK_FALSE(l.bind_to_port);
    }
  }
}

namespace {

// istiod's network rbac for one AuthorizationPolicy rule: `to` ports, `from` principals.
nlohmann::json NetworkRbac(const std::string& action, int port, const nlohmann::json& principal) {
  using J = nlohmann::json;
  J port_rule = J::object();
  port_rule["destinationPort"] = port;
  J permission = J::object();
  permission["andRules"]["rules"] = J::array({J{{"orRules", J{{"rules", J::array({port_rule})}}}}});
  J policy = J::object();
  policy["permissions"] = J::array({permission});
  policy["principals"] = J::array({principal});
  J out = J::object();
  out["statPrefix"] = "tcp.";
  out["rules"]["action"] = action;
  out["rules"]["policies"]["ns[foo]-policy[bar]-rule[0]"] = policy;
  return out;
}
nlohmann::json IpBlocks(const std::string& ip, int len) {
  return {
      {"andIds",
       {{"ids",
         {{{"orIds",
            {{"ids", {{{"directRemoteIp", {{"addressPrefix", ip}, {"prefixLen", len}}}}}}}}}}}}}};
}

sockaddr_storage Address(const std::string& ip) {
  sockaddr_storage ss{};
  if (ip.find(':') == std::string::npos) {
    ss.ss_family = AF_INET;
    inet_pton(AF_INET, ip.c_str(), &reinterpret_cast<sockaddr_in&>(ss).sin_addr);
  } else {
    ss.ss_family = AF_INET6;
    inet_pton(AF_INET6, ip.c_str(), &reinterpret_cast<sockaddr_in6&>(ss).sin6_addr);
  }
  return ss;
}

}  // namespace

TEST_CASE("network rbac of addresses and ports only: a kernel rule, the port not steered") {
  // A TCP-only DENY on port 9000 of a port otherwise delivered unchanged.
  auto cfg = TcpInbound(9000, "", {NetworkRbac("DENY", 9000, {{"any", true}})});
  CHECK(InboundPorts(*cfg).empty());
  auto pols = InboundPolicies(*cfg);
  REQUIRE(pols.size() == 1);
  CHECK(pols[0].port == 9000);
  REQUIRE(pols[0].rules.size() == 1);
  CHECK(pols[0].rules[0].action == proxy::L4Rule::Action::kDeny);
  // Per pod address, as the agent writes it: every source of its family.
  auto kernel = KernelPolicies(pols, {Address("10.1.0.5"), Address("fd00::5")});
  REQUIRE(kernel.size() == 2);
  CHECK(kernel[0].address == "10.1.0.5");
  CHECK(kernel[0].rules == std::vector<KernelRule>{{true, {"0.0.0.0/0"}}});
  CHECK(kernel[1].address == "fd00::5");
  CHECK(kernel[1].rules == std::vector<KernelRule>{{true, {"::/0"}}});
  // The L7 wire form reads back the same.
  CHECK(PoliciesFromJson(PoliciesJson(kernel)) == kernel);

  SECTION("ALLOW ipBlocks: only that source, and no IPv6 source") {
    auto allow = TcpInbound(9000, "", {NetworkRbac("ALLOW", 9000, IpBlocks("10.1.0.7", 32))});
    CHECK(InboundPorts(*allow).empty());
    auto k = KernelPolicies(InboundPolicies(*allow), {Address("10.1.0.5"), Address("fd00::5")});
    REQUIRE(k.size() == 2);
    CHECK(k[0].rules == std::vector<KernelRule>{{false, {"10.1.0.7/32"}}});
    CHECK(k[1].rules == std::vector<KernelRule>{{false, {}}});
  }
  SECTION("a filter without rules adds nothing") {
    auto none = TcpInbound(9000, "", {{{"statPrefix", "tcp."}}});
    CHECK(InboundPorts(*none).empty());
    CHECK(InboundPolicies(*none).empty());
  }
  SECTION("a port steered anyway keeps its kernel rule (refused before the proxy)") {
    auto moved = TcpInbound(9000, "127.0.0.1:8080", {NetworkRbac("DENY", 9000, {{"any", true}})});
    auto ports = InboundPorts(*moved);
    REQUIRE(ports.size() == 1);
    CHECK(ports[0].reason == "cluster inbound|9000|| sends to 127.0.0.1:8080");
    CHECK(ports[0].guard);  // its chain carries rbac
    CHECK(InboundPolicies(*moved).size() == 1);
  }
}

TEST_CASE("network rbac the kernel cannot enforce: the port is steered, with the policy named") {
  // source.namespaces: an authenticated principal (peer identity, the proxy's to judge).
  nlohmann::json ns = {
      {"andIds",
       {{"ids",
         {{{"orIds",
            {{"ids",
              {{{"authenticated",
                 {{"principalName", {{"safeRegex", {{"regex", ".*/ns/ns-1/.*"}}}}}}}}}}}}}}}}}};
  auto cfg = TcpInbound(9000, "", {NetworkRbac("DENY", 9000, ns)});
  auto ports = InboundPorts(*cfg);
  REQUIRE(ports.size() == 1);
  CHECK(ports[0].port == 9000);
  CHECK(ports[0].reason ==
        "network rbac (policy ns[foo]-policy[bar]-rule[0]: "
        "principals[0].and_ids.ids[0].or_ids.ids[0].authenticated: needs the proxy)");
  // Only the proxy enforces it: while no proxy takes the port, the kernel refuses it.
  CHECK(ports[0].guard);
  CHECK(InboundPolicies(*cfg).empty());
  // The L7 wire form reads back the same, unserved included.
  ports[0].serving = false;
  CHECK(InboundFromJson(InboundJson(ports)) == ports);

  SECTION("one such filter among kernel-enforceable ones is enough") {
    auto mixed = TcpInbound(
        9000, "", {NetworkRbac("DENY", 9000, {{"any", true}}), NetworkRbac("ALLOW", 9000, ns)});
    REQUIRE(InboundPorts(*mixed).size() == 1);
    CHECK(InboundPolicies(*mixed).empty());
  }
}
