// The floor of the L7 benchmark: a proxy that does no work. Each accepted connection gets
// its own upstream connection (alternating between the given ports) and bytes are copied
// both ways as they come, on the proxy engine's own event loop (io_uring or epoll). No
// parsing, no routing, no pooling: what remains is the kernel's cost of moving a request
// and its response through a userspace hop, which no proxy can go below. l7_bench.sh runs
// it beside the real proxies (FLOOR=1) to show how much of its CPU the engine's own work
// is.
//
//   sluice_null_proxy LISTEN_PORT UPSTREAM_PORT... [--io io_uring|epoll]
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "sluice/proxy/event_loop.h"
#include "sluice/proxy/config.h"

using sluice::proxy::Buffer;
using sluice::proxy::EventLoop;
using sluice::proxy::IoHandler;

namespace {

volatile std::sig_atomic_t g_stop = 0;

int SetNonBlocking(int fd) {
  int f = fcntl(fd, F_GETFL);
  return f < 0 ? -1 : fcntl(fd, F_SETFL, f | O_NONBLOCK);
}

// One side of a pair: what it reads goes to its peer.
struct Side : IoHandler {
  EventLoop* loop = nullptr;
  int fd = -1;
  Side* peer = nullptr;
  Buffer out;  // bytes for this side, not yet taken by the loop
  bool dead = false;

  void OnEvent(uint32_t ev) override {
    if (dead)
      return;
    if ((ev & EPOLLOUT) && !out.empty() && loop->Send(fd, out) != 0)
      return Kill();
    if (!(ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
      return;
    while (true) {
      std::size_t avail;
      char* p = peer->out.WritePtr(16384, &avail);
      ssize_t n = loop->Recv(fd, p, avail);
      if (n > 0) {
        peer->out.Commit(static_cast<std::size_t>(n));
        if (static_cast<std::size_t>(n) < avail)
          break;
        continue;
      }
      if (n == 0 || errno != EAGAIN)
        return Kill();
      break;
    }
    if (!peer->out.empty() && loop->Send(peer->fd, peer->out) != 0)
      Kill();
  }
  void Kill() {
    for (Side* s : {this, peer}) {
      if (!s->dead) {
        s->dead = true;
        s->loop->Close(s->fd);
      }
    }
  }
};

struct Listener : IoHandler {
  EventLoop* loop = nullptr;
  int fd = -1;
  std::vector<uint16_t> upstreams;
  std::size_t next = 0;
  std::vector<std::unique_ptr<Side>> sides;  // never freed: a benchmark's lifetime

  void OnEvent(uint32_t) override {
    while (true) {
      int c = accept4(fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (c < 0)
        return;
      int u = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      auto a = sluice::proxy::ParseIp("127.0.0.1", upstreams[next++ % upstreams.size()]);
      if (u < 0 || connect(u, reinterpret_cast<const sockaddr*>(&*a), sizeof(sockaddr_in)) != 0) {
        std::perror("sluice_null_proxy: upstream connect");
        close(c);
        if (u >= 0)
          close(u);
        continue;
      }
      int one = 1;
      setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      setsockopt(u, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      if (SetNonBlocking(u) != 0) {
        close(c);
        close(u);
        continue;
      }
      auto down = std::make_unique<Side>();
      auto up = std::make_unique<Side>();
      down->loop = up->loop = loop;
      down->fd = c;
      up->fd = u;
      down->peer = up.get();
      up->peer = down.get();
      const uint32_t ev = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
      loop->Add(c, ev, down.get(), EventLoop::Kind::kStream);
      loop->Add(u, ev, up.get(), EventLoop::Kind::kStream);
      sides.push_back(std::move(down));
      sides.push_back(std::move(up));
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  std::string io = "auto";
  std::vector<uint16_t> ports;
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--io" && i + 1 < args.size()) {
      io = args[++i];
    } else {
      int p = std::atoi(args[i].c_str());
      if (p <= 0 || p > 65535) {
        std::fprintf(stderr, "usage: sluice_null_proxy LISTEN_PORT UPSTREAM_PORT... [--io B]\n");
        return 2;
      }
      ports.push_back(static_cast<uint16_t>(p));
    }
  }
  if (ports.size() < 2) {
    std::fprintf(stderr, "usage: sluice_null_proxy LISTEN_PORT UPSTREAM_PORT... [--io B]\n");
    return 2;
  }
  auto backend = sluice::proxy::ParseIoBackend(io);
  if (!backend) {
    std::fprintf(stderr, "sluice_null_proxy: --io: %s\n", backend.error().message.c_str());
    return 2;
  }
  EventLoop::Options o;
  o.backend = *backend;
  auto loop = EventLoop::Create(o);
  if (!loop || !(*loop)->Activate()) {
    std::fprintf(stderr, "sluice_null_proxy: cannot create the event loop\n");
    return 1;
  }
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  auto a = sluice::proxy::ParseIp("127.0.0.1", ports[0]);
  if (bind(lfd, reinterpret_cast<const sockaddr*>(&*a), sizeof(sockaddr_in)) != 0 ||
      listen(lfd, 4096) != 0) {
    std::perror("sluice_null_proxy: listen");
    return 1;
  }
  Listener l;
  l.loop = loop->get();
  l.fd = lfd;
  l.upstreams.assign(ports.begin() + 1, ports.end());
  (*loop)->Add(lfd, EPOLLIN, &l, EventLoop::Kind::kPoll);
  std::signal(SIGTERM, [](int) { g_stop = 1; });
  std::signal(SIGINT, [](int) { g_stop = 1; });
  std::fprintf(stderr, "sluice_null_proxy: I/O: %s\n",
               sluice::proxy::IoBackendName((*loop)->backend()));
  while (!g_stop) {
    (*loop)->Poll(100);
    (*loop)->Dispatch();
  }
  loop->reset();  // cancels and closes what is armed before the sockets go
  close(lfd);
  return 0;
}
