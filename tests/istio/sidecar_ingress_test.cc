// Sidecar ingress in the local control plane: what the loader accepts (and reads into
// the model) and what it refuses, with the exact error a user sees; the translation
// (virtualInbound, inbound clusters) as istiod shapes it; and the agent's proxy compiling
// that translation and delivering a connection through the ingress port's own chain.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "envoy/config/listener/v3/listener.pb.h"
#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb.h"
#include "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.pb.h"
#include "harness.h"
#include "sluice/istio/loader.h"
#include "sluice/istio/local_control_plane.h"
#include "sluice/istio/registry.h"
#include "sluice/istio/translator.h"
#include "sluice/proxy/config.h"
#include "sluice/proxy/proxy.h"
#include "sluice/xds/node.h"
#include "test_upstream.h"
#include "translate_harness.h"

using namespace sluice::istio;
using sluice::istio::test::Load;

namespace {

// A Sidecar for app=ratings in bookinfo whose spec is `spec` (YAML, indented by 2).
std::string SidecarDoc(const std::string& spec) {
  return "apiVersion: networking.istio.io/v1beta1\n"
         "kind: Sidecar\n"
         "metadata: {name: ratings, namespace: bookinfo}\n"
         "spec:\n"
         "  workloadSelector: {labels: {app: ratings}}\n" +
         spec;
}

// The one error loading the Sidecar gives, without the "t.yaml: document 1 (Sidecar
// bookinfo/ratings): " prefix; "" when it loads.
std::string ErrorOf(const std::string& spec) {
  auto r = Load(SidecarDoc(spec));
  if (r.errors.empty())
    return "";
  const std::string prefix = "t.yaml: document 1 (Sidecar bookinfo/ratings): ";
  std::string e = r.errors.front();
  if (e.starts_with(prefix))
    e = e.substr(prefix.size());
  CHECK(r.config.sidecars.empty());  // a refused Sidecar is dropped whole
  return e;
}

std::string Ingress(const std::string& fields) {
  return "  ingress:\n  - " + fields + "\n";
}

}  // namespace

TEST_CASE("sidecar ingress: accepted forms are read into the model") {
  auto r =
      Load(SidecarDoc("  ingress:\n"
                      "  - port: {number: 9080, protocol: HTTP, name: http}\n"
                      "    defaultEndpoint: 127.0.0.1:8080\n"
                      "    captureMode: IPTABLES\n"
                      "    connectionPool: {tcp: {connectTimeout: 2s}}\n"
                      "  - port: {number: 9443, protocol: grpc-web}\n"
                      "    defaultEndpoint: '[::1]:9444'\n"
                      "  - port: {number: 7000}\n"
                      "    captureMode: DEFAULT\n"
                      "  inboundConnectionPool: {tcp: {connectTimeout: 750ms}}\n"));
  INFO((r.errors.empty() ? "" : r.errors.front()));
  REQUIRE(r.errors.empty());
  REQUIRE(r.config.sidecars.size() == 1);
  const auto& in = r.config.sidecars[0].ingress;
  REQUIRE(in.size() == 3);
  CHECK(in[0].port == 9080);
  CHECK(in[0].protocol == "HTTP");
  CHECK(in[0].port_name == "http");
  CHECK(in[0].endpoint_address == "127.0.0.1");
  CHECK(in[0].endpoint_port == 8080);
  CHECK(in[0].connect_timeout_ms == 2000);  // its own pool wins over inboundConnectionPool
  CHECK(in[1].protocol == "GRPC-Web");
  CHECK(in[1].endpoint_address == "::1");
  CHECK(in[1].endpoint_port == 9444);
  CHECK(in[1].connect_timeout_ms == 750);
  CHECK(in[2].protocol.empty());          // detected
  CHECK(in[2].endpoint_address.empty());  // ORIGINAL_DST: the pod's own address, same port
}

