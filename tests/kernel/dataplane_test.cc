// The kernel L4 data plane end to end: real BPF programs on a real cgroup, real TCP
// connections between network namespaces, made and checked by sluice_probe.
#include <bpf/bpf.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <set>
#include <thread>

#include "lab.h"

using namespace sluice;
using namespace sluice::test;
using nlohmann::json;

namespace {

// A lab with a client pod and three server pods (a, b, c) listening on 8080, v4 and v6.
struct ThreeServers {
  Lab lab;
  explicit ThreeServers(bool reclaim_in_background = false) {
    lab.ReclaimInBackground(reclaim_in_background);
    lab.AddPod("client", 10);
    int host = 2;
    for (const char* s : {"a", "b", "c"}) {
      lab.AddPod(s, host);
      lab.Serve(s,
                {"10.211.0." + std::to_string(host) + ":8080",
                 "[fd11::" + std::to_string(host) + "]:8080"},
                s);
      host++;
    }
    lab.Enrol("client");
  }
};

size_t PinnedEntries(const std::string& pin) {
  int fd = bpf_obj_get(pin.c_str());
  REQUIRE(fd >= 0);
  std::vector<uint8_t> key(64), next(64);
  size_t n = 0;
  void* prev = nullptr;
  while (bpf_map_get_next_key(fd, prev, next.data()) == 0) {
    n++;
    key = next;
    prev = key.data();
  }
  close(fd);
  return n;
}

int ProgCount(int cgroup_fd, bpf_attach_type type) {
  __u32 ids[16], count = 16, flags = 0;
  REQUIRE(bpf_prog_query(cgroup_fd, type, 0, &flags, ids, &count) == 0);
  return static_cast<int>(count);
}

}  // namespace

TEST_CASE("an enrolled pod's connection to an IPv4 VIP reaches the backend and sees the VIP") {
  ThreeServers t;
  Apply(t.lab, Service("web", {"10.96.211.1"}, 80,
                       {Cluster("web-v1", 1, LbPolicy::kLeastRequest, {Ep("10.211.0.2:8080")})}));
  auto before = t.lab.ReadCounters();
  auto r = t.lab.Connect("client", "10.96.211.1:80", 20, {"--peer"});
  INFO(r.dump());
  CHECK(r["ok"] == 20);
  CHECK(Count(r, "by_server", "a") == 20);
  CHECK(r["peer_mismatch"] == 0);  // getpeername() answers 10.96.211.1:80
  auto after = t.lab.ReadCounters();
  CHECK(Delta(before, after, SLUICE_CNT_TRANSLATED) == 20);
  CHECK(Delta(before, after, SLUICE_CNT_PEERNAME_RESTORED) >= 20);
  CHECK(Delta(before, after, SLUICE_CNT_CONN_OPENED) == 20);  // LEAST_REQUEST: counted live
}

TEST_CASE("an IPv6 VIP translates to IPv6 endpoints, a dual-stack service to each family") {
  ThreeServers t;
  Apply(t.lab, Service("dual", {"10.96.211.2", "fd96::2"}, 80,
                       {Cluster("dual", 1, LbPolicy::kRoundRobin,
                                {Ep("10.211.0.2:8080"), Ep("[fd11::3]:8080")})}));
  auto v6 = t.lab.Connect("client", "[fd96::2]:80", 10, {"--peer"});
  INFO(v6.dump());
  CHECK(v6["ok"] == 10);
  CHECK(Count(v6, "by_server", "b") == 10);  // the only IPv6 endpoint
  CHECK(v6["peer_mismatch"] == 0);
  auto v4 = t.lab.Connect("client", "10.96.211.2:80", 10, {"--peer"});
  INFO(v4.dump());
  CHECK(Count(v4, "by_server", "a") == 10);  // the only IPv4 endpoint
  CHECK(v4["peer_mismatch"] == 0);
}

