#include "sluice/local/process.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "sluice/local/run_process.h"

namespace sluice::local {
namespace {

namespace fs = std::filesystem;

// Everything the child needs, resolved before fork: after fork only syscalls run.
struct Prepared {
  std::vector<std::string> argv_s, env_s;
  std::vector<char*> argv, env;
  std::string path_search;  // PATH for execvpe
  int netns_fd = -1, cgroup_fd = -1, log_fd = -1, null_fd = -1;
  std::string hosts, resolv;

  ~Prepared() {
    for (int fd : {netns_fd, cgroup_fd, log_fd, null_fd})
      if (fd >= 0)
        ::close(fd);
  }
};

Result<void> Prepare(const PodContext& pod, const Command& cmd, Prepared& p) {
  if (cmd.argv.empty())
    return Fail("empty command");
  p.argv_s = cmd.argv;
  // A bare command name is looked up in the command's own PATH, as the container's shell
  // would (execvpe searches the caller's PATH, not the one it is given).
  if (auto path = cmd.env.find("PATH");
      path != cmd.env.end() && p.argv_s[0].find('/') == std::string::npos) {
    std::string_view dirs = path->second;
    while (!dirs.empty()) {
      auto colon = dirs.find(':');
      std::string dir(dirs.substr(0, colon));
      dirs = colon == std::string_view::npos ? "" : dirs.substr(colon + 1);
      if (dir.empty())
        continue;
      std::string candidate = dir + "/" + p.argv_s[0];
      std::error_code ec;
      if (fs::is_regular_file(candidate, ec) && ::access(candidate.c_str(), X_OK) == 0) {
        p.argv_s[0] = std::move(candidate);
        break;
      }
    }
  }
  for (const auto& [k, v] : cmd.env)
    p.env_s.push_back(k + "=" + v);
  for (auto& s : p.argv_s)
    p.argv.push_back(s.data());
  p.argv.push_back(nullptr);
  for (auto& s : p.env_s)
    p.env.push_back(s.data());
  p.env.push_back(nullptr);
  if (!pod.netns.empty()) {
    p.netns_fd = ::open(pod.netns.c_str(), O_RDONLY | O_CLOEXEC);
    if (p.netns_fd < 0)
      return FailErrno("network namespace " + pod.netns, errno);
  }
  if (!pod.cgroup.empty()) {
    std::string procs = pod.cgroup + "/cgroup.procs";
    p.cgroup_fd = ::open(procs.c_str(), O_WRONLY | O_CLOEXEC);
    if (p.cgroup_fd < 0)
      return FailErrno("cgroup " + procs, errno);
  }
  if (!cmd.log.empty()) {
    p.log_fd = ::open(cmd.log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (p.log_fd < 0)
      return FailErrno("log " + cmd.log, errno);
    p.null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  }
  p.hosts = pod.hosts_file;
  if (!p.hosts.empty() && ::access(p.hosts.c_str(), R_OK) != 0)
    return FailErrno("hosts file " + p.hosts, errno);
  if (!p.hosts.empty() && !pod.resolv_file.empty()) {
    if (::access(pod.resolv_file.c_str(), R_OK) != 0)
      return FailErrno("resolver file " + pod.resolv_file, errno);
    if (::access("/etc/resolv.conf", F_OK) == 0)  // a bind mount needs its target
      p.resolv = pod.resolv_file;
  }
  return {};
}

void WriteAll(int fd, const char* s) {
  size_t n = std::strlen(s);
  while (n > 0) {
    ssize_t w = ::write(fd, s, n);
    if (w <= 0)
      return;
    s += w;
    n -= static_cast<size_t>(w);
  }
}

[[noreturn]] void ChildDie(int err_fd, const char* what) {
  char buf[512];
  std::snprintf(buf, sizeof(buf), "%s: %s", what, std::strerror(errno));
  WriteAll(err_fd, buf);
  _exit(127);
}

// In the forked child: enter the pod, then exec. On failure, the reason goes to err_fd.
[[noreturn]] void EnterAndExec(const Prepared& p, int err_fd, bool new_session) {
  auto die = [err_fd](const char* what) { ChildDie(err_fd, what); };
  if (new_session && ::setsid() < 0)
    die("setsid");
  if (p.cgroup_fd >= 0 && ::write(p.cgroup_fd, "0", 1) != 1)
    die("joining the pod's cgroup");
  if (p.netns_fd >= 0 && ::setns(p.netns_fd, CLONE_NEWNET) != 0)
    die("joining the pod's network namespace");
  if (!p.hosts.empty()) {
    if (::unshare(CLONE_NEWNS) != 0)
      die("private mount namespace");
    // Slave, not private: mounts made later on the host (the bind mounts `ip netns add`
    // makes under the shared /run/netns) still reach this namespace — the agent opens
    // pods' namespaces by those paths — while the hosts file bind stays here.
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_SLAVE, nullptr) != 0)
      die("making mounts slaves of the host's");
    if (::mount(p.hosts.c_str(), "/etc/hosts", nullptr, MS_BIND, nullptr) != 0)
      die("bind-mounting the pod's hosts file on /etc/hosts");
    if (!p.resolv.empty() &&
        ::mount(p.resolv.c_str(), "/etc/resolv.conf", nullptr, MS_BIND, nullptr) != 0)
      die("bind-mounting the cluster's resolver file on /etc/resolv.conf");
  }
  if (p.log_fd >= 0) {
    if (::dup2(p.null_fd, 0) < 0 || ::dup2(p.log_fd, 1) < 0 || ::dup2(p.log_fd, 2) < 0)
      die("redirecting output to the container log");
  }
  if (::chdir("/") != 0)
    die("chdir /");
  ::signal(SIGPIPE, SIG_DFL);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  ::execvpe(p.argv[0], p.argv.data(), p.env.data());
  char what[300];
  std::snprintf(what, sizeof(what), "running %s", p.argv[0]);
  ChildDie(err_fd, what);
}

std::string ReadAllFd(int fd) {
  std::string out;
  char buf[512];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof(buf))) > 0)
    out.append(buf, static_cast<size_t>(n));
  return out;
}

