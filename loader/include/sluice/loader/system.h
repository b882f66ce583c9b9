// The host facts the loader depends on: where cgroup2 and bpffs are, and how to name a
// network namespace to the kernel (its cookie).
#pragma once

#include <cstdint>
#include <string>

#include "sluice/common/result.h"

namespace sluice {

// The cgroup2 mount point, read from /proc/mounts (never assumed).
[[nodiscard]] Result<std::string> FindCgroup2Mount(const std::string& mounts = "/proc/mounts");

// Refuses a cgroup that would make the connect hooks cover nothing but the caller's own
// container: the caller runs in a private cgroup namespace (a container), `dir` is not
// the root of the cgroup2 hierarchy (it has cgroup.type, which the root lacks), and the
// caller's own cgroup is `dir` or below it. That is what /sys/fs/cgroup shows in a
// container; the hooks must attach to the host's root, mounted into the container (the
// DaemonSet's hostPath). Any other cgroup passes: a child cgroup the caller is not in
// (tests, the local cluster) is a deliberate choice. `self_cgroup` and `cgroup_ns` are
// the caller's /proc/self files (tests point them elsewhere).
[[nodiscard]] Result<void> CheckCgroupCoversPods(
    const std::string& dir, const std::string& self_cgroup = "/proc/self/cgroup",
    const std::string& cgroup_ns = "/proc/self/ns/cgroup");

// Makes sure `dir` (e.g. /sys/fs/bpf/sluice) lives on a bpffs, mounting bpffs on
// /sys/fs/bpf when nothing is mounted there, and creates the directory.
[[nodiscard]] Result<void> EnsureBpffs(const std::string& dir);

// The cgroup id (inode of the cgroup2 directory), as bpf link info reports it.
[[nodiscard]] Result<uint64_t> CgroupId(const std::string& cgroup_path);

// The cookie of a network namespace given by path (/run/netns/NAME, /proc/PID/ns/net):
// SO_NETNS_COOKIE from a socket opened inside it, or the BPF probe where the kernel has
// no SO_NETNS_COOKIE (see netns_cookie.h).
[[nodiscard]] Result<uint64_t> NetnsCookie(const std::string& netns_path);

// The cookie of the calling thread's current network namespace.
[[nodiscard]] Result<uint64_t> CurrentNetnsCookie();

}  // namespace sluice
