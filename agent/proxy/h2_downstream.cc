// An HTTP/2 downstream connection: the socket, the h2 session in the server role, and
// the conversion of each stream to and from the HTTP/1.1 of the Session serving it (see
// h2_downstream.h).
#include "h2_downstream.h"

#include <sys/epoll.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>

#include "session.h"

namespace sluice::proxy::engine {
namespace {

bool Is(std::string_view a, std::string_view b) {
  return http::EqualsIgnoreCase(a, b);
}

// Appends to a stream Session's `in`, keeping its parsed head's views on their bytes when
// the buffer moves (as Session::ReadInto does).
void AppendIn(Session* s, std::string_view bytes) {
  const std::string_view before = s->in.Data();
  s->in.Append(bytes);
  if (s->in.Data().data() != before.data() && !before.empty())
    s->InMoved(before);
}

}  // namespace

h2::Options H2Downstream::Options() const {
  h2::Options o;
  const HttpSettings& h = chain->http;
  if (h.h2_max_concurrent_streams > 0)
    o.max_concurrent_streams = h.h2_max_concurrent_streams;
  if (h.h2_initial_stream_window > 0)
    o.initial_stream_window = h.h2_initial_stream_window;
  if (h.h2_initial_connection_window > 0)
    o.initial_connection_window = h.h2_initial_connection_window;
  o.max_header_list_bytes = static_cast<uint32_t>(h.limits.max_head_bytes);
  o.max_headers = static_cast<uint32_t>(h.limits.max_headers);
  WorkerContext* ctx = w;
  o.now_ms = [ctx] { return ctx->now(); };
  return o;
}

void H2Downstream::Open(Session& s) {
  fd = s.fd;
  snap = s.snap;
  lc = s.lc;
  chain = s.chain;
  std::memcpy(peer, s.peer, sizeof(peer));
  std::memcpy(peer_ip, s.peer_ip, sizeof(peer_ip));
  std::memcpy(local, s.local, sizeof(local));
  source_hash = s.source_hash;
  orig_dst = s.orig_dst;
  has_orig_dst = s.has_orig_dst;
  local_ss = s.local_ss;
  peer_ss = s.peer_ss;
  sni = s.sni;
  facts = s.facts;
  conn_start_ms = s.conn_start_ms;
  lcount_ = std::move(s.lcount);
  tls_ = std::move(s.tls);
  pending_in_.Clear();
  pending_in_.Append(s.in.Data());
  s.in.Clear();
  streams_.clear();
  touched_.clear();
  wbuf_.Clear();
  closing_ = goaway_sent_ = in_pump_ = flush_due_ = false;
  accounted_ = 0;
  last_active_ms_ = w->now();
  h2_ = std::make_unique<h2::Session>(h2::Role::kServer, this, Options());
  events_ = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
  w->loop().Modify(fd, events_, this);
}

void H2Downstream::Start() {
  if (!pending_in_.empty()) {
    Receive(pending_in_.Data());
    pending_in_.Clear();
    pending_in_.Shrink(0);
  }
  Pump();
}

void H2Downstream::Receive(std::string_view bytes) {
  if (!h2_->Receive(bytes))
    closing_ = true;  // a protocol error: the GOAWAY goes out, then the socket closes  // a
                      // protocol error: the GOAWAY goes out, then the socket closes
}

void H2Downstream::OnEvent(uint32_t ev) {
  if (fd < 0)
    return;
  const uint64_t g = gen;
  if (ev & EPOLLERR) {
    Close();
    return;
  }
  if (ev & EPOLLOUT)
    Flush();
  const bool hup = ev & (EPOLLRDHUP | EPOLLHUP);
  last_active_ms_ = w->now();
  if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP)) {
    char buf[16384];
    while (!closing_) {
      const ssize_t n =
          tls_ ? tls_->Recv(w->loop(), fd, buf, sizeof(buf)) : w->loop().Recv(fd, buf, sizeof(buf));
      if (n > 0) {
        Receive({buf, static_cast<std::size_t>(n)});
        if (static_cast<std::size_t>(n) < sizeof(buf) && !hup)
          break;
        continue;
      }
      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0 && errno == EAGAIN)
        break;
      // The end of the stream, or an error (TLS included): streams still open are
      // cancelled and the connection closes once their Sessions are aborted.
      h2_->ReceiveEof();
      closing_ = true;
      break;
    }
  }
  if (g == gen)
    Pump();
}

