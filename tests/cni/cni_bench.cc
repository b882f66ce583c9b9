// What sluice-cni adds to pod start-up: the latency of one ADD, split into its parts.
//   cni_bench [iterations]
// Prints p50/p90/p99 for: the agent round trip alone (CallAgent in-process), the
// plugin's process start (sluice-cni VERSION, no socket), and a full sluice-cni ADD
// (exec + stdin + Unix-socket round trip to a CniServer with a no-op handler).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "cni_server.h"
#include "sluice/local/run_process.h"
#include "test_support.h"

using namespace sluice;
using namespace sluice::cni;
using namespace sluice::local;  // RunProcess
using Clock = std::chrono::steady_clock;

namespace {

struct NoopHandler : CniHandler {
  Result<AddReply> OnAdd(const PodInfo&) override { return AddReply{true, ""}; }
  Result<void> OnDel(const PodInfo&) override { return {}; }
  Result<AddReply> OnCheck(const PodInfo&) override { return AddReply{true, ""}; }
};

template <class F>
std::vector<double> Measure(int n, F&& fn) {
  std::vector<double> us;
  us.reserve(n);
  for (int i = 0; i < n; ++i) {
    auto t0 = Clock::now();
    if (!fn()) {
      std::fprintf(stderr, "iteration %d failed\n", i);
      std::exit(1);
    }
    us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  std::sort(us.begin(), us.end());
  return us;
}

void Report(const char* what, const std::vector<double>& us) {
  auto at = [&](double q) { return us[std::min(us.size() - 1, std::size_t(q * us.size()))]; };
  std::printf("%-44s n=%zu  p50 %8.1f us  p90 %8.1f us  p99 %8.1f us\n", what, us.size(), at(0.50),
              at(0.90), at(0.99));
}

}  // namespace

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::atoi(argv[1]) : 500;
  testing::TempDir tmp;
  NoopHandler handler;
  auto server = CniServer::Start({.socket_path = tmp / "cni.sock"}, handler);
  if (!server) {
    std::fprintf(stderr, "%s\n", server.error().message.c_str());
    return 1;
  }
  const std::string sock = (*server)->socket_path();

  CniRequest req;
  req.op = Operation::kAdd;
  req.cni_version = "1.0.0";
  req.container_id = "bench";
  req.netns = "/var/run/netns/sluicet-bench";
  req.ifname = "eth0";
  req.pod_name = "p";
  req.pod_namespace = "ns";
  req.ips = {"10.1.0.2/24"};
  Report("agent round trip (CallAgent, in-process)", Measure(n, [&] {
           auto r = CallAgent(sock, req, std::chrono::seconds(5));
           return r && r->ok;
         }));

  const std::vector<std::string> env = {"CNI_COMMAND=VERSION", "PATH=/usr/bin:/bin"};
  Report("process start (sluice-cni VERSION)", Measure(n, [&] {
           auto r = RunProcess({SLUICE_CNI_BINARY}, env, "{\"cniVersion\":\"1.0.0\"}",
                               std::chrono::seconds(5));
           return r && r->exit_status == 0;
         }));

  const std::string conf =
      R"({"cniVersion":"1.0.0","name":"bench","type":"sluice-cni","agentSocket":")" + sock +
      R"(","prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.1.0.2/24"}]}})";
  const std::vector<std::string> add_env = {"CNI_COMMAND=ADD",
                                            "CNI_CONTAINERID=bench",
                                            "CNI_NETNS=/var/run/netns/sluicet-bench",
                                            "CNI_IFNAME=eth0",
                                            "CNI_ARGS=K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p",
                                            "PATH=/usr/bin:/bin"};
  Report("full ADD (sluice-cni exec + agent)", Measure(n, [&] {
           auto r = RunProcess({SLUICE_CNI_BINARY}, add_env, conf, std::chrono::seconds(5));
           return r && r->exit_status == 0;
         }));
  return 0;
}
