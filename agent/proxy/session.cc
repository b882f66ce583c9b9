// A session's life: accepting it (and the listener hand-over of a redirected
// connection), reading and parsing requests, finishing each one, its deadlines and
// timers, and closing it (see session.h for where the rest of its methods are).
#include "session.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <cassert>
#include <cerrno>
#include <climits>

#include "sluice/proxy/listener_filters.h"
#include "sluice/proxy/retry.h"
#include "upstream_pool.h"

namespace sluice::proxy::engine {
namespace {

bool IsLoopback(const sockaddr_storage& a) {
  if (a.ss_family == AF_INET)
    return (ntohl(reinterpret_cast<const sockaddr_in&>(a).sin_addr.s_addr) >> 24) == 127;
  if (a.ss_family == AF_INET6) {
    const auto& v6 = reinterpret_cast<const sockaddr_in6&>(a).sin6_addr;
    return IN6_IS_ADDR_LOOPBACK(&v6) || (IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127);
  }
  return false;
}

// A connection whose local address is not its listening socket's own (another port, or
// another address than a specifically bound one) was steered to that socket.
bool Steered(const sockaddr_storage& local, int listen_fd) {
  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  if (getsockname(listen_fd, reinterpret_cast<sockaddr*>(&bound), &len) != 0 ||
      bound.ss_family != local.ss_family)
    return false;
  if (local.ss_family == AF_INET) {
    const auto& a = reinterpret_cast<const sockaddr_in&>(local);
    const auto& b = reinterpret_cast<const sockaddr_in&>(bound);
    return a.sin_port != b.sin_port ||
           (b.sin_addr.s_addr != htonl(INADDR_ANY) && a.sin_addr.s_addr != b.sin_addr.s_addr);
  }
  if (local.ss_family == AF_INET6) {
    const auto& a = reinterpret_cast<const sockaddr_in6&>(local);
    const auto& b = reinterpret_cast<const sockaddr_in6&>(bound);
    return a.sin6_port != b.sin6_port || (!IN6_IS_ADDR_UNSPECIFIED(&b.sin6_addr) &&
                                          !IN6_ARE_ADDR_EQUAL(&a.sin6_addr, &b.sin6_addr));
  }
  return false;
}

// A redirected connection from the pod's loopback is from the pod's application: its
// client address becomes the pod's of the same family (the port stays).
void PodClient(const std::vector<sockaddr_storage>& pod, sockaddr_storage* peer) {
  if (pod.empty() || !IsLoopback(*peer))
    return;
  for (const sockaddr_storage& a : pod) {
    if (a.ss_family != peer->ss_family)
      continue;
    if (a.ss_family == AF_INET)
      reinterpret_cast<sockaddr_in&>(*peer).sin_addr =
          reinterpret_cast<const sockaddr_in&>(a).sin_addr;
    else
      reinterpret_cast<sockaddr_in6&>(*peer).sin6_addr =
          reinterpret_cast<const sockaddr_in6&>(a).sin6_addr;
    return;
  }
}

// An address as the filter-chain match reads it (an IPv4-mapped IPv6 address as IPv4);
// *port is its port.
std::optional<IpAddress> ToIp(const sockaddr_storage& a, uint16_t* port) {
  IpAddress ip;
  if (a.ss_family == AF_INET) {
    const auto& v4 = reinterpret_cast<const sockaddr_in&>(a);
    std::memcpy(ip.bytes.data(), &v4.sin_addr, 4);
    *port = ntohs(v4.sin_port);
    return ip;
  }
  if (a.ss_family == AF_INET6) {
    const auto& v6 = reinterpret_cast<const sockaddr_in6&>(a);
    *port = ntohs(v6.sin6_port);
    if (IN6_IS_ADDR_V4MAPPED(&v6.sin6_addr)) {
      std::memcpy(ip.bytes.data(), v6.sin6_addr.s6_addr + 12, 4);
      return ip;
    }
    ip.family = 6;
    std::memcpy(ip.bytes.data(), v6.sin6_addr.s6_addr, 16);
    return ip;
  }
  *port = 0;
  return std::nullopt;
}

// Envoy's use_original_dst: the connection belongs to the listener whose address is the
// original destination (exact address first, then the wildcard of its family, same
// port); with none, the receiving listener keeps it.
const ListenerConfig* HandOver(const Snapshot& snap, const ListenerConfig* from,
                               const sockaddr_storage& dst) {
  uint16_t port;
  const char* wildcard;
  if (dst.ss_family == AF_INET) {
    port = ntohs(reinterpret_cast<const sockaddr_in&>(dst).sin_port);
    wildcard = "0.0.0.0";
  } else if (dst.ss_family == AF_INET6) {
    port = ntohs(reinterpret_cast<const sockaddr_in6&>(dst).sin6_port);
    wildcard = "::";
  } else {
    return nullptr;
  }
  char ip[INET6_ADDRSTRLEN];
  FormatAddr(dst, ip, sizeof(ip), /*with_port=*/false);
  const ListenerConfig* wild = nullptr;
  for (const auto& l : snap.listeners) {
    if (l.cfg == from || l.cfg->port != port)
      continue;
    if (l.cfg->address == ip)
      return l.cfg;
    if (!wild && l.cfg->address == wildcard)
      wild = l.cfg;
  }
  return wild;
}

}  // namespace

Session* SessionPool::NewSession() {
  if (free_sessions_.empty()) {
    all_sessions_.push_back(std::make_unique<Session>());
    Session* s = all_sessions_.back().get();
    s->w = &ctx_;
    s->io_owner = ctx_.io_owner();
    s->route_timer = Timer{s, Session::kRouteTimer};
    s->try_timer = Timer{s, Session::kTryTimer};
    s->wait_timer = Timer{s, Session::kWaitTimer};
    s->stream_timer = Timer{s, Session::kStreamTimer};
    free_sessions_.push_back(s);
  }
  Session* s = free_sessions_.back();
  free_sessions_.pop_back();
  ++s->gen;
  return s;
}

H2Downstream* SessionPool::NewH2() {
  if (free_h2_.empty()) {
    all_h2_.push_back(std::make_unique<H2Downstream>());
    H2Downstream* h = all_h2_.back().get();
    h->w = &ctx_;
    h->io_owner = ctx_.io_owner();
    h->timer = Timer{h, 0};
    free_h2_.push_back(h);
  }
  H2Downstream* h = free_h2_.back();
  free_h2_.pop_back();
  ++h->gen;
  return h;
}

void SessionPool::ReleaseSession(Session* s) {
  assert(!s->counted_request && !s->retry_counted && !s->up);
  ++s->gen;
  s->snap.reset();
  s->in.Clear();
  s->out.Clear();
  s->in.Shrink(0);
  s->out.Shrink(0);
  deferred_.push_back(s);
}

void Session::Open(int cfd, int listen_fd, const sockaddr_storage& accepted_peer,
                   std::shared_ptr<const Snapshot> s, const ListenerConfig* l,
                   std::shared_ptr<ListenerCount> count) {
  fd = cfd;
  snap = std::move(s);
  lc = l;
  lcount = std::move(count);
  chain = nullptr;
  sni.clear();
  in.Clear();
  out.Clear();
  sockaddr_storage la{};
  socklen_t ll = sizeof(la);
  getsockname(fd, reinterpret_cast<sockaddr*>(&la), &ll);
  has_orig_dst = false;
  // The original_dst listener filter (implied by use_original_dst): the local address,
  // for matching and logging, becomes the original destination.
  if (lc->restore_original_dst && w->opts().original_dst) {
    if (auto od = w->opts().original_dst(fd, accepted_peer.ss_family)) {
      la = *od;
      orig_dst = *od;
      has_orig_dst = true;
    } else if (Steered(la, listen_fd)) {
      // Delivered to this socket without a rewrite (the inbound side's sk_lookup, or
      // TPROXY): the local address is the destination the client dialled, as Envoy's
      // ORIGINAL_DST cluster reads it.
      orig_dst = la;
      has_orig_dst = true;
    }
  }
  sockaddr_storage peer_addr = accepted_peer;
  if (has_orig_dst)
    PodClient(w->opts().pod_addresses, &peer_addr);
  local_ss = la;
  peer_ss = peer_addr;
  FormatAddr(peer_addr, peer, sizeof(peer));
  FormatAddr(peer_addr, peer_ip, sizeof(peer_ip), false);
  source_hash = SourceIpHash(peer_addr);
  // use_original_dst alone hands the connection over (Envoy: only a restored address).
  if (has_orig_dst && lc->use_original_dst) {
    if (const ListenerConfig* target = HandOver(*snap, lc, orig_dst))
      lc = target;
  }
  facts = {};
  uint16_t port = 0;
  if (auto ip = ToIp(la, &port))
    facts.destination = *ip;
  facts.destination_port = port;
  facts.direct_source = ToIp(accepted_peer, &port);
  facts.source = ToIp(peer_addr, &port);
  facts.source_port = port;
  termination = "-";
  FormatAddr(la, local, sizeof(local));
  // The clock now, not the batch's: a connection accepted late in a long batch must not
  // look idle since before it came (the idle sweep would close it unread).
  conn_start_ms = NowMs();
  last_active_ms = conn_start_ms;
  ResetConnectionState();
  // Edge-triggered with every event registered once: no epoll_ctl per request.
  events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
  w->loop().Add(fd, events, this, EventLoop::Kind::kStream);
  phase = Phase::kSniff;
  ChooseChain(/*open=*/true, /*timed_out=*/false);
}

void Session::OpenStream(H2Downstream& h, int32_t stream) {
  fd = -1;
  snap = h.snap;
  lc = h.lc;
  chain = h.chain;
  lcount.reset();
  sni = h.sni;
  in.Clear();
  out.Clear();
  std::memcpy(peer, h.peer, sizeof(peer));
  std::memcpy(peer_ip, h.peer_ip, sizeof(peer_ip));
  std::memcpy(local, h.local, sizeof(local));
  source_hash = h.source_hash;
  orig_dst = h.orig_dst;
  has_orig_dst = h.has_orig_dst;
  local_ss = h.local_ss;
  peer_ss = h.peer_ss;
  facts = h.facts;
  termination = "-";
  conn_start_ms = h.conn_start_ms;
  last_active_ms = w->now();
  ResetConnectionState();
  h2conn = &h;
  h2_stream = stream;
  downstream_h2 = true;
  proto_decided = true;
  close_after = true;  // one request per stream
  events = 0;
  phase = Phase::kHead;
}

void Session::ResetConnectionState() {
  bytes_rx = bytes_tx = 0;
  flags = 0;
  status = 0;
  up = nullptr;
  up_ep = nullptr;  // a pooled session's last endpoint may be gone with its config
  down_eof = up_eof = false;
  tcp_session = false;
  cluster = nullptr;
  route = nullptr;
  std::strcpy(up_host, "-");
  std::strcpy(up_local, "-");
  request_active = false;
  close_after = false;
  in_process = false;
  read_ready = false;
  peer_hup = false;
  in_tunnel_read = false;
  generated_id = false;
  head_start_ms = -1;
  request_complete = false;
  response_sent = false;
  strip_h2c = false;
  waiting_memory = false;
  body_streaming = mirrors_deferred = false;
  downstream_h2 = false;
  h2conn = nullptr;
  h2_stream = 0;
  tls.reset();
  proto_decided = false;
}

void Session::ChooseChain(bool open, bool timed_out) {
  const uint64_t g = gen;
  const bool tls_on = lc->tls_inspector.On(facts.destination_port);
  const bool http_on = lc->http_inspector.On(facts.destination_port);
  bool need_more = false;
  // tls_inspector: transport protocol, SNI and ALPN from a ClientHello. Without it the
  // transport protocol is Envoy's default "raw_buffer" and there is no SNI.
  if (!facts.transport_protocol) {
    TlsHello hello;
    if (!tls_on) {
      facts.transport_protocol = "raw_buffer";
      facts.server_name = "";
    } else if (!in.empty() && InspectTls(in.Data(), &hello) == Inspect::kDone) {
      facts.transport_protocol = hello.tls ? "tls" : "raw_buffer";
      facts.server_name = hello.server_name;
      if (hello.tls)
        facts.application_protocols = std::move(hello.alpn);
    } else {
      need_more = true;
    }
  }
  // http_inspector, for what is not TLS: http/1.1, http/1.0 or h2c as the ALPN.
  if (facts.transport_protocol && !facts.application_protocols) {
    std::string proto;
    if (!http_on || *facts.transport_protocol != "raw_buffer") {
      facts.application_protocols.emplace();
    } else if (!in.empty() && InspectHttp(in.Data(), &proto) == Inspect::kDone) {
      facts.application_protocols.emplace();
      if (!proto.empty())
        facts.application_protocols->push_back(std::move(proto));
    } else {
      need_more = true;
    }
  }
  filterchain::Connection c = facts;
  if (timed_out) {
    // continue_on_listener_filters_timeout: what the inspectors did not learn is
    // Envoy's default (raw_buffer, no SNI, no ALPN).
    if (!c.transport_protocol)
      c.transport_protocol = "raw_buffer";
    if (!c.server_name)
      c.server_name = "";
    if (!c.application_protocols)
      c.application_protocols.emplace();
  }
  bool decided = false;
  const FilterChain* chosen = lc->Select(c, &decided);
  if (!decided) {
    // Only a chain that needs a fact the inspectors read makes the proxy read: a
    // server-first protocol on a listener that does not sniff is never waited on.
    if (!open || (need_more && in.size() >= 64 * 1024)) {
      Close();  // the client went away (or sent too much) before the match could be made
      return;
    }
    if (lc->filters_timeout.count() > 0 && !wait_timer.armed())
      w->Arm(wait_timer, lc->filters_timeout.count());
    return;
  }
  w->Cancel(wait_timer);
  facts = std::move(c);
  if (facts.server_name)
    sni = *facts.server_name;
  chain = chosen;
  if (!chain) {
    // No chain and no default: closed, and the listener's access log says NR.
    w->stats().cx_no_chain.fetch_add(1, std::memory_order_relaxed);
    flags |= kFlagNR;
    termination = "filter_chain_not_found";
    tcp_session = lc->access_log;
    Close();
    return;
  }
  if (!chain->fail_closed.empty() || (chain->tls && !chain->is_http)) {
    // (TLS is terminated for HTTP chains only: a tcp_proxy chain with TLS fails closed.)
    // A chain Sluice cannot serve (TLS termination): closed, never passed through.
    w->stats().cx_fail_closed.fetch_add(1, std::memory_order_relaxed);
    termination = "sluice_tls_termination_unsupported";
    tcp_session = lc->access_log;
    Close();
    return;
  }
  if (!chain->network_rbac.empty() && NetworkRbacDenied()) {
    // tcp_proxy's access log records the denied connection; a connection manager's logs
    // requests only, and there was none.
    tcp_session = !chain->is_http && chain->access_log;
    Close();
    return;
  }
  if (chain->is_http) {
    phase = Phase::kHead;
    if (chain->tls) {
      // TLS termination: what was read (the ClientHello) starts the handshake; `in`
      // holds plaintext from now on.
      tls = std::make_unique<TlsTransport>(chain->tls);
      const bool ok = tls->Feed(w->loop(), fd, in.Data());
      in.Clear();
      if (!ok) {
        TlsFailed();
        return;
      }
      if (!open)
        Close();
      return;
    }
    if (!open && in.empty())
      Close();
    else if (!in.empty())
      ServeRequests(/*read_first=*/false);  // the inspected bytes, replayed
    return;
  }
  StartTcp();
  if (g == gen && !open && phase == Phase::kTunnel) {
    down_eof = true;
    if (up)
      w->loop().ShutdownWrite(up->fd);
  }
}

bool Session::ReadInto(Buffer& b) {
  // Returns false on EOF or error.
  if (h2conn) {
    read_ready = false;  // a stream's bytes are written into `in` by its connection
    return true;
  }
  // A request being received is read up to the worker's per-connection floor; a body
  // beyond it only under a reservation (MemoryBudget::Reserve).
  const bool receiving_body = phase == Phase::kBody || Streaming();
  const bool floored = &b == &in && (phase == Phase::kHead || receiving_body);
  // Room for a whole head always, so a head is never waited on.
  const std::size_t floor =
      floored ? std::max(MemoryBudget::kHeadFloor, chain->http.limits.max_head_bytes + 1) : 0;
  while (true) {
    std::size_t room = SIZE_MAX;
    if (floored && reserved == 0) {
      if (b.size() >= floor) {
        read_ready = true;  // a head: read again once these requests are taken (Finish)
        if (receiving_body && !w->budget().Reserve(this, BodyReservation())) {
          w->budget().WaitForMemory(this);  // resumed once its reservation is granted
          Account();
          return true;
        }
        if (phase == Phase::kHead) {
          Account();
          return true;
        }
      } else {
        room = floor - b.size();
      }
    }
    std::size_t avail;
    const std::string_view before = b.Data();
    char* p = b.WritePtr(8192, &avail);
    if (&b == &in && b.Data().data() != before.data())
      InMoved(before);  // a body grew it: the access log and a retry still read the head
    const std::size_t want = std::min(avail, room);
    ssize_t n = tls ? tls->Recv(w->loop(), fd, p, want) : w->loop().Recv(fd, p, want);
    if (n > 0) {
      b.Commit(static_cast<std::size_t>(n));
      last_io_ms = w->now();
      if (phase == Phase::kTunnel)
        bytes_rx += static_cast<uint64_t>(n);
      if (static_cast<std::size_t>(n) < want && !peer_hup) {
        read_ready = false;  // a short read: the socket is dry
        Account();
        return true;
      }
      if (b.size() > 1024 * 1024) {
        read_ready = true;
        Account();
        return true;
      }
      continue;
    }
    Account();
    if (n == 0)
      return false;
    if (errno == EINTR)
      continue;
    read_ready = false;
    return errno == EAGAIN;
  }
}

void Session::OnEvent(uint32_t ev) {
  if (fd < 0)
    return;  // closed earlier in this epoll batch: the event is stale
  uint64_t g = gen;
  if (ev & EPOLLERR) {
    Abort(kFlagDC);
    return;
  }
  if (ev & (EPOLLRDHUP | EPOLLHUP))
    peer_hup = true;
  if ((ev & EPOLLOUT) && (!out.empty() || (tls && tls->wire_pending()))) {
    TryWrite();
    if (g != gen)
      return;
  }
  if (!(ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP)))
    return;
  switch (phase) {
    case Phase::kSniff:
      ChooseChain(ReadInto(in), /*timed_out=*/false);
      return;
    case Phase::kHead:
    case Phase::kBody:
      ServeRequests(/*read_first=*/true);
      return;
    case Phase::kTunnel:
      if (up && up->out.size() > 1024 * 1024) {
        read_ready = true;  // resumed by OnUpDrained
        return;
      }
      TunnelRead();
      return;
    case Phase::kClosing: {
      char tmp[4096];
      while (w->loop().Recv(fd, tmp, sizeof(tmp)) > 0) {
      }
      if (ev & (EPOLLRDHUP | EPOLLHUP))
        Close();
      return;
    }
    default:
      if (Streaming()) {
        ServeRequests(/*read_first=*/true);  // the rest of a streamed body
        return;
      }
      // A request is in flight and the connection is not read meanwhile. A FIN means the
      // client went away; data (pipelined requests) is read when the request is done.
      if (ev & (EPOLLRDHUP | EPOLLHUP))
        Abort(kFlagDC);
      else
        read_ready = true;
      return;
  }
}

