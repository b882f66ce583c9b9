// sluice-cni: a chained CNI plugin that hands each pod to the node's sluice-agent.
#include <unistd.h>

#include <cstdio>
#include <exception>
#include <iostream>
#include <iterator>
#include <map>
#include <string>

#include "sluice/cni/plugin.h"

extern char** environ;

int main() {
  std::map<std::string, std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string kv(*e);
    auto eq = kv.find('=');
    if (eq != std::string::npos && kv.starts_with("CNI_"))
      env[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  std::string input;
  auto cmd = env.find("CNI_COMMAND");
  // VERSION may come without stdin; every other command reads the network config.
  if (cmd == env.end() || cmd->second != "VERSION" || !::isatty(STDIN_FILENO)) {
    input.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  }
  sluice::cni::PluginOutput out;
  try {
    out = sluice::cni::RunPlugin(env, input);
  } catch (const std::exception& e) {
    // A safety net: RunPlugin reports errors as values; the runtime must still get the
    // CNI error JSON rather than an abort if something throws (e.g. out of memory).
    out.exit_status = 1;
    out.stdout_text = R"({"cniVersion":"1.0.0","code":102,"msg":"sluice-cni: internal error"})"
                      "\n";
    out.log = std::string("sluice-cni: internal error: ") + e.what();
  }
  if (!out.log.empty())
    std::fprintf(stderr, "%s\n", out.log.c_str());
  std::fwrite(out.stdout_text.data(), 1, out.stdout_text.size(), stdout);
  std::fflush(stdout);
  return out.exit_status;
}
