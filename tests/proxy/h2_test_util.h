// Test helpers for the HTTP/2 layer: a handler that records every event, a pump between
// two in-memory sessions, a raw frame writer and reader (RFC 9113 §4.1 framing, written
// here so the attacks can send what no well-behaved library would), and HPACK blocks
// encoded with nghttp2's own deflater.
#pragma once

#include <nghttp2/nghttp2.h>

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "sluice/proxy/h2_session.h"

namespace h2test {

using sluice::proxy::h2::Field;
using sluice::proxy::h2::Head;
using sluice::proxy::h2::Session;

struct StreamLog {
  std::string method, scheme, authority, path;
  int status = 0;
  int heads = 0;
  std::vector<std::pair<std::string, std::string>> fields, trailers;
  std::string body;
  bool ended = false, closed = false;
  uint32_t close_code = 0;

  std::string Field(std::string_view name) const {
    for (auto& [n, v] : fields)
      if (n == name)
        return v;
    return {};
  }
};

// Records events; consumes delivered bytes at once unless told not to; calls on_end when
// a stream's peer side ended (a server answers there).
struct Recorder : sluice::proxy::h2::Handler {
  Session* session = nullptr;
  bool auto_consume = true;
  std::map<int32_t, StreamLog> streams;
  std::function<void(int32_t, StreamLog&)> on_end;
  uint64_t data_bytes = 0;

  void OnHead(int32_t id, const Head& h, bool end) override {
    StreamLog& s = streams[id];
    ++s.heads;
    s.method = h.method;
    s.scheme = h.scheme;
    s.authority = h.authority;
    s.path = h.path;
    s.status = h.status;
    s.fields.clear();
    for (const auto& f : h.fields)
      s.fields.emplace_back(std::string(f.name), std::string(f.value));
    if (end)
      End(id, s);
  }
  void OnData(int32_t id, std::string_view data, bool end) override {
    StreamLog& s = streams[id];
    s.body.append(data);
    data_bytes += data.size();
    if (auto_consume && !data.empty())
      session->Consume(id, data.size());
    if (end)
      End(id, s);
  }
  void OnTrailers(int32_t id, const Head& t) override {
    StreamLog& s = streams[id];
    for (const auto& f : t.fields)
      s.trailers.emplace_back(std::string(f.name), std::string(f.value));
    End(id, s);
  }
  void OnStreamClose(int32_t id, uint32_t code) override {
    StreamLog& s = streams[id];
    s.closed = true;
    s.close_code = code;
  }
  void End(int32_t id, StreamLog& s) {
    s.ended = true;
    if (on_end)
      on_end(id, s);
  }
};

// Moves bytes both ways until neither side has anything to say; returns bytes moved.
inline std::size_t Pump(Session& a, Session& b) {
  std::size_t total = 0;
  for (;;) {
    std::size_t moved = 0;
    for (auto [from, to] : {std::pair{&a, &b}, std::pair{&b, &a}}) {
      std::string chunk(from->PendingOutput());
      if (chunk.empty())
        continue;
      from->ConsumeOutput(chunk.size());
      to->Receive(chunk);
      moved += chunk.size();
    }
    total += moved;
    if (!moved)
      return total;
  }
}

// --- raw frames ---------------------------------------------------------------
enum : uint8_t {
  kData = 0,
  kHeaders = 1,
  kRst = 3,
  kSettings = 4,
  kPing = 6,
  kGoaway = 7,
  kWindowUpdate = 8,
  kContinuation = 9
};
enum : uint8_t { kEndStream = 0x1, kAck = 0x1, kEndHeaders = 0x4 };

inline std::string Frame(uint8_t type, uint8_t flags, uint32_t stream, std::string_view payload) {
  std::string f;
  uint32_t len = static_cast<uint32_t>(payload.size());
  f.push_back(static_cast<char>(len >> 16));
  f.push_back(static_cast<char>(len >> 8));
  f.push_back(static_cast<char>(len));
  f.push_back(static_cast<char>(type));
  f.push_back(static_cast<char>(flags));
  for (int shift = 24; shift >= 0; shift -= 8)
    f.push_back(static_cast<char>((stream & 0x7fffffff) >> shift));
  f.append(payload);
  return f;
}

inline std::string U32(uint32_t v) {
  std::string s;
  for (int shift = 24; shift >= 0; shift -= 8)
    s.push_back(static_cast<char>(v >> shift));
  return s;
}

inline std::string Settings(const std::vector<std::pair<uint16_t, uint32_t>>& entries) {
  std::string p;
  for (auto [id, v] : entries) {
    p.push_back(static_cast<char>(id >> 8));
    p.push_back(static_cast<char>(id));
    p.append(U32(v));
  }
  return Frame(kSettings, 0, 0, p);
}
inline std::string Rst(uint32_t id, uint32_t code) {
  return Frame(kRst, 0, id, U32(code));
}
inline std::string Ping(uint64_t v) {
  return Frame(kPing, 0, 0, U32(v >> 32) + U32(static_cast<uint32_t>(v)));
}
inline std::string WindowUpdate(uint32_t id, uint32_t inc) {
  return Frame(kWindowUpdate, 0, id, U32(inc));
}

// The client's opening: preface and an empty SETTINGS (or the given one).
inline std::string ClientStart(const std::string& settings = Settings({})) {
  return std::string(sluice::proxy::h2::kClientPreface) + settings;
}

// HPACK with nghttp2's deflater; one per connection (the dynamic table is shared state).
class Hpack {
 public:
  Hpack() { nghttp2_hd_deflate_new(&d_, 4096); }
  ~Hpack() { nghttp2_hd_deflate_del(d_); }
  Hpack(const Hpack&) = delete;
  Hpack& operator=(const Hpack&) = delete;
  std::string Encode(const std::vector<std::pair<std::string, std::string>>& fields) {
    std::vector<nghttp2_nv> nva;
    for (auto& [n, v] : fields)
      nva.push_back(
          {(uint8_t*)n.data(), (uint8_t*)v.data(), n.size(), v.size(), NGHTTP2_NV_FLAG_NONE});
    std::string out(nghttp2_hd_deflate_bound(d_, nva.data(), nva.size()), '\0');
    ssize_t n = nghttp2_hd_deflate_hd(d_, (uint8_t*)out.data(), out.size(), nva.data(), nva.size());
    out.resize(n < 0 ? 0 : static_cast<std::size_t>(n));
    return out;
  }