void Session::Process() {
  if (in_process)
    return;
  in_process = true;
  uint64_t g = gen;
  while (g == gen && (phase == Phase::kHead || phase == Phase::kBody) && !in.empty()) {
    if (phase == Phase::kHead) {
      RefreshConfig();
      if (head_start_ms < 0) {
        // A request's first byte: its head and whole-request deadlines start now.
        head_start_ms = last_io_ms = w->now();
        request_complete = false;
        ArmStreamTimer();
      }
      http::ParseStatus st = http::ParseRequest(in.Data(), chain->http.limits, &req);
      if (st == http::ParseStatus::kIncomplete)
        break;
      start_ms = head_start_ms;
      request_active = true;
      flags = 0;
      bytes_rx = 0;
      bytes_tx = 0;
      status = 0;
      details = "-";
      if (st == http::ParseStatus::kError) {
        ForgetHead();
        Local(req.error_status, req.error ? req.error : "bad request", kFlagDPE,
              "http1.codec_error");
        break;
      }
      OnHead();
      continue;
    }
    // kBody: wait for the whole body (it is buffered, for retries and mirrors), or
    // route a streamed one on its head.
    const int scanned = ScanBody();
    if (scanned < 0)
      break;
    bytes_rx = body_scanned;
    if (scanned == 1)
      body_streaming = false;  // all in already: served as any other request
    if (scanned == 0 && !body_streaming) {
      if (req.expect_continue && !sent_continue) {
        sent_continue = true;
        out.Append("HTTP/1.1 100 Continue\r\n\r\n");
        TryWrite();
      }
      break;
    }
    Dispatch();
  }
  in_process = false;
}

