// The engine: workers, downstream sessions, upstream connections, mirrors, timers.
//
// Ownership and lifetime: every connection object (Session, UpstreamConn, Mirror) is
// taken from and returned to a per-worker free list, so steady-state traffic does not
// allocate. An object released while the current event batch may still hold events for
// it goes back to its free list only after the batch, and every object carries a
// generation number so a stale timer or event cannot act on its next life.
#include "sluice/proxy/proxy.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/netfilter_ipv4.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <chrono>
#include <cstring>
#include <ctime>
#include <future>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>

#include "sluice/proxy/buffer.h"
#include "sluice/proxy/event_loop.h"
#include "sluice/proxy/lb.h"
#include "sluice/proxy/tls_sni.h"

namespace sluice::proxy {
namespace {

constexpr uint32_t kEvOut = EPOLLOUT;

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Envoy's response flags, in Envoy's bit order (the order they print in).
enum Flag : uint32_t {
  kFlagUH = 1u << 0,    // no healthy upstream
  kFlagUT = 1u << 1,    // upstream request timeout
  kFlagLR = 1u << 2,    // local reset
  kFlagUR = 1u << 3,    // upstream remote reset
  kFlagUF = 1u << 4,    // upstream connection failure
  kFlagUC = 1u << 5,    // upstream connection termination
  kFlagUO = 1u << 6,    // upstream overflow (circuit breaker)
  kFlagNR = 1u << 7,    // no route
  kFlagDI = 1u << 8,    // delay injected
  kFlagFI = 1u << 9,    // fault (abort) injected
  kFlagDC = 1u << 10,   // downstream connection termination
  kFlagURX = 1u << 11,  // retry limit exceeded
  kFlagSI = 1u << 12,   // stream idle timeout
  kFlagDPE = 1u << 13,  // downstream protocol error
  kFlagUPE = 1u << 14,  // upstream protocol error
  kFlagNC = 1u << 15,   // no cluster
};
constexpr const char* kFlagNames[] = {"UH", "UT", "LR", "UR",  "UF", "UC",  "UO",  "NR",
                                      "DI", "FI", "DC", "URX", "SI", "DPE", "UPE", "NC"};

// ----------------------------------------------------------------------- timers

struct TimerOwner {
  virtual void OnTimer(int kind) = 0;
  virtual ~TimerOwner() = default;
};

// An armed timer sits in its worker's heap; `slot` is its index there (kNoSlot when
// not armed), so cancelling removes it at once and the heap holds only live timers
// (about three per connection), never one entry per past request.
struct Timer {
  static constexpr uint32_t kNoSlot = UINT32_MAX;
  TimerOwner* owner = nullptr;
  int kind = 0;
  int64_t deadline = 0;
  uint32_t slot = kNoSlot;
  bool armed() const { return slot != kNoSlot; }
};

// A binary min-heap of Timer pointers by deadline, each timer knowing its index.
class TimerHeap {
 public:
  TimerHeap() { heap_.reserve(1024); }
  bool empty() const { return heap_.empty(); }
  std::size_t size() const { return heap_.size(); }
  Timer* front() const { return heap_.front(); }
  void Add(Timer& t) {
    t.slot = static_cast<uint32_t>(heap_.size());
    heap_.push_back(&t);
    Up(t.slot);
  }
  void Remove(Timer& t) {
    uint32_t i = t.slot;
    if (i == Timer::kNoSlot)
      return;
    t.slot = Timer::kNoSlot;
    Timer* last = heap_.back();
    heap_.pop_back();
    if (last == &t)
      return;
    heap_[i] = last;
    last->slot = i;
    Down(i);
    Up(last->slot);
  }

 private:
  void Up(uint32_t i) {
    Timer* t = heap_[i];
    while (i > 0) {
      uint32_t parent = (i - 1) / 2;
      if (heap_[parent]->deadline <= t->deadline)
        break;
      heap_[i] = heap_[parent];
      heap_[i]->slot = i;
      i = parent;
    }
    heap_[i] = t;
    t->slot = i;
  }
  void Down(uint32_t i) {
    const uint32_t n = static_cast<uint32_t>(heap_.size());
    Timer* t = heap_[i];
    while (true) {
      uint32_t c = 2 * i + 1;
      if (c >= n)
        break;
      if (c + 1 < n && heap_[c + 1]->deadline < heap_[c]->deadline)
        ++c;
      if (heap_[c]->deadline >= t->deadline)
        break;
      heap_[i] = heap_[c];
      heap_[i]->slot = i;
      i = c;
    }
    heap_[i] = t;
    t->slot = i;
  }
  std::vector<Timer*> heap_;
};

// ----------------------------------------------------------------------- snapshot

// Downstream connections open on a listener, over all workers (its connection limit).
// Kept apart from the sockets: a connection may outlive its listener's sockets.
struct ListenerCount {
  std::atomic<uint32_t> active{0};
};

struct ListenerSockets {
  std::string name, key;
  uint16_t port = 0;
  std::vector<int> fds;  // one per worker
  std::shared_ptr<ListenerCount> count = std::make_shared<ListenerCount>();
  ~ListenerSockets() {
    for (int fd : fds) {
      if (fd >= 0)
        close(fd);
    }
  }
};

struct Snapshot {
  std::shared_ptr<const ProxyConfig> cfg;
  struct Listener {
    const ListenerConfig* cfg;
    std::shared_ptr<ListenerSockets> socks;
  };
  std::vector<Listener> listeners;
};

using Handler = IoHandler;

class Worker;
class UpstreamConn;

enum class UpFailure { kConnect, kReset, kProtocol };

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

}  // namespace

struct Proxy::Impl {
  ProxyOptions opts;
  std::mutex mu;
  std::shared_ptr<const Snapshot> snap;  // guarded by mu
  std::atomic<uint64_t> version{0};
  std::vector<std::unique_ptr<Worker>> workers;
  std::vector<std::thread> threads;
  ProxyStats stats;
  int log_fd = -1;
  bool stopped = false;
  std::atomic<bool> draining{false};  // Drain(): idle keep-alive connections are closed

  Result<std::shared_ptr<const Snapshot>> BuildSnapshot(std::shared_ptr<const ProxyConfig> cfg);
  void Publish(std::shared_ptr<const Snapshot> s);
};

namespace {

// ----------------------------------------------------------------------- upstream

class UpstreamConn final : public Handler, public TimerOwner {
 public:
  Worker* w = nullptr;
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

  void OnEvent(uint32_t ev) override;
  void OnTimer(int kind) override;
  void SetEvents(uint32_t ev);
  void Flush();
  void ResetResponse() {
    head_done = false;
    framing = Framing::kNone;
    remaining = 0;
    chunk.Reset();
    reusable = false;
  }
  void PauseRead(bool pause) {
    if (read_paused == pause)
      return;
    read_paused = pause;
    SetEvents(pause ? (events & ~EPOLLIN) : (events | EPOLLIN));
  }

 private:
  void OnReadable();
  void ProcessResponse();
  void Fail(UpFailure f);
};

// ----------------------------------------------------------------------- session

class Session;
class Mirror;

class Worker {
 public:
  Worker(Proxy::Impl* impl, int index) : impl_(impl), index_(index) {
    rng_ =
        0x9e3779b97f4a7c15ull * static_cast<uint64_t>(index + 1) ^ static_cast<uint64_t>(NowMs());
    deferred_.reserve(256);
    pending_.reserve(256);
    mirror_flush_.reserve(256);
  }
  ~Worker();

  Result<void> Init() {
    EventLoop::Options lo;
    lo.backend = impl_->opts.io;
    lo.buffers = impl_->opts.io_buffers;
    auto loop = EventLoop::Create(lo);
    SLUICE_RETURN_IF_ERROR(loop);
    loop_ = std::move(*loop);
    io_backend_ = loop_->backend();
    io_fallback_reason_ = loop_->fallback_reason();
    wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wake_fd_ < 0)
      return FailErrno("eventfd", errno);
    wake_handler_.w = this;
    if (!loop_->Add(wake_fd_, EPOLLIN, &wake_handler_, EventLoop::Kind::kPoll))
      return FailErrno("watching the wake-up eventfd", errno);
    return {};
  }
  // On the worker's own thread, before Run().
  Result<void> Activate() { return loop_->Activate(); }
  EventLoop& loop() { return *loop_; }
  IoBackend io_backend() const { return io_backend_; }
  const std::string& io_fallback_reason() const { return io_fallback_reason_; }
  void Run();
  void Wake() {
    uint64_t one = 1;
    [[maybe_unused]] ssize_t r = write(wake_fd_, &one, sizeof(one));
  }
  // Drain() was called: responses say `connection: close` and their connection closes.
  bool draining() const { return impl_->draining.load(std::memory_order_relaxed); }

  // --- shared services for sessions
  uint64_t Rand() {
    rng_ ^= rng_ << 13;
    rng_ ^= rng_ >> 7;
    rng_ ^= rng_ << 17;
    return rng_;
  }
  bool Roll(uint32_t per_million) {
    if (per_million >= 1000000)
      return true;
    if (per_million == 0)
      return false;
    return Rand() % 1000000 < per_million;
  }
  int64_t now() const { return now_ms_; }
  void Arm(Timer& t, int64_t after_ms) {
    timers_.Remove(t);
    t.deadline = now_ms_ + after_ms;
    timers_.Add(t);
  }
  void Cancel(Timer& t) { timers_.Remove(t); }

  // The cluster's endpoint for a request or connection (lb.h), on the worker's clock and
  // random numbers.
  Endpoint* PickEndpoint(const Cluster& c, std::optional<LbHash> hash) {
    return proxy::PickEndpoint(c, now_ms_, Rand(), Rand(), hash);
  }
  // The worker's endpoint object for an original destination (ORIGINAL_DST clusters).
  Endpoint* OriginalDstEndpoint(const sockaddr_storage& addr);
  // A connected (pooled) or connecting upstream; nullptr when the socket could not be
  // created or connect() failed at once. *overflow: the max_connections breaker.
  // for_mirror: a new connection only within ProxyOptions.mirror_max_connections
  // (else nullptr with *overflow set).
  UpstreamConn* GetUpstream(const std::shared_ptr<const Snapshot>& snap, const Cluster* c,
                            Endpoint* ep, bool* overflow, bool for_mirror = false);
  void ReleaseUpstream(UpstreamConn* up, bool reuse);
  void OnEndpointResult(const Cluster& c, Endpoint* ep, bool failure);

  Session* NewSession();
  void ReleaseSession(Session* s);
  void AddPending(Session* s) { pending_.push_back(s); }
  void RemovePending(Session* s) {
    auto it = std::find(pending_.begin(), pending_.end(), s);
    if (it != pending_.end())
      pending_.erase(it);
  }
  void KickPending(const Cluster* c);
  void SendMirror(const MirrorPolicy& m, Session& s);
  void ReleaseMirror(Mirror* m);

  // The worker's buffer budget (ProxyOptions.worker_buffer_limit). A connection may
  // always hold this much (a request head, a small body, a response's first bytes).
  static constexpr std::size_t kHeadFloor = 64 * 1024;
  // Response bytes waiting for a slow client: beyond the floor, only while the worker
  // holds less than its budget (else the upstream is not read).
  bool MayBuffer(std::size_t held) const {
    return held < kHeadFloor || buffered_ < opts().worker_buffer_limit;
  }
  // A request body beyond the floor is read only under a reservation of its whole size
  // (its content-length, or max_request_body when chunked), so the bodies being received
  // never add up to more than the budget, and a body once begun can always be finished
  // (no two requests each wait for the other's memory). One request may take more than
  // the budget when nothing else holds any, so a large body always gets its turn.
  bool Reserve(Session* s, std::size_t n);
  void Unreserve(Session* s);
  void Charge(std::size_t now, std::size_t before) {
    buffered_ += now;
    buffered_ -= before;
    if (now > before)
      stats().buffered_bytes.fetch_add(now - before, std::memory_order_relaxed);
    else
      stats().buffered_bytes.fetch_sub(before - now, std::memory_order_relaxed);
  }
  void WaitForMemory(Session* s);

  void Log(std::string_view line) { log_.append(line.data(), line.data() + line.size()); }
  fmt::memory_buffer& log_buffer() { return log_; }
  ProxyStats& stats() { return impl_->stats; }
  const ProxyOptions& opts() const { return impl_->opts; }
  const std::shared_ptr<const Snapshot>& snap() const { return snap_; }
  int index() const { return index_; }

  std::size_t mirror_inflight = 0, mirror_bytes = 0, mirror_conns = 0;

 private:
  struct WakeHandler : Handler {
    Worker* w;
    void OnEvent(uint32_t) override {
      uint64_t v;
      [[maybe_unused]] ssize_t r = read(w->wake_fd_, &v, sizeof(v));
    }
  };
  struct ListenerHandler : Handler {
    Worker* w = nullptr;
    int fd = -1;
    std::string name;
    std::shared_ptr<ListenerCount> count;
    void OnEvent(uint32_t) override { w->Accept(*this); }
  };

  void Accept(ListenerHandler& l);
  void SwapSnapshot();
  void SweepIdle();
  void RunTimers();
  void FlushMirrors();
  void FlushLog();
  void CloseIdle();
  void ResumeMemoryWaiters();

