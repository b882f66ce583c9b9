// An HTTP/2 upstream connection and the translation of its streams to and from the
// engine's HTTP/1.1 (see h2_upstream.h).
#include "h2_upstream.h"

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "header_rewrite.h"
#include "upstream_pool.h"

namespace sluice::proxy::engine {
namespace {

void AppendHex(Buffer& b, std::size_t v) {
  char tmp[20];
  int n = 0;
  do {
    tmp[n++] = "0123456789abcdef"[v & 15];
    v >>= 4;
  } while (v);
  char out[20];
  for (int i = 0; i < n; ++i)
    out[i] = tmp[n - 1 - i];
  b.Append(std::string_view(out, static_cast<std::size_t>(n)));
}

void AppendField(Buffer& b, std::string_view name, std::string_view value) {
  b.Append(name);
  b.Append(": ");
  b.Append(value);
  b.Append("\r\n");
}

// Request fields HTTP/2 has no place for (RFC 9113 §8.2.2; the h2 layer drops the
// standard connection-specific ones itself): an h2c upgrade's settings.
bool DropFromRequest(std::string_view name) {
  return http::EqualsIgnoreCase(name, "http2-settings");
}

// Trailer fields an HTTP/1.1 chunked trailer section may not carry (the codec refuses
// them on the way back in).
bool DropFromTrailers(std::string_view name) {
  return http::EqualsIgnoreCase(name, "content-length") ||
         http::EqualsIgnoreCase(name, "transfer-encoding") || http::EqualsIgnoreCase(name, "host");
}

}  // namespace

void H2Upstream::Open(int sock, const std::shared_ptr<const Snapshot>& s, const Cluster* c,
                      Endpoint* e) {
  fd = sock;
  snap = s;
  cluster = c;
  ep = e;
  connecting = true;
  closing = failed = send_error_ = false;
  streams_started = attached_ever_ = 0;
  std::strcpy(local_addr, "-");
  h2::Options o;
  const Cluster::Http2& h = c->http2;
  if (h.initial_stream_window)
    o.initial_stream_window = h.initial_stream_window;
  if (h.initial_connection_window)
    o.initial_connection_window = h.initial_connection_window;
  o.hpack_table_size = h.hpack_table_size;
  if (h.max_outbound_frames)
    o.max_outbound_frames = h.max_outbound_frames;
  if (h.max_outbound_control_frames)
    o.max_outbound_ack = h.max_outbound_control_frames;
  if (h.max_consecutive_inbound_frames_with_empty_payload)
    o.max_consecutive_empty_frames = h.max_consecutive_inbound_frames_with_empty_payload;
  if (h.max_inbound_priority_frames_per_stream)
    o.max_priority_frames_per_stream = h.max_inbound_priority_frames_per_stream;
  if (h.max_inbound_window_update_frames_per_data_frame_sent)
    o.max_window_updates_per_data_frame = h.max_inbound_window_update_frames_per_data_frame_sent;
  WorkerContext* ctx = w;
  o.now_ms = [ctx] { return ctx->now(); };
  session_ = std::make_unique<h2::Session>(h2::Role::kClient, this, std::move(o));
  out_.Clear();
  events = EPOLLOUT;
  w->loop().Add(fd, events, this, EventLoop::Kind::kConnecting);
  w->Arm(connect_timer, c->connect_timeout.count());
}

void H2Upstream::Reset() {
  session_.reset();
  out_.Clear();
  out_.Shrink(0);
  attached_.clear();
  waiting_.clear();
  by_id_.clear();
  dirty_.clear();
  snap.reset();
  events = 0;
}

bool H2Upstream::CanTake() const {
  if (closing || failed || fd < 0 || !session_)
    return false;
  if (attached_.size() >= cluster->http2.max_concurrent_streams)
    return false;
  if (cluster->max_requests_per_connection != 0 &&
      attached_ever_ >= cluster->max_requests_per_connection)
    return false;
  return session_->CanOpenStream();
}

void H2Upstream::Attach(UpstreamConn* u) {
  attached_.push_back(u);
  ++attached_ever_;
  if (cluster->max_requests_per_connection != 0 &&
      attached_ever_ >= cluster->max_requests_per_connection)
    closing = true;  // Envoy's max_requests_per_connection: drained once these finish
  w->Cancel(idle_timer);
  u->h2 = this;
  u->fd = fd;
  u->connecting = connecting;
  u->h2s = UpstreamConn::H2Stream{};
  std::memcpy(u->local_addr, local_addr, sizeof(local_addr));
}

UpstreamConn* H2Upstream::Find(int32_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : it->second;
}

void H2Upstream::MarkDirty(UpstreamConn* u) {
  if (u->h2s.dirty)
    return;
  u->h2s.dirty = true;
  dirty_.emplace_back(u, u->gen);
}

void H2Upstream::SetEvents(uint32_t ev) {
  if (ev != events && fd >= 0) {
    events = ev;
    w->loop().Modify(fd, ev, this);
  }
}

void H2Upstream::Submit(UpstreamConn* u) {
  if (u->h2 != this || connecting || failed || !session_)
    return;  // sent on connect; a failed connection fails its streams itself
  UpstreamConn::H2Stream& s = u->h2s;
  if (!s.head_sent) {
    if (std::find(waiting_.begin(), waiting_.end(), u) != waiting_.end())
      return;
    http::Limits lim;
    lim.max_head_bytes = 1 << 20;
    lim.max_headers = http::kMaxHeadersHard;
    http::ParseStatus st = http::ParseRequest(u->out.Data(), lim, &req_);
    if (st == http::ParseStatus::kIncomplete)
      return;
    if (st == http::ParseStatus::kError) {
      u->Fail(UpFailure::kProtocol);
      return;
    }
    if (closing && !session_->CanOpenStream()) {
      u->Fail(UpFailure::kRefused);  // never sent: as a stream the server refused
      return;
    }
    if (!session_->CanOpenStream()) {
      waiting_.push_back(u);  // the server lowered its limit under what was bound
      return;
    }
    h2::Head head;
    head.method = req_.method;
    head.scheme = "http";
    head.authority = req_.host;
    head.path = req_.target;
    fields_.clear();
    for (std::size_t i = 0; i < req_.num_headers; ++i) {
      const http::Header& f = req_.headers[i];
      if (!DropFromRequest(f.name))
        fields_.push_back({f.name, f.value});
    }
    head.fields = std::move(fields_);
    const bool has_body = req_.chunked || req_.content_length > 0;
    int32_t id = session_->SubmitRequest(head, !has_body);
    fields_ = std::move(head.fields);
    if (id < 0) {
      u->Fail(UpFailure::kReset);
      return;
    }
    s.id = id;
    s.head_sent = true;
    s.body_chunked = req_.chunked;
    if (req_.chunked)
      s.body_chunk.CaptureTrailers();  // passed on as HTTP/2 trailers
    s.body_left = req_.chunked ? 0 : std::max<int64_t>(0, req_.content_length);
    s.request_done = !has_body;
    by_id_[id] = u;
    ++streams_started;
    u->out.Consume(req_.head_len);
  }
  while (!s.request_done && !u->out.empty()) {
    if (s.body_chunked) {
      payload_.clear();
      std::size_t used = s.body_chunk.Feed(u->out.Data(), &payload_);
      u->out.Consume(used);
      if (s.body_chunk.failed()) {
        u->Fail(UpFailure::kProtocol);
        return;
      }
      s.request_done = s.body_chunk.done();
      if (s.request_done && !s.body_chunk.trailers().empty()) {
        // The body's trailers end the stream as a trailer HEADERS frame.
        if (!payload_.empty())
          session_->SendData(s.id, payload_, false);
        std::vector<h2::Field> trailers;
        for (auto [name, value] : http::TrailerFields(s.body_chunk.trailers()))
          trailers.push_back({name, value});
        session_->SendTrailers(s.id, trailers);
      } else if (!payload_.empty() || s.request_done) {
        session_->SendData(s.id, payload_, s.request_done);
      }
      if (used == 0)
        break;
    } else {
      std::size_t take =
          std::min<std::size_t>(u->out.size(), static_cast<std::size_t>(s.body_left));
      s.body_left -= static_cast<int64_t>(take);
      s.request_done = s.body_left == 0;
      session_->SendData(s.id, u->out.Data().substr(0, take), s.request_done);
      u->out.Consume(take);
    }
  }
  WriteOut();
}

void H2Upstream::SubmitWaiting() {
  while (!waiting_.empty() && session_ && session_->CanOpenStream()) {
    UpstreamConn* u = waiting_.front();
    waiting_.erase(waiting_.begin());
    Submit(u);
  }
}

void H2Upstream::Resume(UpstreamConn* u) {
  UpstreamConn::H2Stream& s = u->h2s;
  if (!session_ || s.id < 0 || s.closed || s.unconsumed == 0)
    return;
  session_->Consume(s.id, s.unconsumed);
  s.unconsumed = 0;
  WriteOut();
}

void H2Upstream::Detach(UpstreamConn* u) {
  attached_.erase(std::remove(attached_.begin(), attached_.end(), u), attached_.end());
  waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), u), waiting_.end());
  UpstreamConn::H2Stream& s = u->h2s;
  if (s.id > 0 && !s.closed) {
    by_id_.erase(s.id);
    if (session_ && !failed) {
      session_->ResetStream(s.id, h2::kCancel);  // an unfinished stream: the server stops
      WriteOut();
    }
  }
  u->h2 = nullptr;
  u->fd = -1;
  u->connecting = false;
  u->h2s = UpstreamConn::H2Stream{};
}