int Session::ScanBody() {
  std::string_view body = in.Data().substr(req.head_len);
  const char* refused = nullptr;
  int code = 0;
  if (req.chunked) {
    body_scanned += chunk.Feed(body.substr(body_scanned), nullptr);
    if (chunk.failed()) {
      code = 400;
      refused = chunk.error();
    } else if (body_scanned > chain->http.max_request_body) {
      code = 413;
      refused = "Payload Too Large";
    } else {
      return chunk.done() ? 1 : 0;
    }
  } else {
    body_scanned = std::min<std::size_t>(body.size(), static_cast<std::size_t>(req.content_length));
    return body_scanned == static_cast<std::size_t>(req.content_length) ? 1 : 0;
  }
  close_after = true;  // where the body ends, and so the next request begins, is unknown
  if (response_started) {
    Abort(code == 400 ? static_cast<uint32_t>(kFlagDPE)
                      : 0u);  // a streamed request's response began: a reset
    return -1;
  }
  StopWaiting();
  if (code == 400)
    Local(400, refused, kFlagDPE, "http1.codec_error");
  else
    Local(413, refused, 0, "request_payload_too_large");
  return -1;
}

void Session::InMoved(std::string_view before) {
  const char* to = in.Data().data();
  http::MoveViews(&req, before.data(), before.size(), to);
  if (!cors_origin.empty() && cors_origin.data() >= before.data() &&
      cors_origin.data() < before.data() + before.size())
    cors_origin = std::string_view(to + (cors_origin.data() - before.data()), cors_origin.size());
}

