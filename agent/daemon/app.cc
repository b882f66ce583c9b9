// sluice-agent's wiring (app.h): the node role's parts built and connected in order, the
// other roles handed their options.
#include "app.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include "admin.h"
#include "admin_routes.h"
#include "cni_conf.h"
#include "config_fanout.h"
#include "conn_log.h"
#include "gateway_role.h"
#include "kube_labels.h"
#include "l7_host.h"
#include "l7_supervisor.h"
#include "labels.h"
#include "local_source.h"
#include "node_agent.h"
#include "pod_poller.h"
#include "proc_scan.h"
#include "shutdown.h"
#include "sluice/common/release_memory.h"
#include "sluice/config/store.h"
#include "sluice/kube/client.h"
#include "sluice/loader/kernel_features.h"
#include "sluice/xds/ads_client.h"
#include "sluice/xds/node.h"
#include "view_streams.h"

namespace sluice::agent {

namespace {

// Where the API server is, from the flags (nullopt: none). Labels come from it unless
// --labels-file is given; the stop's DaemonSet lookup and sluice-cni's kubeconfig use it
// either way.
Result<std::optional<kube::ClientConfig>> KubeConfigFromFlags(const AgentFlags& f) {
  const int ways = int(f.kubernetes) + int(!f.kubeconfig.empty()) + int(!f.kube_server.empty());
  if (ways == 0)
    return std::optional<kube::ClientConfig>();
  if (ways > 1)
    return Fail("--kubernetes, --kubeconfig and --kube-server are alternatives: give one");
  if (f.kubernetes) {
    auto c = kube::InClusterConfig();
    SLUICE_RETURN_IF_ERROR_CTX(c, "--kubernetes");
    return std::optional<kube::ClientConfig>(*c);
  }
  if (!f.kubeconfig.empty()) {
    auto c = kube::KubeconfigConfig(f.kubeconfig);
    SLUICE_RETURN_IF_ERROR_CTX(c, "--kubeconfig");
    return std::optional<kube::ClientConfig>(*c);
  }
  kube::ClientConfig c;
  c.server = f.kube_server;
  c.token_file = f.kube_token_file;
  c.ca_file = f.kube_ca_file;
  return std::optional<kube::ClientConfig>(c);
}

std::set<std::string> SplitComma(const std::string& s) {
  std::set<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    size_t end = s.find(',', start);
    if (end == std::string::npos)
      end = s.size();
    std::string item = s.substr(start, end - start);
    while (!item.empty() && item.front() == ' ')
      item.erase(item.begin());
    while (!item.empty() && item.back() == ' ')
      item.pop_back();
    if (!item.empty())
      out.insert(item);
    start = end + 1;
  }
  return out;
}

// kube::GetDaemonSet for the stop (shutdown.h): a short budget, one more try after a
// transport error or a 5xx, so the decision fits in the pod's grace period.
DaemonSetLookup StopLookup(kube::ClientConfig api, DaemonSetRef ref) {
  api.request_timeout = std::chrono::milliseconds(2000);
  api.connect_timeout = std::chrono::milliseconds(1000);
  api.user_agent = "sluice-agent/stop";
  return [api = std::move(api), ref = std::move(ref)]() {
    kube::Client client(api);
    auto r = kube::GetDaemonSet(client, ref.ns, ref.name);
    if (!r && (r.error().code == 0 || r.error().code >= 500))
      r = kube::GetDaemonSet(client, ref.ns, ref.name);
    return r;
  };
}

// The node role: the pods of this node, the kernel data plane, their L7 proxies.
int RunNode(AgentFlags& f, sigset_t sigs) {
  auto& nao = f.node;
  // --daemonset: the DaemonSet a stop looks up to tell an upgrade from an uninstall.
  auto api = KubeConfigFromFlags(f);
  if (!api) {
    spdlog::error("{}", api.error().message);
    return 2;
  }
  std::optional<DaemonSetRef> daemonset;
  DaemonSetLookup daemonset_lookup;
  if (!f.daemonset.empty()) {
    auto ref = DaemonSetRef::Parse(f.daemonset);
    if (!ref) {
      spdlog::error("{}", ref.error().message);
      return 2;
    }
    if (!*api) {
      spdlog::error("--daemonset {} needs the API server (--kubernetes or --kube-server)",
                    f.daemonset);
      return 2;
    }
    daemonset = *ref;
    daemonset_lookup = StopLookup(**api, *ref);
  }
  if (auto fb = ParseKernelFallbacks(f.kernel_fallback); fb) {
    f.dataplane.kernel_fallbacks = *fb;
  } else {
    spdlog::error("--kernel-fallback: {}", fb.error().message);
    return 2;
  }
  nao.excluded_namespaces = SplitComma(f.excluded_namespaces);
  auto& kube_config = api;
  const bool labels_from_api = *kube_config && f.labels_file.empty();
  if (labels_from_api && f.id.node_name.empty()) {
    if (const char* env = std::getenv("NODE_NAME"); env != nullptr)
      f.id.node_name = env;
    if (f.id.node_name.empty()) {
      spdlog::error("the API server's pods are followed per node: give --node-name (or NODE_NAME)");
      return 2;
    }
  }
  // An update's kernel writes are live without waiting for the RCU grace period that
  // frees what they replaced (5-20 ms per update otherwise).
  f.dataplane.reclaim_in_background = true;
  auto dp = Dataplane::Open(f.dataplane);
  if (!dp) {
    spdlog::error("{}", dp.error().message);
    return 1;
  }
  spdlog::info("kernel data plane {} at {}, hooks on {}", (*dp)->adopted() ? "adopted" : "loaded",
               f.dataplane.pin_root, (*dp)->options().cgroup_path);

  // Istio's TCP metrics of the kernel path (served at /stats/prometheus); an adopted data
  // plane keeps its maps, so the switch is set either way.
  if (auto r = (*dp)->SetTcpMetrics(f.kernel_tcp_metrics); !r)
    spdlog::error("kernel TCP metrics: {} (continuing)", r.error().message);

  config::ConfigStore store;
  uint32_t bypass_mark = SLUICE_DEFAULT_BYPASS_MARK;
  if (auto st = (*dp)->Settings(); st && st->bypass_mark != 0)
    bypass_mark = st->bypass_mark;
  // The poller thread (started below) also opens and closes view streams; a pod change
  // wakes it at once rather than at its next 200 ms tick.
  PodPoller poller;
  // The pods' L7 proxies run in a supervised process of their own (l7_supervisor.h).
  // Each pod's inbound side: the ports its proxy serves there, steered by the kernel.
  DataplaneSteering steering(**dp);
  L7Supervisor l7(
      {.argv = {"/proc/self/exe", "--role", "l7", "--proxy-port", std::to_string(nao.proxy_port),
                "--inbound-port", std::to_string(nao.inbound_port), "--access-log", f.access_log,
                "--log-level", f.log_level, "--l7-upstream-mark", std::to_string(bypass_mark),
                "--l7-workers", std::to_string(f.l7.workers)},
       .port = nao.proxy_port,
       .inbound_port = nao.inbound_port,
       .inbound = nao.inbound_port != 0 ? &steering : nullptr,
       .on_pods_changed = [&poller] { poller.Wake(); }});
  if (nao.proxy_port != 0) {
    if (auto r = l7.Start(); !r) {
      spdlog::error("{}", r.error().message);
      return 1;
    }
  }
  NodeAgent node(**dp, nao, nao.proxy_port != 0 ? &l7 : nullptr);
  ConfigFanout fanout(**dp, node, l7, nao.proxy_port != 0);
  store.Subscribe(
      [&](const config::SnapshotPtr& s, const config::Diff& d) { fanout.OnNodeSnapshot(s, d); });

  // Labels: from the API server (two reflectors, asynchronous; each change wakes the
  // poller), or from a polled file, read once here before the pods are restored.
  std::unique_ptr<kube::Client> kube_client;
  std::unique_ptr<KubeLabels> kube_labels;
  std::unique_ptr<LabelFile> label_file;
  LabelSource* labels = nullptr;
  if (labels_from_api) {
    kube_client = std::make_unique<kube::Client>(**kube_config);
    kube_labels =
        std::make_unique<KubeLabels>(*kube_client, f.id.node_name, [&poller] { poller.Wake(); });
    node.SetPodLookup([&kl = *kube_labels](const std::string& ns, const std::string& name,
                                           bool with_ns) -> Result<LookedUpPod> {
      auto r = kl.Fetch(ns, name, with_ns);
      SLUICE_RETURN_IF_ERROR(r);
      return LookedUpPod{r->pod, r->ns_labels};
    });
    kube_labels->Start();
    labels = kube_labels.get();
  } else if (!f.labels_file.empty()) {
    label_file = std::make_unique<LabelFile>(f.labels_file);
    auto first = label_file->Poll();
    if (!first) {
      spdlog::error("{}", first.error().message);
      return 1;
    }
    if (*first)
      node.ApplyLabels(**first);
    labels = label_file.get();
  }
  // With the API server the first labels come later: the enrolment map is reconciled
  // then, so pods stay enrolled across the agent's restart meanwhile.
  if (auto r = node.Restore(kube_labels != nullptr); !r)
    spdlog::error("restoring pods: {}", r.error().message);

  std::unique_ptr<ConnLog> conn_log;
  if (f.kernel_access_log) {
    auto cl = ConnLog::Start(
        **dp, f.access_log,
        {.pod = [&](uint64_t cookie) { return node.PodByCookie(cookie); },
         .service = [&](const SocketAddress& dialled) { return fanout.ServiceAt(dialled); }});
    if (!cl)
      spdlog::error("kernel access log: {} (continuing without it)", cl.error().message);
    else
      conn_log = std::move(*cl);
  }
  auto cni_server = cni::CniServer::Start(f.cni, node);
  if (!cni_server) {
    spdlog::error("{}", cni_server.error().message);
    return 1;
  }
  // The agent's own sluice-cni entry (cni_conf.h), written once the agent is ready: the
  // data plane is loaded and the CNI socket listens (both true from here on), and with
  // the API server its first lists are applied (so a pod's ADD is decided on its labels).
  std::unique_ptr<CniConfKeeper> cni_conf;
  if (!f.cni_conf.conf_dir.empty()) {
    CniConfOptions o = f.cni_conf;
    if (o.entry.agent_socket.empty())
      o.entry.agent_socket = f.cni.socket_path;
    // sluice-cni's kubeconfig: only with an API server to point it at.
    if (*api) {
      o.kube = {(*api)->server, (*api)->ca_file, (*api)->token_file};
    } else if (!o.entry.kubeconfig.empty()) {
      spdlog::warn("--cni-kubeconfig {}: no API server configured; the entry gets none",
                   o.entry.kubeconfig);
      o.entry.kubeconfig.clear();
    }
    auto keeper = CniConfKeeper::Start(std::move(o), [kl = kube_labels.get(), &poller] {
      return kl == nullptr || (kl->Synced() && poller.LabelsApplied());
    });
    if (!keeper) {
      spdlog::error("--cni-conf-dir: {}", keeper.error().message);
      return 1;
    }
    cni_conf = std::move(*keeper);
  }

  f.id.ips = {f.node_ip};
  const xds::AdsClientOptions ads_base = f.ads;
  f.ads.node = xds::BuildNode(f.id);
  xds::AdsClient client(f.ads, store);
  if (auto r = client.Start(); !r) {
    spdlog::error("{}", r.error().message);
    return 1;
  }

  // One stream per view (namespace + labels) of enrolled pods here: each pod gets what
  // its own sidecar would get.
  xds::NodeIdentity view_id = f.id;
  view_id.pod_name = "sluice-node-" + (f.id.node_name.empty() ? f.node_ip : f.id.node_name);
  // What a view's pods run (its snapshot once the L7 process applied it, and why one was
  // refused) is the L7 process's to say: L7Supervisor::ViewStates(). DNS clusters are
  // re-resolved and recompiled there too.
  ViewStreams streams(ads_base, view_id,
                      [&](const std::string& view, const config::SnapshotPtr& s,
                          const config::Diff& d) { fanout.OnViewSnapshot(view, s, d); });
  if (kube_labels && f.ads.tls && f.view_tokens) {
    // istiod's XDS identity check lets a stream act only as its token's namespace and
    // service account: each view asks as its pods' account, with a token the API server
    // issues for it, bound to one of the view's pods (docs/kubernetes.md).
    streams.SetIdentitySource(
        [&kl = *kube_labels](const View& v) {
          auto pod = kl.PodOfView(v.ns, v.labels);
          return pod ? pod->service_account : std::string();
        },
        [&kl = *kube_labels, &api = *kube_client, aud = f.view_token_audience](
            const View& v, const std::string& account) -> Result<std::string> {
          auto pod = kl.PodOfView(v.ns, v.labels, account);
          if (!pod)
            return Fail("no pod of view " + v.Id() + " with service account " + account +
                        " to bind its token to");
          auto token = kube::RequestToken(api, {.ns = v.ns,
                                                .service_account = pod->service_account,
                                                .audience = aud,
                                                .bound_pod_name = pod->name,
                                                .bound_pod_uid = pod->uid});
          SLUICE_RETURN_IF_ERROR_CTX(token, "a token for " + v.ns + "/" + pod->service_account);
          return token->token;
        });
  }

  poller.Start({.labels = labels,
                .node = &node,
                .l7 = &l7,
                .streams = &streams,
                .fanout = &fanout,
                .sync_views = f.ns_streams && nao.proxy_port != 0,
                // Pods that ran before the agent (no CNI ADD will come for them): found by
                // their cgroups once the API server names them.
                .after_labels = kube_labels ? std::function<void(const LabelSnapshot&)>(
                                                  [&node, &f](const LabelSnapshot& snap) {
                                                    AddRunningPods(node, snap, f.proc_root,
                                                                   f.netns_dir);
                                                  })
                                            : nullptr});

  AdminServer admin;
  // With the API server: not ready until its first lists are applied; /kube.
  std::function<std::string()> labels_not_ready;
  std::function<nlohmann::json()> kube_status;
  if (kube_labels) {
    labels_not_ready = [&kl = *kube_labels, &poller]() -> std::string {
      if (!kl.Synced() || !poller.LabelsApplied())
        return "waiting for the first list of pods and namespaces from the API server";
      return "";
    };
    kube_status = [&kl = *kube_labels] { return kl.Status(); };
  }
  NodeAdminRoutes routes({.store = store,
                          .client = client,
                          .streams = streams,
                          .fanout = fanout,
                          .dataplane = **dp,
                          .node = node,
                          .l7 = l7,
                          .proxy_port = nao.proxy_port,
                          .labels_not_ready = labels_not_ready,
                          .kube_status = kube_status});
  routes.Register(admin);
  if (cni_conf) {
    admin.Handle("/cni_conf", [&cni_conf] {
      return AdminReply{200, "text/plain; charset=utf-8", cni_conf->StatusText()};
    });
  }
  auto port = admin.Start(f.admin_address);
  if (!port) {
    spdlog::error("{}", port.error().message);
    poller.Stop();
    return 1;
  }
  spdlog::info("admin on 127.0.0.1:{}; CNI on {}; xDS from {}", *port, f.cni.socket_path,
               f.ads.server);

  int sig = 0;
  sigwait(&sigs, &sig);
  // Upgrade or uninstall (shutdown.h): asked before anything stops.
  if (cni_conf)
    cni_conf->Stop();
  StopDecision stop{false, "no --daemonset given: the kernel data plane stays in place"};
  if (daemonset_lookup)
    stop = DecideStop(*daemonset, daemonset_lookup());
  spdlog::info("{}: stopping; {}", strsignal(sig), stop.why);
  poller.Stop();
  if (kube_labels)
    kube_labels->Stop();
  client.Stop();
  streams.StopAll();
  (*cni_server)->Stop();
  admin.Stop();
  // In-pod listeners close, requests in flight finish; L4 services keep working in the
  // kernel, and a restarted agent reopens the listeners.
  l7.DrainAll(std::chrono::seconds(f.drain_seconds));
  if (conn_log) {
    (void)(*dp)->SetConnLog(false);  // nobody reads the ring buffer until a new agent runs
    conn_log.reset();
  }
  if (stop.uninstall) {
    auto r = Uninstall({.cni_conf_dir = f.cni_conf.conf_dir,
                        .pin_root = f.dataplane.pin_root,
                        .state_file = nao.state_file,
                        .dataplane = dp->get()});
    if (!r) {
      spdlog::error("uninstall left something behind: {}", r.error().message);
      return 1;
    }
    spdlog::info("uninstall: done; nothing of sluice is left on this node but its binaries");
  }
  return 0;
}

}  // namespace