TEST_CASE("sidecar ingress: malformed fields are refused as istio's validation refuses them") {
  CHECK(ErrorOf(Ingress("defaultEndpoint: 127.0.0.1:8080")) == "spec.ingress[0].port: required");
  CHECK(ErrorOf(Ingress("port: {protocol: HTTP}")) == "spec.ingress[0].port.number: required");
  CHECK(ErrorOf(Ingress("port: {number: 70000}")) ==
        "spec.ingress[0].port.number: must be a port number 1..65535");
  CHECK(ErrorOf("  ingress:\n  - port: {number: 9080}\n  - port: {number: 9080}\n") ==
        "spec.ingress[1].port.number: duplicate port 9080 (ingress listeners' ports must be "
        "unique)");
  CHECK(ErrorOf(Ingress("port: {number: 9080, targetPort: 8080}")) ==
        "spec.ingress[0].port.targetPort: has no impact on Sidecars (Istio refuses it)");
  CHECK(ErrorOf(Ingress("port: {number: 9080, name: Http_1}")) ==
        "spec.ingress[0].port.name: invalid port name \"Http_1\": must be a DNS-1123 label "
        "(lower-case letters, digits, '-')");
  CHECK(ErrorOf(Ingress("port: {number: 9080, protocol: SPDY}")) ==
        "spec.ingress[0].port.protocol: unsupported protocol \"SPDY\" (HTTP, HTTP2, GRPC, "
        "GRPC-Web, HTTPS, TLS, TCP, Mongo, Redis, MySQL, or unset to detect HTTP)");
  CHECK(ErrorOf(Ingress("port: {number: 9080}\n    defaultEndpoint: 127.0.0.1")) ==
        "spec.ingress[0].defaultEndpoint: address 127.0.0.1: missing port in address");
  CHECK(ErrorOf(Ingress("port: {number: 9080}\n    defaultEndpoint: '::1:8080'")) ==
        "spec.ingress[0].defaultEndpoint: address ::1:8080: too many colons in address");
  CHECK(ErrorOf(Ingress("port: {number: 9080}\n    defaultEndpoint: 10.0.0.7:8080")) ==
        "spec.ingress[0].defaultEndpoint: must be of form 127.0.0.1:<port>, 0.0.0.0:<port>, "
        "[::1]:<port>, [::]:<port>, unix://filepath or unset (got \"10.0.0.7:8080\")");
  CHECK(ErrorOf(Ingress("port: {number: 9080}\n    defaultEndpoint: '127.0.0.1:http'")) ==
        "spec.ingress[0].defaultEndpoint: port (http) is not a number");
  CHECK(ErrorOf(Ingress("port: {number: 9080}\n    defaultEndpoint: '127.0.0.1:0'")) ==
        "spec.ingress[0].defaultEndpoint: port number 0 must be in the range 1..65535");
  CHECK(ErrorOf(Ingress("port: {number: 9080}\n    defaultEndpoint: unix://run/app.sock")) ==
        "spec.ingress[0].defaultEndpoint: run/app.sock is not an absolute path to a file");
  CHECK(ErrorOf(Ingress("port: {number: 9080}\n    captureMode: SOMETIMES")) ==
        "spec.ingress[0].captureMode: must be DEFAULT, IPTABLES or NONE (got \"SOMETIMES\")");
  CHECK(ErrorOf(Ingress("port: {number: 9080}\n    bind: localhost")) ==
        "spec.ingress[0].bind: must be an IP address (got \"localhost\")");
  CHECK(ErrorOf(Ingress("port: {number: 9080}\n    connectionPool: {}")) ==
        "spec.ingress[0].connectionPool: connection pool must have at least one field (tcp or "
        "http)");
  CHECK(ErrorOf(Ingress("port: {number: 9080}\n    connectionPool: {tcp: {connectTimeout: 5}}")) ==
        "spec.ingress[0].connectionPool.tcp.connectTimeout: must be a duration such as \"1.5s\" "
        "or \"100ms\" (got \"5\")");
  // A misspelled field is caught before any value is read (api_fields.cc).
  CHECK(ErrorOf(Ingress("port: {number: 9080}\n    defaultEndpiont: 127.0.0.1:8080"))
            .starts_with("spec.ingress[0].defaultEndpiont: unknown field"));
}

