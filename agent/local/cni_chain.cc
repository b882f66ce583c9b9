// CniChain: a .conflist's plugins run in order (ADD, CHECK) or reverse order (DEL) the
// way libcni does, and the result cache a runtime keeps for DEL.
#include "sluice/local/cni_chain.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "sluice/local/run_process.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <cerrno>
#include <filesystem>

extern char** environ;

namespace sluice::local {
namespace {

using ojson = nlohmann::ordered_json;

Result<std::string> FindPlugin(const std::vector<std::string>& dirs, const std::string& type) {
  if (type.find('/') != std::string::npos) {
    return Fail("plugin type \"" + type + "\" must be a file name, not a path");
  }
  for (const auto& dir : dirs) {
    std::string path = dir + "/" + type;
    if (::access(path.c_str(), X_OK) == 0)
      return path;
  }
  std::string list;
  for (const auto& d : dirs)
    list += (list.empty() ? "" : ":") + d;
  return Fail("plugin \"" + type + "\" not found in CNI_PATH " + list, ENOENT);
}

// True when version `v` ("1.0.0") is at least 0.4.0, the spec version that added CHECK and
// prevResult on DEL. Unparsable versions count as old.
bool AtLeast040(const std::string& v) {
  int major = 0, minor = 0, patch = 0;
  if (std::sscanf(v.c_str(), "%d.%d.%d", &major, &minor, &patch) != 3)
    return false;
  return major > 0 || minor >= 4;
}

}  // namespace

std::string PluginError::Describe() const {
  std::string s = "plugin " + plugin + " " + command + " failed";
  if (code != 0)
    s += " (CNI error " + std::to_string(code) + ")";
  s += ": " + msg;
  if (!details.empty())
    s += ": " + details;
  return s;
}

Result<CniChain> CniChain::FromJson(const ojson& conflist) {
  if (!conflist.is_object())
    return Fail("conflist: not a JSON object");
  CniChain chain;
  auto name = conflist.find("name");
  if (name == conflist.end() || !name->is_string() || name->get<std::string>().empty()) {
    return Fail("conflist: field \"name\" is missing or not a string");
  }
  chain.name_ = name->get<std::string>();
  auto version = conflist.find("cniVersion");
  if (version == conflist.end() || !version->is_string()) {
    return Fail("conflist " + chain.name_ + ": field \"cniVersion\" is missing or not a string");
  }
  chain.cni_version_ = version->get<std::string>();
  if (auto dc = conflist.find("disableCheck"); dc != conflist.end()) {
    // The spec says a string; libcni also accepts a bool.
    chain.disable_check_ =
        dc->is_boolean() ? dc->get<bool>() : (dc->is_string() && dc->get<std::string>() == "true");
  }
  auto plugins = conflist.find("plugins");
  if (plugins == conflist.end() || !plugins->is_array() || plugins->empty()) {
    return Fail("conflist " + chain.name_ + ": field \"plugins\" is missing or empty");
  }
  for (std::size_t i = 0; i < plugins->size(); ++i) {
    const auto& p = (*plugins)[i];
    auto type = p.find("type");
    if (!p.is_object() || type == p.end() || !type->is_string() ||
        type->get<std::string>().empty()) {
      return Fail("conflist " + chain.name_ + ": plugins[" + std::to_string(i) +
                  "]: field \"type\" is missing or not a string");
    }
    chain.plugins_.push_back(p);
  }
  return chain;
}

Result<CniChain> CniChain::FromFile(const std::string& path) {
  std::ifstream in(path);
  if (!in)
    return Fail("conflist " + path + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  ojson j = ojson::parse(ss.str(), nullptr, false);
  if (j.is_discarded())
    return Fail("conflist " + path + ": not valid JSON");
  auto chain = FromJson(j);
  SLUICE_RETURN_IF_ERROR_CTX(chain, path);
  return chain;
}

Result<ojson> CniChain::Invoke(const ojson& plugin, const std::string& command,
                               const RuntimeConf& rt, const ojson* prev, PluginError* error) const {
  const std::string type = plugin["type"].get<std::string>();
  auto fail = [&](int code, std::string msg, std::string details) -> std::unexpected<Error> {
    PluginError pe{type, command, code, std::move(msg), std::move(details)};
    std::string text = pe.Describe();
    if (error)
      *error = std::move(pe);
    return std::unexpected(Error{std::move(text), code});
  };
  auto path = FindPlugin(plugin_dirs_, type);
  if (!path)
    return fail(0, path.error().message, "");

  // The list's name and version override the plugin's own.
  ojson conf = plugin;
  conf["name"] = name_;
  conf["cniVersion"] = cni_version_;
  if (prev)
    conf["prevResult"] = *prev;

  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::string_view(*e).starts_with("CNI_"))
      continue;
    env.emplace_back(*e);
  }
  // Like containerd and cri-o: runtime-specific args (K8S_POD_*) come with
  // IgnoreUnknown=1, so plugins that do not know them (bridge) do not fail.
  std::string args;
  bool has_ignore = false;
  for (const auto& [k, v] : rt.args)
    has_ignore = has_ignore || k == "IgnoreUnknown";
  if (!rt.args.empty() && !has_ignore)
    args = "IgnoreUnknown=1";
  for (const auto& [k, v] : rt.args)
    args += (args.empty() ? "" : ";") + k + "=" + v;
  std::string dirs;
  for (const auto& d : plugin_dirs_)
    dirs += (dirs.empty() ? "" : ":") + d;
  env.push_back("CNI_COMMAND=" + command);
  env.push_back("CNI_CONTAINERID=" + rt.container_id);
  env.push_back("CNI_NETNS=" + rt.netns);
  env.push_back("CNI_IFNAME=" + rt.ifname);
  env.push_back("CNI_ARGS=" + args);
  env.push_back("CNI_PATH=" + dirs);

