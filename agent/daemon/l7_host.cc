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

namespace sluice::agent {
namespace {

using l7wire::Message;
using l7wire::Type;

class Host {
 public:
  explicit Host(const L7HostOptions& o)
      : opts_(o),
        pods_({.port = o.port,
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
  struct Config {
    xds::ResourceSet resources;
    uint64_t generation = 0;
  };

  void Handle(Message m) {
    switch (m.type) {
      case Type::kNodeConfig: {
        std::lock_guard lock(mu_);
        node_.reset();
        if (!m.blob.empty())
          node_ = Decode(m);
        Apply("", node_ ? &*node_ : nullptr, m.meta.value("generation", uint64_t{0}));
        return;
      }
      case Type::kViewConfig: {
        std::lock_guard lock(mu_);
        const std::string view = m.meta.value("view", "");
        std::optional<Config> c;
        if (!m.blob.empty())
          c = Decode(m);
        if (c)
          views_[view] = std::move(*c);
        else
          views_.erase(view);
        auto it = views_.find(view);
        Apply(view, it == views_.end() ? nullptr : &it->second,
              m.meta.value("generation", uint64_t{0}));
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
    return Config{std::move(*rs), m.meta.value("generation", uint64_t{0})};
  }

  // Compiles one config (the node's when view is "") and hands it to the pods; the
  // agent hears what came of it. Under mu_.
  void Apply(const std::string& view, const Config* c, uint64_t generation) {
    nlohmann::json meta{{"view", view}, {"generation", generation}};
    bool applied = false;
    std::string error;
    if (!c) {
      applied = view.empty() ? pods_.SetNodeConfig(nullptr) : pods_.SetViewConfig(view, nullptr);
    } else if (auto cfg = proxy::Compile(c->resources); !cfg) {
      error = cfg.error().message;
      spdlog::error("L7 config {} ({}) refused, its pods keep the running one: {}", generation,
                    view.empty() ? "node" : view, error);
    } else {
      for (const auto& w : (*cfg)->warnings)
        spdlog::warn("L7 config {} ({}): {}", generation, view.empty() ? "node" : view, w);
      for (const auto& r : (*cfg)->refused)
        spdlog::warn("L7 config {} ({}): {} {} refused: {}", generation,
                     view.empty() ? "node" : view, r.kind, r.name, r.reason);
      applied = view.empty() ? pods_.SetNodeConfig(*cfg) : pods_.SetViewConfig(view, *cfg);
    }
    meta["applied"] = applied;
    meta["error"] = error;
    SendToAgent(Message{Type::kApplied, std::move(meta), {}, {}});
  }

  // A DNS cluster's answer changed: every config again, from the resources it came from.
  void RecompileAll() {
    std::lock_guard lock(mu_);
    if (node_)
      Apply("", &*node_, node_->generation);
    for (const auto& [view, c] : views_)
      Apply(view, &c, c.generation);
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
