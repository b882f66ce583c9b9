// A minimal client for sluice-agent's admin endpoint: one GET, `Connection: close`, the
// body returned when the status is 200. The address is "HOST:PORT" (IPv4, or
// "localhost") or "unix:PATH" — a gateway pod's admin socket, reachable from the host
// without entering the pod's network namespace.
#pragma once

#include <string>

#include "sluice/common/result.h"

namespace sluice::inspect {

// Fails naming the address and path: unreachable, timed out, non-200 (with the body).
Result<std::string> AdminGet(const std::string& address, const std::string& path,
                             int timeout_ms = 10000);

}  // namespace sluice::inspect