  auto run = RunProcess({*path}, env, conf.dump(-1, ' ', false, ojson::error_handler_t::replace),
                        timeout_);
  if (!run)
    return fail(0, run.error().message, "");
  if (run->exit_status != 0) {
    ojson ej = ojson::parse(run->out, nullptr, false);
    if (!ej.is_discarded() && ej.is_object() && ej.contains("code")) {
      int code = ej["code"].is_number_integer() ? ej["code"].get<int>() : 0;
      std::string msg = ej.value("msg", std::string());
      std::string details = ej.value("details", std::string());
      return fail(code, msg, details);
    }
    return fail(0, "exit status " + std::to_string(run->exit_status),
                run->err.empty() ? run->out : run->err);
  }
  if (command != "ADD")
    return ojson();
  ojson result = ojson::parse(run->out, nullptr, false);
  if (result.is_discarded() || !result.is_object()) {
    return fail(0, "ADD result is not a JSON object", run->out);
  }
  return result;
}

Result<ojson> CniChain::Add(const RuntimeConf& rt, PluginError* error) const {
  ojson prev;
  bool have_prev = false;
  for (const auto& p : plugins_) {
    auto r = Invoke(p, "ADD", rt, have_prev ? &prev : nullptr, error);
    if (!r)
      return r;
    prev = std::move(*r);
    have_prev = true;
  }
  return prev;
}

Result<void> CniChain::Check(const RuntimeConf& rt, const ojson& cached, PluginError* error) const {
  if (!AtLeast040(cni_version_)) {
    return Fail("conflist " + name_ + ": cniVersion " + cni_version_ +
                " does not support CHECK (needs 0.4.0 or later)");
  }
  if (disable_check_)
    return {};
  for (const auto& p : plugins_) {
    SLUICE_RETURN_IF_ERROR(Invoke(p, "CHECK", rt, &cached, error));
  }
  return {};
}

Result<void> CniChain::Del(const RuntimeConf& rt, const ojson* cached, PluginError* error) const {
  // Before 0.4.0 DEL carried no prevResult.
  const ojson* prev = AtLeast040(cni_version_) ? cached : nullptr;
  for (auto it = plugins_.rbegin(); it != plugins_.rend(); ++it) {
    SLUICE_RETURN_IF_ERROR(Invoke(*it, "DEL", rt, prev, error));
  }
  return {};
}

namespace {

// IDs end up in a file name: refuse anything that could leave the cache directory.
Result<void> CheckName(const char* what, const std::string& v) {
  if (v.empty() || v.find('/') != std::string::npos || v == "." || v == "..") {
    return Fail(std::string("result cache: ") + what + " \"" + v +
                "\" is not usable in a file name");
  }
  return {};
}

Result<void> CheckKey(const std::string& network, const RuntimeConf& rt) {
  if (auto r = CheckName("network name", network); !r)
    return r;
  if (auto r = CheckName("container id", rt.container_id); !r)
    return r;
  return CheckName("interface name", rt.ifname);
}

}  // namespace

std::string ResultCache::PathFor(const std::string& network, const RuntimeConf& rt) const {
  return dir_ + "/" + network + "-" + rt.container_id + "-" + rt.ifname;
}

Result<void> ResultCache::Save(const std::string& network, const RuntimeConf& rt,
                               const ojson& result) const {
  if (auto r = CheckKey(network, rt); !r)
    return r;
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  if (ec)
    return Fail("result cache: create " + dir_ + ": " + ec.message());
  ojson entry = {
      {"kind", "sluiceCniCacheV1"}, {"networkName", network}, {"containerId", rt.container_id},
      {"ifName", rt.ifname},        {"netns", rt.netns},      {"result", result}};
  const std::string path = PathFor(network, rt);
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << entry.dump(-1, ' ', false, ojson::error_handler_t::replace) << "\n";
    out.close();
    if (!out)
      return Fail("result cache: write " + tmp + " failed");
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    return FailErrno("result cache: rename to " + path, err);
  }
  return {};
}

Result<std::optional<ojson>> ResultCache::Load(const std::string& network,
                                               const RuntimeConf& rt) const {
  SLUICE_RETURN_IF_ERROR(CheckKey(network, rt));
  const std::string path = PathFor(network, rt);
  std::ifstream in(path);
  if (!in) {
    if (errno == ENOENT)
      return std::optional<ojson>();
    return FailErrno("result cache: open " + path, errno);
  }
  std::stringstream ss;
  ss << in.rdbuf();
  ojson entry = ojson::parse(ss.str(), nullptr, false);
  if (entry.is_discarded() || !entry.is_object() || !entry.contains("result") ||
      !entry["result"].is_object()) {
    return Fail("result cache: " + path + ": not a cached result");
  }
  return std::optional<ojson>(entry["result"]);
}

Result<void> ResultCache::Remove(const std::string& network, const RuntimeConf& rt) const {
  if (auto r = CheckKey(network, rt); !r)
    return r;
  const std::string path = PathFor(network, rt);
  if (::unlink(path.c_str()) != 0 && errno != ENOENT)
    return FailErrno("result cache: remove " + path, errno);
  return {};
}

}  // namespace sluice::local
