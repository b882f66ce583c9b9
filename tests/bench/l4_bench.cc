// Connection rate and latency to a service through Sluice's kernel path, against the
// same connection made directly to the endpoint and through iptables DNAT of the VIP
// (kube-proxy's iptables mode), with 10 and 10,000 services installed, in one run.
//
//   sluice_bench_l4 [--services 10,10000] [--seconds 5] [--rounds 3] [--hop-only]
//                   [--halt-poll-ns LIST]
//
// --halt-poll-ns 0,200000 measures the in-pod hop once per value of the guest's
// cpuidle-haltpoll setting (/sys/module/haltpoll/parameters/guest_halt_poll_ns: how long
// an idle vCPU polls before it halts; 200000 is the kernel's default, some VMs boot with
// 0). A halted vCPU costs a host round trip to wake, which dominates a cross-CPU hop in a
// VM. The machine's own value is put back at exit, also on failure or a signal.
//
// Topology: a client and a server network namespace joined by a veth pair. The server
// (sluice_probe serve) runs on CPU 1, the client (sluice_probe bench) on CPU 0. The
// client runs in a cgroup with Sluice's programs (kernel path) or in one without any
// (direct and iptables). For each service count, N services are installed in both the
// kernel maps and, kube-proxy style, as nat OUTPUT rules in a second client namespace
// (KUBE-SERVICES -> KUBE-SVC-x -> KUBE-SEP-x -> DNAT); the client dials the service in
// the middle of the table. The client's default route points at the server namespace
// (iptables DNAT happens after the route lookup, as on a node). Figures are the median of --rounds
// rounds.
//
// Run as root; everything it creates is prefixed "sluiceb" and removed on exit.
#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "sluice/loader/dataplane.h"
#include "sluice/loader/system.h"

namespace {

using nlohmann::json;
using sluice::Dataplane;

constexpr const char* kClient = "sluiceb-client";
constexpr const char* kServer = "sluiceb-server";
constexpr const char* kPins = "/sys/fs/bpf/sluiceb";
constexpr const char* kEndpoint = "10.213.0.2:8080";
// The iptables path runs from its own client namespace, so its nat rules (and the
// conntrack they switch on) never touch the direct and Sluice measurements.
constexpr const char* kIptClient = "sluiceb-ipt";
constexpr const char* kIptEndpoint = "10.214.0.2:8080";

struct Env;
Env* g_env = nullptr;
void TeardownEnv();

[[noreturn]] void Die(const std::string& msg) {
  fmt::print(stderr, "sluice_bench_l4: {}\n", msg);
  TeardownEnv();  // nothing of the run is left behind, even on failure
  std::exit(1);
}

void Run(const std::string& cmd) {
  if (std::system(cmd.c_str()) != 0)
    Die("command failed: " + cmd);
}

std::string Capture(const std::string& cmd) {
  FILE* p = popen(cmd.c_str(), "r");
  if (!p)
    Die("cannot run " + cmd);
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof(buf), p))
    out.append(buf, n);
  if (pclose(p) != 0)
    Die("command failed: " + cmd + "\n" + out);
  return out;
}

constexpr const char* kHaltPoll = "/sys/module/haltpoll/parameters/guest_halt_poll_ns";

struct Env {
  std::string cg_mount, cg_sluice, cg_plain;
  pid_t server = -1;
  std::string halt_poll_orig;  // the machine's guest_halt_poll_ns, while we changed it

  void Teardown() {
    if (!halt_poll_orig.empty()) {
      std::ofstream(kHaltPoll) << halt_poll_orig;
      halt_poll_orig.clear();
    }
    if (server > 0) {
      kill(server, SIGKILL);
      waitpid(server, nullptr, 0);
      server = -1;
    }
    (void)Dataplane::Cleanup(kPins);
    std::system(fmt::format("ip netns del {} 2>/dev/null; ip netns del {} 2>/dev/null; "
                            "ip netns del {} 2>/dev/null",
                            kClient, kServer, kIptClient)
                    .c_str());
    for (const auto& cg : {cg_sluice, cg_plain})
      if (!cg.empty())
        rmdir(cg.c_str());
  }
};

