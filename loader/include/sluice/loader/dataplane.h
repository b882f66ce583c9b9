// The kernel data plane: loads (or adopts) Sluice's BPF programs and maps, attaches the
// programs to a cgroup through pinned links, and offers the typed API the agent uses to
// sync services and enrolment into the kernel.
//
// Everything lives under a pin root (default /sys/fs/bpf/sluice): maps by name, links
// under links/. The programs keep working when the process that loaded them exits or
// is killed; the next Open() adopts the pins, swaps in its freshly loaded programs
// through the existing links (no detach window, no second attachment) and rebuilds its
// view of the services from the maps. Cleanup() removes it all.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/bpf_abi.h"
#include "sluice/common/result.h"
#include "sluice/loader/kernel_features.h"
#include "sluice/loader/service.h"

namespace sluice {

struct MapSizes {
  uint32_t frontends = 65536;       // sluice_services: VIP:port entries
  uint32_t backends = 262144;       // sluice_backends: slots over all live revisions
  uint32_t maglev_tables = 1024;    // sluice_maglev: consistent-hash clusters
  uint32_t endpoints = 131072;      // sluice_endpoint_stats
  uint32_t enrolled_netns = 16384;  // sluice_enrolled
};

struct DataplaneOptions {
  std::string pin_root = "/sys/fs/bpf/sluice";
  std::string cgroup_path;  // empty: the cgroup2 mount's root, found in /proc/mounts
  MapSizes sizes;
  // Only open the pinned maps of a running data plane (no program load, no attach):
  // what sluicectl uses to inspect and edit state without touching the hooks.
  bool maps_only = false;
  // Free replaced revisions on a thread of the data plane's own, after the RCU grace
  // period, instead of in Apply (which then returns in microseconds, not after the 5-20
  // ms a grace period takes). For a long-lived owner (the agent); a short-lived one
  // (sluicectl) leaves it off, so nothing is left unfreed when it exits.
  bool reclaim_in_background = false;
  // Kernel features to treat as missing even where the kernel has them, so the fallback
  // runs (--kernel-fallback; see kernel_features.h). Ignored with maps_only.
  std::set<KernelFeature> kernel_fallbacks;
};

struct EnrolmentInfo {
  IpAddress ip4;  // the pod's addresses; client identity for consistent hashing
  IpAddress ip6{6, {}};
  // The agent's outbound listener on the pod's loopback (127.0.0.1 and ::1); services
  // that need L7 are redirected there. 0: the pod has none, such connects are refused.
  uint16_t proxy_port = 0;
  // outboundTrafficPolicy REGISTRY_ONLY: refuse connects to non-services (loopback and
  // port 53 excepted) instead of passing them through.
  bool registry_only = false;
};

// One kernel service (one family of a ServiceSpec) as read back from the maps.
struct KernelService {
  std::string name;
  uint8_t family = 4;
  uint32_t id = 0;
  uint32_t revision = 0;
  bool redirect_to_proxy = false;
  L7Reason l7_reason = L7Reason::kUnspecified;
  std::vector<sluice_frontend_key> frontends;
  std::vector<sluice_service_cluster> clusters;
  std::vector<std::vector<SocketAddress>> backends;  // per cluster, by slot
};

struct EndpointStats {
  SocketAddress endpoint;
  uint64_t active = 0;
  uint64_t total = 0;
};

using Counters = std::array<uint64_t, SLUICE_CNT_MAX>;

// Istio's TCP metrics of the kernel path (sluice_tcp_metrics): the connections one pod
// (its network namespace) made to one service address that the kernel sent to one
// endpoint. Bytes are the client socket's, added when a connection closes.
struct TcpMetricsRecord {
  uint64_t netns_cookie = 0;
  SocketAddress service;  // the address dialled
  SocketAddress backend;  // the endpoint chosen
  uint64_t opened = 0, closed = 0;
  uint64_t client_sent = 0;      // acknowledged by the endpoint (Istio: received bytes)
  uint64_t client_received = 0;  // received from the endpoint (Istio: sent bytes)
};

// Per-pod packet counters from the tc programs on the pod's host-side interface.
struct PodStats {
  bool registry_only = false;
  uint64_t from_pod_packets = 0, from_pod_bytes = 0;
  uint64_t to_pod_packets = 0, to_pod_bytes = 0;
  uint64_t denied_packets = 0;  // non-TCP dropped under REGISTRY_ONLY
};
[[nodiscard]] std::string_view CounterName(sluice_counter c);

// An address prefix: "10.0.0.0/8", "fd00::/64"; a bare address is a host prefix.
struct Cidr {
  IpAddress ip;
  uint8_t len = 32;
  [[nodiscard]] static Result<Cidr> Parse(std::string_view text);
  [[nodiscard]] std::string ToString() const;
  auto operator<=>(const Cidr&) const = default;
};

// One rule of a pod port's kernel policy: one network rbac filter of the port's inbound
// chain, projected to source prefixes (agent/proxy/rbac_l4.h). A DENY rule refuses the
// sources it holds; an ALLOW rule refuses all others (none held: refuses everything).
struct InboundPolicyRule {
  bool deny = false;
  std::vector<Cidr> sources;  // prefixes of the pod address's family; others are ignored
  auto operator<=>(const InboundPolicyRule&) const = default;
};

// A pod port's kernel policy as read back from the maps.
struct InboundPolicy {
  IpAddress pod;
  uint16_t port = 0;
  std::vector<InboundPolicyRule> rules;  // chain order
};

// Threads: Apply, Services and the other calls that use the services' C++ view
// (UpsertService, DeleteService) belong to one thread (the agent's kernel sync). The
// calls that only touch maps — Enrol, Unenrol, Enrolled, ReadCounters, Endpoints,
// Settings, SetSplice, SetTcpMetrics, TcpMetrics, AttachPod, DetachPod, Pods — may run beside them
// (the agent's CNI and admin threads do). Other processes may read the pinned maps at any time.
class Dataplane {
 public:
  // Loads the programs, creates or adopts the pinned maps and links, attaches.
  [[nodiscard]] static Result<std::unique_ptr<Dataplane>> Open(const DataplaneOptions& opts);
  // Detaches and removes every pin and link under pin_root. Idempotent.
  [[nodiscard]] static Result<void> Cleanup(const std::string& pin_root);

