#include "sluice/loader/dataplane.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <net/if.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstdarg>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>

#include "sluice/loader/bpf_map.h"
#include "sluice/loader/encoding.h"
#include "sluice/loader/netns_cookie.h"
#include "sluice/loader/system.h"
#include "sluice_pod_inbound.skel.h"
#include "sluice_pod_tc.skel.h"
#include "sluice_sock_connect.skel.h"
#include "sluice_sockops.skel.h"

namespace sluice {

static_assert(sizeof(sluice_frontend_key) == 20);
static_assert(sizeof(sluice_service_cluster) == 8);
static_assert(offsetof(sluice_service, id) == 4);
static_assert(sizeof(sluice_service) == 4 + 16 + 64 + 128 + SLUICE_SERVICE_NAME_LEN);
static_assert(sizeof(sluice_backend_key) == 12);
static_assert(sizeof(sluice_endpoint) == 20);
static_assert(sizeof(sluice_endpoint_stats) == 16);
static_assert(sizeof(sluice_cluster_key) == 12);
static_assert(sizeof(sluice_maglev_table) == 2 * (SLUICE_MAGLEV_SIZE + 1));
static_assert(static_cast<int>(L7Reason::kHttp2) + 1 == SLUICE_L7_REASON_MAX);
static_assert(sizeof(sluice_enrolment) == 28);
static_assert(sizeof(sluice_tuple) == 40);
static_assert(sizeof(sluice_orig_dst) == 24);
static_assert(sizeof(sluice_settings) == 8);
static_assert(sizeof(sluice_conn_event) == 48);
static_assert(sizeof(sluice_pod) == 8);
static_assert(sizeof(sluice_pod_stats) == 40);
static_assert(sizeof(sluice_sock_origin) == 56);
static_assert(offsetof(sluice_sock_origin, netns_cookie) == 40);
static_assert(sizeof(sluice_tcp_metrics_key) == 48);
static_assert(offsetof(sluice_tcp_metrics_key, backend) == 28);
static_assert(sizeof(sluice_tcp_metrics) == 32);
static_assert(sizeof(sluice_inbound_policy) == 4 + SLUICE_POLICY_MAX_RULES);
static_assert(sizeof(sluice_policy_key) == 44);
static_assert(offsetof(sluice_policy_key, pod) * 8 - 32 + 16 * 8 == SLUICE_POLICY_FIXED_BITS);

namespace fs = std::filesystem;

std::string_view CounterName(sluice_counter c) {
  switch (c) {
    case SLUICE_CNT_TRANSLATED:
      return "translated";
    case SLUICE_CNT_NOT_ENROLLED:
      return "not_enrolled";
    case SLUICE_CNT_NO_SERVICE:
      return "no_service";
    case SLUICE_CNT_NO_BACKEND:
      return "no_backend";
    case SLUICE_CNT_BACKEND_MISSING:
      return "backend_missing";
    case SLUICE_CNT_NO_SOCK_STORAGE:
      return "no_sock_storage";
    case SLUICE_CNT_PEERNAME_RESTORED:
      return "peername_restored";
    case SLUICE_CNT_CONN_OPENED:
      return "conn_opened";
    case SLUICE_CNT_CONN_CLOSED:
      return "conn_closed";
    case SLUICE_CNT_REDIRECTED:
      return "redirected";
    case SLUICE_CNT_NO_PROXY:
      return "no_proxy";
    case SLUICE_CNT_REGISTRY_DENIED:
      return "registry_denied";
    case SLUICE_CNT_BYPASS:
      return "bypass";
    case SLUICE_CNT_ORIG_DST:
      return "orig_dst";
    case SLUICE_CNT_SPLICED:
      return "spliced";
    case SLUICE_CNT_NONTCP_DENIED:
      return "nontcp_denied";
    case SLUICE_CNT_INBOUND_STEERED:
      return "inbound_steered";
    case SLUICE_CNT_POLICY_DENIED:
      return "policy_denied";
    case SLUICE_CNT_INBOUND_UNSERVED:
      return "inbound_unserved";
    case SLUICE_CNT_MAX:
      break;
  }
  return "unknown";
}

namespace {

// Set while creating a clsact qdisc that may already exist: the kernel's "Exclusivity
// flag on, cannot modify" then only says so (EEXIST is handled), not a problem to warn of.
thread_local bool g_qdisc_may_exist = false;

int LibbpfPrint(enum libbpf_print_level level, const char* fmt, va_list args) {
  // Verifier logs come in one call and can be long: size the buffer to the message.
  va_list copy;
  va_copy(copy, args);
  int n = vsnprintf(nullptr, 0, fmt, copy);
  va_end(copy);
  if (n <= 0)
    return n;
  std::string buf(static_cast<size_t>(n) + 1, '\0');
  vsnprintf(buf.data(), buf.size(), fmt, args);
  std::string_view msg(buf.data(), static_cast<size_t>(n));
  while (!msg.empty() && msg.back() == '\n')
    msg.remove_suffix(1);
  if (level == LIBBPF_WARN &&
      !(g_qdisc_may_exist && msg.find("Exclusivity flag on") != std::string_view::npos))
    spdlog::warn("libbpf: {}", msg);
  else
    spdlog::debug("libbpf: {}", msg);
  return n;
}

// One revision of one kernel service: how many slots each cluster wrote, and whether it
// has a consistent-hash table, so the revision can be deleted without scanning.
struct RevisionLayout {
  std::vector<uint16_t> slots;
  std::vector<bool> table;
};

struct FamilyState {
  uint32_t id = 0;
  uint32_t current = 0;                          // 0: nothing written yet
  std::map<uint32_t, RevisionLayout> revisions;  // live revisions (normally one)
  std::vector<sluice_frontend_key> frontends;
};

// tc filters of the pod programs: one handle and priority, so adoption replaces them.
constexpr uint32_t kTcHandle = 0x5117;
constexpr uint32_t kTcPriority = 1;

// Removes Sluice's filter from one hook of an interface (absent is fine).
void DetachTc(int ifindex, bpf_tc_attach_point where) {
  LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = where);
  LIBBPF_OPTS(bpf_tc_opts, opts, .handle = kTcHandle, .priority = kTcPriority);
  (void)bpf_tc_detach(&hook, &opts);
}

struct Garbage {
  uint32_t id;
  uint32_t revision;
  RevisionLayout layout;
};

bool SameKey(const sluice_frontend_key& a, const sluice_frontend_key& b) {
  return std::memcmp(&a, &b, sizeof(a)) == 0;
}

std::string FrontendString(const sluice_frontend_key& k) {
  std::string s = SocketAddress{FromKernel(k.ip, k.family), k.port}.ToString();
  return s + (k.protocol == 17 ? "/UDP" : "/TCP");
}

RevisionLayout LayoutOf(const sluice_service& rec) {
  RevisionLayout l;
  for (uint32_t c = 0; c < rec.n_clusters && c < SLUICE_MAX_CLUSTERS; c++) {
    l.slots.push_back(rec.clusters[c].n_backends);
    auto p = rec.clusters[c].lb_policy;
    l.table.push_back(p == SLUICE_LB_MAGLEV || p == SLUICE_LB_RING_HASH);
  }
  return l;
}

}  // namespace

struct Dataplane::Impl {
  sluice_sock_connect* connect = nullptr;
  sluice_sockops* sockops = nullptr;
  sluice_pod_tc* podtc = nullptr;
  sluice_pod_inbound* inbound = nullptr;
  std::vector<bpf_link*> links;
  int rcu_outer = -1;
  int rcu_inner = -1;

  TypedMap<sluice_frontend_key, sluice_service> services;
  TypedMap<sluice_backend_key, sluice_backend> backends;
  TypedMap<sluice_cluster_key, sluice_maglev_table> maglev;
  TypedMap<sluice_endpoint, sluice_endpoint_stats> endpoint_stats;
  TypedMap<uint64_t, sluice_enrolment> enrolled;
  TypedMap<uint32_t, sluice_settings> settings;
  TypedMap<sluice_endpoint, uint32_t> known;  // refcount per backend slot
  TypedMap<uint32_t, sluice_pod> pods;
  int pod_stats_fd = -1;
  int inbound_fd = -1;
  int policy_fd = -1;    // sluice_inbound_policy
  int guard_fd = -1;     // sluice_inbound_guard
  int prefixes_fd = -1;  // sluice_policy_prefixes
  int counters_fd = -1;
  int connlog_fd = -1;
  TypedMap<sluice_tcp_metrics_key, sluice_tcp_metrics> tcp_metrics;
  std::vector<int> owned_fds;  // maps opened from pins (maps_only mode)

  // Revisions retired by Apply and freed after an RCU grace period by the reclaimer
  // thread (reclaim_in_background). `mu` serialises Apply's map writes with its
  // deletes: both change the endpoints' reference counts.
  std::mutex mu;
  std::condition_variable cv;
  std::vector<Garbage> pending;
  bool reclaiming = false;               // a batch taken from `pending` is being freed
  uint64_t reclaimed_in_background = 0;  // revisions the reclaimer freed
  bool stopping = false;
  std::thread reclaimer;

