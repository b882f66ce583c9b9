// An upstream connection's events: connect completion and its timeout, writes, reads,
// and the response's framing (see upstream_conn.h).
#include "upstream_conn.h"

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>

#include "h2_upstream.h"
#include "upstream_pool.h"

namespace sluice::proxy::engine {
namespace {

constexpr uint32_t kEvOut = EPOLLOUT;

}  // namespace

void UpstreamConn::OnTimer(int) {
  // Connect timeout.
  if (connecting)
    Fail(UpFailure::kConnect);
}

void UpstreamConn::Fail(UpFailure f) {
  UpstreamOwner* o = owner;
  if (o) {
    o->OnUpFailure(this, f);  // the owner releases this connection
  } else {
    w->upstreams().ReleaseUpstream(this, false);
  }
}

void UpstreamConn::Flush() {
  if (h2) {
    uint64_t g = gen;
    h2->Submit(this);  // the request in `out` becomes (more of) its stream
    if (g == gen && out.empty() && owner)
      owner->OnUpDrained(this);
    return;
  }
  if (w->loop().Send(fd, out) != 0) {
    Fail(UpFailure::kReset);
    return;
  }
  uint32_t want = (events & ~EPOLLOUT) | (out.empty() ? 0u : kEvOut);
  SetEvents(want);
  if (out.empty() && owner)
    owner->OnUpDrained(this);
}

void UpstreamConn::ResumeStream() {
  h2->Resume(this);
}

void UpstreamConn::OnEvent(uint32_t ev) {
  if (fd < 0)
    return;  // released earlier in this epoll batch: the event is stale
  uint64_t g = gen;
  if (connecting) {
    if (!(ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
      return;
    int err = 0;
    socklen_t len = sizeof(err);
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0 || (ev & EPOLLERR)) {
      Fail(UpFailure::kConnect);
      return;
    }
    connecting = false;
    w->Cancel(connect_timer);
    sockaddr_storage ls{};
    socklen_t ll = sizeof(ls);
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&ls), &ll) == 0) {
      FormatAddr(ls, local_addr, sizeof(local_addr));
    }
    SetEvents(EPOLLIN | EPOLLRDHUP | (out.empty() ? 0u : kEvOut));
    if (owner)
      owner->OnUpConnected(this);
    if (g != gen)
      return;
    Flush();
    return;
  }
  if (ev & EPOLLOUT) {
    Flush();
    if (g != gen)
      return;
  }
  if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
    OnReadable();
}

void UpstreamConn::OnReadable() {
  uint64_t g = gen;
  if (!owner) {  // idle in the pool: data or EOF means the server is done with it
    w->upstreams().ReleaseUpstream(this, false);
    return;
  }
  while (!read_paused) {
    std::size_t avail;
    char* p = in.WritePtr(16384, &avail);
    ssize_t n = w->loop().Recv(fd, p, avail);
    if (n > 0) {
      in.Commit(static_cast<std::size_t>(n));
      if (static_cast<std::size_t>(n) < avail)
        break;
      if (in.size() > 256 * 1024)
        break;  // let the owner take some first
      continue;
    }
    if (n == 0) {
      peer_closed = true;
      break;
    }
    if (errno == EINTR)
      continue;
    if (errno == EAGAIN)
      break;
    peer_closed = true;
    break;
  }
  ProcessResponse();
  if (g != gen)
    return;
  if (owner) {
    owner->OnUpReadDone(this);
    if (g != gen)
      return;
  }
  if (peer_closed && owner) {
    if (tunnel) {
      owner->OnUpFailure(this, UpFailure::kReset);  // tunnel: EOF from upstream
    } else if (head_done && framing == Framing::kClose) {
      reusable = false;
      owner->OnUpDone(this);
    } else {
      Fail(UpFailure::kReset);
    }
  } else if (peer_closed) {
    w->upstreams().ReleaseUpstream(this, false);
  } else if (read_paused) {
    SetEvents(events & ~EPOLLIN);
  }
}

void UpstreamConn::ProcessResponse() {
  uint64_t g = gen;
  while (owner && !in.empty()) {
    if (tunnel) {
      std::string_view d = in.Data();
      owner->OnUpData(this, d);
      if (g != gen)
        return;
      in.Clear();
      return;
    }
    if (!head_done) {
      http::ParseStatus st = http::ParseResponse(in.Data(), head_request, &resp);
      if (st == http::ParseStatus::kIncomplete)
        return;
      if (st == http::ParseStatus::kError) {
        Fail(UpFailure::kProtocol);
        return;
      }
      if (resp.status == 101 && !upgrade_request) {
        Fail(UpFailure::kProtocol);  // switching protocols nobody asked for: as Envoy, a 502
        return;
      }
      if (resp.status >= 100 && resp.status < 200 && resp.status != 101) {
        in.Consume(resp.head_len);  // interim response: we answered 100-continue ourselves
        continue;
      }
      head_done = true;
      if (resp.status == 101) {
        framing = Framing::kNone;
      } else if (resp.no_body) {
        framing = Framing::kNone;
      } else if (resp.chunked) {
        framing = Framing::kChunked;
      } else if (resp.content_length >= 0) {
        framing = Framing::kLength;
        remaining = resp.content_length;
      } else {
        framing = Framing::kClose;
      }
      std::size_t head_len = resp.head_len;
      owner->OnUpHeaders(this);
      if (g != gen || !owner)
        return;
      in.Consume(head_len);
      if (resp.status == 101) {
        tunnel = true;
        continue;
      }
      if (framing == Framing::kNone || (framing == Framing::kLength && remaining == 0)) {
        reusable = resp.keep_alive && in.empty();
        owner->OnUpDone(this);
        return;
      }
      continue;
    }
    std::string_view d = in.Data();
    bool done = false;
    std::size_t take = d.size();
    switch (framing) {
      case Framing::kLength:
        take = std::min<std::size_t>(take, static_cast<std::size_t>(remaining));
        remaining -= static_cast<int64_t>(take);
        done = remaining == 0;
        break;
      case Framing::kChunked:
        take = chunk.Feed(d, nullptr);
        if (chunk.failed()) {
          Fail(UpFailure::kProtocol);
          return;
        }
        done = chunk.done();
        break;
      default:
        break;
    }
    owner->OnUpData(this, d.substr(0, take));
    if (g != gen || !owner)
      return;
    in.Consume(take);
    if (done) {
      reusable = resp.keep_alive && in.empty();
      owner->OnUpDone(this);
      return;
    }
    if (take == 0)
      return;
  }
}

}  // namespace sluice::proxy::engine
