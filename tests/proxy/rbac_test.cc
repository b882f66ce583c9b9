// Envoy's RBAC engine (sluice/proxy/rbac.h, issue 17) as pure functions: configs written
// as the proto JSON istiod sends, requests read by the proxy's own HTTP parser, and the
// decision Envoy's rbac filters would reach. Then every rbac filter config in the corpus
// of real istiod output (tests/conformance/istiod) compiled, or refused with its reason.
// No sockets; nothing serves these filters yet.
#include "sluice/proxy/rbac.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <google/protobuf/util/json_util.h>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "envoy/config/rbac/v3/rbac.pb.h"
#include "envoy/extensions/filters/http/rbac/v3/rbac.pb.h"
#include "envoy/extensions/filters/network/rbac/v3/rbac.pb.h"

namespace proxy = sluice::proxy;
using proxy::RbacEngine;
using proxy::RbacRequest;
using Json = nlohmann::json;
using sluice::Result;
using HttpRbacProto = envoy::extensions::filters::http::rbac::v3::RBAC;
using NetworkRbacProto = envoy::extensions::filters::network::rbac::v3::RBAC;

namespace {

template <class Msg>
Msg FromJson(const std::string& json) {
  Msg m;
  auto st = google::protobuf::util::JsonStringToMessage(json, &m);
  INFO(json);
  REQUIRE(st.ok());
  return m;
}

RbacEngine Engine(const Json& rbac) {
  auto e = proxy::CompileRbac(FromJson<envoy::config::rbac::v3::RBAC>(rbac.dump()), "rules");
  INFO((e ? std::string() : e.error().message));
  REQUIRE(e.has_value());
  return *e;
}

std::string CompileError(const Json& rbac) {
  auto e = proxy::CompileRbac(FromJson<envoy::config::rbac::v3::RBAC>(rbac.dump()), "rules");
  REQUIRE_FALSE(e.has_value());
  return e.error().message;
}

// One policy "p" with these permissions and principals, under `action`.
Json Policy(const Json& permission, const Json& principal, const char* action = "ALLOW") {
  return {
      {"action", action},
      {"policies",
       {{"p",
         {{"permissions", Json::array({permission})}, {"principals", Json::array({principal})}}}}}};
}
const Json kAny = {{"any", true}};

sockaddr_storage Addr(const char* ip, uint16_t port) {
  sockaddr_storage ss{};
  if (std::string_view(ip).find(':') != std::string_view::npos) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(port);
    REQUIRE(inet_pton(AF_INET6, ip, &a->sin6_addr) == 1);
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    REQUIRE(inet_pton(AF_INET, ip, &a->sin_addr) == 1);
  }
  return ss;
}

// A request as the proxy sees it: the head parsed from raw bytes by the proxy's parser,
// on a connection from 10.0.0.5:40000 to 10.1.2.3:8080.
struct Req {
  std::string raw;
  proxy::http::RequestHead head;
  sockaddr_storage local = Addr("10.1.2.3", 8080);
  sockaddr_storage peer = Addr("10.0.0.5", 40000);
  std::optional<sockaddr_storage> remote;
  bool http = true;
  std::string sni;
  std::optional<proxy::PeerCertificate> cert;

  explicit Req(std::string r = "GET / HTTP/1.1\r\nHost: a\r\n\r\n") : raw(std::move(r)) { Parse(); }
  // The head's views point into `raw`: a copy parses its own.
  Req(const Req& o)
      : raw(o.raw),
        local(o.local),
        peer(o.peer),
        remote(o.remote),
        http(o.http),
        sni(o.sni),
        cert(o.cert) {
    Parse();
  }
  Req& operator=(const Req&) = delete;
  void Parse() {
    REQUIRE(proxy::http::ParseRequest(raw, {}, &head) == proxy::http::ParseStatus::kDone);
  }
  RbacRequest Facts() const {
    RbacRequest f;
    f.http = http ? &head : nullptr;
    f.local = &local;
    f.direct_remote = &peer;
    f.remote = remote ? &*remote : nullptr;
    f.requested_server_name = sni;
    f.peer = cert ? &*cert : nullptr;
    return f;
  }
};

// A bare TCP connection (the network filter): no HTTP head.
Req Tcp() {
  Req r;
  r.http = false;
  return r;
}

bool Allowed(const RbacEngine& e, const Req& r) {
  return e.Evaluate(r.Facts()).allowed;
}

// Does this permission (alone, under ALLOW) match the request?
bool PermissionMatches(const Json& permission, const Req& r) {
  return Allowed(Engine(Policy(permission, kAny)), r);
}
bool PrincipalMatches(const Json& principal, const Req& r) {
  return Allowed(Engine(Policy(kAny, principal)), r);
}
bool HeaderMatches(const Json& header, const Req& r) {
  return PermissionMatches({{"header", header}}, r);
}

Req Get(const std::string& target, const std::string& more_headers = "") {
  return Req("GET " + target + " HTTP/1.1\r\nHost: svc.ns:8080\r\n" + more_headers + "\r\n");
}

}  // namespace

