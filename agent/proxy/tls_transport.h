// TLS under a downstream connection's socket I/O: the engine's Session (HTTP/1.1) and
// H2Downstream (HTTP/2) call Recv and Send here instead of the event loop's when their
// filter chain terminates TLS (FilterChain::tls). Recv reads ciphertext from the socket,
// feeds it to the tls::Connection (handshake first; its messages are written at once) and
// hands back plaintext with recv(2)'s contract; Send encrypts plaintext from the caller's
// buffer while the ciphertext not yet taken by the socket stays under a bound, so the
// caller's buffer keeps its backpressure.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <string_view>

#include "sluice/proxy/buffer.h"
#include "sluice/proxy/event_loop.h"
#include "sluice/proxy/tls_server.h"

namespace sluice::proxy::engine {

class TlsTransport {
 public:
  explicit TlsTransport(std::shared_ptr<const tls::ServerContext> ctx) : conn_(std::move(ctx)) {}

  // Ciphertext read before the transport existed (the ClientHello the listener filters
  // inspected). False: the handshake failed (an alert may be queued; Flush it).
  bool Feed(EventLoop& loop, int fd, std::string_view ciphertext);
  // recv(2)'s contract, for plaintext: bytes, 0 at the end of the stream (or a
  // close_notify), -1 with errno (EAGAIN: nothing now; EPROTO: the TLS connection failed).
  // Returns fewer than n only when the socket had no more to read.
  ssize_t Recv(EventLoop& loop, int fd, char* p, std::size_t n);
  // EventLoop::Send's contract: takes plaintext from `out` (encrypted) while the
  // ciphertext the socket has not taken is under kWireLimit; 0, or an errno.
  int Send(EventLoop& loop, int fd, Buffer& out);
  // Writes the pending ciphertext (handshake messages, alerts, records); 0 or an errno.
  int Flush(EventLoop& loop, int fd);
  // Queues a close_notify and writes it.
  void Shutdown(EventLoop& loop, int fd);

  bool handshake_done() const { return conn_.handshake_done(); }
  bool failed() const { return conn_.failed(); }
  bool wire_pending() const { return !wire_.empty(); }
  // Bytes held here (for the worker's memory budget).
  std::size_t buffered() const { return wire_.size() + plain_.size() - plain_pos_; }
  const tls::Connection& conn() const { return conn_; }

  static constexpr std::size_t kWireLimit = 256 * 1024;

 private:
  void Drain();  // the connection's ciphertext into wire_

  tls::Connection conn_;
  std::string plain_;
  std::size_t plain_pos_ = 0;
  Buffer wire_;
  bool eof_ = false;
};

}  // namespace sluice::proxy::engine
