// A worker's loop: accepting, taking new snapshots, sweeping idle connections, timers,
// and the end of each event batch (see worker.h).
#include "worker.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <algorithm>
#include <mutex>

namespace sluice::proxy::engine {

Worker::Worker(Proxy::Impl* impl, int index)
    : impl_(impl),
      index_(index),
      ctx_(impl->stats, impl->opts, impl->draining, index),
      upstreams_(ctx_),
      shadow_(ctx_),
      budget_(ctx_),
      sessions_(ctx_) {
  ctx_.upstreams_ = &upstreams_;
  ctx_.shadow_ = &shadow_;
  ctx_.budget_ = &budget_;
  ctx_.sessions_ = &sessions_;
}

Worker::~Worker() {
  // First: an io_uring holds references to the sockets it watches. (A group thread's
  // worker was detached: its connections are closed and the loop is not its own.)
  own_loop_.reset();
  ctx_.loop_ = nullptr;
  sessions_.CloseAll();
  upstreams_.CloseAll();
  if (own_wake_fd_ && wake_fd_ >= 0)
    close(wake_fd_);
}

Result<void> Worker::Init(const SharedLoop* shared) {
  if (shared) {
    ctx_.loop_ = shared->loop;
    ctx_.clock_ = shared->clock;
    wake_fd_ = shared->wake_fd;
    published_ = shared->published;
    owner_.w = this;
    owner_.batch = shared->batch;
    ctx_.io_owner_ = &owner_;
  } else {
    EventLoop::Options lo;
    lo.backend = impl_->opts.io;
    lo.buffers = impl_->opts.io_buffers;
    auto loop = EventLoop::Create(lo);
    SLUICE_RETURN_IF_ERROR(loop);
    own_loop_ = std::move(*loop);
    ctx_.loop_ = own_loop_.get();
    wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wake_fd_ < 0)
      return FailErrno("eventfd", errno);
    own_wake_fd_ = true;
    wake_handler_.w = this;
    if (!ctx_.loop_->Add(wake_fd_, EPOLLIN, &wake_handler_, EventLoop::Kind::kPoll))
      return FailErrno("watching the wake-up eventfd", errno);
  }
  io_backend_ = ctx_.loop_->backend();
  io_fallback_reason_ = ctx_.loop_->fallback_reason();
  return {};
}