TEST_CASE("rbac permissions: each kind matches what Envoy's does", "[proxy][rbac]") {
  Req get = Get("/info/x?token=1");
  Req post("POST /data HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");

  // header: a pseudo-header, as istiod writes methods.
  Json get_method = {{"header", {{"name", ":method"}, {"exact_match", "GET"}}}};
  CHECK(PermissionMatches(get_method, get));
  CHECK_FALSE(PermissionMatches(get_method, post));

  // url_path: the path without the query (and fragment).
  Json info = {{"url_path", {{"path", {{"prefix", "/info"}}}}}};
  Json exact = {{"url_path", {{"path", {{"exact", "/info/x"}}}}}};
  CHECK(PermissionMatches(info, get));
  CHECK(PermissionMatches(exact, get));
  CHECK_FALSE(PermissionMatches(info, post));
  CHECK_FALSE(PermissionMatches(exact, Get("/info/x/")));
  CHECK_FALSE(PermissionMatches(info, Tcp()));  // no :path on a bare connection
  Json ci = {{"url_path", {{"path", {{"exact", "/INFO/X"}, {"ignore_case", true}}}}}};
  CHECK(PermissionMatches(ci, get));

  // destination_ip: the connection's local address.
  CHECK(PermissionMatches(
      {{"destination_ip", {{"address_prefix", "10.1.0.0"}, {"prefix_len", 16}}}}, get));
  CHECK_FALSE(PermissionMatches(
      {{"destination_ip", {{"address_prefix", "10.2.0.0"}, {"prefix_len", 16}}}}, get));
  // A prefix of another family never matches; an unset prefix_len is 0 (the family).
  CHECK_FALSE(PermissionMatches({{"destination_ip", {{"address_prefix", "::"}}}}, get));
  CHECK(PermissionMatches({{"destination_ip", {{"address_prefix", "192.168.1.1"}}}}, get));

  // destination_port, destination_port_range [start, end).
  CHECK(PermissionMatches({{"destination_port", 8080}}, get));
  CHECK_FALSE(PermissionMatches({{"destination_port", 80}}, get));
  CHECK(PermissionMatches({{"destination_port_range", {{"start", 8000}, {"end", 8081}}}}, get));
  CHECK_FALSE(
      PermissionMatches({{"destination_port_range", {{"start", 8000}, {"end", 8080}}}}, get));
  // The same on a bare TCP connection (the network filter).
  CHECK(PermissionMatches({{"destination_port", 8080}}, Tcp()));

  // requested_server_name: the SNI ("" when none).
  Req tls = Tcp();
  tls.sni = "api.example.com";
  Json sni = {{"requested_server_name", {{"suffix", ".example.com"}}}};
  CHECK(PermissionMatches(sni, tls));
  CHECK_FALSE(PermissionMatches(sni, Tcp()));

  // metadata: dynamic metadata is never written in Sluice, so the value is absent: the
  // matcher matches only when inverted.
  Json md = {{"filter", "istio_authn"},
             {"path", Json::array({{{"key", "request.auth.principal"}}})},
             {"value", {{"string_match", {{"exact", "a/b"}}}}}};
  CHECK_FALSE(PermissionMatches({{"metadata", md}}, get));
  Json md_inverted = md;
  md_inverted["invert"] = true;
  CHECK(PermissionMatches({{"metadata", md_inverted}}, get));
  Json present = md;
  present["value"] = {{"present_match", true}};
  CHECK_FALSE(PermissionMatches({{"metadata", present}}, get));
  CHECK(Engine(Policy({{"metadata", md}}, kAny)).metadata_filters() ==
        std::vector<std::string>{"istio_authn"});

  // not_rule, and_rules, or_rules, and their nesting (istiod's shape: and of ors).
  CHECK_FALSE(PermissionMatches({{"not_rule", get_method}}, get));
  CHECK(PermissionMatches({{"not_rule", get_method}}, post));
  Json get_info = {
      {"and_rules",
       {{"rules",
         {{{"or_rules", {{"rules", {get_method}}}}}, {{"or_rules", {{"rules", {info}}}}}}}}}};
  CHECK(PermissionMatches(get_info, get));
  CHECK_FALSE(PermissionMatches(get_info, Get("/other")));
  CHECK_FALSE(PermissionMatches(get_info, post));
  Json get_or_info = {{"or_rules", {{"rules", {get_method, info}}}}};
  CHECK(PermissionMatches(get_or_info, Get("/other")));
  CHECK_FALSE(PermissionMatches(get_or_info, post));
  CHECK(PermissionMatches({{"not_rule", get_info}}, Get("/other")));
  CHECK(PermissionMatches(kAny, post));
}

