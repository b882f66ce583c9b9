// Request mirroring: a copy's life from SendMirror to Mirror::Finish (see
// shadow_writer.h).
#include "shadow_writer.h"

#include "session.h"
#include "upstream_pool.h"

namespace sluice::proxy::engine {

void Mirror::Finish(bool reuse) {
  if (!active)
    return;
  active = false;
  w->Cancel(timer);
  UpstreamConn* u = up;
  up = nullptr;
  if (u)
    w->upstreams().ReleaseUpstream(u, reuse);
  w->shadow().ReleaseMirror(this);
}

void ShadowWriter::SendMirror(const MirrorPolicy& m, Session& s) {
  const Cluster* c = s.snap->cfg->ClusterAt(m.cluster);
  if (!c)
    return;
  const std::size_t req_bytes = s.req.head_len + s.body_scanned + 512;
  if (mirror_inflight >= ctx_.opts().mirror_max_inflight ||
      mirror_bytes + req_bytes > ctx_.opts().mirror_max_bytes) {
    ctx_.stats().mirrors_dropped.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  Endpoint* ep = ctx_.upstreams().PickEndpoint(*c, std::nullopt);
  if (!ep)
    return;
  bool overflow = false;
  // The protocol the mirror cluster takes for this request (HTTP/2 also when it uses the
  // downstream's and the request came on HTTP/2), as for the primary.
  const bool http2 = c->Http2For(s.downstream_h2) && s.req.upgrade.empty();
  UpstreamConn* u =
      ctx_.upstreams().GetUpstream(s.snap, c, ep, &overflow, /*for_mirror=*/true, http2);
  if (!u) {
    ctx_.stats().mirrors_dropped.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  if (free_mirrors_.empty()) {
    all_mirrors_.push_back(std::make_unique<Mirror>());
    Mirror* nm = all_mirrors_.back().get();
    nm->w = &ctx_;
    nm->timer = Timer{nm, 0};
    free_mirrors_.push_back(nm);
  }
  Mirror* mr = free_mirrors_.back();
  free_mirrors_.pop_back();
  mr->active = true;
  mr->up = u;
  mr->bytes = req_bytes;
  u->owner = mr;
  u->head_request = s.req.method == "HEAD";
  u->upgrade_request = !s.req.upgrade.empty();
  s.SerializeRequest(u->out, /*shadow=*/!m.disable_shadow_host_suffix);
  ++mirror_inflight;
  mirror_bytes += req_bytes;
  ctx_.stats().mirrors_sent.fetch_add(1, std::memory_order_relaxed);
  int64_t timeout =
      s.route && s.route->action.timeout.count() > 0 ? s.route->action.timeout.count() : 15000;
  ctx_.Arm(mr->timer, timeout);
  // The copy is only serialised here; it is sent after this batch's events, so the
  // primary request (sent next by the session) never waits behind the shadow's send.
  if (!u->connecting)
    mirror_flush_.emplace_back(u, u->gen);
}

void ShadowWriter::FlushMirrors() {
  for (std::size_t i = 0; i < mirror_flush_.size(); ++i) {
    auto [u, g] = mirror_flush_[i];
    if (u->gen == g && u->fd >= 0 && !u->connecting)
      u->Flush();
  }
  mirror_flush_.clear();
}

void ShadowWriter::ReleaseMirror(Mirror* m) {
  --mirror_inflight;
  mirror_bytes -= m->bytes;
  // Reusable at once: a Mirror gets no epoll events (its connection does, and that
  // connection's owner is already cleared), its timer is cancelled, and nothing else
  // points to it. So the pool never holds more Mirrors than copies in flight.
  free_mirrors_.push_back(m);
}

void ShadowHost(std::string_view host, Buffer& dst) {
  // Envoy inserts "-shadow" before the port: "svc:8080" → "svc-shadow:8080".
  std::size_t colon = host.rfind(':');
  std::size_t bracket = host.rfind(']');
  if (colon != std::string_view::npos && (bracket == std::string_view::npos || bracket < colon)) {
    dst.Append(host.substr(0, colon));
    dst.Append("-shadow");
    dst.Append(host.substr(colon));
  } else {
    dst.Append(host);
    dst.Append("-shadow");
  }
}

}  // namespace sluice::proxy::engine