void Worker::Accept(ListenerHandler& l) {
  const ListenerConfig* lc = nullptr;
  for (const auto& sl : ctx_.snap_->listeners) {
    if (sl.socks->name == l.name)
      lc = sl.cfg;
  }
  // At most 64 per event, so one listener's burst cannot starve the connections already
  // open; the listening socket is reported again while connections wait (level-triggered).
  for (int i = 0; i < 64; ++i) {
    sockaddr_storage peer{};
    socklen_t plen = sizeof(peer);
    int cfd =
        accept4(l.fd, reinterpret_cast<sockaddr*>(&peer), &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (cfd < 0)
      return;
    if (!lc) {
      close(cfd);
      continue;
    }
    if (l.count->active.load(std::memory_order_relaxed) >=
        ctx_.opts().max_connections_per_listener) {
      close(cfd);  // as Envoy at a listener's connection limit: closed at once, counted
      ctx_.stats().cx_overflow.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    l.count->active.fetch_add(1, std::memory_order_relaxed);
    int one = 1;
    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    ctx_.stats().downstream_cx.fetch_add(1, std::memory_order_relaxed);
    ctx_.stats().active_cx.fetch_add(1, std::memory_order_relaxed);
    Session* s = sessions_.NewSession();
    s->Open(cfd, l.fd, peer, ctx_.snap_, lc, l.count);
  }
}

void Worker::SwapSnapshot() {
  std::shared_ptr<const Snapshot> next;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    next = impl_->snap;
    version_ = impl_->version.load();
  }
  if (!next) {
    for (auto& old : listeners_) {
      ctx_.loop_->Remove(old->fd);
      retired_listeners_.push_back(std::move(old));
    }
    listeners_.clear();
    upstreams_.CloseIdle();
    ctx_.snap_.reset();
    return;
  }
  // Listeners: keep handlers whose socket survives, add new ones, drop the rest.
  std::vector<std::unique_ptr<ListenerHandler>> keep;
  for (const auto& l : next->listeners) {
    if (l.socks->fds.empty())
      continue;  // bind_to_port false: reached only through a hand-over
    int fd = l.socks->fds[static_cast<std::size_t>(index_)];
    std::unique_ptr<ListenerHandler> h;
    for (auto& old : listeners_) {
      if (old && old->fd == fd)
        h = std::move(old);
    }
    if (!h) {
      h = std::make_unique<ListenerHandler>();
      h->w = this;
      h->io_owner = ctx_.io_owner();
      h->fd = fd;
      h->name = l.socks->name;
      h->count = l.socks->count;
      ctx_.loop_->Add(fd, EPOLLIN, h.get(), EventLoop::Kind::kPoll);
    }
    keep.push_back(std::move(h));
  }
  for (auto& old : listeners_) {
    if (old) {
      ctx_.loop_->Remove(old->fd);
      // Its event may still be in the current batch: destroyed after the batch.
      retired_listeners_.push_back(std::move(old));
    }
  }
  listeners_ = std::move(keep);
  ctx_.snap_ = std::move(next);
  upstreams_.Rebase();
}

void Worker::SweepIdle() {
  const bool draining = impl_->draining.load(std::memory_order_relaxed);
  // Near a listener's connection limit, idle connections make room sooner (as Envoy's
  // overload manager scales the idle timeout down).
  const uint32_t pressed = ctx_.opts().max_connections_per_listener / 4 * 3;
  for (auto& s : sessions_.all()) {
    if (s->fd < 0 || s->phase != Session::Phase::kHead || !s->in.empty() || !s->out.empty() ||
        !s->chain || !s->chain->is_http) {
      continue;
    }
    int64_t limit = s->chain->http.idle_timeout.count();
    if (s->lcount && s->lcount->active.load(std::memory_order_relaxed) >= pressed) {
      const int64_t overload = ctx_.opts().overload_idle_timeout.count();
      limit = limit > 0 ? std::min(limit, overload) : overload;
    }
    if (draining) {
      s->Close();
    } else if (limit > 0 && ctx_.now() - s->last_active_ms >= limit) {
      ctx_.stats().cx_idle_timeout.fetch_add(1, std::memory_order_relaxed);
      s->Close();
    }
  }
  for (std::size_t i = 0; i < sessions_.all_h2().size(); ++i)
    sessions_.all_h2()[i]->Sweep(draining);
}

void Worker::RunTimers() {
  while (!ctx_.timers_.empty() && ctx_.timers_.front()->deadline <= ctx_.now()) {
    Timer* t = ctx_.timers_.front();
    ctx_.timers_.Remove(*t);
    t->owner->OnTimer(t->kind);
  }
}

void Worker::FlushLog() {
  if (ctx_.log_.size() == 0 || impl_->log_fd < 0) {
    ctx_.log_.clear();
    return;
  }
  const char* p = ctx_.log_.data();
  std::size_t n = ctx_.log_.size();
  while (n > 0) {
    ssize_t r = write(impl_->log_fd, p, n);
    if (r <= 0)
      break;
    p += r;
    n -= static_cast<std::size_t>(r);
  }
  ctx_.log_.clear();
}

bool Worker::Prepare(int64_t now_ms, int* timeout_ms) {
  if (impl_->version.load(std::memory_order_acquire) != version_)
    SwapSnapshot();
  if (!ctx_.snap_)
    return false;  // Stop() publishes an empty snapshot
  ctx_.now_ms_ = now_ms;
  if (*timeout_ms == 0)
    return true;
  if (sessions_.has_deferred() || upstreams_.has_deferred() || ctx_.log_.size() > 0 ||
      shadow_.has_flush()) {
    *timeout_ms = 0;
    return true;
  }
  // Idle connections are swept every 100 ms (a walk over this worker's sessions).
  int64_t t = std::max<int64_t>(next_sweep_ms_ - now_ms, 0);
  if (!ctx_.timers_.empty())
    t = std::min<int64_t>(t, std::max<int64_t>(ctx_.timers_.front()->deadline - now_ms, 0));
  t = std::min<int64_t>(t, 100);
  if (*timeout_ms < 0 || t < *timeout_ms)
    *timeout_ms = static_cast<int>(t);
  return true;
}

bool Worker::SwapIfNew() {
  if (impl_->version.load(std::memory_order_acquire) == version_)
    return false;
  SwapSnapshot();
  return true;
}

int64_t Worker::Due() const {
  if (sessions_.has_deferred() || upstreams_.has_deferred() || ctx_.log_.size() > 0 ||
      shadow_.has_flush())
    return ctx_.now();
  int64_t due = next_sweep_ms_;
  if (!ctx_.timers_.empty())
    due = std::min(due, ctx_.timers_.front()->deadline);
  return due;
}

bool Worker::AfterWait(int64_t now_ms) {
  ctx_.now_ms_ = now_ms;
  // Again after the wait: a request that arrives after Update() returned must see the
  // new config even when it comes in the same batch as the wake-up.
  if (impl_->version.load(std::memory_order_acquire) != version_) {
    SwapSnapshot();
    if (!ctx_.snap_)
      return false;
  }
  return true;
}

void Worker::Finish() {
  // Each step only when it has something to do: a group thread calls this for every
  // worker attached to it, most of them idle.
  const int64_t now = ctx_.now();
  if (!ctx_.timers_.empty() && ctx_.timers_.front()->deadline <= now)
    RunTimers();
  if (shadow_.has_flush())
    shadow_.FlushMirrors();
  if (now >= next_sweep_ms_) {
    next_sweep_ms_ = now + 100;
    SweepIdle();
  }
  if (sessions_.has_deferred())
    sessions_.EndBatch();
  if (upstreams_.has_deferred())
    upstreams_.EndBatch();
  if (!retired_listeners_.empty())
    retired_listeners_.clear();
  if (budget_.has_waiters())
    budget_.ResumeMemoryWaiters();
  if (ctx_.log_.size() > 0)
    FlushLog();
}

void Worker::Detach() {
  for (auto& l : listeners_)
    ctx_.loop_->Remove(l->fd);
  listeners_.clear();
  retired_listeners_.clear();
  // The loop closes each socket once what it took to send is out, and delivers no
  // event for it afterwards; the Session and UpstreamConn objects go with the worker.
  for (auto& s : sessions_.all()) {
    if (s->fd >= 0) {
      ctx_.loop_->Close(s->fd);
      s->fd = -1;
    }
  }
  for (auto& h : sessions_.all_h2())
    h->CloseSocket(ctx_.loop_);
  upstreams_.CloseAll(ctx_.loop_);
  FlushLog();
  ctx_.snap_.reset();
  ctx_.loop_ = nullptr;
}

void Worker::Run() {
  while (true) {
    int timeout = -1;
    if (!Prepare(NowMs(), &timeout))
      break;
    ctx_.loop_->Poll(timeout);
    if (!AfterWait(NowMs()))
      break;
    ctx_.loop_->Dispatch();
    Finish();
  }
  // Shutdown: close every live connection (the loop goes first: an io_uring holds
  // references to the sockets it watches, which would keep them open).
  own_loop_.reset();
  ctx_.loop_ = nullptr;
  sessions_.CloseAll();
  upstreams_.CloseAll();
  FlushLog();
}

}  // namespace sluice::proxy::engine