  Proxy::Impl* impl_;
  int index_;
  std::unique_ptr<EventLoop> loop_;
  IoBackend io_backend_ = IoBackend::kAuto;
  std::string io_fallback_reason_;
  int wake_fd_ = -1;
  WakeHandler wake_handler_{};
  uint64_t rng_;
  int64_t now_ms_ = NowMs();
  int64_t next_sweep_ms_ = 0;
  uint64_t version_ = 0;
  std::shared_ptr<const Snapshot> snap_;
  std::vector<std::unique_ptr<ListenerHandler>> listeners_;
  std::vector<std::unique_ptr<ListenerHandler>> retired_listeners_;
  TimerHeap timers_;
  std::vector<std::unique_ptr<Session>> all_sessions_;
  std::vector<Session*> free_sessions_;
  std::vector<std::unique_ptr<UpstreamConn>> all_upstreams_;
  std::vector<UpstreamConn*> free_upstreams_;
  std::vector<std::unique_ptr<Mirror>> all_mirrors_;
  std::vector<Mirror*> free_mirrors_;
  std::unordered_map<const Endpoint*, std::vector<UpstreamConn*>> idle_;
  struct StringHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view v) const { return std::hash<std::string_view>()(v); }
  };
  std::unordered_map<std::string, std::unique_ptr<Endpoint>, StringHash, std::equal_to<>>
      original_dst_;
  std::vector<std::pair<int, void*>> deferred_;  // 0 session, 1 upstream
  std::vector<Session*> pending_;
  // Mirror copies are written after the batch's primary requests (see SendMirror).
  std::vector<std::pair<UpstreamConn*, uint64_t>> mirror_flush_;
  fmt::memory_buffer log_;
  std::size_t buffered_ = 0;  // the sum of the sessions' `accounted`
  std::size_t reserved_ = 0;  // the sum of the sessions' `reserved`
  std::vector<std::pair<Session*, uint64_t>> memory_waiters_;  // (session, its gen)

  friend class UpstreamConn;
};

// A request copy sent to a shadow cluster. Owns nothing of the primary request: its
// bytes were copied into the upstream connection's buffer when it was created.
class Mirror final : public UpstreamOwner, public TimerOwner {
 public:
  Worker* w = nullptr;
  UpstreamConn* up = nullptr;
  std::size_t bytes = 0;
  Timer timer;
  bool active = false;

  void OnUpHeaders(UpstreamConn*) override {}
  void OnUpData(UpstreamConn*, std::string_view) override {}
  void OnUpDone(UpstreamConn* u) override { Finish(u->reusable); }
  void OnUpFailure(UpstreamConn*, UpFailure) override { Finish(false); }
  void OnTimer(int) override { Finish(false); }
  void Finish(bool reuse) {
    if (!active)
      return;
    active = false;
    w->Cancel(timer);
    UpstreamConn* u = up;
    up = nullptr;
    if (u)
      w->ReleaseUpstream(u, reuse);
    w->ReleaseMirror(this);
  }
};

class Session final : public Handler, public UpstreamOwner, public TimerOwner {
 public:
  enum class Phase {
    kSniff,
    kHead,
    kBody,
    kDelay,
    kPending,
    kUpstream,
    kBackoff,
    kResponse,
    kTunnel,
    kClosing,
    kClosed
  };
  enum TimerKind { kRouteTimer, kTryTimer, kWaitTimer, kStreamTimer };

  Worker* w = nullptr;
  uint64_t gen = 0;
  int fd = -1;
  std::shared_ptr<const Snapshot> snap;
  const ListenerConfig* lc = nullptr;
  const FilterChain* chain = nullptr;
  Phase phase = Phase::kClosed;
  uint32_t events = 0;
  Buffer in, out;
  char peer[64] = "-", peer_ip[48] = "-", local[64] = "-";
  LbHash source_hash;  // the peer's address as a source-IP hash key
  sockaddr_storage orig_dst{};
  bool has_orig_dst = false;
  std::string sni;
  int64_t conn_start_ms = 0;
  int64_t last_active_ms = 0;  // for the idle timeout

  // request state
  http::RequestHead req;
  std::size_t body_scanned = 0;
  bool sent_continue = false;
  http::ChunkedDecoder chunk;
  const VirtualHost* vh = nullptr;
  const Route* route = nullptr;
  const Cluster* cluster = nullptr;
  const WeightedCluster* wc = nullptr;
  UpstreamConn* up = nullptr;
  Endpoint* up_ep = nullptr;
  char up_host[64] = "-", up_local[64] = "-";
  uint32_t attempt = 0, retries_done = 0;
  uint32_t flags = 0;
  int status = 0;
  const char* details = "-";
  uint64_t bytes_rx = 0, bytes_tx = 0;
  int64_t start_ms = 0, service_time_ms = -1;
  bool response_started = false, close_after = false, counted_request = false, in_process = false,
       request_active = false, retry_counted = false;
  bool down_eof = false, up_eof = false;
  bool tcp_session = false;  // a TCP tunnel that is logged when it closes
  // The socket is edge-triggered: set when an edge was taken without reading the
  // socket dry (a request was in flight, or a buffer limit stopped the read).
  bool read_ready = false;
  // The client's FIN was reported (edge-triggered: it comes once, maybe with data): reads
  // go on to the end of stream instead of stopping at a short read.
  bool peer_hup = false;
  bool in_tunnel_read = false;
  char request_id[40] = {0};
  bool generated_id = false;
  // The request's own deadlines (the HCM's request_headers_timeout, request_timeout and
  // stream_idle_timeout) share one timer; see StreamDeadline.
  int64_t head_start_ms = -1;     // the request's first byte; -1 before it
  int64_t last_io_ms = 0;         // the request's last byte received or response byte sent on
  bool request_complete = false;  // its head and body are in
  // Response bytes went to the client: an upstream protocol error can no longer become
  // a 502 (the head written so far, from resp_head_at in `out`, is still unsent).
  bool response_sent = false;
  std::size_t resp_head_at = 0;
  bool strip_h2c = false;       // an h2c upgrade request, served as plain HTTP/1.1 (as Envoy)
  bool waiting_memory = false;  // not read until its body's reservation is granted
  std::size_t accounted = 0;    // in + out, as last charged to the worker's budget
  std::size_t reserved = 0;     // the worker's budget held for this request's body
  std::shared_ptr<ListenerCount> lcount;
  Timer route_timer, try_timer, wait_timer, stream_timer;

  void Open(int cfd, const sockaddr_storage& peer_addr, std::shared_ptr<const Snapshot> s,
            const ListenerConfig* l, std::shared_ptr<ListenerCount> count);
  void OnEvent(uint32_t ev) override;
  void OnTimer(int kind) override;
  void OnUpConnected(UpstreamConn* u) override;
  void OnUpHeaders(UpstreamConn* u) override;
  void OnUpData(UpstreamConn* u, std::string_view data) override;
  void OnUpDone(UpstreamConn* u) override;
  void OnUpFailure(UpstreamConn* u, UpFailure f) override;
  void OnUpDrained(UpstreamConn* u) override;
  void OnUpReadDone(UpstreamConn* u) override;
  void StartAttempt();

 private:
  bool ReadInto(Buffer& b);
  // Reads (first, when read_first) and handles requests for as long as the connection
  // has more of them.
  void ServeRequests(bool read_first);
  void Process();
  void OnHead();
  void Dispatch();
  void ContinueAfterFault();
  void Local(int code, std::string_view body, uint32_t flag, const char* why,
             std::string_view extra_header = {});
  void Finish();
  // Gives back the request's circuit-breaker counts (requests, retries) it still holds.
  void Uncount();
  void Abort(uint32_t flag);
  void Close();
  void TryWrite();
  bool ScheduleRetry();
  void DropUpstream(bool reuse);
  void SerializeRequest(Buffer& dst, bool shadow);
  void WriteResponseHead(const http::ResponseHead& r);
  // `connection: close`, or for an HTTP/1.0 client kept alive `connection: keep-alive`.
  void AppendConnection();
  void LogRequest();
  void StartTcp();
  void RefreshConfig();
  void TunnelRead();
  void MaybeCloseTunnel();
  // Charges the worker for what this session holds now.
  void Account() {
    const std::size_t now = in.size() + out.size();
    if (now != accounted) {
      w->Charge(now, accounted);
      accounted = now;
    }
  }
  // Leaves the cluster's queue of requests waiting for a connection, if in it.
  void StopWaiting();
  // The body this request may still need to buffer (see Worker::Reserve).
  std::size_t BodyReservation() const {
    return req.chunked ? chain->http.max_request_body
                       : static_cast<std::size_t>(std::max<int64_t>(0, req.content_length));
  }
  // Forgets a head that was never parsed (a protocol error, a timeout before it was
  // complete): the whole buffer is the request, and it is logged without a method.
  void ForgetHead();
  // The request's nearest deadline (kNoDeadline when none applies); *which says whose.
  enum class Deadline { kNone, kHead, kRequest, kIdle };
  int64_t StreamDeadline(Deadline* which) const;
  void ArmStreamTimer();
  void OnStreamTimer();
  friend class Worker;
};

// ----------------------------------------------------------------------- helpers

// Decimal digits of v, written by hand (no locale, no format parsing on the hot path).
void AppendNum(Buffer& b, uint64_t v) {
  char tmp[20];
  char* end = tmp + sizeof(tmp);
  char* p = end;
  do {
    *--p = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0);
  b.Append(std::string_view(p, static_cast<std::size_t>(end - p)));
}

// Copies a NUL-terminated string into a fixed array, truncating.
template <std::size_t N>
void CopyStr(char (&dst)[N], std::string_view src) {
  std::size_t n = std::min(src.size(), N - 1);
  std::memcpy(dst, src.data(), n);
  dst[n] = '\0';
}

// A random UUIDv4 in its text form (36 characters and a NUL).
void FormatUuid4(uint64_t a, uint64_t b, char (&out)[40]) {
  static constexpr char kHex[] = "0123456789abcdef";
  a = (a & 0xffffffffffff0fffull) | 0x4000ull;
  b = (b & 0x3fffffffffffffffull) | 0x8000000000000000ull;
  char* p = out;
  for (int i = 0; i < 16; ++i) {
    if (i == 8 || i == 12)
      *p++ = '-';
    *p++ = kHex[(a >> (60 - 4 * i)) & 0xf];
  }
  for (int i = 0; i < 16; ++i) {
    if (i == 0 || i == 4)
      *p++ = '-';
    *p++ = kHex[(b >> (60 - 4 * i)) & 0xf];
  }
  *p = '\0';
}

bool IsHopByHop(http::HeaderId id) {
  using enum http::HeaderId;
  return id == kConnection || id == kKeepAlive || id == kProxyConnection || id == kTe ||
         id == kUpgrade || id == kExpect;
}

bool InList(const std::vector<std::string>& names, std::string_view n) {
  for (const auto& x : names) {
    if (http::EqualsIgnoreCase(x, n))
      return true;
  }
  return false;
}

bool AnyMutations(const HeaderMutations* const* levels, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    if (levels[i] && !levels[i]->empty())
      return true;
  }
  return false;
}

// Header lines forwarded as received: adjacent lines of a parsed head are contiguous
// in its buffer, so a run of them goes out with one append.
class LineRun {
 public:
  explicit LineRun(Buffer& dst) : dst_(dst) {}
  void Add(const http::Header& h) {
    std::string_view line = h.line();
    if (run_.empty())
      run_ = line;
    else
      run_ = {run_.data(), static_cast<std::size_t>(line.data() + line.size() - run_.data())};
  }
  // Ends the run (before anything else is appended).
  void Flush() {
    dst_.Append(run_);
    run_ = {};
  }

 private:
  Buffer& dst_;
  std::string_view run_;
};

// Does any mutation list drop or replace this header?
bool Replaced(const HeaderMutations* const* levels, std::size_t n, std::string_view name) {
  for (std::size_t i = 0; i < n; ++i) {
    if (!levels[i])
      continue;
    if (InList(levels[i]->remove, name))
      return true;
    for (const HeaderOp& op : levels[i]->add) {
      if ((op.action == HeaderOp::Action::kOverwriteIfExistsOrAdd ||
           op.action == HeaderOp::Action::kOverwriteIfExists) &&
          http::EqualsIgnoreCase(op.name, name)) {
        return true;
      }
    }
  }
  return false;
}

// Envoy applies mutations from the most specific level (weighted cluster) to the least
// (route configuration); when two levels set the same header, the later one wins.
bool OverwrittenLater(const HeaderMutations* const* levels, std::size_t n, std::size_t level,
                      const HeaderOp& op) {
  if (op.action == HeaderOp::Action::kAppend)
    return false;
  for (std::size_t j = level + 1; j < n; ++j) {
    if (!levels[j])
      continue;
    for (const HeaderOp& later : levels[j]->add) {
      if (later.action == HeaderOp::Action::kOverwriteIfExistsOrAdd &&
          http::EqualsIgnoreCase(later.name, op.name)) {
        return true;
      }
    }
  }
  return false;
}