void WriteExitFile(const char* path, int status) {
  char buf[64];
  if (WIFEXITED(status))
    std::snprintf(buf, sizeof(buf), "exited %d\n", WEXITSTATUS(status));
  else
    std::snprintf(buf, sizeof(buf), "killed %d\n", WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  int fd = ::open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd >= 0) {
    WriteAll(fd, buf);
    ::close(fd);
  }
}

}  // namespace

Result<Started> StartInPod(const PodContext& pod, const Command& cmd,
                           const std::string& exit_file) {
  Prepared p;
  SLUICE_RETURN_IF_ERROR(Prepare(pod, cmd, p));
  std::string exit_path = exit_file;
  ::unlink(exit_path.c_str());
  int report[2];
  if (::pipe2(report, O_CLOEXEC) != 0)
    return FailErrno("pipe", errno);
  pid_t monitor = ::fork();
  if (monitor < 0) {
    int err = errno;
    ::close(report[0]);
    ::close(report[1]);
    return FailErrno("fork", err);
  }
  if (monitor == 0) {
    // The monitor: its own session, holding nothing of the caller's (no lock, no pipe
    // to whoever ran sluicectl), so it never keeps those alive.
    ::setsid();
    int devnull = ::open("/dev/null", O_RDWR);
    if (devnull >= 0) {
      ::dup2(devnull, 0);
      ::dup2(devnull, 1);
      ::dup2(devnull, 2);
    }
    int keep[] = {report[1], p.netns_fd, p.cgroup_fd, p.log_fd, p.null_fd};
    for (int fd = 3; fd < 1024; ++fd) {
      bool k = false;
      for (int x : keep)
        k = k || x == fd;
      if (!k)
        ::close(fd);
    }
    int err[2];
    if (::pipe2(err, O_CLOEXEC) != 0)
      _exit(1);
    pid_t child = ::fork();
    if (child == 0) {
      ::close(err[0]);
      ::close(report[1]);
      EnterAndExec(p, err[1], true);
    }
    ::close(err[1]);
    // The child has what it needs; the monitor must not keep the pod's namespace alive.
    for (int fd : {p.netns_fd, p.cgroup_fd, p.log_fd, p.null_fd})
      if (fd >= 0)
        ::close(fd);
    std::string why = child < 0 ? "fork failed" : ReadAllFd(err[0]);
    char line[700];
    if (why.empty())
      std::snprintf(line, sizeof(line), "P%d", static_cast<int>(child));
    else
      std::snprintf(line, sizeof(line), "E%s", why.c_str());
    WriteAll(report[1], line);
    ::close(report[1]);
    if (child > 0) {
      int status = 0;
      while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
      }
      WriteExitFile(exit_path.c_str(), status);
    }
    _exit(0);
  }
  ::close(report[1]);
  std::string msg = ReadAllFd(report[0]);
  ::close(report[0]);
  // The monitor lives on; reap it if it is already done (it is not our child for long:
  // it is reparented once this process exits).
  ::waitpid(monitor, nullptr, WNOHANG);
  if (msg.empty())
    return Fail("starting " + cmd.argv[0] + ": the monitor process died");
  if (msg[0] == 'E')
    return Fail(cmd.argv[0] + ": " + msg.substr(1));
  pid_t pid = std::atoi(msg.c_str() + 1);
  return Started{pid, ProcessStartTime(pid)};
}

Result<int> RunInPod(const PodContext& pod, const Command& cmd) {
  Prepared p;
  SLUICE_RETURN_IF_ERROR(Prepare(pod, cmd, p));
  int err[2];
  if (::pipe2(err, O_CLOEXEC) != 0)
    return FailErrno("pipe", errno);
  // The caller's terminal signals reach the command (same process group); sluicectl
  // itself ignores them while it waits.
  struct sigaction ign {
  }, old_int{}, old_quit{};
  ign.sa_handler = SIG_IGN;
  ::sigaction(SIGINT, &ign, &old_int);
  ::sigaction(SIGQUIT, &ign, &old_quit);
  pid_t child = ::fork();
  if (child == 0) {
    ::close(err[0]);
    EnterAndExec(p, err[1], false);
  }
  ::close(err[1]);
  if (child < 0) {
    ::close(err[0]);
    return FailErrno("fork", errno);
  }
  std::string why = ReadAllFd(err[0]);
  ::close(err[0]);
  int status = 0;
  while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
  }
  ::sigaction(SIGINT, &old_int, nullptr);
  ::sigaction(SIGQUIT, &old_quit, nullptr);
  if (!why.empty())
    return Fail(why);
  if (WIFEXITED(status))
    return WEXITSTATUS(status);
  return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

