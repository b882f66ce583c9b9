// AuthorizationPolicy -> the Envoy rbac filters istiod puts on a sidecar's inbound side.
//
// Selection is istiod's (pilot/pkg/model/authorization.go, policyattachment.go): the
// policies of the root namespace and of the proxy's namespace whose selector is absent or
// a subset of the proxy's labels. The filters are istiod's builder
// (pilot/pkg/security/authz/builder/builder.go) for a sidecar (peer identity read from the
// TLS certificate, `authenticated`, not filter_state): one filter per action, AUDIT then
// DENY then ALLOW, each with the enforced policies in `rules` and the dry-run ones in
// `shadow_rules`; one policy per rule named "ns[NS]-policy[NAME]-rule[I]", built as
// istiod's authz model (pilot/pkg/security/authz/model) builds it: permissions from
// `to` and the destination/SNI/metadata conditions of `when`, principals from `from` and
// the other conditions, each an and of ors. On a TCP chain the HTTP-only fields cannot
// be evaluated: an ALLOW rule using one is dropped (less is allowed), in DENY and AUDIT
// only that field is (more is denied), as istiod's checkError decides.
//
// A policy the loader refused (AuthorizationPolicy::rejected) still selects workloads, so
// that its intent fails closed: an ALLOW becomes a policy that allows nothing, anything
// else a DENY (AUDIT: LOG) of every request.
#include <arpa/inet.h>

#include <algorithm>
#include <optional>

#include "envoy/config/rbac/v3/rbac.pb.h"
#include "envoy/extensions/filters/http/rbac/v3/rbac.pb.h"
#include "envoy/extensions/filters/network/rbac/v3/rbac.pb.h"
#include "translator/builder.h"

