// tc programs on a pod's host-side interface: per-pod packet and byte counters, and
// REGISTRY_ONLY for non-TCP traffic (DNS and registered UDP destinations excepted).
#include <catch2/catch.hpp>

#include "lab.h"

using namespace sluice;
using namespace sluice::test;
using nlohmann::json;

namespace {

PodStats StatsOf(Lab& lab, const std::string& pod) {
  auto pods = lab.dp().Pods();
  REQUIRE(pods);
  const int ifindex = lab.HostIfindex(pod);
  INFO("pod " << pod << " (ifindex " << ifindex << ") not in sluice_pods");
  REQUIRE(pods->contains(ifindex));
  return pods->at(ifindex);
}

}  // namespace

TEST_CASE("tc counts each pod's packets and bytes in both directions") {
  Lab lab;
  lab.AddPod("client", 10);
  lab.AddPod("a", 2);
  lab.Serve("a", {"10.211.0.2:8080"}, "a");
  lab.AttachPod("client", false);
  auto before = StatsOf(lab, "client");

  auto r = lab.Connect("client", "10.211.0.2:8080", 5, {"--echo", "100000"});
  INFO(r.dump());
  REQUIRE(r["ok"] == 5);
  CHECK(r["echo_mismatch"] == 0);
  auto after = StatsOf(lab, "client");
  // 500 KB each way plus headers; at least one packet per connection each way.
  CHECK(after.from_pod_bytes - before.from_pod_bytes >= 500000);
  CHECK(after.to_pod_bytes - before.to_pod_bytes >= 500000);
  CHECK(after.from_pod_packets - before.from_pod_packets >= 10);
  CHECK(after.to_pod_packets - before.to_pod_packets >= 10);
  CHECK(after.denied_packets == 0);

  // The server pod is not attached: nothing is counted for it.
  auto pods = lab.dp().Pods();
  REQUIRE(pods);
  CHECK_FALSE(pods->contains(lab.HostIfindex("a")));
}

TEST_CASE("REGISTRY_ONLY drops non-TCP to unknown places, lets DNS and registered UDP through") {
  Lab lab;
  lab.AddPod("client", 10);
  lab.AddPod("a", 2);
  lab.Serve("a", {"10.211.0.2:8080"}, "a");
  lab.Serve("a", {"10.211.0.2:5353", "10.211.0.2:5354", "10.211.0.2:53"}, "a-udp", {"--udp"});
  auto dns = Service("dns-like", {"10.96.211.60"}, 5353,
                     {Cluster("udp", 1, LbPolicy::kRoundRobin, {Ep("10.211.0.2:5354")})});
  dns.protocol = Protocol::kUdp;
  Apply(lab, dns);
  lab.Enrol("client");
  lab.AttachPod("client", true);

  auto before = lab.ReadCounters();
  auto unknown = lab.Connect("client", "10.211.0.2:5353", 3, {"--udp"});
  INFO(unknown.dump());
  CHECK(unknown["ok"] == 0);
  CHECK(Count(unknown, "errors", "timeout") == 3);
  CHECK(StatsOf(lab, "client").denied_packets >= 3);
  CHECK(Delta(before, lab.ReadCounters(), SLUICE_CNT_NONTCP_DENIED) >= 3);

  // DNS passes; a registered UDP service passes (translated to its endpoint, which tc
  // finds among the known endpoints); TCP is not tc's business.
  CHECK(Count(lab.Connect("client", "10.211.0.2:53", 2, {"--udp"}), "by_server", "a-udp") == 2);
  auto svc = lab.Connect("client", "10.96.211.60:5353", 2, {"--udp"});
  INFO(svc.dump());
  CHECK(Count(svc, "by_server", "a-udp") == 2);
  CHECK(Count(lab.Connect("client", "10.211.0.2:8080", 1), "by_server", "a") == 1);

  // Once the service is gone, its endpoint is no longer a known destination.
  REQUIRE(lab.dp().DeleteService("dns-like"));
  CHECK(lab.Connect("client", "10.211.0.2:5354", 2, {"--udp"})["ok"] == 0);

  // ALLOW_ANY: the same unknown destination is reachable.
  lab.AttachPod("client", false);
  CHECK(Count(lab.Connect("client", "10.211.0.2:5353", 2, {"--udp"}), "by_server", "a-udp") == 2);

  // Detached: no filter left on the interface, no entry left in the maps.
  lab.DetachPod("client");
  auto filters = Sh("ip netns exec " + lab.switch_netns() + " tc filter show dev " +
                    lab.pod("client").host_if + " ingress");
  CHECK(filters.find("sluice_from_pod") == std::string::npos);
  auto pods = lab.dp().Pods();
  REQUIRE(pods);
  CHECK(pods->empty());
}
