#include "sluice/proxy/event_loop.h"

#include <linux/io_uring.h>
#include <linux/time_types.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace sluice::proxy {

Result<IoBackend> ParseIoBackend(const std::string& name) {
  if (name.empty() || name == "auto")
    return IoBackend::kAuto;
  if (name == "epoll")
    return IoBackend::kEpoll;
  if (name == "io_uring" || name == "uring")
    return IoBackend::kUring;
  return Fail("unknown I/O backend \"" + name + "\" (expected auto, epoll or io_uring)");
}

const char* IoBackendName(IoBackend b) {
  switch (b) {
    case IoBackend::kAuto:
      return "auto";
    case IoBackend::kEpoll:
      return "epoll";
    case IoBackend::kUring:
      return "io_uring";
  }
  return "?";
}

namespace {

// ----------------------------------------------------------------------- epoll

class EpollLoop final : public EventLoop {
 public:
  Result<void> Init() {
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    if (ep_ < 0)
      return FailErrno("epoll_create1", errno);
    return {};
  }
  ~EpollLoop() override {
    if (ep_ >= 0)
      close(ep_);
  }
  IoBackend backend() const override { return IoBackend::kEpoll; }
  Result<void> Activate() override { return {}; }

  bool Add(int fd, uint32_t events, IoHandler* h, Kind) override {
    return Ctl(EPOLL_CTL_ADD, fd, events, h);
  }
  void Modify(int fd, uint32_t events, IoHandler* h) override { Ctl(EPOLL_CTL_MOD, fd, events, h); }
  void Remove(int fd) override { epoll_ctl(ep_, EPOLL_CTL_DEL, fd, nullptr); }

  ssize_t Recv(int fd, char* p, std::size_t n) override { return recv(fd, p, n, 0); }
  int Send(int fd, Buffer& out) override {
    while (!out.empty()) {
      ssize_t n = send(fd, out.Data().data(), out.size(), MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR)
          continue;
        return errno == EAGAIN ? 0 : errno;
      }
      out.Consume(static_cast<std::size_t>(n));
    }
    return 0;
  }
  void ShutdownWrite(int fd) override { shutdown(fd, SHUT_WR); }
  void Close(int fd) override {
    epoll_ctl(ep_, EPOLL_CTL_DEL, fd, nullptr);
    close(fd);
  }

  void Poll(int timeout_ms) override { n_ = epoll_wait(ep_, events_, kMaxEvents, timeout_ms); }
  void Dispatch() override {
    for (int i = 0; i < n_; ++i)
      Deliver(static_cast<IoHandler*>(events_[i].data.ptr), events_[i].events);
    n_ = 0;
  }

 private:
  bool Ctl(int op, int fd, uint32_t events, IoHandler* h) {
    epoll_event ev{};
    ev.events = events;
    ev.data.ptr = h;
    return epoll_ctl(ep_, op, fd, &ev) == 0;
  }

  static constexpr int kMaxEvents = 256;
  int ep_ = -1;
  int n_ = 0;
  epoll_event events_[kMaxEvents];
};

// ----------------------------------------------------------------------- io_uring

int SysSetup(unsigned entries, io_uring_params* p) {
  return static_cast<int>(syscall(__NR_io_uring_setup, entries, p));
}
int SysEnter(int fd, unsigned submit, unsigned wait, unsigned flags, const void* arg,
             std::size_t argsz) {
  return static_cast<int>(syscall(__NR_io_uring_enter, fd, submit, wait, flags, arg, argsz));
}
int SysRegister(int fd, unsigned op, const void* arg, unsigned n) {
  return static_cast<int>(syscall(__NR_io_uring_register, fd, op, arg, n));
}

// What an operation's user_data says: the op, the channel's slot and its generation.
enum Op : uint64_t { kOpRecv = 1, kOpSend, kOpPoll, kOpConnect, kOpCancel };
uint64_t Tag(Op op, uint32_t slot, uint32_t gen) {
  return (static_cast<uint64_t>(op) << 56) | (static_cast<uint64_t>(gen & 0xffffff) << 32) | slot;
}

class UringLoop final : public EventLoop {
 public:
  explicit UringLoop(const Options& o)
      : nbufs_(RoundPow2(o.buffers < 8 ? 8 : o.buffers)),
        buf_size_(o.buffer_size < 512 ? 512 : o.buffer_size) {
    // Steady traffic must not allocate (tests/proxy/alloc_test.cc): the lists a loop
    // iteration fills start with room, and channels are made in batches (GrowSlots).
    for (auto* v : {&dirty_, &ready_, &starved_, &touched_, &scratch_, &free_slots_})
      v->reserve(256);
    by_fd_.assign(1024, -1);
  }
  ~UringLoop() override;
  Result<void> Init();

  IoBackend backend() const override { return IoBackend::kUring; }
  Result<void> Activate() override {
    if (SysRegister(ring_fd_, IORING_REGISTER_ENABLE_RINGS, nullptr, 0) != 0)
      return FailErrno("io_uring: enable the ring", errno);
    active_ = true;
    return {};
  }

