// TLS under a downstream connection's socket I/O (see tls_transport.h).
#include "tls_transport.h"

#include <cerrno>
#include <cstring>

namespace sluice::proxy::engine {

void TlsTransport::Drain() {
  std::string_view c = conn_.PendingOutput();
  if (c.empty())
    return;
  wire_.Append(c);
  conn_.Consume(c.size());
}

int TlsTransport::Flush(EventLoop& loop, int fd) {
  Drain();
  if (wire_.empty())
    return 0;
  return loop.Send(fd, wire_);
}

bool TlsTransport::Feed(EventLoop& loop, int fd, std::string_view ciphertext) {
  const bool ok = conn_.Feed(ciphertext);
  if (ok)
    conn_.Read(plain_);
  Flush(loop, fd);
  return ok;
}

ssize_t TlsTransport::Recv(EventLoop& loop, int fd, char* p, std::size_t n) {
  if (conn_.failed()) {
    errno = EPROTO;
    return -1;
  }
  bool dry = false;
  while (plain_.size() - plain_pos_ < n && !eof_) {
    char buf[16384];
    const ssize_t r = loop.Recv(fd, buf, sizeof(buf));
    if (r > 0) {
      if (plain_pos_ > 0 && plain_pos_ == plain_.size()) {
        plain_.clear();
        plain_pos_ = 0;
      }
      const bool ok = conn_.Feed({buf, static_cast<std::size_t>(r)});
      if (ok)
        conn_.Read(plain_);
      Flush(loop, fd);  // handshake messages, alerts
      if (!ok) {
        errno = EPROTO;
        return -1;
      }
      if (conn_.peer_closed())
        eof_ = true;
      if (static_cast<std::size_t>(r) < sizeof(buf)) {
        dry = true;
        break;
      }
      continue;
    }
    if (r == 0) {
      eof_ = true;
      break;
    }
    if (errno == EINTR)
      continue;
    if (errno != EAGAIN)
      return -1;
    dry = true;
    break;
  }
  const std::size_t avail = plain_.size() - plain_pos_;
  if (avail > 0) {
    const std::size_t k = std::min(avail, n);
    std::memcpy(p, plain_.data() + plain_pos_, k);
    plain_pos_ += k;
    if (plain_pos_ == plain_.size()) {
      plain_.clear();
      plain_pos_ = 0;
    }
    // Fewer than asked means the socket is dry (or ended): the caller's rule.
    (void)dry;
    return static_cast<ssize_t>(k);
  }
  if (eof_)
    return 0;
  errno = EAGAIN;
  return -1;
}

int TlsTransport::Send(EventLoop& loop, int fd, Buffer& out) {
  if (conn_.failed())
    return EPIPE;
  if (conn_.handshake_done()) {
    while (!out.empty() && wire_.size() < kWireLimit) {
      const std::size_t k = std::min<std::size_t>(out.size(), 16 * 1024);
      if (!conn_.Write(out.Data().substr(0, k)))
        return EPIPE;
      out.Consume(k);
      Drain();
    }
  }
  const int rc = Flush(loop, fd);
  if (rc != 0)
    return rc;
  // The socket took everything: encrypt what is left of `out` now.
  if (!out.empty() && wire_.empty() && conn_.handshake_done())
    return Send(loop, fd, out);
  return 0;
}

void TlsTransport::Shutdown(EventLoop& loop, int fd) {
  if (conn_.failed() || !conn_.handshake_done())
    return;
  conn_.Shutdown();
  Flush(loop, fd);
}

}  // namespace sluice::proxy::engine
