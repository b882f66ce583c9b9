// A session as a TCP tunnel: a TCP proxy filter chain (its cluster chosen by weight,
// its endpoint by source-IP hash where the cluster hashes) or an HTTP connection
// upgraded by a 101. Bytes pass both ways untouched, each direction's half-close is
// passed on once its bytes are out, and the tunnel closes when both sides are done.
#include "session.h"
#include "telemetry_hooks.h"
#include "upstream_pool.h"

namespace sluice::proxy::engine {

void Session::StartTcp() {
  phase = Phase::kTunnel;
  tcp_session = true;
  const TcpSettings& t = chain->tcp;
  cluster = snap->cfg->ClusterAt(t.cluster);
  if (!t.weighted.empty()) {
    uint64_t r = t.total_weight ? w->Rand() % t.total_weight : 0;
    cluster = snap->cfg->ClusterAt(PickWeightedCluster(t.weighted, r).cluster);
  }
  if (!cluster) {
    flags |= kFlagNC;
    Abort(0);
    return;
  }
  Endpoint* ep = cluster->original_dst
                     ? (has_orig_dst ? w->upstreams().OriginalDstEndpoint(orig_dst) : nullptr)
                     : w->upstreams().PickEndpoint(*cluster, source_hash);
  if (!ep) {
    flags |= kFlagUH;
    Abort(0);
    return;
  }
  bool overflow = false;
  UpstreamConn* u = w->upstreams().GetUpstream(snap, cluster, ep, &overflow);
  up_ep = ep;
  RecordTcpOpen(*this);
  CopyStr(up_host, ep->address);
  if (!u) {
    flags |= overflow ? kFlagUO : kFlagUF;
    Abort(0);
    return;
  }
  up = u;
  u->owner = this;
  u->tunnel = true;
  ep->active_requests.fetch_add(1, std::memory_order_relaxed);
  // Whatever arrived already (a TLS ClientHello) goes first, untouched.
  bytes_rx += in.size();
  u->out.Append(in.Data());
  in.Clear();
}

void Session::TunnelRead() {
  if (!up) {
    Close();
    return;
  }
  if (in_tunnel_read)
    return;  // called back from the Flush below: the loop goes on
  in_tunnel_read = true;
  uint64_t g = gen;
  while (true) {
    bool open = ReadInto(up->out);
    UpstreamConn* u = up;
    if (!u->connecting)
      u->Flush();
    if (g != gen)
      return;  // closed meanwhile (the flag is reset when the session is reused)
    if (!open) {
      down_eof = true;
      if (up && up->out.empty() && !up->connecting)
        w->loop().ShutdownWrite(up->fd);
      in_tunnel_read = false;
      MaybeCloseTunnel();
      return;
    }
    // ReadInto stops early (read_ready) above 1 MiB queued for the upstream; go on
    // only if the upstream took it, else OnUpDrained resumes.
    if (!read_ready || !up || up->out.size() > 1024 * 1024)
      break;
  }
  in_tunnel_read = false;
}

void Session::MaybeCloseTunnel() {
  if (down_eof && up_eof && out.empty())
    Abort(0);
}

}  // namespace sluice::proxy::engine
