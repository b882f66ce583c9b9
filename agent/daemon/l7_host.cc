#include "l7_host.h"

#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "dns_watch.h"
#include "l7_wire.h"
#include "pod_proxies.h"
#include "sluice/config/snapshot.h"

namespace sluice::agent {
namespace {

using l7wire::Message;
using l7wire::Type;

class Host {
 public:
  explicit Host(const L7HostOptions& o)
      : opts_(o),
        pods_({.workers = o.workers,
               .port = o.port,
               .inbound_port = o.inbound_port,
               .access_log_path = o.access_log_path,
               .upstream_mark = o.upstream_mark,
               .on_inbound =
                   [this](const enrolment::PodKey& key, const std::string& netns,
                          const std::vector<InboundPort>& ports,
                          const std::vector<KernelPolicy>& policies) {
                     SendInbound(key, netns, ports, policies);
                   }}),
        dns_([this] { RecompileAll(); }) {}

  int Run() {
    std::thread status([this] { StatusLoop(); });
    int rc = 0;
    while (true) {
      auto m = l7wire::Receive(opts_.sock);
      if (!m) {
        spdlog::error("L7: {}", m.error().message);
        rc = 1;
        break;
      }
      if (!*m)
        break;  // the agent is gone
      if ((*m)->type == Type::kDrain) {
        Drain(std::chrono::milliseconds((*m)->meta.value("grace_ms", 5000)));
        break;
      }
      Handle(std::move(**m));
    }
    {
      std::lock_guard lock(status_mu_);
      stop_ = true;
    }
    status_cv_.notify_all();
    status.join();
    pods_.CloseAll();
    return rc;
  }

 private:
  // A config as this process holds it: the resources (the base the agent's deltas apply
  // to) and what they compiled to (the base of the next incremental compile; null when
  // they did not compile, and the next one is compiled whole).
  struct Config {
    config::SnapshotPtr snapshot;
    std::shared_ptr<const proxy::ProxyConfig> compiled;
  };

  void Handle(Message m) {
    switch (m.type) {
      case Type::kNodeConfig:
      case Type::kViewConfig: {
        std::lock_guard lock(mu_);
        const std::string view = m.type == Type::kNodeConfig ? "" : m.meta.value("view", "");
        const uint64_t generation = m.meta.value("generation", uint64_t{0});
        const uint64_t base = m.meta.value("base", uint64_t{0});
        Config* held = view.empty() ? (node_ ? &*node_ : nullptr)
                                    : (views_.contains(view) ? &views_[view] : nullptr);
        if (base != 0) {
          if (!held || held->snapshot->generation != base) {
            // Not the base the delta was made against (this process is new, or missed
            // one): nothing applied, the agent sends the whole set.
            Resend(view, generation, base, held);
            return;
          }
          ApplyDelta(view, *held, m, generation);
          return;
        }
        std::optional<Config> c;
        if (!m.blob.empty())
          c = Decode(m);
        if (view.empty()) {
          node_ = std::move(c);
          Apply("", node_ ? &*node_ : nullptr, generation, {});
        } else {
          if (c)
            views_[view] = std::move(*c);
          else
            views_.erase(view);
          auto it = views_.find(view);
          Apply(view, it == views_.end() ? nullptr : &it->second, generation, {});
        }
        return;
      }
      case Type::kPodOpen: {
        enrolment::PodKey key{m.meta.value("namespace", ""), m.meta.value("name", "")};
        enrolment::Labels labels;
        const nlohmann::json given = m.meta.value("labels", nlohmann::json::object());
        for (const auto& [k, v] : given.items())
          labels[k] = v.get<std::string>();
        PodSockets socks;
        const auto names = m.meta.value("sockets", std::vector<std::string>{});
        for (std::size_t i = 0; i < names.size() && i < m.fds.size(); ++i) {
          if (names[i] == "capture_v4")
            socks.capture_v4 = std::move(m.fds[i]);
          else if (names[i] == "capture_v6")
            socks.capture_v6 = std::move(m.fds[i]);
          else if (names[i] == "inbound_v4")
            socks.inbound_v4 = std::move(m.fds[i]);
          else if (names[i] == "inbound_v6")
            socks.inbound_v6 = std::move(m.fds[i]);
        }
        const auto ips = m.meta.value("ips", std::vector<std::string>{});
        if (auto r = pods_.Open(key, m.meta.value("netns", ""), labels, ips, std::move(socks)); !r)
          spdlog::error("L7: {}", r.error().message);
        return;
      }
      case Type::kPodClose:
        pods_.Close({m.meta.value("namespace", ""), m.meta.value("name", "")});
        return;
      case Type::kStatusRequest:
        SendStatus(m.meta.value("seq", uint64_t{0}));
        return;
      case Type::kIstioStatsRequest:
        SendToAgent(Message{Type::kIstioStats,
                            {{"seq", m.meta.value("seq", uint64_t{0})}},
                            pods_.IstioMetrics(),
                            {}});
        return;
      default:
        spdlog::warn("L7: unexpected message {}", static_cast<uint32_t>(m.type));
        return;
    }
  }

