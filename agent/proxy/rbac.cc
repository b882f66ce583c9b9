// Envoy's RBAC engine (rbac.h): the config compiled once into matcher trees, each node
// one Permission or Principal case; evaluation walks the tree over an RbacRequest and
// never touches protobuf. Semantics follow Envoy's source, case by case:
// - the engine (filters/common/rbac/engine_impl.cc): policies in name order (a std::map
//   there), the first that matches is the effective policy; ALLOW allows iff one
//   matched, DENY denies iff one matched, LOG allows and hints the access log;
// - a policy (matchers.cc PolicyMatcher): any permission and any principal;
// - a header (http/header_utility.cc): all values of the header joined by ",", a
//   missing header matches only present_match: false (or present_match: true when
//   inverted) unless treat_missing_header_as_empty, invert_match flips the rest, the
//   deprecated exact_match "" matches any value, range_match parses an int64;
// - url_path: the :path header without its query and fragment;
// - IP ranges: same family (a v4-mapped IPv6 address counts as IPv4, as Envoy converts
//   it on accept), prefix bits equal; ports: the local address's port;
// - authenticated: never with a plaintext peer; else URI SANs, DNS SANs, then subject;
// - metadata: dynamic metadata, which no Sluice filter writes, so the value is absent
//   and the matcher's result is its `invert` (the names it reads are recorded).
// - filter_state: only istio_authn's peer identity keys, which need mTLS: never set.
// What is not implemented (other filter_state keys, uri_template, matcher extensions, CEL
// conditions, audit loggers, string matcher extensions, the xDS matcher tree) is an
// error naming the field: the caller refuses the listener.
// Deprecated fields (HeaderMatcher.exact_match, Principal.source_ip) are what istiod
// sends, so they are read.
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

#include "sluice/proxy/rbac.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <cstring>

#include <re2/re2.h>

#include "envoy/config/rbac/v3/rbac.pb.h"
#include "envoy/extensions/filters/http/rbac/v3/rbac.pb.h"
#include "envoy/extensions/filters/network/rbac/v3/rbac.pb.h"
#include "matchers.h"
#include "sluice/proxy/config.h"

namespace sluice::proxy {

namespace rbac_v3 = envoy::config::rbac::v3;
namespace matcher_v3 = envoy::type::matcher::v3;

namespace {

// An IP prefix (envoy.config.core.v3.CidrRange), its address already masked.
struct Cidr {
  int family = AF_UNSPEC;
  uint8_t bytes[16] = {};
  uint32_t len = 0;

  bool Contains(const sockaddr_storage* ss) const {
    if (!ss)
      return false;
    const uint8_t* a;
    int af = ss->ss_family;
    if (af == AF_INET) {
      a = reinterpret_cast<const uint8_t*>(&reinterpret_cast<const sockaddr_in*>(ss)->sin_addr);
    } else if (af == AF_INET6) {
      a = reinterpret_cast<const sockaddr_in6*>(ss)->sin6_addr.s6_addr;
      // An IPv4 client on a dual-stack socket (::ffff:a.b.c.d) is an IPv4 address to
      // Envoy, which converts such addresses when it accepts.
      static constexpr uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
      if (std::memcmp(a, kMapped, sizeof(kMapped)) == 0) {
        af = AF_INET;
        a += sizeof(kMapped);
      }
    } else {
      return false;
    }
    if (af != family)
      return false;
    uint32_t full = len / 8, rest = len % 8;
    if (std::memcmp(a, bytes, full) != 0)
      return false;
    if (rest == 0)
      return true;
    uint8_t mask = static_cast<uint8_t>(0xff << (8 - rest));
    return (a[full] & mask) == bytes[full];
  }
};

// A route HeaderMatcher as Envoy's HeaderUtility evaluates it.
struct HeaderRule {
  std::string name;  // lower case
  enum class Type { kAnyValueOrExact, kString, kRange, kPresent };
  Type type = Type::kPresent;
  StringMatcher match;  // kString; kAnyValueOrExact uses match.value
  int64_t range_start = 0, range_end = 0;
  bool present = true;
  bool invert = false;
  bool treat_missing_as_empty = false;
};

struct Node {
  enum class Kind {
    kAny,
    kAnd,
    kOr,
    kNot,
    kHeader,
    kUrlPath,
    kDestinationIp,
    kDestinationPort,
    kDestinationPortRange,
    kRequestedServerName,
    kAuthenticated,
    kDirectRemoteIp,
    kRemoteIp,
    kConstant,  // a metadata matcher over absent metadata
  };
  Kind kind = Kind::kAny;
  std::vector<Node> children;  // kAnd, kOr, kNot (one)
  HeaderRule header;
  StringMatcher str;  // url_path, requested_server_name, principal_name
  bool has_str = false;
  Cidr cidr;
  uint32_t port_start = 0, port_end = 0;  // [start, end)
  bool constant = false;
};

struct Policy {
  std::string name;
  Node permissions;  // kOr over the policy's permissions
  Node principals;   // kOr over its principals
};

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z')
      c = static_cast<char>(c + 32);
  }
  return out;
}

