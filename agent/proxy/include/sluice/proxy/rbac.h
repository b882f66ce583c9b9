// Envoy's RBAC engine (envoy.filters.http.rbac and envoy.filters.network.rbac, the
// filters istiod makes from AuthorizationPolicy), compiled once from the Envoy config
// into matcher trees and evaluated per request or connection over a small set of facts
// (RbacRequest). The semantics are Envoy's, field by field (rbac.cc says where each comes
// from); anything Envoy supports that Sluice does not is an error naming the field, so
// the caller refuses the listener rather than serve it with a policy half applied.
//
// The proxy enforces them (session_rbac.cc); docs/policy.md says what is implemented.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/common/result.h"
#include "sluice/proxy/http_codec.h"

namespace envoy::config::rbac::v3 {
class RBAC;
}
namespace envoy::extensions::filters::http::rbac::v3 {
class RBAC;
}
namespace envoy::extensions::filters::network::rbac::v3 {
class RBAC;
}

namespace sluice::proxy {

// The peer's certificate, as Envoy's `authenticated` principal reads it. Sluice has no
// mTLS yet (issue 18), so callers pass none and `authenticated` never matches.
struct PeerCertificate {
  std::vector<std::string> uri_sans, dns_sans;
  std::string subject;
};

// What a policy can look at. Every pointer may be null (that fact is unknown: a matcher
// that needs it does not match, as in Envoy when the address is not an IP).
struct RbacRequest {
  // The request head, for the HTTP filter; null for the network filter (header matchers
  // then see an empty header map, exactly as Envoy's network filter does).
  const http::RequestHead* http = nullptr;
  // Headers the connection manager adds before the filters run (x-forwarded-proto,
  // x-request-id, ...), consulted after the head's own; name in any case.
  std::span<const http::Header> added_headers;
  // ":scheme" ("http" until Sluice terminates TLS).
  std::string_view scheme = "http";
  // destination_ip / destination_port(_range): the connection's local address, after the
  // original destination is restored.
  const sockaddr_storage* local = nullptr;
  // direct_remote_ip and the deprecated source_ip: the peer of the connection.
  const sockaddr_storage* direct_remote = nullptr;
  // remote_ip: the client after x-forwarded-for when the connection manager is set to
  // trust it; null means the same as direct_remote.
  const sockaddr_storage* remote = nullptr;
  // requested_server_name: the TLS SNI (empty when none).
  std::string_view requested_server_name;
  // authenticated: null for a plaintext peer (always, until mTLS).
  const PeerCertificate* peer = nullptr;
};

struct RbacDecision {
  bool allowed = true;
  // The first policy (in name order, as Envoy's std::map) that matched; empty: none.
  // Points into the engine, which outlives the decision.
  std::string_view matched_policy;
  // Action LOG: allowed whatever matched; `log` is Envoy's access_log_hint (a policy
  // matched, so the access log should record the request).
  bool log = false;
};

// One compiled envoy.config.rbac.v3.RBAC: the action and the policies. Cheap to copy
// (the compiled trees are shared and immutable).
class RbacEngine {
 public:
  enum class Action { kAllow, kDeny, kLog };
  struct Compiled;

  Action action() const { return action_; }
  std::size_t policy_count() const;
  // Dynamic metadata filter namespaces its metadata matchers read (istio_authn for
  // request.auth.*). No Sluice filter writes dynamic metadata, so those matchers see an
  // absent value; the wiring must refuse a chain where some filter would write these.
  const std::vector<std::string>& metadata_filters() const;

  // Envoy's engine: ALLOW allows iff some policy matches (an empty policy map denies
  // everything); DENY denies iff some policy matches; LOG always allows.
  RbacDecision Evaluate(const RbacRequest& r) const;

 private:
  friend Result<RbacEngine> CompileRbac(const envoy::config::rbac::v3::RBAC&, std::string_view);
  RbacEngine() = default;  // only CompileRbac makes one: an engine always has its trees
  Action action_ = Action::kAllow;
  std::shared_ptr<const Compiled> compiled_;
};

// Compiles an RBAC message; `where` prefixes errors ("listener x: filter_chains[0]:
// envoy.filters.http.rbac: rules"), which name the field path below it
// ("...: policies[ns[foo]-policy[bar]-rule[0]].permissions[0].metadata: ...").
Result<RbacEngine> CompileRbac(const envoy::config::rbac::v3::RBAC& rbac, std::string_view where);

// The result of a filter (enforced engine plus shadow engine) for one request or
// connection.
struct RbacFilterResult {
  // The enforced engine's decision; allowed with no policy when the filter has no rules.
  RbacDecision enforced;
  bool has_enforced = false;
  // The shadow engine's, when the filter has shadow_rules: Envoy's dynamic metadata
  // shadow_engine_result ("allowed"/"denied") and shadow_effective_policy_id.
  bool has_shadow = false;
  RbacDecision shadow;
  bool allowed() const { return !has_enforced || enforced.allowed; }
  // Envoy's response code details (HTTP) or connection termination details (network) for
  // a denial: "rbac_access_denied_matched_policy[NAME]", "[none]" when no policy matched,
  // whitespace in the name replaced by '_'.
  std::string DeniedDetails() const;
  std::string_view ShadowEngineResult() const { return shadow.allowed ? "allowed" : "denied"; }
};

// What the HTTP filter answers a denial with (Envoy's local reply).
inline constexpr int kRbacDeniedStatus = 403;
inline constexpr std::string_view kRbacDeniedBody = "RBAC: access denied";

// A compiled envoy.filters.http.rbac or envoy.filters.network.rbac config.
struct RbacFilter {
  std::optional<RbacEngine> rules;         // absent: the filter allows everything
  std::optional<RbacEngine> shadow_rules;  // absent: no shadow evaluation
  std::string rules_stat_prefix;           // HTTP
  std::string shadow_rules_stat_prefix;
  std::string stat_prefix;  // network (required there)
  // Network filter: evaluate once on the first byte (Envoy's default) or on every read.
  enum class Enforcement { kOneTimeOnFirstByte, kContinuous };
  Enforcement enforcement = Enforcement::kOneTimeOnFirstByte;

  // The shadow engine, then the enforced one, as Envoy's filters run them.
  RbacFilterResult Evaluate(const RbacRequest& r) const;
};

// The HTTP filter's typed_config. `matcher` / `shadow_matcher` (the xDS matcher variant)
// are refused by name.
Result<RbacFilter> CompileHttpRbac(const envoy::extensions::filters::http::rbac::v3::RBAC& rbac,
                                   std::string_view where);
// The network filter's typed_config (stat_prefix required, enforcement_type kept).
Result<RbacFilter> CompileNetworkRbac(
    const envoy::extensions::filters::network::rbac::v3::RBAC& rbac, std::string_view where);

}  // namespace sluice::proxy