void H2Downstream::OnTimer(int) {
  if (fd < 0)
    return;
  h2_->CheckDeadlines();
  Pump();
}

void H2Downstream::Pump() {
  if (in_pump_ || fd < 0)
    return;
  in_pump_ = true;
  const uint64_t g = gen;
  while (!touched_.empty()) {
    std::vector<int32_t>& ids = pump_ids_;  // its room is kept (swapped back and forth)
    ids.clear();
    ids.swap(touched_);
    for (int32_t id : ids) {
      auto it = streams_.find(id);
      if (it == streams_.end())
        continue;
      it->second.queued = false;
      Session* s = it->second.s;
      if (!s || s->gen != it->second.sgen)
        continue;
      if (it->second.h2_closed && it->second.h2_error != h2::kNoError) {
        s->Abort(kFlagDC);  // the client reset the stream (or the connection went)
        continue;
      }
      const uint64_t sg = s->gen;
      s->ServeRequests(/*read_first=*/false);
      if (s->gen == sg)
        s->Account();
    }
  }
  // Responses held back by flow control go on as windows open.
  std::vector<std::pair<Session*, uint64_t>>& blocked = blocked_;
  blocked.clear();
  for (auto& [id, st] : streams_) {
    if (st.s && st.s->gen == st.sgen && !st.s->out.empty() && !st.h2_closed &&
        h2_->QueuedBytes(id) < kStreamWatermark)
      blocked.emplace_back(st.s, st.sgen);
  }
  for (auto [s, sg] : blocked) {
    if (s->gen == sg)
      s->TryWrite();
  }
  in_pump_ = false;
  if (g != gen)
    return;
  if (w->draining() && !goaway_sent_) {
    goaway_sent_ = true;
    h2_->GracefulShutdown();
  }
  Flush();
  if (fd < 0)
    return;
  // Done: GOAWAY exchanged and no stream left, or a protocol error's GOAWAY is out.
  // closing_: the socket ended or failed; streams still open are aborted.
  if (h2_->Done() || closing_) {
    Close();
    return;
  }
  ArmDeadlines();
  Account();
}

void H2Downstream::ArmDeadlines() {
  const int64_t at = h2_->CheckDeadlines();
  if (!touched_.empty() || flush_due_) {
    w->Arm(timer, 0);
  } else if (at < 0) {
    w->Cancel(timer);
  } else {
    w->Arm(timer, std::max<int64_t>(0, at - w->now()));
  }
}

void H2Downstream::Account() {
  const std::size_t now = wbuf_.size() + (tls_ ? tls_->buffered() : 0);
  if (now != accounted_) {
    w->budget().Charge(now, accounted_);
    accounted_ = now;
  }
}

void H2Downstream::FlushSoon() {
  if (flush_due_)
    return;
  flush_due_ = true;
  w->Arm(timer, 0);  // runs after this batch of events (the worker's timers), then Pump
}

void H2Downstream::Flush() {
  flush_due_ = false;
  if (fd < 0 || !h2_)
    return;
  while (true) {
    bool full = false;
    while (true) {
      if (wbuf_.size() >= 256 * 1024) {
        full = true;
        break;
      }
      const std::string_view p = h2_->PendingOutput();
      if (p.empty())
        break;
      wbuf_.Append(p);
      h2_->ConsumeOutput(p.size());
    }
    if (wbuf_.empty())
      return;
    const int rc = tls_ ? tls_->Send(w->loop(), fd, wbuf_) : w->loop().Send(fd, wbuf_);
    if (rc != 0) {
      wbuf_.Clear();
      closing_ = true;
      return;
    }
    if (!wbuf_.empty() || !full)
      return;  // EPOLLOUT calls back; or the h2 session has nothing more
  }
}

