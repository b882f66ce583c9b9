#include "pod_proxies.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/ranges.h>
#include <netinet/in.h>
#include <sched.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <set>
#include <thread>
#include <tuple>

#include "istio_samples_wire.h"
#include "sluice/netns/netns.h"

namespace sluice::agent {

namespace {

Result<void> NonBlocking(netns::UniqueFd& fd, const std::string& what) {
  int flags = fcntl(fd.get(), F_GETFL);
  if (flags < 0 || fcntl(fd.get(), F_SETFL, flags | O_NONBLOCK) != 0)
    return FailErrno(what + ": O_NONBLOCK", errno);
  return {};
}

// The pod's inbound listener: the first one that restores the original destination
// without handing connections over (istiod's virtualInbound).
const proxy::ListenerConfig* InboundListener(const proxy::ProxyConfig& cfg) {
  for (const auto& l : cfg.listeners) {
    if (l.restore_original_dst && !l.use_original_dst)
      return &l;
  }
  return nullptr;
}

// Why a cluster does not deliver a connection for `port` unchanged to the application
// ("" when it does: ORIGINAL_DST, or only loopback endpoints on that port).
std::string Changes(const std::string& name, const proxy::Cluster* c, uint16_t port) {
  if (!c)
    return "cluster " + name + " unknown (connections closed)";
  if (c->original_dst)
    return "";
  if (c->endpoints.empty())
    return "cluster " + name + " has no endpoints (connections closed)";
  for (const auto& ep : c->endpoints) {
    uint16_t p = 0;
    bool loopback = false;
    if (ep->addr.ss_family == AF_INET) {
      const auto& a = reinterpret_cast<const sockaddr_in&>(ep->addr);
      p = ntohs(a.sin_port);
      loopback = (ntohl(a.sin_addr.s_addr) >> 24) == 127;
    } else if (ep->addr.ss_family == AF_INET6) {
      const auto& a = reinterpret_cast<const sockaddr_in6&>(ep->addr);
      p = ntohs(a.sin6_port);
      loopback = IN6_IS_ADDR_LOOPBACK(&a.sin6_addr);
    }
    if (!loopback || p != port)
      return "cluster " + name + " sends to " + ep->address;
  }
  return "";
}

}  // namespace

Result<PodSockets> OpenPodSockets(const std::string& netns, uint16_t port, uint16_t inbound_port) {
  auto ns = netns::Netns::Open(netns);
  SLUICE_RETURN_IF_ERROR(ns);
  PodSockets s;
  const std::string capture = "capture listener 127.0.0.1:" + std::to_string(port);
  auto v4 = ns->ListenTcp("127.0.0.1", port, 4096);
  SLUICE_RETURN_IF_ERROR_CTX(v4, capture);
  s.capture_v4 = std::move(*v4);
  SLUICE_RETURN_IF_ERROR(NonBlocking(s.capture_v4, capture));
  // A pod without IPv6 has no ::1: then the IPv4 listener alone.
  if (auto v6 = ns->ListenTcp("::1", port, 4096)) {
    s.capture_v6 = std::move(*v6);
    SLUICE_RETURN_IF_ERROR(NonBlocking(s.capture_v6, "capture listener [::1]"));
  }
  if (inbound_port == 0)
    return s;
  const std::string inbound = "inbound listener 127.0.0.1:" + std::to_string(inbound_port);
  if (auto in4 = ns->ListenTcp("127.0.0.1", inbound_port, 4096); !in4) {
    // The application holds the port (or the like): the pod works without its inbound
    // side, as before it had one, and says so.
    spdlog::warn("{}: {}: {}; its inbound side stays off", netns, inbound, in4.error().message);
    return s;
  } else {
    s.inbound_v4 = std::move(*in4);
  }
  SLUICE_RETURN_IF_ERROR(NonBlocking(s.inbound_v4, inbound));
  if (auto in6 = ns->ListenTcp("::1", inbound_port, 4096)) {
    s.inbound_v6 = std::move(*in6);
    SLUICE_RETURN_IF_ERROR(NonBlocking(s.inbound_v6, "inbound listener [::1]"));
  }
  return s;
}

namespace {

// What the kernel could hold for one port: its chains' network rbac, projected, or why
// the port needs the proxy for it.
struct PortRbac {
  bool any = false;                  // some chain of the port carries network rbac
  std::vector<proxy::L4Rule> rules;  // every chain's projection (they agree), chain order
  std::string needs_proxy;           // non-empty: the kernel cannot enforce it
};

// As many rules as the kernel's policy value holds (SLUICE_POLICY_MAX_RULES).
constexpr std::size_t kMaxKernelRules = 8;

std::map<uint16_t, PortRbac> PortsRbac(const proxy::ListenerConfig& l) {
  std::map<uint16_t, PortRbac> out;
  std::map<uint16_t, bool> seen;  // a chain of the port was looked at already
  for (const auto& chain : l.chains) {
    const auto port = static_cast<uint16_t>(chain.match.destination_port);
    if (port == 0)
      continue;
    PortRbac& pr = out[port];
    std::vector<proxy::L4Rule> rules;
    std::string why;
    for (const auto& f : chain.network_rbac) {
      pr.any = true;
      if (!f.proto) {
        why = "network rbac " + f.name + " (no config to project: needs the proxy)";
        break;
      }
      auto projected = proxy::ProjectNetworkRbac(*f.proto, port);
      if (!projected) {
        why = "network rbac (" + projected.error().message + ": needs the proxy)";
        break;
      }
      if (*projected)
        rules.push_back(std::move(**projected));
    }
    if (why.empty() && rules.size() > kMaxKernelRules)
      why = "network rbac: " + std::to_string(rules.size()) + " filters, the kernel holds " +
            std::to_string(kMaxKernelRules);
    const bool first = !seen[port];
    seen[port] = true;
    if (!pr.needs_proxy.empty())
      continue;
    if (!why.empty()) {
      pr.needs_proxy = std::move(why);
    } else if (first) {
      pr.rules = std::move(rules);
    } else if (rules != pr.rules) {
      // The chain is chosen by what the kernel cannot see (transport, ALPN, SNI).
      pr.needs_proxy = "network rbac differs between the chains of port " + std::to_string(port);
    }
  }
  return out;
}

}  // namespace

std::vector<InboundPort> InboundPorts(const proxy::ProxyConfig& cfg) {
  std::map<uint16_t, std::string> need;
  const proxy::ListenerConfig* l = InboundListener(cfg);
  if (!l)
    return {};
  // Chains whose policy must never be bypassed, by port (0: istiod's passthrough chains).
  std::set<uint16_t> guarded;
  for (const auto& chain : l->chains) {
    if (!chain.network_rbac.empty() || !chain.http.rbac.empty() || !chain.fail_closed.empty())
      guarded.insert(static_cast<uint16_t>(chain.match.destination_port));
  }
  for (const auto& chain : l->chains) {
    const auto port = static_cast<uint16_t>(chain.match.destination_port);
    if (port == 0 || need.contains(port))
      continue;
    std::string why;
    if (!chain.fail_closed.empty()) {
      why = "chain " + chain.name + " closes its connections (" + chain.fail_closed + ")";
    } else if (chain.is_http) {
      why = "HTTP chain " + chain.name;
    } else if (!chain.tcp.weighted.empty()) {
      for (const auto& w : chain.tcp.weighted) {
        if (why = Changes(w.name, cfg.ClusterAt(w.cluster), port); !why.empty())
          break;
      }
    } else {
      why = Changes(chain.tcp.cluster_name, cfg.ClusterAt(chain.tcp.cluster), port);
    }
    if (!why.empty())
      need[port] = std::move(why);
  }
  // A policy the kernel cannot enforce is the proxy's to enforce: such a port is never
  // delivered around it.
  for (auto& [port, pr] : PortsRbac(*l))
    if (!pr.needs_proxy.empty() && !need.contains(port))
      need[port] = std::move(pr.needs_proxy);
  // istiod's passthrough chains (no destination port) carry the workload's policy too, so
  // a port no Service declares is no way around it: port 0 steers every port not
  // registered on its own (pod_inbound.bpf.c falls back to it).
  for (const auto& chain : l->chains) {
    if (chain.match.destination_port == 0 &&
        (!chain.network_rbac.empty() || !chain.http.rbac.empty())) {
      need[0] = "passthrough chain " + chain.name + " carries rbac: every other port";
      break;
    }
  }
  std::vector<InboundPort> out;
  for (auto& [port, why] : need)
    out.push_back({port, std::move(why), guarded.contains(port)});
  return out;
}

nlohmann::json InboundJson(const std::vector<InboundPort>& ports) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& p : ports)
    out.push_back(
        {{"port", p.port}, {"reason", p.reason}, {"guard", p.guard}, {"serving", p.serving}});
  return out;
}