void Session::ForgetHead() {
  close_after = true;    // where this request ends, and so the next begins, is unknown
  generated_id = false;  // not the previous request's id
  req.num_headers = 0;
  req.method = req.target = req.path = req.host = req.upgrade = {};
  req.head_len = in.size();
  body_scanned = 0;
}

void Session::OnHead() {
  body_scanned = 0;
  response_started = false;  // (the previous request's, until Dispatch)
  sent_continue = false;
  chunk.Reset();
  bool has_body = req.chunked || req.content_length > 0;
  if (req.content_length > 0 &&
      static_cast<std::size_t>(req.content_length) > chain->http.max_request_body) {
    close_after = true;
    Local(413, "Payload Too Large", 0, "request_payload_too_large");
    return;
  }
  // gRPC bodies stream (a bidirectional call); other bodies are buffered whole first.
  body_streaming = has_body && grpc::IsGrpcRequest(req.path, req.Get("content-type"));
  mirrors_deferred = false;
  body_sent = 0;
  if (has_body) {
    phase = Phase::kBody;
    ArmStreamTimer();
    return;
  }
  Dispatch();
}

void Session::OnTimer(int kind) {
  switch (kind) {
    case kRouteTimer:
      StopWaiting();
      DropUpstream(false);
      if (response_started) {
        flags |= kFlagUT;
        Abort(0);
        return;
      }
      Local(504, "upstream request timeout", kFlagUT, "upstream_response_timeout");
      return;
    case kTryTimer:
      if (response_started || !up)
        return;
      w->upstreams().OnEndpointResult(*cluster, up_ep, true);
      DropUpstream(false);
      if (RetriableTimeout(route->action.retry) && ScheduleRetry())
        return;
      Local(504, "upstream request timeout", kFlagUT, "upstream_per_try_timeout");
      return;
    case kWaitTimer:
      if (phase == Phase::kSniff) {
        // listener_filters_timeout: go on with what is known, or close.
        if (lc->continue_on_filters_timeout)
          ChooseChain(/*open=*/true, /*timed_out=*/true);
        else
          Close();
      } else if (phase == Phase::kDelay) {
        ContinueAfterFault();
      } else if (phase == Phase::kBackoff) {
        StartAttempt();
      }
      return;
    case kStreamTimer:
      OnStreamTimer();
      return;
  }
}