void H2Downstream::OnHead(int32_t id, const h2::Head& head, bool end_stream) {
  Stream& st = streams_[id];
  if (head.method == "CONNECT") {
    // Neither CONNECT nor extended CONNECT is served on HTTP/2 streams.
    h2_->ResetStream(id, h2::kRefusedStream);
    return;
  }
  Session* s = w->sessions().NewSession();
  s->OpenStream(*this, id);
  st.s = s;
  st.sgen = s->gen;
  st.head_request = head.method == "HEAD";
  // The head as HTTP/1.1 text, written in one piece: its size is bounded first.
  std::size_t need = head.method.size() + head.path.size() + head.authority.size() + 64;
  for (const h2::Field& f : head.fields)
    need += f.name.size() + f.value.size() + 4;
  Buffer& b = s->in;
  std::size_t avail = 0;
  char* const start = b.WritePtr(need, &avail);
  char* o = start;
  auto put = [&o](std::string_view v) {
    if (!v.empty())
      std::memcpy(o, v.data(), v.size());
    o += v.size();
  };
  put(head.method);
  put(" ");
  put(head.path);
  put(" HTTP/1.1\r\n");
  if (!head.authority.empty()) {
    put("host: ");
    put(head.authority);
    put("\r\n");
  }
  bool has_length = false, cookies = false;
  for (const h2::Field& f : head.fields) {
    if (Is(f.name, "host")) {
      if (!head.authority.empty())
        continue;  // :authority wins (RFC 9113 §8.3.1)
    } else if (Is(f.name, "cookie")) {
      cookies = true;  // joined into one field below (RFC 9113 §8.2.3)
      continue;
    } else if (Is(f.name, "content-length")) {
      has_length = true;
    }
    put(f.name);
    put(": ");
    put(f.value);
    put("\r\n");
  }
  if (cookies) {
    put("cookie: ");
    bool first = true;
    for (const h2::Field& f : head.fields) {
      if (!Is(f.name, "cookie"))
        continue;
      if (!first)
        put("; ");
      put(f.value);
      first = false;
    }
    put("\r\n");
  }
  if (end_stream) {
    if (!has_length)
      put("content-length: 0\r\n");
    st.req_ended = true;
  } else if (!has_length) {
    put("transfer-encoding: chunked\r\n");
    st.req_chunked = true;
  }
  put("\r\n");
  b.Commit(static_cast<std::size_t>(o - start));
  st.queued = true;
  touched_.push_back(id);
}

void H2Downstream::OnData(int32_t id, std::string_view data, bool end_stream) {
  auto it = streams_.find(id);
  Session* s = it == streams_.end() ? nullptr : it->second.s;
  if (!s || s->gen != it->second.sgen || it->second.req_ended) {
    h2_->Consume(id, data.size());  // answered already: the rest is dropped
    return;
  }
  Stream& st = it->second;
  if (st.req_chunked) {
    if (!data.empty()) {
      char size[24];
      auto r = std::to_chars(size, size + sizeof(size) - 2, data.size(), 16);
      *r.ptr++ = '\r';
      *r.ptr++ = '\n';
      AppendIn(s, std::string_view(size, static_cast<std::size_t>(r.ptr - size)));
      AppendIn(s, data);
      AppendIn(s, "\r\n");
    }
    if (end_stream)
      AppendIn(s, "0\r\n\r\n");
  } else {
    AppendIn(s, data);
  }
  if (end_stream)
    st.req_ended = true;
  s->last_io_ms = w->now();  // the request's stream_idle_timeout restarts, as for a read
  // In the Session's buffer: the client's windows open by as much (its body limits
  // answer a body too large, 413).
  h2_->Consume(id, data.size());
  if (!st.queued) {
    st.queued = true;
    touched_.push_back(id);
  }
}

void H2Downstream::OnTrailers(int32_t id, const h2::Head& trailers) {
  auto it = streams_.find(id);
  if (it == streams_.end() || !it->second.s || it->second.s->gen != it->second.sgen)
    return;
  Stream& st = it->second;
  if (st.req_chunked && !st.req_ended) {
    std::string t = "0\r\n";
    for (const h2::Field& f : trailers.fields) {
      t.append(f.name);
      t.append(": ");
      t.append(f.value);
      t.append("\r\n");
    }
    t.append("\r\n");
    AppendIn(st.s, t);
  }
  st.req_ended = true;
  if (!st.queued) {
    st.queued = true;
    touched_.push_back(id);
  }
}

void H2Downstream::OnStreamClose(int32_t id, uint32_t error_code) {
  auto it = streams_.find(id);
  if (it == streams_.end())
    return;
  Stream& st = it->second;
  if (!st.s || st.s->gen != st.sgen) {
    streams_.erase(it);
    return;
  }
  st.h2_closed = true;
  st.h2_error = error_code;
  if (error_code != h2::kNoError && !st.queued) {
    st.queued = true;
    touched_.push_back(id);
  }
}