  ~Dataplane();
  Dataplane(const Dataplane&) = delete;
  Dataplane& operator=(const Dataplane&) = delete;

  // Creates or replaces services; deletes others by name. Atomic per service as seen by
  // a concurrent connect; once it returns, every new connect sees the new services. The
  // revisions it replaced are freed after an RCU grace period (no connect still holds
  // them then): before it returns (one grace period per call, however many services it
  // carries), or with reclaim_in_background by a thread of its own, so an update does
  // not wait for it (WaitReclaimed waits).
  [[nodiscard]] Result<void> Apply(const std::vector<ServiceSpec>& upserts,
                                   const std::vector<std::string>& deletes);
  [[nodiscard]] Result<void> UpsertService(const ServiceSpec& spec) { return Apply({spec}, {}); }
  // Returns once every revision Apply retired so far is freed.
  void WaitReclaimed();
  // Revisions freed by the reclaimer thread so far (0 without reclaim_in_background).
  [[nodiscard]] uint64_t ReclaimedInBackground() const;
  [[nodiscard]] Result<void> DeleteService(const std::string& name) { return Apply({}, {name}); }

  [[nodiscard]] Result<void> Enrol(uint64_t netns_cookie, const EnrolmentInfo& info);
  [[nodiscard]] Result<bool> Unenrol(uint64_t netns_cookie);  // false: was not enrolled
  [[nodiscard]] Result<std::map<uint64_t, EnrolmentInfo>> Enrolled() const;