std::vector<InboundPort> InboundFromJson(const nlohmann::json& j) {
  std::vector<InboundPort> out;
  for (const auto& p : j)
    out.push_back({p.value("port", uint16_t{0}), p.value("reason", ""), p.value("guard", false),
                   p.value("serving", true)});
  return out;
}

std::vector<InboundL4Policy> InboundPolicies(const proxy::ProxyConfig& cfg) {
  const proxy::ListenerConfig* l = InboundListener(cfg);
  if (!l)
    return {};
  std::vector<InboundL4Policy> out;
  for (auto& [port, pr] : PortsRbac(*l))
    if (pr.any && pr.needs_proxy.empty() && !pr.rules.empty())
      out.push_back({port, std::move(pr.rules)});
  return out;
}

std::vector<KernelPolicy> KernelPolicies(const std::vector<InboundL4Policy>& policies,
                                         const std::vector<sockaddr_storage>& addresses) {
  std::vector<KernelPolicy> out;
  for (const auto& ss : addresses) {
    proxy::IpPrefix dst;
    if (ss.ss_family == AF_INET) {
      dst.family = 4;
      dst.len = 32;
      std::memcpy(dst.bytes.data(), &reinterpret_cast<const sockaddr_in&>(ss).sin_addr, 4);
    } else if (ss.ss_family == AF_INET6) {
      dst.family = 6;
      dst.len = 128;
      std::memcpy(dst.bytes.data(), &reinterpret_cast<const sockaddr_in6&>(ss).sin6_addr, 16);
    } else {
      continue;
    }
    std::string address = dst.ToString();
    address.resize(address.rfind('/'));
    for (const auto& p : policies) {
      KernelPolicy k{p.port, address, {}};
      for (const auto& r : p.rules) {
        KernelRule kr{r.action == proxy::L4Rule::Action::kDeny, {}};
        for (const auto& src : r.SourcesFor(dst))
          kr.sources.push_back(src.ToString());
        k.rules.push_back(std::move(kr));
      }
      out.push_back(std::move(k));
    }
  }
  std::sort(out.begin(), out.end(), [](const KernelPolicy& a, const KernelPolicy& b) {
    return std::tie(a.port, a.address) < std::tie(b.port, b.address);
  });
  return out;
}