  bool Add(int fd, uint32_t events, IoHandler* h, Kind kind) override;
  void Modify(int fd, uint32_t events, IoHandler* h) override;
  void Remove(int fd) override;
  ssize_t Recv(int fd, char* p, std::size_t n) override;
  int Send(int fd, Buffer& out) override;
  void ShutdownWrite(int fd) override;
  void Close(int fd) override;
  void Poll(int timeout_ms) override;
  void Dispatch() override;

 private:
  // Data a receive delivered, still in its provided buffer.
  struct Chunk {
    uint16_t bid;
    uint32_t off, len;
  };
  struct Channel {
    uint32_t slot = 0;
    uint32_t gen = 0;
    int fd = -1;
    IoHandler* h = nullptr;
    Kind kind = Kind::kPoll;
    uint32_t events = 0;
    bool armed = false;       // a receive (kStream) or poll (kPoll, kConnecting) in flight
    bool cancelling = false;  // ... and its cancellation asked for
    bool eof = false;
    int rx_err = 0;
    // Received bytes: in provided buffers while their event is delivered, then (what
    // the handler left) in `spill`, so a slow reader never holds the shared buffers.
    std::vector<Chunk> chunks;
    std::size_t chunk_head = 0;
    Buffer spill;
    // Sending: `txbuf` holds what Send took from the caller, queued until the next Poll
    // submits it (kQueued), then in the kernel's hands until its completion (kInFlight).
    enum class Tx : uint8_t { kIdle, kQueued, kInFlight } tx = Tx::kIdle;
    Buffer txbuf;
    int tx_err = 0;
    bool shut_wr = false;
    bool closing = false;
    bool ready = false;    // in ready_
    bool touched = false;  // in touched_
  };

  static unsigned RoundPow2(unsigned v) {
    unsigned p = 1;
    while (p < v && p < 32768)
      p <<= 1;
    return p;
  }
  Channel* Get(int fd) {
    if (fd < 0 || static_cast<std::size_t>(fd) >= by_fd_.size() || by_fd_[fd] < 0)
      return nullptr;
    return slots_[static_cast<std::size_t>(by_fd_[fd])].get();
  }
  std::size_t Buffered(const Channel& c) const {
    std::size_t n = c.spill.size();
    for (std::size_t i = c.chunk_head; i < c.chunks.size(); ++i)
      n += c.chunks[i].len;
    return n;
  }
  // A stream that wants data, can still get some, has no receive armed, and holds less
  // than `below` unread.
  bool ShouldReceive(const Channel& c, std::size_t below) const {
    return c.kind == Kind::kStream && (c.events & EPOLLIN) && !c.armed && !c.closing && !c.eof &&
           !c.rx_err && Buffered(c) < below;
  }
  bool Writable(const Channel& c) const {
    return c.kind == Kind::kStream && c.tx != Channel::Tx::kInFlight && !c.tx_err;
  }

  io_uring_sqe* Sqe();
  void Submit(unsigned wait, int timeout_ms);
  void ArmRecv(Channel& c);
  void ArmPoll(Channel& c);
  void CancelArmed(Channel& c);
  void ProvideBuffer(uint16_t bid);
  uint32_t Readiness(const Channel& c) const;
  void MarkReady(Channel& c);
  void Spill(Channel& c);
  void MaybeFinish(Channel& c);
  void OnCqe(uint64_t data, int res, uint32_t flags);
  void DropChunks(Channel& c);
  void CancelAll();
  void GrowSlots();

  // A channel whose handler leaves more than this unread stops receiving (the kernel's
  // socket buffer then pushes back on the peer) until Recv drains it.
  static constexpr std::size_t kRxCap = 256 * 1024;
  // Sends are gathered into one buffer up to this size; beyond it Send waits.
  static constexpr std::size_t kTxCap = 4 * 1024 * 1024;

  const unsigned nbufs_;
  const unsigned buf_size_;
  int ring_fd_ = -1;
  void* sq_ring_ = MAP_FAILED;
  std::size_t sq_ring_size_ = 0;
  void* cq_ring_ = MAP_FAILED;
  std::size_t cq_ring_size_ = 0;
  void* sqes_mem_ = MAP_FAILED;
  std::size_t sqes_size_ = 0;
  io_uring_sqe* sqes_ = nullptr;
  unsigned* sq_head_ = nullptr;
  unsigned* sq_tail_ = nullptr;
  unsigned sq_mask_ = 0;
  unsigned* sq_array_ = nullptr;
  unsigned sq_entries_ = 0;
  unsigned* cq_head_ = nullptr;
  unsigned* cq_tail_ = nullptr;
  unsigned cq_mask_ = 0;
  io_uring_cqe* cqes_ = nullptr;
  unsigned sq_local_tail_ = 0;
  unsigned to_submit_ = 0;
  bool active_ = false;
  // Receives, polls and sends in the ring: each holds a reference to its socket.
  std::size_t outstanding_ = 0;

