// `sluicectl ads-dump` against a real ADS server on loopback: the user-facing way to see
// what the agent's client would run for a given proxy.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <mutex>
#include <string>

#include "envoy/config/core/v3/base.pb.h"
#include "fixtures.h"
#include "sluice/xds/ads_server.h"

namespace {

struct Run {
  int status;
  std::string out;
};

Run Sluicectl(const std::string& args) {
  std::string cmd = std::string(SLUICECTL) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  std::string out;
  char buf[1024];
  while (fgets(buf, sizeof buf, p))
    out += buf;
  int st = pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

const std::string kCluster =
    sluice::testing::ClusterName("httpbin.default.svc.cluster.local", 8000);

}  // namespace

TEST_CASE("sluicectl ads-dump prints the synced config of the node it poses as") {
  std::string seen_node;
  std::mutex mu;
  sluice::xds::AdsServer server([&](const envoy::config::core::v3::Node& n) {
    std::lock_guard lock(mu);
    seen_node = n.id();
    return sluice::testing::HttpbinSet(2);
  });
  auto port = server.Start({.address = "127.0.0.1:0"});
  REQUIRE(port);
  const std::string target = "--server 127.0.0.1:" + std::to_string(*port);

  SECTION("tables") {
    auto r = Sluicectl("ads-dump " + target + " --ip 10.1.0.4 --pod sleep-1 -n demo --timeout 10");
    INFO(r.out);
    CHECK(r.status == 0);
    CHECK(r.out.find("CLUSTERS (1)") != std::string::npos);
    // name, discovery type, LB policy and endpoint count on one line
    CHECK(r.out.find(kCluster) != std::string::npos);
    CHECK(r.out.find("EDS          LEAST_REQUEST  2") != std::string::npos);
    CHECK(r.out.find("0.0.0.0_8000") != std::string::npos);
    CHECK(r.out.find("0.0.0.0:8000") != std::string::npos);
    CHECK(r.out.find("ROUTES (1)") != std::string::npos);
    for (const char* t :
         {"Cluster 1", "ClusterLoadAssignment 1", "Listener 1", "RouteConfiguration 1"})
      CHECK(r.out.find(std::string("version ") + t) != std::string::npos);
    std::lock_guard lock(mu);
    CHECK(seen_node == "sidecar~10.1.0.4~sleep-1.demo~demo.svc.cluster.local");
  }
  SECTION("json") {
    auto r = Sluicectl("ads-dump " + target + " --json --role router --pod gw-1 -n istio-system");
    INFO(r.out);
    CHECK(r.status == 0);
    CHECK(r.out.find("\"name\":\"" + kCluster + "\"") != std::string::npos);
    CHECK(r.out.find("\"route_config_name\":\"8000\"") != std::string::npos);  // Any decoded
    CHECK(r.out.find("\"port_value\":9001") != std::string::npos);
    std::lock_guard lock(mu);
    CHECK(seen_node.starts_with("router~127.0.0.1~gw-1.istio-system~"));
  }
  server.Stop();
}

TEST_CASE("sluicectl ads-dump reports a NACKed config and fails") {
  sluice::xds::AdsServer server([](const envoy::config::core::v3::Node&) {
    auto rs = sluice::testing::HttpbinSet(1);
    rs.clusters.at(kCluster).set_lb_policy(envoy::config::cluster::v3::Cluster::CLUSTER_PROVIDED);
    return rs;
  });
  auto port = server.Start({.address = "127.0.0.1:0"});
  REQUIRE(port);
  auto r = Sluicectl("ads-dump --server 127.0.0.1:" + std::to_string(*port) + " --timeout 1");
  INFO(r.out);
  // The refused cluster is named with its reason; the rest is applied and printed, as
  // Envoy would run it, and the exit status says something was refused.
  CHECK(r.status == 1);
  CHECK(r.out.find("refused type.googleapis.com/envoy.config.cluster.v3.Cluster \"" + kCluster +
                   "\": lb_policy: CLUSTER_PROVIDED is only valid") != std::string::npos);
  server.Stop();
}

TEST_CASE("sluicectl ads-dump --watch prints each applied diff") {
  std::mutex mu;
  int endpoints = 1;
  sluice::xds::AdsServer server([&](const envoy::config::core::v3::Node&) {
    std::lock_guard lock(mu);
    return sluice::testing::HttpbinSet(endpoints);
  });
  auto port = server.Start({.address = "127.0.0.1:0"});
  REQUIRE(port);
  int out[2];
  REQUIRE(pipe(out) == 0);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    dup2(out[1], STDOUT_FILENO);
    close(out[0]);
    close(out[1]);
    std::string server_arg = "127.0.0.1:" + std::to_string(*port);
    execl(SLUICECTL, SLUICECTL, "ads-dump", "--watch", "--server", server_arg.c_str(), nullptr);
    _exit(127);
  }
  close(out[1]);
  FILE* f = fdopen(out[0], "r");
  struct Reap {
    pid_t pid;
    FILE* f;
    ~Reap() {
      kill(pid, SIGTERM);
      waitpid(pid, nullptr, 0);
      fclose(f);
    }
  } reap{pid, f};
  auto next_line = [&] {
    char buf[512];
    return fgets(buf, sizeof buf, f) ? std::string(buf) : std::string();
  };
  // Warming: clusters with their endpoints first, then the listener with its route.
  CHECK(next_line() == "generation 1: clusters +1 ~0 -0  endpoints +1 ~0 -0  \n");
  CHECK(next_line() == "generation 2: listeners +1 ~0 -0  routes +1 ~0 -0  \n");
  {
    std::lock_guard lock(mu);
    endpoints = 3;
  }
  server.Push();
  CHECK(next_line() == "generation 3: endpoints +0 ~1 -0  \n");
  server.Stop();
}
