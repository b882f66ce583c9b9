// The lifecycle fuzzer's event model, shared by the driver that runs in a forked child
// (lifecycle_fuzz_child.cc) and the test that draws campaigns from a seed, watches the
// child and shrinks its failures (lifecycle_fuzz.cc, whose opening comment describes
// the design).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "scripted_upstream.h"
#include "sluice/proxy/proxy.h"

namespace sluice::testing::fuzz {

using Clock = std::chrono::steady_clock;

inline int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now().time_since_epoch())
      .count();
}

#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool kAsan = true;
#else
inline constexpr bool kAsan = false;
#endif

// Where a request goes; each is a route of the fuzzer's configuration (MakeConfig).
enum class Target : uint8_t {
  kUpstream,   // /u/<script>: cluster main, 300 ms route timeout
  kRetry,      // /r/<script>: main, 2 retries on 5xx/reset/connect-failure, 150 ms per try
  kMirror,     // /m/<script>: main, mirrored to shadow (which runs the same script)
  kLimited,    // /l/<script>: cluster limited (1 connection, 1 pending, 2 requests, 1 retry)
  kBlackhole,  // /b/x: a cluster whose SYNs are dropped (150 ms connect timeout, 1 retry)
  kDead,       // /d/x: a cluster whose port refuses (1 retry)
  kDirect,     // /direct: direct_response 200
  kRedirect,   // /redirect: 301
  kNoRoute,    // /nowhere: 404
  kNoCluster,  // /nc: a route to a cluster that does not exist: 503
  kMalformed,  // a request the codec rejects: 400, 413, 431 or 501
};
inline constexpr const char* kTargetPrefix[] = {"/u/",      "/r/",  "/m/",        "/l/",
                                                "/b/x",     "/d/x", "/direct",    "/redirect",
                                                "/nowhere", "/nc",  "(malformed)"};

bool UsesScript(Target t);
// The status the proxy must answer itself (0: it depends on an upstream).
int SelfAnswer(Target t);

enum class BodyKind : uint8_t { kNone, kLength, kChunked, kExpect };

// What the client does with the request.
enum class Mode : uint8_t {
  kFull,         // sends it all and reads the whole response (keeps the connection if it may)
  kHold,         // sends it all and leaves the response unread (a later Read takes it)
  kCutHead,      // sends part of the head, then drops the connection (or leaves it)
  kCutBody,      // sends the head and part of the body, then drops (or leaves)
  kDropEarly,    // sends it all, waits, drops before reading anything
  kMidResponse,  // reads the first bytes of the response, then drops
  kPipeline,     // sends it and a GET /direct in one write, reads both
};
inline constexpr const char* kModeName[] = {"read the whole response",
                                            "hold (response left unread)",
                                            "cut in the head",
                                            "cut in the body",
                                            "drop before the response",
                                            "drop mid-response",
                                            "pipeline a GET /direct behind it"};

enum class DropKind : uint8_t { kClose, kReset, kLeave };
inline constexpr const char* kDropName[] = {"close", "reset", "leave open"};

inline constexpr int kSlots = 3;
inline constexpr int kMalformedKinds = 7;

struct Event {
  enum class Kind : uint8_t { kRequest, kRead, kDrop, kBurst, kSleep } kind = Kind::kSleep;
  int slot = 0;
  // kRequest
  Target target = Target::kDirect;
  Script script = Script::kOk;
  bool head_method = false;
  BodyKind body = BodyKind::kNone;
  uint32_t body_len = 0;
  bool upgrade = false;
  int malformed = 0;
  Mode mode = Mode::kFull;
  uint32_t cut_permille = 500;  // where a cut falls, in the part that is cut
  int wait_ms = 0;              // before a drop
  // kRequest (how it ends), kDrop, kBurst (how its connections end)
  DropKind drop = DropKind::kClose;
  // kBurst
  uint32_t count = 0;
  // kSleep
  int ms = 0;
};

using Sequence = std::vector<Event>;

// The request's path, and the event in words (as traces print it).
std::string Path(const Event& e);
std::string Describe(const Event& e);

// What a run of the child needs from the parent.
struct Setup {
  proxy::IoBackend backend = proxy::IoBackend::kUring;
  std::string dir;  // scratch: the access log and the child's stderr
};

// The child: starts the engine and the upstreams, runs seqs[first..] and the checks
// after each, reports through out_fd (see Reporter in lifecycle_fuzz_child.cc), and
// exits: 0 when every sequence passed, 1 when an invariant failed.
[[noreturn]] void RunChild(const Setup& setup, const std::vector<Sequence>& seqs, std::size_t first,
                           int out_fd);

}  // namespace sluice::testing::fuzz
