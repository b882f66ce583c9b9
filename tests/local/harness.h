// The local cluster end to end: helpers shared by its tests — sluicectl and shell runs,
// one test's private cluster (its own names everywhere, torn down on the way out), and
// readers for `get pods` tables and the agent's metrics.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "sluice/local/run_process.h"

namespace sluice::local_test {

namespace fs = std::filesystem;

struct Run {
  int status = -1;
  std::string out, err;
};

inline Run Ctl(const std::vector<std::string>& args, int timeout_s = 60) {
  std::vector<std::string> argv = {SLUICECTL_PATH};
  argv.insert(argv.end(), args.begin(), args.end());
  auto r = sluice::local::RunProcess(
      argv, {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, "",
      std::chrono::seconds(timeout_s));
  Run out;
  if (!r) {
    out.err = r.error().message;
    return out;
  }
  out.status = r->exit_status;
  out.out = r->out;
  out.err = r->err;
  return out;
}

inline std::string Sh(const std::string& cmd) {
  auto r = sluice::local::RunProcess({"/bin/sh", "-c", cmd}, {"PATH=/usr/sbin:/usr/bin:/sbin:/bin"},
                                     "", std::chrono::seconds(20));
  return r ? r->out : "";
}

inline int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin));
  socklen_t len = sizeof(sin);
  getsockname(fd, reinterpret_cast<sockaddr*>(&sin), &len);
  close(fd);
  return ntohs(sin.sin_port);
}

inline std::string Cgroup2() {
  std::ifstream in("/proc/mounts");
  std::string dev, mnt, type, rest;
  while (in >> dev >> mnt >> type && std::getline(in, rest))
    if (type == "cgroup2")
      return mnt;
  return "";
}

inline bool PidAlive(int pid) {
  std::string path = "/proc/" + std::to_string(pid) + "/stat";
  int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0)
    return false;
  char buf[512];
  ssize_t n = read(fd, buf, sizeof(buf));
  close(fd);
  std::string text(buf, n > 0 ? static_cast<size_t>(n) : 0);
  auto rp = text.rfind(')');
  return rp != std::string::npos && text.size() > rp + 2 && text[rp + 2] != 'Z';
}

inline int PidFromFile(const std::string& path) {
  int pid = 0;
  std::ifstream(path) >> pid;
  return pid;
}

// One test's cluster: its own names everywhere, torn down on the way out.
struct TestCluster {
  std::string tag = "sluicet" + std::to_string(getpid() % 100000);
  std::string state = "/tmp/" + tag + "-local";
  std::string bridge = tag + "b";
  std::string netns_prefix = tag + "-";
  std::string cgroup = Cgroup2() + "/" + tag + "-local";
  std::string pins = "/sys/fs/bpf/" + tag + "-local";
  std::string admin = "127.0.0.1:" + std::to_string(FreePort());
  std::string dir = "/tmp/" + tag + "-manifests";

  TestCluster() { fs::create_directories(dir); }
  ~TestCluster() {
    Ctl({"local", "down", "--state-dir", state});
    std::error_code ec;
    fs::remove_all(dir, ec);
  }

  std::vector<std::string> UpArgs() const {
    return {"local",
            "up",
            "--state-dir",
            state,
            "--bridge",
            bridge,
            "--pod-subnet",
            "10.231.0.0/16",
            "--service-subnet",
            "10.232.0.0/16",
            "--netns-prefix",
            netns_prefix,
            "--cgroup-dir",
            cgroup,
            "--pin-root",
            pins,
            "--admin-address",
            admin,
            "--ready-timeout",
            "20",
            "--profile",
            "minimal"};  // tests apply the gateways they need
  }
  Run Local(std::vector<std::string> args, int timeout_s = 60) const {
    // After the subcommand, before any "--" (exec's command follows it).
    args.insert(args.begin() + 1, {"--state-dir", state});
    args.insert(args.begin(), "local");
    return Ctl(args, timeout_s);
  }
  std::string Write(const std::string& name, const std::string& text) const {
    std::string path = dir + "/" + name;
    std::ofstream(path) << text;
    return path;
  }
  // `local up` with `manifests` (written to mesh.yaml), then namespace default enrolled:
  // most cases' first step. What `up` printed goes to the failure message.
  bool UpEnrolled(const std::string& manifests) {
    std::vector<std::string> args = UpArgs();
    args.push_back("-f");
    args.push_back(Write("mesh.yaml", manifests));
    Run up = Ctl(args);
    UNSCOPED_INFO(up.out << up.err);
    return up.status == 0 &&
           Local({"label", "namespace", "default", "istio.io/dataplane-mode=sluice"}).status == 0;
  }
  std::string Netns() const { return Sh("ip netns list | grep '^" + netns_prefix + "' || true"); }
};

