// PodProxies: the L7 proxy inside each enrolled pod (run by the L7 process, l7_host.h).
//
// Every enrolled pod gets its own proxy::Proxy (its own snapshot, counters, Istio
// stats, upstream pool, buffer budget, drain) with one worker. The workers of all pods
// share a fixed set of threads, a proxy::WorkerGroup of PodProxyOptions::workers
// threads (by default one per CPU), as ztunnel serves every pod of a node from shared
// workers: a node of 110 pods runs those threads, not 110. A pod's worker is attached
// to the thread with the fewest. Its upstream sockets are made in the pod's network
// namespace (make_socket: setns into the pod, socket(), setns back; a socket keeps the
// namespace it was made in), so its upstream connections leave from the pod, with the
// pod's address, carrying the bypass mark so the connect hook lets them through. With
// workers 0 (the earlier design), each pod's worker is a thread of its own that lives
// in the pod's namespace (setns at thread start). docs/benchmarks.md ("pods per node")
// compares the two at 111 pods.
//
// A pod's capture listener (127.0.0.1:PORT, and [::1]:PORT when the pod has IPv6) is a
// socket the agent opened in the pod (OpenPodSockets) and handed over, so the socket
// outlives this process: while it restarts, redirected connections wait in the
// backlog.
//
// The inbound side: when the pod's config has an inbound listener (istiod's
// virtualInbound: original_dst, no hand-over), it runs on the pod's inbound socket
// (127.0.0.1:INBOUND_PORT, opened by the agent too). Nothing reaches that socket but the
// connections the kernel's sk_lookup program steers to it, and the agent steers only
// the ports InboundPorts() names: those whose inbound chain does more than deliver the
// connection unchanged to the application.
//
// Configuration is per view (namespace + labels, see view_streams.h): the L7 resources
// a sidecar of that namespace with those labels would get (short host names, exportTo
// and Sidecar scoping resolved for it). Until a view's own configuration has arrived,
// its pods use the node's. Compiled configs are shared by every pod of a view; only the
// capture listener is pod-local.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "sluice/enrolment/enrolment.h"
#include "sluice/loader/ip.h"
#include "sluice/netns/netns.h"
#include "sluice/proxy/istio_stats.h"
#include "sluice/proxy/proxy.h"
#include "sluice/proxy/rbac_l4.h"
#include "sluice/proxy/worker_group.h"
#include "view_streams.h"

