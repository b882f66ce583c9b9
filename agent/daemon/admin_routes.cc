// The node agent's admin pages: /ready, /metrics, /config_dump, /pods, /stats/prometheus
// (admin_routes.h).
#include "admin_routes.h"

#include <chrono>
#include <map>
#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

#include "admin_text.h"
#include "istio_samples_wire.h"
#include "kernel_tcp_stats.h"
#include "sluice/loader/kernel_features.h"

namespace sluice::agent {

void NodeAdminRoutes::Register(AdminServer& server) {
  server.Handle("/ready", [this] { return Ready(); });
  server.Handle("/metrics", [this] { return Metrics(); });
  server.Handle("/config_dump", [this](const std::string& query) { return ConfigDump(query); });
  server.Handle("/pods", [this] { return Pods(); });
  if (p_.kube_status)
    server.Handle("/kube", [this] { return Kube(); });
  server.Handle("/stats/prometheus", [this] { return IstioStats(); });
}

AdminReply NodeAdminRoutes::Ready() const {
  if (p_.labels_not_ready) {
    if (std::string why = p_.labels_not_ready(); !why.empty())
      return AdminReply{503, "text/plain", "not ready: " + why + "\n"};
  }
  uint64_t generation = 0;
  p_.fanout.ReadKernel(
      [&](const kernelsync::KernelSync& ksync) { generation = ksync.applied_generation(); });
  if (generation == 0)
    return AdminReply{503, "text/plain", "not ready: no configuration applied yet\n"};
  // A refused listener is config the node does not serve: not ready, in every stream.
  std::string refused = RefusedListeners(p_.client.Status());
  for (const auto& [view, vst] : p_.streams.Status())
    refused += RefusedListeners(vst, "namespace view " + view.Id() + ": ");
  if (!refused.empty())
    return AdminReply{503, "text/plain", "not ready: xDS refused listeners\n" + refused};
  return AdminReply{200, "text/plain", "ready\n"};
}

AdminReply NodeAdminRoutes::Kube() const {
  return AdminReply{200, "application/json", p_.kube_status().dump(1) + "\n"};
}

AdminReply NodeAdminRoutes::Metrics() const {
  std::string out;
  if (p_.kube_status) {
    const auto k = p_.kube_status();
    auto family = [&](const char* name, const char* help, const char* type, const char* field) {
      std::vector<std::pair<std::string, uint64_t>> v;
      for (const char* c : {"namespaces", "pods"}) {
        const auto& x = k[c][field];
        v.push_back({std::string("{collection=\"") + c + "\"}",
                     x.is_boolean() ? (x.get<bool>() ? 1u : 0u) : x.get<uint64_t>()});
      }
      out += Prometheus(name, help, type, v);
    };
    family("sluice_kube_synced", "1 once the collection's first list is applied", "gauge",
           "synced");
    family("sluice_kube_lists_total", "Full lists (the first, then after a 410 or an error)",
           "counter", "lists");
    family("sluice_kube_gone_total", "410 Gone answers (an expired resourceVersion)", "counter",
           "gone");
    family("sluice_kube_watch_events_total", "Watch and relist changes applied", "counter",
           "events");
    family("sluice_kube_errors_total", "Failed API requests", "counter", "errors");
  }
  auto st = p_.client.Status();
  p_.fanout.ReadKernel([&](const kernelsync::KernelSync& ksync) {
    out += Prometheus("sluice_config_generation", "Config generation applied to the kernel",
                      "gauge", {{"", ksync.applied_generation()}});
    size_t l7_services = 0;
    for (const auto& s : ksync.applied().services)
      l7_services += s.redirect_to_proxy;
    out +=
        Prometheus("sluice_kernel_services", "Kernel services by where they are handled", "gauge",
                   {{"{path=\"kernel\"}", ksync.applied().services.size() - l7_services},
                    {"{path=\"proxy\"}", l7_services}});
  });
  out += Prometheus("sluice_xds_connected", "1 while the xDS stream is up", "gauge",
                    {{"", st.connected ? 1u : 0u}});
  std::vector<std::pair<std::string, uint64_t>> acks, nacks;
  for (const auto& [type, ts] : st.types) {
    acks.push_back({"{type=\"" + type + "\"}", ts.acks});
    nacks.push_back({"{type=\"" + type + "\"}", ts.nacks});
  }
  out += Prometheus("sluice_xds_acks_total", "xDS responses accepted", "counter", acks);
  out += Prometheus("sluice_xds_nacks_total", "xDS responses refused", "counter", nacks);
  {
    std::vector<std::pair<std::string, uint64_t>> f;
    for (KernelFeature kf : kKernelFeatures)
      f.push_back({"{feature=\"" + std::string(Describe(kf).name) + "\"}",
                   p_.dataplane.features().Has(kf) ? 1u : 0u});
    out +=
        Prometheus("sluice_kernel_feature",
                   "1 where the kernel feature is in use, 0 where its fallback runs", "gauge", f);
  }
  if (auto c = p_.dataplane.ReadCounters(); c) {
    std::vector<std::pair<std::string, uint64_t>> k;
    for (uint32_t i = 0; i < SLUICE_CNT_MAX; i++)
      k.push_back({"{reason=\"" + std::string(CounterName(static_cast<sluice_counter>(i))) + "\"}",
                   (*c)[i]});
    out += Prometheus("sluice_kernel_connects_total", "Kernel connect-path events by reason",
                      "counter", k);
  }
  size_t enrolled = 0;
  auto pods = p_.node.Pods();
  for (const auto& p : pods)
    enrolled += p.enrolled;
  if (p_.proxy_port != 0) {
    // The pods' proxies, as the L7 process counts them now (asked, not cached).
    p_.l7.RefreshStatus(std::chrono::milliseconds(300));
    out += ProxyMetrics(p_.l7.List());
    out += Prometheus("sluice_l7_up", "1 while the L7 process runs", "gauge",
                      {{"", p_.l7.pid() > 0 ? 1u : 0u}});
    out += Prometheus("sluice_l7_restarts_total", "L7 processes started after the first", "counter",
                      {{"", p_.l7.restarts()}});
  }
  std::vector<std::pair<std::string, uint64_t>> views;
  for (const auto& [view, vst] : p_.streams.Status()) {
    std::string lbl = "{namespace=\"" + view.ns + "\"";
    if (!view.labels.empty()) {  // the id's "{k=v,...}" part
      const std::string vid = view.Id();
      lbl += ",labels=\"" + vid.substr(view.ns.size() + 1, vid.size() - view.ns.size() - 2) + "\"";
    }
    views.push_back({lbl + "}", vst.connected ? 1u : 0u});
  }
  out += Prometheus("sluice_xds_namespace_connected",
                    "1 while the xDS stream of a namespace (and label set) is up", "gauge", views);
  std::vector<std::pair<std::string, xds::AdsClientStatus>> streams{{"", st}};
  for (const auto& [view, vst] : p_.streams.Status())
    streams.push_back({"view=\"" + view.Id() + "\"", vst});
  out += XdsAcceptanceMetrics(streams);
  out += Prometheus(
      "sluice_pods", "Pods known to the agent", "gauge",
      {{"{enrolled=\"true\"}", enrolled}, {"{enrolled=\"false\"}", pods.size() - enrolled}});
  return AdminReply{200, "text/plain; version=0.0.4", out};
}

AdminReply NodeAdminRoutes::ConfigDump(const std::string& query) const {
  if (std::string ns = QueryParam(query, "namespace"); !ns.empty()) {
    // What a pod runs (&pod=NAME: its view's config), or a namespace's pods without
    // labels; else the node's.
    std::string view = ns;
    const std::string pod = QueryParam(query, "pod");
    for (const auto& p : p_.l7.List())
      if (p.key.pod_namespace == ns && (pod.empty() ? p.view == ns : p.key.name == pod))
        view = p.view;
    // The snapshot the view's pods run (not merely the stream's latest: a config is
    // applied once it compiled, and one without listeners is not applied at all).
    L7ConfigState state;
    if (auto views = p_.l7.ViewStates(); views.count(view))
      state = views[view];
    const config::SnapshotPtr& snap = state.running;
    nlohmann::json j = DumpResources(snap ? *snap : *p_.store.Current());
    j["namespace"] = ns;
    j["view"] = view;
    j["source"] = snap ? "namespace stream" : "node stream (no pods of " + view + " here yet)";
    if (!state.error.empty())
      j["l7_error"] = state.error;
    return AdminReply{200, "application/json", j.dump(1) + "\n"};
  }
  auto s = p_.store.Current();
  nlohmann::json j = DumpResources(*s);
  j["xds"] = XdsAcceptanceJson(p_.client.Status());
  if (auto node_l7 = p_.l7.Node(); !node_l7.error.empty())
    j["l7_error"] = node_l7.error;
  p_.fanout.ReadKernel([&](const kernelsync::KernelSync& ksync) {
    for (const auto& svc : ksync.applied().services) {
      nlohmann::json k{{"name", svc.name}, {"port", svc.port}, {"l7", svc.redirect_to_proxy}};
      for (const auto& v : svc.vips)
        k["vips"].push_back(v.ToString());
      j["kernel"]["services"].push_back(k);
    }
    j["kernel"]["registry_only"] = ksync.applied().registry_only;
    // "name: why", as the agent logs them.
    j["kernel"]["l7_reasons"] = nlohmann::json::array();
    for (const auto& [name, why] : ksync.applied().l7_reasons)
      j["kernel"]["l7_reasons"].push_back(name + ": " + why);
  });
  return AdminReply{200, "application/json", j.dump(1) + "\n"};
}

AdminReply NodeAdminRoutes::IstioStats() const {
  namespace telemetry = proxy::telemetry;
  std::vector<telemetry::Sample> samples;
  if (p_.proxy_port != 0) {  // the pods' proxies: the L7 process's series
    auto blob = p_.l7.IstioMetrics(std::chrono::milliseconds(2000));
    if (!blob)
      return AdminReply{503, "text/plain", "the L7 process did not answer\n"};
    auto l7 = DecodeIstioSamples(*blob);
    if (!l7)
      return AdminReply{500, "text/plain", l7.error().message + "\n"};
    samples = std::move(*l7);
  }
  // The kernel path's TCP series (connections no proxy carried), labelled alike.
  auto records = p_.dataplane.TcpMetrics();
  if (!records)
    return AdminReply{500, "text/plain", records.error().message + "\n"};
  if (!records->empty()) {
    KernelTcpLookups lookups;
    lookups.services = p_.fanout.KernelServiceTelemetry();
    for (const auto& pod : p_.node.PodIdentities()) {
      const telemetry::Workload* w = telemetry::Intern(telemetry::PodWorkload(
          pod.key.pod_namespace, pod.key.name,
          std::map<std::string, std::string>(pod.labels.begin(), pod.labels.end())));
      if (pod.cookie != 0)
        lookups.pods[pod.cookie] = w;
      for (const auto& cidr : pod.ips)
        if (auto ip = IpAddress::Parse(cidr.substr(0, cidr.find('/'))); ip)
          lookups.pod_ips[*ip] = w;
    }
    auto kernel = KernelTcpSamples(*records, lookups);
    samples.insert(samples.end(), std::make_move_iterator(kernel.begin()),
                   std::make_move_iterator(kernel.end()));
  }
  return AdminReply{200, "text/plain; version=0.0.4", telemetry::RenderPrometheus(samples)};
}

AdminReply NodeAdminRoutes::Pods() const {
  p_.l7.RefreshStatus(std::chrono::milliseconds(300));
  std::map<enrolment::PodKey, PodProxyStatus> proxies;
  for (auto& p : p_.l7.List())
    proxies[p.key] = p;
  nlohmann::json j = nlohmann::json::array();
  for (const auto& p : p_.node.Pods()) {
    nlohmann::json o{{"namespace", p.key.pod_namespace},
                     {"name", p.key.name},
                     {"netns", p.netns},
                     {"ips", p.ips},
                     {"cookie", p.cookie},
                     {"enrolled", p.enrolled},
                     {"reason", p.reason}};
    if (auto it = proxies.find(p.key); it != proxies.end()) {
      nlohmann::json addrs = {"127.0.0.1:" + std::to_string(p_.proxy_port)};
      if (it->second.ipv6)
        addrs.push_back("[::1]:" + std::to_string(p_.proxy_port));
      // The ports the kernel steers to the pod's inbound listener, and why each needs it.
      nlohmann::json inbound = InboundJson(it->second.inbound);
      o["l7"] = {{"listening", it->second.listening},
                 {"address", addrs[0]},
                 {"addresses", addrs},
                 {"config", it->second.config},
                 {"requests", it->second.requests},
                 {"inbound", std::move(inbound)},
                 // The L4 policies the kernel enforces on its ports (per pod address).
                 {"policy", PoliciesJson(it->second.policies)}};
    }
    j.push_back(std::move(o));
  }
  return AdminReply{200, "application/json", j.dump(1) + "\n"};
}

}  // namespace sluice::agent
