// WorkerGroup: a fixed set of threads, each running one event loop, that many Proxies'
// workers run on (ProxyOptions::group). The node agent runs one Proxy per enrolled pod;
// with a group, a node of 110 pods has as many L7 threads as the group has, not 110.
//
// Each Proxy keeps its own state: snapshot, counters, Istio stats, upstream pool, buffer
// budget, drain. Its worker is attached to the group thread with the fewest workers at
// Proxy::Start and detached at Proxy::Stop (both run on that thread, between loop
// iterations; the caller waits for them). A group thread's iteration waits once for all
// its workers' sockets, dispatches the events to their handlers, then runs the per-batch
// steps (timers, mirrors, idle sweep, end of batch, log) only of the workers whose
// handlers had events (the loop marks their IoOwner) or that are due (a timer, the idle
// sweep): an idle pod costs the thread nothing per iteration but a look at its due time.
// Update() of one Proxy wakes its worker's thread, which then takes the new snapshot.
//
// Upstream sockets: a group thread stays in the process's network namespace; a Proxy
// that must connect from elsewhere passes ProxyOptions::make_socket.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "sluice/common/result.h"
#include "sluice/proxy/event_loop.h"

namespace sluice::proxy {

namespace engine {
class Worker;
struct GroupThread;
}  // namespace engine

class WorkerGroup {
 public:
  struct Options {
    int threads = 2;
    IoBackend io = IoBackend::kAuto;  // kAuto: SLUICE_PROXY_IO, else io_uring if offered
    unsigned io_buffers = 256;        // io_uring receive buffers per thread (4 KiB each)
    std::string name = "sluice-l7";   // threads are named NAME-g0, NAME-g1, ...
  };
  // Starts the threads; fails when a loop cannot be made (kUring without io_uring).
  static Result<std::shared_ptr<WorkerGroup>> Create(Options opts);
  // Ends the threads. Every Proxy on the group must have stopped (they hold the group).
  ~WorkerGroup();
  WorkerGroup(const WorkerGroup&) = delete;
  WorkerGroup& operator=(const WorkerGroup&) = delete;

  int threads() const;
  IoBackend io_backend() const;
  const std::string& io_fallback_reason() const;
  // Workers attached to each thread now.
  std::vector<int> Attached() const;

  // For Proxy: attaches a worker (Init()ed on the returned thread's loop) to the least
  // loaded thread, and detaches it; both wait until the thread has done it.
  engine::GroupThread* Pick();
  Result<void> Attach(engine::GroupThread* t, engine::Worker* w);
  void Detach(engine::GroupThread* t, engine::Worker* w);

  struct Impl;

 private:
  explicit WorkerGroup(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace sluice::proxy
