// The agent's CNI server: accepts sluice-cni's connections on a Unix socket, reads one
// framed request each (cni/include/sluice/cni/protocol.h) and hands it to the agent's
// CniHandler, one call at a time.
#include "cni_server.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

namespace sluice::cni {
namespace {

Result<void> EnsureDirectory(const std::filesystem::path& dir) {
  if (dir.empty())
    return {};
  std::error_code ec;
  if (std::filesystem::is_directory(dir, ec))
    return {};
  if (auto parent = dir.parent_path(); parent != dir) {
    if (auto r = EnsureDirectory(parent); !r)
      return r;
  }
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return FailErrno("create socket directory " + dir.string(), errno);
  }
  return {};
}

PodInfo ToPodInfo(const CniRequest& req) {
  PodInfo pod;
  pod.name = req.pod_name;
  pod.pod_namespace = req.pod_namespace;
  pod.uid = req.pod_uid;
  pod.netns = req.netns;
  pod.container_id = req.container_id;
  pod.ifname = req.ifname;
  pod.ips = req.ips;
  pod.cni_version = req.cni_version;
  return pod;
}

CniReply ErrorReply(int code, std::string msg, std::string details = {}) {
  CniReply r;
  r.ok = false;
  r.code = code;
  r.msg = std::move(msg);
  r.details = std::move(details);
  return r;
}

CniReply FromHandlerError(const Error& err) {
  int code =
      (err.code == EAGAIN || err.code == EBUSY) ? codes::kTryAgainLater : codes::kAgentFailed;
  return ErrorReply(code, "sluice agent: " + err.message);
}

}  // namespace

Result<std::unique_ptr<CniServer>> CniServer::Start(CniServerOptions options, CniHandler& handler) {
  const std::filesystem::path path(options.socket_path);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (options.socket_path.empty() || options.socket_path.size() >= sizeof(addr.sun_path)) {
    return Fail("CNI socket path \"" + options.socket_path + "\" is empty or too long");
  }
  SLUICE_RETURN_IF_ERROR(EnsureDirectory(path.parent_path()));
  // A socket file left by a previous agent would make bind fail; a non-socket is not ours.
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return Fail("CNI socket path " + path.string() + " exists and is not a socket");
    }
    ::unlink(path.c_str());
  }
  std::memcpy(addr.sun_path, options.socket_path.c_str(), options.socket_path.size() + 1);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0)
    return FailErrno("socket", errno);
  // Create the socket with 0600 from the start, not chmod after: no window where others
  // could connect.
  mode_t old_mask = ::umask(0177);
  int rc = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  int bind_errno = errno;
  ::umask(old_mask);
  if (rc != 0) {
    ::close(fd);
    return FailErrno("bind " + path.string(), bind_errno);
  }
  if (::chmod(path.c_str(), 0600) != 0 || ::listen(fd, 128) != 0) {
    int err = errno;
    ::close(fd);
    ::unlink(path.c_str());
    return FailErrno("listen on " + path.string(), err);
  }
  int wake = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake < 0) {
    int err = errno;
    ::close(fd);
    ::unlink(path.c_str());
    return FailErrno("eventfd", err);
  }
  std::unique_ptr<CniServer> server(new CniServer(std::move(options), handler, fd, wake));
  server->accept_thread_ = std::thread([s = server.get()] { s->AcceptLoop(); });
  return server;
}

CniServer::CniServer(CniServerOptions options, CniHandler& handler, int listen_fd, int wake_fd)
    : options_(std::move(options)), handler_(handler), listen_fd_(listen_fd), wake_fd_(wake_fd) {}

CniServer::~CniServer() {
  Stop();
}

void CniServer::Stop() {
  {
    std::lock_guard lock(mu_);
    if (stopped_)
      return;
    stopped_ = true;
    // Wake connection threads blocked in poll: their reads fail and they finish.
    for (auto& c : connections_)
      ::shutdown(c.fd, SHUT_RDWR);
  }
  std::uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(wake_fd_, &one, sizeof one);
  if (accept_thread_.joinable())
    accept_thread_.join();
  std::list<Connection> rest;
  {
    std::lock_guard lock(mu_);
    rest.swap(connections_);
  }
  for (auto& c : rest) {
    if (c.thread.joinable())
      c.thread.join();
  }
  ::close(listen_fd_);
  ::close(wake_fd_);
  ::unlink(options_.socket_path.c_str());
}

CniServerStats CniServer::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

void CniServer::ReapFinished() {
  std::list<Connection> finished;
  {
    std::lock_guard lock(mu_);
    for (auto it = connections_.begin(); it != connections_.end();) {
      auto next = std::next(it);
      if (it->done.load())
        finished.splice(finished.end(), connections_, it);
      it = next;
    }
  }
  for (auto& c : finished)
    c.thread.join();
}

