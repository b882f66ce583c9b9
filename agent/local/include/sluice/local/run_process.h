// Runs a program with a given environment and stdin, collecting stdout and stderr, with
// a time limit. What a container runtime does to call a CNI plugin.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "sluice/common/result.h"

namespace sluice::local {

struct ProcessResult {
  int exit_status = -1;  // exit code, or 128 + signal when it was killed
  long max_rss_kb = 0;   // peak resident memory of the child or of a child it waited for
  std::string out;
  std::string err;
};

// argv[0] is the program path (no PATH search). env replaces the environment entirely.
// On timeout the child is killed with SIGKILL and an ETIMEDOUT error is returned.
Result<ProcessResult> RunProcess(const std::vector<std::string>& argv,
                                 const std::vector<std::string>& env, const std::string& input,
                                 std::chrono::milliseconds timeout);

}  // namespace sluice::local