void H2Upstream::Shutdown() {
  if (!session_ || failed || connecting)
    return;
  session_->GracefulShutdown();
  WriteOut();
}

void H2Upstream::WriteOut() {
  if (fd < 0 || connecting || !session_ || send_error_)
    return;
  while (true) {
    if (!out_.empty()) {
      if (w->loop().Send(fd, out_) != 0) {
        // Failed from the next event (EPOLLERR/HUP come with it), not from inside the
        // caller, which may be a stream's owner.
        send_error_ = true;
        out_.Clear();
        SetEvents(EPOLLIN | EPOLLRDHUP | EPOLLOUT);
        return;
      }
      if (!out_.empty())
        break;
    }
    std::string_view p = session_->PendingOutput();
    if (p.empty())
      break;
    out_.Append(p);
    session_->ConsumeOutput(p.size());
  }
  SetEvents(EPOLLIN | EPOLLRDHUP | (out_.empty() ? 0u : static_cast<uint32_t>(EPOLLOUT)));
  if (!dirty_.empty())
    w->Arm(deadline_timer, 0);  // events from frames sent (a stream closed): handed over soon
}

void H2Upstream::ArmDeadline() {
  if (!session_ || fd < 0 || connecting)
    return;
  int64_t next = session_->CheckDeadlines();
  if (!dirty_.empty() || session_->error()) {
    w->Arm(deadline_timer, 0);
    return;
  }
  if (next >= 0)
    w->Arm(deadline_timer, std::max<int64_t>(0, next - w->now()));
  else
    w->Cancel(deadline_timer);
}

