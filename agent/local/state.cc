#include "sluice/local/state.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace sluice::local {
namespace {

using nlohmann::json;

json PodToJson(const PodRec& p) {
  json j{{"namespace", p.ns},
         {"name", p.name},
         {"uid", p.uid},
         {"owner", p.owner},
         {"spec_hash", p.spec_hash},
         {"ip", p.ip},
         {"netns", p.netns},
         {"netns_name", p.netns_name},
         {"cgroup", p.cgroup},
         {"labels", p.labels},
         {"host_network", p.host_network},
         {"cni_added", p.cni_added},
         {"created", p.created},
         {"ports", json::array()},
         {"containers", json::array()}};
  if (!p.admin.empty())
    j["admin"] = p.admin;
  if (!p.annotations.empty())
    j["annotations"] = p.annotations;
  if (!p.grpc_bootstrap.empty())
    j["grpc_bootstrap"] = p.grpc_bootstrap;
  for (const auto& cp : p.ports)
    j["ports"].push_back({{"name", cp.name}, {"port", cp.port}});
  for (const auto& c : p.containers)
    j["containers"].push_back({{"name", c.name},
                               {"image", c.image},
                               {"pid", c.pid},
                               {"start_time", c.start_time},
                               {"log", c.log},
                               {"exit_file", c.exit_file}});
  return j;
}

PodRec PodFromJson(const json& j) {
  PodRec p;
  p.ns = j.value("namespace", "");
  p.name = j.value("name", "");
  p.uid = j.value("uid", "");
  p.owner = j.value("owner", "");
  p.spec_hash = j.value("spec_hash", "");
  p.ip = j.value("ip", "");
  p.netns = j.value("netns", "");
  p.netns_name = j.value("netns_name", "");
  p.cgroup = j.value("cgroup", "");
  p.labels = j.value("labels", Labels{});
  p.host_network = j.value("host_network", false);
  p.cni_added = j.value("cni_added", false);
  p.created = j.value("created", std::int64_t{0});
  p.admin = j.value("admin", "");
  p.annotations = j.value("annotations", Labels{});
  p.grpc_bootstrap = j.value("grpc_bootstrap", "");
  for (const auto& cp : j.value("ports", json::array()))
    p.ports.push_back({cp.value("name", ""), cp.value("port", 0)});
  for (const auto& c : j.value("containers", json::array())) {
    ContainerRec r;
    r.name = c.value("name", "");
    r.image = c.value("image", "");
    r.pid = c.value("pid", 0);
    r.start_time = c.value("start_time", std::uint64_t{0});
    r.log = c.value("log", "");
    r.exit_file = c.value("exit_file", "");
    p.containers.push_back(std::move(r));
  }
  return p;
}

}  // namespace

PodRec* ClusterState::FindPod(const std::string& ns, const std::string& name) {
  for (auto& p : pods)
    if (p.ns == ns && p.name == name)
      return &p;
  return nullptr;
}

ServiceRec* ClusterState::FindService(const std::string& ns, const std::string& name) {
  for (auto& s : services)
    if (s.ns == ns && s.name == name)
      return &s;
  return nullptr;
}

NamespaceRec* ClusterState::FindNamespace(const std::string& name) {
  for (auto& n : namespaces)
    if (n.name == name)
      return &n;
  return nullptr;
}

json ToJson(const ClusterState& s) {
  const Settings& st = s.settings;
  json j{{"version", s.version},
         {"agent_admin", st.agent_admin},
         {"xds", s.xds},
         {"config_dir", s.config_dir},
         {"settings",
          {{"bridge", st.bridge},
           {"pod_subnet", st.pod_subnet},
           {"service_subnet", st.service_subnet},
           {"netns_prefix", st.netns_prefix},
           {"cgroup_dir", st.cgroup_dir},
           {"pin_root", st.pin_root},
           {"proxy_port", st.proxy_port},
           {"agent_bin", st.agent_bin},
           {"apps_bin", st.apps_bin},
           {"cni_bin_dir", st.cni_bin_dir},
           {"images_json", st.images_json},
           {"sluicectl_bin", st.sluicectl_bin}}},
         {"namespaces", json::array()},
         {"pods", json::array()},
         {"services", json::array()},
         {"external_hosts", json::array()},
         {"deployments", json::array()},
         {"configs", json::array()}};
  for (const auto& n : s.namespaces)
    j["namespaces"].push_back({{"name", n.name}, {"labels", n.labels}});
  for (const auto& p : s.pods)
    j["pods"].push_back(PodToJson(p));
  for (const auto& svc : s.services) {
    json js{{"namespace", svc.ns},  {"name", svc.name},         {"cluster_ip", svc.cluster_ip},
            {"labels", svc.labels}, {"selector", svc.selector}, {"ports", json::array()}};
    for (const auto& p : svc.ports) {
      json jp{{"name", p.name}, {"port", p.port}, {"protocol", p.protocol}};
      if (!p.target_port_name.empty())
        jp["target_port"] = p.target_port_name;
      else
        jp["target_port"] = p.target_port;
      js["ports"].push_back(jp);
    }
    j["services"].push_back(js);
  }
  for (const auto& e : s.external_hosts)
    j["external_hosts"].push_back({{"name", e.name},
                                   {"hostnames", e.hostnames},
                                   {"ip", e.pod.ip},
                                   {"netns", e.pod.netns},
                                   {"http_port", e.http_port},
                                   {"https_port", e.https_port},
                                   {"redirect_https", e.redirect_https},
                                   {"spec_hash", e.spec_hash},
                                   {"pod", PodToJson(e.pod)}});
  for (const auto& d : s.deployments)
    j["deployments"].push_back({{"namespace", d.ns},
                                {"name", d.name},
                                {"replicas", d.replicas},
                                {"spec_hash", d.spec_hash}});
  for (const auto& c : s.configs)
    j["configs"].push_back(
        {{"kind", c.kind}, {"namespace", c.ns}, {"name", c.name}, {"file", c.file}});
  return j;
}

