// Network-namespace handles: open and check a namespace file, run code on a thread that
// joined it, read its cookie, open listeners inside it.
#include "sluice/netns/netns.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/nsfs.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "sluice/loader/netns_cookie.h"

namespace sluice::netns {

void UniqueFd::Reset() {
  if (fd_ >= 0)
    ::close(fd_);
  fd_ = -1;
}

Result<Netns> Netns::Open(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd)
    return FailErrno("open network namespace " + path, errno);
  int type = ::ioctl(fd.get(), NS_GET_NSTYPE);
  if (type < 0) {
    int err = errno;
    return Fail(
        "open network namespace " + path + ": not a namespace file (" + std::strerror(err) + ")",
        err);
  }
  if (type != CLONE_NEWNET) {
    return Fail("open network namespace " + path + ": a namespace, but not a network one", EINVAL);
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0)
    return FailErrno("stat network namespace " + path, errno);
  return Netns(path, std::move(fd), st.st_ino, st.st_dev);
}

Result<Netns> Netns::Current() {
  return Open("/proc/thread-self/ns/net");
}

Result<void> Netns::Run(const std::function<void()>& fn) const {
  auto self = Current();
  if (self && self->SameAs(*this)) {
    fn();
    return {};
  }
  Result<void> result;
  std::thread t([&] {
    // The thread only ever lives in the target namespace; it exits after fn.
    if (::setns(fd_.get(), CLONE_NEWNET) != 0) {
      result = FailErrno("setns into " + path_, errno);
      return;
    }
    fn();
  });
  t.join();
  return result;
}

Result<std::uint64_t> Netns::Cookie() const {
  // SO_NETNS_COOKIE where the kernel has it (5.14+), else the loader's BPF probe.
  return NetnsCookieOfFd(fd_.get(), path_);
}

Result<UniqueFd> Netns::ListenTcp(const std::string& ip, std::uint16_t port, int backlog) const {
  sockaddr_storage ss{};
  socklen_t len = 0;
  int family = AF_INET;
  if (auto* a4 = reinterpret_cast<sockaddr_in*>(&ss);
      ::inet_pton(AF_INET, ip.c_str(), &a4->sin_addr) == 1) {
    a4->sin_family = AF_INET;
    a4->sin_port = htons(port);
    len = sizeof *a4;
  } else if (auto* a6 = reinterpret_cast<sockaddr_in6*>(&ss);
             ::inet_pton(AF_INET6, ip.c_str(), &a6->sin6_addr) == 1) {
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons(port);
    len = sizeof *a6;
    family = AF_INET6;
  } else {
    return Fail("listen in " + path_ + ": \"" + ip + "\" is not an IP address", EINVAL);
  }
  const std::string where = "listen on " + ip + ":" + std::to_string(port) + " in " + path_;
  Result<UniqueFd> out = Fail(where + ": not run");
  auto r = Run([&] {
    UniqueFd s(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!s) {
      out = FailErrno(where + ": socket", errno);
      return;
    }
    int one = 1;
    ::setsockopt(s.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(s.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) {
      out = FailErrno(where + ": bind", errno);
      return;
    }
    if (::listen(s.get(), backlog) != 0) {
      out = FailErrno(where, errno);
      return;
    }
    out = std::move(s);
  });
  SLUICE_RETURN_IF_ERROR(r);
  return out;
}

Result<std::uint16_t> LocalPort(int sock) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(sock, reinterpret_cast<sockaddr*>(&ss), &len) != 0)
    return FailErrno("getsockname", errno);
  if (ss.ss_family == AF_INET)
    return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  if (ss.ss_family == AF_INET6)
    return ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
  return Fail("getsockname: not an IP socket");
}

}  // namespace sluice::netns