  // name -> family -> state; rebuilt from the maps on adoption.
  std::map<std::string, std::map<uint8_t, FamilyState>> state;
  uint32_t next_id = 1;

  ~Impl() {
    for (auto* l : links)
      bpf_link__destroy(l);  // closes fds; pinned links stay attached
    if (podtc)
      sluice_pod_tc__destroy(podtc);  // tc filters keep their own program references
    if (inbound)
      sluice_pod_inbound__destroy(inbound);  // pinned netns links keep theirs
    if (sockops)
      sluice_sockops__destroy(sockops);
    if (connect)
      sluice_sock_connect__destroy(connect);
    if (rcu_outer >= 0)
      close(rcu_outer);
    if (rcu_inner >= 0)
      close(rcu_inner);
    for (int fd : owned_fds)
      close(fd);
  }

  // Adjusts the known-endpoint refcount of one backend slot.
  // The map holds each endpoint with live backend slots (the tc program asks only
  // whether it is there); the count of slots is kept here, so only a first slot and a
  // last one cost a map write (Reconcile rebuilds both from the backends).
  Result<void> Ref(const sluice_endpoint& ep, int delta) {
    const std::string key(reinterpret_cast<const char*>(&ep), sizeof(ep));
    auto it = refs.find(key);
    uint32_t n = it == refs.end() ? 0 : it->second;
    if (delta < 0) {
      if (n > 1) {
        it->second = n - 1;
        return {};
      }
      if (it != refs.end())
        refs.erase(it);
      auto r = known.Delete(ep);
      return r ? Result<void>{} : std::unexpected(r.error());
    }
    if (n == 0)
      SLUICE_RETURN_IF_ERROR(known.Update(ep, 1, BPF_ANY));
    refs[key] = n + 1;
    return {};
  }
  std::unordered_map<std::string, uint32_t> refs;  // endpoint bytes -> live backend slots

  Result<void> DeleteRevision(const Garbage& g) {
    for (size_t c = 0; c < g.layout.slots.size(); c++) {
      for (uint32_t s = 0; s < g.layout.slots[c]; s++) {
        sluice_backend_key k{g.id, g.revision, static_cast<uint16_t>(s), static_cast<uint8_t>(c),
                             0};
        sluice_backend b{};
        if (auto got = backends.Lookup(k, &b); got && *got)
          if (auto r = Ref(b.ep, -1); !r)
            return r;
        SLUICE_RETURN_IF_ERROR(backends.Delete(k));
      }
      if (g.layout.table[c]) {
        sluice_cluster_key k{g.id, g.revision, static_cast<uint8_t>(c), {}};
        SLUICE_RETURN_IF_ERROR(maglev.Delete(k));
      }
    }
    return {};
  }

  // Removes what WriteRevisions wrote of `encs` (nothing points at it yet): the tables
  // and backend slots, and, with `refs_taken`, the endpoints' references it took.
  void UnwriteRevisions(const std::vector<const EncodedService*>& encs, bool refs_taken) {
    for (const auto* enc : encs) {
      for (size_t c = 0; c < enc->clusters.size(); c++) {
        const auto& cl = enc->clusters[c];
        for (size_t s = 0; s < cl.slots.size(); s++) {
          if (refs_taken)
            (void)Ref(cl.slots[s].ep, -1);
          (void)backends.Delete({enc->record.id, enc->record.revision, static_cast<uint16_t>(s),
                                 static_cast<uint8_t>(c), 0});
        }
        if (cl.maglev)
          (void)maglev.Delete({enc->record.id, enc->record.revision, static_cast<uint8_t>(c), {}});
      }
    }
  }

  // Writes new revisions (new keys only: nothing live changes until a frontend points at
  // one): every revision's backend slots in one batched bpf() call, the endpoints seen
  // for the first time into the registry in another (a whole sync writes 10,000s of
  // each), then the consistent-hash tables. All or nothing: on an error what was written
  // is removed again, and *failed is the index in `encs` of the revision it concerns.
  Result<void> WriteRevisions(const std::vector<const EncodedService*>& encs, size_t* failed) {
    std::vector<sluice_backend_key> keys;
    std::vector<sluice_backend> values;
    std::vector<size_t> owner;  // index in encs of keys[i]
    for (size_t e = 0; e < encs.size(); e++) {
      const auto& enc = *encs[e];
      for (size_t c = 0; c < enc.clusters.size(); c++) {
        const auto& cl = enc.clusters[c];
        for (size_t s = 0; s < cl.slots.size(); s++) {
          keys.push_back({enc.record.id, enc.record.revision, static_cast<uint16_t>(s),
                          static_cast<uint8_t>(c), 0});
          values.push_back(cl.slots[s]);
          owner.push_back(e);
        }
      }
    }
    size_t at = 0;
    if (auto r = backends.UpdateBatch(keys, values, BPF_ANY, &at); !r) {
      *failed = owner[at];
      UnwriteRevisions(encs, false);
      return r;
    }
    for (size_t e = 0; e < encs.size(); e++) {
      const auto& enc = *encs[e];
      for (size_t c = 0; c < enc.clusters.size(); c++) {
        const auto& cl = enc.clusters[c];
        if (!cl.maglev)
          continue;
        sluice_cluster_key k{enc.record.id, enc.record.revision, static_cast<uint8_t>(c), {}};
        auto table = std::make_unique<sluice_maglev_table>();
        std::memcpy(table->slot, cl.maglev->data(), sizeof(table->slot));
        if (auto r = maglev.Update(k, *table, BPF_ANY); !r) {
          *failed = e;
          UnwriteRevisions(encs, false);
          return r;
        }
      }
    }
    // The references last, so that undoing them is the only undo that touches the
    // registry.
    std::vector<sluice_endpoint> fresh;
    std::vector<size_t> fresh_owner;
    for (size_t e = 0; e < encs.size(); e++) {
      for (const auto& cl : encs[e]->clusters) {
        for (const auto& slot : cl.slots) {
          const std::string key(reinterpret_cast<const char*>(&slot.ep), sizeof(slot.ep));
          if (refs[key]++ == 0) {
            fresh.push_back(slot.ep);
            fresh_owner.push_back(e);
          }
        }
      }
    }
    if (auto r = known.UpdateBatch(fresh, std::vector<uint32_t>(fresh.size(), 1), BPF_ANY, &at);
        !r) {
      *failed = fresh_owner[at];
      UnwriteRevisions(encs, true);
      return r;
    }
    return {};
  }

  // frontend key -> the service it belongs to: what Apply checks a new frontend against
  // (kept with `state`'s frontends; the maps hold nothing this does not).
  std::unordered_map<std::string, std::string> owners;
  static std::string OwnerKey(const sluice_frontend_key& k) {
    return {reinterpret_cast<const char*>(&k), sizeof(k)};
  }
  // fs.frontends = keys, with `owners` following.
  void SetFrontends(const std::string& name, FamilyState& fs,
                    std::vector<sluice_frontend_key> keys) {
    for (const auto& k : fs.frontends) {
      auto it = owners.find(OwnerKey(k));
      if (it != owners.end() && it->second == name)
        owners.erase(it);
    }
    for (const auto& k : keys)
      owners[OwnerKey(k)] = name;
    fs.frontends = std::move(keys);
  }
};

Dataplane::Dataplane(DataplaneOptions opts) : opts_(std::move(opts)), impl_(new Impl) {}
Dataplane::~Dataplane() {
  if (impl_->reclaimer.joinable()) {
    {
      std::lock_guard lock(impl_->mu);
      impl_->stopping = true;
    }
    impl_->cv.notify_all();
    impl_->reclaimer.join();
  }
  if (!impl_->pending.empty() && GracePeriod()) {
    for (const auto& g : impl_->pending)
      (void)impl_->DeleteRevision(g);
  }
}

// The reclaimer: takes what Apply retired, waits one grace period without holding the
// lock (Apply goes on meanwhile), then frees that batch; what was retired during the wait
// waits for the next round.
void Dataplane::ReclaimLoop() {
  std::unique_lock lock(impl_->mu);
  for (;;) {
    impl_->cv.wait(lock, [&] { return impl_->stopping || !impl_->pending.empty(); });
    if (impl_->stopping)
      return;
    std::vector<Garbage> batch = std::move(impl_->pending);
    impl_->pending.clear();
    impl_->reclaiming = true;
    lock.unlock();
    auto waited = GracePeriod();
    lock.lock();
    if (!waited) {
      spdlog::warn("kernel: {} (retired revisions kept for the next round)",
                   waited.error().message);
      std::move(batch.begin(), batch.end(), std::back_inserter(impl_->pending));
    } else {
      for (const auto& g : batch)
        if (auto r = impl_->DeleteRevision(g); !r)
          spdlog::warn("kernel: freeing a retired revision: {}", r.error().message);
      impl_->reclaimed_in_background += batch.size();
    }
    impl_->reclaiming = false;
    impl_->cv.notify_all();
    if (!waited) {
      lock.unlock();
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      lock.lock();
    }
  }
}

