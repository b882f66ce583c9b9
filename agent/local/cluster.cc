// The local cluster (`sluicectl local …`): the Cluster class itself — opening a
// cluster's state under its lock, `up` (state dir, node network, daemons, then the
// files), `down` (everything, even of a half-made cluster), status, exec — and the
// helpers the parts share. The work is done by Cluster::Impl, defined by part in
// node_network.cc, sandbox.cc, apply.cc and daemons.cc (see cluster_impl.h).
#include "sluice/local/cluster.h"
#include "sluice/local/profiles.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "cluster_impl.h"
#include "sluice/loader/dataplane.h"
#include "sluice/local/derived.h"
#include "sluice/local/injection.h"

namespace sluice::local {
namespace fs = std::filesystem;

namespace {

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

}  // namespace

// ------------------------------------------------------------------ helpers (shared)

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

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
  // The env the pod's containers got from Istio's grpc-agent template (kubectl exec runs
  // with the container's environment), and the tools directory on PATH.
  if (!pod.grpc_bootstrap.empty())
    cmd.env[kGrpcBootstrapEnv] = pod.grpc_bootstrap;
  cmd.env["PATH"] += ":" + impl.ToolsDir();
  impl.EnsureToolsDir();
  if (const char* term = std::getenv("TERM"))
    cmd.env["TERM"] = term;
  PodContext ctx = impl.Context(pod);
  // Not under our lock while the command runs (it may run for long).
  return RunInPod(ctx, cmd);
}

// ------------------------------------------------------------------ up / down

Result<ApplyReport> Cluster::Up(const std::string& state_dir, UpOptions opts, std::ostream& out) {
  if (fs::exists(state_dir + "/state.json")) {
    auto c = Open(state_dir);
    SLUICE_RETURN_IF_ERROR(c);
    Daemon agent = ReadPidFile(state_dir + "/agent.pid");
    if (!*c)
      return Fail("a local cluster state exists at " + state_dir +
                  " but cannot be opened; run `sluicectl local down` first");
    if (Alive(agent.pid, agent.start_time)) {
      out << "A local cluster is already up at " << state_dir << ": applying the files only.\n";
      return (*c)->Apply(opts.files, opts.default_ns, out);
    }
    // Its agent stopped (crashed, killed, or the machine's processes were stopped): start
    // what is not running, as a node's DaemonSet would restart its agent. The new agent
    // adopts the pinned data plane and the pods from its state file.
    out << "A local cluster is at " << state_dir << " but its agent is not running: starting it.\n";
    Impl impl(**c, out);
    SLUICE_RETURN_IF_ERROR(impl.StartDaemons(opts.ready_timeout_ms, /*only_stopped=*/true));
    return (*c)->Apply(opts.files, opts.default_ns, out);
  }

  auto profile = ProfileManifests(opts.profile);
  SLUICE_RETURN_IF_ERROR(profile);
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

  // The control plane, then the node agent, each up and ready (daemons.cc).
  if (auto r = impl.StartDaemons(opts.ready_timeout_ms); !r)
    return fail(r.error());
  // The profile's components, as files in the state directory (what `local get` and a
  // user reading the state see), applied before the user's manifests.
  std::vector<std::string> files;
  for (const auto& m : *profile) {
    const std::string path = state_dir + "/profile/" + std::string(m.name) + ".yaml";
    fs::create_directories(state_dir + "/profile", ec);
    std::ofstream f(path);
    f << m.yaml;
    if (!f.flush())
      return fail(Error{"writing " + path});
    files.push_back(path);
  }
  std::string installed;
  for (const auto& m : *profile)
    installed += (installed.empty() ? "istio-" : ", istio-") + std::string(m.name);
  out << "profile " << opts.profile << ": " << (installed.empty() ? "no gateway" : installed)
      << "\n";
  files.insert(files.end(), opts.files.begin(), opts.files.end());
  auto report = impl.Apply(files, opts.default_ns);
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

  impl.StopDaemons(state_dir, problems);
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