TEST_CASE("rbac principals: each kind matches what Envoy's does", "[proxy][rbac]") {
  Req r = Get("/", "X-Forwarded-For: 192.0.2.7\r\n");
  Json peer_net = {{"address_prefix", "10.0.0.0"}, {"prefix_len", 24}};
  Json client_net = {{"address_prefix", "192.0.2.0"}, {"prefix_len", 24}};

  // direct_remote_ip and the deprecated source_ip: the connection's peer.
  CHECK(PrincipalMatches({{"direct_remote_ip", peer_net}}, r));
  CHECK(PrincipalMatches({{"source_ip", peer_net}}, r));
  CHECK_FALSE(PrincipalMatches({{"direct_remote_ip", client_net}}, r));
  // remote_ip: the peer unless the connection manager took the client from XFF.
  CHECK(PrincipalMatches({{"remote_ip", peer_net}}, r));
  r.remote = Addr("192.0.2.7", 0);
  CHECK(PrincipalMatches({{"remote_ip", client_net}}, r));
  CHECK_FALSE(PrincipalMatches({{"remote_ip", peer_net}}, r));
  CHECK(PrincipalMatches({{"direct_remote_ip", peer_net}}, r));  // still the peer
  // A host address (/32) and IPv6.
  CHECK(PrincipalMatches(
      {{"direct_remote_ip", {{"address_prefix", "10.0.0.5"}, {"prefix_len", 32}}}}, r));
  CHECK_FALSE(PrincipalMatches(
      {{"direct_remote_ip", {{"address_prefix", "10.0.0.6"}, {"prefix_len", 32}}}}, r));
  Req v6 = Get("/");
  v6.peer = Addr("2001:db8::17", 1234);
  CHECK(PrincipalMatches(
      {{"direct_remote_ip", {{"address_prefix", "2001:db8::"}, {"prefix_len", 64}}}}, v6));
  CHECK_FALSE(PrincipalMatches({{"direct_remote_ip", peer_net}}, v6));
  // An IPv4 client seen on a dual-stack socket (::ffff:10.0.0.5) is the IPv4 address.
  Req mapped = Get("/");
  mapped.peer = Addr("::ffff:10.0.0.5", 1234);
  CHECK(PrincipalMatches({{"direct_remote_ip", peer_net}}, mapped));
  CHECK_FALSE(PrincipalMatches(
      {{"direct_remote_ip", {{"address_prefix", "::ffff:0:0"}, {"prefix_len", 96}}}}, mapped));

  // header and url_path as principals.
  CHECK(PrincipalMatches({{"header", {{"name", "x-forwarded-for"}, {"prefix_match", "192."}}}}, r));
  CHECK(PrincipalMatches({{"url_path", {{"path", {{"exact", "/"}}}}}}, r));

  // authenticated: a plaintext peer is never authenticated, with or without a name.
  Json sa = {{"authenticated",
              {{"principal_name", {{"exact", "spiffe://cluster.local/ns/default/sa/sleep"}}}}}};
  Json any_peer = {{"authenticated", Json::object()}};
  CHECK_FALSE(PrincipalMatches(sa, r));
  CHECK_FALSE(PrincipalMatches(any_peer, r));
  // With a peer certificate (mTLS, later): URI SAN, DNS SAN, then the subject.
  Req mtls = Get("/");
  mtls.cert = proxy::PeerCertificate{{"spiffe://cluster.local/ns/default/sa/sleep"}, {}, "CN=x"};
  CHECK(PrincipalMatches(sa, mtls));
  CHECK(PrincipalMatches(any_peer, mtls));
  mtls.cert = proxy::PeerCertificate{{}, {"sleep.default.svc"}, "CN=sleep"};
  CHECK_FALSE(PrincipalMatches(sa, mtls));
  CHECK(PrincipalMatches(
      {{"authenticated", {{"principal_name", {{"exact", "sleep.default.svc"}}}}}}, mtls));
  CHECK(PrincipalMatches({{"authenticated", {{"principal_name", {{"exact", "CN=sleep"}}}}}}, mtls));

  // not_id, and_ids, or_ids.
  CHECK(PrincipalMatches({{"not_id", sa}}, r));
  Json both = {{"and_ids", {{"ids", {{{"direct_remote_ip", peer_net}}, kAny}}}}};
  CHECK(PrincipalMatches(both, r));
  Json both_sa = {{"and_ids", {{"ids", {{{"direct_remote_ip", peer_net}}, sa}}}}};
  CHECK_FALSE(PrincipalMatches(both_sa, r));
  Json either = {{"or_ids", {{"ids", {sa, {{"direct_remote_ip", peer_net}}}}}}};
  CHECK(PrincipalMatches(either, r));
}

