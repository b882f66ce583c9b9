// A handle on a network namespace — a pod's, from CNI_NETNS — and the few things the
// agent does with one: run code inside it, read its cookie, open listeners in it.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <string>

#include "sluice/common/result.h"

namespace sluice::netns {

// An owned file descriptor, closed on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { Reset(); }
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.Release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) {
      Reset();
      fd_ = o.Release();
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  int Release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void Reset();

 private:
  int fd_ = -1;
};

class Netns {
 public:
  // Opens the namespace at `path` (/var/run/netns/x, /proc/<pid>/ns/net) and checks that
  // it is a network namespace.
  static Result<Netns> Open(const std::string& path);
  // The calling thread's own network namespace.
  static Result<Netns> Current();

  const std::string& path() const { return path_; }
  int fd() const { return fd_.get(); }
  // Identity of the namespace (two handles on one namespace have equal ids).
  ino_t inode() const { return inode_; }
  dev_t device() const { return dev_; }
  bool SameAs(const Netns& other) const { return inode_ == other.inode_ && dev_ == other.dev_; }

  // Runs fn on a short-lived thread that joined this namespace (setns); the caller's
  // thread never changes namespace. Sockets fn creates stay in this namespace. When this
  // is the caller's own namespace fn runs directly (no CAP_SYS_ADMIN needed).
  Result<void> Run(const std::function<void()>& fn) const;

  // The namespace's cookie: the key BPF programs see through bpf_get_netns_cookie(),
  // hence the key of the kernel's enrolment map. SO_NETNS_COOKIE (Linux 5.14+), else read
  // by the loader's BPF probe (sluice/loader/netns_cookie.h).
  Result<std::uint64_t> Cookie() const;

  // A TCP listener bound to ip:port (port 0: any) inside this namespace.
  Result<UniqueFd> ListenTcp(const std::string& ip, std::uint16_t port, int backlog = 128) const;

 private:
  Netns(std::string path, UniqueFd fd, ino_t inode, dev_t dev)
      : path_(std::move(path)), fd_(std::move(fd)), inode_(inode), dev_(dev) {}
  std::string path_;
  UniqueFd fd_;
  ino_t inode_ = 0;
  dev_t dev_ = 0;
};

// The port a bound socket got (for listeners opened on port 0).
Result<std::uint16_t> LocalPort(int sock);

}  // namespace sluice::netns