int64_t Session::StreamDeadline(Deadline* which) const {
  *which = Deadline::kNone;
  int64_t best = INT64_MAX;
  if (head_start_ms < 0 || !chain || !chain->is_http)
    return best;  // no request under way
  auto consider = [&](int64_t from, Millis limit, Deadline d) {
    if (limit.count() > 0 && from + limit.count() < best) {
      best = from + limit.count();
      *which = d;
    }
  };
  const HttpSettings& h = chain->http;
  if (phase == Phase::kHead)
    consider(head_start_ms, h.request_headers_timeout, Deadline::kHead);
  if (!request_complete)
    consider(head_start_ms, h.request_timeout, Deadline::kRequest);
  consider(last_io_ms, h.stream_idle_timeout, Deadline::kIdle);
  // The stream's maximum duration (grpc::RouteTimeouts: max_stream_duration, or a
  // grpc-timeout under grpc_timeout_header_max), from the request's first byte; 0 is
  // already reached.
  if (route && timeouts.stream_duration &&
      head_start_ms + timeouts.stream_duration->count() < best) {
    best = head_start_ms + timeouts.stream_duration->count();
    *which = Deadline::kDuration;
  }
  return best;
}

void Session::ArmStreamTimer() {
  Deadline which;
  const int64_t at = StreamDeadline(&which);
  if (which == Deadline::kNone) {
    w->Cancel(stream_timer);
    return;
  }
  // An idle deadline moves with every byte: the timer is not moved then, but checked
  // again when it fires (OnStreamTimer), so a busy request costs no timer operations.
  if (!stream_timer.armed() || stream_timer.deadline > at)
    w->Arm(stream_timer, std::max<int64_t>(0, at - w->now()));
}

