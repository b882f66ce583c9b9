// One connection to an upstream endpoint: connecting (with its timeout), writing the
// request its owner serialised into `out`, and reading the response. It parses the
// response head and frames the body (content-length, chunked, close-delimited, or a
// tunnel after a 101) and hands both to its owner, a Session or a Mirror, through
// UpstreamOwner. The pool (upstream_pool.h) opens, reuses and releases it.
//
// On an HTTP/2 cluster it is a *stream* instead (h2 set): no socket of its own, one
// request on a connection an H2Upstream (h2_upstream.h) shares among many. Its owner
// does not see the difference: it still writes an HTTP/1.1 request into `out` and calls
// Flush(), which translates it into a stream; the response is written back into `in` as
// HTTP/1.1 and framed by the same ProcessResponse.
#pragma once

#include <sys/epoll.h>

#include <cstdint>
#include <memory>
#include <string_view>

#include "sluice/proxy/buffer.h"
#include "sluice/proxy/config.h"
#include "sluice/proxy/http_codec.h"
#include "sluice/proxy/retry.h"
#include "snapshot.h"
#include "timer_heap.h"
#include "worker_context.h"

namespace sluice::proxy::engine {

class UpstreamConn;
class H2Upstream;

using UpFailure = UpstreamFailure;

struct UpstreamOwner {
  virtual void OnUpConnected(UpstreamConn*) {}
  virtual void OnUpHeaders(UpstreamConn*) = 0;
  virtual void OnUpData(UpstreamConn*, std::string_view data) = 0;
  virtual void OnUpDone(UpstreamConn*) = 0;
  virtual void OnUpFailure(UpstreamConn*, UpFailure) = 0;
  virtual void OnUpDrained(UpstreamConn*) {}
  // Everything read from the upstream in one event has been handed over.
  virtual void OnUpReadDone(UpstreamConn*) {}
  virtual ~UpstreamOwner() = default;
};

class UpstreamConn final : public Handler, public TimerOwner {
 public:
  WorkerContext* w = nullptr;
  int fd = -1;
  uint64_t gen = 0;
  std::shared_ptr<const Snapshot> snap;
  const Cluster* cluster = nullptr;
  Endpoint* ep = nullptr;
  UpstreamOwner* owner = nullptr;
  bool connecting = false;
  bool tunnel = false;
  bool read_paused = false;
  bool peer_closed = false;
  bool counted = false;
  bool head_request = false;
  bool upgrade_request = false;  // a 101 answers only a request that asked to upgrade
  bool reusable = false;
  bool mirror_conn = false;  // opened for mirror copies (counted against their cap)
  uint32_t events = 0;
  Buffer in, out;
  http::ResponseHead resp;
  bool head_done = false;
  enum class Framing { kNone, kLength, kChunked, kClose } framing = Framing::kNone;
  int64_t remaining = 0;
  http::ChunkedDecoder chunk;
  Timer connect_timer;
  char local_addr[64] = "-";
  // Stream mode: the HTTP/2 connection it rides (nullptr: a connection of its own).
  // `fd` is then that connection's socket, never closed through here; `connecting`
  // follows the connection's connect.
  H2Upstream* h2 = nullptr;
  struct H2Stream {
    int32_t id = -1;            // -1: the request is not submitted yet
    bool head_sent = false;     // the request head is a stream
    bool body_chunked = false;  // the request body as it is in `out`
    int64_t body_left = 0;
    http::ChunkedDecoder body_chunk;
    bool request_done = false;
    bool resp_head = false;     // the final response head is in `in`
    bool resp_chunked = false;  // ... with transfer-encoding: chunked added
    bool ended = false;         // the server ended its side
    bool closed = false;        // the stream is closed (close_code: how)
    uint32_t close_code = 0;
    bool dirty = false;       // has events to hand to the owner
    uint64_t unconsumed = 0;  // DATA bytes not yet given back to the server's window
  } h2s;

  void OnEvent(uint32_t ev) override;
  void OnTimer(int kind) override;
  void SetEvents(uint32_t ev) {
    if (h2)
      return;  // a stream: its connection's socket is not its own
    if (ev != events) {
      events = ev;
      w->loop().Modify(fd, ev, this);
    }
  }
  void Flush();
  void ResetResponse() {
    head_done = false;
    framing = Framing::kNone;
    remaining = 0;
    chunk.Reset();
    reusable = false;
  }
  // A stream's pause holds back the server's window for this stream only (its DATA is
  // not Consume()d), never the connection.
  void PauseRead(bool pause) {
    if (read_paused == pause)
      return;
    read_paused = pause;
    if (h2) {
      if (!pause)
        ResumeStream();
      return;
    }
    SetEvents(pause ? (events & ~EPOLLIN) : (events | EPOLLIN));
  }

 private:
  friend class H2Upstream;
  void ResumeStream();
  void OnReadable();
  void ProcessResponse();
  void Fail(UpFailure f);
};

}  // namespace sluice::proxy::engine
