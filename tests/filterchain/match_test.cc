// filterchain::Select: Envoy's filter-chain match, criterion by criterion.
#include "sluice/filterchain/match.h"

#include <catch2/catch.hpp>

using namespace sluice;
using namespace sluice::filterchain;

namespace {

Prefix P(const std::string& cidr) {
  auto slash = cidr.find('/');
  auto p = Prefix::Make(cidr.substr(0, slash),
                        slash == std::string::npos
                            ? std::nullopt
                            : std::optional<uint32_t>(std::stoul(cidr.substr(slash + 1))));
  REQUIRE(p);
  return *p;
}

Connection To(const std::string& ip, uint16_t port) {
  Connection c;
  c.destination = *IpAddress::Parse(ip);
  c.destination_port = port;
  return c;
}

}  // namespace

TEST_CASE("destination: port first, then the most specific prefix, then chains without one") {
  std::vector<Match> chains(4);
  chains[0].prefix_ranges = {P("10.0.0.0/8")};
  chains[1].prefix_ranges = {P("10.1.0.0/16"), P("192.168.0.0/16")};
  chains[2] = {};  // any destination
  chains[3].destination_port = 9090;
  CHECK(Select(chains, To("10.1.2.3", 80)) == std::vector<std::size_t>{1});
  CHECK(Select(chains, To("10.2.2.3", 80)) == std::vector<std::size_t>{0});
  CHECK(Select(chains, To("172.16.0.1", 80)) == std::vector<std::size_t>{2});
  CHECK(Select(chains, To("10.1.2.3", 9090)) == std::vector<std::size_t>{3});
  CHECK(Select(chains, To("fd00::1", 80)) == std::vector<std::size_t>{2});  // family
  // Without a chain matching any destination: none (the default chain serves).
  chains.erase(chains.begin() + 2);
  CHECK(Select(chains, To("172.16.0.1", 80)).empty());
}

TEST_CASE("the hierarchy: a more specific destination wins before server names are looked at") {
  std::vector<Match> chains(2);
  chains[0].prefix_ranges = {P("10.0.0.1/32")};
  chains[1].server_names = {"foo.example.com"};
  Connection c = To("10.0.0.1", 443);
  c.server_name = "foo.example.com";
  CHECK(Select(chains, c) == std::vector<std::size_t>{0});
}

TEST_CASE("server names: exact, then the longest wildcard suffix, then none") {
  std::vector<Match> chains(4);
  chains[0].server_names = {"api.example.com"};
  chains[1].server_names = {"*.example.com"};
  chains[2].server_names = {"*.api.example.com"};
  chains[3] = {};
  Connection c = To("10.0.0.1", 443);
  for (auto [sni, want] : {std::pair<const char*, std::size_t>{"api.example.com", 0},
                           {"v1.api.example.com", 2},
                           {"www.example.com", 1},
                           {"example.com", 3},
                           {"", 3}}) {
    INFO(sni);
    c.server_name = sni;
    CHECK(Select(chains, c) == std::vector<std::size_t>{want});
  }
}

TEST_CASE("transport and application protocols: set ones first, the client's ALPN order") {
  std::vector<Match> chains(3);
  chains[0].transport_protocol = "raw_buffer";
  chains[0].application_protocols = {"http/1.1", "h2c"};
  chains[1].transport_protocol = "raw_buffer";
  chains[2] = {};
  Connection c = To("10.0.0.1", 80);
  c.transport_protocol = "raw_buffer";
  c.application_protocols = std::vector<std::string>{"h2c"};
  CHECK(Select(chains, c) == std::vector<std::size_t>{0});
  c.application_protocols = std::vector<std::string>{};
  CHECK(Select(chains, c) == std::vector<std::size_t>{1});
  c.transport_protocol = "tls";
  CHECK(Select(chains, c) == std::vector<std::size_t>{2});
}

