// The gateway role: xDS as a router -> the L7 proxy, in this (the gateway pod's)
// network namespace (gateway_role.h).
#include "gateway_role.h"

#include <spdlog/spdlog.h>

#include <cstring>
#include <map>
#include <thread>
#include <utility>
#include <vector>

#include "admin_text.h"
#include "dns_watch.h"

namespace sluice::agent {

namespace {

// The L7 proxy's view of a snapshot; errors name the resource and field. With `prev`
// compiled from the snapshot `diff` starts from, only what the diff names is compiled
// again (proxy::CompileUpdate). Problems that do not stop the config (a DNS host that
// does not resolve) are logged, when they are not those of `prev`.
Result<std::shared_ptr<const proxy::ProxyConfig>> CompileL7(const config::Snapshot& s,
                                                            const proxy::ProxyConfig* prev,
                                                            const config::Diff* diff) {
  auto cfg = prev && diff ? proxy::CompileUpdate(*prev, s, *diff) : proxy::Compile(s);
  if (cfg && !(prev && prev->warnings == (*cfg)->warnings &&
               prev->refused.size() == (*cfg)->refused.size())) {
    for (const auto& w : (*cfg)->warnings)
      spdlog::warn("L7 config {}: {}", s.generation, w);
    for (const auto& r : (*cfg)->refused)
      spdlog::warn("L7 config {}: {} {} refused: {}", s.generation, r.kind, r.name, r.reason);
  }
  return cfg;
}

std::vector<std::pair<std::string, uint64_t>> XdsSamples(const sluice::xds::AdsClientStatus& st,
                                                         const std::string& labels) {
  return {{"{" + labels + "}", st.connected ? 1u : 0u}};
}

// "app=x,istio=ingressgateway" -> map; errors name the flag.
Result<std::map<std::string, std::string>> ParseLabelList(const std::string& text) {
  std::map<std::string, std::string> out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t comma = text.find(',', pos);
    std::string kv = text.substr(pos, comma == std::string::npos ? comma : comma - pos);
    auto eq = kv.find('=');
    if (eq == std::string::npos || eq == 0)
      return Fail("--pod-labels: '" + kv + "' is not key=value");
    out[kv.substr(0, eq)] = kv.substr(eq + 1);
    if (comma == std::string::npos)
      break;
    pos = comma + 1;
  }
  return out;
}

}  // namespace

void GatewayRole::Apply(const config::SnapshotPtr& s, const config::Diff* diff) {
  std::lock_guard lock(mu_);
  const bool incremental = compiled_ && diff && diff->base == compiled_id_;
  auto cfg = CompileL7(*s, incremental ? compiled_.get() : nullptr, incremental ? diff : nullptr);
  if (!cfg) {
    compiled_ = nullptr;  // the next change is compiled whole
    last_error_ = cfg.error().message;
    spdlog::error("L7 config {} refused, keeping the running one: {}", s->generation, last_error_);
    return;
  }
  Result<void> r;
  if (!proxy_) {
    auto p = proxy::Proxy::Start(*cfg, po_);
    if (p)
      proxy_ = std::move(*p);
    else
      r = std::unexpected(p.error());
  } else {
    r = proxy_->Update(*cfg);
  }
  if (!r) {
    compiled_ = nullptr;
    last_error_ = r.error().message;
    spdlog::error("L7 config {}: {}", s->generation, last_error_);
    return;
  }
  compiled_ = *cfg;
  compiled_id_ = s->id;
  last_error_.clear();
  for (const auto& l : (*cfg)->listeners)
    spdlog::info("gateway listener {} on {}:{}", l.name, l.address, proxy_->Port(l.name));
}

AdminReply GatewayRole::Ready() {
  std::lock_guard lock(mu_);
  if (!proxy_)
    return AdminReply{
        503, "text/plain",
        "not ready: " + (last_error_.empty() ? "no configuration yet" : last_error_) + "\n"};
  // The proxy runs an older config: the newest did not compile, so its listeners are not
  // what istiod sent.
  if (!last_error_.empty())
    return AdminReply{
        503, "text/plain",
        "not ready: the newest config was refused (the previous one runs): " + last_error_ + "\n"};
  // A listener xDS refused is not served (an earlier version may be): not ready.
  if (std::string refused = RefusedListeners(client_->Status()); !refused.empty())
    return AdminReply{503, "text/plain", "not ready: xDS refused listeners\n" + refused};
  return AdminReply{200, "text/plain", "ready\n"};
}