uint64_t Dataplane::ReclaimedInBackground() const {
  std::lock_guard lock(impl_->mu);
  return impl_->reclaimed_in_background;
}

void Dataplane::WaitReclaimed() {
  std::unique_lock lock(impl_->mu);
  impl_->cv.wait(lock, [&] {
    return (impl_->pending.empty() && !impl_->reclaiming) || !impl_->reclaimer.joinable();
  });
}

Result<std::unique_ptr<Dataplane>> Dataplane::Open(const DataplaneOptions& opts) {
  std::unique_ptr<Dataplane> dp(new Dataplane(opts));
  if (dp->opts_.cgroup_path.empty()) {
    auto cg = FindCgroup2Mount();
    SLUICE_RETURN_IF_ERROR(cg);
    dp->opts_.cgroup_path = *cg;
  }
  if (!dp->opts_.maps_only)
    SLUICE_RETURN_IF_ERROR(CheckCgroupCoversPods(dp->opts_.cgroup_path));
  if (dp->opts_.maps_only) {
    SLUICE_RETURN_IF_ERROR(dp->OpenPinnedMaps());
  } else {
    SLUICE_RETURN_IF_ERROR_CTX(dp->Load(), "loading the data plane");
    SLUICE_RETURN_IF_ERROR_CTX(dp->Attach(), "attaching to " + dp->opts_.cgroup_path);
  }
  SLUICE_RETURN_IF_ERROR(dp->CreateGracePeriodMap());
  SLUICE_RETURN_IF_ERROR_CTX(dp->Reconcile(), "adopting pinned state");
  return dp;
}

Result<void> Dataplane::Load() {
  libbpf_set_print(LibbpfPrint);
  if (auto r = EnsureBpffs(opts_.pin_root); !r)
    return r;
  // Before any program loads: a missing required feature is refused here by name, and
  // the optional ones pick their variant (read-only data) or their fallback.
  auto features = ProbeKernelFeatures(opts_.kernel_fallbacks);
  SLUICE_RETURN_IF_ERROR_CTX(features, "probing kernel features");
  features_ = std::move(*features);
  SetNetnsCookieSource(features_.netns_cookie ? NetnsCookieSource::kAuto
                                              : NetnsCookieSource::kBpfProbe);
  spdlog::info("kernel features: {}", features_.Summary());
  for (KernelFeature f : kKernelFeatures)
    if (!features_.Has(f))
      spdlog::warn("kernel feature {} (Linux {}+) is off{}: {}", Describe(f).name,
                   Describe(f).min_kernel, features_.forced.contains(f) ? " (forced)" : "",
                   Describe(f).fallback);

  const std::map<std::string, uint32_t> sizes = {
      {"sluice_services", opts_.sizes.frontends},
      {"sluice_backends", opts_.sizes.backends},
      {"sluice_maglev", opts_.sizes.maglev_tables},
      {"sluice_endpoint_stats", opts_.sizes.endpoints},
      {"sluice_enrolled", opts_.sizes.enrolled_netns},
  };
  // Before load: size each map, and check any pinned map we are about to adopt, so an
  // incompatible leftover gets a clear message instead of libbpf's EINVAL.
  auto prepare = [&](bpf_object* obj) -> Result<void> {
    bpf_map* map;
    bpf_object__for_each_map(map, obj) {
      const std::string name = bpf_map__name(map);
      auto want = sizes.find(name);
      if (want != sizes.end())
        bpf_map__set_max_entries(map, want->second);
      if (!bpf_map__is_pinned(map) && bpf_map__pin_path(map) == nullptr)
        continue;  // internal maps (.rodata, .bss) are private to the object
      const std::string pin = opts_.pin_root + "/" + name;
      std::error_code ec;
      if (!fs::exists(pin, ec))
        continue;
      int fd = bpf_obj_get(pin.c_str());
      if (fd < 0)
        return FailErrno("opening pinned map " + pin, errno);
      bpf_map_info info{};
      uint32_t len = sizeof(info);
      int rc = bpf_obj_get_info_by_fd(fd, &info, &len);
      close(fd);
      if (rc != 0)
        return FailErrno("reading pinned map " + pin, errno);
      if (info.key_size != bpf_map__key_size(map) || info.value_size != bpf_map__value_size(map) ||
          info.type != static_cast<uint32_t>(bpf_map__type(map)))
        return Fail("pinned map " + pin + " has another layout (key " +
                    std::to_string(info.key_size) + "/value " + std::to_string(info.value_size) +
                    " bytes, this build expects " + std::to_string(bpf_map__key_size(map)) + "/" +
                    std::to_string(bpf_map__value_size(map)) +
                    "): it was made by another Sluice version; remove it with "
                    "'sluicectl bpf cleanup' (this drops the kernel state)");
      if (info.max_entries != bpf_map__max_entries(map)) {
        spdlog::warn("adopting {} with its pinned size {} (requested {})", pin, info.max_entries,
                     bpf_map__max_entries(map));
        bpf_map__set_max_entries(map, info.max_entries);
      }
    }
    return {};
  };

  // Adopting means a previous loader left the maps pinned (the second object below finds
  // the first one's fresh pins, which is not adoption).
  adopted_ = fs::exists(opts_.pin_root + "/sluice_services");

  LIBBPF_OPTS(bpf_object_open_opts, open_opts, .pin_root_path = opts_.pin_root.c_str());
  impl_->connect = sluice_sock_connect__open_opts(&open_opts);
  if (!impl_->connect)
    return FailErrno("opening BPF object sock_connect", errno);
  if (auto r = prepare(impl_->connect->obj); !r)
    return r;
  impl_->connect->rodata->sluice_use_set_retval = features_.set_retval;
  if (int err = sluice_sock_connect__load(impl_->connect))
    return FailErrno("loading BPF object sock_connect (verifier log above)", err);

  // The other objects find the maps the first one pinned and reuse them.
  impl_->podtc = sluice_pod_tc__open_opts(&open_opts);
  if (!impl_->podtc)
    return FailErrno("opening BPF object pod_tc", errno);
  if (auto r = prepare(impl_->podtc->obj); !r)
    return r;
  if (int err = sluice_pod_tc__load(impl_->podtc))
    return FailErrno("loading BPF object pod_tc (verifier log above)", err);

  impl_->inbound = sluice_pod_inbound__open_opts(&open_opts);
  if (!impl_->inbound)
    return FailErrno("opening BPF object pod_inbound", errno);
  if (auto r = prepare(impl_->inbound->obj); !r)
    return r;
  if (int err = sluice_pod_inbound__load(impl_->inbound))
    return FailErrno("loading BPF object pod_inbound (verifier log above)", err);

  impl_->sockops = sluice_sockops__open_opts(&open_opts);
  if (!impl_->sockops)
    return FailErrno("opening BPF object sockops", errno);
  if (auto r = prepare(impl_->sockops->obj); !r)
    return r;
  if (int err = sluice_sockops__load(impl_->sockops))
    return FailErrno("loading BPF object sockops (verifier log above)", err);

  auto& m = impl_->connect->maps;
  impl_->services = {"sluice_services", bpf_map__fd(m.sluice_services)};
  impl_->backends = {"sluice_backends", bpf_map__fd(m.sluice_backends)};
  impl_->maglev = {"sluice_maglev", bpf_map__fd(m.sluice_maglev)};
  impl_->endpoint_stats = {"sluice_endpoint_stats", bpf_map__fd(m.sluice_endpoint_stats)};
  impl_->enrolled = {"sluice_enrolled", bpf_map__fd(m.sluice_enrolled)};
  impl_->settings = {"sluice_settings", bpf_map__fd(m.sluice_settings)};
  impl_->known = {"sluice_known_endpoints", bpf_map__fd(m.sluice_known_endpoints)};
  impl_->pods = {"sluice_pods", bpf_map__fd(m.sluice_pods)};
  impl_->pod_stats_fd = bpf_map__fd(m.sluice_pod_stats);
  impl_->inbound_fd = bpf_map__fd(m.sluice_inbound);
  impl_->policy_fd = bpf_map__fd(m.sluice_inbound_policy);
  impl_->guard_fd = bpf_map__fd(m.sluice_inbound_guard);
  impl_->prefixes_fd = bpf_map__fd(m.sluice_policy_prefixes);
  impl_->counters_fd = bpf_map__fd(m.sluice_counters);
  impl_->connlog_fd = bpf_map__fd(m.sluice_connlog);
  impl_->tcp_metrics = {"sluice_tcp_metrics", bpf_map__fd(m.sluice_tcp_metrics)};

  // Fresh maps get the default switches; adopted ones keep what the operator set.
  sluice_settings set{};
  SLUICE_RETURN_IF_ERROR(impl_->settings.Lookup(0, &set));
  if (set.flags == 0 && set.bypass_mark == 0) {
    set.flags = SLUICE_SET_SPLICE | SLUICE_SET_TCP_METRICS;
    set.bypass_mark = SLUICE_DEFAULT_BYPASS_MARK;
    if (auto r = impl_->settings.Update(0, set, BPF_ANY); !r)
      return r;
  }
  return {};
}