// ---------------------------------------------------------------- compiling

struct Compiler {
  std::vector<std::string>* metadata_filters;

  static Result<StringMatcher> String(const matcher_v3::StringMatcher& m,
                                      const std::string& where) {
    return CompileStringMatcher(m, where, ".");
  }

  Result<HeaderRule> Header(const envoy::config::route::v3::HeaderMatcher& h,
                            const std::string& where) {
    using HM = envoy::config::route::v3::HeaderMatcher;
    HeaderRule r;
    r.name = Lower(h.name());
    if (r.name.empty())
      return Fail(where + ".name: empty");
    r.invert = h.invert_match();
    r.treat_missing_as_empty = h.treat_missing_header_as_empty();
    auto plain = [&](StringMatcher::Kind k, const std::string& v) {
      r.type = HeaderRule::Type::kString;
      r.match.kind = k;
      r.match.value = v;
    };
    switch (h.header_match_specifier_case()) {
      case HM::kExactMatch:
        r.type = HeaderRule::Type::kAnyValueOrExact;
        r.match.value = h.exact_match();
        break;
      case HM::kPrefixMatch:
        plain(StringMatcher::Kind::kPrefix, h.prefix_match());
        break;
      case HM::kSuffixMatch:
        plain(StringMatcher::Kind::kSuffix, h.suffix_match());
        break;
      case HM::kContainsMatch:
        plain(StringMatcher::Kind::kContains, h.contains_match());
        break;
      case HM::kSafeRegexMatch: {
        auto re = CompileRegex(h.safe_regex_match().regex(), where + ".safe_regex_match");
        SLUICE_RETURN_IF_ERROR(re);
        r.type = HeaderRule::Type::kString;
        r.match.kind = StringMatcher::Kind::kRegex;
        r.match.regex = std::move(*re);
        break;
      }
      case HM::kRangeMatch:
        r.type = HeaderRule::Type::kRange;
        r.range_start = h.range_match().start();
        r.range_end = h.range_match().end();
        break;
      case HM::kPresentMatch:
        r.type = HeaderRule::Type::kPresent;
        r.present = h.present_match();
        break;
      case HM::kStringMatch: {
        auto sm = String(h.string_match(), where + ".string_match");
        SLUICE_RETURN_IF_ERROR(sm);
        r.type = HeaderRule::Type::kString;
        r.match = std::move(*sm);
        break;
      }
      default:
        // Envoy: no specifier means "present".
        r.type = HeaderRule::Type::kPresent;
        r.present = true;
        break;
    }
    return r;
  }

