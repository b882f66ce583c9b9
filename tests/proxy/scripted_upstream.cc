#include "scripted_upstream.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <stdexcept>
#include <vector>

#include "sluice/proxy/http_codec.h"

namespace sluice::testing {
namespace {

namespace http = proxy::http;

constexpr std::array<std::string_view, kNumScripts> kScriptNames = {
    "ok",       "close-after",   "chunked",       "closedelim", "interim",  "nobody",
    "big",      "slow",          "503",           "flaky",      "101close", "101reset",
    "101echo",  "partial-reset", "partial-close", "head-reset", "stall",    "stall-body",
    "badchunk", "close",         "reset",
};

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void Reset(int fd) {
  linger l{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
  close(fd);
}

struct Conn {
  int fd = -1;
  std::string in, out;
  // kReading: parsing requests; kDelayed: an answer waits until `due`; kStalled: no more
  // answers on this connection; kTunnel: after 101, bytes come back as sent.
  enum class State { kReading, kDelayed, kStalled, kTunnel } state = State::kReading;
  int64_t due = 0;
  std::string delayed;
  enum class After { kNothing, kClose, kReset } after = After::kNothing;  // once `out` is sent
  After delayed_after = After::kNothing;                                  // for the delayed answer
  uint32_t events = 0;
  bool busy() const { return state != State::kReading || !in.empty() || !out.empty(); }
};

std::string Response(int status, std::string_view reason, std::string_view headers,
                     std::string_view body, bool head_request, bool with_length = true) {
  std::string r = "HTTP/1.1 " + std::to_string(status) + " " + std::string(reason) + "\r\n";
  r += headers;
  if (with_length)
    r += "content-length: " + std::to_string(body.size()) + "\r\n";
  r += "\r\n";
  if (!head_request)
    r += body;
  return r;
}

}  // namespace

std::string_view ScriptName(Script s) {
  return kScriptNames[static_cast<std::size_t>(s)];
}

std::optional<Script> ParseScript(std::string_view name) {
  for (std::size_t i = 0; i < kScriptNames.size(); ++i) {
    if (kScriptNames[i] == name)
      return static_cast<Script>(i);
  }
  return std::nullopt;
}

bool IsUpgradeScript(Script s) {
  return s == Script::kUpgradeClose || s == Script::kUpgradeReset || s == Script::kUpgradeEcho;
}

ScriptedUpstream::ScriptedUpstream(std::string name) : name_(std::move(name)) {
  listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      listen(listen_fd_, 1024) != 0) {
    close(listen_fd_);
    throw std::runtime_error(std::string("scripted upstream: bind/listen: ") +
                             std::strerror(errno));
  }
  socklen_t len = sizeof(a);
  getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
  port_ = ntohs(a.sin_port);
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  thread_ = std::thread([this] { Run(); });
}

ScriptedUpstream::~ScriptedUpstream() {
  Command(2);
  thread_.join();
  close(listen_fd_);
  close(wake_fd_);
}

void ScriptedUpstream::CloseAll() {
  Command(1);
}

void ScriptedUpstream::Command(int cmd) {
  std::unique_lock<std::mutex> l(mu_);
  pending_cmd_ = cmd;
  uint64_t want = cmd_done_ + 1;
  uint64_t one = 1;
  [[maybe_unused]] ssize_t r = write(wake_fd_, &one, sizeof(one));
  cv_.wait(l, [&] { return cmd_done_ >= want; });
}

void ScriptedUpstream::Run() {
  int ep = epoll_create1(EPOLL_CLOEXEC);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = listen_fd_;
  epoll_ctl(ep, EPOLL_CTL_ADD, listen_fd_, &ev);
  ev.data.fd = wake_fd_;
  epoll_ctl(ep, EPOLL_CTL_ADD, wake_fd_, &ev);
  std::map<int, std::unique_ptr<Conn>> conns;
  auto req = std::make_unique<http::RequestHead>();  // large: not on the stack
  const http::Limits limits;

  auto set_events = [&](Conn& c) {
    uint32_t want = EPOLLIN | (c.out.empty() ? 0u : static_cast<uint32_t>(EPOLLOUT));
    if (want != c.events) {
      c.events = want;
      epoll_event e{};
      e.events = want;
      e.data.fd = c.fd;
      epoll_ctl(ep, EPOLL_CTL_MOD, c.fd, &e);
    }
  };
  auto drop = [&](Conn& c, bool reset) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c.fd, nullptr);
    if (reset)
      Reset(c.fd);
    else
      close(c.fd);
    conns.erase(c.fd);  // c is gone
  };
  // Sends what it can; false when the connection was closed.
  auto flush = [&](Conn& c) -> bool {
    while (!c.out.empty()) {
      ssize_t n = send(c.fd, c.out.data(), c.out.size(), MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
          break;
        drop(c, false);
        return false;
      }
      c.out.erase(0, static_cast<std::size_t>(n));
    }
    if (c.out.empty() && c.after != Conn::After::kNothing) {
      drop(c, c.after == Conn::After::kReset);
      return false;
    }
    set_events(c);
    return true;
  };
  // Answers the complete requests at the head of c.in, as their scripts say.
  auto serve = [&](Conn& c) {
    while (c.state == Conn::State::kReading && c.after == Conn::After::kNothing) {
      http::ParseStatus st = http::ParseRequest(c.in, limits, req.get());
      if (st == http::ParseStatus::kIncomplete)
        return;
      if (st == http::ParseStatus::kError) {
        c.out += Response(400, "Bad Request", "connection: close\r\n", "", false);
        c.after = Conn::After::kClose;
        c.in.clear();
        return;
      }
      std::size_t total = req->head_len;
      if (req->chunked) {
        http::ChunkedDecoder d;
        std::size_t used = d.Feed(std::string_view(c.in).substr(req->head_len), nullptr);
        if (d.failed()) {
          c.out += Response(400, "Bad Request", "connection: close\r\n", "", false);
          c.after = Conn::After::kClose;
          c.in.clear();
          return;
        }
        if (!d.done())
          return;
        total += used;
      } else if (req->content_length > 0) {
        total += static_cast<std::size_t>(req->content_length);
        if (c.in.size() < total)
          return;
      }
      // Everything needed from the head, before the buffer moves.
      std::string_view path = req->path;
      std::size_t second = path.find('/', 1);
      std::string_view name =
          second == std::string_view::npos ? std::string_view() : path.substr(second + 1);
      name = name.substr(0, name.find('/'));
      Script script = ParseScript(name).value_or(Script::kOk);
      const bool head = req->method == "HEAD";
      const bool keep = req->keep_alive;
      std::string_view attempt_text = req->Get(http::HeaderId::kXEnvoyAttemptCount);
      int attempt = attempt_text.empty() ? 1 : std::atoi(std::string(attempt_text).c_str());
      c.in.erase(0, total);
      requests_.fetch_add(1);

      const std::string ok_body = "ok " + name_ + "\n";
      const std::string close_hdr = keep ? "" : "connection: close\r\n";
      auto ok = [&] {
        c.out += Response(200, "OK", close_hdr, ok_body, head);
        if (!keep)
          c.after = Conn::After::kClose;
      };
      constexpr std::string_view k101 =
          "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n";
      constexpr std::string_view kPartialHead = "HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n";
      switch (script) {
        case Script::kOk:
          ok();
          break;
        case Script::kCloseAfter:
          c.out += Response(200, "OK", "connection: close\r\n", ok_body, head);
          c.after = Conn::After::kClose;
          break;
        case Script::kChunked:
          c.out += "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n" + close_hdr + "\r\n";
          if (!head)
            c.out += "5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n";
          if (!keep)
            c.after = Conn::After::kClose;
          break;
        case Script::kCloseDelim:
          c.out += Response(200, "OK", "connection: close\r\n", ok_body, head, false);
          c.after = Conn::After::kClose;
          break;
        case Script::kInterim:
          c.out +=
              "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n";
          ok();
          break;
        case Script::kNoBody:
          c.out += "HTTP/1.1 204 No Content\r\n" + close_hdr + "\r\n";
          if (!keep)
            c.after = Conn::After::kClose;
          break;
        case Script::kBig:
          c.out += Response(200, "OK", close_hdr, std::string(512 * 1024, 'x'), head);
          if (!keep)
            c.after = Conn::After::kClose;
          break;
        case Script::kSlow:
          c.state = Conn::State::kDelayed;
          c.due = NowMs() + 200;
          c.delayed = Response(200, "OK", close_hdr, ok_body, head);
          c.delayed_after = keep ? Conn::After::kNothing : Conn::After::kClose;
          break;
        case Script::k503:
          c.out += Response(503, "Service Unavailable", close_hdr, "unavailable\n", head);
          if (!keep)
            c.after = Conn::After::kClose;
          break;
        case Script::kFlaky:
          if (attempt <= 1)
            c.after = Conn::After::kReset;
          else
            ok();
          break;
        case Script::kUpgradeClose:
          c.out += k101;
          c.after = Conn::After::kClose;
          break;
        case Script::kUpgradeReset:
          c.out += k101;
          c.after = Conn::After::kReset;
          break;
        case Script::kUpgradeEcho:
          c.out += k101;
          c.state = Conn::State::kTunnel;
          c.out += c.in;  // bytes the client sent right behind its request
          c.in.clear();
          break;
        case Script::kPartialReset:
          c.out += kPartialHead;
          c.out += "0123456789";
          c.after = Conn::After::kReset;
          break;
        case Script::kPartialClose:
          c.out += kPartialHead;
          c.out += "0123456789";
          c.after = Conn::After::kClose;
          break;
        case Script::kHeadReset:
          c.out += "HTTP/1.1 20";
          c.after = Conn::After::kReset;
          break;
        case Script::kStall:
          c.state = Conn::State::kStalled;
          break;
        case Script::kStallBody:
          c.out += kPartialHead;
          c.out += "0123456789";
          c.state = Conn::State::kStalled;
          break;
        case Script::kBadChunk:
          c.out += "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n";
          c.state = Conn::State::kStalled;
          break;
        case Script::kClose:
          c.after = Conn::After::kClose;
          break;
        case Script::kReset:
          c.after = Conn::After::kReset;
          break;
      }
    }
  };

  epoll_event evs[64];
  bool stop = false;
  while (!stop) {
    int timeout = 100;
    int64_t now = NowMs();
    for (auto& [fd, c] : conns) {
      if (c->state == Conn::State::kDelayed)
        timeout = static_cast<int>(std::clamp<int64_t>(c->due - now, 0, timeout));
    }
    int n = epoll_wait(ep, evs, 64, timeout);
    for (int i = 0; i < n; ++i) {
      int fd = evs[i].data.fd;
      if (fd == listen_fd_) {
        while (true) {
          int cfd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (cfd < 0)
            break;
          accepted_.fetch_add(1);
          auto c = std::make_unique<Conn>();
          c->fd = cfd;
          c->events = EPOLLIN;
          epoll_event e{};
          e.events = EPOLLIN;
          e.data.fd = cfd;
          epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &e);
          conns[cfd] = std::move(c);
        }
        continue;
      }
      if (fd == wake_fd_) {
        uint64_t v;
        [[maybe_unused]] ssize_t r = read(wake_fd_, &v, sizeof(v));
        std::lock_guard<std::mutex> l(mu_);
        if (pending_cmd_ == 1) {
          for (auto& [cfd, c] : conns) {
            epoll_ctl(ep, EPOLL_CTL_DEL, cfd, nullptr);
            close(cfd);
          }
          conns.clear();
        } else if (pending_cmd_ == 2) {
          stop = true;
        }
        pending_cmd_ = 0;
        ++cmd_done_;
        cv_.notify_all();
        continue;
      }
      auto it = conns.find(fd);
      if (it == conns.end())
        continue;
      Conn& c = *it->second;
      if (evs[i].events & EPOLLOUT) {
        if (!flush(c))
          continue;
      }
      if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        char buf[65536];
        ssize_t r = recv(fd, buf, sizeof(buf), 0);
        if (r <= 0) {
          if (r < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
          drop(c, false);  // the proxy hung up (or reset): so do we
          continue;
        }
        if (c.state == Conn::State::kTunnel) {
          c.out.append(buf, static_cast<std::size_t>(r));
        } else {
          c.in.append(buf, static_cast<std::size_t>(r));
          serve(c);
        }
        flush(c);
      }
    }
    // Delayed answers that are due.
    now = NowMs();
    std::vector<int> due;
    for (auto& [fd, c] : conns) {
      if (c->state == Conn::State::kDelayed && c->due <= now)
        due.push_back(fd);
    }
    for (int fd : due) {
      Conn& c = *conns[fd];
      c.state = Conn::State::kReading;
      c.out += c.delayed;
      c.after = c.delayed_after;
      c.delayed.clear();
      serve(c);
      flush(c);
    }
    std::size_t busy = 0;
    for (auto& [fd, c] : conns)
      busy += c->busy() ? 1 : 0;
    open_.store(conns.size());
    busy_.store(busy);
  }
  for (auto& [fd, c] : conns)
    close(fd);
  close(ep);
}

}  // namespace sluice::testing
