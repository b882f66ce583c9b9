// A worker's I/O loop, with one contract and two backends.
//
// The engine is written against readiness, in epoll's terms: a handler registers the
// events it wants (EPOLLIN, EPOLLOUT, EPOLLRDHUP, EPOLLET) and is called with the ones
// that happened; it then calls Recv() and Send() until they would block. Both backends
// keep that contract:
//
// - epoll: Recv and Send are the recv(2) and send(2) calls, Poll is epoll_wait(2).
// - io_uring: a connected socket has a multishot receive armed into a ring of provided
//   buffers, so data is already in user space when the handler hears of it, and Recv
//   copies it out; Send hands the bytes to the ring (the caller's buffer is taken over,
//   not copied), and every send of a loop iteration goes to the kernel in the one
//   io_uring_enter(2) that also waits for the next events. A request/response through
//   the proxy costs no recv/send system calls of its own. Measured on loopback: the
//   worker's user-space share falls from about 10% to 6%, requests per CPU-second rise
//   1-2% (the kernel's io_uring paths cost nearly what the calls did; docs/benchmarks.md
//   runs L and M).
//
// io_uring is used when the kernel offers what it needs (multishot receive, provided
// buffer rings, single-issuer deferred task work: Linux 6.1) and is not disabled;
// otherwise the loop falls back to epoll and says why.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sluice/common/result.h"
#include "sluice/proxy/buffer.h"

namespace sluice::proxy {

// How workers do their socket I/O (the loops below). kAuto: io_uring when
// the kernel offers it (Linux 6.1+, not disabled), else epoll. With kAuto, the
// environment variable SLUICE_PROXY_IO (auto, epoll, io_uring) decides instead, so a
// test suite can run on each.
enum class IoBackend { kAuto, kEpoll, kUring };
// "auto", "epoll", "io_uring" (an empty string is auto).
Result<IoBackend> ParseIoBackend(const std::string& name);
const char* IoBackendName(IoBackend b);

// Who a handler belongs to, on a loop several owners share (a worker group's thread,
// worker_group.h): before a handler's event is delivered, its owner is marked and listed
// in `batch` (once per batch), so the thread runs the per-batch work of those owners
// only. Handlers of a loop with one owner have none.
struct IoOwner {
  bool touched = false;
  std::vector<IoOwner*>* batch = nullptr;
};

struct IoHandler {
  virtual void OnEvent(uint32_t events) = 0;
  virtual ~IoHandler() = default;
  IoOwner* io_owner = nullptr;
};

// What a loop's Dispatch does for each event.
inline void Deliver(IoHandler* h, uint32_t events) {
  if (IoOwner* o = h->io_owner; o && !o->touched) {
    o->touched = true;
    o->batch->push_back(o);
  }
  h->OnEvent(events);
}

class EventLoop {
 public:
  // What a registered descriptor is.
  enum class Kind {
    kPoll,        // readiness only (listening sockets, eventfd): the handler does its I/O
    kStream,      // a connected stream socket: Recv/Send/ShutdownWrite/Close go through here
    kConnecting,  // a stream socket whose non-blocking connect() is in progress
  };

  struct Options {
    IoBackend backend = IoBackend::kAuto;
    unsigned buffers = 256;       // io_uring: provided receive buffers per loop
    unsigned buffer_size = 4096;  // bytes each
  };

  // Falls back from io_uring to epoll (kAuto) when the kernel refuses; fallback_reason()
  // says why. kUring fails instead.
  static Result<std::unique_ptr<EventLoop>> Create(const Options& opts);
  virtual ~EventLoop() = default;

  virtual IoBackend backend() const = 0;
  const std::string& fallback_reason() const { return fallback_reason_; }

  // Must be called on the thread that will call Wait(), before the first Wait(); the
  // descriptors may be added from another thread before it.
  virtual Result<void> Activate() = 0;

  virtual bool Add(int fd, uint32_t events, IoHandler* h, Kind kind) = 0;
  // New interest for a registered descriptor (EPOLL_CTL_MOD: readiness is reported again).
  virtual void Modify(int fd, uint32_t events, IoHandler* h) = 0;
  // Stops watching fd (the caller closes it; for kPoll descriptors only).
  virtual void Remove(int fd) = 0;

  // recv(2)'s contract: bytes, 0 at end of stream, -1 with errno (EAGAIN: nothing now).
  virtual ssize_t Recv(int fd, char* p, std::size_t n) = 0;
  // Takes what it can of `out` (consumed from it). 0 on success: an empty `out` means
  // everything was taken; what is left waits for EPOLLOUT. Otherwise an errno.
  virtual int Send(int fd, Buffer& out) = 0;
  // shutdown(SHUT_WR) once everything taken by Send has gone out.
  virtual void ShutdownWrite(int fd) = 0;
  // Stops watching and closes fd, once everything taken by Send has gone out. No event
  // is delivered for it afterwards.
  virtual void Close(int fd) = 0;

  // Hands what Send took to the kernel and waits up to timeout_ms (-1: no limit) for
  // events; Dispatch() then calls their handlers. (Split so the caller can look at the
  // time and its configuration between the two.)
  virtual void Poll(int timeout_ms) = 0;
  virtual void Dispatch() = 0;

 protected:
  std::string fallback_reason_;
};

}  // namespace sluice::proxy