TEST_CASE("rbac headers: Envoy's HeaderMatcher semantics, case by case", "[proxy][rbac]") {
  Req r = Get("/p?q=1", "X-User: Alice\r\nX-Num: 42\r\nX-Multi: a\r\nX-Multi: b\r\n");

  // exact (deprecated field): "" matches any value of a present header.
  CHECK(HeaderMatches({{"name", "x-user"}, {"exact_match", "Alice"}}, r));
  CHECK_FALSE(HeaderMatches({{"name", "x-user"}, {"exact_match", "alice"}}, r));
  CHECK(HeaderMatches({{"name", "x-user"}, {"exact_match", ""}}, r));
  CHECK_FALSE(HeaderMatches({{"name", "x-none"}, {"exact_match", ""}}, r));
  // Header names in any case.
  CHECK(HeaderMatches({{"name", "X-USER"}, {"exact_match", "Alice"}}, r));
  // prefix, suffix, contains, safe_regex (the whole value).
  CHECK(HeaderMatches({{"name", "x-user"}, {"prefix_match", "Al"}}, r));
  CHECK(HeaderMatches({{"name", "x-user"}, {"suffix_match", "ice"}}, r));
  CHECK(HeaderMatches({{"name", "x-user"}, {"contains_match", "lic"}}, r));
  CHECK_FALSE(HeaderMatches({{"name", "x-user"}, {"contains_match", "LIC"}}, r));
  CHECK(HeaderMatches({{"name", "x-user"}, {"safe_regex_match", {{"regex", "A.*e"}}}}, r));
  CHECK_FALSE(HeaderMatches({{"name", "x-user"}, {"safe_regex_match", {{"regex", "lic"}}}}, r));
  // string_match, with ignore_case (which a regex does not take).
  CHECK(HeaderMatches(
      {{"name", "x-user"}, {"string_match", {{"exact", "alice"}, {"ignore_case", true}}}}, r));
  CHECK(HeaderMatches(
      {{"name", "x-user"}, {"string_match", {{"contains", "LIC"}, {"ignore_case", true}}}}, r));
  CHECK_FALSE(HeaderMatches({{"name", "x-user"}, {"string_match", {{"exact", "alice"}}}}, r));
  CHECK_FALSE(HeaderMatches(
      {{"name", "x-user"},
       {"string_match", {{"safe_regex", {{"regex", "alice"}}}, {"ignore_case", true}}}},
      r));

  // range_match: [start, end) over an int64 value.
  CHECK(HeaderMatches({{"name", "x-num"}, {"range_match", {{"start", 40}, {"end", 43}}}}, r));
  CHECK_FALSE(HeaderMatches({{"name", "x-num"}, {"range_match", {{"start", 40}, {"end", 42}}}}, r));
  CHECK_FALSE(
      HeaderMatches({{"name", "x-user"}, {"range_match", {{"start", 0}, {"end", 100}}}}, r));
  Req signs = Get("/", "X-Num: -5\r\nX-Big: 99999999999999999999\r\nX-Plus: +7\r\n");
  CHECK(HeaderMatches({{"name", "x-num"}, {"range_match", {{"start", -10}, {"end", 0}}}}, signs));
  CHECK(HeaderMatches({{"name", "x-plus"}, {"range_match", {{"start", 7}, {"end", 8}}}}, signs));
  CHECK_FALSE(HeaderMatches(
      {{"name", "x-big"}, {"range_match", {{"start", 0}, {"end", "9223372036854775807"}}}}, signs));

  // present_match, and a matcher with no specifier (present).
  CHECK(HeaderMatches({{"name", "x-user"}, {"present_match", true}}, r));
  CHECK_FALSE(HeaderMatches({{"name", "x-none"}, {"present_match", true}}, r));
  CHECK(HeaderMatches({{"name", "x-none"}, {"present_match", false}}, r));
  CHECK_FALSE(HeaderMatches({{"name", "x-user"}, {"present_match", false}}, r));
  CHECK(HeaderMatches({{"name", "x-user"}}, r));
  CHECK_FALSE(HeaderMatches({{"name", "x-none"}}, r));

  // invert_match flips a present header's result; a missing header stays unmatched for a
  // value matcher even inverted (Envoy's rule), and only present_match sees absence.
  CHECK_FALSE(
      HeaderMatches({{"name", "x-user"}, {"exact_match", "Alice"}, {"invert_match", true}}, r));
  CHECK(HeaderMatches({{"name", "x-user"}, {"exact_match", "Bob"}, {"invert_match", true}}, r));
  CHECK_FALSE(
      HeaderMatches({{"name", "x-none"}, {"exact_match", "Bob"}, {"invert_match", true}}, r));
  CHECK(HeaderMatches({{"name", "x-none"}, {"present_match", true}, {"invert_match", true}}, r));
  CHECK_FALSE(
      HeaderMatches({{"name", "x-user"}, {"present_match", true}, {"invert_match", true}}, r));
  CHECK_FALSE(
      HeaderMatches({{"name", "x-none"}, {"present_match", false}, {"invert_match", true}}, r));

  // treat_missing_header_as_empty: a missing header is matched as "".
  CHECK(HeaderMatches({{"name", "x-none"},
                       {"string_match", {{"exact", ""}}},
                       {"treat_missing_header_as_empty", true}},
                      r));
  CHECK(HeaderMatches({{"name", "x-none"},
                       {"string_match", {{"exact", "Bob"}}},
                       {"invert_match", true},
                       {"treat_missing_header_as_empty", true}},
                      r));
  CHECK_FALSE(HeaderMatches({{"name", "x-none"}, {"string_match", {{"exact", ""}}}}, r));

  // Several values of one header are matched joined by ",".
  CHECK(HeaderMatches({{"name", "x-multi"}, {"exact_match", "a,b"}}, r));
  CHECK_FALSE(HeaderMatches({{"name", "x-multi"}, {"exact_match", "a"}}, r));
  CHECK(HeaderMatches({{"name", "x-multi"}, {"suffix_match", ",b"}}, r));

  // Pseudo-headers: :authority (and host, which Envoy's map resolves to it), :path with
  // its query, :method, :scheme.
  CHECK(HeaderMatches({{"name", ":authority"}, {"exact_match", "svc.ns:8080"}}, r));
  CHECK(HeaderMatches({{"name", "host"}, {"prefix_match", "svc.ns"}}, r));
  CHECK(HeaderMatches({{"name", ":path"}, {"exact_match", "/p?q=1"}}, r));
  CHECK(HeaderMatches({{"name", ":method"}, {"exact_match", "GET"}}, r));
  CHECK(HeaderMatches({{"name", ":scheme"}, {"exact_match", "http"}}, r));
  // Headers the connection manager adds before the filters count too.
  proxy::http::Header added[] = {{"x-forwarded-proto", "http"}};
  RbacRequest f = r.Facts();
  f.added_headers = added;
  auto xfp =
      Engine(Policy({{"header", {{"name", "x-forwarded-proto"}, {"exact_match", "http"}}}}, kAny));
  CHECK(xfp.Evaluate(f).allowed);
  CHECK_FALSE(xfp.Evaluate(r.Facts()).allowed);

  // A bare connection has no headers at all: only absence matches.
  CHECK_FALSE(HeaderMatches({{"name", ":method"}, {"exact_match", "GET"}}, Tcp()));
  CHECK(HeaderMatches({{"name", "x-user"}, {"present_match", false}}, Tcp()));
}

