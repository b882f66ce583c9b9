// RBAC enforced by the running proxy (issue 17), with real sockets on loopback: the HTTP
// filter answers a denied request 403 "RBAC: access denied" before any upstream sees it
// and logs Envoy's details naming the policy; an ALLOW on source addresses lets one
// client address in and keeps another out (127.0.0.2 is as much loopback as 127.0.0.1);
// remote_ip follows x-forwarded-for as the connection manager is set; the network filter
// closes a denied TCP connection before any upstream connection; the counters move per
// policy; and what Sluice cannot enforce refuses its listener instead of serving it.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include <catch2/catch.hpp>

#include "harness.h"
#include "test_upstream.h"

using namespace sluice::testing;

namespace {

Json RbacFilter(const Json& rules) {
  return {{"name", "envoy.filters.http.rbac"},
          {"typed_config",
           {{"@type", "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"},
            {"rules", rules}}}};
}

Json NetworkRbac(const Json& rules) {
  return {{"name", "envoy.filters.network.rbac"},
          {"typed_config",
           {{"@type", "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"},
            {"stat_prefix", "tcp."},
            {"rules", rules}}}};
}

// One istiod-named policy.
Json Rules(const std::string& action, const std::string& name, const Json& permission,
           const Json& principal) {
  return {
      {"action", action},
      {"policies",
       {{name,
         {{"permissions", Json::array({permission})}, {"principals", Json::array({principal})}}}}}};
}

const Json kAny = {{"any", true}};

Json SourceIp(const std::string& cidr, int len, const std::string& kind = "direct_remote_ip") {
  return {{kind, {{"address_prefix", cidr}, {"prefix_len", len}}}};
}

Json Doc(const Json& listener, uint16_t upstream) {
  return {{"listeners", Json::array({listener})},
          {"clusters", Json::array({StaticCluster("app", {upstream})})}};
}

Json HttpDoc(const Json& filters, uint16_t upstream) {
  Json rc = RouteConfig(
      "r", Json::array(
               {{{"name", "all"}, {"match", {{"prefix", "/"}}}, {"route", {{"cluster", "app"}}}}}));
  return Doc(HttpListener("http", rc, true, filters), upstream);
}

Resp GetFrom(const char* source, uint16_t port, const std::string& path,
             const std::string& extra = "") {
  int fd = Connect(port, source);
  if (fd < 0)
    return {};
  std::string raw =
      "GET " + path + " HTTP/1.1\r\nhost: app\r\n" + extra + "connection: close\r\n\r\n";
  send(fd, raw.data(), raw.size(), MSG_NOSIGNAL);
  std::string buf;
  auto v = ReadResponses(fd, buf, 1, 3000);
  close(fd);
  return v.empty() ? Resp{} : v[0];
}

uint64_t PolicyCount(const RunningProxy& p, const std::string& policy, bool allowed) {
  for (const auto& c : p.proxy->stats().rbac_policies.Snapshot()) {
    if (c.policy == policy)
      return allowed ? c.allowed : c.denied;
  }
  return 0;
}

// Reads until the peer closes (true) or `ms` pass with the connection open (false).
bool ClosedWithin(int fd, int ms, std::string* got) {
  timeval tv{ms / 1000, (ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  char buf[256];
  while (true) {
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n > 0) {
      got->append(buf, static_cast<std::size_t>(n));
      continue;
    }
    return n == 0 || errno == ECONNRESET;
  }
}

}  // namespace

TEST_CASE("rbac enforced: a DENY on a path answers 403 before the upstream, other paths pass",
          "[proxy][rbac]") {
  TestUpstream up({.name = "app"});
  const std::string policy = "ns[default]-policy[deny-admin]-rule[0]";
  Json deny_admin = Rules("DENY", policy, {{"url_path", {{"path", {{"prefix", "/admin"}}}}}}, kAny);
  auto p = StartProxy(HttpDoc(Json::array({RbacFilter(deny_admin)}), up.port()));
  REQUIRE(p->error.empty());

  Resp denied = Get(p->Port(), "app", "/admin/users");
  CHECK(denied.status == 403);
  CHECK(denied.body == "RBAC: access denied");
  CHECK(up.count() == 0);
  Resp ok = Get(p->Port(), "app", "/productpage");
  CHECK(ok.status == 200);
  CHECK(ok.Header("x-upstream") == "app");
  CHECK(up.count() == 1);
  // The query is not part of url_path: /admin?x is still /admin.
  CHECK(Get(p->Port(), "app", "/admin?debug=1").status == 403);
  CHECK(up.count() == 1);

  auto log = p->LogLines(3);
  REQUIRE(log.size() == 3);
  CHECK(log[0].find("\"GET /admin/users HTTP/1.1\" 403 - rbac_access_denied_matched_policy[" +
                    policy + "]") != std::string::npos);
  CHECK(log[1].find("\"GET /productpage HTTP/1.1\" 200 - via_upstream") != std::string::npos);
  const auto& st = p->proxy->stats();
  CHECK(st.rbac_denied.load() == 2);
  CHECK(st.rbac_allowed.load() == 1);
  CHECK(PolicyCount(*p, policy, false) == 2);
  // A DENY that matched nothing allowed without naming a policy.
  CHECK(PolicyCount(*p, policy, true) == 0);
}

TEST_CASE("rbac enforced: an ALLOW on ipBlocks lets one client address in and keeps another out",
          "[proxy][rbac]") {
  TestUpstream up({.name = "app"});
  const std::string policy = "ns[default]-policy[from-two]-rule[0]";
  Json allow = Rules("ALLOW", policy, kAny,
                     {{"or_ids", {{"ids", Json::array({SourceIp("127.0.0.2", 32)})}}}});
  auto p = StartProxy(HttpDoc(Json::array({RbacFilter(allow)}), up.port()));
  REQUIRE(p->error.empty());

  Resp in = GetFrom("127.0.0.2", p->Port(), "/");
  CHECK(in.status == 200);
  Resp out = GetFrom("127.0.0.3", p->Port(), "/");
  CHECK(out.status == 403);
  CHECK(out.body == "RBAC: access denied");
  CHECK(up.count() == 1);
  auto log = p->LogLines(2);
  REQUIRE(log.size() == 2);
  // An ALLOW that matched nothing names no policy.
  CHECK(log[1].find("403 - rbac_access_denied_matched_policy[none]") != std::string::npos);
  CHECK(PolicyCount(*p, policy, true) == 1);
}

TEST_CASE("rbac enforced: remote_ip is the client x-forwarded-for names, as the HCM is set",
          "[proxy][rbac]") {
  TestUpstream up({.name = "app"});
  Json deny = Rules("DENY", "deny-remote", kAny, SourceIp("10.1.2.3", 32, "remote_ip"));
  // use_remote_address false (istiod's sidecar inbound): the last XFF entry is the client.
  auto p = StartProxy(HttpDoc(Json::array({RbacFilter(deny)}), up.port()));
  REQUIRE(p->error.empty());
  CHECK(Get(p->Port(), "app", "/", "x-forwarded-for: 192.0.2.1, 10.1.2.3\r\n").status == 403);
  CHECK(Get(p->Port(), "app", "/", "x-forwarded-for: 10.1.2.3, 192.0.2.1\r\n").status == 200);
  CHECK(Get(p->Port(), "app", "/").status == 200);  // no XFF: the peer, 127.0.0.1
  // direct_remote_ip never looks at XFF.
  Json deny_direct = Rules("DENY", "deny-direct", kAny, SourceIp("10.1.2.3", 32));
  auto d = StartProxy(HttpDoc(Json::array({RbacFilter(deny_direct)}), up.port()));
  REQUIRE(d->error.empty());
  CHECK(Get(d->Port(), "app", "/", "x-forwarded-for: 10.1.2.3\r\n").status == 200);
  // use_remote_address true without trusted hops: the peer, whatever XFF says.
  Json doc = HttpDoc(Json::array({RbacFilter(deny)}), up.port());
  doc["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["use_remote_address"] =
      true;
  auto r = StartProxy(doc);
  REQUIRE(r->error.empty());
  CHECK(Get(r->Port(), "app", "/", "x-forwarded-for: 10.1.2.3\r\n").status == 200);
}

TEST_CASE("rbac enforced: the network filter closes a denied TCP connection before connecting",
          "[proxy][rbac]") {
  TestUpstream up({.name = "app"});
  const std::string policy = "ns[default]-policy[deny-three]-rule[0]";
  Json tcp = {
      {"@type", "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"},
      {"stat_prefix", "tcp"},
      {"cluster", "app"},
      {"access_log", Json::array({{{"name", "envoy.access_loggers.file"},
                                   {"typed_config",
                                    {{"@type",
                                      "type.googleapis.com/"
                                      "envoy.extensions.access_loggers.file.v3.FileAccessLog"},
                                     {"path", "/dev/stdout"}}}}})}};
  Json chain = {
      {"filters",
       Json::array({NetworkRbac(Rules("DENY", policy, kAny, SourceIp("127.0.0.3", 32))),
                    {{"name", "envoy.filters.network.tcp_proxy"}, {"typed_config", tcp}}})}};
  auto p = StartProxy(Doc(Listener("http", Json::array({chain})), up.port()));
  REQUIRE(p->error.empty());

  int denied = Connect(p->Port(), "127.0.0.3");
  REQUIRE(denied >= 0);
  std::string got;
  CHECK(ClosedWithin(denied, 2000, &got));
  CHECK(got.empty());
  close(denied);
  CHECK(up.connections() == 0);

  Resp ok = GetFrom("127.0.0.2", p->Port(), "/through");
  CHECK(ok.status == 200);
  CHECK(up.connections() == 1);
  auto log = p->LogLines(2);
  REQUIRE(log.size() >= 1);
  CHECK(log[0].find("rbac_access_denied_matched_policy[" + policy + "]") != std::string::npos);
  CHECK(p->proxy->stats().rbac_denied.load() == 1);
  CHECK(PolicyCount(*p, policy, false) == 1);
}

TEST_CASE("rbac enforced: what Sluice cannot enforce refuses the listener, never serves it",
          "[proxy][rbac]") {
  TestUpstream up({.name = "app"});
  auto refused = [&](const Json& doc) -> std::string {
    auto cfg = CompileJson(doc);
    REQUIRE(cfg.has_value());
    for (const auto& r : (*cfg)->refused) {
      if (r.kind == "listener" && r.name == "http")
        return r.reason;
    }
    return "";
  };
  // ext_authz (an external authorizer Sluice does not call).
  Json ext_authz = {
      {"name", "envoy.filters.http.ext_authz"},
      {"typed_config",
       {{"@type", "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"},
        {"stat_prefix", "x"}}}};
  CHECK(
      refused(HttpDoc(Json::array({ext_authz}), up.port())).find("envoy.filters.http.ext_authz") !=
      std::string::npos);
  // A policy field the engine does not implement.
  Json cel = {{"policies",
               {{"p",
                 {{"permissions", Json::array({kAny})},
                  {"principals", Json::array({kAny})},
                  {"condition", {{"const_expr", {{"bool_value", true}}}}}}}}}};
  CHECK(refused(HttpDoc(Json::array({RbacFilter(cel)}), up.port())).find("condition") !=
        std::string::npos);
  // An rbac filter after the fault filter (istiod never orders them so).
  Json fault = {
      {"name", "envoy.filters.http.fault"},
      {"typed_config",
       {{"@type", "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}}}};
  CHECK(
      refused(HttpDoc(Json::array({fault, RbacFilter(Rules("DENY", "d", kAny, kAny))}), up.port()))
          .find("after the fault or CORS filter") != std::string::npos);
  // A per-route override.
  Json doc = HttpDoc(Json::array({RbacFilter(Rules("DENY", "d", kAny, kAny))}), up.port());
  doc["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
     ["virtual_hosts"][0]["routes"][0]["typed_per_filter_config"] = {
         {"envoy.filters.http.rbac",
          {{"@type", "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"}}}};
  CHECK(refused(doc).find("per-route RBAC") != std::string::npos);
  // The refused listener is not served at all.
  auto p = StartProxy(HttpDoc(Json::array({ext_authz}), up.port()));
  REQUIRE(p->error.empty());
  CHECK(p->proxy->Port("http") == 0);
}
