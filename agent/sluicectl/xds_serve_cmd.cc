// `sluicectl xds serve`: Sluice's local control plane. Translates the Istio YAML in a
// directory and serves it over gRPC ADS (state of the world) to every proxy that
// connects, choosing sidecar or gateway translation from the node; re-pushes when the
// directory changes. An invalid file is reported and its last good version stays.
#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <iostream>
#include <mutex>
#include <set>

#include "cli.h"
#include "commands.h"
#include "sluice/istio/local_control_plane.h"
#include "sluice/kube/identity.h"
#include "sluice/xds/ads_server.h"

namespace sluice::ctl {
namespace {

std::atomic<bool> g_stop{false};

void OnSignal(int) {
  g_stop = true;
}

struct ServeOptions {
  std::string config_dir;
  std::string listen = "127.0.0.1:15010";
  std::string cert_file, key_file, token;
  // --authenticate kube: istiod's JWT authentication (a TokenReview at the API server)
  // and its XDS identity check.
  std::string authenticate;
  std::string kube_server, kube_ca_file, kube_token_file;
  std::string trust_domain = "cluster.local";
};

// gRPC's Unix socket addresses: unix:PATH or unix:///PATH.
bool IsUnixAddress(const std::string& a) {
  return a.rfind("unix:", 0) == 0;
}

void PrintReport(const istio::ReloadReport& r) {
  for (const auto& w : r.warnings)
    std::cerr << "warning: " << w << "\n";
  for (const auto& e : r.errors)
    std::cerr << "error: " << e << "\n";
}

void RunServe(const ServeOptions& opt) {
  // stdout carries the status lines scripts read; library logs go to stderr.
  spdlog::set_default_logger(spdlog::stderr_color_mt("sluicectl"));
  istio::LocalControlPlane cp({opt.config_dir});
  auto report = cp.Reload();
  PrintReport(report);

  // Which translation each connected node gets (sidecar, gateway, proxyless gRPC), logged
  // once per stream: the event carries only the ID, the resource callback the whole node.
  std::mutex seen_mu;
  std::set<std::string> seen;
  xds::AdsServer server([&](const envoy::config::core::v3::Node& node) {
    if (auto spec = istio::LocalControlPlane::ProxyFor(node)) {
      std::lock_guard lock(seen_mu);
      if (seen.insert(node.id()).second)
        std::cerr << "serving " << node.id() << " as " << spec->Describe() << "\n";
    }
    return cp.ResourcesFor(node);
  });
  server.OnEvent([&](const xds::AdsServerEvent& e) {
    using K = xds::AdsServerEvent::Kind;
    if (e.kind == K::kConnect) {
      auto spec = istio::LocalControlPlane::ProxyFor([&] {
        envoy::config::core::v3::Node n;
        n.set_id(e.node_id);
        return n;
      }());
      std::cerr << "connect: " << e.node_id
                << (spec ? "" : " (not an istiod node ID: served nothing)") << "\n";
    } else if (e.kind == K::kNack) {
      std::cerr << "NACK from " << e.node_id << " for " << e.type_url << ": " << e.error << "\n";
    } else if (e.kind == K::kUnsupportedType) {
      std::cerr << "unsupported type " << e.type_url << " from " << e.node_id
                << ": answered with no resources\n";
    } else if (e.kind == K::kDisconnect) {
      std::cerr << "disconnect: " << e.node_id << "\n";
      std::lock_guard lock(seen_mu);
      seen.erase(e.node_id);
    }
  });
  if (IsUnixAddress(opt.listen)) {
    // A socket file left by a server that died would make the bind fail.
    std::string path = opt.listen.substr(opt.listen.find(':') + 1);
    while (path.starts_with("//"))
      path.erase(0, 1);
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode))
      ::unlink(path.c_str());
  }
  xds::AdsServerOptions sopts;
  sopts.address = opt.listen;
  sopts.cert_file = opt.cert_file;
  sopts.key_file = opt.key_file;
  sopts.required_token = opt.token;
  if (opt.authenticate == "kube") {
    if (opt.cert_file.empty())
      Die("xds serve",
          "--authenticate kube needs --tls-cert and --tls-key: gRPC clients send "
          "their tokens only over TLS");
    kube::ClientConfig kc{
        .server = opt.kube_server, .ca_file = opt.kube_ca_file, .token_file = opt.kube_token_file};
    if (kc.server.empty()) {
      auto in_cluster = kube::InClusterConfig();
      if (!in_cluster)
        Die("xds serve", "--authenticate kube needs --kube-server or an in-cluster config: " +
                             in_cluster.error().message);
      kc = *in_cluster;
    }
    auto api = std::make_shared<kube::Client>(std::move(kc));
    sopts.authenticate = [api, td = opt.trust_domain](const std::string& token) {
      return kube::IstioIdentities(*api, token, td);
    };
  }
  auto port = server.Start(sopts);
  if (!port) {
    Die("xds serve", port.error().message);
  }
  auto watcher = istio::DirWatcher::Open(opt.config_dir);
  if (!watcher) {
    server.Stop();
    Die("xds serve", "watching " + opt.config_dir + ": " + watcher.error().message);
  }
  // Tests and scripts read the bound port from this line (useful with port 0).
  std::string where = opt.listen;
  if (!IsUnixAddress(opt.listen))
    where = opt.listen.substr(0, opt.listen.rfind(':')) + ":" + std::to_string(*port);
  std::cout << "serving " << report.files << " files from " << opt.config_dir << " on " << where
            << " (" << report.errors.size() << " errors)" << std::endl;

  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  while (!g_stop) {
    auto changed = watcher->Wait(200);
    if (!changed) {
      std::cerr << "sluicectl xds serve: " << changed.error().message << "\n";
      break;
    }
    if (!*changed)
      continue;
    report = cp.Reload();
    PrintReport(report);
    uint64_t version = server.Push();
    std::cout << "reloaded " << report.files << " files (" << report.errors.size()
              << " errors); pushed version " << version << std::endl;
  }
  server.Stop();
}

}  // namespace