  [[nodiscard]] Result<Counters> ReadCounters() const;
  [[nodiscard]] Result<std::vector<KernelService>> Services() const;
  [[nodiscard]] Result<std::vector<EndpointStats>> Endpoints() const;
  // Run-time switches (sluice_settings): sk_msg splicing of app <-> in-pod proxy
  // sockets, and the SO_MARK that exempts the agent's own upstream sockets.
  [[nodiscard]] Result<sluice_settings> Settings() const;
  // tc programs on a pod's host-side interface (ifindex in the caller's network
  // namespace): per-pod counters, and REGISTRY_ONLY for non-TCP traffic. Attaching
  // again replaces (adoption does it for every known pod).
  [[nodiscard]] Result<void> AttachPod(int ifindex, bool registry_only);
  [[nodiscard]] Result<void> DetachPod(int ifindex);
  [[nodiscard]] Result<std::map<int, PodStats>> Pods() const;  // by ifindex
  // The inbound side of a pod (pod_inbound.bpf.c): the sk_lookup program attached to the
  // pod's network namespace (`netns_fd`), through a link pinned per namespace cookie so
  // it outlives the agent; attaching again keeps the link and runs this load's program.
  // SetInbound sends TCP connections to (pod address, port) to `listener_fd`, a listening
  // socket inside that namespace; ports not set reach the application.
  [[nodiscard]] Result<void> AttachInbound(int netns_fd, uint64_t netns_cookie);
  [[nodiscard]] Result<void> DetachInbound(uint64_t netns_cookie);
  [[nodiscard]] Result<void> SetInbound(const IpAddress& pod, uint16_t port, int listener_fd);
  [[nodiscard]] Result<bool> ClearInbound(const IpAddress& pod, uint16_t port);
  // (pod address, port) entries in force, with the socket cookie of their listener.
  [[nodiscard]] Result<std::vector<std::pair<std::pair<IpAddress, uint16_t>, uint64_t>>> Inbound()
      const;
  // The L4 policy of (pod address, port), enforced by the same sk_lookup program before it
  // steers (so it needs AttachInbound too): a refused connect fails with ECONNREFUSED and
  // counts policy_denied. Replacing a policy is atomic as seen by a connect (generations
  // and an RCU grace period). At most SLUICE_POLICY_MAX_RULES rules.
  // What the same program does with a connection to a steered (pod address, port) — port
  // 0: every port not registered on its own — that no inbound socket takes (the agent's
  // sockets close with it; they may never have opened): `closed` refuses it (counted
  // inbound_unserved), else the application gets it. Guards outlive the agent on purpose;
  // a restarted agent reads them back (InboundGuards) and keeps or clears them.
  [[nodiscard]] Result<void> SetInboundGuard(const IpAddress& pod, uint16_t port, bool closed);
  [[nodiscard]] Result<bool> ClearInboundGuard(const IpAddress& pod, uint16_t port);
  [[nodiscard]] Result<std::map<std::pair<IpAddress, uint16_t>, bool>> InboundGuards() const;
  [[nodiscard]] Result<void> SetInboundPolicy(const IpAddress& pod, uint16_t port,
                                              const std::vector<InboundPolicyRule>& rules);
  [[nodiscard]] Result<bool> ClearInboundPolicy(const IpAddress& pod, uint16_t port);
  [[nodiscard]] Result<std::vector<InboundPolicy>> InboundPolicies() const;
  [[nodiscard]] Result<void> SetSplice(bool on);
  // The kernel's connection log: while on, every connect the kernel translates leaves a
  // sluice_conn_event in the ring buffer ConnLogFd() (the agent's L4 access log).
  [[nodiscard]] Result<void> SetConnLog(bool on);
  [[nodiscard]] int ConnLogFd() const;
  // Istio's TCP metrics of the kernel path: while on (the default), sockops counts every
  // connection the kernel translates from then on in sluice_tcp_metrics (TcpMetrics()).
  [[nodiscard]] Result<void> SetTcpMetrics(bool on);
  [[nodiscard]] Result<std::vector<TcpMetricsRecord>> TcpMetrics() const;

  [[nodiscard]] const DataplaneOptions& options() const { return opts_; }
  // True when Open() found pinned state and adopted it rather than starting fresh.
  [[nodiscard]] bool adopted() const { return adopted_; }
  // What the load probed (and forced off); empty with maps_only, which loads nothing.
  [[nodiscard]] const KernelFeatures& features() const { return features_; }

 private:
  struct Impl;
  explicit Dataplane(DataplaneOptions opts);
  [[nodiscard]] Result<void> Load();
  [[nodiscard]] Result<void> OpenPinnedMaps();
  [[nodiscard]] Result<void> CreateGracePeriodMap();
  [[nodiscard]] Result<void> Attach();
  [[nodiscard]] Result<void> Reconcile();
  [[nodiscard]] Result<void> GracePeriod();
  void ReclaimLoop();

  DataplaneOptions opts_;
  bool adopted_ = false;
  KernelFeatures features_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sluice
