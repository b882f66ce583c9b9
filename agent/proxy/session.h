// A downstream connection and the requests on it: the session. One object follows the
// connection from accept to close through its phases (sniffing a TLS ClientHello, reading
// a request head and body, waiting on a fault delay, a pooled connection or a retry
// backoff, relaying the response, tunnelling) and owns at most one upstream connection
// at a time. Its methods are spread by role:
//   session.cc           its life: open, read, parse, finish a request, timers, close
//   router.cc            the request path: route, faults, cluster and endpoint, forward
//   retry.cc             the retry decision and backoff
//   session_response.cc  the response path, and local replies
//   tcp_tunnel.cc        TCP proxying and upgraded (101) connections
//   session_rbac.cc      RBAC filters on the connection and on each request
//   access_log.cc        its access log line
// Sessions come from and return to the worker's SessionPool, so steady-state traffic
// does not allocate; `gen` changes on every release so a stale event or timer is
// recognised.
#pragma once

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "access_log.h"
#include "h2_downstream.h"
#include "memory_budget.h"
#include "sluice/proxy/buffer.h"
#include "sluice/proxy/config.h"
#include "sluice/proxy/grpc.h"
#include "sluice/proxy/http_codec.h"
#include "sluice/proxy/lb.h"
#include "snapshot.h"
#include "timer_heap.h"
#include "tls_transport.h"
#include "upstream_conn.h"
#include "worker_context.h"

namespace sluice::proxy::engine {

class Session final : public Handler, public UpstreamOwner, public TimerOwner {
 public:
  enum class Phase {
    kSniff,
    kHead,
    kBody,
    kDelay,
    kPending,
    kUpstream,
    kBackoff,
    kResponse,
    kTunnel,
    kClosing,
    kClosed
  };
  enum TimerKind { kRouteTimer, kTryTimer, kWaitTimer, kStreamTimer };

  WorkerContext* w = nullptr;
  uint64_t gen = 0;
  int fd = -1;
  std::shared_ptr<const Snapshot> snap;
  const ListenerConfig* lc = nullptr;
  const FilterChain* chain = nullptr;
  Phase phase = Phase::kClosed;
  uint32_t events = 0;
  Buffer in, out;
  char peer[64] = "-", peer_ip[48] = "-", local[64] = "-";
  LbHash source_hash;  // the peer's address as a source-IP hash key
  sockaddr_storage orig_dst{};
  bool has_orig_dst = false;
  // The connection's local address (its original destination once restored) and its
  // peer (the pod's address for an in-pod client), as RBAC reads them.
  sockaddr_storage local_ss{}, peer_ss{};
  // A denial's response code details or termination details (points into it).
  std::string rbac_details;
  std::string sni;
  // What is known of the connection for the filter-chain match: addresses at accept,
  // transport protocol, SNI and ALPN once the listener filters have read them (unknown
  // while they may still; see ChooseChain).
  filterchain::Connection facts;
  // The connection's end (NR, a chain that fails closed) as CONNECTION_TERMINATION_DETAILS.
  const char* termination = "-";
  int64_t conn_start_ms = 0;
  int64_t last_active_ms = 0;  // for the idle timeout