nlohmann::json PoliciesJson(const std::vector<KernelPolicy>& policies) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& p : policies) {
    nlohmann::json rules = nlohmann::json::array();
    for (const auto& r : p.rules)
      rules.push_back({{"action", r.deny ? "DENY" : "ALLOW"}, {"sources", r.sources}});
    out.push_back({{"port", p.port}, {"address", p.address}, {"rules", std::move(rules)}});
  }
  return out;
}

std::vector<KernelPolicy> PoliciesFromJson(const nlohmann::json& j) {
  std::vector<KernelPolicy> out;
  if (!j.is_array())
    return out;
  for (const auto& p : j) {
    KernelPolicy k{p.value("port", uint16_t{0}), p.value("address", ""), {}};
    for (const auto& r : p.value("rules", nlohmann::json::array()))
      k.rules.push_back(
          {r.value("action", "") == "DENY", r.value("sources", std::vector<std::string>{})});
    out.push_back(std::move(k));
  }
  return out;
}

std::shared_ptr<const proxy::ProxyConfig> PodProxies::ForPods(const proxy::ProxyConfig& base,
                                                              uint16_t port,
                                                              uint16_t inbound_port) {
  auto cfg = std::make_shared<proxy::ProxyConfig>(base);
  std::optional<std::size_t> capture, inbound;
  for (std::size_t i = 0; i < cfg->listeners.size(); ++i) {
    auto& l = cfg->listeners[i];
    if (l.use_original_dst && !capture) {
      // The connect hook sends redirected connections to the pod's loopback only: the
      // capture listener is never reachable from outside the pod.
      l.address = "127.0.0.1";
      l.port = port;
      l.bind_to_port = true;
      capture = i;
    } else if (l.restore_original_dst && !l.use_original_dst && !inbound && inbound_port) {
      // The inbound listener, on the loopback too: only steered connections reach it.
      // A pod whose inbound socket could not be opened runs without it.
      l.address = "127.0.0.1";
      l.port = inbound_port;
      l.bind_to_port = true;
      l.optional = true;
      inbound = i;
    } else {
      l.bind_to_port = false;  // reached through the capture listener's hand-over
    }
  }
  if (!capture)
    return nullptr;
  // connect6 redirects IPv6 connections to [::1]:port (and the inbound side steers IPv6
  // connections to [::1]:inbound_port). The same listener answers there; a pod without
  // IPv6 has no ::1, and then only the IPv4 one opens.
  for (auto i : {capture, inbound}) {
    if (!i)
      continue;
    proxy::ListenerConfig v6 = cfg->listeners[*i];
    v6.name += kIpv6CaptureSuffix;
    v6.address = "::1";
    v6.optional = true;
    cfg->listeners.push_back(std::move(v6));
  }
  return cfg;
}

