// The local cluster's two daemons: the control plane (`sluicectl xds serve`) and the node
// agent (sluice-agent --role node). Both are started by one routine, StartDaemon: spawn
// with their arguments, environment and log file in a private mount namespace that
// carries the cluster's hosts file, write the pidfile, wait until ready or exited or out
// of time. A daemon that does not come up is named in the error, which quotes the end of
// its log. `down` stops both through their pidfiles.
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>

#include "cluster_impl.h"

namespace sluice::local {
namespace fs = std::filesystem;

namespace {

// SIGTERM, then SIGKILL after this long. Longer than sluice-agent's default drain (5 s),
// so the node agent finishes the requests it has in flight.
constexpr int kDaemonGraceMs = 8000;

// One daemon of the cluster: what to run, where, and how to tell that it is ready.
struct DaemonSpec {
  std::string name;   // its files: STATE/NAME.pid, STATE/NAME.exit
  std::string title;  // how errors name it: "the agent"
  std::string role;   // how `up` reports it: "node agent"
  std::string about;  // what `up` says of it: program, address
  PodContext ctx;
  Command cmd;                  // cmd.log: where its output goes
  std::function<bool()> ready;  // polled until it holds
  std::string not_ready;        // what "not ready in time" means for this one
  int timeout_ms = 0;
};

// Starts the daemon, writes its pidfile, and waits until it is ready, exits, or the time
// is up. Says what it started on `out` (and, once ready, that it is).
Result<Started> StartDaemon(const std::string& state_dir, const DaemonSpec& d, std::ostream& out) {
  const std::string exit_file = state_dir + "/" + d.name + ".exit";
  auto started = StartInPod(d.ctx, d.cmd, exit_file);
  if (!started)
    return Fail("starting " + d.title + ": " + started.error().message);
  (void)WriteFileAtomic(
      state_dir + "/" + d.name + ".pid",
      std::to_string(started->pid) + " " + std::to_string(started->start_time) + "\n");
  out << d.role << ": " << d.about << " (pid " << started->pid << ", log " << d.cmd.log << ")\n";
  out.flush();
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(d.timeout_ms);
  bool ready = false;
  while (std::chrono::steady_clock::now() < deadline) {
    ready = d.ready();
    if (ready || !Alive(started->pid, started->start_time))
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (!ready) {
    bool died = !Alive(started->pid, started->start_time);
    // The monitor writes the exit status just after the daemon is reaped.
    for (int i = 0; died && i < 50 && !fs::exists(exit_file); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::string exit = ReadFile(exit_file);
    while (!exit.empty() && exit.back() == '\n')
      exit.pop_back();
    std::string why = died ? d.title + " exited (" + exit + ")"
                           : d.not_ready + " within " + std::to_string(d.timeout_ms / 1000) + " s";
    return Fail(why + "; its log " + d.cmd.log + " ends:\n" + Tail(d.cmd.log, 15));
  }
  out << d.role << " ready\n";
  out.flush();
  return *started;
}

}  // namespace

Daemon ReadPidFile(const std::string& path) {
  Daemon d;
  std::ifstream in(path);
  in >> d.pid >> d.start_time;
  return d;
}

Result<void> Cluster::Impl::StartDaemons(int agent_ready_timeout_ms, bool only_stopped) {
  const std::string& state_dir = s.state_dir;
  const ClusterState& cs = s;
  const Settings& st = s.settings;

  // /run/netns must be a shared mount before the agent gets its own mount namespace, so
  // the pods' namespace mounts made later propagate to it. iproute2 makes it one on its
  // first `ip netns add`.
  {
    std::string probe = st.netns_prefix + "probe";
    SLUICE_RETURN_IF_ERROR(RunTool({"ip", "netns", "add", probe}));
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
    return r;
  PodContext daemon_ctx;
  daemon_ctx.hosts_file = state_dir + "/hosts";
  daemon_ctx.resolv_file = state_dir + "/resolv.conf";

  // The local control plane, on a Unix socket (gateway pods reach it from their own
  // network namespaces through the shared file system).
  std::string xds_sock = state_dir + "/xds.sock";
  DaemonSpec xds;
  xds.name = "xds";
  xds.title = "the control plane (sluicectl xds serve)";
  xds.role = "control plane";
  xds.about = "sluicectl xds serve on " + cs.xds;
  xds.ctx = daemon_ctx;
  Command& cmd = xds.cmd;
  cmd.argv = {st.sluicectl_bin, "xds", "serve", "--config-dir", cs.config_dir, "--listen", cs.xds};
  cmd.env = BaseEnv();
  cmd.log = state_dir + "/logs/xds.log";
  xds.ready = [&] { return fs::exists(xds_sock); };
  xds.not_ready = xds.title + " did not open " + xds_sock;
  xds.timeout_ms = 10000;
  auto running = [&](const DaemonSpec& d) {
    const Daemon dm = ReadPidFile(state_dir + "/" + d.name + ".pid");
    return only_stopped && dm.pid > 0 && Alive(dm.pid, dm.start_time);
  };
  if (!running(xds))
    SLUICE_RETURN_IF_ERROR(StartDaemon(state_dir, xds, out));

  DaemonSpec agent;
  agent.name = "agent";
  agent.title = "the agent";
  agent.role = "node agent";
  agent.about = st.agent_bin + ", admin on " + st.agent_admin;
  agent.cmd.argv = {st.agent_bin,
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
  agent.cmd.env = BaseEnv();
  agent.cmd.log = state_dir + "/logs/agent.log";
  // The agent lives under the cgroup its hooks are attached to, as it does on a node
  // (where that is the root cgroup): the getsockopt hook answers SO_ORIGINAL_DST only to
  // processes below it, and the in-pod proxy asks it for every redirected connection.
  agent.ctx = daemon_ctx;
  agent.ctx.cgroup = st.cgroup_dir + "/node-agent";
  {
    std::error_code mk;
    fs::create_directories(agent.ctx.cgroup, mk);
    if (mk)
      return Fail("cgroup " + agent.ctx.cgroup + ": " + mk.message());
  }
  agent.ready = [&] { return HttpGet(st.agent_admin, "/ready", 1000).status == 200; };
  agent.not_ready = "the agent's /ready on " + st.agent_admin + " did not answer 200";
  agent.timeout_ms = agent_ready_timeout_ms;
  if (!running(agent))
    SLUICE_RETURN_IF_ERROR(StartDaemon(state_dir, agent, out));
  return {};
}

void Cluster::Impl::StopDaemons(const std::string& state_dir, std::vector<std::string>& problems) {
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
}

}  // namespace sluice::local
