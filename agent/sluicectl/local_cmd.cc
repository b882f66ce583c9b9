// sluicectl local up|apply|delete|down|get|label|exec|logs|port-forward: a one-machine
// cluster for trying Sluice with Istio's own samples (library: agent/local/, design:
// docs/local-cluster.md). Commands that change the cluster hold its lock; the others
// only read STATE/state.json.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <ctime>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <thread>

#include "cli.h"
#include "commands.h"
#include "sluice/local/cluster.h"
#include "sluice/local/derived.h"
#include "sluice/local/port_forward.h"
#include "sluice/local/profiles.h"

namespace sluice::ctl {
namespace {

using local::Cluster;

std::atomic<bool> g_stop{false};
void OnStopSignal(int) {
  g_stop = true;
}
void CatchStopSignals() {
  struct sigaction sa {};
  sa.sa_handler = OnStopSignal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

struct LocalOptions {
  std::string state_dir = local::DefaultStateDir();
  std::vector<std::string> files;
  std::string ns = "default";
  bool all_namespaces = false;
  std::string container;
  local::Settings settings;
  int ready_timeout_s = 30;
  std::string profile = std::string(local::kDefaultProfile);
  std::string what;  // get: pods|svc|ns; label: namespace
  std::string name;  // label: the namespace; exec/logs: the pod
  std::vector<std::string> args;
  bool follow = false;
  std::string address = "127.0.0.1";
};

Cluster OpenOrDie(const std::string& cmd, const LocalOptions& o, bool lock) {
  auto c = lock ? Cluster::Open(o.state_dir) : Cluster::OpenReadOnly(o.state_dir);
  if (!c)
    Die("local " + cmd, c.error().message);
  if (!*c)
    Die("local " + cmd, "no local cluster at " + o.state_dir + " (run `sluicectl local up` first)");
  return std::move(**c);
}

// Errors and warnings of an apply/delete: stderr; exit status 1 when any document failed.
void Report(const std::string& cmd, const local::ApplyReport& r) {
  for (const auto& w : r.warnings)
    std::cerr << "warning: " << w << "\n";
  for (const auto& e : r.errors)
    std::cerr << "error: " << e << "\n";
  if (!r.errors.empty()) {
    Die("local " + cmd,
        std::to_string(r.errors.size()) +
            " error(s); nothing of the documents named was applied, everything else was");
  }
}

std::string Age(std::int64_t created) {
  if (created == 0)
    return "-";
  std::int64_t s = std::time(nullptr) - created;
  if (s < 120)
    return std::to_string(s) + "s";
  if (s < 7200)
    return std::to_string(s / 60) + "m";
  if (s < 172800)
    return std::to_string(s / 3600) + "h";
  return std::to_string(s / 86400) + "d";
}

void PrintTable(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width;
  for (const auto& r : rows)
    for (size_t i = 0; i < r.size(); ++i) {
      if (width.size() <= i)
        width.push_back(0);
      width[i] = std::max(width[i], r[i].size());
    }
  for (const auto& r : rows) {
    std::string line;
    for (size_t i = 0; i < r.size(); ++i)
      line += i + 1 < r.size() ? r[i] + std::string(width[i] - r[i].size() + 3, ' ') : r[i];
    std::cout << line << "\n";
  }
}

void Get(const LocalOptions& o) {
  Cluster c = OpenOrDie("get", o, false);
  const auto& s = c.state();
  std::vector<std::vector<std::string>> rows;
  auto head = [&](std::vector<std::string> cols) {
    if (o.all_namespaces)
      cols.insert(cols.begin(), "NAMESPACE");
    rows.push_back(cols);
  };
  auto row = [&](const std::string& ns, std::vector<std::string> cols) {
    if (o.all_namespaces)
      cols.insert(cols.begin(), ns);
    else if (ns != o.ns)
      return;
    rows.push_back(cols);
  };
  if (o.what == "pods" || o.what == "pod" || o.what == "po") {
    head({"NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP"});
    for (const auto& p : s.pods) {
      auto st = c.StatusOf(p);
      row(p.ns, {p.name, std::to_string(st.ready) + "/" + std::to_string(st.total), st.phase, "0",
                 Age(p.created), p.ip.empty() ? "<none>" : p.ip});
    }
  } else if (o.what == "svc" || o.what == "service" || o.what == "services") {
    head({"NAME", "TYPE", "CLUSTER-IP", "PORT(S)", "ENDPOINTS"});
    for (const auto& svc : s.services) {
      std::string ports, eps;
      for (const auto& p : svc.ports) {
        ports += (ports.empty() ? "" : ",") + std::to_string(p.port) + "/" + p.protocol;
        for (const auto& e : local::EndpointsFor(s, svc, p, [&](const local::PodRec& pod) {
               return c.StatusOf(pod).phase == "Running";
             }))
          eps += (eps.empty() ? "" : ",") + e.ip + ":" + std::to_string(e.port);
      }
      row(svc.ns, {svc.name, svc.cluster_ip == "None" ? "ClusterIP (headless)" : "ClusterIP",
                   svc.cluster_ip, ports, eps.empty() ? "<none>" : eps});
    }
  } else if (o.what == "ns" || o.what == "namespace" || o.what == "namespaces") {
    rows.push_back({"NAME", "STATUS", "LABELS"});
    for (const auto& n : s.namespaces) {
      std::string labels;
      for (const auto& [k, v] : n.labels)
        labels += (labels.empty() ? "" : ",") + k + "=" + v;
      rows.push_back({n.name, "Active", labels.empty() ? "<none>" : labels});
    }
  } else if (o.what == "externalhosts" || o.what == "externalhost") {
    rows.push_back({"NAME", "IP", "HOSTNAMES", "STATUS"});
    for (const auto& h : s.external_hosts) {
      std::string names;
      for (const auto& n : h.hostnames)
        names += (names.empty() ? "" : ",") + n;
      rows.push_back({h.name, h.pod.ip, names, c.StatusOf(h.pod).phase});
    }
  } else {
    Die("local get", "unknown resource type \"" + o.what + "\" (pods, svc, ns, externalhosts)");
  }
  if (rows.size() <= 1 && o.what != "ns") {
    std::cerr << "No resources found" << (o.all_namespaces ? "" : " in " + o.ns + " namespace")
              << ".\n";
    return;
  }
  PrintTable(rows);
}

void Exec(const LocalOptions& o) {
  if (o.args.empty())
    Die("local exec", "no command given (sluicectl local exec POD -- CMD ARGS…)");
  Cluster c = OpenOrDie("exec", o, false);
  auto pod = c.ResolvePod(o.ns, o.name);
  if (!pod)
    Die("local exec", pod.error().message);
  const local::PodRec& p = **pod;
  if (!o.container.empty()) {
    bool found = false;
    for (const auto& ct : p.containers)
      found = found || ct.name == o.container;
    if (!found)
      Die("local exec",
          "container \"" + o.container + "\" not found in pod " + p.ns + "/" + p.name);
  }
  if (c.StatusOf(p).phase != "Running")
    Die("local exec", "pod " + p.ns + "/" + p.name + " is not running");
  std::cout.flush();
  auto status = c.Exec(p, o.args);
  if (!status)
    Die("local exec", status.error().message, 126);
  if (*status != 0)
    throw CLI::RuntimeError(*status);
}

void Logs(const LocalOptions& o) {
  Cluster c = OpenOrDie("logs", o, false);
  auto pod = c.ResolvePod(o.ns, o.name);
  if (!pod)
    Die("local logs", pod.error().message);
  const local::PodRec& p = **pod;
  const local::ContainerRec* ct = nullptr;
  for (const auto& x : p.containers)
    if (o.container.empty() || x.name == o.container)
      ct = ct ? ct : &x;
  if (!ct)
    Die("local logs", o.container.empty() ? "pod " + p.ns + "/" + p.name + " has no containers"
                                          : "container \"" + o.container + "\" not found in pod " +
                                                p.ns + "/" + p.name);
  if (o.container.empty() && p.containers.size() > 1)
    Die("local logs", "pod " + p.ns + "/" + p.name + " has several containers: choose one with -c");
  std::ifstream in(ct->log, std::ios::binary);
  if (!in)
    Die("local logs", "cannot read " + ct->log);
  std::cout << in.rdbuf();
  std::cout.flush();
  if (!o.follow)
    return;
  CatchStopSignals();
  in.clear();
  char buf[8192];
  while (!g_stop) {
    in.read(buf, sizeof(buf));
    std::streamsize n = in.gcount();
    if (n > 0) {
      std::cout.write(buf, n);
      std::cout.flush();
      continue;
    }
    in.clear();
    if (c.StatusOf(p).phase != "Running")
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

void PortForward(const LocalOptions& o) {
  std::string target = o.what;
  auto colon = o.name.find(':');
  if (colon == std::string::npos)
    Die("local port-forward", "\"" + o.name + "\": expected LOCAL:REMOTE (e.g. 8080:80)");
  int local_port = std::atoi(o.name.substr(0, colon).c_str());
  std::string remote = o.name.substr(colon + 1);
  int remote_port = std::atoi(remote.c_str());
  if (local_port < 0 || local_port > 65535 || remote_port <= 0 || remote_port > 65535)
    Die("local port-forward", "\"" + o.name + "\": ports must be 1..65535 (LOCAL may be 0)");
  bool is_svc = target.rfind("svc/", 0) == 0 || target.rfind("service/", 0) == 0;
  std::string name = target.substr(target.find('/') + 1);
  if (target.find('/') == std::string::npos)
    name = target;
  // Check the target now, so a typo fails at once rather than on the first connection.
  {
    Cluster c = OpenOrDie("port-forward", o, false);
    if (is_svc) {
      auto* svc = const_cast<local::ClusterState&>(c.state()).FindService(o.ns, name);
      if (!svc)
        Die("local port-forward", "service \"" + name + "\" not found in namespace " + o.ns);
      bool has = false;
      for (const auto& p : svc->ports)
        has = has || p.port == remote_port;
      if (!has)
        Die("local port-forward", "service " + o.ns + "/" + name + " has no port " + remote);
    } else if (auto p = c.ResolvePod(o.ns, target); !p) {
      Die("local port-forward", p.error().message);
    }
  }
  auto rr = std::make_shared<std::atomic<unsigned>>(0);
  local::PortForwardOptions fo;
  fo.listen_ip = o.address;
  fo.local_port = local_port;
  LocalOptions opts = o;
  fo.pick = [opts, is_svc, name, target, remote_port, rr]() -> Result<local::ForwardTarget> {
    auto c = Cluster::OpenReadOnly(opts.state_dir);
    if (!c || !*c)
      return Fail("the local cluster at " + opts.state_dir + " is gone");
    Cluster& cl = **c;
    if (!is_svc) {
      auto p = cl.ResolvePod(opts.ns, target);
      SLUICE_RETURN_IF_ERROR(p);
      return local::ForwardTarget{(*p)->netns, (*p)->ip, remote_port};
    }
    auto* svc = const_cast<local::ClusterState&>(cl.state()).FindService(opts.ns, name);
    if (!svc)
      return Fail("service " + opts.ns + "/" + name + " is gone");
    for (const auto& sp : svc->ports) {
      if (sp.port != remote_port)
        continue;
      auto eps = local::EndpointsFor(cl.state(), *svc, sp, [&](const local::PodRec& p) {
        return cl.StatusOf(p).phase == "Running";
      });
      if (eps.empty())
        return Fail("service " + opts.ns + "/" + name + " has no running pods");
      const auto& ep = eps[(*rr)++ % eps.size()];
      auto pod = cl.ResolvePod(opts.ns, ep.pod);
      return local::ForwardTarget{(*pod)->netns, ep.ip, ep.port};
    }
    return Fail("service " + opts.ns + "/" + name + " has no port " + std::to_string(remote_port));
  };
  local::PortForwarder fwd;
  auto port = fwd.Listen(fo);
  if (!port)
    Die("local port-forward", port.error().message);
  CatchStopSignals();
  std::cout << "Forwarding from " << o.address << ":" << *port << " -> " << remote_port
            << std::endl;
  fwd.Serve(g_stop);
}

void AddStateDir(CLI::App* cmd, LocalOptions& o) {
  cmd->add_option("--state-dir", o.state_dir,
                  "the cluster's state directory (env SLUICE_LOCAL_STATE)")
      ->capture_default_str();
}

void AddNamespace(CLI::App* cmd, LocalOptions& o) {
  cmd->add_option("-n,--namespace", o.ns, "namespace")->capture_default_str();
}

}  // namespace

void AddLocalCommands(CLI::App& app) {
  auto o = std::make_shared<LocalOptions>();
  auto* group = app.add_subcommand(
      "local", "A local cluster: pods as network namespaces, the node agent, Istio's samples");
  group->require_subcommand(1);
  AddStateDir(group, *o);

  auto* up = group->add_subcommand(
      "up",
      "Start the cluster (control plane, node agent) and apply manifests; on a cluster whose "
      "agent stopped, start what is not running");
  AddStateDir(up, *o);
  up->add_option("-f,--filename", o->files, "manifest file or directory (repeatable)");
  AddNamespace(up, *o);
  auto& st = o->settings;
  up->add_option("--bridge", st.bridge, "pod bridge")->capture_default_str();
  up->add_option("--pod-subnet", st.pod_subnet, "pod network (a /16)")->capture_default_str();
  up->add_option("--service-subnet", st.service_subnet, "Service VIPs (a /16)")
      ->capture_default_str();
  up->add_option("--netns-prefix", st.netns_prefix, "pod network namespaces are PREFIX<ns>-<pod>")
      ->capture_default_str();
  up->add_option("--cgroup-dir", st.cgroup_dir,
                 "the pods' cgroup parent, also the agent's --cgroup-root (default: "
                 "<cgroup2 mount>/sluice-local)");
  up->add_option("--pin-root", st.pin_root, "the agent's bpffs pin directory")
      ->capture_default_str();
  up->add_option("--admin-address", st.agent_admin, "the agent's admin address")
      ->capture_default_str();
  up->add_option("--proxy-port", st.proxy_port, "the agent's in-pod proxy port")
      ->capture_default_str();
  up->add_option("--agent-bin", st.agent_bin, "sluice-agent to run (default: the build's)");
  up->add_option("--ready-timeout", o->ready_timeout_s, "seconds to wait for the agent's /ready")
      ->capture_default_str();
  up->add_option("--profile", o->profile,
                 "what a new cluster installs in istio-system, as istioctl's profiles: default "
                 "(the ingress gateway), demo (ingress and egress gateways), minimal (none)")
      ->capture_default_str();
  up->callback([o] {
    local::UpOptions uo;
    uo.settings = o->settings;
    uo.files = o->files;
    uo.default_ns = o->ns;
    uo.ready_timeout_ms = o->ready_timeout_s * 1000;
    uo.profile = o->profile;
    auto r = Cluster::Up(o->state_dir, uo, std::cout);
    std::cout.flush();
    if (!r)
      Die("local up", r.error().message);
    Report("up", *r);
    std::cout << "cluster up: `sluicectl local get pods -A` lists the pods\n";
  });

  auto* apply = group->add_subcommand("apply", "Apply manifests to the running cluster");
  AddStateDir(apply, *o);
  apply->add_option("-f,--filename", o->files, "manifest file or directory (repeatable)")
      ->required();
  AddNamespace(apply, *o);
  apply->callback([o] {
    Cluster c = OpenOrDie("apply", *o, true);
    auto r = c.Apply(o->files, o->ns, std::cout);
    std::cout.flush();
    if (!r)
      Die("local apply", r.error().message);
    Report("apply", *r);
  });

  auto* del = group->add_subcommand("delete", "Delete what manifests describe");
  AddStateDir(del, *o);
  del->add_option("-f,--filename", o->files, "manifest file or directory (repeatable)")->required();
  AddNamespace(del, *o);
  del->callback([o] {
    Cluster c = OpenOrDie("delete", *o, true);
    auto r = c.Delete(o->files, o->ns, std::cout);
    std::cout.flush();
    if (!r)
      Die("local delete", r.error().message);
    Report("delete", *r);
  });

  auto* down = group->add_subcommand(
      "down", "Remove the cluster: pods, agent, control plane, kernel state, bridge, STATE");
  AddStateDir(down, *o);
  down->callback([o] {
    auto r = Cluster::Down(o->state_dir, std::cout);
    if (!r)
      Die("local down", r.error().message);
  });

  auto* get = group->add_subcommand("get", "List pods, svc, ns or externalhosts");
  AddStateDir(get, *o);
  get->add_option("type", o->what, "pods|svc|ns|externalhosts")->required();
  AddNamespace(get, *o);
  get->add_flag("-A,--all-namespaces", o->all_namespaces, "every namespace");
  get->callback([o] { Get(*o); });

  auto* label = group->add_subcommand("label", "Set (key=value) or remove (key-) labels");
  AddStateDir(label, *o);
  label->add_option("type", o->what, "namespace")
      ->required()
      ->check(CLI::IsMember({"namespace", "ns", "namespaces"}));
  label->add_option("name", o->name, "the namespace")->required();
  label->add_option("labels", o->args, "key=value or key-")->required();
  label->add_flag("--overwrite")
      ->description("accepted for kubectl habits (values are always overwritten)");
  label->callback([o] {
    Cluster c = OpenOrDie("label", *o, true);
    if (auto r = c.LabelNamespace(o->name, o->args, std::cout); !r)
      Die("local label", r.error().message);
  });

  auto* exec = group->add_subcommand("exec", "Run a command inside a pod (stdio attached)");
  AddStateDir(exec, *o);
  exec->add_option("pod", o->name, "POD, pod/NAME or deploy/NAME")->required();
  exec->add_option("command", o->args, "-- CMD ARGS…");
  exec->add_option("-c,--container", o->container, "container (all share the pod's network)");
  AddNamespace(exec, *o);
  exec->add_flag("-i,--stdin")->description("accepted for kubectl habits (stdin is attached)");
  exec->add_flag("-t,--tty")->description("accepted for kubectl habits");
  exec->callback([o] { Exec(*o); });

  auto* logs = group->add_subcommand("logs", "Print a container's log");
  AddStateDir(logs, *o);
  logs->add_option("pod", o->name, "POD, pod/NAME or deploy/NAME")->required();
  logs->add_option("-c,--container", o->container, "container");
  AddNamespace(logs, *o);
  logs->add_flag("-f,--follow", o->follow, "keep printing what the container writes");
  logs->callback([o] { Logs(*o); });

  auto* pf = group->add_subcommand(
      "port-forward", "Forward 127.0.0.1:LOCAL to a Service's (or pod's) port, via its pods");
  AddStateDir(pf, *o);
  pf->add_option("target", o->what, "svc/NAME or pod/NAME")->required();
  pf->add_option("ports", o->name, "LOCAL:REMOTE (REMOTE: the Service port, or the pod port)")
      ->required();
  AddNamespace(pf, *o);
  pf->add_option("--address", o->address, "local address to listen on")->capture_default_str();
  pf->callback([o] { PortForward(*o); });
}

}  // namespace sluice::ctl
