#include "process_util.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <thread>

extern char** environ;

namespace sluice::apps::testing {
namespace {

std::vector<std::string> MergedEnv(const std::map<std::string, std::string>& extra) {
  std::map<std::string, std::string> all;
  for (char** e = environ; *e; ++e) {
    std::string kv(*e);
    std::size_t eq = kv.find('=');
    if (eq != std::string::npos)
      all[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  for (const auto& [k, v] : extra)
    all[k] = v;
  std::vector<std::string> out;
  for (const auto& [k, v] : all)
    out.push_back(k + "=" + v);
  return out;
}

std::vector<char*> CStrings(std::vector<std::string>& v) {
  std::vector<char*> out;
  for (auto& s : v)
    out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

pid_t Spawn(std::vector<std::string> argv, posix_spawn_file_actions_t* actions,
            const std::map<std::string, std::string>& env) {
  std::vector<std::string> envs = MergedEnv(env);
  auto cargv = CStrings(argv);
  auto cenv = CStrings(envs);
  pid_t pid = -1;
  int rc = posix_spawnp(&pid, cargv[0], actions, nullptr, cargv.data(), cenv.data());
  if (rc != 0)
    throw std::runtime_error("spawn " + argv[0] + ": " + std::strerror(rc));
  return pid;
}

}  // namespace

TempDir::TempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "sluice-apps-test-XXXXXX").string();
  if (!mkdtemp(tmpl.data()))
    throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Child::Child(std::vector<std::string> argv, const std::string& stdout_path,
             const std::string& stderr_path, const std::map<std::string, std::string>& env) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, stdout_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, stderr_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  try {
    pid_ = Spawn(std::move(argv), &fa, env);
  } catch (...) {
    posix_spawn_file_actions_destroy(&fa);
    throw;
  }
  posix_spawn_file_actions_destroy(&fa);
}

int Child::Wait(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!reaped_) {
    pid_t r = waitpid(pid_, &status_, WNOHANG);
    if (r == pid_) {
      reaped_ = true;
      break;
    }
    if (std::chrono::steady_clock::now() > deadline)
      return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return WIFEXITED(status_) ? WEXITSTATUS(status_) : 128 + WTERMSIG(status_);
}

Child::~Child() {
  if (pid_ <= 0 || reaped_)
    return;
  kill(pid_, SIGTERM);
  if (Wait(std::chrono::milliseconds(2000)) < 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, &status_, 0);
  }
}

AppServer::AppServer(const TempDir& dir, std::vector<std::string> args,
                     const std::map<std::string, std::string>& env, int listeners) {
  static int counter = 0;
  std::string tag = std::to_string(++counter);
  stdout_path_ = dir / ("stdout-" + tag + ".log");
  stderr_path_ = dir / ("stderr-" + tag + ".log");
  args.insert(args.begin(), AppsBin());
  child_ = std::make_unique<Child>(std::move(args), stdout_path_, stderr_path_, env);
  static const std::regex kListening(R"(listening on (https?|grpc|tcp) \S+:(\d+))");
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  for (;;) {
    std::string err = ReadFile(stderr_path_);
    ports_.clear();
    int found = 0;
    for (std::sregex_iterator it(err.begin(), err.end(), kListening), end; it != end; ++it, ++found)
      ports_[(*it)[1]].push_back(std::stoi((*it)[2]));
    if (found >= listeners)
      return;
    if (child_->Wait(std::chrono::milliseconds(0)) >= 0 ||
        std::chrono::steady_clock::now() > deadline)
      throw std::runtime_error("server did not start; stderr: " + err);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

int AppServer::port(const std::string& scheme) const {
  auto it = ports_.find(scheme);
  if (it == ports_.end())
    throw std::runtime_error("no " + scheme + " listener");
  return it->second.front();
}

std::vector<int> AppServer::ports(const std::string& scheme) const {
  auto it = ports_.find(scheme);
  return it == ports_.end() ? std::vector<int>{} : it->second;
}

bool AppServer::WaitForLog(const std::string& needle, std::chrono::milliseconds timeout) const {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (AccessLog().find(needle) == std::string::npos) {
    if (std::chrono::steady_clock::now() > deadline)
      return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

CurlResult Curl(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"curl", "-sS", "--max-time", "15"};
  argv.insert(argv.end(), args.begin(), args.end());
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0)
    throw std::runtime_error("pipe failed");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);
  pid_t pid = -1;
  try {
    pid = Spawn(argv, &fa, {});
  } catch (...) {
    posix_spawn_file_actions_destroy(&fa);
    close(fds[0]);
    close(fds[1]);
    throw;
  }
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  CurlResult result;
  char buf[4096];
  for (;;) {
    ssize_t n = read(fds[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    result.out.append(buf, static_cast<std::size_t>(n));
  }
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

std::string RawExchange(int port, const std::string& bytes) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    throw std::runtime_error("socket failed");
  std::unique_ptr<int, void (*)(int*)> guard(&fd, [](int* f) { close(*f); });
  timeval tv{3, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
    throw std::runtime_error("connect failed: " + std::string(std::strerror(errno)));
  if (send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(bytes.size()))
    throw std::runtime_error("send failed");
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0)
      break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

// $SLUICE_APPS_BIN runs the suite against another build (a sanitizer build, an
// installed binary); by default the one CMake built.
std::string AppsBin() {
  const char* env = std::getenv("SLUICE_APPS_BIN");
  return env && *env ? env : SLUICE_APPS_BIN;
}

}  // namespace sluice::apps::testing

namespace sluice::apps::testing {

Conn::Conn(int port, bool ipv6) {
  fd_ = socket(ipv6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0)
    throw std::runtime_error("socket failed");
  timeval tv{3, 0};
  setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  int rc;
  if (ipv6) {
    sockaddr_in6 a{};
    a.sin6_family = AF_INET6;
    a.sin6_port = htons(static_cast<std::uint16_t>(port));
    a.sin6_addr = in6addr_loopback;
    rc = connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
  } else {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    rc = connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
  }
  if (rc != 0) {
    int err = errno;
    close(fd_);
    throw std::runtime_error("connect failed: " + std::string(std::strerror(err)));
  }
}

Conn::~Conn() {
  close(fd_);
}

void Conn::Send(const std::string& bytes) {
  if (send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(bytes.size()))
    throw std::runtime_error("send failed");
}

std::string Conn::ReadAll() {
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = recv(fd_, buf, sizeof buf, 0);
    if (n <= 0)
      break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

}  // namespace sluice::apps::testing

namespace sluice::apps::testing {

std::string Conn::ReadSome() {
  char buf[4096];
  ssize_t n = recv(fd_, buf, sizeof buf, 0);
  return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
}

}  // namespace sluice::apps::testing