TEST_CASE("rbac actions: ALLOW, DENY, LOG, empty policy maps and the policy reported",
          "[proxy][rbac]") {
  Req r = Get("/admin");
  Json admin = {{"url_path", {{"path", {{"prefix", "/admin"}}}}}};
  Json other = {{"url_path", {{"path", {{"prefix", "/other"}}}}}};

  // ALLOW: allowed iff a policy matches. An empty policy map denies everything.
  // (A decision points into its engine: each engine is kept while its decision is read.)
  RbacEngine allow_admin = Engine(Policy(admin, kAny, "ALLOW"));
  auto allow = allow_admin.Evaluate(r.Facts());
  CHECK(allow.allowed);
  CHECK(allow.matched_policy == "p");
  RbacEngine allow_other = Engine(Policy(other, kAny, "ALLOW"));
  auto allow_miss = allow_other.Evaluate(r.Facts());
  CHECK_FALSE(allow_miss.allowed);
  CHECK(allow_miss.matched_policy.empty());
  CHECK_FALSE(Allowed(Engine({{"action", "ALLOW"}}), r));
  CHECK_FALSE(Allowed(Engine(Json::object()), r));  // ALLOW is the default action

  // DENY: denied iff a policy matches; with no policies nothing is denied.
  RbacEngine deny_admin = Engine(Policy(admin, kAny, "DENY"));
  auto deny = deny_admin.Evaluate(r.Facts());
  CHECK_FALSE(deny.allowed);
  CHECK(deny.matched_policy == "p");
  CHECK(Allowed(Engine(Policy(other, kAny, "DENY")), r));
  CHECK(Allowed(Engine({{"action", "DENY"}}), r));

  // LOG: always allowed; the log hint says whether a policy matched.
  RbacEngine log_admin = Engine(Policy(admin, kAny, "LOG"));
  auto log = log_admin.Evaluate(r.Facts());
  CHECK(log.allowed);
  CHECK(log.log);
  RbacEngine log_other = Engine(Policy(other, kAny, "LOG"));
  auto log_miss = log_other.Evaluate(r.Facts());
  CHECK(log_miss.allowed);
  CHECK_FALSE(log_miss.log);

  // A policy needs a matching permission AND a matching principal.
  Json peer_elsewhere = {
      {"direct_remote_ip", {{"address_prefix", "172.16.0.0"}, {"prefix_len", 12}}}};
  CHECK_FALSE(Allowed(Engine(Policy(admin, peer_elsewhere)), r));
  // Several permissions (or principals) of one policy: any one.
  Json two = {{"action", "ALLOW"},
              {"policies",
               {{"p", {{"permissions", {other, admin}}, {"principals", {peer_elsewhere, kAny}}}}}}};
  CHECK(Allowed(Engine(two), r));

  // Several policies: the first in name order that matches is reported, as Envoy's map.
  Json many = {
      {"action", "DENY"},
      {"policies",
       {{"ns[x]-policy[zeta]-rule[0]", {{"permissions", {admin}}, {"principals", {kAny}}}},
        {"ns[x]-policy[alpha]-rule[0]", {{"permissions", {admin}}, {"principals", {kAny}}}},
        {"ns[x]-policy[aaa]-rule[0]", {{"permissions", {other}}, {"principals", {kAny}}}}}}};
  RbacEngine many_engine = Engine(many);
  auto d = many_engine.Evaluate(r.Facts());
  CHECK_FALSE(d.allowed);
  CHECK(d.matched_policy == "ns[x]-policy[alpha]-rule[0]");
  CHECK(many_engine.policy_count() == 3);
}

TEST_CASE(
    "rbac authenticated principals against a plaintext peer: ALLOW denies, DENY does "
    "not match",
    "[proxy][rbac]") {
  // What istiod makes of `from: source: namespaces: [foo]` and `principals: [...]`.
  Json ns_foo = {
      {"authenticated", {{"principal_name", {{"safe_regex", {{"regex", ".*/ns/foo/.*"}}}}}}}};
  Json sa = {{"authenticated",
              {{"principal_name", {{"exact", "spiffe://cluster.local/ns/foo/sa/client"}}}}}};
  Json from = {{"or_ids", {{"ids", {ns_foo, sa}}}}};
  Req r = Get("/");  // plaintext: no peer certificate

  CHECK_FALSE(Allowed(Engine(Policy(kAny, from, "ALLOW")), r));
  RbacEngine deny_from = Engine(Policy(kAny, from, "DENY"));
  auto deny = deny_from.Evaluate(r.Facts());
  CHECK(deny.allowed);
  CHECK(deny.matched_policy.empty());
  // notPrincipals (not_id) does match a plaintext peer, as in Envoy.
  CHECK_FALSE(Allowed(Engine(Policy(kAny, {{"not_id", ns_foo}}, "DENY")), r));

  // istiod 1.20+ reads the same identity from istio_authn's filter state: absent without
  // mTLS, so the same outcomes.
  Json peer_ns = {
      {"filter_state", {{"key", "io.istio.peer_namespace"}, {"string_match", {{"exact", "foo"}}}}}};
  Json peer = {{"filter_state",
                {{"key", "io.istio.peer_principal"},
                 {"string_match", {{"exact", "spiffe://cluster.local/ns/foo/sa/client"}}}}}};
  Json from_state = {{"or_ids", {{"ids", {peer_ns, peer}}}}};
  CHECK_FALSE(Allowed(Engine(Policy(kAny, from_state, "ALLOW")), r));
  CHECK(Allowed(Engine(Policy(kAny, from_state, "DENY")), r));
  CHECK_FALSE(Allowed(Engine(Policy(kAny, {{"not_id", peer_ns}}, "DENY")), r));
}