  // request state
  http::RequestHead req;
  std::size_t body_scanned = 0;
  bool sent_continue = false;
  http::ChunkedDecoder chunk;
  const VirtualHost* vh = nullptr;
  const Route* route = nullptr;
  const Cluster* cluster = nullptr;
  const WeightedCluster* wc = nullptr;
  UpstreamConn* up = nullptr;
  Endpoint* up_ep = nullptr;
  char up_host[64] = "-", up_local[64] = "-";
  uint32_t attempt = 0, retries_done = 0;
  uint32_t flags = 0;
  int status = 0;
  const char* details = "-";
  uint64_t bytes_rx = 0, bytes_tx = 0;
  int64_t start_ms = 0, service_time_ms = -1;
  bool response_started = false, close_after = false, counted_request = false, in_process = false,
       request_active = false, retry_counted = false;
  bool down_eof = false, up_eof = false;
  bool tcp_session = false;  // a TCP tunnel that is logged when it closes
  // The request came on an HTTP/2 stream (the downstream's protocol, for the access log
  // and for clusters that use the downstream protocol upstream).
  bool downstream_h2 = false;
  // A stream transport: the request is HTTP/2 stream h2_stream of h2conn, which writes
  // it into `in` as HTTP/1.1 and takes the response from `out` (TryWrite); fd is -1.
  H2Downstream* h2conn = nullptr;
  int32_t h2_stream = 0;
  // The chain terminates TLS: the socket's bytes go through it (tls_transport.h).
  std::unique_ptr<TlsTransport> tls;
  // HTTP/1.1 or HTTP/2 is decided (DecideProtocol).
  bool proto_decided = false;
  // The socket is edge-triggered: set when an edge was taken without reading the
  // socket dry (a request was in flight, or a buffer limit stopped the read).
  bool read_ready = false;
  // The client's FIN was reported (edge-triggered: it comes once, maybe with data): reads
  // go on to the end of stream instead of stopping at a short read.
  bool peer_hup = false;
  bool in_tunnel_read = false;
  char request_id[40] = {0};
  bool generated_id = false;
  // The request's own deadlines (the HCM's request_headers_timeout, request_timeout and
  // stream_idle_timeout) share one timer; see StreamDeadline.
  int64_t head_start_ms = -1;     // the request's first byte; -1 before it
  int64_t last_io_ms = 0;         // the request's last byte received or response byte sent on
  bool request_complete = false;  // its head and body are in
  // A gRPC request is routed on its head and its body streamed upstream as it comes
  // (a bidirectional call waits for replies before it half-closes): its body stays
  // whole in `in` (a retry sends it again), body_sent of it went to the current attempt,
  // and its mirrors go when it is complete (StreamBody).
  bool body_streaming = false;
  bool mirrors_deferred = false;
  std::size_t body_sent = 0;
  // Response bytes went to the client: an upstream protocol error can no longer become
  // a 502 (the head written so far, from resp_head_at in `out`, is still unsent).
  bool response_sent = false;
  std::size_t resp_head_at = 0;
  // The CORS filter took the request and its origin is allowed: its responses carry
  // access-control-allow-origin (the origin) and the policy's other headers. Set in
  // Dispatch, read only while `route` is set.
  const CorsPolicy* cors = nullptr;
  std::string_view cors_origin;
  // gRPC (grpc.h): the request has a gRPC content-type (Dispatch); its timeouts from the
  // route (ContinueAfterFault); when it was complete, for the grpc-timeout of a retry; and
  // the grpc-status its response head carried (a trailers-only response, or a local
  // reply's), "" with has_grpc_head_status false when none. The trailers' status is read
  // from the upstream's chunked decoder when the response ends (grpc_trailer_status).
  bool grpc = false;
  grpc::RequestTimeouts timeouts;
  int64_t complete_ms = 0;
  bool has_grpc_head_status = false, has_grpc_trailer_status = false;
  char grpc_head_status[12] = {0}, grpc_trailer_status[12] = {0};
  bool strip_h2c = false;       // an h2c upgrade request, served as plain HTTP/1.1 (as Envoy)
  bool waiting_memory = false;  // not read until its body's reservation is granted
  std::size_t accounted = 0;    // in + out, as last charged to the worker's budget
  std::size_t reserved = 0;     // the worker's budget held for this request's body
  std::shared_ptr<ListenerCount> lcount;
  Timer route_timer, try_timer, wait_timer, stream_timer;