  static Result<Cidr> Range(const envoy::config::core::v3::CidrRange& c, const std::string& where) {
    Cidr out;
    const std::string& a = c.address_prefix();
    uint32_t max;
    if (inet_pton(AF_INET, a.c_str(), out.bytes) == 1) {
      out.family = AF_INET;
      max = 32;
    } else if (inet_pton(AF_INET6, a.c_str(), out.bytes) == 1) {
      out.family = AF_INET6;
      max = 128;
    } else {
      return Fail(where + ".address_prefix: \"" + a + "\" is not an IP address");
    }
    out.len = c.has_prefix_len() ? c.prefix_len().value() : 0;
    if (out.len > max) {
      return Fail(where + ".prefix_len: " + std::to_string(out.len) + " is longer than the " +
                  (max == 32 ? "IPv4" : "IPv6") + " address");
    }
    // Mask the address, as Envoy truncates it.
    uint32_t full = out.len / 8, rest = out.len % 8;
    std::size_t n = max / 8;
    for (std::size_t i = full; i < n; ++i) {
      if (i == full && rest != 0)
        out.bytes[i] &= static_cast<uint8_t>(0xff << (8 - rest));
      else
        out.bytes[i] = 0;
    }
    return out;
  }

  // Validates a ValueMatcher (regexes compile, nothing unsupported) though, over absent
  // metadata, every kind of it is false.
  Result<void> Value(const matcher_v3::ValueMatcher& v, const std::string& where) {
    using VM = matcher_v3::ValueMatcher;
    switch (v.match_pattern_case()) {
      case VM::kNullMatch:
      case VM::kDoubleMatch:
      case VM::kBoolMatch:
      case VM::kPresentMatch:
        return {};
      case VM::kStringMatch: {
        auto sm = String(v.string_match(), where + ".string_match");
        SLUICE_RETURN_IF_ERROR(sm);
        return {};
      }
      case VM::kListMatch:
        if (!v.list_match().has_one_of())
          return Fail(where + ".list_match: no one_of");
        return Value(v.list_match().one_of(), where + ".list_match.one_of");
      case VM::kOrMatch:
        for (int i = 0; i < v.or_match().value_matchers_size(); ++i) {
          SLUICE_RETURN_IF_ERROR(
              Value(v.or_match().value_matchers(i),
                    where + ".or_match.value_matchers[" + std::to_string(i) + "]"));
        }
        return {};
      default:
        return Fail(where + ": no match pattern");
    }
  }

  Result<Node> Metadata(const matcher_v3::MetadataMatcher& m, const std::string& where) {
    if (m.filter().empty())
      return Fail(where + ".filter: empty");
    if (!m.has_value())
      return Fail(where + ".value: missing");
    for (int i = 0; i < m.path_size(); ++i) {
      if (m.path(i).key().empty())
        return Fail(where + ".path[" + std::to_string(i) + "]: no key");
    }
    SLUICE_RETURN_IF_ERROR(Value(m.value(), where + ".value"));
    if (std::find(metadata_filters->begin(), metadata_filters->end(), m.filter()) ==
        metadata_filters->end()) {
      metadata_filters->push_back(m.filter());
    }
    Node n;
    n.kind = Node::Kind::kConstant;
    n.constant = m.invert();
    return n;
  }

  // filter_state: istiod (1.20+) matches peer identity on the keys istio_authn sets from a
  // verified mTLS peer certificate (io.istio.peer_principal, io.istio.peer_namespace).
  // Sluice has no mTLS, so no filter ever sets them: absent filter state never matches
  // (Envoy's FilterStateMatcher), like `authenticated` with a plaintext peer. Any other
  // key could be set by a filter Sluice skips (set_filter_state), so it is refused.
  Result<Node> PeerIdentity(const matcher_v3::FilterStateMatcher& m, const std::string& where) {
    if (m.key() != "io.istio.peer_principal" && m.key() != "io.istio.peer_namespace")
      return Fail(where + ": not supported (" + m.key() + ")");
    if (m.matcher_case() != matcher_v3::FilterStateMatcher::kStringMatch)
      return Fail(where + ": only string_match is supported (" + m.key() + ")");
    auto sm = String(m.string_match(), where + ".string_match");
    SLUICE_RETURN_IF_ERROR(sm);
    Node n;
    n.kind = Node::Kind::kConstant;
    n.constant = false;
    return n;
  }

