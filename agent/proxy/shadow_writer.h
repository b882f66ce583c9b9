// Request mirroring (Envoy's shadow writer): a copy of a request goes to a route's
// mirror cluster, fire-and-forget. Its response is read and dropped, a failure only
// ends the copy, and nothing of it reaches the client or delays the primary request:
// the copy is serialised when the request is dispatched and sent after the worker's
// event batch. Bounded per worker (ProxyOptions.mirror_max_inflight, mirror_max_bytes,
// mirror_max_connections); beyond a bound a copy is dropped and counted, never queued.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <utility>
#include <vector>

#include "sluice/proxy/buffer.h"
#include "sluice/proxy/config.h"
#include "timer_heap.h"
#include "upstream_conn.h"
#include "worker_context.h"

namespace sluice::proxy::engine {

class Session;

class Mirror final : public UpstreamOwner, public TimerOwner {
 public:
  WorkerContext* w = nullptr;
  UpstreamConn* up = nullptr;
  std::size_t bytes = 0;
  Timer timer;
  bool active = false;

  void OnUpHeaders(UpstreamConn*) override {}
  void OnUpData(UpstreamConn*, std::string_view) override {}
  void OnUpDone(UpstreamConn* u) override { Finish(u->reusable); }
  void OnUpFailure(UpstreamConn*, UpFailure) override { Finish(false); }
  void OnTimer(int) override { Finish(false); }
  void Finish(bool reuse);
};

class ShadowWriter {
 public:
  explicit ShadowWriter(WorkerContext& ctx) : ctx_(ctx) { mirror_flush_.reserve(256); }
  ShadowWriter(const ShadowWriter&) = delete;
  ShadowWriter& operator=(const ShadowWriter&) = delete;

  // Serialises a copy of the session's request for m's cluster, or drops it at a bound.
  void SendMirror(const MirrorPolicy& m, Session& s);
  // Sends the copies serialised in this batch (after the batch's primary requests).
  void FlushMirrors();
  bool has_flush() const { return !mirror_flush_.empty(); }
  void ReleaseMirror(Mirror* m);

 private:
  WorkerContext& ctx_;
  std::size_t mirror_inflight = 0, mirror_bytes = 0;
  std::vector<std::unique_ptr<Mirror>> all_mirrors_;
  std::vector<Mirror*> free_mirrors_;
  // Mirror copies are written after the batch's primary requests (see SendMirror).
  std::vector<std::pair<UpstreamConn*, uint64_t>> mirror_flush_;
};

// The Host a copy is sent with: Envoy inserts "-shadow" before the port.
void ShadowHost(std::string_view host, Buffer& dst);

}  // namespace sluice::proxy::engine
