#include "l7_supervisor.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <set>

namespace sluice::agent {
namespace {

std::string ExitReason(int status) {
  if (WIFSIGNALED(status))
    return fmt::format("killed by signal {} ({})", WTERMSIG(status), strsignal(WTERMSIG(status)));
  if (WIFEXITED(status))
    return fmt::format("exited with status {}", WEXITSTATUS(status));
  return "ended";
}

bool SameConfig(const l7wire::Message& a, const l7wire::Message& b) {
  if (a.type != b.type)
    return false;
  if (a.type == l7wire::Type::kNodeConfig || a.type == l7wire::Type::kStatusRequest)
    return true;
  return a.type == l7wire::Type::kViewConfig &&
         a.meta.value("view", "") == b.meta.value("view", "");
}

}  // namespace

L7Supervisor::L7Supervisor(L7SupervisorOptions opts) : opts_(std::move(opts)) {}

L7Supervisor::~L7Supervisor() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    if (pid_ > 0)
      kill(pid_, SIGKILL);
  }
  cv_.notify_all();
  if (runner_.joinable())
    runner_.join();
  {
    std::lock_guard lock(mu_);
    writer_stop_ = true;
  }
  cv_.notify_all();
  if (writer_.joinable())
    writer_.join();
}

Result<void> L7Supervisor::Start() {
  runner_ = std::thread([this] { Run(); });
  writer_ = std::thread([this] { WriterLoop(); });
  return {};
}

Result<pid_t> L7Supervisor::Spawn(std::shared_ptr<netns::UniqueFd>* sock) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    return FailErrno("L7 process: socketpair", errno);
  std::vector<std::string> args = opts_.argv;
  args.insert(args.end(), {"--l7-socket-fd", std::to_string(sv[1]), "--l7-agent-pid",
                           std::to_string(getpid())});
  std::vector<char*> argv;
  for (auto& a : args)
    argv.push_back(a.data());
  argv.push_back(nullptr);
  sigset_t none;
  sigemptyset(&none);
  pid_t pid = fork();
  if (pid == 0) {
    // Only async-signal-safe calls until exec: the agent has threads.
    fcntl(sv[1], F_SETFD, 0);                  // this end survives the exec
    sigprocmask(SIG_SETMASK, &none, nullptr);  // the agent blocks SIGTERM for sigwait
    execv(argv[0], argv.data());
    _exit(127);
  }
  const int err = errno;
  close(sv[1]);
  if (pid < 0) {
    close(sv[0]);
    return FailErrno("L7 process: fork", err);
  }
  *sock = std::make_shared<netns::UniqueFd>(sv[0]);
  return pid;
}

