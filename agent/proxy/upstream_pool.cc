// The worker's upstream connection pool and its endpoints' outlier record (see
// upstream_pool.h).
#include "upstream_pool.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "h2_upstream.h"
#include "session.h"

namespace sluice::proxy::engine {

UpstreamPool::UpstreamPool(WorkerContext& ctx) : ctx_(ctx) {
  deferred_.reserve(256);
  pending_.reserve(256);
}

UpstreamPool::~UpstreamPool() = default;

int UpstreamPool::OpenSocket(const Cluster* c, Endpoint* ep) {
  // Made where ProxyOptions::make_socket says (a pod's network namespace, for a worker
  // on a shared group thread).
  constexpr int kType = SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC;
  const auto& make = ctx_.opts().make_socket;
  int fd = make ? make(ep->addr.ss_family, kType) : socket(ep->addr.ss_family, kType, 0);
  if (fd < 0)
    return -1;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (uint32_t mark = ctx_.opts().upstream_mark;
      mark != 0 && setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) != 0) {
    close(fd);  // unmarked, it would be redirected back into this proxy
    return -1;
  }
  // upstream_bind_config: leave from the cluster's source address (istiod's 127.0.0.6).
  if (c->bind_source && c->bind_source->ss_family == ep->addr.ss_family) {
    const socklen_t len =
        c->bind_source->ss_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
    if (bind(fd, reinterpret_cast<const sockaddr*>(&*c->bind_source), len) != 0) {
      close(fd);
      return -1;
    }
  }
  int r = connect(fd, reinterpret_cast<const sockaddr*>(&ep->addr), ep->addr_len);
  if (r != 0 && errno != EINPROGRESS) {
    close(fd);
    return -1;
  }
  return fd;
}

UpstreamConn* UpstreamPool::NewConn(const std::shared_ptr<const Snapshot>& snap, const Cluster* c,
                                    Endpoint* ep) {
  if (free_upstreams_.empty()) {
    all_upstreams_.push_back(std::make_unique<UpstreamConn>());
    UpstreamConn* nu = all_upstreams_.back().get();
    nu->w = &ctx_;
    nu->io_owner = ctx_.io_owner();
    nu->connect_timer = Timer{nu, 0};
    free_upstreams_.push_back(nu);
  }
  UpstreamConn* u = free_upstreams_.back();
  free_upstreams_.pop_back();
  ++u->gen;
  u->snap = snap;
  u->cluster = c;
  u->ep = ep;
  u->owner = nullptr;
  u->tunnel = false;
  u->read_paused = false;
  u->peer_closed = false;
  u->in.Clear();
  u->out.Clear();
  u->ResetResponse();
  return u;
}

UpstreamConn* UpstreamPool::GetUpstream(const std::shared_ptr<const Snapshot>& snap,
                                        const Cluster* c, Endpoint* ep, bool* overflow,
                                        bool for_mirror, bool http2) {
  *overflow = false;
  if (http2)
    return GetStream(snap, c, ep, overflow, for_mirror);
  auto it = idle_.find(ep);
  if (it != idle_.end()) {
    while (!it->second.empty()) {
      UpstreamConn* u = it->second.back();
      it->second.pop_back();
      if (u->cluster != c) {  // another cluster object (an older config's): do not mix
        ReleaseUpstream(u, false);
        continue;
      }
      ++u->gen;
      u->ResetResponse();
      u->in.Clear();
      u->out.Clear();
      return u;
    }
  }
  if (c->active_connections.load(std::memory_order_relaxed) >= c->limits.max_connections ||
      (for_mirror && mirror_conns_ >= ctx_.opts().mirror_max_connections)) {
    *overflow = true;
    return nullptr;
  }
  int fd = OpenSocket(c, ep);
  if (fd < 0)
    return nullptr;
  UpstreamConn* u = NewConn(snap, c, ep);
  u->fd = fd;
  u->connecting = true;
  std::strcpy(u->local_addr, "-");
  u->counted = true;
  u->mirror_conn = for_mirror;
  if (for_mirror)
    ++mirror_conns_;
  c->active_connections.fetch_add(1, std::memory_order_relaxed);
  ctx_.stats().upstream_cx.fetch_add(1, std::memory_order_relaxed);
  u->events = EPOLLOUT;
  ctx_.loop().Add(fd, u->events, u, EventLoop::Kind::kConnecting);
  ctx_.Arm(u->connect_timer, c->connect_timeout.count());
  return u;
}