namespace sluice::istio::detail {
namespace {

namespace rbac_v3 = envoy::config::rbac::v3;
namespace matcher_v3 = envoy::type::matcher::v3;

constexpr char kJwtFilter[] = "envoy.filters.http.jwt_authn";  // istiod's EnvoyJwtFilterName
constexpr char kJwtPayload[] = "payload";
constexpr char kSpiffePrefix[] = "spiffe://";
constexpr char kDefaultTrustDomain[] = "cluster.local";

using Permission = rbac_v3::Permission;
using Principal = rbac_v3::Principal;
using StringMatcher = matcher_v3::StringMatcher;
using ValueMatcher = matcher_v3::ValueMatcher;

// ------------------------------------------------------------ matchers (authz/matcher)

// Go's regexp.QuoteMeta.
std::string QuoteMeta(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (std::string_view("\\.+*?()|[]{}^$").find(c) != std::string_view::npos)
      out += '\\';
    out += c;
  }
  return out;
}

StringMatcher Regex(const std::string& re) {
  StringMatcher m;
  m.mutable_safe_regex()->set_regex(re);
  return m;
}
StringMatcher Exact(const std::string& v, bool ignore_case = false) {
  StringMatcher m;
  m.set_exact(v);
  m.set_ignore_case(ignore_case);
  return m;
}
StringMatcher Prefix(const std::string& v, bool ignore_case = false) {
  StringMatcher m;
  m.set_prefix(v);
  m.set_ignore_case(ignore_case);
  return m;
}
StringMatcher Suffix(const std::string& v, bool ignore_case = false) {
  StringMatcher m;
  m.set_suffix(v);
  m.set_ignore_case(ignore_case);
  return m;
}

// istiod's StringMatcherWithPrefix: "*" is ".+", "*x" a suffix (a regex under a prefix),
// "x*" a prefix, anything else exact.
StringMatcher WithPrefix(const std::string& v, const std::string& prefix) {
  if (v == "*")
    return Regex(".+");
  if (v.starts_with("*")) {
    if (prefix.empty())
      return Suffix(v.substr(1));
    return Regex(prefix + ".*" + QuoteMeta(v.substr(1)));
  }
  if (v.ends_with("*"))
    return Prefix(prefix + v.substr(0, v.size() - 1));
  return Exact(prefix + v);
}
StringMatcher Plain(const std::string& v) {
  return WithPrefix(v, "");
}

// istiod's HeaderMatcher (and HostMatcher with ignore_case): "*" is presence.
route_v3::HeaderMatcher Header(const std::string& name, const std::string& v, bool ignore_case) {
  route_v3::HeaderMatcher h;
  h.set_name(name);
  if (v == "*") {
    h.set_present_match(true);
  } else if (v.starts_with("*")) {
    *h.mutable_string_match() = Suffix(v.substr(1), ignore_case);
  } else if (v.ends_with("*")) {
    *h.mutable_string_match() = Prefix(v.substr(0, v.size() - 1), ignore_case);
  } else {
    *h.mutable_string_match() = Exact(v, ignore_case);
  }
  return h;
}

// util.AddrStrToCidrRange: the address as netip prints it, /32 or /128 without a length.
core_v3::CidrRange Cidr(const std::string& text) {
  core_v3::CidrRange r;
  auto slash = text.find('/');
  std::string ip = text.substr(0, slash);
  unsigned char buf[16];
  char printed[INET6_ADDRSTRLEN] = {};
  const bool v6 = ::inet_pton(AF_INET6, ip.c_str(), buf) == 1;
  if (v6 || ::inet_pton(AF_INET, ip.c_str(), buf) == 1)
    ::inet_ntop(v6 ? AF_INET6 : AF_INET, buf, printed, sizeof(printed));
  r.set_address_prefix(printed[0] ? printed : ip);
  r.mutable_prefix_len()->set_value(
      slash == std::string::npos ? (v6 ? 128 : 32) : std::stoul(text.substr(slash + 1)));
  return r;
}

ValueMatcher StringValue(const StringMatcher& m) {
  ValueMatcher v;
  *v.mutable_string_match() = m;
  return v;
}
ValueMatcher OrValues(std::vector<ValueMatcher> ms) {
  if (ms.size() == 1)
    return ms[0];
  ValueMatcher v;
  for (auto& m : ms)
    *v.mutable_or_match()->add_value_matchers() = std::move(m);
  return v;
}

matcher_v3::MetadataMatcher Metadata(const std::string& filter,
                                     const std::vector<std::string>& path, const ValueMatcher& v) {
  matcher_v3::MetadataMatcher m;
  m.set_filter(filter);
  for (const auto& k : path)
    m.add_path()->set_key(k);
  *m.mutable_value() = v;
  return m;
}

// istiod's MetadataListValueMatcher with useExtendedJwt: the claim is a list holding a
// match, or a value that matches.
matcher_v3::MetadataMatcher JwtClaimMatcher(const std::vector<std::string>& claims,
                                            const ValueMatcher& value) {
  std::vector<std::string> path = {kJwtPayload};
  path.insert(path.end(), claims.begin(), claims.end());
  ValueMatcher list;
  *list.mutable_list_match()->mutable_one_of() = value;
  ValueMatcher either;
  *either.mutable_or_match()->add_value_matchers() = list;
  *either.mutable_or_match()->add_value_matchers() = value;
  return Metadata(kJwtFilter, path, either);
}

ValueMatcher StringOr(const std::vector<std::string>& values) {
  std::vector<ValueMatcher> ms;
  for (const auto& v : values)
    ms.push_back(StringValue(Plain(v)));
  return OrValues(std::move(ms));
}

// ------------------------------------------------------------ proto shorthands

Permission PermAny() {
  Permission p;
  p.set_any(true);
  return p;
}
Permission PermAnd(std::vector<Permission> ps) {
  Permission p;
  for (auto& x : ps)
    *p.mutable_and_rules()->add_rules() = std::move(x);
  return p;
}
Permission PermOr(std::vector<Permission> ps) {
  Permission p;
  for (auto& x : ps)
    *p.mutable_or_rules()->add_rules() = std::move(x);
  return p;
}
Permission PermNot(Permission x) {
  Permission p;
  *p.mutable_not_rule() = std::move(x);
  return p;
}
Principal PrinAny() {
  Principal p;
  p.set_any(true);
  return p;
}
Principal PrinAnd(std::vector<Principal> ps) {
  Principal p;
  for (auto& x : ps)
    *p.mutable_and_ids()->add_ids() = std::move(x);
  return p;
}
Principal PrinOr(std::vector<Principal> ps) {
  Principal p;
  for (auto& x : ps)
    *p.mutable_or_ids()->add_ids() = std::move(x);
  return p;
}
Principal PrinNot(Principal x) {
  Principal p;
  *p.mutable_not_id() = std::move(x);
  return p;
}
Principal Authenticated(const StringMatcher& name) {
  Principal p;
  *p.mutable_authenticated()->mutable_principal_name() = name;
  return p;
}
Principal PrinMetadata(const matcher_v3::MetadataMatcher& m) {
  Principal p;
  *p.mutable_metadata() = m;
  return p;
}

// ------------------------------------------------------------ the authz model

// One attribute of a rule: its values (or'ed) and notValues (not of the or). `http_only`
// attributes cannot be evaluated on a TCP chain.
enum class Attr {
  kDestIp,
  kDestPort,
  kSni,
  kEnvoyFilter,  // experimental.envoy.filters.*: one metadata matcher for all values
  kSrcIp,
  kRemoteIp,
  kSrcNamespace,
  kSrcTrustDomain,
  kSrcServiceAccount,
  kSrcPrincipal,
  kRequestPrincipal,  // request.auth.*: one matcher for all values (istiod's "extended")
  kRequestAudiences,
  kRequestPresenter,
  kRequestClaims,
  kRequestHeader,
  kHost,
  kPath,
  kMethod,
};

struct Term {
  Attr attr;
  std::string key;
  std::vector<std::string> values, not_values;
};

bool IsExtended(Attr a) {
  return a == Attr::kEnvoyFilter || a == Attr::kRequestPrincipal || a == Attr::kRequestAudiences ||
         a == Attr::kRequestPresenter || a == Attr::kRequestClaims;
}

bool HttpOnly(Attr a) {
  return a == Attr::kRequestPrincipal || a == Attr::kRequestAudiences ||
         a == Attr::kRequestPresenter || a == Attr::kRequestClaims || a == Attr::kRequestHeader ||
         a == Attr::kHost || a == Attr::kPath || a == Attr::kMethod;
}

struct Model {
  std::vector<std::vector<Term>> permissions;  // one and-list per `to` (or one)
  std::vector<std::vector<Term>> principals;   // one and-list per `from` (or one)
};

void Push(std::vector<Term>& list, bool front, Attr a, const std::string& key,
          const std::vector<std::string>& values, const std::vector<std::string>& not_values) {
  if (values.empty() && not_values.empty())
    return;
  Term t{a, key, values, not_values};
  if (front)
    list.insert(list.begin(), std::move(t));
  else
    list.push_back(std::move(t));
}

// The claim names of "request.auth.claims[a][b]" (istiod's extractNameInNestedBrackets).
std::vector<std::string> ClaimPath(std::string_view s) {
  std::vector<std::string> out;
  std::size_t begin = 0;
  while (begin < s.size()) {
    if (s[begin] != '[')
      break;
    auto end = s.find(']', begin + 1);
    auto inner_open = s.find('[', begin + 1);
    if (end == std::string_view::npos || (inner_open != std::string_view::npos && inner_open < end))
      break;
    out.emplace_back(s.substr(begin + 1, end - begin - 1));
    begin = end + 1;
  }
  if (begin >= s.size() && !out.empty())
    return out;
  return {std::string(s.substr(1, s.size() - 2))};  // "[a[b]": everything inside, as istiod
}

Model BuildModel(const AuthzRule& r) {
  std::vector<Term> base_perm, base_prin;
  for (const auto& w : r.when) {
    const std::string& k = w.key;
    auto perm = [&](Attr a) { Push(base_perm, false, a, k, w.values, w.not_values); };
    auto prin = [&](Attr a) { Push(base_prin, false, a, k, w.values, w.not_values); };
    if (k == "destination.ip")
      perm(Attr::kDestIp);
    else if (k == "destination.port")
      perm(Attr::kDestPort);
    else if (k == "connection.sni")
      perm(Attr::kSni);
    else if (k.starts_with("experimental.envoy.filters."))
      perm(Attr::kEnvoyFilter);
    else if (k == "source.ip")
      prin(Attr::kSrcIp);
    else if (k == "remote.ip")
      prin(Attr::kRemoteIp);
    else if (k == "source.namespace")
      prin(Attr::kSrcNamespace);
    else if (k == "source.trustDomain")
      prin(Attr::kSrcTrustDomain);
    else if (k == "source.serviceAccount")
      prin(Attr::kSrcServiceAccount);
    else if (k == "source.principal")
      prin(Attr::kSrcPrincipal);
    else if (k == "request.auth.principal")
      prin(Attr::kRequestPrincipal);
    else if (k == "request.auth.audiences")
      prin(Attr::kRequestAudiences);
    else if (k == "request.auth.presenter")
      prin(Attr::kRequestPresenter);
    else if (k.starts_with("request.headers"))
      prin(Attr::kRequestHeader);
    else if (k.starts_with("request.auth.claims"))
      prin(Attr::kRequestClaims);
  }
  Model m;
  for (const auto& s : r.from) {
    auto list = base_prin;
    Push(list, true, Attr::kSrcIp, "source.ip", s.ip_blocks, s.not_ip_blocks);
    Push(list, true, Attr::kRemoteIp, "remote.ip", s.remote_ip_blocks, s.not_remote_ip_blocks);
    Push(list, true, Attr::kSrcNamespace, "source.namespace", s.namespaces, s.not_namespaces);
    Push(list, true, Attr::kSrcTrustDomain, "source.trustDomain", s.trust_domains,
         s.not_trust_domains);
    Push(list, true, Attr::kSrcServiceAccount, "source.serviceAccount", s.service_accounts,
         s.not_service_accounts);
    Push(list, true, Attr::kRequestPrincipal, "request.auth.principal", s.request_principals,
         s.not_request_principals);
    Push(list, true, Attr::kSrcPrincipal, "source.principal", s.principals, s.not_principals);
    m.principals.push_back(std::move(list));
  }
  if (r.from.empty())
    m.principals.push_back(base_prin);
  for (const auto& o : r.to) {
    auto list = base_perm;
    Push(list, true, Attr::kDestPort, "destination.port", o.ports, o.not_ports);
    Push(list, true, Attr::kPath, "path-matcher", o.paths, o.not_paths);
    Push(list, true, Attr::kMethod, ":method", o.methods, o.not_methods);
    Push(list, true, Attr::kHost, ":authority", o.hosts, o.not_hosts);
    m.permissions.push_back(std::move(list));
  }
  if (r.to.empty())
    m.permissions.push_back(base_perm);
  return m;
}

// MigrateTrustDomain for a mesh without aliases: a principal "TD/ns/N/sa/S" naming
// cluster.local (the local trust domain's alias) or the mesh's trust domain gets the
// mesh's trust domain.
std::string MigratePrincipal(const std::string& principal, const std::string& trust_domain) {
  if (std::count(principal.begin(), principal.end(), '/') != 4)
    return principal;
  auto slash = principal.find('/');
  std::string td = principal.substr(0, slash);
  if (td == "*" || (td != kDefaultTrustDomain && td != trust_domain))
    return principal;
  return trust_domain + principal.substr(slash);
}

struct Generator {
  std::string policy_ns;
  std::string trust_domain;
  bool for_tcp;

