// sluice-proxy: the L7 engine on its own, configured from an Envoy-shaped JSON file
// ({"listeners": [...], "routes": [...], "clusters": [...], "endpoints": [...]}) or an
// Envoy admin /config_dump (config_json.cc; a resource that does not parse is named and
// left out).
// Used by the tests and the benchmark; the node agent embeds the library instead.
// SIGHUP re-reads the file (a bad file is reported and the running config stays). When
// a DNS cluster's answer changes (names are re-resolved at each cluster's
// dns_refresh_rate) the config last read is compiled again.
#include <signal.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include <CLI/CLI.hpp>

#include "sluice/envoy/resource_set.h"
#include "sluice/proxy/config_json.h"
#include "sluice/proxy/dns.h"
#include "sluice/proxy/proxy.h"

namespace {

sluice::Result<std::shared_ptr<const sluice::proxy::ProxyConfig>> Build(
    const std::string& path, const sluice::xds::ResourceSet& rs) {
  auto cfg = sluice::proxy::Compile(rs);
  if (!cfg)
    return sluice::Wrap(path, cfg.error());
  for (const std::string& w : (*cfg)->warnings)
    std::fprintf(stderr, "sluice-proxy: warning: %s: %s\n", path.c_str(), w.c_str());
  for (const auto& r : (*cfg)->refused)
    std::fprintf(stderr, "sluice-proxy: %s: %s %s refused: %s\n", path.c_str(), r.kind.c_str(),
                 r.name.c_str(), r.reason.c_str());
  return cfg;
}

sluice::Result<sluice::xds::ResourceSet> Read(const std::string& path) {
  std::ifstream f(path);
  if (!f)
    return sluice::Fail("cannot open " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  auto loaded = sluice::proxy::LoadConfigJson(ss.str());
  if (!loaded)
    return sluice::Wrap(path, loaded.error());
  // As Envoy takes a resource at a time: one that does not parse is named and left out,
  // the rest are served.
  for (const std::string& u : loaded->unparsed)
    std::fprintf(stderr, "sluice-proxy: warning: %s: not served: %s\n", path.c_str(), u.c_str());
  for (const std::string& s : loaded->skipped)
    std::fprintf(stderr, "sluice-proxy: note: %s: %s\n", path.c_str(), s.c_str());
  return std::move(loaded->resources);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"sluice-proxy: Sluice's L7 proxy engine, standalone"};
  std::string config_path, access_log;
  int workers = 1;
  app.add_option("--config", config_path, "Envoy-shaped JSON resources, or an Envoy /config_dump")
      ->required();
  app.add_option("--workers", workers, "worker threads (one event loop each)");
  std::string io = "auto";
  app.add_option("--io", io,
                 "socket I/O: io_uring, epoll, or auto (io_uring when the kernel offers it)")
      ->capture_default_str();
  app.add_option("--access-log", access_log, "access log file (default: stdout)");
  std::string istio_workload, istio_out;
  app.add_option("--istio-workload", istio_workload,
                 "keep Istio's standard metrics as this pod, NAMESPACE/POD (the node agent does "
                 "this for every pod it serves)");
  app.add_option("--istio-stats-file", istio_out,
                 "with --istio-workload: write the metrics (Prometheus text) here on exit");
  CLI11_PARSE(app, argc, argv);

  auto rs = Read(config_path);
  if (!rs) {
    std::fprintf(stderr, "sluice-proxy: %s\n", rs.error().message.c_str());
    return 1;
  }
  auto cfg = Build(config_path, *rs);
  if (!cfg) {
    std::fprintf(stderr, "sluice-proxy: %s\n", cfg.error().message.c_str());
    return 1;
  }
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  sigaddset(&set, SIGUSR1);                   // a DNS answer changed (below)
  pthread_sigmask(SIG_BLOCK, &set, nullptr);  // before the workers start: they inherit it
  // The cache's resolver thread must not compile; it wakes the main thread instead.
  const uint64_t dns_sub =
      sluice::proxy::DnsCache::Default().Subscribe([] { kill(getpid(), SIGUSR1); });

  sluice::proxy::ProxyOptions opts;
  opts.workers = workers;
  opts.access_log_path = access_log;
  auto backend = sluice::proxy::ParseIoBackend(io);
  if (!backend) {
    std::fprintf(stderr, "sluice-proxy: --io: %s\n", backend.error().message.c_str());
    return 2;
  }
  opts.io = *backend;
  if (!istio_workload.empty()) {
    const auto slash = istio_workload.find('/');
    if (slash == std::string::npos || slash == 0 || slash + 1 == istio_workload.size()) {
      std::fprintf(stderr, "sluice-proxy: --istio-workload '%s': want NAMESPACE/POD\n",
                   istio_workload.c_str());
      return 2;
    }
    namespace tm = sluice::proxy::telemetry;
    opts.istio_stats = std::make_shared<tm::IstioStats>(
        tm::Intern(
            tm::PodWorkload(istio_workload.substr(0, slash), istio_workload.substr(slash + 1), {})),
        std::make_shared<const tm::PeerDirectory>());
  } else if (!istio_out.empty()) {
    std::fprintf(stderr, "sluice-proxy: --istio-stats-file needs --istio-workload\n");
    return 2;
  }
  auto proxy = sluice::proxy::Proxy::Start(*cfg, opts);
  if (!proxy) {
    std::fprintf(stderr, "sluice-proxy: %s\n", proxy.error().message.c_str());
    return 1;
  }
  if (std::string why = (*proxy)->io_fallback_reason(); !why.empty()) {
    std::fprintf(stderr, "sluice-proxy: I/O: epoll (io_uring unavailable: %s)\n", why.c_str());
  } else {
    std::fprintf(stderr, "sluice-proxy: I/O: %s\n",
                 sluice::proxy::IoBackendName((*proxy)->io_backend()));
  }
  for (const auto& l : (*cfg)->listeners) {
    std::fprintf(stderr, "sluice-proxy: listener %s on %s:%u\n", l.name.c_str(), l.address.c_str(),
                 (*proxy)->Port(l.name));
  }
  std::fflush(stderr);
  while (true) {
    int sig = 0;
    sigwait(&set, &sig);
    if (sig != SIGHUP && sig != SIGUSR1)
      break;
    // SIGHUP: the file as it is now; SIGUSR1: the resources running, compiled again.
    auto candidate = sig == SIGHUP ? Read(config_path) : rs;
    auto next = candidate ? Build(config_path, *candidate)
                          : sluice::Result<std::shared_ptr<const sluice::proxy::ProxyConfig>>(
                                std::unexpected(candidate.error()));
    if (!next) {
      std::fprintf(stderr, "sluice-proxy: reload rejected, keeping the running config: %s\n",
                   next.error().message.c_str());
      continue;
    }
    rs = std::move(candidate);
    if (auto r = (*proxy)->Update(*next); !r) {
      std::fprintf(stderr, "sluice-proxy: reload failed: %s\n", r.error().message.c_str());
    }
  }
  sluice::proxy::DnsCache::Default().Unsubscribe(dns_sub);
  (*proxy)->Stop();
  if (!istio_out.empty()) {
    std::vector<sluice::proxy::telemetry::Sample> samples;
    opts.istio_stats->Collect(&samples);
    std::ofstream(istio_out) << sluice::proxy::telemetry::RenderPrometheus(samples);
  }
  return 0;
}
