// The worker's upstream connection pool and its endpoints' outlier record (see
// upstream_pool.h).
#include "upstream_pool.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "session.h"

namespace sluice::proxy::engine {

UpstreamConn* UpstreamPool::GetUpstream(const std::shared_ptr<const Snapshot>& snap,
                                        const Cluster* c, Endpoint* ep, bool* overflow,
                                        bool for_mirror) {
  *overflow = false;
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
  // Made where ProxyOptions::make_socket says (a pod's network namespace, for a worker
  // on a shared group thread).
  constexpr int kType = SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC;
  const auto& make = ctx_.opts().make_socket;
  int fd = make ? make(ep->addr.ss_family, kType) : socket(ep->addr.ss_family, kType, 0);
  if (fd < 0)
    return nullptr;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (uint32_t mark = ctx_.opts().upstream_mark;
      mark != 0 && setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) != 0) {
    close(fd);  // unmarked, it would be redirected back into this proxy
    return nullptr;
  }
  // upstream_bind_config: leave from the cluster's source address (istiod's 127.0.0.6).
  if (c->bind_source && c->bind_source->ss_family == ep->addr.ss_family) {
    const socklen_t len =
        c->bind_source->ss_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
    if (bind(fd, reinterpret_cast<const sockaddr*>(&*c->bind_source), len) != 0) {
      close(fd);
      return nullptr;
    }
  }
  int r = connect(fd, reinterpret_cast<const sockaddr*>(&ep->addr), ep->addr_len);
  if (r != 0 && errno != EINPROGRESS) {
    close(fd);
    return nullptr;
  }
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
  u->fd = fd;
  u->snap = snap;
  u->cluster = c;
  u->ep = ep;
  u->owner = nullptr;
  u->connecting = true;
  u->tunnel = false;
  u->read_paused = false;
  u->peer_closed = false;
  u->in.Clear();
  u->out.Clear();
  u->ResetResponse();
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

void UpstreamPool::ReleaseUpstream(UpstreamConn* u, bool reuse) {
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
}

void UpstreamPool::CloseIdle() {
  std::vector<UpstreamConn*> all;
  for (auto& [ep, v] : idle_)
    all.insert(all.end(), v.begin(), v.end());
  for (UpstreamConn* u : all)
    ReleaseUpstream(u, false);
  idle_.clear();
}

}  // namespace sluice::proxy::engine
