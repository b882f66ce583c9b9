// What the parts of a worker reach the worker through: its clock, random numbers,
// timers, event loop, counters, options, current config snapshot and access-log buffer,
// and its other parts (the upstream pool, the shadow writer, the memory budget, the
// session pool). Sessions, upstream connections and mirrors hold a WorkerContext*, not
// a Worker*, so none of them includes the Worker class (worker.h), and what they may
// use of their worker is written down here.
//
// A plain class, not an interface: the per-request calls (Arm, Cancel, now, Rand,
// stats) are inline, with no virtual call on the hot path. The Worker owns it, runs its
// clock and timers, and swaps its snapshot (worker.cc). One per worker; nothing in it is
// shared with another thread but the counters (relaxed atomics) and the options
// (read-only). The event loop is the worker's own, or, in a worker group
// (worker_group.h), its group thread's, shared with the other workers on that thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string_view>

#include <fmt/format.h>

#include "sluice/proxy/event_loop.h"
#include "sluice/proxy/proxy.h"
#include "snapshot.h"
#include "timer_heap.h"

namespace sluice::proxy::engine {

inline int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

using Handler = IoHandler;

class UpstreamPool;
class ShadowWriter;
class MemoryBudget;
class SessionPool;

class WorkerContext {
 public:
  WorkerContext(ProxyStats& stats, const ProxyOptions& opts, const std::atomic<bool>& draining,
                int index)
      : stats_(stats), opts_(opts), draining_(draining) {
    rng_ =
        0x9e3779b97f4a7c15ull * static_cast<uint64_t>(index + 1) ^ static_cast<uint64_t>(NowMs());
  }
  WorkerContext(const WorkerContext&) = delete;
  WorkerContext& operator=(const WorkerContext&) = delete;

  // --- clock, random numbers, timers
  // The worker's clock: read once per event batch, not per event.
  int64_t now() const { return *clock_; }
  uint64_t Rand() {
    rng_ ^= rng_ << 13;
    rng_ ^= rng_ >> 7;
    rng_ ^= rng_ << 17;
    return rng_;
  }
  bool Roll(uint32_t per_million) {
    if (per_million >= 1000000)
      return true;
    if (per_million == 0)
      return false;
    return Rand() % 1000000 < per_million;
  }
  void Arm(Timer& t, int64_t after_ms) {
    timers_.Remove(t);
    t.deadline = now() + after_ms;
    timers_.Add(t);
  }
  void Cancel(Timer& t) { timers_.Remove(t); }

  // --- the worker's services
  EventLoop& loop() { return *loop_; }
  ProxyStats& stats() { return stats_; }
  const ProxyOptions& opts() const { return opts_; }
  // Drain() was called: responses say `connection: close` and their connection closes.
  bool draining() const { return draining_.load(std::memory_order_relaxed); }
  // On a shared loop: who this worker's handlers belong to (none on its own loop).
  IoOwner* io_owner() const { return io_owner_; }
  // The newest config this worker took; a session moves to it between requests.
  const std::shared_ptr<const Snapshot>& snap() const { return snap_; }
  // Access-log lines, written out once per event batch.
  fmt::memory_buffer& log_buffer() { return log_; }

  // --- the worker's other parts
  UpstreamPool& upstreams() { return *upstreams_; }
  ShadowWriter& shadow() { return *shadow_; }
  MemoryBudget& budget() { return *budget_; }
  SessionPool& sessions() { return *sessions_; }

 private:
  friend class Worker;  // owns the loop, runs the clock and the timers, swaps the snapshot

  ProxyStats& stats_;
  const ProxyOptions& opts_;
  const std::atomic<bool>& draining_;
  EventLoop* loop_ = nullptr;  // the worker's own (Worker::own_loop_) or its group thread's
  uint64_t rng_;
  int64_t now_ms_ = NowMs();
  // now(): now_ms_, or a group thread's clock (one write per batch for all its workers).
  const int64_t* clock_ = &now_ms_;
  IoOwner* io_owner_ = nullptr;
  TimerHeap timers_;
  std::shared_ptr<const Snapshot> snap_;
  fmt::memory_buffer log_;
  UpstreamPool* upstreams_ = nullptr;
  ShadowWriter* shadow_ = nullptr;
  MemoryBudget* budget_ = nullptr;
  SessionPool* sessions_ = nullptr;
};

}  // namespace sluice::proxy::engine
