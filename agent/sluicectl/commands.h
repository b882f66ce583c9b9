// sluicectl's command groups. Each group lives in its own file and adds its
// subcommands to the app; main() only wires them together.
#pragma once

#include <CLI/CLI.hpp>

namespace sluice::ctl {

// Every group returns nothing; a subcommand's callback sets the exit code through
// CLI11 (throw CLI::RuntimeError(code)) after printing a message that names the
// file, resource or field that was wrong.
void AddVersionCommand(CLI::App& app);
void AddBpfCommands(CLI::App& app);
// agent pods|metrics|ready|config-dump: a running sluice-agent's admin endpoint.
void AddAgentCommands(CLI::App& app);
// cni add|del|check: run a CNI conflist for a pod sandbox as a container runtime does.
void AddCniCommands(CLI::App& app);
// ads-dump: fetch a proxy's config over ADS as the agent does, and print it.
void AddAdsCommands(CLI::App& app);
// translate, registryz: the Istio translator (local control plane) on YAML files.
void AddTranslateCommands(CLI::App& app);
// xds serve: the local control plane over gRPC ADS.
void AddXdsServeCommand(CLI::App& app);
// proxy-config cluster|route|endpoint|listener: a proxy's config, as istioctl shows it.
void AddProxyConfigCommands(CLI::App& app);
// x describe svc: a Service and the Istio config that applies to it.
void AddExperimentalCommands(CLI::App& app);
// enroll: add the enrolment label to a manifest's workloads (kube-inject's habit).
void AddEnrollCommand(CLI::App& app);
// local up|apply|delete|down|get|label|exec|logs|port-forward: the local cluster.
void AddLocalCommands(CLI::App& app);

}  // namespace sluice::ctl