bool H2Downstream::TakeOutput(Session* s) {
  auto it = streams_.find(s->h2_stream);
  if (it == streams_.end() || closing_)
    return false;
  Stream& st = it->second;
  if (st.h2_closed) {
    if (st.r != Stream::R::kDone)
      return false;
    s->out.Clear();
    return true;
  }
  bool failed = false;
  const std::size_t used = Convert(s->h2_stream, st, s->out.Data(), &failed);
  s->out.Consume(used);
  if (failed) {
    h2_->ResetStream(s->h2_stream, h2::kInternalError);
    return false;
  }
  // Framed and written once for all the streams that answer in this batch of events.
  if (!in_pump_)
    FlushSoon();
  return true;
}

std::size_t H2Downstream::Convert(int32_t id, Stream& st, std::string_view out, bool* failed) {
  using R = Stream::R;
  std::size_t used = 0;
  while (used < out.size() && st.r != R::kDone) {
    const std::string_view rest = out.substr(used);
    switch (st.r) {
      case R::kHead: {
        // (ParseResponse sets every field it reports: no reset of the 128 headers here.)
        const http::ParseStatus ps = http::ParseResponse(rest, st.head_request, &resp_);
        if (ps == http::ParseStatus::kIncomplete)
          return used;
        if (ps == http::ParseStatus::kError) {
          *failed = true;
          return used;
        }
        used += resp_.head_len;
        if (resp_.status < 200)
          continue;              // 100 Continue: HTTP/2 clients go on without it
        h2::Head& h = resp_h2_;  // reused: its fields' room is kept
        h.fields.clear();
        h.status = resp_.status;
        bool end = resp_.no_body || (!resp_.chunked && resp_.content_length == 0);
        // A gRPC trailers-only response (its status in the head, no body) goes as HEADERS
        // with END_STREAM and no content-length, as Envoy's HTTP/2 codec sends it: the
        // "content-length: 0" is only its HTTP/1.1 form (h2_upstream, LocalGrpc), and a
        // gRPC client would show it as trailing metadata.
        bool drop_length = false;
        if (end && resp_.content_length == 0) {
          for (std::size_t i = 0; i < resp_.num_headers && !drop_length; ++i)
            drop_length = http::EqualsIgnoreCase(resp_.headers[i].name, "grpc-status");
        }
        for (std::size_t i = 0; i < resp_.num_headers; ++i) {
          const http::Header& f = resp_.headers[i];
          using enum http::HeaderId;
          if (f.id == kConnection || f.id == kKeepAlive || f.id == kProxyConnection ||
              f.id == kTransferEncoding || f.id == kUpgrade ||
              (drop_length && f.id == kContentLength))
            continue;
          h.fields.push_back({f.name, f.value});
        }
        if (end)
          st.r = R::kDone;
        else if (resp_.chunked)
          st.r = R::kChunkSize;
        else if (resp_.content_length > 0) {
          st.r = R::kLength;
          st.remaining = static_cast<uint64_t>(resp_.content_length);
        } else {
          st.r = R::kEof;  // close-delimited: the stream ends when the Session does
        }
        if (!h2_->SubmitResponse(id, h, end)) {
          *failed = true;
          return used;
        }
        continue;
      }
      case R::kLength:
      case R::kEof:
      case R::kChunkData: {
        const std::size_t q = h2_->QueuedBytes(id);
        if (q >= kStreamWatermark)
          return used;
        std::size_t k = std::min(rest.size(), kStreamWatermark - q);
        if (st.r != R::kEof)
          k = static_cast<std::size_t>(std::min<uint64_t>(k, st.remaining));
        const bool end = st.r == R::kLength && k == st.remaining;
        if (!h2_->SendData(id, rest.substr(0, k), end)) {
          *failed = true;
          return used;
        }
        used += k;
        if (st.r != R::kEof) {
          st.remaining -= k;
          if (st.remaining == 0)
            st.r = st.r == R::kLength ? R::kDone : R::kChunkCrlf;
        }
        continue;
      }
      case R::kChunkCrlf:
        if (rest.size() < 2)
          return used;
        used += 2;
        st.r = R::kChunkSize;
        continue;
      case R::kChunkSize: {
        const std::size_t eol = rest.find("\r\n");
        if (eol == std::string_view::npos) {
          if (rest.size() > 1024)
            *failed = true;
          return used;
        }
        uint64_t size = 0;
        const char* b = rest.data();
        const char* e = rest.data() + std::min(eol, rest.find(';'));
        auto r = std::from_chars(b, e, size, 16);
        if (r.ec != std::errc() || r.ptr == b) {
          *failed = true;
          return used;
        }
        used += eol + 2;
        if (size == 0) {
          st.r = R::kTrailers;
        } else {
          st.r = R::kChunkData;
          st.remaining = size;
        }
        continue;
      }
      case R::kTrailers: {
        if (rest.size() >= 2 && rest.substr(0, 2) == "\r\n") {
          used += 2;
          st.r = R::kDone;
          if (!h2_->SendData(id, {}, true))
            *failed = true;
          return used;
        }
        const std::size_t end = rest.find("\r\n\r\n");
        if (end == std::string_view::npos) {
          if (rest.size() > 64 * 1024)
            *failed = true;
          return used;
        }
        std::vector<h2::Field> fields;
        for (auto [name, value] : http::TrailerFields(rest.substr(0, end + 2)))
          fields.push_back({name, value});
        used += end + 4;
        st.r = R::kDone;
        if (!h2_->SendTrailers(id, fields))
          *failed = true;
        return used;
      }
      case R::kDone:
        break;
    }
  }
  return used;
}

