#include "sluice/local/cluster.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstring>
#include <ctime>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <thread>

#include "images.h"
#include "sluice/istio/loader.h"
#include "sluice/loader/dataplane.h"
#include "sluice/local/cni_chain.h"
#include "sluice/local/derived.h"
#include "sluice/local/manifest.h"
#include "sluice/local/process.h"
#include "sluice/netns/netns.h"

namespace sluice::local {
namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

namespace {

constexpr const char* kNetwork = "sluice-local";
constexpr const char* kExternalNetwork = "sluice-external";
// SIGTERM, then SIGKILL after this long. Longer than sluice-agent's default drain (5 s),
// so a gateway or the node agent finishes the requests it has in flight; processes
// that exit on SIGTERM (all the stand-ins, sleep) go at once.
constexpr int kContainerGraceMs = 6000;
constexpr int kDaemonGraceMs = 8000;

std::string RandomHex(int n) {
  static std::mt19937_64 rng{std::random_device{}()};
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (int i = 0; i < n; ++i)
    out += kHex[rng() % 16];
  return out;
}

std::string Uuid() {
  std::string h = RandomHex(32);
  return h.substr(0, 8) + "-" + h.substr(8, 4) + "-" + h.substr(12, 4) + "-" + h.substr(16, 4) +
         "-" + h.substr(20);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Rewrites a file in place (same inode): pods see their bind-mounted /etc/hosts change.
Result<void> WriteInPlace(const std::string& path, const std::string& text) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0)
    return FailErrno("writing " + path, errno);
  bool ok = ::ftruncate(fd, 0) == 0 &&
            ::pwrite(fd, text.data(), text.size(), 0) == static_cast<ssize_t>(text.size());
  int err = errno;
  ::close(fd);
  if (!ok)
    return FailErrno("writing " + path, err);
  return {};
}

// Skips the write when the file already holds `text`: each write of a config file makes
// the control plane reload and re-push, and every pod's creation rewrites them all.
Result<void> WriteIfChanged(const std::string& path, const std::string& text, bool in_place) {
  if (ReadFile(path) == text)
    return {};
  return in_place ? WriteInPlace(path, text) : WriteFileAtomic(path, text);
}

std::string NatChain(const Settings& st) {
  return "SLUICE-LOCAL-" + st.bridge;
}

std::string FindNear(const std::string& self_dir, const std::vector<std::string>& rel) {
  for (const auto& r : rel) {
    std::error_code ec;
    fs::path p = fs::weakly_canonical(fs::path(self_dir) / r, ec);
    if (!ec && ::access(p.c_str(), X_OK) == 0)
      return p.string();
  }
  return "";
}

// Fills the program paths of a fresh cluster: next to sluicectl (installed), or where
// the build tree puts them.
Result<void> FindPrograms(Settings& st) {
  std::error_code ec;
  std::string self = fs::read_symlink("/proc/self/exe", ec).string();
  std::string dir = fs::path(self).parent_path().string();
  if (st.sluicectl_bin.empty())
    st.sluicectl_bin = self;
  if (st.agent_bin.empty())
    st.agent_bin = FindNear(dir, {"sluice-agent", "../daemon/sluice-agent"});
  if (st.apps_bin.empty())
    st.apps_bin = FindNear(dir, {"sluice-apps", "../apps/sluice-apps"});
  if (st.cni_bin_dir.empty()) {
    std::string cni = FindNear(dir, {"sluice-cni", "../../cni/sluice-cni"});
    if (!cni.empty())
      st.cni_bin_dir = fs::path(cni).parent_path().string();
  }
  if (st.images_json.empty() && !st.apps_bin.empty())
    st.images_json = (fs::path(st.apps_bin).parent_path() / "images.json").string();
  if (st.agent_bin.empty())
    return Fail("cannot find sluice-agent next to " + self + " (build target sluice-agent)");
  if (st.apps_bin.empty())
    return Fail("cannot find sluice-apps next to " + self + " (build target sluice-apps)");
  if (st.cni_bin_dir.empty())
    return Fail("cannot find sluice-cni near " + self + " (build target sluice-cni)");
  if (::access(st.images_json.c_str(), R_OK) != 0)
    return Fail("cannot read the image map " + st.images_json);
  return {};
}

struct Daemon {
  pid_t pid = 0;
  std::uint64_t start_time = 0;
};

Daemon ReadPidFile(const std::string& path) {
  Daemon d;
  std::ifstream in(path);
  in >> d.pid >> d.start_time;
  return d;
}

}  // namespace

// ------------------------------------------------------------------ helpers (public)

HttpReply HttpGet(const std::string& address, const std::string& path, int timeout_ms) {
  HttpReply reply;
  int fd = -1;
  if (address.rfind("unix:", 0) == 0) {
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    std::string p = address.substr(5);
    if (p.size() >= sizeof(sun.sun_path))
      return reply;
    std::memcpy(sun.sun_path, p.c_str(), p.size() + 1);
    fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&sun), sizeof(sun)) != 0) {
      ::close(fd);
      return reply;
    }
  } else {
    auto colon = address.rfind(':');
    if (colon == std::string::npos)
      return reply;
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_port = htons(static_cast<uint16_t>(std::atoi(address.c_str() + colon + 1)));
    if (inet_pton(AF_INET, address.substr(0, colon).c_str(), &sin.sin_addr) != 1)
      return reply;
    fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) != 0) {
      ::close(fd);
      return reply;
    }
  }
  std::string req = "GET " + path + " HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n";
  if (::write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) {
    ::close(fd);
    return reply;
  }
  std::string out;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  char buf[8192];
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd pfd{fd, POLLIN, 0};
    if (::poll(&pfd, 1, 100) <= 0)
      continue;
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n <= 0)
      break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  if (out.rfind("HTTP/", 0) == 0 && out.size() > 12)
    reply.status = std::atoi(out.c_str() + 9);
  auto body = out.find("\r\n\r\n");
  if (body != std::string::npos)
    reply.body = out.substr(body + 4);
  return reply;
}

std::string Tail(const std::string& file, int lines) {
  std::ifstream in(file);
  std::deque<std::string> last;
  std::string line;
  while (std::getline(in, line)) {
    last.push_back(line);
    if (static_cast<int>(last.size()) > lines)
      last.pop_front();
  }
  std::string out;
  for (const auto& l : last)
    out += "  | " + l + "\n";
  return out;
}

Result<std::string> Cgroup2Mount() {
  std::ifstream in("/proc/mounts");
  std::string dev, mnt, type, rest;
  while (in >> dev >> mnt >> type && std::getline(in, rest))
    if (type == "cgroup2")
      return mnt;
  return Fail("no cgroup2 file system in /proc/mounts (the local cluster needs cgroup v2)");
}

// ------------------------------------------------------------------ the runtime

struct Cluster::Impl {
  Cluster& c;
  ClusterState& s;
  std::ostream& out;
  std::optional<apps::ImageMap> images;
  std::string nat_applied_;  // the rules this process last installed

  Impl(Cluster& cluster, std::ostream& o) : c(cluster), s(cluster.state_), out(o) {}

  std::string StateDir() const { return s.state_dir; }
  std::string ConfigDir() const { return s.config_dir; }
  std::string Conflist() const { return StateDir() + "/cni/10-sluice.conflist"; }
  std::string ExternalConflist() const { return StateDir() + "/cni/20-sluice-external.conflist"; }

  std::function<bool(const PodRec&)> ReadyFn() const {
    return [this](const PodRec& p) { return Ready(p); };
  }

  bool Ready(const PodRec& p) const {
    if (p.containers.empty())
      return false;
    for (const auto& ct : p.containers)
      if (!Alive(ct.pid, ct.start_time))
        return false;
    return true;
  }

  Result<void> LoadImages() {
    if (images)
      return {};
    auto m = apps::ImageMap::Load(s.settings.images_json);
    SLUICE_RETURN_IF_ERROR(m);
    images = std::move(*m);
    return {};
  }