Result<void> Dataplane::OpenPinnedMaps() {
  auto open = [&](const std::string& name) -> Result<int> {
    const std::string pin = opts_.pin_root + "/" + name;
    int fd = bpf_obj_get(pin.c_str());
    if (fd < 0) {
      if (errno == ENOENT)
        return Fail("no Sluice data plane at " + opts_.pin_root + " (" + pin +
                    " is missing): start the agent or run 'sluicectl bpf load'");
      return FailErrno("opening pinned map " + pin, errno);
    }
    impl_->owned_fds.push_back(fd);
    return fd;
  };
  constexpr int kMaps = 14;
  int fds[kMaps];
  const char* names[kMaps] = {
      "sluice_services",        "sluice_backends",        "sluice_maglev",
      "sluice_endpoint_stats",  "sluice_enrolled",        "sluice_counters",
      "sluice_settings",        "sluice_known_endpoints", "sluice_pods",
      "sluice_pod_stats",       "sluice_inbound",         "sluice_inbound_policy",
      "sluice_policy_prefixes", "sluice_inbound_guard"};
  for (int i = 0; i < kMaps; i++) {
    auto fd = open(names[i]);
    SLUICE_RETURN_IF_ERROR(fd);
    fds[i] = *fd;
  }
  adopted_ = true;
  impl_->services = {names[0], fds[0]};
  impl_->backends = {names[1], fds[1]};
  impl_->maglev = {names[2], fds[2]};
  impl_->endpoint_stats = {names[3], fds[3]};
  impl_->enrolled = {names[4], fds[4]};
  impl_->counters_fd = fds[5];
  impl_->settings = {names[6], fds[6]};
  impl_->known = {names[7], fds[7]};
  impl_->pods = {names[8], fds[8]};
  impl_->pod_stats_fd = fds[9];
  impl_->inbound_fd = fds[10];
  impl_->policy_fd = fds[11];
  impl_->prefixes_fd = fds[12];
  impl_->guard_fd = fds[13];
  // A data plane pinned by an older version has no TCP metrics map: TcpMetrics() is
  // then empty rather than the whole inspection failing.
  if (int fd = bpf_obj_get((opts_.pin_root + "/sluice_tcp_metrics").c_str()); fd >= 0) {
    impl_->owned_fds.push_back(fd);
    impl_->tcp_metrics = {"sluice_tcp_metrics", fd};
  }
  return {};
}

Result<void> Dataplane::CreateGracePeriodMap() {
  // A private map-in-map: updating it makes the kernel wait for an RCU grace period
  // (maybe_wait_bpf_programs), after which no program still holds an older value.
  impl_->rcu_inner = bpf_map_create(BPF_MAP_TYPE_ARRAY, "sluice_rcu_in", 4, 4, 1, nullptr);
  if (impl_->rcu_inner < 0)
    return FailErrno("creating the grace-period map", errno);
  LIBBPF_OPTS(bpf_map_create_opts, outer_opts,
              .inner_map_fd = static_cast<__u32>(impl_->rcu_inner));
  impl_->rcu_outer =
      bpf_map_create(BPF_MAP_TYPE_ARRAY_OF_MAPS, "sluice_rcu_sync", 4, 4, 1, &outer_opts);
  if (impl_->rcu_outer < 0)
    return FailErrno("creating the grace-period map", errno);
  return {};
}

Result<void> Dataplane::GracePeriod() {
  uint32_t zero = 0;
  if (bpf_map_update_elem(impl_->rcu_outer, &zero, &impl_->rcu_inner, BPF_ANY) != 0)
    return FailErrno("waiting for an RCU grace period", errno);
  return {};
}