  std::optional<Permission> OnePermission(const Term& t, const std::string& v) const {
    Permission p;
    switch (t.attr) {
      case Attr::kDestIp:
        *p.mutable_destination_ip() = Cidr(v);
        return p;
      case Attr::kDestPort:
        p.set_destination_port(static_cast<uint32_t>(std::stoul(v)));
        return p;
      case Attr::kSni:
        *p.mutable_requested_server_name() = Plain(v);
        return p;
      case Attr::kHost:
        *p.mutable_header() = Header(":authority", v, true);
        return p;
      case Attr::kMethod:
        *p.mutable_header() = Header(":method", v, false);
        return p;
      case Attr::kPath:
        *p.mutable_url_path()->mutable_path() = Plain(v);
        return p;
      default:
        return std::nullopt;
    }
  }

  // experimental.envoy.filters.F[K]: a metadata matcher on filter F, key K.
  Permission EnvoyFilter(const Term& t, const std::vector<std::string>& values) const {
    std::string k = t.key.substr(std::string_view("experimental.").size());
    if (k.ends_with("]"))
      k.pop_back();
    auto open = k.find('[');
    std::vector<ValueMatcher> ms;
    for (const auto& v : values) {
      if (v.starts_with("[") && v.ends_with("]")) {
        ValueMatcher list;
        *list.mutable_list_match()->mutable_one_of() =
            StringValue(Plain(v.substr(1, v.size() - 2)));
        ms.push_back(std::move(list));
      } else {
        ms.push_back(StringValue(Plain(v)));
      }
    }
    Permission p;
    *p.mutable_metadata() = Metadata(k.substr(0, open), {k.substr(open + 1)}, OrValues(ms));
    return p;
  }