template <class Head>
void EmitAdds(Buffer& dst, const HeaderMutations* const* levels, std::size_t n, const Head& h) {
  for (std::size_t i = 0; i < n; ++i) {
    if (!levels[i])
      continue;
    for (const HeaderOp& op : levels[i]->add) {
      bool present = false;
      h.Get(op.name, &present);
      if (op.action == HeaderOp::Action::kAddIfAbsent && present)
        continue;
      if (op.action == HeaderOp::Action::kOverwriteIfExists && !present)
        continue;
      if (OverwrittenLater(levels, n, i, op))
        continue;
      dst.Append(op.name);
      dst.Append(": ");
      dst.Append(op.value);
      dst.Append("\r\n");
    }
  }
}

void ShadowHost(std::string_view host, Buffer& dst) {
  // Envoy inserts "-shadow" before the port: "svc:8080" → "svc-shadow:8080".
  std::size_t colon = host.rfind(':');
  std::size_t bracket = host.rfind(']');
  if (colon != std::string_view::npos && (bracket == std::string_view::npos || bracket < colon)) {
    dst.Append(host.substr(0, colon));
    dst.Append("-shadow");
    dst.Append(host.substr(colon));
  } else {
    dst.Append(host);
    dst.Append("-shadow");
  }
}

// ----------------------------------------------------------------------- UpstreamConn

void UpstreamConn::SetEvents(uint32_t ev) {
  if (ev != events) {
    events = ev;
    w->loop().Modify(fd, ev, this);
  }
}

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
    w->ReleaseUpstream(this, false);
  }
}