  Result<Node> Path(const matcher_v3::PathMatcher& p, const std::string& where) {
    if (p.rule_case() != matcher_v3::PathMatcher::kPath)
      return Fail(where + ": no path rule");
    auto sm = String(p.path(), where + ".path");
    SLUICE_RETURN_IF_ERROR(sm);
    Node n;
    n.kind = Node::Kind::kUrlPath;
    n.str = std::move(*sm);
    n.has_str = true;
    return n;
  }

  Result<Node> Permission(const rbac_v3::Permission& p, const std::string& where) {
    using P = rbac_v3::Permission;
    Node n;
    switch (p.rule_case()) {
      case P::kAny:
        n.kind = Node::Kind::kAny;
        return n;
      case P::kAndRules:
      case P::kOrRules: {
        bool is_and = p.rule_case() == P::kAndRules;
        const P::Set& set = is_and ? p.and_rules() : p.or_rules();
        std::string w = where + (is_and ? ".and_rules" : ".or_rules");
        n.kind = is_and ? Node::Kind::kAnd : Node::Kind::kOr;
        for (int i = 0; i < set.rules_size(); ++i) {
          auto c = Permission(set.rules(i), w + ".rules[" + std::to_string(i) + "]");
          SLUICE_RETURN_IF_ERROR(c);
          n.children.push_back(std::move(*c));
        }
        return n;
      }
      case P::kNotRule: {
        auto c = Permission(p.not_rule(), where + ".not_rule");
        SLUICE_RETURN_IF_ERROR(c);
        n.kind = Node::Kind::kNot;
        n.children.push_back(std::move(*c));
        return n;
      }
      case P::kHeader: {
        auto h = Header(p.header(), where + ".header");
        SLUICE_RETURN_IF_ERROR(h);
        n.kind = Node::Kind::kHeader;
        n.header = std::move(*h);
        return n;
      }
      case P::kUrlPath:
        return Path(p.url_path(), where + ".url_path");
      case P::kDestinationIp: {
        auto c = Range(p.destination_ip(), where + ".destination_ip");
        SLUICE_RETURN_IF_ERROR(c);
        n.kind = Node::Kind::kDestinationIp;
        n.cidr = *c;
        return n;
      }
      case P::kDestinationPort:
        if (p.destination_port() > 65535) {
          return Fail(where + ".destination_port: " + std::to_string(p.destination_port()) +
                      " is not a port");
        }
        n.kind = Node::Kind::kDestinationPort;
        n.port_start = p.destination_port();
        n.port_end = p.destination_port() + 1;
        return n;
      case P::kDestinationPortRange: {
        int32_t s = p.destination_port_range().start(), e = p.destination_port_range().end();
        std::string w = where + ".destination_port_range";
        if (s < 0 || s > 65536 || e < 0 || e > 65536)
          return Fail(w + ": [" + std::to_string(s) + ", " + std::to_string(e) + ") out of bounds");
        if (s >= e)
          return Fail(w + ": start " + std::to_string(s) + " is not below end " +
                      std::to_string(e));
        n.kind = Node::Kind::kDestinationPortRange;
        n.port_start = static_cast<uint32_t>(s);
        n.port_end = static_cast<uint32_t>(e);
        return n;
      }
      case P::kRequestedServerName: {
        auto sm = String(p.requested_server_name(), where + ".requested_server_name");
        SLUICE_RETURN_IF_ERROR(sm);
        n.kind = Node::Kind::kRequestedServerName;
        n.str = std::move(*sm);
        n.has_str = true;
        return n;
      }
      case P::kMetadata:
        return Metadata(p.metadata(), where + ".metadata");
      case P::kMatcher:
        return Fail(where + ".matcher: matcher extensions are not supported (" +
                    p.matcher().name() + ")");
      case P::kUriTemplate:
        return Fail(where + ".uri_template: not supported");
      default:
        return Fail(where + ": no rule set (or one this Envoy API version does not know)");
    }
  }

