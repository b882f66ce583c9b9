// xDS benchmark (not a CI test): Sluice's ADS server serves a synthetic istiod-sized
// configuration -- N services (one EDS cluster and one virtual host each, with a VIP,
// spread over route configurations per port) with M endpoints in all -- and Sluice's
// ADS client applies it into a ConfigStore. The server runs in a child process so each
// side's memory is its own; they talk gRPC over loopback.
//
// With --pipeline (root), the client side is the node agent's whole config path: each
// accepted snapshot goes to KernelSync on a real Dataplane (its own pin root and cgroup,
// removed at exit), on the store's thread as in the agent, and to the L7 side on a thread
// of its own (as the agent's L7 process runs beside it): the wire's delta encoded and
// decoded, ApplyEdit, CompileUpdate. An update counts as live when both are done --
// kernel maps written and L7 tables built.
//
// Reports: initial sync (client start -> whole config live), the latency of a
// one-endpoint update (server Push -> live) with its parts, peak RSS of both sides, and
// with --churn, the client's CPU and memory under a stream of endpoint changes.
//
//   xds_bench [--services 10000] [--endpoints 50000] [--updates 20] [--pipeline [--no-l7]]
//             [--churn SECONDS] [--rate CHANGES_PER_SECOND] [--protocol sotw|delta|both]
//
// Both protocols (the default) run one after the other against the same server, each
// with a fresh client, store and pipeline.
//
// --no-l7 leaves the L7 compile out: what the node agent's own process does (its L7
// process compiles apart), for the agent's RSS and CPU.
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <mutex>
#include <optional>
#include <string>

#include <thread>
#include <vector>
#include "sluice/common/release_memory.h"

#include <spdlog/spdlog.h>

#include "l7_wire.h"
#include "sluice/config/store.h"
#include "sluice/kernelsync/kernel_sync.h"
#include "sluice/loader/dataplane.h"
#include "sluice/loader/system.h"
#include "sluice/proxy/config.h"
#include "sluice/proxy/dns.h"
#include "sluice/xds/ads_client.h"
#include "sluice/xds/ads_server.h"
#include "sluice/xds/node.h"
#include "xds/istio_mesh.h"

namespace sx = sluice::xds;
using Clock = std::chrono::steady_clock;

namespace {

using namespace sluice::testing::mesh;

long PeakRssKb() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

long RssKb() {
  long pages = 0, resident = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2)
      resident = 0;
    std::fclose(f);
  }
  return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

extern "C" int MallocExtension_GetNumericProperty(const char*, size_t*) __attribute__((weak));

// The allocator's view under tcmalloc: bytes the program holds, and bytes tcmalloc keeps
// free in its caches ("" under another allocator).
std::string HeapSummary() {
  if (!MallocExtension_GetNumericProperty)
    return "";
  auto get = [](const char* name) {
    size_t v = 0;
    MallocExtension_GetNumericProperty(name, &v);
    return v >> 20;
  };
  return fmt::format(
      " (tcmalloc: {} MiB allocated; free in page heap {}, central {}, threads {} MiB)",
      get("generic.current_allocated_bytes"), get("tcmalloc.pageheap_free_bytes"),
      get("tcmalloc.central_cache_free_bytes"), get("tcmalloc.thread_cache_free_bytes"));
}

double CpuSeconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

