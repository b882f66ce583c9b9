// Decoder of security.istio.io AuthorizationPolicy (v1, v1beta1): selector, action, rules
// (from.source, to.operation, when), checked as istio's validation webhook checks them
// (pkg/config/validation ValidateAuthorizationPolicy, pkg/config/security), plus what
// Sluice cannot enforce, refused by name: targetRef(s) (no waypoints or Gateway API
// gateways), CUSTOM and provider (no ext_authz), path templates (the RBAC engine has no
// uri_template matcher).
//
// A refused policy must not fail open: RejectedAuthorizationPolicy keeps what could be
// read of it (namespace, selector, action) so the translator can give the workloads it
// would have selected a policy that allows nothing or denies everything.
#include <string_view>

#include "loader/decode.h"

namespace sluice::istio::detail {
namespace {

constexpr char kDryRunAnnotation[] = "istio.io/dry-run";

// Go's strconv.ParseBool, which istiod applies to the dry-run annotation.
std::optional<bool> ParseGoBool(const std::string& v) {
  if (v == "1" || v == "t" || v == "T" || v == "TRUE" || v == "true" || v == "True")
    return true;
  if (v == "0" || v == "f" || v == "F" || v == "FALSE" || v == "false" || v == "False")
    return false;
  return std::nullopt;
}

// A list of non-empty strings (istio's CheckEmptyValues).
std::vector<std::string> Values(const Field& f) {
  auto values = f.StrList();
  auto items = f.List();
  for (std::size_t i = 0; i < values.size() && i < items.size(); ++i) {
    if (values[i].empty()) {
      items[i].Error("must not be empty");
      break;
    }
  }
  return values;
}

void CheckIps(const Field& f, const std::vector<std::string>& values) {
  auto items = f.List();
  for (std::size_t i = 0; i < values.size() && i < items.size(); ++i) {
    if (!IsIpOrCidr(values[i])) {
      items[i].Error("must be an IP address or CIDR range (got \"" + values[i] + "\")");
      return;
    }
  }
}

bool IsPortString(const std::string& v) {
  if (v.empty() || v.size() > 5 || v.find_first_not_of("0123456789") != std::string::npos)
    return false;
  return std::stoul(v) <= 65535;
}

void CheckPorts(const Field& f, const std::vector<std::string>& values) {
  auto items = f.List();
  for (std::size_t i = 0; i < values.size() && i < items.size(); ++i) {
    if (!IsPortString(values[i])) {
      items[i].Error("must be a port number 0..65535 (got \"" + values[i] + "\")");
      return;
    }
  }
}

// "{*}" and "{**}" make a path a template, which istiod sends as a uri_template matcher.
void CheckNoPathTemplates(const Field& f, const std::vector<std::string>& values) {
  auto items = f.List();
  for (std::size_t i = 0; i < values.size() && i < items.size(); ++i) {
    if (values[i].find("{*}") != std::string::npos || values[i].find("{**}") != std::string::npos) {
      items[i].Error(
          "path templates ({*}, {**}) are not supported: Sluice's RBAC engine has no "
          "uri_template matcher (got \"" +
          values[i] + "\")");
      return;
    }
  }
}

// "[name]" after a key prefix, as istiod's extractNameInBrackets wants it.
bool IsBracketed(std::string_view rest) {
  return rest.size() > 2 && rest.front() == '[' && rest.back() == ']';
}

// The when keys istiod's authz model knows (pilot/pkg/security/authz/model/model.go), and
// the values istio's validation (security.ValidateAttribute) accepts for them.
void CheckCondition(const Field& f, const AuthzCondition& c) {
  const std::string& k = c.key;
  auto each = [&](auto check, const char* what) {
    for (const char* list : {"values", "notValues"}) {
      Field lf = f[list];
      const auto& vals = std::string_view(list) == "values" ? c.values : c.not_values;
      auto items = lf.List();
      for (std::size_t i = 0; i < vals.size() && i < items.size(); ++i) {
        if (!check(vals[i])) {
          items[i].Error(std::string("must be ") + what + " for key " + k + " (got \"" + vals[i] +
                         "\")");
          return;
        }
      }
    }
  };
  if (k == "source.ip" || k == "remote.ip" || k == "destination.ip") {
    each([](const std::string& v) { return IsIpOrCidr(v); }, "an IP address or CIDR range");
  } else if (k == "destination.port") {
    each(IsPortString, "a port number 0..65535");
  } else if (k.starts_with("request.headers")) {
    if (!IsBracketed(std::string_view(k).substr(15)))
      f["key"].Error("must be request.headers[NAME] (got \"" + k + "\")");
  } else if (k.starts_with("request.auth.claims")) {
    if (!IsBracketed(std::string_view(k).substr(19)))
      f["key"].Error("must be request.auth.claims[NAME] or [A][B]... (got \"" + k + "\")");
  } else if (k.starts_with("experimental.envoy.filters.")) {
    auto open = k.find('[');
    if (open == std::string::npos || k.back() != ']' || open + 2 > k.size() - 1)
      f["key"].Error("must be experimental.envoy.filters.FILTER[KEY] (got \"" + k + "\")");
  } else if (k != "source.namespace" && k != "source.principal" && k != "source.serviceAccount" &&
             k != "source.trustDomain" && k != "request.auth.principal" &&
             k != "request.auth.audiences" && k != "request.auth.presenter" &&
             k != "connection.sni") {
    f["key"].Error("unknown attribute \"" + k +
                   "\" (supported: request.headers[NAME], source.ip, remote.ip, "
                   "source.namespace, source.principal, source.serviceAccount, "
                   "source.trustDomain, request.auth.principal, request.auth.audiences, "
                   "request.auth.presenter, request.auth.claims[NAME], destination.ip, "
                   "destination.port, connection.sni, experimental.envoy.filters.*[KEY])");
  }
}

AuthzSource DecodeSource(const Field& f, std::size_t rule) {
  AuthzSource s;
  s.principals = Values(f["principals"]);
  s.not_principals = Values(f["notPrincipals"]);
  s.request_principals = Values(f["requestPrincipals"]);
  s.not_request_principals = Values(f["notRequestPrincipals"]);
  s.namespaces = Values(f["namespaces"]);
  s.not_namespaces = Values(f["notNamespaces"]);
  s.service_accounts = Values(f["serviceAccounts"]);
  s.not_service_accounts = Values(f["notServiceAccounts"]);
  s.trust_domains = Values(f["trustDomains"]);
  s.not_trust_domains = Values(f["notTrustDomains"]);
  s.ip_blocks = Values(f["ipBlocks"]);
  s.not_ip_blocks = Values(f["notIpBlocks"]);
  s.remote_ip_blocks = Values(f["remoteIpBlocks"]);
  s.not_remote_ip_blocks = Values(f["notRemoteIpBlocks"]);
  CheckIps(f["ipBlocks"], s.ip_blocks);
  CheckIps(f["notIpBlocks"], s.not_ip_blocks);
  CheckIps(f["remoteIpBlocks"], s.remote_ip_blocks);
  CheckIps(f["notRemoteIpBlocks"], s.not_remote_ip_blocks);
  for (const char* list : {"serviceAccounts", "notServiceAccounts"}) {
    auto items = f[list].List();
    const auto& vals =
        std::string_view(list) == "serviceAccounts" ? s.service_accounts : s.not_service_accounts;
    for (std::size_t i = 0; i < vals.size() && i < items.size(); ++i) {
      auto slash = vals[i].find('/');
      if (slash != std::string::npos && (slash == 0 || slash + 1 == vals[i].size() ||
                                         vals[i].find('/', slash + 1) != std::string::npos)) {
        items[i].Error("must be NAME or NAMESPACE/NAME (got \"" + vals[i] + "\")");
        break;
      }
    }
  }
  const bool identity = !s.principals.empty() || !s.not_principals.empty() ||
                        !s.namespaces.empty() || !s.not_namespaces.empty();
  if (identity && (!s.service_accounts.empty() || !s.not_service_accounts.empty())) {
    f.Error("cannot set serviceAccounts with namespaces or principals, found at rule " +
            std::to_string(rule));
  }
  if (!identity && s.request_principals.empty() && s.not_request_principals.empty() &&
      s.service_accounts.empty() && s.not_service_accounts.empty() && s.trust_domains.empty() &&
      s.not_trust_domains.empty() && s.ip_blocks.empty() && s.not_ip_blocks.empty() &&
      s.remote_ip_blocks.empty() && s.not_remote_ip_blocks.empty()) {
    f.Error("must not be empty");
  }
  return s;
}

AuthzOperation DecodeOperation(const Field& f) {
  AuthzOperation o;
  o.hosts = Values(f["hosts"]);
  o.not_hosts = Values(f["notHosts"]);
  o.ports = Values(f["ports"]);
  o.not_ports = Values(f["notPorts"]);
  o.methods = Values(f["methods"]);
  o.not_methods = Values(f["notMethods"]);
  o.paths = Values(f["paths"]);
  o.not_paths = Values(f["notPaths"]);
  CheckPorts(f["ports"], o.ports);
  CheckPorts(f["notPorts"], o.not_ports);
  CheckNoPathTemplates(f["paths"], o.paths);
  CheckNoPathTemplates(f["notPaths"], o.not_paths);
  if (o.hosts.empty() && o.not_hosts.empty() && o.ports.empty() && o.not_ports.empty() &&
      o.methods.empty() && o.not_methods.empty() && o.paths.empty() && o.not_paths.empty()) {
    f.Error("must not be empty");
  }
  return o;
}

AuthzRule DecodeRule(const Field& f, std::size_t index) {
  AuthzRule r;
  if (!f.is_map()) {
    f.Error("must be a mapping (a rule)");
    return r;
  }
  Field from = f["from"];
  if (from.present() && from.is_list() && from.List().empty())
    from.Error("must not be empty");
  for (const auto& item : from.List()) {
    Field src = item["source"];
    if (!src.is_map()) {
      src.Error("required (a mapping)");
      return r;
    }
    r.from.push_back(DecodeSource(src, index));
  }
  Field to = f["to"];
  if (to.present() && to.is_list() && to.List().empty())
    to.Error("must not be empty");
  for (const auto& item : to.List()) {
    Field op = item["operation"];
    if (!op.is_map()) {
      op.Error("required (a mapping)");
      return r;
    }
    r.to.push_back(DecodeOperation(op));
  }
  for (const auto& item : f["when"].List()) {
    AuthzCondition c;
    c.key = item["key"].Required();
    c.values = item["values"].StrList();
    c.not_values = item["notValues"].StrList();
    if (c.key.empty())
      continue;  // reported by Required()
    if (c.values.empty() && c.not_values.empty()) {
      item.Error("at least one of values or notValues must be set for key " + c.key);
      continue;
    }
    CheckCondition(item, c);
    r.when.push_back(std::move(c));
  }
  return r;
}

// The action as written; CUSTOM is reported by the caller.
std::optional<AuthorizationPolicy::Action> ParseAction(const std::string& a) {
  if (a == "ALLOW")
    return AuthorizationPolicy::Action::kAllow;
  if (a == "DENY")
    return AuthorizationPolicy::Action::kDeny;
  if (a == "AUDIT")
    return AuthorizationPolicy::Action::kAudit;
  if (a == "CUSTOM")
    return AuthorizationPolicy::Action::kCustom;
  return std::nullopt;
}

bool DryRun(const Meta& meta) {
  auto it = meta.annotations.find(kDryRunAnnotation);
  // istiod logs a value ParseBool refuses and enforces the policy; so does Sluice (the
  // loader reports it as an error first).
  return it != meta.annotations.end() && ParseGoBool(it->second).value_or(false);
}

}  // namespace

AuthorizationPolicy DecodeAuthorizationPolicy(const Field& doc, const Meta& meta) {
  AuthorizationPolicy p;
  p.meta = meta;
  Field spec = doc["spec"];
  if (spec.present() && !spec.is_map()) {
    spec.Error("must be a mapping");
    return p;
  }
  if (auto it = meta.annotations.find(kDryRunAnnotation);
      it != meta.annotations.end() && !ParseGoBool(it->second)) {
    doc["metadata"]["annotations"][kDryRunAnnotation].Error("must be true or false (got \"" +
                                                            it->second + "\")");
  }
  p.dry_run = DryRun(meta);
  p.selector = spec["selector"]["matchLabels"].StrMap();
  if (spec["targetRef"].present() || spec["targetRefs"].present()) {
    (spec["targetRef"].present() ? spec["targetRef"] : spec["targetRefs"])
        .Error(
            "not supported: targetRef attaches a policy to a waypoint or a Gateway API "
            "gateway, which Sluice does not have; use spec.selector");
  }
  if (auto a = spec["action"].Str()) {
    auto action = ParseAction(*a);
    if (!action) {
      spec["action"].Error("must be ALLOW, DENY, AUDIT or CUSTOM (got \"" + *a + "\")");
    } else if (*action == AuthorizationPolicy::Action::kCustom) {
      spec["action"].Error(
          "CUSTOM is not supported: it delegates to an ext_authz provider, "
          "which Sluice does not have");
    } else {
      p.action = *action;
    }
  }
  if (spec["provider"].present())
    spec["provider"].Error("not supported: ext_authz providers (CUSTOM action) are not in Sluice");
  Field rules = spec["rules"];
  for (std::size_t i = 0; const auto& r : rules.List()) {
    p.rules.push_back(DecodeRule(r, i));
    ++i;
  }
  if (p.action == AuthorizationPolicy::Action::kDeny && p.rules.empty()) {
    rules.Error(
        "required: a DENY policy without rules never matches; add an empty rule {} to "
        "deny every request");
  }
  return p;
}

AuthorizationPolicy RejectedAuthorizationPolicy(const YAML::Node& root, const Meta& meta,
                                                const std::string& reason) {
  AuthorizationPolicy p;
  p.meta = meta;
  p.rejected = reason;
  p.dry_run = DryRun(meta);
  FieldErrors ignored;
  Field doc(root, "", &ignored);
  Field spec = doc["spec"];
  p.selector = spec["selector"]["matchLabels"].StrMap();
  if (ignored.failed())
    p.selector.clear();  // an unreadable selector: the whole namespace (wider, closed)
  if (auto a = spec["action"].Str(); a && ParseAction(*a))
    p.action = *ParseAction(*a);
  else if (a)
    p.action = AuthorizationPolicy::Action::kDeny;  // unknown action: deny everything
  return p;
}

}  // namespace sluice::istio::detail
