#include "test_upstream.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <stdexcept>

#include "sluice/proxy/http_codec.h"

namespace sluice::testing {
namespace {

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

struct Conn {
  int fd = -1;
  std::string in, out;
  int64_t due = 0;  // a delayed answer is waiting until then
  std::string pending;
  bool close_after = false;
  bool echo_mode = false;  // after a 101 for "upgrade: echo": bytes come back as sent
};

}  // namespace

TestUpstream::TestUpstream(Options o) : opts_(std::move(o)) {
  listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(opts_.port);
  if (inet_pton(AF_INET, opts_.address.c_str(), &a.sin_addr) != 1) {
    close(listen_fd_);
    throw std::runtime_error("test upstream: address " + opts_.address + " is not IPv4");
  }
  if (bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      listen(listen_fd_, 1024) != 0) {
    close(listen_fd_);
    throw std::runtime_error(std::string("test upstream: bind/listen: ") + std::strerror(errno));
  }
  socklen_t len = sizeof(a);
  getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
  port_ = ntohs(a.sin_port);
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  thread_ = std::thread([this] { Run(); });
}

TestUpstream::~TestUpstream() {
  stop_ = true;
  uint64_t one = 1;
  [[maybe_unused]] ssize_t r = write(wake_fd_, &one, sizeof(one));
  thread_.join();
  close(listen_fd_);
  close(wake_fd_);
}

std::vector<std::string> TestUpstream::Requests() const {
  std::lock_guard<std::mutex> l(mu_);
  return requests_;
}

void TestUpstream::Reset() {
  std::lock_guard<std::mutex> l(mu_);
  requests_.clear();
  count_ = 0;
  connections_ = 0;
}

void TestUpstream::Run() {
  int ep = epoll_create1(EPOLL_CLOEXEC);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = nullptr;
  epoll_ctl(ep, EPOLL_CTL_ADD, listen_fd_, &ev);
  Conn wake_marker;
  ev.data.ptr = &wake_marker;
  epoll_ctl(ep, EPOLL_CTL_ADD, wake_fd_, &ev);
  std::map<int, std::unique_ptr<Conn>> conns;

  auto drop = [&](Conn* c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, nullptr);
    close(c->fd);
    conns.erase(c->fd);
  };
  auto flush = [&](Conn* c) -> bool {
    while (!c->out.empty()) {
      ssize_t n = send(c->fd, c->out.data(), c->out.size(), MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EAGAIN)
          break;
        return false;
      }
      c->out.erase(0, static_cast<std::size_t>(n));
    }
    epoll_event e{};
    e.events = EPOLLIN | (c->out.empty() ? 0u : static_cast<uint32_t>(EPOLLOUT));
    e.data.ptr = c;
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
    if (c->out.empty() && c->close_after)
      return false;
    return true;
  };
  // Answers whole requests at the head of c->in; stops at a delayed one.
  auto serve = [&](Conn* c) -> bool {
    if (c->echo_mode) {
      c->out += c->in;
      c->in.clear();
      return flush(c);
    }
    while (c->due == 0) {
      proxy::http::RequestHead req;
      proxy::http::Limits lim;
      lim.max_head_bytes = 1 << 20;
      auto st = proxy::http::ParseRequest(c->in, lim, &req);
      if (st == proxy::http::ParseStatus::kIncomplete)
        break;
      if (st == proxy::http::ParseStatus::kError)
        return false;
      std::size_t total = req.head_len;
      if (req.content_length > 0) {
        if (c->in.size() < req.head_len + static_cast<std::size_t>(req.content_length))
          break;
        total += static_cast<std::size_t>(req.content_length);
      } else if (req.chunked) {
        proxy::http::ChunkedDecoder d;
        std::size_t used = d.Feed(std::string_view(c->in).substr(req.head_len), nullptr);
        if (d.failed())
          return false;
        if (!d.done())
          break;
        total += used;
      }
      std::string head(c->in.data(), req.head_len);
      if (opts_.record) {
        std::lock_guard<std::mutex> l(mu_);
        requests_.push_back(head);
      }
      ++count_;
      if (req.connection_upgrade && req.Get("upgrade") == "echo") {
        c->in.erase(0, total);
        c->out +=
            "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n";
        c->echo_mode = true;
        c->out += c->in;
        c->in.clear();
        break;
      }
      if (req.Get("x-close") == "1") {
        c->in.erase(0, total);
        return false;
      }
      int status = opts_.status;
      if (auto s = req.Get("x-status"); !s.empty())
        status = std::atoi(std::string(s).c_str());
      int delay = opts_.delay_ms;
      if (auto d = req.Get("x-delay-ms"); !d.empty())
        delay = std::atoi(std::string(d).c_str());
      std::string body = opts_.echo ? head : std::string("ok\n");
      std::string resp =
          "HTTP/1.1 " + std::to_string(status) + " X\r\nx-upstream: " + opts_.name +
          "\r\ncontent-length: " + std::to_string(req.method == "HEAD" ? 0 : body.size()) +
          "\r\ncontent-type: text/plain\r\n";
      if (req.Get("x-set-response-header") == "1")
        resp += "x-from-upstream: yes\r\n";
      if (!req.keep_alive)
        resp += "connection: close\r\n";
      resp += "\r\n";
      if (req.method != "HEAD")
        resp += body;
      c->close_after = !req.keep_alive;
      c->in.erase(0, total);
      if (delay > 0) {
        c->due = NowMs() + delay;
        c->pending = std::move(resp);
        break;
      }
      c->out += resp;
      if (c->close_after)
        break;
    }
    return flush(c);
  };

  epoll_event events[64];
  while (!stop_) {
    int timeout = -1;
    int64_t now = NowMs();
    for (auto& [fd, c] : conns) {
      if (c->due) {
        int64_t t = std::max<int64_t>(0, c->due - now);
        if (timeout < 0 || t < timeout)
          timeout = static_cast<int>(t);
      }
    }
    int n = epoll_wait(ep, events, 64, timeout);
    for (int i = 0; i < n; ++i) {
      if (events[i].data.ptr == &wake_marker)
        continue;
      if (events[i].data.ptr == nullptr) {
        while (true) {
          int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (fd < 0)
            break;
          int one = 1;
          setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
          ++connections_;
          auto c = std::make_unique<Conn>();
          c->fd = fd;
          epoll_event e{};
          e.events = EPOLLIN;
          e.data.ptr = c.get();
          epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
          conns[fd] = std::move(c);
        }
        continue;
      }
      Conn* c = static_cast<Conn*>(events[i].data.ptr);
      if (conns.find(c->fd) == conns.end() || conns[c->fd].get() != c)
        continue;
      bool alive = true;
      if (events[i].events & EPOLLOUT)
        alive = flush(c);
      if (alive && (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
        char buf[65536];
        while (true) {
          ssize_t r = recv(c->fd, buf, sizeof(buf), 0);
          if (r > 0) {
            c->in.append(buf, static_cast<std::size_t>(r));
            continue;
          }
          if (r == 0 || errno != EAGAIN)
            alive = false;
          break;
        }
        if (alive || !c->in.empty())
          alive = serve(c) && alive;
      }
      if (!alive)
        drop(c);
    }
    now = NowMs();
    std::vector<Conn*> ready;
    for (auto& [fd, c] : conns) {
      if (c->due && c->due <= now)
        ready.push_back(c.get());
    }
    for (Conn* c : ready) {
      c->due = 0;
      c->out += c->pending;
      c->pending.clear();
      if (!flush(c) || !serve(c))
        drop(c);
    }
  }
  for (auto& [fd, c] : conns)
    close(fd);
  close(ep);
}

}  // namespace sluice::testing