double Ms(Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

// The control plane (child process): serves the set; 'p' prepares the next update (one
// endpoint's port changes) and answers, 'u' pushes it, 'c' + 8 bytes (seconds, rate)
// runs a churn of that many changes per second, pushed in batches every 100 ms, and
// answers when done; EOF ends it. Every push carries a hint naming the changed
// ClusterLoadAssignment, as istiod's EDS pushes name what changed (PushRequest.ConfigsUpdated).
[[noreturn]] void Serve(int services, int endpoints, int cmd, int ready) {
  auto t0 = Clock::now();
  auto current = std::make_shared<sx::ResourceSet>(Build(services, endpoints));
  double build_ms = Ms(Clock::now() - t0);
  std::mutex mu;
  sx::AdsServer server(sx::AdsServer::SharedResourceFn([&](const envoy::config::core::v3::Node&) {
    std::lock_guard lock(mu);
    return std::shared_ptr<const sx::ResourceSet>(current);
  }));
  auto port = server.Start({.address = "127.0.0.1:0"});
  if (!port) {
    std::fprintf(stderr, "server: %s\n", port.error().message.c_str());
    _exit(1);
  }
  int p = *port;
  if (write(ready, &p, sizeof p) != sizeof p)
    _exit(1);
  int salt = 0, changes = 0, copies = 0;
  double copy_ms = 0;
  // One endpoint's port changes. A set a stream still holds is never written: the change
  // copies it then (copy on write); when no stream holds it -- the usual case once the
  // previous push went out -- it is changed in place.
  auto change = [&] {
    std::lock_guard lock(mu);
    if (current.use_count() > 1) {
      auto c0 = Clock::now();
      current = std::make_shared<sx::ResourceSet>(*current);
      copy_ms += Ms(Clock::now() - c0);
      ++copies;
    }
    const std::string name = ClusterOf(salt % services);
    current->endpoints.at(name)
        .mutable_endpoints(0)
        ->mutable_lb_endpoints(0)
        ->mutable_endpoint()
        ->mutable_address()
        ->mutable_socket_address()
        ->set_port_value(static_cast<uint32_t>(9001 + salt % 50000));
    ++salt;
    ++changes;
    return name;
  };
  auto push = [&](const std::string& name) {
    sx::PushHint hint;
    hint.Add(sx::kEndpointType, name);
    server.Push(hint);
  };
  std::string next;
  char c;
  while (read(cmd, &c, 1) == 1) {
    if (c == 'p') {  // prepare, then tell the parent to start its clock
      next = change();
      if (write(ready, &c, 1) != 1)
        _exit(1);
    } else if (c == 'u') {
      push(next);
    } else if (c == 'c') {
      // The churn arrives as istiod sends it: changes debounced for 100 ms
      // (PILOT_DEBOUNCE_AFTER), one push per batch naming every changed resource.
      int args[2];
      if (read(cmd, args, sizeof args) != sizeof args)
        _exit(1);
      const auto period = std::chrono::milliseconds(100);
      const int per_batch = std::max(1, args[1] / 10);
      const auto end = Clock::now() + std::chrono::seconds(args[0]);
      auto due = Clock::now();
      int late = 0;
      while (Clock::now() < end) {
        sx::PushHint hint;
        for (int i = 0; i < per_batch; ++i)
          hint.Add(sx::kEndpointType, change());
        server.Push(hint);
        due += period;
        if (Clock::now() > due)
          ++late;
        else
          std::this_thread::sleep_until(due);
      }
      if (write(ready, &late, sizeof late) != sizeof late)
        _exit(1);
    }
  }
  server.Stop();
  std::printf(
      "server: build %.0f ms; %d changes, %d of them copied the set (a stream still held it; "
      "%.0f ms per copy); peak RSS %ld MiB\n",
      build_ms, changes, copies, copies ? copy_ms / copies : 0.0, PeakRssKb() / 1024);
  std::fflush(stdout);
  _exit(0);
}

// The agent's config path after the store: the kernel (KernelSync on a Dataplane of its
// own), on the store's thread as in the agent, and the L7 side on a thread of its own,
// as the agent's L7 process runs beside it. Absent without --pipeline.
class Pipeline {
 public:
  ~Pipeline() {
    if (l7_thread_.joinable()) {
      {
        std::lock_guard lock(l7_mu_);
        l7_stop_ = true;
      }
      l7_cv_.notify_all();
      l7_thread_.join();
    }
    dp_.reset();
    if (!pin_root_.empty())
      (void)sluice::Dataplane::Cleanup(pin_root_);
    if (!cgroup_.empty())
      rmdir(cgroup_.c_str());
  }

  // Without L7: the node agent's own process (its L7 process compiles apart).
  void DisableL7() { l7_enabled_ = false; }

  sluice::Result<void> Open(int run) {
    auto cg = sluice::FindCgroup2Mount();
    SLUICE_RETURN_IF_ERROR(cg);
    SweepDeadRuns(*cg);
    const std::string tag =
        "sluice-xds-bench-" + std::to_string(getpid()) + "-" + std::to_string(run);
    cgroup_ = *cg + "/" + tag;
    if (mkdir(cgroup_.c_str(), 0755) != 0)
      return sluice::FailErrno("creating " + cgroup_, errno);
    pin_root_ = "/sys/fs/bpf/" + tag;
    sluice::DataplaneOptions o;
    o.pin_root = pin_root_;
    o.cgroup_path = cgroup_;
    o.reclaim_in_background = true;  // as the agent runs it
    auto dp = sluice::Dataplane::Open(o);
    SLUICE_RETURN_IF_ERROR(dp);
    dp_ = std::move(*dp);
    sync_ = std::make_unique<sluice::kernelsync::KernelSync>(*dp_);
    return {};
  }

  // Pins and cgroups of earlier runs that were killed before their destructor ran
  // ("sluice-xds-bench-PID-N" whose PID is gone).
  static void SweepDeadRuns(const std::string& cgroup_root) {
    namespace fs = std::filesystem;
    const std::string prefix = "sluice-xds-bench-";
    std::error_code ec;
    for (const auto& dir : {std::string("/sys/fs/bpf"), cgroup_root}) {
      for (const auto& e : fs::directory_iterator(dir, ec)) {
        const std::string name = e.path().filename();
        if (!name.starts_with(prefix))
          continue;
        const pid_t pid = std::atoi(name.c_str() + prefix.size());
        if (pid <= 0 || kill(pid, 0) == 0 || errno != ESRCH)
          continue;
        if (dir == "/sys/fs/bpf")
          (void)sluice::Dataplane::Cleanup(e.path());
        else
          rmdir(e.path().c_str());
        std::fprintf(stderr, "removed %s, left by a killed run\n", e.path().c_str());
      }
    }
  }

  struct Times {
    double kernel_ms = 0;
    size_t kernel_services = 0;
    sluice::kernelsync::SyncStats sync;
  };
  // On the store's thread, as the agent's ConfigFanout runs: the L7 side handed over (in
  // order, as the supervisor's queue), then the kernel.
  Times Apply(const sluice::config::SnapshotPtr& s, const sluice::config::Diff& d) {
    Times t;
    if (l7_enabled_) {  // first, as the agent's ConfigFanout: handing over only queues
      std::lock_guard lock(l7_mu_);
      if (!l7_thread_.joinable())
        l7_thread_ = std::thread([this] { L7Loop(); });
      l7_queue_.emplace_back(s, d);
      l7_cv_.notify_all();
    }
    auto k0 = Clock::now();
    if (auto r = sync_->OnSnapshot(*s, &d); !r)
      std::fprintf(stderr, "kernel sync: %s\n", r.error().message.c_str());
    t.kernel_ms = Ms(Clock::now() - k0);
    t.kernel_services = sync_->applied().services.size();
    t.sync = sync_->last_sync();
    return t;
  }

  // When the L7 side had compiled generation `g` (at once without L7).
  struct L7Done {
    Clock::time_point at;
    double ms = 0;
    size_t clusters = 0, built = 0;
  };
  std::optional<L7Done> WaitL7(uint64_t g) {
    if (!l7_enabled_)
      return L7Done{Clock::time_point::min()};
    std::unique_lock lock(l7_mu_);
    if (!l7_cv_.wait_for(lock, std::chrono::seconds(60), [&] { return l7_generation_ >= g; }))
      return std::nullopt;
    return l7_done_;
  }

 private:
  // What the agent's L7 supervisor and its L7 process do with a snapshot, in one process
  // (the socket between them aside): the change encoded on the wire as a delta from the
  // store's diff (the whole set when there is no base), decoded and applied to the L7
  // side's own snapshot, and compiled -- CompileUpdate on a delta.
  void ApplyL7(const sluice::config::SnapshotPtr& s, const sluice::config::Diff& d) {
    namespace wire = sluice::agent::l7wire;
    std::shared_ptr<const sluice::proxy::ProxyConfig> cfg;
    if (sent_ && l7_ && l7_snapshot_ && d.base == sent_->id) {
      nlohmann::json meta;
      std::string blob = wire::EncodeDelta(sent_->generation, *s, d, &meta);
      auto edit = wire::DecodeDelta(meta, blob);
      if (!edit) {
        std::fprintf(stderr, "L7 delta: %s\n", edit.error().message.c_str());
        return;
      }
      auto next = sluice::config::ApplyEdit(*l7_snapshot_, std::move(*edit));
      if (!next) {
        std::fprintf(stderr, "L7 delta: %s\n", next.error().message.c_str());
        return;
      }
      auto updated = sluice::proxy::CompileUpdate(*l7_, next->first, next->second, &dns_);
      if (!updated) {
        std::fprintf(stderr, "L7 compile: %s\n", updated.error().message.c_str());
        return;
      }
      l7_snapshot_ = std::make_shared<const sluice::config::Snapshot>(std::move(next->first));
      cfg = *updated;
    } else {
      auto rs = wire::DecodeResources(wire::EncodeResources(s->ToResourceSet()));
      if (!rs) {
        std::fprintf(stderr, "L7 wire: %s\n", rs.error().message.c_str());
        return;
      }
      auto snap = std::make_shared<sluice::config::Snapshot>(
          sluice::config::Snapshot::FromResourceSet(*rs));
      snap->generation = s->generation;
      auto full = sluice::proxy::Compile(*snap, &dns_);
      if (!full) {
        std::fprintf(stderr, "L7 compile: %s\n", full.error().message.c_str());
        return;
      }
      l7_snapshot_ = std::move(snap);
      cfg = *full;
    }
    sent_ = s;
    l7_ = std::move(cfg);
  }

  void L7Loop() {
    std::unique_lock lock(l7_mu_);
    for (;;) {
      l7_cv_.wait(lock, [&] { return l7_stop_ || !l7_queue_.empty(); });
      if (l7_stop_)
        return;
      auto [s, d] = std::move(l7_queue_.front());
      l7_queue_.pop_front();
      lock.unlock();
      auto t0 = Clock::now();
      ApplyL7(s, d);
      L7Done done{Clock::now(), Ms(Clock::now() - t0), l7_ ? l7_->cluster_count : 0,
                  l7_ ? l7_->built_clusters + l7_->built_routes + l7_->built_listeners : 0};
      lock.lock();
      l7_done_ = done;
      l7_generation_ = s->generation;
      l7_cv_.notify_all();
    }
  }

 public:
 private:
  std::string cgroup_, pin_root_;
  std::unique_ptr<sluice::Dataplane> dp_;
  std::unique_ptr<sluice::kernelsync::KernelSync> sync_;
  sluice::proxy::DnsCache dns_;
  std::shared_ptr<const sluice::proxy::ProxyConfig> l7_;
  sluice::config::SnapshotPtr sent_;                             // the last snapshot sent
  std::shared_ptr<const sluice::config::Snapshot> l7_snapshot_;  // the L7 side's copy
  bool l7_enabled_ = true;
  std::mutex l7_mu_;
  std::condition_variable l7_cv_;
  std::deque<std::pair<sluice::config::SnapshotPtr, sluice::config::Diff>> l7_queue_;
  uint64_t l7_generation_ = 0;
  L7Done l7_done_;
  bool l7_stop_ = false;
  std::thread l7_thread_;
};

struct Percentiles {
  std::vector<double> v;
  double at(double p) {
    if (v.empty())
      return 0;
    std::sort(v.begin(), v.end());
    return v[static_cast<size_t>(p * static_cast<double>(v.size() - 1))];
  }
};

struct Options {
  int services, endpoints, updates, churn_s, rate;
  bool pipeline, with_l7;
  int port, cmd, ready;
};

// One client (protocol `protocol`) against the running server: initial sync, one-endpoint
// updates, then the churn; prints its figures.
int RunClient(sx::XdsProtocol protocol, const Options& o) {
  static int run = 0;
  Pipeline pipe_line;
  if (!o.with_l7)
    pipe_line.DisableL7();
  if (o.pipeline) {
    if (auto r = pipe_line.Open(run++); !r) {
      std::fprintf(stderr, "--pipeline: %s\n", r.error().message.c_str());
      return 1;
    }
  }
  const long rss_base = RssKb();
  // As the agent runs in every role (app.cc): its allocator settings, and freed memory
  // handed back every 2 s.
  sluice::ConfigureAllocator();
  sluice::MemoryReleaser releaser;
  sluice::config::ConfigStore store;
  std::mutex mu;
  std::condition_variable cv;
  uint64_t published = 0;
  Clock::time_point last_store, last_live;
  Pipeline::Times last_times;
  store.Subscribe([&](const sluice::config::SnapshotPtr& s, const sluice::config::Diff& d) {
    auto stored = Clock::now();
    Pipeline::Times t;
    if (o.pipeline)
      t = pipe_line.Apply(s, d);
    std::lock_guard lock(mu);
    ++published;
    last_store = stored;
    last_live = Clock::now();
    last_times = t;
    cv.notify_all();
  });
  sx::AdsClientOptions opts;
  opts.server = "127.0.0.1:" + std::to_string(o.port);
  opts.protocol = protocol;
  sx::NodeIdentity id;
  id.ips = {"10.244.0.9"};
  id.pod_name = "bench-0";
  opts.node = sx::BuildNode(id);

  auto t0 = Clock::now();
  sx::AdsClient client(opts, store);
  if (!client.Start())
    return 1;
  {
    std::unique_lock lock(mu);
    bool synced = cv.wait_for(lock, std::chrono::minutes(5), [&] {
      auto s = store.Current();
      return s->clusters.size() == static_cast<size_t>(o.services) &&
             s->endpoints.size() == static_cast<size_t>(o.services) &&
             s->listeners.size() == kPorts && s->routes.size() == kPorts;
    });
    if (!synced) {
      std::fprintf(stderr, "the initial sync did not complete\n");
      return 1;
    }
  }
  // Live: the kernel written (on the store's thread) and the L7 side compiled.
  auto live_at = [&](Clock::time_point kernel_done) -> std::optional<Pipeline::L7Done> {
    auto l7 = pipe_line.WaitL7(store.Current()->generation);
    if (l7)
      l7->at = std::max(l7->at, kernel_done);
    return l7;
  };
  Clock::time_point kernel_done;
  {
    std::lock_guard lock(mu);
    kernel_done = last_live;
  }
  auto sync_l7 = o.pipeline ? live_at(kernel_done) : Pipeline::L7Done{kernel_done};
  if (!sync_l7) {
    std::fprintf(stderr, "the L7 side did not compile the initial config\n");
    return 1;
  }
  const double sync_ms = Ms(sync_l7->at - t0);
  const long rss_after_sync = RssKb();
  const Pipeline::Times sync_times = last_times;

  Percentiles to_store, to_live, kernel, l7;
  for (int u = 0; u < o.updates; ++u) {
    uint64_t before;
    {
      std::lock_guard lock(mu);
      before = published;
    }
    // The previous update's garbage (the server frees the set it replaced, ~150 MB at
    // 10,000 services) is not this update's cost: let it settle on the 2-core machine.
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    char ack;
    if (write(o.cmd, "p", 1) != 1 || read(o.ready, &ack, 1) != 1)
      return 1;
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    auto start = Clock::now();
    if (write(o.cmd, "u", 1) != 1)
      return 1;
    Clock::time_point stored;
    Pipeline::Times times;
    {
      std::unique_lock lock(mu);
      if (!cv.wait_for(lock, std::chrono::seconds(30), [&] { return published > before; })) {
        std::fprintf(stderr, "update %d did not arrive\n", u);
        return 1;
      }
      stored = last_store;
      kernel_done = last_live;
      times = last_times;
    }
    auto done = o.pipeline ? live_at(kernel_done) : Pipeline::L7Done{kernel_done};
    if (!done) {
      std::fprintf(stderr, "update %d: the L7 side did not compile it\n", u);
      return 1;
    }
    to_store.v.push_back(Ms(stored - start));
    to_live.v.push_back(Ms(done->at - start));
    kernel.v.push_back(times.kernel_ms);
    l7.v.push_back(done->ms);
    if (o.pipeline && std::getenv("XDS_BENCH_DEBUG")) {
      std::fprintf(stderr,
                   "update %d: kernel %.2f ms (%s, %zu decided, %zu written); L7 %.2f ms (%zu "
                   "built)\n",
                   u, times.kernel_ms, times.sync.incremental ? "incremental" : "whole",
                   times.sync.replanned, times.sync.upserts, done->ms, done->built);
    }
  }

  const auto st = client.Status();
  std::printf("== %s (the client's stream: %s)\n",
              std::string(sx::XdsProtocolName(protocol)).c_str(), st.protocol.c_str());
  std::printf("services %d, endpoints %d, route configs %d%s\n", o.services, o.endpoints, kPorts,
              !o.pipeline ? ""
              : o.with_l7 ? ", pipeline: kernel + L7"
                          : ", pipeline: kernel");
  std::printf("initial sync (client start -> all %s) %.0f ms\n", o.pipeline ? "live" : "applied",
              sync_ms);
  if (o.pipeline) {
    std::printf(
        "  kernel services %zu, L7 clusters %zu; the last snapshot's kernel sync %.0f ms, L7 "
        "compile %.0f ms\n",
        sync_times.kernel_services, sync_l7->clusters, sync_times.kernel_ms, sync_l7->ms);
  }
  std::printf(
      "one-endpoint update, Push -> store: median %.1f ms, p99 %.1f ms, max %.1f ms (%zu)\n",
      to_store.at(0.5), to_store.at(0.99), to_store.at(1.0), to_store.v.size());
  if (o.pipeline) {
    std::printf(
        "one-endpoint update, Push -> live (%s): median %.1f ms, p99 %.1f ms, max %.1f ms\n",
        o.with_l7 ? "kernel + L7" : "kernel", to_live.at(0.5), to_live.at(0.99), to_live.at(1.0));
    std::printf("  of which kernel sync: median %.2f ms; L7 compile: median %.2f ms\n",
                kernel.at(0.5), l7.at(0.5));
  }
  // And once the updates are through: the client has settled (a large response's freed
  // memory is handed back after its ACK, on the stream's thread, so the figure right
  // after the sync may still hold it).
  const long rss_settled = RssKb();
  std::printf(
      "client RSS: %ld MiB after sync (%ld MiB of it this run's), %ld MiB after the updates%s\n",
      rss_after_sync / 1024, (rss_after_sync - rss_base) / 1024, rss_settled / 1024,
      HeapSummary().c_str());

  if (o.churn_s > 0) {
    uint64_t before;
    {
      std::lock_guard lock(mu);
      before = published;
    }
    const long rss0 = RssKb();
    const double cpu0 = CpuSeconds();
    const auto w0 = Clock::now();
    char c = 'c';
    int args[2] = {o.churn_s, o.rate};
    int late = 0;
    if (write(o.cmd, &c, 1) != 1 || write(o.cmd, args, sizeof args) != sizeof args ||
        read(o.ready, &late, sizeof late) != sizeof late)
      return 1;
    const long rss_mid = RssKb();
    std::this_thread::sleep_for(std::chrono::milliseconds(500));  // the last changes land
    const double wall = std::chrono::duration<double>(Clock::now() - w0).count();
    const double cpu = CpuSeconds() - cpu0;
    uint64_t applied;
    {
      std::lock_guard lock(mu);
      applied = published - before;
    }
    std::printf(
        "churn: %d s at %d changes/s (pushes of %d every 100 ms, %d late): %lu snapshots applied, "
        "client CPU %.1f%% of one core, RSS %ld MiB before, %ld MiB at the end\n",
        o.churn_s, o.rate, std::max(1, o.rate / 10), late, static_cast<unsigned long>(applied),
        100.0 * cpu / wall, rss0 / 1024, rss_mid / 1024);
  }
  client.Stop();
  std::fflush(stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  int services = 10000, endpoints = 50000, updates = 20, churn_s = 0, rate = 200;
  bool pipeline = false, with_l7 = true;
  std::vector<sx::XdsProtocol> protocols = {sx::XdsProtocol::kSotw, sx::XdsProtocol::kDelta};
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--pipeline") {
      pipeline = true;
      continue;
    }
    if (a == "--no-l7") {
      with_l7 = false;
      continue;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "%s needs a value\n", a.c_str());
      return 2;
    }
    if (a == "--protocol") {
      std::string v = argv[++i];
      if (v == "both")
        continue;
      auto proto = sx::ParseXdsProtocol(v);
      if (!proto) {
        std::fprintf(stderr, "--protocol: %s\n", proto.error().message.c_str());
        return 2;
      }
      protocols = {*proto};
      continue;
    }
    int v = std::atoi(argv[++i]);
    if (a == "--services")
      services = v;
    else if (a == "--endpoints")
      endpoints = v;
    else if (a == "--updates")
      updates = v;
    else if (a == "--churn")
      churn_s = v;
    else if (a == "--rate")
      rate = v;
    else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  spdlog::set_level(std::getenv("XDS_BENCH_DEBUG") ? spdlog::level::debug : spdlog::level::warn);
  // Output piped into `head` must not kill the run before it removes its pins and cgroup.
  signal(SIGPIPE, SIG_IGN);
  int cmd[2], ready[2];
  if (pipe(cmd) != 0 || pipe(ready) != 0)
    return 1;
  pid_t child = fork();  // before any gRPC state exists in this process
  if (child == 0) {
    close(cmd[1]);
    close(ready[0]);
    Serve(services, endpoints, cmd[0], ready[1]);
  }
  close(cmd[0]);
  close(ready[1]);
  int port = 0;
  if (read(ready[0], &port, sizeof port) != sizeof port)
    return 1;

  for (auto protocol : protocols) {
    Options o{services, endpoints, updates, churn_s, rate,
              pipeline, with_l7,   port,    cmd[1],  ready[0]};
    if (int rc = RunClient(protocol, o); rc != 0)
      return rc;
  }
  close(cmd[1]);
  int status = 0;
  waitpid(child, &status, 0);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
