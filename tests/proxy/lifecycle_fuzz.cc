// The lifecycle fuzzer: seeded random sequences of connection events driven through the
// real engine (proxy::Proxy in-process, one worker, io_uring or epoll) over loopback
// sockets, against hostile upstreams (scripted_upstream.h), with the engine's invariants
// checked after every sequence. It exists because the bugs that hurt a proxy live in
// the order of events: an upgrade whose upstream hangs up, then a request the proxy
// answers itself; a burst of connections; a client that resets while a retry waits.
//
// How a run is organised:
// - A seed determines a campaign: a list of sequences, each a list of events (open,
//   send a whole or partial request, reset or close at some point, read, burst,
//   sleep). Events are generated up front, independent of what happens when they run,
//   so the seed alone reproduces the campaign.
// - A forked child process runs the engine, the upstreams and the driver, and reports
//   each event before it runs and its result after, through a pipe. The parent (the
//   Catch2 test) only watches: a child killed by a signal, stopped by a sanitizer, or
//   silent for too long is a failure at the event it was running, not a dead test
//   binary. After a failure the campaign goes on in a fresh child.
// - After each sequence the child closes its connections and checks: every cluster's
//   active_requests, pending_requests and active_retries and the proxy's active_cx are
//   back to zero; the upstreams hold no busy connection; once the upstreams close
//   their idle connections, every active_connections gauge is zero and the process has
//   no more descriptors than at the start; the listener still answers well-formed
//   requests (a direct response, a proxied request, one to the circuit-broken
//   cluster); RSS grew by less than a stated margin.
// - A failure is shrunk by replaying subsets in fresh children (whole sequences first,
//   then events, then burst sizes) and printed as the seed, the failing sequence as
//   it ran, and the smallest replay that still fails, event by event.
//
// Modes (environment): SLUICE_FUZZ_SECONDS=N runs random seeds for N seconds per
// backend; SLUICE_FUZZ_SEED=S runs that one seed; SLUICE_FUZZ_SEQUENCES=N sets the
// sequences per campaign; SLUICE_FUZZ_SHRINK=0 reports without shrinking. See the
// "Lifecycle fuzzer" section of docs/l7-proxy.md.
#include <dirent.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cinttypes>
#include <cstring>
#include <iostream>
#include <optional>
#include <random>
#include <thread>

#include "harness.h"
#include "scripted_upstream.h"

using namespace sluice::testing;
namespace proxy = sluice::proxy;

namespace {

using Clock = std::chrono::steady_clock;

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now().time_since_epoch())
      .count();
}

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kAsan = true;
#else
constexpr bool kAsan = false;
#endif

// Bounds. The longest legitimate wait is the blackhole route's 1 s timeout; after every
// client has gone, mirrors (300 ms route timeout) are the last to finish.
constexpr int kAnswerMs = kAsan ? 5000 : 2500;  // a request's answer, or a close
constexpr int kSettleMs = kAsan ? 4000 : 2000;  // gauges after every client closed
constexpr int kProbeMs = kAsan ? 4000 : 2000;   // a probe's connect and its answer

// ------------------------------------------------------------------ the event model

