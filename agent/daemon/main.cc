// sluice-agent: Sluice's agent, in one of two roles.
//
//   sluice-agent [--role node] [--xds-address istiod.istio-system.svc:15010]
//                [--labels-file FILE] [--proxy-port 15001] [--admin-address 127.0.0.1:15000]
//   sluice-agent --role gateway --pod-name N --pod-namespace NS --pod-labels k=v,...
//
// node (one per node, a DaemonSet, replacing per-pod sidecars): loads (or adopts) the
// kernel data plane, follows its configuration over xDS (from istiod, or from
// `sluicectl xds serve` on a machine without Kubernetes — the same stream either way),
// keeps the kernel's services equal to it, enrols the pods the CNI plugin hands over
// according to their labels, and runs the L7 proxy inside each enrolled pod (one xDS
// stream per namespace with pods here). SIGTERM stops it cleanly; the kernel path keeps
// working while it is down, and a restart adopts everything and reopens the pods.
//
// gateway (the container of an ingress or egress gateway pod, in that pod's network
// namespace): asks xDS as a router with the pod's labels and serves the listeners it
// gets with the L7 proxy. No kernel data plane.
#include <arpa/inet.h>
#include <google/protobuf/util/json_util.h>
#include <signal.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "admin.h"
#include "conn_log.h"
#include "dns_watch.h"
#include "l7_host.h"
#include "l7_supervisor.h"
#include "labels.h"
#include "local_source.h"
#include "node_agent.h"
#include "sluice/config/store.h"
#include "sluice/kernelsync/kernel_sync.h"
#include "sluice/loader/kernel_features.h"
#include "sluice/proxy/proxy.h"
#include "sluice/xds/ads_client.h"
#include "sluice/xds/node.h"
#include "view_streams.h"

using namespace sluice;

