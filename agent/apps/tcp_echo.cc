#include "tcp_echo.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

namespace sluice::apps {
namespace {

std::atomic<bool> stop{false};

void Serve(int fd, std::string prefix) {
  std::string line;
  char buf[4096];
  while (!stop) {
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0)
      break;
    for (ssize_t i = 0; i < n; ++i) {
      line.push_back(buf[i]);
      if (buf[i] != '\n')
        continue;
      const std::string reply = prefix + " " + line;
      std::fprintf(stdout, "request: %sresponse: %s", line.c_str(), reply.c_str());
      std::fflush(stdout);
      if (send(fd, reply.data(), reply.size(), MSG_NOSIGNAL) < 0) {
        close(fd);
        return;
      }
      line.clear();
    }
  }
  close(fd);
}

int Listen(uint16_t port) {
  int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int off = 0, one = 1;
  setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off));  // IPv4 too
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  a.sin6_port = htons(port);
  a.sin6_addr = in6addr_any;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || listen(fd, 1024) != 0) {
    std::fprintf(stderr, "tcp-echo: port %u: %s\n", port, std::strerror(errno));
    close(fd);
    return -1;
  }
  return fd;
}

}  // namespace

int RunTcpEcho(const std::string& ports, const std::string& prefix) {
  signal(SIGPIPE, SIG_IGN);
  std::vector<int> listeners;
  std::size_t at = 0;
  while (at <= ports.size()) {
    std::size_t comma = ports.find(',', at);
    std::string p = ports.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
    char* end = nullptr;
    long port = std::strtol(p.c_str(), &end, 10);
    if (p.empty() || *end != '\0' || port <= 0 || port > 65535) {
      std::fprintf(stderr,
                   "tcp-echo: \"%s\" is not a port (usage: tcp-echo PORT[,PORT...] PREFIX)\n",
                   p.c_str());
      return 2;
    }
    int fd = Listen(static_cast<uint16_t>(port));
    if (fd < 0)
      return 1;
    listeners.push_back(fd);
    std::fprintf(stderr, "tcp-echo: listening on tcp [::]:%ld, prefix: %s\n", port, prefix.c_str());
    if (comma == std::string::npos)
      break;
    at = comma + 1;
  }
  std::vector<pollfd> fds;
  for (int fd : listeners)
    fds.push_back(pollfd{fd, POLLIN, 0});
  // Served until SIGTERM (the default action ends the process).
  while (true) {
    if (poll(fds.data(), fds.size(), -1) < 0 && errno != EINTR)
      return 1;
    for (const pollfd& p : fds) {
      if (!(p.revents & POLLIN))
        continue;
      int c = accept4(p.fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (c >= 0)
        std::thread(Serve, c, prefix).detach();
    }
  }
}

}  // namespace sluice::apps
