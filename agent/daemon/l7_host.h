// The L7 process: the node agent's pod proxies, in a process of their own.
//
// `sluice-agent --role l7` is started by the node agent (L7Supervisor) with one end of
// a socketpair. Everything a client or an upstream can reach runs here: the HTTP codec,
// the engine, the compiled configs, the DNS clusters' resolver. A crash or a wedge here
// costs the pods' L7 traffic a restart; the agent's kernel sync, CNI server, xDS streams
// and every L4 service in the kernel carry on (see docs/node-agent.md).
//
// It takes configs (the Envoy resources of the node and of each view), pods (their
// namespace, labels and listening sockets) and drain orders from the wire (l7_wire.h),
// compiles and serves them with PodProxies, and reports each config's outcome, the
// ports each pod's inbound side serves (for the agent to steer), and, every second or
// when asked, the pods' status. It ends when the agent does: at the
// end of its stream, and by PR_SET_PDEATHSIG if the agent is killed.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>

namespace sluice::agent {

struct L7HostOptions {
  int sock = -1;                  // the agent's end is the other
  uint16_t port = 15001;          // the capture listeners' port
  uint16_t inbound_port = 15006;  // the inbound listeners' port (0: no inbound side)
  std::string access_log_path;    // "" or "-": stdout
  uint32_t upstream_mark = 0;
  // Threads every pod's proxy shares (PodProxyOptions::workers): -1 one per CPU, 0 a
  // thread per pod (--l7-workers).
  int workers = -1;
  pid_t agent_pid = 0;  // the agent that started it (it exits at once if that one is gone)
};

// Runs until the agent's stream ends or a drain finishes; the exit status.
int RunL7Host(const L7HostOptions& opts);

}  // namespace sluice::agent
