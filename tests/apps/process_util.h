// Real processes and sockets for the stand-in tests: a child that is always reaped, a
// temp dir that is always removed, curl runs, and raw loopback exchanges.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace sluice::apps::testing {

class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

std::string ReadFile(const std::string& path);

// A child process whose stdout and stderr go to files; SIGTERM then SIGKILL on
// destruction, always reaped.
class Child {
 public:
  // `env` entries are added to (or override) the test's environment.
  Child(std::vector<std::string> argv, const std::string& stdout_path,
        const std::string& stderr_path, const std::map<std::string, std::string>& env = {});
  ~Child();
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  pid_t pid() const { return pid_; }
  // Waits for the child to exit; returns its exit status or -1 on timeout.
  int Wait(std::chrono::milliseconds timeout);

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
  int status_ = 0;
};

// A running stand-in server: its files live in `dir`, its ports are read from the
// "listening on http|https|grpc|tcp ADDRESS:PORT" lines it prints; `listeners` is how
// many such lines to wait for.
class AppServer {
 public:
  AppServer(const TempDir& dir, std::vector<std::string> args,
            const std::map<std::string, std::string>& env = {}, int listeners = 1);
  int port(const std::string& scheme = "http") const;  // the first of that scheme
  std::vector<int> ports(const std::string& scheme) const;
  std::string AccessLog() const { return ReadFile(stdout_path_); }
  std::string Stderr() const { return ReadFile(stderr_path_); }
  // Waits until the access log holds `needle` (lines are written after each response).
  bool WaitForLog(const std::string& needle, std::chrono::milliseconds timeout) const;
  Child& child() { return *child_; }

 private:
  std::string stdout_path_, stderr_path_;
  std::unique_ptr<Child> child_;
  std::map<std::string, std::vector<int>> ports_;
};

struct CurlResult {
  int exit_code = -1;
  std::string out;  // stdout
};
// Runs the real curl with the given arguments (adds -sS and a 15 s limit).
CurlResult Curl(const std::vector<std::string>& args);

// Sends `bytes` to 127.0.0.1:port and returns everything read until the server closes
// (or 3 s pass).
std::string RawExchange(int port, const std::string& bytes);

std::string AppsBin();

}  // namespace sluice::apps::testing

namespace sluice::apps::testing {

// A connected loopback TCP socket, closed on destruction.
class Conn {
 public:
  explicit Conn(int port, bool ipv6 = false);
  ~Conn();
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;
  void Send(const std::string& bytes);
  // Reads until the peer closes or 3 s pass.
  std::string ReadAll();
  // One read: what has arrived (waits up to 3 s for something); "" on close or timeout.
  std::string ReadSome();

 private:
  int fd_ = -1;
};

}  // namespace sluice::apps::testing