// SplitMix64: the same numbers from the same seed on every platform and library.
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed) {}
  uint64_t Next() {
    uint64_t z = (s_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  uint32_t Below(uint32_t n) { return static_cast<uint32_t>(Next() % n); }
  uint32_t Between(uint32_t lo, uint32_t hi) { return lo + Below(hi - lo + 1); }
  bool Percent(uint32_t p) { return Below(100) < p; }
  // An index drawn by weight.
  template <std::size_t N>
  std::size_t Pick(const uint32_t (&weights)[N]) {
    uint32_t total = 0;
    for (uint32_t w : weights)
      total += w;
    uint32_t r = Below(total);
    for (std::size_t i = 0; i < N; ++i) {
      if (r < weights[i])
        return i;
      r -= weights[i];
    }
    return N - 1;
  }

 private:
  uint64_t s_;
};

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
constexpr const char* kTargetPrefix[] = {"/u/",      "/r/",  "/m/",        "/l/",
                                         "/b/x",     "/d/x", "/direct",    "/redirect",
                                         "/nowhere", "/nc",  "(malformed)"};

bool UsesScript(Target t) {
  return t == Target::kUpstream || t == Target::kRetry || t == Target::kMirror ||
         t == Target::kLimited;
}

// The status the proxy must answer itself (0: it depends on an upstream).
int SelfAnswer(Target t) {
  switch (t) {
    case Target::kDirect:
      return 200;
    case Target::kRedirect:
      return 301;
    case Target::kNoRoute:
      return 404;
    case Target::kNoCluster:
    case Target::kDead:
      return 503;
    case Target::kMalformed:
      return 400;  // or another 4xx/5xx: see CheckAnswer
    default:
      return 0;
  }
}

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
constexpr const char* kModeName[] = {"read the whole response",
                                     "hold (response left unread)",
                                     "cut in the head",
                                     "cut in the body",
                                     "drop before the response",
                                     "drop mid-response",
                                     "pipeline a GET /direct behind it"};

enum class DropKind : uint8_t { kClose, kReset, kLeave };
constexpr const char* kDropName[] = {"close", "reset", "leave open"};

constexpr int kSlots = 3;
constexpr int kMalformedKinds = 7;

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

std::string Path(const Event& e) {
  if (UsesScript(e.target))
    return std::string(kTargetPrefix[static_cast<int>(e.target)]) +
           std::string(ScriptName(e.script));
  return kTargetPrefix[static_cast<int>(e.target)];
}

std::string Describe(const Event& e) {
  char buf[256];
  switch (e.kind) {
    case Event::Kind::kRequest: {
      std::string s = "s" + std::to_string(e.slot) + " ";
      if (e.target == Target::kMalformed) {
        s += "malformed #" + std::to_string(e.malformed);
      } else {
        s += e.head_method && e.body == BodyKind::kNone ? "HEAD "
             : e.body == BodyKind::kNone                ? "GET "
                                                        : "POST ";
        s += Path(e);
        if (e.body != BodyKind::kNone) {
          s += " (body " + std::to_string(e.body_len);
          s += e.body == BodyKind::kChunked  ? ", chunked)"
               : e.body == BodyKind::kExpect ? ", expect 100-continue)"
                                             : ")";
        }
        if (e.upgrade)
          s += " +upgrade: websocket";
      }
      s += ", ";
      s += kModeName[static_cast<int>(e.mode)];
      switch (e.mode) {
        case Mode::kCutHead:
        case Mode::kCutBody:
          snprintf(buf, sizeof(buf), " at %u%%, wait %d ms, %s", e.cut_permille / 10, e.wait_ms,
                   kDropName[static_cast<int>(e.drop)]);
          s += buf;
          break;
        case Mode::kDropEarly:
          snprintf(
              buf, sizeof(buf), ": wait %d ms, %s", e.wait_ms,
              kDropName[static_cast<int>(e.drop == DropKind::kLeave ? DropKind::kClose : e.drop)]);
          s += buf;
          break;
        case Mode::kMidResponse:
          s += std::string(": ") + (e.drop == DropKind::kReset ? "reset" : "close");
          break;
        default:
          break;
      }
      return s;
    }
    case Event::Kind::kRead:
      return "s" + std::to_string(e.slot) + " read (finish what the slot holds)";
    case Event::Kind::kDrop:
      return "s" + std::to_string(e.slot) +
             " drop: " + (e.drop == DropKind::kReset ? "reset" : "close");
    case Event::Kind::kBurst:
      return "burst: " + std::to_string(e.count) + " connects, then " +
             (e.drop == DropKind::kReset ? "reset" : "close") + " them all";
    case Event::Kind::kSleep:
      return "sleep " + std::to_string(e.ms) + " ms";
  }
  return "?";
}

Event RandomRequest(Rng& r) {
  Event e;
  e.kind = Event::Kind::kRequest;
  e.slot = static_cast<int>(r.Below(kSlots));
  static constexpr uint32_t kTargetWeights[] = {30, 12, 10, 12, 3, 3, 8, 2, 5, 2, 8};
  e.target = static_cast<Target>(r.Pick(kTargetWeights));
  if (UsesScript(e.target)) {
    e.upgrade = r.Percent(12);
    if (e.upgrade && r.Percent(60)) {
      static constexpr Script kUp[] = {Script::kUpgradeEcho, Script::kUpgradeClose,
                                       Script::kUpgradeReset};
      e.script = kUp[r.Below(3)];
    } else if (r.Percent(30)) {
      e.script = Script::kOk;
    } else {
      e.script = static_cast<Script>(r.Below(kNumScripts));
    }
  }
  if (e.target == Target::kMalformed) {
    e.malformed = static_cast<int>(r.Below(kMalformedKinds));
  } else {
    static constexpr uint32_t kBodyWeights[] = {63, 22, 10, 5};
    e.body = static_cast<BodyKind>(r.Pick(kBodyWeights));
    e.head_method = e.body == BodyKind::kNone && r.Percent(12);
    if (e.body != BodyKind::kNone)
      e.body_len = r.Percent(70) ? r.Between(1, 2000) : r.Between(2001, 40000);
  }
  static constexpr uint32_t kModeWeights[] = {50, 10, 8, 7, 12, 8, 5};
  e.mode = static_cast<Mode>(r.Pick(kModeWeights));
  if (e.mode == Mode::kCutBody && e.body == BodyKind::kNone)
    e.mode = Mode::kCutHead;
  static constexpr uint32_t kDropWeights[] = {45, 40, 15};
  e.drop = static_cast<DropKind>(r.Pick(kDropWeights));
  e.cut_permille = r.Between(1, 999);
  e.wait_ms = r.Percent(40) ? 0 : static_cast<int>(r.Between(1, 150));
  return e;
}

struct CampaignShape {
  int sequences = 12;
  uint32_t burst_max = 3000;
};

std::vector<Sequence> Generate(uint64_t seed, const CampaignShape& shape) {
  Rng r(seed);
  std::vector<Sequence> out;
  for (int s = 0; s < shape.sequences; ++s) {
    Sequence seq;
    int n = static_cast<int>(r.Between(3, 8));
    for (int i = 0; i < n; ++i) {
      static constexpr uint32_t kKindWeights[] = {72, 8, 8, 3, 6};
      Event e;
      switch (r.Pick(kKindWeights)) {
        case 0:
          e = RandomRequest(r);
          break;
        case 1:
          e.kind = Event::Kind::kRead;
          e.slot = static_cast<int>(r.Below(kSlots));
          break;
        case 2:
          e.kind = Event::Kind::kDrop;
          e.slot = static_cast<int>(r.Below(kSlots));
          e.drop = r.Percent(50) ? DropKind::kClose : DropKind::kReset;
          break;
        case 3:
          e.kind = Event::Kind::kBurst;
          e.count = r.Between(std::min<uint32_t>(200, shape.burst_max), shape.burst_max);
          e.drop = r.Percent(50) ? DropKind::kClose : DropKind::kReset;
          break;
        default:
          e.kind = Event::Kind::kSleep;
          e.ms = static_cast<int>(r.Between(20, 700));  // the idle timeout is 500 ms
          break;
      }
      seq.push_back(e);
    }
    out.push_back(std::move(seq));
  }
  return out;
}

// ------------------------------------------------------------------ the child: world

// The fuzzer's configuration: one listener, the routes of Target, five clusters.
Json MakeConfig(uint16_t main_port, uint16_t shadow_port, uint16_t limited_port,
                uint16_t blackhole_port, uint16_t dead_port, const std::string& log_path) {
  auto route = [](const std::string& prefix, const Json& action) {
    return Json{{"name", prefix}, {"match", {{"prefix", prefix}}}, {"route", action}};
  };
  Json backoff = {{"base_interval", "0.01s"}, {"max_interval", "0.05s"}};
  Json routes = Json::array({
      route("/u/", {{"cluster", "main"}, {"timeout", "0.3s"}}),
      route("/r/", {{"cluster", "main"},
                    {"timeout", "0.8s"},
                    {"retry_policy",
                     {{"retry_on", "5xx,reset,connect-failure"},
                      {"num_retries", 2},
                      {"per_try_timeout", "0.15s"},
                      {"retry_back_off", backoff}}}}),
      route("/m/", {{"cluster", "main"},
                    {"timeout", "0.3s"},
                    {"request_mirror_policies", {{{"cluster", "shadow"}}}}}),
      route("/l/",
            {{"cluster", "limited"},
             {"timeout", "0.3s"},
             {"retry_policy",
              {{"retry_on", "5xx,reset"}, {"num_retries", 1}, {"retry_back_off", backoff}}}}),
      route("/b/",
            {{"cluster", "blackhole"},
             {"timeout", "1s"},
             {"retry_policy",
              {{"retry_on", "connect-failure"}, {"num_retries", 1}, {"retry_back_off", backoff}}}}),
      route("/d/",
            {{"cluster", "dead"},
             {"timeout", "0.5s"},
             {"retry_policy",
              {{"retry_on", "connect-failure"}, {"num_retries", 1}, {"retry_back_off", backoff}}}}),
      {{"name", "direct"},
       {"match", {{"path", "/direct"}}},
       {"direct_response", {{"status", 200}, {"body", {{"inline_string", "direct\n"}}}}}},
      {{"name", "redirect"},
       {"match", {{"path", "/redirect"}}},
       {"redirect", {{"host_redirect", "elsewhere.local"}, {"path_redirect", "/x"}}}},
      route("/nc", {{"cluster", "missing"}}),
  });
  Json hcm = Hcm(RouteConfig("fuzz", routes), true);
  hcm["typed_config"]["common_http_protocol_options"] = {{"idle_timeout", "0.5s"}};
  hcm["typed_config"]["access_log"][0]["typed_config"]["path"] = log_path;
  Json limited = StaticCluster("limited", {limited_port});
  limited["circuit_breakers"] = {{"thresholds",
                                  {{{"priority", "DEFAULT"},
                                    {"max_connections", 1},
                                    {"max_pending_requests", 1},
                                    {"max_requests", 2},
                                    {"max_retries", 1}}}}};
  Json blackhole = StaticCluster("blackhole", {blackhole_port});
  blackhole["connect_timeout"] = "0.15s";
  Json dead = StaticCluster("dead", {dead_port});
  dead["connect_timeout"] = "0.5s";
  return {{"listeners", {Listener("http", Json::array({{{"filters", Json::array({hcm})}}}))}},
          {"clusters",
           {StaticCluster("main", {main_port}), StaticCluster("shadow", {shadow_port}), limited,
            blackhole, dead}}};
}

// What a run of the child needs from the parent.
struct Setup {
  proxy::IoBackend backend = proxy::IoBackend::kUring;
  std::string dir;  // scratch: the access log and the child's stderr
};

// The child's report channel: one line per record, "<tag> <text>".
//   S <seq>            a sequence starts      E <seq> <i> <text>  an event starts
//   R <text>           the event's result     C <text>            a check passed (summary)
//   P <text>           a check phase starts   F <signature>\t<detail>   an invariant failed
//   X                  the run ended cleanly
class Reporter {
 public:
  explicit Reporter(int fd) : fd_(fd) {}
  void Say(char tag, const std::string& text) {
    std::string line(1, tag);
    line += ' ';
    for (char c : text)
      line += (c == '\n' || c == '\r') ? ' ' : c;
    line += '\n';
    const char* p = line.data();
    std::size_t n = line.size();
    while (n > 0) {
      ssize_t w = write(fd_, p, n);
      if (w <= 0) {
        if (w < 0 && errno == EINTR)
          continue;
        _exit(3);  // the parent is gone
      }
      p += w;
      n -= static_cast<std::size_t>(w);
    }
  }
  [[noreturn]] void Fail(const std::string& signature, const std::string& detail) {
    Say('F', signature + "\t" + detail);
    _exit(1);  // no destructors: the engine may be wedged
  }

 private:
  int fd_;
};

std::size_t CountFds() {
  std::size_t n = 0;
  if (DIR* d = opendir("/proc/self/fd")) {
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] != '.')
        ++n;
    }
    closedir(d);
  }
  return n > 0 ? n - 1 : 0;  // the directory's own descriptor
}

std::size_t RssMiB() {
  std::ifstream f("/proc/self/statm");
  std::size_t pages = 0, resident = 0;
  f >> pages >> resident;
  return resident * static_cast<std::size_t>(sysconf(_SC_PAGESIZE)) / (1024 * 1024);
}

// The accept queue of the listening socket on 127.0.0.1:port (/proc/net/tcp: for a
// listener, rx_queue is the number of connections waiting for accept()); -1: not found.
long ListenQueueDepth(uint16_t port) {
  std::ifstream f("/proc/net/tcp");
  std::string line;
  char want[16];
  snprintf(want, sizeof(want), ":%04X", port);
  while (std::getline(f, line)) {
    std::istringstream is(line);
    std::string sl, local, remote, st, queues;
    is >> sl >> local >> remote >> st >> queues;
    if (st == "0A" && local.size() > 5 && local.substr(local.size() - 5) == want)
      return static_cast<long>(std::stoul(queues.substr(queues.find(':') + 1), nullptr, 16));
  }
  return -1;
}

std::string ListenQueue(uint16_t port) {
  long n = ListenQueueDepth(port);
  if (n < 0)
    return "no listening socket found for the port";
  return "its accept queue holds " + std::to_string(n) + " connection(s)";
}

void ResetClose(int fd) {
  linger l{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
  close(fd);
}

// A non-blocking connect to the proxy, waited for up to timeout_ms; -1 when it did not
// complete (the listen queue is full, or nothing listens).
int ConnectWithin(uint16_t port, int timeout_ms) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 && errno != EINPROGRESS) {
    close(fd);
    return -1;
  }
  pollfd p{fd, POLLOUT, 0};
  int err = 0;
  socklen_t len = sizeof(err);
  if (poll(&p, 1, timeout_ms) != 1 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 ||
      err != 0) {
    ResetClose(fd);
    return -1;
  }
  return fd;
}