  Result<Node> Principal(const rbac_v3::Principal& p, const std::string& where) {
    using P = rbac_v3::Principal;
    Node n;
    switch (p.identifier_case()) {
      case P::kAny:
        n.kind = Node::Kind::kAny;
        return n;
      case P::kAndIds:
      case P::kOrIds: {
        bool is_and = p.identifier_case() == P::kAndIds;
        const P::Set& set = is_and ? p.and_ids() : p.or_ids();
        std::string w = where + (is_and ? ".and_ids" : ".or_ids");
        n.kind = is_and ? Node::Kind::kAnd : Node::Kind::kOr;
        for (int i = 0; i < set.ids_size(); ++i) {
          auto c = Principal(set.ids(i), w + ".ids[" + std::to_string(i) + "]");
          SLUICE_RETURN_IF_ERROR(c);
          n.children.push_back(std::move(*c));
        }
        return n;
      }
      case P::kNotId: {
        auto c = Principal(p.not_id(), where + ".not_id");
        SLUICE_RETURN_IF_ERROR(c);
        n.kind = Node::Kind::kNot;
        n.children.push_back(std::move(*c));
        return n;
      }
      case P::kAuthenticated:
        n.kind = Node::Kind::kAuthenticated;
        if (p.authenticated().has_principal_name()) {
          auto sm =
              String(p.authenticated().principal_name(), where + ".authenticated.principal_name");
          SLUICE_RETURN_IF_ERROR(sm);
          n.str = std::move(*sm);
          n.has_str = true;
        }
        return n;
      case P::kSourceIp:
      case P::kDirectRemoteIp:
      case P::kRemoteIp: {
        bool remote = p.identifier_case() == P::kRemoteIp;
        const auto& range = p.identifier_case() == P::kSourceIp         ? p.source_ip()
                            : p.identifier_case() == P::kDirectRemoteIp ? p.direct_remote_ip()
                                                                        : p.remote_ip();
        const char* field = p.identifier_case() == P::kSourceIp         ? ".source_ip"
                            : p.identifier_case() == P::kDirectRemoteIp ? ".direct_remote_ip"
                                                                        : ".remote_ip";
        auto c = Range(range, where + field);
        SLUICE_RETURN_IF_ERROR(c);
        // source_ip is the connection's peer: for Sluice, the direct remote address.
        n.kind = remote ? Node::Kind::kRemoteIp : Node::Kind::kDirectRemoteIp;
        n.cidr = *c;
        return n;
      }
      case P::kHeader: {
        auto h = Header(p.header(), where + ".header");
        SLUICE_RETURN_IF_ERROR(h);
        n.kind = Node::Kind::kHeader;
        n.header = std::move(*h);
        return n;
      }
      case P::kUrlPath:
        return Path(p.url_path(), where + ".url_path");
      case P::kMetadata:
        return Metadata(p.metadata(), where + ".metadata");
      case P::kFilterState:
        return PeerIdentity(p.filter_state(), where + ".filter_state");
      default:
        return Fail(where + ": no identifier set (or one this Envoy API version does not know)");
    }
  }
};

// ---------------------------------------------------------------- evaluating

uint16_t PortOf(const sockaddr_storage* ss, bool* ok) {
  *ok = true;
  if (ss && ss->ss_family == AF_INET)
    return ntohs(reinterpret_cast<const sockaddr_in*>(ss)->sin_port);
  if (ss && ss->ss_family == AF_INET6)
    return ntohs(reinterpret_cast<const sockaddr_in6*>(ss)->sin6_port);
  *ok = false;
  return 0;
}

// absl::SimpleAtoi for int64: optional surrounding whitespace and sign, decimal digits,
// no overflow.
bool ParseInt64(std::string_view s, int64_t* out) {
  auto space = [](char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
  };
  while (!s.empty() && space(s.front()))
    s.remove_prefix(1);
  while (!s.empty() && space(s.back()))
    s.remove_suffix(1);
  bool neg = false;
  if (!s.empty() && (s.front() == '+' || s.front() == '-')) {
    neg = s.front() == '-';
    s.remove_prefix(1);
  }
  if (s.empty())
    return false;
  uint64_t v = 0;
  const uint64_t limit = neg ? uint64_t{1} << 63 : (uint64_t{1} << 63) - 1;
  for (char c : s) {
    if (c < '0' || c > '9')
      return false;
    uint64_t d = static_cast<uint64_t>(c - '0');
    if (v > (limit - d) / 10)
      return false;
    v = v * 10 + d;
  }
  *out = neg ? static_cast<int64_t>(0 - v) : static_cast<int64_t>(v);
  return true;
}

