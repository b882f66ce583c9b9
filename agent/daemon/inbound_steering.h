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
  // `fd_v6`; -1: none). Ports no longer listed reach the application again.
  virtual Result<void> Steer(const std::string& netns, const std::vector<std::string>& ips,
                             const std::set<uint16_t>& ports, int fd_v4, int fd_v6) = 0;
  // The pod is gone or closed: nothing is steered to it any more.
  virtual void Release(const std::string& netns) = 0;
};

// The real one, over the kernel data plane.
class DataplaneSteering : public InboundSteering {
 public:
  explicit DataplaneSteering(Dataplane& dp) : dp_(dp) {}
  Result<void> Steer(const std::string& netns, const std::vector<std::string>& ips,
                     const std::set<uint16_t>& ports, int fd_v4, int fd_v6) override;
  void Release(const std::string& netns) override;

 private:
  struct Pod {
    uint64_t cookie = 0;
    std::vector<IpAddress> ips;
    std::set<uint16_t> ports;
  };
  void ClearLocked(const std::string& netns, Pod& pod, const std::set<uint16_t>& keep);

  Dataplane& dp_;
  std::mutex mu_;
  std::map<std::string, Pod> pods_;  // by netns path: the pods with a program attached
};

}  // namespace sluice::agent