  void* buf_ring_mem_ = MAP_FAILED;
  std::size_t buf_ring_size_ = 0;
  io_uring_buf* bufs_ = nullptr;
  char* buf_mem_ = nullptr;
  uint16_t buf_tail_ = 0;
  bool buf_tail_dirty_ = false;

  std::vector<std::unique_ptr<Channel>> slots_;
  std::vector<uint32_t> free_slots_;
  std::vector<int32_t> by_fd_;
  std::vector<uint32_t> dirty_;    // slots with a queued send
  std::vector<uint32_t> ready_;    // slots with a readiness to report
  std::vector<uint32_t> starved_;  // slots whose receive ran out of buffers
  std::vector<uint32_t> touched_;  // slots that received data in this Dispatch
  std::vector<uint32_t> scratch_;
};

Result<void> UringLoop::Init() {
  io_uring_params p{};
  // One thread submits (the worker), completions run when it waits (no interrupts of
  // the worker for task work), and the ring starts disabled: it is created on the
  // thread that starts the proxy and enabled on the worker's own (Activate).
  p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_R_DISABLED |
            IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL;
  // Sized by the buffers: a loop iteration reaps at most about one completion per
  // buffer plus the sends; more waits in the kernel's overflow list (IORING_FEAT_NODROP).
  // 256 submission entries; Sqe() submits early when they run out.
  p.cq_entries = std::max(1024u, 16 * nbufs_);
  ring_fd_ = SysSetup(256, &p);
  if (ring_fd_ < 0)
    return FailErrno("io_uring_setup (single issuer, deferred task work: Linux 6.1)", errno);
  if (!(p.features & IORING_FEAT_NODROP) || !(p.features & IORING_FEAT_EXT_ARG))
    return Fail("io_uring: the kernel lacks IORING_FEAT_NODROP or IORING_FEAT_EXT_ARG");
  sq_entries_ = p.sq_entries;
  sq_ring_size_ = p.sq_off.array + p.sq_entries * sizeof(unsigned);
  cq_ring_size_ = p.cq_off.cqes + p.cq_entries * sizeof(io_uring_cqe);
  sq_ring_ = mmap(nullptr, sq_ring_size_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                  ring_fd_, IORING_OFF_SQ_RING);
  if (sq_ring_ == MAP_FAILED)
    return FailErrno("io_uring: mmap of the submission ring", errno);
  cq_ring_ = mmap(nullptr, cq_ring_size_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                  ring_fd_, IORING_OFF_CQ_RING);
  if (cq_ring_ == MAP_FAILED)
    return FailErrno("io_uring: mmap of the completion ring", errno);
  sqes_size_ = p.sq_entries * sizeof(io_uring_sqe);
  sqes_mem_ = mmap(nullptr, sqes_size_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring_fd_,
                   IORING_OFF_SQES);
  if (sqes_mem_ == MAP_FAILED)
    return FailErrno("io_uring: mmap of the submission entries", errno);
  auto* sq = static_cast<char*>(sq_ring_);
  auto* cq = static_cast<char*>(cq_ring_);
  sq_head_ = reinterpret_cast<unsigned*>(sq + p.sq_off.head);
  sq_tail_ = reinterpret_cast<unsigned*>(sq + p.sq_off.tail);
  sq_mask_ = *reinterpret_cast<unsigned*>(sq + p.sq_off.ring_mask);
  sq_array_ = reinterpret_cast<unsigned*>(sq + p.sq_off.array);
  cq_head_ = reinterpret_cast<unsigned*>(cq + p.cq_off.head);
  cq_tail_ = reinterpret_cast<unsigned*>(cq + p.cq_off.tail);
  cq_mask_ = *reinterpret_cast<unsigned*>(cq + p.cq_off.ring_mask);
  cqes_ = reinterpret_cast<io_uring_cqe*>(cq + p.cq_off.cqes);
  sqes_ = static_cast<io_uring_sqe*>(sqes_mem_);
  sq_local_tail_ = *sq_tail_;

  // The provided buffers every multishot receive draws from (group 0).
  buf_ring_size_ = nbufs_ * sizeof(io_uring_buf);
  buf_ring_mem_ =
      mmap(nullptr, buf_ring_size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (buf_ring_mem_ == MAP_FAILED)
    return FailErrno("io_uring: buffer ring", errno);
  // The ring is an array of io_uring_buf whose first entry's `resv` is the tail. (Not
  // through io_uring_buf_ring::bufs: its flexible-array wrapper has another offset in
  // C++, where an empty struct takes a byte.)
  bufs_ = static_cast<io_uring_buf*>(buf_ring_mem_);
  buf_mem_ = static_cast<char*>(std::malloc(static_cast<std::size_t>(nbufs_) * buf_size_));
  if (!buf_mem_)
    return Fail("io_uring: out of memory for receive buffers");
  io_uring_buf_reg reg{};
  reg.ring_addr = reinterpret_cast<uint64_t>(bufs_);
  reg.ring_entries = nbufs_;
  reg.bgid = 0;
  if (SysRegister(ring_fd_, IORING_REGISTER_PBUF_RING, &reg, 1) != 0)
    return FailErrno("io_uring: register a provided-buffer ring (Linux 5.19)", errno);
  for (unsigned i = 0; i < nbufs_; ++i)
    ProvideBuffer(static_cast<uint16_t>(i));
  std::atomic_ref<uint16_t>(bufs_[0].resv).store(buf_tail_, std::memory_order_release);
  buf_tail_dirty_ = false;
  return {};
}

UringLoop::~UringLoop() {
  CancelAll();
  if (ring_fd_ >= 0)
    close(ring_fd_);
  for (auto& c : slots_) {
    if (c && c->closing && c->fd >= 0)
      close(c->fd);  // a Close() still waiting for its last operation
  }
  if (sqes_mem_ != MAP_FAILED)
    munmap(sqes_mem_, sqes_size_);
  if (cq_ring_ != MAP_FAILED)
    munmap(cq_ring_, cq_ring_size_);
  if (sq_ring_ != MAP_FAILED)
    munmap(sq_ring_, sq_ring_size_);
  if (buf_ring_mem_ != MAP_FAILED)
    munmap(buf_ring_mem_, buf_ring_size_);
  std::free(buf_mem_);
}

// Closing the ring would cancel what is armed too, but the kernel does that later, on its
// own time: until then every socket with an armed receive or poll stays open, and a
// listening socket keeps taking connections nobody accepts (a new listener on the port
// shares its SO_REUSEPORT group). So the loop cancels everything itself and waits for
// the last completion before it goes. Runs on the worker's thread (single issuer).
void UringLoop::CancelAll() {
  if (!active_ || ring_fd_ < 0)
    return;
  io_uring_sqe* s = Sqe();
  s->opcode = IORING_OP_ASYNC_CANCEL;
  s->fd = -1;
  s->cancel_flags = IORING_ASYNC_CANCEL_ANY;
  s->user_data = Tag(kOpCancel, 0, 0);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (outstanding_ > 0 && std::chrono::steady_clock::now() < deadline) {
    unsigned n = to_submit_;
    int r = SysEnter(ring_fd_, n, 1, IORING_ENTER_GETEVENTS, nullptr, 0);
    if (r < 0 && errno != EINTR && errno != ETIME && errno != EBUSY && errno != EAGAIN)
      break;
    if (r > 0)
      to_submit_ -= static_cast<unsigned>(r) < n ? static_cast<unsigned>(r) : n;
    unsigned head = *cq_head_;
    unsigned tail = std::atomic_ref<unsigned>(*cq_tail_).load(std::memory_order_acquire);
    for (; head != tail; ++head) {
      const io_uring_cqe& cqe = cqes_[head & cq_mask_];
      const Op op = static_cast<Op>(cqe.user_data >> 56);
      if (op == kOpSend || (op != kOpCancel && !(cqe.flags & IORING_CQE_F_MORE)))
        --outstanding_;
    }
    std::atomic_ref<unsigned>(*cq_head_).store(head, std::memory_order_release);
  }
}

io_uring_sqe* UringLoop::Sqe() {
  unsigned head = std::atomic_ref<unsigned>(*sq_head_).load(std::memory_order_acquire);
  if (sq_local_tail_ - head >= sq_entries_) {
    Submit(0, 0);  // full: hand these to the kernel first
    head = std::atomic_ref<unsigned>(*sq_head_).load(std::memory_order_acquire);
  }
  unsigned idx = sq_local_tail_ & sq_mask_;
  io_uring_sqe* s = &sqes_[idx];
  std::memset(s, 0, sizeof(*s));
  sq_array_[idx] = idx;
  ++sq_local_tail_;
  std::atomic_ref<unsigned>(*sq_tail_).store(sq_local_tail_, std::memory_order_release);
  ++to_submit_;
  return s;
}

void UringLoop::Submit(unsigned wait, int timeout_ms) {
  if (buf_tail_dirty_) {
    std::atomic_ref<uint16_t>(bufs_[0].resv).store(buf_tail_, std::memory_order_release);
    buf_tail_dirty_ = false;
  }
  unsigned flags = IORING_ENTER_GETEVENTS;
  io_uring_getevents_arg arg{};
  __kernel_timespec ts{};
  const void* argp = nullptr;
  std::size_t argsz = 0;
  if (wait > 0 && timeout_ms >= 0) {
    ts.tv_sec = timeout_ms / 1000;
    ts.tv_nsec = static_cast<long long>(timeout_ms % 1000) * 1000000;
    arg.ts = reinterpret_cast<uint64_t>(&ts);
    flags |= IORING_ENTER_EXT_ARG;
    argp = &arg;
    argsz = sizeof(arg);
  }
  unsigned n = to_submit_;
  int r = SysEnter(ring_fd_, n, wait, flags, argp, argsz);
  if (r >= 0) {
    to_submit_ -= static_cast<unsigned>(r) < n ? static_cast<unsigned>(r) : n;
  }
  // EINTR, ETIME (the timeout), EBUSY/EAGAIN (completions to reap first): Dispatch()
  // reaps and the next Poll submits the rest.
}

void UringLoop::ProvideBuffer(uint16_t bid) {
  io_uring_buf* b = &bufs_[buf_tail_ & (nbufs_ - 1)];
  b->addr = reinterpret_cast<uint64_t>(buf_mem_ + static_cast<std::size_t>(bid) * buf_size_);
  b->len = buf_size_;
  b->bid = bid;
  ++buf_tail_;
  buf_tail_dirty_ = true;
}

void UringLoop::ArmRecv(Channel& c) {
  io_uring_sqe* s = Sqe();
  s->opcode = IORING_OP_RECV;
  s->fd = c.fd;
  s->ioprio = IORING_RECV_MULTISHOT;
  s->flags = IOSQE_BUFFER_SELECT;
  s->buf_group = 0;
  s->user_data = Tag(kOpRecv, c.slot, c.gen);
  ++outstanding_;
  c.armed = true;
  c.cancelling = false;
}

void UringLoop::ArmPoll(Channel& c) {
  io_uring_sqe* s = Sqe();
  s->opcode = IORING_OP_POLL_ADD;
  s->fd = c.fd;
  const bool connect = c.kind == Kind::kConnecting;
  // epoll's and poll's bits are the same numbers.
  s->poll32_events = connect ? (POLLOUT | POLLERR | POLLHUP) : (c.events & (POLLIN | POLLOUT));
  // epoll's level-triggered contract (a listening socket with connections still queued
  // is reported again) needs a one-shot poll, re-armed after its handler ran: a
  // multishot poll reports wake-ups, not readiness, so a handler that takes part of a
  // burst would never hear of the rest. Edge-triggered interest keeps the multishot.
  s->len = !connect && (c.events & EPOLLET) ? IORING_POLL_ADD_MULTI : 0;
  s->user_data = Tag(connect ? kOpConnect : kOpPoll, c.slot, c.gen);
  ++outstanding_;
  c.armed = true;
  c.cancelling = false;
}

void UringLoop::CancelArmed(Channel& c) {
  if (!c.armed || c.cancelling)
    return;
  io_uring_sqe* s = Sqe();
  s->opcode = IORING_OP_ASYNC_CANCEL;
  s->fd = -1;
  s->addr = c.kind == Kind::kStream       ? Tag(kOpRecv, c.slot, c.gen)
            : c.kind == Kind::kConnecting ? Tag(kOpConnect, c.slot, c.gen)
                                          : Tag(kOpPoll, c.slot, c.gen);
  s->user_data = Tag(kOpCancel, c.slot, c.gen);
  c.cancelling = true;
}

bool UringLoop::Add(int fd, uint32_t events, IoHandler* h, Kind kind) {
  if (fd < 0)
    return false;
  if (free_slots_.empty())
    GrowSlots();
  const uint32_t slot = free_slots_.back();
  free_slots_.pop_back();
  Channel& c = *slots_[slot];
  c.fd = fd;
  c.h = h;
  c.kind = kind;
  c.events = events;
  c.armed = c.cancelling = c.eof = false;
  c.rx_err = c.tx_err = 0;
  c.chunks.clear();
  c.chunk_head = 0;
  c.spill.Clear();
  c.tx = Channel::Tx::kIdle;
  c.txbuf.Clear();
  c.shut_wr = c.closing = false;
  if (static_cast<std::size_t>(fd) >= by_fd_.size())
    by_fd_.resize(std::max<std::size_t>(by_fd_.size() * 2, static_cast<std::size_t>(fd) + 1), -1);
  by_fd_[fd] = static_cast<int32_t>(slot);
  if (kind == Kind::kStream) {
    if (events & EPOLLIN)
      ArmRecv(c);
    if (events & EPOLLOUT)
      MarkReady(c);  // epoll reports a writable socket when it is added
  } else {
    ArmPoll(c);
  }
  return true;
}

void UringLoop::Modify(int fd, uint32_t events, IoHandler* h) {
  Channel* c = Get(fd);
  if (!c || c->closing)
    return;
  const uint32_t old = c->events;
  c->events = events;
  c->h = h;
  if (c->kind == Kind::kPoll) {
    if ((old ^ events) & (EPOLLIN | EPOLLOUT)) {
      CancelArmed(*c);  // re-armed with the new mask when its last completion arrives
    }
    return;
  }
  if (c->kind == Kind::kConnecting)
    return;  // the connect poll reports; interest applies once connected
  if (ShouldReceive(*c, kRxCap))
    ArmRecv(*c);
  else if (!(events & EPOLLIN) && c->armed)
    CancelArmed(*c);
  if (Readiness(*c))
    MarkReady(*c);  // EPOLL_CTL_MOD reports what is ready now
}

void UringLoop::Remove(int fd) {
  Channel* c = Get(fd);
  if (!c)
    return;
  c->h = nullptr;
  c->closing = true;
  by_fd_[fd] = -1;
  c->fd = -1;  // the caller closes it; the armed poll holds its own reference
  CancelArmed(*c);
  MaybeFinish(*c);
}

uint32_t UringLoop::Readiness(const Channel& c) const {
  uint32_t ev = 0;
  if (c.kind != Kind::kStream)
    return 0;
  if ((c.events & EPOLLIN) && (Buffered(c) > 0 || c.rx_err))
    ev |= EPOLLIN;
  if (c.eof)
    ev |= EPOLLIN | EPOLLRDHUP;  // as epoll: reported whatever the interest
  if (c.rx_err || c.tx_err)
    ev |= EPOLLERR | EPOLLHUP;
  if ((c.events & EPOLLOUT) && Writable(c))
    ev |= EPOLLOUT;
  return ev;
}

void UringLoop::MarkReady(Channel& c) {
  if (!c.ready) {
    c.ready = true;
    ready_.push_back(c.slot);
  }
}

ssize_t UringLoop::Recv(int fd, char* p, std::size_t n) {
  Channel* c = Get(fd);
  if (!c) {
    errno = EBADF;
    return -1;
  }
  std::size_t got = 0;
  if (!c->spill.empty()) {
    std::size_t take = std::min(n, c->spill.size());
    std::memcpy(p, c->spill.Data().data(), take);
    c->spill.Consume(take);
    got = take;
  }
  while (got < n && c->chunk_head < c->chunks.size()) {
    Chunk& ch = c->chunks[c->chunk_head];
    std::size_t take = std::min<std::size_t>(n - got, ch.len);
    std::memcpy(p + got, buf_mem_ + static_cast<std::size_t>(ch.bid) * buf_size_ + ch.off, take);
    got += take;
    ch.off += static_cast<uint32_t>(take);
    ch.len -= static_cast<uint32_t>(take);
    if (ch.len == 0) {
      ProvideBuffer(ch.bid);
      ++c->chunk_head;
    }
  }
  if (c->chunk_head == c->chunks.size()) {
    c->chunks.clear();
    c->chunk_head = 0;
  }
  // Drained well below the cap after receiving stopped for it: receive again.
  if (ShouldReceive(*c, kRxCap / 2))
    ArmRecv(*c);
  if (got > 0)
    return static_cast<ssize_t>(got);
  if (c->rx_err) {
    errno = c->rx_err;
    return -1;
  }
  if (c->eof)
    return 0;
  errno = EAGAIN;
  return -1;
}

int UringLoop::Send(int fd, Buffer& out) {
  Channel* c = Get(fd);
  if (!c)
    return EBADF;
  if (c->tx_err)
    return c->tx_err;
  if (c->shut_wr || c->closing)
    return EPIPE;
  if (out.empty())
    return 0;
  switch (c->tx) {
    case Channel::Tx::kIdle:
      c->txbuf.Clear();
      c->txbuf.Swap(out);  // the caller gets this channel's empty buffer (and its memory)
      c->tx = Channel::Tx::kQueued;
      dirty_.push_back(c->slot);
      return 0;
    case Channel::Tx::kQueued:
      if (c->txbuf.size() < kTxCap) {
        c->txbuf.Append(out.Data());
        out.Clear();
      }
      return 0;
    case Channel::Tx::kInFlight:
      return 0;  // EPOLLOUT when it completes
  }
  return 0;
}

void UringLoop::ShutdownWrite(int fd) {
  Channel* c = Get(fd);
  if (!c) {
    shutdown(fd, SHUT_WR);
    return;
  }
  if (c->tx == Channel::Tx::kIdle)
    shutdown(fd, SHUT_WR);
  c->shut_wr = true;  // if data is still going out: after it (on its completion)
}

void UringLoop::Close(int fd) {
  Channel* c = Get(fd);
  if (!c) {
    close(fd);
    return;
  }
  c->h = nullptr;
  c->closing = true;
  CancelArmed(*c);
  MaybeFinish(*c);
}

void UringLoop::DropChunks(Channel& c) {
  for (std::size_t i = c.chunk_head; i < c.chunks.size(); ++i)
    ProvideBuffer(c.chunks[i].bid);
  c.chunks.clear();
  c.chunk_head = 0;
}

// A closing channel goes once nothing of it is in flight: its queued bytes sent, its
// receive or poll cancelled. Only then is the descriptor closed (so its number cannot be
// reused while an operation still names it).
void UringLoop::MaybeFinish(Channel& c) {
  if (!c.closing || c.armed || c.tx != Channel::Tx::kIdle)
    return;
  DropChunks(c);
  c.spill.Clear();
  c.spill.Shrink(0);
  c.txbuf.Clear();
  c.txbuf.Shrink(0);
  if (c.fd >= 0) {
    if (static_cast<std::size_t>(c.fd) < by_fd_.size() &&
        by_fd_[c.fd] == static_cast<int32_t>(c.slot))
      by_fd_[c.fd] = -1;
    close(c.fd);
    c.fd = -1;
  }
  c.closing = false;
  c.h = nullptr;
  ++c.gen;
  free_slots_.push_back(c.slot);
}

void UringLoop::GrowSlots() {
  const std::size_t n = slots_.empty() ? 64 : slots_.size();  // doubles
  slots_.reserve(slots_.size() + n);
  if (free_slots_.capacity() < slots_.size() + n)
    free_slots_.reserve(slots_.size() + n);
  for (std::size_t i = 0; i < n; ++i) {
    auto c = std::make_unique<Channel>();
    c->slot = static_cast<uint32_t>(slots_.size());
    c->chunks.reserve(8);
    slots_.push_back(std::move(c));
  }
  // Handed out lowest first.
  for (std::size_t i = 0; i < n; ++i)
    free_slots_.push_back(static_cast<uint32_t>(slots_.size() - 1 - i));
}

void UringLoop::Poll(int timeout_ms) {
  // Queued sends go out in the same system call that waits.
  for (uint32_t slot : dirty_) {
    Channel& c = *slots_[slot];
    if (c.tx != Channel::Tx::kQueued)
      continue;
    if (c.txbuf.empty() || c.tx_err) {
      c.tx = Channel::Tx::kIdle;
      continue;
    }
    io_uring_sqe* s = Sqe();
    s->opcode = IORING_OP_SEND;
    s->fd = c.fd;
    s->addr = reinterpret_cast<uint64_t>(c.txbuf.Data().data());
    s->len = static_cast<uint32_t>(std::min<std::size_t>(c.txbuf.size(), 1u << 30));
    s->msg_flags = MSG_NOSIGNAL | MSG_WAITALL;
    s->user_data = Tag(kOpSend, c.slot, c.gen);
    ++outstanding_;
    c.tx = Channel::Tx::kInFlight;
  }
  dirty_.clear();
  const bool nothing_pending = ready_.empty() && starved_.empty();
  Submit(nothing_pending && timeout_ms != 0 ? 1 : 0, timeout_ms);
}

void UringLoop::Dispatch() {
  unsigned head = *cq_head_;
  unsigned tail = std::atomic_ref<unsigned>(*cq_tail_).load(std::memory_order_acquire);
  for (; head != tail; ++head) {
    const io_uring_cqe& cqe = cqes_[head & cq_mask_];
    uint64_t data = cqe.user_data;
    int res = cqe.res;
    uint32_t flags = cqe.flags;
    // Handlers queue new operations but never enter the ring, so the entry can be
    // released now and the rest of the batch read after the calls.
    std::atomic_ref<unsigned>(*cq_head_).store(head + 1, std::memory_order_release);
    OnCqe(data, res, flags);
  }
  // Readiness reported by Add/Modify, or by a completion that did not reach a handler.
  if (!ready_.empty()) {
    scratch_.swap(ready_);
    for (uint32_t slot : scratch_) {
      Channel& c = *slots_[slot];
      c.ready = false;
      if (!c.h || c.closing)
        continue;
      if (uint32_t ev = Readiness(c)) {
        c.touched = true;
        touched_.push_back(slot);
        Deliver(c.h, ev);
      }
    }
    scratch_.clear();
  }
  // What handlers did not read moves out of the shared buffers.
  for (uint32_t slot : touched_) {
    Channel& c = *slots_[slot];
    c.touched = false;
    Spill(c);
    // Level-triggered interest in unread data is reported again, as epoll would.
    if (!(c.events & EPOLLET) && (c.events & EPOLLIN) && c.h && !c.closing && !c.spill.empty())
      MarkReady(c);
  }
  touched_.clear();
  // Receives that ran out of buffers start again now that the batch returned them.
  if (!starved_.empty()) {
    scratch_.swap(starved_);
    for (uint32_t slot : scratch_) {
      if (Channel& c = *slots_[slot]; ShouldReceive(c, kRxCap))
        ArmRecv(c);
    }
    scratch_.clear();
  }
}

void UringLoop::Spill(Channel& c) {
  if (c.chunk_head == c.chunks.size())
    return;
  for (std::size_t i = c.chunk_head; i < c.chunks.size(); ++i) {
    const Chunk& ch = c.chunks[i];
    c.spill.Append(
        std::string_view(buf_mem_ + static_cast<std::size_t>(ch.bid) * buf_size_ + ch.off, ch.len));
  }
  DropChunks(c);
  if (c.armed && c.spill.size() >= kRxCap)
    CancelArmed(c);  // the handler is not reading: let TCP push back
}

void UringLoop::OnCqe(uint64_t data, int res, uint32_t flags) {
  const Op op = static_cast<Op>(data >> 56);
  const uint32_t gen = static_cast<uint32_t>(data >> 32) & 0xffffff;
  const uint32_t slot = static_cast<uint32_t>(data);
  const bool more = flags & IORING_CQE_F_MORE;
  if (op == kOpCancel)
    return;
  if (op == kOpSend || !more)
    --outstanding_;
  if (slot >= slots_.size())
    return;
  Channel& c = *slots_[slot];
  if ((c.gen & 0xffffff) != gen) {
    // An operation of a channel that has since finished: nothing to do but give its
    // buffer back.
    if (op == kOpRecv && (flags & IORING_CQE_F_BUFFER))
      ProvideBuffer(static_cast<uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT));
    return;
  }
  switch (op) {
    case kOpRecv: {
      uint32_t ev = 0;
      if (res > 0 && (flags & IORING_CQE_F_BUFFER)) {
        auto bid = static_cast<uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT);
        if (c.closing || !c.h) {
          ProvideBuffer(bid);
        } else {
          c.chunks.push_back(Chunk{bid, 0, static_cast<uint32_t>(res)});
          ev = EPOLLIN;
        }
      } else if (flags & IORING_CQE_F_BUFFER) {
        ProvideBuffer(static_cast<uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT));
      }
      if (!more) {
        c.armed = false;
        c.cancelling = false;
        if (res == 0) {
          c.eof = true;
          ev |= EPOLLIN | EPOLLRDHUP;
        } else if (res == -ENOBUFS) {
          starved_.push_back(slot);
        } else if (res < 0 && res != -ECANCELED) {
          c.rx_err = -res;
          ev |= EPOLLIN | EPOLLERR | EPOLLHUP;
        } else if (res == -ECANCELED && ShouldReceive(c, kRxCap)) {
          ArmRecv(c);  // cancelled for a pause that has ended since
        }
      }
      if (c.closing) {
        MaybeFinish(c);
        return;
      }
      if (!ev || !c.h)
        return;
      if (!c.touched) {    // what the handler leaves (or, not wanting it, does not read)
        c.touched = true;  // is spilled after the batch
        touched_.push_back(slot);
      }
      if (c.events & (EPOLLIN | EPOLLRDHUP))
        Deliver(c.h, ev);
      return;
    }
    case kOpSend: {
      if (res >= 0) {
        c.txbuf.Consume(static_cast<std::size_t>(res));
        if (!c.txbuf.empty()) {
          c.tx = Channel::Tx::kQueued;  // short: the rest goes with the next Poll
          dirty_.push_back(slot);
          return;
        }
        c.tx = Channel::Tx::kIdle;
        if (c.shut_wr && c.fd >= 0)
          shutdown(c.fd, SHUT_WR);
      } else {
        c.tx = Channel::Tx::kIdle;
        c.tx_err = -res;
        c.txbuf.Clear();
      }
      if (c.closing) {
        MaybeFinish(c);
        return;
      }
      if (c.h && ((c.events & EPOLLOUT) || c.tx_err)) {
        uint32_t ev = c.tx_err ? (EPOLLERR | EPOLLHUP) : EPOLLOUT;
        Deliver(c.h, ev);
      }
      return;
    }
    case kOpPoll:
    case kOpConnect: {
      if (!more) {
        c.armed = false;
        c.cancelling = false;
      }
      if (c.closing) {
        MaybeFinish(c);
        return;
      }
      if (op == kOpConnect) {
        if (res >= 0 && !(res & (POLLERR | POLLHUP))) {
          c.kind = Kind::kStream;
          if (c.events & EPOLLIN)
            ArmRecv(c);
        }
        if (c.h && res >= 0)
          Deliver(c.h, static_cast<uint32_t>(res));
        else if (c.h)
          Deliver(c.h, EPOLLERR);
        return;
      }
      if (res >= 0 && c.h)
        Deliver(c.h, static_cast<uint32_t>(res));
      // A one-shot poll has ended; a multishot one ends on overflow or a new mask.
      if (!c.armed && !c.closing)
        ArmPoll(c);
      return;
    }
    default:
      return;
  }
}

}  // namespace

Result<std::unique_ptr<EventLoop>> EventLoop::Create(const Options& opts) {
  std::string reason;
  if (opts.backend != IoBackend::kEpoll) {
    auto u = std::make_unique<UringLoop>(opts);
    if (auto r = u->Init(); r)
      return std::unique_ptr<EventLoop>(std::move(u));
    else if (opts.backend == IoBackend::kUring)
      return Fail(r.error().message);
    else
      reason = r.error().message;
  }
  auto e = std::make_unique<EpollLoop>();
  SLUICE_RETURN_IF_ERROR(e->Init());
  e->fallback_reason_ = std::move(reason);
  return std::unique_ptr<EventLoop>(std::move(e));
}

}  // namespace sluice::proxy