  std::optional<Config> Decode(const Message& m) {
    auto rs = l7wire::DecodeResources(m.blob);
    if (!rs) {
      spdlog::error("L7: {}", rs.error().message);
      return std::nullopt;
    }
    auto s = std::make_shared<config::Snapshot>(config::Snapshot::FromResourceSet(*rs));
    s->generation = m.meta.value("generation", uint64_t{0});
    return Config{std::move(s), nullptr};
  }

  void Resend(const std::string& view, uint64_t generation, uint64_t base, const Config* held) {
    spdlog::info(
        "L7 config {} ({}): a change against generation {}, which this process {}; "
        "asking for the whole set",
        generation, view.empty() ? "node" : view, base,
        held ? fmt::format("does not hold (it holds {})", held->snapshot->generation)
             : std::string("has no config of"));
    SendToAgent(Message{Type::kApplied,
                        {{"view", view},
                         {"generation", generation},
                         {"applied", false},
                         {"error", ""},
                         {"resend", true}},
                        {},
                        {}});
  }

  // A delta on the config held (its base checked): the resources edited, then compiled
  // incrementally. Under mu_.
  void ApplyDelta(const std::string& view, Config& held, const Message& m, uint64_t generation) {
    auto edit = l7wire::DecodeDelta(m.meta, m.blob);
    Result<std::pair<config::Snapshot, config::Diff>> next =
        edit ? config::ApplyEdit(*held.snapshot, std::move(*edit))
             : Result<std::pair<config::Snapshot, config::Diff>>(std::unexpected(edit.error()));
    if (!next) {
      // The agent's store accepted this change, so it should apply here: ask for the
      // whole set rather than run on a config that differs from the agent's.
      spdlog::error("L7 config {} ({}): {}", generation, view.empty() ? "node" : view,
                    next.error().message);
      Resend(view, generation, held.snapshot->generation, &held);
      return;
    }
    auto s = std::make_shared<config::Snapshot>(std::move(next->first));
    s->generation = generation;
    held.snapshot = std::move(s);
    Apply(view, &held, generation, next->second);
  }

  // Compiles one config (the node's when view is "") and hands it to the pods; the
  // agent hears what came of it. With its compiled base, only what `diff` (against that
  // base's resources) names is compiled again. Under mu_.
  void Apply(const std::string& view, Config* c, uint64_t generation, const config::Diff& diff,
             const std::vector<std::string>& dns_changed = {}) {
    nlohmann::json meta{{"view", view}, {"generation", generation}};
    bool applied = false;
    std::string error;
    if (!c) {
      applied = view.empty() ? pods_.SetNodeConfig(nullptr) : pods_.SetViewConfig(view, nullptr);
    } else if (auto cfg = c->compiled ? proxy::CompileUpdate(*c->compiled, *c->snapshot, diff,
                                                             nullptr, dns_changed)
                                      : proxy::Compile(*c->snapshot);
               !cfg) {
      c->compiled = nullptr;  // the next change is compiled whole
      error = cfg.error().message;
      spdlog::error("L7 config {} ({}) refused, its pods keep the running one: {}", generation,
                    view.empty() ? "node" : view, error);
    } else {
      // Warnings and refusals, when they are not the ones the config before had (an
      // incremental compile keeps those of the resources it did not touch).
      const bool same = c->compiled && c->compiled->warnings == (*cfg)->warnings &&
                        c->compiled->refused.size() == (*cfg)->refused.size();
      c->compiled = *cfg;
      if (!same) {
        for (const auto& w : (*cfg)->warnings)
          spdlog::warn("L7 config {} ({}): {}", generation, view.empty() ? "node" : view, w);
        for (const auto& r : (*cfg)->refused)
          spdlog::warn("L7 config {} ({}): {} {} refused: {}", generation,
                       view.empty() ? "node" : view, r.kind, r.name, r.reason);
      }
      meta["built"] = {{"clusters", (*cfg)->built_clusters},
                       {"routes", (*cfg)->built_routes},
                       {"listeners", (*cfg)->built_listeners}};
      applied = view.empty() ? pods_.SetNodeConfig(*cfg) : pods_.SetViewConfig(view, *cfg);
    }
    meta["applied"] = applied;
    meta["error"] = error;
    SendToAgent(Message{Type::kApplied, std::move(meta), {}, {}});
  }