TEST_CASE("route weights split connections 25/75 and 20/30/50 within 2 points") {
  ThreeServers t;
  Apply(t.lab, Service("split2", {"10.96.211.3"}, 80,
                       {Cluster("v1", 25, LbPolicy::kRandom, {Ep("10.211.0.2:8080")}),
                        Cluster("v2", 75, LbPolicy::kRandom, {Ep("10.211.0.3:8080")})}));
  // Relative weights, as Envoy's: 2/3/5 is the same split as 20/30/50.
  Apply(t.lab, Service("split3", {"10.96.211.4"}, 80,
                       {Cluster("v1", 2, LbPolicy::kRandom, {Ep("10.211.0.2:8080")}),
                        Cluster("v2", 3, LbPolicy::kRandom, {Ep("10.211.0.3:8080")}),
                        Cluster("v3", 5, LbPolicy::kRandom, {Ep("10.211.0.4:8080")})}));
  auto two = t.lab.Connect("client", "10.96.211.3:80", 8000);
  INFO(two.dump());
  REQUIRE(two["ok"] == 8000);
  CHECK(Share(two, "a") == Approx(0.25).margin(0.02));
  CHECK(Share(two, "b") == Approx(0.75).margin(0.02));

  auto three = t.lab.Connect("client", "10.96.211.4:80", 8000);
  INFO(three.dump());
  REQUIRE(three["ok"] == 8000);
  CHECK(Share(three, "a") == Approx(0.20).margin(0.02));
  CHECK(Share(three, "b") == Approx(0.30).margin(0.02));
  CHECK(Share(three, "c") == Approx(0.50).margin(0.02));
}

TEST_CASE("RANDOM honours endpoint weights, ROUND_ROBIN cycles exactly") {
  ThreeServers t;
  Apply(t.lab, Service("random", {"10.96.211.5"}, 80,
                       {Cluster("r", 1, LbPolicy::kRandom,
                                {Ep("10.211.0.2:8080", 1), Ep("10.211.0.3:8080", 3)})}));
  Apply(
      t.lab,
      Service("rr", {"10.96.211.6"}, 80,
              {Cluster("rr", 1, LbPolicy::kRoundRobin,
                       {Ep("10.211.0.2:8080", 2), Ep("10.211.0.3:8080"), Ep("10.211.0.4:8080")})}));
  auto rnd = t.lab.Connect("client", "10.96.211.5:80", 4000);
  INFO(rnd.dump());
  CHECK(Share(rnd, "a") == Approx(0.25).margin(0.03));
  CHECK(Share(rnd, "b") == Approx(0.75).margin(0.03));

  // 2:1:1 over 400 connects is exactly 200/100/100, whatever the starting cursor...
  auto rr = t.lab.Connect("client", "10.96.211.6:80", 400);
  INFO(rr.dump());
  CHECK(Count(rr, "by_server", "a") == 200);
  CHECK(Count(rr, "by_server", "b") == 100);
  CHECK(Count(rr, "by_server", "c") == 100);
  // ...and any 4 consecutive connects visit every endpoint in its proportion.
  for (int i = 0; i < 3; i++) {
    auto four = t.lab.Connect("client", "10.96.211.6:80", 4);
    INFO(four.dump());
    CHECK(Count(four, "by_server", "a") == 2);
    CHECK(Count(four, "by_server", "b") == 1);
    CHECK(Count(four, "by_server", "c") == 1);
  }
}