Result<void> Dataplane::Attach() {
  const std::string links_dir = opts_.pin_root + "/links";
  std::error_code ec;
  fs::create_directories(links_dir, ec);
  if (ec)
    return Fail("creating " + links_dir + ": " + ec.message());

  auto cgroup_id = CgroupId(opts_.cgroup_path);
  SLUICE_RETURN_IF_ERROR(cgroup_id);
  int cg = open(opts_.cgroup_path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (cg < 0)
    return FailErrno("opening cgroup " + opts_.cgroup_path, errno);

  bpf_program* progs[] = {
      impl_->connect->progs.sluice_connect4,     impl_->connect->progs.sluice_connect6,
      impl_->connect->progs.sluice_getpeername4, impl_->connect->progs.sluice_getpeername6,
      impl_->connect->progs.sluice_getsockopt,   impl_->sockops->progs.sluice_sockops,
  };
  Result<void> result;
  for (bpf_program* prog : progs) {
    const std::string pin = links_dir + "/" + bpf_program__name(prog);
    bpf_link* link = nullptr;
    if (fs::exists(pin)) {
      // Adopt: swap our program into the existing link. The hook never goes empty and
      // never runs twice.
      link = bpf_link__open(pin.c_str());
      if (!link) {
        result = FailErrno("opening pinned link " + pin, errno);
        break;
      }
      bpf_link_info info{};
      uint32_t len = sizeof(info);
      if (bpf_obj_get_info_by_fd(bpf_link__fd(link), &info, &len) == 0 &&
          info.type == BPF_LINK_TYPE_CGROUP && info.cgroup.cgroup_id != *cgroup_id) {
        bpf_link__destroy(link);
        result = Fail("pinned link " + pin + " is attached to another cgroup (id " +
                      std::to_string(info.cgroup.cgroup_id) + ", not " + opts_.cgroup_path +
                      "); run 'sluicectl bpf cleanup' first to move the data plane");
        break;
      }
      if (int err = bpf_link__update_program(link, prog)) {
        bpf_link__destroy(link);
        result = FailErrno("replacing the program of pinned link " + pin, err);
        break;
      }
    } else {
      link = bpf_program__attach_cgroup(prog, cg);
      if (!link) {
        result = FailErrno(std::string("attaching ") + bpf_program__name(prog), errno);
        break;
      }
      if (int err = bpf_link__pin(link, pin.c_str())) {
        bpf_link__destroy(link);
        result = FailErrno("pinning link " + pin, err);
        break;
      }
    }
    impl_->links.push_back(link);
  }
  close(cg);
  if (!result)
    return result;
  // The splice program hangs off the sockhash itself (no link type for that in libbpf
  // 1.1): attaching again replaces the adopted map's previous program in place.
  if (bpf_prog_attach(bpf_program__fd(impl_->sockops->progs.sluice_splice_msg),
                      bpf_map__fd(impl_->sockops->maps.sluice_splice), BPF_SK_MSG_VERDICT, 0) != 0)
    return FailErrno("attaching sluice_splice_msg to map sluice_splice", errno);

  // Adopted pods get the new tc programs; pods whose interface is gone are forgotten.
  auto pods = impl_->pods.Keys();
  SLUICE_RETURN_IF_ERROR(pods);
  for (uint32_t ifindex : *pods) {
    char name[IF_NAMESIZE];
    sluice_pod pod{};
    if (if_indextoname(ifindex, name) && impl_->pods.Lookup(ifindex, &pod).value_or(false)) {
      if (auto r = AttachPod(static_cast<int>(ifindex), pod.flags & SLUICE_POD_REGISTRY_ONLY); !r)
        spdlog::warn("re-attaching the pod programs to ifindex {}: {}", ifindex, r.error().message);
    } else {
      (void)impl_->pods.Delete(ifindex);
      (void)bpf_map_delete_elem(impl_->pod_stats_fd, &ifindex);
    }
  }
  return result;
}

Result<void> Dataplane::Reconcile() {
  auto keys = impl_->services.Keys();
  SLUICE_RETURN_IF_ERROR(keys);
  std::set<std::pair<uint32_t, uint32_t>> live;
  for (const auto& key : *keys) {
    sluice_service rec{};
    auto found = impl_->services.Lookup(key, &rec, BPF_F_LOCK);
    SLUICE_RETURN_IF_ERROR(found);
    if (!*found)
      continue;
    auto& fs = impl_->state[rec.name][key.family];
    fs.id = rec.id;
    fs.current = std::max(fs.current, rec.revision);
    fs.revisions[rec.revision] = LayoutOf(rec);
    fs.frontends.push_back(key);
    impl_->owners[Impl::OwnerKey(key)] = rec.name;
    live.insert({rec.id, rec.revision});
    impl_->next_id = std::max(impl_->next_id, rec.id + 1);
  }
  // A read-only opener (sluicectl dump) must not sweep: the owning agent may be between
  // writing a new revision's backends and switching the frontend to it.
  if (opts_.maps_only)
    return {};
  // Sweep what a crash in the middle of an update could have left behind: backends and
  // tables of revisions no frontend points to.
  size_t swept = 0;
  auto bkeys = impl_->backends.Keys();
  SLUICE_RETURN_IF_ERROR(bkeys);
  for (const auto& k : *bkeys) {
    if (!live.contains({k.service_id, k.revision}) && impl_->backends.Delete(k).value_or(false))
      swept++;
  }
  auto tkeys = impl_->maglev.Keys();
  SLUICE_RETURN_IF_ERROR(tkeys);
  for (const auto& k : *tkeys) {
    if (!live.contains({k.service_id, k.revision}) && impl_->maglev.Delete(k).value_or(false))
      swept++;
  }
  // The registry tc checks (known endpoints) is derived state: rebuild it from the live
  // backends, so a crash between its updates cannot leave it wrong.
  std::map<std::vector<uint8_t>, std::pair<sluice_endpoint, uint32_t>> refs;
  auto live_backends = impl_->backends.Keys();
  SLUICE_RETURN_IF_ERROR(live_backends);
  for (const auto& k : *live_backends) {
    sluice_backend b{};
    if (!impl_->backends.Lookup(k, &b).value_or(false))
      continue;
    const auto* p = reinterpret_cast<const uint8_t*>(&b.ep);
    auto& slot = refs[std::vector<uint8_t>(p, p + sizeof(b.ep))];
    slot.first = b.ep;
    slot.second++;
  }
  auto known = impl_->known.Keys();
  SLUICE_RETURN_IF_ERROR(known);
  for (const auto& ep : *known) {
    const auto* p = reinterpret_cast<const uint8_t*>(&ep);
    if (!refs.contains(std::vector<uint8_t>(p, p + sizeof(ep))))
      (void)impl_->known.Delete(ep);
  }
  impl_->refs.clear();
  for (const auto& [bytes, entry] : refs) {
    if (auto r = impl_->known.Update(entry.first, 1, BPF_ANY); !r)
      return r;
    impl_->refs.emplace(std::string(bytes.begin(), bytes.end()), entry.second);
  }

  if (adopted_)
    spdlog::info("adopted pinned data plane at {}: {} services, {} stale entries swept",
                 opts_.pin_root, impl_->state.size(), swept);
  return {};
}

Result<void> Dataplane::Apply(const std::vector<ServiceSpec>& upserts,
                              const std::vector<std::string>& deletes) {
  std::unique_lock lock(impl_->mu);
  // Validate everything first: a bad spec changes nothing. A frontend may belong to no
  // other service, here or among the upserts.
  std::unordered_map<std::string, const std::string*> claimed;
  std::set<std::string_view> names;
  for (const auto& spec : upserts) {
    if (auto r = Validate(spec); !r)
      return r;
    if (!names.insert(spec.name).second)
      return Fail("service '" + spec.name + "': upserted twice in one update");
    for (const auto& ip : spec.vips) {
      auto key = FrontendKey(ip, spec.port, spec.protocol);
      const std::string k = Impl::OwnerKey(key);
      auto owner = impl_->owners.find(k);
      if (owner != impl_->owners.end() && owner->second != spec.name)
        return Fail("service '" + spec.name + "': frontend " + FrontendString(key) +
                    " already belongs to service '" + owner->second + "'");
      auto [other, fresh] = claimed.try_emplace(k, &spec.name);
      if (!fresh && *other->second != spec.name)
        return Fail("service '" + spec.name + "': frontend " + FrontendString(key) +
                    " is claimed by service '" + *other->second + "' too");
    }
  }

  // Every upsert's new revisions, written before any frontend moves to one.
  struct Change {
    const ServiceSpec* spec;
    FamilyState* fs;
    EncodedService enc;
  };
  std::vector<Change> changes;
  for (const auto& spec : upserts) {
    auto& families = impl_->state[spec.name];
    for (uint8_t family : Families(spec)) {
      auto& fs = families[family];
      if (fs.id == 0)
        fs.id = impl_->next_id++;
      auto enc = Encode(spec, family, fs.id, fs.current + 1);
      SLUICE_RETURN_IF_ERROR_CTX(enc, "service '" + spec.name + "'");
      changes.push_back({&spec, &fs, std::move(*enc)});
    }
  }
  std::vector<const EncodedService*> encs;
  for (const auto& c : changes)
    encs.push_back(&c.enc);
  size_t failed = 0;
  auto written = impl_->WriteRevisions(encs, &failed);
  if (!written && (!impl_->pending.empty() || impl_->reclaiming)) {
    // The maps may be full of revisions waiting for their grace period (updates faster
    // than the reclaimer): wait for it, then try once more.
    impl_->cv.notify_all();
    impl_->cv.wait(lock, [&] { return impl_->pending.empty() && !impl_->reclaiming; });
    written = impl_->WriteRevisions(encs, &failed);
  }
  if (!written)  // nothing points at what was written: it is gone again, nothing changed
    return Wrap("service '" + changes[failed].spec->name + "'", written.error());

  // Switch each frontend to its new revision in place, under the record's lock: all in
  // one batched call. A new frontend is inserted the same way (BPF_F_LOCK alone).
  std::vector<sluice_frontend_key> keys;
  std::vector<sluice_service> records;
  std::vector<size_t> owner;
  for (size_t i = 0; i < changes.size(); i++) {
    for (const auto& key : changes[i].enc.frontends) {
      keys.push_back(key);
      records.push_back(changes[i].enc.record);
      owner.push_back(i);
    }
  }
  size_t at = 0;
  auto switched = impl_->services.UpdateBatch(keys, records, BPF_F_LOCK, &at);
  // Without an error every change is in force; with one, those before the failing
  // element's service are (its frontends may be in part), and the later ones' revisions
  // are removed: as if the upserts had been applied one by one up to the failing one.
  const size_t done = switched ? changes.size() : owner[at];
  if (!switched) {
    std::vector<const EncodedService*> unused;
    for (size_t i = done + 1; i < changes.size(); i++)
      unused.push_back(&changes[i].enc);
    impl_->UnwriteRevisions(unused, true);
  }

  std::vector<Garbage> garbage;
  auto retire = [&](FamilyState& fs) {
    for (auto& [rev, layout] : fs.revisions)
      garbage.push_back({fs.id, rev, std::move(layout)});
    fs.revisions.clear();
  };
  auto drop_frontends = [&](const std::vector<sluice_frontend_key>& dropped) -> Result<void> {
    for (const auto& k : dropped)
      SLUICE_RETURN_IF_ERROR(impl_->services.Delete(k));
    return {};
  };
  auto queue_garbage = [&]() -> Result<void> {
    if (garbage.empty())
      return {};
    if (opts_.reclaim_in_background) {
      std::move(garbage.begin(), garbage.end(), std::back_inserter(impl_->pending));
      if (!impl_->reclaimer.joinable())
        impl_->reclaimer = std::thread([this] { ReclaimLoop(); });
      impl_->cv.notify_all();
      return {};
    }
    // No connect that might still hold an old revision survives this wait.
    lock.unlock();
    if (auto r = GracePeriod(); !r)
      return r;
    lock.lock();
    for (const auto& g : garbage)
      if (auto r = impl_->DeleteRevision(g); !r)
        return r;
    return {};
  };

  for (size_t i = 0; i < done; i++) {
    auto& [spec, fs, enc] = changes[i];
    std::vector<sluice_frontend_key> removed;
    for (const auto& k : fs->frontends) {
      if (std::none_of(enc.frontends.begin(), enc.frontends.end(),
                       [&](const auto& n) { return SameKey(n, k); }))
        removed.push_back(k);
    }
    if (auto r = drop_frontends(removed); !r)
      return r;
    retire(*fs);
    fs->current = enc.record.revision;
    fs->revisions[fs->current] = LayoutOf(enc.record);
    impl_->SetFrontends(spec->name, *fs, enc.frontends);
  }
  if (!switched) {
    // The old revisions of the services switched so far are freed as usual.
    (void)queue_garbage();
    return Wrap("service '" + changes[done].spec->name + "'", switched.error());
  }

  // A family whose VIPs are all gone.
  for (const auto& spec : upserts) {
    auto& families = impl_->state[spec.name];
    const auto present = Families(spec);
    for (auto it = families.begin(); it != families.end();) {
      if (std::find(present.begin(), present.end(), it->first) == present.end()) {
        if (auto r = drop_frontends(it->second.frontends); !r)
          return r;
        impl_->SetFrontends(spec.name, it->second, {});
        retire(it->second);
        it = families.erase(it);
      } else {
        ++it;
      }
    }
  }

  for (const auto& name : deletes) {
    auto it = impl_->state.find(name);
    if (it == impl_->state.end())
      continue;  // already gone: deleting is idempotent
    for (auto& [family, fs] : it->second) {
      if (auto r = drop_frontends(fs.frontends); !r)
        return r;
      impl_->SetFrontends(name, fs, {});
      retire(fs);
    }
    impl_->state.erase(it);
  }
  return queue_garbage();
}

Result<void> Dataplane::Enrol(uint64_t cookie, const EnrolmentInfo& info) {
  sluice_enrolment v{};
  v.proxy_port = info.proxy_port;
  v.flags = info.registry_only ? SLUICE_ENROL_REGISTRY_ONLY : 0;
  if (info.ip4.family == 4)
    std::memcpy(v.ip4, info.ip4.bytes.data(), 4);
  if (info.ip6.family == 6)
    std::memcpy(v.ip6, info.ip6.bytes.data(), 16);
  return impl_->enrolled.Update(cookie, v, BPF_ANY);
}

Result<bool> Dataplane::Unenrol(uint64_t cookie) {
  return impl_->enrolled.Delete(cookie);
}

Result<std::map<uint64_t, EnrolmentInfo>> Dataplane::Enrolled() const {
  std::map<uint64_t, EnrolmentInfo> out;
  auto keys = impl_->enrolled.Keys();
  SLUICE_RETURN_IF_ERROR(keys);
  for (uint64_t k : *keys) {
    sluice_enrolment v{};
    auto found = impl_->enrolled.Lookup(k, &v);
    SLUICE_RETURN_IF_ERROR(found);
    if (!*found)
      continue;
    EnrolmentInfo info;
    info.ip4.family = 4;
    std::memcpy(info.ip4.bytes.data(), v.ip4, 4);
    info.ip6.family = 6;
    std::memcpy(info.ip6.bytes.data(), v.ip6, 16);
    info.proxy_port = v.proxy_port;
    info.registry_only = v.flags & SLUICE_ENROL_REGISTRY_ONLY;
    out[k] = info;
  }
  return out;
}

Result<Counters> Dataplane::ReadCounters() const {
  Counters total{};
  int ncpu = libbpf_num_possible_cpus();
  if (ncpu <= 0)
    return FailErrno("counting possible CPUs", -ncpu);
  std::vector<uint64_t> per_cpu(ncpu);
  for (uint32_t i = 0; i < SLUICE_CNT_MAX; i++) {
    if (bpf_map_lookup_elem(impl_->counters_fd, &i, per_cpu.data()) != 0)
      return FailErrno("map sluice_counters: lookup", errno);
    for (uint64_t v : per_cpu)
      total[i] += v;
  }
  return total;
}

Result<std::vector<KernelService>> Dataplane::Services() const {
  std::vector<KernelService> out;
  for (const auto& [name, families] : impl_->state) {
    for (const auto& [family, fs] : families) {
      KernelService ks;
      ks.name = name;
      ks.family = family;
      ks.id = fs.id;
      ks.revision = fs.current;
      ks.frontends = fs.frontends;
      if (fs.frontends.empty())
        continue;
      sluice_service rec{};
      auto found = impl_->services.Lookup(fs.frontends.front(), &rec, BPF_F_LOCK);
      SLUICE_RETURN_IF_ERROR(found);
      if (!*found)
        continue;
      ks.redirect_to_proxy = rec.flags & SLUICE_SVC_REDIRECT;
      ks.l7_reason = static_cast<L7Reason>(rec.l7_reason);
      for (uint32_t c = 0; c < rec.n_clusters && c < SLUICE_MAX_CLUSTERS; c++) {
        ks.clusters.push_back(rec.clusters[c]);
        std::vector<SocketAddress> slots;
        for (uint32_t s = 0; s < rec.clusters[c].n_backends; s++) {
          sluice_backend_key k{rec.id, rec.revision, static_cast<uint16_t>(s),
                               static_cast<uint8_t>(c), 0};
          sluice_backend b{};
          auto got = impl_->backends.Lookup(k, &b);
          SLUICE_RETURN_IF_ERROR(got);
          if (*got)
            slots.push_back(FromKernel(b.ep));
        }
        ks.backends.push_back(std::move(slots));
      }
      out.push_back(std::move(ks));
    }
  }
  return out;
}

Result<void> Dataplane::AttachPod(int ifindex, bool registry_only) {
  if (opts_.maps_only)
    return Fail("attaching pod programs needs the loaded data plane, not maps only");
  sluice_pod pod{registry_only ? SLUICE_POD_REGISTRY_ONLY : 0u, 0};
  if (auto r = impl_->pods.Update(static_cast<uint32_t>(ifindex), pod, BPF_ANY); !r)
    return r;
  const std::pair<bpf_tc_attach_point, bpf_program*> hooks[] = {
      {BPF_TC_INGRESS, impl_->podtc->progs.sluice_from_pod},
      {BPF_TC_EGRESS, impl_->podtc->progs.sluice_to_pod},
  };
  {
    // The clsact qdisc, shared by both hooks; it exists already when the pod's programs
    // are attached again (adoption, a REGISTRY_ONLY change).
    LIBBPF_OPTS(bpf_tc_hook, qdisc, .ifindex = ifindex, .attach_point = BPF_TC_INGRESS);
    g_qdisc_may_exist = true;
    int err = bpf_tc_hook_create(&qdisc);
    g_qdisc_may_exist = false;
    if (err && err != -EEXIST)
      return FailErrno("creating the clsact qdisc on ifindex " + std::to_string(ifindex), -err);
  }
  for (const auto& [where, prog] : hooks) {
    LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = where);
    int err = 0;
    LIBBPF_OPTS(bpf_tc_opts, opts, .prog_fd = bpf_program__fd(prog), .flags = BPF_TC_F_REPLACE,
                .handle = kTcHandle, .priority = kTcPriority);
    if ((err = bpf_tc_attach(&hook, &opts)) != 0)
      return FailErrno(std::string("attaching ") + bpf_program__name(prog) + " to ifindex " +
                           std::to_string(ifindex),
                       -err);
  }
  return {};
}

