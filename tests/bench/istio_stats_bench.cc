// Istio metrics at node scale (issue 17), not run by ctest: what the agent's
// /stats/prometheus costs at PODS enrolled pods and SERVICES services, and what recording
// one request costs the proxy.
//
// Each pod (two per workload, as a Deployment of two replicas) records requests to
// SERIES_PER_POD label sets: destinations drawn from SERVICES services (each with its
// workload, as istiod's endpoint metadata names it) and three response codes, half as
// outbound (reporter source) and half as inbound (reporter destination) traffic. Then:
//   - record: the per-request cost on a warm series (the proxy's hot path: find the
//     series, add to its counters and three histograms), and on a new series;
//   - scrape: Collect over every pod plus RenderPrometheus, the work the L7 process does
//     for one /stats/prometheus (the agent adds one copy of the text), median of ROUNDS.
//
// Usage: istio_stats_bench [PODS] [SERVICES] [SERIES_PER_POD] [ROUNDS]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "sluice/proxy/istio_stats.h"

using namespace sluice::proxy::telemetry;
using Clock = std::chrono::steady_clock;

namespace {

double Ms(Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

void Record(Series& s, uint64_t i) {
  s.requests.fetch_add(1, std::memory_order_relaxed);
  s.duration_ms.Record(i % 300);
  s.request_bytes.Record(200 + i % 50);
  s.response_bytes.Record(1000 + i % 500);
}

}  // namespace

int main(int argc, char** argv) {
  const int pods = argc > 1 ? std::atoi(argv[1]) : 110;
  const int services = argc > 2 ? std::atoi(argv[2]) : 1000;
  const int per_pod = argc > 3 ? std::atoi(argv[3]) : 20;
  const int rounds = argc > 4 ? std::atoi(argv[4]) : 5;
  if (pods <= 0 || services <= 0 || per_pod <= 0 || rounds <= 0) {
    std::fprintf(stderr, "usage: istio_stats_bench [PODS] [SERVICES] [SERIES_PER_POD] [ROUNDS]\n");
    return 2;
  }
  std::vector<const Service*> svc;
  std::vector<const Workload*> wl;
  for (int i = 0; i < services; i++) {
    const std::string name = "svc-" + std::to_string(i);
    const std::string ns = "ns-" + std::to_string(i % 20);
    svc.push_back(Intern(Service{name + "." + ns + ".svc.cluster.local", name, ns}));
    wl.push_back(Intern(Workload{name + "-v1", ns, name, "v1", name, "v1", "Kubernetes"}));
  }
  auto peers = std::make_shared<const PeerDirectory>();
  std::vector<std::unique_ptr<IstioStats>> stats;
  for (int p = 0; p < pods; p++) {
    const std::string app = "app-" + std::to_string(p / 2);
    const std::string ns = "ns-" + std::to_string(p % 20);
    const Workload* self = Intern(PodWorkload(
        ns, app + "-5d9c8b7f6d-" + std::string(1, static_cast<char>('b' + p % 2)) + "xxxx",
        {{"app", app}, {"version", "v1"}, {"pod-template-hash", "5d9c8b7f6d"}}));
    stats.push_back(std::make_unique<IstioStats>(self, peers));
  }
  const uint16_t codes[] = {200, 404, 503};
  auto key_of = [&](int p, int j) {
    SeriesKey k;
    const int s = (p * 7919 + j / 3) % services;
    k.service = svc[s];
    k.peer_eds = wl[s];
    k.code = codes[j % 3];
    k.kind = (j & 1) ? kInbound : 0;
    return k;
  };

  // Fill every pod's series (and time a request that makes a new series).
  auto t0 = Clock::now();
  uint64_t n = 0;
  for (int p = 0; p < pods; p++)
    for (int j = 0; j < per_pod; j++)
      Record(stats[p]->Get(key_of(p, j)), n++);
  const double new_ns = Ms(Clock::now() - t0) * 1e6 / static_cast<double>(n);

  // Warm series: the steady state of the hot path.
  const uint64_t warm = 2'000'000;
  t0 = Clock::now();
  for (uint64_t i = 0; i < warm; i++) {
    const int p = static_cast<int>(i % static_cast<uint64_t>(pods));
    Record(stats[p]->Get(key_of(p, static_cast<int>((i / pods) % per_pod))), i);
  }
  const double warm_ns = Ms(Clock::now() - t0) * 1e6 / static_cast<double>(warm);

  std::vector<double> scrape;
  std::size_t bytes = 0, series = 0;
  for (int r = 0; r < rounds; r++) {
    t0 = Clock::now();
    std::vector<Sample> samples;
    for (const auto& s : stats)
      s->Collect(&samples);
    const std::string text = RenderPrometheus(samples);
    scrape.push_back(Ms(Clock::now() - t0));
    bytes = text.size();
    series = samples.size();
  }
  std::sort(scrape.begin(), scrape.end());
  std::printf(
      "pods=%d services=%d series_per_pod=%d: series=%zu text=%.1f MiB scrape median=%.1f ms "
      "(min %.1f, max %.1f over %d) record: warm %.0f ns/request, new series %.0f ns\n",
      pods, services, per_pod, series, static_cast<double>(bytes) / (1 << 20),
      scrape[scrape.size() / 2], scrape.front(), scrape.back(), rounds, warm_ns, new_ns);
  return 0;
}
