#include "server.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <thread>

#include <openssl/err.h>

namespace sluice::apps {
namespace {

// Reads and writes either plain TCP or TLS on one accepted socket.
class Stream {
 public:
  Stream(int fd, SSL* ssl) : fd_(fd), ssl_(ssl) {}
  ~Stream() {
    if (ssl_) {
      if (!ssl_failed_)  // close_notify is not allowed after a fatal TLS error
        SSL_shutdown(ssl_);
      SSL_free(ssl_);
      ERR_clear_error();
    }
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  // Bytes read, 0 on end of stream, timeout or error (the connection is over either way).
  std::size_t Read(char* buf, std::size_t n) {
    if (ssl_) {
      int r = SSL_read(ssl_, buf, static_cast<int>(n));
      if (r > 0)
        return static_cast<std::size_t>(r);
      Failed(r);
      return 0;
    }
    for (;;) {
      ssize_t r = ::recv(fd_, buf, n, 0);
      if (r >= 0)
        return static_cast<std::size_t>(r);
      if (errno != EINTR)
        return 0;
    }
  }

  bool WriteAll(std::string_view data) {
    while (!data.empty()) {
      if (ssl_) {
        int r = SSL_write(ssl_, data.data(), static_cast<int>(data.size()));
        if (r <= 0) {
          Failed(r);
          return false;
        }
        data.remove_prefix(static_cast<std::size_t>(r));
        continue;
      }
      ssize_t r = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (r < 0) {
        if (errno == EINTR)
          continue;
        return false;
      }
      data.remove_prefix(static_cast<std::size_t>(r));
    }
    return true;
  }

 private:
  void Failed(int r) {
    int e = SSL_get_error(ssl_, r);
    ssl_failed_ = e == SSL_ERROR_SYSCALL || e == SSL_ERROR_SSL;
  }

  int fd_;
  SSL* ssl_;
  bool ssl_failed_ = false;
};

std::string IpString(const sockaddr_storage& ss, std::uint16_t* port) {
  char buf[INET6_ADDRSTRLEN] = "?";
  if (ss.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, buf, sizeof buf);
    *port = ntohs(a->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
    if (IN6_IS_ADDR_V4MAPPED(&a->sin6_addr)) {
      inet_ntop(AF_INET, &a->sin6_addr.s6_addr[12], buf, sizeof buf);
    } else {
      inet_ntop(AF_INET6, &a->sin6_addr, buf, sizeof buf);
    }
    *port = ntohs(a->sin6_port);
  }
  return buf;
}

// Keeps a log field on one line and inside its quotes.
std::string Quote(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (u < 0x20 || u == 0x7f) {
      char hex[5];
      std::snprintf(hex, sizeof hex, "\\x%02x", u);
      out += hex;
    } else {
      out += c;
    }
  }
  out += '"';
  return out;
}

// Combined Log Format writes "-" for an absent header.
std::string QuoteOrDash(std::string_view s) {
  return s.empty() ? "\"-\"" : Quote(s);
}

void WriteLine(const std::string& line) {
  std::string_view rest = line;
  while (!rest.empty()) {
    ssize_t w = ::write(STDOUT_FILENO, rest.data(), rest.size());
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return;  // stdout gone: logging must never stop serving
    rest.remove_prefix(static_cast<std::size_t>(w));
  }
}

}  // namespace

std::string FormatAccessLog(const AccessLogEntry& e) {
  char when[64];
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  std::strftime(when, sizeof when, "%d/%b/%Y:%H:%M:%S +0000", &tm);
  char dur[32];
  std::snprintf(dur, sizeof dur, "%.3f", e.duration_ms);
  std::string line = e.peer_ip + " - - [" + when + "] \"" + e.method + " " + e.target + " HTTP/1." +
                     std::to_string(e.version_minor) + "\" " + std::to_string(e.status) + " " +
                     std::to_string(e.body_bytes) + " " + QuoteOrDash(e.referer) + " " +
                     QuoteOrDash(e.user_agent) + " host=" + Quote(e.host) + " duration_ms=" + dur;
  if (e.tls)
    line += " tls sni=" + Quote(e.sni);
  line += '\n';
  return line;
}

Server::Server(Handler handler, ServerOptions options)
    : handler_(std::move(handler)), options_(options) {}

Server::~Server() {
  for (auto& l : listeners_)
    ::close(l.fd);
}

Result<std::uint16_t> Server::Listen(const std::string& address, std::uint16_t port,
                                     std::shared_ptr<TlsContext> tls) {
  std::string where = address + ":" + std::to_string(port);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST | AI_PASSIVE;
  addrinfo* res = nullptr;
  std::string host = address;
  if (host.size() > 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  if (int rc = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res); rc != 0)
    return Fail("listen address " + where + ": " + gai_strerror(rc));
  std::unique_ptr<addrinfo, void (*)(addrinfo*)> guard(res, freeaddrinfo);

  int fd = ::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return FailErrno("socket for " + where, errno);
  int one = 1, zero = 0;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (res->ai_family == AF_INET6)  // "::" also takes IPv4, like most servers
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
  if (::bind(fd, res->ai_addr, res->ai_addrlen) != 0) {
    int err = errno;
    ::close(fd);
    return FailErrno("bind " + where, err);
  }
  if (::listen(fd, 1024) != 0) {
    int err = errno;
    ::close(fd);
    return FailErrno("listen " + where, err);
  }
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  std::uint16_t bound = 0;
  IpString(ss, &bound);
  listeners_.push_back(Listener{fd, bound, std::move(tls)});
  return bound;
}

void Server::Start() {
  for (const auto& l : listeners_)
    std::thread([this, &l] { AcceptLoop(l); }).detach();
}

void Server::AcceptLoop(const Listener& listener) {
  for (;;) {
    int fd = ::accept4(listener.fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED)
        continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        // Out of descriptors: back off instead of spinning; connections wait in backlog.
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        continue;
      }
      return;  // listener closed
    }
    if (connections_.fetch_add(1) >= options_.max_connections) {
      connections_.fetch_sub(1);
      ::close(fd);
      continue;
    }
    if (!SpawnConnectionThread(fd, listener)) {
      connections_.fetch_sub(1);
      ::close(fd);
    }
  }
}