// The header's value as Envoy's header map gives it: the pseudo-headers from the head,
// every other header's values joined by "," (in `backing` when there are several).
// nullopt: absent (always, for a connection without HTTP).
std::optional<std::string_view> HeaderValue(const RbacRequest& r, std::string_view name,
                                            std::string& backing) {
  if (!r.http)
    return std::nullopt;
  const http::RequestHead& h = *r.http;
  // Envoy's header map holds Host as :authority, and "host" finds it too.
  if (name == ":authority" || name == "host") {
    if (h.host.empty())
      return std::nullopt;
    return h.host;
  }
  if (name == ":method")
    return h.method;
  if (name == ":path")
    return h.target;
  if (name == ":scheme")
    return r.scheme;
  std::optional<std::string_view> first;
  bool joined = false;
  auto add = [&](std::string_view v) {
    if (!first) {
      first = v;
    } else {
      if (!joined) {
        backing.assign(*first);
        joined = true;
      }
      backing += ',';
      backing += v;
    }
  };
  for (std::size_t i = 0; i < h.num_headers; ++i) {
    if (http::EqualsIgnoreCase(h.headers[i].name, name))
      add(h.headers[i].value);
  }
  for (const http::Header& x : r.added_headers) {
    if (http::EqualsIgnoreCase(x.name, name))
      add(x.value);
  }
  if (joined)
    return std::string_view(backing);
  return first;
}

bool HeaderMatches(const HeaderRule& hr, const RbacRequest& r) {
  std::string backing;
  std::optional<std::string_view> v = HeaderValue(r, hr.name, backing);
  if (!v && !hr.treat_missing_as_empty) {
    if (hr.type != HeaderRule::Type::kPresent)
      return false;
    return hr.invert ? hr.present : !hr.present;
  }
  std::string_view value = v ? *v : std::string_view();
  bool match = false;
  switch (hr.type) {
    case HeaderRule::Type::kAnyValueOrExact:
      match = hr.match.value.empty() || value == hr.match.value;
      break;
    case HeaderRule::Type::kString:
      match = hr.match.Matches(value);
      break;
    case HeaderRule::Type::kRange: {
      int64_t n = 0;
      match = ParseInt64(value, &n) && n >= hr.range_start && n < hr.range_end;
      break;
    }
    case HeaderRule::Type::kPresent:
      match = hr.present;
      break;
  }
  return match != hr.invert;
}

bool Matches(const Node& n, const RbacRequest& r) {
  switch (n.kind) {
    case Node::Kind::kAny:
      return true;
    case Node::Kind::kAnd:
      for (const Node& c : n.children) {
        if (!Matches(c, r))
          return false;
      }
      return true;
    case Node::Kind::kOr:
      for (const Node& c : n.children) {
        if (Matches(c, r))
          return true;
      }
      return false;
    case Node::Kind::kNot:
      return !Matches(n.children.front(), r);
    case Node::Kind::kHeader:
      return HeaderMatches(n.header, r);
    case Node::Kind::kUrlPath: {
      if (!r.http)
        return false;
      std::string_view p = r.http->target;
      p = p.substr(0, p.find_first_of("?#"));
      return n.str.Matches(p);
    }
    case Node::Kind::kDestinationIp:
      return n.cidr.Contains(r.local);
    case Node::Kind::kDestinationPort:
    case Node::Kind::kDestinationPortRange: {
      bool ok;
      uint16_t port = PortOf(r.local, &ok);
      return ok && port >= n.port_start && port < n.port_end;
    }
    case Node::Kind::kRequestedServerName:
      return n.str.Matches(r.requested_server_name);
    case Node::Kind::kAuthenticated: {
      if (!r.peer)
        return false;  // a plaintext peer is never authenticated
      if (!n.has_str)
        return true;
      for (const std::string& s : r.peer->uri_sans) {
        if (n.str.Matches(s))
          return true;
      }
      for (const std::string& s : r.peer->dns_sans) {
        if (n.str.Matches(s))
          return true;
      }
      return n.str.Matches(r.peer->subject);
    }
    case Node::Kind::kDirectRemoteIp:
      return n.cidr.Contains(r.direct_remote);
    case Node::Kind::kRemoteIp:
      return n.cidr.Contains(r.remote ? r.remote : r.direct_remote);
    case Node::Kind::kConstant:
      return n.constant;
  }
  return false;
}

