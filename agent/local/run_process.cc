// RunProcess: fork/exec with a fixed environment, stdin fed and stdout/stderr collected
// through poll, killed on timeout.
#include "sluice/local/run_process.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>

namespace sluice::local {
namespace {

struct Fd {
  int fd = -1;
  ~Fd() { Close(); }
  void Close() {
    if (fd >= 0)
      ::close(fd);
    fd = -1;
  }
};

}  // namespace

Result<ProcessResult> RunProcess(const std::vector<std::string>& argv,
                                 const std::vector<std::string>& env, const std::string& input,
                                 std::chrono::milliseconds timeout) {
  if (argv.empty())
    return Fail("run process: empty argv");
  int in[2], out[2], err[2];
  if (::pipe2(in, O_CLOEXEC) != 0)
    return FailErrno("pipe", errno);
  Fd in_r{in[0]}, in_w{in[1]};
  if (::pipe2(out, O_CLOEXEC) != 0)
    return FailErrno("pipe", errno);
  Fd out_r{out[0]}, out_w{out[1]};
  if (::pipe2(err, O_CLOEXEC) != 0)
    return FailErrno("pipe", errno);
  Fd err_r{err[0]}, err_w{err[1]};

  // Build argv/envp before fork: the child only calls async-signal-safe functions.
  std::vector<char*> cargv, cenv;
  for (const auto& a : argv)
    cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  for (const auto& e : env)
    cenv.push_back(const_cast<char*>(e.c_str()));
  cenv.push_back(nullptr);

  pid_t pid = ::fork();
  if (pid < 0)
    return FailErrno("fork", errno);
  if (pid == 0) {
    ::dup2(in_r.fd, 0);
    ::dup2(out_w.fd, 1);
    ::dup2(err_w.fd, 2);
    ::execve(cargv[0], cargv.data(), cenv.data());
    ::_exit(127);
  }
  in_r.Close();
  out_w.Close();
  err_w.Close();
  // A child that exits without reading stdin must not kill us with SIGPIPE: block it in
  // this thread while we write, and discard one that became pending.
  sigset_t pipe_set, old_set;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  ::pthread_sigmask(SIG_BLOCK, &pipe_set, &old_set);
  struct RestoreMask {
    sigset_t pipe_set, old_set;
    ~RestoreMask() {
      timespec zero{0, 0};
      while (::sigtimedwait(&pipe_set, nullptr, &zero) > 0) {
      }
      ::pthread_sigmask(SIG_SETMASK, &old_set, nullptr);
    }
  } restore{pipe_set, old_set};
  ::fcntl(in_w.fd, F_SETFL, O_NONBLOCK);

  ProcessResult result;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::size_t written = 0;
  if (input.empty())
    in_w.Close();
  bool timed_out = false;
  while (out_r.fd >= 0 || err_r.fd >= 0) {
    pollfd pfds[3];
    int n = 0;
    int idx_in = -1, idx_out = -1, idx_err = -1;
    if (in_w.fd >= 0)
      pfds[idx_in = n++] = {in_w.fd, POLLOUT, 0};
    if (out_r.fd >= 0)
      pfds[idx_out = n++] = {out_r.fd, POLLIN, 0};
    if (err_r.fd >= 0)
      pfds[idx_err = n++] = {err_r.fd, POLLIN, 0};
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      break;
    }
    int rc = ::poll(pfds, n, static_cast<int>(left.count()));
    if (rc < 0) {
      if (errno == EINTR)
        continue;
      break;
    }
    if (idx_in >= 0 && pfds[idx_in].revents) {
      ssize_t w = ::write(in_w.fd, input.data() + written, input.size() - written);
      if (w > 0)
        written += static_cast<std::size_t>(w);
      if ((w < 0 && errno != EAGAIN) || written == input.size())
        in_w.Close();
    }
    auto drain = [](Fd& fd, std::string& sink) {
      char buf[4096];
      ssize_t r = ::read(fd.fd, buf, sizeof buf);
      if (r > 0) {
        sink.append(buf, static_cast<std::size_t>(r));
      } else if (r == 0 || errno != EINTR) {
        fd.Close();
      }
    };
    if (idx_out >= 0 && pfds[idx_out].revents)
      drain(out_r, result.out);
    if (idx_err >= 0 && pfds[idx_err].revents)
      drain(err_r, result.err);
  }
  if (timed_out)
    ::kill(pid, SIGKILL);
  int status = 0;
  rusage usage{};
  while (::wait4(pid, &status, 0, &usage) < 0 && errno == EINTR) {
  }
  if (timed_out) {
    return Fail(argv[0] + ": timed out after " + std::to_string(timeout.count()) + " ms",
                ETIMEDOUT);
  }
  result.max_rss_kb = usage.ru_maxrss;
  if (WIFEXITED(status)) {
    result.exit_status = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    result.exit_status = 128 + WTERMSIG(status);
  }
  return result;
}

}  // namespace sluice::local