// Sends everything within timeout_ms; false when the peer is gone or it would not go.
bool SendAll(int fd, std::string_view data, int timeout_ms = 2000) {
  int64_t end = NowMs() + timeout_ms;
  while (!data.empty()) {
    ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n > 0) {
      data.remove_prefix(static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && errno == EAGAIN) {
      int left = static_cast<int>(end - NowMs());
      pollfd p{fd, POLLOUT, 0};
      if (left <= 0 || poll(&p, 1, left) <= 0)
        return false;
      continue;
    }
    return false;
  }
  return true;
}

// What a client read: responses parsed, and how the read ended.
struct Reading {
  std::vector<int> statuses;  // final responses (and a 101), in order
  std::size_t bytes = 0;      // every byte received
  bool eof = false;           // FIN or reset
  bool reset = false;
  int recv_errno = 0;  // what recv failed with (ECONNRESET for a reset)
  bool timed_out = false;
  bool keep_alive = true;  // of the last response
  bool partial = false;    // a response started and did not finish
  std::string Text() const {
    std::string s;
    for (int st : statuses)
      s += (s.empty() ? "" : ", ") + std::to_string(st);
    if (s.empty())
      s = "no response";
    if (partial)
      s += ", then part of a response";
    if (eof && reset && recv_errno != ECONNRESET)
      s += std::string(", then recv failed: ") + strerrorname_np(recv_errno);
    else if (eof)
      s += reset ? ", then reset" : ", then EOF";
    else if (timed_out)
      s += ", then nothing (timed out)";
    s += " [" + std::to_string(bytes) + " bytes]";
    return s;
  }
};

// Reads until `want` responses are complete (a 101 counts and ends the read), EOF, or
// the timeout. HEAD responses have no body. stop_after_bytes > 0 stops at that many.
Reading ReadAnswers(int fd, std::string& buf, std::size_t want, int timeout_ms, bool head_request,
                    std::size_t stop_after_bytes = 0) {
  Reading r;
  int64_t end = NowMs() + timeout_ms;
  auto header = std::make_unique<proxy::http::ResponseHead>();
  while (true) {
    // Parse what is buffered.
    while (!buf.empty() && r.statuses.size() < want) {
      auto st = proxy::http::ParseResponse(buf, head_request, header.get());
      if (st != proxy::http::ParseStatus::kDone)
        break;
      const auto& h = *header;
      std::string_view rest = std::string_view(buf).substr(h.head_len);
      std::size_t used = 0;
      bool complete = false;
      if (h.status == 101) {
        r.statuses.push_back(101);
        buf.erase(0, h.head_len);
        r.partial = false;
        return r;
      }
      if (h.no_body) {
        complete = true;
      } else if (h.chunked) {
        proxy::http::ChunkedDecoder d;
        used = d.Feed(rest, nullptr);
        complete = d.done();
      } else if (h.content_length >= 0) {
        complete = rest.size() >= static_cast<std::size_t>(h.content_length);
        used = complete ? static_cast<std::size_t>(h.content_length) : 0;
      } else if (r.eof) {
        complete = true;
        used = rest.size();
      }
      if (!complete) {
        r.partial = true;
        break;
      }
      r.partial = false;
      buf.erase(0, h.head_len + used);
      if (h.status >= 100 && h.status < 200)
        continue;  // interim (100 Continue from the proxy itself)
      r.statuses.push_back(h.status);
      r.keep_alive = h.keep_alive && !h.close_delimited;
    }
    if (!buf.empty() && r.statuses.size() < want && !r.partial)
      r.partial = true;  // a head that has not completed
    if (r.statuses.size() >= want || r.eof)
      return r;
    if (stop_after_bytes > 0 && r.bytes >= stop_after_bytes)
      return r;
    int left = static_cast<int>(end - NowMs());
    pollfd p{fd, POLLIN, 0};
    if (left <= 0 || poll(&p, 1, left) <= 0) {
      r.timed_out = true;
      return r;
    }
    char tmp[65536];
    ssize_t n = recv(fd, tmp, sizeof(tmp), 0);
    if (n > 0) {
      buf.append(tmp, static_cast<std::size_t>(n));
      r.bytes += static_cast<std::size_t>(n);
    } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
      r.eof = true;
      r.reset = n < 0;
      r.recv_errno = n < 0 ? errno : 0;
    }
  }
}

// The bytes of an event's request: head and body, and the malformed variants.
struct Wire {
  std::string head, body;
  bool head_request = false;
};

Wire BuildRequest(const Event& e) {
  Wire w;
  const std::string common = "host: fuzz.local\r\nuser-agent: lifecycle-fuzz\r\n";
  if (e.target == Target::kMalformed) {
    switch (e.malformed) {
      case 0:
        w.head = "GET /direct HTTP/1.1\r\n" + common + "this line has no colon\r\n\r\n";
        break;
      case 1:
        w.head = "POST /direct HTTP/1.1\r\n" + common + "content-length: 12abc\r\n\r\n";
        break;
      case 2:
        w.head = "POST /u/ok HTTP/1.1\r\n" + common +
                 "content-length: 5\r\ntransfer-encoding: chunked\r\n\r\n";
        w.body = "0\r\n\r\n";
        break;
      case 3:
        w.head = "POST /u/ok HTTP/1.1\r\n" + common + "transfer-encoding: gzip\r\n\r\n";
        break;
      case 4:
        w.head =
            "GET /u/ok HTTP/1.1\r\n" + common + "x-big: " + std::string(70000, 'a') + "\r\n\r\n";
        break;
      case 5:
        w.head = "POST /u/ok HTTP/1.1\r\n" + common + "transfer-encoding: chunked\r\n\r\n";
        w.body = "zz\r\nhello\r\n0\r\n\r\n";
        break;
      default:
        w.head = std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11) +
                 std::string(64, '\x42') + "\r\n\r\n";
        break;
    }
    return w;
  }
  const char* method = e.body != BodyKind::kNone ? "POST" : (e.head_method ? "HEAD" : "GET");
  w.head_request = e.head_method && e.body == BodyKind::kNone;
  w.head = std::string(method) + " " + Path(e) + " HTTP/1.1\r\n" + common;
  if (e.upgrade)
    w.head += "connection: upgrade\r\nupgrade: websocket\r\n";
  std::string payload(e.body_len, 'b');
  switch (e.body) {
    case BodyKind::kNone:
      break;
    case BodyKind::kLength:
      w.head += "content-length: " + std::to_string(e.body_len) + "\r\n";
      w.body = payload;
      break;
    case BodyKind::kExpect:
      w.head += "expect: 100-continue\r\ncontent-length: " + std::to_string(e.body_len) + "\r\n";
      w.body = payload;
      break;
    case BodyKind::kChunked: {
      w.head += "transfer-encoding: chunked\r\n";
      std::size_t half = payload.size() / 2;
      char size[32];
      if (half > 0) {
        snprintf(size, sizeof(size), "%zx\r\n", half);
        w.body += size + payload.substr(0, half) + "\r\n";
      }
      snprintf(size, sizeof(size), "%zx\r\n", payload.size() - half);
      w.body += size + payload.substr(half) + "\r\n0\r\n\r\n";
      break;
    }
  }
  w.head += "\r\n";
  return w;
}

// One client connection of the driver.
struct Slot {
  enum class State { kNone, kIdle, kPartial, kInflight, kTunnel } state = State::kNone;
  int fd = -1;
  std::string buf;   // received, not yet parsed
  std::string rest;  // kPartial: the request's bytes not sent yet
  Event ev;          // kPartial, kInflight: the request it carries
  int64_t idle_since = 0;
  int64_t idle_before = 0;  // kInflight: how long the connection was idle before the request
  bool fresh = true;        // no request has completed on it yet
};

constexpr const char* kSlotState[] = {"none", "idle keep-alive", "partial request",
                                      "request in flight", "upgraded tunnel"};

class Driver {
 public:
  Driver(const Setup& setup, Reporter& rep) : setup_(setup), rep_(rep) {}
  void Start();
  void RunSequence(int index, const Sequence& seq);
  void Stop();

 private:
  std::string Run(const Event& e);
  std::string Request(Slot& s, const Event& e);
  std::string Finish(Slot& s, const Event& e, const Wire& w, bool reused, int64_t idle_ms);
  std::string CheckAnswer(const Event& e, const Reading& r, bool fresh, bool excuse_eof,
                          std::size_t expected = 1);
  std::string Read(Slot& s);
  std::string Tunnel(Slot& s, const Reading& first);
  std::string Burst(const Event& e);
  void DropSlot(Slot& s, DropKind how);
  void Settle(int index);
  void Probe(const char* what, const std::string& path, int want_status);
  void ProbeDirect(int connections);
  uint32_t Gauge(const std::string& cluster, int which);
  bool WaitUntil(const std::function<bool()>& ok, int timeout_ms);

  const Setup& setup_;
  Reporter& rep_;
  std::unique_ptr<ScriptedUpstream> main_, shadow_, limited_;
  int blackhole_fd_ = -1;
  std::vector<int> blackhole_fillers_;
  std::shared_ptr<const proxy::ProxyConfig> cfg_;
  std::unique_ptr<proxy::Proxy> proxy_;
  uint16_t port_ = 0;
  Slot slots_[kSlots];
  std::size_t base_fds_ = 0, base_rss_ = 0, max_rss_ = 0;
  std::size_t stderr_seen_ = 0;
  uint32_t burst_cap_ = 3000;
  int sequence_ = -1;
};

