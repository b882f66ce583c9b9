// Pod sandboxes of the local cluster, made as a container runtime makes them: a cgroup
// and a named network namespace, CNI ADD through the real chain (loopback, then the
// cluster's conflist: bridge + host-local, sluice-cni), the containers' processes started
// inside (their commands from the image map), and all of it undone again (CNI DEL with
// the cached result). External hosts are sandboxes on a network of their own. A pod
// Istio's injector would give the grpc-agent template gets what that template gives it
// (injection.h): a gRPC xDS bootstrap and GRPC_XDS_BOOTSTRAP, and no capture.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "cluster_impl.h"
#include "sluice/local/derived.h"
#include "sluice/local/injection.h"
#include "sluice/netns/netns.h"

namespace sluice::local {
namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

namespace {

// SIGTERM, then SIGKILL after this long. Longer than sluice-agent's default drain (5 s),
// so a gateway finishes the requests it has in flight; processes that exit on SIGTERM
// (all the stand-ins, sleep) go at once.
constexpr int kContainerGraceMs = 6000;

std::string RandomHex(int n) {
  static std::mt19937_64 rng{std::random_device{}()};
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (int i = 0; i < n; ++i)
    out += kHex[rng() % 16];
  return out;
}

// The node's name, as `spec.nodeName` reads on a one-node cluster: the machine's.
std::string NodeName() {
  char host[256] = {};
  if (::gethostname(host, sizeof(host) - 1) != 0)
    return "localhost";
  return host;
}

std::string Uuid() {
  std::string h = RandomHex(32);
  return h.substr(0, 8) + "-" + h.substr(8, 4) + "-" + h.substr(12, 4) + "-" + h.substr(16, 4) +
         "-" + h.substr(20);
}

}  // namespace

std::function<bool(const PodRec&)> Cluster::Impl::ReadyFn() const {
  return [this](const PodRec& p) { return Ready(p); };
}

bool Cluster::Impl::Ready(const PodRec& p) const {
  if (p.containers.empty())
    return false;
  for (const auto& ct : p.containers)
    if (!Alive(ct.pid, ct.start_time))
      return false;
  return true;
}

Result<void> Cluster::Impl::LoadImages() {
  if (images)
    return {};
  auto m = apps::ImageMap::Load(s.settings.images_json);
  SLUICE_RETURN_IF_ERROR(m);
  images = std::move(*m);
  return {};
}

CniChain Cluster::Impl::Chain(const std::string& file) const {
  auto chain = CniChain::FromFile(file);
  chain->set_plugin_dirs({s.settings.cni_bin_dir, "/usr/lib/cni", "/opt/cni/bin"});
  chain->set_timeout(std::chrono::seconds(20));
  return std::move(*chain);
}

CniChain Cluster::Impl::LoopbackChain() const {
  auto chain = CniChain::FromJson({{"cniVersion", "1.0.0"},
                                   {"name", "cni-loopback"},
                                   {"plugins", ojson::array({{{"type", "loopback"}}})}});
  chain->set_plugin_dirs({"/usr/lib/cni", "/opt/cni/bin"});
  return std::move(*chain);
}

RuntimeConf Cluster::Impl::Runtime(const PodRec& p, const std::string& ifname) const {
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

std::string Cluster::Impl::LogFile(const PodRec& p, const std::string& container) const {
  return StateDir() + "/logs/" + (p.ns.empty() ? "external" : p.ns) + "/" + p.name + "/" +
         container + ".log";
}

PodContext Cluster::Impl::Context(const PodRec& p) const {
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
Result<void> Cluster::Impl::MakeSandbox(PodRec& p, bool external) {
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
std::vector<std::string> Cluster::Impl::DestroySandbox(PodRec& p, bool external) {
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

std::string Cluster::Impl::ToolsDir() const {
  return StateDir() + "/bin";
}

void Cluster::Impl::EnsureToolsDir() const {
  std::error_code ec;
  std::string link = ToolsDir() + "/sluice-apps";
  if (fs::read_symlink(link, ec) == fs::path(s.settings.apps_bin))
    return;
  fs::create_directories(ToolsDir(), ec);
  fs::remove(link, ec);
  fs::create_symlink(s.settings.apps_bin, link, ec);
  if (ec)
    out << "warning: " << link << ": " << ec.message() << "\n";
}

void Cluster::Impl::Inject(PodRec& p, const PodSpec& spec) const {
  p.annotations = spec.annotations;
  const NamespaceRec* n = s.FindNamespace(p.ns);
  if (!InjectsGrpcAgent(p.ns, n ? n->labels : Labels{}, spec.labels, spec.annotations,
                        spec.host_network))
    return;
  // The grpc-agent template's metadata (grpc-agent.yaml): canonical labels unless the pod
  // has them, the revision, default containers, and the injector's status.
  std::string workload = p.owner.rfind("Deployment/", 0) == 0
                             ? p.owner.substr(std::string("Deployment/").size())
                             : p.name;
  auto first_of = [&](std::initializer_list<const char*> keys, const std::string& def) {
    for (const char* k : keys)
      if (auto it = p.labels.find(k); it != p.labels.end())
        return it->second;
    return def;
  };
  p.labels.emplace("service.istio.io/canonical-name",
                   first_of({"app.kubernetes.io/name", "app"}, workload));
  p.labels.emplace("service.istio.io/canonical-revision",
                   first_of({"app.kubernetes.io/version", "version"}, "latest"));
  std::vector<std::string> names;
  for (const auto& ct : spec.containers)
    names.push_back(ct.name);
  p.annotations.emplace("istio.io/rev", "default");
  p.annotations.emplace("kubectl.kubernetes.io/default-container", names.front());
  p.annotations.emplace("kubectl.kubernetes.io/default-logs-container", names.front());
  p.annotations["sidecar.istio.io/rewriteAppHTTPProbers"] = "false";
  p.annotations["sidecar.istio.io/status"] = GrpcAgentStatus(names);
}

Result<void> Cluster::Impl::WriteGrpcBootstrap(PodRec& p, const PodSpec& spec) {
  if (!IsProxylessGrpcPod(p.annotations))
    return {};
  GrpcBootstrapInput in;
  // Absolute: the file is read by the pod's processes, whatever their working directory.
  in.xds_socket = fs::absolute(StateDir() + "/xds.sock").lexically_normal().string();
  in.pod_name = p.name;
  in.pod_namespace = p.ns;
  in.pod_ip = p.ip;
  in.labels = p.labels;
  in.annotations = p.annotations;
  bool deployment = p.owner.rfind("Deployment/", 0) == 0;
  in.workload_name = deployment ? p.owner.substr(std::string("Deployment/").size()) : p.name;
  in.owner = deployment ? "kubernetes://apis/apps/v1/namespaces/" + p.ns + "/deployments/" +
                              in.workload_name
                        : "kubernetes://apis/v1/namespaces/" + p.ns + "/pods/" + p.name;
  in.service_account = spec.service_account;
  for (const auto& ct : spec.containers) {
    in.containers.push_back(ct.name);
    in.ports.insert(in.ports.end(), ct.ports.begin(), ct.ports.end());
  }
  std::string file =
      fs::absolute(c.PodDir(p) + "/" + kGrpcBootstrapFile).lexically_normal().string();
  SLUICE_RETURN_IF_ERROR_CTX(WriteFileAtomic(file, GrpcBootstrapJson(in)),
                             "pod " + p.ns + "/" + p.name + ": gRPC bootstrap");
  p.grpc_bootstrap = file;
  return {};
}

// The container's command line from the image map; errors name the pod and image.
Result<Command> Cluster::Impl::ContainerCommand(const PodRec& p, const PodSpec& pod,
                                                const ContainerSpec& spec) {
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
  cmd.env["PATH"] += ":" + ToolsDir();
  for (const auto& e : spec.env) {
    if (e.field_path.empty()) {
      cmd.env[e.name] = e.value;
      continue;
    }
    // The downward API (manifest.cc lists the fields it accepts).
    const std::string& f = e.field_path;
    if (f == "metadata.name")
      cmd.env[e.name] = p.name;
    else if (f == "metadata.namespace")
      cmd.env[e.name] = p.ns;
    else if (f == "metadata.uid")
      cmd.env[e.name] = p.uid;
    else if (f == "spec.serviceAccountName")
      cmd.env[e.name] = pod.service_account;
    else if (f == "spec.nodeName")
      cmd.env[e.name] = NodeName();
    else if (f == "status.podIP" || f == "status.podIPs")
      cmd.env[e.name] = p.ip;
    else if (f == "status.hostIP" || f == "status.hostIPs")
      cmd.env[e.name] = ParseSubnet16(s.settings.pod_subnet, "pod subnet")->Address(0, 1);
  }
  cmd.env["HOSTNAME"] = p.name;
  cmd.env["POD_NAME"] = p.name;
  cmd.env["POD_NAMESPACE"] = p.ns;
  cmd.env["INSTANCE_IP"] = p.ip;
  // The grpc-agent template's env, over the container's own (it is patched in last).
  if (!p.grpc_bootstrap.empty())
    cmd.env[kGrpcBootstrapEnv] = p.grpc_bootstrap;
  cmd.log = LogFile(p, spec.name);
  return cmd;
}

// Waits (up to 5 s) until the pod's declared ports accept connections on its address
// (from inside its namespace, outside its cgroup: no Sluice hook sees it), or a container
// died: `apply` returns with pods that answer, as a readiness probe would.
void Cluster::Impl::WaitPorts(const PodRec& p) {
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

Result<void> Cluster::Impl::CreatePod(const std::string& ns, const std::string& name,
                                      const std::string& owner, const PodSpec& spec) {
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
  Inject(p, spec);
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
  if (auto r = WriteGrpcBootstrap(rec, spec); !r)
    return fail(r.error());
  EnsureToolsDir();
  std::error_code ec;
  fs::create_directories(fs::path(LogFile(rec, "x")).parent_path(), ec);
  for (const auto& ct : spec.containers) {
    auto cmd = ContainerCommand(rec, spec, ct);
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

Result<void> Cluster::Impl::DeletePod(const std::string& ns, const std::string& name) {
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

Result<void> Cluster::Impl::CreateExternal(ExternalHostRec h) {
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

Result<void> Cluster::Impl::DeleteExternal(const std::string& name) {
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

}  // namespace sluice::local
