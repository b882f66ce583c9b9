// The part of a network rbac filter (envoy.filters.network.rbac, istiod's L4
// AuthorizationPolicy) that the kernel can enforce at connect time: when every permission
// and principal needs only the connection's addresses and its port, the filter's outcome
// for one destination port is a set of source prefixes per destination address. The pod's
// sk_lookup program then refuses a denied connect before any byte flows (docs/policy.md,
// "Where each rule is enforced"); anything richer (headers, SNI, peer identity, metadata,
// shadow rules, LOG) is refused here with the policy and field that need the pod's proxy.
//
// The projection is exact, not an approximation: for every (source, destination) address
// pair on that port, the projected rule refuses the connection iff Envoy's filter would.
#pragma once

#include <array>
#include <compare>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/common/result.h"

namespace envoy::extensions::filters::network::rbac::v3 {
class RBAC;
}

namespace sluice::proxy {

// An address prefix, its host bits zero. family 4 or 6; an address is a full-length one.
struct IpPrefix {
  uint8_t family = 4;
  std::array<uint8_t, 16> bytes{};  // IPv4 uses the first 4
  uint8_t len = 0;

  static Result<IpPrefix> Parse(std::string_view text);  // "10.0.0.0/8", "fd00::1"
  std::string ToString() const;                          // "10.0.0.0/8"
  uint8_t max_len() const { return family == 4 ? 32 : 128; }
  bool Contains(const IpPrefix& other) const;
  auto operator<=>(const IpPrefix&) const = default;
};

// A set of addresses of both families as the fewest disjoint prefixes, sorted.
class AddressSet {
 public:
  static AddressSet All();
  static AddressSet None() { return {}; }
  static AddressSet Of(const IpPrefix& p);

  AddressSet Union(const AddressSet& o) const;
  AddressSet Intersect(const AddressSet& o) const;
  AddressSet Complement() const;
  bool Contains(const IpPrefix& address) const;
  bool empty() const { return prefixes_.empty(); }
  const std::vector<IpPrefix>& prefixes() const { return prefixes_; }
  bool operator==(const AddressSet&) const = default;

 private:
  static AddressSet Normalized(std::vector<IpPrefix> p);
  std::vector<IpPrefix> prefixes_;
};

// One policy of the filter on the port: it matches a connection from a source in
// `sources` to a destination in `destinations`.
struct L4Policy {
  std::string name;
  AddressSet destinations;  // from the permissions (ports already decided)
  AddressSet sources;       // from the principals
  bool operator==(const L4Policy&) const = default;
};

// The filter on one port: Envoy's engine over policies that need only addresses.
struct L4Rule {
  enum class Action { kAllow, kDeny };
  Action action = Action::kAllow;
  std::vector<L4Policy> policies;  // an ALLOW rule without policies refuses everything

  // The sources some policy matches for a connection to `destination` (an address),
  // prefixes of its family only: ALLOW lets exactly these in, DENY keeps them out.
  std::vector<IpPrefix> SourcesFor(const IpPrefix& destination) const;
  bool operator==(const L4Rule&) const = default;
};

// Projects the filter for connections to `port`. nullopt: the filter never refuses (no
// `rules` and no `shadow_rules`, as Envoy allows everything then). An error: the filter
// cannot be enforced in the kernel; its message names the policy and field
// ("policy ns[foo]-policy[bar]-rule[0]: principals[0].authenticated"), or is the engine's
// own refusal of an invalid config.
Result<std::optional<L4Rule>> ProjectNetworkRbac(
    const envoy::extensions::filters::network::rbac::v3::RBAC& rbac, uint16_t port);

}  // namespace sluice::proxy