namespace {

std::string Prometheus(const std::string& name, const std::string& help, const std::string& type,
                       const std::vector<std::pair<std::string, uint64_t>>& samples) {
  std::string out = "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
  for (const auto& [labels, v] : samples)
    out += name + labels + " " + std::to_string(v) + "\n";
  return out;
}

// Every proxy counter (proxy::NamedStats) of every pod, one family per counter,
// labelled by pod: sluice_proxy_requests_total{namespace="default",pod="sleep-1"}.
std::string ProxyMetrics(const std::vector<agent::PodProxyStatus>& pods) {
  std::string out;
  for (const auto& st : proxy::NamedStats(proxy::ProxyStats{})) {
    std::vector<std::pair<std::string, uint64_t>> samples;
    for (const auto& p : pods) {
      uint64_t v = 0;
      for (const auto& [n, value] : p.stats)
        if (n == st.name)
          v = value;
      samples.push_back(
          {"{namespace=\"" + p.key.pod_namespace + "\",pod=\"" + p.key.name + "\"}", v});
    }
    out += Prometheus("sluice_proxy_" + std::string(st.name), std::string(st.help),
                      st.gauge ? "gauge" : "counter", samples);
  }
  return out;
}

template <class M>
nlohmann::json ToJson(const M& msg) {
  std::string s;
  google::protobuf::util::JsonPrintOptions o;
  (void)google::protobuf::util::MessageToJsonString(msg, &s, o);
  return nlohmann::json::parse(s, nullptr, false);
}

// The Envoy resources of a snapshot, as /config_dump shows them.
nlohmann::json DumpResources(const config::Snapshot& s) {
  nlohmann::json j;
  j["generation"] = s.generation;
  j["versions"] = s.versions;
  j["clusters"] = nlohmann::json::array();
  j["endpoints"] = nlohmann::json::array();
  j["listeners"] = nlohmann::json::array();
  j["routes"] = nlohmann::json::array();
  for (const auto& [n, c] : s.clusters)
    j["clusters"].push_back(ToJson(*c));
  for (const auto& [n, e] : s.endpoints)
    j["endpoints"].push_back(ToJson(*e));
  for (const auto& [n, l] : s.listeners)
    j["listeners"].push_back(ToJson(*l));
  for (const auto& [n, r] : s.routes)
    j["routes"].push_back(ToJson(*r));
  return j;
}

// "namespace=default&x=y" -> "default" for key "namespace".
std::string QueryParam(const std::string& query, const std::string& key) {
  size_t pos = 0;
  while (pos <= query.size()) {
    size_t amp = query.find('&', pos);
    std::string part = query.substr(pos, amp == std::string::npos ? amp : amp - pos);
    if (part.starts_with(key + "="))
      return part.substr(key.size() + 1);
    if (amp == std::string::npos)
      break;
    pos = amp + 1;
  }
  return "";
}

// The L7 proxy's view of a snapshot; errors name the resource and field.
// Problems that do not stop the config (a DNS host that does not resolve) are logged.
Result<std::shared_ptr<const proxy::ProxyConfig>> CompileL7(const config::Snapshot& s) {
  auto cfg = proxy::Compile(s.ToResourceSet());
  if (cfg) {
    for (const auto& w : (*cfg)->warnings)
      spdlog::warn("L7 config {}: {}", s.generation, w);
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

struct GatewayArgs {
  sluice::xds::AdsClientOptions ads;
  sluice::xds::NodeIdentity id;
  std::string pod_ip, pod_labels, admin_address, access_log;
  int workers = 1;
  std::chrono::milliseconds drain{5000};
};

// The gateway role: xDS as a router -> the L7 proxy, in this (the gateway pod's)
// network namespace.
int RunGateway(GatewayArgs g, sigset_t sigs) {
  g.id.role = sluice::xds::ProxyRole::kRouter;
  if (g.id.pod_name.empty()) {
    spdlog::error("--role gateway needs --pod-name (the gateway pod's name)");
    return 2;
  }
  auto labels = ParseLabelList(g.pod_labels);
  if (!labels) {
    spdlog::error("{}", labels.error().message);
    return 2;
  }
  g.id.labels = *labels;
  g.id.ips = {g.pod_ip};
  g.ads.node = sluice::xds::BuildNode(g.id);

  config::ConfigStore store;
  std::mutex mu;  // guards proxy and last_error
  std::unique_ptr<proxy::Proxy> proxy;
  std::string last_error;
  proxy::ProxyOptions po;
  po.workers = g.workers;
  po.access_log_path = g.access_log == "-" ? "" : g.access_log;
  // Compiles and applies a snapshot; from the xDS stream and, when a DNS answer changed,
  // from the DNS watch (under `mu`: one at a time, so an older compile never lands last).
  auto apply = [&](const config::SnapshotPtr& s) {
    std::lock_guard lock(mu);
    auto cfg = CompileL7(*s);
    if (!cfg) {
      last_error = cfg.error().message;
      spdlog::error("L7 config {} refused, keeping the running one: {}", s->generation, last_error);
      return;
    }
    Result<void> r;
    if (!proxy) {
      auto p = proxy::Proxy::Start(*cfg, po);
      if (p)
        proxy = std::move(*p);
      else
        r = std::unexpected(p.error());
    } else {
      r = proxy->Update(*cfg);
    }
    if (!r) {
      last_error = r.error().message;
      spdlog::error("L7 config {}: {}", s->generation, last_error);
      return;
    }
    last_error.clear();
    for (const auto& l : (*cfg)->listeners)
      spdlog::info("gateway listener {} on {}:{}", l.name, l.address, proxy->Port(l.name));
  };
  store.Subscribe([&](const config::SnapshotPtr& s, const config::Diff&) { apply(s); });
  agent::DnsWatch dns_watch([&] {
    if (auto s = store.Current(); s && s->generation > 0)
      apply(s);
  });
  sluice::xds::AdsClient client(g.ads, store);
  if (auto r = client.Start(); !r) {
    spdlog::error("{}", r.error().message);
    return 1;
  }
  agent::AdminServer admin;
  admin.Handle("/ready", [&] {
    std::lock_guard lock(mu);
    if (!proxy)
      return agent::AdminReply{
          503, "text/plain",
          "not ready: " + (last_error.empty() ? "no configuration yet" : last_error) + "\n"};
    return agent::AdminReply{200, "text/plain", "ready\n"};
  });
  admin.Handle("/config_dump", [&] {
    auto j = DumpResources(*store.Current());
    j["role"] = "gateway";
    j["node"] = g.ads.node.id();
    return agent::AdminReply{200, "application/json", j.dump(1) + "\n"};
  });
  admin.Handle("/metrics", [&] {
    std::string out;
    out += Prometheus("sluice_config_generation", "Config generation in force", "gauge",
                      {{"", store.Current()->generation}});
    out += Prometheus("sluice_xds_connected", "1 while the xDS stream is up", "gauge",
                      XdsSamples(client.Status(), ""));
    std::lock_guard lock(mu);
    if (proxy) {
      for (const auto& st : proxy::NamedStats(proxy->stats()))
        out += Prometheus("sluice_proxy_" + std::string(st.name), std::string(st.help),
                          st.gauge ? "gauge" : "counter", {{"", st.value}});
    }
    return agent::AdminReply{200, "text/plain; version=0.0.4", out};
  });
  auto port = admin.Start(g.admin_address);
  if (!port) {
    spdlog::error("{}", port.error().message);
    return 1;
  }
  spdlog::info("gateway {}: xDS from {} as {}; admin on {}", g.id.pod_name, g.ads.server,
               g.ads.node.id(), g.admin_address);
  int sig = 0;
  sigwait(&sigs, &sig);
  spdlog::info("{}: stopping the gateway", strsignal(sig));
  client.Stop();
  admin.Stop();
  std::lock_guard lock(mu);
  if (proxy) {
    (void)proxy->Drain();  // stop accepting; let requests in flight finish
    auto deadline = std::chrono::steady_clock::now() + g.drain;
    while (proxy->stats().active_cx.load() > 0 && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    proxy->Stop();
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"sluice-agent: Sluice's node agent (kernel L4 data plane, enrolment, xDS)"};
  std::string role = "node";
  sluice::xds::AdsClientOptions ads;
  ads.server = "127.0.0.1:15010";
  sluice::xds::NodeIdentity id;
  id.pod_name = "sluice-agent";
  id.pod_namespace = "istio-system";
  std::string node_ip = "127.0.0.1";
  DataplaneOptions dpo;
  cni::CniServerOptions cnio;
  agent::NodeAgentOptions nao;
  std::string labels_file, admin_address = "127.0.0.1:15000";
  std::string log_level = "info";
  std::string access_log = "-";
  int drain_seconds = 5;
  bool kernel_access_log = true;
  std::string kernel_fallback;
  std::string config_dir;
  GatewayArgs gw;
  bool ns_streams_on = true;
  nao.proxy_port = 15001;
  agent::L7HostOptions l7o;

  app.add_option("--role", role,
                 "node (pods of this node) or gateway (l7: the node agent's own L7 process)")
      ->check(CLI::IsMember({"node", "gateway", "l7"}))
      ->capture_default_str();
  // Set by the node agent when it starts its L7 process (hidden from --help).
  app.add_option("--l7-socket-fd", l7o.sock)->group("");
  app.add_option("--l7-agent-pid", l7o.agent_pid)->group("");
  app.add_option("--l7-upstream-mark", l7o.upstream_mark)->group("");
  app.add_option("--xds-address", ads.server,
                 "istiod (or sluicectl xds serve): host:port or unix:PATH")
      ->capture_default_str();
  app.add_option("--config-dir", config_dir,
                 "instead of istiod: translate the Istio/Kubernetes YAML in this directory "
                 "(watched) and serve it to this agent over its own xDS pipeline");
  app.add_flag("--xds-tls", ads.tls, "TLS to the xDS server (istiod's 15012)");
  app.add_option("--xds-ca", ads.ca_file, "CA bundle that signed the xDS server's certificate");
  app.add_option("--xds-server-name", ads.tls_server_name, "name to verify in its certificate");
  app.add_option("--xds-token", ads.token_file, "file with a bearer token (TLS only)");
  app.add_option("--node-ip", node_ip, "this node's address (xDS node ID)")->capture_default_str();
  app.add_option("--node-name", id.node_name, "Kubernetes node name");
  app.add_option("--cluster-id", id.cluster_id, "CLUSTER_ID metadata")->capture_default_str();
  app.add_option("--pin-root", dpo.pin_root, "bpffs directory for maps and links")
      ->capture_default_str();
  app.add_option("--cgroup-root", dpo.cgroup_path,
                 "cgroup v2 directory the hooks attach to (default: the cgroup2 mount)");
  app.add_option("--cni-socket", cnio.socket_path, "where sluice-cni reaches the agent")
      ->capture_default_str();
  app.add_option("--state-file", nao.state_file, "the agent's record of its pods")
      ->capture_default_str();
  app.add_option("--labels-file", labels_file,
                 "namespace/pod labels (stands in for the Kubernetes API watch); polled");
  app.add_option("--proxy-port", nao.proxy_port,
                 "in-pod capture listener (127.0.0.1) for L7 services (0: no L7 proxy; the "
                 "kernel then refuses L7 services rather than bypass their policy)")
      ->capture_default_str();
  app.add_option("--access-log", access_log, "L7 access log file ('-': stdout)")
      ->capture_default_str();
  app.add_flag("!--no-kernel-access-log", kernel_access_log,
               "node: no access-log lines for the connections the kernel translates");
  app.add_option("--kernel-fallback", kernel_fallback,
                 "node: kernel features to do without even where the kernel has them "
                 "(set_retval,netns_cookie or all), so their fallbacks run; see "
                 "docs/kernel-dataplane.md");
  app.add_option("--drain-seconds", drain_seconds,
                 "SIGTERM: how long L7 requests in flight may take to finish")
      ->capture_default_str();
  app.add_flag("!--no-namespace-streams", ns_streams_on,
               "node: one xDS stream for everything instead of one per view (namespace and "
               "labels) of its pods");
  app.add_option("--pod-name", gw.id.pod_name, "gateway: this pod's name");
  app.add_option("--pod-namespace", gw.id.pod_namespace, "gateway: this pod's namespace")
      ->capture_default_str();
  app.add_option("--pod-ip", gw.pod_ip, "gateway: this pod's IP (xDS node ID)");
  app.add_option("--pod-labels", gw.pod_labels,
                 "gateway: this pod's labels, k=v,k2=v2 (istiod selects Gateways by them)");
  app.add_option("--workers", gw.workers, "gateway: L7 worker threads")->capture_default_str();
  app.add_option("--admin-address", admin_address, "admin HTTP (127.0.0.1 only)")
      ->capture_default_str();
  app.add_option("--log-level", log_level, "trace|debug|info|warn|error")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::from_str(log_level));

  // Signals are taken by sigwait, never by a handler on another thread.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

  std::unique_ptr<agent::LocalSource> local;
  if (!config_dir.empty()) {
    const std::string sock = std::filesystem::path(nao.state_file).parent_path() /
                             (role == "gateway" ? "xds-local-gateway.sock" : "xds-local.sock");
    auto src = agent::LocalSource::Start(config_dir, sock);
    if (!src) {
      spdlog::error("{}", src.error().message);
      return 1;
    }
    local = std::move(*src);
    ads.server = local->address();
  }

  if (role == "l7") {
    if (l7o.sock < 0) {
      spdlog::error("--role l7 is the node agent's own L7 process; it starts it");
      return 2;
    }
    l7o.port = nao.proxy_port;
    l7o.access_log_path = access_log == "-" ? "" : access_log;
    return agent::RunL7Host(l7o);
  }

  if (role == "gateway") {
    gw.ads = ads;
    gw.id.cluster_id = id.cluster_id;
    gw.id.node_name = id.node_name;
    gw.admin_address = admin_address;
    gw.access_log = access_log;
    if (gw.pod_ip.empty())
      gw.pod_ip = node_ip;
    gw.drain = std::chrono::seconds(drain_seconds);
    return RunGateway(std::move(gw), sigs);
  }

  if (auto f = ParseKernelFallbacks(kernel_fallback); f) {
    dpo.kernel_fallbacks = *f;
  } else {
    spdlog::error("--kernel-fallback: {}", f.error().message);
    return 2;
  }
  auto dp = Dataplane::Open(dpo);
  if (!dp) {
    spdlog::error("{}", dp.error().message);
    return 1;
  }
  spdlog::info("kernel data plane {} at {}, hooks on {}", (*dp)->adopted() ? "adopted" : "loaded",
               dpo.pin_root, (*dp)->options().cgroup_path);

  config::ConfigStore store;
  kernelsync::KernelSync ksync(**dp);
  uint32_t bypass_mark = SLUICE_DEFAULT_BYPASS_MARK;
  if (auto st = (*dp)->Settings(); st && st->bypass_mark != 0)
    bypass_mark = st->bypass_mark;
  // The poller thread (below) also opens and closes namespace streams; a pod change wakes
  // it at once rather than at its next 200 ms tick.
  std::mutex wake_mu;
  std::condition_variable wake_cv;
  bool wake = false;
  // The pods' L7 proxies run in a supervised process of their own (l7_supervisor.h).
  agent::L7Supervisor l7(
      {.argv = {"/proc/self/exe", "--role", "l7", "--proxy-port", std::to_string(nao.proxy_port),
                "--access-log", access_log, "--log-level", log_level, "--l7-upstream-mark",
                std::to_string(bypass_mark)},
       .port = nao.proxy_port,
       .on_pods_changed = [&] {
         std::lock_guard lock(wake_mu);
         wake = true;
         wake_cv.notify_one();
       }});
  if (nao.proxy_port != 0) {
    if (auto r = l7.Start(); !r) {
      spdlog::error("{}", r.error().message);
      return 1;
    }
  }
  agent::NodeAgent node(**dp, nao, nao.proxy_port != 0 ? &l7 : nullptr);
  std::mutex sync_mu;  // the kernel sync's view, shared with the admin handlers
  // Dialled address -> kernel service name, for the kernel's access-log lines (under
  // sync_mu; rebuilt after every kernel sync).
  std::map<SocketAddress, std::string> service_by_addr;
  auto index_services = [&] {
    service_by_addr.clear();
    for (const auto& svc : ksync.applied().services)
      for (const auto& v : svc.vips)
        service_by_addr[SocketAddress{v, svc.port}] = svc.name;
  };
  store.Subscribe([&](const config::SnapshotPtr& s, const config::Diff&) {
    bool registry_only;
    {
      std::lock_guard lock(sync_mu);
      (void)ksync.OnSnapshot(*s);  // errors are logged; the kernel keeps its last good state
      index_services();
      registry_only = ksync.applied().registry_only;
    }
    node.SetRegistryOnly(registry_only);
    if (nao.proxy_port != 0)
      l7.SetNodeConfig(s);  // compiled (and refused, if it must be) by the L7 process
  });

  std::unique_ptr<agent::LabelFile> labels;
  if (!labels_file.empty()) {
    labels = std::make_unique<agent::LabelFile>(labels_file);
    auto first = labels->Poll();
    if (!first) {
      spdlog::error("{}", first.error().message);
      return 1;
    }
    if (*first)
      node.ApplyLabels(**first);
  }
  if (auto r = node.Restore(); !r)
    spdlog::error("restoring pods: {}", r.error().message);

  std::unique_ptr<agent::ConnLog> conn_log;
  if (kernel_access_log) {
    auto cl = agent::ConnLog::Start(
        **dp, access_log,
        {.pod = [&](uint64_t cookie) { return node.PodByCookie(cookie); },
         .service =
             [&](const SocketAddress& dialled) {
               std::lock_guard lock(sync_mu);
               auto it = service_by_addr.find(dialled);
               return it == service_by_addr.end() ? std::string() : it->second;
             }});
    if (!cl)
      spdlog::error("kernel access log: {} (continuing without it)", cl.error().message);
    else
      conn_log = std::move(*cl);
  }
  auto cni_server = cni::CniServer::Start(cnio, node);
  if (!cni_server) {
    spdlog::error("{}", cni_server.error().message);
    return 1;
  }

  id.ips = {node_ip};
  const sluice::xds::AdsClientOptions ads_base = ads;
  ads.node = sluice::xds::BuildNode(id);
  sluice::xds::AdsClient client(ads, store);
  if (auto r = client.Start(); !r) {
    spdlog::error("{}", r.error().message);
    return 1;
  }

  // One stream per view (namespace + labels) of enrolled pods here: each pod gets what
  // its own sidecar would get.
  sluice::xds::NodeIdentity view_id = id;
  view_id.pod_name = "sluice-node-" + (id.node_name.empty() ? node_ip : id.node_name);
  // What a view's pods run (its snapshot once the L7 process applied it, and why one was
  // refused) is the L7 process's to say: L7Supervisor::ViewStates(). DNS clusters are
  // re-resolved and recompiled there too.
  agent::ViewStreams streams(
      ads_base, view_id, [&](const std::string& view, const config::SnapshotPtr& s) {
        {
          std::lock_guard lock(sync_mu);
          (void)ksync.OnView(view, s.get());  // errors logged; the last good view stays
          index_services();
        }
        l7.SetViewConfig(view, s);
      });

  std::atomic<bool> stopping{false};
  std::thread label_poller([&] {
    while (!stopping) {
      {
        std::unique_lock lock(wake_mu);
        wake_cv.wait_for(lock, std::chrono::milliseconds(200), [&] { return wake; });
        wake = false;
      }
      if (labels) {
        auto changed = labels->Poll();
        if (!changed)
          spdlog::error("{} (keeping the last good labels)", changed.error().message);
        else if (*changed)
          node.ApplyLabels(**changed);
      }
      if (ns_streams_on && nao.proxy_port != 0) {
        for (const auto& view : streams.Sync(l7.Views())) {
          l7.SetViewConfig(view, nullptr);
          std::lock_guard lock(sync_mu);
          (void)ksync.OnView(view, nullptr);
          index_services();
        }
      }
    }
  });

  agent::AdminServer admin;
  admin.Handle("/ready", [&] {
    std::lock_guard lock(sync_mu);
    if (ksync.applied_generation() == 0)
      return agent::AdminReply{503, "text/plain", "not ready: no configuration applied yet\n"};
    return agent::AdminReply{200, "text/plain", "ready\n"};
  });
  admin.Handle("/metrics", [&] {
    std::string out;
    auto st = client.Status();
    {
      std::lock_guard lock(sync_mu);
      out += Prometheus("sluice_config_generation", "Config generation applied to the kernel",
                        "gauge", {{"", ksync.applied_generation()}});
      size_t l7_services = 0;
      for (const auto& s : ksync.applied().services)
        l7_services += s.redirect_to_proxy;
      out +=
          Prometheus("sluice_kernel_services", "Kernel services by where they are handled", "gauge",
                     {{"{path=\"kernel\"}", ksync.applied().services.size() - l7_services},
                      {"{path=\"proxy\"}", l7_services}});
    }
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
                     (*dp)->features().Has(kf) ? 1u : 0u});
      out +=
          Prometheus("sluice_kernel_feature",
                     "1 where the kernel feature is in use, 0 where its fallback runs", "gauge", f);
    }
    if (auto c = (*dp)->ReadCounters(); c) {
      std::vector<std::pair<std::string, uint64_t>> k;
      for (uint32_t i = 0; i < SLUICE_CNT_MAX; i++)
        k.push_back(
            {"{reason=\"" + std::string(CounterName(static_cast<sluice_counter>(i))) + "\"}",
             (*c)[i]});
      out += Prometheus("sluice_kernel_connects_total", "Kernel connect-path events by reason",
                        "counter", k);
    }
    size_t enrolled = 0;
    auto pods = node.Pods();
    for (const auto& p : pods)
      enrolled += p.enrolled;
    if (nao.proxy_port != 0) {
      // The pods' proxies, as the L7 process counts them now (asked, not cached).
      l7.RefreshStatus(std::chrono::milliseconds(300));
      out += ProxyMetrics(l7.List());
      out += Prometheus("sluice_l7_up", "1 while the L7 process runs", "gauge",
                        {{"", l7.pid() > 0 ? 1u : 0u}});
      out += Prometheus("sluice_l7_restarts_total", "L7 processes started after the first",
                        "counter", {{"", l7.restarts()}});
    }
    std::vector<std::pair<std::string, uint64_t>> views;
    for (const auto& [view, vst] : streams.Status()) {
      std::string lbl = "{namespace=\"" + view.ns + "\"";
      if (!view.labels.empty()) {  // the id's "{k=v,...}" part
        const std::string vid = view.Id();
        lbl +=
            ",labels=\"" + vid.substr(view.ns.size() + 1, vid.size() - view.ns.size() - 2) + "\"";
      }
      views.push_back({lbl + "}", vst.connected ? 1u : 0u});
    }
    out +=
        Prometheus("sluice_xds_namespace_connected",
                   "1 while the xDS stream of a namespace (and label set) is up", "gauge", views);
    out += Prometheus(
        "sluice_pods", "Pods known to the agent", "gauge",
        {{"{enrolled=\"true\"}", enrolled}, {"{enrolled=\"false\"}", pods.size() - enrolled}});
    return agent::AdminReply{200, "text/plain; version=0.0.4", out};
  });
  admin.Handle("/config_dump", [&](const std::string& query) {
    if (std::string ns = QueryParam(query, "namespace"); !ns.empty()) {
      // What a pod runs (&pod=NAME: its view's config), or a namespace's pods without
      // labels; else the node's.
      std::string view = ns;
      const std::string pod = QueryParam(query, "pod");
      for (const auto& p : l7.List())
        if (p.key.pod_namespace == ns && (pod.empty() ? p.view == ns : p.key.name == pod))
          view = p.view;
      // The snapshot the view's pods run (not merely the stream's latest: a config is
      // applied once it compiled, and one without listeners is not applied at all).
      agent::L7ConfigState state;
      if (auto views = l7.ViewStates(); views.count(view))
        state = views[view];
      const config::SnapshotPtr& snap = state.running;
      nlohmann::json j = DumpResources(snap ? *snap : *store.Current());
      j["namespace"] = ns;
      j["view"] = view;
      j["source"] = snap ? "namespace stream" : "node stream (no pods of " + view + " here yet)";
      if (!state.error.empty())
        j["l7_error"] = state.error;
      return agent::AdminReply{200, "application/json", j.dump(1) + "\n"};
    }
    auto s = store.Current();
    nlohmann::json j = DumpResources(*s);
    if (auto node_l7 = l7.Node(); !node_l7.error.empty())
      j["l7_error"] = node_l7.error;
    std::lock_guard lock(sync_mu);
    for (const auto& svc : ksync.applied().services) {
      nlohmann::json k{{"name", svc.name}, {"port", svc.port}, {"l7", svc.redirect_to_proxy}};
      for (const auto& v : svc.vips)
        k["vips"].push_back(v.ToString());
      j["kernel"]["services"].push_back(k);
    }
    j["kernel"]["registry_only"] = ksync.applied().registry_only;
    j["kernel"]["l7_reasons"] = ksync.applied().l7_reasons;
    return agent::AdminReply{200, "application/json", j.dump(1) + "\n"};
  });
  admin.Handle("/pods", [&] {
    l7.RefreshStatus(std::chrono::milliseconds(300));
    std::map<enrolment::PodKey, agent::PodProxyStatus> proxies;
    for (auto& p : l7.List())
      proxies[p.key] = p;
    nlohmann::json j = nlohmann::json::array();
    for (const auto& p : node.Pods()) {
      nlohmann::json o{{"namespace", p.key.pod_namespace},
                       {"name", p.key.name},
                       {"netns", p.netns},
                       {"ips", p.ips},
                       {"cookie", p.cookie},
                       {"enrolled", p.enrolled},
                       {"reason", p.reason}};
      if (auto it = proxies.find(p.key); it != proxies.end()) {
        nlohmann::json addrs = {"127.0.0.1:" + std::to_string(nao.proxy_port)};
        if (it->second.ipv6)
          addrs.push_back("[::1]:" + std::to_string(nao.proxy_port));
        o["l7"] = {{"listening", it->second.listening},
                   {"address", addrs[0]},
                   {"addresses", addrs},
                   {"config", it->second.config},
                   {"requests", it->second.requests}};
      }
      j.push_back(std::move(o));
    }
    return agent::AdminReply{200, "application/json", j.dump(1) + "\n"};
  });
  auto port = admin.Start(admin_address);
  if (!port) {
    spdlog::error("{}", port.error().message);
    return 1;
  }
  spdlog::info("admin on 127.0.0.1:{}; CNI on {}; xDS from {}", *port, cnio.socket_path,
               ads.server);

  int sig = 0;
  sigwait(&sigs, &sig);
  spdlog::info("{}: stopping (the kernel data plane stays in place)", strsignal(sig));
  stopping = true;
  label_poller.join();
  client.Stop();
  streams.StopAll();
  (*cni_server)->Stop();
  admin.Stop();
  // In-pod listeners close, requests in flight finish; L4 services keep working in the
  // kernel, and a restarted agent reopens the listeners.
  l7.DrainAll(std::chrono::seconds(drain_seconds));
  if (conn_log) {
    (void)(*dp)->SetConnLog(false);  // nobody reads the ring buffer until a new agent runs
    conn_log.reset();
  }
  return 0;
}