Result<void> Dataplane::DetachPod(int ifindex) {
  DetachTc(ifindex, BPF_TC_INGRESS);
  DetachTc(ifindex, BPF_TC_EGRESS);
  const uint32_t key = static_cast<uint32_t>(ifindex);
  (void)bpf_map_delete_elem(impl_->pod_stats_fd, &key);
  auto r = impl_->pods.Delete(key);
  return r ? Result<void>{} : std::unexpected(r.error());
}

namespace {
std::string InboundLinkPin(const std::string& pin_root, uint64_t netns_cookie) {
  return pin_root + "/links/inbound-" + std::to_string(netns_cookie);
}
}  // namespace

Result<void> Dataplane::AttachInbound(int netns_fd, uint64_t netns_cookie) {
  if (opts_.maps_only)
    return Fail("attaching the inbound program needs the loaded data plane, not maps only");
  bpf_program* prog = impl_->inbound->progs.sluice_inbound_lookup;
  const std::string pin = InboundLinkPin(opts_.pin_root, netns_cookie);
  std::error_code ec;
  fs::create_directories(opts_.pin_root + "/links", ec);
  if (fs::exists(pin, ec)) {
    // Attached by an earlier agent: keep the link (no moment without the program) and
    // make it run this load's program.
    bpf_link* link = bpf_link__open(pin.c_str());
    if (!link)
      return FailErrno("opening pinned link " + pin, errno);
    int err = bpf_link__update_program(link, prog);
    bpf_link__destroy(link);
    if (err == 0)
      return {};
    spdlog::warn("inbound link {}: {}; attaching anew", pin, std::strerror(-err));
    (void)unlink(pin.c_str());
  }
  bpf_link* link = bpf_program__attach_netns(prog, netns_fd);
  if (!link)
    return FailErrno("attaching sluice_inbound_lookup (sk_lookup) to netns cookie " +
                         std::to_string(netns_cookie),
                     errno);
  int err = bpf_link__pin(link, pin.c_str());
  bpf_link__destroy(link);  // the pin holds it
  if (err)
    return FailErrno("pinning " + pin, -err);
  return {};
}

Result<void> Dataplane::DetachInbound(uint64_t netns_cookie) {
  const std::string pin = InboundLinkPin(opts_.pin_root, netns_cookie);
  bpf_link* link = bpf_link__open(pin.c_str());
  if (!link) {
    if (errno == ENOENT)
      return {};
    return FailErrno("opening pinned link " + pin, errno);
  }
  (void)bpf_link__detach(link);
  (void)unlink(pin.c_str());
  bpf_link__destroy(link);
  return {};
}

