// The built sluicectl as a child process (no shell), for the inspect tests: stdin from a
// string, stdout and stderr captured through files. The test target defines
// SLUICECTL_PATH.
#pragma once

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace sluice::testing {

struct Run {
  int rc = -1;
  std::string out, err;
};

inline Run Sluicectl(const std::vector<std::string>& args, const std::string& input = "") {
  namespace fs = std::filesystem;
  char tmpl[] = "/tmp/sluicectl-run-XXXXXX";
  const fs::path dir = mkdtemp(tmpl);
  const fs::path in = dir / "in", out = dir / "out", err = dir / "err";
  std::ofstream(in) << input;
  pid_t pid = fork();
  if (pid == 0) {
    int fi = open(in.c_str(), O_RDONLY), fo = open(out.c_str(), O_WRONLY | O_CREAT, 0600),
        fe = open(err.c_str(), O_WRONLY | O_CREAT, 0600);
    dup2(fi, 0);
    dup2(fo, 1);
    dup2(fe, 2);
    std::vector<char*> argv{const_cast<char*>(SLUICECTL_PATH)};
    for (const auto& a : args)
      argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(SLUICECTL_PATH, argv.data());
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  auto slurp = [](const fs::path& p) {
    std::ifstream f(p);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  };
  Run r{WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(out), slurp(err)};
  std::error_code ec;
  fs::remove_all(dir, ec);
  return r;
}

}  // namespace sluice::testing
