// The request path of a session (Envoy's router): a complete request is matched to a
// route (or answered locally: no route, a direct response, a redirect, a refused upgrade,
// an injected fault), its cluster chosen (weighted clusters), mirrored, and sent to an
// endpoint the load balancer picks (lb.h), on a pooled connection, rewritten as the
// route says. An attempt that fails before its response began is retried as retry.cc
// decides. The response comes back through session_response.cc.
#include <algorithm>
#include <iterator>
#include <optional>

#include <fmt/format.h>
#include <re2/re2.h>

#include "header_rewrite.h"
#include "session.h"
#include "shadow_writer.h"
#include "sluice/proxy/retry.h"
#include "upstream_pool.h"

namespace sluice::proxy::engine {
namespace {

// Envoy's answer to a request a circuit breaker turned away carries this header.
constexpr std::string_view kOverloaded = "x-envoy-overloaded: true";

// A TE value that lists the "trailers" token ("trailers", "trailers, deflate;q=0.5").
bool HasTrailersToken(std::string_view te) {
  while (!te.empty()) {
    std::size_t comma = te.find(',');
    std::string_view t = te.substr(0, comma);
    while (!t.empty() && (t.front() == ' ' || t.front() == '\t'))
      t.remove_prefix(1);
    t = t.substr(0, t.find(';'));
    while (!t.empty() && (t.back() == ' ' || t.back() == '\t'))
      t.remove_suffix(1);
    if (http::EqualsIgnoreCase(t, "trailers"))
      return true;
    if (comma == std::string_view::npos)
      break;
    te.remove_prefix(comma + 1);
  }
  return false;
}

}  // namespace

void Session::Dispatch() {
  w->stats().requests.fetch_add(1, std::memory_order_relaxed);
  // Stop reading while the request runs: the head's views into `in` stay valid and
  // pipelined requests wait in the buffer. RDHUP still tells us if the client leaves.
  phase = Phase::kUpstream;
  request_complete = !body_streaming;  // else StreamBody completes it
  response_sent = false;
  ArmStreamTimer();
  if (!req.keep_alive)
    close_after = true;
  // Request id: keep the client's, else make a UUIDv4.
  bool has_id = false;
  req.Get(http::HeaderId::kXRequestId, &has_id);
  generated_id = !has_id;
  if (generated_id) {
    uint64_t a = w->Rand(), b = w->Rand();
    FormatUuid4(a, b, request_id);
  }
  cors = nullptr;
  grpc = grpc::IsGrpcRequest(req.path, req.Get("content-type"));
  timeouts = {};
  complete_ms = w->now();
  has_grpc_head_status = has_grpc_trailer_status = false;
  const RouteTable* rt = chain->http.routes.get();
  vh = rt ? rt->FindVirtualHost(req.host, chain->http.StripPort()) : nullptr;
  route = vh ? MatchRoute(*vh, req) : nullptr;
  cluster = nullptr;
  wc = nullptr;
  up_ep = nullptr;
  attempt = 0;
  retries_done = 0;
  service_time_ms = -1;
  response_started = false;
  std::strcpy(up_host, "-");
  std::strcpy(up_local, "-");
  strip_h2c = false;
  if (vh && vh->require_tls != VirtualHost::TlsRequirement::kNone && !chain->tls) {
    // Envoy's SSL redirect: before any route (and its filters), the same host and path.
    bool internal = false;
    if (vh->require_tls == VirtualHost::TlsRequirement::kExternalOnly) {
      bool found = false;
      std::string_view v = req.Get("x-envoy-internal", &found);
      internal = found && v == "true";
    }
    if (!internal) {
      fmt::memory_buffer loc;
      fmt::format_to(std::back_inserter(loc), "location: https://{}{}", req.host, req.path);
      if (!req.query.empty())
        fmt::format_to(std::back_inserter(loc), "?{}", req.query);
      route = nullptr;
      Local(301, "", 0, "direct_response", std::string_view(loc.data(), loc.size()));
      return;
    }
  }
  if (!req.upgrade.empty()) {
    if (http::EqualsIgnoreCase(req.upgrade, "h2c")) {
      // As Envoy's HTTP/1 codec: an h2c upgrade is not taken; the request is served as
      // the HTTP/1.1 request it also is, without its upgrade headers.
      req.upgrade = {};
      strip_h2c = true;
    } else if (!UpgradeAllowed(
                   req.upgrade, chain->http,
                   route && route->kind == Route::Kind::kRoute ? &route->action : nullptr)) {
      // Only the upgrade types configured on the connection manager or the route; any
      // other would open a tunnel whose requests no route ever sees.
      w->stats().upgrades_refused.fetch_add(1, std::memory_order_relaxed);
      Local(403, "", 0, "upgrade_failed");
      return;
    }
  }
  // The connection manager's filters run before the router: RBAC first (istiod's order).
  if (!chain->http.rbac.empty() && HttpRbacDenied())
    return;
  if (!route) {
    Local(404, "", kFlagNR, "route_not_found");
    return;
  }
  if (route->kind == Route::Kind::kDirectResponse) {
    Local(route->direct_status, route->direct_body, 0, "direct_response");
    return;
  }
  if (route->kind == Route::Kind::kRedirect) {
    const RedirectAction& r = route->redirect;
    fmt::memory_buffer loc;
    std::string_view scheme =
        r.scheme.empty() ? std::string_view("http") : std::string_view(r.scheme);
    std::string_view host = r.host.empty() ? req.host : std::string_view(r.host);
    if (r.port != 0 || !r.host.empty()) {
      std::size_t colon = host.rfind(':');
      if (colon != std::string_view::npos && host.find(']') == std::string_view::npos) {
        host = host.substr(0, colon);
      }
    }
    fmt::format_to(std::back_inserter(loc), "location: {}://{}", scheme, host);
    if (r.port != 0)
      fmt::format_to(std::back_inserter(loc), ":{}", r.port);
    if (!r.path.empty()) {
      fmt::format_to(std::back_inserter(loc), "{}", r.path);
    } else if (!r.prefix_rewrite.empty() && route->path_kind != Route::PathKind::kRegex) {
      std::string_view rest = req.path.substr(std::min(req.path.size(), route->path.size()));
      fmt::format_to(std::back_inserter(loc), "{}{}", r.prefix_rewrite, rest);
    } else {
      fmt::format_to(std::back_inserter(loc), "{}", req.path);
    }
    if (!r.strip_query && !req.query.empty())
      fmt::format_to(std::back_inserter(loc), "?{}", req.query);
    Local(r.status, "", 0, "direct_response", std::string_view(loc.data(), loc.size()));
    return;
  }
  // The HCM's filters in their order: CORS before the fault filter only when configured
  // so (istiod puts it after: an aborted request gets no CORS headers).
  if (chain->http.cors_before_fault && CorsRequest())
    return;
  const FaultPolicy& fault = route->fault ? *route->fault : chain->http.fault;
  if (fault.active()) {
    if (fault.abort_per_million > 0 && w->Roll(fault.abort_per_million)) {
      Local(fault.abort_status, "fault filter abort", kFlagFI, "fault_filter_abort");
      return;
    }
    if (fault.delay_per_million > 0 && w->Roll(fault.delay_per_million)) {
      flags |= kFlagDI;
      phase = Phase::kDelay;
      w->Arm(wait_timer, fault.delay.count());
      return;
    }
  }
  ContinueAfterFault();
}

void Session::ContinueAfterFault() {
  if (chain->http.cors && !chain->http.cors_before_fault && CorsRequest())
    return;
  const RouteAction& a = route->action;
  if (!a.weighted.empty()) {
    uint64_t r = a.total_weight ? w->Rand() % a.total_weight : 0;
    wc = &PickWeightedCluster(a.weighted, r);
    cluster = snap->cfg->ClusterAt(wc->cluster);
  } else {
    cluster = snap->cfg->ClusterAt(a.cluster);
  }
  if (!cluster) {
    Local(503, "", kFlagNC, "cluster_not_found");
    return;
  }
  if (cluster->active_requests.load(std::memory_order_relaxed) >= cluster->limits.max_requests) {
    w->stats().overflow.fetch_add(1, std::memory_order_relaxed);
    cluster->overflow_total.fetch_add(1, std::memory_order_relaxed);
    Local(503, "upstream connect error or disconnect/reset before headers. reset reason: overflow",
          kFlagUO, "upstream_reset_before_response_started{overflow}", kOverloaded);
    return;
  }
  cluster->active_requests.fetch_add(1, std::memory_order_relaxed);
  counted_request = true;
  // The route's timeouts for this request (Envoy's router and, for max_stream_duration,
  // its connection manager): a gRPC request's grpc-timeout can set them.
  bool has_grpc_timeout = false;
  std::string_view grpc_timeout = req.Get("grpc-timeout", &has_grpc_timeout);
  timeouts = grpc::RouteTimeouts(
      a, grpc, has_grpc_timeout ? std::optional<std::string_view>(grpc_timeout) : std::nullopt,
      chain->http.max_stream_duration);
  // The route timeout runs from the end of the request (a streamed one's: StreamBody).
  if (timeouts.route.count() > 0 && request_complete)
    w->Arm(route_timer, timeouts.route.count());
  if (timeouts.stream_duration)
    ArmStreamTimer();
  if (!request_complete)
    mirrors_deferred = !a.mirrors.empty();  // a mirror gets the whole request
  else
    SendMirrors();
  StartAttempt();
}

void Session::SendMirrors() {
  for (const MirrorPolicy& m : route->action.mirrors) {
    if (w->Roll(m.per_million))
      w->shadow().SendMirror(m, *this);
  }
}

// Envoy's CORS filter (envoy.filters.http.cors) on a request: nothing without a policy,
// while disabled, or without an Origin; a preflight (OPTIONS with Origin and
// Access-Control-Request-Method) is answered here with 200 — unless its origin is not
// allowed and the policy forwards such preflights; any other request with an allowed
// origin is latched so its response gets the CORS headers. No allocation: the origin is a
// view into the request head, which stays in `in` until the request is finished.
bool Session::CorsRequest() {
  const CorsPolicy* p = route->cors.get();
  if (!chain->http.cors || !p)
    return false;
  if (p->enabled_per_million < 1000000 && !w->Roll(p->enabled_per_million))
    return false;  // disabled for this request (shadow mode changes nothing: see CorsPolicy)
  std::string_view origin = req.Get("origin");
  if (origin.empty())
    return false;
  const bool allowed = p->OriginAllowed(origin);
  if (allowed) {
    cors = p;
    cors_origin = origin;
  }
  if (req.method != "OPTIONS")
    return false;
  std::string_view request_method = req.Get("access-control-request-method");
  if (request_method.empty())
    return false;
  if (!allowed && p->forward_not_matching_preflights)
    return false;
  // The preflight's answer: only the CORS headers (Envoy's local reply from the filter;
  // the route's response header mutations do not apply).
  fmt::memory_buffer h;
  auto line = [&h](std::string_view name, std::string_view value) {
    if (h.size() > 0)
      h.append(std::string_view("\r\n"));
    h.append(name);
    h.append(std::string_view(": "));
    h.append(value);
  };
  if (allowed)
    line("access-control-allow-origin", origin);
  if (p->allow_credentials)
    line("access-control-allow-credentials", "true");
  if (!p->allow_methods.empty())
    line("access-control-allow-methods",
         p->allow_methods == "*" ? request_method : std::string_view(p->allow_methods));
  if (!p->allow_headers.empty()) {
    line("access-control-allow-headers", p->allow_headers == "*"
                                             ? req.Get("access-control-request-headers")
                                             : std::string_view(p->allow_headers));
  }
  if (!p->max_age.empty())
    line("access-control-max-age", p->max_age);
  if (p->allow_private_network_access &&
      req.Get("access-control-request-private-network") == "true") {
    line("access-control-allow-private-network", "true");
  }
  cors = nullptr;  // the answer carries its own headers
  Local(200, "", 0, "cors_response", std::string_view(h.data(), h.size()),
        /*route_headers=*/false);
  return true;
}

void Session::StartAttempt() {
  ++attempt;
  if (retry_counted) {
    cluster->active_retries.fetch_sub(1, std::memory_order_relaxed);
    retry_counted = false;
  }
  phase = Phase::kUpstream;
  std::optional<LbHash> hash;
  if (cluster->lb == LbPolicy::kRingHash || cluster->lb == LbPolicy::kMaglev)
    hash = RequestHash(route->action.hash_policies, req, source_hash);
  Endpoint* ep = cluster->original_dst
                     ? (has_orig_dst ? w->upstreams().OriginalDstEndpoint(orig_dst) : nullptr)
                     : w->upstreams().PickEndpoint(*cluster, hash);
  if (!ep) {
    Local(503, "no healthy upstream", kFlagUH, "no_healthy_upstream");
    return;
  }
  bool overflow = false;
  // HTTP/2 upstream when the cluster says so (or uses the downstream's protocol and the
  // request came on HTTP/2); an upgrade always goes HTTP/1.1.
  const bool http2 = cluster->Http2For(downstream_h2) && req.upgrade.empty();
  UpstreamConn* u = w->upstreams().GetUpstream(snap, cluster, ep, &overflow, false, http2);
  if (!u && overflow) {
    if (cluster->pending_requests.load(std::memory_order_relaxed) >=
        cluster->limits.max_pending_requests) {
      w->stats().overflow.fetch_add(1, std::memory_order_relaxed);
      cluster->overflow_total.fetch_add(1, std::memory_order_relaxed);
      Local(503,
            "upstream connect error or disconnect/reset before headers. reset reason: overflow",
            kFlagUO, "upstream_reset_before_response_started{overflow}", kOverloaded);
      return;
    }
    cluster->pending_requests.fetch_add(1, std::memory_order_relaxed);
    phase = Phase::kPending;
    w->upstreams().AddPending(this);
    return;
  }
  up_ep = ep;
  CopyStr(up_host, ep->address);
  if (!u) {
    OnUpFailure(nullptr, UpFailure::kConnect);
    return;
  }
  up = u;
  u->owner = this;
  u->head_request = req.method == "HEAD";
  u->upgrade_request = !req.upgrade.empty();
  ep->active_requests.fetch_add(1, std::memory_order_relaxed);
  SerializeRequest(u->out, false);
  body_sent = body_scanned;  // a streamed body's rest follows as it comes (StreamBody)
  if (attempt == 1)
    service_time_ms = w->now();
  if (timeouts.per_try.count() > 0 && request_complete)
    w->Arm(try_timer, timeouts.per_try.count());
  if (!u->connecting) {
    CopyStr(up_local, u->local_addr);
    u->Flush();
  }
}

void Session::StreamBody() {
  const uint64_t g = gen;
  const int scanned = ScanBody();
  if (scanned < 0)
    return;
  bytes_rx = body_scanned;
  if (up && body_sent < body_scanned) {
    up->out.Append(in.Data().substr(req.head_len + body_sent, body_scanned - body_sent));
    body_sent = body_scanned;
    if (!up->connecting) {
      up->Flush();  // may fail the attempt (retried, or answered)
      if (g != gen)
        return;
    }
  }
  if (scanned == 0)
    return;
  // Complete: what Envoy starts at the end of the request (onRequestComplete).
  request_complete = true;
  ArmStreamTimer();
  if (!route || !cluster)
    return;  // not routed to a cluster yet (a fault's delay): ContinueAfterFault does it
  if (timeouts.route.count() > 0)
    w->Arm(route_timer, timeouts.route.count());
  if (up && !response_started && timeouts.per_try.count() > 0)
    w->Arm(try_timer, timeouts.per_try.count());
  if (mirrors_deferred) {
    mirrors_deferred = false;
    SendMirrors();
  }
}

void Session::SerializeRequest(Buffer& dst, bool shadow) {
  const RouteAction& a = route->action;
  dst.Append(req.method);
  dst.Append(" ");
  // Path, rewritten as the route says; the query string is kept.
  if (a.prefix_rewrite && route->path_kind != Route::PathKind::kRegex) {
    std::size_t matched = std::min(req.path.size(), route->path.size());
    std::string_view rest = req.path.substr(matched);
    // Envoy: rewriting "/prefix" to "/" with rest "/x" must not produce "//x".
    if (a.prefix_rewrite->ends_with('/') && rest.starts_with('/'))
      rest.remove_prefix(1);
    dst.Append(*a.prefix_rewrite);
    dst.Append(rest);
    if (!req.query.empty() || req.target.find('?') != std::string_view::npos) {
      dst.Append("?");
      dst.Append(req.query);
    }
  } else if (a.regex_rewrite) {
    std::string p(req.path);
    RE2::GlobalReplace(&p, *a.regex_rewrite, a.regex_substitution);
    dst.Append(p);
    if (req.target.find('?') != std::string_view::npos) {
      dst.Append("?");
      dst.Append(req.query);
    }
  } else {
    dst.Append(req.target);
  }
  dst.Append(" HTTP/1.1\r\n");

  const HeaderMutations* levels[4] = {wc ? &wc->request_headers : nullptr, &route->request_headers,
                                      &vh->request_headers, &chain->http.routes->request_headers};
  std::string_view host_rewrite = wc && !wc->host_rewrite.empty()
                                      ? std::string_view(wc->host_rewrite)
                                      : std::string_view(a.host_rewrite);
  std::string_view host = host_rewrite.empty() ? req.host : host_rewrite;
  dst.Append("host: ");
  if (shadow)
    ShadowHost(host, dst);
  else
    dst.Append(host);
  dst.Append("\r\n");
  const bool mutated = AnyMutations(levels, 4);
  bool xff = false, xfp = false;
  // The grpc-timeout upstream, when the route's timeouts rewrite it (Envoy's router: each
  // attempt gets the time it has left).
  const std::optional<Millis> grpc_timeout =
      grpc ? grpc::UpstreamGrpcTimeout(timeouts, Millis{shadow ? 0 : w->now() - complete_ms})
           : std::nullopt;
  LineRun unchanged(dst);
  for (std::size_t i = 0; i < req.num_headers; ++i) {
    const http::Header& h = req.headers[i];
    if (h.id == http::HeaderId::kTe && HasTrailersToken(h.value)) {
      // The one TE Envoy passes on: "trailers" (gRPC servers require it).
      unchanged.Flush();
      dst.Append("te: trailers\r\n");
      continue;
    }
    if (IsHopByHop(h.id) || h.id == http::HeaderId::kHost ||
        h.id == http::HeaderId::kXEnvoyAttemptCount || (mutated && Replaced(levels, 4, h.name)) ||
        (grpc_timeout && http::EqualsIgnoreCase(h.name, "grpc-timeout")) ||
        (strip_h2c && http::EqualsIgnoreCase(h.name, "http2-settings"))) {
      unchanged.Flush();
      continue;
    }
    if (h.id == http::HeaderId::kXForwardedFor) {
      unchanged.Flush();
      xff = true;
      dst.Append(h.name);
      dst.Append(": ");
      dst.Append(h.value);
      dst.Append(",");
      dst.Append(peer_ip);
      dst.Append("\r\n");
      continue;
    }
    xfp |= h.id == http::HeaderId::kXForwardedProto;
    unchanged.Add(h);
  }
  unchanged.Flush();
  if (!xff) {
    dst.Append("x-forwarded-for: ");
    dst.Append(peer_ip);
    dst.Append("\r\n");
  }
  if (!xfp)
    dst.Append(chain->tls ? "x-forwarded-proto: https\r\n" : "x-forwarded-proto: http\r\n");
  if (grpc_timeout) {
    dst.Append("grpc-timeout: ");
    dst.Append(grpc::FormatGrpcTimeout(*grpc_timeout));
    dst.Append("\r\n");
  }
  if (generated_id) {
    dst.Append("x-request-id: ");
    dst.Append(request_id);
    dst.Append("\r\n");
  }
  dst.Append("x-envoy-attempt-count: ");
  AppendNum(dst, shadow ? 1 : attempt);
  dst.Append("\r\n");
  if (!req.upgrade.empty()) {
    dst.Append("connection: upgrade\r\nupgrade: ");
    dst.Append(req.upgrade);
    dst.Append("\r\n");
  }
  EmitAdds(dst, levels, 4, req);
  dst.Append("\r\n");
  if (req.chunked || req.content_length > 0)
    dst.Append(in.Data().substr(req.head_len, body_scanned));
}

void Session::DropUpstream(bool reuse) {
  w->Cancel(try_timer);
  if (!up)
    return;
  UpstreamConn* u = up;
  up = nullptr;
  if (up_ep)
    up_ep->active_requests.fetch_sub(1, std::memory_order_relaxed);
  w->upstreams().ReleaseUpstream(u, reuse);
}

void Session::OnUpConnected(UpstreamConn* u) {
  CopyStr(up_local, u->local_addr);
}

void Session::OnUpFailure(UpstreamConn* u, UpFailure f) {
  (void)u;
  bool tunnel = phase == Phase::kTunnel;
  if (tunnel) {
    // Upstream EOF or error in a TCP tunnel / upgraded connection.
    up_eof = true;
    DropUpstream(false);
    if (!(flags & kFlagUF) && f == UpFailure::kConnect)
      flags |= kFlagUF;
    if (f == UpFailure::kConnect) {
      Abort(0);
      return;
    }
    if (out.empty()) {
      w->loop().ShutdownWrite(fd);
      close_after = true;
    }
    phase = Phase::kClosing;
    if (out.empty())
      Close();
    return;
  }
  w->upstreams().OnEndpointResult(*cluster, up_ep, true);
  DropUpstream(false);
  if (response_started && f == UpFailure::kProtocol && !response_sent) {
    // The upstream broke its framing before any of its response left here: its head is
    // still queued, so the client gets a 502 rather than a bare close. Not retried: the
    // upstream did answer.
    bytes_tx -= out.size() - resp_head_at;
    out.Truncate(resp_head_at);
    response_started = false;
    Local(502, "upstream protocol error", kFlagUPE,
          "upstream_reset_after_response_started{protocol_error}");
    return;
  }
  if (response_started) {
    flags |= f == UpFailure::kProtocol ? kFlagUPE : kFlagUC;
    Abort(0);
    return;
  }
  if (RetriableFailure(route->action.retry, f) && ScheduleRetry())
    return;
  if (f == UpFailure::kConnect) {
    Local(503,
          "upstream connect error or disconnect/reset before headers. reset reason: connection "
          "failure",
          kFlagUF, "upstream_reset_before_response_started{connection_failure}");
  } else if (f == UpFailure::kRefused) {
    Local(503,
          "upstream connect error or disconnect/reset before headers. reset reason: remote "
          "refused stream reset",
          kFlagUR, "upstream_reset_before_response_started{remote_refused_stream_reset}");
  } else if (f == UpFailure::kProtocol) {
    Local(502,
          "upstream connect error or disconnect/reset before headers. reset reason: protocol "
          "error",
          kFlagUPE, "upstream_reset_before_response_started{protocol_error}");
  } else {
    Local(503,
          "upstream connect error or disconnect/reset before headers. reset reason: connection "
          "termination",
          kFlagUC, "upstream_reset_before_response_started{connection_termination}");
  }
}

}  // namespace sluice::proxy::engine