  // `listen_fd`: the listening socket that accepted it (a steered connection's local
  // address is not that socket's own).
  void Open(int cfd, int listen_fd, const sockaddr_storage& peer_addr,
            std::shared_ptr<const Snapshot> s, const ListenerConfig* l,
            std::shared_ptr<ListenerCount> count);
  // A Session serving one HTTP/2 stream of h (no socket of its own): the connection's
  // listener, chain, snapshot, addresses and facts; one request, then it closes.
  void OpenStream(H2Downstream& h, int32_t stream);
  void OnEvent(uint32_t ev) override;
  void OnTimer(int kind) override;
  void OnUpConnected(UpstreamConn* u) override;
  void OnUpHeaders(UpstreamConn* u) override;
  void OnUpData(UpstreamConn* u, std::string_view data) override;
  void OnUpDone(UpstreamConn* u) override;
  void OnUpFailure(UpstreamConn* u, UpFailure f) override;
  void OnUpDrained(UpstreamConn* u) override;
  void OnUpReadDone(UpstreamConn* u) override;
  void StartAttempt();
  // The response's grpc-status for the access log and Istio's metrics (grpc.h's
  // GrpcStatusForLog): "" for a request that is not gRPC.
  std::string GrpcStatus() const;
  // `in` moved from `before` (it grew): the views into it (the parsed head's, the CORS
  // origin's) follow it.
  void InMoved(std::string_view before);

 private:
  bool ReadInto(Buffer& b);
  // The state a connection starts with (Open, OpenStream).
  void ResetConnectionState();
  // HTTP/1.1 here, or HTTP/2 on an H2Downstream that takes the connection over (codec
  // type, ALPN after TLS, the preface): true to go on as HTTP/1.1; false while waiting
  // for the TLS handshake or the preface's bytes, or when handed over (gen changed).
  bool DecideProtocol();
  // A TLS chain's handshake failed or its connection broke: counted, closed.
  void TlsFailed();
  // Reads (first, when read_first) and handles requests for as long as the connection
  // has more of them.
  void ServeRequests(bool read_first);
  void Process();
  // The body's bytes in `in` so far, scanned (chunked framing, content-length and the
  // request body limit): 1 when it is complete, 0 while not, -1 when it was refused (400
  // or 413 answered, or the stream reset once its response began).
  int ScanBody();
  // A streamed request's body gained bytes: on to the upstream attempt, and what
  // completes the request then (its route and per-try timers, its mirrors).
  void StreamBody();
  bool Streaming() const { return body_streaming && !request_complete; }
  void OnHead();
  void Dispatch();
  void ContinueAfterFault();
  // The route's mirrors, each as its fraction rolls (a copy of the whole request).
  void SendMirrors();
  // The CORS filter's request step (router.cc): true when it answered a preflight itself.
  bool CorsRequest();
  // The CORS headers of a response to a request CorsRequest latched (session_response.cc:
  // WriteResponseHead, Local), and whether they replace an upstream header of this name.
  void AppendCorsHeaders(Buffer& dst) const;
  bool CorsReplaces(std::string_view name) const;
  // A local reply. route_headers: the route's response header mutations apply (not to
  // the CORS filter's preflight answer, which Envoy sends before the router runs).
  void Local(int code, std::string_view body, uint32_t flag, const char* why,
             std::string_view extra_header = {}, bool route_headers = true);
  // Local's reply to a gRPC request: trailers-only, the status in its head.
  void LocalGrpc(int code, std::string_view body, std::string_view extra_header);
  void Finish();
  // Gives back the request's circuit-breaker counts (requests, retries) it still holds.
  void Uncount();
  void Abort(uint32_t flag);
  void Close();
  void TryWrite();
  bool ScheduleRetry();
  void DropUpstream(bool reuse);
  void SerializeRequest(Buffer& dst, bool shadow);
  void WriteResponseHead(const http::ResponseHead& r);
  // `connection: close`, or for an HTTP/1.0 client kept alive `connection: keep-alive`.
  void AppendConnection();
  void LogRequest();
  void StartTcp();
  // The listener filters (tls_inspector, http_inspector) over what has been read, then
  // the filter-chain match; `timed_out`: listener_filters_timeout passed. Either starts
  // the chosen chain, waits for more bytes (phase kSniff), or closes.
  void ChooseChain(bool open, bool timed_out);
  // RBAC (session_rbac.cc): the chain's network filters once it is chosen (true: denied,
  // the connection is to be closed) and the connection manager's HTTP filters on a
  // request (true: denied, answered 403).
  bool NetworkRbacDenied();
  bool HttpRbacDenied();
  void CountRbac(const RbacFilterResult& r);
  void RefreshConfig();
  void TunnelRead();
  void MaybeCloseTunnel();
  // Charges the worker for what this session holds now.
  void Account() {
    const std::size_t now = in.size() + out.size();
    if (now != accounted) {
      w->budget().Charge(now, accounted);
      accounted = now;
    }
  }
  // Leaves the cluster's queue of requests waiting for a connection, if in it.
  void StopWaiting();
  // The body this request may still need to buffer (see MemoryBudget::Reserve).
  std::size_t BodyReservation() const {
    return req.chunked ? chain->http.max_request_body
                       : static_cast<std::size_t>(std::max<int64_t>(0, req.content_length));
  }
  // Forgets a head that was never parsed (a protocol error, a timeout before it was
  // complete): the whole buffer is the request, and it is logged without a method.
  void ForgetHead();
  // The request's nearest deadline (kNoDeadline when none applies); *which says whose.
  enum class Deadline { kNone, kHead, kRequest, kIdle, kDuration };
  int64_t StreamDeadline(Deadline* which) const;
  void ArmStreamTimer();
  void OnStreamTimer();
  friend class Worker;
  friend class H2Downstream;
  friend class MemoryBudget;
  friend class ShadowWriter;
};

// The worker's sessions: every Session ever made, and the free list they are taken from.
class SessionPool {
 public:
  explicit SessionPool(WorkerContext& ctx) : ctx_(ctx) { deferred_.reserve(256); }
  SessionPool(const SessionPool&) = delete;
  SessionPool& operator=(const SessionPool&) = delete;

