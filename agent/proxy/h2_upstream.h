// One HTTP/2 connection to an upstream endpoint, shared by the requests of a worker
// (Envoy's HTTP/2 connection pool, one connection of it). HTTP/1.1 stays the engine's
// internal form: each request is a *stream* UpstreamConn (upstream_conn.h) whose owner
// writes an HTTP/1.1 request into its `out` as for any upstream; Submit() parses it with
// the project's codec and opens a stream (`:method`, `:scheme` http, `:authority` from
// Host, `:path`, the headers minus the connection-specific ones, then DATA), and the
// response is written back into the stream's `in` as HTTP/1.1 (a status line, the
// headers, `transfer-encoding: chunked` when a body comes without content-length, DATA
// as chunks, trailers as chunked trailers; a head that ends the stream gets
// `content-length: 0`), which the stream's ProcessResponse frames and hands to its owner
// as from an HTTP/1.1 server.
//
// The connection is plaintext h2c with prior knowledge (Sluice originates no TLS, so
// there is no ALPN). Flow control follows the owner: a stream's DATA opens the server's
// windows only once handed over while the owner is not paused, so a slow client holds
// back its own stream, not the connection. Failures: a stream reset by the server, or
// closed by its GOAWAY (above last-stream-id), fails as a reset (retriable); a
// connection that fails to connect, breaks the protocol or closes fails every stream
// on it. The pool (upstream_pool.h) opens, shares, idles and closes these.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "sluice/proxy/buffer.h"
#include "sluice/proxy/config.h"
#include "sluice/proxy/h2_session.h"
#include "sluice/proxy/http_codec.h"
#include "snapshot.h"
#include "timer_heap.h"
#include "upstream_conn.h"
#include "worker_context.h"

namespace sluice::proxy::engine {

class H2Upstream final : public Handler, public TimerOwner, public h2::Handler {
 public:
  enum TimerKind { kConnectTimer, kIdleTimer, kDeadlineTimer };

  WorkerContext* w = nullptr;
  int fd = -1;
  uint64_t gen = 0;
  std::shared_ptr<const Snapshot> snap;
  const Cluster* cluster = nullptr;
  Endpoint* ep = nullptr;
  bool connecting = false;
  // Takes no new stream: a GOAWAY came, it failed, or it carried
  // max_requests_per_connection streams.
  bool closing = false;
  bool failed = false;
  bool mirror_conn = false;
  bool counted = false;
  uint32_t events = 0;
  uint32_t streams_started = 0;
  char local_addr[64] = "-";
  Timer connect_timer{this, kConnectTimer}, idle_timer{this, kIdleTimer},
      deadline_timer{this, kDeadlineTimer};

  // A new connection on a connecting socket (the pool made it).
  void Open(int sock, const std::shared_ptr<const Snapshot>& s, const Cluster* c, Endpoint* e);
  // May one more stream be bound to it now: not closing, under the cluster's
  // max_concurrent_streams and the server's SETTINGS_MAX_CONCURRENT_STREAMS.
  bool CanTake() const;
  std::size_t streams() const { return attached_.size(); }
  // A stream conn is bound to it; its request follows in its `out` (Submit).
  void Attach(UpstreamConn* u);
  // The request in u->out becomes u's stream (head, then the body so far). Waits for a
  // stream slot if the server allows none now.
  void Submit(UpstreamConn* u);
  // The owner took what it was given and is not paused: the server may send more.
  void Resume(UpstreamConn* u);
  // u is released: an unfinished stream is reset (CANCEL); u is unbound.
  void Detach(UpstreamConn* u);
  // The streams bound to it (for failing them all).
  const std::vector<UpstreamConn*>& attached() const { return attached_; }
  // GOAWAY (no error) before the pool closes an idle connection.
  void Shutdown();
  // Forgets the session (the pool closed the socket).
  void Reset();

  void OnEvent(uint32_t ev) override;
  void OnTimer(int kind) override;

  // h2::Handler: the server's frames, per stream.
  void OnHead(int32_t stream, const h2::Head& head, bool end_stream) override;
  void OnData(int32_t stream, std::string_view data, bool end_stream) override;
  void OnTrailers(int32_t stream, const h2::Head& trailers) override;
  void OnStreamClose(int32_t stream, uint32_t error_code) override;
  void OnGoaway(uint32_t error_code, int32_t last_stream) override;

 private:
  UpstreamConn* Find(int32_t id) const;
  void MarkDirty(UpstreamConn* u);
  // Hands what the streams received to their owners; fails streams that closed early.
  void ProcessDirty();
  // Writes what the session has to send; arms its deadline timer.
  void WriteOut();
  void SetEvents(uint32_t ev);
  void OnReadable();
  void SubmitWaiting();
  void ArmDeadline();

  bool send_error_ = false;  // a write failed: failed from the next event
  bool processing_ = false;  // inside ProcessDirty
  uint32_t attached_ever_ = 0;
  std::unique_ptr<h2::Session> session_;
  Buffer out_;
  std::vector<UpstreamConn*> attached_;
  std::vector<UpstreamConn*> waiting_;  // requests parsed, waiting for a stream slot
  std::unordered_map<int32_t, UpstreamConn*> by_id_;
  std::vector<std::pair<UpstreamConn*, uint64_t>> dirty_, dirty_scratch_;
  http::RequestHead req_;  // the request being translated (Submit)
  std::string payload_;    // a chunked request body, decoded
  std::vector<h2::Field> fields_;
};

}  // namespace sluice::proxy::engine