UpstreamConn* UpstreamPool::GetStream(const std::shared_ptr<const Snapshot>& snap, const Cluster* c,
                                      Endpoint* ep, bool* overflow, bool for_mirror) {
  H2Upstream* h = nullptr;
  if (auto it = h2_.find(ep); it != h2_.end()) {
    // The busiest connection that can take one more: streams gather on few connections.
    for (H2Upstream* x : it->second) {
      if (x->cluster == c && x->CanTake() && (!h || x->streams() > h->streams()))
        h = x;
    }
  }
  if (!h) {
    if (c->active_connections.load(std::memory_order_relaxed) >= c->limits.max_connections ||
        (for_mirror && mirror_conns_ >= ctx_.opts().mirror_max_connections)) {
      *overflow = true;
      return nullptr;
    }
    int fd = OpenSocket(c, ep);
    if (fd < 0)
      return nullptr;
    if (free_h2_.empty()) {
      all_h2_.push_back(std::make_unique<H2Upstream>());
      H2Upstream* nh = all_h2_.back().get();
      nh->w = &ctx_;
      nh->io_owner = ctx_.io_owner();
      free_h2_.push_back(nh);
    }
    h = free_h2_.back();
    free_h2_.pop_back();
    ++h->gen;
    h->mirror_conn = for_mirror;
    if (for_mirror)
      ++mirror_conns_;
    h->counted = true;
    c->active_connections.fetch_add(1, std::memory_order_relaxed);
    ctx_.stats().upstream_cx.fetch_add(1, std::memory_order_relaxed);
    ctx_.stats().upstream_cx_http2.fetch_add(1, std::memory_order_relaxed);
    h->Open(fd, snap, c, ep);
    h2_[ep].push_back(h);
  }
  UpstreamConn* u = NewConn(snap, c, ep);
  u->counted = false;  // the connection is counted, not its streams
  u->mirror_conn = false;
  h->Attach(u);
  ctx_.stats().upstream_rq_http2.fetch_add(1, std::memory_order_relaxed);
  return u;
}

void UpstreamPool::ReleaseStream(UpstreamConn* u) {
  H2Upstream* h = u->h2;
  const Cluster* c = u->cluster;
  u->owner = nullptr;
  ++u->gen;
  ctx_.Cancel(u->connect_timer);
  h->Detach(u);
  u->snap.reset();
  u->in.Clear();
  u->out.Clear();
  u->in.Shrink(0);
  u->out.Shrink(0);
  deferred_.push_back(u);
  if (h->streams() == 0 && h->fd >= 0)
    H2Idle(h);
  KickPending(c);  // a stream slot freed
}

void UpstreamPool::H2Idle(H2Upstream* h) {
  if (h->fd < 0 || h->streams() != 0)
    return;
  if (h->closing || h->failed || !CurrentH2(h) || ctx_.draining()) {
    h->Shutdown();
    CloseH2(h);
    return;
  }
  if (h->cluster->idle_timeout.count() > 0)
    ctx_.Arm(h->idle_timer, h->cluster->idle_timeout.count());
}

void UpstreamPool::FailH2(H2Upstream* h, UpFailure f) {
  if (h->fd < 0)
    return;
  h->failed = h->closing = true;
  ctx_.Cancel(h->connect_timer);
  ctx_.Cancel(h->deadline_timer);
  std::vector<std::pair<UpstreamConn*, uint64_t>> streams;
  streams.reserve(h->attached().size());
  for (UpstreamConn* u : h->attached())
    streams.emplace_back(u, u->gen);
  for (auto [u, g] : streams) {
    if (u->gen != g || u->h2 != h)
      continue;
    // A stream the server refused (its GOAWAY named a lower last-stream-id) before the
    // connection went never reached the application: it fails as refused.
    const UpFailure why =
        u->h2s.closed && u->h2s.close_code == h2::kRefusedStream ? UpFailure::kRefused : f;
    if (u->owner)
      u->owner->OnUpFailure(u, why);  // the owner releases it (ReleaseStream)
    else
      ReleaseUpstream(u, false);
  }
  CloseH2(h);
}

void UpstreamPool::CloseH2(H2Upstream* h) {
  if (h->fd < 0)
    return;
  // Streams still bound (none when called from FailH2 or an idle path) are failed first.
  if (h->streams() != 0 && !h->failed) {
    FailH2(h, UpFailure::kReset);
    return;
  }
  ctx_.Cancel(h->connect_timer);
  ctx_.Cancel(h->idle_timer);
  ctx_.Cancel(h->deadline_timer);
  ctx_.loop().Close(h->fd);
  h->fd = -1;
  ++h->gen;
  if (auto it = h2_.find(h->ep); it != h2_.end()) {
    auto& v = it->second;
    v.erase(std::remove(v.begin(), v.end(), h), v.end());
    if (v.empty())
      h2_.erase(it);
  }
  const Cluster* c = h->cluster;
  if (h->counted) {
    c->active_connections.fetch_sub(1, std::memory_order_relaxed);
    h->counted = false;
  }
  if (h->mirror_conn) {
    --mirror_conns_;
    h->mirror_conn = false;
  }
  h->Reset();
  deferred_h2_.push_back(h);
  KickPending(c);  // a connection slot freed
}

bool UpstreamPool::CurrentH2(H2Upstream* h) {
  const auto& now = ctx_.snap();
  if (h->snap == now)
    return true;
  if (!now || !h->cluster || now->cfg->ClusterAt(h->cluster->id) != h->cluster)
    return false;
  h->snap = now;
  return true;
}

std::size_t UpstreamPool::h2_connections() const {
  std::size_t n = 0;
  for (const auto& [ep, v] : h2_)
    n += v.size();
  return n;
}

