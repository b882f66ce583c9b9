// The kernel half of a pod's inbound side over the data plane (inbound_steering.h).
#include "inbound_steering.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "sluice/netns/netns.h"

namespace sluice::agent {

Result<DataplaneSteering::Pod> DataplaneSteering::Leftovers(const std::vector<IpAddress>& addrs) {
  Pod pod;
  if (addrs.empty())
    return pod;
  auto mine = [&](const IpAddress& ip) { return std::ranges::find(addrs, ip) != addrs.end(); };
  auto guards = dp_.InboundGuards();
  SLUICE_RETURN_IF_ERROR_CTX(guards, "reading the kernel's inbound guards");
  for (const auto& [key, closed] : *guards)
    if (mine(key.first))
      pod.guards[key] = closed;
  auto policies = dp_.InboundPolicies();
  SLUICE_RETURN_IF_ERROR_CTX(policies, "reading the kernel's inbound policies");
  for (const auto& p : *policies)
    if (mine(p.pod))
      pod.policies[{p.pod, p.port}] = p.rules;
  return pod;
}

void DataplaneSteering::ClearLocked(const std::string& netns, Pod& pod,
                                    const std::map<Key, bool>& keep) {
  for (auto it = pod.guards.begin(); it != pod.guards.end();) {
    if (keep.contains(it->first)) {
      ++it;
      continue;
    }
    const auto& [ip, port] = it->first;
    // The guard first: until the socket entry goes, the proxy still takes the port.
    if (auto r = dp_.ClearInboundGuard(ip, port); !r)
      spdlog::warn("{}: inbound guard {}:{}: {}", netns, ip.ToString(), port, r.error().message);
    if (auto r = dp_.ClearInbound(ip, port); !r)
      spdlog::warn("{}: inbound {}:{}: {}", netns, ip.ToString(), port, r.error().message);
    it = pod.guards.erase(it);
  }
}

Result<void> DataplaneSteering::PoliciesLocked(const std::string& netns, Pod& pod,
                                               const std::vector<InboundPolicy>& want) {
  std::map<Key, std::vector<InboundPolicyRule>> next;
  for (const auto& p : want)
    next[{p.pod, p.port}] = p.rules;
  Result<void> result;
  for (const auto& [key, rules] : next) {
    auto cur = pod.policies.find(key);
    if (cur != pod.policies.end() && cur->second == rules)
      continue;
    const std::string where =
        "inbound policy of " + netns + ": " + SocketAddress{key.first, key.second}.ToString();
    if (auto r = dp_.SetInboundPolicy(key.first, key.second, rules); !r) {
      // Keep going: every other port still gets its policy.
      spdlog::error("{}: {}", where, r.error().message);
      if (result)
        result = Wrap(where, r.error());
      continue;
    }
    pod.policies[key] = rules;
  }
  for (auto it = pod.policies.begin(); it != pod.policies.end();) {
    if (next.contains(it->first)) {
      ++it;
      continue;
    }
    if (auto r = dp_.ClearInboundPolicy(it->first.first, it->first.second); !r)
      spdlog::warn("{}: inbound policy {}:{}: {}", netns, it->first.first.ToString(),
                   it->first.second, r.error().message);
    it = pod.policies.erase(it);
  }
  return result;
}

Result<void> DataplaneSteering::Steer(const std::string& netns, const std::vector<std::string>& ips,
                                      const std::map<uint16_t, bool>& ports, int fd_v4, int fd_v6,
                                      const std::vector<InboundPolicy>& policies) {
  std::vector<IpAddress> addrs;
  for (const auto& cidr : ips) {
    auto ip = IpAddress::Parse(cidr.substr(0, cidr.find('/')));
    SLUICE_RETURN_IF_ERROR_CTX(ip, "inbound side of " + netns + ": pod address");
    addrs.push_back(*ip);
  }
  std::lock_guard lock(mu_);
  const bool wanted = !ports.empty() || !policies.empty();
  auto it = pods_.find(netns);
  if (it == pods_.end()) {
    // First time this agent steers the pod: what the kernel holds for its addresses (an
    // earlier agent's guards and policies, which fail closed while no agent runs) is the
    // starting point, brought to what is wanted below.
    auto left = Leftovers(addrs);
    if (!left)
      spdlog::error("{}: {}", netns, left.error().message);
    Pod pod = left ? std::move(*left) : Pod{};
    if (!wanted && pod.guards.empty() && pod.policies.empty())
      return {};
    auto ns = netns::Netns::Open(netns);
    Result<uint64_t> cookie = ns ? ns->Cookie() : std::unexpected(ns.error());
    if (!wanted) {
      // Only leftovers, for a pod that needs nothing now (or is gone).
      ClearLocked(netns, pod, {});
      (void)PoliciesLocked(netns, pod, {});
      if (cookie)
        (void)dp_.DetachInbound(*cookie);
      return {};
    }
    SLUICE_RETURN_IF_ERROR_CTX(cookie, "inbound side of " + netns);
    SLUICE_RETURN_IF_ERROR_CTX(dp_.AttachInbound(ns->fd(), *cookie), "inbound side of " + netns);
    pod.cookie = *cookie;
    it = pods_.emplace(netns, std::move(pod)).first;
  }
  Pod& pod = it->second;
  // Policy first: a port is never steered (or left to the application) before its policy
  // is in force. A policy that cannot be written (a full map) is logged as an error and
  // tried again on the next change; it does not take the steered ports with it.
  (void)PoliciesLocked(netns, pod, policies);
  std::map<Key, bool> want;
  for (const auto& [port, closed] : ports)
    for (const IpAddress& ip : addrs)
      want[{ip, port}] = closed;
  ClearLocked(netns, pod, want);
  // Then each port's guard, then its socket: a port is never steered without a guard.
  for (const auto& [key, closed] : want) {
    const auto& [ip, port] = key;
    const std::string where =
        "inbound side of " + netns + ": " + ip.ToString() + ":" + std::to_string(port);
    if (auto cur = pod.guards.find(key); cur == pod.guards.end() || cur->second != closed) {
      SLUICE_RETURN_IF_ERROR_CTX(dp_.SetInboundGuard(ip, port, closed), where);
      pod.guards[key] = closed;
    }
    const int fd = ip.is_v4() ? fd_v4 : fd_v6;
    if (fd < 0) {
      // No socket of that family serves it: the guard alone decides.
      if (auto r = dp_.ClearInbound(ip, port); !r)
        spdlog::warn("{}: {}", where, r.error().message);
      continue;
    }
    SLUICE_RETURN_IF_ERROR_CTX(dp_.SetInbound(ip, port, fd), where);
  }
  if (pod.guards.empty() && pod.policies.empty()) {
    if (auto r = dp_.DetachInbound(pod.cookie); !r)
      spdlog::warn("{}: inbound side: {}", netns, r.error().message);
    pods_.erase(it);
  }
  return {};
}

void DataplaneSteering::Release(const std::string& netns) {
  if (auto r = Steer(netns, {}, {}, -1, -1, {}); !r)
    spdlog::warn("{}", r.error().message);
}

}  // namespace sluice::agent