void CniServer::AcceptLoop() {
  for (;;) {
    pollfd pfds[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    // Wake up now and then to join finished connection threads.
    int rc = ::poll(pfds, 2, 1000);
    if (rc < 0 && errno != EINTR)
      return;
    if (pfds[1].revents)
      return;
    ReapFinished();
    if (rc <= 0 || !(pfds[0].revents & POLLIN))
      continue;
    for (;;) {
      int cfd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (cfd < 0) {
        // EAGAIN: drained. Out of descriptors or memory: the listener stays readable, so
        // back off instead of spinning until threads finish and free some.
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
          ::usleep(50 * 1000);
        break;
      }
      std::unique_lock lock(mu_);
      if (stopped_) {
        ::close(cfd);
        return;
      }
      if (connections_.size() >= options_.max_connections) {
        ++stats_.rejected_busy;
        lock.unlock();
        // Best effort, never blocking: the reply fits in an empty socket buffer.
        auto body = SerializeReply(ErrorReply(codes::kTryAgainLater, "sluice agent: busy"));
        if (auto frame = EncodeFrame(FrameKind::kReply, body)) {
          [[maybe_unused]] auto n =
              ::send(cfd, frame->data(), frame->size(), MSG_DONTWAIT | MSG_NOSIGNAL);
        }
        ::close(cfd);
        continue;
      }
      auto& conn = connections_.emplace_back();
      conn.fd = cfd;
      conn.thread = std::thread([this, &conn] { Serve(conn); });
    }
  }
}

void CniServer::Serve(Connection& conn) {
  const Deadline read_deadline = std::chrono::steady_clock::now() + options_.io_timeout;
  CniReply reply;
  ucred cred{};
  socklen_t cred_len = sizeof cred;
  const bool cred_ok = ::getsockopt(conn.fd, SOL_SOCKET, SO_PEERCRED, &cred, &cred_len) == 0;
  const bool peer_allowed =
      !options_.check_peer_uid || (cred_ok && (cred.uid == 0 || cred.uid == ::geteuid()));
  auto body = peer_allowed ? ReadFrame(conn.fd, FrameKind::kRequest, read_deadline)
                           : Result<std::string>(std::string());
  if (!peer_allowed) {
    {
      std::lock_guard lock(mu_);
      ++stats_.rejected_peer;
    }
    reply = ErrorReply(codes::kAgentFailed,
                       "sluice agent: peer uid " +
                           (cred_ok ? std::to_string(cred.uid) : std::string("unknown")) +
                           " may not use the CNI socket");
  } else if (!body) {
    std::lock_guard lock(mu_);
    if (body.error().code == ETIMEDOUT) {
      ++stats_.timeouts;
    } else {
      ++stats_.bad_requests;
    }
    // A peer that broke the framing is told why when it still listens.
    reply = ErrorReply(codes::kAgentProtocol, "sluice agent: " + body.error().message);
  } else if (auto req = ParseRequest(*body); !req) {
    {
      std::lock_guard lock(mu_);
      ++stats_.bad_requests;
    }
    reply = ErrorReply(codes::kDecodeFailure, "sluice agent: " + req.error().message);
  } else {
    {
      std::lock_guard lock(mu_);
      ++stats_.requests;
    }
    reply = Dispatch(*req);
  }
  const Deadline write_deadline = std::chrono::steady_clock::now() + options_.io_timeout;
  [[maybe_unused]] auto w =
      WriteFrame(conn.fd, FrameKind::kReply, SerializeReply(reply), write_deadline);
  {
    std::lock_guard lock(mu_);
    ::close(conn.fd);
    conn.fd = -1;
  }
  conn.done.store(true);
}

CniReply CniServer::Dispatch(const CniRequest& req) {
  const PodInfo pod = ToPodInfo(req);
  std::lock_guard lock(handler_mu_);
  CniReply reply;
  switch (req.op) {
    case Operation::kAdd:
    case Operation::kCheck: {
      auto r = req.op == Operation::kAdd ? handler_.OnAdd(pod) : handler_.OnCheck(pod);
      if (!r)
        return FromHandlerError(r.error());
      reply.enrolled = r->enrolled;
      reply.msg = r->message;
      return reply;
    }
    case Operation::kDel: {
      auto r = handler_.OnDel(pod);
      if (!r)
        return FromHandlerError(r.error());
      return reply;
    }
  }
  return ErrorReply(codes::kAgentProtocol, "sluice agent: unknown operation");
}

}  // namespace sluice::cni