TEST_CASE("LEAST_REQUEST sends new connections to the endpoint with fewer live ones") {
  ThreeServers t;
  // "busy" reaches only server a, so holding its connections loads a (counted, as
  // connections to any LEAST_REQUEST cluster are).
  Apply(t.lab, Service("busy", {"10.96.211.7"}, 80,
                       {Cluster("busy", 1, LbPolicy::kLeastRequest, {Ep("10.211.0.2:8080")})}));
  Apply(t.lab, Service("lr", {"10.96.211.8"}, 80,
                       {Cluster("lr", 1, LbPolicy::kLeastRequest,
                                {Ep("10.211.0.2:8080"), Ep("10.211.0.3:8080")})}));
  json busy;
  auto hold_a = t.lab.ConnectHold("client", "10.96.211.7:80", 20, &busy);
  REQUIRE(busy["ok"] == 20);

  auto stats = t.lab.dp().Endpoints();
  REQUIRE(stats);
  uint64_t a_active = 0;
  for (const auto& e : *stats)
    if (e.endpoint.ToString() == "10.211.0.2:8080")
      a_active = e.active;
  CHECK(a_active == 20);  // sockops counted the established connections

  // Short connections: b has none live, so every one goes to b.
  auto quick = t.lab.Connect("client", "10.96.211.8:80", 100);
  INFO(quick.dump());
  CHECK(Count(quick, "by_server", "b") == 100);

  // Held connections: b fills up to a's 20, then they alternate.
  json held;
  auto hold_lr = t.lab.ConnectHold("client", "10.96.211.8:80", 40, &held);
  INFO(held.dump());
  CHECK(Count(held, "by_server", "b") >= 29);
  CHECK(Count(held, "by_server", "b") <= 31);

  // Closing the connections brings the counts back down.
  hold_a->CloseStdin();
  hold_lr->CloseStdin();
  REQUIRE(hold_a->Wait() == 0);
  REQUIRE(hold_lr->Wait() == 0);
  uint64_t live = 1;
  for (int i = 0; i < 100 && live != 0; i++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    live = 0;
    auto now = t.lab.dp().Endpoints();
    REQUIRE(now);
    for (const auto& e : *now)
      live += e.active;
  }
  CHECK(live == 0);
}

TEST_CASE("MAGLEV keeps each client on one endpoint, and few move when one is added") {
  ThreeServers t;
  // 64 client addresses on the client's loopback; servers route them back to the client.
  t.lab.AddPod("d", 5);
  t.lab.Serve("d", {"10.211.0.5:8080"}, "d");
  Sh("ip -n " + t.lab.tag() + "-client route add local 10.212.0.0/24 dev lo");
  for (const char* s : {"a", "b", "c", "d"})
    Sh("ip -n " + t.lab.tag() + "-" + s + " route add 10.212.0.0/24 via 10.211.0.10");

  auto spec =
      Service("hash", {"10.96.211.9"}, 80,
              {Cluster("hash", 1, LbPolicy::kMaglev,
                       {Ep("10.211.0.2:8080"), Ep("10.211.0.3:8080"), Ep("10.211.0.4:8080")})});
  Apply(t.lab, spec);
  const std::vector<std::string> sources{"--source-base", "10.212.0.1", "--sources", "64"};
  auto first = t.lab.Connect("client", "10.96.211.9:80", 256, sources);
  INFO(first.dump());
  REQUIRE(first["ok"] == 256);
  std::map<std::string, std::string> placement;
  for (const auto& [src, servers] : first["by_source"].items()) {
    CHECK(servers.size() == 1);  // all 4 connections of a client went to one endpoint
    placement[src] = servers.begin().key();
  }
  REQUIRE(placement.size() == 64);
  std::set<std::string> used;
  for (const auto& [src, s] : placement)
    used.insert(s);
  CHECK(used.size() == 3);  // and clients spread over all endpoints

  spec.clusters[0].endpoints.push_back(Ep("10.211.0.5:8080"));
  Apply(t.lab, spec);
  auto second = t.lab.Connect("client", "10.96.211.9:80", 128, sources);
  INFO(second.dump());
  int to_new = 0, reshuffled = 0;
  for (const auto& [src, servers] : second["by_source"].items()) {
    CHECK(servers.size() == 1);
    const std::string now = servers.begin().key();
    if (now == "d")
      to_new++;
    else if (now != placement[src])
      reshuffled++;
  }
  CHECK(to_new >= 6);      // about a quarter of 64 moved to the new endpoint...
  CHECK(reshuffled <= 3);  // ...and almost none moved between the old ones
}