TEST_CASE("sidecar ingress: what Sluice cannot serve is refused by name, with the reason") {
  CHECK(ErrorOf(Ingress("port: {number: 9080}\n    defaultEndpoint: 0.0.0.0:8080")) ==
        "spec.ingress[0].defaultEndpoint: not supported by Sluice: \"0.0.0.0:8080\" (istiod: "
        "the pod's instance IP); Sluice does not resolve a pod's address here: use "
        "127.0.0.1:PORT or [::1]:PORT, or leave defaultEndpoint unset to deliver to the pod's "
        "own address on the same port");
  CHECK(ErrorOf(Ingress("port: {number: 9080}\n    defaultEndpoint: '[::]:8080'")) ==
        "spec.ingress[0].defaultEndpoint: not supported by Sluice: \"[::]:8080\" (istiod: the "
        "pod's instance IP); Sluice does not resolve a pod's address here: use "
        "127.0.0.1:PORT or [::1]:PORT, or leave defaultEndpoint unset to deliver to the pod's "
        "own address on the same port");
  CHECK(ErrorOf(Ingress("port: {number: 9080}\n    defaultEndpoint: ':8080'")) ==
        "spec.ingress[0].defaultEndpoint: not supported by Sluice: \":8080\": istiod ignores "
        "its port and delivers to the original destination; leave defaultEndpoint unset for "
        "that, or write 127.0.0.1:PORT");
  CHECK(ErrorOf(Ingress("port: {number: 9080}\n    defaultEndpoint: unix:///var/run/app.sock")) ==
        "spec.ingress[0].defaultEndpoint: not supported by Sluice: a unix domain socket "
        "endpoint (\"unix:///var/run/app.sock\"); Sluice's proxy delivers to 127.0.0.1:PORT, "
        "[::1]:PORT or the pod's own address (defaultEndpoint unset)");
  CHECK(ErrorOf(Ingress("port: {number: 9080}\n    captureMode: NONE")) ==
        "spec.ingress[0].captureMode: not supported by Sluice: NONE (a listener bound to the "
        "port in the pod); Sluice's inbound side takes redirected connections: use DEFAULT or "
        "IPTABLES");
  CHECK(ErrorOf(Ingress("port: {number: 9080}\n    bind: 10.0.0.7")) ==
        "spec.ingress[0].bind: not supported by Sluice: bind; Sluice serves an ingress port on "
        "virtualInbound for every address of the pod (leave bind unset)");
  CHECK(ErrorOf(Ingress("port: {number: 9443, protocol: HTTPS}\n    tls: {mode: SIMPLE}")) ==
        "spec.ingress[0].tls: not supported by Sluice: TLS termination on sidecar ingress "
        "(issue 18); the Sidecar is refused rather than served without it");
  CHECK(ErrorOf(Ingress("port: {number: 9080, protocol: UDP}")) ==
        "spec.ingress[0].port.protocol: not supported by Sluice: UDP ingress listeners");
  CHECK(ErrorOf(Ingress("port: {number: 9080}\n    connectionPool: {tcp: {maxConnections: 10}}")) ==
        "spec.ingress[0].connectionPool.tcp.maxConnections: not supported by Sluice: connection "
        "limits and timeouts other than tcp.connectTimeout are not translated to the inbound "
        "cluster");
  CHECK(ErrorOf(Ingress("port: {number: 9080}\n    connectionPool: {http: {maxRetries: 3}}")) ==
        "spec.ingress[0].connectionPool.http.maxRetries: not supported by Sluice: HTTP "
        "connection pool settings are not translated to the inbound cluster (only "
        "tcp.connectTimeout is)");
  CHECK(ErrorOf(Ingress("port: {number: 9080}") +
                "  inboundConnectionPool: {http: {http1MaxPendingRequests: 5}}\n") ==
        "spec.inboundConnectionPool.http.http1MaxPendingRequests: not supported by Sluice: HTTP "
        "connection pool settings are not translated to the inbound cluster (only "
        "tcp.connectTimeout is)");
}

// ------------------------------------------------------------------ translation