TEST_CASE("rbac filters: no rules allows, shadow rules, Envoy's denial details", "[proxy][rbac]") {
  Req r = Get("/admin");
  // No `rules`: the HTTP filter allows everything (and reports no enforced engine).
  auto none = proxy::CompileHttpRbac(FromJson<HttpRbacProto>("{}"), "f");
  REQUIRE(none.has_value());
  auto res = none->Evaluate(r.Facts());
  CHECK(res.allowed());
  CHECK_FALSE(res.has_enforced);
  CHECK_FALSE(res.has_shadow);

  // rules present but empty (ALLOW, no policy): everything denied, no policy named.
  auto empty = proxy::CompileHttpRbac(FromJson<HttpRbacProto>(R"({"rules": {}})"), "f");
  REQUIRE(empty.has_value());
  res = empty->Evaluate(r.Facts());
  CHECK_FALSE(res.allowed());
  CHECK(res.DeniedDetails() == "rbac_access_denied_matched_policy[none]");

  // A DENY that matches names its policy; whitespace in the name becomes '_'.
  Json deny_rules = {{"action", "DENY"},
                     {"policies",
                      {{"deny admin\tpaths",
                        {{"permissions", {{{"url_path", {{"path", {{"prefix", "/admin"}}}}}}}},
                         {"principals", {kAny}}}}}}};
  Json cfg = {{"rules", deny_rules}};
  auto f = proxy::CompileHttpRbac(FromJson<HttpRbacProto>(cfg.dump()), "f");
  REQUIRE(f.has_value());
  res = f->Evaluate(r.Facts());
  CHECK_FALSE(res.allowed());
  CHECK(res.DeniedDetails() == "rbac_access_denied_matched_policy[deny_admin_paths]");
  CHECK(f->Evaluate(Get("/ok").Facts()).allowed());
  CHECK(proxy::kRbacDeniedStatus == 403);
  CHECK(proxy::kRbacDeniedBody == "RBAC: access denied");

  // shadow_rules (istiod's dry-run): evaluated and reported, never enforced.
  Json shadow = {{"shadow_rules", deny_rules},
                 {"shadow_rules_stat_prefix", "istio_dry_run_allow_"}};
  auto s = proxy::CompileHttpRbac(FromJson<HttpRbacProto>(shadow.dump()), "f");
  REQUIRE(s.has_value());
  CHECK(s->shadow_rules_stat_prefix == "istio_dry_run_allow_");
  res = s->Evaluate(r.Facts());
  CHECK(res.allowed());
  CHECK(res.has_shadow);
  CHECK(res.ShadowEngineResult() == "denied");
  CHECK(res.shadow.matched_policy == "deny admin\tpaths");
  res = s->Evaluate(Get("/ok").Facts());
  CHECK(res.ShadowEngineResult() == "allowed");
  CHECK(res.shadow.matched_policy.empty());

  // Both: the enforced engine decides, the shadow one only reports.
  Json both = {{"rules", Policy(kAny, kAny, "ALLOW")}, {"shadow_rules", deny_rules}};
  auto b = proxy::CompileHttpRbac(FromJson<HttpRbacProto>(both.dump()), "f");
  REQUIRE(b.has_value());
  res = b->Evaluate(r.Facts());
  CHECK(res.allowed());
  CHECK(res.ShadowEngineResult() == "denied");

  // The network filter: stat_prefix, enforcement type, rules over a bare connection.
  Json net = {{"stat_prefix", "tcp."},
              {"enforcement_type", "CONTINUOUS"},
              {"rules", Policy({{"destination_port", 8080}}, kAny, "DENY")}};
  auto n = proxy::CompileNetworkRbac(FromJson<NetworkRbacProto>(net.dump()), "f");
  REQUIRE(n.has_value());
  CHECK(n->stat_prefix == "tcp.");
  CHECK(n->enforcement == proxy::RbacFilter::Enforcement::kContinuous);
  res = n->Evaluate(Tcp().Facts());
  CHECK_FALSE(res.allowed());
  CHECK(res.DeniedDetails() == "rbac_access_denied_matched_policy[p]");
  Req other_port = Tcp();
  other_port.local = Addr("10.1.2.3", 9090);
  CHECK(n->Evaluate(other_port.Facts()).allowed());
  auto first_byte = proxy::CompileNetworkRbac(
      FromJson<NetworkRbacProto>(R"({"stat_prefix": "tcp.", "rules": {}})"), "f");
  REQUIRE(first_byte.has_value());
  CHECK(first_byte->enforcement == proxy::RbacFilter::Enforcement::kOneTimeOnFirstByte);
  CHECK_FALSE(first_byte->Evaluate(Tcp().Facts()).allowed());
}