void Session::OnStreamTimer() {
  Deadline which;
  const int64_t at = StreamDeadline(&which);
  if (which == Deadline::kNone)
    return;
  if (at > w->now()) {
    ArmStreamTimer();
    return;
  }
  int code = 408;
  const char* body = "request header timeout";
  const char* why = "request_header_timeout";
  uint32_t flag = 0;
  switch (which) {
    case Deadline::kHead:
      w->stats().rq_header_timeout.fetch_add(1, std::memory_order_relaxed);
      break;
    case Deadline::kRequest:
      w->stats().rq_timeout.fetch_add(1, std::memory_order_relaxed);
      body = "request timeout";
      why = "request_overall_timeout";
      break;
    case Deadline::kIdle:
      w->stats().rq_idle_timeout.fetch_add(1, std::memory_order_relaxed);
      flag = kFlagSI;
      if (response_started) {
        Abort(kFlagSI);  // part of the response is out: all that is left is a reset
        return;
      }
      body = "stream timeout";
      why = "stream_idle_timeout";
      code = request_complete ? 504 : 408;  // Envoy: 408 only while the request is incomplete
      break;
    case Deadline::kDuration:
      // Envoy's onStreamMaxDurationReached: a 408 (DEADLINE_EXCEEDED to a gRPC client)
      // before the response started, else a reset.
      w->stats().rq_max_duration.fetch_add(1, std::memory_order_relaxed);
      if (response_started) {
        Abort(kFlagDT);
        return;
      }
      flag = kFlagDT;
      body = "downstream duration timeout";
      why = "max_duration_timeout";
      DropUpstream(false);
      break;
    case Deadline::kNone:
      return;
  }
  StopWaiting();
  if (phase == Phase::kHead) {  // a head that never completed
    ForgetHead();
    request_active = true;
    start_ms = head_start_ms;
    flags = 0;
    bytes_rx = in.size();
    bytes_tx = 0;
  }
  if (!request_complete)
    close_after = true;  // the rest of this request would be read as the next one
  Local(code, body, flag, why);
}