  std::optional<Principal> OnePrincipal(const Term& t, const std::string& v) const {
    Principal p;
    switch (t.attr) {
      case Attr::kSrcIp:
        *p.mutable_direct_remote_ip() = Cidr(v);
        return p;
      case Attr::kRemoteIp:
        *p.mutable_remote_ip() = Cidr(v);
        return p;
      case Attr::kSrcNamespace: {
        std::string re;
        std::size_t start = 0;
        for (;;) {
          auto star = v.find('*', start);
          re += QuoteMeta(
              v.substr(start, star == std::string::npos ? std::string::npos : star - start));
          if (star == std::string::npos)
            break;
          re += ".*";
          start = star + 1;
        }
        return Authenticated(Regex(".*/ns/" + re + "/.*"));
      }
      case Attr::kSrcServiceAccount: {
        std::string ns = policy_ns, sa = v;
        if (auto slash = v.find('/'); slash != std::string::npos) {
          ns = v.substr(0, slash);
          sa = v.substr(slash + 1);
        }
        return Authenticated(
            Regex("spiffe://.+/ns/" + QuoteMeta(ns) + "/(.+/|)sa/" + QuoteMeta(sa) + "(/.+)?"));
      }
      case Attr::kSrcTrustDomain: {
        if (v == "*")
          return Authenticated(Prefix(kSpiffePrefix));
        auto star = v.find('*');
        if (star == std::string::npos)
          return Authenticated(Prefix(kSpiffePrefix + v + "/"));
        return Authenticated(Regex(std::string(kSpiffePrefix) + QuoteMeta(v.substr(0, star)) +
                                   "[^/]*" + QuoteMeta(v.substr(star + 1)) + "/.*"));
      }
      case Attr::kSrcPrincipal:
        return Authenticated(WithPrefix(MigratePrincipal(v, trust_domain), kSpiffePrefix));
      case Attr::kRequestHeader: {
        if (for_tcp)
          return std::nullopt;
        std::string name = t.key.substr(std::string_view("request.headers[").size());
        name.pop_back();
        *p.mutable_header() = Header(name, v, false);
        return p;
      }
      default:
        return std::nullopt;
    }
  }