bool Driver::WaitUntil(const std::function<bool()>& ok, int timeout_ms) {
  int64_t end = NowMs() + timeout_ms;
  while (!ok()) {
    if (NowMs() >= end)
      return ok();
    usleep(2000);
  }
  return true;
}

void Driver::Start() {
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  // A burst holds a client socket and the proxy's accepted one per connection.
  burst_cap_ = static_cast<uint32_t>(
      std::clamp<rlim_t>(rl.rlim_cur > 2000 ? (rl.rlim_cur - 1000) / 2 : 200, 100, 3000));

  main_ = std::make_unique<ScriptedUpstream>("main");
  shadow_ = std::make_unique<ScriptedUpstream>("shadow");
  limited_ = std::make_unique<ScriptedUpstream>("limited");
  // The blackhole: a listener with a backlog of 0 whose queue is kept full, so the
  // kernel drops further SYNs and the proxy's connects hang until their timeout.
  blackhole_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(blackhole_fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  listen(blackhole_fd_, 0);
  socklen_t alen = sizeof(a);
  getsockname(blackhole_fd_, reinterpret_cast<sockaddr*>(&a), &alen);
  uint16_t blackhole_port = ntohs(a.sin_port);
  for (int i = 0; i < 2; ++i) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    blackhole_fillers_.push_back(fd);
  }
  uint16_t dead_port = FreeLoopbackPort();
  Json doc = MakeConfig(main_->port(), shadow_->port(), limited_->port(), blackhole_port, dead_port,
                        setup_.dir + "/access.log");
  auto cfg = CompileJson(doc);
  if (!cfg)
    rep_.Fail("setup: config", cfg.error().message);
  cfg_ = *cfg;
  proxy::ProxyOptions opts;
  opts.workers = 1;
  opts.io = setup_.backend;
  opts.access_log_path = setup_.dir + "/access.log";
  auto p = proxy::Proxy::Start(cfg_, opts);
  if (!p)
    rep_.Fail("setup: start", p.error().message);
  proxy_ = std::move(*p);
  if (proxy_->io_backend() != setup_.backend)
    rep_.Fail("setup: backend", "asked for " + std::string(proxy::IoBackendName(setup_.backend)) +
                                    ", got " + proxy::IoBackendName(proxy_->io_backend()) + " (" +
                                    proxy_->io_fallback_reason() + ")");
  port_ = proxy_->Port("http");
  // Warm up (pools, buffers, the first connections), then take the baselines.
  Settle(-1);
  base_fds_ = CountFds();
  base_rss_ = RssMiB();
  max_rss_ = base_rss_;
  rep_.Say('C', "started on " + std::string(proxy::IoBackendName(proxy_->io_backend())) +
                    ", port " + std::to_string(port_) + ", " + std::to_string(base_fds_) +
                    " descriptors, RSS " + std::to_string(base_rss_) + " MiB, bursts up to " +
                    std::to_string(burst_cap_));
}

void Driver::Stop() {
  for (Slot& s : slots_)
    DropSlot(s, DropKind::kClose);
  rep_.Say('P', "Proxy::Stop()");
  proxy_->Stop();
  rep_.Say('C', "stopped; RSS peaked at " + std::to_string(max_rss_) + " MiB (start " +
                    std::to_string(base_rss_) + " MiB)");
}

void Driver::DropSlot(Slot& s, DropKind how) {
  if (s.fd >= 0) {
    if (how == DropKind::kReset)
      ResetClose(s.fd);
    else
      close(s.fd);
  }
  s = Slot{};
}

void Driver::RunSequence(int index, const Sequence& seq) {
  sequence_ = index;
  rep_.Say('S', std::to_string(index));
  for (std::size_t i = 0; i < seq.size(); ++i) {
    rep_.Say('E', std::to_string(index) + " " + std::to_string(i) + " " + Describe(seq[i]));
    std::string result = Run(seq[i]);
    rep_.Say('R', result);
  }
  Settle(index);
}

std::string Driver::Run(const Event& e) {
  switch (e.kind) {
    case Event::Kind::kRequest:
      return Request(slots_[e.slot], e);
    case Event::Kind::kRead:
      return Read(slots_[e.slot]);
    case Event::Kind::kDrop: {
      Slot& s = slots_[e.slot];
      std::string was = kSlotState[static_cast<int>(s.state)];
      DropSlot(s, e.drop);
      return "dropped (it held: " + was + ")";
    }
    case Event::Kind::kBurst:
      return Burst(e);
    case Event::Kind::kSleep:
      usleep(static_cast<useconds_t>(e.ms) * 1000);
      return "slept";
  }
  return "?";
}

// The proxy answered within the bound, with the status it must give where it answers
// itself. Returns "" or a failure's signature and detail ("sig\tdetail"). excuse_eof:
// an EOF without an answer is allowed (the proxy may close a keep-alive connection
// that was idle near its idle timeout).
std::string Driver::CheckAnswer(const Event& e, const Reading& r, bool fresh, bool excuse_eof,
                                std::size_t expected) {
  if (r.timed_out && r.statuses.size() < expected) {
    // Nothing at all on a new connection while the listener has connections waiting:
    // the connection was never accepted.
    if (fresh && r.bytes == 0 && ListenQueueDepth(port_) > 0) {
      return std::string("listener: a well-formed request got no answer") +
             "\tno answer within the bound to: " + Describe(e) + " (" + r.Text() + "), on a new " +
             "connection; " + ListenQueue(port_);
    }
    return std::string("wedge: a request got neither an answer nor a close") +
           "\tno answer and no close within the bound after: " + Describe(e) + " (" + r.Text() +
           ")";
  }
  // Scripts that break a response after its head: the engine may have the head queued
  // and drop it with the connection, which a client cannot tell from no answer at all.
  const bool broken_after_head =
      UsesScript(e.target) && (e.script == Script::kBadChunk || e.script == Script::kPartialReset ||
                               e.script == Script::kPartialClose || e.script == Script::kStallBody);
  if (r.statuses.empty() && r.bytes == 0 && r.eof && !excuse_eof && !broken_after_head) {
    return std::string("dropped: the proxy closed without answering") +
           "\tthe proxy closed the connection without a response to: " + Describe(e) + " (" +
           r.Text() + ")";
  }
  int want = SelfAnswer(e.target);
  if (want != 0 && !r.statuses.empty()) {
    int got = r.statuses[0];
    bool ok = e.target == Target::kMalformed ? got >= 400 && got <= 599 : got == want;
    if (!ok) {
      return "answer: " + std::string(kTargetPrefix[static_cast<int>(e.target)]) +
             " answered wrongly\tgot " + std::to_string(got) + ", want " +
             (e.target == Target::kMalformed ? std::string("4xx/5xx") : std::to_string(want)) +
             " for: " + Describe(e);
    }
  }
  return "";
}

std::string Driver::Request(Slot& s, const Event& e) {
  std::string note;
  if (s.state != Slot::State::kNone && s.state != Slot::State::kIdle) {
    note = "(closed its " + std::string(kSlotState[static_cast<int>(s.state)]) + " first) ";
    DropSlot(s, e.drop == DropKind::kReset ? DropKind::kReset : DropKind::kClose);
  }
  bool reused = s.state == Slot::State::kIdle;
  int64_t idle_ms = reused ? NowMs() - s.idle_since : 0;
  if (!reused) {
    s.fd = ConnectWithin(port_, kProbeMs);
    if (s.fd < 0) {
      rep_.Fail("listener: connect did not complete",
                "a new connection to the proxy was not established within " +
                    std::to_string(kProbeMs) + " ms; " + ListenQueue(port_));
    }
    s.state = Slot::State::kIdle;
    s.fresh = true;
  }
  if (reused)
    note += "(reused, idle " + std::to_string(idle_ms) + " ms) ";
  Wire w = BuildRequest(e);
  std::string all = w.head + w.body;
  auto drop_or_leave = [&](std::size_t sent) {
    if (e.wait_ms > 0)
      usleep(static_cast<useconds_t>(e.wait_ms) * 1000);
    if (e.drop == DropKind::kLeave) {
      s.state = Slot::State::kPartial;
      s.rest = all.substr(sent);
      s.ev = e;
      return note + "sent " + std::to_string(sent) + " of " + std::to_string(all.size()) +
             " bytes, left open";
    }
    DropSlot(s, e.drop);
    return note + "sent " + std::to_string(sent) + " of " + std::to_string(all.size()) +
           " bytes, " + kDropName[static_cast<int>(e.drop)];
  };
  switch (e.mode) {
    case Mode::kCutHead: {
      std::size_t cut = std::max<std::size_t>(1, w.head.size() * e.cut_permille / 1000);
      bool sent = SendAll(s.fd, std::string_view(w.head).substr(0, cut));
      if (!sent)
        note += "(send failed) ";
      return drop_or_leave(cut);
    }
    case Mode::kCutBody: {
      std::size_t cut =
          w.head.size() + std::max<std::size_t>(1, w.body.size() * e.cut_permille / 1000);
      cut = std::min(cut, all.size() - 1);
      bool sent = SendAll(s.fd, std::string_view(all).substr(0, cut));
      if (!sent)
        note += "(send failed) ";
      return drop_or_leave(cut);
    }
    case Mode::kDropEarly: {
      SendAll(s.fd, all);
      if (e.wait_ms > 0)
        usleep(static_cast<useconds_t>(e.wait_ms) * 1000);
      DropSlot(s, e.drop == DropKind::kReset ? DropKind::kReset : DropKind::kClose);
      return note + "sent, " + (e.drop == DropKind::kReset ? "reset" : "closed");
    }
    case Mode::kHold: {
      SendAll(s.fd, all);
      s.state = Slot::State::kInflight;
      s.ev = e;
      s.idle_before = idle_ms;
      return note + "sent, response left unread";
    }
    case Mode::kMidResponse: {
      SendAll(s.fd, all);
      Reading r = ReadAnswers(s.fd, s.buf, 1, kAnswerMs, w.head_request, 1);
      DropSlot(s, e.drop == DropKind::kReset ? DropKind::kReset : DropKind::kClose);
      if (r.timed_out && r.bytes == 0) {
        std::string bad = CheckAnswer(e, r, !reused, false);
        std::size_t tab = bad.find('\t');
        rep_.Fail(bad.substr(0, tab), bad.substr(tab + 1));
      }
      return note + "read " + std::to_string(r.bytes) + " bytes, then " +
             (e.drop == DropKind::kReset ? "reset" : "closed");
    }
    case Mode::kPipeline:
    case Mode::kFull:
      break;
  }
  if (e.body == BodyKind::kExpect) {
    // The head first; the proxy answers 100 Continue itself (or a final status).
    if (!SendAll(s.fd, w.head))
      note += "(send failed) ";
    pollfd p{s.fd, POLLIN, 0};
    poll(&p, 1, 50);
    SendAll(s.fd, w.body);
  } else {
    std::string bytes = all;
    if (e.mode == Mode::kPipeline)
      bytes += "GET /direct HTTP/1.1\r\nhost: fuzz.local\r\n\r\n";
    if (!SendAll(s.fd, bytes))
      note += "(send failed) ";
  }
  return note + Finish(s, e, w, reused, idle_ms);
}

