#include "sluice/local/port_forward.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <iostream>
#include <thread>

#include "sluice/netns/netns.h"

namespace sluice::local {
namespace {

// Copies bytes both ways until both sides are done; half-closes are passed on.
void Splice(int a, int b) {
  char buf[16384];
  bool a_open = true, b_open = true;
  while (a_open || b_open) {
    pollfd fds[2] = {{a, static_cast<short>(a_open ? POLLIN : 0), 0},
                     {b, static_cast<short>(b_open ? POLLIN : 0), 0}};
    if (::poll(fds, 2, -1) < 0)
      break;
    for (int i = 0; i < 2; ++i) {
      if (!(i == 0 ? a_open : b_open) || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR)))
        continue;
      int from = i == 0 ? a : b, to = i == 0 ? b : a;
      ssize_t n = ::read(from, buf, sizeof(buf));
      if (n <= 0) {
        ::shutdown(to, SHUT_WR);
        (i == 0 ? a_open : b_open) = false;
        if (n < 0) {
          a_open = b_open = false;
        }
        continue;
      }
      for (ssize_t off = 0; off < n;) {
        ssize_t w = ::send(to, buf + off, static_cast<size_t>(n - off), MSG_NOSIGNAL);
        if (w <= 0) {
          a_open = b_open = false;
          break;
        }
        off += w;
      }
    }
  }
  ::close(a);
  ::close(b);
}

Result<int> ConnectIn(const ForwardTarget& t) {
  int fd = -1;
  int err = 0;
  auto connect = [&] {
    fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_port = htons(static_cast<uint16_t>(t.port));
    inet_pton(AF_INET, t.ip.c_str(), &sin.sin_addr);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) != 0) {
      err = errno;
      ::close(fd);
      fd = -1;
    }
  };
  if (t.netns.empty()) {
    connect();
  } else {
    auto ns = netns::Netns::Open(t.netns);
    SLUICE_RETURN_IF_ERROR(ns);
    SLUICE_RETURN_IF_ERROR(ns->Run(connect));
  }
  if (fd < 0)
    return FailErrno("connecting to " + t.ip + ":" + std::to_string(t.port), err);
  return fd;
}

}  // namespace

Result<int> PortForwarder::Listen(const PortForwardOptions& opts) {
  opts_ = opts;
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_port = htons(static_cast<uint16_t>(opts.local_port));
  if (inet_pton(AF_INET, opts.listen_ip.c_str(), &sin.sin_addr) != 1)
    return Fail("listen address " + opts.listen_ip + ": not an IPv4 address");
  std::string where = opts.listen_ip + ":" + std::to_string(opts.local_port);
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) != 0)
    return FailErrno("listening on " + where, errno);
  if (::listen(listen_fd_, 128) != 0)
    return FailErrno("listening on " + where, errno);
  socklen_t len = sizeof(sin);
  ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&sin), &len);
  return ntohs(sin.sin_port);
}

void PortForwarder::Serve(const std::atomic<bool>& stop) {
  while (!stop) {
    pollfd pfd{listen_fd_, POLLIN, 0};
    if (::poll(&pfd, 1, 100) <= 0)
      continue;
    int client = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0)
      continue;
    auto target = opts_.pick();
    if (!target) {
      std::cerr << "port-forward: " << target.error().message << "\n";
      ::close(client);
      continue;
    }
    auto upstream = ConnectIn(*target);
    if (!upstream) {
      std::cerr << "port-forward: " << upstream.error().message << "\n";
      ::close(client);
      continue;
    }
    std::thread([client, fd = *upstream] { Splice(client, fd); }).detach();
  }
  ::close(listen_fd_);
  listen_fd_ = -1;
}

}  // namespace sluice::local