  // request.auth.*: one principal for all values (istiod's extended generators).
  std::optional<Principal> Extended(const Term& t, const std::vector<std::string>& values) const {
    if (for_tcp)
      return std::nullopt;
    switch (t.attr) {
      case Attr::kRequestPrincipal: {
        std::vector<Principal> any;
        auto claim = [](const char* name, const StringMatcher& m) {
          return PrinMetadata(Metadata(kJwtFilter, {kJwtPayload, name}, StringValue(m)));
        };
        for (const auto& v : values) {
          auto idx = v.rfind('/');
          const bool found = idx != std::string::npos;
          std::string iss = found ? v.substr(0, idx) : v;
          std::string sub = found ? v.substr(idx + 1) : "";
          StringMatcher mi, ms;
          if (v == "*") {
            mi = ms = Regex(".+");
          } else if (v.starts_with("*")) {
            if (found) {
              mi = iss == "*" ? Regex(".+") : Suffix(iss.substr(1));
              ms = Exact(sub);
            } else {
              mi = Regex(".+");
              ms = Suffix(v.substr(1));
            }
          } else if (v.ends_with("*")) {
            if (found) {
              mi = Exact(iss);
              ms = sub == "*" ? Regex(".+") : Prefix(sub.substr(0, sub.size() - 1));
            } else {
              mi = Prefix(v.substr(0, v.size() - 1));
              ms = Regex(".+");
            }
          } else {
            ms = Exact(sub);
            mi = Exact(iss);
          }
          any.push_back(PrinAnd({claim("iss", mi), claim("sub", ms)}));
        }
        if (any.size() == 1)
          return any[0];
        return PrinOr(std::move(any));
      }
      case Attr::kRequestAudiences:
        return PrinMetadata(JwtClaimMatcher({"aud"}, StringOr(values)));
      case Attr::kRequestPresenter:
        return PrinMetadata(JwtClaimMatcher({"azp"}, StringOr(values)));
      case Attr::kRequestClaims:
        return PrinMetadata(JwtClaimMatcher(ClaimPath(std::string_view(t.key).substr(
                                                std::string_view("request.auth.claims").size())),
                                            StringOr(values)));
      default:
        return std::nullopt;
    }
  }