  // ---------------------------------------------------------------- files, NAT

  Result<void> WriteConflists() {
    auto net = ParseSubnet16(s.settings.pod_subnet, "pod subnet");
    SLUICE_RETURN_IF_ERROR(net);
    auto bridge = [&](const std::string& start, const std::string& end) {
      return ojson{{"type", "bridge"},
                   {"bridge", s.settings.bridge},
                   {"isGateway", true},
                   {"ipMasq", false},
                   {"hairpinMode", true},
                   {"ipam",
                    {{"type", "host-local"},
                     {"ranges", ojson::array({ojson::array({{{"subnet", net->Cidr()},
                                                             {"rangeStart", start},
                                                             {"rangeEnd", end},
                                                             {"gateway", net->Address(0, 1)}}})})},
                     {"routes", ojson::array({{{"dst", "0.0.0.0/0"}}})},
                     {"dataDir", StateDir() + "/cni/ipam"}}}};
    };
    ojson pods = {{"cniVersion", "1.0.0"},
                  {"name", kNetwork},
                  {"plugins", ojson::array({bridge(net->Address(0, 2), net->Address(254, 254)),
                                            {{"type", "sluice-cni"},
                                             {"agentSocket", StateDir() + "/cni.sock"},
                                             {"agentTimeoutMs", 5000}}})}};
    ojson ext = {{"cniVersion", "1.0.0"},
                 {"name", kExternalNetwork},
                 {"plugins", ojson::array({bridge(net->Address(255, 2), net->Address(255, 254))})}};
    if (auto r = WriteFileAtomic(Conflist(), pods.dump(2) + "\n"); !r)
      return r;
    return WriteFileAtomic(ExternalConflist(), ext.dump(2) + "\n");
  }

  Result<void> SetUpNat() {
    std::string chain = NatChain(s.settings);
    (void)RunTool({"iptables", "-w", "-t", "nat", "-N", chain});
    std::vector<std::vector<std::string>> rules = {
        {"PREROUTING", "-s", s.settings.pod_subnet, "-j", chain},
        {"POSTROUTING", "-s", s.settings.pod_subnet, "-d", s.settings.pod_subnet, "-m", "conntrack",
         "--ctstate", "DNAT", "-m", "comment", "--comment", chain, "-j", "MASQUERADE"}};
    for (const auto& rule : rules) {
      std::vector<std::string> check = {"iptables", "-w", "-t", "nat", "-C"};
      check.insert(check.end(), rule.begin(), rule.end());
      if (RunTool(check))
        continue;
      std::vector<std::string> add = {"iptables", "-w", "-t", "nat", "-A"};
      add.insert(add.end(), rule.begin(), rule.end());
      SLUICE_RETURN_IF_ERROR_CTX(RunTool(add), "kube-proxy stand-in");
    }
    return {};
  }

  static void TearDownNat(const Settings& st, std::vector<std::string>& problems) {
    std::string chain = NatChain(st);
    std::vector<std::vector<std::string>> rules = {
        {"PREROUTING", "-s", st.pod_subnet, "-j", chain},
        {"POSTROUTING", "-s", st.pod_subnet, "-d", st.pod_subnet, "-m", "conntrack", "--ctstate",
         "DNAT", "-m", "comment", "--comment", chain, "-j", "MASQUERADE"}};
    for (const auto& rule : rules) {
      std::vector<std::string> del = {"iptables", "-w", "-t", "nat", "-D"};
      del.insert(del.end(), rule.begin(), rule.end());
      while (RunTool(del)) {
      }
    }
    (void)RunTool({"iptables", "-w", "-t", "nat", "-F", chain});
    (void)RunTool({"iptables", "-w", "-t", "nat", "-X", chain});
    if (RunTool({"iptables", "-w", "-t", "nat", "-S", chain}))
      problems.push_back("NAT chain " + chain + " is still there");
  }

  // Everything derived from the state, rewritten after each change.
  Result<void> Sync() {
    std::vector<std::string> problems;
    auto ready = ReadyFn();
    std::string k8s = ConfigDir() + "/k8s";
    for (auto [file, text] : {std::pair{k8s + "/namespaces.yaml", NamespacesYaml(s)},
                              std::pair{k8s + "/services.yaml", ServicesYaml(s)},
                              std::pair{k8s + "/pods.yaml", PodsYaml(s, ready)}})
      if (auto r = WriteIfChanged(file, text, false); !r)
        problems.push_back(r.error().message);
    if (auto r = WriteIfChanged(StateDir() + "/labels.json", LabelsJson(s), false); !r)
      problems.push_back(r.error().message);
    for (const auto& p : s.pods)
      if (!p.host_network)
        if (auto r = WriteIfChanged(c.PodDir(p) + "/hosts", HostsFile(s, p.ns, p.name, p.ip), true);
            !r)
          problems.push_back(r.error().message);
    // The node agent's and control plane's view (they resolve DNS clusters such as an
    // external host's): every Service's FQDN and every external host.
    if (auto r = WriteIfChanged(StateDir() + "/hosts", HostsFile(s, "", "", ""), true); !r)
      problems.push_back(r.error().message);
    for (const auto& h : s.external_hosts)
      if (auto r =
              WriteIfChanged(c.PodDir(h.pod) + "/hosts", HostsFile(s, "", h.name, h.pod.ip), true);
          !r)
        problems.push_back(r.error().message);
    std::string rules = NatRules(s, NatChain(s.settings), ready);
    if (rules != nat_applied_) {
      if (auto r = RunTool({"iptables-restore", "-w", "--noflush"}, rules); !r)
        problems.push_back("kube-proxy stand-in: " + r.error().message);
      else
        nat_applied_ = rules;
    }
    if (auto r = SaveState(s); !r)
      problems.push_back(r.error().message);
    if (!problems.empty()) {
      std::string msg;
      for (const auto& p : problems)
        msg += (msg.empty() ? "" : "; ") + p;
      return Fail(msg);
    }
    return {};
  }

  // ---------------------------------------------------------------- pods

  CniChain Chain(const std::string& file) const {
    auto chain = CniChain::FromFile(file);
    chain->set_plugin_dirs({s.settings.cni_bin_dir, "/usr/lib/cni", "/opt/cni/bin"});
    chain->set_timeout(std::chrono::seconds(20));
    return std::move(*chain);
  }

  CniChain LoopbackChain() const {
    auto chain = CniChain::FromJson({{"cniVersion", "1.0.0"},
                                     {"name", "cni-loopback"},
                                     {"plugins", ojson::array({{{"type", "loopback"}}})}});
    chain->set_plugin_dirs({"/usr/lib/cni", "/opt/cni/bin"});
    return std::move(*chain);
  }

  RuntimeConf Runtime(const PodRec& p, const std::string& ifname = "eth0") const {
    RuntimeConf rt;
    rt.container_id = p.uid;
    rt.netns = p.netns;
    rt.ifname = ifname;
    if (!p.ns.empty()) {
      rt.args = {{"K8S_POD_NAMESPACE", p.ns},
                 {"K8S_POD_NAME", p.name},
                 {"K8S_POD_INFRA_CONTAINER_ID", p.uid},
                 {"K8S_POD_UID", p.uid}};
    }
    return rt;
  }

  std::string LogFile(const PodRec& p, const std::string& container) const {
    return StateDir() + "/logs/" + (p.ns.empty() ? "external" : p.ns) + "/" + p.name + "/" +
           container + ".log";
  }

  PodContext Context(const PodRec& p) const {
    PodContext ctx;
    ctx.netns = p.netns;
    ctx.cgroup = p.cgroup;
    if (!p.host_network) {
      ctx.hosts_file = c.PodDir(p) + "/hosts";
      ctx.resolv_file = StateDir() + "/resolv.conf";
    }
    return ctx;
  }