TEST_CASE("source criteria: type, most specific prefix, port") {
  std::vector<Match> chains(3);
  chains[0].source_prefix_ranges = {P("10.211.0.0/16")};
  chains[1].source_prefix_ranges = {P("10.211.0.10/32")};
  chains[1].source_ports = {5000};
  chains[2] = {};
  Connection c = To("10.96.0.1", 80);
  c.source = *IpAddress::Parse("10.211.0.10");
  c.source_port = 5000;
  CHECK(Select(chains, c) == std::vector<std::size_t>{1});
  c.source_port = 5001;  // the /32 chain wants port 5000: no chain left in its bucket
  CHECK(Select(chains, c).empty());
  c.source = *IpAddress::Parse("10.211.9.9");
  CHECK(Select(chains, c) == std::vector<std::size_t>{0});
  std::vector<Match> typed(2);
  typed[0].source_type = SourceType::kSameIpOrLoopback;
  Connection local = To("10.96.0.1", 80);
  local.source = *IpAddress::Parse("127.0.0.1");
  CHECK(Select(typed, local) == std::vector<std::size_t>{0});
  local.source = *IpAddress::Parse("10.1.1.1");
  CHECK(Select(typed, local) == std::vector<std::size_t>{1});
}

TEST_CASE("unknown facts: every chain still possible is returned, so the caller knows") {
  std::vector<Match> chains(3);
  chains[0].prefix_ranges = {P("10.0.0.1/32")};
  chains[0].application_protocols = {"http/1.1"};
  chains[1].prefix_ranges = {P("10.0.0.1/32")};
  chains[2].prefix_ranges = {P("10.0.0.2/32")};
  // Only the destination known (the kernel's view): 0 and 1 both possible.
  CHECK(Select(chains, To("10.0.0.1", 80)) == std::vector<std::size_t>{0, 1});
  // Decided by the destination alone: one.
  CHECK(Select(chains, To("10.0.0.2", 80)) == std::vector<std::size_t>{2});
}

TEST_CASE("prefixes: parsing and containment") {
  CHECK(P("10.0.0.0/8").Contains(*IpAddress::Parse("10.255.0.1")));
  CHECK_FALSE(P("10.0.0.0/8").Contains(*IpAddress::Parse("11.0.0.1")));
  CHECK(P("0.0.0.0/0").Contains(*IpAddress::Parse("1.2.3.4")));
  CHECK(P("fd00::/8").Contains(*IpAddress::Parse("fd12::1")));
  CHECK(P("10.1.2.3").IsHost());
  CHECK(P("10.1.2.3").ToString() == "10.1.2.3/32");
  CHECK_FALSE(Prefix::Make("10.0.0.0", 33));
  CHECK_FALSE(Prefix::Make("not-an-ip", 8));
}

TEST_CASE("decided: false while an unknown fact could still change the answer") {
  // One chain left that names a server: without the SNI it may still fail, so the
  // answer is not final (the proxy reads the ClientHello first).
  std::vector<Match> one(1);
  one[0].server_names = {"a.test"};
  bool decided = true;
  CHECK(Select(one, To("10.0.0.1", 443), &decided) == std::vector<std::size_t>{0});
  CHECK_FALSE(decided);
  Connection c = To("10.0.0.1", 443);
  c.server_name = "b.test";
  CHECK(Select(one, c, &decided).empty());  // known and not matched: the default chain
  CHECK(decided);
  // A criterion no chain sets needs no fact: decided without reading.
  std::vector<Match> ports(2);
  ports[0].destination_port = 80;
  ports[1].transport_protocol = "tls";
  CHECK(Select(ports, To("10.0.0.1", 80), &decided) == std::vector<std::size_t>{0});
  CHECK(decided);
  // The port's bucket sets the transport protocol: not decided until it is known.
  CHECK(Select(ports, To("10.0.0.1", 81), &decided) == std::vector<std::size_t>{1});
  CHECK_FALSE(decided);
  c = To("10.0.0.1", 81);
  c.transport_protocol = "raw_buffer";
  CHECK(Select(ports, c, &decided).empty());
  CHECK(decided);
}

TEST_CASE("the hierarchy does not fall back: a port's chains that all fail leave none") {
  // Envoy picks the destination-port bucket first; when none of its chains matches the
  // later criteria, the chains for any port are not tried (the default chain serves).
  std::vector<Match> chains(2);
  chains[0].destination_port = 80;
  chains[0].transport_protocol = "tls";
  chains[1] = {};
  Connection c = To("10.0.0.1", 80);
  c.transport_protocol = "raw_buffer";
  CHECK(Select(chains, c).empty());
  c.destination_port = 81;
  CHECK(Select(chains, c) == std::vector<std::size_t>{1});
}
