// The lifecycle fuzzer's child: the engine (proxy::Proxy, one worker), the scripted
// upstreams and the driver that plays a campaign's events over loopback sockets and
// checks the engine's invariants after every sequence. It runs in a process forked by
// the test (lifecycle_fuzz.cc), to which it reports each event and check as a line.
#include <dirent.h>
#include <fcntl.h>
#include <sys/resource.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <memory>

#include "harness.h"
#include "lifecycle_fuzz.h"
#include "scripted_upstream.h"

namespace sluice::testing::fuzz {
namespace {

// Bounds. The longest legitimate wait is the blackhole route's 1 s timeout; after every
// client has gone, mirrors (300 ms route timeout) are the last to finish.
constexpr int kAnswerMs = kAsan ? 5000 : 2500;  // a request's answer, or a close
constexpr int kSettleMs = kAsan ? 4000 : 2000;  // gauges after every client closed
constexpr int kProbeMs = kAsan ? 4000 : 2000;   // a probe's connect and its answer

// ------------------------------------------------------------------ the world

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

}  // namespace

void RunChild(const Setup& setup, const std::vector<Sequence>& seqs, std::size_t first,
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

}  // namespace sluice::testing::fuzz