  // A term's permissions; nullopt when the term fails and the action says the whole rule
  // fails (ALLOW), else the term's part is left out (DENY, AUDIT: wider).
  std::optional<std::vector<Permission>> Permissions(const Term& t, bool strict) const {
    std::vector<Permission> out;
    const bool fails = for_tcp && HttpOnly(t.attr);
    if (fails && strict)
      return std::nullopt;
    if (fails)
      return out;
    if (t.attr == Attr::kEnvoyFilter) {
      if (!t.values.empty())
        out.push_back(EnvoyFilter(t, t.values));
      if (!t.not_values.empty())
        out.push_back(PermNot(EnvoyFilter(t, t.not_values)));
      return out;
    }
    std::vector<Permission> yes, no;
    for (const auto& v : t.values)
      if (auto p = OnePermission(t, v))
        yes.push_back(std::move(*p));
    for (const auto& v : t.not_values)
      if (auto p = OnePermission(t, v))
        no.push_back(std::move(*p));
    if (!yes.empty())
      out.push_back(PermOr(std::move(yes)));
    if (!no.empty())
      out.push_back(PermNot(PermOr(std::move(no))));
    return out;
  }

  std::optional<std::vector<Principal>> Principals(const Term& t, bool strict) const {
    std::vector<Principal> out;
    const bool fails = for_tcp && HttpOnly(t.attr);
    if (fails && strict)
      return std::nullopt;
    if (fails)
      return out;
    if (IsExtended(t.attr)) {
      if (!t.values.empty())
        if (auto p = Extended(t, t.values))
          out.push_back(std::move(*p));
      if (!t.not_values.empty())
        if (auto p = Extended(t, t.not_values))
          out.push_back(PrinNot(std::move(*p)));
      return out;
    }
    std::vector<Principal> yes, no;
    for (const auto& v : t.values)
      if (auto p = OnePrincipal(t, v))
        yes.push_back(std::move(*p));
    for (const auto& v : t.not_values)
      if (auto p = OnePrincipal(t, v))
        no.push_back(std::move(*p));
    if (!yes.empty())
      out.push_back(PrinOr(std::move(yes)));
    if (!no.empty())
      out.push_back(PrinNot(PrinOr(std::move(no))));
    return out;
  }

  // Model.Generate: nullopt when the rule is skipped on this chain.
  std::optional<rbac_v3::Policy> Generate(const Model& m, rbac_v3::RBAC::Action action) const {
    const bool strict = action == rbac_v3::RBAC::ALLOW;
    rbac_v3::Policy policy;
    for (const auto& list : m.permissions) {
      std::vector<Permission> all;
      for (const auto& t : list) {
        auto ps = Permissions(t, strict);
        if (!ps)
          return std::nullopt;
        for (auto& p : *ps)
          all.push_back(std::move(p));
      }
      if (all.empty())
        all.push_back(PermAny());
      *policy.add_permissions() = PermAnd(std::move(all));
    }
    for (const auto& list : m.principals) {
      std::vector<Principal> all;
      for (const auto& t : list) {
        auto ps = Principals(t, strict);
        if (!ps)
          return std::nullopt;
        for (auto& p : *ps)
          all.push_back(std::move(p));
      }
      if (all.empty())
        all.push_back(PrinAny());
      *policy.add_principals() = PrinAnd(std::move(all));
    }
    return policy;
  }
};

// rbacPolicyMatchNever: what istiod gives a policy without rules.
rbac_v3::Policy MatchNever() {
  rbac_v3::Policy p;
  *p.add_permissions() = PermNot(PermAny());
  *p.add_principals() = PrinNot(PrinAny());
  return p;
}

rbac_v3::Policy MatchAll() {
  rbac_v3::Policy p;
  *p.add_permissions() = PermAnd({PermAny()});
  *p.add_principals() = PrinAnd({PrinAny()});
  return p;
}

std::string PolicyName(const AuthorizationPolicy& p, std::size_t rule) {
  return "ns[" + p.meta.ns + "]-policy[" + p.meta.name + "]-rule[" + std::to_string(rule) + "]";
}

// istiod's shadowRuleStatPrefix, which it also calls without shadow rules (a nil RBAC
// reads as action ALLOW).
std::string ShadowStatPrefix(const std::optional<rbac_v3::RBAC>& shadow) {
  const auto action = shadow ? shadow->action() : rbac_v3::RBAC::ALLOW;
  if (action == rbac_v3::RBAC::ALLOW)
    return "istio_dry_run_allow_";
  if (action == rbac_v3::RBAC::DENY)
    return "istio_dry_run_deny_";
  return "";
}

struct Built {
  std::optional<rbac_v3::RBAC> rules, shadow;
};

// builder.build for one action's policies on one kind of chain.
Built BuildAction(const std::vector<const AuthorizationPolicy*>& policies,
                  rbac_v3::RBAC::Action action, Generator gen) {
  Built b;
  for (const AuthorizationPolicy* p : policies) {
    gen.policy_ns = p->meta.ns;  // the service-account generator's default namespace
    auto& target = p->dry_run ? b.shadow : b.rules;
    if (!target) {
      target.emplace();
      target->set_action(action);
    }
    auto& out = *target->mutable_policies();
    if (!p->rejected.empty()) {
      // Fail closed: nothing allowed by it, everything denied (or logged) by it.
      out[PolicyName(*p, 0)] = action == rbac_v3::RBAC::ALLOW ? MatchNever() : MatchAll();
      continue;
    }
    for (std::size_t i = 0; i < p->rules.size(); ++i) {
      if (auto generated = gen.Generate(BuildModel(p->rules[i]), action))
        out[PolicyName(*p, i)] = std::move(*generated);
    }
    if (p->rules.empty())
      out[PolicyName(*p, 0)] = MatchNever();
  }
  return b;
}

}  // namespace