  // The pod's network: netns, cgroup, CNI ADD. On failure everything it made is undone.
  Result<void> MakeSandbox(PodRec& p, bool external) {
    std::string cg_parent = s.settings.cgroup_dir + "/" + (external ? "external" : p.ns);
    p.cgroup = cg_parent + "/" + p.name;
    std::error_code ec;
    fs::create_directories(p.cgroup, ec);
    if (ec)
      return Fail("cgroup " + p.cgroup + ": " + ec.message());
    fs::create_directories(c.PodDir(p), ec);
    if (p.host_network) {
      p.ip = ParseSubnet16(s.settings.pod_subnet, "pod subnet")->Address(0, 1);
      return {};
    }
    std::string name = s.settings.netns_prefix + (external ? "ext" : p.ns) + "-" + p.name;
    p.netns_name = name;
    p.netns = "/var/run/netns/" + name;
    SLUICE_RETURN_IF_ERROR_CTX(RunTool({"ip", "netns", "add", name}), "pod " + p.ns + "/" + p.name);
    if (auto r = WriteInPlace(c.PodDir(p) + "/hosts", HostsFile(s, p.ns, p.name, "")); !r)
      return r;
    SLUICE_RETURN_IF_ERROR_CTX(LoopbackChain().Add(Runtime(p, "lo")),
                               "pod " + p.ns + "/" + p.name + ": loopback");
    CniChain chain = Chain(external ? ExternalConflist() : Conflist());
    RuntimeConf rt = Runtime(p);
    p.cni_added = true;  // from here on, DEL is owed even if ADD fails half-way
    if (auto r = SaveState(s); !r)
      return r;
    auto result = chain.Add(rt);
    if (!result)
      return Wrap("pod " + (p.ns.empty() ? p.name : p.ns + "/" + p.name) + ": CNI ADD",
                  result.error());
    ResultCache cache(StateDir() + "/cni/results");
    (void)cache.Save(chain.name(), rt, *result);
    for (const auto& ip : result->value("ips", ojson::array())) {
      std::string addr = ip.value("address", "");
      if (addr.find('.') != std::string::npos) {
        p.ip = addr.substr(0, addr.find('/'));
        break;
      }
    }
    if (p.ip.empty())
      return Fail("pod " + p.ns + "/" + p.name + ": the CNI result has no IPv4 address");
    return WriteInPlace(c.PodDir(p) + "/hosts", HostsFile(s, p.ns, p.name, p.ip));
  }

  // Stops the pod's processes and releases its network; never fails half-way (each step
  // is tried; problems are returned together).
  std::vector<std::string> DestroySandbox(PodRec& p, bool external) {
    std::vector<std::string> problems;
    for (const auto& ct : p.containers)
      StopProcess(ct.pid, ct.start_time, kContainerGraceMs);
    if (!p.cgroup.empty())
      if (auto r = KillCgroup(p.cgroup, 2000); !r)
        problems.push_back(r.error().message);
    if (p.cni_added) {
      CniChain chain = Chain(external ? ExternalConflist() : Conflist());
      RuntimeConf rt = Runtime(p);
      ResultCache cache(StateDir() + "/cni/results");
      auto cached = cache.Load(chain.name(), rt);
      const ojson* prev = (cached && cached->has_value()) ? &**cached : nullptr;
      if (auto r = chain.Del(rt, prev); !r)
        problems.push_back("CNI DEL: " + r.error().message);
      (void)LoopbackChain().Del(Runtime(p, "lo"), nullptr);
      (void)cache.Remove(chain.name(), rt);
      p.cni_added = false;
    }
    if (!p.netns_name.empty() && fs::exists(p.netns)) {
      // Anything still inside (an `exec` left running) goes with the namespace.
      if (auto pids = RunTool({"ip", "netns", "pids", p.netns_name}); pids) {
        std::istringstream in(*pids);
        pid_t pid;
        while (in >> pid)
          ::kill(pid, SIGKILL);
      }
      if (auto r = RunTool({"ip", "netns", "del", p.netns_name}); !r)
        problems.push_back(r.error().message);
    }
    std::error_code ec;
    fs::remove_all(c.PodDir(p), ec);
    fs::remove_all(fs::path(LogFile(p, "x")).parent_path(), ec);
    return problems;
  }

  // The container's command line from the image map; errors name the pod and image.
  Result<Command> ContainerCommand(const PodRec& p, const ContainerSpec& spec) {
    const apps::ImageEntry* entry = images->Find(spec.image);
    std::string where = "pod " + p.ns + "/" + p.name + " container " + spec.name;
    if (!entry)
      return Fail(where + ": image " + spec.image + " has no stand-in on the local cluster (see " +
                  s.settings.images_json + ")");
    Command cmd;
    cmd.env = BaseEnv();
    for (const auto& [k, v] : entry->env)
      cmd.env[k] = v;
    std::optional<int> port;
    if (!spec.ports.empty())
      port = spec.ports.front().port;
    if (entry->command) {
      cmd.argv = apps::ExpandCommand(*entry, s.settings.apps_bin, port, spec.args);
    } else {
      cmd.argv = spec.command;
      cmd.argv.insert(cmd.argv.end(), spec.args.begin(), spec.args.end());
      if (cmd.argv.empty())
        return Fail(where + ": image " + spec.image +
                    " runs the container's own command, and the container gives none "
                    "(command/args)");
    }
    std::string labels;
    for (const auto& [k, v] : p.labels)
      labels += (labels.empty() ? "" : ",") + k + "=" + v;
    for (auto& arg : cmd.argv) {
      for (auto [key, value] :
           {std::pair<std::string, std::string>{"{sluice_agent}", s.settings.agent_bin},
            {"{sluice_apps}", s.settings.apps_bin},
            {"{pod_name}", p.name},
            {"{pod_namespace}", p.ns},
            {"{pod_ip}", p.ip},
            {"{pod_labels}", labels},
            {"{xds}", s.xds},
            {"{admin}", "unix:" + c.PodDir(p) + "/admin.sock"}}) {
        for (auto pos = arg.find(key); pos != std::string::npos;
             pos = arg.find(key, pos + value.size()))
          arg.replace(pos, key.size(), value);
      }
    }
    for (const auto& e : spec.env)
      cmd.env[e.name] = e.value;
    cmd.env["HOSTNAME"] = p.name;
    cmd.env["POD_NAME"] = p.name;
    cmd.env["POD_NAMESPACE"] = p.ns;
    cmd.env["INSTANCE_IP"] = p.ip;
    cmd.log = LogFile(p, spec.name);
    return cmd;
  }

