#include "sluice/loader/system.h"

#include "sluice/loader/netns_cookie.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#ifndef BPF_FS_MAGIC
#define BPF_FS_MAGIC 0xcafe4a11
#endif

namespace sluice {

Result<std::string> FindCgroup2Mount(const std::string& mounts) {
  std::ifstream in(mounts);
  if (!in)
    return FailErrno("reading " + mounts, errno);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string dev, dir, type;
    fields >> dev >> dir >> type;
    if (type == "cgroup2")
      return dir;
  }
  return Fail("no cgroup2 filesystem in " + mounts +
              ": Sluice attaches its connect hooks to a cgroup v2 hierarchy; mount one "
              "(mount -t cgroup2 none /sys/fs/cgroup) or pass --cgroup-root");
}

Result<void> EnsureBpffs(const std::string& dir) {
  namespace fs = std::filesystem;
  const std::string base = "/sys/fs/bpf";
  struct statfs st {};
  // Mount bpffs on /sys/fs/bpf only when the target is meant to live there and no
  // bpffs is mounted yet.
  if (dir.rfind(base, 0) == 0) {
    if (statfs(base.c_str(), &st) != 0)
      return FailErrno("statfs " + base, errno);
    if (st.f_type != BPF_FS_MAGIC) {
      if (mount("bpf", base.c_str(), "bpf", 0, "mode=0700") != 0)
        return FailErrno("mounting bpffs on " + base, errno);
    }
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    return Fail("creating " + dir + ": " + ec.message(), ec.value());
  if (statfs(dir.c_str(), &st) != 0)
    return FailErrno("statfs " + dir, errno);
  if (st.f_type != BPF_FS_MAGIC)
    return Fail(dir + " is not on a bpffs: pins need one");
  return {};
}

Result<uint64_t> CgroupId(const std::string& cgroup_path) {
  struct stat st {};
  if (stat(cgroup_path.c_str(), &st) != 0)
    return FailErrno("cgroup " + cgroup_path, errno);
  return static_cast<uint64_t>(st.st_ino);
}

Result<uint64_t> CurrentNetnsCookie() {
  return NetnsCookieOfFd(-1, "the current network namespace");
}

Result<uint64_t> NetnsCookie(const std::string& netns_path) {
  int fd = open(netns_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return FailErrno("network namespace " + netns_path, errno);
  auto out = NetnsCookieOfFd(fd, netns_path);
  close(fd);
  return out;
}

}  // namespace sluice