// Reads the answer to the request the slot just sent, checks it, and leaves the slot
// idle (keep-alive), tunnelled, or closed.
std::string Driver::Finish(Slot& s, const Event& e, const Wire& w, bool reused, int64_t idle_ms) {
  std::size_t expected = e.mode == Mode::kPipeline ? 2 : 1;
  Reading r = ReadAnswers(s.fd, s.buf, expected, kAnswerMs, w.head_request);
  // An idle keep-alive connection may be closed by the idle timeout (500 ms, swept
  // every 100 ms) just as the request goes out: an EOF without an answer is allowed.
  bool excuse = reused && idle_ms >= 450;
  std::string bad = CheckAnswer(e, r, !reused, excuse, expected);
  if (!bad.empty()) {
    std::size_t tab = bad.find('\t');
    rep_.Fail(bad.substr(0, tab), bad.substr(tab + 1));
  }
  if (!r.statuses.empty() && r.statuses.back() == 101 && !r.eof)
    return Tunnel(s, r);
  if (r.eof || !r.keep_alive || r.statuses.size() < expected || r.partial) {
    DropSlot(s, DropKind::kClose);
  } else {
    s.state = Slot::State::kIdle;
    s.idle_since = NowMs();
    s.fresh = false;
  }
  return r.Text();
}

// After a 101: the tunnel echoes (101echo) or ends (101close, 101reset).
std::string Driver::Tunnel(Slot& s, const Reading& first) {
  const std::string ping = "ping-" + std::to_string(NowMs() % 1000000) + "\n";
  SendAll(s.fd, ping);
  int64_t end = NowMs() + kAnswerMs;
  std::string got = s.buf;
  s.buf.clear();
  bool eof = false;
  while (got.size() < ping.size() && NowMs() < end) {
    pollfd p{s.fd, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(std::max<int64_t>(1, end - NowMs()))) <= 0)
      continue;
    char tmp[4096];
    ssize_t n = recv(s.fd, tmp, sizeof(tmp), 0);
    if (n > 0) {
      got.append(tmp, static_cast<std::size_t>(n));
    } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
      eof = true;
      break;
    }
  }
  std::string text = first.Text() + "; tunnel: ";
  if (eof) {
    DropSlot(s, DropKind::kClose);
    return text + "closed (" + std::to_string(got.size()) + " bytes back)";
  }
  if (got.size() < ping.size()) {
    rep_.Fail("wedge: an upgraded tunnel neither echoed nor closed",
              "sent " + std::to_string(ping.size()) + " bytes after 101, got " +
                  std::to_string(got.size()) + " back and no close within " +
                  std::to_string(kAnswerMs) + " ms");
  }
  s.state = Slot::State::kTunnel;
  return text + (got == ping ? "echoed" : "answered something else (" + got.substr(0, 40) + ")");
}

std::string Driver::Read(Slot& s) {
  switch (s.state) {
    case Slot::State::kNone:
      return "nothing open";
    case Slot::State::kIdle:
      return "idle: nothing to read";
    case Slot::State::kTunnel: {
      Reading none;
      none.statuses.push_back(101);
      return Tunnel(s, none);
    }
    case Slot::State::kPartial: {
      Event e = s.ev;
      if (!SendAll(s.fd, s.rest)) {
        DropSlot(s, DropKind::kClose);
        return "the rest of the request could not be sent; closed";
      }
      s.rest.clear();
      Wire w = BuildRequest(e);
      e.mode = Mode::kFull;
      return "sent the rest: " + Finish(s, e, w, !s.fresh, 0);
    }
    case Slot::State::kInflight: {
      Event e = s.ev;
      e.mode = Mode::kFull;
      Wire w = BuildRequest(e);
      return "read: " + Finish(s, e, w, !s.fresh, s.idle_before);
    }
  }
  return "?";
}

std::string Driver::Burst(const Event& e) {
  uint32_t n = std::min(e.count, burst_cap_);
  std::vector<int> fds;
  fds.reserve(n);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port_);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  uint32_t failed = 0;
  for (uint32_t i = 0; i < n; ++i) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      ++failed;
      continue;
    }
    if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 && errno != EINPROGRESS) {
      close(fd);
      ++failed;
      continue;
    }
    fds.push_back(fd);
  }
  // How many the kernel established (queued for the proxy) at once.
  std::vector<pollfd> ps;
  ps.reserve(fds.size());
  for (int fd : fds)
    ps.push_back(pollfd{fd, POLLOUT, 0});
  poll(ps.data(), ps.size(), 100);
  std::size_t up = 0;
  for (const pollfd& p : ps)
    up += (p.revents & POLLOUT) && !(p.revents & (POLLERR | POLLHUP)) ? 1 : 0;
  for (int fd : fds) {
    if (e.drop == DropKind::kReset)
      ResetClose(fd);
    else
      close(fd);
  }
  std::string s =
      std::to_string(fds.size()) + " connects (" + std::to_string(up) + " established at once";
  if (failed)
    s += ", " + std::to_string(failed) + " failed locally";
  if (n < e.count)
    s += ", capped at " + std::to_string(n) + " by the descriptor limit";
  return s + "), " + (e.drop == DropKind::kReset ? "reset" : "closed");
}

// which: 0 active_requests, 1 pending_requests, 2 active_retries, 3 active_connections
uint32_t Driver::Gauge(const std::string& cluster, int which) {
  const proxy::Cluster* c = cfg_->FindCluster(cluster);
  if (!c)
    return 0;
  switch (which) {
    case 0:
      return c->active_requests.load();
    case 1:
      return c->pending_requests.load();
    case 2:
      return c->active_retries.load();
    default:
      return c->active_connections.load();
  }
}

void Driver::Probe(const char* what, const std::string& path, int want_status) {
  rep_.Say('P', "checks: probe GET " + path);
  int fd = ConnectWithin(port_, kProbeMs);
  if (fd < 0) {
    rep_.Fail("listener: connect did not complete",
              std::string("probe ") + what + ": a new connection was not established within " +
                  std::to_string(kProbeMs) + " ms; " + ListenQueue(port_));
  }
  std::string req = "GET " + path + " HTTP/1.1\r\nhost: fuzz.local\r\nconnection: close\r\n\r\n";
  std::string buf;
  SendAll(fd, req);
  Reading r = ReadAnswers(fd, buf, 1, kProbeMs, false);
  close(fd);
  if (r.statuses.empty()) {
    rep_.Fail("listener: a well-formed request got no answer",
              std::string("probe ") + what + " (GET " + path + "): " + r.Text() + " within " +
                  std::to_string(kProbeMs) + " ms; " + ListenQueue(port_));
  }
  if (r.statuses[0] != want_status) {
    rep_.Fail(std::string("probe: ") + what + " answered wrongly",
              "GET " + path + " on an idle proxy answered " + std::to_string(r.statuses[0]) +
                  ", want " + std::to_string(want_status) + " (gauges: active_requests " +
                  std::to_string(Gauge("limited", 0)) + " on limited, " +
                  std::to_string(Gauge("main", 0)) + " on main)");
  }
}

