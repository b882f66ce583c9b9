// IPv4-mapped IPv6 connects (issue 18): a program that opens one dual-stack AF_INET6
// socket for everything (gRPC's C core, Java) dials an IPv4 service as ::ffff:VIP. The
// connect6 hook must treat that as the IPv4 frontend it is: translate to the IPv4
// backend (written back v4-mapped), count it as connect4 would, answer getpeername with
// the mapped VIP, and send L7 services to the in-pod proxy with the IPv4 VIP as the
// original destination. Real BPF programs, real sockets in network namespaces.
#include <bpf/libbpf.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <thread>
#include <vector>

#include "lab.h"

using namespace sluice;
using namespace sluice::test;
using nlohmann::json;

namespace {

constexpr uint16_t kProxyPort = 15001;

// A client pod, server pods a (.2) and b (.3) on 8080 (IPv4 and IPv6), and the client's
// in-pod "proxy" (sluice_probe serve --orig-dst, under the hooks like the agent) on
// 127.0.0.1:15001 and [::1]:15001, greeting each connection with the original
// destination it recovers.
struct MappedLab {
  Lab lab;
  explicit MappedLab(bool registry_only = false) {
    lab.AddPod("client", 10);
    lab.AddPod("a", 2);
    lab.AddPod("b", 3);
    lab.Serve("a", {"10.211.0.2:8080", "[fd11::2]:8080"}, "a");
    lab.Serve("b", {"10.211.0.3:8080", "[fd11::3]:8080"}, "b");
    lab.Serve("client", {"127.0.0.1:15001", "[::1]:15001"}, "proxy", {"--orig-dst"}, true);
    lab.Enrol("client", kProxyPort, registry_only);
  }
};

ServiceSpec L7(const std::string& name, std::vector<std::string> vips, uint16_t port) {
  ServiceSpec s = Service(name, std::move(vips), port, {});
  s.redirect_to_proxy = true;
  return s;
}

uint64_t Active(Lab& lab, const std::string& endpoint) {
  auto stats = lab.dp().Endpoints();
  REQUIRE(stats);
  for (const auto& e : *stats)
    if (e.endpoint.ToString() == endpoint)
      return e.active;
  return 0;
}

}  // namespace

TEST_CASE("a dual-stack socket dialling ::ffff:VIP is translated to the IPv4 backend") {
  MappedLab t;
  Apply(t.lab, Service("web", {"10.96.212.1"}, 80,
                       {Cluster("web-v1", 1, LbPolicy::kLeastRequest, {Ep("10.211.0.2:8080")})}));
  auto before = t.lab.ReadCounters();
  auto r = t.lab.Connect("client", "[::ffff:10.96.212.1]:80", 20, {"--peer", "--echo", "3000"});
  INFO(r.dump());
  CHECK(r["ok"] == 20);
  CHECK(Count(r, "by_server", "a") == 20);
  CHECK(r["echo_mismatch"] == 0);
  CHECK(r["peer_mismatch"] == 0);  // getpeername() answers [::ffff:10.96.212.1]:80
  auto after = t.lab.ReadCounters();
  CHECK(Delta(before, after, SLUICE_CNT_TRANSLATED) == 20);
  CHECK(Delta(before, after, SLUICE_CNT_NO_SERVICE) == 0);
  CHECK(Delta(before, after, SLUICE_CNT_PEERNAME_RESTORED) >= 20);
  CHECK(Delta(before, after, SLUICE_CNT_CONN_OPENED) == 20);  // LEAST_REQUEST: counted live

  // Held connections count against the IPv4 endpoint, as connect4's do, and come down.
  json held;
  auto hold = t.lab.ConnectHold("client", "[::ffff:10.96.212.1]:80", 5, &held);
  REQUIRE(held["ok"] == 5);
  CHECK(Active(t.lab, "10.211.0.2:8080") == 5);
  hold->CloseStdin();
  REQUIRE(hold->Wait() == 0);
  CHECK(Within([&] { return Active(t.lab, "10.211.0.2:8080") == 0; }) >= 0);
}

TEST_CASE("under MAGLEV a mapped connect hashes the pod's IPv4 address, as connect4 does") {
  MappedLab t;
  Apply(t.lab, Service("hash", {"10.96.212.7"}, 80,
                       {Cluster("hash", 1, LbPolicy::kMaglev,
                                {Ep("10.211.0.2:8080"), Ep("10.211.0.3:8080")})}));
  auto v4 = t.lab.Connect("client", "10.96.212.7:80", 5);
  INFO(v4.dump());
  REQUIRE(v4["ok"] == 5);
  REQUIRE(v4["by_server"].size() == 1);  // one client, one endpoint
  const std::string chosen = v4["by_server"].begin().key();
  auto mapped = t.lab.Connect("client", "[::ffff:10.96.212.7]:80", 5);
  INFO(mapped.dump());
  CHECK(Count(mapped, "by_server", chosen) == 5);
}

