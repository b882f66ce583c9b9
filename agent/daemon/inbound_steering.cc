// The kernel half of a pod's inbound side over the data plane (inbound_steering.h).
#include "inbound_steering.h"

#include <spdlog/spdlog.h>

#include "sluice/netns/netns.h"

namespace sluice::agent {

void DataplaneSteering::ClearLocked(const std::string& netns, Pod& pod,
                                    const std::set<uint16_t>& keep) {
  for (uint16_t port : pod.ports) {
    if (keep.contains(port))
      continue;
    for (const IpAddress& ip : pod.ips) {
      if (auto r = dp_.ClearInbound(ip, port); !r)
        spdlog::warn("{}: inbound {}:{}: {}", netns, ip.ToString(), port, r.error().message);
    }
  }
}

Result<void> DataplaneSteering::PoliciesLocked(const std::string& netns, Pod& pod,
                                               const std::vector<InboundPolicy>& want) {
  std::map<std::pair<IpAddress, uint16_t>, std::vector<InboundPolicyRule>> next;
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
                                      const std::set<uint16_t>& ports, int fd_v4, int fd_v6,
                                      const std::vector<InboundPolicy>& policies) {
  std::lock_guard lock(mu_);
  auto it = pods_.find(netns);
  if (ports.empty() && policies.empty()) {
    if (it != pods_.end()) {
      ClearLocked(netns, it->second, {});
      (void)PoliciesLocked(netns, it->second, {});
      if (auto r = dp_.DetachInbound(it->second.cookie); !r)
        spdlog::warn("{}: inbound side: {}", netns, r.error().message);
      pods_.erase(it);
    }
    return {};
  }
  if (it == pods_.end()) {
    auto ns = netns::Netns::Open(netns);
    SLUICE_RETURN_IF_ERROR_CTX(ns, "inbound side");
    auto cookie = ns->Cookie();
    SLUICE_RETURN_IF_ERROR_CTX(cookie, "inbound side of " + netns);
    SLUICE_RETURN_IF_ERROR_CTX(dp_.AttachInbound(ns->fd(), *cookie), "inbound side of " + netns);
    it = pods_.emplace(netns, Pod{.cookie = *cookie}).first;
  }
  Pod& pod = it->second;
  // Policy first: a port is never steered (or left to the application) before its policy
  // is in force. A policy that cannot be written (a full map) is logged as an error and
  // tried again on the next change; it does not take the steered ports with it.
  (void)PoliciesLocked(netns, pod, policies);
  std::vector<IpAddress> addrs;
  for (const auto& cidr : ips) {
    auto ip = IpAddress::Parse(cidr.substr(0, cidr.find('/')));
    SLUICE_RETURN_IF_ERROR_CTX(ip, "inbound side of " + netns + ": pod address");
    addrs.push_back(*ip);
  }
  // Addresses the pod no longer has lose every entry; the rest keep the ports still
  // listed, then every listed port is (re)set.
  if (addrs != pod.ips)
    ClearLocked(netns, pod, {});
  else
    ClearLocked(netns, pod, ports);
  pod.ips = addrs;
  pod.ports.clear();
  for (uint16_t port : ports) {
    for (const IpAddress& ip : addrs) {
      const int fd = ip.is_v4() ? fd_v4 : fd_v6;
      if (fd < 0)
        continue;  // no inbound socket of that family: that address is not steered
      SLUICE_RETURN_IF_ERROR_CTX(
          dp_.SetInbound(ip, port, fd),
          "inbound side of " + netns + ": " + ip.ToString() + ":" + std::to_string(port));
    }
    pod.ports.insert(port);
  }
  return {};
}

void DataplaneSteering::Release(const std::string& netns) {
  if (auto r = Steer(netns, {}, {}, -1, -1, {}); !r)
    spdlog::warn("{}", r.error().message);
}

}  // namespace sluice::agent
