// Benchmark (not a CI test): the local control plane at scale.
//
//   istio_translate_bench [SERVICES] [PODS_PER_SERVICE]     (default 10000 x 5)
//
// Writes SERVICES Kubernetes Services (one HTTP port each) with PODS_PER_SERVICE Pods
// apiece, a DestinationRule with subsets v1/v2 for every 10th service and a 25/75
// VirtualService for every 10th, into a temporary directory; then measures
//   load+registry (LocalControlPlane::Reload), translation for one sidecar, and the push to
//   the agent's real ADS client over gRPC on loopback until its store holds everything,
//   then a one-endpoint change (one file rewritten -> Reload -> Push -> client applied).
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "sluice/config/store.h"
#include "sluice/istio/local_control_plane.h"
#include "sluice/xds/ads_client.h"
#include "sluice/xds/ads_server.h"
#include "sluice/xds/node.h"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

double Ms(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

long MaxRssMb() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024;
}

std::string PodIp(int svc, int pod, int generation) {
  // 10.X.Y.Z from (service, pod); generation shifts the last pod of service 0 only.
  int n = svc * 8 + pod + generation;
  return "10." + std::to_string(64 + n / 65536) + "." + std::to_string((n / 256) % 256) + "." +
         std::to_string(n % 256);
}

void WriteChunk(const fs::path& file, int first, int count, int pods, int generation) {
  std::ofstream out(file);
  for (int s = first; s < first + count; ++s) {
    std::string name = "svc-" + std::to_string(s);
    out << "apiVersion: v1\nkind: Service\nmetadata: {name: " << name
        << ", namespace: bench}\nspec:\n  selector: {app: " << name
        << "}\n  ports: [{name: http, port: 8080, targetPort: 9080}]\n---\n";
    for (int p = 0; p < pods; ++p) {
      out << "apiVersion: v1\nkind: Pod\nmetadata: {name: " << name << "-" << p
          << ", namespace: bench, labels: {app: " << name << ", version: v" << (p % 2 + 1)
          << "}}\nstatus: {podIP: " << PodIp(s, p, s == 0 && p == 0 ? generation : 0) << "}\n---\n";
    }
    if (s % 10 == 0) {
      out << "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: " << name
          << ", namespace: bench}\nspec:\n  host: " << name
          << "\n  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: "
             "v2}}]\n---\n"
          << "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: " << name
          << ", namespace: bench}\nspec:\n  hosts: [" << name
          << "]\n  http:\n  - route:\n    - {destination: {host: " << name
          << ", subset: v1}, weight: 25}\n    - {destination: {host: " << name
          << ", subset: v2}, weight: 75}\n---\n";
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  int services = argc > 1 ? std::atoi(argv[1]) : 10000;
  int pods = argc > 2 ? std::atoi(argv[2]) : 5;
  constexpr int kPerFile = 100;
  char tmpl[] = "/tmp/sluice-bench-XXXXXX";
  if (!::mkdtemp(tmpl))
    return 1;
  fs::path dir = tmpl;
  for (int first = 0; first < services; first += kPerFile) {
    WriteChunk(dir / ("chunk-" + std::to_string(first / kPerFile) + ".yaml"), first,
               std::min(kPerFile, services - first), pods, 0);
  }

  sluice::istio::LocalControlPlane cp({dir.string()});
  auto t0 = Clock::now();
  auto report = cp.Reload();
  auto t1 = Clock::now();
  if (!report.errors.empty()) {
    std::fprintf(stderr, "load errors: %s\n", report.errors[0].c_str());
    return 1;
  }

  sluice::xds::NodeIdentity id;
  id.ips = {"10.244.1.5"};
  id.pod_name = "sleep-0";
  id.pod_namespace = "bench";
  auto node = sluice::xds::BuildNode(id);
  auto t2 = Clock::now();
  auto rs = cp.ResourcesFor(node);
  auto t3 = Clock::now();
  size_t lb_endpoints = 0;
  for (const auto& [name, cla] : rs.endpoints) {
    for (const auto& l : cla.endpoints())
      lb_endpoints += static_cast<size_t>(l.lb_endpoints_size());
  }
  std::printf("services=%d pods=%d files=%zu\n", services, services * pods, report.files);
  std::printf("load+registry: %.1f ms\n", Ms(t0, t1));
  std::printf(
      "translate (sidecar): %.1f ms -> %zu clusters, %zu CLAs (%zu lb endpoints), "
      "%zu listeners, %zu routes\n",
      Ms(t2, t3), rs.clusters.size(), rs.endpoints.size(), lb_endpoints, rs.listeners.size(),
      rs.routes.size());

  std::printf("max RSS after load + one translation: %ld MB\n", MaxRssMb());

  // Push to the agent's client over real gRPC.
  sluice::xds::AdsServer server(
      [&cp](const envoy::config::core::v3::Node& n) { return cp.ResourcesFor(n); });
  sluice::xds::AdsServerOptions sopts;
  sopts.address = "127.0.0.1:0";
  auto port = server.Start(sopts);
  if (!port)
    return 1;
  sluice::config::ConfigStore store;
  sluice::xds::AdsClientOptions copts;
  copts.server = "127.0.0.1:" + std::to_string(*port);
  copts.node = node;
  sluice::xds::AdsClient client(copts, store);
  auto t4 = Clock::now();
  if (!client.Start())
    return 1;
  auto synced = [&] {
    auto s = store.Current();
    return s->clusters.size() == rs.clusters.size() && s->endpoints.size() == rs.endpoints.size() &&
           s->listeners.size() == rs.listeners.size() && s->routes.size() == rs.routes.size();
  };
  while (!synced())
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  auto t5 = Clock::now();
  std::printf("initial push until the client applied everything: %.1f ms\n", Ms(t4, t5));

  // One endpoint changes: rewrite the file holding service 0, reload, push.
  const std::string cla_name = "outbound|8080||svc-0.bench.svc.cluster.local";
  auto t6 = Clock::now();
  WriteChunk(dir / "chunk-0.yaml", 0, std::min(kPerFile, services), pods, 7);
  auto t7 = Clock::now();
  cp.Reload();
  auto t8 = Clock::now();
  server.Push();
  std::string want = PodIp(0, 0, 7);
  auto has_new = [&] {
    auto s = store.Current();
    auto it = s->endpoints.find(cla_name);
    if (it == s->endpoints.end())
      return false;
    for (const auto& l : it->second->endpoints()) {
      for (const auto& e : l.lb_endpoints()) {
        if (e.endpoint().address().socket_address().address() == want)
          return true;
      }
    }
    return false;
  };
  while (!has_new())
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  auto t9 = Clock::now();
  std::printf("one-endpoint update: reload %.1f ms, push+apply %.1f ms, total %.1f ms\n",
              Ms(t7, t8), Ms(t8, t9), Ms(t6, t9));
  std::printf("max RSS (server + client in one process): %ld MB\n", MaxRssMb());
  client.Stop();
  server.Stop();
  fs::remove_all(dir);
  return 0;
}
