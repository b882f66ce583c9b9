// sluicectl: inspect and drive Sluice (kernel state, control plane, local cluster).
#include <CLI/CLI.hpp>

#include "commands.h"

int main(int argc, char** argv) {
  CLI::App app{"sluicectl: inspect and drive the Sluice data plane", "sluicectl"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Show help for every subcommand");

  sluice::ctl::AddVersionCommand(app);
  sluice::ctl::AddBpfCommands(app);
  sluice::ctl::AddAgentCommands(app);
  sluice::ctl::AddCniCommands(app);
  sluice::ctl::AddAdsCommands(app);
  sluice::ctl::AddTranslateCommands(app);
  sluice::ctl::AddXdsServeCommand(app);
  sluice::ctl::AddProxyConfigCommands(app);
  sluice::ctl::AddExperimentalCommands(app);
  sluice::ctl::AddEnrollCommand(app);
  sluice::ctl::AddLocalCommands(app);

  CLI11_PARSE(app, argc, argv);
  return 0;
}
