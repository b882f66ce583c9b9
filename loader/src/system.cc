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

Result<void> CheckCgroupCoversPods(const std::string& dir, const std::string& self_cgroup,
                                   const std::string& cgroup_ns) {
  namespace fs = std::filesystem;
  // The initial cgroup namespace has a fixed inode (PROC_CGROUP_INIT_INO in the kernel's
  // include/linux/proc_ns.h); any other is a private one.
  constexpr ino_t kInitCgroupNsIno = 0xEFFFFFFBU;
  struct stat ns {};
  if (stat(cgroup_ns.c_str(), &ns) != 0)
    return FailErrno("reading the cgroup namespace " + cgroup_ns, errno);
  if (ns.st_ino == kInitCgroupNsIno)
    return {};
  std::error_code ec;
  if (!fs::exists(fs::path(dir) / "cgroup.type", ec))
    return {};  // the hierarchy's root: it covers every process of the host
  // The caller's cgroup v2 path ("0::/PATH"), relative to the namespace's root, which is
  // what a cgroup2 mount made inside the namespace shows at its top.
  std::ifstream in(self_cgroup);
  if (!in)
    return FailErrno("reading " + self_cgroup, errno);
  std::string line, own;
  while (std::getline(in, line)) {
    if (line.rfind("0::", 0) == 0)
      own = line.substr(3);
  }
  // The cgroup2 mount `dir` is on (the longest mount point above it, from mountinfo),
  // and the cgroup its top shows (its "root" field, relative to our namespace's root).
  const fs::path want = fs::weakly_canonical(dir, ec);
  std::ifstream mi("/proc/self/mountinfo");
  if (!mi)
    return FailErrno("reading /proc/self/mountinfo", errno);
  std::string best_point, best_root;
  while (std::getline(mi, line)) {
    std::istringstream f(line);
    std::string id, parent, devno, root, point, field;
    f >> id >> parent >> devno >> root >> point;
    while (f >> field && field != "-") {
    }
    std::string type;
    f >> type;
    if (type != "cgroup2")
      continue;
    const std::string w = want.string();
    const bool above =
        w == point || point == "/" ||
        (w.rfind(point, 0) == 0 && w.size() > point.size() && w[point.size()] == '/');
    if (above && point.size() >= best_point.size()) {
      best_point = point;
      best_root = root;
    }
  }
  if (best_point.empty() || own.rfind(best_root, 0) != 0)
    return {};  // not on a mount showing the caller's cgroup
  const std::string below = own.substr(best_root.size());
  const fs::path own_dir = fs::path(best_point) / fs::path(below).relative_path();
  for (fs::path p = fs::weakly_canonical(own_dir, ec); !p.empty(); p = p.parent_path()) {
    if (p == want) {
      return Fail("cgroup " + dir +
                  " would make the connect hooks cover only this container: this process runs "
                  "in a private cgroup namespace, and " +
                  dir +
                  " is its own cgroup, not the root of the host's cgroup2 hierarchy. Mount the "
                  "host's cgroup2 filesystem into the container (the DaemonSet's hostPath "
                  "/sys/fs/cgroup) and pass it as --cgroup-root");
    }
    if (p == p.parent_path())
      break;
  }
  return {};
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
