#include "labels.h"

#include <sys/stat.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace sluice::agent {

Result<LabelSnapshot> ParseLabels(const std::string& text, const std::string& file) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return Fail(file + ": not a JSON object");
  LabelSnapshot out;
  auto labels_of = [&](const nlohmann::json& v,
                       const std::string& where) -> Result<enrolment::Labels> {
    enrolment::Labels l;
    if (v.is_null())
      return l;
    if (!v.is_object())
      return Fail(file + ": " + where + ": must be an object of strings");
    for (const auto& [k, val] : v.items()) {
      if (!val.is_string())
        return Fail(file + ": " + where + "." + k + ": must be a string");
      l[k] = val.get<std::string>();
    }
    return l;
  };
  if (j.contains("namespaces")) {
    if (!j["namespaces"].is_object())
      return Fail(file + ": namespaces: must be an object");
    for (const auto& [ns, v] : j["namespaces"].items()) {
      auto l = labels_of(v, "namespaces." + ns);
      SLUICE_RETURN_IF_ERROR(l);
      out.namespaces[ns] = std::move(*l);
    }
  }
  if (j.contains("pods")) {
    if (!j["pods"].is_object())
      return Fail(file + ": pods: must be an object");
    for (const auto& [key, v] : j["pods"].items()) {
      auto slash = key.find('/');
      if (slash == std::string::npos || slash == 0 || slash + 1 == key.size())
        return Fail(file + ": pods." + key + ": key must be NAMESPACE/NAME");
      if (!v.is_object())
        return Fail(file + ": pods." + key + ": must be an object");
      PodLabels p;
      auto l = labels_of(v.value("labels", nlohmann::json()), "pods." + key + ".labels");
      SLUICE_RETURN_IF_ERROR(l);
      p.labels = std::move(*l);
      auto a = labels_of(v.value("annotations", nlohmann::json()), "pods." + key + ".annotations");
      SLUICE_RETURN_IF_ERROR(a);
      p.annotations = std::move(*a);
      const std::string where = file + ": pods." + key + ".";
      for (const auto& [field, dest] : {std::pair<const char*, std::string*>{"uid", &p.uid},
                                        {"serviceAccount", &p.service_account}}) {
        if (!v.contains(field))
          continue;
        if (!v[field].is_string())
          return Fail(where + field + ": must be a string");
        *dest = v[field].get<std::string>();
      }
      if (v.contains("podIPs")) {
        if (!v["podIPs"].is_array())
          return Fail(where + "podIPs: must be an array of strings");
        for (const auto& ip : v["podIPs"]) {
          if (!ip.is_string())
            return Fail(where + "podIPs: must be an array of strings");
          p.ips.push_back(ip.get<std::string>());
        }
      }
      if (v.contains("hostNetwork")) {
        if (!v["hostNetwork"].is_boolean())
          return Fail(file + ": pods." + key + ".hostNetwork: must be true or false");
        p.host_network = v["hostNetwork"].get<bool>();
      }
      out.pods[{key.substr(0, slash), key.substr(slash + 1)}] = std::move(p);
    }
  }
  return out;
}

Result<std::optional<LabelSnapshot>> LabelFile::Poll() {
  struct stat st {};
  if (stat(path_.c_str(), &st) != 0)
    return FailErrno("reading " + path_, errno);
  if (st.st_mtim.tv_sec == mtime_.tv_sec && st.st_mtim.tv_nsec == mtime_.tv_nsec &&
      st.st_size == size_)
    return std::optional<LabelSnapshot>{};
  std::ifstream in(path_);
  std::stringstream text;
  text << in.rdbuf();
  auto parsed = ParseLabels(text.str(), path_);
  SLUICE_RETURN_IF_ERROR(parsed);
  mtime_ = st.st_mtim;
  size_ = st.st_size;
  return std::optional<LabelSnapshot>(std::move(*parsed));
}

}  // namespace sluice::agent
