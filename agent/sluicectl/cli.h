// What every sluicectl command shares: how a command fails.
//
// A command that cannot go on prints one line naming the command and what was wrong
// ("sluicectl local exec: pod default/x is not running") and ends with an exit code;
// the code goes back through CLI11 (CLI::RuntimeError), so main() returns it.
#pragma once

#include <string>

namespace sluice::ctl {

// Prints "sluicectl COMMAND: MESSAGE" ("sluicectl: MESSAGE" when `command` is empty) on
// stderr and ends the running subcommand with exit status `code`.
[[noreturn]] void Die(const std::string& command, const std::string& message, int code = 1);

}  // namespace sluice::ctl
