// The kernel's share of a network rbac filter (sluice/proxy/rbac_l4.h): istiod-shaped
// filters (pilot/pkg/security/authz/builder testdata: ipBlocks as or_ids of
// direct_remote_ip, notIpBlocks as not_id, ports as destination_port) projected onto
// source prefixes per port, and the filters that need the pod's proxy refused with the
// policy and field. Every projection is checked against the RBAC engine itself (Envoy's
// semantics, rbac.h) over a grid of sources and destinations: the kernel must refuse
// exactly the connections the filter would.
#include "sluice/proxy/rbac_l4.h"

#include <arpa/inet.h>
#include <google/protobuf/util/json_util.h>
#include <netinet/in.h>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "envoy/extensions/filters/network/rbac/v3/rbac.pb.h"
#include "sluice/proxy/rbac.h"

namespace proxy = sluice::proxy;
using Json = nlohmann::json;
using NetworkRbac = envoy::extensions::filters::network::rbac::v3::RBAC;
using proxy::IpPrefix;
using proxy::L4Rule;

namespace {

NetworkRbac Filter(const Json& j) {
  NetworkRbac m;
  auto st = google::protobuf::util::JsonStringToMessage(j.dump(), &m);
  INFO(j.dump());
  REQUIRE(st.ok());
  return m;
}

// One policy per entry, under `action`, as istiod names them.
Json Rules(const std::string& action, const std::vector<std::pair<Json, Json>>& policies) {
  Json p = Json::object();
  for (std::size_t i = 0; i < policies.size(); i++)
    p["ns[foo]-policy[tcp]-rule[" + std::to_string(i) + "]"] = {
        {"permissions", Json::array({policies[i].first})},
        {"principals", Json::array({policies[i].second})}};
  return {{"statPrefix", "tcp."}, {"rules", {{"action", action}, {"policies", p}}}};
}

// istiod's shapes: a `to.operation.ports` list, a `from.source.ipBlocks` list (and its
// notIpBlocks), each wrapped in its and_rules / and_ids.
Json Ports(std::initializer_list<int> ports) {
  Json or_rules = Json::array();
  for (int p : ports)
    or_rules.push_back({{"destinationPort", p}});
  return {{"andRules", {{"rules", {{{"orRules", {{"rules", or_rules}}}}}}}}};
}
Json AnyPermission() {
  return {{"andRules", {{"rules", {{{"any", true}}}}}}};
}
Json Cidrs(const std::vector<std::string>& cidrs, const char* field = "directRemoteIp") {
  Json ids = Json::array();
  for (const auto& c : cidrs) {
    auto slash = c.find('/');
    ids.push_back(
        {{field,
          {{"addressPrefix", c.substr(0, slash)}, {"prefixLen", std::stoi(c.substr(slash + 1))}}}});
  }
  return {{"orIds", {{"ids", ids}}}};
}
Json Source(const std::vector<Json>& ands) {
  return {{"andIds", {{"ids", ands}}}};
}
Json AnySource() {
  return Source({{{"any", true}}});
}

std::vector<std::string> Strings(const std::vector<IpPrefix>& p) {
  std::vector<std::string> out;
  for (const auto& x : p)
    out.push_back(x.ToString());
  return out;
}

IpPrefix Addr(const std::string& s) {
  auto p = IpPrefix::Parse(s);
  REQUIRE(p);
  return *p;
}

sockaddr_storage Sock(const std::string& ip, uint16_t port) {
  sockaddr_storage ss{};
  if (ip.find(':') == std::string::npos) {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    inet_pton(AF_INET, ip.c_str(), &a->sin_addr);
  } else {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(port);
    inet_pton(AF_INET6, ip.c_str(), &a->sin6_addr);
  }
  return ss;
}

// The kernel's decision for a rule (pod_inbound.bpf.c): DENY refuses a held source,
// ALLOW refuses any other.
bool KernelAllows(const std::optional<L4Rule>& rule, const std::string& src,
                  const std::string& dst) {
  if (!rule)
    return true;
  const IpPrefix s = Addr(src);
  bool held = false;
  for (const IpPrefix& p : rule->SourcesFor(Addr(dst)))
    held = held || p.Contains(s);
  return rule->action == L4Rule::Action::kDeny ? !held : held;
}

// Projects `j` for `port` and checks it against the engine for every (source,
// destination) pair of the grid; returns the projection.
std::optional<L4Rule> ProjectAndCheck(const Json& j, uint16_t port) {
  const NetworkRbac f = Filter(j);
  auto projected = proxy::ProjectNetworkRbac(f, port);
  INFO((projected ? "" : projected.error().message));
  REQUIRE(projected);
  auto engine = proxy::CompileNetworkRbac(f, "f");
  REQUIRE(engine);
  const std::vector<std::string> sources = {
      "1.2.3.4",  "1.2.3.5", "5.6.0.1",  "5.6.7.8",     "5.7.0.1",         "9.0.0.1",
      "10.0.0.1", "0.0.0.0", "10.1.2.3", "192.168.1.1", "255.255.255.255", "fd00::1",
      "fd00::2",  "fd01::1", "::1",      "2001:db8::5"};
  const std::vector<std::string> destinations = {"10.211.0.2", "10.211.0.3", "fd11::2"};
  for (const auto& dst : destinations) {
    for (const auto& src : sources) {
      if ((src.find(':') == std::string::npos) != (dst.find(':') == std::string::npos))
        continue;  // a connection has one family
      const sockaddr_storage local = Sock(dst, port), peer = Sock(src, 40000);
      proxy::RbacRequest r;
      r.local = &local;
      r.direct_remote = &peer;
      const bool envoy = engine->Evaluate(r).allowed();
      INFO("port " << port << ", " << src << " -> " << dst);
      CHECK(KernelAllows(*projected, src, dst) == envoy);
    }
  }
  return *projected;
}

std::string Refusal(const Json& j, uint16_t port) {
  auto projected = proxy::ProjectNetworkRbac(Filter(j), port);
  REQUIRE_FALSE(projected);
  return projected.error().message;
}

}  // namespace

