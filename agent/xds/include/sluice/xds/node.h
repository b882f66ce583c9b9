// The identity an xDS client presents, in the shape istiod expects from an Envoy
// started by pilot-agent:
//   id       "<type>~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>"
//            type "sidecar", or "router" for a gateway
//   cluster  "<workload>.<namespace>" (istiod's service cluster)
//   metadata NAME, NAMESPACE, ISTIO_VERSION, CLUSTER_ID, INSTANCE_IPS (comma list),
//            LABELS (string map), INTERCEPTION_MODE, MESH_ID, WORKLOAD_NAME, ...
#pragma once

#include <map>
#include <string>
#include <vector>

#include "envoy/config/core/v3/base.pb.h"
#include "sluice/common/result.h"

namespace sluice::xds {

enum class ProxyRole { kSidecar, kRouter };

struct NodeIdentity {
  ProxyRole role = ProxyRole::kSidecar;
  std::vector<std::string> ips;  // first one goes in the node ID; all in INSTANCE_IPS
  std::string pod_name;
  std::string pod_namespace = "default";
  std::string domain_suffix = "cluster.local";
  std::string workload_name;  // defaults to pod_name
  std::string cluster_id = "Kubernetes";
  std::string mesh_id = "cluster.local";
  std::string istio_version = "1.24.0";
  std::string interception_mode = "REDIRECT";
  std::string service_account = "default";
  std::string node_name;  // the Kubernetes node; sent as NODE_NAME when set
  std::map<std::string, std::string> labels;
};

envoy::config::core::v3::Node BuildNode(const NodeIdentity& id);

// The parts of a node ID, as istiod splits it.
struct ParsedNodeId {
  ProxyRole role;
  std::string ip, pod_name, pod_namespace, domain;
};
// Fails on anything istiod would refuse: not four '~' parts, unknown type, bad IP.
Result<ParsedNodeId> ParseNodeId(const std::string& id);

}  // namespace sluice::xds