// `sluicectl local port-forward …` in the background; SIGTERM and reaped on scope exit.
// port() is the local port its first line announced (0 if none).
class PortForward {
 public:
  PortForward(const std::string& state, const std::string& target, const std::string& ports,
              const std::string& ns) {
    int out[2];
    REQUIRE(pipe(out) == 0);
    pid_ = fork();
    if (pid_ == 0) {
      dup2(out[1], 1);
      close(out[0]);
      execl(SLUICECTL_PATH, SLUICECTL_PATH, "local", "port-forward", target.c_str(), ports.c_str(),
            "-n", ns.c_str(), "--state-dir", state.c_str(), nullptr);
      _exit(127);
    }
    close(out[1]);
    char ch;
    while (read(out[0], &ch, 1) == 1 && ch != '\n')
      line_ += ch;
    close(out[0]);
    std::smatch m;
    if (std::regex_search(line_, m, std::regex("^Forwarding from 127\\.0\\.0\\.1:([0-9]+) -> ")))
      port_ = std::stoi(m[1]);
  }
  ~PortForward() {
    kill(pid_, SIGTERM);
    waitpid(pid_, nullptr, 0);
  }
  int port() const { return port_; }
  const std::string& line() const { return line_; }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  std::string line_;
};

// `get pods -A` rows: namespace, name, ready, status, restarts, age, ip.
inline std::vector<std::vector<std::string>> Rows(const std::string& table) {
  std::vector<std::vector<std::string>> rows;
  std::istringstream in(table);
  std::string line;
  std::getline(in, line);  // header
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::vector<std::string> cols;
    std::string c;
    while (f >> c)
      cols.push_back(c);
    rows.push_back(cols);
  }
  return rows;
}

inline std::string PodOf(const std::vector<std::vector<std::string>>& rows,
                         const std::string& prefix) {
  for (const auto& r : rows)
    if (r.size() > 1 && r[1].rfind(prefix, 0) == 0)
      return r[1];
  return "";
}

inline uint64_t Counter(const std::string& admin, const std::string& reason) {
  std::string metrics = Sh("curl -s http://" + admin + "/metrics");
  std::smatch m;
  std::regex re("sluice_kernel_connects_total\\{reason=\"" + reason + "\"\\} ([0-9]+)");
  return std::regex_search(metrics, m, re) ? std::stoull(m[1]) : 0;
}

// A client pod (Istio's sleep sample): curl and python3 inside, doing nothing by itself.
inline constexpr const char* kSleep = R"(apiVersion: apps/v1
kind: Deployment
metadata:
  name: sleep
spec:
  replicas: 1
  selector:
    matchLabels: {app: sleep}
  template:
    metadata:
      labels: {app: sleep}
    spec:
      containers:
      - name: sleep
        image: curlimages/curl
        command: ["/bin/sleep", "infinity"]
)";

// Polls `pred` every 100 ms for up to `seconds`; whether it came true.
template <class F>
bool WaitUntil(F pred, int seconds = 15) {
  auto end = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  while (std::chrono::steady_clock::now() < end) {
    if (pred())
      return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return pred();
}

}  // namespace sluice::local_test
