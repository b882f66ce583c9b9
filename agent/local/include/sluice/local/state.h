// The local cluster's record of itself: STATE/state.json (see docs/local-cluster.md and
// the contract in the issue). Every `sluicectl local` command reads it, changes it under
// a lock, and writes it back atomically; `proxy-config` and the task tests read it too.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "sluice/common/result.h"

namespace sluice::local {

using Labels = std::map<std::string, std::string>;

// Chosen at `up`, fixed for the cluster's life. Tests pick their own so two clusters
// (or a cluster and a test) never share a bridge, subnet, pin root or port.
struct Settings {
  std::string bridge = "sluice0";
  std::string pod_subnet = "10.244.0.0/16";     // a /16: .0.1 gateway, pods .0.2-.254.254
  std::string service_subnet = "10.96.0.0/16";  // a /16: .0.1 reserved
  std::string netns_prefix = "sluice-";         // netns sluice-<ns>-<pod>
  std::string cgroup_dir;                       // <cgroup2>/sluice-local (the agent's root)
  std::string pin_root = "/sys/fs/bpf/sluice";
  std::string agent_admin = "127.0.0.1:15000";
  int proxy_port = 15001;
  // Programs (absolute paths), found next to sluicectl at `up`.
  std::string agent_bin, apps_bin, cni_bin_dir, images_json, sluicectl_bin;
};

struct ContainerPort {
  std::string name;
  int port = 0;
};

struct ContainerRec {
  std::string name;
  std::string image;
  int pid = 0;                   // the container's main process (its own process group)
  std::uint64_t start_time = 0;  // /proc/PID/stat starttime, so a reused pid is not ours
  std::string log;
  std::string exit_file;  // written by the container's monitor when it exits
};

struct PodRec {
  std::string ns, name, uid;
  std::string owner;      // "Deployment/NAME" or "Pod/NAME" or "ExternalHost/NAME"
  std::string spec_hash;  // of the pod template, to tell a changed Deployment
  std::string ip;
  std::string netns;       // /var/run/netns/NAME ("" for hostNetwork)
  std::string netns_name;  // NAME
  std::string cgroup;
  Labels labels;
  // The pod's annotations as the cluster made it: the template's, plus what the
  // stand-in for Istio's injector added (sidecar.istio.io/status on a grpc-agent pod).
  Labels annotations;
  bool host_network = false;
  bool cni_added = false;
  std::string admin;  // gateway pods: unix:STATE/pods/NS/NAME/admin.sock
  // Proxyless gRPC pods (Istio's grpc-agent template): STATE/pods/NS/NAME/grpc-bootstrap.json,
  // named by GRPC_XDS_BOOTSTRAP in every container and in `exec` ("" for other pods).
  std::string grpc_bootstrap;
  std::vector<ContainerPort> ports;
  std::vector<ContainerRec> containers;
  std::int64_t created = 0;  // unix seconds
};

// A host outside the mesh, served from its own network namespace on the pod bridge
// (not enrolled: the agent never hears of it). `pod` is its runtime record.
struct ExternalHostRec {
  std::string name;
  std::vector<std::string> hostnames;
  int http_port = 80, https_port = 443;
  bool redirect_https = false;
  std::string spec_hash;
  PodRec pod;  // ns "", name = the host's name, owner ExternalHost/NAME
};

struct ServicePortRec {
  std::string name;
  int port = 0;
  int target_port = 0;  // 0 with target_port_name: a named container port
  std::string target_port_name;
  std::string protocol = "TCP";
};

struct ServiceRec {
  std::string ns, name, cluster_ip;
  Labels labels, selector;
  std::vector<ServicePortRec> ports;
};

struct NamespaceRec {
  std::string name;
  Labels labels;
};

// An Istio (or other copied) document in the config dir.
struct ConfigRec {
  std::string kind, ns, name, file;
};

struct DeploymentRec {
  std::string ns, name, spec_hash;
  int replicas = 1;
};

struct ClusterState {
  int version = 1;
  std::string state_dir;
  Settings settings;
  std::string xds;  // unix:STATE/xds.sock
  std::string config_dir;
  std::vector<NamespaceRec> namespaces;
  std::vector<PodRec> pods;
  std::vector<ServiceRec> services;
  std::vector<ExternalHostRec> external_hosts;
  std::vector<DeploymentRec> deployments;
  std::vector<ConfigRec> configs;

  PodRec* FindPod(const std::string& ns, const std::string& name);
  ServiceRec* FindService(const std::string& ns, const std::string& name);
  NamespaceRec* FindNamespace(const std::string& name);
};

nlohmann::json ToJson(const ClusterState& s);
Result<ClusterState> FromJson(const nlohmann::json& j, const std::string& file);

// STATE/state.json; nullopt when there is none (no cluster).
Result<std::optional<ClusterState>> LoadState(const std::string& state_dir);
Result<void> SaveState(const ClusterState& s);

// The state directory: --state-dir, else $SLUICE_LOCAL_STATE, else /var/run/sluice/local.
std::string DefaultStateDir();

// Writes `text` to `path` through a temporary file and rename (readers never see half).
Result<void> WriteFileAtomic(const std::string& path, const std::string& text);

}  // namespace sluice::local