  // Waits (up to 5 s) until the pod's declared ports accept connections on its address
  // (from inside its namespace, outside its cgroup: no Sluice hook sees it), or a container
  // died: `apply` returns with pods that answer, as a readiness probe would.
  void WaitPorts(const PodRec& p) {
    if (p.netns.empty() || p.ports.empty())
      return;
    auto ns = netns::Netns::Open(p.netns);
    if (!ns)
      return;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    for (const auto& cp : p.ports) {
      bool up = false;
      while (!up && std::chrono::steady_clock::now() < deadline && Ready(p)) {
        (void)ns->Run([&] {
          int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
          sockaddr_in sin{};
          sin.sin_family = AF_INET;
          sin.sin_port = htons(static_cast<uint16_t>(cp.port));
          inet_pton(AF_INET, p.ip.c_str(), &sin.sin_addr);
          up = ::connect(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) == 0;
          ::close(fd);
        });
        if (!up)
          std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    }
  }

  Result<void> CreatePod(const std::string& ns, const std::string& name, const std::string& owner,
                         const PodSpec& spec) {
    if (auto r = LoadImages(); !r)
      return r;
    PodRec p;
    p.ns = ns;
    p.name = name;
    p.uid = Uuid();
    p.owner = owner;
    p.spec_hash = spec.hash;
    p.labels = spec.labels;
    p.host_network = spec.host_network;
    p.created = std::time(nullptr);
    for (const auto& ct : spec.containers)
      p.ports.insert(p.ports.end(), ct.ports.begin(), ct.ports.end());
    // Check every image before making anything.
    for (const auto& ct : spec.containers)
      if (!images->Find(ct.image))
        return Fail("pod " + ns + "/" + name + " container " + ct.name + ": image " + ct.image +
                    " has no stand-in on the local cluster (see " + s.settings.images_json + ")");
    s.pods.push_back(p);
    // The agent learns the pod's labels before CNI ADD hands it the pod.
    if (auto r = WriteFileAtomic(StateDir() + "/labels.json", LabelsJson(s)); !r)
      return r;
    PodRec& rec = s.pods.back();
    auto fail = [&](const Error& e) -> Result<void> {
      PodRec copy = rec;
      (void)DestroySandbox(copy, false);
      std::erase_if(s.pods, [&](const PodRec& x) { return x.ns == ns && x.name == name; });
      (void)SaveState(s);
      return std::unexpected(e);
    };
    if (auto r = MakeSandbox(rec, false); !r)
      return fail(r.error());
    std::error_code ec;
    fs::create_directories(fs::path(LogFile(rec, "x")).parent_path(), ec);
    for (const auto& ct : spec.containers) {
      auto cmd = ContainerCommand(rec, ct);
      if (!cmd)
        return fail(cmd.error());
      if (images->Find(ct.image)->standin == "gateway")
        rec.admin = "unix:" + c.PodDir(rec) + "/admin.sock";
      ContainerRec cr{ct.name, ct.image, 0, 0, cmd->log, c.PodDir(rec) + "/" + ct.name + ".exit"};
      auto started = StartInPod(Context(rec), *cmd, cr.exit_file);
      if (!started)
        return fail(Error{"pod " + ns + "/" + name + " container " + ct.name + ": " +
                          started.error().message});
      cr.pid = started->pid;
      cr.start_time = started->start_time;
      rec.containers.push_back(cr);
      if (auto r = SaveState(s); !r)
        return fail(r.error());
    }
    // The control plane learns of the pod now (a gateway's listeners depend on it), then
    // we wait for it to listen.
    if (auto r = Sync(); !r)
      out << "warning: " << r.error().message << "\n";
    // A gateway listens on a port only once a Gateway asks for it: no waiting for those.
    if (rec.admin.empty())
      WaitPorts(rec);
    return {};
  }

  Result<void> DeletePod(const std::string& ns, const std::string& name) {
    PodRec* p = s.FindPod(ns, name);
    if (!p)
      return {};
    PodRec copy = *p;
    auto problems = DestroySandbox(copy, false);
    std::erase_if(s.pods, [&](const PodRec& x) { return x.ns == ns && x.name == name; });
    if (!problems.empty()) {
      std::string msg = "pod " + ns + "/" + name + ":";
      for (const auto& pr : problems)
        msg += " " + pr + ";";
      return Fail(msg);
    }
    return {};
  }

  Result<void> CreateExternal(ExternalHostRec h) {
    if (auto r = LoadImages(); !r)
      return r;
    std::string cert_dir = StateDir() + "/certs";
    std::vector<std::string> certs = {s.settings.apps_bin, "certs", "--out", cert_dir};
    for (const auto& n : h.hostnames) {
      certs.push_back("--host");
      certs.push_back(n);
    }
    SLUICE_RETURN_IF_ERROR_CTX(RunTool(certs), "ExternalHost " + h.name);
    std::string safe;
    for (char ch : h.name)
      safe += (std::isalnum(static_cast<unsigned char>(ch)) || ch == '-') ? ch : '-';
    h.pod = PodRec{};
    h.pod.name = safe;
    h.pod.uid = Uuid();
    h.pod.owner = "ExternalHost/" + h.name;
    h.pod.created = std::time(nullptr);
    s.external_hosts.push_back(h);
    ExternalHostRec& rec = s.external_hosts.back();
    auto fail = [&](const Error& e) -> Result<void> {
      PodRec copy = rec.pod;
      (void)DestroySandbox(copy, true);
      std::erase_if(s.external_hosts, [&](const ExternalHostRec& x) { return x.name == h.name; });
      (void)SaveState(s);
      return std::unexpected(e);
    };
    if (auto r = MakeSandbox(rec.pod, true); !r)
      return fail(r.error());
    std::error_code ec;
    fs::create_directories(fs::path(LogFile(rec.pod, "x")).parent_path(), ec);
    Command cmd;
    cmd.env = BaseEnv();
    const std::string& first = h.hostnames.front();
    cmd.argv = {s.settings.apps_bin,
                "external",
                "--http",
                std::to_string(h.http_port),
                "--https",
                std::to_string(h.https_port),
                "--cert",
                cert_dir + "/" + first + ".pem",
                "--key",
                cert_dir + "/" + first + "-key.pem"};
    if (h.redirect_https)
      cmd.argv.push_back("--redirect-https");
    cmd.log = LogFile(rec.pod, "external");
    ContainerRec cr{
        "external", "sluice-apps external", 0, 0, cmd.log, c.PodDir(rec.pod) + "/external.exit"};
    auto started = StartInPod(Context(rec.pod), cmd, cr.exit_file);
    if (!started)
      return fail(Error{"ExternalHost " + h.name + ": " + started.error().message});
    cr.pid = started->pid;
    cr.start_time = started->start_time;
    rec.pod.containers.push_back(cr);
    rec.pod.ports = {{"http", h.http_port}, {"https", h.https_port}};
    WaitPorts(rec.pod);
    return SaveState(s);
  }

  Result<void> DeleteExternal(const std::string& name) {
    for (auto& h : s.external_hosts) {
      if (h.name != name)
        continue;
      PodRec copy = h.pod;
      auto problems = DestroySandbox(copy, true);
      std::erase_if(s.external_hosts, [&](const ExternalHostRec& x) { return x.name == name; });
      if (!problems.empty())
        return Fail("ExternalHost " + name + ": " + problems.front());
      return {};
    }
    return {};
  }

  // ---------------------------------------------------------------- apply / delete

  std::string IstioFile(const IstioObj& o) const {
    if (o.kind == "ConfigMap")
      return MeshFile();
    std::string name = o.kind + "-" + o.ns + "-" + o.name;
    for (char& ch : name)
      if (!(std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '.' || ch == '_'))
        ch = '_';
    return ConfigDir() + "/istio/" + name + ".yaml";
  }

  std::string MeshFile() const { return ConfigDir() + "/k8s/mesh.yaml"; }

  // Istio's demo profile (what the tasks are written against): access logs on stdout.
  Result<void> WriteDefaultMesh() {
    return WriteFileAtomic(
        MeshFile(),
        "# Written by sluicectl local: the mesh config of Istio's demo profile.\n"
        "# Apply a ConfigMap istio-system/istio to replace it.\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: istio\n"
        "  namespace: istio-system\ndata:\n  mesh: |-\n"
        "    accessLogFile: /dev/stdout\n");
  }

  Result<void> ApplyOne(const Document& d) {
    return std::visit(
        [&](const auto& o) -> Result<void> {
          using T = std::decay_t<decltype(o)>;
          if constexpr (std::is_same_v<T, NamespaceObj>) {
            NamespaceRec* n = s.FindNamespace(o.ns.name);
            if (!n) {
              s.namespaces.push_back(o.ns);
              out << "namespace/" << o.ns.name << " created\n";
            } else {
              for (const auto& [k, v] : o.ns.labels)
                n->labels[k] = v;
              out << "namespace/" << o.ns.name << " configured\n";
            }
          } else if constexpr (std::is_same_v<T, ServiceObj>) {
            ServiceRec svc = o.svc;
            ServiceRec* cur = s.FindService(svc.ns, svc.name);
            if (cur) {
              if (!svc.cluster_ip.empty() && svc.cluster_ip != cur->cluster_ip)
                return Fail("spec.clusterIP: is immutable (the Service has " + cur->cluster_ip +
                            ")");
              svc.cluster_ip = cur->cluster_ip;
              *cur = svc;
              out << "service/" << svc.name << " configured (" << svc.cluster_ip << ")\n";
            } else {
              if (svc.cluster_ip != "None") {
                auto vip = AllocateVip(s, svc.cluster_ip);
                SLUICE_RETURN_IF_ERROR(vip);
                svc.cluster_ip = *vip;
              }
              s.services.push_back(svc);
              out << "service/" << svc.name << " created (" << svc.cluster_ip << ")\n";
            }
          } else if constexpr (std::is_same_v<T, PodObj>) {
            if (auto r = CheckImages(o.spec, "spec"); !r)
              return r;
            if (PodRec* cur = s.FindPod(o.ns, o.name)) {
              if (cur->spec_hash == o.spec.hash) {
                out << "pod/" << o.name << " unchanged\n";
                return {};
              }
              if (auto r = DeletePod(o.ns, o.name); !r)
                return r;
            }
            if (auto r = CreatePod(o.ns, o.name, "Pod/" + o.name, o.spec); !r)
              return r;
            out << "pod/" << o.name << " created (" << s.FindPod(o.ns, o.name)->ip << ")\n";
          } else if constexpr (std::is_same_v<T, DeploymentObj>) {
            return ApplyDeployment(o);
          } else if constexpr (std::is_same_v<T, ExternalHostObj>) {
            for (const auto& h : s.external_hosts)
              if (h.name == o.host.name) {
                if (h.spec_hash == o.host.spec_hash) {
                  out << "externalhost/" << o.host.name << " unchanged\n";
                  return {};
                }
                if (auto r = DeleteExternal(o.host.name); !r)
                  return r;
                break;
              }
            if (auto r = CreateExternal(o.host); !r)
              return r;
            for (const auto& h : s.external_hosts)
              if (h.name == o.host.name)
                out << "externalhost/" << o.host.name << " created (" << h.pod.ip << ")\n";
          } else if constexpr (std::is_same_v<T, IstioObj>) {
            return ApplyIstio(o, d);
          } else if constexpr (std::is_same_v<T, IgnoredObj>) {
            out << o.kind << "/" << o.name
                << " accepted (the local cluster has nothing to do for a " << o.kind << ")\n";
          }
          return {};
        },
        d.object);
  }

  Result<void> ApplyIstio(const IstioObj& o, const Document& d) {
    // Validated by the translator's own loader first: a bad resource is refused here,
    // with the translator's message, rather than found later in the xds server's log.
    istio::LoadResult check;
    istio::LoadText(o.text, d.file, check);
    if (!check.errors.empty()) {
      std::string msg = check.errors.front();
      // The loader numbers documents within the text it was given (always 1).
      auto pos = msg.find(d.file + ": document 1");
      if (pos == 0)
        msg = msg.substr(d.file.size() + std::string(": document 1").size());
      while (!msg.empty() && msg.front() != ':' && msg.front() != ' ')
        msg.erase(0, 1);
      auto colon = msg.find(": ");
      return Fail(colon == std::string::npos ? msg : msg.substr(colon + 2));
    }
    std::string text = o.text;
    if (text.find("namespace:") == std::string::npos && o.ns != "default") {
      // Written without a namespace and applied with -n: say so in the copy.
      auto meta = text.find("metadata:");
      if (meta != std::string::npos)
        text.insert(text.find('\n', meta) + 1, "  namespace: " + o.ns + "\n");
    }
    std::string file = IstioFile(o);
    bool existed = fs::exists(file);
    if (auto r = WriteFileAtomic(file, "# From " + d.file + "\n" + text); !r)
      return r;
    std::erase_if(s.configs, [&](const ConfigRec& c2) { return c2.file == file; });
    s.configs.push_back({o.kind, o.ns, o.name, file});
    std::string kind_lower;
    for (char ch : o.kind)
      kind_lower += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    std::string group = o.api.substr(0, o.api.find('/'));
    out << kind_lower << (o.kind == "ConfigMap" ? "" : "." + group) << "/" << o.name
        << (existed ? " configured" : " created") << "\n";
    return {};
  }

  // Every image must have a stand-in before anything of the document is made.
  Result<void> CheckImages(const PodSpec& spec, const std::string& field) {
    if (auto r = LoadImages(); !r)
      return r;
    for (std::size_t i = 0; i < spec.containers.size(); ++i)
      if (!images->Find(spec.containers[i].image))
        return Fail(field + ".containers[" + std::to_string(i) +
                    "].image: " + spec.containers[i].image +
                    " has no stand-in on the local cluster (see " + s.settings.images_json + ")");
    return {};
  }

  Result<void> ApplyDeployment(const DeploymentObj& o) {
    if (auto r = CheckImages(o.spec, "spec.template.spec"); !r)
      return r;
    DeploymentRec* rec = nullptr;
    for (auto& d : s.deployments)
      if (d.ns == o.ns && d.name == o.name)
        rec = &d;
    std::string owner = "Deployment/" + o.name;
    auto owned = [&] {
      std::vector<std::string> names;
      for (const auto& p : s.pods)
        if (p.ns == o.ns && p.owner == owner)
          names.push_back(p.name);
      return names;
    };
    bool changed = rec && rec->spec_hash != o.spec.hash;
    if (changed) {
      for (const auto& n : owned())
        if (auto r = DeletePod(o.ns, n); !r)
          return r;
    }
    if (!rec) {
      s.deployments.push_back({o.ns, o.name, o.spec.hash, o.replicas});
      rec = &s.deployments.back();
    }
    rec->spec_hash = o.spec.hash;
    rec->replicas = o.replicas;
    auto names = owned();
    while (static_cast<int>(names.size()) > o.replicas) {
      if (auto r = DeletePod(o.ns, names.back()); !r)
        return r;
      names.pop_back();
    }
    int created = 0;
    for (unsigned seed = static_cast<unsigned>(std::random_device{}());
         static_cast<int>(names.size()) < o.replicas; ++seed) {
      std::string pod = PodNameFor(o.name, seed);
      if (s.FindPod(o.ns, pod))
        continue;
      if (auto r = CreatePod(o.ns, pod, owner, o.spec); !r)
        return r;
      out << "  pod/" << pod << " created (" << s.FindPod(o.ns, pod)->ip << ")\n";
      names.push_back(pod);
      ++created;
    }
    out << "deployment.apps/" << o.name
        << (changed   ? " configured"
            : created ? " created"
                      : " unchanged")
        << " (" << o.replicas << " replica" << (o.replicas == 1 ? "" : "s") << ")\n";
    return {};
  }

  ApplyReport Apply(const std::vector<std::string>& files, const std::string& default_ns) {
    ApplyReport report;
    ManifestSet set = LoadManifests(files, default_ns);
    report.errors = set.errors;
    report.warnings = set.warnings;
    // Kubernetes does not care about order within a manifest; neither do we: namespaces
    // first, then what pods need (Services for their hosts file, external hosts), the
    // Istio resources (a gateway pod opens its listeners once its Gateway is there), then
    // pods.
    auto rank = [](const Document& d) {
      return std::visit(
          [](const auto& o) {
            using T = std::decay_t<decltype(o)>;
            if constexpr (std::is_same_v<T, NamespaceObj>)
              return 0;
            else if constexpr (std::is_same_v<T, ServiceObj> || std::is_same_v<T, ExternalHostObj>)
              return 1;
            else if constexpr (std::is_same_v<T, PodObj> || std::is_same_v<T, DeploymentObj>)
              return 3;
            else
              return 2;
          },
          d.object);
    };
    std::stable_sort(set.documents.begin(), set.documents.end(),
                     [&](const Document& a, const Document& b) { return rank(a) < rank(b); });
    for (const auto& d : set.documents) {
      std::string ns = std::visit(
          [](const auto& o) -> std::string {
            using T = std::decay_t<decltype(o)>;
            if constexpr (std::is_same_v<T, NamespaceObj>)
              return "";
            else if constexpr (std::is_same_v<T, ServiceObj>)
              return o.svc.ns;
            else if constexpr (std::is_same_v<T, ExternalHostObj>)
              return "";
            else
              return o.ns;
          },
          d.object);
      if (!ns.empty() && !s.FindNamespace(ns)) {
        report.errors.push_back(d.where + ": metadata.namespace: namespace \"" + ns +
                                "\" does not exist (apply a Namespace first)");
        continue;
      }
      if (auto r = ApplyOne(d); !r) {
        std::string msg = r.error().message;
        // Field errors from here name the field; runtime errors name the pod.
        report.errors.push_back(d.where + ": " + msg);
      }
    }
    if (auto r = Sync(); !r)
      report.errors.push_back(r.error().message);
    return report;
  }

  ApplyReport Delete(const std::vector<std::string>& files, const std::string& default_ns) {
    ApplyReport report;
    ManifestSet set = LoadManifests(files, default_ns);
    report.errors = set.errors;
    report.warnings = set.warnings;
    // Reverse of apply: Istio resources, pods, Services, namespaces last.
    std::reverse(set.documents.begin(), set.documents.end());
    for (const auto& d : set.documents) {
      auto r = std::visit(
          [&](const auto& o) -> Result<void> {
            using T = std::decay_t<decltype(o)>;
            if constexpr (std::is_same_v<T, NamespaceObj>) {
              return DeleteNamespace(o.ns.name);
            } else if constexpr (std::is_same_v<T, ServiceObj>) {
              auto n = std::erase_if(s.services, [&](const ServiceRec& x) {
                return x.ns == o.svc.ns && x.name == o.svc.name;
              });
              out << "service/" << o.svc.name << (n ? " deleted\n" : " not found\n");
            } else if constexpr (std::is_same_v<T, PodObj>) {
              bool found = s.FindPod(o.ns, o.name) != nullptr;
              if (auto r2 = DeletePod(o.ns, o.name); !r2)
                return r2;
              out << "pod/" << o.name << (found ? " deleted\n" : " not found\n");
            } else if constexpr (std::is_same_v<T, DeploymentObj>) {
              std::vector<std::string> names;
              for (const auto& p : s.pods)
                if (p.ns == o.ns && p.owner == "Deployment/" + o.name)
                  names.push_back(p.name);
              for (const auto& n : names)
                if (auto r2 = DeletePod(o.ns, n); !r2)
                  return r2;
              auto n = std::erase_if(s.deployments, [&](const DeploymentRec& x) {
                return x.ns == o.ns && x.name == o.name;
              });
              out << "deployment.apps/" << o.name << (n ? " deleted" : " not found") << " ("
                  << names.size() << " pods)\n";
            } else if constexpr (std::is_same_v<T, ExternalHostObj>) {
              if (auto r2 = DeleteExternal(o.host.name); !r2)
                return r2;
              out << "externalhost/" << o.host.name << " deleted\n";
            } else if constexpr (std::is_same_v<T, IstioObj>) {
              std::string file = IstioFile(o);
              std::error_code ec;
              bool found = fs::exists(file, ec);
              if (o.kind == "ConfigMap") {
                if (auto r2 = WriteDefaultMesh(); !r2)
                  return r2;
              } else {
                fs::remove(file, ec);
              }
              std::erase_if(s.configs, [&](const ConfigRec& c2) { return c2.file == file; });
              out << o.kind << "/" << o.name << (found ? " deleted\n" : " not found\n");
            }
            return {};
          },
          d.object);
      if (!r)
        report.errors.push_back(d.where + ": " + r.error().message);
    }
    if (auto r = Sync(); !r)
      report.errors.push_back(r.error().message);
    return report;
  }

  Result<void> DeleteNamespace(const std::string& ns) {
    if (ns == "default" || ns == "istio-system")
      return Fail("namespace " + ns + " always exists; it cannot be deleted");
    std::vector<std::string> names;
    for (const auto& p : s.pods)
      if (p.ns == ns)
        names.push_back(p.name);
    std::string problems;
    for (const auto& n : names)
      if (auto r = DeletePod(ns, n); !r)
        problems += r.error().message + "; ";
    std::erase_if(s.services, [&](const ServiceRec& x) { return x.ns == ns; });
    std::erase_if(s.deployments, [&](const DeploymentRec& x) { return x.ns == ns; });
    std::erase_if(s.configs, [&](const ConfigRec& x) {
      if (x.ns != ns)
        return false;
      std::error_code ec;
      fs::remove(x.file, ec);
      return true;
    });
    auto n = std::erase_if(s.namespaces, [&](const NamespaceRec& x) { return x.name == ns; });
    out << "namespace/" << ns << (n ? " deleted\n" : " not found\n");
    if (!problems.empty())
      return Fail(problems);
    return {};
  }
};

// ------------------------------------------------------------------ Cluster

Cluster::Cluster(Cluster&& o) noexcept : state_(std::move(o.state_)), lock_fd_(o.lock_fd_) {
  o.lock_fd_ = -1;
}

Cluster::~Cluster() {
  if (lock_fd_ >= 0)
    ::close(lock_fd_);
}

std::string Cluster::PodDir(const PodRec& pod) const {
  return state_.state_dir + "/pods/" + (pod.ns.empty() ? "external" : pod.ns) + "/" + pod.name;
}

namespace {
Result<int> TakeLock(const std::string& state_dir) {
  std::string path = state_dir + "/lock";
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0)
    return FailErrno("lock " + path, errno);
  if (::flock(fd, LOCK_EX) != 0) {
    int err = errno;
    ::close(fd);
    return FailErrno("lock " + path, err);
  }
  return fd;
}
}  // namespace

