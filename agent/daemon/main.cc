// sluice-agent: the node agent. One per node (a DaemonSet), replacing per-pod sidecars.
//
//   sluice-agent [--xds-address istiod.istio-system.svc:15010] [--cgroup-root DIR]
//                [--labels-file FILE] [--admin-address 127.0.0.1:15000] ...
//
// It loads (or adopts) the kernel data plane, follows its configuration over xDS (from
// istiod, or from `sluicectl xds serve` on a machine without Kubernetes — the same
// stream either way), keeps the kernel's services equal to it, and enrols the pods the
// CNI plugin hands over according to their labels. SIGTERM stops it cleanly; the kernel
// path keeps working while it is down, and a restart adopts everything.
#include <google/protobuf/util/json_util.h>
#include <signal.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "admin.h"
#include "labels.h"
#include "node_agent.h"
#include "sluice/config/store.h"
#include "sluice/kernelsync/kernel_sync.h"
#include "sluice/xds/ads_client.h"
#include "sluice/xds/node.h"

using namespace sluice;

namespace {

std::string Prometheus(const std::string& name, const std::string& help, const std::string& type,
                       const std::vector<std::pair<std::string, uint64_t>>& samples) {
  std::string out = "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
  for (const auto& [labels, v] : samples)
    out += name + labels + " " + std::to_string(v) + "\n";
  return out;
}

template <class M>
nlohmann::json ToJson(const M& msg) {
  std::string s;
  google::protobuf::util::JsonPrintOptions o;
  (void)google::protobuf::util::MessageToJsonString(msg, &s, o);
  return nlohmann::json::parse(s, nullptr, false);
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

  app.add_option("--role", role, "node (pods of this node) or gateway")
      ->check(CLI::IsMember({"node", "gateway"}))
      ->capture_default_str();
  app.add_option("--xds-address", ads.server, "istiod (or sluicectl xds serve) host:port")
      ->capture_default_str();
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
                 "in-pod outbound listener port for L7 services (0: no L7 proxy)")
      ->capture_default_str();
  app.add_option("--admin-address", admin_address, "admin HTTP (127.0.0.1 only)")
      ->capture_default_str();
  app.add_option("--log-level", log_level, "trace|debug|info|warn|error")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::from_str(log_level));

  if (role == "gateway") {
    spdlog::error(
        "--role gateway: this build of sluice-agent runs the node role only; the "
        "gateway role needs the L7 proxy engine wired in (see docs/node-agent.md)");
    return 2;
  }

  // Signals are taken by sigwait below, never by a handler on another thread.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

  auto dp = Dataplane::Open(dpo);
  if (!dp) {
    spdlog::error("{}", dp.error().message);
    return 1;
  }
  spdlog::info("kernel data plane {} at {}, hooks on {}", (*dp)->adopted() ? "adopted" : "loaded",
               dpo.pin_root, (*dp)->options().cgroup_path);

  config::ConfigStore store;
  kernelsync::KernelSync ksync(**dp);
  agent::NodeAgent node(**dp, nao);
  std::mutex sync_mu;  // the kernel sync's view, shared with the admin handlers
  store.Subscribe([&](const config::SnapshotPtr& s, const config::Diff&) {
    bool registry_only;
    {
      std::lock_guard lock(sync_mu);
      (void)ksync.OnSnapshot(*s);  // errors are logged; the kernel keeps its last good state
      registry_only = ksync.applied().registry_only;
    }
    node.SetRegistryOnly(registry_only);
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

  auto cni_server = cni::CniServer::Start(cnio, node);
  if (!cni_server) {
    spdlog::error("{}", cni_server.error().message);
    return 1;
  }

  id.ips = {node_ip};
  ads.node = sluice::xds::BuildNode(id);
  sluice::xds::AdsClient client(ads, store);
  if (auto r = client.Start(); !r) {
    spdlog::error("{}", r.error().message);
    return 1;
  }

  std::atomic<bool> stopping{false};
  std::thread label_poller([&] {
    while (labels && !stopping) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      auto changed = labels->Poll();
      if (!changed)
        spdlog::error("{} (keeping the last good labels)", changed.error().message);
      else if (*changed)
        node.ApplyLabels(**changed);
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
      size_t l7 = 0;
      for (const auto& s : ksync.applied().services)
        l7 += s.redirect_to_proxy;
      out += Prometheus(
          "sluice_kernel_services", "Kernel services by where they are handled", "gauge",
          {{"{path=\"kernel\"}", ksync.applied().services.size() - l7}, {"{path=\"proxy\"}", l7}});
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
    out += Prometheus(
        "sluice_pods", "Pods known to the agent", "gauge",
        {{"{enrolled=\"true\"}", enrolled}, {"{enrolled=\"false\"}", pods.size() - enrolled}});
    return agent::AdminReply{200, "text/plain; version=0.0.4", out};
  });
  admin.Handle("/config_dump", [&] {
    auto s = store.Current();
    nlohmann::json j;
    j["generation"] = s->generation;
    j["versions"] = s->versions;
    for (const auto& [n, c] : s->clusters)
      j["clusters"].push_back(ToJson(*c));
    for (const auto& [n, e] : s->endpoints)
      j["endpoints"].push_back(ToJson(*e));
    for (const auto& [n, l] : s->listeners)
      j["listeners"].push_back(ToJson(*l));
    for (const auto& [n, r] : s->routes)
      j["routes"].push_back(ToJson(*r));
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
    nlohmann::json j = nlohmann::json::array();
    for (const auto& p : node.Pods())
      j.push_back({{"namespace", p.key.pod_namespace},
                   {"name", p.key.name},
                   {"netns", p.netns},
                   {"ips", p.ips},
                   {"cookie", p.cookie},
                   {"enrolled", p.enrolled},
                   {"reason", p.reason}});
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
  client.Stop();
  (*cni_server)->Stop();
  admin.Stop();
  label_poller.join();
  return 0;
}
