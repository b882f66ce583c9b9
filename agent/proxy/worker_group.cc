// WorkerGroup (worker_group.h): its threads, each one event loop shared by the workers
// attached to it, and the attach/detach hand-over to them.
#include "sluice/proxy/worker_group.h"

#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <future>
#include <mutex>
#include <thread>

#include "worker.h"

namespace sluice::proxy {

namespace engine {

// One thread of a group: its loop, its wake-up eventfd, the workers attached to it
// (touched only on the thread), and the operations posted to it.
struct GroupThread {
  struct WakeHandler : IoHandler {
    int fd = -1;
    void OnEvent(uint32_t) override {
      uint64_t v;
      [[maybe_unused]] ssize_t r = read(fd, &v, sizeof(v));
    }
  };

  std::unique_ptr<EventLoop> loop;
  int wake_fd = -1;
  WakeHandler wake;
  std::thread thread;
  // The loop thread's: its attached workers with when each is next due (contiguous, so
  // the per-iteration look at them touches no worker's memory), its clock, the workers
  // whose handlers had events in this batch (filled by the loop), the publish count seen.
  struct Entry {
    Worker* w;
    int64_t due;
  };
  std::vector<Entry> entries;
  int64_t now = NowMs();
  std::vector<IoOwner*> batch;
  uint64_t seen = 0;
  std::atomic<uint64_t> published{0};  // bumped by a worker's Wake() (Proxy's Publish)
  int count = 0;                       // attached or being attached (the group's mutex)
  std::mutex mu;
  std::vector<std::function<void()>> posted;  // guarded by mu
  bool stop = false;                          // guarded by mu

  Worker::SharedLoop Shared() {
    return {.loop = loop.get(),
            .wake_fd = wake_fd,
            .clock = &now,
            .published = &published,
            .batch = &batch};
  }

  ~GroupThread() {
    loop.reset();  // first: an io_uring holds references to the sockets it watches
    if (wake_fd >= 0)
      close(wake_fd);
  }

  void Wake() {
    uint64_t one = 1;
    [[maybe_unused]] ssize_t r = write(wake_fd, &one, sizeof(one));
  }

  // Runs fn on the thread between iterations and waits for it.
  void Run(std::function<void()> fn) {
    if (std::this_thread::get_id() == thread.get_id()) {
      fn();
      return;
    }
    std::promise<void> done;
    auto f = done.get_future();
    {
      std::lock_guard lock(mu);
      posted.push_back([&] {
        fn();
        done.set_value();
      });
    }
    Wake();
    f.wait();
  }

  // Returns false once stopped.
  bool RunPosted() {
    std::vector<std::function<void()>> ops;
    bool stopping;
    {
      std::lock_guard lock(mu);
      ops.swap(posted);
      stopping = stop;
    }
    for (auto& op : ops)
      op();
    return !stopping;
  }

  // A Proxy published a snapshot: its workers take it.
  void Swaps() {
    const uint64_t p = published.load(std::memory_order_acquire);
    if (p == seen)
      return;
    seen = p;  // first: a publish during the walk is seen next time
    for (auto& e : entries) {
      if (e.w->SwapIfNew())
        e.due = now;
    }
  }

  void Add(Worker* w) {
    w->group_slot = entries.size();
    entries.push_back({w, now});
    w->SwapIfNew();
  }

  void Remove(Worker* w) {
    const std::size_t i = w->group_slot;
    if (i >= entries.size() || entries[i].w != w)
      return;
    entries[i] = entries.back();
    entries[i].w->group_slot = i;
    entries.pop_back();
    w->Detach();
  }