std::string JoinWhere(std::string_view where, std::string_view field) {
  std::string out(where);
  if (!out.empty())
    out += ": ";
  out += field;
  return out;
}

}  // namespace

struct RbacEngine::Compiled {
  std::vector<Policy> policies;  // by name
  std::vector<std::string> metadata_filters;
};

std::size_t RbacEngine::policy_count() const {
  return compiled_->policies.size();
}

const std::vector<std::string>& RbacEngine::metadata_filters() const {
  return compiled_->metadata_filters;
}

RbacDecision RbacEngine::Evaluate(const RbacRequest& r) const {
  RbacDecision d;
  const Policy* hit = nullptr;
  for (const Policy& p : compiled_->policies) {
    if (Matches(p.permissions, r) && Matches(p.principals, r)) {
      hit = &p;
      break;
    }
  }
  // (A policy may be named "" in a proto map: the match counts, the name stays empty.)
  bool matched = hit != nullptr;
  if (hit)
    d.matched_policy = hit->name;
  switch (action_) {
    case Action::kAllow:
      d.allowed = matched;
      break;
    case Action::kDeny:
      d.allowed = !matched;
      break;
    case Action::kLog:
      d.allowed = true;
      d.log = matched;
      break;
  }
  return d;
}

Result<RbacEngine> CompileRbac(const rbac_v3::RBAC& rbac, std::string_view where_view) {
  std::string where(where_view);
  RbacEngine e;
  switch (rbac.action()) {
    case rbac_v3::RBAC::ALLOW:
      e.action_ = RbacEngine::Action::kAllow;
      break;
    case rbac_v3::RBAC::DENY:
      e.action_ = RbacEngine::Action::kDeny;
      break;
    case rbac_v3::RBAC::LOG:
      e.action_ = RbacEngine::Action::kLog;
      break;
    default:
      return Fail(where + ".action: unknown action " + std::to_string(rbac.action()));
  }
  if (rbac.has_audit_logging_options() && rbac.audit_logging_options().logger_configs_size() > 0)
    return Fail(where + ".audit_logging_options.logger_configs: audit loggers are not supported");
  auto compiled = std::make_shared<RbacEngine::Compiled>();
  Compiler c{&compiled->metadata_filters};
  for (const auto& [name, policy] : rbac.policies()) {
    std::string pw = where + ".policies[" + name + "]";
    if (policy.has_condition())
      return Fail(pw + ".condition: CEL conditions are not supported");
    if (policy.has_checked_condition())
      return Fail(pw + ".checked_condition: CEL conditions are not supported");
    if (policy.permissions_size() == 0)
      return Fail(pw + ".permissions: empty (Envoy requires at least one)");
    if (policy.principals_size() == 0)
      return Fail(pw + ".principals: empty (Envoy requires at least one)");
    Policy p;
    p.name = name;
    p.permissions.kind = Node::Kind::kOr;
    p.principals.kind = Node::Kind::kOr;
    for (int i = 0; i < policy.permissions_size(); ++i) {
      auto n = c.Permission(policy.permissions(i), pw + ".permissions[" + std::to_string(i) + "]");
      SLUICE_RETURN_IF_ERROR(n);
      p.permissions.children.push_back(std::move(*n));
    }
    for (int i = 0; i < policy.principals_size(); ++i) {
      auto n = c.Principal(policy.principals(i), pw + ".principals[" + std::to_string(i) + "]");
      SLUICE_RETURN_IF_ERROR(n);
      p.principals.children.push_back(std::move(*n));
    }
    compiled->policies.push_back(std::move(p));
  }
  std::sort(compiled->policies.begin(), compiled->policies.end(),
            [](const Policy& a, const Policy& b) { return a.name < b.name; });
  e.compiled_ = std::move(compiled);
  return e;
}