namespace {

namespace listener_v3 = envoy::config::listener::v3;
namespace hcm_v3 = envoy::extensions::filters::network::http_connection_manager::v3;
namespace tcp_v3 = envoy::extensions::filters::network::tcp_proxy::v3;

Translation TranslateFor(const std::string& yaml, const std::string& proxy) {
  auto loaded = Load(yaml);
  INFO((loaded.errors.empty() ? "" : loaded.errors.front()));
  REQUIRE(loaded.errors.empty());
  return sluice::istio::test::TranslateFor(loaded, proxy);
}

// The chains of virtualInbound whose destination_port is `port`.
std::vector<const listener_v3::FilterChain*> ChainsFor(const listener_v3::Listener& l,
                                                       uint32_t port) {
  std::vector<const listener_v3::FilterChain*> out;
  for (const auto& fc : l.filter_chains()) {
    if (fc.filter_chain_match().destination_port().value() == port)
      out.push_back(&fc);
  }
  return out;
}

}  // namespace

TEST_CASE(
    "sidecar ingress: the selected pods get virtualInbound and inbound clusters, others none") {
  const std::string yaml = SidecarDoc(
      "  ingress:\n"
      "  - port: {number: 9080, protocol: HTTP, name: http}\n"
      "    defaultEndpoint: 127.0.0.1:8080\n"
      "  - port: {number: 9090, protocol: TCP}\n");
  auto t = TranslateFor(yaml, "sidecar:app=ratings,version=v1@bookinfo");
  CHECK(t.warnings.empty());
  const auto& rs = t.resources;
  REQUIRE(rs.listeners.count("virtualInbound"));
  const auto& l = rs.listeners.at("virtualInbound");
  CHECK(l.traffic_direction() == envoy::config::core::v3::INBOUND);
  CHECK(l.address().socket_address().port_value() == 15006);
  CHECK_FALSE(l.has_use_original_dst());  // the original_dst filter, not the hand-over
  REQUIRE(l.listener_filters_size() == 2);
  CHECK(l.listener_filters(0).name() == "envoy.filters.listener.original_dst");

  // 9080: HTTP, through a connection manager whose only route goes to inbound|9080||.
  auto http = ChainsFor(l, 9080);
  REQUIRE(http.size() == 1);
  CHECK(http[0]->name() == "0.0.0.0_9080");
  hcm_v3::HttpConnectionManager hcm;
  REQUIRE(http[0]->filters(0).typed_config().UnpackTo(&hcm));
  CHECK(hcm.stat_prefix() == "inbound_0.0.0.0_9080");
  REQUIRE(hcm.route_config().virtual_hosts_size() == 1);
  CHECK(hcm.route_config().virtual_hosts(0).routes(0).route().cluster() == "inbound|9080||");
  // 9090: TCP, straight to inbound|9090||.
  auto tcp = ChainsFor(l, 9090);
  REQUIRE(tcp.size() == 1);
  tcp_v3::TcpProxy tp;
  // tcp_proxy is the chain's last filter (istio.stats before it, as istiod).
  REQUIRE(tcp[0]->filters(tcp[0]->filters_size() - 1).typed_config().UnpackTo(&tp));
  CHECK(tp.cluster() == "inbound|9090||");

  const auto& loopback = rs.clusters.at("inbound|9080||");
  CHECK(loopback.type() == envoy::config::cluster::v3::Cluster::STATIC);
  CHECK(loopback.load_assignment()
            .endpoints(0)
            .lb_endpoints(0)
            .endpoint()
            .address()
            .socket_address()
            .port_value() == 8080);
  CHECK_FALSE(loopback.has_upstream_bind_config());  // to loopback: no 127.0.0.6
  const auto& own = rs.clusters.at("inbound|9090||");
  CHECK(own.type() == envoy::config::cluster::v3::Cluster::ORIGINAL_DST);
  CHECK(own.upstream_bind_config().source_address().address() == "127.0.0.6");
  CHECK(rs.clusters.count("InboundPassthroughCluster"));

  // Another pod of the namespace: no inbound side at all.
  auto other = TranslateFor(yaml, "sidecar:app=reviews@bookinfo");
  CHECK_FALSE(other.resources.listeners.count("virtualInbound"));
  CHECK_FALSE(other.resources.clusters.count("inbound|9080||"));
  CHECK_FALSE(other.resources.clusters.count("InboundPassthroughCluster"));
}