void PodProxies::ReportInbound(const enrolment::PodKey& key, Pod& pod,
                               const proxy::ProxyConfig& cfg) {
  std::vector<InboundPort> ports;
  const proxy::ListenerConfig* l = InboundListener(cfg);
  // Steered only where the running proxy serves: its inbound listener open on the socket.
  // A proxy without it (the pod's inbound socket did not open) still reports its ports,
  // unserved, so that the guarded ones are refused rather than reach the application.
  if (l && pod.proxy) {
    ports = InboundPorts(cfg);
    const bool serving = pod.proxy->Port(l->name) != 0;
    for (auto& p : ports)
      p.serving = serving;
  }
  // The kernel's policies need no socket: they hold while the config is in force.
  std::vector<KernelPolicy> policies;
  if (pod.proxy)
    policies = KernelPolicies(InboundPolicies(cfg), pod.addresses);
  if (pod.inbound == ports && pod.policies == policies)
    return;
  if (policies != pod.policies) {
    std::set<uint16_t> list;
    for (const auto& p : policies)
      list.insert(p.port);
    spdlog::info("pod {}/{}: the kernel enforces the L4 policy of {} port{}{}", key.pod_namespace,
                 key.name, list.size(), list.size() == 1 ? "" : "s",
                 list.empty() ? "" : fmt::format(" ({})", fmt::join(list, ", ")));
  }
  pod.policies = policies;
  if (pod.inbound == ports) {
    if (opts_.on_inbound)
      opts_.on_inbound(key, pod.netns, ports, policies);
    return;
  }
  const bool first = !pod.inbound;
  pod.inbound = ports;
  if (!ports.empty() && !ports.front().serving) {
    std::string list;
    for (const auto& p : ports)
      if (p.guard)
        list += fmt::format("{}{}", list.empty() ? "" : ", ", p.port);
    spdlog::error(
        "pod {}/{}: its proxy has no inbound listener: nothing is steered{}", key.pod_namespace,
        key.name,
        list.empty() ? "" : fmt::format("; port(s) {} carry policy and are refused", list));
  } else if (!ports.empty()) {
    std::string list;
    for (const auto& p : ports)
      list += fmt::format("{}{} ({})", list.empty() ? "" : ", ", p.port, p.reason);
    spdlog::info("pod {}/{}: inbound side serves port{} {}", key.pod_namespace, key.name,
                 ports.size() == 1 ? "" : "s", list);
  } else if (!first) {
    spdlog::info("pod {}/{}: inbound side serves no port any more", key.pod_namespace, key.name);
  }
  if (opts_.on_inbound)
    opts_.on_inbound(key, pod.netns, ports, policies);
}

std::shared_ptr<const proxy::ProxyConfig> PodProxies::ConfigFor(const Pod& pod, bool* own) const {
  auto it = views_.find(pod.view.Id());
  *own = it != views_.end();
  return *own ? it->second : node_;
}

