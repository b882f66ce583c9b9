// sluicectl cni add|del|check: runs a CNI network configuration list for one pod
// sandbox exactly as a container runtime does (CniChain), keeping ADD results in a cache
// for DEL and CHECK. The local cluster makes its pods with it; admins can use it to see
// what the runtime would get.
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "cli.h"
#include "commands.h"
#include "sluice/local/cni_chain.h"

namespace sluice::ctl {
namespace {

struct CniOptions {
  std::string conflist;
  std::string netns;
  std::string container_id;
  std::string ifname = "eth0";
  std::string pod;  // namespace/name
  std::string pod_uid;
  std::vector<std::string> args;
  std::vector<std::string> cni_path = {"/opt/cni/bin", "/usr/lib/cni"};
  std::string cache_dir = "/var/lib/sluice/cni/results";
  bool loopback = false;
};

// containerd brings a sandbox's loopback up with the loopback plugin, as its own network.
local::CniChain LoopbackChain(const CniOptions& o) {
  auto chain = local::CniChain::FromJson(
      {{"cniVersion", "1.0.0"},
       {"name", "cni-loopback"},
       {"plugins", nlohmann::ordered_json::array({{{"type", "loopback"}}})}});
  chain->set_plugin_dirs(o.cni_path);
  return std::move(*chain);
}

local::RuntimeConf LoopbackRuntime(const local::RuntimeConf& rt) {
  local::RuntimeConf lo = rt;
  lo.ifname = "lo";
  return lo;
}

local::RuntimeConf MakeRuntime(const std::string& what, const CniOptions& o) {
  local::RuntimeConf rt;
  rt.container_id = o.container_id;
  rt.netns = o.netns;
  rt.ifname = o.ifname;
  if (!o.pod.empty()) {
    auto slash = o.pod.find('/');
    if (slash == std::string::npos || slash == 0 || slash + 1 == o.pod.size())
      Die("cni " + what, "--pod \"" + o.pod + "\": expected NAMESPACE/NAME");
    rt.args.emplace_back("K8S_POD_NAMESPACE", o.pod.substr(0, slash));
    rt.args.emplace_back("K8S_POD_NAME", o.pod.substr(slash + 1));
    rt.args.emplace_back("K8S_POD_INFRA_CONTAINER_ID", o.container_id);
  }
  if (!o.pod_uid.empty())
    rt.args.emplace_back("K8S_POD_UID", o.pod_uid);
  for (const auto& kv : o.args) {
    auto eq = kv.find('=');
    if (eq == std::string::npos || eq == 0)
      Die("cni " + what, "--arg \"" + kv + "\": expected KEY=VALUE");
    rt.args.emplace_back(kv.substr(0, eq), kv.substr(eq + 1));
  }
  return rt;
}

local::CniChain LoadChain(const std::string& what, const CniOptions& o) {
  auto chain = local::CniChain::FromFile(o.conflist);
  if (!chain)
    Die("cni " + what, chain.error().message);
  chain->set_plugin_dirs(o.cni_path);
  return std::move(*chain);
}

void Add(const CniOptions& o) {
  auto chain = LoadChain("add", o);
  auto rt = MakeRuntime("add", o);
  if (o.loopback) {
    if (auto lo = LoopbackChain(o).Add(LoopbackRuntime(rt)); !lo)
      Die("cni add", "loopback: " + lo.error().message);
  }
  local::ResultCache cache(o.cache_dir);
  local::PluginError perr;
  auto result = chain.Add(rt, &perr);
  if (!result) {
    // As a runtime tears down a sandbox whose set-up failed: DEL the whole list so the
    // plugins that did succeed release what they took.
    auto del = chain.Del(rt, nullptr);
    Die("cni add",
        result.error().message + (del ? "; ran DEL to release what the other plugins set up"
                                      : "; clean-up DEL also failed: " + del.error().message));
  }
  if (auto saved = cache.Save(chain.name(), rt, *result); !saved)
    Die("cni add", saved.error().message);
  std::cout << result->dump(2) << "\n";
}

void Del(const CniOptions& o) {
  auto chain = LoadChain("del", o);
  auto rt = MakeRuntime("del", o);
  local::ResultCache cache(o.cache_dir);
  auto cached = cache.Load(chain.name(), rt);
  if (!cached)
    Die("cni del", cached.error().message);
  const nlohmann::ordered_json* prev = cached->has_value() ? &**cached : nullptr;
  if (auto r = chain.Del(rt, prev); !r)
    Die("cni del", r.error().message);
  if (o.loopback) {
    if (auto lo = LoopbackChain(o).Del(LoopbackRuntime(rt), nullptr); !lo)
      Die("cni del", "loopback: " + lo.error().message);
  }
  if (auto r = cache.Remove(chain.name(), rt); !r)
    Die("cni del", r.error().message);
}

void Check(const CniOptions& o) {
  auto chain = LoadChain("check", o);
  auto rt = MakeRuntime("check", o);
  local::ResultCache cache(o.cache_dir);
  auto cached = cache.Load(chain.name(), rt);
  if (!cached)
    Die("cni check", cached.error().message);
  if (!cached->has_value()) {
    Die("cni check", "no cached ADD result for network " + chain.name() + ", container " +
                         rt.container_id + " (" + cache.PathFor(chain.name(), rt) + ")");
  }
  if (auto r = chain.Check(rt, **cached); !r)
    Die("cni check", r.error().message);
  std::cout << "ok\n";
}

void AddSandboxOptions(CLI::App* cmd, CniOptions& o, bool netns_required) {
  cmd->add_option("--conflist", o.conflist, "CNI network configuration list (.conflist)")
      ->required()
      ->check(CLI::ExistingFile);
  auto* netns = cmd->add_option("--netns", o.netns, "network namespace path (CNI_NETNS)");
  if (netns_required)
    netns->required();
  cmd->add_option("--container-id", o.container_id, "sandbox id (CNI_CONTAINERID)")->required();
  cmd->add_option("--ifname", o.ifname, "interface name in the pod (CNI_IFNAME)")
      ->capture_default_str();
  cmd->add_option("--pod", o.pod, "NAMESPACE/NAME, passed as K8S_POD_NAMESPACE/K8S_POD_NAME");
  cmd->add_option("--pod-uid", o.pod_uid, "passed as K8S_POD_UID");
  cmd->add_option("--arg", o.args, "extra CNI_ARGS entry KEY=VALUE (repeatable)");
  cmd->add_option("--cni-path", o.cni_path, "plugin directories, in search order")
      ->capture_default_str();
  cmd->add_option("--cache-dir", o.cache_dir, "where ADD results are kept for DEL/CHECK")
      ->capture_default_str();
  cmd->add_flag("--loopback", o.loopback,
                "also run the loopback plugin (ifname lo), as containerd does for a sandbox");
}

}  // namespace

void AddCniCommands(CLI::App& app) {
  auto* group = app.add_subcommand("cni", "Run a CNI conflist for a pod sandbox, as a runtime");
  group->require_subcommand(1);
  auto opts = std::make_shared<CniOptions>();

  auto* add = group->add_subcommand("add", "ADD: plugins in order; prints the result");
  AddSandboxOptions(add, *opts, true);
  add->callback([opts] { Add(*opts); });

  auto* del = group->add_subcommand("del", "DEL: plugins in reverse, with the cached result");
  AddSandboxOptions(del, *opts, false);
  del->callback([opts] { Del(*opts); });

  auto* check = group->add_subcommand("check", "CHECK: plugins in order, with the cached result");
  AddSandboxOptions(check, *opts, true);
  check->callback([opts] { Check(*opts); });
}

}  // namespace sluice::ctl
