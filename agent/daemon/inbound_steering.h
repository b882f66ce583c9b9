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
  // `fd_v6`; -1: none), and exactly `policies` enforced. Ports no longer listed reach the
  // application again; policies no longer listed are removed. Policies are written
  // before ports are steered; one that cannot be written is logged as an error (and
  // tried again on the next call), not returned.
  virtual Result<void> Steer(const std::string& netns, const std::vector<std::string>& ips,
                             const std::set<uint16_t>& ports, int fd_v4, int fd_v6,
                             const std::vector<InboundPolicy>& policies) = 0;
  // The pod is gone or closed: nothing is steered to it any more.
  virtual void Release(const std::string& netns) = 0;
};

// The real one, over the kernel data plane.
class DataplaneSteering : public InboundSteering {
 public:
  explicit DataplaneSteering(Dataplane& dp) : dp_(dp) {}
  Result<void> Steer(const std::string& netns, const std::vector<std::string>& ips,
                     const std::set<uint16_t>& ports, int fd_v4, int fd_v6,
                     const std::vector<InboundPolicy>& policies) override;
  void Release(const std::string& netns) override;

 private:
  struct Pod {
    uint64_t cookie = 0;
    std::vector<IpAddress> ips;
    std::set<uint16_t> ports;
    // In force: (pod address, port) -> rules.
    std::map<std::pair<IpAddress, uint16_t>, std::vector<InboundPolicyRule>> policies;
  };
  void ClearLocked(const std::string& netns, Pod& pod, const std::set<uint16_t>& keep);
  Result<void> PoliciesLocked(const std::string& netns, Pod& pod,
                              const std::vector<InboundPolicy>& want);

  Dataplane& dp_;
  std::mutex mu_;
  std::map<std::string, Pod> pods_;  // by netns path: the pods with a program attached
};

}  // namespace sluice::agent