void UpstreamConn::Flush() {
  if (w->loop().Send(fd, out) != 0) {
    Fail(UpFailure::kReset);
    return;
  }
  uint32_t want = (events & ~EPOLLOUT) | (out.empty() ? 0u : kEvOut);
  SetEvents(want);
  if (out.empty() && owner)
    owner->OnUpDrained(this);
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
    w->ReleaseUpstream(this, false);
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
    w->ReleaseUpstream(this, false);
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

// ----------------------------------------------------------------------- Worker

Worker::~Worker() {
  loop_.reset();  // first: an io_uring holds references to the sockets it watches
  for (auto& s : all_sessions_) {
    if (s->fd >= 0)
      close(s->fd);
  }
  for (auto& u : all_upstreams_) {
    if (u->fd >= 0)
      close(u->fd);
  }
  if (wake_fd_ >= 0)
    close(wake_fd_);
}

Session* Worker::NewSession() {
  if (free_sessions_.empty()) {
    all_sessions_.push_back(std::make_unique<Session>());
    Session* s = all_sessions_.back().get();
    s->w = this;
    s->route_timer = Timer{s, Session::kRouteTimer};
    s->try_timer = Timer{s, Session::kTryTimer};
    s->wait_timer = Timer{s, Session::kWaitTimer};
    s->stream_timer = Timer{s, Session::kStreamTimer};
    free_sessions_.push_back(s);
  }
  Session* s = free_sessions_.back();
  free_sessions_.pop_back();
  ++s->gen;
  return s;
}

void Worker::ReleaseSession(Session* s) {
  assert(!s->counted_request && !s->retry_counted && !s->up);
  ++s->gen;
  s->snap.reset();
  s->in.Clear();
  s->out.Clear();
  s->in.Shrink(64 * 1024);
  s->out.Shrink(64 * 1024);
  deferred_.emplace_back(0, s);
}

void Worker::ReleaseMirror(Mirror* m) {
  --mirror_inflight;
  mirror_bytes -= m->bytes;
  // Reusable at once: a Mirror gets no epoll events (its connection does, and that
  // connection's owner is already cleared), its timer is cancelled, and nothing else
  // points to it. So the pool never holds more Mirrors than copies in flight.
  free_mirrors_.push_back(m);
}

UpstreamConn* Worker::GetUpstream(const std::shared_ptr<const Snapshot>& snap, const Cluster* c,
                                  Endpoint* ep, bool* overflow, bool for_mirror) {
  *overflow = false;
  auto it = idle_.find(ep);
  if (it != idle_.end()) {
    while (!it->second.empty()) {
      UpstreamConn* u = it->second.back();
      it->second.pop_back();
      if (u->snap != snap) {  // from an older config: do not mix
        ReleaseUpstream(u, false);
        continue;
      }
      ++u->gen;
      u->ResetResponse();
      u->in.Clear();
      u->out.Clear();
      return u;
    }
  }
  if (c->active_connections.load(std::memory_order_relaxed) >= c->limits.max_connections ||
      (for_mirror && mirror_conns >= opts().mirror_max_connections)) {
    *overflow = true;
    return nullptr;
  }
  int fd = socket(ep->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return nullptr;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (uint32_t mark = opts().upstream_mark;
      mark != 0 && setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) != 0) {
    close(fd);  // unmarked, it would be redirected back into this proxy
    return nullptr;
  }
  int r = connect(fd, reinterpret_cast<const sockaddr*>(&ep->addr), ep->addr_len);
  if (r != 0 && errno != EINPROGRESS) {
    close(fd);
    return nullptr;
  }
  if (free_upstreams_.empty()) {
    all_upstreams_.push_back(std::make_unique<UpstreamConn>());
    UpstreamConn* nu = all_upstreams_.back().get();
    nu->w = this;
    nu->connect_timer = Timer{nu, 0};
    free_upstreams_.push_back(nu);
  }
  UpstreamConn* u = free_upstreams_.back();
  free_upstreams_.pop_back();
  ++u->gen;
  u->fd = fd;
  u->snap = snap;
  u->cluster = c;
  u->ep = ep;
  u->owner = nullptr;
  u->connecting = true;
  u->tunnel = false;
  u->read_paused = false;
  u->peer_closed = false;
  u->in.Clear();
  u->out.Clear();
  u->ResetResponse();
  std::strcpy(u->local_addr, "-");
  u->counted = true;
  u->mirror_conn = for_mirror;
  if (for_mirror)
    ++mirror_conns;
  c->active_connections.fetch_add(1, std::memory_order_relaxed);
  stats().upstream_cx.fetch_add(1, std::memory_order_relaxed);
  u->events = EPOLLOUT;
  loop_->Add(fd, u->events, u, EventLoop::Kind::kConnecting);
  Arm(u->connect_timer, c->connect_timeout.count());
  return u;
}

void Worker::ReleaseUpstream(UpstreamConn* u, bool reuse) {
  const Cluster* c = u->cluster;
  u->owner = nullptr;
  ++u->gen;
  Cancel(u->connect_timer);
  if (reuse && !u->connecting && !u->peer_closed && !u->tunnel && u->in.empty() && u->out.empty() &&
      u->snap == snap_) {
    u->ResetResponse();
    u->read_paused = false;
    u->SetEvents(EPOLLIN | EPOLLRDHUP);
    idle_[u->ep].push_back(u);
  } else {
    // Drop from the idle list if it is there (a pooled connection the server closed).
    auto it = idle_.find(u->ep);
    if (it != idle_.end()) {
      auto& v = it->second;
      v.erase(std::remove(v.begin(), v.end(), u), v.end());
    }
    if (u->fd >= 0) {
      loop_->Close(u->fd);
      u->fd = -1;
    }
    if (u->counted) {
      u->cluster->active_connections.fetch_sub(1, std::memory_order_relaxed);
      u->counted = false;
    }
    if (u->mirror_conn) {
      --mirror_conns;
      u->mirror_conn = false;
    }
    u->snap.reset();
    u->in.Shrink(64 * 1024);
    u->out.Shrink(64 * 1024);
    deferred_.emplace_back(1, u);
  }
  KickPending(c);
}

void Worker::KickPending(const Cluster* c) {
  for (std::size_t i = 0; i < pending_.size(); ++i) {
    Session* s = pending_[i];
    if (s->cluster != c)
      continue;
    pending_.erase(pending_.begin() + static_cast<std::ptrdiff_t>(i));
    c->pending_requests.fetch_sub(1, std::memory_order_relaxed);
    --s->attempt;
    s->StartAttempt();
    return;
  }
}

Endpoint* Worker::OriginalDstEndpoint(const sockaddr_storage& addr) {
  char key[64];
  FormatAddr(addr, key, sizeof(key));
  auto it = original_dst_.find(std::string_view(key));
  if (it != original_dst_.end())
    return it->second.get();
  auto ep = std::make_unique<Endpoint>();
  SetAddress(*ep, addr);
  Endpoint* raw = ep.get();
  original_dst_.emplace(key, std::move(ep));
  return raw;
}

void Worker::OnEndpointResult(const Cluster& c, Endpoint* ep, bool failure) {
  if (!ep)
    return;
  if (!failure) {
    ep->consecutive_5xx.store(0, std::memory_order_relaxed);
    return;
  }
  uint32_t n = ep->consecutive_5xx.fetch_add(1, std::memory_order_relaxed) + 1;
  if (!c.outlier.enabled || n < c.outlier.consecutive_5xx)
    return;
  if (ep->ejected_until_ms.load(std::memory_order_relaxed) > now_ms_)
    return;
  std::size_t ejected = 0;
  for (const auto& e : c.endpoints) {
    if (e->ejected_until_ms.load(std::memory_order_relaxed) > now_ms_)
      ++ejected;
  }
  std::size_t max_ejected =
      std::max<std::size_t>(1, c.endpoints.size() * c.outlier.max_ejection_percent / 100);
  if (ejected >= max_ejected)
    return;
  uint32_t times = ep->times_ejected.fetch_add(1, std::memory_order_relaxed) + 1;
  ep->ejected_until_ms.store(now_ms_ + c.outlier.base_ejection_time.count() * times,
                             std::memory_order_relaxed);
  ep->consecutive_5xx.store(0, std::memory_order_relaxed);
  stats().ejections.fetch_add(1, std::memory_order_relaxed);
}

void Worker::SendMirror(const MirrorPolicy& m, Session& s) {
  const Cluster* c = m.cluster;
  if (!c)
    return;
  const std::size_t req_bytes = s.req.head_len + s.body_scanned + 512;
  if (mirror_inflight >= opts().mirror_max_inflight ||
      mirror_bytes + req_bytes > opts().mirror_max_bytes) {
    stats().mirrors_dropped.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  Endpoint* ep = PickEndpoint(*c, std::nullopt);
  if (!ep)
    return;
  bool overflow = false;
  UpstreamConn* u = GetUpstream(s.snap, c, ep, &overflow, /*for_mirror=*/true);
  if (!u) {
    stats().mirrors_dropped.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  if (free_mirrors_.empty()) {
    all_mirrors_.push_back(std::make_unique<Mirror>());
    Mirror* nm = all_mirrors_.back().get();
    nm->w = this;
    nm->timer = Timer{nm, 0};
    free_mirrors_.push_back(nm);
  }
  Mirror* mr = free_mirrors_.back();
  free_mirrors_.pop_back();
  mr->active = true;
  mr->up = u;
  mr->bytes = req_bytes;
  u->owner = mr;
  u->head_request = s.req.method == "HEAD";
  u->upgrade_request = !s.req.upgrade.empty();
  s.SerializeRequest(u->out, /*shadow=*/!m.disable_shadow_host_suffix);
  ++mirror_inflight;
  mirror_bytes += req_bytes;
  stats().mirrors_sent.fetch_add(1, std::memory_order_relaxed);
  int64_t timeout =
      s.route && s.route->action.timeout.count() > 0 ? s.route->action.timeout.count() : 15000;
  Arm(mr->timer, timeout);
  // The copy is only serialised here; it is sent after this batch's events, so the
  // primary request (sent next by the session) never waits behind the shadow's send.
  if (!u->connecting)
    mirror_flush_.emplace_back(u, u->gen);
}

void Worker::FlushMirrors() {
  for (std::size_t i = 0; i < mirror_flush_.size(); ++i) {
    auto [u, g] = mirror_flush_[i];
    if (u->gen == g && u->fd >= 0 && !u->connecting)
      u->Flush();
  }
  mirror_flush_.clear();
}

void Worker::Accept(ListenerHandler& l) {
  const ListenerConfig* lc = nullptr;
  for (const auto& sl : snap_->listeners) {
    if (sl.socks->name == l.name)
      lc = sl.cfg;
  }
  // At most 64 per event, so one listener's burst cannot starve the connections already
  // open; the listening socket is reported again while connections wait (level-triggered).
  for (int i = 0; i < 64; ++i) {
    sockaddr_storage peer{};
    socklen_t plen = sizeof(peer);
    int cfd =
        accept4(l.fd, reinterpret_cast<sockaddr*>(&peer), &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (cfd < 0)
      return;
    if (!lc) {
      close(cfd);
      continue;
    }
    if (l.count->active.load(std::memory_order_relaxed) >= opts().max_connections_per_listener) {
      close(cfd);  // as Envoy at a listener's connection limit: closed at once, counted
      stats().cx_overflow.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    l.count->active.fetch_add(1, std::memory_order_relaxed);
    int one = 1;
    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    stats().downstream_cx.fetch_add(1, std::memory_order_relaxed);
    stats().active_cx.fetch_add(1, std::memory_order_relaxed);
    Session* s = NewSession();
    s->Open(cfd, peer, snap_, lc, l.count);
  }
}

bool Worker::Reserve(Session* s, std::size_t n) {
  if (reserved_ != 0 && reserved_ + n > opts().worker_buffer_limit)
    return false;
  reserved_ += n;
  s->reserved = n;
  return true;
}

void Worker::Unreserve(Session* s) {
  reserved_ -= s->reserved;
  s->reserved = 0;
}

void Worker::WaitForMemory(Session* s) {
  if (s->waiting_memory)
    return;
  s->waiting_memory = true;
  memory_waiters_.emplace_back(s, s->gen);
  stats().buffer_limit_waits.fetch_add(1, std::memory_order_relaxed);
  // Not receiving at all (io_uring would otherwise keep filling its buffers for it).
  s->events &= ~static_cast<uint32_t>(EPOLLIN);
  loop_->Modify(s->fd, s->events, s);
}

// In arrival order: the first waiter whose body does not fit stops the rest.
void Worker::ResumeMemoryWaiters() {
  std::size_t i = 0;
  for (; i < memory_waiters_.size(); ++i) {
    auto [s, g] = memory_waiters_[i];
    if (s->gen != g || !s->waiting_memory)
      continue;  // closed meanwhile
    if (!Reserve(s, s->BodyReservation()))
      break;
    s->waiting_memory = false;
    // Interest again: the loop reports what arrived meanwhile (EPOLL_CTL_MOD re-arms).
    s->events |= EPOLLIN;
    loop_->Modify(s->fd, s->events, s);
  }
  memory_waiters_.erase(memory_waiters_.begin(),
                        memory_waiters_.begin() + static_cast<std::ptrdiff_t>(i));
}

void Worker::SwapSnapshot() {
  std::shared_ptr<const Snapshot> next;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    next = impl_->snap;
    version_ = impl_->version.load();
  }
  if (!next) {
    for (auto& old : listeners_) {
      loop_->Remove(old->fd);
      retired_listeners_.push_back(std::move(old));
    }
    listeners_.clear();
    CloseIdle();
    snap_.reset();
    return;
  }
  // Listeners: keep handlers whose socket survives, add new ones, drop the rest.
  std::vector<std::unique_ptr<ListenerHandler>> keep;
  for (const auto& l : next->listeners) {
    if (l.socks->fds.empty())
      continue;  // bind_to_port false: reached only through a hand-over
    int fd = l.socks->fds[static_cast<std::size_t>(index_)];
    std::unique_ptr<ListenerHandler> h;
    for (auto& old : listeners_) {
      if (old && old->fd == fd)
        h = std::move(old);
    }
    if (!h) {
      h = std::make_unique<ListenerHandler>();
      h->w = this;
      h->fd = fd;
      h->name = l.socks->name;
      h->count = l.socks->count;
      loop_->Add(fd, EPOLLIN, h.get(), EventLoop::Kind::kPoll);
    }
    keep.push_back(std::move(h));
  }
  for (auto& old : listeners_) {
    if (old) {
      loop_->Remove(old->fd);
      // Its event may still be in the current batch: destroyed after the batch.
      retired_listeners_.push_back(std::move(old));
    }
  }
  listeners_ = std::move(keep);
  snap_ = std::move(next);
  CloseIdle();
}

void Worker::SweepIdle() {
  const bool draining = impl_->draining.load(std::memory_order_relaxed);
  // Near a listener's connection limit, idle connections make room sooner (as Envoy's
  // overload manager scales the idle timeout down).
  const uint32_t pressed = opts().max_connections_per_listener / 4 * 3;
  for (auto& s : all_sessions_) {
    if (s->fd < 0 || s->phase != Session::Phase::kHead || !s->in.empty() || !s->out.empty() ||
        !s->chain || !s->chain->is_http) {
      continue;
    }
    int64_t limit = s->chain->http.idle_timeout.count();
    if (s->lcount && s->lcount->active.load(std::memory_order_relaxed) >= pressed) {
      const int64_t overload = opts().overload_idle_timeout.count();
      limit = limit > 0 ? std::min(limit, overload) : overload;
    }
    if (draining) {
      s->Close();
    } else if (limit > 0 && now_ms_ - s->last_active_ms >= limit) {
      stats().cx_idle_timeout.fetch_add(1, std::memory_order_relaxed);
      s->Close();
    }
  }
}

void Worker::CloseIdle() {
  std::vector<UpstreamConn*> all;
  for (auto& [ep, v] : idle_)
    all.insert(all.end(), v.begin(), v.end());
  for (UpstreamConn* u : all)
    ReleaseUpstream(u, false);
  idle_.clear();
}

void Worker::RunTimers() {
  while (!timers_.empty() && timers_.front()->deadline <= now_ms_) {
    Timer* t = timers_.front();
    timers_.Remove(*t);
    t->owner->OnTimer(t->kind);
  }
}

void Worker::FlushLog() {
  if (log_.size() == 0 || impl_->log_fd < 0) {
    log_.clear();
    return;
  }
  const char* p = log_.data();
  std::size_t n = log_.size();
  while (n > 0) {
    ssize_t r = write(impl_->log_fd, p, n);
    if (r <= 0)
      break;
    p += r;
    n -= static_cast<std::size_t>(r);
  }
  log_.clear();
}

void Worker::Run() {
  while (true) {
    if (impl_->version.load(std::memory_order_acquire) != version_)
      SwapSnapshot();
    if (!snap_)
      break;  // Stop() publishes an empty snapshot
    now_ms_ = NowMs();
    int timeout = -1;
    if (!timers_.empty()) {
      timeout = static_cast<int>(std::clamp<int64_t>(timers_.front()->deadline - now_ms_, 0, 1000));
    }
    // Idle connections are swept every 100 ms (a walk over this worker's sessions).
    if (timeout < 0 || timeout > 100)
      timeout = 100;
    if (!deferred_.empty() || log_.size() > 0 || !mirror_flush_.empty())
      timeout = 0;
    loop_->Poll(timeout);
    now_ms_ = NowMs();
    // Again after the wait: a request that arrives after Update() returned must see the
    // new config even when it comes in the same batch as the wake-up.
    if (impl_->version.load(std::memory_order_acquire) != version_) {
      SwapSnapshot();
      if (!snap_)
        break;
    }
    loop_->Dispatch();
    RunTimers();
    FlushMirrors();
    if (now_ms_ >= next_sweep_ms_) {
      next_sweep_ms_ = now_ms_ + 100;
      SweepIdle();
    }
    for (auto& [kind, p] : deferred_) {
      if (kind == 0)
        free_sessions_.push_back(static_cast<Session*>(p));
      else
        free_upstreams_.push_back(static_cast<UpstreamConn*>(p));
    }
    deferred_.clear();
    retired_listeners_.clear();
    if (!memory_waiters_.empty())
      ResumeMemoryWaiters();
    FlushLog();
  }
  // Shutdown: close every live connection (the loop goes first: an io_uring holds
  // references to the sockets it watches, which would keep them open).
  loop_.reset();
  for (auto& s : all_sessions_) {
    if (s->fd >= 0) {
      close(s->fd);
      s->fd = -1;
    }
  }
  for (auto& u : all_upstreams_) {
    if (u->fd >= 0) {
      close(u->fd);
      u->fd = -1;
    }
  }
  FlushLog();
}

bool IsLoopback(const sockaddr_storage& a) {
  if (a.ss_family == AF_INET)
    return (ntohl(reinterpret_cast<const sockaddr_in&>(a).sin_addr.s_addr) >> 24) == 127;
  if (a.ss_family == AF_INET6) {
    const auto& v6 = reinterpret_cast<const sockaddr_in6&>(a).sin6_addr;
    return IN6_IS_ADDR_LOOPBACK(&v6) || (IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127);
  }
  return false;
}

// A redirected connection from the pod's loopback is from the pod's application: its
// client address becomes the pod's of the same family (the port stays).
void PodClient(const std::vector<sockaddr_storage>& pod, sockaddr_storage* peer) {
  if (pod.empty() || !IsLoopback(*peer))
    return;
  for (const sockaddr_storage& a : pod) {
    if (a.ss_family != peer->ss_family)
      continue;
    if (a.ss_family == AF_INET)
      reinterpret_cast<sockaddr_in&>(*peer).sin_addr =
          reinterpret_cast<const sockaddr_in&>(a).sin_addr;
    else
      reinterpret_cast<sockaddr_in6&>(*peer).sin6_addr =
          reinterpret_cast<const sockaddr_in6&>(a).sin6_addr;
    return;
  }
}

// Envoy's use_original_dst: the connection belongs to the listener whose address is the
// original destination (exact address first, then the wildcard of its family, same
// port); with none, the receiving listener keeps it.
const ListenerConfig* HandOver(const Snapshot& snap, const ListenerConfig* from,
                               const sockaddr_storage& dst) {
  uint16_t port;
  const char* wildcard;
  if (dst.ss_family == AF_INET) {
    port = ntohs(reinterpret_cast<const sockaddr_in&>(dst).sin_port);
    wildcard = "0.0.0.0";
  } else if (dst.ss_family == AF_INET6) {
    port = ntohs(reinterpret_cast<const sockaddr_in6&>(dst).sin6_port);
    wildcard = "::";
  } else {
    return nullptr;
  }
  char ip[INET6_ADDRSTRLEN];
  FormatAddr(dst, ip, sizeof(ip), /*with_port=*/false);
  const ListenerConfig* wild = nullptr;
  for (const auto& l : snap.listeners) {
    if (l.cfg == from || l.cfg->port != port)
      continue;
    if (l.cfg->address == ip)
      return l.cfg;
    if (!wild && l.cfg->address == wildcard)
      wild = l.cfg;
  }
  return wild;
}

// ----------------------------------------------------------------------- Session

void Session::Open(int cfd, const sockaddr_storage& accepted_peer,
                   std::shared_ptr<const Snapshot> s, const ListenerConfig* l,
                   std::shared_ptr<ListenerCount> count) {
  fd = cfd;
  snap = std::move(s);
  lc = l;
  lcount = std::move(count);
  chain = nullptr;
  sni.clear();
  in.Clear();
  out.Clear();
  sockaddr_storage la{};
  socklen_t ll = sizeof(la);
  has_orig_dst = false;
  if (lc->use_original_dst && w->opts().original_dst) {
    if (auto od = w->opts().original_dst(fd, accepted_peer.ss_family)) {
      la = *od;
      orig_dst = *od;
      has_orig_dst = true;
    }
  } else {
    getsockname(fd, reinterpret_cast<sockaddr*>(&la), &ll);
  }
  sockaddr_storage peer_addr = accepted_peer;
  if (has_orig_dst)
    PodClient(w->opts().pod_addresses, &peer_addr);
  FormatAddr(peer_addr, peer, sizeof(peer));
  FormatAddr(peer_addr, peer_ip, sizeof(peer_ip), false);
  source_hash = SourceIpHash(peer_addr);
  if (has_orig_dst) {
    if (const ListenerConfig* target = HandOver(*snap, lc, orig_dst))
      lc = target;
  }
  FormatAddr(la, local, sizeof(local));
  // The clock now, not the batch's: a connection accepted late in a long batch must not
  // look idle since before it came (the idle sweep would close it unread).
  conn_start_ms = NowMs();
  last_active_ms = conn_start_ms;
  bytes_rx = bytes_tx = 0;
  flags = 0;
  status = 0;
  up = nullptr;
  down_eof = up_eof = false;
  tcp_session = false;
  cluster = nullptr;
  route = nullptr;
  std::strcpy(up_host, "-");
  std::strcpy(up_local, "-");
  request_active = false;
  close_after = false;
  in_process = false;
  read_ready = false;
  peer_hup = false;
  in_tunnel_read = false;
  generated_id = false;
  head_start_ms = -1;
  request_complete = false;
  response_sent = false;
  strip_h2c = false;
  waiting_memory = false;
  // Edge-triggered with every event registered once: no epoll_ctl per request.
  events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
  w->loop().Add(fd, events, this, EventLoop::Kind::kStream);
  if (lc->needs_sni) {
    phase = Phase::kSniff;
    return;
  }
  chain = lc->SelectChain("", has_orig_dst ? &orig_dst : nullptr);
  if (!chain) {
    Close();
    return;
  }
  if (chain->is_http) {
    phase = Phase::kHead;
  } else {
    StartTcp();
  }
}

bool Session::ReadInto(Buffer& b) {
  // Returns false on EOF or error.
  // A request being received is read up to the worker's per-connection floor; a body
  // beyond it only under a reservation (Worker::Reserve).
  const bool floored = &b == &in && (phase == Phase::kHead || phase == Phase::kBody);
  // Room for a whole head always, so a head is never waited on.
  const std::size_t floor =
      floored ? std::max(Worker::kHeadFloor, chain->http.limits.max_head_bytes + 1) : 0;
  while (true) {
    std::size_t room = SIZE_MAX;
    if (floored && reserved == 0) {
      if (b.size() >= floor) {
        read_ready = true;  // a head: read again once these requests are taken (Finish)
        if (phase == Phase::kBody && !w->Reserve(this, BodyReservation())) {
          w->WaitForMemory(this);  // resumed once its reservation is granted
          Account();
          return true;
        }
        if (phase == Phase::kHead) {
          Account();
          return true;
        }
      } else {
        room = floor - b.size();
      }
    }
    std::size_t avail;
    char* p = b.WritePtr(8192, &avail);
    const std::size_t want = std::min(avail, room);
    ssize_t n = w->loop().Recv(fd, p, want);
    if (n > 0) {
      b.Commit(static_cast<std::size_t>(n));
      last_io_ms = w->now();
      if (phase == Phase::kTunnel)
        bytes_rx += static_cast<uint64_t>(n);
      if (static_cast<std::size_t>(n) < want && !peer_hup) {
        read_ready = false;  // a short read: the socket is dry
        Account();
        return true;
      }
      if (b.size() > 1024 * 1024) {
        read_ready = true;
        Account();
        return true;
      }
      continue;
    }
    Account();
    if (n == 0)
      return false;
    if (errno == EINTR)
      continue;
    read_ready = false;
    return errno == EAGAIN;
  }
}

void Session::OnEvent(uint32_t ev) {
  if (fd < 0)
    return;  // closed earlier in this epoll batch: the event is stale
  uint64_t g = gen;
  if (ev & EPOLLERR) {
    Abort(kFlagDC);
    return;
  }
  if (ev & (EPOLLRDHUP | EPOLLHUP))
    peer_hup = true;
  if ((ev & EPOLLOUT) && !out.empty()) {
    TryWrite();
    if (g != gen)
      return;
  }
  if (!(ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP)))
    return;
  switch (phase) {
    case Phase::kSniff: {
      bool open = ReadInto(in);
      std::string_view name;
      SniStatus st = ParseClientHelloSni(in.Data(), &name);
      if (st == SniStatus::kNeedMore && open && in.size() < 64 * 1024)
        return;
      if (st == SniStatus::kFound)
        sni.assign(name);
      chain = lc->SelectChain(sni, has_orig_dst ? &orig_dst : nullptr);
      if (!chain) {
        Close();
        return;
      }
      if (chain->is_http) {
        phase = Phase::kHead;
        ServeRequests(/*read_first=*/false);
      } else {
        StartTcp();
        if (g == gen && !open) {
          down_eof = true;
          if (up)
            w->loop().ShutdownWrite(up->fd);
        }
      }
      return;
    }
    case Phase::kHead:
    case Phase::kBody:
      ServeRequests(/*read_first=*/true);
      return;
    case Phase::kTunnel:
      if (up && up->out.size() > 1024 * 1024) {
        read_ready = true;  // resumed by OnUpDrained
        return;
      }
      TunnelRead();
      return;
    case Phase::kClosing: {
      char tmp[4096];
      while (w->loop().Recv(fd, tmp, sizeof(tmp)) > 0) {
      }
      if (ev & (EPOLLRDHUP | EPOLLHUP))
        Close();
      return;
    }
    default:
      // A request is in flight and the connection is not read meanwhile (the head's
      // views point into `in`). A FIN means the client went away; data (pipelined
      // requests) is read when the request is done.
      if (ev & (EPOLLRDHUP | EPOLLHUP))
        Abort(kFlagDC);
      else
        read_ready = true;
      return;
  }
}

void Session::Process() {
  if (in_process)
    return;
  in_process = true;
  uint64_t g = gen;
  while (g == gen && (phase == Phase::kHead || phase == Phase::kBody) && !in.empty()) {
    if (phase == Phase::kHead) {
      RefreshConfig();
      if (head_start_ms < 0) {
        // A request's first byte: its head and whole-request deadlines start now.
        head_start_ms = last_io_ms = w->now();
        request_complete = false;
        ArmStreamTimer();
      }
      http::ParseStatus st = http::ParseRequest(in.Data(), chain->http.limits, &req);
      if (st == http::ParseStatus::kIncomplete)
        break;
      start_ms = head_start_ms;
      request_active = true;
      flags = 0;
      bytes_rx = 0;
      bytes_tx = 0;
      status = 0;
      details = "-";
      if (st == http::ParseStatus::kError) {
        ForgetHead();
        Local(req.error_status, req.error ? req.error : "bad request", kFlagDPE,
              "http1.codec_error");
        break;
      }
      OnHead();
      continue;
    }
    // kBody: wait for the whole body (it is buffered, for retries and mirrors).
    std::string_view body = in.Data().substr(req.head_len);
    bool complete = false;
    if (req.chunked) {
      std::size_t used = chunk.Feed(body.substr(body_scanned), nullptr);
      body_scanned += used;
      if (chunk.failed()) {
        close_after = true;
        Local(400, chunk.error(), kFlagDPE, "http1.codec_error");
        break;
      }
      if (body_scanned > chain->http.max_request_body) {
        close_after = true;
        Local(413, "Payload Too Large", 0, "request_payload_too_large");
        break;
      }
      complete = chunk.done();
    } else {
      body_scanned =
          std::min<std::size_t>(body.size(), static_cast<std::size_t>(req.content_length));
      complete = body_scanned == static_cast<std::size_t>(req.content_length);
    }
    if (!complete) {
      if (req.expect_continue && !sent_continue) {
        sent_continue = true;
        out.Append("HTTP/1.1 100 Continue\r\n\r\n");
        TryWrite();
      }
      break;
    }
    // The buffer may have moved while the body arrived: parse the head again in place.
    http::ParseRequest(in.Data(), chain->http.limits, &req);
    bytes_rx = body_scanned;
    Dispatch();
  }
  in_process = false;
}

void Session::ForgetHead() {
  close_after = true;    // where this request ends, and so the next begins, is unknown
  generated_id = false;  // not the previous request's id
  req.num_headers = 0;
  req.method = req.target = req.path = req.host = req.upgrade = {};
  req.head_len = in.size();
  body_scanned = 0;
}

void Session::OnHead() {
  body_scanned = 0;
  sent_continue = false;
  chunk.Reset();
  bool has_body = req.chunked || req.content_length > 0;
  if (req.content_length > 0 &&
      static_cast<std::size_t>(req.content_length) > chain->http.max_request_body) {
    close_after = true;
    Local(413, "Payload Too Large", 0, "request_payload_too_large");
    return;
  }
  if (has_body) {
    phase = Phase::kBody;
    ArmStreamTimer();
    return;
  }
  Dispatch();
}

void Session::Dispatch() {
  w->stats().requests.fetch_add(1, std::memory_order_relaxed);
  // Stop reading while the request runs: the head's views into `in` stay valid and
  // pipelined requests wait in the buffer. RDHUP still tells us if the client leaves.
  phase = Phase::kUpstream;
  request_complete = true;
  response_sent = false;
  ArmStreamTimer();
  if (!req.keep_alive)
    close_after = true;
  // Request id: keep the client's, else make a UUIDv4.
  bool has_id = false;
  req.Get(http::HeaderId::kXRequestId, &has_id);
  generated_id = !has_id;
  if (generated_id) {
    uint64_t a = w->Rand(), b = w->Rand();
    FormatUuid4(a, b, request_id);
  }
  const RouteTable* rt = chain->http.routes.get();
  vh = rt ? rt->FindVirtualHost(req.host) : nullptr;
  route = vh ? MatchRoute(*vh, req) : nullptr;
  cluster = nullptr;
  wc = nullptr;
  up_ep = nullptr;
  attempt = 0;
  retries_done = 0;
  service_time_ms = -1;
  response_started = false;
  std::strcpy(up_host, "-");
  std::strcpy(up_local, "-");
  strip_h2c = false;
  if (!req.upgrade.empty()) {
    if (http::EqualsIgnoreCase(req.upgrade, "h2c")) {
      // As Envoy's HTTP/1 codec: an h2c upgrade is not taken; the request is served as
      // the HTTP/1.1 request it also is, without its upgrade headers.
      req.upgrade = {};
      strip_h2c = true;
    } else if (!UpgradeAllowed(
                   req.upgrade, chain->http,
                   route && route->kind == Route::Kind::kRoute ? &route->action : nullptr)) {
      // Only the upgrade types configured on the connection manager or the route; any
      // other would open a tunnel whose requests no route ever sees.
      w->stats().upgrades_refused.fetch_add(1, std::memory_order_relaxed);
      Local(403, "", 0, "upgrade_failed");
      return;
    }
  }
  if (!route) {
    Local(404, "", kFlagNR, "route_not_found");
    return;
  }
  if (route->kind == Route::Kind::kDirectResponse) {
    Local(route->direct_status, route->direct_body, 0, "direct_response");
    return;
  }
  if (route->kind == Route::Kind::kRedirect) {
    const RedirectAction& r = route->redirect;
    fmt::memory_buffer loc;
    std::string_view scheme =
        r.scheme.empty() ? std::string_view("http") : std::string_view(r.scheme);
    std::string_view host = r.host.empty() ? req.host : std::string_view(r.host);
    if (r.port != 0 || !r.host.empty()) {
      std::size_t colon = host.rfind(':');
      if (colon != std::string_view::npos && host.find(']') == std::string_view::npos) {
        host = host.substr(0, colon);
      }
    }
    fmt::format_to(std::back_inserter(loc), "location: {}://{}", scheme, host);
    if (r.port != 0)
      fmt::format_to(std::back_inserter(loc), ":{}", r.port);
    if (!r.path.empty()) {
      fmt::format_to(std::back_inserter(loc), "{}", r.path);
    } else if (!r.prefix_rewrite.empty() && route->path_kind != Route::PathKind::kRegex) {
      std::string_view rest = req.path.substr(std::min(req.path.size(), route->path.size()));
      fmt::format_to(std::back_inserter(loc), "{}{}", r.prefix_rewrite, rest);
    } else {
      fmt::format_to(std::back_inserter(loc), "{}", req.path);
    }
    if (!r.strip_query && !req.query.empty())
      fmt::format_to(std::back_inserter(loc), "?{}", req.query);
    Local(r.status, "", 0, "direct_response", std::string_view(loc.data(), loc.size()));
    return;
  }
  const FaultPolicy& fault = route->fault ? *route->fault : chain->http.fault;
  if (fault.active()) {
    if (fault.abort_per_million > 0 && w->Roll(fault.abort_per_million)) {
      Local(fault.abort_status, "fault filter abort", kFlagFI, "fault_filter_abort");
      return;
    }
    if (fault.delay_per_million > 0 && w->Roll(fault.delay_per_million)) {
      flags |= kFlagDI;
      phase = Phase::kDelay;
      w->Arm(wait_timer, fault.delay.count());
      return;
    }
  }
  ContinueAfterFault();
}

void Session::ContinueAfterFault() {
  const RouteAction& a = route->action;
  if (!a.weighted.empty()) {
    uint64_t r = a.total_weight ? w->Rand() % a.total_weight : 0;
    uint64_t acc = 0;
    for (const WeightedCluster& c : a.weighted) {
      acc += c.weight;
      if (r < acc) {
        wc = &c;
        break;
      }
    }
    if (!wc)
      wc = &a.weighted.back();
    cluster = wc->cluster;
  } else {
    cluster = a.cluster;
  }
  if (!cluster) {
    Local(503, "", kFlagNC, "cluster_not_found");
    return;
  }
  if (cluster->active_requests.load(std::memory_order_relaxed) >= cluster->limits.max_requests) {
    w->stats().overflow.fetch_add(1, std::memory_order_relaxed);
    cluster->overflow_total.fetch_add(1, std::memory_order_relaxed);
    Local(503, "upstream connect error or disconnect/reset before headers. reset reason: overflow",
          kFlagUO, "upstream_reset_before_response_started{overflow}");
    return;
  }
  cluster->active_requests.fetch_add(1, std::memory_order_relaxed);
  counted_request = true;
  if (a.timeout.count() > 0)
    w->Arm(route_timer, a.timeout.count());
  for (const MirrorPolicy& m : a.mirrors) {
    if (w->Roll(m.per_million))
      w->SendMirror(m, *this);
  }
  StartAttempt();
}

void Session::StartAttempt() {
  ++attempt;
  if (retry_counted) {
    cluster->active_retries.fetch_sub(1, std::memory_order_relaxed);
    retry_counted = false;
  }
  phase = Phase::kUpstream;
  std::optional<LbHash> hash;
  if (cluster->lb == LbPolicy::kRingHash || cluster->lb == LbPolicy::kMaglev) {
    for (const HashPolicy& hp : route->action.hash_policies) {
      std::string_view key;
      bool found = false;
      if (hp.kind == HashKind::kHeader) {
        // The authority is req.host (an absolute-form target's, not the Host line's).
        if (hp.name == "host" || hp.name == ":authority") {
          key = req.host;
          found = !key.empty();
        } else {
          key = req.Get(hp.name, &found);
        }
      } else if (hp.kind == HashKind::kSourceIp) {
        found = source_hash.family != 0;
      } else {
        std::string_view cookies = req.Get(http::HeaderId::kCookie, &found);
        found = false;
        while (!cookies.empty()) {
          std::size_t semi = cookies.find(';');
          std::string_view kv = cookies.substr(0, semi);
          while (!kv.empty() && kv.front() == ' ')
            kv.remove_prefix(1);
          std::size_t eq = kv.find('=');
          if (eq != std::string_view::npos && kv.substr(0, eq) == hp.name) {
            key = kv.substr(eq + 1);
            found = true;
            break;
          }
          if (semi == std::string_view::npos)
            break;
          cookies.remove_prefix(semi + 1);
        }
      }
      if (found) {
        // A source-IP key is the kernel's client hash, so both paths pick alike.
        const LbHash k = hp.kind == HashKind::kSourceIp ? source_hash : LbHash{HashKey(key), 0};
        hash = hash ? LbHash{hash->value * 31 + k.value, std::max(hash->family, k.family)} : k;
        if (hp.terminal)
          break;
      }
    }
  }
  Endpoint* ep = cluster->original_dst ? (has_orig_dst ? w->OriginalDstEndpoint(orig_dst) : nullptr)
                                       : w->PickEndpoint(*cluster, hash);
  if (!ep) {
    Local(503, "no healthy upstream", kFlagUH, "no_healthy_upstream");
    return;
  }
  bool overflow = false;
  UpstreamConn* u = w->GetUpstream(snap, cluster, ep, &overflow);
  if (!u && overflow) {
    if (cluster->pending_requests.load(std::memory_order_relaxed) >=
        cluster->limits.max_pending_requests) {
      w->stats().overflow.fetch_add(1, std::memory_order_relaxed);
      cluster->overflow_total.fetch_add(1, std::memory_order_relaxed);
      Local(503,
            "upstream connect error or disconnect/reset before headers. reset reason: overflow",
            kFlagUO, "upstream_reset_before_response_started{overflow}");
      return;
    }
    cluster->pending_requests.fetch_add(1, std::memory_order_relaxed);
    phase = Phase::kPending;
    w->AddPending(this);
    return;
  }
  up_ep = ep;
  CopyStr(up_host, ep->address);
  if (!u) {
    OnUpFailure(nullptr, UpFailure::kConnect);
    return;
  }
  up = u;
  u->owner = this;
  u->head_request = req.method == "HEAD";
  u->upgrade_request = !req.upgrade.empty();
  ep->active_requests.fetch_add(1, std::memory_order_relaxed);
  SerializeRequest(u->out, false);
  if (attempt == 1)
    service_time_ms = w->now();
  const RetryPolicy& rp = route->action.retry;
  if (rp.per_try_timeout.count() > 0)
    w->Arm(try_timer, rp.per_try_timeout.count());
  if (!u->connecting) {
    CopyStr(up_local, u->local_addr);
    u->Flush();
  }
}

void Session::SerializeRequest(Buffer& dst, bool shadow) {
  const RouteAction& a = route->action;
  dst.Append(req.method);
  dst.Append(" ");
  // Path, rewritten as the route says; the query string is kept.
  if (a.prefix_rewrite && route->path_kind != Route::PathKind::kRegex) {
    std::size_t matched = std::min(req.path.size(), route->path.size());
    std::string_view rest = req.path.substr(matched);
    // Envoy: rewriting "/prefix" to "/" with rest "/x" must not produce "//x".
    if (a.prefix_rewrite->ends_with('/') && rest.starts_with('/'))
      rest.remove_prefix(1);
    dst.Append(*a.prefix_rewrite);
    dst.Append(rest);
    if (!req.query.empty() || req.target.find('?') != std::string_view::npos) {
      dst.Append("?");
      dst.Append(req.query);
    }
  } else if (a.regex_rewrite) {
    std::string p(req.path);
    RE2::GlobalReplace(&p, *a.regex_rewrite, a.regex_substitution);
    dst.Append(p);
    if (req.target.find('?') != std::string_view::npos) {
      dst.Append("?");
      dst.Append(req.query);
    }
  } else {
    dst.Append(req.target);
  }
  dst.Append(" HTTP/1.1\r\n");

  const HeaderMutations* levels[4] = {wc ? &wc->request_headers : nullptr, &route->request_headers,
                                      &vh->request_headers, &chain->http.routes->request_headers};
  std::string_view host_rewrite = wc && !wc->host_rewrite.empty()
                                      ? std::string_view(wc->host_rewrite)
                                      : std::string_view(a.host_rewrite);
  std::string_view host = host_rewrite.empty() ? req.host : host_rewrite;
  dst.Append("host: ");
  if (shadow)
    ShadowHost(host, dst);
  else
    dst.Append(host);
  dst.Append("\r\n");
  const bool mutated = AnyMutations(levels, 4);
  bool xff = false, xfp = false;
  LineRun unchanged(dst);
  for (std::size_t i = 0; i < req.num_headers; ++i) {
    const http::Header& h = req.headers[i];
    if (IsHopByHop(h.id) || h.id == http::HeaderId::kHost ||
        h.id == http::HeaderId::kXEnvoyAttemptCount || (mutated && Replaced(levels, 4, h.name)) ||
        (strip_h2c && http::EqualsIgnoreCase(h.name, "http2-settings"))) {
      unchanged.Flush();
      continue;
    }
    if (h.id == http::HeaderId::kXForwardedFor) {
      unchanged.Flush();
      xff = true;
      dst.Append(h.name);
      dst.Append(": ");
      dst.Append(h.value);
      dst.Append(",");
      dst.Append(peer_ip);
      dst.Append("\r\n");
      continue;
    }
    xfp |= h.id == http::HeaderId::kXForwardedProto;
    unchanged.Add(h);
  }
  unchanged.Flush();
  if (!xff) {
    dst.Append("x-forwarded-for: ");
    dst.Append(peer_ip);
    dst.Append("\r\n");
  }
  if (!xfp)
    dst.Append("x-forwarded-proto: http\r\n");
  if (generated_id) {
    dst.Append("x-request-id: ");
    dst.Append(request_id);
    dst.Append("\r\n");
  }
  dst.Append("x-envoy-attempt-count: ");
  AppendNum(dst, shadow ? 1 : attempt);
  dst.Append("\r\n");
  if (!req.upgrade.empty()) {
    dst.Append("connection: upgrade\r\nupgrade: ");
    dst.Append(req.upgrade);
    dst.Append("\r\n");
  }
  EmitAdds(dst, levels, 4, req);
  dst.Append("\r\n");
  if (req.chunked || req.content_length > 0)
    dst.Append(in.Data().substr(req.head_len, body_scanned));
}

void Session::DropUpstream(bool reuse) {
  w->Cancel(try_timer);
  if (!up)
    return;
  UpstreamConn* u = up;
  up = nullptr;
  if (up_ep)
    up_ep->active_requests.fetch_sub(1, std::memory_order_relaxed);
  w->ReleaseUpstream(u, reuse);
}

void Session::OnUpConnected(UpstreamConn* u) {
  CopyStr(up_local, u->local_addr);
}

bool Session::ScheduleRetry() {
  const RetryPolicy& rp = route->action.retry;
  if (retries_done >= rp.num_retries) {
    if (rp.num_retries > 0)
      flags |= kFlagURX;
    return false;
  }
  if (cluster->active_retries.load(std::memory_order_relaxed) >= cluster->limits.max_retries) {
    flags |= kFlagUO;
    w->stats().overflow.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  cluster->active_retries.fetch_add(1, std::memory_order_relaxed);
  retry_counted = true;
  ++retries_done;
  w->stats().retries.fetch_add(1, std::memory_order_relaxed);
  // Fully jittered exponential backoff, as Envoy: uniform in [0, base * 2^n), capped.
  int64_t base = std::max<int64_t>(1, rp.base_interval.count());
  int64_t ceiling = std::min<int64_t>(base << std::min<uint32_t>(retries_done, 10),
                                      std::max<int64_t>(base, rp.max_interval.count()));
  int64_t delay = static_cast<int64_t>(w->Rand() % static_cast<uint64_t>(ceiling));
  phase = Phase::kBackoff;
  w->Arm(wait_timer, delay);
  return true;
}

void Session::OnUpFailure(UpstreamConn* u, UpFailure f) {
  (void)u;
  bool tunnel = phase == Phase::kTunnel;
  if (tunnel) {
    // Upstream EOF or error in a TCP tunnel / upgraded connection.
    up_eof = true;
    DropUpstream(false);
    if (!(flags & kFlagUF) && f == UpFailure::kConnect)
      flags |= kFlagUF;
    if (f == UpFailure::kConnect) {
      Abort(0);
      return;
    }
    if (out.empty()) {
      w->loop().ShutdownWrite(fd);
      close_after = true;
    }
    phase = Phase::kClosing;
    if (out.empty())
      Close();
    return;
  }
  w->OnEndpointResult(*cluster, up_ep, true);
  DropUpstream(false);
  if (response_started && f == UpFailure::kProtocol && !response_sent) {
    // The upstream broke its framing before any of its response left here: its head is
    // still queued, so the client gets a 502 rather than a bare close. Not retried: the
    // upstream did answer.
    bytes_tx -= out.size() - resp_head_at;
    out.Truncate(resp_head_at);
    response_started = false;
    Local(502, "upstream protocol error", kFlagUPE,
          "upstream_reset_after_response_started{protocol_error}");
    return;
  }
  if (response_started) {
    flags |= f == UpFailure::kProtocol ? kFlagUPE : kFlagUC;
    Abort(0);
    return;
  }
  const RetryPolicy& rp = route->action.retry;
  bool retriable = false;
  if (f == UpFailure::kConnect) {
    retriable = rp.on_connect_failure || rp.on_5xx || rp.on_gateway_error || rp.on_reset;
  } else {
    retriable = rp.on_reset || rp.on_5xx || rp.on_gateway_error;
  }
  if (retriable && ScheduleRetry())
    return;
  if (f == UpFailure::kConnect) {
    Local(503,
          "upstream connect error or disconnect/reset before headers. reset reason: connection "
          "failure",
          kFlagUF, "upstream_reset_before_response_started{connection_failure}");
  } else if (f == UpFailure::kProtocol) {
    Local(502,
          "upstream connect error or disconnect/reset before headers. reset reason: protocol "
          "error",
          kFlagUPE, "upstream_reset_before_response_started{protocol_error}");
  } else {
    Local(503,
          "upstream connect error or disconnect/reset before headers. reset reason: connection "
          "termination",
          kFlagUC, "upstream_reset_before_response_started{connection_termination}");
  }
}

void Session::OnUpHeaders(UpstreamConn* u) {
  const http::ResponseHead& r = u->resp;
  w->OnEndpointResult(*cluster, up_ep, r.status >= 500);
  const RetryPolicy& rp = route->action.retry;
  bool retriable = (rp.on_5xx && r.status >= 500) ||
                   (rp.on_gateway_error && (r.status == 502 || r.status == 503 || r.status == 504));
  if (!retriable && rp.on_retriable_status_codes) {
    for (uint16_t c : rp.retriable_status_codes)
      retriable |= c == r.status;
  }
  if (retriable && ScheduleRetry()) {
    DropUpstream(false);
    return;
  }
  w->Cancel(try_timer);
  status = r.status;
  details = "via_upstream";
  response_started = true;
  last_io_ms = w->now();
  service_time_ms = w->now() - service_time_ms;
  resp_head_at = out.size();
  WriteResponseHead(r);
  if (r.status == 101) {
    w->Cancel(route_timer);
    phase = Phase::kTunnel;
    TryWrite();
  } else {
    phase = Phase::kResponse;
  }
  // The head goes out with the first body bytes (OnUpReadDone): one send, not two.
}

void Session::WriteResponseHead(const http::ResponseHead& r) {
  std::size_t before = out.size();
  out.Append("HTTP/1.1 ");
  AppendNum(out, static_cast<uint64_t>(r.status));
  out.Append(" ");
  out.Append(r.reason.empty() ? http::ReasonPhrase(r.status) : r.reason);
  out.Append("\r\n");
  const HeaderMutations* levels[4] = {wc ? &wc->response_headers : nullptr,
                                      &route->response_headers, &vh->response_headers,
                                      &chain->http.routes->response_headers};
  bool upgrade = r.status == 101;
  const bool mutated = AnyMutations(levels, 4);
  LineRun unchanged(out);
  for (std::size_t i = 0; i < r.num_headers; ++i) {
    const http::Header& h = r.headers[i];
    if ((upgrade ? h.id == http::HeaderId::kKeepAlive : IsHopByHop(h.id)) ||
        h.id == http::HeaderId::kXEnvoyUpstreamServiceTime ||
        (r.drop_content_length && h.id == http::HeaderId::kContentLength) ||
        (mutated && Replaced(levels, 4, h.name))) {
      unchanged.Flush();
      continue;
    }
    unchanged.Add(h);
  }
  unchanged.Flush();
  EmitAdds(out, levels, 4, r);
  out.Append("x-envoy-upstream-service-time: ");
  AppendNum(out, static_cast<uint64_t>(std::max<int64_t>(0, service_time_ms)));
  out.Append("\r\n");
  if (!upgrade) {
    // A close-delimited upstream body can only be relayed by closing after it; while
    // draining, the client learns from this response not to send another request.
    if (r.close_delimited || w->draining())
      close_after = true;
    AppendConnection();
  }
  out.Append("\r\n");
  bytes_tx += out.size() - before;
}

void Session::AppendConnection() {
  if (close_after)
    out.Append("connection: close\r\n");
  else if (req.minor_version == 0)
    out.Append("connection: keep-alive\r\n");  // HTTP/1.0 is kept alive only when told so
}

void Session::OnUpData(UpstreamConn* u, std::string_view data) {
  out.Append(data);
  bytes_tx += data.size();
  last_io_ms = w->now();
  if (out.size() > 256 * 1024) {
    uint64_t g = gen;
    TryWrite();
    if (g != gen)
      return;
  }
  Account();
  // Backpressure: stop reading the upstream while the client is slow, or while the
  // worker holds more than its budget (TryWrite resumes it once `out` is written).
  if (u == up && (out.size() > 4 * 1024 * 1024 || !w->MayBuffer(out.size())))
    u->PauseRead(true);
}

void Session::OnUpDrained(UpstreamConn*) {
  if (phase != Phase::kTunnel || !up)
    return;
  if (down_eof) {
    w->loop().ShutdownWrite(up->fd);  // the client's half-close, passed on once its bytes are out
  } else if (read_ready) {
    TunnelRead();  // its read clears read_ready
  }
}

void Session::OnUpReadDone(UpstreamConn*) {
  if (!out.empty())
    TryWrite();
}

void Session::OnUpDone(UpstreamConn* u) {
  DropUpstream(u->reusable);
  uint64_t g = gen;
  TryWrite();  // the response first, then the next pipelined request
  if (g != gen)
    return;
  Finish();
}

void Session::OnTimer(int kind) {
  switch (kind) {
    case kRouteTimer:
      StopWaiting();
      DropUpstream(false);
      if (response_started) {
        flags |= kFlagUT;
        Abort(0);
        return;
      }
      Local(504, "upstream request timeout", kFlagUT, "upstream_response_timeout");
      return;
    case kTryTimer:
      if (response_started || !up)
        return;
      w->OnEndpointResult(*cluster, up_ep, true);
      DropUpstream(false);
      {
        const RetryPolicy& rp = route->action.retry;
        if ((rp.on_5xx || rp.on_gateway_error || rp.on_reset) && ScheduleRetry())
          return;
      }
      Local(504, "upstream request timeout", kFlagUT, "upstream_per_try_timeout");
      return;
    case kWaitTimer:
      if (phase == Phase::kDelay) {
        ContinueAfterFault();
      } else if (phase == Phase::kBackoff) {
        StartAttempt();
      }
      return;
    case kStreamTimer:
      OnStreamTimer();
      return;
  }
}

int64_t Session::StreamDeadline(Deadline* which) const {
  *which = Deadline::kNone;
  int64_t best = INT64_MAX;
  if (head_start_ms < 0 || !chain || !chain->is_http)
    return best;  // no request under way
  auto consider = [&](int64_t from, Millis limit, Deadline d) {
    if (limit.count() > 0 && from + limit.count() < best) {
      best = from + limit.count();
      *which = d;
    }
  };
  const HttpSettings& h = chain->http;
  if (phase == Phase::kHead)
    consider(head_start_ms, h.request_headers_timeout, Deadline::kHead);
  if (!request_complete)
    consider(head_start_ms, h.request_timeout, Deadline::kRequest);
  consider(last_io_ms, h.stream_idle_timeout, Deadline::kIdle);
  return best;
}

void Session::ArmStreamTimer() {
  Deadline which;
  const int64_t at = StreamDeadline(&which);
  if (which == Deadline::kNone) {
    w->Cancel(stream_timer);
    return;
  }
  // An idle deadline moves with every byte: the timer is not moved then, but checked
  // again when it fires (OnStreamTimer), so a busy request costs no timer operations.
  if (!stream_timer.armed() || stream_timer.deadline > at)
    w->Arm(stream_timer, std::max<int64_t>(0, at - w->now()));
}

void Session::OnStreamTimer() {
  Deadline which;
  const int64_t at = StreamDeadline(&which);
  if (which == Deadline::kNone)
    return;
  if (at > w->now()) {
    ArmStreamTimer();
    return;
  }
  int code = 408;
  const char* body = "request header timeout";
  const char* why = "request_header_timeout";
  uint32_t flag = 0;
  switch (which) {
    case Deadline::kHead:
      w->stats().rq_header_timeout.fetch_add(1, std::memory_order_relaxed);
      break;
    case Deadline::kRequest:
      w->stats().rq_timeout.fetch_add(1, std::memory_order_relaxed);
      body = "request timeout";
      why = "request_overall_timeout";
      break;
    case Deadline::kIdle:
      w->stats().rq_idle_timeout.fetch_add(1, std::memory_order_relaxed);
      flag = kFlagSI;
      if (response_started) {
        Abort(kFlagSI);  // part of the response is out: all that is left is a reset
        return;
      }
      body = "stream timeout";
      why = "stream_idle_timeout";
      code = request_complete ? 504 : 408;  // Envoy: 408 only while the request is incomplete
      break;
    case Deadline::kNone:
      return;
  }
  StopWaiting();
  if (phase == Phase::kHead) {  // a head that never completed
    ForgetHead();
    request_active = true;
    start_ms = head_start_ms;
    flags = 0;
    bytes_rx = in.size();
    bytes_tx = 0;
  }
  if (!request_complete)
    close_after = true;  // the rest of this request would be read as the next one
  Local(code, body, flag, why);
}

void Session::Local(int code, std::string_view body, uint32_t flag, const char* why,
                    std::string_view extra_header) {
  flags |= flag;
  status = code;
  details = why;
  DropUpstream(false);
  std::size_t before = out.size();
  out.Append("HTTP/1.1 ");
  AppendNum(out, static_cast<uint64_t>(code));
  out.Append(" ");
  out.Append(http::ReasonPhrase(code));
  out.Append("\r\ncontent-length: ");
  AppendNum(out, body.size());
  out.Append("\r\n");
  if (!body.empty())
    out.Append("content-type: text/plain\r\n");
  if (!extra_header.empty()) {
    out.Append(extra_header);
    out.Append("\r\n");
  }
  if (route) {
    const HeaderMutations* levels[3] = {&route->response_headers, &vh->response_headers,
                                        &chain->http.routes->response_headers};
    http::ResponseHead empty;
    EmitAdds(out, levels, 3, empty);
  }
  if (w->draining())
    close_after = true;
  AppendConnection();
  out.Append("\r\n");
  if (req.method != "HEAD")
    out.Append(body);
  bytes_tx += out.size() - before;
  Finish();
  if (phase != Phase::kClosed)
    TryWrite();
}

void Session::LogRequest() {
  if (!chain || !chain->access_log)
    return;
  auto& b = w->log_buffer();
  bool tcp = !chain->is_http;
  int64_t duration = w->now() - (tcp ? conn_start_ms : start_ms);
  // %START_TIME%, from the loop's clock: no wall-clock read on the request path.
  auto wall = std::chrono::system_clock::now() - std::chrono::milliseconds(duration);
  std::time_t t = std::chrono::system_clock::to_time_t(wall);
  std::tm tm{};
  gmtime_r(&t, &tm);
  int ms = static_cast<int>(
      std::chrono::duration_cast<std::chrono::milliseconds>(wall.time_since_epoch()).count() %
      1000);
  auto dash = [](std::string_view v) { return v.empty() ? std::string_view("-") : v; };
  std::string_view flag_str;
  char flag_buf[64];
  std::size_t fl = 0;
  for (std::size_t i = 0; i < std::size(kFlagNames); ++i) {
    if (flags & (1u << i)) {
      if (fl)
        flag_buf[fl++] = ',';
      std::size_t n = std::strlen(kFlagNames[i]);
      std::memcpy(flag_buf + fl, kFlagNames[i], n);
      fl += n;
    }
  }
  flag_str = fl ? std::string_view(flag_buf, fl) : std::string_view("-");
  const char* cluster_name = cluster ? cluster->name.c_str() : "-";
  std::string_view route_name = route && !route->name.empty() ? std::string_view(route->name) : "-";
  if (tcp) {
    fmt::format_to(
        std::back_inserter(b),
        "[{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z] \"- - -\" 0 {} - - \"-\" {} {} {} - "
        "\"-\" \"-\" \"-\" \"-\" \"{}\" {} {} {} {} {} -\n",
        tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms,
        flag_str, bytes_rx, bytes_tx, duration, up_host, cluster_name, up_local, local, peer,
        sni.empty() ? std::string_view("-") : std::string_view(sni));
    return;
  }
  std::string_view xff = req.Get(http::HeaderId::kXForwardedFor);
  std::string_view rid =
      generated_id ? std::string_view(request_id) : req.Get(http::HeaderId::kXRequestId);
  char svc[24] = "-";
  if (response_started && service_time_ms >= 0)
    snprintf(svc, sizeof(svc), "%lld", static_cast<long long>(service_time_ms));
  fmt::format_to(
      std::back_inserter(b),
      "[{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z] \"{} {} {}\" {} {} {} - \"-\" {} {} {} {} "
      "\"{}\" \"{}\" \"{}\" \"{}\" \"{}\" {} {} {} {} {} {}\n",
      tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms,
      dash(req.method), dash(req.target),
      req.method.empty() ? "-" : (req.minor_version ? "HTTP/1.1" : "HTTP/1.0"), status, flag_str,
      details, bytes_rx, bytes_tx, duration, svc, dash(xff),
      dash(req.Get(http::HeaderId::kUserAgent)), dash(rid), dash(req.host), up_host, cluster_name,
      up_local, local, peer, sni.empty() ? std::string_view("-") : std::string_view(sni),
      route_name);
}

void Session::Uncount() {
  if (retry_counted) {
    cluster->active_retries.fetch_sub(1, std::memory_order_relaxed);
    retry_counted = false;
  }
  if (counted_request) {
    cluster->active_requests.fetch_sub(1, std::memory_order_relaxed);
    counted_request = false;
  }
}

void Session::Finish() {
  // The request is answered (fully queued in `out`): log, account, and move on.
  w->Cancel(route_timer);
  w->Cancel(try_timer);
  w->Cancel(wait_timer);
  w->Cancel(stream_timer);
  Uncount();
  LogRequest();
  request_active = false;
  head_start_ms = -1;
  request_complete = false;
  w->Unreserve(this);
  std::size_t used = std::min(in.size(), req.head_len + body_scanned);
  in.Consume(used);
  Account();
  req.num_headers = 0;
  req.head_len = 0;
  body_scanned = 0;
  route = nullptr;
  vh = nullptr;
  if (close_after) {
    phase = Phase::kClosing;
    if (out.empty())
      Close();
    return;
  }
  phase = Phase::kHead;
  last_active_ms = w->now();
  if (in_process)
    return;  // answered from within ServeRequests, whose loops go on with the rest
  // Bytes (pipelined requests) may have arrived while the request ran, announced by an
  // edge that is gone: read them now.
  if (read_ready || !in.empty())
    ServeRequests(/*read_first=*/read_ready);
}

void Session::ServeRequests(bool read_first) {
  uint64_t g = gen;
  bool read = read_first;
  while (true) {
    if (read && !ReadInto(in)) {
      if (phase == Phase::kHead && in.empty())
        Close();
      else
        Abort(kFlagDC);
      return;
    }
    Process();
    // The socket may hold more than was read (a read stops at the connection's floor or
    // its 1 MiB): edge-triggered, nothing will say so again, so read on.
    if (g != gen || !read_ready || waiting_memory ||
        (phase != Phase::kHead && phase != Phase::kBody))
      return;
    read = true;
  }
}

void Session::RefreshConfig() {
  // Pick up a newer config between requests.
  if (w->snap() == snap || !w->snap())
    return;
  {
    for (const auto& l : w->snap()->listeners) {
      if (l.socks->name == lc->name) {
        std::size_t idx =
            static_cast<std::size_t>(chain - (lc->chains.empty() ? chain : &lc->chains[0]));
        const ListenerConfig* nl = l.cfg;
        const FilterChain* nc = nullptr;
        if (lc->default_chain && chain == &*lc->default_chain) {
          nc = nl->default_chain ? &*nl->default_chain : nullptr;
        } else if (idx < nl->chains.size() && nl->chains.size() == lc->chains.size()) {
          nc = &nl->chains[idx];
        } else {
          nc = nl->SelectChain(sni, has_orig_dst ? &orig_dst : nullptr);
        }
        if (nc && nc->is_http) {
          lc = nl;
          chain = nc;
          snap = w->snap();
        }
      }
    }
  }
}

void Session::Abort(uint32_t flag) {
  flags |= flag;
  Close();
}

// The one way a session ends, whatever ended it: a request still open (an upgraded
// one in its tunnel, one waiting for a pooled connection) gives back what it holds of
// its cluster's circuit breakers and is logged, so nothing of it outlives the session.
void Session::StopWaiting() {
  if (phase == Phase::kPending) {
    w->RemovePending(this);
    cluster->pending_requests.fetch_sub(1, std::memory_order_relaxed);
  }
}

void Session::Close() {
  if (phase == Phase::kClosed)
    return;
  StopWaiting();
  phase = Phase::kClosed;
  DropUpstream(false);
  if (request_active) {
    Uncount();
    LogRequest();
    request_active = false;
  }
  if (tcp_session) {
    tcp_session = false;
    LogRequest();
  }
  w->Cancel(route_timer);
  w->Cancel(try_timer);
  w->Cancel(wait_timer);
  w->Cancel(stream_timer);
  if (fd >= 0) {
    w->loop().Close(fd);
    fd = -1;
    w->stats().active_cx.fetch_sub(1, std::memory_order_relaxed);
  }
  if (lcount) {
    lcount->active.fetch_sub(1, std::memory_order_relaxed);
    lcount.reset();
  }
  w->Charge(0, accounted);
  accounted = 0;
  w->Unreserve(this);
  waiting_memory = false;
  w->ReleaseSession(this);
}

void Session::TryWrite() {
  if (response_started && !out.empty())
    response_sent = true;
  if (w->loop().Send(fd, out) != 0) {
    Abort(kFlagDC);
    return;
  }
  Account();
  if (out.empty()) {
    if (phase == Phase::kClosing) {
      Close();
      return;
    }
    if (phase == Phase::kTunnel && up_eof) {
      w->loop().ShutdownWrite(fd);
      MaybeCloseTunnel();
      return;
    }
    if (up && up->read_paused)
      up->PauseRead(false);
  }
  // Not written yet: EPOLLOUT (always registered, edge-triggered) calls back.
}

// ----------------------------------------------------------------------- TCP tunnel

void Session::StartTcp() {
  phase = Phase::kTunnel;
  tcp_session = true;
  const TcpSettings& t = chain->tcp;
  cluster = t.cluster;
  if (!t.weighted.empty()) {
    uint64_t r = t.total_weight ? w->Rand() % t.total_weight : 0;
    uint64_t acc = 0;
    cluster = t.weighted.back().cluster;
    for (const WeightedCluster& c : t.weighted) {
      acc += c.weight;
      if (r < acc) {
        cluster = c.cluster;
        break;
      }
    }
  }
  if (!cluster) {
    flags |= kFlagNC;
    Abort(0);
    return;
  }
  Endpoint* ep = cluster->original_dst ? (has_orig_dst ? w->OriginalDstEndpoint(orig_dst) : nullptr)
                                       : w->PickEndpoint(*cluster, source_hash);
  if (!ep) {
    flags |= kFlagUH;
    Abort(0);
    return;
  }
  bool overflow = false;
  UpstreamConn* u = w->GetUpstream(snap, cluster, ep, &overflow);
  up_ep = ep;
  CopyStr(up_host, ep->address);
  if (!u) {
    flags |= overflow ? kFlagUO : kFlagUF;
    Abort(0);
    return;
  }
  up = u;
  u->owner = this;
  u->tunnel = true;
  ep->active_requests.fetch_add(1, std::memory_order_relaxed);
  // Whatever arrived already (a TLS ClientHello) goes first, untouched.
  bytes_rx += in.size();
  u->out.Append(in.Data());
  in.Clear();
}

void Session::TunnelRead() {
  if (!up) {
    Close();
    return;
  }
  if (in_tunnel_read)
    return;  // called back from the Flush below: the loop goes on
  in_tunnel_read = true;
  uint64_t g = gen;
  while (true) {
    bool open = ReadInto(up->out);
    UpstreamConn* u = up;
    if (!u->connecting)
      u->Flush();
    if (g != gen)
      return;  // closed meanwhile (the flag is reset when the session is reused)
    if (!open) {
      down_eof = true;
      if (up && up->out.empty() && !up->connecting)
        w->loop().ShutdownWrite(up->fd);
      in_tunnel_read = false;
      MaybeCloseTunnel();
      return;
    }
    // ReadInto stops early (read_ready) above 1 MiB queued for the upstream; go on
    // only if the upstream took it, else OnUpDrained resumes.
    if (!read_ready || !up || up->out.size() > 1024 * 1024)
      break;
  }
  in_tunnel_read = false;
}

void Session::MaybeCloseTunnel() {
  if (down_eof && up_eof && out.empty())
    Abort(0);
}

}  // namespace

// ----------------------------------------------------------------------- Proxy

namespace {

Result<int> DefaultOpenListener(const ListenerConfig& l, uint16_t port) {
  auto addr = ParseIp(l.address, port);
  if (!addr)
    return Fail("listener " + l.name + ": address " + l.address + " is not an IP address");
  const sockaddr_storage& ss = *addr;
  const socklen_t len = ss.ss_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return FailErrno("listener " + l.name + ": socket", errno);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
  if (bind(fd, reinterpret_cast<const sockaddr*>(&ss), len) != 0) {
    int e = errno;
    close(fd);
    return FailErrno(fmt::format("listener {}: bind {}:{}", l.name, l.address, port), e);
  }
  if (listen(fd, 4096) != 0) {
    int e = errno;
    close(fd);
    return FailErrno("listener " + l.name + ": listen", e);
  }
  return fd;
}

uint16_t BoundPort(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0)
    return 0;
  if (ss.ss_family == AF_INET)
    return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  return ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
}

// netfilter's SO_ORIGINAL_DST (SOL_IP) and IP6T_SO_ORIGINAL_DST (SOL_IPV6), which the
// kernel path's getsockopt hook answers for redirected connections; the socket's family
// (the peer's, from accept) says which to ask.
constexpr int kIp6tSoOriginalDst = 80;  // IP6T_SO_ORIGINAL_DST, linux/netfilter_ipv6/ip6_tables.h

std::optional<sockaddr_storage> DefaultOriginalDst(int fd, int family) {
  sockaddr_storage ss{};
  const bool v6 = family == AF_INET6;
  socklen_t len = v6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
  if (getsockopt(fd, v6 ? SOL_IPV6 : SOL_IP, v6 ? kIp6tSoOriginalDst : SO_ORIGINAL_DST, &ss,
                 &len) != 0 ||
      ss.ss_family != family)
    return std::nullopt;
  return ss;
}

}  // namespace

Result<std::shared_ptr<const Snapshot>> Proxy::Impl::BuildSnapshot(
    std::shared_ptr<const ProxyConfig> cfg) {
  auto s = std::make_shared<Snapshot>();
  s->cfg = cfg;
  std::shared_ptr<const Snapshot> old;
  {
    std::lock_guard<std::mutex> lock(mu);
    old = snap;
  }
  for (const ListenerConfig& l : cfg->listeners) {
    std::string key = fmt::format("{}:{}", l.address, l.port);
    std::shared_ptr<ListenerSockets> socks;
    if (old && l.bind_to_port) {
      for (const auto& ol : old->listeners) {
        if (ol.socks->name == l.name && ol.socks->key == key)
          socks = ol.socks;
      }
    }
    if (!socks) {
      socks = std::make_shared<ListenerSockets>();
      socks->name = l.name;
      socks->key = key;
      uint16_t port = l.port;
      for (int i = 0; l.bind_to_port && i < opts.workers; ++i) {
        auto fd = opts.open_listener(l, port);
        if (!fd && l.optional) {
          // Its address does not exist here (no IPv6 in this network namespace, say):
          // the listener stays without sockets (Port() answers 0) and the rest runs.
          for (int open_fd : socks->fds)
            close(open_fd);
          socks->fds.clear();
          port = 0;
          break;
        }
        SLUICE_RETURN_IF_ERROR_CTX(fd, "opening listeners");
        socks->fds.push_back(*fd);
        if (port == 0)
          port = BoundPort(*fd);
      }
      socks->port = l.bind_to_port ? port : 0;
    }
    s->listeners.push_back(Snapshot::Listener{&l, socks});
  }
  return s;
}

void Proxy::Impl::Publish(std::shared_ptr<const Snapshot> s) {
  {
    std::lock_guard<std::mutex> lock(mu);
    snap = std::move(s);
    version.fetch_add(1, std::memory_order_release);
  }
  for (auto& w : workers)
    w->Wake();
}

std::vector<NamedStat> NamedStats(const ProxyStats& s) {
  auto v = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
  return {
      {"requests_total", "HTTP requests", false, v(s.requests)},
      {"downstream_cx_total", "Downstream connections accepted", false, v(s.downstream_cx)},
      {"downstream_cx_active", "Downstream connections open", true, v(s.active_cx)},
      {"upstream_cx_total", "Upstream connections opened", false, v(s.upstream_cx)},
      {"retries_total", "Request retries", false, v(s.retries)},
      {"mirrors_sent_total", "Mirror copies sent", false, v(s.mirrors_sent)},
      {"mirrors_dropped_total", "Mirror copies dropped at a limit", false, v(s.mirrors_dropped)},
      {"upstream_overflow_total", "Requests refused by a circuit breaker", false, v(s.overflow)},
      {"ejections_total", "Endpoints ejected by outlier detection", false, v(s.ejections)},
      {"downstream_cx_overflow_total", "Connections closed at a listener's limit", false,
       v(s.cx_overflow)},
      {"downstream_cx_idle_timeout_total", "Keep-alive connections closed idle", false,
       v(s.cx_idle_timeout)},
      {"downstream_rq_header_timeout_total", "Requests whose head came too slowly (408)", false,
       v(s.rq_header_timeout)},
      {"downstream_rq_timeout_total", "Requests not received within request_timeout (408)", false,
       v(s.rq_timeout)},
      {"downstream_rq_idle_timeout_total", "Requests idle past stream_idle_timeout", false,
       v(s.rq_idle_timeout)},
      {"upgrades_refused_total", "Upgrade requests refused (403)", false, v(s.upgrades_refused)},
      {"buffer_limit_waits_total", "Reads deferred by the worker buffer limit", false,
       v(s.buffer_limit_waits)},
      {"buffered_bytes", "Bytes held for downstream connections", true, v(s.buffered_bytes)},
  };
}

Proxy::Proxy(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<Proxy>> Proxy::Start(std::shared_ptr<const ProxyConfig> config,
                                            ProxyOptions options) {
  auto impl = std::make_unique<Impl>();
  if (options.workers < 1)
    options.workers = 1;
  if (!options.open_listener)
    options.open_listener = DefaultOpenListener;
  if (!options.original_dst)
    options.original_dst = DefaultOriginalDst;
  if (options.io == IoBackend::kAuto) {
    if (const char* env = std::getenv("SLUICE_PROXY_IO"); env && *env) {
      auto b = ParseIoBackend(env);
      SLUICE_RETURN_IF_ERROR_CTX(b, "SLUICE_PROXY_IO");
      options.io = *b;
    }
  }
  impl->opts = std::move(options);
  if (impl->opts.access_log_path.empty() || impl->opts.access_log_path == "/dev/stdout") {
    impl->log_fd = dup(STDOUT_FILENO);
  } else {
    impl->log_fd =
        open(impl->opts.access_log_path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (impl->log_fd < 0)
      return FailErrno("access log " + impl->opts.access_log_path, errno);
  }
  auto snap = impl->BuildSnapshot(std::move(config));
  SLUICE_RETURN_IF_ERROR(snap);
  for (int i = 0; i < impl->opts.workers; ++i) {
    auto w = std::make_unique<Worker>(impl.get(), i);
    SLUICE_RETURN_IF_ERROR(w->Init());
    impl->workers.push_back(std::move(w));
  }
  impl->Publish(*snap);
  std::vector<std::promise<Result<void>>> started(impl->workers.size());
  for (auto& w : impl->workers) {
    Worker* wp = w.get();
    const auto& hook = impl->opts.on_worker_start;
    auto* ready = &started[static_cast<std::size_t>(wp->index())];
    impl->threads.emplace_back([wp, &hook, ready] {
      char name[16];
      std::snprintf(name, sizeof(name), "sluice-l7-%d", wp->index());
      pthread_setname_np(pthread_self(), name);
      Result<void> r = hook ? hook(wp->index()) : Result<void>{};
      if (r)
        r = wp->Activate();
      bool ok = r.has_value();
      ready->set_value(std::move(r));  // `ready` is gone after this line
      if (ok)
        wp->Run();
    });
  }
  std::optional<Error> failed;
  for (auto& p : started) {
    auto r = p.get_future().get();
    if (!r && !failed)
      failed = r.error();
  }
  auto proxy = std::unique_ptr<Proxy>(new Proxy(std::move(impl)));
  if (failed) {
    proxy->Stop();  // the workers that started see the empty snapshot and end
    return Wrap("starting a worker", *failed);
  }
  return proxy;
}

Result<void> Proxy::Update(std::shared_ptr<const ProxyConfig> config) {
  auto snap = impl_->BuildSnapshot(std::move(config));
  SLUICE_RETURN_IF_ERROR(snap);
  impl_->Publish(*snap);
  return {};
}

Result<void> Proxy::Drain() {
  std::shared_ptr<const ProxyConfig> current;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    if (!impl_->snap)
      return {};
    current = impl_->snap->cfg;
  }
  auto cfg = std::make_shared<ProxyConfig>(*current);
  for (auto& l : cfg->listeners)
    l.bind_to_port = false;  // every listening socket closes once the workers move on
  impl_->draining = true;
  return Update(std::move(cfg));
}

uint16_t Proxy::Port(std::string_view listener) const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  if (!impl_->snap)
    return 0;
  for (const auto& l : impl_->snap->listeners) {
    if (l.socks->name == listener)
      return l.socks->port;
  }
  return 0;
}

IoBackend Proxy::io_backend() const {
  return impl_->workers.empty() ? IoBackend::kAuto : impl_->workers.front()->io_backend();
}

std::string Proxy::io_fallback_reason() const {
  return impl_->workers.empty() ? std::string() : impl_->workers.front()->io_fallback_reason();
}

const ProxyStats& Proxy::stats() const {
  return impl_->stats;
}

void Proxy::Stop() {
  if (impl_->stopped)
    return;
  impl_->stopped = true;
  impl_->Publish(nullptr);
  for (auto& t : impl_->threads)
    t.join();
  impl_->threads.clear();
  impl_->workers.clear();
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->snap.reset();
  }
  if (impl_->log_fd >= 0)
    close(impl_->log_fd);
  impl_->log_fd = -1;
}

Proxy::~Proxy() {
  Stop();
}

}  // namespace sluice::proxy