void AddXdsServeCommand(CLI::App& app) {
  auto opt = std::make_shared<ServeOptions>();
  auto* xds = app.add_subcommand("xds", "The local xDS control plane");
  xds->require_subcommand(1);
  auto* serve = xds->add_subcommand(
      "serve",
      "Serve the translation of an Istio YAML directory over gRPC ADS, re-pushing on "
      "change");
  serve->add_option("--config-dir", opt->config_dir, "directory of Istio/Kubernetes YAML")
      ->required()
      ->check(CLI::ExistingDirectory);
  serve
      ->add_option("--listen", opt->listen,
                   "address to serve on: HOST:PORT (port 0: any free port) or unix:PATH")
      ->capture_default_str();
  serve->add_option("--tls-cert", opt->cert_file, "PEM certificate chain: serve TLS (as 15012)");
  serve->add_option("--tls-key", opt->key_file, "PEM private key for --tls-cert");
  serve->add_option("--require-token", opt->token,
                    "require 'authorization: Bearer TOKEN' on every stream");
  serve
      ->add_option("--authenticate", opt->authenticate,
                   "kube: authenticate each stream's token with a TokenReview at the API server "
                   "(audience istio-ca) and enforce istiod's XDS identity check (TLS only)")
      ->check(CLI::IsMember({"kube"}));
  serve->add_option("--kube-server", opt->kube_server,
                    "the API server for --authenticate kube (default: in-cluster config)");
  serve->add_option("--kube-ca-file", opt->kube_ca_file, "CA bundle verifying --kube-server");
  serve->add_option("--kube-token-file", opt->kube_token_file,
                    "this server's own token for the TokenReview calls");
  serve->add_option("--trust-domain", opt->trust_domain, "the mesh's SPIFFE trust domain")
      ->capture_default_str();
  serve->callback([opt] { RunServe(*opt); });
}

}  // namespace sluice::ctl
