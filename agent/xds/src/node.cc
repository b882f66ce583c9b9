#include "sluice/xds/node.h"

#include <arpa/inet.h>
#include <fmt/format.h>

#include <google/protobuf/struct.pb.h>

namespace sluice::xds {

envoy::config::core::v3::Node BuildNode(const NodeIdentity& id) {
  envoy::config::core::v3::Node node;
  const std::string ip = id.ips.empty() ? "127.0.0.1" : id.ips.front();
  node.set_id(fmt::format("{}~{}~{}.{}~{}.svc.{}",
                          id.role == ProxyRole::kRouter ? "router" : "sidecar", ip, id.pod_name,
                          id.pod_namespace, id.pod_namespace, id.domain_suffix));
  const std::string workload = id.workload_name.empty() ? id.pod_name : id.workload_name;
  node.set_cluster(fmt::format("{}.{}", workload, id.pod_namespace));
  node.set_user_agent_name("envoy");  // istiod keys some behaviour off an Envoy client

  auto& f = *node.mutable_metadata()->mutable_fields();
  auto str = [&f](const char* k, const std::string& v) { f[k].set_string_value(v); };
  str("NAME", id.pod_name);
  str("NAMESPACE", id.pod_namespace);
  str("ISTIO_VERSION", id.istio_version);
  str("CLUSTER_ID", id.cluster_id);
  str("MESH_ID", id.mesh_id);
  str("WORKLOAD_NAME", workload);
  str("SERVICE_ACCOUNT", id.service_account);
  str("INTERCEPTION_MODE", id.interception_mode);
  str("INSTANCE_IPS",
      fmt::format("{}", fmt::join(id.ips.empty() ? std::vector<std::string>{ip} : id.ips, ",")));
  str("OWNER", fmt::format("kubernetes://apis/apps/v1/namespaces/{}/deployments/{}",
                           id.pod_namespace, workload));
  if (!id.node_name.empty())
    str("NODE_NAME", id.node_name);
  auto& labels = *f["LABELS"].mutable_struct_value()->mutable_fields();
  for (const auto& [k, v] : id.labels)
    labels[k].set_string_value(v);
  return node;
}

Result<ParsedNodeId> ParseNodeId(const std::string& id) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t t = id.find('~', start);
    parts.push_back(id.substr(start, t == std::string::npos ? std::string::npos : t - start));
    if (t == std::string::npos)
      break;
    start = t + 1;
  }
  if (parts.size() != 4) {
    return Fail(
        fmt::format("node id \"{}\": want 4 '~'-separated parts, got {}", id, parts.size()));
  }
  ParsedNodeId out;
  if (parts[0] == "sidecar") {
    out.role = ProxyRole::kSidecar;
  } else if (parts[0] == "router") {
    out.role = ProxyRole::kRouter;
  } else {
    return Fail(fmt::format("node id \"{}\": unknown proxy type \"{}\"", id, parts[0]));
  }
  in6_addr a6;
  in_addr a4;
  if (inet_pton(AF_INET, parts[1].c_str(), &a4) != 1 &&
      inet_pton(AF_INET6, parts[1].c_str(), &a6) != 1) {
    return Fail(fmt::format("node id \"{}\": \"{}\" is not an IP address", id, parts[1]));
  }
  out.ip = parts[1];
  auto dot = parts[2].rfind('.');
  if (dot == std::string::npos) {
    out.pod_name = parts[2];
  } else {
    out.pod_name = parts[2].substr(0, dot);
    out.pod_namespace = parts[2].substr(dot + 1);
  }
  out.domain = parts[3];
  return out;
}

}  // namespace sluice::xds