namespace sluice::agent {

// A pod's listening sockets, opened by the agent inside the pod's namespace. All are
// bound to the pod's loopback: the capture ones are reached through the connect hook's
// redirection, the inbound ones through the sk_lookup program's steering.
struct PodSockets {
  netns::UniqueFd capture_v4;  // 127.0.0.1:port
  netns::UniqueFd capture_v6;  // [::1]:port; none when the pod has no IPv6 loopback
  netns::UniqueFd inbound_v4;  // 127.0.0.1:inbound_port; none when it could not be opened
  netns::UniqueFd inbound_v6;  // [::1]:inbound_port
};
// Opens them (non-blocking, backlog 4096). Only the IPv4 capture socket must succeed: a
// pod without IPv6 has no [::1], and one whose application holds the inbound port keeps
// its inbound side off (logged), the rest working.
Result<PodSockets> OpenPodSockets(const std::string& netns, uint16_t port, uint16_t inbound_port);

// A port of the pod whose inbound connections need its proxy, and why.
struct InboundPort {
  uint16_t port = 0;
  std::string reason;  // "HTTP chain inbound|9080||", "cluster inbound|9080|| → 127.0.0.1:8080"
  // Its chains carry a policy only the proxy enforces (rbac the kernel does not take, or
  // a chain Sluice closes): while no proxy takes the port, the kernel refuses it rather
  // than hand it to the application (the guard, inbound_steering.h).
  bool guard = false;
  // The proxy's inbound listener is open on the pod's inbound socket. False: the port
  // is not steered (nobody would accept), only guarded.
  bool serving = true;
  bool operator==(const InboundPort&) const = default;
};
// The L7 wire's and /pods' form: [{port, reason, guard, serving}].
nlohmann::json InboundJson(const std::vector<InboundPort>& ports);
std::vector<InboundPort> InboundFromJson(const nlohmann::json& j);
// The ports of `cfg`'s inbound listener (the first listener with original_dst and no
// hand-over) that need the proxy. A chain needs it unless it is plain TCP whose every
// cluster delivers the connection unchanged: ORIGINAL_DST, or endpoints on the loopback
// at the port the client dialled. HTTP chains always need it (routes, faults and header
// rules act on every request); so does a chain Sluice closes (fail_closed). Chains with
// no destination port (istiod's passthrough chains) deliver what nobody else takes and
// are not steered. A port is guarded when one of its chains carries rbac (HTTP or
// network) or closes its connections. A chain whose network rbac filters the kernel cannot enforce
// (proxy::ProjectNetworkRbac refuses one, or the port's chains differ in them) needs the
// proxy too. Sorted by port, each port once.
std::vector<InboundPort> InboundPorts(const proxy::ProxyConfig& cfg);

// The kernel's share of a port's policy: its chains' network rbac filters, projected
// (rbac_l4.h), in chain order. Only ports where every chain projects to the same rules;
// a port with no network rbac is not listed. Steered ports are listed too (the kernel
// then refuses before the proxy would). Sorted by port.
struct InboundL4Policy {
  uint16_t port = 0;
  std::vector<proxy::L4Rule> rules;
  bool operator==(const InboundL4Policy&) const = default;
};
std::vector<InboundL4Policy> InboundPolicies(const proxy::ProxyConfig& cfg);

// One rule as the kernel holds it for one pod address (sluice_inbound_policy).
struct KernelRule {
  bool deny = false;
  std::vector<std::string> sources;  // "10.0.0.0/8", of the address's family
  bool operator==(const KernelRule&) const = default;
};
struct KernelPolicy {
  uint16_t port = 0;
  std::string address;  // the pod's ("10.1.0.5")
  std::vector<KernelRule> rules;
  bool operator==(const KernelPolicy&) const = default;
};
// `policies` for each of the pod's `addresses`.
std::vector<KernelPolicy> KernelPolicies(const std::vector<InboundL4Policy>& policies,
                                         const std::vector<sockaddr_storage>& addresses);
// As the L7 wire (kInbound, kStatus) and /pods carry them:
// [{port, address, rules: [{action: "ALLOW"|"DENY", sources: [...]}]}].
nlohmann::json PoliciesJson(const std::vector<KernelPolicy>& policies);
std::vector<KernelPolicy> PoliciesFromJson(const nlohmann::json& j);

struct PodProxyOptions {
  // Threads all pods' proxies share (a proxy::WorkerGroup); -1: one per CPU; 0: none,
  // each pod's proxy a thread of its own in the pod's namespace.
  int workers = -1;
  uint16_t port = 15001;          // in-pod capture listener, 127.0.0.1:port
  uint16_t inbound_port = 15006;  // in-pod inbound listener, 127.0.0.1:inbound_port
  std::string access_log_path;    // "" or "-": stdout
  uint32_t upstream_mark = 0;     // the kernel's bypass mark
  // Called (outside any lock) after a pod opened, closed or changed labels: the set of
  // views may have changed, so the agent can open that view's xDS stream at once.
  std::function<void()> on_pods_changed;
  // Called (under the proxies' lock: do not call back) when the ports a running pod's
  // proxy serves on its inbound side, or its ports' kernel policies, change, after the
  // config that serves them is in force: the agent steers exactly these ports (none: its
  // inbound listener is not open) and enforces exactly these policies.
  std::function<void(const enrolment::PodKey&, const std::string& netns,
                     const std::vector<InboundPort>&, const std::vector<KernelPolicy>&)>
      on_inbound;
};

struct PodProxyStatus {
  enrolment::PodKey key;
  std::string netns;
  bool listening = false;  // its capture listener is open
  std::string config;      // "namespace VIEW" or "node (namespace config pending)"
  std::string view;        // its view's id: "NS" or "NS{k=v,...}"
  uint64_t requests = 0, downstream_cx = 0;
  bool ipv6 = false;                   // its capture listener's IPv6 twin on [::1] is open too
  std::vector<InboundPort> inbound;    // the ports its inbound side serves
  std::vector<KernelPolicy> policies;  // what the kernel enforces on its ports
  std::vector<std::pair<std::string, uint64_t>> stats;       // proxy::NamedStats, by name
  std::vector<proxy::RbacPolicyStats::Count> rbac_policies;  // RBAC decisions per policy
};

class PodProxies {
 public:
  // Starts the shared threads (opts.workers): a failure there is logged, and the pods'
  // proxies then run a thread each.
  explicit PodProxies(PodProxyOptions opts);
  ~PodProxies() { CloseAll(); }
  PodProxies(const PodProxies&) = delete;
  PodProxies& operator=(const PodProxies&) = delete;

