// The stand-in for Istio's tcp-echo sample (istio/tcp-echo-server): it listens on each
// of a comma-separated list of ports and answers every line a client sends with the
// line prefixed by its own prefix and a space ("one hello\n"), until the client closes.
// The TCP tasks tell the versions apart by that prefix.
#pragma once

#include <string>
#include <vector>

namespace sluice::apps {

// Serves until SIGTERM; the exit status (ports "9000,9001", prefix "one").
int RunTcpEcho(const std::string& ports, const std::string& prefix);

}  // namespace sluice::apps
