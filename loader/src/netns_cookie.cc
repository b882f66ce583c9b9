// A network namespace's cookie, by SO_NETNS_COOKIE (Linux 5.14+) or, before that, by a
// BPF program that sees a socket made inside the namespace (see netns_cookie.h).
//
// The BPF way: load bpf/netns_probe.bpf.c, attach it (cgroup/sock_create) to a private
// cgroup made for the call, and start a child with a raw clone() (no atfork handlers of
// the agent's libraries run; the child only makes system calls) that joins that cgroup,
// enters the namespace and opens a socket. The program stores the socket's netns cookie
// in its private map; the parent reads it after the child exits, then detaches and
// removes the cgroup. A call costs a program load and a process (milliseconds), once per
// pod enrolment.
#include "sluice/loader/netns_cookie.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <functional>
#include <mutex>
#include <thread>

#include "sluice/loader/system.h"
#include "sluice_netns_probe.skel.h"

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif

namespace sluice {

namespace {

std::atomic<NetnsCookieSource> g_source{NetnsCookieSource::kAuto};

Result<uint64_t> SockoptHere(const std::string& what) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0)
    s = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0)
    return FailErrno("netns cookie of " + what + ": socket", errno);
  uint64_t cookie = 0;
  socklen_t len = sizeof(cookie);
  int rc = getsockopt(s, SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &len);
  int err = errno;
  close(s);
  if (rc != 0)
    return FailErrno("netns cookie of " + what + ": getsockopt(SO_NETNS_COOKIE) (Linux 5.14+)",
                     err);
  return cookie;
}

// Child steps, reported through the exit status.
enum ChildStep : int { kJoinCgroup = 10, kWriteProcs, kSetns, kSocket };

std::string ChildFailure(int status) {
  if (!WIFEXITED(status))
    return "the probe child died (status " + std::to_string(status) + ")";
  switch (WEXITSTATUS(status)) {
    case kJoinCgroup:
      return "the probe child could not open its cgroup.procs";
    case kWriteProcs:
      return "the probe child could not join its cgroup";
    case kSetns:
      return "the probe child could not enter the namespace (setns)";
    case kSocket:
      return "the probe child could not open a socket";
  }
  return "the probe child failed (exit " + std::to_string(WEXITSTATUS(status)) + ")";
}

}  // namespace

void SetNetnsCookieSource(NetnsCookieSource source) {
  g_source.store(source);
}

NetnsCookieSource GetNetnsCookieSource() {
  return g_source.load();
}

// Is netns_fd the calling thread's own namespace? (Then no setns, which needs
// CAP_SYS_ADMIN, is needed.)
static bool IsCurrentNetns(int netns_fd) {
  struct stat a {
  }, b{};
  return fstat(netns_fd, &a) == 0 && stat("/proc/thread-self/ns/net", &b) == 0 &&
         a.st_ino == b.st_ino && a.st_dev == b.st_dev;
}

Result<uint64_t> NetnsCookieBySockopt(int netns_fd, const std::string& what) {
  if (netns_fd < 0 || IsCurrentNetns(netns_fd))
    return SockoptHere(what);
  Result<uint64_t> out = Fail("netns cookie of " + what + ": not read");
  // setns affects only the calling thread: do it on a short-lived one.
  std::thread t([&] {
    if (setns(netns_fd, CLONE_NEWNET) != 0) {
      out = FailErrno("entering network namespace " + what, errno);
      return;
    }
    out = SockoptHere(what);
  });
  t.join();
  return out;
}

Result<uint64_t> NetnsCookieByBpfProbe(int netns_fd, const std::string& what) {
  static std::mutex mu;  // one probe cgroup per process at a time
  std::lock_guard lock(mu);
  const std::string where = "netns cookie of " + what + " by BPF probe";

  int own_fd = -1;
  if (netns_fd < 0) {
    own_fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (own_fd < 0)
      return FailErrno(where + ": opening the current namespace", errno);
    netns_fd = own_fd;
  }
  auto cgroot = FindCgroup2Mount();
  SLUICE_RETURN_IF_ERROR(cgroot);
  const std::string cg = *cgroot + "/sluice-netns-probe-" + std::to_string(getpid());
  const std::string procs = cg + "/cgroup.procs";

  sluice_netns_probe* skel = nullptr;
  bpf_link* link = nullptr;
  int cgfd = -1;
  bool made_cgroup = false;
  struct Cleanup {
    std::function<void()> fn;
    ~Cleanup() { fn(); }
  } cleanup{[&] {
    if (link)
      bpf_link__destroy(link);
    if (skel)
      sluice_netns_probe__destroy(skel);
    if (cgfd >= 0)
      close(cgfd);
    // The reaped child may take a moment to leave the cgroup's accounting.
    for (int i = 0; made_cgroup && i < 100 && rmdir(cg.c_str()) != 0 && errno == EBUSY; i++)
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    if (own_fd >= 0)
      close(own_fd);
  }};

  skel = sluice_netns_probe__open_and_load();
  if (!skel)
    return FailErrno(where +
                         ": loading bpf/netns_probe.bpf.c (bpf_get_netns_cookie in "
                         "cgroup/sock_create needs Linux 5.7+)",
                     errno);
  if (mkdir(cg.c_str(), 0700) != 0 && errno != EEXIST)
    return FailErrno(where + ": creating cgroup " + cg, errno);
  made_cgroup = true;
  cgfd = open(cg.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (cgfd < 0)
    return FailErrno(where + ": opening cgroup " + cg, errno);
  link = bpf_program__attach_cgroup(skel->progs.sluice_netns_probe, cgfd);
  if (!link) {
    link = nullptr;
    return FailErrno(where + ": attaching to " + cg, errno);
  }

  const char* procs_path = procs.c_str();
  long pid = syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
  if (pid < 0)
    return FailErrno(where + ": clone", errno);
  if (pid == 0) {
    // The child: system calls only, then _exit.
    int fd = open(procs_path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
      _exit(kJoinCgroup);
    if (write(fd, "0", 1) != 1)
      _exit(kWriteProcs);
    close(fd);
    if (setns(netns_fd, CLONE_NEWNET) != 0)
      _exit(kSetns);
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
      s = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    _exit(s < 0 ? kSocket : 0);
  }
  int status = 0;
  while (waitpid(static_cast<pid_t>(pid), &status, 0) < 0) {
    if (errno != EINTR)
      return FailErrno(where + ": waiting for the probe child", errno);
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    return Fail(where + ": " + ChildFailure(status));

  uint32_t zero = 0;
  uint64_t cookie = 0;
  if (bpf_map__lookup_elem(skel->maps.sluice_probe_cookie, &zero, sizeof(zero), &cookie,
                           sizeof(cookie), 0) != 0)
    return FailErrno(where + ": reading the probe's map", errno);
  if (cookie == 0)
    return Fail(where + ": the probe saw no socket (is " + cg + " on the cgroup2 hierarchy?)");
  return cookie;
}

Result<uint64_t> NetnsCookieOfFd(int netns_fd, const std::string& what) {
  switch (GetNetnsCookieSource()) {
    case NetnsCookieSource::kSockopt:
      return NetnsCookieBySockopt(netns_fd, what);
    case NetnsCookieSource::kBpfProbe:
      return NetnsCookieByBpfProbe(netns_fd, what);
    case NetnsCookieSource::kAuto:
      break;
  }
  auto cookie = NetnsCookieBySockopt(netns_fd, what);
  if (!cookie && cookie.error().code == ENOPROTOOPT)
    return NetnsCookieByBpfProbe(netns_fd, what);
  return cookie;
}

}  // namespace sluice