Result<ClusterState> FromJson(const json& j, const std::string& file) {
  if (!j.is_object() || j.value("version", 0) != 1)
    return Fail(file + ": not a version 1 local cluster state");
  try {
    ClusterState s;
    s.xds = j.value("xds", "");
    s.config_dir = j.value("config_dir", "");
    Settings& st = s.settings;
    st.agent_admin = j.value("agent_admin", st.agent_admin);
    const json& js = j.at("settings");
    st.bridge = js.value("bridge", st.bridge);
    st.pod_subnet = js.value("pod_subnet", st.pod_subnet);
    st.service_subnet = js.value("service_subnet", st.service_subnet);
    st.netns_prefix = js.value("netns_prefix", st.netns_prefix);
    st.cgroup_dir = js.value("cgroup_dir", "");
    st.pin_root = js.value("pin_root", st.pin_root);
    st.proxy_port = js.value("proxy_port", st.proxy_port);
    st.agent_bin = js.value("agent_bin", "");
    st.apps_bin = js.value("apps_bin", "");
    st.cni_bin_dir = js.value("cni_bin_dir", "");
    st.images_json = js.value("images_json", "");
    st.sluicectl_bin = js.value("sluicectl_bin", "");
    for (const auto& n : j.value("namespaces", json::array()))
      s.namespaces.push_back({n.value("name", ""), n.value("labels", Labels{})});
    for (const auto& p : j.value("pods", json::array()))
      s.pods.push_back(PodFromJson(p));
    for (const auto& js2 : j.value("services", json::array())) {
      ServiceRec svc;
      svc.ns = js2.value("namespace", "");
      svc.name = js2.value("name", "");
      svc.cluster_ip = js2.value("cluster_ip", "");
      svc.labels = js2.value("labels", Labels{});
      svc.selector = js2.value("selector", Labels{});
      for (const auto& jp : js2.value("ports", json::array())) {
        ServicePortRec p;
        p.name = jp.value("name", "");
        p.port = jp.value("port", 0);
        p.protocol = jp.value("protocol", "TCP");
        if (jp.contains("target_port") && jp["target_port"].is_string())
          p.target_port_name = jp["target_port"].get<std::string>();
        else
          p.target_port = jp.value("target_port", 0);
        svc.ports.push_back(p);
      }
      s.services.push_back(std::move(svc));
    }
    for (const auto& e : j.value("external_hosts", json::array())) {
      ExternalHostRec r;
      r.name = e.value("name", "");
      r.hostnames = e.value("hostnames", std::vector<std::string>{});
      r.http_port = e.value("http_port", 80);
      r.https_port = e.value("https_port", 443);
      r.redirect_https = e.value("redirect_https", false);
      r.spec_hash = e.value("spec_hash", "");
      if (e.contains("pod"))
        r.pod = PodFromJson(e["pod"]);
      s.external_hosts.push_back(std::move(r));
    }
    for (const auto& d : j.value("deployments", json::array()))
      s.deployments.push_back({d.value("namespace", ""), d.value("name", ""),
                               d.value("spec_hash", ""), d.value("replicas", 1)});
    for (const auto& c : j.value("configs", json::array()))
      s.configs.push_back({c.value("kind", ""), c.value("namespace", ""), c.value("name", ""),
                           c.value("file", "")});
    return s;
  } catch (const std::exception& e) {
    return Fail(file + ": " + e.what());
  }
}

Result<std::optional<ClusterState>> LoadState(const std::string& state_dir) {
  std::string file = state_dir + "/state.json";
  std::ifstream in(file);
  if (!in)
    return std::optional<ClusterState>{};
  std::stringstream ss;
  ss << in.rdbuf();
  json j = json::parse(ss.str(), nullptr, false);
  if (j.is_discarded())
    return Fail(file + ": not valid JSON");
  auto s = FromJson(j, file);
  SLUICE_RETURN_IF_ERROR(s);
  s->state_dir = state_dir;
  return std::optional<ClusterState>{std::move(*s)};
}

Result<void> SaveState(const ClusterState& s) {
  return WriteFileAtomic(s.state_dir + "/state.json", ToJson(s).dump(1) + "\n");
}

std::string DefaultStateDir() {
  if (const char* env = std::getenv("SLUICE_LOCAL_STATE"); env && *env)
    return env;
  return "/var/run/sluice/local";
}

Result<void> WriteFileAtomic(const std::string& path, const std::string& text) {
  std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    return FailErrno("writing " + tmp, errno);
  size_t off = 0;
  while (off < text.size()) {
    ssize_t n = ::write(fd, text.data() + off, text.size() - off);
    if (n < 0) {
      int err = errno;
      ::close(fd);
      return FailErrno("writing " + tmp, err);
    }
    off += static_cast<size_t>(n);
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0)
    return FailErrno("renaming " + tmp + " to " + path, errno);
  return {};
}

}  // namespace sluice::local
