// Processes of the local cluster: containers inside their pod (network namespace, cgroup,
// a private mount namespace with the pod's /etc/hosts), commands run there on demand
// (`exec`), and the cluster's daemons (xds server, agent). Everything outlives the
// sluicectl command that started it.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "sluice/common/result.h"

namespace sluice::local {

// Where a process enters its pod. Empty fields are skipped (hostNetwork pods have no
// netns; daemons have none of it).
struct PodContext {
  std::string netns;       // /var/run/netns/NAME
  std::string cgroup;      // cgroup v2 directory to join
  std::string hosts_file;  // bind-mounted on /etc/hosts in a private mount namespace
  // With hosts_file: bind-mounted on /etc/resolv.conf too (the local cluster's points at
  // a loopback port where no DNS server listens, so names not in the hosts file fail at
  // once instead of asking the machine's DNS server).
  std::string resolv_file;
};

struct Command {
  std::vector<std::string> argv;           // argv[0] looked up on the env's PATH when not absolute
  std::map<std::string, std::string> env;  // the whole environment
  std::string log;                         // stdout+stderr appended here; "" = inherit
};

struct Started {
  pid_t pid = 0;
  std::uint64_t start_time = 0;
};

// Starts cmd in its own session inside the pod. A monitor process (a child of this one,
// in its own session) waits for it and writes its exit status ("exited N" / "killed
// SIG") to exit_file when it ends. Returns once the command was exec'd, or the reason it
// could not be (missing program, netns gone…).
Result<Started> StartInPod(const PodContext& pod, const Command& cmd, const std::string& exit_file);

// Runs cmd inside the pod with this process's stdio and waits: the exit status (128+N
// when killed by signal N).
Result<int> RunInPod(const PodContext& pod, const Command& cmd);

// /proc/PID/stat's starttime (0 when the process is gone or a zombie).
std::uint64_t ProcessStartTime(pid_t pid);
// True while pid runs and is the process started at start_time.
bool Alive(pid_t pid, std::uint64_t start_time);

// SIGTERM to the process group, then SIGKILL after `grace_ms`; waits until it is gone.
void StopProcess(pid_t pid, std::uint64_t start_time, int grace_ms);

// Every process in a cgroup: SIGTERM, then cgroup.kill after grace_ms; waits for it to
// be empty, then removes the directory (and empty parents up to, not including, stop_at).
Result<void> KillCgroup(const std::string& dir, int grace_ms);

// The default environment of a pod's process: PATH with Debian's tools, HOME.
std::map<std::string, std::string> BaseEnv();

// Runs a helper program (ip, iptables-restore) to completion; errors quote its stderr.
Result<std::string> RunTool(const std::vector<std::string>& argv, const std::string& input = "");

}  // namespace sluice::local