TEST_CASE("rbac refusals: what Sluice does not implement is an error naming the field",
          "[proxy][rbac]") {
  const std::string pol = "rules.policies[ns[foo]-policy[bar]-rule[0]]";
  auto named = [](const Json& permission, const Json& principal) {
    return Json{{"policies",
                 {{"ns[foo]-policy[bar]-rule[0]",
                   {{"permissions", {permission}}, {"principals", {principal}}}}}}};
  };
  // filter_state: only istio_authn's mTLS peer identity keys (which never match, see
  // below); any other key could be set by a filter Sluice skips.
  Json fs = {{"filter_state",
              {{"key", "envoy.network.connect_authority"}, {"string_match", {{"exact", "x"}}}}}};
  CHECK(CompileError(named(kAny, {{"or_ids", {{"ids", {kAny, fs}}}}})) ==
        pol +
            ".principals[0].or_ids.ids[1].filter_state: not supported "
            "(envoy.network.connect_authority)");
  Json fs_address = {{"filter_state", {{"key", "io.istio.peer_principal"}}}};
  CHECK(CompileError(named(kAny, fs_address)) ==
        pol +
            ".principals[0].filter_state: only string_match is supported "
            "(io.istio.peer_principal)");
  Json uri_template = {
      {"uri_template",
       {{"name", "envoy.path.match.uri_template.uri_template_matcher"},
        {"typed_config", {{"@type", "type.googleapis.com/envoy.config.rbac.v3.RBAC"}}}}}};
  CHECK(CompileError(named({{"and_rules", {{"rules", {kAny, uri_template}}}}}, kAny)) ==
        pol + ".permissions[0].and_rules.rules[1].uri_template: not supported");
  Json ext = {{"matcher",
               {{"name", "envoy.rbac.matchers.upstream_ip_port"},
                {"typed_config", {{"@type", "type.googleapis.com/envoy.config.rbac.v3.RBAC"}}}}}};
  CHECK(CompileError(named({{"not_rule", ext}}, kAny)) ==
        pol +
            ".permissions[0].not_rule.matcher: matcher extensions are not supported "
            "(envoy.rbac.matchers.upstream_ip_port)");
  Json cond = named(kAny, kAny);
  cond["policies"]["ns[foo]-policy[bar]-rule[0]"]["condition"] = {
      {"const_expr", {{"bool_value", true}}}};
  CHECK(CompileError(cond) == pol + ".condition: CEL conditions are not supported");
  Json custom = {
      {"header",
       {{"name", "x"},
        {"string_match",
         {{"custom",
           {{"name", "lua"},
            {"typed_config", {{"@type", "type.googleapis.com/envoy.config.rbac.v3.RBAC"}}}}}}}}}};
  CHECK(CompileError(named(custom, kAny)) ==
        pol +
            ".permissions[0].header.string_match.custom: string matcher extensions are not "
            "supported");
  Json audit = named(kAny, kAny);
  audit["audit_logging_options"] = {
      {"audit_condition", "ON_DENY"},
      {"logger_configs",
       {{{"audit_logger",
          {{"name", "stream"},
           {"typed_config", {{"@type", "type.googleapis.com/envoy.config.rbac.v3.RBAC"}}}}}}}}};
  CHECK(CompileError(audit) ==
        "rules.audit_logging_options.logger_configs: audit loggers are not supported");

  // Invalid values Envoy rejects are refused too, by field.
  CHECK(CompileError(
            named({{"header", {{"name", "x"}, {"safe_regex_match", {{"regex", "("}}}}}}, kAny))
            .starts_with(pol + ".permissions[0].header.safe_regex_match: invalid regex"));
  CHECK(CompileError(named(kAny, {{"remote_ip", {{"address_prefix", "10.0.0.300"}}}})) ==
        pol + ".principals[0].remote_ip.address_prefix: \"10.0.0.300\" is not an IP address");
  CHECK(CompileError(named(
            {{"destination_ip", {{"address_prefix", "10.0.0.0"}, {"prefix_len", 33}}}}, kAny)) ==
        pol + ".permissions[0].destination_ip.prefix_len: 33 is longer than the IPv4 address");
  CHECK(CompileError(named({{"destination_port_range", {{"start", 90}, {"end", 80}}}}, kAny)) ==
        pol + ".permissions[0].destination_port_range: start 90 is not below end 80");
  CHECK(CompileError(named({{"destination_port", 70000}}, kAny)) ==
        pol + ".permissions[0].destination_port: 70000 is not a port");
  Json no_principals = {{"policies", {{"p", {{"permissions", {kAny}}}}}}};
  CHECK(CompileError(no_principals) ==
        "rules.policies[p].principals: empty (Envoy requires at least one)");

  // The xDS matcher variant of both filters, refused by name.
  Json m = {{"matcher_list", {{"matchers", Json::array()}}}};
  auto h = proxy::CompileHttpRbac(FromJson<HttpRbacProto>(Json{{"matcher", m}}.dump()), "rbac");
  REQUIRE_FALSE(h.has_value());
  CHECK(h.error().message == "rbac: matcher: the xDS matcher variant of RBAC is not supported");
  auto hs =
      proxy::CompileHttpRbac(FromJson<HttpRbacProto>(Json{{"shadow_matcher", m}}.dump()), "rbac");
  REQUIRE_FALSE(hs.has_value());
  CHECK(hs.error().message ==
        "rbac: shadow_matcher: the xDS matcher variant of RBAC is not supported");
  auto n = proxy::CompileNetworkRbac(
      FromJson<NetworkRbacProto>(Json{{"stat_prefix", "t"}, {"matcher", m}}.dump()), "rbac");
  REQUIRE_FALSE(n.has_value());
  CHECK(n.error().message == "rbac: matcher: the xDS matcher variant of RBAC is not supported");
  auto ns = proxy::CompileNetworkRbac(FromJson<NetworkRbacProto>("{}"), "rbac");
  REQUIRE_FALSE(ns.has_value());
  CHECK(ns.error().message == "rbac: stat_prefix: empty (Envoy requires one)");
  // An error inside the filter's rules carries the filter's prefix and the field path.
  Json bad = {{"shadow_rules", named(kAny, fs)}};
  auto hb = proxy::CompileHttpRbac(FromJson<HttpRbacProto>(bad.dump()), "listener l: rbac");
  REQUIRE_FALSE(hb.has_value());
  CHECK(hb.error().message ==
        "listener l: rbac: shadow_rules.policies[ns[foo]-policy[bar]-rule[0]].principals[0]."
        "filter_state: not supported (envoy.network.connect_authority)");
}