AdminReply GatewayRole::ConfigDump() {
  auto j = DumpResources(*store_.Current());
  j["role"] = "gateway";
  j["node"] = g_.ads.node.id();
  j["xds"] = XdsAcceptanceJson(client_->Status());
  return AdminReply{200, "application/json", j.dump(1) + "\n"};
}

AdminReply GatewayRole::Metrics() {
  std::string out;
  out += Prometheus("sluice_config_generation", "Config generation in force", "gauge",
                    {{"", store_.Current()->generation}});
  out += Prometheus("sluice_xds_connected", "1 while the xDS stream is up", "gauge",
                    XdsSamples(client_->Status(), ""));
  out += XdsAcceptanceMetrics({{"", client_->Status()}});
  std::lock_guard lock(mu_);
  if (compiled_) {
    out +=
        Prometheus("sluice_l7_last_compile_built",
                   "What the last L7 compile built (a change compiles only what it names)", "gauge",
                   {{"{kind=\"clusters\"}", compiled_->built_clusters},
                    {"{kind=\"routes\"}", compiled_->built_routes},
                    {"{kind=\"listeners\"}", compiled_->built_listeners}});
  }
  if (proxy_) {
    for (const auto& st : proxy::NamedStats(proxy_->stats()))
      out += Prometheus("sluice_proxy_" + std::string(st.name), std::string(st.help),
                        st.gauge ? "gauge" : "counter", {{"", st.value}});
  }
  return AdminReply{200, "text/plain; version=0.0.4", out};
}

AdminReply GatewayRole::IstioStats() {
  std::vector<proxy::telemetry::Sample> samples;
  istio_->Collect(&samples);
  return AdminReply{200, "text/plain; version=0.0.4", proxy::telemetry::RenderPrometheus(samples)};
}

int GatewayRole::Run(sigset_t sigs) {
  g_.id.role = sluice::xds::ProxyRole::kRouter;
  if (g_.id.pod_name.empty()) {
    spdlog::error("--role gateway needs --pod-name (the gateway pod's name)");
    return 2;
  }
  auto labels = ParseLabelList(g_.pod_labels);
  if (!labels) {
    spdlog::error("{}", labels.error().message);
    return 2;
  }
  g_.id.labels = *labels;
  g_.id.ips = {g_.pod_ip};
  g_.ads.node = sluice::xds::BuildNode(g_.id);

  // Istio's metrics, as the gateway's own workload (the node's pods are not this
  // process's to know: a peer is named by the endpoint's metadata, as istiod writes it).
  istio_ = std::make_shared<proxy::telemetry::IstioStats>(
      proxy::telemetry::Intern(proxy::telemetry::PodWorkload(g_.id.pod_namespace, g_.id.pod_name,
                                                             g_.id.labels, g_.id.cluster_id)),
      std::make_shared<const proxy::telemetry::PeerDirectory>());
  po_.istio_stats = istio_;
  po_.workers = g_.workers;
  po_.access_log_path = g_.access_log == "-" ? "" : g_.access_log;
  store_.Subscribe([this](const config::SnapshotPtr& s, const config::Diff& d) { Apply(s, &d); });
  DnsWatch dns_watch([this] {
    if (auto s = store_.Current(); s && s->generation > 0)
      Apply(s);
  });
  client_ = std::make_unique<xds::AdsClient>(g_.ads, store_);
  if (auto r = client_->Start(); !r) {
    spdlog::error("{}", r.error().message);
    return 1;
  }
  AdminServer admin;
  admin.Handle("/ready", [this] { return Ready(); });
  admin.Handle("/config_dump", [this] { return ConfigDump(); });
  admin.Handle("/metrics", [this] { return Metrics(); });
  admin.Handle("/stats/prometheus", [this] { return IstioStats(); });
  auto port = admin.Start(g_.admin_address);
  if (!port) {
    spdlog::error("{}", port.error().message);
    return 1;
  }
  spdlog::info("gateway {}: xDS from {} as {}; admin on {}", g_.id.pod_name, g_.ads.server,
               g_.ads.node.id(), g_.admin_address);
  int sig = 0;
  sigwait(&sigs, &sig);
  spdlog::info("{}: stopping the gateway", strsignal(sig));
  client_->Stop();
  admin.Stop();
  std::lock_guard lock(mu_);
  if (proxy_) {
    (void)proxy_->Drain();  // stop accepting; let requests in flight finish
    auto deadline = std::chrono::steady_clock::now() + g_.drain;
    while (proxy_->stats().active_cx.load() > 0 && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    proxy_->Stop();
  }
  return 0;
}

}  // namespace sluice::agent