Result<std::optional<Cluster>> Cluster::Open(const std::string& state_dir) {
  if (!fs::exists(state_dir + "/state.json"))
    return std::optional<Cluster>{};
  auto lock = TakeLock(state_dir);
  SLUICE_RETURN_IF_ERROR(lock);
  auto st = LoadState(state_dir);
  if (!st) {
    ::close(*lock);
    return std::unexpected(st.error());
  }
  if (!*st) {
    ::close(*lock);
    return std::optional<Cluster>{};
  }
  return std::optional<Cluster>{Cluster(std::move(**st), *lock)};
}

Result<std::optional<Cluster>> Cluster::OpenReadOnly(const std::string& state_dir) {
  auto st = LoadState(state_dir);
  SLUICE_RETURN_IF_ERROR(st);
  if (!*st)
    return std::optional<Cluster>{};
  return std::optional<Cluster>{Cluster(std::move(**st), -1)};
}

Result<ApplyReport> Cluster::Apply(const std::vector<std::string>& files,
                                   const std::string& default_ns, std::ostream& out) {
  Impl impl(*this, out);
  return impl.Apply(files, default_ns);
}

Result<ApplyReport> Cluster::Delete(const std::vector<std::string>& files,
                                    const std::string& default_ns, std::ostream& out) {
  Impl impl(*this, out);
  return impl.Delete(files, default_ns);
}

