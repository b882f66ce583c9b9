// The data plane refuses a cgroup that would cover only its own container (issue 19): a
// process in a private cgroup namespace sees its container's cgroup at the top of its own
// cgroup2 mount, and hooks attached there would never see a pod's connect().
#include <sched.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <string>

#include "sluice/loader/system.h"

namespace fs = std::filesystem;

namespace {

// Runs `body` in a child that was moved into `cgroup`, then unshared its cgroup and mount
// namespaces (as a container runtime does) and mounted cgroup2 at `mnt`; returns what the
// child wrote to its pipe ("ok" or the error).
template <class F>
std::string InContainer(const fs::path& cgroup, const fs::path& mnt, F body) {
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    close(fds[0]);
    auto say = [&](const std::string& s) {
      (void)!write(fds[1], s.data(), s.size());
      _exit(0);
    };
    std::ofstream(cgroup / "cgroup.procs") << getpid() << "\n";
    if (unshare(CLONE_NEWCGROUP | CLONE_NEWNS) != 0)
      say("unshare failed");
    if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0)
      say("making mounts private failed");
    if (mount("none", mnt.c_str(), "cgroup2", 0, nullptr) != 0)
      say("mounting cgroup2 failed");
    say(body());
  }
  close(fds[1]);
  std::string out;
  char buf[1024];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof buf)) > 0)
    out.append(buf, static_cast<size_t>(n));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return out;
}

}  // namespace

TEST_CASE("a container's own cgroup is refused as the hooks' cgroup, the host's root is not") {
  auto host = sluice::FindCgroup2Mount();
  REQUIRE(host);
  const fs::path cg = fs::path(*host) / ("sluice-test-cgroot-" + std::to_string(getpid()));
  char tmpl[] = "/tmp/sluice-cgroot-XXXXXX";
  REQUIRE(mkdtemp(tmpl) != nullptr);
  const fs::path mnt(tmpl);
  struct Cleanup {
    fs::path cg, mnt;
    ~Cleanup() {
      rmdir(cg.c_str());  // the child is gone, so the cgroup is empty
      rmdir(mnt.c_str());
    }
  } cleanup{cg, mnt};
  fs::create_directory(cg);

  // In the host's namespaces every cgroup passes: a child cgroup is a deliberate choice.
  CHECK(sluice::CheckCgroupCoversPods(*host));
  CHECK(sluice::CheckCgroupCoversPods(cg.string()));

  const std::string host_root = *host;
  std::string inside = InContainer(cg, mnt, [&]() -> std::string {
    auto own = sluice::CheckCgroupCoversPods(mnt.string());
    if (own)
      return "the container's own cgroup was accepted";
    // The host's hierarchy, still mounted where it was: its root covers every process.
    if (auto root = sluice::CheckCgroupCoversPods(host_root); !root)
      return "the host's root was refused: " + root.error().message;
    return own.error().message;
  });
  CHECK(inside.find("cgroup " + mnt.string() +
                    " would make the connect hooks cover only this container") == 0);
  CHECK(inside.find("--cgroup-root") != std::string::npos);
}