void Driver::ProbeDirect(int connections) {
  rep_.Say('P', "checks: probe GET /direct on " + std::to_string(connections) +
                    " new connections at once");
  std::vector<int> fds;
  for (int i = 0; i < connections; ++i) {
    int fd = ConnectWithin(port_, kProbeMs);
    if (fd < 0) {
      rep_.Fail("listener: connect did not complete",
                "probe GET /direct: a new connection was not established within " +
                    std::to_string(kProbeMs) + " ms; " + ListenQueue(port_));
    }
    fds.push_back(fd);
  }
  const std::string req = "GET /direct HTTP/1.1\r\nhost: fuzz.local\r\nconnection: close\r\n\r\n";
  for (int fd : fds)
    SendAll(fd, req);
  for (int fd : fds) {
    std::string buf;
    Reading r = ReadAnswers(fd, buf, 1, kProbeMs, false);
    close(fd);
    if (r.statuses.empty()) {
      rep_.Fail("listener: a well-formed request got no answer",
                "probe GET /direct: " + r.Text() + " within " + std::to_string(kProbeMs) + " ms; " +
                    ListenQueue(port_));
    }
    if (r.statuses[0] != 200) {
      rep_.Fail("probe: direct answered wrongly",
                "GET /direct answered " + std::to_string(r.statuses[0]) + ", want 200");
    }
  }
}

void Driver::Settle(int index) {
  for (Slot& s : slots_)
    DropSlot(s, DropKind::kClose);
  int64_t t0 = NowMs();
  static const char* const kClusters[] = {"main", "shadow", "limited", "blackhole", "dead"};
  static const char* const kGauges[] = {"active_requests", "pending_requests", "active_retries",
                                        "active_connections"};
  const proxy::ProxyStats& st = proxy_->stats();
  // 1. Every downstream connection is closed in the engine too.
  rep_.Say('P', "checks: active_cx");
  if (!WaitUntil([&] { return st.active_cx.load() == 0; }, kSettleMs)) {
    rep_.Fail("stats: active_cx stays above zero",
              "active_cx is " + std::to_string(st.active_cx.load()) + " " +
                  std::to_string(kSettleMs) + " ms after every client connection closed");
  }
  // 2. Requests the proxy answers itself, on as many new connections at once as the
  //    driver had slots and one more: the engine reuses its connection objects, last
  //    released first, so state a closed connection left behind is met here.
  ProbeDirect(kSlots + 1);
  // 3. Every request is over: the gauges that count requests are back to zero, and the
  //    upstreams hold nothing busy.
  rep_.Say('P', "checks: request gauges, busy upstream connections");
  auto requests_zero = [&] {
    for (const char* c : kClusters) {
      for (int g = 0; g < 3; ++g) {
        if (Gauge(c, g) != 0)
          return false;
      }
    }
    return main_->busy() == 0 && shadow_->busy() == 0 && limited_->busy() == 0;
  };
  if (!WaitUntil(requests_zero, kSettleMs)) {
    for (const char* c : kClusters) {
      for (int g = 0; g < 3; ++g) {
        if (uint32_t v = Gauge(c, g); v != 0) {
          rep_.Fail(std::string("gauge: ") + c + "." + kGauges[g] + " leaks",
                    std::string("cluster ") + c + " " + kGauges[g] + " is " + std::to_string(v) +
                        " " + std::to_string(kSettleMs) +
                        " ms after every client connection closed");
        }
      }
    }
    for (const ScriptedUpstream* u : {main_.get(), shadow_.get(), limited_.get()}) {
      if (u->busy() != 0) {
        rep_.Fail("upstream: connections left busy",
                  "upstream " + u->name() + " still holds " + std::to_string(u->busy()) +
                      " busy connection(s) (a request or tunnel the proxy never closed) " +
                      std::to_string(kSettleMs) + " ms after every client connection closed");
      }
    }
  }
  // 4. The upstreams close their idle connections: the pools empty and every
  //    active_connections gauge is zero.
  rep_.Say('P', "checks: upstreams close their idle connections; active_connections");
  main_->CloseAll();
  shadow_->CloseAll();
  limited_->CloseAll();
  auto conns_zero = [&] {
    for (const char* c : kClusters) {
      if (Gauge(c, 3) != 0)
        return false;
    }
    return true;
  };
  if (!WaitUntil(conns_zero, kSettleMs)) {
    for (const char* c : kClusters) {
      if (uint32_t v = Gauge(c, 3); v != 0) {
        rep_.Fail(std::string("gauge: ") + c + ".active_connections leaks",
                  std::string("cluster ") + c + " active_connections is " + std::to_string(v) +
                      " " + std::to_string(kSettleMs) +
                      " ms after its upstream closed every connection");
      }
    }
  }
  // 5. No descriptor is left behind (the baseline is taken after the warm-up).
  rep_.Say('P', "checks: descriptors");
  if (base_fds_ > 0 && !WaitUntil([&] { return CountFds() <= base_fds_; }, kSettleMs)) {
    rep_.Fail("fds: descriptors leak", "the process holds " + std::to_string(CountFds()) +
                                           " descriptors once everything closed, " +
                                           std::to_string(base_fds_) + " at the start");
  }
  int64_t settled = NowMs() - t0;
  // 6. The listener still proxies, to the circuit-broken cluster too (a leaked request
  //    count shows there as a spurious 503).
  Probe("proxied", "/u/ok", 200);
  Probe("circuit-broken cluster", "/l/ok", 200);
  // 7. Memory.
  std::size_t rss = RssMiB();
  max_rss_ = std::max(max_rss_, rss);
  const std::size_t margin = kAsan ? 768 : 192;
  if (base_rss_ > 0 && rss > base_rss_ + margin) {
    rep_.Fail("rss: memory grows", "RSS is " + std::to_string(rss) + " MiB, " +
                                       std::to_string(base_rss_) + " MiB at the start (margin " +
                                       std::to_string(margin) + " MiB)");
  }
  // 8. Undefined behaviour the sanitizer reported without stopping.
  std::ifstream err(setup_.dir + "/stderr");
  std::string text((std::istreambuf_iterator<char>(err)), std::istreambuf_iterator<char>());
  std::size_t at = text.find("runtime error:", stderr_seen_);
  if (at != std::string::npos) {
    std::size_t b = text.rfind('\n', at);
    std::size_t e = text.find('\n', at);
    std::string line =
        text.substr(b == std::string::npos ? 0 : b + 1, e == std::string::npos ? e : e - b - 1);
    std::string what = text.substr(at + 15, e == std::string::npos ? e : e - at - 15);
    rep_.Fail("ubsan: " + what.substr(0, what.find(" of type")), line);
  }
  stderr_seen_ = text.size();
  if (index >= 0) {
    rep_.Say('C', "settled in " + std::to_string(settled) + " ms; probes answered; RSS " +
                      std::to_string(rss) + " MiB; " + std::to_string(CountFds()) + " descriptors");
  }
}

[[noreturn]] void RunChild(const Setup& setup, const std::vector<Sequence>& seqs, std::size_t first,
                           int out_fd) {
  Reporter rep(out_fd);
  Driver d(setup, rep);
  d.Start();
  for (std::size_t i = first; i < seqs.size(); ++i)
    d.RunSequence(static_cast<int>(i), seqs[i]);
  d.Stop();
  rep.Say('X', "");
  _exit(0);
}

}  // namespace

// ------------------------------------------------------------------ the parent

