// One HTTP/2 connection, transport-agnostic, over libnghttp2's callback API: framing,
// HPACK and flow control are nghttp2's; this layer adds what a proxy needs around them.
// Bytes come in through Receive(); bytes to write sit in PendingOutput() until the caller
// says how many it wrote (no sockets here, so the engine's event loop, a TLS layer or a
// test can carry them). Two roles:
//   server  (downstream): a client's requests arrive as per-stream events; the caller
//           answers with a response head, body (queued, sent as flow control allows) and
//           trailers, or resets the stream.
//   client  (upstream): the caller opens streams with a request and gets the responses
//           back as per-stream events; CanOpenStream() honours the peer's
//           SETTINGS_MAX_CONCURRENT_STREAMS for a multiplexed pool.
// Received body bytes open the peer's windows only when the caller Consume()s them, so a
// slow reader holds back the peer instead of buffering its data.
//
// Defences (each bounded by an Options field, counted in Stats, tested in
// tests/proxy/h2_attack_test.cc):
//   rapid reset (CVE-2023-44487)  streams the peer resets, or that are reset for its errors,
//                                 before min_stream_lifetime_ms: past Envoy's rule
//                                 (premature_reset_*) the connection gets GOAWAY
//                                 ENHANCE_YOUR_CALM and closes; nghttp2's RST_STREAM
//                                 token bucket stays on beneath it.
//   CONTINUATION flood            nghttp2's max_continuations (Debian's CVE-2024-28182
//                                 fix), and a header block that never ends is cut after
//                                 header_block_timeout_ms (CheckDeadlines).
//   HPACK bomb                    the decoded header list is counted field by field
//                                 against max_header_list_bytes / max_headers: the stream
//                                 is reset at the first field over, never stored; the
//                                 HPACK dynamic table is the 4096 bytes we advertise.
//   SETTINGS / PING flood         nghttp2's max_outbound_ack (Envoy's
//                                 max_outbound_control_frames, 1000) and max_settings;
//                                 output is pulled from nghttp2 only while PendingOutput()
//                                 is under max_pending_output, so a peer that does not read
//                                 fills nghttp2's ACK queue and trips it.
//   zero window held open         a stream with body queued and no send window is
//                                 "stalled" from the first time it is seen so; after
//                                 stall_timeout_ms CheckDeadlines() resets it.
//   empty DATA frames             max_consecutive_empty_frames (Envoy's
//                                 max_consecutive_inbound_frames_with_empty_payload, 1).
//   outbound frame flood          frames queued in nghttp2 for a peer that does not read
//                                 (RST_STREAMs for its bad requests): max_outbound_frames.
//   PRIORITY / WINDOW_UPDATE      Envoy's bounds relative to streams opened and DATA
//   floods                        frames sent (max_priority_frames_per_stream,
//                                 max_window_updates_per_data_frame).
// The clock is Options::now_ms (monotonic milliseconds), replaceable in tests.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

struct nghttp2_session;