int RunAgent(AgentFlags f, sigset_t sigs) {
  // In every role: what a burst freed (a replaced snapshot, a large xDS response) goes
  // back to the system once it is freed, so resident memory settles at what is used.
  ConfigureAllocator();
  MemoryReleaser releaser;
  std::unique_ptr<LocalSource> local;
  if (!f.config_dir.empty()) {
    const std::string sock = std::filesystem::path(f.node.state_file).parent_path() /
                             (f.role == "gateway" ? "xds-local-gateway.sock" : "xds-local.sock");
    auto src = LocalSource::Start(f.config_dir, sock);
    if (!src) {
      spdlog::error("{}", src.error().message);
      return 1;
    }
    local = std::move(*src);
    f.ads.server = local->address();
  }

  if (f.role == "l7") {
    if (f.l7.sock < 0) {
      spdlog::error("--role l7 is the node agent's own L7 process; it starts it");
      return 2;
    }
    f.l7.port = f.node.proxy_port;
    f.l7.inbound_port = f.node.inbound_port;
    f.l7.access_log_path = f.access_log == "-" ? "" : f.access_log;
    return RunL7Host(f.l7);
  }

  if (f.role == "gateway") {
    GatewayOptions gw = f.gateway;
    gw.ads = f.ads;
    gw.id.cluster_id = f.id.cluster_id;
    gw.id.node_name = f.id.node_name;
    gw.admin_address = f.admin_address;
    gw.access_log = f.access_log;
    if (gw.pod_ip.empty())
      gw.pod_ip = f.node_ip;
    gw.drain = std::chrono::seconds(f.drain_seconds);
    return GatewayRole(std::move(gw)).Run(sigs);
  }

  return RunNode(f, sigs);
}

}  // namespace sluice::agent