PodProxies::PodProxies(PodProxyOptions opts) : opts_(std::move(opts)) {
  int n = opts_.workers;
  if (n < 0)
    n = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  if (n == 0)
    return;
  int fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    spdlog::error("L7: /proc/thread-self/ns/net: {}; pods' proxies run a thread each",
                  std::strerror(errno));
    return;
  }
  auto g = proxy::WorkerGroup::Create({.threads = n, .name = "sluice-l7"});
  if (!g) {
    close(fd);
    spdlog::error("L7: shared workers: {}; pods' proxies run a thread each", g.error().message);
    return;
  }
  group_ = std::move(*g);
  host_netns_ = std::make_shared<const netns::UniqueFd>(fd);
  spdlog::info("L7: every pod's proxy runs on {} shared worker thread{} ({})", n, n == 1 ? "" : "s",
               proxy::IoBackendName(group_->io_backend()));
}

Result<void> PodProxies::Start(const enrolment::PodKey& key, Pod& pod) {
  bool own = false;
  auto cfg = ConfigFor(pod, &own);
  if (!cfg)
    return {};  // no config yet: started by the first SetNodeConfig/SetViewConfig
  auto ns = netns::Netns::Open(pod.netns);
  SLUICE_RETURN_IF_ERROR(ns);
  auto netns = std::make_shared<netns::Netns>(std::move(*ns));
  proxy::ProxyOptions o;
  o.workers = 1;
  o.access_log_path = opts_.access_log_path == "-" ? "" : opts_.access_log_path;
  o.upstream_mark = opts_.upstream_mark;
  o.pod_addresses = pod.addresses;
  o.istio_stats = pod.istio;
  if (group_) {
    // A shared thread stays in this process's namespace; each upstream socket is made in
    // the pod's (and keeps it). A failed return leaves the thread in the pod's, which
    // harms no other pod (each socket is made after a setns into its own pod) but is
    // said.
    o.group = group_;
    o.make_socket = [netns, host = host_netns_](int family, int type) -> int {
      if (setns(netns->fd(), CLONE_NEWNET) != 0)
        return -1;
      int fd = socket(family, type, 0);
      const int e = errno;
      if (setns(host->get(), CLONE_NEWNET) != 0) {
        static std::once_flag once;
        std::call_once(once, [&] {
          spdlog::error("L7: setns back from {}: {}", netns->path(), std::strerror(errno));
        });
      }
      errno = e;
      return fd;
    };
  } else {
    // One pod's traffic: a quarter of the default receive buffers (256 KiB), since a
    // node runs one of these per enrolled pod.
    o.io_buffers = 64;
    o.on_worker_start = [netns](int) -> Result<void> {
      if (setns(netns->fd(), CLONE_NEWNET) != 0)
        return FailErrno("setns into " + netns->path(), errno);
      return {};
    };
  }
  // The capture listeners are the agent's sockets (ForPods binds nothing else): the
  // proxy gets a descriptor of its own for each and closes only that.
  o.open_listener = [sockets = pod.sockets, inbound_port = opts_.inbound_port](
                        const proxy::ListenerConfig& l, uint16_t) -> Result<int> {
    const bool v6 = l.address == "::1", inbound = inbound_port && l.port == inbound_port;
    const netns::UniqueFd& s = inbound ? (v6 ? sockets->inbound_v6 : sockets->inbound_v4)
                                       : (v6 ? sockets->capture_v6 : sockets->capture_v4);
    if (!s)
      return Fail("listener " + l.name + ": no " + (inbound ? "inbound" : "capture") +
                  " socket on " + l.address + " in this pod");
    int fd = fcntl(s.get(), F_DUPFD_CLOEXEC, 0);
    if (fd < 0)
      return FailErrno("listener " + l.name + ": dup", errno);
    return fd;
  };
  auto p = proxy::Proxy::Start(cfg, std::move(o));
  SLUICE_RETURN_IF_ERROR(p);
  pod.proxy = std::move(*p);
  pod.own_config = own;
  pod.ipv6 = false;
  for (const auto& l : cfg->listeners) {
    if (l.optional && l.port == opts_.port && l.name.ends_with(kIpv6CaptureSuffix))
      pod.ipv6 = pod.proxy->Port(l.name) != 0;
  }
  ReportInbound(key, pod, *cfg);
  spdlog::info("pod {}/{}: L7 capture listener on 127.0.0.1:{}{} ({} config, {})",
               key.pod_namespace, key.name, opts_.port,
               pod.ipv6 ? fmt::format(" and [::1]:{}", opts_.port) : "",
               own ? pod.view.Id() : "node", proxy::IoBackendName(pod.proxy->io_backend()));
  if (std::string why = pod.proxy->io_fallback_reason(); !why.empty()) {
    static std::once_flag once;  // the same reason for every pod: said once
    std::call_once(once,
                   [&] { spdlog::warn("L7 proxies run on epoll: io_uring unavailable: {}", why); });
  }
  return {};
}

