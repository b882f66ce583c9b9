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
  ctx_.loop_.reset();  // first: an io_uring holds references to the sockets it watches
  sessions_.CloseAll();
  upstreams_.CloseAll();
  if (wake_fd_ >= 0)
    close(wake_fd_);
}

Result<void> Worker::Init() {
  EventLoop::Options lo;
  lo.backend = impl_->opts.io;
  lo.buffers = impl_->opts.io_buffers;
  auto loop = EventLoop::Create(lo);
  SLUICE_RETURN_IF_ERROR(loop);
  ctx_.loop_ = std::move(*loop);
  io_backend_ = ctx_.loop_->backend();
  io_fallback_reason_ = ctx_.loop_->fallback_reason();
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0)
    return FailErrno("eventfd", errno);
  wake_handler_.w = this;
  if (!ctx_.loop_->Add(wake_fd_, EPOLLIN, &wake_handler_, EventLoop::Kind::kPoll))
    return FailErrno("watching the wake-up eventfd", errno);
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
    } else if (limit > 0 && ctx_.now_ms_ - s->last_active_ms >= limit) {
      ctx_.stats().cx_idle_timeout.fetch_add(1, std::memory_order_relaxed);
      s->Close();
    }
  }
}

void Worker::RunTimers() {
  while (!ctx_.timers_.empty() && ctx_.timers_.front()->deadline <= ctx_.now_ms_) {
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

void Worker::Run() {
  while (true) {
    if (impl_->version.load(std::memory_order_acquire) != version_)
      SwapSnapshot();
    if (!ctx_.snap_)
      break;  // Stop() publishes an empty snapshot
    ctx_.now_ms_ = NowMs();
    int timeout = -1;
    if (!ctx_.timers_.empty()) {
      timeout = static_cast<int>(
          std::clamp<int64_t>(ctx_.timers_.front()->deadline - ctx_.now_ms_, 0, 1000));
    }
    // Idle connections are swept every 100 ms (a walk over this worker's sessions).
    if (timeout < 0 || timeout > 100)
      timeout = 100;
    if (sessions_.has_deferred() || upstreams_.has_deferred() || ctx_.log_.size() > 0 ||
        shadow_.has_flush())
      timeout = 0;
    ctx_.loop_->Poll(timeout);
    ctx_.now_ms_ = NowMs();
    // Again after the wait: a request that arrives after Update() returned must see the
    // new config even when it comes in the same batch as the wake-up.
    if (impl_->version.load(std::memory_order_acquire) != version_) {
      SwapSnapshot();
      if (!ctx_.snap_)
        break;
    }
    ctx_.loop_->Dispatch();
    RunTimers();
    shadow_.FlushMirrors();
    if (ctx_.now_ms_ >= next_sweep_ms_) {
      next_sweep_ms_ = ctx_.now_ms_ + 100;
      SweepIdle();
    }
    sessions_.EndBatch();
    upstreams_.EndBatch();
    retired_listeners_.clear();
    if (budget_.has_waiters())
      budget_.ResumeMemoryWaiters();
    FlushLog();
  }
  // Shutdown: close every live connection (the loop goes first: an io_uring holds
  // references to the sockets it watches, which would keep them open).
  ctx_.loop_.reset();
  sessions_.CloseAll();
  upstreams_.CloseAll();
  FlushLog();
}

}  // namespace sluice::proxy::engine
