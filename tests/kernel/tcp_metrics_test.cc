// Istio's TCP metrics from the kernel path (issue 17): sockops counts every connection
// the connect hook translates in sluice_tcp_metrics, per client pod, service address and
// endpoint, with the client socket's exact bytes both ways once it closes. Real BPF
// programs, real TCP between network namespaces (sluice_probe).
#include <catch2/catch.hpp>
#include <chrono>
#include <optional>
#include <thread>

#include "lab.h"

using namespace sluice;
using namespace sluice::test;

namespace {

// The record of (pod, dialled, backend); polls up to 3 s until `closed` connections
// closed (TCP_CLOSE comes when the server's FIN arrives, after the client has exited).
std::optional<TcpMetricsRecord> WaitRecord(Lab& lab, uint64_t cookie, const std::string& dialled,
                                           const std::string& backend, uint64_t closed) {
  std::optional<TcpMetricsRecord> found;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
  do {
    auto recs = lab.dp().TcpMetrics();
    REQUIRE(recs.has_value());
    found.reset();
    for (const auto& r : *recs)
      if (r.netns_cookie == cookie && r.service.ToString() == dialled &&
          r.backend.ToString() == backend)
        found = r;
    if (found && found->closed >= closed)
      return found;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  } while (std::chrono::steady_clock::now() < deadline);
  return found;
}

struct Cast {
  Lab lab;
  Cast() {
    lab.AddPod("client", 10);
    lab.AddPod("a", 2);
    lab.Serve("a", {"10.211.0.2:8080", "[fd11::2]:8080"}, "a");
    lab.Enrol("client");
  }
};

}  // namespace

TEST_CASE(
    "a translated connection's opens, closes and exact bytes are counted per pod and endpoint") {
  Cast t;
  Apply(t.lab, Service("tcpm", {"10.96.211.7"}, 9000,
                       {Cluster("tcpm-v1", 1, LbPolicy::kRoundRobin, {Ep("10.211.0.2:8080")})}));
  auto before = t.lab.ReadCounters();
  // The server greets with "a\n" and echoes: the client sends 5000 bytes, gets 5002.
  auto r = t.lab.Connect("client", "10.96.211.7:9000", 1, {"--echo", "5000"});
  INFO(r.dump());
  REQUIRE(r["ok"] == 1);
  CHECK(r["echo_mismatch"] == 0);
  CHECK(Delta(before, t.lab.ReadCounters(), SLUICE_CNT_TRANSLATED) == 1);

  auto rec = WaitRecord(t.lab, t.lab.Cookie("client"), "10.96.211.7:9000", "10.211.0.2:8080", 1);
  REQUIRE(rec);
  CHECK(rec->opened == 1);
  CHECK(rec->closed == 1);
  CHECK(rec->client_sent == 5000);
  CHECK(rec->client_received == 5002);

  // A second pair of connections adds to the same record; IPv6 has its own.
  Apply(t.lab, Service("tcpm6", {"fd96::7"}, 9000,
                       {Cluster("tcpm6-v1", 1, LbPolicy::kLeastRequest, {Ep("[fd11::2]:8080")})}));
  r = t.lab.Connect("client", "10.96.211.7:9000", 2, {"--echo", "1000"});
  REQUIRE(r["ok"] == 2);
  rec = WaitRecord(t.lab, t.lab.Cookie("client"), "10.96.211.7:9000", "10.211.0.2:8080", 3);
  REQUIRE(rec);
  CHECK(rec->opened == 3);
  CHECK(rec->closed == 3);
  CHECK(rec->client_sent == 5000 + 2 * 1000);
  CHECK(rec->client_received == 5002 + 2 * 1002);

  before = t.lab.ReadCounters();
  r = t.lab.Connect("client", "[fd96::7]:9000", 1, {"--echo", "300"});
  REQUIRE(r["ok"] == 1);
  rec = WaitRecord(t.lab, t.lab.Cookie("client"), "[fd96::7]:9000", "[fd11::2]:8080", 1);
  REQUIRE(rec);
  CHECK(rec->opened == 1);
  CHECK(rec->closed == 1);
  CHECK(rec->client_sent == 300);
  CHECK(rec->client_received == 302);
  // LEAST_REQUEST's live count is kept as before, beside the metrics.
  auto after = t.lab.ReadCounters();
  CHECK(Delta(before, after, SLUICE_CNT_CONN_OPENED) == 1);
  CHECK(Delta(before, after, SLUICE_CNT_CONN_CLOSED) == 1);
}

TEST_CASE("with TCP metrics switched off, translated connections are not counted") {
  Cast t;
  REQUIRE(t.lab.dp().Settings()->flags & SLUICE_SET_TCP_METRICS);  // on by default
  REQUIRE(t.lab.dp().SetTcpMetrics(false).has_value());
  Apply(t.lab, Service("tcpm", {"10.96.211.8"}, 9000,
                       {Cluster("tcpm-v1", 1, LbPolicy::kRandom, {Ep("10.211.0.2:8080")})}));
  auto r = t.lab.Connect("client", "10.96.211.8:9000", 3, {"--echo", "100"});
  REQUIRE(r["ok"] == 3);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  auto recs = t.lab.dp().TcpMetrics();
  REQUIRE(recs.has_value());
  CHECK(recs->empty());

  REQUIRE(t.lab.dp().SetTcpMetrics(true).has_value());
  r = t.lab.Connect("client", "10.96.211.8:9000", 1, {"--echo", "100"});
  REQUIRE(r["ok"] == 1);
  auto rec = WaitRecord(t.lab, t.lab.Cookie("client"), "10.96.211.8:9000", "10.211.0.2:8080", 1);
  REQUIRE(rec);
  CHECK(rec->opened == 1);
  CHECK(rec->client_sent == 100);
}