void L7Supervisor::Run() {
  std::chrono::milliseconds backoff{0};
  while (true) {
    {
      std::unique_lock lock(mu_);
      cv_.wait_for(lock, backoff, [this] { return stopping_; });
      if (stopping_)
        return;
    }
    std::shared_ptr<netns::UniqueFd> sock;
    auto pid = Spawn(&sock);
    if (!pid) {
      spdlog::error("{}", pid.error().message);
      backoff = std::min<std::chrono::milliseconds>(
          std::max(backoff * 2, std::chrono::milliseconds(100)), std::chrono::seconds(5));
      continue;
    }
    const auto started = std::chrono::steady_clock::now();
    {
      std::lock_guard lock(mu_);
      sock_ = sock;
      pid_ = *pid;
      if (starts_++ > 0)
        spdlog::info("L7 process {} started (restart {})", pid_, starts_ - 1);
      else
        spdlog::info("L7 process {} started", pid_);
      outbox_.clear();
      ReplayLocked();
    }
    cv_.notify_all();
    // Its reports, until its stream ends or it falls silent.
    while (true) {
      pollfd p{sock->get(), POLLIN, 0};
      int r = poll(&p, 1, static_cast<int>(opts_.heartbeat_timeout.count()));
      if (r < 0 && errno == EINTR)
        continue;
      if (r == 0) {
        spdlog::error("L7 process {} silent for {} ms: killing it", *pid,
                      opts_.heartbeat_timeout.count());
        break;
      }
      auto m = l7wire::Receive(sock->get());
      if (!m) {
        spdlog::error("L7 process {}: {}", *pid, m.error().message);
        break;
      }
      if (!*m)
        break;
      OnMessage(std::move(**m));
    }
    kill(*pid, SIGKILL);  // if it is still there (silent, or a broken stream)
    int status = 0;
    while (waitpid(*pid, &status, 0) < 0 && errno == EINTR) {
    }
    bool stopping;
    {
      std::lock_guard lock(mu_);
      sock_.reset();
      pid_ = -1;
      status_.clear();
      stopping = stopping_;
    }
    cv_.notify_all();
    if (stopping) {
      spdlog::info("L7 process {} {}", *pid, ExitReason(status));
      return;
    }
    // At once after a process that ran a while; after quick deaths, wait a little longer
    // each time (up to 5 s), so a config that kills it cannot make a busy loop.
    const bool quick = std::chrono::steady_clock::now() - started < std::chrono::seconds(1);
    backoff =
        quick ? std::min<std::chrono::milliseconds>(
                    std::max(backoff * 2, std::chrono::milliseconds(100)), std::chrono::seconds(5))
              : std::chrono::milliseconds(0);
    spdlog::error("L7 process {} {}: restarting{}", *pid, ExitReason(status),
                  backoff.count() ? fmt::format(" in {} ms", backoff.count()) : "");
  }
}

void L7Supervisor::WriterLoop() {
  while (true) {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [this] { return writer_stop_ || (!outbox_.empty() && sock_); });
    if (writer_stop_)
      return;
    Outgoing o = std::move(outbox_.front());
    outbox_.pop_front();
    std::shared_ptr<netns::UniqueFd> sock = sock_;
    lock.unlock();
    l7wire::Message& m = o.m;
    if (o.full && o.snap)
      m.blob = l7wire::EncodeResources(o.snap->ToResourceSet());
    // A process that died meanwhile fails this send; its successor gets a replay.
    if (auto r = l7wire::Send(sock->get(), m); !r)
      spdlog::debug("{}", r.error().message);
  }
}

void L7Supervisor::Enqueue(Outgoing o) {
  l7wire::Message& m = o.m;
  if (m.type == l7wire::Type::kNodeConfig || m.type == l7wire::Type::kViewConfig ||
      m.type == l7wire::Type::kStatusRequest) {
    const auto dropped =
        std::erase_if(outbox_, [&](const Outgoing& q) { return SameConfig(q.m, m); });
    if (dropped > 0 && m.meta.contains("base")) {
      // The change queued before this one is gone: the process gets the whole set.
      m.meta.erase("base");
      m.meta.erase("removed");
      m.meta.erase("versions");
      m.blob.clear();
      o.full = true;
    }
  }
  outbox_.push_back(std::move(o));
  cv_.notify_all();
}

L7Supervisor::Outgoing L7Supervisor::ConfigMessage(const std::string& view,
                                                   const config::SnapshotPtr& s,
                                                   const config::SnapshotPtr& before,
                                                   const config::Diff* diff) const {
  Outgoing o;
  o.m.type = view.empty() ? l7wire::Type::kNodeConfig : l7wire::Type::kViewConfig;
  o.m.meta = {{"view", view}, {"generation", s ? s->generation : 0}};
  o.snap = s;
  // The store's diff, when it starts from the snapshot sent before (Diff::base).
  if (s && before && diff && diff->base != 0 && diff->base == before->id)
    o.m.blob = l7wire::EncodeDelta(before->generation, *s, *diff, &o.m.meta);
  else if (s && before && before->generation != 0 && before->generation != s->generation)
    o.m.blob = l7wire::EncodeDelta(*before, *s, &o.m.meta);
  else
    o.full = s != nullptr;
  return o;
}