TEST_CASE("a mapped connect is counted in the IPv4 service's TCP metrics and connection log") {
  MappedLab t;
  Apply(t.lab, Service("tcpm", {"10.96.212.2"}, 9000,
                       {Cluster("tcpm-v1", 1, LbPolicy::kRoundRobin, {Ep("10.211.0.3:8080")})}));
  REQUIRE(t.lab.dp().ConnLogFd() >= 0);
  std::vector<sluice_conn_event> events;
  auto on_event = [](void* ctx, void* data, size_t size) -> int {
    if (size >= sizeof(sluice_conn_event))
      static_cast<std::vector<sluice_conn_event>*>(ctx)->push_back(
          *static_cast<sluice_conn_event*>(data));
    return 0;
  };
  ring_buffer* rb = ring_buffer__new(t.lab.dp().ConnLogFd(), on_event, &events, nullptr);
  REQUIRE(rb != nullptr);
  REQUIRE(t.lab.dp().SetConnLog(true).has_value());

  auto r = t.lab.Connect("client", "[::ffff:10.96.212.2]:9000", 2, {"--echo", "700"});
  INFO(r.dump());
  CHECK(Count(r, "by_server", "b") == 2);
  ring_buffer__consume(rb);
  ring_buffer__free(rb);
  REQUIRE(t.lab.dp().SetConnLog(false).has_value());
  REQUIRE(events.size() == 2);
  for (const auto& ev : events) {
    CHECK(ev.netns_cookie == t.lab.Cookie("client"));
    CHECK(ev.frontend.family == SLUICE_FAMILY_IPV4);
    CHECK(ev.frontend.port == 9000);
    CHECK(ev.backend.family == SLUICE_FAMILY_IPV4);
    CHECK(ev.backend.port == 8080);
  }

  // One record under the IPv4 service address and endpoint, with the exact bytes.
  std::optional<TcpMetricsRecord> rec;
  CHECK(Within(
            [&] {
              auto recs = t.lab.dp().TcpMetrics();
              REQUIRE(recs);
              rec.reset();
              for (const auto& m : *recs)
                if (m.service.ToString() == "10.96.212.2:9000" &&
                    m.backend.ToString() == "10.211.0.3:8080")
                  rec = m;
              return rec && rec->closed == 2;
            },
            std::chrono::milliseconds(3000)) >= 0);
  REQUIRE(rec);
  CHECK(rec->netns_cookie == t.lab.Cookie("client"));
  CHECK(rec->opened == 2);
  CHECK(rec->client_sent == 2 * 700);
  CHECK(rec->client_received == 2 * 702);
}

TEST_CASE(
    "a mapped connect to an L7 service reaches the proxy with the IPv4 VIP as original "
    "destination") {
  MappedLab t;
  Apply(t.lab, L7("reviews", {"10.96.212.3"}, 9080));
  Apply(t.lab, L7("any-http", {"0.0.0.0"}, 80));
  auto before = t.lab.ReadCounters();
  auto r = t.lab.Connect("client", "[::ffff:10.96.212.3]:9080", 10, {"--peer"});
  INFO(r.dump());
  CHECK(Count(r, "by_server", "proxy 10.96.212.3:9080") == 10);
  CHECK(r["peer_mismatch"] == 0);  // the application still sees the mapped VIP
  // The port's IPv4 catch-all (0.0.0.0:80) takes a mapped address nobody registered.
  auto ext = t.lab.Connect("client", "[::ffff:10.99.1.1]:80", 3);
  INFO(ext.dump());
  CHECK(Count(ext, "by_server", "proxy 10.99.1.1:80") == 3);
  auto after = t.lab.ReadCounters();
  CHECK(Delta(before, after, SLUICE_CNT_REDIRECTED) == 13);
  CHECK(Delta(before, after, SLUICE_CNT_ORIG_DST) == 13);
  CHECK(Delta(before, after, SLUICE_CNT_TRANSLATED) == 0);

  // The app <-> proxy hop is spliced (both ends join the sockhash) without losing order.
  auto settings = t.lab.dp().Settings();
  REQUIRE(settings);
  REQUIRE((settings->flags & SLUICE_SET_SPLICE) != 0);
  auto echo = t.lab.Connect("client", "[::ffff:10.96.212.3]:9080", 10, {"--echo", "100000"});
  INFO(echo.dump());
  CHECK(echo["ok"] == 10);
  CHECK(echo["echo_mismatch"] == 0);
  CHECK(Delta(after, t.lab.ReadCounters(), SLUICE_CNT_SPLICED) == 20);
}