TEST_CASE("sidecar ingress: ProxySpec carries a sidecar's labels, and its name tells them apart") {
  auto s = ProxySpec::Parse("sidecar:version=v1,app=ratings@bookinfo");
  REQUIRE(s);
  CHECK(s->ns == "bookinfo");
  CHECK(s->labels == Labels{{"app", "ratings"}, {"version", "v1"}});
  // Describe() keys LocalControlPlane's translation cache: pods with other labels must
  // not share a translation that a workloadSelector made for one of them.
  CHECK(s->Describe() == "sidecar:app=ratings,version=v1@bookinfo");
  CHECK(ProxySpec::Parse("sidecar:bookinfo")->Describe() == "sidecar:bookinfo");
  CHECK_FALSE(ProxySpec::Parse("sidecar:app@bookinfo").has_value());
  CHECK_FALSE(ProxySpec::Parse("sidecar:app=ratings@").has_value());
}

// ------------------------------------------------------------------ real traffic

namespace {

// A TCP server on a loopback port that answers each connection's first line with
// "NAME PEER-IP LINE\n" (so a test sees who got the bytes, and from which source).
class LineEcho {
 public:
  explicit LineEcho(std::string name) : name_(std::move(name)) {
    fd_ = sluice::testing::ListenLoopback(16, &port_);
    thread_ = std::thread([this] { Run(); });
  }
  ~LineEcho() {
    stop_ = true;
    ::shutdown(fd_, SHUT_RDWR);
    thread_.join();
    ::close(fd_);
  }
  uint16_t port() const { return port_; }
  int accepted() const { return accepted_.load(); }

 private:
  void Run() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0)
        continue;
      sockaddr_in peer{};
      socklen_t len = sizeof(peer);
      int c = ::accept4(fd_, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_CLOEXEC);
      if (c < 0)
        continue;
      ++accepted_;
      std::string got;
      char buf[1024];
      while (got.find('\n') == std::string::npos) {
        pollfd q{c, POLLIN, 0};
        if (::poll(&q, 1, 2000) <= 0)
          break;
        ssize_t n = ::recv(c, buf, sizeof(buf), 0);
        if (n <= 0)
          break;
        got.append(buf, static_cast<std::size_t>(n));
      }
      char ip[INET_ADDRSTRLEN];
      ::inet_ntop(AF_INET, &peer.sin_addr, ip, sizeof(ip));
      std::string answer = name_ + " " + ip + " " + got.substr(0, got.find('\n')) + "\n";
      ::send(c, answer.data(), answer.size(), MSG_NOSIGNAL);
      ::close(c);
    }
  }
  std::string name_;
  int fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> accepted_{0};
  std::thread thread_;
};

// Sends `bytes` and reads until the peer closes or 2 s pass.
std::string Exchange(uint16_t port, const std::string& bytes) {
  int fd = sluice::testing::Connect(port);
  if (fd < 0)
    return "<connect failed>";
  ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
  std::string out;
  char buf[4096];
  while (true) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 2000) <= 0)
      break;
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0)
      break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return out;
}

}  // namespace