 private:
  nghttp2_hd_deflater* d_ = nullptr;
};

inline std::vector<std::pair<std::string, std::string>> Get(std::string path = "/") {
  return {{":method", "GET"}, {":scheme", "http"}, {":authority", "svc.test"}, {":path", path}};
}

struct RawFrame {
  uint8_t type, flags;
  uint32_t stream;
  std::string payload;
  uint32_t Code() const {  // RST_STREAM's code, GOAWAY's error code
    std::size_t at = type == kGoaway ? 4 : 0;
    if (payload.size() < at + 4)
      return ~0u;
    uint32_t v = 0;
    for (std::size_t i = at; i < at + 4; ++i)
      v = v << 8 | static_cast<uint8_t>(payload[i]);
    return v;
  }
};

// Splits a server's output (no preface) into frames.
inline std::vector<RawFrame> ParseFrames(std::string_view bytes) {
  std::vector<RawFrame> out;
  while (bytes.size() >= 9) {
    auto b = [&](std::size_t i) { return static_cast<uint8_t>(bytes[i]); };
    uint32_t len = b(0) << 16 | b(1) << 8 | b(2);
    if (bytes.size() < 9 + len)
      break;
    uint32_t sid = (b(5) << 24 | b(6) << 16 | b(7) << 8 | b(8)) & 0x7fffffff;
    out.push_back({b(3), b(4), sid, std::string(bytes.substr(9, len))});
    bytes.remove_prefix(9 + len);
  }
  return out;
}

// Everything the server wrote so far, drained.
inline std::vector<RawFrame> Drain(Session& s) {
  std::string out(s.PendingOutput());
  s.ConsumeOutput(out.size());
  return ParseFrames(out);
}

inline std::optional<RawFrame> FindFrame(const std::vector<RawFrame>& frames, uint8_t type,
                                         uint32_t stream = ~0u) {
  for (const RawFrame& f : frames)
    if (f.type == type && (stream == ~0u || f.stream == stream))
      return f;
  return std::nullopt;
}

}  // namespace h2test
