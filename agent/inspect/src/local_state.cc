#include "sluice/inspect/local_state.h"

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace sluice::inspect {
namespace {

std::string Str(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

std::map<std::string, std::string> Labels(const nlohmann::json& j) {
  std::map<std::string, std::string> out;
  if (!j.is_object())
    return out;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.value().is_string())
      out[it.key()] = it.value().get<std::string>();
  }
  return out;
}

std::string Dir(const std::string& path) {
  auto slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

}  // namespace

std::string DefaultStatePath() {
  const char* env = std::getenv("SLUICE_LOCAL_STATE");
  std::string dir = env && *env ? env : "/var/run/sluice/local";
  return dir + "/state.json";
}

Result<LocalState> LoadLocalState(const std::string& path) {
  std::ifstream in(path);
  if (!in)
    return Fail("no local cluster state at " + path +
                " (start one with `sluicectl local up`, or give --admin ADDR or --config-dir DIR)");
  std::stringstream ss;
  ss << in.rdbuf();
  auto j = nlohmann::json::parse(ss.str(), nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return Fail(path + ": not a JSON object");
  LocalState st;
  st.path = path;
  st.agent_admin = Str(j, "agent_admin");
  st.config_dir = Str(j, "config_dir");
  if (auto it = j.find("pods"); it != j.end()) {
    if (!it->is_array())
      return Fail(path + ": pods: must be an array");
    int i = 0;
    for (const auto& p : *it) {
      if (!p.is_object() || Str(p, "name").empty())
        return Fail(path + ": pods[" + std::to_string(i) + "]: needs a name");
      LocalPod pod;
      pod.ns = Str(p, "namespace").empty() ? "default" : Str(p, "namespace");
      pod.name = Str(p, "name");
      pod.owner = Str(p, "owner");
      pod.ip = Str(p, "ip");
      pod.admin = Str(p, "admin");
      if (auto l = p.find("labels"); l != p.end())
        pod.labels = Labels(*l);
      st.pods.push_back(std::move(pod));
      ++i;
    }
  }
  // labels.json next to the state file (the agent's --labels-file).
  std::ifstream lin(Dir(path) + "/labels.json");
  if (lin) {
    std::stringstream ls;
    ls << lin.rdbuf();
    auto lj = nlohmann::json::parse(ls.str(), nullptr, false);
    if (lj.is_object() && lj.contains("namespaces") && lj["namespaces"].is_object()) {
      for (auto it = lj["namespaces"].begin(); it != lj["namespaces"].end(); ++it)
        st.namespace_labels[it.key()] = Labels(it.value());
    }
  }
  return st;
}

PodRef ParsePodRef(const std::string& ref, const std::string& ns) {
  PodRef r;
  std::string name = ref;
  if (auto slash = name.find('/'); slash != std::string::npos) {
    std::string kind = name.substr(0, slash);
    name = name.substr(slash + 1);
    if (kind == "deploy" || kind == "deployment" || kind == "deployments" ||
        kind == "deployment.apps")
      r.kind = "deploy";
    else
      r.kind = "pod";
  }
  // istioctl's NAME.NAMESPACE form.
  if (auto dot = name.find('.'); dot != std::string::npos && ns.empty()) {
    r.ns = name.substr(dot + 1);
    name = name.substr(0, dot);
  }
  r.name = name;
  if (r.ns.empty())
    r.ns = ns.empty() ? "default" : ns;
  return r;
}

Result<const LocalPod*> FindPod(const LocalState& state, const std::string& ref,
                                const std::string& ns) {
  PodRef r = ParsePodRef(ref, ns);
  for (const auto& p : state.pods) {
    if (p.ns != r.ns)
      continue;
    if (r.kind == "deploy" ? p.owner == "Deployment/" + r.name : p.name == r.name)
      return &p;
  }
  return Fail((r.kind == "deploy" ? "deployment " : "pod ") + r.ns + "/" + r.name +
              " not found in " + state.path);
}

}  // namespace sluice::inspect
