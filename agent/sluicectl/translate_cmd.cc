// `sluicectl translate` and `sluicectl registryz`: run the local control plane's
// translator on YAML files and print what a proxy would be served, for review.
#include <yaml-cpp/yaml.h>

#include <iostream>
#include <nlohmann/json.hpp>

#include "cli.h"
#include "commands.h"
#include "sluice/inspect/local_state.h"
#include "sluice/istio/loader.h"
#include "sluice/istio/registry.h"
#include "sluice/istio/translator.h"

namespace sluice::ctl {
namespace {

YAML::Node JsonToYaml(const nlohmann::ordered_json& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::object: {
      YAML::Node n(YAML::NodeType::Map);
      for (auto it = j.begin(); it != j.end(); ++it)
        n[it.key()] = JsonToYaml(it.value());
      return n;
    }
    case nlohmann::json::value_t::array: {
      YAML::Node n(YAML::NodeType::Sequence);
      for (const auto& v : j)
        n.push_back(JsonToYaml(v));
      return n;
    }
    case nlohmann::json::value_t::string:
      return YAML::Node(j.get<std::string>());
    case nlohmann::json::value_t::null:
      return YAML::Node();
    default:
      return YAML::Node(j.dump());
  }
}

// Loads, reports errors and warnings on stderr; returns false when any document failed.
bool Load(const std::vector<std::string>& files, istio::LoadResult& out) {
  out = istio::LoadPaths(files);
  for (const auto& w : out.warnings)
    std::cerr << "warning: " << w << "\n";
  for (const auto& e : out.errors)
    std::cerr << "error: " << e << "\n";
  return out.ok();
}

struct TranslateOptions {
  std::vector<std::string> files;
  std::string proxy = "sidecar:default";
  std::string output = "json";
};

void RunTranslate(const TranslateOptions& opt) {
  auto proxy = istio::ProxySpec::Parse(opt.proxy);
  if (!proxy) {
    Die("translate", proxy.error().message, 2);
  }
  istio::LoadResult loaded;
  // A one-shot command: a refused document fails the whole translation, with nothing on
  // stdout, so a pipeline never consumes a translation that is missing a resource.
  if (!Load(opt.files, loaded))
    throw CLI::RuntimeError(1);
  auto registry = istio::Registry::Build(loaded.config);
  for (const auto& w : registry.warnings())
    std::cerr << "warning: " << w << "\n";
  auto translation = istio::Translate(loaded.config, registry, *proxy);
  for (const auto& w : translation.warnings)
    std::cerr << "warning: " << w << "\n";
  auto json = istio::ResourcesToJson(translation.resources);
  if (!json) {
    Die("translate", json.error().message);
  }
  auto doc = nlohmann::ordered_json::parse(*json);
  if (opt.output == "yaml") {
    YAML::Emitter emitter;
    emitter << JsonToYaml(doc);
    std::cout << emitter.c_str() << "\n";
  } else {
    std::cout << doc.dump(2) << "\n";
  }
}

}  // namespace

void AddTranslateCommands(CLI::App& app) {
  auto opt = std::make_shared<TranslateOptions>();
  auto* cmd = app.add_subcommand(
      "translate", "Translate Istio/Kubernetes YAML into the Envoy resources a proxy is served");
  cmd->add_option("-f,--filename", opt->files, "YAML file or directory (repeatable)")
      ->required()
      ->check(CLI::ExistingPath);
  cmd->add_option("--proxy", opt->proxy,
                  "sidecar:NAMESPACE, sidecar:KEY=VALUE[,KEY=VALUE]@NAMESPACE (a pod with "
                  "those labels), grpc:NAMESPACE (proxyless gRPC) or "
                  "gateway:KEY=VALUE[,KEY=VALUE][@NAMESPACE]")
      ->capture_default_str();
  cmd->add_option("-o,--output", opt->output, "json or yaml")
      ->check(CLI::IsMember({"json", "yaml"}))
      ->capture_default_str();
  cmd->callback([opt] { RunTranslate(*opt); });

  auto files = std::make_shared<std::vector<std::string>>();
  auto* reg = app.add_subcommand(
      "registryz",
      "Print the service registry built from YAML, shaped like istiod's /debug/registryz");
  auto state_file = std::make_shared<std::string>(inspect::DefaultStatePath());
  reg->add_option("-f,--filename,--config-dir", *files,
                  "YAML file or directory (repeatable); default: the local cluster's config")
      ->check(CLI::ExistingPath);
  reg->add_option("--state-file", *state_file, "the local cluster's state file")
      ->capture_default_str();
  reg->add_option_function<std::string>(
      "--state-dir", [state_file](const std::string& dir) { *state_file = dir + "/state.json"; },
      "the local cluster's state directory (as `sluicectl local --state-dir`)");
  reg->callback([files, state_file] {
    if (files->empty()) {
      auto state = inspect::LoadLocalState(*state_file);
      if (!state) {
        Die("registryz", state.error().message);
      }
      files->push_back(state->config_dir);
    }
    istio::LoadResult loaded;
    bool clean = Load(*files, loaded);
    std::cout << istio::Registry::Build(loaded.config).RegistryzJson() << "\n";
    if (!clean)
      throw CLI::RuntimeError(1);
  });
}

}  // namespace sluice::ctl