void H2Upstream::OnTimer(int kind) {
  UpstreamPool& pool = w->upstreams();
  switch (kind) {
    case kConnectTimer:
      if (connecting)
        pool.FailH2(this, UpFailure::kConnect);
      return;
    case kIdleTimer:
      if (attached_.empty() && fd >= 0) {
        Shutdown();
        pool.CloseH2(this);
      }
      return;
    default: {
      if (fd < 0 || !session_)
        return;
      uint64_t g = gen;
      if (send_error_) {
        pool.FailH2(this, UpFailure::kReset);
        return;
      }
      session_->CheckDeadlines();
      ProcessDirty();
      if (g != gen)
        return;
      if (session_->error()) {
        WriteOut();
        pool.FailH2(this, UpFailure::kProtocol);
        return;
      }
      SubmitWaiting();
      WriteOut();
      ArmDeadline();
      return;
    }
  }
}

void H2Upstream::OnEvent(uint32_t ev) {
  if (fd < 0)
    return;  // closed earlier in this batch: the event is stale
  uint64_t g = gen;
  UpstreamPool& pool = w->upstreams();
  if (connecting) {
    if (!(ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
      return;
    int err = 0;
    socklen_t len = sizeof(err);
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0 || (ev & EPOLLERR)) {
      pool.FailH2(this, UpFailure::kConnect);
      return;
    }
    connecting = false;
    w->Cancel(connect_timer);
    sockaddr_storage ls{};
    socklen_t ll = sizeof(ls);
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&ls), &ll) == 0)
      FormatAddr(ls, local_addr, sizeof(local_addr));
    SetEvents(EPOLLIN | EPOLLRDHUP);
    // The requests bound while it connected go now, in the order they came.
    std::vector<std::pair<UpstreamConn*, uint64_t>> bound;
    bound.reserve(attached_.size());
    for (UpstreamConn* u : attached_)
      bound.emplace_back(u, u->gen);
    for (auto [u, ug] : bound) {
      if (u->gen != ug || u->h2 != this)
        continue;
      u->connecting = false;
      std::memcpy(u->local_addr, local_addr, sizeof(local_addr));
      if (u->owner) {
        u->owner->OnUpConnected(u);
        if (g != gen)
          return;
        if (u->gen != ug)
          continue;
      }
      u->Flush();
      if (g != gen)
        return;
    }
    WriteOut();
    ArmDeadline();
    return;
  }
  if (send_error_) {
    pool.FailH2(this, UpFailure::kReset);
    return;
  }
  if (ev & EPOLLOUT) {
    WriteOut();
    if (g != gen)
      return;
  }
  if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
    OnReadable();
}

