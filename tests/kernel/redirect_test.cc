// Redirection into the in-pod proxy: L7 services are sent to the agent's listener on the
// pod's loopback, which recovers the dialled address with getsockopt(SO_ORIGINAL_DST);
// the agent's own upstream sockets are exempt; REGISTRY_ONLY refuses unknown
// destinations; sk_msg splices the app <-> proxy hop without reordering bytes.
#include <catch2/catch.hpp>

#include "lab.h"

using namespace sluice;
using namespace sluice::test;
using nlohmann::json;

namespace {

constexpr uint16_t kProxyPort = 15001;

// A client pod whose in-pod "proxy" (sluice_probe serve --orig-dst, under the hooks like
// the agent) listens on 127.0.0.1:15001 and [::1]:15001 and greets each connection with
// the original destination it recovers; and a server pod a.
struct ProxyLab {
  Lab lab;
  explicit ProxyLab(bool registry_only = false, uint16_t proxy_port = kProxyPort) {
    lab.AddPod("client", 10);
    lab.AddPod("a", 2);
    lab.Serve("a", {"10.211.0.2:8080", "[fd11::2]:8080"}, "a");
    lab.Serve("client", {"127.0.0.1:15001", "[::1]:15001"}, "proxy", {"--orig-dst"}, true);
    lab.Enrol("client", proxy_port, registry_only);
  }
};

ServiceSpec L7(const std::string& name, std::vector<std::string> vips, uint16_t port) {
  ServiceSpec s = Service(name, std::move(vips), port, {});
  s.redirect_to_proxy = true;
  return s;
}

}  // namespace

TEST_CASE("an L7 service is redirected to the in-pod proxy, which recovers the VIP") {
  ProxyLab t;
  Apply(t.lab, L7("reviews", {"10.96.211.50", "fd96::50"}, 9080));
  auto before = t.lab.ReadCounters();

  auto v4 = t.lab.Connect("client", "10.96.211.50:9080", 10, {"--peer"});
  INFO(v4.dump());
  CHECK(Count(v4, "by_server", "proxy 10.96.211.50:9080") == 10);
  CHECK(v4["peer_mismatch"] == 0);  // the application still sees the VIP

  auto v6 = t.lab.Connect("client", "[fd96::50]:9080", 10, {"--peer"});
  INFO(v6.dump());
  CHECK(Count(v6, "by_server", "proxy [fd96::50]:9080") == 10);
  CHECK(v6["peer_mismatch"] == 0);

  auto after = t.lab.ReadCounters();
  CHECK(Delta(before, after, SLUICE_CNT_REDIRECTED) == 20);
  CHECK(Delta(before, after, SLUICE_CNT_ORIG_DST) == 20);
  CHECK(Delta(before, after, SLUICE_CNT_TRANSLATED) == 0);
}

TEST_CASE("a port catch-all sends any address on that port to the proxy, L4 services stay") {
  ProxyLab t;
  Apply(t.lab, L7("any-http", {"0.0.0.0", "::"}, 80));
  Apply(t.lab, Service("web", {"10.96.211.51"}, 80,
                       {Cluster("web", 1, LbPolicy::kRoundRobin, {Ep("10.211.0.2:8080")})}));
  // An address nobody registered (an external host, say) on port 80: to the proxy.
  auto ext = t.lab.Connect("client", "10.99.1.1:80", 3);
  INFO(ext.dump());
  CHECK(Count(ext, "by_server", "proxy 10.99.1.1:80") == 3);
  // The exact frontend wins over the catch-all: an L4 service stays in the kernel.
  auto l4 = t.lab.Connect("client", "10.96.211.51:80", 3);
  INFO(l4.dump());
  CHECK(Count(l4, "by_server", "a") == 3);
  // Other ports are untouched.
  auto other = t.lab.Connect("client", "10.211.0.2:8080", 1);
  CHECK(Count(other, "by_server", "a") == 1);
}

