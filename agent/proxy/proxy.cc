// The engine's front: Proxy starts its workers, builds and publishes config snapshots
// (keeping the listening sockets a new config still uses), drains and stops. The
// default listener opener and original-destination lookup live here too.
//
// The engine itself, by role (all in namespace sluice::proxy::engine):
//   worker.{h,cc}            a worker: accept, snapshot swap, idle sweep, its loop
//   worker_group.cc          the shared threads many Proxies' workers run on (worker_group.h)
//   worker_context.h         what a worker's parts reach it through (timers, clock, stats)
//   timer_heap.h             the worker's timers
//   session.{h,cc}           a downstream connection's life (router.cc, retry.cc,
//                            session_response.cc, tcp_tunnel.cc, access_log.cc: its paths)
//   upstream_conn.{h,cc}     one upstream connection and its response framing
//   upstream_pool.{h,cc}     the upstream pool, endpoint picking, outlier records
//   shadow_writer.{h,cc}     request mirroring
//   header_rewrite.{h,cc}    header mutations and what the proxy writes into heads
//   memory_budget.{h,cc}     the worker's buffer budget
#include "sluice/proxy/proxy.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/netfilter_ipv4.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <future>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "proxy_impl.h"
#include "sluice/proxy/worker_group.h"
#include "worker.h"

namespace sluice::proxy {

namespace {

Result<int> DefaultOpenListener(const ListenerConfig& l, uint16_t port) {
  auto addr = ParseIp(l.address, port);
  if (!addr)
    return Fail("listener " + l.name + ": address " + l.address + " is not an IP address");
  const sockaddr_storage& ss = *addr;
  const socklen_t len = ss.ss_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return FailErrno("listener " + l.name + ": socket", errno);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
  if (bind(fd, reinterpret_cast<const sockaddr*>(&ss), len) != 0) {
    int e = errno;
    close(fd);
    return FailErrno(fmt::format("listener {}: bind {}:{}", l.name, l.address, port), e);
  }
  if (listen(fd, 4096) != 0) {
    int e = errno;
    close(fd);
    return FailErrno("listener " + l.name + ": listen", e);
  }
  return fd;
}

uint16_t BoundPort(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0)
    return 0;
  if (ss.ss_family == AF_INET)
    return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  return ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
}

// netfilter's SO_ORIGINAL_DST (SOL_IP) and IP6T_SO_ORIGINAL_DST (SOL_IPV6), which the
// kernel path's getsockopt hook answers for redirected connections; the socket's family
// (the peer's, from accept) says which to ask.
constexpr int kIp6tSoOriginalDst = 80;  // IP6T_SO_ORIGINAL_DST, linux/netfilter_ipv6/ip6_tables.h

std::optional<sockaddr_storage> DefaultOriginalDst(int fd, int family) {
  sockaddr_storage ss{};
  const bool v6 = family == AF_INET6;
  socklen_t len = v6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
  if (getsockopt(fd, v6 ? SOL_IPV6 : SOL_IP, v6 ? kIp6tSoOriginalDst : SO_ORIGINAL_DST, &ss,
                 &len) != 0 ||
      ss.ss_family != family)
    return std::nullopt;
  return ss;
}

}  // namespace

