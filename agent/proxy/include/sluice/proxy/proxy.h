// The L7 proxy engine: N workers, each with its own event loop (or a share of a worker
// group's, see worker_group.h) and its own SO_REUSEPORT listening socket per listener
// (shared-nothing: a connection lives and dies on the worker that accepted it). Configuration is an
// immutable ProxyConfig published with Update(); each worker picks up the newest one between
// events, and requests already running finish on the config they started with.
#pragma once

#include <sys/socket.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/common/result.h"
#include "sluice/proxy/config.h"
#include "sluice/proxy/event_loop.h"
#include "sluice/proxy/istio_stats.h"

namespace sluice::proxy {

class WorkerGroup;  // worker_group.h

struct ProxyOptions {
  // Workers: each its own thread, or, with `group`, each attached to one of the group's
  // threads (the one with the fewest workers), many Proxies sharing them.
  int workers = 1;
  // A fixed set of threads this proxy's workers run on, beside other Proxies' (the node
  // agent's pods). The proxy keeps its own snapshot, counters, pools, budget and drain;
  // the group's threads run its loop iterations. None: threads of its own. With a group,
  // `io` and `io_buffers` are the group's, and on_worker_start is refused (a shared
  // thread cannot move into one pod's network namespace): see make_socket.
  std::shared_ptr<WorkerGroup> group;
  // Access log destination ("" or "/dev/stdout" for stdout). Each chain's access_log
  // flag decides whether its requests are logged.
  std::string access_log_path;
  // Istio's standard metrics of this proxy's pod (istio_stats.h): every request and TCP
  // connection a chain serves is counted there. None: not kept.
  std::shared_ptr<telemetry::IstioStats> istio_stats;
  // Opens a listening socket for one worker. Default: socket(), SO_REUSEADDR,
  // SO_REUSEPORT, bind(address:port), listen(). The node agent passes one that opens
  // it inside a pod's network namespace. Must return a non-blocking listening fd.
  std::function<Result<int>(const ListenerConfig&, uint16_t port)> open_listener;
  // The original destination of an accepted connection (its socket and address family),
  // for listeners that use it. Default: getsockopt(SO_ORIGINAL_DST) at SOL_IP, or
  // IP6T_SO_ORIGINAL_DST at SOL_IPV6.
  std::function<std::optional<sockaddr_storage>(int fd, int family)> original_dst;
  // Runs first on each worker thread, before it serves anything; an error fails Start().
  // The node agent moves the thread into a pod's network namespace here (setns is per
  // thread), so the upstream sockets the worker makes leave from the pod.
  std::function<Result<void>(int worker)> on_worker_start;
  // Makes an upstream socket: (family, type) -> fd, or -1 with errno. Default:
  // socket(family, type, 0). The node agent's shared workers pass one that makes it in
  // the pod's network namespace (setns there, socket(), setns back: a socket keeps the
  // namespace it was made in), so a worker serving many pods connects from each. Called
  // on a worker's thread, for each new upstream connection (pooled ones are reused).
  std::function<int(int family, int type)> make_socket;
  // The pod's own addresses (the node agent's in-pod proxies). A connection the connect
  // hook redirected comes from the pod's loopback; its client is the pod's application,
  // so it is given the pod's address of its family, as an Envoy sidecar sees it: for
  // source-IP hashing (the kernel path hashes the pod's address too), x-forwarded-for
  // and the access log.
  std::vector<sockaddr_storage> pod_addresses;
  // SO_MARK on every upstream socket (0: none). The node agent sets the kernel's bypass
  // mark so its own connections are not redirected back to itself.
  uint32_t upstream_mark = 0;
  // Mirroring bounds, per worker: shadow requests in flight and their bytes. Beyond
  // either, new mirror copies are dropped (counted), never queued.
  std::size_t mirror_max_inflight = 256;
  // Upstream connections a worker opens for mirror copies (pooled ones included). A
  // copy that finds no idle pooled connection to its shadow and would exceed this is
  // dropped (counted), so a slow shadow never costs the worker connection set-ups.
  std::size_t mirror_max_connections = 16;
  std::size_t mirror_max_bytes = 8 * 1024 * 1024;
  IoBackend io = IoBackend::kAuto;
  // io_uring: receive buffers per worker (4 KiB each), shared by its connections; a
  // connection holds them only while its event is handled.
  unsigned io_buffers = 256;
  // Bytes a worker holds for its downstream connections (requests being received,
  // responses not yet written). Above it, connections holding more than a request head
  // stop being read (TCP pushes back on their clients) and upstream responses wait,
  // until the worker is below three quarters of it again.
  std::size_t worker_buffer_limit = 32 * 1024 * 1024;
  // Downstream connections open at once per listener (over all workers). A connection
  // beyond it is closed as soon as it is accepted (counted); above three quarters of it,
  // idle keep-alive connections are closed after overload_idle_timeout instead of the
  // connection manager's idle_timeout.
  uint32_t max_connections_per_listener = 4096;
  Millis overload_idle_timeout{5000};
};

// RBAC decisions per policy (Envoy's per-rule stats, rbac.policy.<name>.allowed and
// .denied): counted when a policy decided, enforced or shadow. At most kMaxPolicies
// names are kept; later ones count under kOverflow, so a churning config cannot grow it
// without bound.
class RbacPolicyStats {
 public:
  static constexpr std::size_t kMaxPolicies = 1024;
  static constexpr std::string_view kOverflow = "_other";
  struct Count {
    std::string policy;
    uint64_t allowed = 0, denied = 0, shadow_allowed = 0, shadow_denied = 0;
  };
  void Add(std::string_view policy, bool allowed, bool shadow);
  std::vector<Count> Snapshot() const;  // by policy name

