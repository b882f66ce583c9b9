// Die(): one failure exit for every sluicectl command (cli.h).
#include "cli.h"

#include <CLI/CLI.hpp>
#include <iostream>

namespace sluice::ctl {

void Die(const std::string& command, const std::string& message, int code) {
  std::cerr << "sluicectl" << (command.empty() ? "" : " " + command) << ": " << message << "\n";
  throw CLI::RuntimeError(code);
}

}  // namespace sluice::ctl
