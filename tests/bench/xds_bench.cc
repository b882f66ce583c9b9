// xDS benchmark (not a CI test): Sluice's ADS server serves a synthetic istiod-sized
// configuration -- N services (one EDS cluster and one virtual host each, spread over
// route configurations per port) with M endpoints in all -- and Sluice's ADS client
// applies it into a ConfigStore. The server runs in a child process so each side's
// memory is its own; they talk gRPC over loopback.
//
// Reports: initial sync (client start -> whole config applied), the client's own apply
// time (decode + warm + validate + diff + publish, per response), the latency of a
// one-endpoint update (server Push -> client subscriber), and peak RSS of both sides.
//
//   xds_bench [--services 10000] [--endpoints 50000] [--updates 20]
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>

#include "envoy/extensions/filters/http/router/v3/router.pb.h"
#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb.h"
#include "sluice/config/store.h"
#include "sluice/xds/ads_client.h"
#include "sluice/xds/ads_server.h"
#include "sluice/xds/node.h"

namespace sx = sluice::xds;
using Clock = std::chrono::steady_clock;

namespace {

constexpr int kPorts = 10;  // route configurations / listeners, as istiod's per-port RDS

std::string Host(int i) {
  return "svc-" + std::to_string(i) + ".bench.svc.cluster.local";
}
int PortOf(int i) {
  return 8000 + i % kPorts;
}
std::string ClusterOf(int i) {
  return "outbound|" + std::to_string(PortOf(i)) + "||" + Host(i);
}

envoy::config::endpoint::v3::ClusterLoadAssignment Endpoints(int svc, int count, int salt) {
  envoy::config::endpoint::v3::ClusterLoadAssignment cla;
  cla.set_cluster_name(ClusterOf(svc));
  auto* loc = cla.add_endpoints();
  loc->mutable_locality()->set_region("bench");
  for (int e = 0; e < count; ++e) {
    uint32_t ip = 0x0a000000u + static_cast<uint32_t>(svc) * 16u + static_cast<uint32_t>(e);
    auto* lbe = loc->add_lb_endpoints();
    auto* sa = lbe->mutable_endpoint()->mutable_address()->mutable_socket_address();
    sa->set_address(
        fmt::format("{}.{}.{}.{}", ip >> 24, (ip >> 16) & 255, (ip >> 8) & 255, ip & 255));
    sa->set_port_value(static_cast<uint32_t>(9000 + salt));
    lbe->mutable_load_balancing_weight()->set_value(1);
  }
  return cla;
}

sx::ResourceSet Build(int services, int endpoints) {
  using HCM =
      envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
  sx::ResourceSet rs;
  for (int p = 0; p < kPorts; ++p) {
    const int port = 8000 + p;
    envoy::config::route::v3::RouteConfiguration r;
    r.set_name(std::to_string(port));
    rs.Add(std::move(r));
    envoy::config::listener::v3::Listener l;
    l.set_name("0.0.0.0_" + std::to_string(port));
    l.mutable_address()->mutable_socket_address()->set_address("0.0.0.0");
    l.mutable_address()->mutable_socket_address()->set_port_value(static_cast<uint32_t>(port));
    HCM hcm;
    hcm.set_stat_prefix("outbound_0.0.0.0_" + std::to_string(port));
    hcm.mutable_rds()->set_route_config_name(std::to_string(port));
    hcm.mutable_rds()->mutable_config_source()->mutable_ads();
    auto* router = hcm.add_http_filters();
    router->set_name("envoy.filters.http.router");
    router->mutable_typed_config()->PackFrom(
        envoy::extensions::filters::http::router::v3::Router());
    auto* f = l.add_filter_chains()->add_filters();
    f->set_name("envoy.filters.network.http_connection_manager");
    f->mutable_typed_config()->PackFrom(hcm);
    rs.Add(std::move(l));
  }
  for (int i = 0; i < services; ++i) {
    envoy::config::cluster::v3::Cluster c;
    c.set_name(ClusterOf(i));
    c.set_type(envoy::config::cluster::v3::Cluster::EDS);
    c.mutable_eds_cluster_config()->set_service_name(c.name());
    c.mutable_eds_cluster_config()->mutable_eds_config()->mutable_ads();
    c.mutable_connect_timeout()->set_seconds(10);
    c.set_lb_policy(envoy::config::cluster::v3::Cluster::LEAST_REQUEST);
    rs.Add(std::move(c));
    // Endpoints spread evenly; the remainder goes to the first services.
    int n = endpoints / services + (i < endpoints % services ? 1 : 0);
    rs.Add(Endpoints(i, n, 0));
    auto* vh = rs.routes.at(std::to_string(PortOf(i))).add_virtual_hosts();
    vh->set_name(Host(i) + ":" + std::to_string(PortOf(i)));
    vh->add_domains(Host(i));
    vh->add_domains(Host(i) + ":" + std::to_string(PortOf(i)));
    vh->add_domains("svc-" + std::to_string(i));
    auto* route = vh->add_routes();
    route->mutable_match()->set_prefix("/");
    auto* ra = route->mutable_route();
    ra->set_cluster(ClusterOf(i));
    ra->mutable_timeout()->set_seconds(0);
    ra->mutable_retry_policy()->set_retry_on("connect-failure,refused-stream,unavailable");
    ra->mutable_retry_policy()->mutable_num_retries()->set_value(2);
  }
  return rs;
}

long PeakRssKb() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

double Ms(Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

// Child: serve the set; on each byte from `cmd`, change one endpoint and push; on EOF,
// report peak RSS and exit.
[[noreturn]] void Serve(int services, int endpoints, int cmd, int ready) {
  auto t0 = Clock::now();
  std::shared_ptr<const sx::ResourceSet> current =
      std::make_shared<const sx::ResourceSet>(Build(services, endpoints));
  double build_ms = Ms(Clock::now() - t0);
  std::mutex mu;
  // The set is immutable once served: an update builds the next one and pushes it.
  sx::AdsServer server(sx::AdsServer::SharedResourceFn([&](const envoy::config::core::v3::Node&) {
    std::lock_guard lock(mu);
    return current;
  }));
  auto port = server.Start({.address = "127.0.0.1:0"});
  if (!port) {
    std::fprintf(stderr, "server: %s\n", port.error().message.c_str());
    _exit(1);
  }
  int p = *port;
  if (write(ready, &p, sizeof p) != sizeof p)
    _exit(1);
  char c;
  int salt = 0;
  double copy_ms = 0;
  // The next set is prepared on 'p' and pushed on 'u', so the measured latency is
  // Push -> client applied; the control plane's copy-on-write is reported on its own.
  auto prepare = [&] {
    auto c0 = Clock::now();
    auto next = std::make_shared<sx::ResourceSet>(*current);
    copy_ms += Ms(Clock::now() - c0);
    next->endpoints.at(ClusterOf(salt % services))
        .mutable_endpoints(0)
        ->mutable_lb_endpoints(0)
        ->mutable_endpoint()
        ->mutable_address()
        ->mutable_socket_address()
        ->set_port_value(static_cast<uint32_t>(9001 + salt));
    ++salt;
    return next;
  };
  std::shared_ptr<sx::ResourceSet> next;
  while (read(cmd, &c, 1) == 1) {
    if (c == 'p') {  // prepare, then tell the parent to start its clock
      next = prepare();
      if (write(ready, &c, 1) != 1)
        _exit(1);
      continue;
    }
    {
      std::lock_guard lock(mu);
      current = std::move(next);
    }
    server.Push();
  }
  server.Stop();
  std::printf(
      "server: build %.0f ms, copy of the set per update (not in the latency) %.0f ms, peak RSS "
      "%ld MiB\n",
      build_ms, salt ? copy_ms / salt : 0.0, PeakRssKb() / 1024);
  std::fflush(stdout);
  _exit(0);
}

}  // namespace

int main(int argc, char** argv) {
  int services = 10000, endpoints = 50000, updates = 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    int v = std::atoi(argv[i + 1]);
    if (a == "--services")
      services = v;
    else if (a == "--endpoints")
      endpoints = v;
    else if (a == "--updates")
      updates = v;
  }
  spdlog::set_level(std::getenv("XDS_BENCH_DEBUG") ? spdlog::level::debug : spdlog::level::warn);
  int cmd[2], ready[2];
  if (pipe(cmd) != 0 || pipe(ready) != 0)
    return 1;
  pid_t child = fork();  // before any gRPC state exists in this process
  if (child == 0) {
    close(cmd[1]);
    close(ready[0]);
    Serve(services, endpoints, cmd[0], ready[1]);
  }
  close(cmd[0]);
  close(ready[1]);
  int port = 0;
  if (read(ready[0], &port, sizeof port) != sizeof port)
    return 1;