TEST_CASE("only enrolled network namespaces are translated, and unenrolling takes effect at once") {
  ThreeServers t;
  t.lab.AddPod("outsider", 20);
  Apply(t.lab, Service("web", {"10.96.211.10"}, 80,
                       {Cluster("web", 1, LbPolicy::kRoundRobin, {Ep("10.211.0.2:8080")})}));
  auto before = t.lab.ReadCounters();
  auto outsider = t.lab.Connect("outsider", "10.96.211.10:80", 5);
  INFO(outsider.dump());
  CHECK(outsider["ok"] == 0);  // nothing listens on the VIP: it is not translated
  CHECK(Count(outsider, "errors", "ENETUNREACH") == 5);
  auto after = t.lab.ReadCounters();
  CHECK(Delta(before, after, SLUICE_CNT_NOT_ENROLLED) == 5);
  CHECK(Delta(before, after, SLUICE_CNT_TRANSLATED) == 0);
  // The outsider still reaches the server directly.
  CHECK(t.lab.Connect("outsider", "10.211.0.2:8080", 1)["ok"] == 1);

  CHECK(t.lab.Connect("client", "10.96.211.10:80", 5)["ok"] == 5);
  auto was = t.lab.dp().Unenrol(t.lab.Cookie("client"));
  REQUIRE(was);
  CHECK(*was);
  auto gone = t.lab.Connect("client", "10.96.211.10:80", 5);
  INFO(gone.dump());
  CHECK(gone["ok"] == 0);
  CHECK(Count(gone, "errors", "ENETUNREACH") == 5);
  auto listed = t.lab.dp().Enrolled();
  REQUIRE(listed);
  CHECK_FALSE(listed->contains(t.lab.Cookie("client")));
}

TEST_CASE("a cluster without endpoints refuses the connect at once, counted as no_backend") {
  ThreeServers t;
  Apply(t.lab,
        Service("empty", {"10.96.211.11"}, 80, {Cluster("empty", 1, LbPolicy::kLeastRequest, {})}));
  auto before = t.lab.ReadCounters();
  auto start = std::chrono::steady_clock::now();
  auto r = t.lab.Connect("client", "10.96.211.11:80", 10);
  auto took = std::chrono::steady_clock::now() - start;
  INFO(r.dump());
  CHECK(r["ok"] == 0);
  CHECK(Count(r, "errors", "ECONNREFUSED") == 10);
  CHECK(took < std::chrono::seconds(2));  // refused, not a hang into a timeout
  auto after = t.lab.ReadCounters();
  CHECK(Delta(before, after, SLUICE_CNT_NO_BACKEND) == 10);
}

TEST_CASE("an update that cannot be written whole changes nothing, and frontends keep one owner") {
  ThreeServers t;
  Apply(t.lab, Service("kept", {"10.96.212.1"}, 80,
                       {Cluster("kept", 1, LbPolicy::kRoundRobin, {Ep("10.211.0.2:8080")})}));
  const std::string pins = t.lab.pin_root();
  const size_t frontends = PinnedEntries(pins + "/sluice_services");
  const size_t slots = PinnedEntries(pins + "/sluice_backends");
  const size_t known = PinnedEntries(pins + "/sluice_known_endpoints");
  auto unchanged = [&] {
    CHECK(PinnedEntries(pins + "/sluice_services") == frontends);
    CHECK(PinnedEntries(pins + "/sluice_backends") == slots);
    CHECK(PinnedEntries(pins + "/sluice_known_endpoints") == known);
    auto r = t.lab.Connect("client", "10.96.212.1:80", 3);
    INFO(r.dump());
    CHECK(r["ok"] == 3);
  };

  SECTION("more backend slots than the map holds: not one service of the update is written") {
    // The lab's backends map holds 4,096 slots: 8 services of 600 endpoints do not fit,
    // though the first six would.
    std::vector<ServiceSpec> specs;
    for (int s = 0; s < 8; s++) {
      std::vector<EndpointSpec> eps;
      for (int e = 0; e < 600; e++)
        eps.push_back(Ep("10.212." + std::to_string(s) + "." + std::to_string(e % 250 + 1) + ":" +
                         std::to_string(9000 + e / 250)));
      specs.push_back(Service("big-" + std::to_string(s), {"10.96.213." + std::to_string(s + 1)},
                              80, {Cluster("big", 1, LbPolicy::kRoundRobin, eps)}));
    }
    auto r = t.lab.dp().Apply(specs, {});
    REQUIRE_FALSE(r);
    CHECK_THAT(r.error().message, Catch::Contains("service 'big-") && Catch::Contains("full"));
    unchanged();
    auto services = t.lab.dp().Services();
    REQUIRE(services);
    CHECK(services->size() == 1);
  }
  SECTION("a frontend of another service is refused, and so is one claimed twice") {
    auto theirs = t.lab.dp().Apply(
        {Service("other", {"10.96.212.2"}, 80,
                 {Cluster("o", 1, LbPolicy::kRoundRobin, {Ep("10.211.0.3:8080")})}),
         Service("thief", {"10.96.212.1"}, 80,
                 {Cluster("t", 1, LbPolicy::kRoundRobin, {Ep("10.211.0.3:8080")})})},
        {});
    REQUIRE_FALSE(theirs);
    CHECK_THAT(theirs.error().message,
               Catch::Contains("service 'thief'") && Catch::Contains("belongs to service 'kept'"));
    auto twice = t.lab.dp().Apply(
        {Service("one", {"10.96.212.3"}, 80,
                 {Cluster("o", 1, LbPolicy::kRoundRobin, {Ep("10.211.0.3:8080")})}),
         Service("two", {"10.96.212.3"}, 80,
                 {Cluster("t", 1, LbPolicy::kRoundRobin, {Ep("10.211.0.4:8080")})})},
        {});
    REQUIRE_FALSE(twice);
    CHECK_THAT(twice.error().message, Catch::Contains("claimed by service 'one' too"));
    unchanged();
    // Once its owner lets it go, another service may take it (in a later update).
    REQUIRE(t.lab.dp().Apply({}, {"kept"}));
    Apply(t.lab, Service("heir", {"10.96.212.1"}, 80,
                         {Cluster("h", 1, LbPolicy::kRoundRobin, {Ep("10.211.0.4:8080")})}));
    auto r = t.lab.Connect("client", "10.96.212.1:80", 3);
    INFO(r.dump());
    CHECK(Share(r, "c") == 1.0);
  }
}

