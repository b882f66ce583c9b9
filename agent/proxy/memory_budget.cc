// The worker's buffer budget: reservations for request bodies and the sessions waiting
// for one (see memory_budget.h).
#include "memory_budget.h"

#include <sys/epoll.h>

#include "session.h"

namespace sluice::proxy::engine {

bool MemoryBudget::Reserve(Session* s, std::size_t n) {
  if (reserved_ != 0 && reserved_ + n > ctx_.opts().worker_buffer_limit)
    return false;
  reserved_ += n;
  s->reserved = n;
  return true;
}

void MemoryBudget::Unreserve(Session* s) {
  reserved_ -= s->reserved;
  s->reserved = 0;
}

void MemoryBudget::WaitForMemory(Session* s) {
  if (s->waiting_memory)
    return;
  s->waiting_memory = true;
  memory_waiters_.emplace_back(s, s->gen);
  ctx_.stats().buffer_limit_waits.fetch_add(1, std::memory_order_relaxed);
  // Not receiving at all (io_uring would otherwise keep filling its buffers for it).
  s->events &= ~static_cast<uint32_t>(EPOLLIN);
  ctx_.loop().Modify(s->fd, s->events, s);
}

// In arrival order: the first waiter whose body does not fit stops the rest.
void MemoryBudget::ResumeMemoryWaiters() {
  std::size_t i = 0;
  for (; i < memory_waiters_.size(); ++i) {
    auto [s, g] = memory_waiters_[i];
    if (s->gen != g || !s->waiting_memory)
      continue;  // closed meanwhile
    if (!Reserve(s, s->BodyReservation()))
      break;
    s->waiting_memory = false;
    // Interest again: the loop reports what arrived meanwhile (EPOLL_CTL_MOD re-arms).
    s->events |= EPOLLIN;
    ctx_.loop().Modify(s->fd, s->events, s);
  }
  memory_waiters_.erase(memory_waiters_.begin(),
                        memory_waiters_.begin() + static_cast<std::ptrdiff_t>(i));
}

}  // namespace sluice::proxy::engine