TEST_CASE("sidecar ingress: the proxy serves the translation, each port through its own chain",
          "[proxy]") {
  using sluice::testing::Json;
  // The pod's app: HTTP on loopback only (reached through 127.0.0.1:APP), a raw TCP
  // server on its own port (reached ORIGINAL_DST), and a port with no ingress listener.
  sluice::testing::TestUpstream app({.name = "app"});
  LineEcho raw("raw"), other("other");
  const std::string yaml = SidecarDoc(
      "  ingress:\n"
      "  - port: {number: 9080, protocol: HTTP, name: http}\n"
      "    defaultEndpoint: 127.0.0.1:" +
      std::to_string(app.port()) +
      "\n"
      "  - port: {number: " +
      std::to_string(raw.port()) + "}\n");
  auto t = TranslateFor(yaml, "sidecar:app=ratings@bookinfo");
  auto text = ResourcesToJson(t.resources);
  REQUIRE(text);
  // Served on loopback at a free port instead of 0.0.0.0:15006; the chains still match
  // on the original destination the (fake) redirection reports.
  Json doc = Json::parse(*text);
  Json listeners = Json::array();
  for (auto& l : doc["listeners"]) {
    if (l["name"] == "virtualInbound") {
      l["address"] = {{"socketAddress", {{"address", "127.0.0.1"}, {"portValue", 0}}}};
      listeners.push_back(l);
    }
  }
  doc["listeners"] = listeners;
  auto cfg = sluice::testing::CompileJson(doc);
  INFO((cfg ? "" : cfg.error().message));
  REQUIRE(cfg);
  for (const auto& r : (*cfg)->refused)
    FAIL_CHECK(r.kind + " " + r.name + ": " + r.reason);
  REQUIRE((*cfg)->listeners.size() == 1);
  CHECK((*cfg)->listeners[0].restore_original_dst);
  CHECK_FALSE((*cfg)->listeners[0].use_original_dst);

  std::atomic<uint16_t> original_port{0};
  sluice::proxy::ProxyOptions opts;
  opts.original_dst = [&](int, int) -> std::optional<sockaddr_storage> {
    return sluice::proxy::ParseIp("127.0.0.1", original_port.load());
  };
  auto p = sluice::testing::StartProxy(doc, 1, opts);
  REQUIRE(p->error == "");
  const uint16_t inbound = p->Port("virtualInbound");

  SECTION("HTTP to the ingress port reaches the app at its defaultEndpoint") {
    original_port = 9080;
    auto r = sluice::testing::Get(inbound, "ratings.bookinfo:9080", "/ratings/0");
    CHECK(r.status == 200);
    CHECK(r.Header("x-upstream") == "app");
    REQUIRE(app.Requests().size() == 1);
    CHECK(app.Requests()[0].starts_with("GET /ratings/0 HTTP/1.1"));
  }
  SECTION("non-HTTP bytes on a detected port take its TCP chain to the pod's own port") {
    original_port = raw.port();
    CHECK(Exchange(inbound, "PING\n") == "raw 127.0.0.6 PING\n");
  }
  SECTION("a pod port without an ingress listener passes through, from 127.0.0.6") {
    original_port = other.port();
    CHECK(Exchange(inbound, "hello\n") == "other 127.0.0.6 hello\n");
  }
  SECTION("connections for the listener's own port are dropped (they would loop)") {
    original_port = 15006;
    CHECK(Exchange(inbound, "loop\n").empty());
    CHECK(app.count() == 0);
  }
}

TEST_CASE("sidecar ingress: the local control plane serves pods of one namespace by their labels") {
  char tmpl[] = "/tmp/sluice-ingress-lcp-XXXXXX";
  REQUIRE(::mkdtemp(tmpl) != nullptr);
  const std::string dir = tmpl;
  std::ofstream(dir + "/sidecar.yaml")
      << SidecarDoc("  ingress:\n  - port: {number: 9080, protocol: HTTP}\n");
  LocalControlPlane cp({dir});
  REQUIRE(cp.Reload().errors.empty());
  auto node = [](const std::string& pod, const std::string& app) {
    sluice::xds::NodeIdentity id;
    id.ips = {"10.244.1.5"};
    id.pod_name = pod;
    id.pod_namespace = "bookinfo";
    auto n = sluice::xds::BuildNode(id);
    auto& labels = (*n.mutable_metadata()->mutable_fields())["LABELS"];
    (*labels.mutable_struct_value()->mutable_fields())["app"].set_string_value(app);
    return n;
  };
  // productpage asks first; ratings must still get its own translation, with ingress.
  CHECK_FALSE(
      cp.ResourcesFor(node("productpage-1", "productpage")).listeners.count("virtualInbound"));
  CHECK(cp.ResourcesFor(node("ratings-1", "ratings")).listeners.count("virtualInbound"));
  CHECK(cp.ResourcesFor(node("ratings-2", "ratings")).listeners.count("virtualInbound"));
  CHECK(cp.Translations() == 2);  // the two ratings pods share one
  std::filesystem::remove_all(dir);
}