 private:
  mutable std::mutex mu_;
  std::map<std::string, Count, std::less<>> counts_;
};

// Counters summed over workers (relaxed atomics; for tests and the admin page).
struct ProxyStats {
  std::atomic<uint64_t> downstream_cx{0};
  std::atomic<uint64_t> active_cx{0};  // downstream connections open now (a gauge)
  std::atomic<uint64_t> requests{0};
  std::atomic<uint64_t> upstream_cx{0};
  // HTTP/2 upstreams (h2_upstream.h): connections opened (Envoy's upstream_cx_http2_total)
  // and requests sent on them as streams.
  std::atomic<uint64_t> upstream_cx_http2{0};
  std::atomic<uint64_t> upstream_rq_http2{0};
  std::atomic<uint64_t> retries{0};
  std::atomic<uint64_t> mirrors_sent{0};
  std::atomic<uint64_t> mirrors_dropped{0};
  std::atomic<uint64_t> overflow{0};
  std::atomic<uint64_t> ejections{0};
  // Limits and timeouts (Envoy's names in brackets).
  std::atomic<uint64_t> cx_overflow{0};      // refused: listener limit [downstream_cx_overflow]
  std::atomic<uint64_t> cx_idle_timeout{0};  // [downstream_cx_idle_timeout]
  std::atomic<uint64_t> cx_no_chain{0};      // no filter chain matched [no_filter_chain_match]
  std::atomic<uint64_t> cx_fail_closed{0};   // closed by a chain that terminates TLS
  std::atomic<uint64_t> tls_handshake_errors{0};  // TLS termination failed [ssl.handshake_error]
  // ... of which a client certificate's SANs or its pinned hash did not match
  // [ssl.fail_verify_san, ssl.fail_verify_cert_hash]
  std::atomic<uint64_t> tls_fail_verify_san{0}, tls_fail_verify_cert_hash{0};
  std::atomic<uint64_t> rq_header_timeout{0};  // [downstream_rq_header_timeout]
  std::atomic<uint64_t> rq_timeout{0};         // request_timeout [downstream_rq_timeout]
  std::atomic<uint64_t> rq_idle_timeout{0};    // stream_idle_timeout [downstream_rq_idle_timeout]
  std::atomic<uint64_t> rq_max_duration{
      0};  // max_stream_duration [downstream_rq_max_duration_reached]
  std::atomic<uint64_t> upgrades_refused{0};    // 403: not in upgrade_configs
  std::atomic<uint64_t> buffer_limit_waits{0};  // reads deferred by worker_buffer_limit
  std::atomic<uint64_t> buffered_bytes{0};      // held for downstream connections now (a gauge)
  // RBAC filters (Envoy's rbac.allowed / denied / shadow_allowed / shadow_denied), HTTP
  // requests and TCP connections alike, and per policy.
  std::atomic<uint64_t> rbac_allowed{0};
  std::atomic<uint64_t> rbac_denied{0};
  std::atomic<uint64_t> rbac_shadow_allowed{0};
  std::atomic<uint64_t> rbac_shadow_denied{0};
  RbacPolicyStats rbac_policies;
};

// ProxyStats as named samples, for metrics and reports (one list, so every exporter
// shows the same names): "requests_total", "downstream_cx_active", ...
struct NamedStat {
  std::string_view name;
  std::string_view help;
  bool gauge = false;
  uint64_t value = 0;
};
std::vector<NamedStat> NamedStats(const ProxyStats& s);

class Proxy {
 public:
  static Result<std::unique_ptr<Proxy>> Start(std::shared_ptr<const ProxyConfig> config,
                                              ProxyOptions options);
  ~Proxy();
  Proxy(const Proxy&) = delete;
  Proxy& operator=(const Proxy&) = delete;

  // Publishes a new config. Listeners with the same name and address keep their
  // sockets; new ones are opened; removed ones are closed once every worker moved on.
  Result<void> Update(std::shared_ptr<const ProxyConfig> config);
  // Starts draining: every listener stops accepting (its socket is closed), requests in
  // flight finish, idle keep-alive connections are closed, and every response from then
  // on says `connection: close` and closes its connection after it. Stop() when
  // stats().active_cx reaches 0 or a deadline passes.
  Result<void> Drain();
  // The bound port of a listener (useful with port 0), or 0 when unknown or not open (an
  // optional listener whose address does not exist here).
  uint16_t Port(std::string_view listener) const;
  const ProxyStats& stats() const;
  // The I/O backend the workers use, and why io_uring was not (empty when it is).
  IoBackend io_backend() const;
  std::string io_fallback_reason() const;
  void Stop();

  struct Impl;

 private:
  explicit Proxy(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace sluice::proxy