TEST_CASE("updates are atomic to concurrent connects and final when they return") {
  // Replaced revisions freed in Apply, or by the data plane's reclaimer thread (the
  // agent's way): either way no connect finds a backend freed under it.
  const bool background = GENERATE(false, true);
  INFO((background ? "reclaimed in the background" : "reclaimed in Apply"));
  ThreeServers t(background);
  auto only = [](const std::string& ep) {
    return Service("flip", {"10.96.211.12"}, 80,
                   {Cluster("flip", 1, LbPolicy::kRoundRobin, {Ep(ep)})});
  };
  auto mixed = Service(
      "flip", {"10.96.211.12"}, 80,
      {Cluster("x", 1, LbPolicy::kLeastRequest, {Ep("10.211.0.2:8080"), Ep("10.211.0.3:8080")}),
       Cluster("y", 3, LbPolicy::kMaglev, {Ep("10.211.0.4:8080")})});
  Apply(t.lab, only("10.211.0.2:8080"));

  // After each update returns, no connect reaches what it removed.
  for (int i = 0; i < 10; i++) {
    const bool to_a = i % 2 == 0;
    Apply(t.lab, only(to_a ? "10.211.0.2:8080" : "10.211.0.3:8080"));
    auto r = t.lab.Connect("client", "10.96.211.12:80", 10);
    INFO("round " << i << ": " << r.dump());
    CHECK(Count(r, "by_server", to_a ? "a" : "b") == 10);
  }

  // While updates flip the service between shapes, every connect succeeds.
  auto before = t.lab.ReadCounters();
  std::atomic<bool> stop{false};
  std::atomic<int> flips{0};
  std::string apply_error;
  std::thread flipper([&] {
    while (!stop) {
      const int k = flips % 3;
      auto r = t.lab.dp().UpsertService(
          k == 0 ? mixed : only(k == 1 ? "10.211.0.3:8080" : "10.211.0.4:8080"));
      if (!r) {
        apply_error = r.error().message;
        return;
      }
      flips++;
    }
  });
  struct Joiner {  // joins the flipper even when an assertion below throws
    std::atomic<bool>& stop;
    std::thread& th;
    void Join() {
      stop = true;
      if (th.joinable())
        th.join();
    }
    ~Joiner() { Join(); }
  } joiner{stop, flipper};
  // Batches of connects until at least 100 updates happened under them (each update
  // waits for an RCU grace period, whose length depends on the machine's load).
  long attempts = 0, ok = 0;
  json errors = json::object();
  while ((flips < 100 || attempts < 4000) && attempts < 40000 && apply_error.empty()) {
    auto r = t.lab.Connect("client", "10.96.211.12:80", 1000);
    attempts += 1000;
    ok += r["ok"].get<long>();
    errors.update(r["errors"]);
  }
  joiner.Join();  // the Dataplane is not shared between threads past this point
  INFO("flips " << flips << ", attempts " << attempts << ", errors " << errors.dump());
  INFO("apply error: " << apply_error);
  CHECK(apply_error.empty());
  CHECK(flips >= 100);
  CHECK(ok == attempts);
  CHECK(errors.empty());
  auto after = t.lab.ReadCounters();
  CHECK(Delta(before, after, SLUICE_CNT_TRANSLATED) == static_cast<uint64_t>(attempts));
  CHECK(Delta(before, after, SLUICE_CNT_BACKEND_MISSING) == 0);
  CHECK(Delta(before, after, SLUICE_CNT_NO_BACKEND) == 0);
  // Only connections to the LEAST_REQUEST cluster (one of the three shapes) are counted.
  CHECK(Delta(before, after, SLUICE_CNT_CONN_OPENED) > 0);
  CHECK(Delta(before, after, SLUICE_CNT_CONN_OPENED) < static_cast<uint64_t>(attempts));

  // Old revisions are gone from the maps: only the live one's backends remain, freed by
  // the reclaimer thread in the agent's way, by Apply itself otherwise.
  t.lab.dp().WaitReclaimed();
  if (background)
    CHECK(t.lab.dp().ReclaimedInBackground() >= 100);
  else
    CHECK(t.lab.dp().ReclaimedInBackground() == 0);
  auto services = t.lab.dp().Services();
  REQUIRE(services);
  REQUIRE(services->size() == 1);
  CHECK(services->front().revision > 100);
  size_t live_slots = 0;
  for (const auto& cluster : services->front().backends)
    live_slots += cluster.size();
  CHECK(PinnedEntries(t.lab.pin_root() + "/sluice_backends") == live_slots);
}