  sluice::config::ConfigStore store;
  std::mutex mu;
  std::condition_variable cv;
  uint64_t published = 0;
  size_t eps = 0;
  Clock::time_point last_publish;
  store.Subscribe([&](const sluice::config::SnapshotPtr& s, const sluice::config::Diff&) {
    std::lock_guard lock(mu);
    ++published;
    eps = 0;
    for (const auto& [_, cla] : s->endpoints) {
      for (const auto& loc : cla->endpoints())
        eps += loc.lb_endpoints_size();
    }
    last_publish = Clock::now();
    cv.notify_all();
  });
  sx::AdsClientOptions opts;
  opts.server = "127.0.0.1:" + std::to_string(port);
  sx::NodeIdentity id;
  id.ips = {"10.244.0.9"};
  id.pod_name = "bench-0";
  opts.node = sx::BuildNode(id);

  auto t0 = Clock::now();
  sx::AdsClient client(opts, store);
  if (!client.Start())
    return 1;
  {
    std::unique_lock lock(mu);
    cv.wait_for(lock, std::chrono::minutes(5), [&] {
      auto s = store.Current();
      return s->clusters.size() == static_cast<size_t>(services) && s->listeners.size() == kPorts &&
             eps == static_cast<size_t>(endpoints);
    });
  }
  double sync_ms = Ms(last_publish - t0);
  long rss_after_sync = PeakRssKb();