namespace sluice::proxy::h2 {

enum class Role { kServer, kClient };

// The client connection preface "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" (RFC 9113 §3.4), for
// codec_type AUTO: kNeedMore while the bytes so far are a proper prefix of it.
enum class PrefaceMatch { kNo, kNeedMore, kYes };
PrefaceMatch LooksLikeH2Preface(std::string_view bytes);
inline constexpr std::string_view kClientPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// RFC 9113 error codes the caller may send.
enum ErrorCode : uint32_t {
  kNoError = 0x0,
  kProtocolError = 0x1,
  kInternalError = 0x2,
  kFlowControlError = 0x3,
  kRefusedStream = 0x7,
  kCancel = 0x8,
  kEnhanceYourCalm = 0xb,
};

struct Options {
  // Envoy's http2_protocol_options defaults, except the windows: Envoy's default is
  // 256 MiB each, which lets one stream park 256 MiB in a proxy; this is Envoy's edge
  // best-practice (64 KiB per stream, 1 MiB per connection), as the engine buffers by
  // budget.
  uint32_t max_concurrent_streams = 100;  // what we accept from the peer
  uint32_t initial_stream_window = 64 * 1024;
  uint32_t initial_connection_window = 1024 * 1024;
  uint32_t hpack_table_size = 4096;
  // The decoded header list: Envoy's max_request_headers_kb (60) and max_headers_count.
  // Sizes are counted as RFC 9113 §6.5.2 does: name + value + 32 per field.
  uint32_t max_header_list_bytes = 60 * 1024;
  uint32_t max_headers = 100;
  // nghttp2's own floods bounds.
  uint32_t max_outbound_ack = 1000;      // Envoy's max_outbound_control_frames
  uint32_t max_outbound_frames = 10000;  // Envoy's max_outbound_frames: all queued frames
  uint32_t max_settings = 32;            // entries per SETTINGS frame
  uint32_t max_continuations = 8;
  uint32_t max_consecutive_empty_frames = 1;
  uint32_t max_priority_frames_per_stream = 100;    // Envoy's default
  uint32_t max_window_updates_per_data_frame = 10;  // Envoy's default
  // Rapid reset: a stream closed by a reset (from the peer, or ours for its protocol
  // error) younger than min_stream_lifetime_ms is premature. Envoy's runtime defaults:
  // at premature_reset_total_streams closed streams, GOAWAY when half or more were
  // premature; before that, GOAWAY once premature resets reach half of it.
  int64_t min_stream_lifetime_ms = 1000;
  uint32_t premature_reset_total_streams = 500;
  // nghttp2's RST_STREAM token bucket (server only).
  uint32_t reset_burst = 1000, reset_rate_per_s = 33;
  // Slow peers (CheckDeadlines).
  int64_t header_block_timeout_ms = 10'000;
  int64_t stall_timeout_ms = 30'000;
  // Output framed ahead of the caller's writes.
  std::size_t max_pending_output = 64 * 1024;
  // Monotonic milliseconds; steady_clock when empty.
  std::function<int64_t()> now_ms;
};

struct Stats {
  uint64_t streams_opened = 0;  // by the peer (server) or by us (client)
  uint64_t streams_closed = 0;
  uint64_t resets_received = 0;
  uint64_t resets_sent = 0;
  uint64_t goaways_sent = 0;
  uint64_t goaways_received = 0;
  uint64_t refused_streams = 0;   // over max_concurrent_streams
  uint64_t messaging_errors = 0;  // malformed requests/responses (RFC 9113 §8.1.1)
  uint64_t premature_resets = 0;  // rapid reset accounting
  uint64_t rapid_reset_goaways = 0;
  uint64_t header_list_too_large = 0;  // HPACK bomb / oversize header list
  uint64_t too_many_headers = 0;
  uint64_t continuation_floods = 0;
  uint64_t header_block_timeouts = 0;
  uint64_t control_floods = 0;   // SETTINGS/PING ACKs piling up (nghttp2 FLOODED)
  uint64_t settings_floods = 0;  // too many entries in a SETTINGS frame
  uint64_t empty_frame_floods = 0;
  uint64_t priority_floods = 0;
  uint64_t outbound_floods = 0;  // frames queued for a peer that does not read
  uint64_t window_update_floods = 0;
  uint64_t stalled_stream_resets = 0;
  uint64_t max_header_list_seen = 0;  // largest decoded list kept, bytes (≤ the limit)
};

struct Field {
  std::string_view name, value;
};

// A request, response or trailer head. Views are valid during the callback only (server:
// OnHead's views live until the stream closes, so a router may keep them).
struct Head {
  // Request pseudo-headers (server role, and what SubmitRequest sends).
  std::string_view method, scheme, authority, path, protocol;
  // Response status (client role, and what SubmitResponse sends).
  int status = 0;
  std::vector<Field> fields;  // regular fields, lowercase names

  std::string_view Get(std::string_view name) const;
};

// Per-stream events. A stream's life: OnHead (maybe more than once on the client: 1xx
// heads, then the final one), OnData*, OnTrailers?, then OnStreamClose. end_stream marks
// the peer's last frame on the stream. A stream refused for its head (malformed, too
// large) gets only OnStreamClose. Callbacks may call the Session's Submit*/Send*/Reset*/
// Consume methods, never destroy it.
class Handler {
 public:
  virtual ~Handler() = default;
  virtual void OnHead(int32_t stream, const Head& head, bool end_stream) = 0;
  // The bytes are valid during the call; the caller Consume()s them (now or later) to
  // open the peer's window again.
  virtual void OnData(int32_t stream, std::string_view data, bool end_stream) = 0;
  virtual void OnTrailers(int32_t stream, const Head& trailers) = 0;
  // error_code kNoError: both sides ended it. Otherwise reset (by either side) or the
  // connection went away.
  virtual void OnStreamClose(int32_t stream, uint32_t error_code) = 0;
  virtual void OnGoaway(uint32_t /*error_code*/, int32_t /*last_stream*/) {}
};

class Session {
 public:
  Session(Role role, Handler* handler, Options options = {});
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Feeds received bytes. False when the connection is finished as a protocol matter:
  // error() says why; PendingOutput() still holds the GOAWAY to write before closing.
  bool Receive(std::string_view bytes);
  // The peer closed its side: streams still open close with kCancel.
  void ReceiveEof();

