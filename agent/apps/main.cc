// sluice-apps: the built-in stand-ins for the container images of Istio's samples.
//   sluice-apps httpbin     [--port 80] [--https-port P --cert F --key F]
//                           [--style httpbin|go-httpbin]
//   sluice-apps helloworld  [--port 5000]   (SERVICE_VERSION, HOSTNAME from the env)
//   sluice-apps external    [--http 80] [--https 443 --cert F --key F]
//   sluice-apps certs       --host edition.cnn.com [--host …] --out DIR
//   sluice-apps grpc-echo   [--grpc 7070 …] [--port 8080 …] [--tcp 9090 …] [--version V]
//   sluice-apps grpc-client URL|--url URL [--count N] [--timeout 5s] [--msg M]
//                           [-H 'k: v'] [--forward-via HOST:PORT]
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "echo_format.h"
#include "echo_forward.h"
#include "grpc_echo.h"
#include "helloworld.h"
#include "httpbin.h"
#include "images.h"
#include "server.h"
#include "tcp_echo.h"
#include "tls.h"

namespace {

using sluice::apps::Server;

struct ListenFlags {
  std::string address = "0.0.0.0";
  int http_port = -1;   // -1: not given, use the app's default
  int https_port = -1;  // -1: no HTTPS listener
  std::string cert, key;
};

void AddTlsFlags(CLI::App* cmd, ListenFlags& f, const std::string& https_flag) {
  cmd->add_option(https_flag, f.https_port, "also serve HTTPS on this port (needs --cert, --key)")
      ->check(CLI::Range(0, 65535));
  cmd->add_option("--cert", f.cert, "PEM certificate (chain) for HTTPS")->check(CLI::ExistingFile);
  cmd->add_option("--key", f.key, "PEM private key for HTTPS")->check(CLI::ExistingFile);
}

// Listens as asked, prints "NAME: listening on http ADDRESS:PORT" per listener on stderr
// (tests and the local cluster read the bound port from it), then serves until SIGTERM.
int Run(const std::string& name, sluice::apps::Handler handler, const ListenFlags& f,
        int default_http_port) {
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);  // inherited by every server thread
  signal(SIGPIPE, SIG_IGN);

  Server server(std::move(handler));
  int http_port = f.http_port >= 0 ? f.http_port : default_http_port;
  if (http_port >= 0) {
    auto port = server.Listen(f.address, static_cast<std::uint16_t>(http_port), nullptr);
    if (!port) {
      std::fprintf(stderr, "%s: %s\n", name.c_str(), port.error().message.c_str());
      return 1;
    }
    std::fprintf(stderr, "%s: listening on http %s:%u\n", name.c_str(), f.address.c_str(), *port);
  }
  if (f.https_port >= 0) {
    if (f.cert.empty() || f.key.empty()) {
      std::fprintf(stderr, "%s: HTTPS needs --cert and --key\n", name.c_str());
      return 1;
    }
    auto tls = sluice::apps::TlsContext::Load(f.cert, f.key);
    if (!tls) {
      std::fprintf(stderr, "%s: %s\n", name.c_str(), tls.error().message.c_str());
      return 1;
    }
    auto port = server.Listen(f.address, static_cast<std::uint16_t>(f.https_port), *tls);
    if (!port) {
      std::fprintf(stderr, "%s: %s\n", name.c_str(), port.error().message.c_str());
      return 1;
    }
    std::fprintf(stderr, "%s: listening on https %s:%u\n", name.c_str(), f.address.c_str(), *port);
  }
  std::fflush(stderr);
  server.Start();
  int sig = 0;
  sigwait(&stop, &sig);
  std::fprintf(stderr, "%s: signal %d, exiting\n", name.c_str(), sig);
  std::fflush(stderr);
  // Connection threads are detached and may be mid-request; leave without unwinding them.
  std::_Exit(0);
}

// The running binary's own path, for {sluice_apps} and to find images.json beside it.
std::string SelfPath() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0)
    return "sluice-apps";
  return std::string(buf, static_cast<std::size_t>(n));
}