Result<void> PodProxies::Open(const enrolment::PodKey& key, const std::string& netns,
                              const enrolment::Labels& labels, const std::vector<std::string>& ips,
                              PodSockets sockets) {
  Result<void> result;
  {
    std::lock_guard lock(mu_);
    auto [it, fresh] = pods_.try_emplace(key);
    if (!fresh && it->second.netns == netns && it->second.proxy) {
      if (it->second.view.labels == labels)
        return {};
      it->second.view.labels = labels;  // same sandbox, new labels: another view
      Identify(key, it->second, labels);
      Refresh(nullptr, &key);
    } else {
      if (!fresh && it->second.proxy)
        it->second.proxy->Stop();  // same pod name, new sandbox
      it->second.netns = netns;
      it->second.sockets = std::make_shared<const PodSockets>(std::move(sockets));
      it->second.addresses.clear();
      for (const auto& cidr : ips) {
        if (auto a = proxy::ParseIp(cidr.substr(0, cidr.find('/')), 0))
          it->second.addresses.push_back(*a);
      }
      it->second.view = View{key.pod_namespace, labels};
      for (const auto& ip : it->second.peer_ips)
        peers_->Erase(ip, it->second.identity);
      it->second.peer_ips.clear();
      for (const auto& cidr : ips) {
        if (auto a = IpAddress::Parse(cidr.substr(0, cidr.find('/'))); a)
          it->second.peer_ips.push_back(*a);
      }
      it->second.istio.reset();
      Identify(key, it->second, labels);
      it->second.proxy.reset();
      it->second.inbound.reset();  // a new sandbox: its first report sets what is steered
      if (auto r = Start(key, it->second); !r) {
        pods_.erase(it);
        result = Wrap("pod " + key.pod_namespace + "/" + key.name + ": L7 proxy", r.error());
      }
    }
  }
  if (opts_.on_pods_changed)
    opts_.on_pods_changed();
  return result;
}

void PodProxies::Close(const enrolment::PodKey& key) {
  std::unique_ptr<proxy::Proxy> p;
  {
    std::lock_guard lock(mu_);
    auto it = pods_.find(key);
    if (it == pods_.end())
      return;
    p = std::move(it->second.proxy);
    for (const auto& ip : it->second.peer_ips)
      peers_->Erase(ip, it->second.identity);
    pods_.erase(it);
  }
  if (p) {
    p->Stop();
    spdlog::info("pod {}/{}: L7 listener closed", key.pod_namespace, key.name);
  }
  if (opts_.on_pods_changed)
    opts_.on_pods_changed();
}

void PodProxies::CloseAll() {
  std::map<enrolment::PodKey, Pod> all;
  {
    std::lock_guard lock(mu_);
    all.swap(pods_);
  }
  for (auto& [key, pod] : all)
    if (pod.proxy)
      pod.proxy->Stop();
}

void PodProxies::DrainAll(std::chrono::milliseconds grace) {
  std::map<enrolment::PodKey, Pod> all;
  {
    std::lock_guard lock(mu_);
    all.swap(pods_);
  }
  for (auto& [key, pod] : all)
    if (pod.proxy)
      (void)pod.proxy->Drain();
  const auto deadline = std::chrono::steady_clock::now() + grace;
  uint64_t open = 0;
  do {
    open = 0;
    for (auto& [key, pod] : all)
      if (pod.proxy)
        open += pod.proxy->stats().active_cx.load(std::memory_order_relaxed);
    if (open == 0)
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  } while (std::chrono::steady_clock::now() < deadline);
  if (open > 0)
    spdlog::warn("drain: {} connections still open after {} ms; closing them", open, grace.count());
  for (auto& [key, pod] : all)
    if (pod.proxy)
      pod.proxy->Stop();
}