TEST_CASE("the agent's own upstream sockets carry the bypass mark and are not redirected") {
  ProxyLab t;
  Apply(t.lab, L7("any-8080", {"0.0.0.0"}, 8080));
  auto settings = t.lab.dp().Settings();
  REQUIRE(settings);
  REQUIRE(settings->bypass_mark == SLUICE_DEFAULT_BYPASS_MARK);
  auto before = t.lab.ReadCounters();
  // The application's connect to a:8080 goes to the proxy...
  auto app = t.lab.Connect("client", "10.211.0.2:8080", 2);
  INFO(app.dump());
  CHECK(Count(app, "by_server", "proxy 10.211.0.2:8080") == 2);
  // ...and the proxy's own connect to the same address, marked, reaches a.
  auto upstream = t.lab.Connect("client", "10.211.0.2:8080", 2,
                                {"--mark", std::to_string(settings->bypass_mark)});
  INFO(upstream.dump());
  CHECK(Count(upstream, "by_server", "a") == 2);
  CHECK(Delta(before, t.lab.ReadCounters(), SLUICE_CNT_BYPASS) == 2);
}

TEST_CASE("an L7 service for a pod without a proxy listener is refused, not passed") {
  ProxyLab t(false, 0);
  Apply(t.lab, L7("reviews", {"10.96.211.52"}, 9080));
  auto before = t.lab.ReadCounters();
  auto r = t.lab.Connect("client", "10.96.211.52:9080", 3);
  INFO(r.dump());
  CHECK(Count(r, "errors", "ECONNREFUSED") == 3);
  CHECK(Delta(before, t.lab.ReadCounters(), SLUICE_CNT_NO_PROXY) == 3);
}

TEST_CASE("REGISTRY_ONLY refuses unknown destinations, ALLOW_ANY passes them") {
  SECTION("REGISTRY_ONLY") {
    ProxyLab t(true);
    Apply(t.lab, Service("web", {"10.96.211.53"}, 80,
                         {Cluster("web", 1, LbPolicy::kRoundRobin, {Ep("10.211.0.2:8080")})}));
    auto before = t.lab.ReadCounters();
    auto unknown = t.lab.Connect("client", "10.211.0.2:8080", 3);
    INFO(unknown.dump());
    CHECK(Count(unknown, "errors", "ECONNREFUSED") == 3);
    CHECK(Delta(before, t.lab.ReadCounters(), SLUICE_CNT_REGISTRY_DENIED) == 3);
    // Services, and the pod's own loopback, still work.
    CHECK(Count(t.lab.Connect("client", "10.96.211.53:80", 2), "by_server", "a") == 2);
    CHECK(Count(t.lab.Connect("client", "127.0.0.1:15001", 1), "by_server", "proxy none") == 1);
  }
  SECTION("ALLOW_ANY") {
    ProxyLab t(false);
    auto direct = t.lab.Connect("client", "10.211.0.2:8080", 3);
    INFO(direct.dump());
    CHECK(Count(direct, "by_server", "a") == 3);
  }
}

TEST_CASE("splicing app and proxy sockets keeps every byte in order, and can be switched off") {
  ProxyLab t;
  Apply(t.lab, L7("echo", {"10.96.211.54", "fd96::54"}, 7000));
  auto settings = t.lab.dp().Settings();
  REQUIRE(settings);
  CHECK((settings->flags & SLUICE_SET_SPLICE) != 0);  // on by default

  auto before = t.lab.ReadCounters();
  // 200 KB per connection in 1000-byte writes, echoed back through the proxy.
  auto v4 = t.lab.Connect("client", "10.96.211.54:7000", 20, {"--echo", "200000"});
  INFO(v4.dump());
  CHECK(v4["ok"] == 20);
  CHECK(v4["echo_mismatch"] == 0);
  auto v6 = t.lab.Connect("client", "[fd96::54]:7000", 20, {"--echo", "200000"});
  INFO(v6.dump());
  CHECK(v6["ok"] == 20);
  CHECK(v6["echo_mismatch"] == 0);
  auto mid = t.lab.ReadCounters();
  // Both ends of each of the 40 connections joined the sockhash.
  CHECK(Delta(before, mid, SLUICE_CNT_SPLICED) == 80);

  REQUIRE(t.lab.dp().SetSplice(false));
  auto off = t.lab.Connect("client", "10.96.211.54:7000", 10, {"--echo", "50000"});
  INFO(off.dump());
  CHECK(off["echo_mismatch"] == 0);
  CHECK(Delta(mid, t.lab.ReadCounters(), SLUICE_CNT_SPLICED) == 0);
}
