// Envoy's filter-chain match (a Listener's FilterChainMatch), as a pure function.
//
// A connection is matched against the listener's chains criterion by criterion, in
// Envoy's order: destination port, destination IP (prefix_ranges), server name (SNI),
// transport protocol, application protocols (ALPN), direct source IP, source type,
// source IP, source port. Each criterion narrows the chains still in the running to
// those that match it most specifically; a chain that does not set the criterion
// matches any value, but only when no chain matches specifically. So the match is a
// hierarchy, not a score: a chain with a more specific destination wins before server
// names are looked at. No chain left: the listener's default chain.
//
// The kernel sync knows only a connection's destination (it plans at config time);
// the proxy knows more once it has read the first bytes. A fact left unknown
// (nullopt) that the remaining chains disagree on leaves all of them possible: the
// caller sees that the choice depends on it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/common/result.h"
#include "sluice/loader/ip.h"

namespace sluice::filterchain {

// An address prefix, "10.0.0.0/8".
struct Prefix {
  IpAddress address;
  uint32_t length = 0;
  // An address alone is a host prefix (/32, /128); `length` over the family's is an error.
  [[nodiscard]] static Result<Prefix> Make(std::string_view address,
                                           std::optional<uint32_t> length);
  bool Contains(const IpAddress& a) const;
  bool IsHost() const { return length == (address.is_v4() ? 32u : 128u); }
  std::string ToString() const;
};

enum class SourceType { kAny, kSameIpOrLoopback, kExternal };

struct Match {
  uint32_t destination_port = 0;  // 0: any
  std::vector<Prefix> prefix_ranges;
  std::vector<std::string> server_names;  // lower case; "*.example.com" is a wildcard
  std::string transport_protocol;         // "tls", "raw_buffer"; empty: any
  std::vector<std::string> application_protocols;
  std::vector<Prefix> direct_source_prefix_ranges;
  SourceType source_type = SourceType::kAny;
  std::vector<Prefix> source_prefix_ranges;
  std::vector<uint32_t> source_ports;
};

// What is known of a connection.
struct Connection {
  IpAddress destination;
  uint16_t destination_port = 0;
  std::optional<std::string> server_name;  // "" when the client sent none
  std::optional<std::string> transport_protocol;
  std::optional<std::vector<std::string>> application_protocols;
  std::optional<IpAddress> direct_source;
  std::optional<IpAddress> source;
  std::optional<uint16_t> source_port;
};

// The chains (indices into `chains`) that may serve the connection: one when every
// criterion the chains set is decided by a known fact, none when no chain matches (the
// default chain serves), several when the choice depends on a fact not known.
// `decided` (optional) says whether the answer is final: false when a fact left unknown
// could still change it (even when one chain is left, which may yet fail that criterion)
// -- the proxy then reads the connection's first bytes (its listener filters) and asks
// again.
std::vector<std::size_t> Select(std::span<const Match> chains, const Connection& c,
                                bool* decided = nullptr);

// How `server_names` (lower case) meet a server name, as Select ranks chains by it: 0
// when `names` is empty (any name, and none), -1 when none takes `sni` ("" takes only
// an empty list), else the specificity: an exact name above every wildcard, a longer
// wildcard suffix above a shorter one ("*.example.com" takes "a.example.com", not
// "example.com"). TLS termination picks its certificate by it too.
int ServerNameScore(const std::vector<std::string>& names, std::string_view sni);

}  // namespace sluice::filterchain
