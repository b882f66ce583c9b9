#include "admin.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cstring>

namespace sluice::agent {

AdminServer::~AdminServer() {
  Stop();
}

Result<int> AdminServer::Start(const std::string& address) {
  if (address.starts_with("unix:")) {
    unix_path_ = address.substr(5);
    sockaddr_un sun{};
    if (unix_path_.empty() || unix_path_.size() >= sizeof(sun.sun_path))
      return Fail("--admin-address '" + address + "': bad Unix socket path");
    sun.sun_family = AF_UNIX;
    std::memcpy(sun.sun_path, unix_path_.c_str(), unix_path_.size() + 1);
    fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ::unlink(unix_path_.c_str());  // a stale socket of an earlier run
    mode_t old = umask(0177);
    int rc = bind(fd_, reinterpret_cast<sockaddr*>(&sun), sizeof(sun));
    umask(old);
    if (rc != 0 || listen(fd_, 64) != 0)
      return FailErrno("admin endpoint " + address, errno);
    thread_ = std::thread([this] { Serve(); });
    return 0;
  }
  auto colon = address.rfind(':');
  if (colon == std::string::npos)
    return Fail("--admin-address '" + address + "': expected 127.0.0.1:PORT");
  const std::string host = address.substr(0, colon);
  if (host != "127.0.0.1" && host != "localhost")
    return Fail("--admin-address '" + address + "': the admin endpoint listens on 127.0.0.1 only");
  int port = std::atoi(address.c_str() + colon + 1);
  fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_port = htons(static_cast<uint16_t>(port));
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd_, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) != 0 || listen(fd_, 64) != 0)
    return FailErrno("admin endpoint " + address, errno);
  socklen_t len = sizeof(sin);
  getsockname(fd_, reinterpret_cast<sockaddr*>(&sin), &len);
  thread_ = std::thread([this] { Serve(); });
  return ntohs(sin.sin_port);
}

void AdminServer::Stop() {
  stop_ = true;
  if (thread_.joinable())
    thread_.join();
  if (fd_ >= 0)
    close(fd_);
  fd_ = -1;
  if (!unix_path_.empty())
    ::unlink(unix_path_.c_str());
  unix_path_.clear();
}

void AdminServer::Serve() {
  while (!stop_) {
    pollfd p{fd_, POLLIN, 0};
    if (poll(&p, 1, 200) <= 0)
      continue;
    int c = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0)
      continue;
    timeval tv{2, 0};
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    std::string req;
    char buf[4096];
    while (req.find("\r\n\r\n") == std::string::npos && req.size() < 16384) {
      ssize_t n = read(c, buf, sizeof(buf));
      if (n <= 0)
        break;
      req.append(buf, static_cast<size_t>(n));
    }
    AdminReply reply{400, "text/plain", "bad request\n"};
    auto sp1 = req.find(' ');
    auto sp2 = sp1 == std::string::npos ? sp1 : req.find(' ', sp1 + 1);
    if (sp2 != std::string::npos) {
      const std::string method = req.substr(0, sp1);
      std::string path = req.substr(sp1 + 1, sp2 - sp1 - 1);
      std::string query;
      if (auto q = path.find('?'); q != std::string::npos) {
        query = path.substr(q + 1);
        path.resize(q);
      }
      auto h = handlers_.find(path);
      if (method != "GET")
        reply = {405, "text/plain", "only GET\n"};
      else if (h == handlers_.end())
        reply = {404, "text/plain", "not found; try /ready /metrics /config_dump /pods\n"};
      else
        reply = h->second(query);
    }
    const char* reason = reply.status == 200   ? "OK"
                         : reply.status == 503 ? "Service Unavailable"
                         : reply.status == 404 ? "Not Found"
                                               : "Error";
    std::string head = fmt::format(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reply.status, reason, reply.content_type, reply.body.size());
    std::string out = head + reply.body;
    size_t off = 0;
    while (off < out.size()) {
      ssize_t w = write(c, out.data() + off, out.size() - off);
      if (w <= 0)
        break;
      off += static_cast<size_t>(w);
    }
    close(c);
  }
}

}  // namespace sluice::agent