std::uint64_t ProcessStartTime(pid_t pid) {
  if (pid <= 0)
    return 0;
  // read(2), not a stream: the process may exit between open and read (ESRCH).
  std::string path = "/proc/" + std::to_string(pid) + "/stat";
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return 0;
  char buf[1024];
  ssize_t n = ::read(fd, buf, sizeof(buf) - 1);
  ::close(fd);
  if (n <= 0)
    return 0;
  std::string text(buf, static_cast<size_t>(n));
  auto rp = text.rfind(')');
  if (rp == std::string::npos)
    return 0;
  std::istringstream rest(text.substr(rp + 2));
  std::string field;
  std::vector<std::string> f;
  while (rest >> field)
    f.push_back(field);
  // After "pid (comm) ": state is field 3, starttime field 22.
  if (f.size() < 20 || f[0] == "Z" || f[0] == "X")
    return 0;
  return std::stoull(f[19]);
}

bool Alive(pid_t pid, std::uint64_t start_time) {
  std::uint64_t now = ProcessStartTime(pid);
  return now != 0 && (start_time == 0 || now == start_time);
}

void StopProcess(pid_t pid, std::uint64_t start_time, int grace_ms) {
  if (!Alive(pid, start_time))
    return;
  ::kill(-pid, SIGTERM);
  ::kill(pid, SIGTERM);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(grace_ms);
  while (Alive(pid, start_time) && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  if (Alive(pid, start_time)) {
    ::kill(-pid, SIGKILL);
    ::kill(pid, SIGKILL);
    for (int i = 0; i < 250 && Alive(pid, start_time); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

namespace {
std::vector<pid_t> CgroupPids(const std::string& dir) {
  std::vector<pid_t> out;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    if (it->path().filename() != "cgroup.procs")
      continue;
    std::ifstream in(it->path());
    pid_t pid;
    while (in >> pid)
      out.push_back(pid);
  }
  std::ifstream in(dir + "/cgroup.procs");
  pid_t pid;
  while (in >> pid)
    out.push_back(pid);
  return out;
}
}  // namespace

Result<void> KillCgroup(const std::string& dir, int grace_ms) {
  std::error_code ec;
  if (!fs::exists(dir, ec))
    return {};
  for (pid_t pid : CgroupPids(dir))
    ::kill(pid, SIGTERM);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(grace_ms);
  while (!CgroupPids(dir).empty() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  if (!CgroupPids(dir).empty()) {
    std::ofstream(dir + "/cgroup.kill") << "1";
    for (pid_t pid : CgroupPids(dir))
      ::kill(pid, SIGKILL);
    for (int i = 0; i < 250 && !CgroupPids(dir).empty(); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  // Children first: a cgroup directory goes only once it has no children.
  std::vector<std::string> dirs;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::end(it);
       it.increment(ec))
    if (it->is_directory())
      dirs.push_back(it->path().string());
  std::sort(dirs.rbegin(), dirs.rend());
  for (const auto& d : dirs)
    ::rmdir(d.c_str());
  // A just-exited process can hold the cgroup for a moment.
  for (int i = 0; i < 100; ++i) {
    if (::rmdir(dir.c_str()) == 0 || errno == ENOENT)
      return {};
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return FailErrno("removing cgroup " + dir, errno);
}

std::map<std::string, std::string> BaseEnv() {
  return {{"PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
          {"HOME", "/root"}};
}

Result<std::string> RunTool(const std::vector<std::string>& argv, const std::string& input) {
  std::vector<std::string> args = argv;
  if (!args.empty() && args[0].find('/') == std::string::npos) {
    for (const char* dir : {"/usr/sbin", "/usr/bin", "/sbin", "/bin"}) {
      std::string cand = std::string(dir) + "/" + args[0];
      if (::access(cand.c_str(), X_OK) == 0) {
        args[0] = cand;
        break;
      }
    }
  }
  auto r =
      RunProcess(args, {"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, input, std::chrono::seconds(20));
  std::string line;
  for (const auto& a : argv)
    line += (line.empty() ? "" : " ") + a;
  if (!r)
    return Fail(line + ": " + r.error().message);
  if (r->exit_status != 0) {
    std::string err = r->err;
    while (!err.empty() && (err.back() == '\n' || err.back() == ' '))
      err.pop_back();
    return Fail(line + ": exit status " + std::to_string(r->exit_status) +
                (err.empty() ? "" : ": " + err));
  }
  return r->out;
}

}  // namespace sluice::local
