// The local cluster: pods as network namespaces in their own cgroups, made through the
// real CNI chain (loopback; bridge + host-local; sluice-cni), containers run inside them,
// Services with VIPs (a kube-proxy stand-in for pods Sluice does not serve), the local
// control plane (`sluicectl xds serve`) and the node agent as background processes.
// `sluicectl local …` is a thin CLI over this class. See docs/local-cluster.md.
#pragma once

#include <iosfwd>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "sluice/common/result.h"
#include "sluice/local/state.h"

namespace sluice::local {

struct UpOptions {
  Settings settings;  // defaults filled in by Up where empty
  std::vector<std::string> files;
  std::string default_ns = "default";
  int ready_timeout_ms = 30000;
  // What istio-system gets on a new cluster, before `files` (sluice/local/profiles.h).
  std::string profile = "default";
};

// The outcome of an apply or delete: what was wrong, per document. Nothing of a
// rejected document is applied.
struct ApplyReport {
  std::vector<std::string> errors;
  std::vector<std::string> warnings;
};

// Pod status as `get pods` shows it.
struct PodStatus {
  std::string phase;  // Running, Completed, Error, Pending
  int ready = 0, total = 0;
};

class Cluster {
 public:
  // Opens the cluster at state_dir and takes its lock (held until destruction).
  // nullopt when there is no cluster there.
  static Result<std::optional<Cluster>> Open(const std::string& state_dir);
  // The same without the lock, for commands that only read (get, logs, exec, port-forward).
  static Result<std::optional<Cluster>> OpenReadOnly(const std::string& state_dir);

  // Makes a cluster at opts.settings/state_dir (or applies only, when one is up).
  static Result<ApplyReport> Up(const std::string& state_dir, UpOptions opts, std::ostream& out);

  // Removes everything a cluster (even a half-made one) at state_dir has: pods, agent,
  // control plane, kernel pins, NAT rules, bridge, cgroups, the state directory.
  static Result<void> Down(const std::string& state_dir, std::ostream& out);

  Cluster(Cluster&&) noexcept;
  Cluster& operator=(Cluster&&) = delete;
  ~Cluster();

  const ClusterState& state() const { return state_; }

  Result<ApplyReport> Apply(const std::vector<std::string>& files, const std::string& default_ns,
                            std::ostream& out);
  Result<ApplyReport> Delete(const std::vector<std::string>& files, const std::string& default_ns,
                             std::ostream& out);
  // key=value sets, key- removes; updates the agent's labels file and the Namespace.
  Result<void> LabelNamespace(const std::string& name, const std::vector<std::string>& changes,
                              std::ostream& out);

  PodStatus StatusOf(const PodRec& pod) const;

  // The pod named `ref` ("NAME", "pod/NAME" or "deploy/NAME": its first running pod).
  Result<const PodRec*> ResolvePod(const std::string& ns, const std::string& ref) const;

  // Runs argv inside the pod (stdio attached); the command's exit status.
  Result<int> Exec(const PodRec& pod, const std::vector<std::string>& argv);

  // A pod's hosts file and its context for running commands.
  std::string PodDir(const PodRec& pod) const;

 private:
  Cluster(ClusterState s, int lock_fd) : state_(std::move(s)), lock_fd_(lock_fd) {}
  struct Impl;
  ClusterState state_;
  int lock_fd_ = -1;
};

// GET http://ADDRESS/PATH (ADDRESS host:port, or unix:PATH): status (0 when it could not
// connect) and body. For the agent's admin endpoint.
struct HttpReply {
  int status = 0;
  std::string body;
};
HttpReply HttpGet(const std::string& address, const std::string& path, int timeout_ms = 2000);

// The last `lines` lines of a file (for error messages quoting a log).
std::string Tail(const std::string& file, int lines);

// The cgroup2 mount point, from /proc/mounts.
Result<std::string> Cgroup2Mount();

}  // namespace sluice::local
