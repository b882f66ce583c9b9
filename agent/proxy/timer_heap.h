// A worker's timers: one binary min-heap of armed timers by deadline. Every connection
// object embeds its Timers and is their TimerOwner; arming and cancelling are O(log n)
// and allocate nothing (the heap's array is reserved up front). Header-only: Arm and
// Cancel run several times per request, so the heap's operations stay inline in the
// files that use them (a worker's context, worker_context.h, is the only caller).
#pragma once

#include <cstdint>
#include <vector>

namespace sluice::proxy::engine {

struct TimerOwner {
  virtual void OnTimer(int kind) = 0;
  virtual ~TimerOwner() = default;
};

// An armed timer sits in its worker's heap; `slot` is its index there (kNoSlot when
// not armed), so cancelling removes it at once and the heap holds only live timers
// (about three per connection), never one entry per past request.
struct Timer {
  static constexpr uint32_t kNoSlot = UINT32_MAX;
  TimerOwner* owner = nullptr;
  int kind = 0;
  int64_t deadline = 0;
  uint32_t slot = kNoSlot;
  bool armed() const { return slot != kNoSlot; }
};

// A binary min-heap of Timer pointers by deadline, each timer knowing its index.
class TimerHeap {
 public:
  TimerHeap() { heap_.reserve(1024); }
  bool empty() const { return heap_.empty(); }
  std::size_t size() const { return heap_.size(); }
  Timer* front() const { return heap_.front(); }
  void Add(Timer& t) {
    t.slot = static_cast<uint32_t>(heap_.size());
    heap_.push_back(&t);
    Up(t.slot);
  }
  void Remove(Timer& t) {
    uint32_t i = t.slot;
    if (i == Timer::kNoSlot)
      return;
    t.slot = Timer::kNoSlot;
    Timer* last = heap_.back();
    heap_.pop_back();
    if (last == &t)
      return;
    heap_[i] = last;
    last->slot = i;
    Down(i);
    Up(last->slot);
  }

 private:
  void Up(uint32_t i) {
    Timer* t = heap_[i];
    while (i > 0) {
      uint32_t parent = (i - 1) / 2;
      if (heap_[parent]->deadline <= t->deadline)
        break;
      heap_[i] = heap_[parent];
      heap_[i]->slot = i;
      i = parent;
    }
    heap_[i] = t;
    t->slot = i;
  }
  void Down(uint32_t i) {
    const uint32_t n = static_cast<uint32_t>(heap_.size());
    Timer* t = heap_[i];
    while (true) {
      uint32_t c = 2 * i + 1;
      if (c >= n)
        break;
      if (c + 1 < n && heap_[c + 1]->deadline < heap_[c]->deadline)
        ++c;
      if (heap_[c]->deadline >= t->deadline)
        break;
      heap_[i] = heap_[c];
      heap_[i]->slot = i;
      i = c;
    }
    heap_[i] = t;
    t->slot = i;
  }
  std::vector<Timer*> heap_;
};

}  // namespace sluice::proxy::engine
