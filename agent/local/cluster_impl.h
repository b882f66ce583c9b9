// Private to the local cluster runtime: Cluster::Impl, the working half of Cluster, and
// the few helpers its parts share. Impl's methods are defined by part:
//   node_network.cc  the pod network: conflists (bridge + host-local, sluice-cni), the
//                    kube-proxy stand-in's NAT chain, IP forwarding saved and restored;
//   sandbox.cc       pod sandboxes: netns, cgroup, CNI ADD/DEL through the chain runner,
//                    the containers' processes, external hosts;
//   apply.cc         manifests to state (namespaces, Services, Pods, Deployments, Istio
//                    resources) and Sync, which rewrites every file derived from the state;
//   daemons.cc       the control plane and the node agent: one start routine, and stop;
//   cluster.cc       the Cluster class itself: open/lock, up, down, status, exec.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "images.h"
#include "sluice/common/result.h"
#include "sluice/local/cluster.h"
#include "sluice/local/cni_chain.h"
#include "sluice/local/manifest.h"
#include "sluice/local/process.h"
#include "sluice/local/state.h"

namespace sluice::local {

// ------------------------------------------------------------------ shared helpers

// The whole file ("" when it cannot be read).
std::string ReadFile(const std::string& path);
// Rewrites a file in place (same inode): pods see their bind-mounted /etc/hosts change.
Result<void> WriteInPlace(const std::string& path, const std::string& text);
// Skips the write when the file already holds `text` (see cluster.cc).
Result<void> WriteIfChanged(const std::string& path, const std::string& text, bool in_place);

// The kube-proxy stand-in's iptables nat chain (node_network.cc).
std::string NatChain(const Settings& st);
// IP forwarding as it was before `up`, written down and put back by `down`
// (node_network.cc).
void SaveForwarding(const std::string& state_dir);
void RestoreForwarding(const std::string& state_dir, std::ostream& out,
                       std::vector<std::string>& problems);

// A daemon's pidfile (STATE/agent.pid, STATE/xds.pid): pid and start time (daemons.cc).
struct Daemon {
  pid_t pid = 0;
  std::uint64_t start_time = 0;
};
Daemon ReadPidFile(const std::string& path);

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
  std::string MeshFile() const { return ConfigDir() + "/k8s/mesh.yaml"; }

  // node_network.cc: files, NAT
  Result<void> WriteConflists();
  Result<void> SetUpNat();
  static void TearDownNat(const Settings& st, std::vector<std::string>& problems);

  // sandbox.cc: pods
  std::function<bool(const PodRec&)> ReadyFn() const;
  bool Ready(const PodRec& p) const;
  Result<void> LoadImages();
  CniChain Chain(const std::string& file) const;
  CniChain LoopbackChain() const;
  RuntimeConf Runtime(const PodRec& p, const std::string& ifname = "eth0") const;
  std::string LogFile(const PodRec& p, const std::string& container) const;
  PodContext Context(const PodRec& p) const;
  Result<void> MakeSandbox(PodRec& p, bool external);
  std::vector<std::string> DestroySandbox(PodRec& p, bool external);
  Result<Command> ContainerCommand(const PodRec& p, const PodSpec& pod, const ContainerSpec& spec);
  // What Istio's injector would do to the pod (its grpc-agent template): annotations and
  // labels on the record, before the agent hears of the pod (sandbox.cc).
  void Inject(PodRec& p, const PodSpec& spec) const;
  // The grpc-agent pod's bootstrap file, once its address is known (sandbox.cc).
  Result<void> WriteGrpcBootstrap(PodRec& p, const PodSpec& spec);
  // STATE/bin: tools every pod's PATH ends with (`sluice-apps`, for `exec … sluice-apps
  // grpc-client …`), made on first use (sandbox.cc).
  std::string ToolsDir() const;
  void EnsureToolsDir() const;
  void WaitPorts(const PodRec& p);
  Result<void> CreatePod(const std::string& ns, const std::string& name, const std::string& owner,
                         const PodSpec& spec);
  Result<void> DeletePod(const std::string& ns, const std::string& name);
  Result<void> CreateExternal(ExternalHostRec h);
  Result<void> DeleteExternal(const std::string& name);

  // apply.cc: apply / delete, and the files derived from the state
  Result<void> Sync();
  std::string IstioFile(const IstioObj& o) const;
  Result<void> WriteDefaultMesh();
  Result<void> ApplyOne(const Document& d);
  Result<void> ApplyIstio(const IstioObj& o, const Document& d);
  Result<void> CheckImages(const PodSpec& spec, const std::string& field);
  Result<void> ApplyDeployment(const DeploymentObj& o);
  ApplyReport Apply(const std::vector<std::string>& files, const std::string& default_ns);
  ApplyReport Delete(const std::vector<std::string>& files, const std::string& default_ns);
  Result<void> DeleteNamespace(const std::string& ns);

  // daemons.cc: the control plane, then the node agent, each started and ready (the
  // agent within agent_ready_timeout_ms); and both stopped.
  // Both daemons; with only_stopped, those whose pidfile names no live process.
  Result<void> StartDaemons(int agent_ready_timeout_ms, bool only_stopped = false);
  void StopDaemons(const std::string& state_dir, std::vector<std::string>& problems);
};

}  // namespace sluice::local