Result<void> Dataplane::SetInbound(const IpAddress& pod, uint16_t port, int listener_fd) {
  sluice_frontend_key key = FrontendKey(pod, port, Protocol::kTcp);
  uint64_t value = static_cast<uint64_t>(listener_fd);
  if (bpf_map_update_elem(impl_->inbound_fd, &key, &value, BPF_ANY) != 0)
    return FailErrno("map sluice_inbound: update " + pod.ToString() + ":" + std::to_string(port),
                     errno);
  return {};
}

Result<bool> Dataplane::ClearInbound(const IpAddress& pod, uint16_t port) {
  sluice_frontend_key key = FrontendKey(pod, port, Protocol::kTcp);
  if (bpf_map_delete_elem(impl_->inbound_fd, &key) == 0)
    return true;
  if (errno == ENOENT)
    return false;
  return FailErrno("map sluice_inbound: delete", errno);
}

Result<std::vector<std::pair<std::pair<IpAddress, uint16_t>, uint64_t>>> Dataplane::Inbound()
    const {
  std::vector<std::pair<std::pair<IpAddress, uint16_t>, uint64_t>> out;
  sluice_frontend_key key{}, next{};
  const void* prev = nullptr;
  while (bpf_map_get_next_key(impl_->inbound_fd, prev, &next) == 0) {
    uint64_t cookie = 0;
    if (bpf_map_lookup_elem(impl_->inbound_fd, &next, &cookie) == 0)
      out.push_back({{FromKernel(next.ip, next.family), next.port}, cookie});
    key = next;
    prev = &key;
  }
  return out;
}

Result<void> Dataplane::SetInboundGuard(const IpAddress& pod, uint16_t port, bool closed) {
  sluice_frontend_key key = FrontendKey(pod, port, Protocol::kTcp);
  const uint8_t value = closed ? SLUICE_GUARD_CLOSED : SLUICE_GUARD_OPEN;
  if (bpf_map_update_elem(impl_->guard_fd, &key, &value, BPF_ANY) != 0)
    return FailErrno("map sluice_inbound_guard: update " + SocketAddress{pod, port}.ToString(),
                     errno);
  return {};
}

Result<bool> Dataplane::ClearInboundGuard(const IpAddress& pod, uint16_t port) {
  sluice_frontend_key key = FrontendKey(pod, port, Protocol::kTcp);
  if (bpf_map_delete_elem(impl_->guard_fd, &key) == 0)
    return true;
  if (errno == ENOENT)
    return false;
  return FailErrno("map sluice_inbound_guard: delete " + SocketAddress{pod, port}.ToString(),
                   errno);
}

Result<std::map<std::pair<IpAddress, uint16_t>, bool>> Dataplane::InboundGuards() const {
  std::map<std::pair<IpAddress, uint16_t>, bool> out;
  sluice_frontend_key key{}, next{};
  const void* prev = nullptr;
  while (bpf_map_get_next_key(impl_->guard_fd, prev, &next) == 0) {
    uint8_t value = 0;
    if (bpf_map_lookup_elem(impl_->guard_fd, &next, &value) == 0)
      out[{FromKernel(next.ip, next.family), next.port}] = value == SLUICE_GUARD_CLOSED;
    key = next;
    prev = &key;
  }
  return out;
}

Result<Cidr> Cidr::Parse(std::string_view text) {
  const auto slash = text.find('/');
  auto ip = IpAddress::Parse(text.substr(0, slash));
  SLUICE_RETURN_IF_ERROR_CTX(ip, "prefix '" + std::string(text) + "'");
  Cidr c{*ip, static_cast<uint8_t>(ip->is_v4() ? 32 : 128)};
  if (slash != std::string_view::npos) {
    const std::string len(text.substr(slash + 1));
    char* end = nullptr;
    const long n = std::strtol(len.c_str(), &end, 10);
    if (len.empty() || *end != '\0' || n < 0 || n > c.len)
      return Fail("prefix '" + std::string(text) + "': bad length");
    c.len = static_cast<uint8_t>(n);
  }
  // Host bits off, so equal prefixes compare equal.
  for (size_t i = 0; i < 16; i++) {
    const int keep = std::clamp(static_cast<int>(c.len) - static_cast<int>(i) * 8, 0, 8);
    c.ip.bytes[i] &= static_cast<uint8_t>(0xff00 >> keep);
  }
  return c;
}

std::string Cidr::ToString() const {
  return ip.ToString() + "/" + std::to_string(len);
}

namespace {

sluice_policy_key PolicyKey(const sluice_frontend_key& fk, uint8_t gen, uint8_t rule) {
  sluice_policy_key k{};
  k.family = fk.family;
  k.gen = gen;
  k.rule = rule;
  k.port = fk.port;
  std::memcpy(k.pod, fk.ip.v6, 16);
  return k;
}

// Every sluice_policy_prefixes key of (pod, port), of generation `gen` (any: -1).
std::vector<sluice_policy_key> PolicyPrefixes(int fd, const sluice_frontend_key& fk, int gen) {
  std::vector<sluice_policy_key> out;
  sluice_policy_key key{}, next{};
  const void* prev = nullptr;
  while (bpf_map_get_next_key(fd, prev, &next) == 0) {
    if (next.family == fk.family && next.port == fk.port &&
        std::memcmp(next.pod, fk.ip.v6, 16) == 0 && (gen < 0 || next.gen == gen))
      out.push_back(next);
    key = next;
    prev = &key;
  }
  return out;
}

Result<void> DeletePrefixes(int fd, const std::vector<sluice_policy_key>& keys) {
  for (const auto& k : keys)
    if (bpf_map_delete_elem(fd, &k) != 0 && errno != ENOENT)
      return FailErrno("map sluice_policy_prefixes: delete", errno);
  return {};
}

}  // namespace

Result<void> Dataplane::SetInboundPolicy(const IpAddress& pod, uint16_t port,
                                         const std::vector<InboundPolicyRule>& rules) {
  const std::string what =
      "inbound policy of " + SocketAddress{pod, port}.ToString() + ": map sluice_inbound_policy";
  if (rules.empty()) {
    auto cleared = ClearInboundPolicy(pod, port);
    SLUICE_RETURN_IF_ERROR(cleared);
    return {};
  }
  if (rules.size() > SLUICE_POLICY_MAX_RULES)
    return Fail(what + ": " + std::to_string(rules.size()) + " rules, at most " +
                std::to_string(SLUICE_POLICY_MAX_RULES));
  const sluice_frontend_key fk = FrontendKey(pod, port, Protocol::kTcp);
  sluice_inbound_policy cur{};
  const bool existed = bpf_map_lookup_elem(impl_->policy_fd, &fk, &cur) == 0;
  if (!existed && errno != ENOENT)
    return FailErrno(what + ": lookup", errno);
  const uint8_t gen = existed ? static_cast<uint8_t>(cur.gen ^ 1) : 0;
  // Leftovers of an interrupted update in the generation about to be written.
  SLUICE_RETURN_IF_ERROR(
      DeletePrefixes(impl_->prefixes_fd, PolicyPrefixes(impl_->prefixes_fd, fk, gen)));
  sluice_inbound_policy val{};
  val.n_rules = static_cast<uint8_t>(rules.size());
  val.gen = gen;
  const uint8_t one = 1;
  for (size_t i = 0; i < rules.size(); i++) {
    val.kind[i] = rules[i].deny ? SLUICE_POLICY_DENY : SLUICE_POLICY_ALLOW;
    for (const Cidr& c : rules[i].sources) {
      if (c.ip.family != pod.family)
        continue;  // a connection to this address never comes from that family
      sluice_policy_key k = PolicyKey(fk, gen, static_cast<uint8_t>(i));
      std::memcpy(k.src, c.ip.bytes.data(), pod.is_v4() ? 4 : 16);
      k.prefixlen = SLUICE_POLICY_FIXED_BITS + c.len;
      if (bpf_map_update_elem(impl_->prefixes_fd, &k, &one, BPF_ANY) != 0)
        return FailErrno(what + ": map sluice_policy_prefixes: add " + c.ToString(), errno);
    }
  }
  if (bpf_map_update_elem(impl_->policy_fd, &fk, &val, BPF_ANY) != 0)
    return FailErrno(what + ": update", errno);
  if (!existed)
    return {};
  // No connect still reads the old generation after this wait.
  SLUICE_RETURN_IF_ERROR(GracePeriod());
  return DeletePrefixes(impl_->prefixes_fd, PolicyPrefixes(impl_->prefixes_fd, fk, gen ^ 1));
}

Result<bool> Dataplane::ClearInboundPolicy(const IpAddress& pod, uint16_t port) {
  const sluice_frontend_key fk = FrontendKey(pod, port, Protocol::kTcp);
  bool existed = true;
  if (bpf_map_delete_elem(impl_->policy_fd, &fk) != 0) {
    if (errno != ENOENT)
      return FailErrno("map sluice_inbound_policy: delete " + SocketAddress{pod, port}.ToString(),
                       errno);
    existed = false;
  }
  auto keys = PolicyPrefixes(impl_->prefixes_fd, fk, -1);
  if (keys.empty())
    return existed;
  if (existed)
    SLUICE_RETURN_IF_ERROR(GracePeriod());
  SLUICE_RETURN_IF_ERROR(DeletePrefixes(impl_->prefixes_fd, keys));
  return existed;
}

