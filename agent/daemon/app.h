// sluice-agent's wiring: from parsed flags (flags.h) to a running role.
//
// RunAgent() starts the local config source when --config-dir is given, then runs the
// role: `l7` (the node agent's own L7 process, l7_host.h), `gateway` (gateway_role.h)
// or `node`, whose parts it builds and connects here — the kernel data plane, the L7
// supervisor, the node agent (enrolment), the config fan-out, the label and view poller,
// the kernel's access log, the CNI server, the xDS streams and the admin pages — and
// stops in order on SIGTERM.
#pragma once

#include <signal.h>

#include "flags.h"

namespace sluice::agent {

// Runs the role `flags.role` until a signal of `sigs` (blocked in every thread); the
// process's exit status.
int RunAgent(AgentFlags flags, sigset_t sigs);

}  // namespace sluice::agent