TEST_CASE("a killed loader leaves the data plane working, and the next one adopts it once") {
  Lab lab;
  lab.AddPod("client", 10);
  lab.AddPod("a", 2);
  lab.Serve("a", {"10.211.0.2:8080"}, "a");
  const uint64_t cookie = lab.Cookie("client");

  // A first "agent" loads, configures, and is killed with SIGKILL: no chance to clean up.
  int ready[2];
  REQUIRE(pipe(ready) == 0);
  pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    auto dp = Dataplane::Open(lab.options());
    bool ok = dp && (*dp)
                        ->UpsertService(Service(
                            "web", {"10.96.211.20"}, 80,
                            {Cluster("web", 1, LbPolicy::kRoundRobin, {Ep("10.211.0.2:8080")})}))
                        .has_value();
    ok = ok && (*dp)->Enrol(cookie, {*IpAddress::Parse("10.211.0.10"), {6, {}}}).has_value();
    if (write(ready[1], ok ? "1" : "0", 1) != 1)
      _exit(1);
    for (;;)
      pause();
  }
  close(ready[1]);
  char verdict = 0;
  REQUIRE(read(ready[0], &verdict, 1) == 1);
  close(ready[0]);
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  REQUIRE(verdict == '1');

  // The kernel keeps translating with no process holding the programs.
  auto orphan = lab.Connect("client", "10.96.211.20:80", 10);
  INFO(orphan.dump());
  CHECK(Count(orphan, "by_server", "a") == 10);

  // A restarted agent adopts the pins: same services, same enrolment, no second copy of
  // any program on the cgroup.
  auto& dp = lab.dp();
  CHECK(dp.adopted());
  auto services = dp.Services();
  REQUIRE(services);
  REQUIRE(services->size() == 1);
  CHECK(services->front().name == "web");
  auto enrolled = dp.Enrolled();
  REQUIRE(enrolled);
  CHECK(enrolled->contains(cookie));
  int cg = open(lab.cgroup().c_str(), O_RDONLY | O_DIRECTORY);
  REQUIRE(cg >= 0);
  for (auto type :
       {BPF_CGROUP_INET4_CONNECT, BPF_CGROUP_INET6_CONNECT, BPF_CGROUP_INET4_GETPEERNAME,
        BPF_CGROUP_INET6_GETPEERNAME, BPF_CGROUP_SOCK_OPS}) {
    INFO("attach type " << type);
    CHECK(ProgCount(cg, type) == 1);
  }

  // And it keeps working, and can change things.
  Apply(lab, Service("web2", {"10.96.211.21"}, 80,
                     {Cluster("web2", 1, LbPolicy::kRandom, {Ep("10.211.0.2:8080")})}));
  CHECK(lab.Connect("client", "10.96.211.20:80", 5)["ok"] == 5);
  CHECK(lab.Connect("client", "10.96.211.21:80", 5)["ok"] == 5);

  // A third start (clean exit this time) still finds one program per hook.
  lab.CloseDataplane();
  CHECK(lab.dp().adopted());
  CHECK(ProgCount(cg, BPF_CGROUP_INET4_CONNECT) == 1);
  CHECK(ProgCount(cg, BPF_CGROUP_SOCK_OPS) == 1);
  close(cg);
}

