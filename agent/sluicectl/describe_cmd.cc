// `sluicectl x describe svc NAME`: istioctl x describe for a Service, from the Istio and
// Kubernetes YAML in the config directory (--config-dir, else the local cluster's), with
// the namespace's live enrolment labels when a local cluster is running.
#include <iostream>

#include "cli.h"
#include "commands.h"
#include "sluice/inspect/describe.h"
#include "sluice/inspect/local_state.h"
#include "sluice/istio/loader.h"
#include "sluice/istio/registry.h"

namespace sluice::ctl {
namespace {

struct DescribeOptions {
  std::string kind;
  std::string name;
  std::string ns;
  std::string config_dir;
  std::string state_file = inspect::DefaultStatePath();
};

void RunDescribe(const DescribeOptions& o) {
  std::string dir = o.config_dir;
  std::optional<inspect::LocalState> state;
  if (dir.empty()) {
    auto s = inspect::LoadLocalState(o.state_file);
    if (!s)
      Die("x describe", s.error().message);
    if (s->config_dir.empty())
      Die("x describe", s->path + ": config_dir: missing");
    state = std::move(*s);
    dir = state->config_dir;
  }
  auto loaded = istio::LoadPaths({dir});
  for (const auto& e : loaded.errors)
    std::cerr << "warning: " << e << "\n";
  auto registry = istio::Registry::Build(loaded.config);
  std::string name = o.name, ns = o.ns;
  if (auto dot = name.find('.'); dot != std::string::npos && ns.empty()) {
    ns = name.substr(dot + 1);
    name = name.substr(0, dot);
  }
  if (ns.empty())
    ns = "default";
  auto text = inspect::DescribeService(loaded.config, registry, name, ns,
                                       state ? &state->namespace_labels : nullptr);
  if (!text)
    Die("x describe", text.error().message + " in " + dir);
  std::cout << *text;
}

}  // namespace

void AddExperimentalCommands(CLI::App& app) {
  auto* x = app.add_subcommand("x", "Experimental commands, as istioctl x");
  x->alias("experimental");
  x->require_subcommand(1);
  auto* describe =
      x->add_subcommand("describe", "Describe a resource and the config applied to it");
  describe->require_subcommand(1);
  auto o = std::make_shared<DescribeOptions>();
  auto* svc = describe->add_subcommand(
      "svc", "A Service: ports, DestinationRule and subsets, VirtualService routes, enrolment");
  svc->alias("service");
  svc->add_option("name", o->name, "Service name (NAME or NAME.NAMESPACE)")->required();
  svc->add_option("-n,--namespace", o->ns, "namespace (default: default)");
  svc->add_option("--config-dir", o->config_dir, "the Istio/Kubernetes YAML to read")
      ->check(CLI::ExistingPath);
  svc->add_option("--state-file", o->state_file, "the local cluster's state file")
      ->capture_default_str();
  svc->add_option_function<std::string>(
      "--state-dir", [o](const std::string& dir) { o->state_file = dir + "/state.json"; },
      "the local cluster's state directory (as `sluicectl local --state-dir`)");
  svc->callback([o] { RunDescribe(*o); });
}

}  // namespace sluice::ctl