Result<std::shared_ptr<const engine::Snapshot>> Proxy::Impl::BuildSnapshot(
    std::shared_ptr<const ProxyConfig> cfg) {
  auto s = std::make_shared<engine::Snapshot>();
  s->cfg = cfg;
  std::shared_ptr<const engine::Snapshot> old;
  {
    std::lock_guard<std::mutex> lock(mu);
    old = snap;
  }
  for (const ListenerConfig& l : cfg->listeners) {
    std::string key = fmt::format("{}:{}", l.address, l.port);
    std::shared_ptr<engine::ListenerSockets> socks;
    if (old && l.bind_to_port) {
      for (const auto& ol : old->listeners) {
        if (ol.socks->name == l.name && ol.socks->key == key)
          socks = ol.socks;
      }
    }
    if (!socks) {
      socks = std::make_shared<engine::ListenerSockets>();
      socks->name = l.name;
      socks->key = key;
      uint16_t port = l.port;
      for (int i = 0; l.bind_to_port && i < opts.workers; ++i) {
        auto fd = opts.open_listener(l, port);
        if (!fd && l.optional) {
          // Its address does not exist here (no IPv6 in this network namespace, say):
          // the listener stays without sockets (Port() answers 0) and the rest runs.
          for (int open_fd : socks->fds)
            close(open_fd);
          socks->fds.clear();
          port = 0;
          break;
        }
        SLUICE_RETURN_IF_ERROR_CTX(fd, "opening listeners");
        socks->fds.push_back(*fd);
        if (port == 0)
          port = BoundPort(*fd);
      }
      socks->port = l.bind_to_port ? port : 0;
    }
    s->listeners.push_back(engine::Snapshot::Listener{&l, socks});
  }
  return s;
}

void Proxy::Impl::Publish(std::shared_ptr<const engine::Snapshot> s) {
  {
    std::lock_guard<std::mutex> lock(mu);
    snap = std::move(s);
    version.fetch_add(1, std::memory_order_release);
  }
  for (auto& w : workers)
    w->Wake();
}

void RbacPolicyStats::Add(std::string_view policy, bool allowed, bool shadow) {
  std::lock_guard lock(mu_);
  auto it = counts_.find(policy);
  if (it == counts_.end()) {
    std::string_view key = counts_.size() < kMaxPolicies ? policy : kOverflow;
    it = counts_.find(key);
    if (it == counts_.end())
      it = counts_.emplace(std::string(key), Count{std::string(key)}).first;
  }
  Count& c = it->second;
  ++(shadow ? (allowed ? c.shadow_allowed : c.shadow_denied) : (allowed ? c.allowed : c.denied));
}

std::vector<RbacPolicyStats::Count> RbacPolicyStats::Snapshot() const {
  std::lock_guard lock(mu_);
  std::vector<Count> out;
  out.reserve(counts_.size());
  for (const auto& [name, c] : counts_)
    out.push_back(c);
  return out;
}

