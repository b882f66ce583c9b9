// InboundSteering: the kernel half of an enrolled pod's inbound side.
//
// The pod's proxy serves its inbound listener on a loopback socket the agent opened in
// the pod (PodSockets::inbound_*). Nothing reaches that socket on its own: the
// sk_lookup program (bpf/pod_inbound.bpf.c), attached to the pod's network namespace,
// hands it the connections that arrive for (pod address, port) entries of the
// sluice_inbound map, and every other connection reaches the application as before.
// This class keeps those entries equal to the ports the pod's proxy says it serves
// (PodProxies' InboundPorts, reported over the L7 wire after the config is in force),
// attaching the program to a pod's namespace when it first needs it and detaching it
// when the pod needs it no more or goes away. It only ever runs in the agent: the
// kernel's state is never the L7 process's to touch.
//
// The same program enforces the L4 policy of the pod's ports (the network rbac filters
// that need only addresses, agent/proxy/rbac_l4.h), steered or not: a pod with any
// policy keeps the program attached even when no port is steered.
//
// Every steered port also gets a guard (sluice_inbound_guard) saying what the program does
// when the port's socket is missing: a port whose policy only the proxy enforces is
// refused, never handed to the application unchecked. The sockets close with the agent;
// guards, policies and the pinned link stay, so while the agent restarts those ports fail
// closed. A restarted agent reads back what the kernel holds for a pod's addresses the
// first time it steers the pod, and keeps or clears it from there.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "sluice/common/result.h"
#include "sluice/loader/dataplane.h"
#include "sluice/loader/ip.h"

namespace sluice::agent {

class InboundSteering {
 public:
  virtual ~InboundSteering() = default;
  // The pod in `netns` (addresses `ips`, "10.1.0.5/24" as CNI gave them) gets exactly
  // `ports` steered to its inbound sockets (IPv4 addresses to `fd_v4`, IPv6 ones to
  // `fd_v6`; -1: none, nothing of that family is steered), each port guarded (true:
  // refused while no socket takes it; false: the application's), and exactly `policies`
  // enforced. Ports no longer listed reach the application again; policies no longer
  // listed are removed. Policies and guards are written before ports are steered; a
  // policy that cannot be written is logged as an error (and tried again on the next
  // call), not returned.
  virtual Result<void> Steer(const std::string& netns, const std::vector<std::string>& ips,
                             const std::map<uint16_t, bool>& ports, int fd_v4, int fd_v6,
                             const std::vector<InboundPolicy>& policies) = 0;
  // The pod is gone or closed: nothing is steered to it any more.
  virtual void Release(const std::string& netns) = 0;
};

// The real one, over the kernel data plane.
class DataplaneSteering : public InboundSteering {
 public:
  explicit DataplaneSteering(Dataplane& dp) : dp_(dp) {}
  Result<void> Steer(const std::string& netns, const std::vector<std::string>& ips,
                     const std::map<uint16_t, bool>& ports, int fd_v4, int fd_v6,
                     const std::vector<InboundPolicy>& policies) override;
  void Release(const std::string& netns) override;

 private:
  using Key = std::pair<IpAddress, uint16_t>;  // (pod address, port)
  struct Pod {
    uint64_t cookie = 0;
    // In force: guards (and, where the address's family has a socket, steering), and
    // policies.
    std::map<Key, bool> guards;
    std::map<Key, std::vector<InboundPolicyRule>> policies;
  };
  // What the kernel holds for `addrs` from an earlier agent (or an earlier pod of those
  // addresses), as a Pod that Steer then brings to what is wanted.
  Result<Pod> Leftovers(const std::vector<IpAddress>& addrs);
  void ClearLocked(const std::string& netns, Pod& pod, const std::map<Key, bool>& keep);
  Result<void> PoliciesLocked(const std::string& netns, Pod& pod,
                              const std::vector<InboundPolicy>& want);

  Dataplane& dp_;
  std::mutex mu_;
  std::map<std::string, Pod> pods_;  // by netns path: the pods with a program attached
};

}  // namespace sluice::agent