namespace {

// What one child run came to, from its reports and its exit.
struct Outcome {
  bool clean = false;  // it ran every sequence and stopped the engine
  int last_seq = -1;   // the sequence it was in when it ended
  std::string signature, detail;
  std::string where;                 // the event or check it was running
  std::vector<std::string> failing;  // the failing sequence, readable
  std::vector<std::string> all;      // every sequence it ran, readable
  std::string stderr_tail;
  std::string access_log_tail;  // the proxy's own account of the last requests
  int events = 0;
  int bursts = 0;  // burst events it ran to the end, and the largest
  long largest_burst = 0;
};

std::string SignalName(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  const char* desc = sigdescr_np(sig);
  return std::string("SIG") + (abbrev ? abbrev : std::to_string(sig).c_str()) + " (" +
         (desc ? desc : "?") + ")";
}

std::string Tail(const std::string& path, std::size_t max_lines) {
  std::ifstream f(path);
  std::vector<std::string> lines;
  std::string l;
  while (std::getline(f, l))
    lines.push_back(l);
  std::string out;
  for (std::size_t i = lines.size() > max_lines ? lines.size() - max_lines : 0; i < lines.size();
       ++i)
    out += "    | " + lines[i] + "\n";
  return out;
}

// A sanitizer's verdict from the child's stderr: "asan: SEGV", "asan: heap-use-after-free",
// "ubsan: member access within null pointer" (ASan's, which ends the process, first).
std::string SanitizerVerdict(const std::string& path) {
  std::ifstream f(path);
  std::string l, ubsan;
  while (std::getline(f, l)) {
    std::size_t at = l.find("ERROR: AddressSanitizer: ");
    if (at != std::string::npos) {
      std::string kind = l.substr(at + 25);
      return "asan: " + kind.substr(0, kind.find(' '));
    }
    if (l.find("ERROR: LeakSanitizer") != std::string::npos)
      return "lsan: leak";
    at = l.find("runtime error: ");
    if (at != std::string::npos && ubsan.empty()) {
      std::string what = l.substr(at + 15);
      ubsan = "ubsan: " + what.substr(0, what.find(" of type"));
    }
  }
  return ubsan;
}

int InactivitySeconds() {
  return kAsan ? 60 : 20;
}

// Runs seqs[first..] in a forked child and watches it.
Outcome RunOnce(const Setup& setup, const std::vector<Sequence>& seqs, std::size_t first) {
  Outcome o;
  const std::string err_path = setup.dir + "/stderr";
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) {
    o.signature = "harness: pipe";
    o.detail = std::strerror(errno);
    return o;
  }
  std::cout.flush();
  std::cerr.flush();
  pid_t pid = fork();
  if (pid == 0) {
    close(p[0]);
    int err = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    dup2(err, 2);
    int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
    dup2(devnull, 1);
    RunChild(setup, seqs, first, p[1]);
  }
  close(p[1]);
  std::string pending, open_event;
  std::vector<std::string> cur;
  bool timed_out = false;
  auto line = [&](const std::string& l) {
    if (l.size() < 2)
      return;
    char tag = l[0];
    std::string text = l.substr(2);
    switch (tag) {
      case 'S':
        if (!cur.empty())
          o.all.insert(o.all.end(), cur.begin(), cur.end());
        cur.clear();
        o.last_seq = std::atoi(text.c_str());
        cur.push_back("  sequence " + text + ":");
        o.where = "the start of sequence " + text;
        break;
      case 'E': {
        std::istringstream is(text);
        int seq = 0, idx = 0;
        is >> seq >> idx;
        std::string rest;
        std::getline(is, rest);
        open_event = "e" + std::to_string(idx + 1) + ":" + rest;
        cur.push_back("    e" + std::to_string(idx + 1) + "  " + rest.substr(1));
        o.where = "while running " + open_event;
        ++o.events;
        break;
      }
      case 'R':
        if (!cur.empty())
          cur.back() += "\n          => " + text;
        if (open_event.find(": burst: ") != std::string::npos) {
          ++o.bursts;
          o.largest_burst = std::max(o.largest_burst, std::atol(text.c_str()));
        }
        o.where = "after " + open_event;
        break;
      case 'P':
        o.where = "in the " + text +
                  (o.last_seq >= 0 ? " after sequence " + std::to_string(o.last_seq)
                                   : std::string(" of the warm-up"));
        break;
      case 'C':
        cur.push_back("    (" + text + ")");
        break;
      case 'F': {
        std::size_t tab = text.find('\t');
        o.signature = text.substr(0, tab);
        o.detail = tab == std::string::npos ? "" : text.substr(tab + 1);
        break;
      }
      case 'X':
        o.clean = true;
        break;
      default:
        break;
    }
  };
  const int quiet_ms = InactivitySeconds() * 1000;
  char buf[8192];
  while (true) {
    pollfd pf{p[0], POLLIN, 0};
    int r = poll(&pf, 1, quiet_ms);
    if (r < 0 && errno == EINTR)
      continue;
    if (r == 0) {
      timed_out = true;
      kill(pid, SIGKILL);
      break;
    }
    ssize_t n = read(p[0], buf, sizeof(buf));
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    pending.append(buf, static_cast<std::size_t>(n));
    std::size_t nl;
    while ((nl = pending.find('\n')) != std::string::npos) {
      line(pending.substr(0, nl));
      pending.erase(0, nl + 1);
    }
  }
  close(p[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (timed_out) {
    o.clean = false;
    o.signature = "wedge: the process stopped making progress";
    o.detail = "no report for " + std::to_string(InactivitySeconds()) + " s " + o.where;
  } else if (WIFSIGNALED(status)) {
    o.clean = false;
    o.signature = "crash: " + SignalName(WTERMSIG(status));
    o.detail = "the process was killed by " + SignalName(WTERMSIG(status)) + " " + o.where;
    if (std::string v = SanitizerVerdict(err_path); !v.empty())
      o.detail += " (" + v + ")";
  } else if (WIFEXITED(status) && WEXITSTATUS(status) != 0 && o.signature.empty()) {
    o.clean = false;
    std::string v = SanitizerVerdict(err_path);
    o.signature = v.empty() ? "exit: status " + std::to_string(WEXITSTATUS(status)) : v;
    o.detail =
        "the process exited with status " + std::to_string(WEXITSTATUS(status)) + " " + o.where;
  } else if (!o.clean && o.signature.empty()) {
    o.signature = "exit: the run ended early";
    o.detail = "the process exited " + o.where + " without finishing";
  }
  if (!o.signature.empty())
    cur.push_back("    ** " + o.signature + ": " + o.detail);
  o.failing = cur;
  o.all.insert(o.all.end(), cur.begin(), cur.end());
  if (!o.clean) {
    o.stderr_tail = Tail(err_path, kAsan ? 60 : 25);
    o.access_log_tail = Tail(setup.dir + "/access.log", 6);
  }
  return o;
}

std::string Join(const std::vector<std::string>& lines) {
  std::string s;
  for (const auto& l : lines)
    s += l + "\n";
  return s;
}

// Delta debugging over a list (complements only): the smallest list for which
// fails() holds, within the budget.
template <class T, class F>
std::vector<T> Minimize(std::vector<T> items, F fails, const std::function<bool()>& budget_left) {
  std::size_t n = 2;
  while (items.size() >= 2 && budget_left()) {
    std::size_t chunk = (items.size() + n - 1) / n;
    bool reduced = false;
    for (std::size_t start = 0; start < items.size() && budget_left(); start += chunk) {
      std::vector<T> rest;
      for (std::size_t i = 0; i < items.size(); ++i) {
        if (i < start || i >= start + chunk)
          rest.push_back(items[i]);
      }
      if (!rest.empty() && fails(rest)) {
        items = std::move(rest);
        n = std::max<std::size_t>(n - 1, 2);
        reduced = true;
        break;
      }
    }
    if (!reduced) {
      if (n >= items.size())
        break;
      n = std::min(items.size(), n * 2);
    }
  }
  return items;
}

struct ShrinkBudget {
  int64_t deadline_ms = 0;
  int replays_left = 0;
  int per_failure = 16;  // replays one failure may use
  bool Left() const { return replays_left > 0 && NowMs() < deadline_ms; }
};

// Replays the failing part of a campaign in fresh children and cuts it down to the
// smallest list of events that still fails the same way; returns it, readable.
std::string Shrink(const Setup& setup, const std::vector<Sequence>& seqs, std::size_t first,
                   int failing, const std::string& signature, ShrinkBudget& budget) {
  int replays = 0;
  Outcome last;
  auto left = [&] { return budget.Left() && replays < budget.per_failure; };
  auto fails = [&](const std::vector<Sequence>& cand) {
    if (!left())
      return false;
    --budget.replays_left;
    ++replays;
    Outcome o = RunOnce(setup, cand, 0);
    if (o.signature == signature) {
      last = o;
      return true;
    }
    return false;
  };
  // The failing sequence alone, then with the one before, then everything since the
  // process started (state left by earlier sequences may be needed).
  std::vector<Sequence> chosen;
  std::vector<std::vector<Sequence>> tries;
  tries.push_back({seqs[static_cast<std::size_t>(failing)]});
  if (static_cast<std::size_t>(failing) > first)
    tries.push_back(
        {seqs[static_cast<std::size_t>(failing) - 1], seqs[static_cast<std::size_t>(failing)]});
  if (static_cast<std::size_t>(failing) > first + 1)
    tries.push_back(std::vector<Sequence>(seqs.begin() + static_cast<std::ptrdiff_t>(first),
                                          seqs.begin() + failing + 1));
  for (auto& t : tries) {
    if (fails(t)) {
      chosen = t;
      break;
    }
  }
  if (chosen.empty() && replays == 0)
    return "  not replayed: the run's shrinking budget is spent (SLUICE_FUZZ_SEED=<seed> "
           "runs this seed alone)\n";
  if (chosen.empty())
    return "  not reproduced by a replay in a fresh process (" + std::to_string(replays) +
           " tries): timing-dependent, or needs more history than was replayed\n";
  if (chosen.size() > 1)
    chosen = Minimize(chosen, fails, left);
  // Events: flattened, each tagged with its sequence, so the settle points stay.
  std::vector<std::pair<std::size_t, Event>> flat;
  for (std::size_t i = 0; i < chosen.size(); ++i) {
    for (const Event& e : chosen[i])
      flat.emplace_back(i, e);
  }
  auto rebuild = [&](const std::vector<std::pair<std::size_t, Event>>& f) {
    std::vector<Sequence> out;
    std::size_t cur = SIZE_MAX;
    for (const auto& [i, e] : f) {
      if (i != cur) {
        out.emplace_back();
        cur = i;
      }
      out.back().push_back(e);
    }
    return out;
  };
  flat = Minimize(
      flat, [&](const std::vector<std::pair<std::size_t, Event>>& f) { return fails(rebuild(f)); },
      left);
  // Bursts: halve while it still fails, to show the size that matters.
  std::string burst_note;
  for (auto& [i, e] : flat) {
    if (e.kind != Event::Kind::kBurst)
      continue;
    while (e.count > 50 && left()) {
      Event smaller = e;
      smaller.count = e.count / 2;
      auto trial = flat;
      for (auto& [j, t] : trial) {
        if (t.kind == Event::Kind::kBurst && t.count == e.count)
          t = smaller;
      }
      if (!fails(rebuild(trial))) {
        burst_note = "  (a burst of " + std::to_string(e.count) + " fails; one of " +
                     std::to_string(smaller.count) + " did not)\n";
        break;
      }
      e = smaller;
    }
  }
  // The last replay that failed is the one to show; run the final list once more if
  // the last replay was of something else.
  std::vector<Sequence> final_list = rebuild(flat);
  Outcome shown = last;
  if (budget.replays_left > 0 && NowMs() < budget.deadline_ms) {
    Outcome o = RunOnce(setup, final_list, 0);
    ++replays;
    if (o.signature == signature)
      shown = o;
  }
  std::size_t events = flat.size();
  return "  smallest replay that still fails: " + std::to_string(events) + " event(s) in " +
         std::to_string(final_list.size()) + " sequence(s), found in " + std::to_string(replays) +
         " replays; each sequence is followed by the checks:\n" + burst_note + Join(shown.all);
}

struct Failure {
  uint64_t seed = 0;
  int sequence = 0;
  Outcome outcome;
  std::string minimal;
  std::vector<std::string> again;  // later hits of the same signature: "seed 3 seq 7"
};

struct Campaign {
  int sequences = 0, events = 0, restarts = 0, failures = 0, bursts = 0;
  long largest_burst = 0;
  bool cut_short = false;  // sequences were left unrun after a failure
  double seconds = 0;
};

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

// One campaign: the seed's sequences in a child, restarted after each failure (at most
// max_restarts times, until restart_until_ms: a bad tree must still finish within the
// test's timeout).
Campaign RunCampaign(proxy::IoBackend backend, uint64_t seed, const CampaignShape& shape,
                     std::vector<Failure>& failures, ShrinkBudget& budget, int64_t restart_until_ms,
                     int max_restarts) {
  Campaign c;
  auto t0 = Clock::now();
  TempDir dir;
  Setup setup{backend, dir.path()};
  std::vector<Sequence> seqs = Generate(seed, shape);
  const bool shrink = Env("SLUICE_FUZZ_SHRINK") != "0";
  std::size_t first = 0;
  while (first < seqs.size()) {
    Outcome o = RunOnce(setup, seqs, first);
    c.events += o.events;
    c.bursts += o.bursts;
    c.largest_burst = std::max(c.largest_burst, o.largest_burst);
    if (o.clean) {
      c.sequences += static_cast<int>(seqs.size() - first);
      break;
    }
    int at = o.last_seq;
    ++c.failures;
    c.sequences += at >= static_cast<int>(first) ? at - static_cast<int>(first) + 1 : 0;
    auto same = std::find_if(failures.begin(), failures.end(),
                             [&](const Failure& f) { return f.outcome.signature == o.signature; });
    if (same != failures.end()) {
      same->again.push_back("seed " + std::to_string(seed) + " sequence " + std::to_string(at));
    } else {
      Failure f;
      f.seed = seed;
      f.sequence = at;
      f.outcome = o;
      if (at >= 0 && shrink)
        f.minimal = Shrink(setup, seqs, first, at, o.signature, budget);
      failures.push_back(std::move(f));
    }
    if (at < 0 || ++c.restarts > max_restarts || NowMs() > restart_until_ms) {
      c.cut_short = at >= 0 && static_cast<std::size_t>(at) + 1 < seqs.size();
      break;  // the set-up itself failed, this seed fails everywhere, or time is up
    }
    first = static_cast<std::size_t>(at) + 1;
  }
  c.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return c;
}

std::string Report(const Failure& f, std::size_t n, std::size_t total, const char* backend,
                   const std::string& test_name, const CampaignShape& shape) {
  const Outcome& o = f.outcome;
  std::string s = "lifecycle fuzz FAILURE " + std::to_string(n) + " of " + std::to_string(total) +
                  " [" + backend + ", seed " + std::to_string(f.seed) + ", sequence " +
                  std::to_string(f.sequence) + "]: " + o.signature + "\n  " + o.detail + "\n";
  s += "  reproduce: SLUICE_FUZZ_SEED=" + std::to_string(f.seed) +
       (shape.sequences != 12 ? " SLUICE_FUZZ_SEQUENCES=" + std::to_string(shape.sequences)
                              : std::string()) +
       " build/tests/proxy/proxy_lifecycle_fuzz '" + test_name + "'\n";
  s += "  the failing sequence as it ran:\n" + Join(o.failing);
  if (!f.minimal.empty())
    s += f.minimal;
  if (!f.again.empty()) {
    s += "  the same failure again at:";
    for (const auto& a : f.again)
      s += " [" + a + "]";
    s += "\n";
  }
  if (!o.access_log_tail.empty())
    s += "  the proxy's access log, last lines:\n" + o.access_log_tail;
  if (!o.stderr_tail.empty())
    s += "  the process's stderr, last lines:\n" + o.stderr_tail;
  return s;
}

void RunFuzz(proxy::IoBackend backend, const std::vector<uint64_t>& ci_seeds,
             const std::string& test_name) {
  const char* name = proxy::IoBackendName(backend);
  CampaignShape shape;
  if (std::string v = Env("SLUICE_FUZZ_SEQUENCES"); !v.empty())
    shape.sequences = std::max(1, std::atoi(v.c_str()));
  std::vector<uint64_t> seeds = ci_seeds;
  int64_t deadline = 0;
  if (std::string v = Env("SLUICE_FUZZ_SEED"); !v.empty()) {
    seeds = {std::strtoull(v.c_str(), nullptr, 10)};
  } else if (std::string secs = Env("SLUICE_FUZZ_SECONDS"); !secs.empty()) {
    deadline = NowMs() + 1000 * std::atoll(secs.c_str());
    seeds.clear();
    if (Env("SLUICE_FUZZ_SEQUENCES").empty())
      shape.sequences = 40;
  }
  std::vector<Failure> failures;
  // Shrinking is bounded so a bad tree still finishes within the test's timeout.
  ShrinkBudget budget{NowMs() + (deadline ? 600000 : 30000), deadline ? 400 : 40,
                      deadline ? 60 : 16};
  std::random_device rd;
  // The bounded campaign stops restarting failed runs after this, so a bad tree still
  // finishes within the test's 120 s timeout.
  const int64_t soft_end = NowMs() + 70000;
  int total_seq = 0, total_ev = 0;
  auto t0 = Clock::now();
  for (std::size_t i = 0; deadline ? NowMs() < deadline : i < seeds.size(); ++i) {
    uint64_t seed = deadline ? (static_cast<uint64_t>(rd()) << 32 | rd()) : seeds[i];
    std::size_t before = failures.size();
    const int64_t restart_until = deadline ? deadline : soft_end;
    Campaign c =
        RunCampaign(backend, seed, shape, failures, budget, restart_until, deadline ? 1000 : 8);
    total_seq += c.sequences;
    total_ev += c.events;
    std::string found;
    for (std::size_t k = before; k < failures.size(); ++k)
      found += (found.empty() ? "" : "; ") + failures[k].outcome.signature;
    fprintf(stderr,
            "[lifecycle fuzz %s] seed %" PRIu64
            ": %d sequences, %d events (%d bursts, largest %ld), %.1f s, %d failed%s%s%s\n",
            name, seed, c.sequences, c.events, c.bursts, c.largest_burst, c.seconds, c.failures,
            found.empty() ? "" : ", new: ", found.c_str(),
            c.cut_short ? " (stopped after a failure: time limit)" : "");
  }
  double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  fprintf(stderr,
          "[lifecycle fuzz %s] total: %d sequences, %d events, %.1f s, %zu distinct failures\n",
          name, total_seq, total_ev, secs, failures.size());
  for (std::size_t i = 0; i < failures.size(); ++i)
    FAIL_CHECK(Report(failures[i], i + 1, failures.size(), name, test_name, shape));
  CHECK(failures.empty());
}

// The seeds of the bounded campaign; each runs 12 sequences of 3-8 events.
const std::vector<uint64_t> kCiSeeds = {1, 2, 3, 4, 5};

}  // namespace

TEST_CASE(
    "lifecycle fuzz on io_uring: the engine survives and its gauges return to zero and its "
    "listener answers",
    "[proxy][fuzz]") {
  RunFuzz(proxy::IoBackend::kUring, kCiSeeds,
          "lifecycle fuzz on io_uring: the engine survives and its gauges return to zero and its "
          "listener answers");
}

TEST_CASE(
    "lifecycle fuzz on epoll: the engine survives and its gauges return to zero and its listener "
    "answers",
    "[proxy][fuzz]") {
  RunFuzz(proxy::IoBackend::kEpoll, kCiSeeds,
          "lifecycle fuzz on epoll: the engine survives and its gauges return to zero and its "
          "listener answers");
}