std::vector<NamedStat> NamedStats(const ProxyStats& s) {
  auto v = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
  return {
      {"requests_total", "HTTP requests", false, v(s.requests)},
      {"downstream_cx_total", "Downstream connections accepted", false, v(s.downstream_cx)},
      {"downstream_cx_active", "Downstream connections open", true, v(s.active_cx)},
      {"upstream_cx_total", "Upstream connections opened", false, v(s.upstream_cx)},
      {"upstream_cx_http2_total", "Upstream HTTP/2 connections opened", false,
       v(s.upstream_cx_http2)},
      {"upstream_rq_http2_total", "Requests sent upstream as HTTP/2 streams", false,
       v(s.upstream_rq_http2)},
      {"retries_total", "Request retries", false, v(s.retries)},
      {"mirrors_sent_total", "Mirror copies sent", false, v(s.mirrors_sent)},
      {"mirrors_dropped_total", "Mirror copies dropped at a limit", false, v(s.mirrors_dropped)},
      {"upstream_overflow_total", "Requests refused by a circuit breaker", false, v(s.overflow)},
      {"ejections_total", "Endpoints ejected by outlier detection", false, v(s.ejections)},
      {"downstream_cx_overflow_total", "Connections closed at a listener's limit", false,
       v(s.cx_overflow)},
      {"downstream_cx_idle_timeout_total", "Keep-alive connections closed idle", false,
       v(s.cx_idle_timeout)},
      {"no_filter_chain_match_total", "Connections no filter chain matched (closed, NR)", false,
       v(s.cx_no_chain)},
      {"downstream_cx_fail_closed_total",
       "Connections closed by a filter chain Sluice cannot serve (TLS termination)", false,
       v(s.cx_fail_closed)},
      {"ssl_handshake_error_total", "Downstream TLS handshakes that failed", false,
       v(s.tls_handshake_errors)},
      {"ssl_fail_verify_san_total",
       "Downstream TLS handshakes refused: no client certificate SAN matched", false,
       v(s.tls_fail_verify_san)},
      {"ssl_fail_verify_cert_hash_total",
       "Downstream TLS handshakes refused: the client certificate's hash is not pinned", false,
       v(s.tls_fail_verify_cert_hash)},
      {"downstream_rq_header_timeout_total", "Requests whose head came too slowly (408)", false,
       v(s.rq_header_timeout)},
      {"downstream_rq_timeout_total", "Requests not received within request_timeout (408)", false,
       v(s.rq_timeout)},
      {"downstream_rq_idle_timeout_total", "Requests idle past stream_idle_timeout", false,
       v(s.rq_idle_timeout)},
      {"downstream_rq_max_duration_reached_total", "Requests past their maximum stream duration",
       false, v(s.rq_max_duration)},
      {"upgrades_refused_total", "Upgrade requests refused (403)", false, v(s.upgrades_refused)},
      {"buffer_limit_waits_total", "Reads deferred by the worker buffer limit", false,
       v(s.buffer_limit_waits)},
      {"buffered_bytes", "Bytes held for downstream connections", true, v(s.buffered_bytes)},
      {"rbac_allowed_total", "Requests and connections RBAC filters allowed", false,
       v(s.rbac_allowed)},
      {"rbac_denied_total", "Requests (403) and connections (closed) RBAC filters denied", false,
       v(s.rbac_denied)},
      {"rbac_shadow_allowed_total", "Decisions of RBAC shadow rules that would allow", false,
       v(s.rbac_shadow_allowed)},
      {"rbac_shadow_denied_total", "Decisions of RBAC shadow rules that would deny", false,
       v(s.rbac_shadow_denied)},
  };
}