void TeardownEnv() {
  if (g_env)
    g_env->Teardown();
}

void OnSignal(int) {
  if (g_env)
    g_env->Teardown();
  _exit(130);
}

std::string VipOf(int i) {
  return fmt::format("10.{}.{}.{}", 96 + i / 65536, (i / 256) % 256, i % 256 + 0);
}

void InstallIptables(int n) {
  std::string rules = "*nat\n:OUTPUT ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n";
  for (int i = 0; i < n; i++)
    rules += fmt::format(":KUBE-SVC-{0} - [0:0]\n:KUBE-SEP-{0} - [0:0]\n", i);
  rules += "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n";
  for (int i = 0; i < n; i++) {
    rules += fmt::format(
        "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"bench/svc{}\" -m tcp "
        "--dport 80 -j KUBE-SVC-{}\n",
        VipOf(i), i, i);
    rules += fmt::format("-A KUBE-SVC-{0} -j KUBE-SEP-{0}\n", i);
    rules +=
        fmt::format("-A KUBE-SEP-{} -p tcp -m tcp -j DNAT --to-destination {}\n", i, kIptEndpoint);
  }
  rules += "COMMIT\n";
  const std::string file = "/tmp/sluiceb-iptables.rules";
  std::ofstream(file) << rules;
  Run(fmt::format("ip netns exec {} iptables-restore < {}", kIptClient, file));
  std::filesystem::remove(file);
}

void FlushIptables() {
  Run(fmt::format("ip netns exec {} iptables -t nat -F && ip netns exec {} iptables -t nat -X",
                  kIptClient, kIptClient));
}

json Probe(const std::string& netns, const std::string& cgroup, const std::string& to,
           double seconds, bool rr) {
  return json::parse(
      Capture(fmt::format("taskset -c 0 {} bench --netns {} --cgroup {} --to {} "
                          "--seconds {} {}",
                          SLUICE_PROBE_PATH, netns, cgroup, to, seconds, rr ? "--rr" : "")));
}

