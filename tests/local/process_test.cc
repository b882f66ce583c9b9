// The local cluster's process handling without a pod (no root needed): containers'
// monitors record how a process ended, stdout+stderr go to the log, a missing program is
// an error naming it, StopProcess ends a process group, RunInPod passes the status on.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "sluice/local/cluster.h"
#include "sluice/local/process.h"

using namespace sluice::local;
namespace fs = std::filesystem;

namespace {

struct TempDir {
  fs::path path = fs::temp_directory_path() / ("sluicet-proc-" + std::to_string(getpid()));
  TempDir() { fs::create_directories(path); }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

std::string Slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string WaitFile(const fs::path& p) {
  for (int i = 0; i < 250 && !fs::exists(p); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  return Slurp(p);
}

Command Sh(const std::string& script, const fs::path& log) {
  Command c;
  c.argv = {"sh", "-c", script};
  c.env = BaseEnv();
  c.env["GREETING"] = "hello";
  c.log = log.string();
  return c;
}

}  // namespace

TEST_CASE("a started process logs stdout and stderr, and its monitor records the exit status") {
  TempDir t;
  auto started = StartInPod({}, Sh("echo $GREETING; echo oops >&2; exit 3", t.path / "c.log"),
                            (t.path / "c.exit").string());
  REQUIRE(started);
  CHECK(started->pid > 0);
  CHECK(WaitFile(t.path / "c.exit") == "exited 3\n");
  CHECK(Slurp(t.path / "c.log") == "hello\noops\n");
  CHECK_FALSE(Alive(started->pid, started->start_time));
}

TEST_CASE("a program that cannot run is an error naming it, not a silent exit") {
  TempDir t;
  Command c;
  c.argv = {"sluicet-no-such-program", "x"};
  c.env = BaseEnv();
  auto started = StartInPod({}, c, (t.path / "x.exit").string());
  REQUIRE_FALSE(started);
  CHECK(started.error().message ==
        "sluicet-no-such-program: running sluicet-no-such-program: No such file or directory");
  PodContext missing;
  missing.netns = (t.path / "no-netns").string();
  auto bad_ns = StartInPod(missing, Sh("true", t.path / "l"), (t.path / "y.exit").string());
  REQUIRE_FALSE(bad_ns);
  CHECK(bad_ns.error().message.rfind("network namespace " + missing.netns, 0) == 0);
}

TEST_CASE("StopProcess ends the whole process group and the monitor says it was killed") {
  TempDir t;
  // The shell's child sleeps too: both are in the container's process group.
  auto started = StartInPod({}, Sh("sleep 100 & sleep 100; wait", t.path / "s.log"),
                            (t.path / "s.exit").string());
  REQUIRE(started);
  REQUIRE(Alive(started->pid, started->start_time));
  auto t0 = std::chrono::steady_clock::now();
  StopProcess(started->pid, started->start_time, 3000);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(2));
  CHECK_FALSE(Alive(started->pid, started->start_time));
  CHECK(WaitFile(t.path / "s.exit") == "killed 15\n");
  // No sleep of that group is left.
  std::string left;
  for (const auto& e : fs::directory_iterator("/proc")) {
    std::string stat = Slurp(e.path() / "stat");
    auto rp = stat.rfind(')');
    if (rp == std::string::npos)
      continue;
    std::istringstream f(stat.substr(rp + 2));
    std::string state, ppid, pgrp;
    f >> state >> ppid >> pgrp;
    if (pgrp == std::to_string(started->pid) && state != "Z")
      left += e.path().filename().string() + " ";
  }
  CHECK(left.empty());
}

TEST_CASE("RunInPod waits and passes the exit status on, RunTool quotes a tool's error") {
  TempDir t;
  Command c = Sh("exit 5", "");
  c.log.clear();
  auto status = RunInPod({}, c);
  REQUIRE(status);
  CHECK(*status == 5);
  auto out = RunTool({"sh", "-c", "echo out"});
  REQUIRE(out);
  CHECK(*out == "out\n");
  auto err = RunTool({"sh", "-c", "echo bad thing >&2; exit 2"});
  REQUIRE_FALSE(err);
  CHECK(err.error().message == "sh -c echo bad thing >&2; exit 2: exit status 2: bad thing");
}

TEST_CASE("helpers: HttpGet on a closed port is status 0, Tail quotes the last lines") {
  CHECK(HttpGet("127.0.0.1:1", "/ready", 200).status == 0);
  CHECK(HttpGet("unix:/nonexistent/sluicet.sock", "/ready", 200).status == 0);
  TempDir t;
  std::ofstream(t.path / "log") << "a\nb\nc\nd\n";
  CHECK(Tail((t.path / "log").string(), 2) == "  | c\n  | d\n");
}