  // The L7 config of every pod of a view (by View::Id(); nullptr: forget it, pods fall
  // back to the node's). Running proxies switch at once; their listener socket is kept.
  // A config without a use_original_dst listener is not applied (the pods keep theirs):
  // false then.
  bool SetViewConfig(const std::string& view, std::shared_ptr<const proxy::ProxyConfig> cfg);
  // The node's config: the fallback for namespaces without their own yet (false, as
  // SetViewConfig, when it has no use_original_dst listener and is not applied).
  bool SetNodeConfig(std::shared_ptr<const proxy::ProxyConfig> cfg);

  // Starts the pod's proxy (idempotent). With no config at all yet, the pod is
  // remembered and its proxy starts when the first config arrives. Called again with new
  // labels, the running proxy moves to that view's config (its listener stays).
  // `ips`: the pod's own addresses ("10.1.0.5/24"): its redirected connections' client.
  Result<void> Open(const enrolment::PodKey& key, const std::string& netns,
                    const enrolment::Labels& labels, const std::vector<std::string>& ips,
                    PodSockets sockets);
  void Close(const enrolment::PodKey& key);
  void CloseAll();
  // SIGTERM: every capture listener closes, requests in flight finish (up to `grace`),
  // then the proxies stop.
  void DrainAll(std::chrono::milliseconds grace);

  std::vector<PodProxyStatus> List() const;
  // Views with at least one pod here (the agent keeps one xDS stream for each).
  std::vector<View> Views() const;
  // Istio's standard metrics of every pod here, as samples on the L7 wire
  // (istio_samples_wire.h): the agent adds the kernel path's series and renders them.
  std::string IstioMetrics() const;

  // The config a pod of `ns` runs: the namespace's (or node's) listeners with the
  // use_original_dst listener moved to 127.0.0.1:port (the capture listener), the
  // inbound listener (if any) to 127.0.0.1:inbound_port, and nothing else bound; nullptr
  // when the config has no use_original_dst listener (yet).
  static std::shared_ptr<const proxy::ProxyConfig> ForPods(const proxy::ProxyConfig& base,
                                                           uint16_t port, uint16_t inbound_port);

 private:
  // The IPv6 twins of the capture and inbound listeners are named after them with this
  // suffix.
  static constexpr std::string_view kIpv6CaptureSuffix = "~ipv6";
  struct Pod {
    std::string netns;
    std::shared_ptr<const PodSockets> sockets;
    std::vector<sockaddr_storage> addresses;  // the pod's, for its redirected connections
    bool ipv6 = false;                        // its [::1] capture listener is open
    std::unique_ptr<proxy::Proxy> proxy;
    bool own_config = false;  // running its view's config (else the node's)
    View view;
    // Last reported through on_inbound (none yet in this process: the first report
    // is made even when empty, so the agent drops what an earlier process asked for).
    std::optional<std::vector<InboundPort>> inbound;
    // Istio's metrics of this sandbox (kept across its proxy's restarts here), and the
    // identity and addresses it has in the peer directory.
    std::shared_ptr<proxy::telemetry::IstioStats> istio;
    const proxy::telemetry::Workload* identity = nullptr;
    std::vector<IpAddress> peer_ips;
    std::vector<KernelPolicy> policies;  // last reported with it
  };
  // Publishes the pod's identity under its addresses (after an open or a relabel).
  void Identify(const enrolment::PodKey& key, Pod& pod, const enrolment::Labels& labels);
  // Reports the pod's inbound ports when they changed (after a start or an update).
  void ReportInbound(const enrolment::PodKey& key, Pod& pod, const proxy::ProxyConfig& cfg);
  std::shared_ptr<const proxy::ProxyConfig> ConfigFor(const Pod& pod, bool* own) const;
  Result<void> Start(const enrolment::PodKey& key, Pod& pod);
  void Refresh(const std::string* only_view, const enrolment::PodKey* only_pod);

  PodProxyOptions opts_;
  // The shared threads (none: a thread per pod), and this process's own network
  // namespace, where make_socket returns to.
  std::shared_ptr<proxy::WorkerGroup> group_;
  std::shared_ptr<const netns::UniqueFd> host_netns_;
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<const proxy::ProxyConfig>> views_;  // ForPods() applied
  std::shared_ptr<const proxy::ProxyConfig> node_;                          // ForPods() applied
  std::map<enrolment::PodKey, Pod> pods_;
  // Every pod here by address: the peers of the pods' Istio metrics.
  std::shared_ptr<proxy::telemetry::PeerDirectory> peers_ =
      std::make_shared<proxy::telemetry::PeerDirectory>();
};

}  // namespace sluice::agent