  // The iteration of Worker::Run for all attached workers: one wait, one dispatch; then
  // the per-batch work of the workers whose handlers had events, and of those due (their
  // timers, their idle sweep), not of every worker.
  void Loop() {
    while (RunPosted()) {
      now = NowMs();
      Swaps();
      int64_t timeout = -1;
      for (const auto& e : entries) {
        const int64_t t = std::max<int64_t>(e.due - now, 0);
        if (timeout < 0 || t < timeout)
          timeout = t;
      }
      loop->Poll(static_cast<int>(std::min<int64_t>(timeout, 1000)));
      now = NowMs();
      // Again after the wait: a request that arrives after Update() returned must see
      // the new config even when it comes in the same batch as the wake-up.
      Swaps();
      loop->Dispatch();
      for (IoOwner* o : batch) {
        o->touched = false;
        Worker* w = static_cast<Worker::Owner*>(o)->w;
        w->Finish();
        entries[w->group_slot].due = w->Due();
      }
      batch.clear();
      for (auto& e : entries) {
        if (e.due <= now) {
          e.w->Finish();
          e.due = e.w->Due();
        }
      }
    }
  }
};

}  // namespace engine

struct WorkerGroup::Impl {
  Options opts;
  IoBackend backend = IoBackend::kAuto;
  std::string fallback_reason;
  mutable std::mutex mu;  // the threads' counts
  std::vector<std::unique_ptr<engine::GroupThread>> threads;
};

WorkerGroup::WorkerGroup(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::shared_ptr<WorkerGroup>> WorkerGroup::Create(Options opts) {
  if (opts.threads < 1)
    opts.threads = 1;
  if (opts.io == IoBackend::kAuto) {
    if (const char* env = std::getenv("SLUICE_PROXY_IO"); env && *env) {
      auto b = ParseIoBackend(env);
      SLUICE_RETURN_IF_ERROR_CTX(b, "SLUICE_PROXY_IO");
      opts.io = *b;
    }
  }
  auto impl = std::make_unique<Impl>();
  impl->opts = opts;
  std::shared_ptr<WorkerGroup> g(new WorkerGroup(std::move(impl)));
  std::vector<std::promise<Result<void>>> started(static_cast<std::size_t>(opts.threads));
  for (int i = 0; i < opts.threads; ++i) {
    auto t = std::make_unique<engine::GroupThread>();
    EventLoop::Options lo;
    lo.backend = opts.io;
    lo.buffers = opts.io_buffers;
    auto loop = EventLoop::Create(lo);
    SLUICE_RETURN_IF_ERROR_CTX(loop, "worker group thread " + std::to_string(i));
    t->loop = std::move(*loop);
    if (i == 0) {
      g->impl_->backend = t->loop->backend();
      g->impl_->fallback_reason = t->loop->fallback_reason();
    }
    t->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (t->wake_fd < 0)
      return FailErrno("worker group thread " + std::to_string(i) + ": eventfd", errno);
    t->wake.fd = t->wake_fd;
    if (!t->loop->Add(t->wake_fd, EPOLLIN, &t->wake, EventLoop::Kind::kPoll))
      return FailErrno("worker group thread " + std::to_string(i) + ": watching its eventfd",
                       errno);
    engine::GroupThread* tp = t.get();
    auto* ready = &started[static_cast<std::size_t>(i)];
    std::string name = opts.name.substr(0, 10) + "-g" + std::to_string(i);
    g->impl_->threads.push_back(std::move(t));
    tp->thread = std::thread([tp, ready, name] {
      pthread_setname_np(pthread_self(), name.c_str());
      Result<void> r = tp->loop->Activate();
      const bool ok = r.has_value();
      ready->set_value(std::move(r));
      if (ok)
        tp->Loop();
    });
  }
  std::optional<Error> failed;
  for (auto& p : started) {
    auto r = p.get_future().get();
    if (!r && !failed)
      failed = r.error();
  }
  if (failed)
    return Wrap("starting a worker group thread", *failed);  // ~WorkerGroup ends the others
  return g;
}

WorkerGroup::~WorkerGroup() {
  for (auto& t : impl_->threads) {
    {
      std::lock_guard lock(t->mu);
      t->stop = true;
    }
    if (t->thread.joinable()) {
      t->Wake();
      t->thread.join();
    }
  }
  impl_->threads.clear();
}

int WorkerGroup::threads() const {
  return static_cast<int>(impl_->threads.size());
}

IoBackend WorkerGroup::io_backend() const {
  return impl_->backend;
}

const std::string& WorkerGroup::io_fallback_reason() const {
  return impl_->fallback_reason;
}

std::vector<int> WorkerGroup::Attached() const {
  std::lock_guard lock(impl_->mu);
  std::vector<int> out;
  for (const auto& t : impl_->threads)
    out.push_back(t->count);
  return out;
}

engine::GroupThread* WorkerGroup::Pick() {
  std::lock_guard lock(impl_->mu);
  engine::GroupThread* best = nullptr;
  for (auto& t : impl_->threads) {
    if (!best || t->count < best->count)
      best = t.get();
  }
  ++best->count;
  return best;
}

Result<void> WorkerGroup::Attach(engine::GroupThread* t, engine::Worker* w) {
  const engine::Worker::SharedLoop shared = t->Shared();
  if (auto r = w->Init(&shared); !r) {
    std::lock_guard lock(impl_->mu);
    --t->count;
    return r;
  }
  t->Run([t, w] { t->Add(w); });
  return {};
}

void WorkerGroup::Detach(engine::GroupThread* t, engine::Worker* w) {
  t->Run([t, w] { t->Remove(w); });
  std::lock_guard lock(impl_->mu);
  --t->count;
}

}  // namespace sluice::proxy