void Session::Uncount() {
  if (retry_counted) {
    cluster->active_retries.fetch_sub(1, std::memory_order_relaxed);
    retry_counted = false;
  }
  if (counted_request) {
    cluster->active_requests.fetch_sub(1, std::memory_order_relaxed);
    counted_request = false;
  }
}

void Session::Finish() {
  // The request is answered (fully queued in `out`): log, account, and move on.
  w->Cancel(route_timer);
  w->Cancel(try_timer);
  w->Cancel(wait_timer);
  w->Cancel(stream_timer);
  Uncount();
  LogRequest();
  request_active = false;
  head_start_ms = -1;
  if (!request_complete)
    close_after = true;  // answered before its body was all in (a streamed request's)
  request_complete = false;
  body_streaming = mirrors_deferred = false;
  grpc = false;
  w->budget().Unreserve(this);
  std::size_t used = std::min(in.size(), req.head_len + body_scanned);
  in.Consume(used);
  Account();
  req.num_headers = 0;
  req.head_len = 0;
  body_scanned = 0;
  route = nullptr;
  vh = nullptr;
  if (close_after) {
    phase = Phase::kClosing;
    if (out.empty())
      Close();
    return;
  }
  phase = Phase::kHead;
  last_active_ms = w->now();
  if (in_process)
    return;  // answered from within ServeRequests, whose loops go on with the rest
  // Bytes (pipelined requests) may have arrived while the request ran, announced by an
  // edge that is gone: read them now.
  if (read_ready || !in.empty())
    ServeRequests(/*read_first=*/read_ready);
}

void Session::ServeRequests(bool read_first) {
  uint64_t g = gen;
  bool read = read_first;
  while (true) {
    if (read && !ReadInto(in)) {
      if (tls && tls->failed())
        TlsFailed();
      else if (phase == Phase::kHead && in.empty())
        Close();
      else
        Abort(kFlagDC);
      return;
    }
    if (!proto_decided && !DecideProtocol())
      return;  // waiting for the handshake or the preface, or served as HTTP/2 now
    if (Streaming() && phase != Phase::kBody) {
      StreamBody();
      if (g != gen || !read_ready || waiting_memory || !Streaming())
        return;
      read = true;
      continue;
    }
    Process();
    // The socket may hold more than was read (a read stops at the connection's floor or
    // its 1 MiB): edge-triggered, nothing will say so again, so read on.
    if (g != gen || !read_ready || waiting_memory ||
        (phase != Phase::kHead && phase != Phase::kBody))
      return;
    read = true;
  }
}

bool Session::DecideProtocol() {
  if (tls && !tls->handshake_done())
    return false;
  if (tls && sni.empty())
    sni = tls->conn().sni();
  bool h2 = false;
  switch (chain->http.codec) {
    case HttpSettings::Codec::kHttp1:
      break;
    case HttpSettings::Codec::kHttp2:
      h2 = true;
      break;
    case HttpSettings::Codec::kAuto:
      if (tls && !tls->conn().alpn().empty()) {
        h2 = tls->conn().alpn() == "h2";
      } else {
        // h2c with prior knowledge (or no ALPN over TLS): the client's preface says.
        const h2::PrefaceMatch m = h2::LooksLikeH2Preface(in.Data());
        if (m == h2::PrefaceMatch::kNeedMore)
          return false;
        h2 = m == h2::PrefaceMatch::kYes;
      }
      break;
  }
  proto_decided = true;
  if (!h2)
    return true;
  // The connection becomes an H2Downstream: it takes the socket, the TLS transport, the
  // listener's count and the bytes read; this session ends without a request to log.
  H2Downstream* h = w->sessions().NewH2();
  h->Open(*this);
  fd = -1;
  Close();
  h->Start();
  return false;
}