std::optional<std::string> Env(const char* name) {
  const char* v = std::getenv(name);
  if (!v)
    return std::nullopt;
  return std::string(v);
}

std::string Hostname() {
  if (auto h = Env("HOSTNAME"); h && !h->empty())
    return *h;
  char buf[256] = "";
  gethostname(buf, sizeof buf - 1);
  return buf;
}

// A port list as the echo app takes it: repeated (--grpc 1 --grpc 2) or comma-separated.
CLI::Option* AddPorts(CLI::App* cmd, const std::string& name, std::vector<int>& ports,
                      const std::string& help) {
  return cmd->add_option(name, ports, help)
      ->delimiter(',')
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->check(CLI::Range(0, 65535));
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"sluice-apps: built-in stand-ins for Istio's sample workloads"};
  app.require_subcommand(1);

  ListenFlags bin_flags;
  std::string style = "httpbin";
  auto* httpbin = app.add_subcommand("httpbin", "httpbin-compatible server");
  httpbin->add_option("--port", bin_flags.http_port, "HTTP port (default 80, go-httpbin 8080)")
      ->envname("PORT")
      ->check(CLI::Range(0, 65535));
  httpbin->add_option("--address", bin_flags.address, "listen address (0.0.0.0, ::, 127.0.0.1)");
  httpbin->add_option("--style", style, "JSON shape: httpbin (kennethreitz) or go-httpbin")
      ->check(CLI::IsMember({"httpbin", "go-httpbin"}));
  AddTlsFlags(httpbin, bin_flags, "--https-port");

  ListenFlags hello_flags;
  std::optional<std::string> version, instance;
  auto* hello = app.add_subcommand("helloworld", "helloworld sample server");
  hello->add_option("--port", hello_flags.http_port, "HTTP port (default 5000)")
      ->envname("PORT")
      ->check(CLI::Range(0, 65535));
  hello->add_option("--address", hello_flags.address, "listen address");
  hello->add_option("--service-version", version, "overrides $SERVICE_VERSION");
  hello->add_option("--instance", instance, "overrides $HOSTNAME");

  std::string echo_ports, echo_prefix;
  auto* tcp_echo = app.add_subcommand(
      "tcp-echo", "Istio's tcp-echo sample: each line answered with PREFIX and the line");
  tcp_echo->add_option("PORTS", echo_ports, "comma-separated ports, e.g. 9000,9001")->required();
  tcp_echo->add_option("PREFIX", echo_prefix, "what each answer starts with, e.g. one")->required();

  ListenFlags ext_flags;
  auto* external = app.add_subcommand(
      "external", "a host outside the mesh: httpbin endpoints plus a 200 page for any other path");
  external->add_option("--http", ext_flags.http_port, "HTTP port (default 80)")
      ->check(CLI::Range(0, 65535));
  external->add_option("--address", ext_flags.address, "listen address");
  AddTlsFlags(external, ext_flags, "--https");
  bool redirect_to_https = false;
  external->add_flag("--redirect-https", redirect_to_https,
                     "answer every plain-HTTP request 301 to https://HOST/PATH, as "
                     "edition.cnn.com does");

  std::vector<std::string> hosts;
  std::string out_dir;
  auto* certs =
      app.add_subcommand("certs",
                         "write a self-signed CA (ca.pem, ca-key.pem) and a server certificate "
                         "(HOST.pem, HOST-key.pem) for the given host names into --out");
  certs->add_option("--host", hosts, "host name or IP (repeatable; the first is the CN)")
      ->required();
  certs->add_option("--out", out_dir, "output directory (an existing CA there is reused)")
      ->required();

  std::string image_ref, map_path;
  int container_port = -1;
  auto* image = app.add_subcommand(
      "image",
      "print, as JSON, how the local cluster runs a container image: the stand-in, "
      "its command line and env defaults (from images.json)");
  image->add_option("IMAGE", image_ref, "container image, e.g. docker.io/kennethreitz/httpbin")
      ->required();
  image->add_option("--container-port", container_port, "the container's first containerPort")
      ->check(CLI::Range(1, 65535));
  image->add_option("--map", map_path, "image map (default: images.json next to this binary)");

  // Istio's echo app (registry.istio.io/testing/app) with the flags its samples pass.
  sluice::apps::GrpcEchoOptions echo_opts;
  std::vector<int> grpc_ports, http_ports, tcp_ports, xds_grpc_ports;
  int metrics_port = 0;
  std::string echo_crt, echo_key, echo_ca;
  auto* grpc_echo = app.add_subcommand(
      "grpc-echo",
      "Istio's echo app: proto.EchoTestService (Echo, ForwardEcho) on each --grpc port, "
      "its HTTP and TCP echo on each --port and --tcp port");
  AddPorts(grpc_echo, "--grpc", grpc_ports, "gRPC ports (default 7070)");
  AddPorts(grpc_echo, "--port", http_ports, "HTTP ports (default 8080)");
  AddPorts(grpc_echo, "--tcp", tcp_ports, "TCP echo ports (default 9090)");
  AddPorts(grpc_echo, "--xds-grpc-server", xds_grpc_ports,
           "gRPC ports Istio serves with xDS server-side config; served as plain gRPC here");
  grpc_echo->add_option("--metrics", metrics_port, "metrics port (accepted, not served)");
  grpc_echo->add_option("--version", echo_opts.identity.version, "ServiceVersion in replies");
  grpc_echo->add_option("--cluster", echo_opts.identity.cluster, "Cluster in replies");
  grpc_echo->add_option("--istio-version", echo_opts.identity.istio_version,
                        "IstioVersion in replies");
  grpc_echo->add_option("--crt", echo_crt, "TLS certificate (accepted, not used: no --tls ports)");
  grpc_echo->add_option("--key", echo_key, "TLS key (accepted, not used: no --tls ports)");
  grpc_echo->add_option("--ca", echo_ca, "TLS CA (accepted, not used: no --tls ports)");
  grpc_echo->add_option("--address", echo_opts.address, "listen address (0.0.0.0, ::, 127.0.0.1)");

  // Istio's echo client, for gRPC URLs.
  sluice::apps::ForwardRequest fwd;
  std::string url_arg, timeout_text = "5s", forward_via;
  std::vector<std::string> header_args;
  auto* grpc_client = app.add_subcommand(
      "grpc-client",
      "Istio's echo client for gRPC: Echo calls to xds:///HOST:PORT, grpc://HOST:PORT or "
      "HOST:PORT, printed as the echo client prints them");
  grpc_client->add_option("URL", url_arg, "same as --url");
  grpc_client->add_option("--url", fwd.url, "xds:///echo.ns.svc.cluster.local:7070, HOST:PORT");
  grpc_client->add_option("--count", fwd.count, "number of calls")->check(CLI::Range(1, 100000));
  grpc_client->add_option("--qps", fwd.qps, "calls per second (0: no pacing)")
      ->check(CLI::Range(0, 100000));
  grpc_client->add_option("--timeout", timeout_text, "for the whole set of calls (5s, 500ms)");
  grpc_client->add_option("--msg", fwd.message, "the EchoRequest message");
  grpc_client->add_option("-H,--header", header_args, "'name: value' (Host sets :authority)");
  grpc_client->add_option("--forward-via", forward_via,
                          "HOST:PORT of an echo server: it makes the calls (ForwardEcho) and "
                          "this prints its output");

  CLI11_PARSE(app, argc, argv);

  if (*grpc_echo) {
    if (!grpc_ports.empty())
      echo_opts.grpc_ports = grpc_ports;
    if (!http_ports.empty())
      echo_opts.http_ports = http_ports;
    if (!tcp_ports.empty())
      echo_opts.tcp_ports = tcp_ports;
    echo_opts.identity.hostname = Hostname();
    echo_opts.identity.ns = Env("NAMESPACE").value_or("");
    for (int p : xds_grpc_ports)
      std::fprintf(stderr,
                   "grpc-echo: --xds-grpc-server %d: served as plain gRPC (no xDS server-side "
                   "listener, no mTLS)\n",
                   p);
    if (metrics_port != 0)
      std::fprintf(stderr, "grpc-echo: --metrics %d: not served\n", metrics_port);
    return sluice::apps::RunGrpcEcho(echo_opts);
  }
  if (*grpc_client) {
    if (fwd.url.empty())
      fwd.url = url_arg;
    if (fwd.url.empty()) {
      std::fprintf(stderr, "grpc-client: give a URL (--url xds:///HOST:PORT or HOST:PORT)\n");
      return 2;
    }
    auto timeout = sluice::apps::ParseGoDuration(timeout_text);
    if (!timeout) {
      std::fprintf(stderr, "grpc-client: --timeout: %s\n", timeout.error().message.c_str());
      return 2;
    }
    fwd.timeout = *timeout;
    for (const auto& h : header_args) {
      auto colon = h.find(':');
      if (colon == std::string::npos) {
        std::fprintf(stderr, "grpc-client: -H \"%s\": want name:value\n", h.c_str());
        return 2;
      }
      std::string value = h.substr(colon + 1);
      value.erase(0, value.find_first_not_of(" \t"));
      value.erase(value.find_last_not_of(" \t") + 1);
      fwd.headers.emplace_back(h.substr(0, colon), value);
    }
    return sluice::apps::RunGrpcClient(fwd, forward_via);
  }

  if (*httpbin) {
    sluice::apps::HttpbinOptions opts;
    bool go = style == "go-httpbin";
    opts.style = go ? sluice::apps::HttpbinOptions::Style::kGoHttpbin
                    : sluice::apps::HttpbinOptions::Style::kHttpbin;
    return Run("httpbin", sluice::apps::MakeHttpbinHandler(opts), bin_flags, go ? 8080 : 80);
  }
  if (*hello) {
    sluice::apps::HelloworldOptions opts{version ? version : Env("SERVICE_VERSION"),
                                         instance ? instance : Env("HOSTNAME")};
    return Run("helloworld", sluice::apps::MakeHelloworldHandler(opts), hello_flags, 5000);
  }
  if (*tcp_echo)
    return sluice::apps::RunTcpEcho(echo_ports, echo_prefix);
  if (*external) {
    sluice::apps::HttpbinOptions opts;
    opts.catch_all_page = true;
    opts.redirect_to_https = redirect_to_https;
    return Run("external", sluice::apps::MakeHttpbinHandler(opts), ext_flags, 80);
  }
  if (*image) {
    std::string self = SelfPath();
    if (map_path.empty())
      map_path = self.substr(0, self.rfind('/') + 1) + "images.json";
    auto map = sluice::apps::ImageMap::Load(map_path);
    if (!map) {
      std::fprintf(stderr, "image: %s\n", map.error().message.c_str());
      return 1;
    }
    const sluice::apps::ImageEntry* entry = map->Find(image_ref);
    if (!entry) {
      std::fprintf(stderr, "image: no stand-in for %s (as %s) in %s\n", image_ref.c_str(),
                   sluice::apps::NormalizeImage(image_ref).c_str(), map_path.c_str());
      return 3;
    }
    nlohmann::json out = {{"image", entry->image},
                          {"standin", entry->standin},
                          {"env", entry->env},
                          {"command", nullptr}};
    if (entry->command)
      out["command"] = sluice::apps::ExpandCommand(
          *entry, self, container_port > 0 ? std::optional<int>(container_port) : std::nullopt);
    std::printf("%s\n", out.dump().c_str());
    return 0;
  }
  if (*certs) {
    auto paths = sluice::apps::MakeSelfSignedCerts(out_dir, hosts);
    if (!paths) {
      std::fprintf(stderr, "certs: %s\n", paths.error().message.c_str());
      return 1;
    }
    std::printf("ca_cert=%s%s\nca_key=%s\ncert=%s\nkey=%s\n", paths->ca_cert.c_str(),
                paths->ca_created ? "" : " (reused)", paths->ca_key.c_str(), paths->cert.c_str(),
                paths->key.c_str());
    return 0;
  }
  return 0;
}