l7wire::Message L7Supervisor::PodMessage(const enrolment::PodKey& key, const Pod& pod) const {
  l7wire::Message m;
  m.type = l7wire::Type::kPodOpen;
  nlohmann::json labels = nlohmann::json::object();
  for (const auto& [k, v] : pod.labels)
    labels[k] = v;
  m.meta = {{"namespace", key.pod_namespace},
            {"name", key.name},
            {"netns", pod.netns},
            {"labels", std::move(labels)},
            {"ips", pod.ips}};
  std::vector<std::string> names;
  const std::pair<const char*, const netns::UniqueFd*> sockets[] = {
      {"capture_v4", &pod.sockets.capture_v4},
      {"capture_v6", &pod.sockets.capture_v6},
      {"inbound_v4", &pod.sockets.inbound_v4},
      {"inbound_v6", &pod.sockets.inbound_v6}};
  for (const auto& [name, s] : sockets) {
    if (*s) {
      m.fds.emplace_back(fcntl(s->get(), F_DUPFD_CLOEXEC, 0));
      names.emplace_back(name);
    }
  }
  m.meta["sockets"] = std::move(names);
  return m;
}

// A new process gets everything: the configs first, so its pods start configured.
void L7Supervisor::ReplayLocked() {
  if (node_snap_)
    Enqueue(ConfigMessage("", node_snap_, nullptr));
  for (const auto& [view, s] : view_snaps_)
    Enqueue(ConfigMessage(view, s, nullptr));
  for (const auto& [key, pod] : pods_)
    Enqueue(PodMessage(key, pod));
}

void L7Supervisor::SetNodeConfig(config::SnapshotPtr s, const config::Diff* diff) {
  SetConfig("", std::move(s), diff);
}

void L7Supervisor::SetViewConfig(const std::string& view, config::SnapshotPtr s,
                                 const config::Diff* diff) {
  SetConfig(view, std::move(s), diff);
}

config::SnapshotPtr L7Supervisor::SentLocked(const std::string& view) const {
  if (view.empty())
    return node_snap_;
  auto it = view_snaps_.find(view);
  return it == view_snaps_.end() ? nullptr : it->second;
}

void L7Supervisor::SetConfig(const std::string& view, config::SnapshotPtr s,
                             const config::Diff* diff) {
  config::SnapshotPtr before;
  {
    std::lock_guard lock(mu_);
    before = SentLocked(view);
  }
  Outgoing o = ConfigMessage(view, s, before, diff);  // the change encoded outside the lock
  std::lock_guard lock(mu_);
  if (SentLocked(view) != before && !o.full && s) {
    // Another update came in between: the change is not against what was sent last.
    o = ConfigMessage(view, s, nullptr);
  }
  if (!s) {
    if (view.empty()) {
      node_snap_ = nullptr;
    } else {
      view_snaps_.erase(view);
      views_.erase(view);
    }
  } else {
    (view.empty() ? node_snap_ : view_snaps_[view]) = s;
    ConfigSlot& slot = view.empty() ? node_ : views_[view];
    slot.state.sent = s->generation;
    slot.in_flight[s->generation] = s;
  }
  Enqueue(std::move(o));
}

namespace {

// The kernel's form of the policies the L7 process reported (addresses as text there).
Result<std::vector<InboundPolicy>> ToKernel(const std::vector<KernelPolicy>& policies) {
  std::vector<InboundPolicy> out;
  for (const auto& p : policies) {
    auto ip = IpAddress::Parse(p.address);
    SLUICE_RETURN_IF_ERROR_CTX(ip, "inbound policy of port " + std::to_string(p.port));
    InboundPolicy k{*ip, p.port, {}};
    for (const auto& r : p.rules) {
      InboundPolicyRule rule{r.deny, {}};
      for (const auto& s : r.sources) {
        auto c = Cidr::Parse(s);
        SLUICE_RETURN_IF_ERROR_CTX(c, "inbound policy of port " + std::to_string(p.port));
        rule.sources.push_back(*c);
      }
      k.rules.push_back(std::move(rule));
    }
    out.push_back(std::move(k));
  }
  return out;
}

}  // namespace