void Session::TlsFailed() {
  w->stats().tls_handshake_errors.fetch_add(1, std::memory_order_relaxed);
  if (tls && tls->conn().failure() == tls::Failure::kClientSanMismatch)
    w->stats().tls_fail_verify_san.fetch_add(1, std::memory_order_relaxed);
  else if (tls && tls->conn().failure() == tls::Failure::kClientCertHashMismatch)
    w->stats().tls_fail_verify_cert_hash.fetch_add(1, std::memory_order_relaxed);
  termination = tls && tls->conn().failure() != tls::Failure::kNone
                    ? tls::FailureName(tls->conn().failure())
                    : "ssl.connection_error";
  Close();
}

void Session::RefreshConfig() {
  // Pick up a newer config between requests.
  if (w->snap() == snap || !w->snap())
    return;
  {
    for (const auto& l : w->snap()->listeners) {
      if (l.socks->name == lc->name) {
        std::size_t idx =
            static_cast<std::size_t>(chain - (lc->chains.empty() ? chain : &lc->chains[0]));
        const ListenerConfig* nl = l.cfg;
        const FilterChain* nc = nullptr;
        if (lc->default_chain && chain == &*lc->default_chain) {
          nc = nl->default_chain ? &*nl->default_chain : nullptr;
        } else if (idx < nl->chains.size() && nl->chains.size() == lc->chains.size()) {
          nc = &nl->chains[idx];
        } else {
          bool decided = false;
          nc = nl->Select(facts, &decided);
        }
        if (nc && nc->is_http) {
          lc = nl;
          chain = nc;
          snap = w->snap();
          // The previous request's route, cluster and endpoint belong to the config being
          // let go: a request that ends before routing (a parse error) must not log them.
          route = nullptr;
          vh = nullptr;
          cluster = nullptr;
          wc = nullptr;
          up_ep = nullptr;
        }
      }
    }
  }
}

void Session::Abort(uint32_t flag) {
  flags |= flag;
  Close();
}

// The one way a session ends, whatever ended it: a request still open (an upgraded
// one in its tunnel, one waiting for a pooled connection) gives back what it holds of
// its cluster's circuit breakers and is logged, so nothing of it outlives the session.
void Session::StopWaiting() {
  if (phase == Phase::kPending) {
    w->upstreams().RemovePending(this);
    cluster->pending_requests.fetch_sub(1, std::memory_order_relaxed);
  }
}

void Session::Close() {
  if (phase == Phase::kClosed)
    return;
  const bool aborted = request_active;
  StopWaiting();
  phase = Phase::kClosed;
  DropUpstream(false);
  if (request_active) {
    Uncount();
    LogRequest();
    request_active = false;
  }
  if (tcp_session) {
    tcp_session = false;
    LogRequest();
  }
  w->Cancel(route_timer);
  w->Cancel(try_timer);
  w->Cancel(wait_timer);
  w->Cancel(stream_timer);
  if (H2Downstream* h = h2conn) {
    h2conn = nullptr;
    h->StreamSessionClosed(this, aborted);
  }
  if (fd >= 0) {
    if (tls)
      tls->Shutdown(w->loop(), fd);  // close_notify
    w->loop().Close(fd);
    fd = -1;
    w->stats().active_cx.fetch_sub(1, std::memory_order_relaxed);
  }
  if (lcount) {
    lcount->active.fetch_sub(1, std::memory_order_relaxed);
    lcount.reset();
  }
  w->budget().Charge(0, accounted);
  accounted = 0;
  w->budget().Unreserve(this);
  waiting_memory = false;
  tls.reset();
  w->sessions().ReleaseSession(this);
}

void Session::TryWrite() {
  if (response_started && !out.empty())
    response_sent = true;
  if (h2conn) {
    if (!h2conn->TakeOutput(this)) {
      Abort(kFlagDC);
      return;
    }
  } else if ((tls ? tls->Send(w->loop(), fd, out) : w->loop().Send(fd, out)) != 0) {
    Abort(kFlagDC);
    return;
  }
  Account();
  if (out.empty()) {
    if (phase == Phase::kClosing) {
      Close();
      return;
    }
    if (phase == Phase::kTunnel && up_eof) {
      w->loop().ShutdownWrite(fd);
      MaybeCloseTunnel();
      return;
    }
    if (up && up->read_paused)
      up->PauseRead(false);
  }
  // Not written yet: EPOLLOUT (always registered, edge-triggered) calls back.
}

}  // namespace sluice::proxy::engine