TEST_CASE("a TCP-only DENY on a port: every source refused there, other ports untouched") {
  // AuthorizationPolicy DENY, rules: [{to: [{operation: {ports: ["9000"]}}]}].
  const Json deny = Rules("DENY", {{Ports({9000}), AnySource()}});
  auto on = ProjectAndCheck(deny, 9000);
  REQUIRE(on);
  CHECK(on->action == L4Rule::Action::kDeny);
  CHECK(Strings(on->SourcesFor(Addr("10.211.0.2"))) == std::vector<std::string>{"0.0.0.0/0"});
  CHECK(Strings(on->SourcesFor(Addr("fd11::2"))) == std::vector<std::string>{"::/0"});
  // Port 8080's chain carries the same filter; no policy matches there.
  auto off = ProjectAndCheck(deny, 8080);
  REQUIRE(off);
  CHECK(off->policies.empty());
  CHECK(KernelAllows(off, "1.2.3.4", "10.211.0.2"));
}

TEST_CASE("ALLOW with ipBlocks and notIpBlocks: exactly those sources get in") {
  // from: [{source: {ipBlocks: ["1.2.3.4", "5.6.0.0/16"], notIpBlocks: ["5.6.7.0/24"]}}]
  const Json allow =
      Rules("ALLOW", {{AnyPermission(), Source({Cidrs({"1.2.3.4/32", "5.6.0.0/16"}),
                                                {{"notId", Cidrs({"5.6.7.0/24"})}}})}});
  auto rule = ProjectAndCheck(allow, 9000);
  REQUIRE(rule);
  CHECK(rule->action == L4Rule::Action::kAllow);
  // 5.6.0.0/16 without 5.6.7.0/24, as the fewest prefixes.
  CHECK(Strings(rule->SourcesFor(Addr("10.211.0.2"))) ==
        std::vector<std::string>{"1.2.3.4/32", "5.6.0.0/22", "5.6.4.0/23", "5.6.6.0/24",
                                 "5.6.8.0/21", "5.6.16.0/20", "5.6.32.0/19", "5.6.64.0/18",
                                 "5.6.128.0/17"});
  // An IPv6 pod address: no IPv6 source is allowed.
  CHECK(rule->SourcesFor(Addr("fd11::2")).empty());
  CHECK_FALSE(KernelAllows(rule, "fd00::1", "fd11::2"));
}

TEST_CASE("istiod's TCP deny-all (ALLOW without policies) refuses every source") {
  // What istiod emits on a TCP chain when every ALLOW rule needs HTTP fields.
  auto rule = ProjectAndCheck({{"statPrefix", "tcp."}, {"rules", Json::object()}}, 9000);
  REQUIRE(rule);
  CHECK(rule->action == L4Rule::Action::kAllow);
  CHECK(rule->policies.empty());
  CHECK_FALSE(KernelAllows(rule, "1.2.3.4", "10.211.0.2"));
}

TEST_CASE("a filter without rules never refuses") {
  auto rule = ProjectAndCheck({{"statPrefix", "tcp."}}, 9000);
  CHECK_FALSE(rule);
}

