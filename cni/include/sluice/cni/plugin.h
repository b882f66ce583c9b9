// sluice-cni's logic as a plain function over its inputs (environment and stdin), so
// main() is a thin shell and the rules are readable in one place.
#pragma once

#include <cstddef>
#include <map>
#include <string>

namespace sluice::cni {

// CNI spec versions sluice-cni accepts. prevResult (required) exists since 0.3.0.
inline constexpr const char* kSupportedVersions[] = {"0.3.0", "0.3.1", "0.4.0", "1.0.0"};
inline constexpr const char* kDefaultAgentSocket = "/var/run/sluice/cni.sock";

// The most network configuration sluice-cni reads from stdin. A configuration with its
// prevResult is a few kilobytes; 1 MiB leaves room for any real one and stops a runaway
// writer (or stdin left on /dev/zero) from holding the pod's set-up and the node's memory.
inline constexpr std::size_t kMaxNetworkConfigBytes = std::size_t{1} << 20;

struct PluginOutput {
  int exit_status = 0;
  std::string stdout_text;  // result JSON, error JSON, or nothing
  std::string log;          // for stderr
};

// env: CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS, CNI_PATH.
// stdin_text longer than kMaxNetworkConfigBytes is refused (CNI code 5) without being
// parsed, so the caller need read no more than one byte past the cap.
PluginOutput RunPlugin(const std::map<std::string, std::string>& env,
                       const std::string& stdin_text);

// The answer when reading stdin failed with errno `err` (CNI code 5, I/O failure).
PluginOutput StdinReadFailed(int err);

}  // namespace sluice::cni
