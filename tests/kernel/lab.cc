#include "lab.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>

#include <array>
#include <catch2/catch.hpp>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "sluice/loader/system.h"

namespace fs = std::filesystem;

namespace sluice::test {

std::string Sh(const std::string& cmd) {
  std::string out;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  REQUIRE(p != nullptr);
  std::array<char, 4096> buf;
  while (size_t n = fread(buf.data(), 1, buf.size(), p))
    out.append(buf.data(), n);
  int status = pclose(p);
  INFO("command: " << cmd << "\noutput: " << out);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  return out;
}

Process::Process(const std::vector<std::string>& argv) {
  int in[2], out[2];
  REQUIRE(pipe2(in, O_CLOEXEC) == 0);
  REQUIRE(pipe2(out, O_CLOEXEC) == 0);
  pid_ = fork();
  REQUIRE(pid_ >= 0);
  if (pid_ == 0) {
    dup2(in[0], STDIN_FILENO);
    dup2(out[1], STDOUT_FILENO);
    std::vector<char*> args;
    for (const auto& a : argv)
      args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  in_ = in[1];
  out_ = out[0];
}

Process::~Process() {
  Kill();
  if (in_ >= 0)
    close(in_);
  if (out_ >= 0)
    close(out_);
}

std::string Process::ReadLine(int timeout_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    auto nl = buffer_.find('\n');
    if (nl != std::string::npos) {
      std::string line = buffer_.substr(0, nl);
      buffer_.erase(0, nl + 1);
      return line;
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                    deadline - std::chrono::steady_clock::now())
                    .count();
    INFO("process " << pid_ << " printed no line within " << timeout_ms << " ms");
    REQUIRE(left > 0);
    pollfd pfd{out_, POLLIN, 0};
    if (poll(&pfd, 1, static_cast<int>(left)) <= 0)
      continue;
    char buf[4096];
    ssize_t n = read(out_, buf, sizeof(buf));
    INFO("process " << pid_ << " closed its output");
    REQUIRE(n > 0);
    buffer_.append(buf, static_cast<size_t>(n));
  }
}

void Process::CloseStdin() {
  if (in_ >= 0)
    close(in_);
  in_ = -1;
}

int Process::Wait() {
  if (pid_ <= 0)
    return -1;
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

bool Process::Running() {
  if (pid_ <= 0)
    return false;
  siginfo_t info{};
  return waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
         info.si_pid == 0;
}

void Process::Kill() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
}

Lab::Lab() {
  tag_ = "sluicet" + std::to_string(getpid() % 100000);
  auto cg = FindCgroup2Mount();
  REQUIRE(cg);
  cgroup_ = *cg + "/" + tag_;
  pin_root_ = "/sys/fs/bpf/" + tag_;
  switch_ns_ = tag_ + "-sw";
  try {
    Teardown();  // leftovers of an earlier crashed run with the same pid
    fs::create_directory(cgroup_);
    Sh("ip netns add " + switch_ns_);
    Sh("ip -n " + switch_ns_ + " link add br0 type bridge && ip -n " + switch_ns_ +
       " link set br0 up");
  } catch (...) {
    Teardown();
    throw;
  }
}

Lab::~Lab() {
  Teardown();
}

void Lab::Teardown() {
  servers_.clear();
  dp_.reset();
  (void)Dataplane::Cleanup(pin_root_);
  for (const auto& [name, pod] : pods_)
    std::system(("ip netns del " + pod.netns + " 2>/dev/null").c_str());
  pods_.clear();
  std::system(("ip netns del " + switch_ns_ + " 2>/dev/null").c_str());
  if (fs::exists(cgroup_)) {
    // Probes that have not exited yet are moved out so the cgroup can go.
    std::ifstream procs(cgroup_ + "/cgroup.procs");
    std::string root = fs::path(cgroup_).parent_path().string() + "/cgroup.procs";
    for (std::string pid; std::getline(procs, pid);) {
      kill(std::stoi(pid), SIGKILL);
      std::ofstream(root) << pid;
    }
    for (int i = 0; i < 50 && rmdir(cgroup_.c_str()) != 0; i++)
      usleep(20000);
  }
}

std::string Lab::probe() const {
  return SLUICE_PROBE_PATH;
}

void Lab::AddClientAndServers() {
  AddPod("client", 10);
  AddPod("a", 2);
  AddPod("b", 3);
  Serve("a", {"10.211.0.2:8080"}, "a");
  Serve("b", {"10.211.0.3:8080"}, "b");
}

const Pod& Lab::AddPod(const std::string& name, int host) {
  const std::string peer = "p" + std::to_string(next_link_++);
  Pod pod{tag_ + "-" + name, "10.211.0." + std::to_string(host), "fd11::" + std::to_string(host),
          peer};
  pods_[name] = pod;  // registered first, so teardown removes it even if setup fails
  const std::string n = "ip -n " + pod.netns + " ";
  Sh("ip netns add " + pod.netns);
  Sh("ip -n " + switch_ns_ + " link add " + peer + " type veth peer name eth0 netns " + pod.netns);
  Sh("ip -n " + switch_ns_ + " link set " + peer + " master br0 up");
  Sh(n + "link set lo up && " + n + "link set eth0 up");
  Sh(n + "addr add " + pod.ip4 + "/24 dev eth0");
  Sh(n + "addr add " + pod.ip6 + "/64 dev eth0 nodad");
  return pods_[name];
}

void Lab::Serve(const std::string& pod, const std::vector<std::string>& listen,
                const std::string& id, const std::vector<std::string>& extra, bool in_cgroup) {
  std::vector<std::string> argv{probe(), "serve", "--netns", pods_.at(pod).netns, "--id", id};
  if (in_cgroup) {
    argv.push_back("--cgroup");
    argv.push_back(cgroup_);
  }
  argv.insert(argv.end(), extra.begin(), extra.end());
  for (const auto& l : listen) {
    argv.push_back("--listen");
    argv.push_back(l);
  }
  auto p = std::make_unique<Process>(argv);
  REQUIRE(p->ReadLine() == "listening");
  servers_.push_back(std::move(p));
}

nlohmann::json Lab::Connect(const std::string& pod, const std::string& to, int count,
                            const std::vector<std::string>& extra) {
  std::vector<std::string> argv{
      probe(), "connect", "--netns", pods_.at(pod).netns, "--cgroup",
      cgroup_, "--to",    to,        "--count",           std::to_string(count)};
  argv.insert(argv.end(), extra.begin(), extra.end());
  Process p(argv);
  auto line = p.ReadLine(60000);
  REQUIRE(p.Wait() == 0);
  return nlohmann::json::parse(line);
}

std::unique_ptr<Process> Lab::ConnectHold(const std::string& pod, const std::string& to, int count,
                                          nlohmann::json* report) {
  auto p = std::make_unique<Process>(
      std::vector<std::string>{probe(), "connect", "--netns", pods_.at(pod).netns, "--cgroup",
                               cgroup_, "--to", to, "--count", std::to_string(count), "--hold"});
  *report = nlohmann::json::parse(p->ReadLine(60000));
  return p;
}

std::unique_ptr<Process> Lab::ConnectAsync(const std::string& pod, const std::string& to,
                                           int count) {
  return std::make_unique<Process>(
      std::vector<std::string>{probe(), "connect", "--netns", pods_.at(pod).netns, "--cgroup",
                               cgroup_, "--to", to, "--count", std::to_string(count)});
}

DataplaneOptions Lab::options() const {
  DataplaneOptions o;
  o.pin_root = pin_root_;
  o.cgroup_path = cgroup_;
  o.sizes.frontends = 1024;
  o.sizes.backends = 4096;
  o.sizes.maglev_tables = 64;
  o.sizes.endpoints = 1024;
  o.sizes.enrolled_netns = 64;
  o.kernel_fallbacks = fallbacks_;
  o.reclaim_in_background = reclaim_in_background_;
  return o;
}

Dataplane& Lab::dp() {
  if (!dp_) {
    auto d = Dataplane::Open(options());
    INFO((d ? "" : d.error().message));
    REQUIRE(d);
    dp_ = std::move(*d);
  }
  return *dp_;
}

uint64_t Lab::Cookie(const std::string& pod) const {
  auto c = NetnsCookie("/run/netns/" + pods_.at(pod).netns);
  INFO((c ? "" : c.error().message));
  REQUIRE(c);
  return *c;
}

void Lab::Enrol(const std::string& pod, uint16_t proxy_port, bool registry_only) {
  const Pod& p = pods_.at(pod);
  EnrolmentInfo info{*IpAddress::Parse(p.ip4), *IpAddress::Parse(p.ip6), proxy_port, registry_only};
  auto r = dp().Enrol(Cookie(pod), info);
  INFO((r ? "" : r.error().message));
  REQUIRE(r);
}

Counters Lab::ReadCounters() {
  auto c = dp().ReadCounters();
  REQUIRE(c);
  return *c;
}

long Count(const nlohmann::json& report, const std::string& field, const std::string& key) {
  if (!report.contains(field) || !report[field].contains(key))
    return 0;
  return report[field][key].get<long>();
}

namespace {
// Runs f on a thread that has joined the network namespace `ns` (setns is per thread).
template <class F>
void InNetns(const std::string& ns, F f) {
  std::string error;
  std::thread t([&] {
    int fd = open(("/run/netns/" + ns).c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0 || setns(fd, CLONE_NEWNET) != 0) {
      error = "cannot enter netns " + ns;
      return;
    }
    close(fd);
    error = f();
  });
  t.join();
  INFO(error);
  REQUIRE(error.empty());
}
}  // namespace

int Lab::HostIfindex(const std::string& pod) {
  int ifindex = 0;
  InNetns(switch_ns_, [&]() -> std::string {
    ifindex = static_cast<int>(if_nametoindex(pods_.at(pod).host_if.c_str()));
    return ifindex ? "" : "no interface " + pods_.at(pod).host_if;
  });
  return ifindex;
}

void Lab::AttachPod(const std::string& pod, bool registry_only) {
  const int ifindex = HostIfindex(pod);
  Dataplane& d = dp();
  InNetns(switch_ns_, [&]() -> std::string {
    auto r = d.AttachPod(ifindex, registry_only);
    return r ? "" : r.error().message;
  });
}

void Lab::DetachPod(const std::string& pod) {
  const int ifindex = HostIfindex(pod);
  Dataplane& d = dp();
  InNetns(switch_ns_, [&]() -> std::string {
    auto r = d.DetachPod(ifindex);
    return r ? "" : r.error().message;
  });
}

double Share(const nlohmann::json& report, const std::string& server) {
  return static_cast<double>(Count(report, "by_server", server)) / report["ok"].get<double>();
}

EndpointSpec Ep(const std::string& addr, uint32_t weight) {
  auto a = SocketAddress::Parse(addr);
  REQUIRE(a);
  return EndpointSpec{*a, weight, {}};
}

ClusterSpec Cluster(const std::string& name, uint32_t weight, LbPolicy lb,
                    std::vector<EndpointSpec> eps) {
  return ClusterSpec{name, weight, lb, std::move(eps)};
}

ServiceSpec Service(const std::string& name, std::vector<std::string> vips, uint16_t port,
                    std::vector<ClusterSpec> clusters) {
  ServiceSpec s;
  s.name = name;
  for (const auto& v : vips) {
    auto ip = IpAddress::Parse(v);
    REQUIRE(ip);
    s.vips.push_back(*ip);
  }
  s.port = port;
  s.clusters = std::move(clusters);
  return s;
}

void Apply(Lab& lab, const ServiceSpec& spec) {
  auto r = lab.dp().UpsertService(spec);
  INFO((r ? "" : r.error().message));
  REQUIRE(r);
}

uint64_t Delta(const Counters& before, const Counters& after, sluice_counter c) {
  return after[c] - before[c];
}

std::string HttpGet(int port, const std::string& path, int* status) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_port = htons(static_cast<uint16_t>(port));
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string out;
  *status = 0;
  if (connect(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) == 0) {
    std::string req = "GET " + path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    if (write(fd, req.data(), req.size()) > 0) {
      char buf[8192];
      ssize_t n;
      while ((n = read(fd, buf, sizeof(buf))) > 0)
        out.append(buf, static_cast<size_t>(n));
    }
  }
  close(fd);
  if (out.size() > 12)
    *status = std::atoi(out.c_str() + 9);
  auto body = out.find("\r\n\r\n");
  return body == std::string::npos ? "" : out.substr(body + 4);
}

std::vector<std::string> AgentCapsPrefix() {
  const char* caps = std::getenv("SLUICE_AGENT_CAPS");
  if (caps == nullptr || *caps == '\0')
    return {};
  std::string bounding = "--bounding-set=-all";
  std::string c = caps;
  for (size_t start = 0; start <= c.size();) {
    size_t comma = c.find(',', start);
    std::string one =
        c.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    for (char& ch : one)
      ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (!one.empty())
      bounding += ",+" + one;
    if (comma == std::string::npos)
      break;
    start = comma + 1;
  }
  return {"setpriv", bounding, "--inh-caps=-all", "--"};
}

}  // namespace sluice::test