bool Server::SpawnConnectionThread(int fd, const Listener& listener) {
  // A small stack: thousands of idle keep-alive connections should cost little memory;
  // the deepest path (JSON of an echoed request) needs far less than this.
  struct Job {
    Server* server;
    int fd;
    const Listener* listener;
  };
  auto* job = new Job{this, fd, &listener};
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 256 * 1024);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_t tid;
  int rc = pthread_create(
      &tid, &attr,
      [](void* arg) -> void* {
        std::unique_ptr<Job> j(static_cast<Job*>(arg));
        j->server->Serve(j->fd, *j->listener);
        j->server->connections_.fetch_sub(1);
        return nullptr;
      },
      job);
  pthread_attr_destroy(&attr);
  if (rc != 0) {
    delete job;
    return false;
  }
  return true;
}

void Server::Serve(int fd, const Listener& listener) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  timeval tv{options_.idle_timeout_seconds, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);

  ConnectionInfo info;
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  info.peer_ip = IpString(ss, &info.peer_port);
  info.local_port = listener.port;

  SSL* ssl = nullptr;
  if (listener.tls) {
    info.tls = true;
    ssl = SSL_new(listener.tls->get());
    if (!ssl || SSL_set_fd(ssl, fd) != 1 || SSL_accept(ssl) != 1) {
      // Not an access-log line (no request was made), but worth seeing on stderr: it is
      // how an untrusted certificate or a plain-text client on the TLS port shows up.
      std::string line =
          "tls handshake from " + info.peer_ip + " failed: " + OpenSslErrors() + "\n";
      (void)!::write(STDERR_FILENO, line.data(), line.size());
      SSL_free(ssl);
      ::close(fd);
      return;
    }
    if (const char* name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name))
      info.sni = name;
  }
  {
    Stream stream(fd, ssl);
    std::string buffer;
    char chunk[16 * 1024];
    bool sent_continue = false;
    auto started = std::chrono::steady_clock::now();  // first byte of the current request
    for (bool open = true; open;) {
      Request req;
      ParseStatus st = ParseRequest(buffer, options_.limits, req);
      if (st.kind == ParseStatus::Kind::kIncomplete) {
        if (st.expects_continue && !sent_continue) {
          sent_continue = true;
          if (!stream.WriteAll("HTTP/1.1 100 Continue\r\n\r\n"))
            break;
        }
        std::size_t n = stream.Read(chunk, sizeof chunk);
        if (n == 0)
          break;
        if (buffer.empty())
          started = std::chrono::steady_clock::now();
        buffer.append(chunk, n);
        continue;
      }
      AccessLogEntry log;
      log.peer_ip = info.peer_ip;
      log.tls = info.tls;
      log.sni = info.sni;
      Response resp;
      bool keep_alive = false;
      if (st.kind == ParseStatus::Kind::kBad) {
        resp.status = st.error_status;
        resp.headers.emplace_back("Content-Type", "text/plain; charset=utf-8");
        resp.body = std::string(ReasonPhrase(st.error_status)) + ": " + st.error + "\n";
        log.method = "-";
        log.target = "-";
        open = false;
      } else {
        buffer.erase(0, st.consumed);
        sent_continue = false;
        resp = handler_(req, info);
        keep_alive = req.KeepAlive();
        open = keep_alive;
        log.method = req.method;
        log.target = req.target;
        log.version_minor = req.version_minor;
        log.host = req.Header("host").value_or("");
        log.user_agent = req.Header("user-agent").value_or("");
        log.referer = req.Header("referer").value_or("");
      }
      bool wrote = stream.WriteAll(Serialize(resp, log.method, keep_alive));
      log.status = resp.status;
      log.body_bytes = log.method == "HEAD" ? 0 : resp.body.size();
      log.duration_ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started)
              .count();
      WriteLine(FormatAccessLog(log));
      started = std::chrono::steady_clock::now();  // pipelined bytes may already be here
      if (!wrote)
        break;
    }
  }
  if (!ssl) {
    // Lingering close: closing with unread request bytes would reset the connection and
    // could destroy the response (a 400) before the client reads it.
    ::shutdown(fd, SHUT_WR);
    timeval linger{0, 500 * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &linger, sizeof linger);
    char sink[4096];
    for (int i = 0; i < 16 && ::recv(fd, sink, sizeof sink, 0) > 0; ++i) {
    }
  }
  ::close(fd);
}

}  // namespace sluice::apps
