// An HTTP/2 downstream connection (h2c by its preface, or ALPN h2 after TLS): it owns the
// socket (and the TLS transport, when its chain terminates TLS) and an h2::Session in the
// server role. HTTP/1.1 stays the engine's internal form; HTTP/2 is a head conversion at
// this edge. Each stream is served by a Session from the worker's SessionPool with no
// socket of its own (fd -1, a "stream transport"), so routing, faults, retries, mirrors,
// timeouts, RBAC, CORS, the access log and stats keep their HTTP/1.1 semantics:
//   request   OnHead writes "METHOD path HTTP/1.1", host (from :authority) and the
//             regular fields into the stream Session's `in`; the body follows as sent
//             (with a content-length) or chunked (without one; END_STREAM is the last
//             chunk, request trailers are chunked trailers). Body bytes are Consume()d on
//             the h2 session (the client's window opens) once they are in the Session's
//             buffer, which holds whole request bodies under its own limits (413).
//   response  the Session's `out` (TakeOutput, its TryWrite) is parsed as an HTTP/1.1
//             response: the head becomes :status + fields (connection-specific ones
//             dropped by the h2 layer), a content-length or chunked body DATA, chunked
//             trailers HTTP/2 trailers (gRPC's grpc-status); a response without a body
//             ends the stream on its HEADERS. Bytes leave `out` only while the stream's
//             queue in the h2 session is under kStreamWatermark, so a slow client fills
//             `out` and the Session's own backpressure pauses the upstream; window
//             updates resume it.
//   end       a stream Session that closes before its response is complete resets the
//             stream (INTERNAL_ERROR); the client's RST_STREAM aborts its Session (flag
//             DC). Each stream Session serves one request. The connection closes when
//             the h2 session is Done (GOAWAY exchanged, or a protocol error) or the
//             socket ends; its streams are aborted then.
// Drain: GOAWAY (GracefulShutdown) and open streams finish.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "sluice/proxy/buffer.h"
#include "sluice/proxy/config.h"
#include "sluice/proxy/h2_session.h"
#include "sluice/proxy/http_codec.h"
#include "sluice/proxy/lb.h"
#include "snapshot.h"
#include "timer_heap.h"
#include "tls_transport.h"
#include "worker_context.h"

namespace sluice::proxy::engine {

class Session;

class H2Downstream final : public Handler, public TimerOwner, public h2::Handler {
 public:
  WorkerContext* w = nullptr;
  uint64_t gen = 0;
  int fd = -1;
  Timer timer;  // the h2 session's deadlines (CheckDeadlines)

  static constexpr std::size_t kStreamWatermark = 256 * 1024;

  // Takes over `s`'s connection (socket, TLS transport, listener count, addresses,
  // filter-chain facts) and the bytes it read so far; `s` is then released by the caller.
  void Open(Session& s);
  // Then, once `s` is released: the bytes it had read, and what they start.
  void Start();
  // The worker's idle sweep: GOAWAY while draining (closed once its streams are done),
  // and the HCM's idle_timeout for a connection without streams.
  void Sweep(bool draining);
  void OnEvent(uint32_t ev) override;
  void OnTimer(int kind) override;

  // From a stream Session: its TryWrite (takes what it can of its `out`; false: the
  // stream is gone, the Session aborts) and its Close (aborted: its request was still
  // active, so a response not complete is reset).
  bool TakeOutput(Session* s);
  void StreamSessionClosed(Session* s, bool aborted);

  // Shutdown (the worker's CloseAll/Detach): the socket, without events.
  void CloseSocket(EventLoop* loop);

  // The connection's facts the stream Sessions copy (filled by Open).
  std::shared_ptr<const Snapshot> snap;
  const ListenerConfig* lc = nullptr;
  const FilterChain* chain = nullptr;
  char peer[64] = "-", peer_ip[48] = "-", local[64] = "-";
  LbHash source_hash;
  sockaddr_storage orig_dst{}, local_ss{}, peer_ss{};
  bool has_orig_dst = false;
  std::string sni;
  filterchain::Connection facts;
  int64_t conn_start_ms = 0;

 private:
  // h2::Handler (during Receive: they only record; Pump does the work after it).
  void OnHead(int32_t stream, const h2::Head& head, bool end_stream) override;
  void OnData(int32_t stream, std::string_view data, bool end_stream) override;
  void OnTrailers(int32_t stream, const h2::Head& trailers) override;
  void OnStreamClose(int32_t stream, uint32_t error_code) override;

  struct Stream {
    Session* s = nullptr;
    uint64_t sgen = 0;
    bool head_request = false;
    bool req_chunked = false;
    bool req_ended = false;
    bool h2_closed = false;  // nghttp2 closed the stream
    uint32_t h2_error = 0;   // ... with this code
    bool queued = false;     // in touched_
    // The response, parsed from the Session's `out`.
    enum class R { kHead, kLength, kEof, kChunkSize, kChunkData, kChunkCrlf, kTrailers, kDone };
    R r = R::kHead;
    uint64_t remaining = 0;
  };

  void Receive(std::string_view bytes);
  // After Receive: starts the new streams' Sessions, runs those that got bytes, aborts
  // the reset ones, lets blocked responses go on; then writes and closes when done.
  void Pump();
  void Flush();
  // Outside Pump (a stream's response from its upstream): Flush at the end of the
  // worker's batch of events (a zero-delay timer, then Pump), so the responses of one
  // batch are framed and sent together.
  void FlushSoon();
  void Close();
  void ArmDeadlines();
  void Account();
  // Parses and submits what it can of the response in `out`; returns bytes used.
  std::size_t Convert(int32_t id, Stream& st, std::string_view out, bool* failed);

  h2::Options Options() const;

  std::unique_ptr<h2::Session> h2_;
  std::unique_ptr<TlsTransport> tls_;
  std::shared_ptr<ListenerCount> lcount_;
  std::unordered_map<int32_t, Stream> streams_;
  std::vector<int32_t> touched_;                        // streams with news from this Receive
  std::vector<int32_t> pump_ids_;                       // Pump's list being served (reused)
  std::vector<std::pair<Session*, uint64_t>> blocked_;  // Pump's (reused)
  Buffer wbuf_;                                         // bytes for the socket
  Buffer pending_in_;  // bytes read before the h2 session took them (Open)
  uint32_t events_ = 0;
  bool closing_ = false, goaway_sent_ = false, in_pump_ = false, flush_due_ = false;
  std::size_t accounted_ = 0;
  int64_t last_active_ms_ = 0;
  http::ResponseHead resp_;  // the response head being converted (large: not on the stack)
  h2::Head resp_h2_;         // ... and as submitted
  friend class SessionPool;
};

}  // namespace sluice::proxy::engine
