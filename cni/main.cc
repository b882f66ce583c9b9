// sluice-cni: a chained CNI plugin that hands each pod to the node's sluice-agent.
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <exception>
#include <map>
#include <string>

#include "sluice/cni/plugin.h"

extern char** environ;

namespace {

// Reads fd to its end or to `limit` bytes, whichever comes first; returns 0 or the errno
// of a failed read. The limit bounds both the time and the memory an endless or huge
// stdin can cost.
int ReadUpTo(int fd, std::size_t limit, std::string* out) {
  constexpr std::size_t kChunk = 64 * 1024;
  while (out->size() < limit) {
    const std::size_t old = out->size();
    out->resize(old + std::min(kChunk, limit - old));
    const ssize_t n = ::read(fd, out->data() + old, out->size() - old);
    const int err = errno;
    out->resize(old + (n > 0 ? static_cast<std::size_t>(n) : 0));
    if (n == 0)
      return 0;
    if (n < 0 && err != EINTR)
      return err;
  }
  return 0;
}

}  // namespace

int main() {
  // stdout carries the CNI result alone: the libraries' log lines (the API client's)
  // go to stderr, which the runtime logs.
  spdlog::set_default_logger(spdlog::stderr_logger_st("sluice-cni"));
  std::map<std::string, std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string kv(*e);
    auto eq = kv.find('=');
    if (eq != std::string::npos && kv.starts_with("CNI_"))
      env[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  std::string input;
  int read_error = 0;
  auto cmd = env.find("CNI_COMMAND");
  const bool version = cmd != env.end() && cmd->second == "VERSION";
  // VERSION may come without stdin; every other command reads the network config. One
  // byte past the cap is enough for RunPlugin to refuse an oversized configuration.
  if (!version || !::isatty(STDIN_FILENO))
    read_error = ReadUpTo(STDIN_FILENO, sluice::cni::kMaxNetworkConfigBytes + 1, &input);
  sluice::cni::PluginOutput out;
  try {
    if (read_error != 0 && !version) {
      out = sluice::cni::StdinReadFailed(read_error);
    } else {
      out = sluice::cni::RunPlugin(env, input);
    }
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
