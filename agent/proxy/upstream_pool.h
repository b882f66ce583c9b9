// A worker's upstream connections and the endpoints they go to: picking an endpoint
// (lb.h, on the worker's clock and random numbers), the ORIGINAL_DST endpoints, outlier
// detection's record of each result, and the pool itself: idle keep-alive connections
// per endpoint, new connections within the cluster's max_connections, and the queue of
// requests waiting for one (max_pending_requests). Every UpstreamConn comes from and
// returns to its free list, so steady-state traffic does not allocate.
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

class UpstreamPool {
 public:
  explicit UpstreamPool(WorkerContext& ctx) : ctx_(ctx) {
    deferred_.reserve(256);
    pending_.reserve(256);
  }
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
  // (else nullptr with *overflow set).
  UpstreamConn* GetUpstream(const std::shared_ptr<const Snapshot>& snap, const Cluster* c,
                            Endpoint* ep, bool* overflow, bool for_mirror = false);
  // Back to the idle list when `reuse` and the connection is clean and on the current
  // config; else closed. Either way a request waiting for this cluster is started.
  void ReleaseUpstream(UpstreamConn* up, bool reuse);
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
  bool has_deferred() const { return !deferred_.empty(); }
  void EndBatch() {
    free_upstreams_.insert(free_upstreams_.end(), deferred_.begin(), deferred_.end());
    deferred_.clear();
  }
  // Shutdown: closes every socket, after the event loop is gone, or through `loop` (a
  // group thread's, which outlives the worker).
  void CloseAll(EventLoop* loop = nullptr) {
    for (auto& u : all_upstreams_) {
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
};

}  // namespace sluice::proxy::engine