void L7Supervisor::SteerLocked(const enrolment::PodKey& key, Pod& pod,
                               std::vector<InboundPort> ports, std::vector<KernelPolicy> policies) {
  // The first report of a pod is always applied: the kernel may hold an earlier agent's
  // guards and policies for it (inbound_steering.h), which only Steer reconciles.
  if (!opts_.inbound || (pod.reported && ports == pod.inbound && policies == pod.policies))
    return;
  pod.reported = true;
  std::map<uint16_t, bool> guards;  // port -> refused while no socket takes it
  bool serving = true;
  for (const auto& p : ports) {
    guards[p.port] = p.guard;
    serving = serving && p.serving;
  }
  const int v4 = serving && pod.sockets.inbound_v4 ? pod.sockets.inbound_v4.get() : -1;
  const int v6 = serving && pod.sockets.inbound_v6 ? pod.sockets.inbound_v6.get() : -1;
  auto kernel = ToKernel(policies);
  if (!kernel) {
    // Not expected (the L7 process printed these): keep what is in force, and say so.
    spdlog::error("pod {}/{}: {}; its kernel policy is unchanged", key.pod_namespace, key.name,
                  kernel.error().message);
    return;
  }
  if (auto r = opts_.inbound->Steer(pod.netns, pod.ips, guards, v4, v6, *kernel); !r) {
    // Nothing is steered: the ports stay with the application (the pod works as without
    // an inbound side), except those whose guard refuses them; its kernel policies stay.
    spdlog::error("pod {}/{}: {}", key.pod_namespace, key.name, r.error().message);
    for (auto& p : ports)
      p.serving = false;
    if (auto again = opts_.inbound->Steer(pod.netns, pod.ips, guards, -1, -1, *kernel); !again)
      spdlog::error("pod {}/{}: its guards and kernel policy are not in force: {}",
                    key.pod_namespace, key.name, again.error().message);
  }
  pod.inbound = std::move(ports);
  pod.policies = std::move(policies);
}

void L7Supervisor::OnMessage(l7wire::Message m) {
  std::lock_guard lock(mu_);
  if (m.type == l7wire::Type::kInbound) {
    auto it = pods_.find({m.meta.value("namespace", ""), m.meta.value("name", "")});
    if (it == pods_.end() || it->second.netns != m.meta.value("netns", ""))
      return;  // closed meanwhile, or an earlier sandbox's
    SteerLocked(it->first, it->second,
                InboundFromJson(m.meta.value("ports", nlohmann::json::array())),
                PoliciesFromJson(m.meta.value("policies", nlohmann::json::array())));
    return;
  }
  if (m.type == l7wire::Type::kApplied) {
    const std::string view = m.meta.value("view", "");
    ConfigSlot* slot = &node_;
    if (!view.empty()) {
      auto it = views_.find(view);
      if (it == views_.end())
        return;  // forgotten meanwhile
      slot = &it->second;
    }
    const uint64_t gen = m.meta.value("generation", uint64_t{0});
    if (m.meta.value("resend", false)) {
      // The process does not hold the base of a change: the whole set of the config now.
      if (config::SnapshotPtr now = SentLocked(view))
        Enqueue(ConfigMessage(view, now, nullptr));
      return;
    }
    auto snap = slot->in_flight.find(gen);
    if (m.meta.value("applied", false)) {
      slot->state.applied = gen;
      slot->state.error.clear();
      const nlohmann::json built = m.meta.value("built", nlohmann::json::object());
      slot->state.built = {built.value("clusters", uint64_t{0}), built.value("routes", uint64_t{0}),
                           built.value("listeners", uint64_t{0})};
      if (snap != slot->in_flight.end())
        slot->state.running = snap->second;
    } else if (std::string e = m.meta.value("error", ""); !e.empty()) {
      slot->state.error = e;
    }
    // Older ones will not be answered any more; the one answered may be compiled again
    // (a DNS change) and stays while it is the newest.
    std::erase_if(slot->in_flight, [&](const auto& kv) {
      return kv.first < gen || (kv.first == gen && kv.first != slot->state.sent);
    });
    return;
  }
  if (m.type == l7wire::Type::kIstioStats) {
    const uint64_t seq = m.meta.value("seq", uint64_t{0});
    if (seq >= istio_seq_) {
      istio_seq_ = seq;
      istio_text_ = std::move(m.blob);
    }
    cv_.notify_all();
    return;
  }
  if (m.type == l7wire::Type::kStatus) {
    status_.clear();
    const nlohmann::json pods = m.meta.value("pods", nlohmann::json::array());
    for (const auto& p : pods) {
      PodProxyStatus s;
      s.key = {p.value("namespace", ""), p.value("name", "")};
      s.listening = p.value("listening", false);
      s.config = p.value("config", "");
      s.view = p.value("view", "");
      s.ipv6 = p.value("ipv6", false);
      s.inbound = InboundFromJson(p.value("inbound", nlohmann::json::array()));
      s.policies = PoliciesFromJson(p.value("policies", nlohmann::json::array()));
      const nlohmann::json stats = p.value("stats", nlohmann::json::object());
      for (const auto& [n, v] : stats.items())
        s.stats.emplace_back(n, v.get<uint64_t>());
      for (const auto& c : p.value("rbac_policies", nlohmann::json::array())) {
        s.rbac_policies.push_back(
            {c.value("policy", ""), c.value("allowed", uint64_t{0}), c.value("denied", uint64_t{0}),
             c.value("shadow_allowed", uint64_t{0}), c.value("shadow_denied", uint64_t{0})});
      }
      for (const auto& [n, v] : s.stats) {
        if (n == "requests_total")
          s.requests = v;
        else if (n == "downstream_cx_total")
          s.downstream_cx = v;
      }
      status_[s.key] = std::move(s);
    }
    status_seq_ = std::max(status_seq_, m.meta.value("seq", uint64_t{0}));
    cv_.notify_all();
  }
}

