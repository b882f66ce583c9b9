// RBAC on a session (rbac.h; istiod's AuthorizationPolicy): a chain's network rbac
// filters once the chain is chosen, and the connection manager's HTTP rbac filters on each
// request before any other filter. Filters run in order and the first denial stops the
// rest, as in Envoy's filter chains. A denied request is answered 403 "RBAC: access
// denied" with Envoy's response code details (rbac_access_denied_matched_policy[NAME]); a
// denied connection is closed with those as its termination details. Both count in the
// proxy's rbac stats, per policy too.
#include <arpa/inet.h>

#include <cstring>

#include "session.h"

namespace sluice::proxy::engine {
namespace {

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t'))
    s.remove_suffix(1);
  return s;
}

// Envoy's getLastAddressFromXFF: the x-forwarded-for entry `skip` places from the right
// (0: the last), when it is an IP address.
bool XffAddress(std::string_view xff, uint32_t skip, sockaddr_storage* out) {
  while (!xff.empty()) {
    std::size_t comma = xff.rfind(',');
    std::string_view entry = Trim(comma == std::string_view::npos ? xff : xff.substr(comma + 1));
    xff = comma == std::string_view::npos ? std::string_view() : xff.substr(0, comma);
    if (skip > 0) {
      --skip;
      continue;
    }
    char buf[INET6_ADDRSTRLEN + 1];
    if (entry.empty() || entry.size() >= sizeof(buf))
      return false;
    std::memcpy(buf, entry.data(), entry.size());
    buf[entry.size()] = '\0';
    *out = {};
    auto* v4 = reinterpret_cast<sockaddr_in*>(out);
    auto* v6 = reinterpret_cast<sockaddr_in6*>(out);
    if (inet_pton(AF_INET, buf, &v4->sin_addr) == 1) {
      v4->sin_family = AF_INET;
      return true;
    }
    if (inet_pton(AF_INET6, buf, &v6->sin6_addr) == 1) {
      v6->sin6_family = AF_INET6;
      return true;
    }
    return false;
  }
  return false;
}

}  // namespace

void Session::CountRbac(const RbacFilterResult& r) {
  ProxyStats& st = w->stats();
  if (r.has_shadow) {
    (r.shadow.allowed ? st.rbac_shadow_allowed : st.rbac_shadow_denied)
        .fetch_add(1, std::memory_order_relaxed);
    if (!r.shadow.matched_policy.empty())
      st.rbac_policies.Add(r.shadow.matched_policy, r.shadow.allowed, /*shadow=*/true);
  }
  if (r.has_enforced) {
    (r.enforced.allowed ? st.rbac_allowed : st.rbac_denied).fetch_add(1, std::memory_order_relaxed);
    if (!r.enforced.matched_policy.empty())
      st.rbac_policies.Add(r.enforced.matched_policy, r.enforced.allowed, /*shadow=*/false);
  }
}

bool Session::NetworkRbacDenied() {
  RbacRequest rq;
  rq.local = &local_ss;
  rq.direct_remote = &peer_ss;
  rq.requested_server_name = sni;
  for (const NetworkRbac& f : chain->network_rbac) {
    RbacFilterResult r = f.filter.Evaluate(rq);
    CountRbac(r);
    if (!r.allowed()) {
      rbac_details = r.DeniedDetails();
      termination = rbac_details.c_str();
      return true;
    }
  }
  return false;
}

bool Session::HttpRbacDenied() {
  const HttpSettings& h = chain->http;
  // What the connection manager adds before the filters run: a generated x-request-id
  // and x-forwarded-proto (router.cc sends the same upstream).
  http::Header added[2];
  std::size_t n = 0;
  if (generated_id)
    added[n++] = {"x-request-id", request_id, http::HeaderId::kXRequestId};
  bool has_xfp = false;
  req.Get(http::HeaderId::kXForwardedProto, &has_xfp);
  if (!has_xfp)
    added[n++] = {"x-forwarded-proto", "http", http::HeaderId::kXForwardedProto};
  // remote_ip: Envoy's downstream remote address after x-forwarded-for.
  sockaddr_storage remote{};
  bool has_remote = false;
  bool has_xff = false;
  std::string_view xff = req.Get(http::HeaderId::kXForwardedFor, &has_xff);
  if (!h.use_remote_address) {
    has_remote = has_xff && XffAddress(xff, h.xff_num_trusted_hops, &remote);
  } else if (h.xff_num_trusted_hops > 0) {
    has_remote = has_xff && XffAddress(xff, h.xff_num_trusted_hops - 1, &remote);
  }
  RbacRequest rq;
  rq.http = &req;
  rq.added_headers = std::span<const http::Header>(added, n);
  rq.local = &local_ss;
  rq.direct_remote = &peer_ss;
  rq.remote = has_remote ? &remote : nullptr;
  rq.requested_server_name = sni;
  for (const HttpRbac& f : h.rbac) {
    RbacFilterResult r = f.filter.Evaluate(rq);
    CountRbac(r);
    if (!r.allowed()) {
      rbac_details = r.DeniedDetails();
      Local(kRbacDeniedStatus, kRbacDeniedBody, 0, rbac_details.c_str());
      return true;
    }
  }
  return false;
}

}  // namespace sluice::proxy::engine
