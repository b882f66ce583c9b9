// A worker: one event loop's share of a Proxy, serving every listener through its own
// SO_REUSEPORT socket (shared-nothing: a connection lives and dies on the worker that
// accepted it). It runs on a thread of its own with its own loop (Run), or, when the
// Proxy has a worker group (worker_group.h), on a group thread whose loop it shares with
// other Proxies' workers: the thread then takes its snapshots (SwapIfNew), runs its
// per-batch work (Finish) when its handlers had events or it is Due, and Detaches it at
// the end. It accepts connections,
// takes each new config snapshot between events, closes idle keep-alive connections, runs its
// timers, and owns the parts its connections use: the context they reach it through
// (worker_context.h), the upstream pool, the shadow writer, the memory budget and the session pool.
//
// Ownership and lifetime: every connection object (Session, UpstreamConn, Mirror) is
// taken from and returned to a per-worker free list, so steady-state traffic does not
// allocate. An object released while the current event batch may still hold events for
// it goes back to its free list only after the batch, and every object carries a
// generation number so a stale timer or event cannot act on its next life.
#pragma once

#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "memory_budget.h"
#include "proxy_impl.h"
#include "session.h"
#include "shadow_writer.h"
#include "upstream_pool.h"
#include "worker_context.h"

namespace sluice::proxy::engine {

class Worker {
 public:
  Worker(Proxy::Impl* impl, int index);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // A group thread's loop, as its workers see it: the loop, its wake-up eventfd, its
  // clock (one per batch), the count Wake() bumps so the thread looks for new snapshots,
  // and the list the loop puts the workers whose handlers had events in.
  struct SharedLoop {
    EventLoop* loop = nullptr;
    int wake_fd = -1;
    const int64_t* clock = nullptr;
    std::atomic<uint64_t>* published = nullptr;
    std::vector<IoOwner*>* batch = nullptr;
  };
  // Its own loop and wake-up eventfd; or, with `shared`, the group thread's loop
  // (io_backend() is then the loop's).
  Result<void> Init(const SharedLoop* shared = nullptr);
  // On the worker's own thread, before Run().
  Result<void> Activate() { return ctx_.loop().Activate(); }
  IoBackend io_backend() const { return io_backend_; }
  const std::string& io_fallback_reason() const { return io_fallback_reason_; }
  // Its own thread's loop, until Stop() publishes the empty snapshot.
  void Run();

  // One iteration of Run in parts. Before the wait: takes a new snapshot
  // and lowers *timeout_ms to what its timers and pending work need; false once the
  // snapshot is empty.
  bool Prepare(int64_t now_ms, int* timeout_ms);
  // After the wait, before the events are dispatched: takes a snapshot published
  // meanwhile (false once it is empty).
  bool AfterWait(int64_t now_ms);
  // After the events: timers, mirrors, the idle sweep, the end of the batch, the log.
  void Finish();
  // On a group thread (worker_group.cc), which runs the parts of an iteration only for
  // the workers that need them. SwapIfNew: takes a snapshot published since the last
  // (true if it did). Due: when it next needs Finish() without an event of its own (its
  // timers, its idle sweep; now when work is pending).
  bool SwapIfNew();
  int64_t Due() const;
  // Its handlers' owner on a shared loop (event_loop.h).
  struct Owner : IoOwner {
    Worker* w = nullptr;
  };
  std::size_t group_slot = 0;  // its place in its group thread's list
  // A shared loop's worker leaves it: its listeners stop being watched, and every
  // connection it has is closed through the loop (which then forgets them). Between
  // iterations, on the loop's thread.
  void Detach();

  void Wake() {
    if (published_)
      published_->fetch_add(1, std::memory_order_release);
    uint64_t one = 1;
    [[maybe_unused]] ssize_t r = write(wake_fd_, &one, sizeof(one));
  }
  int index() const { return index_; }

 private:
  struct WakeHandler : Handler {
    Worker* w;
    void OnEvent(uint32_t) override {
      uint64_t v;
      [[maybe_unused]] ssize_t r = read(w->wake_fd_, &v, sizeof(v));
    }
  };
  struct ListenerHandler : Handler {
    Worker* w = nullptr;
    int fd = -1;
    std::string name;
    std::shared_ptr<ListenerCount> count;
    void OnEvent(uint32_t) override { w->Accept(*this); }
  };

  void Accept(ListenerHandler& l);
  void SwapSnapshot();
  void SweepIdle();
  void RunTimers();
  void FlushLog();

  Proxy::Impl* impl_;
  int index_;
  // The context first: the parts keep a reference to it.
  WorkerContext ctx_;
  UpstreamPool upstreams_;
  ShadowWriter shadow_;
  MemoryBudget budget_;
  SessionPool sessions_;
  IoBackend io_backend_ = IoBackend::kAuto;
  std::string io_fallback_reason_;
  std::unique_ptr<EventLoop> own_loop_;  // none on a group thread
  int wake_fd_ = -1;                     // own, or the group thread's (not closed here)
  bool own_wake_fd_ = false;
  std::atomic<uint64_t>* published_ = nullptr;  // a group thread's (Wake bumps it)
  Owner owner_;
  WakeHandler wake_handler_{};
  int64_t next_sweep_ms_ = 0;
  uint64_t version_ = 0;
  std::vector<std::unique_ptr<ListenerHandler>> listeners_;
  std::vector<std::unique_ptr<ListenerHandler>> retired_listeners_;
};

}  // namespace sluice::proxy::engine