Result<void> L7Supervisor::Open(const enrolment::PodKey& key, const std::string& netns,
                                const enrolment::Labels& labels,
                                const std::vector<std::string>& ips) {
  bool relabelled = false;
  {
    std::lock_guard lock(mu_);
    if (auto it = pods_.find(key); it != pods_.end() && it->second.netns == netns) {
      if (it->second.labels == labels)
        return {};
      it->second.labels = labels;  // same sandbox, new labels: another view
      Enqueue(PodMessage(key, it->second));
      relabelled = true;
    }
  }
  if (!relabelled) {
    // Before the pod is enrolled: from then on, redirected connections wait here.
    auto sockets = OpenPodSockets(netns, opts_.port, opts_.inbound ? opts_.inbound_port : 0);
    SLUICE_RETURN_IF_ERROR_CTX(sockets, "pod " + key.pod_namespace + "/" + key.name + ": L7");
    std::lock_guard lock(mu_);
    Pod& pod = pods_[key];  // a new sandbox of the same pod replaces the old one's sockets
    if (pod.netns != netns && (!pod.inbound.empty() || !pod.policies.empty()))
      SteerLocked(key, pod, {}, {});
    pod = Pod{netns, labels, ips, std::move(*sockets), {}, {}, false};
    Enqueue(PodMessage(key, pod));
    spdlog::info("pod {}/{}: L7 capture listener on 127.0.0.1:{}{}{}", key.pod_namespace, key.name,
                 opts_.port, pod.sockets.capture_v6 ? fmt::format(" and [::1]:{}", opts_.port) : "",
                 pod.sockets.inbound_v4
                     ? fmt::format(", inbound listener on 127.0.0.1:{}", opts_.inbound_port)
                     : "");
  }
  if (opts_.on_pods_changed)
    opts_.on_pods_changed();
  return {};
}

void L7Supervisor::Close(const enrolment::PodKey& key) {
  {
    std::lock_guard lock(mu_);
    auto it = pods_.find(key);
    if (it == pods_.end())
      return;
    SteerLocked(key, it->second, {}, {});
    pods_.erase(it);
    status_.erase(key);
    l7wire::Message m;
    m.type = l7wire::Type::kPodClose;
    m.meta = {{"namespace", key.pod_namespace}, {"name", key.name}};
    Enqueue(std::move(m));
  }
  spdlog::info("pod {}/{}: L7 listener closed", key.pod_namespace, key.name);
  if (opts_.on_pods_changed)
    opts_.on_pods_changed();
}