TEST_CASE("port ranges, remote_ip/source_ip, nested and/or/not, IPv6 and destination_ip") {
  SECTION("destination_port_range [9000, 9100) and not_rule") {
    Json range = {{"destinationPortRange", {{"start", 9000}, {"end", 9100}}}};
    const Json deny =
        Rules("DENY", {{range, Cidrs({"10.0.0.0/8"}, "remoteIp")},
                       {{{"notRule", Ports({9000})}}, Cidrs({"fd00::/16"}, "sourceIp")}});
    auto at9000 = ProjectAndCheck(deny, 9000);
    CHECK(Strings(at9000->SourcesFor(Addr("10.211.0.2"))) ==
          std::vector<std::string>{"10.0.0.0/8"});
    CHECK(at9000->SourcesFor(Addr("fd11::2")).empty());
    auto at9099 = ProjectAndCheck(deny, 9099);
    CHECK(Strings(at9099->SourcesFor(Addr("fd11::2"))) == std::vector<std::string>{"fd00::/16"});
    auto at9100 = ProjectAndCheck(deny, 9100);
    CHECK(at9100->SourcesFor(Addr("10.211.0.2")).empty());
  }
  SECTION("destination_ip: the pod address decides which policy applies") {
    // when: [{key: destination.ip, values: ["10.211.0.2"]}]
    Json to_a = {
        {"andRules",
         {{"rules", {{{"destinationIp", {{"addressPrefix", "10.211.0.2"}, {"prefixLen", 32}}}}}}}}};
    auto rule = ProjectAndCheck(Rules("ALLOW", {{to_a, Cidrs({"1.2.3.0/24"})}}), 9000);
    CHECK(Strings(rule->SourcesFor(Addr("10.211.0.2"))) == std::vector<std::string>{"1.2.3.0/24"});
    CHECK(rule->SourcesFor(Addr("10.211.0.3")).empty());
  }
  SECTION("and_ids of two ranges, not_id of any") {
    ProjectAndCheck(Rules("DENY", {{AnyPermission(), Source({Cidrs({"5.0.0.0/8"}),
                                                             Cidrs({"5.6.0.0/16", "9.0.0.0/8"})})},
                                   {Ports({9000}), {{"notId", {{"any", true}}}}}}),
                    9000);
  }
  SECTION("a prefix_len of 0 (or none) is every address of the family, as in Envoy") {
    Json all_v4 = {{"orIds", {{"ids", {{{"directRemoteIp", {{"addressPrefix", "7.7.7.7"}}}}}}}}};
    auto rule = ProjectAndCheck(Rules("ALLOW", {{AnyPermission(), all_v4}}), 9000);
    CHECK(Strings(rule->SourcesFor(Addr("10.211.0.2"))) == std::vector<std::string>{"0.0.0.0/0"});
    CHECK(rule->SourcesFor(Addr("fd11::2")).empty());
  }
}

TEST_CASE("filters the kernel cannot enforce name the policy and field that need the proxy") {
  // istiod's `source.namespaces`: an authenticated principal (peer identity).
  Json ns =
      Source({{{"orIds",
                {{"ids",
                  {{{"authenticated",
                     {{"principalName", {{"safeRegex", {{"regex", ".*/ns/ns-1/.*"}}}}}}}}}}}}}});
  std::string e = Refusal(Rules("DENY", {{Ports({80}), ns}}), 80);
  CHECK_THAT(e, Catch::Contains("policy ns[foo]-policy[tcp]-rule[0]"));
  CHECK_THAT(e, Catch::Contains("principals[0].and_ids.ids[0].or_ids.ids[0].authenticated"));

  Json header = {{"header", {{"name", "x-a"}, {"presentMatch", true}}}};
  CHECK_THAT(Refusal(Rules("ALLOW", {{AnyPermission(), header}}), 80),
             Catch::Contains("principals[0].header"));
  Json sni = {{"requestedServerName", {{"exact", "a.example.com"}}}};
  CHECK_THAT(Refusal(Rules("ALLOW", {{sni, AnySource()}}), 80),
             Catch::Contains("permissions[0].requested_server_name"));
  // A permission the kernel could decide does not save a policy whose other part it cannot.
  CHECK_THAT(Refusal(Rules("DENY", {{Ports({9999}), ns}}), 80), Catch::Contains("authenticated"));

  Json shadow = Rules("ALLOW", {{AnyPermission(), AnySource()}});
  shadow["shadowRules"] = {{"action", "DENY"}};
  CHECK_THAT(Refusal(shadow, 80), Catch::Contains("shadow_rules"));
  CHECK_THAT(Refusal(Rules("LOG", {{AnyPermission(), AnySource()}}), 80),
             Catch::Contains("rules.action LOG"));
  // An invalid config is the engine's refusal, by field.
  CHECK_THAT(Refusal(Rules("DENY", {{AnyPermission(), Cidrs({"1.2.3.4/33"})}}), 80),
             Catch::Contains("prefix_len"));
}

TEST_CASE("address sets: union, intersection and complement stay the fewest prefixes") {
  using proxy::AddressSet;
  auto a = AddressSet::Of(Addr("10.0.0.0/9")).Union(AddressSet::Of(Addr("10.128.0.0/9")));
  CHECK(Strings(a.prefixes()) == std::vector<std::string>{"10.0.0.0/8"});
  CHECK(a.Complement().Complement() == a);
  CHECK(AddressSet::All().Complement().empty());
  CHECK(AddressSet::None().Complement() == AddressSet::All());
  CHECK(a.Intersect(AddressSet::Of(Addr("10.1.0.0/16"))) == AddressSet::Of(Addr("10.1.0.0/16")));
  CHECK(a.Intersect(AddressSet::Of(Addr("11.0.0.0/8"))).empty());
  CHECK(Strings(AddressSet::Of(Addr("::/1")).Complement().prefixes()) ==
        std::vector<std::string>{"0.0.0.0/0", "8000::/1"});
}