TEST_CASE("bpftool prints the pinned maps with named fields") {
  ThreeServers t;
  Apply(t.lab, Service("reviews.default.svc.cluster.local:9080", {"10.96.211.30"}, 9080,
                       {Cluster("v1", 1, LbPolicy::kRoundRobin, {Ep("10.211.0.2:8080")})}));
  auto services = Sh("bpftool map dump pinned " + t.lab.pin_root() + "/sluice_services");
  CHECK_THAT(services, Catch::Contains("\"name\": \"reviews.default.svc.cluster.local:9080\""));
  CHECK_THAT(services, Catch::Contains("\"port\": 9080"));
  CHECK_THAT(services, Catch::Contains("\"weight_end\": 1"));
  auto backends = Sh("bpftool map dump pinned " + t.lab.pin_root() + "/sluice_backends");
  CHECK_THAT(backends, Catch::Contains("\"port\": 8080"));
  CHECK_THAT(backends, Catch::Contains("\"service_id\""));
  auto enrolled = Sh("bpftool map dump pinned " + t.lab.pin_root() + "/sluice_enrolled");
  CHECK_THAT(enrolled, Catch::Contains("\"ip4\": [10,211,0,10"));
}

TEST_CASE("cleanup detaches every program and removes every pin") {
  ThreeServers t;
  Apply(t.lab, Service("web", {"10.96.211.40"}, 80,
                       {Cluster("web", 1, LbPolicy::kRoundRobin, {Ep("10.211.0.2:8080")})}));
  CHECK(t.lab.Connect("client", "10.96.211.40:80", 2)["ok"] == 2);
  t.lab.CloseDataplane();
  auto r = Dataplane::Cleanup(t.lab.pin_root());
  INFO((r ? "" : r.error().message));
  REQUIRE(r);
  CHECK_FALSE(std::filesystem::exists(t.lab.pin_root()));
  int cg = open(t.lab.cgroup().c_str(), O_RDONLY | O_DIRECTORY);
  REQUIRE(cg >= 0);
  for (auto type :
       {BPF_CGROUP_INET4_CONNECT, BPF_CGROUP_INET6_CONNECT, BPF_CGROUP_INET4_GETPEERNAME,
        BPF_CGROUP_INET6_GETPEERNAME, BPF_CGROUP_SOCK_OPS})
    CHECK(ProgCount(cg, type) == 0);
  close(cg);
  auto after = t.lab.Connect("client", "10.96.211.40:80", 2);
  CHECK(Count(after, "errors", "ENETUNREACH") == 2);
  CHECK(Dataplane::Cleanup(t.lab.pin_root()));  // idempotent
}