void H2Upstream::OnReadable() {
  uint64_t g = gen;
  UpstreamPool& pool = w->upstreams();
  bool eof = false, bad = false;
  char buf[16384];
  for (int i = 0; i < 64; ++i) {
    ssize_t n = w->loop().Recv(fd, buf, sizeof(buf));
    if (n > 0) {
      if (!session_->Receive(std::string_view(buf, static_cast<std::size_t>(n)))) {
        bad = true;
        break;
      }
      if (static_cast<std::size_t>(n) < sizeof(buf))
        break;
      continue;
    }
    if (n == 0) {
      eof = true;
      break;
    }
    if (errno == EINTR)
      continue;
    if (errno != EAGAIN)
      eof = true;
    break;
  }
  ProcessDirty();
  if (g != gen)
    return;
  if (bad) {
    WriteOut();  // the GOAWAY that says why
    pool.FailH2(this, UpFailure::kProtocol);
    return;
  }
  if (eof) {
    session_->ReceiveEof();  // open streams close (CANCEL): they fail as resets
    ProcessDirty();
    if (g != gen)
      return;
    pool.FailH2(this, UpFailure::kReset);
    return;
  }
  SubmitWaiting();
  if (g != gen)
    return;
  WriteOut();
  ArmDeadline();
  if (closing && attached_.empty())
    pool.H2Idle(this);  // a GOAWAY with nothing left on it
}

void H2Upstream::ProcessDirty() {
  if (processing_)
    return;  // the outer call goes on until the list is empty
  processing_ = true;
  uint64_t g = gen;
  while (!dirty_.empty() && g == gen) {
    dirty_scratch_.swap(dirty_);
    for (std::size_t i = 0; i < dirty_scratch_.size() && g == gen; ++i) {
      auto [u, ug] = dirty_scratch_[i];
      if (u->gen != ug || u->h2 != this)
        continue;
      u->h2s.dirty = false;
      u->ProcessResponse();
      if (u->gen != ug || g != gen)
        continue;
      if (u->owner) {
        u->owner->OnUpReadDone(u);
        if (u->gen != ug || g != gen)
          continue;
      }
      if (u->h2s.closed) {
        // Closed and still held: reset by the server (or refused by its GOAWAY), or the
        // connection went; the response did not finish.
        u->Fail(u->h2s.close_code == h2::kRefusedStream ? UpFailure::kRefused : UpFailure::kReset);
        continue;
      }
      if (!u->read_paused && u->h2s.unconsumed > 0 && session_) {
        session_->Consume(u->h2s.id, u->h2s.unconsumed);
        u->h2s.unconsumed = 0;
      }
    }
    dirty_scratch_.clear();
  }
  processing_ = false;
}