struct Figures {
  double rate = 0, p50 = 0, p99 = 0, rr_p50 = 0, rr_p99 = 0;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> counts{10, 10000};
  double seconds = 5;
  int rounds = 3;
  std::vector<std::string> halt_polls;  // empty: leave the machine's setting alone
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    auto next = [&] {
      if (i + 1 >= argc)
        Die(a + " needs a value");
      return std::string(argv[++i]);
    };
    if (a == "--services") {
      counts.clear();
      std::string list = next();
      for (size_t pos = 0; pos < list.size();) {
        size_t comma = list.find(',', pos);
        counts.push_back(std::stoi(list.substr(pos, comma - pos)));
        pos = comma == std::string::npos ? list.size() : comma + 1;
      }
    } else if (a == "--seconds") {
      seconds = std::stod(next());
    } else if (a == "--rounds") {
      rounds = std::stoi(next());
    } else if (a == "--hop-only") {
      counts.clear();  // only the in-pod proxy hop
    } else if (a == "--halt-poll-ns") {
      std::string list = next();
      for (size_t pos = 0; pos < list.size();) {
        size_t comma = list.find(',', pos);
        std::string v = list.substr(pos, comma - pos);
        if (v.empty() || v.find_first_not_of("0123456789") != std::string::npos)
          Die("--halt-poll-ns: '" + v + "' is not a number of nanoseconds");
        halt_polls.push_back(v);
        pos = comma == std::string::npos ? list.size() : comma + 1;
      }
    } else {
      Die("usage: sluice_bench_l4 [--services 10,10000] [--seconds 5] [--rounds 3] "
          "[--hop-only] [--halt-poll-ns 0,200000]");
    }
  }
  if (geteuid() != 0)
    Die("run as root (loads BPF programs, makes network namespaces)");
  std::string halt_poll_now;
  if (!halt_polls.empty()) {
    std::ifstream f(kHaltPoll);
    if (!(f >> halt_poll_now))
      Die(std::string("--halt-poll-ns: cannot read ") + kHaltPoll +
          " (no cpuidle-haltpoll driver on this machine)");
  }

  Env env;
  g_env = &env;
  signal(SIGINT, OnSignal);
  signal(SIGTERM, OnSignal);
  auto cg = sluice::FindCgroup2Mount();
  if (!cg)
    Die(cg.error().message);
  env.cg_mount = *cg;
  env.cg_sluice = *cg + "/sluiceb-sluice";
  env.cg_plain = *cg + "/sluiceb-plain";
  env.Teardown();
  std::filesystem::create_directories(env.cg_sluice);
  std::filesystem::create_directories(env.cg_plain);

  Run(
      fmt::format("ip netns add {0} && ip netns add {1} && ip netns add {2} && "
                  "ip -n {0} link add eth0 type veth peer name eth0 netns {1} && "
                  "ip -n {0} addr add 10.213.0.10/24 dev eth0 && ip -n {0} link set eth0 up && "
                  "ip -n {0} link set lo up && ip -n {0} route add default via 10.213.0.2 && "
                  "ip -n {1} addr add 10.213.0.2/24 dev eth0 && ip -n {1} link set eth0 up && "
                  "ip -n {1} link set lo up && "
                  "ip -n {2} link add eth0 type veth peer name eth1 netns {1} && "
                  "ip -n {2} addr add 10.214.0.10/24 dev eth0 && ip -n {2} link set eth0 up && "
                  "ip -n {2} link set lo up && ip -n {2} route add default via 10.214.0.2 && "
                  "ip -n {1} addr add 10.214.0.2/24 dev eth1 && ip -n {1} link set eth1 up",
                  kClient, kServer, kIptClient));

  int out[2];
  if (pipe(out) != 0)
    Die("pipe");
  env.server = fork();
  if (env.server == 0) {
    dup2(out[1], STDOUT_FILENO);
    execlp("taskset", "taskset", "-c", "1", SLUICE_PROBE_PATH, "serve", "--netns", kServer,
           "--listen", kEndpoint, "--listen", kIptEndpoint, "--id", "server", nullptr);
    _exit(127);
  }
  close(out[1]);
  char ready[16] = {};
  if (read(out[0], ready, sizeof(ready) - 1) <= 0)
    Die("server did not start");

  sluice::DataplaneOptions opts;
  opts.pin_root = kPins;
  opts.cgroup_path = env.cg_sluice;
  opts.sizes.frontends = 65536;
  auto dp = Dataplane::Open(opts);
  if (!dp)
    Die(dp.error().message);
  auto cookie = sluice::NetnsCookie(std::string("/run/netns/") + kClient);
  if (!cookie)
    Die(cookie.error().message);
  if (auto r = (*dp)->Enrol(*cookie, {*sluice::IpAddress::Parse("10.213.0.10"), {6, {}}, 15001});
      !r)
    Die(r.error().message);

  fmt::print("Sluice L4 benchmark: {} s per measurement, median of {} rounds, kernel {}\n", seconds,
             rounds, Capture("uname -r").substr(0, Capture("uname -r").size() - 1));
  fmt::print("{:>8}  {:<9} {:>11} {:>8} {:>9} {:>9} {:>9} {:>9}\n", "services", "path",
             "connects/s", "vs direct", "conn p50", "conn p99", "rr p50", "rr p99");

  std::map<std::pair<int, std::string>, Figures> results;
  std::map<int, double> install_ms;
  struct Path {
    std::string name, netns, cgroup, to;
  };
  auto paths_for = [&](int n) {
    const std::string vip = VipOf(n / 2) + ":80";
    return std::vector<Path>{
        {"direct", kClient, env.cg_plain, kEndpoint},
        {"sluice", kClient, env.cg_sluice, vip},
        {"iptables", kIptClient, env.cg_plain, vip},
    };
  };
  // Installs n services in the kernel maps (one Apply, one grace period) and in iptables.
  auto install = [&](int n) {
    std::vector<sluice::ServiceSpec> specs;
    for (int i = 0; i < n; i++) {
      sluice::ServiceSpec s;
      s.name = fmt::format("svc{}", i);
      s.vips = {*sluice::IpAddress::Parse(VipOf(i))};
      s.port = 80;
      s.clusters = {
          {"c", 1, sluice::LbPolicy::kRandom, {{*sluice::SocketAddress::Parse(kEndpoint), 1, {}}}}};
      specs.push_back(std::move(s));
    }
    std::vector<std::string> stale;
    if (auto existing = (*dp)->Services(); existing)
      for (const auto& s : *existing)
        stale.push_back(s.name);
    if (auto r = (*dp)->Apply({}, stale); !r)
      Die(r.error().message);
    const auto t0 = std::chrono::steady_clock::now();
    if (auto r = (*dp)->Apply(specs, {}); !r)
      Die(r.error().message);
    install_ms[n] =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    InstallIptables(n);
  };

  // Rounds outside, service counts inside: both sizes see the same drift of a shared
  // machine, and each ratio compares paths measured back to back.
  std::map<int, std::map<std::string, std::vector<Figures>>> samples;
  std::map<int, std::map<std::string, std::vector<double>>> ratios;  // rate / direct's
  for (int round = 0; round < rounds; round++) {
    for (int n : counts) {
      install(n);
      std::map<std::string, double> rate;
      // Rotate the order each round: no path always runs first (or right after a reload).
      auto order = paths_for(n);
      std::rotate(order.begin(), order.begin() + (round % order.size()), order.end());
      for (const auto& p : order) {
        auto c = Probe(p.netns, p.cgroup, p.to, seconds, false);
        auto r = Probe(p.netns, p.cgroup, p.to, seconds / 2, true);
        if (c["errors"].get<long>() != 0)
          Die(fmt::format("{} path: {} failed connects", p.name, c["errors"].get<long>()));
        samples[n][p.name].push_back(
            {c["rate"], c["p50_us"], c["p99_us"], r["p50_us"], r["p99_us"]});
        rate[p.name] = c["rate"];
      }
      for (const auto& [path, r] : rate)
        ratios[n][path].push_back(r / rate["direct"]);
      FlushIptables();
    }
    fmt::print(stderr, "round {}/{} done\n", round + 1, rounds);
  }
  std::map<std::pair<int, std::string>, double> ratio;
  for (int n : counts) {
    for (const auto& p : paths_for(n)) {
      auto& s = samples[n][p.name];
      auto pick = [&](double Figures::*f) {
        std::vector<double> v;
        for (const auto& x : s)
          v.push_back(x.*f);
        return Median(v);
      };
      Figures f{pick(&Figures::rate), pick(&Figures::p50), pick(&Figures::p99),
                pick(&Figures::rr_p50), pick(&Figures::rr_p99)};
      results[{n, p.name}] = f;
      ratio[{n, p.name}] = Median(ratios[n][p.name]);
      fmt::print("{:>8}  {:<9} {:>11.0f} {:>8.3f}x {:>7.1f}us {:>7.1f}us {:>7.1f}us {:>7.1f}us\n",
                 n, p.name, f.rate, ratio[{n, p.name}], f.p50, f.p99, f.rr_p50, f.rr_p99);
    }
  }
  if (!counts.empty())
    fmt::print(
        "(vs direct: median over rounds of the rate ratio to the direct connection measured "
        "in the same round)\n");
  if (counts.size() >= 2) {
    const int lo = counts.front(), hi = counts.back();
    fmt::print(
        "\nsluice vs direct: {:.3f}x at {} services, {:.3f}x at {} (flatness {:.3f}); "
        "sluice vs iptables at {}: {:.2f}x\n",
        ratio[{lo, "sluice"}], lo, ratio[{hi, "sluice"}], hi,
        ratio[{hi, "sluice"}] / ratio[{lo, "sluice"}], hi,
        ratio[{hi, "sluice"}] / ratio[{hi, "iptables"}]);
  }
  for (const auto& [n, ms] : install_ms)
    fmt::print("kernel sync: {} services installed in one Apply in {:.1f} ms\n", n, ms);

  // The in-pod proxy hop: an L7 service redirected to a listener on the client pod's
  // loopback (an echo server standing in for the agent's proxy, under the hooks as the
  // agent is), request/response latency with and without the sk_msg splice.
  sluice::ServiceSpec l7;
  l7.name = "l7";
  l7.vips = {*sluice::IpAddress::Parse("10.96.255.1")};
  l7.port = 80;
  l7.redirect_to_proxy = true;
  if (auto r = (*dp)->Apply({l7}, {}); !r)
    Die(r.error().message);
  // Three placements of the listener against the client (pinned to CPU 0): on the other
  // CPU (every hop is a cross-CPU wake-up), on the same CPU, and wherever the scheduler
  // puts it (as the agent's worker runs on a node).
  fmt::print("\nin-pod proxy hop (1-byte request/response through the redirect):\n");
  if (halt_polls.empty())
    halt_polls.push_back("");  // as the machine is
  else
    env.halt_poll_orig = halt_poll_now;
  for (const auto& halt_poll : halt_polls) {
    if (!halt_poll.empty()) {
      std::ofstream f(kHaltPoll);
      if (!(f << halt_poll).flush())
        Die(std::string("cannot write ") + kHaltPoll);
      fmt::print(" guest_halt_poll_ns={}{}:\n", halt_poll,
                 halt_poll == halt_poll_now ? " (this machine's setting)" : "");
    }
    for (const char* cpu : {"1", "0", "0,1"}) {
      pid_t proxy = fork();
      if (proxy == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, STDOUT_FILENO);
        execlp("taskset", "taskset", "-c", cpu, SLUICE_PROBE_PATH, "serve", "--netns", kClient,
               "--cgroup", env.cg_sluice.c_str(), "--listen", "127.0.0.1:15001", "--id", "proxy",
               nullptr);
        _exit(127);
      }
      usleep(300000);
      std::map<bool, std::vector<double>> hop_p50, hop_p99;
      for (int round = 0; round < rounds; round++) {
        const bool first = round % 2 == 1;  // alternate which one runs first
        for (bool splice : {first, !first}) {
          if (auto r = (*dp)->SetSplice(splice); !r)
            Die(r.error().message);
          auto rr = Probe(kClient, env.cg_sluice, "10.96.255.1:80", seconds, true);
          hop_p50[splice].push_back(rr["p50_us"]);
          hop_p99[splice].push_back(rr["p99_us"]);
        }
      }
      kill(proxy, SIGKILL);
      waitpid(proxy, nullptr, 0);
      const double off = Median(hop_p50[false]), on = Median(hop_p50[true]);
      const std::string where = std::string(cpu) == "1"   ? "the other CPU"
                                : std::string(cpu) == "0" ? "the client's CPU"
                                                          : "not pinned";
      fmt::print("  listener on CPU {} ({}):\n", cpu, where);
      fmt::print("    TCP loopback   p50 {:6.1f}us  p99 {:6.1f}us\n", off, Median(hop_p99[false]));
      fmt::print("    sk_msg splice  p50 {:6.1f}us  p99 {:6.1f}us  ({:.0f}% lower p50)\n", on,
                 Median(hop_p99[true]), 100.0 * (off - on) / off);
    }
  }
  dp->reset();
  env.Teardown();
  return 0;
}
