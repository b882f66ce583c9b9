// A hostile HTTP/1.1 upstream for the lifecycle fuzzer. Where TestUpstream is a
// well-behaved server, this one misbehaves on request: the second segment of the
// request path names a script ("/u/101close", "/r/partial-reset"), and the server
// answers 101 and hangs up, sends half a response and resets, stalls, sends a bad chunk
// size, and so on. Between requests it keeps connections alive, so the proxy's pool is
// exercised too.
//
// It also tells the fuzzer what the proxy left behind: how many connections it holds
// and how many of them are still busy (a request not answered, an upgraded tunnel), and
// it can close every connection on demand, so idle pooled connections go away and the
// proxy's connection gauges must come back to zero.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

namespace sluice::testing {

enum class Script : uint8_t {
  kOk,            // 200 with a content-length body; keep-alive
  kCloseAfter,    // 200 with `connection: close`, then a FIN
  kChunked,       // 200, chunked body in two chunks
  kCloseDelim,    // 200 without length: the body runs until the FIN
  kInterim,       // 100 Continue and 103 Early Hints, then 200
  kNoBody,        // 204
  kBig,           // 200 with a 512 KiB body (backpressure)
  kSlow,          // 200 after 200 ms
  k503,           // 503 (retried on routes that retry 5xx)
  kFlaky,         // reset on the first attempt (x-envoy-attempt-count: 1), 200 after
  kUpgradeClose,  // 101 Switching Protocols, then a FIN
  kUpgradeReset,  // 101 Switching Protocols, then a reset
  kUpgradeEcho,   // 101 Switching Protocols, then echoes bytes until the peer closes
  kPartialReset,  // head (content-length 1000) and 10 body bytes, then a reset
  kPartialClose,  // the same, then a FIN
  kHeadReset,     // half a status line, then a reset
  kStall,         // never answers (until the proxy hangs up)
  kStallBody,     // head and 10 of 1000 body bytes, then nothing
  kBadChunk,      // chunked head, then the chunk size "zz", then nothing
  kClose,         // a FIN, no answer
  kReset,         // a reset (SO_LINGER 0), no answer
};
inline constexpr int kNumScripts = static_cast<int>(Script::kReset) + 1;

std::string_view ScriptName(Script s);
// By name ("101close"); nullopt for an unknown name.
std::optional<Script> ParseScript(std::string_view name);
// A script that answers with 101 (the request should carry `upgrade`).
bool IsUpgradeScript(Script s);

class ScriptedUpstream {
 public:
  explicit ScriptedUpstream(std::string name);
  ~ScriptedUpstream();
  ScriptedUpstream(const ScriptedUpstream&) = delete;
  ScriptedUpstream& operator=(const ScriptedUpstream&) = delete;

  uint16_t port() const { return port_; }
  const std::string& name() const { return name_; }
  uint64_t requests() const { return requests_.load(); }
  uint64_t accepted() const { return accepted_.load(); }
  // Connections open now, and how many of them are busy: a request partly received or
  // not fully answered, or a tunnel after 101. A connection the proxy keeps idle in its
  // pool is open and not busy.
  std::size_t open() const { return open_.load(); }
  std::size_t busy() const { return busy_.load(); }
  // Closes every connection (a FIN) on the server's thread; returns once it has.
  void CloseAll();

 private:
  void Run();
  void Command(int cmd);

  std::string name_;
  int listen_fd_ = -1;
  int wake_fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<uint64_t> requests_{0}, accepted_{0};
  std::atomic<std::size_t> open_{0}, busy_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  int pending_cmd_ = 0;  // guarded by mu_: 1 close all, 2 stop
  uint64_t cmd_done_ = 0;
  std::thread thread_;
};

}  // namespace sluice::testing