void UpstreamPool::CloseAll(EventLoop* loop) {
  CloseAllConns(loop);
  for (auto& h : all_h2_) {
    if (h->fd >= 0) {
      if (loop)
        loop->Close(h->fd);
      else
        close(h->fd);
      h->fd = -1;
    }
  }
}

void UpstreamPool::ReleaseUpstream(UpstreamConn* u, bool reuse) {
  if (u->h2) {
    ReleaseStream(u);
    return;
  }
  const Cluster* c = u->cluster;
  u->owner = nullptr;
  ++u->gen;
  ctx_.Cancel(u->connect_timer);
  if (reuse && !u->connecting && !u->peer_closed && !u->tunnel && u->in.empty() && u->out.empty() &&
      Current(u)) {
    u->ResetResponse();
    u->read_paused = false;
    u->SetEvents(EPOLLIN | EPOLLRDHUP);
    idle_[u->ep].push_back(u);
  } else {
    // Drop from the idle list if it is there (a pooled connection the server closed).
    auto it = idle_.find(u->ep);
    if (it != idle_.end()) {
      auto& v = it->second;
      v.erase(std::remove(v.begin(), v.end(), u), v.end());
    }
    if (u->fd >= 0) {
      ctx_.loop().Close(u->fd);
      u->fd = -1;
    }
    if (u->counted) {
      u->cluster->active_connections.fetch_sub(1, std::memory_order_relaxed);
      u->counted = false;
    }
    if (u->mirror_conn) {
      --mirror_conns_;
      u->mirror_conn = false;
    }
    u->snap.reset();
    u->in.Shrink(0);
    u->out.Shrink(0);
    deferred_.push_back(u);
  }
  KickPending(c);
}

void UpstreamPool::KickPending(const Cluster* c) {
  for (std::size_t i = 0; i < pending_.size(); ++i) {
    Session* s = pending_[i];
    if (s->cluster != c)
      continue;
    pending_.erase(pending_.begin() + static_cast<std::ptrdiff_t>(i));
    c->pending_requests.fetch_sub(1, std::memory_order_relaxed);
    --s->attempt;
    s->StartAttempt();
    return;
  }
}

Endpoint* UpstreamPool::OriginalDstEndpoint(const sockaddr_storage& addr) {
  char key[64];
  FormatAddr(addr, key, sizeof(key));
  auto it = original_dst_.find(std::string_view(key));
  if (it != original_dst_.end())
    return it->second.get();
  auto ep = std::make_unique<Endpoint>();
  SetAddress(*ep, addr);
  Endpoint* raw = ep.get();
  original_dst_.emplace(key, std::move(ep));
  return raw;
}

void UpstreamPool::OnEndpointResult(const Cluster& c, Endpoint* ep, bool failure) {
  if (!ep)
    return;
  if (RecordEndpointResult(c, *ep, failure, ctx_.now()))
    ctx_.stats().ejections.fetch_add(1, std::memory_order_relaxed);
}

bool UpstreamPool::Current(UpstreamConn* u) {
  const auto& now = ctx_.snap();
  if (u->snap == now)
    return true;
  // Made on an older config: kept when the config in force still has its cluster, the
  // same object (CompileUpdate shares the clusters a change did not touch); it then
  // holds the config in force, which keeps the cluster and its endpoints alive.
  if (!now || !u->cluster || now->cfg->ClusterAt(u->cluster->id) != u->cluster)
    return false;
  u->snap = now;
  return true;
}

void UpstreamPool::Rebase() {
  std::vector<UpstreamConn*> stale;
  for (auto& [ep, v] : idle_) {
    for (UpstreamConn* u : v) {
      if (!Current(u))
        stale.push_back(u);
    }
  }
  for (UpstreamConn* u : stale)
    ReleaseUpstream(u, false);
  std::erase_if(idle_, [](const auto& e) { return e.second.empty(); });
  // HTTP/2 connections of a cluster the config no longer has: closed when idle, else
  // they take no new stream and close after their last.
  std::vector<H2Upstream*> old;
  for (auto& [ep, v] : h2_) {
    for (H2Upstream* h : v) {
      if (!CurrentH2(h)) {
        h->closing = true;
        if (h->streams() == 0)
          old.push_back(h);
      }
    }
  }
  for (H2Upstream* h : old) {
    h->Shutdown();
    CloseH2(h);
  }
}

void UpstreamPool::CloseIdle() {
  std::vector<UpstreamConn*> all;
  for (auto& [ep, v] : idle_)
    all.insert(all.end(), v.begin(), v.end());
  for (UpstreamConn* u : all)
    ReleaseUpstream(u, false);
  idle_.clear();
  std::vector<H2Upstream*> idle_h2;
  for (auto& [ep, v] : h2_) {
    for (H2Upstream* h : v) {
      if (h->streams() == 0)
        idle_h2.push_back(h);
    }
  }
  for (H2Upstream* h : idle_h2) {
    h->Shutdown();
    CloseH2(h);
  }
}

}  // namespace sluice::proxy::engine