// ---- the server's frames, written into each stream's `in` as HTTP/1.1

void H2Upstream::OnHead(int32_t stream, const h2::Head& head, bool end_stream) {
  UpstreamConn* u = Find(stream);
  if (!u || head.status < 200 || u->h2s.resp_head)
    return;  // 1xx: the 100-continue was answered here already (as on HTTP/1.1)
  UpstreamConn::H2Stream& s = u->h2s;
  s.resp_head = true;
  Buffer& in = u->in;
  in.Append("HTTP/1.1 ");
  AppendNum(in, static_cast<uint64_t>(head.status));
  in.Append(" ");
  in.Append(http::ReasonPhrase(head.status));
  in.Append("\r\n");
  bool has_length = false;
  for (const h2::Field& f : head.fields) {
    if (http::EqualsIgnoreCase(f.name, "content-length"))
      has_length = true;
    AppendField(in, f.name, f.value);
  }
  const bool bodyless = u->head_request || head.status == 204 || head.status == 304;
  if (end_stream) {
    s.ended = true;
    if (!has_length && !bodyless)
      in.Append("content-length: 0\r\n");  // trailers-only (gRPC): the head is the response
  } else if (!has_length && !bodyless) {
    s.resp_chunked = true;
    in.Append("transfer-encoding: chunked\r\n");
  }
  in.Append("\r\n");
  MarkDirty(u);
}

void H2Upstream::OnData(int32_t stream, std::string_view data, bool end_stream) {
  UpstreamConn* u = Find(stream);
  if (!u) {
    if (!data.empty() && session_)
      session_->Consume(stream, data.size());
    return;
  }
  UpstreamConn::H2Stream& s = u->h2s;
  s.unconsumed += data.size();
  if (!s.resp_head)
    return;  // nghttp2 refuses DATA before a head; nothing to frame it in
  if (s.resp_chunked) {
    if (!data.empty()) {
      AppendHex(u->in, data.size());
      u->in.Append("\r\n");
      u->in.Append(data);
      u->in.Append("\r\n");
    }
    if (end_stream)
      u->in.Append("0\r\n\r\n");
  } else {
    u->in.Append(data);
  }
  if (end_stream)
    s.ended = true;
  MarkDirty(u);
}

void H2Upstream::OnTrailers(int32_t stream, const h2::Head& trailers) {
  UpstreamConn* u = Find(stream);
  if (!u)
    return;
  UpstreamConn::H2Stream& s = u->h2s;
  if (s.resp_chunked && !s.ended) {
    // HTTP/1.1 carries trailers only after a chunked body (a content-length body drops
    // them, as Envoy's HTTP/1 codec does).
    u->in.Append("0\r\n");
    for (const h2::Field& f : trailers.fields) {
      if (!DropFromTrailers(f.name))
        AppendField(u->in, f.name, f.value);
    }
    u->in.Append("\r\n");
  }
  s.ended = true;
  MarkDirty(u);
}

void H2Upstream::OnStreamClose(int32_t stream, uint32_t error_code) {
  auto it = by_id_.find(stream);
  if (it == by_id_.end())
    return;
  UpstreamConn* u = it->second;
  by_id_.erase(it);
  UpstreamConn::H2Stream& s = u->h2s;
  s.closed = true;
  s.close_code = error_code;
  s.unconsumed = 0;  // the layer gives a closed stream's bytes back to the connection
  if (error_code == 0 && s.resp_chunked && !s.ended)
    s.close_code = h2::kInternalError;  // cannot happen: END_STREAM always came first
  MarkDirty(u);
}

void H2Upstream::OnGoaway(uint32_t, int32_t) {
  // No new stream on it; streams above last-stream-id are closed by the layer
  // (REFUSED_STREAM) and fail as resets. Requests still waiting for a slot never went:
  // they fail the same way.
  closing = true;
  for (UpstreamConn* u : waiting_) {
    u->h2s.closed = true;
    u->h2s.close_code = h2::kRefusedStream;
    MarkDirty(u);
  }
  waiting_.clear();
}

}  // namespace sluice::proxy::engine