void L7Supervisor::DrainAll(std::chrono::milliseconds grace) {
  std::unique_lock lock(mu_);
  stopping_ = true;
  l7wire::Message m;
  m.type = l7wire::Type::kDrain;
  m.meta = {{"grace_ms", grace.count()}};
  Enqueue(std::move(m));
  // The process closes its listeners, lets requests finish and ends; one that does not
  // is killed a little after the grace period.
  if (!cv_.wait_for(lock, grace + std::chrono::seconds(2), [this] { return pid_ < 0; }) &&
      pid_ > 0) {
    spdlog::warn("L7 process {} still running after the drain: killing it", pid_);
    kill(pid_, SIGKILL);
  }
  for (auto& [key, pod] : pods_)
    SteerLocked(key, pod, {}, {});
  pods_.clear();  // the capture sockets close
}

void L7Supervisor::RefreshStatus(std::chrono::milliseconds wait) {
  std::unique_lock lock(mu_);
  if (!sock_)
    return;
  const uint64_t seq = ++asked_seq_;
  l7wire::Message m;
  m.type = l7wire::Type::kStatusRequest;
  m.meta = {{"seq", seq}};
  Enqueue(std::move(m));
  cv_.wait_for(lock, wait, [&] { return status_seq_ >= seq || !sock_; });
}

std::optional<std::string> L7Supervisor::IstioMetrics(std::chrono::milliseconds wait) {
  std::unique_lock lock(mu_);
  if (!sock_)
    return std::nullopt;
  // Shares asked_seq_ with the status requests: one sequence, so no answer is taken for
  // another's.
  const uint64_t seq = ++asked_seq_;
  l7wire::Message m;
  m.type = l7wire::Type::kIstioStatsRequest;
  m.meta = {{"seq", seq}};
  Enqueue(std::move(m));
  if (!cv_.wait_for(lock, wait, [&] { return istio_seq_ >= seq || !sock_; }) || istio_seq_ < seq)
    return std::nullopt;
  return istio_text_;
}

std::vector<PodProxyStatus> L7Supervisor::List() const {
  std::lock_guard lock(mu_);
  std::vector<PodProxyStatus> out;
  for (const auto& [key, pod] : pods_) {
    PodProxyStatus s;
    if (auto it = status_.find(key); it != status_.end())
      s = it->second;
    else
      s.config = "none yet";
    s.key = key;
    s.netns = pod.netns;
    s.view = View{key.pod_namespace, pod.labels}.Id();
    s.inbound = pod.inbound;    // what the kernel steers
    s.policies = pod.policies;  // and enforces
    out.push_back(std::move(s));
  }
  return out;
}

std::vector<View> L7Supervisor::Views() const {
  std::lock_guard lock(mu_);
  std::vector<View> out;
  for (const auto& [key, pod] : pods_) {
    View v{key.pod_namespace, pod.labels};
    if (std::find(out.begin(), out.end(), v) == out.end())
      out.push_back(std::move(v));
  }
  std::sort(out.begin(), out.end());
  return out;
}

L7ConfigState L7Supervisor::Node() const {
  std::lock_guard lock(mu_);
  return node_.state;
}

std::map<std::string, L7ConfigState> L7Supervisor::ViewStates() const {
  std::lock_guard lock(mu_);
  std::map<std::string, L7ConfigState> out;
  for (const auto& [view, slot] : views_)
    out[view] = slot.state;
  return out;
}

pid_t L7Supervisor::pid() const {
  std::lock_guard lock(mu_);
  return pid_;
}

uint64_t L7Supervisor::restarts() const {
  std::lock_guard lock(mu_);
  return starts_ > 0 ? starts_ - 1 : 0;
}

}  // namespace sluice::agent
