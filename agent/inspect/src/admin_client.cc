#include "sluice/inspect/admin_client.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>

namespace sluice::inspect {
namespace {

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd_ >= 0)
      close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

Result<int> Connect(const std::string& address) {
  if (address.starts_with("unix:")) {
    const std::string path = address.substr(5);
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    if (path.empty() || path.size() >= sizeof(sun.sun_path))
      return Fail("admin address '" + address + "': socket path empty or too long");
    std::memcpy(sun.sun_path, path.c_str(), path.size() + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
      return FailErrno("socket", errno);
    if (connect(fd, reinterpret_cast<sockaddr*>(&sun), sizeof(sun)) != 0) {
      int err = errno;
      close(fd);
      return FailErrno("cannot reach the admin socket " + path, err);
    }
    return fd;
  }
  auto colon = address.rfind(':');
  if (colon == std::string::npos || colon + 1 == address.size())
    return Fail("admin address '" + address + "': expected HOST:PORT or unix:PATH");
  std::string host = address.substr(0, colon);
  if (host == "localhost")
    host = "127.0.0.1";
  char* end = nullptr;
  long port = std::strtol(address.c_str() + colon + 1, &end, 10);
  if (*end != '\0' || port <= 0 || port > 65535)
    return Fail("admin address '" + address + "': bad port");
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, host.c_str(), &sin.sin_addr) != 1)
    return Fail("admin address '" + address +
                "': expected an IPv4 address, localhost or unix:PATH");
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return FailErrno("socket", errno);
  if (connect(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) != 0) {
    int err = errno;
    close(fd);
    return FailErrno("cannot reach the admin endpoint at " + address, err);
  }
  return fd;
}

}  // namespace

Result<std::string> AdminGet(const std::string& address, const std::string& path, int timeout_ms) {
  auto fd_or = Connect(address);
  SLUICE_RETURN_IF_ERROR(fd_or);
  Fd fd(*fd_or);
  const std::string req =
      "GET " + path + " HTTP/1.0\r\nHost: sluice-agent\r\nConnection: close\r\n\r\n";
  for (size_t off = 0; off < req.size();) {
    ssize_t n = write(fd.get(), req.data() + off, req.size() - off);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return FailErrno(address + path + ": write", errno);
    }
    off += static_cast<size_t>(n);
  }
  std::string resp;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  char buf[65536];
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                    deadline - std::chrono::steady_clock::now())
                    .count();
    if (left <= 0)
      return Fail(fmt::format("{}{}: no complete answer within {} ms", address, path, timeout_ms));
    pollfd p{fd.get(), POLLIN, 0};
    int pr = poll(&p, 1, static_cast<int>(left));
    if (pr < 0 && errno == EINTR)
      continue;
    if (pr < 0)
      return FailErrno(address + path + ": poll", errno);
    if (pr == 0)
      continue;
    ssize_t n = read(fd.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return FailErrno(address + path + ": read", errno);
    if (n == 0)
      break;
    resp.append(buf, static_cast<size_t>(n));
  }
  auto head_end = resp.find("\r\n\r\n");
  if (!resp.starts_with("HTTP/") || head_end == std::string::npos)
    return Fail(address + path + ": not an HTTP answer");
  int status = std::atoi(resp.c_str() + resp.find(' ') + 1);
  std::string body = resp.substr(head_end + 4);
  if (status != 200) {
    while (!body.empty() && (body.back() == '\n' || body.back() == '\r'))
      body.pop_back();
    return Fail(fmt::format("{}{}: HTTP {}: {}", address, path, status, body));
  }
  return body;
}

}  // namespace sluice::inspect