Result<void> Cluster::LabelNamespace(const std::string& name,
                                     const std::vector<std::string>& changes, std::ostream& out) {
  NamespaceRec* ns = state_.FindNamespace(name);
  if (!ns)
    return Fail("namespace \"" + name + "\" not found");
  Labels labels = ns->labels;
  for (const auto& c : changes) {
    auto kv = ParseLabelArg(c);
    SLUICE_RETURN_IF_ERROR(kv);
    if (kv->second)
      labels[kv->first] = *kv->second;
    else
      labels.erase(kv->first);
  }
  ns->labels = labels;
  Impl impl(*this, out);
  if (auto r = impl.Sync(); !r)
    return r;
  out << "namespace/" << name << " labeled\n";
  return {};
}

PodStatus Cluster::StatusOf(const PodRec& pod) const {
  PodStatus st;
  st.total = static_cast<int>(pod.containers.size());
  bool error = false, pending = pod.containers.empty();
  for (const auto& c : pod.containers) {
    if (Alive(c.pid, c.start_time)) {
      st.ready++;
      continue;
    }
    std::string exit = ReadFile(c.exit_file);
    if (exit.rfind("exited 0", 0) != 0)
      error = true;
  }
  if (pending)
    st.phase = "Pending";
  else if (st.ready == st.total)
    st.phase = "Running";
  else if (error)
    st.phase = "Error";
  else
    st.phase = "Completed";
  return st;
}

