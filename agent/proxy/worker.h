// A worker: one event loop's share of a Proxy, serving every listener through its own
// SO_REUSEPORT socket (shared-nothing: a connection lives and dies on the worker that
// accepted it). It runs on a thread of its own with its own loop (Run), or, when the
// Proxy has a worker group (worker_group.h), on a group thread whose loop it shares with
// other Proxies' workers: the thread then calls the parts of an iteration (Prepare,
// AfterWait, Finish) for each worker attached to it, and Detach at the end. It accepts connections,
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

  // Its own loop and wake-up eventfd; or, with `shared`, the group thread's loop and
  // eventfd (io_backend() is then the loop's).
  Result<void> Init(EventLoop* shared = nullptr, int shared_wake_fd = -1);
  // On the worker's own thread, before Run().
  Result<void> Activate() { return ctx_.loop().Activate(); }
  IoBackend io_backend() const { return io_backend_; }
  const std::string& io_fallback_reason() const { return io_fallback_reason_; }
  // Its own thread's loop, until Stop() publishes the empty snapshot.
  void Run();

  // One loop iteration in parts, on the thread that runs the loop (a group thread's
  // loop runs them for each attached worker). Before the wait: takes a new snapshot
  // and lowers *timeout_ms to what its timers and pending work need; false once the
  // snapshot is empty.
  bool Prepare(int64_t now_ms, int* timeout_ms);
  // After the wait, before the events are dispatched: takes a snapshot published
  // meanwhile (false once it is empty).
  bool AfterWait(int64_t now_ms);
  // After the events: timers, mirrors, the idle sweep, the end of the batch, the log.
  void Finish();
  // A shared loop's worker leaves it: its listeners stop being watched, and every
  // connection it has is closed through the loop (which then forgets them). Between
  // iterations, on the loop's thread.
  void Detach();

  void Wake() {
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
  WakeHandler wake_handler_{};
  int64_t next_sweep_ms_ = 0;
  uint64_t version_ = 0;
  std::vector<std::unique_ptr<ListenerHandler>> listeners_;
  std::vector<std::unique_ptr<ListenerHandler>> retired_listeners_;
};

}  // namespace sluice::proxy::engine