  Session* NewSession();
  // A released session may still have events in the current batch: it is reused only
  // after the batch (EndBatch).
  void ReleaseSession(Session* s);
  bool has_deferred() const { return !deferred_.empty() || !deferred_h2_.empty(); }
  void EndBatch() {
    free_sessions_.insert(free_sessions_.end(), deferred_.begin(), deferred_.end());
    deferred_.clear();
    free_h2_.insert(free_h2_.end(), deferred_h2_.begin(), deferred_h2_.end());
    deferred_h2_.clear();
  }
  // HTTP/2 downstream connections, pooled the same way.
  H2Downstream* NewH2();
  void ReleaseH2(H2Downstream* h) {
    ++h->gen;
    deferred_h2_.push_back(h);
  }
  const std::vector<std::unique_ptr<H2Downstream>>& all_h2() const { return all_h2_; }
  const std::vector<std::unique_ptr<Session>>& all() const { return all_sessions_; }
  // Shutdown: closes every socket (after the event loop is gone).
  void CloseAll() {
    for (auto& s : all_sessions_) {
      if (s->fd >= 0) {
        close(s->fd);
        s->fd = -1;
      }
    }
    for (auto& h : all_h2_)
      h->CloseSocket(nullptr);
  }

 private:
  WorkerContext& ctx_;
  std::vector<std::unique_ptr<Session>> all_sessions_;
  std::vector<Session*> free_sessions_;
  std::vector<Session*> deferred_;
  std::vector<std::unique_ptr<H2Downstream>> all_h2_;
  std::vector<H2Downstream*> free_h2_, deferred_h2_;
};

// Copies a NUL-terminated string into a fixed array, truncating.
template <std::size_t N>
inline void CopyStr(char (&dst)[N], std::string_view src) {
  std::size_t n = std::min(src.size(), N - 1);
  std::memcpy(dst, src.data(), n);
  dst[n] = '\0';
}

}  // namespace sluice::proxy::engine