void PodProxies::Refresh(const std::string* only_view, const enrolment::PodKey* only_pod) {
  for (auto& [key, pod] : pods_) {
    if ((only_view && pod.view.Id() != *only_view) || (only_pod && key != *only_pod))
      continue;
    bool own = false;
    auto cfg = ConfigFor(pod, &own);
    if (!cfg)
      continue;
    if (!pod.proxy) {
      if (auto r = Start(key, pod); !r)
        spdlog::error("pod {}/{}: L7 proxy: {}", key.pod_namespace, key.name, r.error().message);
      continue;
    }
    if (auto r = pod.proxy->Update(cfg); !r) {
      spdlog::error("pod {}/{}: L7 config refused, keeping the running one: {}", key.pod_namespace,
                    key.name, r.error().message);
      continue;
    }
    pod.own_config = own;
    ReportInbound(key, pod, *cfg);
  }
}

bool PodProxies::SetViewConfig(const std::string& view,
                               std::shared_ptr<const proxy::ProxyConfig> cfg) {
  std::lock_guard lock(mu_);
  if (!cfg) {
    views_.erase(view);
  } else if (auto pods = ForPods(*cfg, opts_.port, opts_.inbound_port)) {
    views_[view] = std::move(pods);
  } else {
    // Listeners not there yet (an xDS stream delivers clusters before listeners): the
    // pods keep what they run rather than lose their capture listener.
    spdlog::debug("view {}: config without a use_original_dst listener, not applied", view);
    return false;
  }
  Refresh(&view, nullptr);
  return true;
}

bool PodProxies::SetNodeConfig(std::shared_ptr<const proxy::ProxyConfig> cfg) {
  std::lock_guard lock(mu_);
  auto pods = cfg ? ForPods(*cfg, opts_.port, opts_.inbound_port) : nullptr;
  if (cfg && !pods) {
    spdlog::debug("node config without a use_original_dst listener, not applied");
    return false;
  }
  node_ = std::move(pods);
  Refresh(nullptr, nullptr);
  return true;
}

std::vector<PodProxyStatus> PodProxies::List() const {
  std::lock_guard lock(mu_);
  std::vector<PodProxyStatus> out;
  for (const auto& [key, pod] : pods_) {
    PodProxyStatus s{key, pod.netns, pod.proxy != nullptr,
                     pod.proxy ? (pod.own_config ? "namespace " + pod.view.Id()
                                                 : std::string("node (namespace config pending)"))
                               : "none yet"};
    s.view = pod.view.Id();
    s.ipv6 = pod.proxy && pod.ipv6;
    s.inbound = pod.inbound.value_or(std::vector<InboundPort>{});
    s.policies = pod.policies;
    if (pod.proxy) {
      s.requests = pod.proxy->stats().requests.load(std::memory_order_relaxed);
      s.downstream_cx = pod.proxy->stats().downstream_cx.load(std::memory_order_relaxed);
      for (const auto& st : proxy::NamedStats(pod.proxy->stats()))
        s.stats.emplace_back(std::string(st.name), st.value);
      s.rbac_policies = pod.proxy->stats().rbac_policies.Snapshot();
    }
    out.push_back(std::move(s));
  }
  return out;
}

void PodProxies::Identify(const enrolment::PodKey& key, Pod& pod, const enrolment::Labels& labels) {
  pod.identity = proxy::telemetry::Intern(proxy::telemetry::PodWorkload(
      key.pod_namespace, key.name,
      std::map<std::string, std::string>(labels.begin(), labels.end())));
  if (pod.istio)
    pod.istio->SetSelf(pod.identity);
  else
    pod.istio = std::make_shared<proxy::telemetry::IstioStats>(pod.identity, peers_);
  for (const auto& ip : pod.peer_ips)
    peers_->Set(ip, pod.identity);
}

std::string PodProxies::IstioMetrics() const {
  std::vector<proxy::telemetry::Sample> samples;
  {
    std::lock_guard lock(mu_);
    for (const auto& [key, pod] : pods_)
      if (pod.istio)
        pod.istio->Collect(&samples);
  }
  return EncodeIstioSamples(samples);  // the agent adds the kernel path's and renders
}

std::vector<View> PodProxies::Views() const {
  std::lock_guard lock(mu_);
  std::set<View> s;
  for (const auto& [key, pod] : pods_)
    s.insert(pod.view);
  return {s.begin(), s.end()};
}

}  // namespace sluice::agent