void H2Downstream::StreamSessionClosed(Session* s, bool aborted) {
  const int32_t id = s->h2_stream;
  auto it = streams_.find(id);
  if (it == streams_.end() || it->second.s != s)
    return;
  Stream& st = it->second;
  st.s = nullptr;
  if (closing_ || fd < 0) {
    streams_.erase(it);
    return;
  }
  const bool h2_closed = st.h2_closed;
  if (!h2_closed) {
    using R = Stream::R;
    if (st.r == R::kDone) {
      // Answered before the client finished its request: it may stop sending.
      if (!st.req_ended)
        h2_->ResetStream(id, h2::kNoError);
    } else if (st.r == R::kEof && !aborted) {
      h2_->SendData(id, {}, true);
    } else {
      // An incomplete response (an upstream reset, a timeout after the head): as Envoy.
      h2_->ResetStream(id, h2::kInternalError);
    }
  }
  it = streams_.find(id);
  if (it != streams_.end() && (h2_closed || it->second.h2_closed))
    streams_.erase(it);
  if (!in_pump_)
    FlushSoon();
}

void H2Downstream::Sweep(bool draining) {
  if (fd < 0)
    return;
  if (draining && !goaway_sent_) {
    goaway_sent_ = true;
    h2_->GracefulShutdown();
    Flush();
  }
  if (draining && streams_.empty()) {
    Close();
    return;
  }
  const int64_t limit = chain->http.idle_timeout.count();
  if (streams_.empty() && limit > 0 && w->now() - last_active_ms_ >= limit) {
    w->stats().cx_idle_timeout.fetch_add(1, std::memory_order_relaxed);
    if (!goaway_sent_) {
      goaway_sent_ = true;
      h2_->GracefulShutdown();
      Flush();
    }
    Close();
  }
}

void H2Downstream::Close() {
  if (fd < 0)
    return;
  closing_ = true;
  w->Cancel(timer);
  std::vector<std::pair<Session*, uint64_t>> live;
  for (auto& [id, st] : streams_) {
    if (st.s && st.s->gen == st.sgen)
      live.emplace_back(st.s, st.sgen);
  }
  for (auto [s, sg] : live) {
    if (s->gen == sg)
      s->Abort(kFlagDC);
  }
  streams_.clear();
  touched_.clear();
  if (tls_)
    tls_->Shutdown(w->loop(), fd);
  w->loop().Close(fd);
  fd = -1;
  w->stats().active_cx.fetch_sub(1, std::memory_order_relaxed);
  if (lcount_) {
    lcount_->active.fetch_sub(1, std::memory_order_relaxed);
    lcount_.reset();
  }
  w->budget().Charge(0, accounted_);
  accounted_ = 0;
  h2_.reset();
  tls_.reset();
  snap.reset();
  wbuf_.Clear();
  wbuf_.Shrink(0);
  w->sessions().ReleaseH2(this);
}

void H2Downstream::CloseSocket(EventLoop* loop) {
  if (fd < 0)
    return;
  if (loop)
    loop->Close(fd);
  else
    close(fd);
  fd = -1;
}

}  // namespace sluice::proxy::engine