Result<std::vector<InboundPolicy>> Dataplane::InboundPolicies() const {
  std::vector<InboundPolicy> out;
  sluice_frontend_key key{}, next{};
  const void* prev = nullptr;
  while (bpf_map_get_next_key(impl_->policy_fd, prev, &next) == 0) {
    key = next;
    prev = &key;
    sluice_inbound_policy val{};
    if (bpf_map_lookup_elem(impl_->policy_fd, &key, &val) != 0)
      continue;
    InboundPolicy p{FromKernel(key.ip, key.family), key.port, {}};
    for (uint32_t i = 0; i < val.n_rules && i < SLUICE_POLICY_MAX_RULES; i++)
      p.rules.push_back({val.kind[i] == SLUICE_POLICY_DENY, {}});
    for (const auto& k : PolicyPrefixes(impl_->prefixes_fd, key, val.gen)) {
      if (k.rule >= p.rules.size())
        continue;
      Cidr c;
      c.ip.family = k.family == SLUICE_FAMILY_IPV4 ? 4 : 6;
      std::memcpy(c.ip.bytes.data(), k.src, c.ip.is_v4() ? 4 : 16);
      c.len = static_cast<uint8_t>(k.prefixlen - SLUICE_POLICY_FIXED_BITS);
      p.rules[k.rule].sources.push_back(c);
    }
    for (auto& r : p.rules)
      std::sort(r.sources.begin(), r.sources.end());
    out.push_back(std::move(p));
  }
  return out;
}

Result<std::map<int, PodStats>> Dataplane::Pods() const {
  std::map<int, PodStats> out;
  auto keys = impl_->pods.Keys();
  SLUICE_RETURN_IF_ERROR(keys);
  int ncpu = libbpf_num_possible_cpus();
  if (ncpu <= 0)
    return FailErrno("counting possible CPUs", -ncpu);
  std::vector<sluice_pod_stats> per_cpu(static_cast<size_t>(ncpu));
  for (uint32_t ifindex : *keys) {
    sluice_pod pod{};
    if (!impl_->pods.Lookup(ifindex, &pod).value_or(false))
      continue;
    PodStats s;
    s.registry_only = pod.flags & SLUICE_POD_REGISTRY_ONLY;
    if (bpf_map_lookup_elem(impl_->pod_stats_fd, &ifindex, per_cpu.data()) == 0) {
      for (const auto& c : per_cpu) {
        s.from_pod_packets += c.from_pod_packets;
        s.from_pod_bytes += c.from_pod_bytes;
        s.to_pod_packets += c.to_pod_packets;
        s.to_pod_bytes += c.to_pod_bytes;
        s.denied_packets += c.denied_packets;
      }
    }
    out[static_cast<int>(ifindex)] = s;
  }
  return out;
}

Result<sluice_settings> Dataplane::Settings() const {
  sluice_settings set{};
  auto found = impl_->settings.Lookup(0, &set);
  SLUICE_RETURN_IF_ERROR(found);
  return set;
}

Result<void> Dataplane::SetSplice(bool on) {
  auto set = Settings();
  SLUICE_RETURN_IF_ERROR(set);
  set->flags = on ? (set->flags | SLUICE_SET_SPLICE) : (set->flags & ~SLUICE_SET_SPLICE);
  return impl_->settings.Update(0, *set, BPF_ANY);
}

Result<void> Dataplane::SetConnLog(bool on) {
  auto set = Settings();
  SLUICE_RETURN_IF_ERROR(set);
  set->flags = on ? (set->flags | SLUICE_SET_CONNLOG) : (set->flags & ~SLUICE_SET_CONNLOG);
  return impl_->settings.Update(0, *set, BPF_ANY);
}

Result<void> Dataplane::SetTcpMetrics(bool on) {
  auto set = Settings();
  SLUICE_RETURN_IF_ERROR(set);
  set->flags = on ? (set->flags | SLUICE_SET_TCP_METRICS) : (set->flags & ~SLUICE_SET_TCP_METRICS);
  return impl_->settings.Update(0, *set, BPF_ANY);
}

Result<std::vector<TcpMetricsRecord>> Dataplane::TcpMetrics() const {
  std::vector<TcpMetricsRecord> out;
  const int fd = impl_->tcp_metrics.fd();
  if (fd < 0)
    return out;
  auto add = [&](const sluice_tcp_metrics_key& k, const sluice_tcp_metrics& v) {
    out.push_back({k.netns_cookie,
                   {FromKernel(k.frontend.ip, k.frontend.family), k.frontend.port},
                   FromKernel(k.backend),
                   v.opened,
                   v.closed,
                   v.client_sent,
                   v.client_received});
  };
  // One batch syscall per 4096 entries where the kernel has it (5.6); else key by key.
  constexpr uint32_t kBatch = 4096;
  std::vector<sluice_tcp_metrics_key> keys(kBatch);
  std::vector<sluice_tcp_metrics> values(kBatch);
  uint64_t batch = 0;
  bool first = true;
  for (;;) {
    uint32_t n = kBatch;
    int rc = bpf_map_lookup_batch(fd, first ? nullptr : &batch, &batch, keys.data(), values.data(),
                                  &n, nullptr);
    const int err = rc == 0 ? 0 : errno;
    if (rc != 0 && err != ENOENT) {
      if (first && (err == EINVAL || err == ENOTSUP || err == EOPNOTSUPP))
        break;  // no batch operations: the loop below
      return FailErrno("map sluice_tcp_metrics: batch lookup", err);
    }
    for (uint32_t i = 0; i < n; i++)
      add(keys[i], values[i]);
    if (err == ENOENT)
      return out;
    first = false;
  }
  auto all = impl_->tcp_metrics.Keys();
  SLUICE_RETURN_IF_ERROR(all);
  for (const auto& k : *all) {
    sluice_tcp_metrics v{};
    auto found = impl_->tcp_metrics.Lookup(k, &v);
    SLUICE_RETURN_IF_ERROR(found);
    if (*found)
      add(k, v);
  }
  return out;
}

int Dataplane::ConnLogFd() const {
  return impl_->connlog_fd;
}

Result<std::vector<EndpointStats>> Dataplane::Endpoints() const {
  std::vector<EndpointStats> out;
  auto keys = impl_->endpoint_stats.Keys();
  SLUICE_RETURN_IF_ERROR(keys);
  for (const auto& k : *keys) {
    sluice_endpoint_stats st{};
    auto found = impl_->endpoint_stats.Lookup(k, &st);
    SLUICE_RETURN_IF_ERROR(found);
    if (*found)
      out.push_back({FromKernel(k), st.active, st.total});
  }
  return out;
}

Result<void> Dataplane::Cleanup(const std::string& pin_root) {
  std::error_code ec;
  if (!fs::exists(pin_root, ec))
    return {};
  // tc filters of the pods this data plane knows (interfaces of the current network
  // namespace, where the agent attached them).
  if (int fd = bpf_obj_get((pin_root + "/sluice_pods").c_str()); fd >= 0) {
    TypedMap<uint32_t, sluice_pod> pods("sluice_pods", fd);
    for (uint32_t ifindex : pods.Keys().value_or(std::vector<uint32_t>{})) {
      DetachTc(static_cast<int>(ifindex), BPF_TC_INGRESS);
      DetachTc(static_cast<int>(ifindex), BPF_TC_EGRESS);
    }
    close(fd);
  }
  // Links first: removing a link's last pin detaches its program from the cgroup.
  const fs::path links = fs::path(pin_root) / "links";
  if (fs::exists(links, ec)) {
    for (const auto& e : fs::directory_iterator(links, ec)) {
      // Detach now: dropping the last reference frees a link from a work queue, a moment
      // later; an explicit detach means the hooks are gone when Cleanup returns.
      int fd = bpf_obj_get(e.path().c_str());
      if (fd >= 0) {
        if (bpf_link_detach(fd) != 0 && errno != ENOLINK)
          spdlog::warn("detaching {}: {}", e.path().string(), strerror(errno));
        close(fd);
      }
      if (!fs::remove(e.path(), ec))
        return Fail("removing " + e.path().string() + ": " + ec.message());
    }
    if (!fs::remove(links, ec))
      return Fail("removing " + links.string() + ": " + ec.message());
  }
  for (const auto& e : fs::directory_iterator(pin_root, ec)) {
    if (!fs::remove(e.path(), ec))
      return Fail("removing " + e.path().string() + ": " + ec.message());
  }
  if (!fs::remove(pin_root, ec))
    return Fail("removing " + pin_root + ": " + ec.message());
  return {};
}

}  // namespace sluice
