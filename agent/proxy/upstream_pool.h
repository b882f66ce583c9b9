// A worker's upstream connections and the endpoints they go to: picking an endpoint
// (lb.h, on the worker's clock and random numbers), the ORIGINAL_DST endpoints, outlier
// detection's record of each result, and the pool itself: idle keep-alive connections
// per endpoint, new connections within the cluster's max_connections, and the queue of
// requests waiting for one (max_pending_requests). Every UpstreamConn comes from and
// returns to its free list, so steady-state traffic does not allocate.
//
// HTTP/2 clusters (h2_upstream.h): per endpoint, the worker's HTTP/2 connections, each
// shared by up to max_concurrent_streams streams (bounded by the server's SETTINGS); a
// request gets a stream UpstreamConn on one that can take it, a new connection only when
// none can and the cluster is under max_connections, else it waits in the same pending
// queue (max_pending_requests) until a stream or connection slot frees.
#pragma once

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "sluice/proxy/config.h"
#include "sluice/proxy/lb.h"
#include "snapshot.h"
#include "upstream_conn.h"
#include "worker_context.h"

namespace sluice::proxy::engine {

class Session;
class H2Upstream;

class UpstreamPool {
 public:
  explicit UpstreamPool(WorkerContext& ctx);
  ~UpstreamPool();
  UpstreamPool(const UpstreamPool&) = delete;
  UpstreamPool& operator=(const UpstreamPool&) = delete;

  // The cluster's endpoint for a request or connection (lb.h), on the worker's clock and
  // random numbers.
  Endpoint* PickEndpoint(const Cluster& c, std::optional<LbHash> hash) {
    return proxy::PickEndpoint(c, ctx_.now(), ctx_.Rand(), ctx_.Rand(), hash);
  }
  // The worker's endpoint object for an original destination (ORIGINAL_DST clusters).
  Endpoint* OriginalDstEndpoint(const sockaddr_storage& addr);
  // A request's result on an endpoint, for outlier detection (lb.h).
  void OnEndpointResult(const Cluster& c, Endpoint* ep, bool failure);

  // A connected (pooled) or connecting upstream; nullptr when the socket could not be
  // created or connect() failed at once. *overflow: the max_connections breaker.
  // for_mirror: a new connection only within ProxyOptions.mirror_max_connections
  // (else nullptr with *overflow set); a mirror copy goes HTTP/2 when its cluster says
  // HTTP/2. http2: the request goes as an HTTP/2 stream (the caller's decision:
  // Cluster::Http2For, never for TCP or an upgrade).
  UpstreamConn* GetUpstream(const std::shared_ptr<const Snapshot>& snap, const Cluster* c,
                            Endpoint* ep, bool* overflow, bool for_mirror = false,
                            bool http2 = false);
  // Back to the idle list when `reuse` and the connection is clean and on the current
  // config; else closed. Either way a request waiting for this cluster is started. A
  // stream goes back to the free list, its stream reset if unfinished; its connection
  // stays pooled.
  void ReleaseUpstream(UpstreamConn* up, bool reuse);
  // An HTTP/2 connection failed or ended: every stream on it fails with `f`, then it is
  // closed.
  void FailH2(H2Upstream* h, UpFailure f);
  // Closes an HTTP/2 connection that carries no stream any more.
  void CloseH2(H2Upstream* h);
  // An HTTP/2 connection's last stream was released: closed when it may take no more,
  // else kept for its idle timeout.
  void H2Idle(H2Upstream* h);
  // Closes every idle connection (no config any more, or shutting down).
  void CloseIdle();
  // A new config is in force: idle connections whose cluster it still has (the same
  // object) stay pooled for it; the others are closed.
  void Rebase();

  // Requests waiting for a connection (the max_connections breaker was hit).
  void AddPending(Session* s) { pending_.push_back(s); }
  void RemovePending(Session* s) {
    auto it = std::find(pending_.begin(), pending_.end(), s);
    if (it != pending_.end())
      pending_.erase(it);
  }
  void KickPending(const Cluster* c);

  // A released connection may still have events in the current batch: it is reused only
  // after the batch (EndBatch).
  bool has_deferred() const { return !deferred_.empty() || !deferred_h2_.empty(); }
  void EndBatch() {
    free_upstreams_.insert(free_upstreams_.end(), deferred_.begin(), deferred_.end());
    deferred_.clear();
    free_h2_.insert(free_h2_.end(), deferred_h2_.begin(), deferred_h2_.end());
    deferred_h2_.clear();
  }
  // Shutdown: closes every socket, after the event loop is gone, or through `loop` (a
  // group thread's, which outlives the worker).
  void CloseAll(EventLoop* loop = nullptr);
  // HTTP/2 connections open now (tests, stats).
  std::size_t h2_connections() const;

 private:
  // A non-blocking socket connecting to ep as the cluster says (make_socket, mark,
  // bind); -1 on failure.
  int OpenSocket(const Cluster* c, Endpoint* ep);
  // A connection object from the free list, reset for a new use on (snap, c, ep).
  UpstreamConn* NewConn(const std::shared_ptr<const Snapshot>& snap, const Cluster* c,
                        Endpoint* ep);
  // The stream path of GetUpstream.
  UpstreamConn* GetStream(const std::shared_ptr<const Snapshot>& snap, const Cluster* c,
                          Endpoint* ep, bool* overflow, bool for_mirror);
  bool CurrentH2(H2Upstream* h);
  void ReleaseStream(UpstreamConn* u);
  void CloseAllConns(EventLoop* loop) {
    for (auto& u : all_upstreams_) {
      if (u->h2) {
        u->fd = -1;  // its connection's socket, closed below
        continue;
      }
      if (u->fd >= 0) {
        if (loop)
          loop->Close(u->fd);
        else
          close(u->fd);
        u->fd = -1;
      }
    }
  }

 private:
  // The connection may serve the config in force (its cluster is that config's); moves
  // it onto that config.
  bool Current(UpstreamConn* u);

  WorkerContext& ctx_;
  std::vector<std::unique_ptr<UpstreamConn>> all_upstreams_;
  std::vector<UpstreamConn*> free_upstreams_;
  std::vector<UpstreamConn*> deferred_;
  std::unordered_map<const Endpoint*, std::vector<UpstreamConn*>> idle_;
  struct StringHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view v) const { return std::hash<std::string_view>()(v); }
  };
  std::unordered_map<std::string, std::unique_ptr<Endpoint>, StringHash, std::equal_to<>>
      original_dst_;
  std::vector<Session*> pending_;
  std::size_t mirror_conns_ = 0;  // connections opened for mirror copies
  // HTTP/2 connections: every one made, the free ones, those released in this batch, and
  // the open ones per endpoint (busy or idle: they are shared).
  std::vector<std::unique_ptr<H2Upstream>> all_h2_;
  std::vector<H2Upstream*> free_h2_;
  std::vector<H2Upstream*> deferred_h2_;
  std::unordered_map<const Endpoint*, std::vector<H2Upstream*>> h2_;
};

}  // namespace sluice::proxy::engine
