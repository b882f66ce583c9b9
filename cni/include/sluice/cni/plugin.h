// sluice-cni's logic as a plain function over its inputs (environment and stdin), so
// main() is a thin shell and the rules are readable in one place.
#pragma once

#include <map>
#include <string>

namespace sluice::cni {

// CNI spec versions sluice-cni accepts. prevResult (required) exists since 0.3.0.
inline constexpr const char* kSupportedVersions[] = {"0.3.0", "0.3.1", "0.4.0", "1.0.0"};
inline constexpr const char* kDefaultAgentSocket = "/var/run/sluice/cni.sock";

struct PluginOutput {
  int exit_status = 0;
  std::string stdout_text;  // result JSON, error JSON, or nothing
  std::string log;          // for stderr
};

// env: CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS, CNI_PATH.
PluginOutput RunPlugin(const std::map<std::string, std::string>& env,
                       const std::string& stdin_text);

}  // namespace sluice::cni
