#include <iostream>

#include "commands.h"

#ifndef SLUICE_VERSION
#define SLUICE_VERSION "unknown"
#endif

namespace sluice::ctl {

void AddVersionCommand(CLI::App& app) {
  auto* cmd = app.add_subcommand("version", "Print the sluicectl version");
  cmd->callback([] { std::cout << "sluicectl " << SLUICE_VERSION << "\n"; });
}

}  // namespace sluice::ctl
