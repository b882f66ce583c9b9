// Prints the Prometheus text of Istio's metrics after the known traffic mix
// (istio_traffic.h) through a real proxy: what parse_istio_stats.py feeds to
// prometheus_client's parser. Exits 1 when the proxy does not start or the mix does
// not complete.
#include <cstdio>

#include "istio_traffic.h"

int main() {
  using namespace sluice::testing;
  namespace ist = sluice::proxy::telemetry;
  auto m = StartIstioMix();
  if (!m->proxy->error.empty()) {
    std::fprintf(stderr, "proxy: %s\n", m->proxy->error.c_str());
    return 1;
  }
  RunIstioMix(*m);
  std::string text;
  // Requests are counted as their log entries are written, just after the responses
  // leave: wait for all of them (13 outbound, 4 inbound, 1 TCP connection closed).
  bool done = WaitFor([&] {
    std::vector<ist::Sample> s;
    m->stats->Collect(&s);
    uint64_t requests = 0, closed = 0;
    for (const auto& x : s) {
      requests += x.requests;
      closed += x.tcp_closed;
    }
    text = ist::RenderPrometheus(s);
    return requests == 17 && closed == 1;
  });
  std::fwrite(text.data(), 1, text.size(), stdout);
  if (!done) {
    std::fprintf(stderr, "the traffic mix was not all counted\n");
    return 1;
  }
  std::fprintf(stderr, "tcp_sent=%zu tcp_received=%zu\n", m->tcp_sent, m->tcp_received);
  return 0;
}