TEST_CASE("a mapped connect to an address that is not a service passes untouched") {
  MappedLab t;
  Apply(t.lab, Service("web", {"10.96.212.4"}, 80,
                       {Cluster("web-v1", 1, LbPolicy::kRoundRobin, {Ep("10.211.0.2:8080")})}));
  auto before = t.lab.ReadCounters();
  auto r = t.lab.Connect("client", "[::ffff:10.211.0.3]:8080", 4, {"--peer"});
  INFO(r.dump());
  CHECK(Count(r, "by_server", "b") == 4);
  CHECK(r["peer_mismatch"] == 0);
  auto after = t.lab.ReadCounters();
  CHECK(Delta(before, after, SLUICE_CNT_NO_SERVICE) == 4);
  CHECK(Delta(before, after, SLUICE_CNT_TRANSLATED) == 0);
  CHECK(Delta(before, after, SLUICE_CNT_REDIRECTED) == 0);
}

TEST_CASE("REGISTRY_ONLY treats a mapped destination as the IPv4 address it is") {
  MappedLab t(true);
  Apply(t.lab, Service("web", {"10.96.212.5"}, 80,
                       {Cluster("web-v1", 1, LbPolicy::kRoundRobin, {Ep("10.211.0.2:8080")})}));
  auto before = t.lab.ReadCounters();
  // The pod's own IPv4 loopback stays reachable through a dual-stack socket...
  auto lo = t.lab.Connect("client", "[::ffff:127.0.0.1]:15001", 2);
  INFO(lo.dump());
  CHECK(Count(lo, "by_server", "proxy none") == 2);
  // ...an unknown destination is refused, a service is translated.
  auto unknown = t.lab.Connect("client", "[::ffff:10.211.0.3]:8080", 3);
  INFO(unknown.dump());
  CHECK(Count(unknown, "errors", "ECONNREFUSED") == 3);
  auto svc = t.lab.Connect("client", "[::ffff:10.96.212.5]:80", 2);
  INFO(svc.dump());
  CHECK(Count(svc, "by_server", "a") == 2);
  auto after = t.lab.ReadCounters();
  CHECK(Delta(before, after, SLUICE_CNT_REGISTRY_DENIED) == 3);
  CHECK(Delta(before, after, SLUICE_CNT_TRANSLATED) == 2);
}

TEST_CASE("a real IPv6 VIP still translates to IPv6 endpoints beside its mapped IPv4 twin") {
  MappedLab t;
  Apply(t.lab, Service("dual", {"10.96.212.6", "fd96::212:6"}, 80,
                       {Cluster("dual", 1, LbPolicy::kRoundRobin,
                                {Ep("10.211.0.2:8080"), Ep("[fd11::3]:8080")})}));
  // An IPv6-only frontend whose cluster has only IPv4 endpoints: refused, never sent to
  // an IPv4 backend.
  Apply(t.lab, Service("v6only", {"fd96::212:7"}, 80,
                       {Cluster("v6only", 1, LbPolicy::kRoundRobin, {Ep("10.211.0.2:8080")})}));
  auto v6 = t.lab.Connect("client", "[fd96::212:6]:80", 6, {"--peer"});
  INFO(v6.dump());
  CHECK(Count(v6, "by_server", "b") == 6);  // the only IPv6 endpoint
  CHECK(v6["peer_mismatch"] == 0);
  auto mapped = t.lab.Connect("client", "[::ffff:10.96.212.6]:80", 6, {"--peer"});
  INFO(mapped.dump());
  CHECK(Count(mapped, "by_server", "a") == 6);  // the only IPv4 endpoint
  CHECK(mapped["peer_mismatch"] == 0);
  auto before = t.lab.ReadCounters();
  auto none = t.lab.Connect("client", "[fd96::212:7]:80", 2);
  INFO(none.dump());
  CHECK(Count(none, "errors", "ECONNREFUSED") + Count(none, "errors", "EPERM") == 2);
  auto after = t.lab.ReadCounters();
  CHECK(Delta(before, after, SLUICE_CNT_NO_BACKEND) +
            Delta(before, after, SLUICE_CNT_BACKEND_MISSING) ==
        2);
}

TEST_CASE("a connected dual-stack UDP socket reaches an IPv4 UDP service through ::ffff:VIP") {
  MappedLab t;
  t.lab.Serve("a", {"10.211.0.2:5354"}, "a-udp", {"--udp"});
  ServiceSpec dns = Service("dns", {"10.96.212.10"}, 53,
                            {Cluster("dns", 1, LbPolicy::kRoundRobin, {Ep("10.211.0.2:5354")})});
  dns.protocol = Protocol::kUdp;
  Apply(t.lab, dns);
  auto before = t.lab.ReadCounters();
  auto r = t.lab.Connect("client", "[::ffff:10.96.212.10]:53", 3, {"--udp"});
  INFO(r.dump());
  CHECK(Count(r, "by_server", "a-udp") == 3);
  CHECK(Delta(before, t.lab.ReadCounters(), SLUICE_CNT_TRANSLATED) == 3);
}