  // A DNS cluster's answer changed: every config's DNS clusters again, from the
  // resources they came from.
  void RecompileAll() {
    std::lock_guard lock(mu_);
    auto again = [&](const std::string& view, Config& c) {
      const auto dns = c.compiled ? proxy::DnsClusters(*c.compiled) : std::vector<std::string>{};
      Apply(view, &c, c.snapshot->generation, {}, dns);
    };
    if (node_)
      again("", *node_);
    for (auto& [view, c] : views_)
      again(view, c);
  }

  void Drain(std::chrono::milliseconds grace) {
    spdlog::info("L7: draining (up to {} ms)", grace.count());
    pods_.DrainAll(grace);
  }

  void SendStatus(uint64_t seq) {
    nlohmann::json pods = nlohmann::json::array();
    for (const auto& p : pods_.List()) {
      nlohmann::json stats = nlohmann::json::object();
      for (const auto& [n, v] : p.stats)
        stats[n] = v;
      nlohmann::json rbac = nlohmann::json::array();
      for (const auto& c : p.rbac_policies) {
        rbac.push_back({{"policy", c.policy},
                        {"allowed", c.allowed},
                        {"denied", c.denied},
                        {"shadow_allowed", c.shadow_allowed},
                        {"shadow_denied", c.shadow_denied}});
      }
      pods.push_back({{"namespace", p.key.pod_namespace},
                      {"name", p.key.name},
                      {"listening", p.listening},
                      {"config", p.config},
                      {"view", p.view},
                      {"ipv6", p.ipv6},
                      {"inbound", InboundJson(p.inbound)},
                      {"policies", PoliciesJson(p.policies)},
                      {"stats", std::move(stats)},
                      {"rbac_policies", std::move(rbac)}});
    }
    SendToAgent(Message{Type::kStatus, {{"seq", seq}, {"pods", std::move(pods)}}, {}, {}});
  }

  void SendInbound(const enrolment::PodKey& key, const std::string& netns,
                   const std::vector<InboundPort>& ports,
                   const std::vector<KernelPolicy>& policies) {
    SendToAgent(Message{Type::kInbound,
                        {{"namespace", key.pod_namespace},
                         {"name", key.name},
                         {"netns", netns},
                         {"ports", InboundJson(ports)},
                         {"policies", PoliciesJson(policies)}},
                        {},
                        {}});
  }

  // A heartbeat: the agent restarts a process that stays silent.
  void StatusLoop() {
    std::unique_lock lock(status_mu_);
    while (!stop_) {
      lock.unlock();
      SendStatus(0);
      lock.lock();
      status_cv_.wait_for(lock, std::chrono::seconds(1), [this] { return stop_; });
    }
  }

  void SendToAgent(const Message& m) {
    std::lock_guard lock(send_mu_);
    if (auto r = l7wire::Send(opts_.sock, m); !r)
      spdlog::debug("L7: {}", r.error().message);  // the agent is gone: the reader ends us
  }

  const L7HostOptions opts_;
  std::mutex mu_;  // node_, views_, and the compiles
  std::optional<Config> node_;
  std::map<std::string, Config> views_;
  PodProxies pods_;
  std::mutex send_mu_;
  std::mutex status_mu_;
  std::condition_variable status_cv_;
  bool stop_ = false;
  DnsWatch dns_;  // last: its thread calls back into the members above
};

}  // namespace

int RunL7Host(const L7HostOptions& opts) {
  // Never outlive the agent (if it is killed, its end of the stream may still be held by
  // nobody else, but a stray process holding pods' sockets would be worse).
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (opts.agent_pid != 0 && getppid() != opts.agent_pid)
    return 1;  // it died before the line above
  signal(SIGPIPE, SIG_IGN);
  Host host(opts);
  return host.Run();
}

}  // namespace sluice::agent