Result<const PodRec*> Cluster::ResolvePod(const std::string& ns, const std::string& ref) const {
  std::string name = ref;
  if (name.rfind("pod/", 0) == 0)
    name = name.substr(4);
  for (const char* prefix : {"deploy/", "deployment/", "deployments/"}) {
    if (name.rfind(prefix, 0) != 0)
      continue;
    std::string dep = name.substr(std::strlen(prefix));
    const PodRec* first = nullptr;
    for (const auto& p : state_.pods) {
      if (p.ns != ns || p.owner != "Deployment/" + dep)
        continue;
      if (StatusOf(p).phase == "Running")
        return &p;
      if (!first)
        first = &p;
    }
    if (first)
      return first;
    return Fail("deployment \"" + dep + "\" has no pods in namespace " + ns);
  }
  for (const auto& p : state_.pods)
    if (p.ns == ns && p.name == name)
      return &p;
  return Fail("pod \"" + name + "\" not found in namespace " + ns);
}

Result<int> Cluster::Exec(const PodRec& pod, const std::vector<std::string>& argv) {
  std::ostringstream sink;
  Impl impl(*this, sink);
  Command cmd;
  cmd.argv = argv;
  cmd.env = BaseEnv();
  cmd.env["HOSTNAME"] = pod.name;
  cmd.env["POD_NAME"] = pod.name;
  cmd.env["POD_NAMESPACE"] = pod.ns;
  cmd.env["INSTANCE_IP"] = pod.ip;
  if (const char* term = std::getenv("TERM"))
    cmd.env["TERM"] = term;
  PodContext ctx = impl.Context(pod);
  // Not under our lock while the command runs (it may run for long).
  return RunInPod(ctx, cmd);
}

// ------------------------------------------------------------------ up / down

namespace {

// The bridge plugin turns IP forwarding on for a gateway bridge (the host routes for the
// pods). `up` writes down what it was before, `down` puts it back.
constexpr const char* kForwardingSysctls[] = {"/proc/sys/net/ipv4/ip_forward",
                                              "/proc/sys/net/ipv6/conf/all/forwarding"};

std::string ReadSysctl(const std::string& path) {
  std::ifstream f(path);
  std::string v;
  f >> v;
  return v;
}

void SaveForwarding(const std::string& state_dir) {
  const std::string file = state_dir + "/forwarding.orig";
  if (fs::exists(file))
    return;  // an earlier `up` of this cluster saw the machine's own values
  std::ofstream f(file);
  for (const char* path : kForwardingSysctls)
    if (std::string v = ReadSysctl(path); !v.empty())
      f << path << " " << v << "\n";
}

void RestoreForwarding(const std::string& state_dir, std::ostream& out,
                       std::vector<std::string>& problems) {
  std::ifstream f(state_dir + "/forwarding.orig");
  std::string path, value;
  while (f >> path >> value) {
    if (ReadSysctl(path) == value)
      continue;
    std::ofstream w(path);
    if (!(w << value << "\n").flush())
      problems.push_back("restoring " + path + " to " + value);
    else
      out << "restored " << path << " to " << value << "\n";
  }
}

}  // namespace