  // The client-side apply alone: the same snapshot applied to a fresh store
  // (whole-set validation + diff against empty), and an endpoint-only change to it.
  auto snap = store.Current();
  sluice::config::ConfigStore fresh;
  auto a0 = Clock::now();
  auto ok = fresh.Apply(*snap);
  double apply_ms = Ms(Clock::now() - a0);
  if (!ok) {
    std::fprintf(stderr, "apply failed: %s\n", ok.error().message.c_str());
    return 1;
  }

  std::vector<double> lat;
  for (int u = 0; u < updates; ++u) {
    uint64_t before;
    {
      std::lock_guard lock(mu);
      before = published;
    }
    char ack;
    if (write(cmd[1], "p", 1) != 1 || read(ready[0], &ack, 1) != 1)
      return 1;
    auto start = Clock::now();
    if (write(cmd[1], "u", 1) != 1)
      return 1;
    std::unique_lock lock(mu);
    if (!cv.wait_for(lock, std::chrono::seconds(30), [&] { return published > before; })) {
      std::fprintf(stderr, "update %d did not arrive\n", u);
      return 1;
    }
    lat.push_back(Ms(last_publish - start));
  }
  client.Stop();
  close(cmd[1]);
  int status = 0;
  waitpid(child, &status, 0);

  std::sort(lat.begin(), lat.end());
  auto pct = [&](double p) {
    return lat.empty() ? 0.0 : lat[static_cast<size_t>(p * (lat.size() - 1))];
  };
  std::printf("services %d, endpoints %d, route configs %d\n", services, endpoints, kPorts);
  std::printf("client: initial sync (start -> all applied) %.0f ms\n", sync_ms);
  std::printf("client: ConfigStore::Apply of the whole set %.0f ms\n", apply_ms);
  std::printf(
      "client: one-endpoint update, Push -> applied: median %.1f ms, p90 %.1f ms, max %.1f ms (%zu "
      "updates)\n",
      pct(0.5), pct(0.9), lat.empty() ? 0.0 : lat.back(), lat.size());
  std::printf("client: peak RSS after sync %ld MiB, at end %ld MiB\n", rss_after_sync / 1024,
              PeakRssKb() / 1024);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