std::string RbacFilterResult::DeniedDetails() const {
  std::string name(enforced.matched_policy.empty() ? std::string_view("none")
                                                   : enforced.matched_policy);
  for (char& ch : name) {
    if (ch == ' ' || ch == '\t' || ch == '\f' || ch == '\v' || ch == '\n' || ch == '\r')
      ch = '_';
  }
  return "rbac_access_denied_matched_policy[" + name + "]";
}

RbacFilterResult RbacFilter::Evaluate(const RbacRequest& r) const {
  RbacFilterResult out;
  if (shadow_rules) {
    out.has_shadow = true;
    out.shadow = shadow_rules->Evaluate(r);
    out.shadow.log = false;  // Envoy sets the log hint in enforced mode only
  }
  if (rules) {
    out.has_enforced = true;
    out.enforced = rules->Evaluate(r);
  }
  return out;
}

Result<RbacFilter> CompileHttpRbac(const envoy::extensions::filters::http::rbac::v3::RBAC& rbac,
                                   std::string_view where) {
  if (rbac.has_matcher())
    return Fail(JoinWhere(where, "matcher: the xDS matcher variant of RBAC is not supported"));
  if (rbac.has_shadow_matcher()) {
    return Fail(
        JoinWhere(where, "shadow_matcher: the xDS matcher variant of RBAC is not supported"));
  }
  RbacFilter f;
  f.rules_stat_prefix = rbac.rules_stat_prefix();
  f.shadow_rules_stat_prefix = rbac.shadow_rules_stat_prefix();
  if (rbac.has_rules()) {
    auto e = CompileRbac(rbac.rules(), JoinWhere(where, "rules"));
    SLUICE_RETURN_IF_ERROR(e);
    f.rules = std::move(*e);
  }
  if (rbac.has_shadow_rules()) {
    auto e = CompileRbac(rbac.shadow_rules(), JoinWhere(where, "shadow_rules"));
    SLUICE_RETURN_IF_ERROR(e);
    f.shadow_rules = std::move(*e);
  }
  return f;
}

Result<RbacFilter> CompileNetworkRbac(
    const envoy::extensions::filters::network::rbac::v3::RBAC& rbac, std::string_view where) {
  using NetRbac = envoy::extensions::filters::network::rbac::v3::RBAC;
  if (rbac.has_matcher())
    return Fail(JoinWhere(where, "matcher: the xDS matcher variant of RBAC is not supported"));
  if (rbac.has_shadow_matcher()) {
    return Fail(
        JoinWhere(where, "shadow_matcher: the xDS matcher variant of RBAC is not supported"));
  }
  if (rbac.stat_prefix().empty())
    return Fail(JoinWhere(where, "stat_prefix: empty (Envoy requires one)"));
  RbacFilter f;
  f.stat_prefix = rbac.stat_prefix();
  f.shadow_rules_stat_prefix = rbac.shadow_rules_stat_prefix();
  switch (rbac.enforcement_type()) {
    case NetRbac::ONE_TIME_ON_FIRST_BYTE:
      f.enforcement = RbacFilter::Enforcement::kOneTimeOnFirstByte;
      break;
    case NetRbac::CONTINUOUS:
      f.enforcement = RbacFilter::Enforcement::kContinuous;
      break;
    default:
      return Fail(JoinWhere(
          where, "enforcement_type: unknown value " + std::to_string(rbac.enforcement_type())));
  }
  if (rbac.has_rules()) {
    auto e = CompileRbac(rbac.rules(), JoinWhere(where, "rules"));
    SLUICE_RETURN_IF_ERROR(e);
    f.rules = std::move(*e);
  }
  if (rbac.has_shadow_rules()) {
    auto e = CompileRbac(rbac.shadow_rules(), JoinWhere(where, "shadow_rules"));
    SLUICE_RETURN_IF_ERROR(e);
    f.shadow_rules = std::move(*e);
  }
  return f;
}

}  // namespace sluice::proxy