Result<ApplyReport> Cluster::Up(const std::string& state_dir, UpOptions opts, std::ostream& out) {
  if (fs::exists(state_dir + "/state.json")) {
    auto c = Open(state_dir);
    SLUICE_RETURN_IF_ERROR(c);
    Daemon agent = ReadPidFile(state_dir + "/agent.pid");
    if (*c && Alive(agent.pid, agent.start_time)) {
      out << "A local cluster is already up at " << state_dir << ": applying the files only.\n";
      return (*c)->Apply(opts.files, opts.default_ns, out);
    }
    return Fail("a local cluster state exists at " + state_dir +
                " but its agent is not running; run `sluicectl local down` first");
  }

  ClusterState s;
  s.state_dir = state_dir;
  s.settings = opts.settings;
  Settings& pre = s.settings;
  SLUICE_RETURN_IF_ERROR(ParseSubnet16(pre.pod_subnet, "--pod-subnet"));
  SLUICE_RETURN_IF_ERROR(ParseSubnet16(pre.service_subnet, "--service-subnet"));
  if (pre.bridge.empty() || pre.bridge.size() > 15)
    return Fail("--bridge \"" + pre.bridge + "\": an interface name of 1 to 15 characters");
  if (pre.cgroup_dir.empty()) {
    auto cg = Cgroup2Mount();
    SLUICE_RETURN_IF_ERROR(cg);
    pre.cgroup_dir = *cg + "/sluice-local";
  }
  SLUICE_RETURN_IF_ERROR(FindPrograms(pre));
  s.xds = "unix:" + state_dir + "/xds.sock";
  s.config_dir = state_dir + "/config";
  s.namespaces = {{"default", {}}, {"istio-system", {}}};

  std::error_code ec;
  for (const char* sub : {"logs", "config/k8s", "config/istio", "cni/results", "pods"})
    fs::create_directories(state_dir + "/" + sub, ec);
  if (ec)
    return Fail("creating " + state_dir + ": " + ec.message());
  fs::create_directories(pre.cgroup_dir, ec);
  if (ec)
    return Fail("cgroup " + pre.cgroup_dir + ": " + ec.message());

  auto lock = TakeLock(state_dir);
  SLUICE_RETURN_IF_ERROR(lock);
  Cluster cluster(std::move(s), *lock);
  Impl impl(cluster, out);
  ClusterState& cs = cluster.state_;
  const Settings& st = cs.settings;

  // From here on a failure tears down what was made.
  auto fail = [&](const Error& e) -> Result<ApplyReport> {
    out << "up failed: " << e.message << "\nremoving what was set up…\n";
    std::ostringstream quiet;
    { Cluster released = std::move(cluster); }
    (void)Down(state_dir, quiet);
    return std::unexpected(e);
  };
  if (auto r = SaveState(cs); !r)
    return fail(r.error());
  SaveForwarding(state_dir);  // before the first pod: the bridge plugin changes it
  if (auto r = impl.WriteConflists(); !r)
    return fail(r.error());
  if (auto r = impl.WriteDefaultMesh(); !r)
    return fail(r.error());
  if (auto r = impl.SetUpNat(); !r)
    return fail(r.error());
  if (auto r = impl.Sync(); !r)
    return fail(r.error());
  out << "state in " << state_dir << "; pod network " << st.pod_subnet << " on bridge " << st.bridge
      << ", Service VIPs from " << st.service_subnet << "\n";

  // The local control plane, on a Unix socket (gateway pods reach it from their own
  // network namespaces through the shared file system).
  std::string xds_sock = state_dir + "/xds.sock";
  Command xds;
  xds.argv = {st.sluicectl_bin, "xds", "serve", "--config-dir", cs.config_dir, "--listen", cs.xds};
  xds.env = BaseEnv();
  xds.log = state_dir + "/logs/xds.log";
  // /run/netns must be a shared mount before the agent gets its own mount namespace, so
  // the pods' namespace mounts made later propagate to it. iproute2 makes it one on its
  // first `ip netns add`.
  {
    std::string probe = st.netns_prefix + "probe";
    if (auto r = RunTool({"ip", "netns", "add", probe}); !r)
      return fail(r.error());
    (void)RunTool({"ip", "netns", "del", probe});
  }
  // Both daemons stay in the host's network namespace, with the cluster's names on
  // /etc/hosts in a private mount namespace (no DNS server here).
  // No DNS server either: names outside the hosts files fail at once, and nothing is
  // asked of the machine's resolver (port 53 on the loopback has no listener).
  if (auto r = WriteIfChanged(state_dir + "/resolv.conf",
                              "# Written by sluicectl local: the cluster has no DNS server; names "
                              "come from /etc/hosts.\nnameserver 127.0.0.1\noptions timeout:1 "
                              "attempts:1\n",
                              false);
      !r)
    return fail(r.error());
  PodContext daemon_ctx;
  daemon_ctx.hosts_file = state_dir + "/hosts";
  daemon_ctx.resolv_file = state_dir + "/resolv.conf";
  auto xds_started = StartInPod(daemon_ctx, xds, state_dir + "/xds.exit");
  if (!xds_started)
    return fail(Error{"starting the control plane: " + xds_started.error().message});
  (void)WriteFileAtomic(state_dir + "/xds.pid", std::to_string(xds_started->pid) + " " +
                                                    std::to_string(xds_started->start_time) + "\n");
  for (int i = 0; i < 200 && !fs::exists(xds_sock); ++i) {
    if (!Alive(xds_started->pid, xds_started->start_time))
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (!fs::exists(xds_sock))
    return fail(Error{"the control plane (sluicectl xds serve) did not open " + xds_sock +
                      "; its log " + xds.log + " ends:\n" + Tail(xds.log, 15)});
  out << "control plane: sluicectl xds serve on " << cs.xds << " (pid " << xds_started->pid
      << ", log " << xds.log << ")\n";

  Command agent;
  agent.argv = {st.agent_bin,
                "--role",
                "node",
                "--xds-address",
                cs.xds,
                "--cni-socket",
                state_dir + "/cni.sock",
                "--state-file",
                state_dir + "/agent-pods.json",
                "--labels-file",
                state_dir + "/labels.json",
                "--proxy-port",
                std::to_string(st.proxy_port),
                "--admin-address",
                st.agent_admin,
                "--cgroup-root",
                st.cgroup_dir,
                "--pin-root",
                st.pin_root,
                "--access-log",
                state_dir + "/logs/agent-access.log"};
  agent.env = BaseEnv();
  agent.log = state_dir + "/logs/agent.log";
  // The agent lives under the cgroup its hooks are attached to, as it does on a node
  // (where that is the root cgroup): the getsockopt hook answers SO_ORIGINAL_DST only to
  // processes below it, and the in-pod proxy asks it for every redirected connection.
  PodContext agent_ctx = daemon_ctx;
  agent_ctx.cgroup = st.cgroup_dir + "/node-agent";
  {
    std::error_code mk;
    fs::create_directories(agent_ctx.cgroup, mk);
    if (mk)
      return fail(Error{"cgroup " + agent_ctx.cgroup + ": " + mk.message()});
  }
  auto agent_started = StartInPod(agent_ctx, agent, state_dir + "/agent.exit");
  if (!agent_started)
    return fail(Error{"starting the agent: " + agent_started.error().message});
  (void)WriteFileAtomic(
      state_dir + "/agent.pid",
      std::to_string(agent_started->pid) + " " + std::to_string(agent_started->start_time) + "\n");
  out << "node agent: " << st.agent_bin << " (pid " << agent_started->pid << ", admin "
      << st.agent_admin << ", log " << agent.log << ")\n";
  out.flush();
  auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(opts.ready_timeout_ms);
  int status = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    status = HttpGet(st.agent_admin, "/ready", 1000).status;
    if (status == 200 || !Alive(agent_started->pid, agent_started->start_time))
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (status != 200) {
    bool died = !Alive(agent_started->pid, agent_started->start_time);
    // The monitor writes the exit status just after the agent is reaped.
    for (int i = 0; died && i < 50 && !fs::exists(state_dir + "/agent.exit"); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::string exit = ReadFile(state_dir + "/agent.exit");
    while (!exit.empty() && exit.back() == '\n')
      exit.pop_back();
    std::string why = died ? "the agent exited (" + exit + ")"
                           : "the agent's /ready on " + st.agent_admin +
                                 " did not answer 200 within " +
                                 std::to_string(opts.ready_timeout_ms / 1000) + " s";
    return fail(Error{why + "; its log " + agent.log + " ends:\n" + Tail(agent.log, 15)});
  }
  out << "node agent ready\n";
  out.flush();
  auto report = impl.Apply(opts.files, opts.default_ns);
  return report;
}

Result<void> Cluster::Down(const std::string& state_dir, std::ostream& out) {
  if (!fs::exists(state_dir)) {
    out << "no local cluster at " << state_dir << "\n";
    return {};
  }
  std::vector<std::string> problems;
  auto opened = Open(state_dir);
  ClusterState s;
  std::optional<Cluster> cluster;
  if (opened && *opened) {
    cluster.emplace(std::move(**opened));
  } else {
    if (!opened)
      problems.push_back(opened.error().message);
    // No readable state: clean what the defaults name.
    s.state_dir = state_dir;
    if (auto cg = Cgroup2Mount(); cg)
      s.settings.cgroup_dir = *cg + "/sluice-local";
    s.config_dir = state_dir + "/config";
    auto lock = TakeLock(state_dir);
    cluster.emplace(Cluster(std::move(s), lock ? *lock : -1));
  }
  Impl impl(*cluster, out);
  ClusterState& cs = cluster->state_;
  const Settings st = cs.settings;

  size_t pods = cs.pods.size();
  while (!cs.pods.empty()) {
    PodRec p = cs.pods.back();
    cs.pods.pop_back();
    auto pr = impl.DestroySandbox(p, false);
    problems.insert(problems.end(), pr.begin(), pr.end());
    (void)SaveState(cs);
  }
  size_t hosts = cs.external_hosts.size();
  while (!cs.external_hosts.empty()) {
    PodRec p = cs.external_hosts.back().pod;
    cs.external_hosts.pop_back();
    auto pr = impl.DestroySandbox(p, true);
    problems.insert(problems.end(), pr.begin(), pr.end());
    (void)SaveState(cs);
  }
  out << "removed " << pods << " pods and " << hosts << " external hosts\n";

  for (const char* d : {"agent", "xds"}) {
    Daemon dm = ReadPidFile(state_dir + "/" + d + ".pid");
    if (dm.pid > 0) {
      StopProcess(dm.pid, dm.start_time, kDaemonGraceMs);
      if (Alive(dm.pid, dm.start_time))
        problems.push_back(std::string(d) + " (pid " + std::to_string(dm.pid) + ") did not stop");
      else
        out << "stopped the " << (d == std::string("agent") ? "node agent" : "control plane")
            << " (pid " << dm.pid << ")\n";
    }
  }
  if (fs::exists(st.pin_root)) {
    if (auto r = Dataplane::Cleanup(st.pin_root); !r)
      problems.push_back("kernel data plane: " + r.error().message);
    else
      out << "removed the kernel data plane (" << st.pin_root << ")\n";
  }
  Impl::TearDownNat(st, problems);
  if (RunTool({"ip", "link", "show", st.bridge})) {
    if (auto r = RunTool({"ip", "link", "del", st.bridge}); !r)
      problems.push_back(r.error().message);
    else
      out << "removed bridge " << st.bridge << "\n";
  }
  if (!st.cgroup_dir.empty())
    if (auto r = KillCgroup(st.cgroup_dir, 2000); !r)
      problems.push_back(r.error().message);
  RestoreForwarding(state_dir, out, problems);
  cluster.reset();
  std::error_code ec;
  fs::remove_all(state_dir, ec);
  if (ec)
    problems.push_back("removing " + state_dir + ": " + ec.message());
  if (!problems.empty()) {
    std::string msg = "down left problems:";
    for (const auto& p : problems)
      msg += "\n  " + p;
    return Fail(msg);
  }
  out << "removed " << state_dir << "\n";
  return {};
}

}  // namespace sluice::local