// istiod's ListAuthorizationPolicies for a sidecar: the root namespace's and the proxy
// namespace's policies whose selector is a subset of the proxy's labels.
std::vector<const AuthorizationPolicy*> Builder::SelectedPolicies() const {
  std::vector<const AuthorizationPolicy*> out;
  for (const std::string& ns : {config_.mesh.root_namespace, proxy_.ns}) {
    for (const auto& p : config_.authorization_policies) {
      if (p.meta.ns == ns && SelectorMatches(p.selector, proxy_.labels))
        out.push_back(&p);
    }
    if (proxy_.ns == config_.mesh.root_namespace)
      break;
  }
  return out;
}

void Builder::BuildAuthz() {
  authz_http_.clear();
  authz_tcp_.clear();
  std::vector<const AuthorizationPolicy*> audit, deny, allow;
  for (const AuthorizationPolicy* p : SelectedPolicies()) {
    switch (p->action) {
      case AuthorizationPolicy::Action::kAudit:
        audit.push_back(p);
        break;
      case AuthorizationPolicy::Action::kAllow:
        allow.push_back(p);
        break;
      default:  // DENY, and a refused CUSTOM (denies everything)
        deny.push_back(p);
        break;
    }
  }
  authz_ = !audit.empty() || !deny.empty() || !allow.empty();
  if (!authz_)
    return;
  const std::pair<const std::vector<const AuthorizationPolicy*>*, rbac_v3::RBAC::Action> order[] = {
      {&audit, rbac_v3::RBAC::LOG}, {&deny, rbac_v3::RBAC::DENY}, {&allow, rbac_v3::RBAC::ALLOW}};
  for (const auto& [policies, action] : order) {
    if (policies->empty())
      continue;
    for (const bool tcp : {false, true}) {
      const Built b = BuildAction(*policies, action, Generator{"", config_.mesh.domain, tcp});
      if (!tcp) {
        envoy::extensions::filters::http::rbac::v3::RBAC http;
        if (b.rules)
          *http.mutable_rules() = *b.rules;
        if (b.shadow)
          *http.mutable_shadow_rules() = *b.shadow;
        http.set_shadow_rules_stat_prefix(ShadowStatPrefix(b.shadow));
        authz_http_.emplace_back().PackFrom(http);
      } else {
        envoy::extensions::filters::network::rbac::v3::RBAC net;
        if (b.rules)
          *net.mutable_rules() = *b.rules;
        if (b.shadow)
          *net.mutable_shadow_rules() = *b.shadow;
        net.set_stat_prefix("tcp.");
        net.set_shadow_rules_stat_prefix(ShadowStatPrefix(b.shadow));
        authz_tcp_.emplace_back().PackFrom(net);
      }
    }
  }
}

}  // namespace sluice::istio::detail