Proxy::Proxy(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<Proxy>> Proxy::Start(std::shared_ptr<const ProxyConfig> config,
                                            ProxyOptions options) {
  auto impl = std::make_unique<Impl>();
  if (options.workers < 1)
    options.workers = 1;
  if (!options.open_listener)
    options.open_listener = DefaultOpenListener;
  if (!options.original_dst)
    options.original_dst = DefaultOriginalDst;
  if (options.io == IoBackend::kAuto) {
    if (const char* env = std::getenv("SLUICE_PROXY_IO"); env && *env) {
      auto b = ParseIoBackend(env);
      SLUICE_RETURN_IF_ERROR_CTX(b, "SLUICE_PROXY_IO");
      options.io = *b;
    }
  }
  if (options.group && options.on_worker_start)
    return Fail(
        "on_worker_start needs threads of the proxy's own; with a worker group, "
        "make_socket decides where upstream sockets are made");
  if (options.group) {
    options.io = options.group->io_backend();
  }
  impl->opts = std::move(options);
  if (impl->opts.access_log_path.empty() || impl->opts.access_log_path == "/dev/stdout") {
    impl->log_fd = dup(STDOUT_FILENO);
  } else {
    impl->log_fd =
        open(impl->opts.access_log_path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (impl->log_fd < 0)
      return FailErrno("access log " + impl->opts.access_log_path, errno);
  }
  auto snap = impl->BuildSnapshot(std::move(config));
  SLUICE_RETURN_IF_ERROR(snap);
  if (const auto& group = impl->opts.group) {
    for (int i = 0; i < impl->opts.workers; ++i)
      impl->workers.push_back(std::make_unique<engine::Worker>(impl.get(), i));
    impl->Publish(*snap);  // before attaching: a group thread takes it at once
    auto proxy = std::unique_ptr<Proxy>(new Proxy(std::move(impl)));
    Impl& pi = *proxy->impl_;
    for (auto& w : pi.workers) {
      engine::GroupThread* t = group->Pick();
      if (auto r = group->Attach(t, w.get()); !r) {
        proxy->Stop();  // detaches those attached
        return Wrap("attaching a worker to its group", r.error());
      }
      pi.group_threads.push_back(t);
    }
    return proxy;
  }
  for (int i = 0; i < impl->opts.workers; ++i) {
    auto w = std::make_unique<engine::Worker>(impl.get(), i);
    SLUICE_RETURN_IF_ERROR(w->Init());
    impl->workers.push_back(std::move(w));
  }
  impl->Publish(*snap);
  std::vector<std::promise<Result<void>>> started(impl->workers.size());
  for (auto& w : impl->workers) {
    engine::Worker* wp = w.get();
    const auto& hook = impl->opts.on_worker_start;
    auto* ready = &started[static_cast<std::size_t>(wp->index())];
    impl->threads.emplace_back([wp, &hook, ready] {
      char name[16];
      std::snprintf(name, sizeof(name), "sluice-l7-%d", wp->index());
      pthread_setname_np(pthread_self(), name);
      Result<void> r = hook ? hook(wp->index()) : Result<void>{};
      if (r)
        r = wp->Activate();
      bool ok = r.has_value();
      ready->set_value(std::move(r));  // `ready` is gone after this line
      if (ok)
        wp->Run();
    });
  }
  std::optional<Error> failed;
  for (auto& p : started) {
    auto r = p.get_future().get();
    if (!r && !failed)
      failed = r.error();
  }
  auto proxy = std::unique_ptr<Proxy>(new Proxy(std::move(impl)));
  if (failed) {
    proxy->Stop();  // the workers that started see the empty snapshot and end
    return Wrap("starting a worker", *failed);
  }
  return proxy;
}

Result<void> Proxy::Update(std::shared_ptr<const ProxyConfig> config) {
  auto snap = impl_->BuildSnapshot(std::move(config));
  SLUICE_RETURN_IF_ERROR(snap);
  impl_->Publish(*snap);
  return {};
}

Result<void> Proxy::Drain() {
  std::shared_ptr<const ProxyConfig> current;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    if (!impl_->snap)
      return {};
    current = impl_->snap->cfg;
  }
  auto cfg = std::make_shared<ProxyConfig>(*current);
  for (auto& l : cfg->listeners)
    l.bind_to_port = false;  // every listening socket closes once the workers move on
  impl_->draining = true;
  return Update(std::move(cfg));
}

uint16_t Proxy::Port(std::string_view listener) const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  if (!impl_->snap)
    return 0;
  for (const auto& l : impl_->snap->listeners) {
    if (l.socks->name == listener)
      return l.socks->port;
  }
  return 0;
}

IoBackend Proxy::io_backend() const {
  return impl_->workers.empty() ? IoBackend::kAuto : impl_->workers.front()->io_backend();
}

std::string Proxy::io_fallback_reason() const {
  return impl_->workers.empty() ? std::string() : impl_->workers.front()->io_fallback_reason();
}

const ProxyStats& Proxy::stats() const {
  return impl_->stats;
}

void Proxy::Stop() {
  if (impl_->stopped)
    return;
  impl_->stopped = true;
  // Group threads: each worker leaves its thread first (its connections closed there),
  // so no shared loop ever runs a worker without a snapshot.
  for (std::size_t i = 0; i < impl_->group_threads.size(); ++i)
    impl_->opts.group->Detach(impl_->group_threads[i], impl_->workers[i].get());
  impl_->group_threads.clear();
  impl_->Publish(nullptr);
  for (auto& t : impl_->threads)
    t.join();
  impl_->threads.clear();
  impl_->workers.clear();
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->snap.reset();
  }
  if (impl_->log_fd >= 0)
    close(impl_->log_fd);
  impl_->log_fd = -1;
}

Proxy::~Proxy() {
  Stop();
}

}  // namespace sluice::proxy
