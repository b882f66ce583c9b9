// A disposable network lab for the kernel tests: pods are network namespaces on a
// bridge that lives in its own "switch" namespace (nothing is added to the host's
// namespace), a test cgroup under the detected cgroup2 mount, a private pin root, and
// sluice_probe processes as clients and servers. Every name carries the prefix
// "sluicet<pid>", and the destructor removes all of it, on success and on failure
// (scripts/cleanup-test-state.sh catches what a crash leaves).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "sluice/loader/dataplane.h"

namespace sluice::test {

// Runs a shell command; returns its stdout, or fails the test with its output.
std::string Sh(const std::string& cmd);

// A child process with its stdin and stdout on pipes.
class Process {
 public:
  explicit Process(const std::vector<std::string>& argv);
  ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;
  // Next stdout line; fails the test after `timeout_ms`.
  std::string ReadLine(int timeout_ms = 10000);
  void CloseStdin();
  int Wait();      // exit status
  bool Running();  // not exited yet (does not reap it)
  void Kill();
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  int in_ = -1, out_ = -1;
  std::string buffer_;
};

struct Pod {
  std::string netns;  // ip netns name
  std::string ip4, ip6;
  std::string host_if;  // the veth peer on the lab bridge (in the switch namespace)
};

class Lab {
 public:
  Lab();
  ~Lab();
  Lab(const Lab&) = delete;
  Lab& operator=(const Lab&) = delete;

  // A pod with eth0 on the lab bridge: IPv4 10.211.0.<host>/24, IPv6 fd11::<host>/64.
  const Pod& AddPod(const std::string& name, int host);
  // Starts a server in the pod answering "<id>\n" on each listen address.
  // `extra` goes to sluice_probe serve (e.g. --orig-dst); in_cgroup runs the server in
  // the lab cgroup, as the agent's in-pod proxy runs under the hooks.
  void Serve(const std::string& pod, const std::vector<std::string>& listen, const std::string& id,
             const std::vector<std::string>& extra = {}, bool in_cgroup = false);
  // The usual cast: pod "client" (.10) and pods "a" (.2) and "b" (.3), each serving its
  // name on 8080.
  void AddClientAndServers();
  // Runs `sluice_probe connect` in the pod (inside the lab cgroup); returns its report.
  nlohmann::json Connect(const std::string& pod, const std::string& to, int count,
                         const std::vector<std::string>& extra = {});
  // Same, with --hold: the connections stay open until the returned process's stdin
  // closes. The report is read into *report.
  std::unique_ptr<Process> ConnectHold(const std::string& pod, const std::string& to, int count,
                                       nlohmann::json* report);
  // Starts a connect run without waiting for it.
  std::unique_ptr<Process> ConnectAsync(const std::string& pod, const std::string& to, int count);

  // The data plane attached to the lab cgroup (opened on first use).
  Dataplane& dp();
  // Kernel features the data plane is to do without (set before dp() is first used).
  void ForceFallbacks(std::set<KernelFeature> f) { fallbacks_ = std::move(f); }
  // Replaced revisions freed by the data plane's own thread, as the agent runs it (set
  // before dp() is first used).
  void ReclaimInBackground(bool on) { reclaim_in_background_ = on; }
  // Drops this process's handle to the data plane (the pins stay, like a killed agent).
  void CloseDataplane() { dp_.reset(); }
  DataplaneOptions options() const;
  void Enrol(const std::string& pod, uint16_t proxy_port = 0, bool registry_only = false);
  // The pod's host-side interface, as the agent sees it: ifindex in the switch namespace.
  int HostIfindex(const std::string& pod);
  // Attaches (or re-attaches) the tc programs to the pod's host-side interface, from
  // inside the switch namespace as an agent does in the node's namespace.
  void AttachPod(const std::string& pod, bool registry_only);
  void DetachPod(const std::string& pod);
  const std::string& switch_netns() const { return switch_ns_; }
  const Pod& pod(const std::string& name) const { return pods_.at(name); }
  uint64_t Cookie(const std::string& pod) const;
  Counters ReadCounters();

  const std::string& tag() const { return tag_; }
  const std::string& cgroup() const { return cgroup_; }
  const std::string& pin_root() const { return pin_root_; }
  std::string probe() const;

 private:
  void Teardown();
  std::string tag_, cgroup_, pin_root_, switch_ns_;
  std::map<std::string, Pod> pods_;
  std::vector<std::unique_ptr<Process>> servers_;
  std::unique_ptr<Dataplane> dp_;
  std::set<KernelFeature> fallbacks_;
  bool reclaim_in_background_ = false;
  int next_link_ = 0;
};

// Count of a key in a report's object (0 when absent).
long Count(const nlohmann::json& report, const std::string& field, const std::string& key);
// Share of a report's successful connections that reached `server`.
double Share(const nlohmann::json& report, const std::string& server);

// Spec builders for the tests.
EndpointSpec Ep(const std::string& addr, uint32_t weight = 1);
ClusterSpec Cluster(const std::string& name, uint32_t weight, LbPolicy lb,
                    std::vector<EndpointSpec> eps);
ServiceSpec Service(const std::string& name, std::vector<std::string> vips, uint16_t port,
                    std::vector<ClusterSpec> clusters);
// Upserts through the lab's data plane; fails the test with the error message.
void Apply(Lab& lab, const ServiceSpec& spec);

// GET http://127.0.0.1:PORT/PATH (an agent's admin endpoint): the body, and the status in
// *status (0 when nothing answered).
std::string HttpGet(int port, const std::string& path, int* status);

// Milliseconds until `pred` holds (polled every 20 ms), or -1 after `limit`.
template <class F>
long Within(F pred, std::chrono::milliseconds limit = std::chrono::milliseconds(3000)) {
  const auto start = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - start < limit) {
    if (pred())
      return std::chrono::duration_cast<std::chrono::milliseconds>(
                 std::chrono::steady_clock::now() - start)
          .count();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return -1;
}

// The command prefix that runs the agent under exactly the capabilities in the
// environment variable SLUICE_AGENT_CAPS ("BPF,NET_ADMIN,..." as the DaemonSet lists
// them): setpriv with that bounding set, so the uid-0 agent gets those and no others
// (tests/kernel/capabilities_test.sh). Empty when the variable is unset.
std::vector<std::string> AgentCapsPrefix();
uint64_t Delta(const Counters& before, const Counters& after, sluice_counter c);

}  // namespace sluice::test
