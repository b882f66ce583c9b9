// Where the API server is and which credentials to show it: the pod's own service
// account (in-cluster), or the current context of a kubeconfig file.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <yaml-cpp/yaml.h>

#include "sluice/common/base64.h"
#include "sluice/kube/client.h"

namespace sluice::kube {
namespace {

Result<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return FailErrno(path + ": open", errno ? errno : ENOENT);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// A kubeconfig's relative paths are relative to the file's own directory.
std::string Resolve(const std::string& kubeconfig, const std::string& path) {
  if (path.empty() || path.front() == '/')
    return path;
  return (std::filesystem::path(kubeconfig).parent_path() / path).string();
}

// The entry `name` of a kubeconfig list ("clusters", "users", "contexts"): its inner map.
YAML::Node Named(const YAML::Node& root, const char* list, const std::string& name,
                 const char* inner) {
  const YAML::Node items = root[list];
  if (!items || !items.IsSequence())
    return YAML::Node(YAML::NodeType::Undefined);
  for (const auto& item : items)
    if (item["name"] && item["name"].as<std::string>() == name)
      return item[inner];
  return YAML::Node(YAML::NodeType::Undefined);
}

std::string Str(const YAML::Node& n, const char* key) {
  if (!n || !n.IsMap() || !n[key] || !n[key].IsScalar())
    return {};
  return n[key].as<std::string>();
}

}  // namespace

Result<ClientConfig> InClusterConfig(std::string_view service_account_dir) {
  const char* host = std::getenv("KUBERNETES_SERVICE_HOST");
  const char* port = std::getenv("KUBERNETES_SERVICE_PORT");
  if (host == nullptr || *host == '\0' || port == nullptr || *port == '\0')
    return Fail(
        "in-cluster config: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be set "
        "(the kubelet sets them in every pod)");
  ClientConfig config;
  std::string h = host;
  if (h.find(':') != std::string::npos)  // an IPv6 address
    h = "[" + h + "]";
  config.server = "https://" + h + ":" + port;
  const std::string dir(service_account_dir);
  config.token_file = dir + "/token";
  config.ca_file = dir + "/ca.crt";
  for (const auto& f : {config.token_file, config.ca_file})
    if (!std::filesystem::exists(f))
      return Fail("in-cluster config: " + f + ": missing (is the service account token mounted?)");
  return config;
}

Result<ClientConfig> KubeconfigConfig(const std::string& path) {
  auto text = ReadFile(path);
  SLUICE_RETURN_IF_ERROR_CTX(text, "kubeconfig");
  YAML::Node root;
  try {
    root = YAML::Load(*text);
  } catch (const YAML::Exception& e) {
    return Fail("kubeconfig " + path + ": " + e.what());
  }
  const std::string current = Str(root, "current-context");
  if (current.empty())
    return Fail("kubeconfig " + path + ": no current-context");
  const YAML::Node context = Named(root, "contexts", current, "context");
  if (!context)
    return Fail("kubeconfig " + path + ": context \"" + current + "\" not found");
  const std::string cluster_name = Str(context, "cluster");
  const YAML::Node cluster = Named(root, "clusters", cluster_name, "cluster");
  if (!cluster)
    return Fail("kubeconfig " + path + ": cluster \"" + cluster_name + "\" of context \"" +
                current + "\" not found");
  ClientConfig config;
  config.server = Str(cluster, "server");
  if (config.server.empty())
    return Fail("kubeconfig " + path + ": cluster \"" + cluster_name + "\": no server");
  config.ca_file = Resolve(path, Str(cluster, "certificate-authority"));
  if (const std::string data = Str(cluster, "certificate-authority-data"); !data.empty()) {
    auto pem = DecodeBase64(data, "kubeconfig " + path + ": cluster \"" + cluster_name +
                                      "\": certificate-authority-data");
    SLUICE_RETURN_IF_ERROR(pem);
    config.ca_data = *pem;
  }
  const std::string user_name = Str(context, "user");
  if (!user_name.empty()) {
    const YAML::Node user = Named(root, "users", user_name, "user");
    if (!user)
      return Fail("kubeconfig " + path + ": user \"" + user_name + "\" of context \"" + current +
                  "\" not found");
    config.token = Str(user, "token");
    config.token_file = Resolve(path, Str(user, "tokenFile"));
    if (!Str(user, "client-certificate").empty() || !Str(user, "client-certificate-data").empty())
      return Fail("kubeconfig " + path + ": user \"" + user_name +
                  "\": client certificates are not supported (use token or tokenFile)");
  }
  return config;
}

}  // namespace sluice::kube
