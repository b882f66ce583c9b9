// sluice-proxy: the L7 engine on its own, configured from an Envoy-shaped JSON file
// ({"listeners": [...], "routes": [...], "clusters": [...], "endpoints": [...]}).
// Used by the tests and the benchmark; the node agent embeds the library instead.
// SIGHUP re-reads the file (a bad file is reported and the running config stays).
#include <signal.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include <CLI/CLI.hpp>

#include "sluice/proxy/proxy.h"
#include "sluice/xds/resource_set.h"

namespace {

sluice::Result<std::shared_ptr<const sluice::proxy::ProxyConfig>> Load(const std::string& path) {
  std::ifstream f(path);
  if (!f)
    return sluice::Fail("cannot open " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  auto rs = sluice::proxy::ParseResourceSetJson(ss.str());
  if (!rs)
    return sluice::Wrap(path, rs.error());
  auto cfg = sluice::proxy::Compile(*rs);
  if (!cfg)
    return sluice::Wrap(path, cfg.error());
  for (const std::string& w : (*cfg)->warnings)
    std::fprintf(stderr, "sluice-proxy: warning: %s: %s\n", path.c_str(), w.c_str());
  return cfg;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"sluice-proxy: Sluice's L7 proxy engine, standalone"};
  std::string config_path, access_log;
  int workers = 1;
  app.add_option("--config", config_path, "Envoy-shaped JSON resources")->required();
  app.add_option("--workers", workers, "worker threads (one epoll loop each)");
  app.add_option("--access-log", access_log, "access log file (default: stdout)");
  CLI11_PARSE(app, argc, argv);

  auto cfg = Load(config_path);
  if (!cfg) {
    std::fprintf(stderr, "sluice-proxy: %s\n", cfg.error().message.c_str());
    return 1;
  }
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);  // before the workers start: they inherit it

  sluice::proxy::ProxyOptions opts;
  opts.workers = workers;
  opts.access_log_path = access_log;
  auto proxy = sluice::proxy::Proxy::Start(*cfg, opts);
  if (!proxy) {
    std::fprintf(stderr, "sluice-proxy: %s\n", proxy.error().message.c_str());
    return 1;
  }
  for (const auto& l : (*cfg)->listeners) {
    std::fprintf(stderr, "sluice-proxy: listener %s on %s:%u\n", l.name.c_str(), l.address.c_str(),
                 (*proxy)->Port(l.name));
  }
  std::fflush(stderr);
  while (true) {
    int sig = 0;
    sigwait(&set, &sig);
    if (sig != SIGHUP)
      break;
    auto next = Load(config_path);
    if (!next) {
      std::fprintf(stderr, "sluice-proxy: reload rejected, keeping the running config: %s\n",
                   next.error().message.c_str());
      continue;
    }
    if (auto r = (*proxy)->Update(*next); !r) {
      std::fprintf(stderr, "sluice-proxy: reload failed: %s\n", r.error().message.c_str());
    }
  }
  (*proxy)->Stop();
  return 0;
}
