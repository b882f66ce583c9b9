// Projection of a network rbac filter onto addresses (rbac_l4.h): Envoy's permission and
// principal trees evaluated as address sets instead of per connection. A permission is
// the set of destination addresses it matches on the given port (ports are decided here,
// once); a principal is the set of source addresses. and/or/not become intersection,
// union and complement, so nested istiod shapes (or_ids of direct_remote_ip, not_id for
// notIpBlocks, and_rules of destination_port) project exactly.
#include "sluice/proxy/rbac_l4.h"

#include <arpa/inet.h>

#include <algorithm>

#include "envoy/config/rbac/v3/rbac.pb.h"
#include "envoy/extensions/filters/network/rbac/v3/rbac.pb.h"
#include "sluice/proxy/rbac.h"

// Principal.source_ip is deprecated but still what older istiod sends: read, as Envoy does.
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

namespace sluice::proxy {

namespace rbac_v3 = envoy::config::rbac::v3;

namespace {

// More prefixes than this in one set is not a policy anyone wrote by hand; the kernel
// table is finite too.
constexpr std::size_t kMaxPrefixes = 4096;

void Mask(IpPrefix& p) {
  for (std::size_t i = 0; i < 16; i++) {
    const int keep = std::clamp(static_cast<int>(p.len) - static_cast<int>(i) * 8, 0, 8);
    p.bytes[i] &= static_cast<uint8_t>(0xff00 >> keep);
  }
}

bool Bit(const IpPrefix& p, int i) {
  return (p.bytes[static_cast<std::size_t>(i / 8)] >> (7 - i % 8)) & 1;
}

// The two halves of p (p.len < max_len).
std::pair<IpPrefix, IpPrefix> Halves(const IpPrefix& p) {
  IpPrefix lo = p, hi = p;
  lo.len = hi.len = static_cast<uint8_t>(p.len + 1);
  hi.bytes[p.len / 8] |= static_cast<uint8_t>(0x80 >> (p.len % 8));
  return {lo, hi};
}

// What of `within` is not covered by `set` (prefixes of its family).
void ComplementWithin(const std::vector<IpPrefix>& set, const IpPrefix& within,
                      std::vector<IpPrefix>& out) {
  std::vector<IpPrefix> inside;
  for (const IpPrefix& s : set) {
    if (s.Contains(within))
      return;  // all of it is covered
    if (within.Contains(s))
      inside.push_back(s);
  }
  if (inside.empty()) {
    out.push_back(within);
    return;
  }
  auto [lo, hi] = Halves(within);
  ComplementWithin(inside, lo, out);
  ComplementWithin(inside, hi, out);
}

Result<IpPrefix> Range(const envoy::config::core::v3::CidrRange& c) {
  auto p = IpPrefix::Parse(c.address_prefix());
  SLUICE_RETURN_IF_ERROR(p);
  // Envoy's CidrRange: a missing prefix_len is 0 (every address of the family).
  const uint32_t len = c.has_prefix_len() ? c.prefix_len().value() : 0;
  if (len > p->max_len())
    return Fail("prefix_len " + std::to_string(len) + " is longer than the address");
  p->len = static_cast<uint8_t>(len);
  Mask(*p);
  return *p;
}

// The destination addresses a permission matches on `port`.
Result<AddressSet> Permission(const rbac_v3::Permission& p, uint16_t port,
                              const std::string& where) {
  using P = rbac_v3::Permission;
  switch (p.rule_case()) {
    case P::kAny:
      return p.any() ? AddressSet::All() : AddressSet::None();
    case P::kDestinationPort:
      return p.destination_port() == port ? AddressSet::All() : AddressSet::None();
    case P::kDestinationPortRange: {
      const auto& r = p.destination_port_range();
      return port >= r.start() && port < r.end() ? AddressSet::All() : AddressSet::None();
    }
    case P::kDestinationIp: {
      auto r = Range(p.destination_ip());
      SLUICE_RETURN_IF_ERROR_CTX(r, where + ".destination_ip");
      return AddressSet::Of(*r);
    }
    case P::kAndRules:
    case P::kOrRules: {
      const bool all = p.rule_case() == P::kAndRules;
      const auto& rules = all ? p.and_rules().rules() : p.or_rules().rules();
      AddressSet acc = all ? AddressSet::All() : AddressSet::None();
      for (int i = 0; i < rules.size(); i++) {
        auto s = Permission(
            rules[i], port,
            where + (all ? ".and_rules" : ".or_rules") + ".rules[" + std::to_string(i) + "]");
        SLUICE_RETURN_IF_ERROR(s);
        acc = all ? acc.Intersect(*s) : acc.Union(*s);
      }
      return acc;
    }
    case P::kNotRule: {
      auto s = Permission(p.not_rule(), port, where + ".not_rule");
      SLUICE_RETURN_IF_ERROR(s);
      return s->Complement();
    }
    case P::kHeader:
      return Fail(where + ".header");
    case P::kUrlPath:
      return Fail(where + ".url_path");
    case P::kUriTemplate:
      return Fail(where + ".uri_template");
    case P::kMetadata:
      return Fail(where + ".metadata");
    case P::kRequestedServerName:
      return Fail(where + ".requested_server_name");
    case P::kMatcher:
      return Fail(where + ".matcher");
    case P::RULE_NOT_SET:
      break;
  }
  return Fail(where + ": no rule");
}

// The source addresses a principal matches.
Result<AddressSet> Principal(const rbac_v3::Principal& p, const std::string& where) {
  using P = rbac_v3::Principal;
  switch (p.identifier_case()) {
    case P::kAny:
      return p.any() ? AddressSet::All() : AddressSet::None();
    case P::kDirectRemoteIp:
    case P::kSourceIp:
    case P::kRemoteIp: {
      // On a TCP connection remote_ip is the peer too (no x-forwarded-for, and Sluice
      // reads no PROXY protocol).
      const char* field = p.identifier_case() == P::kDirectRemoteIp ? ".direct_remote_ip"
                          : p.identifier_case() == P::kSourceIp     ? ".source_ip"
                                                                    : ".remote_ip";
      const auto& range = p.identifier_case() == P::kDirectRemoteIp ? p.direct_remote_ip()
                          : p.identifier_case() == P::kSourceIp     ? p.source_ip()
                                                                    : p.remote_ip();
      auto r = Range(range);
      SLUICE_RETURN_IF_ERROR_CTX(r, where + field);
      return AddressSet::Of(*r);
    }
    case P::kAndIds:
    case P::kOrIds: {
      const bool all = p.identifier_case() == P::kAndIds;
      const auto& ids = all ? p.and_ids().ids() : p.or_ids().ids();
      AddressSet acc = all ? AddressSet::All() : AddressSet::None();
      for (int i = 0; i < ids.size(); i++) {
        auto s = Principal(
            ids[i], where + (all ? ".and_ids" : ".or_ids") + ".ids[" + std::to_string(i) + "]");
        SLUICE_RETURN_IF_ERROR(s);
        acc = all ? acc.Intersect(*s) : acc.Union(*s);
      }
      return acc;
    }
    case P::kNotId: {
      auto s = Principal(p.not_id(), where + ".not_id");
      SLUICE_RETURN_IF_ERROR(s);
      return s->Complement();
    }
    case P::kAuthenticated:
      return Fail(where + ".authenticated");
    case P::kHeader:
      return Fail(where + ".header");
    case P::kUrlPath:
      return Fail(where + ".url_path");
    case P::kMetadata:
      return Fail(where + ".metadata");
    case P::kFilterState:
      return Fail(where + ".filter_state");
    case P::IDENTIFIER_NOT_SET:
      break;
  }
  return Fail(where + ": no identifier");
}

}  // namespace

Result<IpPrefix> IpPrefix::Parse(std::string_view text) {
  const auto slash = text.find('/');
  const std::string addr(text.substr(0, slash));
  IpPrefix p;
  if (inet_pton(AF_INET, addr.c_str(), p.bytes.data()) == 1) {
    p.family = 4;
  } else if (inet_pton(AF_INET6, addr.c_str(), p.bytes.data()) == 1) {
    p.family = 6;
  } else {
    return Fail("\"" + std::string(text) + "\" is not an IP address");
  }
  p.len = p.max_len();
  if (slash != std::string_view::npos) {
    const std::string len(text.substr(slash + 1));
    char* end = nullptr;
    const long n = std::strtol(len.c_str(), &end, 10);
    if (len.empty() || *end != '\0' || n < 0 || n > p.max_len())
      return Fail("\"" + std::string(text) + "\": bad prefix length");
    p.len = static_cast<uint8_t>(n);
  }
  Mask(p);
  return p;
}

std::string IpPrefix::ToString() const {
  char buf[INET6_ADDRSTRLEN] = {};
  inet_ntop(family == 4 ? AF_INET : AF_INET6, bytes.data(), buf, sizeof(buf));
  return std::string(buf) + "/" + std::to_string(len);
}

bool IpPrefix::Contains(const IpPrefix& o) const {
  if (o.family != family || o.len < len)
    return false;
  for (int i = 0; i < len; i++)
    if (Bit(*this, i) != Bit(o, i))
      return false;
  return true;
}

AddressSet AddressSet::All() {
  AddressSet s;
  s.prefixes_ = {IpPrefix{4, {}, 0}, IpPrefix{6, {}, 0}};
  return s;
}

AddressSet AddressSet::Of(const IpPrefix& p) {
  AddressSet s;
  s.prefixes_ = {p};
  return s;
}

AddressSet AddressSet::Normalized(std::vector<IpPrefix> p) {
  std::sort(p.begin(), p.end());
  // Drop prefixes inside another (sorted: a container comes right before its contents).
  std::vector<IpPrefix> kept;
  for (const IpPrefix& x : p) {
    if (!kept.empty() && kept.back().Contains(x))
      continue;
    kept.push_back(x);
  }
  // Join sibling halves into their parent until none are left.
  bool joined = true;
  while (joined) {
    joined = false;
    std::vector<IpPrefix> next;
    for (std::size_t i = 0; i < kept.size(); i++) {
      if (i + 1 < kept.size() && kept[i].len > 0 && kept[i].len == kept[i + 1].len) {
        IpPrefix parent = kept[i];
        parent.len--;
        Mask(parent);
        auto [lo, hi] = Halves(parent);
        if (kept[i] == lo && kept[i + 1] == hi) {
          next.push_back(parent);
          i++;
          joined = true;
          continue;
        }
      }
      next.push_back(kept[i]);
    }
    kept = std::move(next);
  }
  AddressSet s;
  s.prefixes_ = std::move(kept);
  return s;
}

AddressSet AddressSet::Union(const AddressSet& o) const {
  std::vector<IpPrefix> all = prefixes_;
  all.insert(all.end(), o.prefixes_.begin(), o.prefixes_.end());
  return Normalized(std::move(all));
}

AddressSet AddressSet::Intersect(const AddressSet& o) const {
  std::vector<IpPrefix> out;
  for (const IpPrefix& a : prefixes_) {
    for (const IpPrefix& b : o.prefixes_) {
      if (a.Contains(b))
        out.push_back(b);
      else if (b.Contains(a))
        out.push_back(a);
    }
  }
  return Normalized(std::move(out));
}

AddressSet AddressSet::Complement() const {
  std::vector<IpPrefix> out;
  for (uint8_t family : {4, 6})
    ComplementWithin(prefixes_, IpPrefix{family, {}, 0}, out);
  return Normalized(std::move(out));
}

bool AddressSet::Contains(const IpPrefix& address) const {
  return std::any_of(prefixes_.begin(), prefixes_.end(),
                     [&](const IpPrefix& p) { return p.Contains(address); });
}

std::vector<IpPrefix> L4Rule::SourcesFor(const IpPrefix& destination) const {
  AddressSet acc;
  for (const L4Policy& p : policies)
    if (p.destinations.Contains(destination))
      acc = acc.Union(p.sources);
  std::vector<IpPrefix> out;
  for (const IpPrefix& p : acc.prefixes())
    if (p.family == destination.family)
      out.push_back(p);
  return out;
}

Result<std::optional<L4Rule>> ProjectNetworkRbac(
    const envoy::extensions::filters::network::rbac::v3::RBAC& rbac, uint16_t port) {
  // Whatever the engine refuses is refused here too (an invalid CIDR, a bad range, ...).
  SLUICE_RETURN_IF_ERROR(CompileNetworkRbac(rbac, "network rbac"));
  if (rbac.has_shadow_rules())
    return Fail("shadow_rules (evaluated and reported per connection)");
  if (!rbac.has_rules())
    return std::optional<L4Rule>{};  // allows everything
  const auto& rules = rbac.rules();
  L4Rule rule;
  switch (rules.action()) {
    case rbac_v3::RBAC::ALLOW:
      rule.action = L4Rule::Action::kAllow;
      break;
    case rbac_v3::RBAC::DENY:
      rule.action = L4Rule::Action::kDeny;
      break;
    default:
      return Fail("rules.action " + rbac_v3::RBAC::Action_Name(rules.action()) +
                  " (the access log records what matched)");
  }
  std::vector<std::string> names;
  for (const auto& [name, policy] : rules.policies())
    names.push_back(name);
  std::sort(names.begin(), names.end());
  for (const std::string& name : names) {
    const rbac_v3::Policy& policy = rules.policies().at(name);
    const std::string where = "policy " + name + ": ";
    if (policy.has_condition() || policy.has_checked_condition())
      return Fail(where + "condition");
    L4Policy p{name, AddressSet::None(), AddressSet::None()};
    for (int i = 0; i < policy.permissions_size(); i++) {
      auto s = Permission(policy.permissions(i), port, "permissions[" + std::to_string(i) + "]");
      SLUICE_RETURN_IF_ERROR_CTX(s, where.substr(0, where.size() - 2));
      p.destinations = p.destinations.Union(*s);
    }
    for (int i = 0; i < policy.principals_size(); i++) {
      auto s = Principal(policy.principals(i), "principals[" + std::to_string(i) + "]");
      SLUICE_RETURN_IF_ERROR_CTX(s, where.substr(0, where.size() - 2));
      p.sources = p.sources.Union(*s);
    }
    if (p.destinations.prefixes().size() > kMaxPrefixes ||
        p.sources.prefixes().size() > kMaxPrefixes)
      return Fail(where + "more than " + std::to_string(kMaxPrefixes) + " address prefixes");
    // A policy that matches nothing on this port changes nothing: ALLOW without a match
    // and DENY without a match decide alike. Kept out so equal filters compare equal.
    if (p.destinations.empty() || p.sources.empty())
      continue;
    rule.policies.push_back(std::move(p));
  }
  return std::optional<L4Rule>{std::move(rule)};
}

}  // namespace sluice::proxy
