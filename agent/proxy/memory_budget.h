// A worker's buffer budget (ProxyOptions.worker_buffer_limit): what its downstream
// connections hold (requests being received, responses not yet written), the request
// bodies it has reserved room for, and the sessions waiting for a reservation. Sessions
// charge what they hold after every read and write (Session::Account).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "worker_context.h"

namespace sluice::proxy::engine {

class Session;

class MemoryBudget {
 public:
  explicit MemoryBudget(WorkerContext& ctx) : ctx_(ctx) {}
  MemoryBudget(const MemoryBudget&) = delete;
  MemoryBudget& operator=(const MemoryBudget&) = delete;

  // The worker's buffer budget (ProxyOptions.worker_buffer_limit). A connection may
  // always hold this much (a request head, a small body, a response's first bytes).
  static constexpr std::size_t kHeadFloor = 64 * 1024;
  // Response bytes waiting for a slow client: beyond the floor, only while the worker
  // holds less than its budget (else the upstream is not read).
  bool MayBuffer(std::size_t held) const {
    return held < kHeadFloor || buffered_ < ctx_.opts().worker_buffer_limit;
  }
  // A request body beyond the floor is read only under a reservation of its whole size
  // (its content-length, or max_request_body when chunked), so the bodies being received
  // never add up to more than the budget, and a body once begun can always be finished
  // (no two requests each wait for the other's memory). One request may take more than
  // the budget when nothing else holds any, so a large body always gets its turn.
  bool Reserve(Session* s, std::size_t n);
  void Unreserve(Session* s);
  void Charge(std::size_t now, std::size_t before) {
    buffered_ += now;
    buffered_ -= before;
    if (now > before)
      ctx_.stats().buffered_bytes.fetch_add(now - before, std::memory_order_relaxed);
    else
      ctx_.stats().buffered_bytes.fetch_sub(before - now, std::memory_order_relaxed);
  }
  void WaitForMemory(Session* s);
  bool has_waiters() const { return !memory_waiters_.empty(); }
  // Grants reservations to waiting sessions, in arrival order (after each event batch).
  void ResumeMemoryWaiters();

 private:
  WorkerContext& ctx_;
  std::size_t buffered_ = 0;  // the sum of the sessions' `accounted`
  std::size_t reserved_ = 0;  // the sum of the sessions' `reserved`
  std::vector<std::pair<Session*, uint64_t>> memory_waiters_;  // (session, its gen)
};

}  // namespace sluice::proxy::engine