  // Bytes to write, then how many were written.
  std::string_view PendingOutput();
  void ConsumeOutput(std::size_t n);

  // The caller is done with n bytes that OnData delivered on stream (any order): the
  // stream's and the connection's windows open by n.
  void Consume(int32_t stream, std::size_t n);

  // Server role. A response head (status plus fields; no pseudo-headers in fields).
  bool SubmitResponse(int32_t stream, const Head& head, bool end_stream);
  // Client role: a new stream with this request; its id, or -1 (no room: see
  // CanOpenStream(), or the session is going away).
  int32_t SubmitRequest(const Head& head, bool end_stream);
  bool CanOpenStream() const;

  // Both roles: body bytes (copied into the stream's send queue, framed as windows
  // allow), and trailers that end the stream after the queued body.
  bool SendData(int32_t stream, std::string_view data, bool end_stream);
  bool SendTrailers(int32_t stream, const std::vector<Field>& trailers);
  // Body bytes queued on the stream and not yet framed: the caller's backpressure.
  std::size_t QueuedBytes(int32_t stream) const;
  bool ResetStream(int32_t stream, uint32_t error_code);

  // GOAWAY: graceful (no_error, streams in flight finish) or not.
  void GracefulShutdown();
  void Terminate(uint32_t error_code);

  // Enforces the time bounds (header blocks left open, stalled streams) at now_ms();
  // returns the next time it must be called, or -1 when nothing is pending.
  int64_t CheckDeadlines();

  // Nothing more to read or write: the caller closes the socket.
  bool Done() const;
  std::size_t open_streams() const { return streams_.size(); }
  const Stats& stats() const { return stats_; }
  // Why the connection ended (nullptr while it has not).
  const char* error() const { return error_.empty() ? nullptr : error_.c_str(); }
  Role role() const { return role_; }

 private:
  struct Stream;
  friend struct Callbacks;

  int64_t Now() const;
  Stream* Find(int32_t id) const;
  // Frames nghttp2 has queued into out_ (up to max_pending_output). Submit*, Send*,
  // Consume and Reset* only queue: the frames are made when the caller next looks at
  // PendingOutput (so a batch of responses is framed in one pass), after Receive, and
  // on a failure (its GOAWAY).
  void Flush();
  void UpdateStallClocks();
  void Fail(const char* why, uint32_t code);
  void OnStreamClosed(int32_t id, uint32_t code);
  void CheckPrematureResets();
  bool ResumeData(Stream* s);
  // Stream objects are reused (a request's buffers and vectors keep their room).
  std::unique_ptr<Stream> NewStream();
  void RecycleStream(std::unique_ptr<Stream> st);

  Role role_;
  Handler* handler_;
  Options opt_;
  nghttp2_session* ng_ = nullptr;
  std::unordered_map<int32_t, std::unique_ptr<Stream>> streams_;
  std::vector<std::unique_ptr<Stream>> spare_;
  // SubmitResponse's header list and lowered names (reused: no allocation per head).
  struct Scratch;
  std::unique_ptr<Scratch> scratch_;
  std::string out_;
  std::size_t out_pos_ = 0;
  Stats stats_;
  std::string error_;
  bool failed_ = false;
  // Rapid reset accounting.
  uint64_t closed_counted_ = 0;
  // Header block begun and not yet ended (CONTINUATION left open): since when.
  int64_t header_block_since_ = -1;
  uint32_t consecutive_empty_ = 0;
  uint64_t priority_frames_ = 0, window_update_frames_ = 0, data_frames_sent_ = 0;
  bool goaway_received_ = false;
  bool busy_ = false;  // inside nghttp2_session_mem_recv/mem_send
};

}  // namespace sluice::proxy::h2
