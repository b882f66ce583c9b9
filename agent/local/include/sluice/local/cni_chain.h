// CniChain runs a network configuration list (.conflist) the way a container runtime
// does through libcni: plugins in order for ADD and CHECK, in reverse order for DEL;
// each plugin gets the list's name and cniVersion; on ADD each plugin after the first
// gets the previous plugin's result as prevResult; CHECK and DEL get the result of the
// last ADD as prevResult (when the runtime has it).
//
// Used by the local cluster to make pods with real plugins, by `sluicectl cni` and by the
// CNI tests.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "sluice/common/result.h"

namespace sluice::local {

// The per-sandbox part of a plugin call (CNI_* environment variables).
struct RuntimeConf {
  std::string container_id;
  std::string netns;  // path; empty on a DEL after the namespace is gone
  std::string ifname = "eth0";
  // CNI_ARGS. As containerd does, "IgnoreUnknown=1" is prepended when absent, so
  // plugins that do not know K8S_POD_* accept them.
  std::vector<std::pair<std::string, std::string>> args;
};

// A failed plugin call. `code` is the CNI error code from the plugin's error JSON (0 when
// the plugin failed without one).
struct PluginError {
  std::string plugin;
  std::string command;
  int code = 0;
  std::string msg;
  std::string details;
  std::string Describe() const;
};

class CniChain {
 public:
  static Result<CniChain> FromJson(const nlohmann::ordered_json& conflist);
  static Result<CniChain> FromFile(const std::string& path);

  // Directories searched for plugin binaries, in order (CNI_PATH).
  void set_plugin_dirs(std::vector<std::string> dirs) { plugin_dirs_ = std::move(dirs); }
  void set_timeout(std::chrono::milliseconds t) { timeout_ = t; }

  const std::string& name() const { return name_; }
  const std::string& cni_version() const { return cni_version_; }
  std::size_t size() const { return plugins_.size(); }

  // Returns the last plugin's result. On failure the caller should run Del, as a
  // runtime does (the spec leaves clean-up after a failed ADD to the runtime).
  Result<nlohmann::ordered_json> Add(const RuntimeConf& rt, PluginError* error = nullptr) const;
  Result<void> Check(const RuntimeConf& rt, const nlohmann::ordered_json& cached,
                     PluginError* error = nullptr) const;
  Result<void> Del(const RuntimeConf& rt, const nlohmann::ordered_json* cached,
                   PluginError* error = nullptr) const;

 private:
  Result<nlohmann::ordered_json> Invoke(const nlohmann::ordered_json& plugin,
                                        const std::string& command, const RuntimeConf& rt,
                                        const nlohmann::ordered_json* prev,
                                        PluginError* error) const;

  std::string name_;
  std::string cni_version_;
  bool disable_check_ = false;
  std::vector<nlohmann::ordered_json> plugins_;
  std::vector<std::string> plugin_dirs_ = {"/opt/cni/bin", "/usr/lib/cni"};
  std::chrono::milliseconds timeout_{30000};
};

// Where a runtime keeps the result of each ADD so DEL and CHECK can pass it back as
// prevResult (libcni keeps them in /var/lib/cni/results). One JSON file per
// (network, container, interface), written atomically.
class ResultCache {
 public:
  explicit ResultCache(std::string dir) : dir_(std::move(dir)) {}
  Result<void> Save(const std::string& network, const RuntimeConf& rt,
                    const nlohmann::ordered_json& result) const;
  // nullopt when nothing is cached (never added, or already deleted).
  Result<std::optional<nlohmann::ordered_json>> Load(const std::string& network,
                                                     const RuntimeConf& rt) const;
  Result<void> Remove(const std::string& network, const RuntimeConf& rt) const;
  std::string PathFor(const std::string& network, const RuntimeConf& rt) const;

 private:
  std::string dir_;
};

}  // namespace sluice::local