// ------------------------------------------------------------------ the istiod corpus

namespace {

struct Found {
  std::string file, filter, where, outcome;
  bool compiled = false;
  std::optional<proxy::RbacFilter> compiled_filter;
};

// Every envoy.filters.{http,network}.rbac filter anywhere in a dump: its typed_config
// (v3), or the v2-era `config` struct (the same fields), compiled as its filter.
void Walk(const Json& j, const std::string& file, const std::string& path,
          std::vector<Found>& out) {
  if (j.is_object()) {
    auto name = j.find("name");
    if (name != j.end() && name->is_string() &&
        (*name == "envoy.filters.http.rbac" || *name == "envoy.filters.network.rbac")) {
      const Json* body = nullptr;
      for (const char* k : {"typed_config", "typedConfig", "config"}) {
        if (j.contains(k))
          body = &j[k];
      }
      if (body) {
        Found f{file, *name, path, "", false, std::nullopt};
        Json b = *body;
        b.erase("@type");
        bool http = *name == "envoy.filters.http.rbac";
        Result<proxy::RbacFilter> r =
            http ? proxy::CompileHttpRbac(FromJson<HttpRbacProto>(b.dump()), f.filter)
                 : proxy::CompileNetworkRbac(FromJson<NetworkRbacProto>(b.dump()), f.filter);
        f.compiled = r.has_value();
        f.outcome = r ? "compiled" : "refused: " + r.error().message;
        if (r)
          f.compiled_filter = std::move(*r);
        out.push_back(std::move(f));
      }
    }
    for (auto it = j.begin(); it != j.end(); ++it)
      Walk(*it, file, path + "/" + it.key(), out);
  } else if (j.is_array()) {
    for (std::size_t i = 0; i < j.size(); ++i)
      Walk(j[i], file, path + "[" + std::to_string(i) + "]", out);
  }
}

}  // namespace

TEST_CASE("rbac istiod corpus: every rbac filter config compiled or refused with a named reason",
          "[proxy][rbac][istiod]") {
  std::vector<Found> found;
  for (const auto& entry : std::filesystem::directory_iterator(SLUICE_ISTIOD_CORPUS)) {
    if (entry.path().extension() != ".json")
      continue;
    std::ifstream in(entry.path());
    std::stringstream ss;
    ss << in.rdbuf();
    Walk(Json::parse(ss.str()), entry.path().filename().string(), "", found);
  }
  std::map<std::string, int> compiled, refused;
  for (const Found& f : found) {
    std::printf("%s %s %s: %s\n", f.file.c_str(), f.filter.c_str(), f.where.c_str(),
                f.outcome.c_str());
    (f.compiled ? compiled : refused)[f.file + " " + f.filter]++;
  }

  // 1.18 sidecar: the HTTP filters' principals read the mTLS peer identity from
  // filter_state (io.istio.peer_principal), which a plaintext peer never has: they compile
  // and their ALLOW policies match nobody; the TCP chains' network filters (an ALLOW with
  // no policy: istiod's "HTTP-only rules deny TCP") compile.
  const std::string s118 = "sidecar-1.18-productpage-listeners.json";
  CHECK(refused[s118 + " envoy.filters.http.rbac"] == 0);
  CHECK(compiled[s118 + " envoy.filters.http.rbac"] == 5);
  CHECK(compiled[s118 + " envoy.filters.network.rbac"] == 3);
  // The 2020 echo sidecar's v2-era filters (rules with no policy): 8 HTTP, 4 network.
  const std::string echo = "sidecar-2020-echo.json";
  CHECK(compiled[echo + " envoy.filters.http.rbac"] == 8);
  CHECK(compiled[echo + " envoy.filters.network.rbac"] == 4);
  CHECK(found.size() == 20);

  for (const Found& f : found) {
    INFO(f.file << " " << f.where << ": " << f.outcome);
    if (f.compiled) {
      // Every compiled corpus filter is an ALLOW with no policy, or with policies whose
      // principals need an mTLS peer: it denies every plaintext request, naming none.
      auto res = f.compiled_filter->Evaluate(Get("/").Facts());
      CHECK_FALSE(res.allowed());
      CHECK(res.DeniedDetails() == "rbac_access_denied_matched_policy[none]");
      CHECK(f.compiled_filter->Evaluate(Tcp().Facts()).allowed() == false);
    }
  }
}
