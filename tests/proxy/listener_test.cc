// The listener path as Envoy runs it: the listener filters that read a connection's
// first bytes (tls_inspector, http_inspector) and their timeout, the filter-chain match
// over what they learn (filterchain::Select), the original_dst filter versus the
// use_original_dst hand-over, chains that fail closed, listener-level access logs, and
// per-resource compile. The traffic tests run real istiod listeners (virtualOutbound,
// virtualInbound, a sniffed 0.0.0.0_PORT listener; tests/proxy/data/ says where they
// come from) over loopback, with a fake original_dst hook standing in for iptables.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "harness.h"
#include "sluice/proxy/listener_filters.h"
#include "test_upstream.h"

using namespace sluice::testing;
using sluice::proxy::Inspect;
using sluice::proxy::InspectHttp;
using sluice::proxy::InspectTls;
using sluice::proxy::TlsHello;

namespace {

// A TLS 1.2 ClientHello record as clients send it, with server_name and ALPN when given.
std::string ClientHello(const std::string& sni, const std::vector<std::string>& alpn) {
  auto u16 = [](std::string& s, std::size_t v) {
    s.push_back(static_cast<char>(v >> 8));
    s.push_back(static_cast<char>(v & 0xff));
  };
  std::string ext;
  if (!sni.empty()) {
    std::string list;
    list.push_back(0);
    u16(list, sni.size());
    list += sni;
    std::string body;
    u16(body, list.size());
    body += list;
    u16(ext, 0);
    u16(ext, body.size());
    ext += body;
  }
  if (!alpn.empty()) {
    std::string list;
    for (const auto& p : alpn) {
      list.push_back(static_cast<char>(p.size()));
      list += p;
    }
    std::string body;
    u16(body, list.size());
    body += list;
    u16(ext, 16);
    u16(ext, body.size());
    ext += body;
  }
  std::string hello;
  hello += std::string("\x03\x03", 2);  // legacy_version
  hello += std::string(32, 'r');        // random
  hello.push_back(0);                   // session id
  u16(hello, 2);
  hello += std::string("\x13\x01", 2);  // one cipher suite
  hello.push_back(1);
  hello.push_back(0);  // compression: null
  u16(hello, ext.size());
  hello += ext;
  std::string hs;
  hs.push_back(1);  // ClientHello
  hs.push_back(0);
  u16(hs, hello.size());
  hs += hello;
  std::string rec = std::string("\x16\x03\x01", 3);
  u16(rec, hs.size());
  return rec + hs;
}

// A raw TCP server on loopback: each connection's bytes are kept; once a line (or an
// HTTP head) is in, it answers "<name> <peer-ip> <first line>" (as an HTTP response to
// an HTTP request) and closes. `banner`: written first, before anything is read (a
// server-first protocol).
class LineServer {
 public:
  explicit LineServer(std::string name, std::string banner = "")
      : name_(std::move(name)), banner_(std::move(banner)) {
    fd_ = ListenLoopback(64, &port_);
    thread_ = std::thread([this] { Run(); });
  }
  ~LineServer() {
    stop_ = true;
    shutdown(fd_, SHUT_RDWR);
    thread_.join();
    close(fd_);
  }
  uint16_t port() const { return port_; }
  // Everything each connection sent, in order.
  std::vector<std::string> Received() const {
    std::lock_guard l(mu_);
    return received_;
  }

 private:
  void Run() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 50) <= 0)
        continue;
      sockaddr_in peer{};
      socklen_t pl = sizeof(peer);
      int c = accept4(fd_, reinterpret_cast<sockaddr*>(&peer), &pl, SOCK_CLOEXEC);
      if (c < 0)
        continue;
      char ip[INET_ADDRSTRLEN];
      inet_ntop(AF_INET, &peer.sin_addr, ip, sizeof(ip));
      if (!banner_.empty())
        send(c, banner_.data(), banner_.size(), MSG_NOSIGNAL);
      std::string got;
      char buf[4096];
      while (true) {
        pollfd q{c, POLLIN, 0};
        if (poll(&q, 1, 2000) <= 0)
          break;
        ssize_t n = recv(c, buf, sizeof(buf), 0);
        if (n <= 0)
          break;
        got.append(buf, static_cast<std::size_t>(n));
        // One send per client: a line (the last byte a newline) or an HTTP head.
        const bool http = got.starts_with("GET ");
        if (http ? got.find("\r\n\r\n") != std::string::npos : got.back() == '\n')
          break;
      }
      {
        std::lock_guard l(mu_);
        received_.push_back(got);
      }
      std::string line = got.substr(0, got.find_first_of("\r\n"));
      std::string answer = name_ + " " + ip + " " + line + "\n";
      if (got.starts_with("GET ")) {
        answer = "HTTP/1.1 200 OK\r\ncontent-length: " + std::to_string(answer.size()) +
                 "\r\nconnection: close\r\n\r\n" + answer;
      }
      if (!got.empty())
        send(c, answer.data(), answer.size(), MSG_NOSIGNAL);
      close(c);
    }
  }
  std::string name_, banner_;
  int fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  mutable std::mutex mu_;
  std::vector<std::string> received_;
  std::thread thread_;
};

// Sends `bytes` (optionally shutting the write side) and reads until EOF, timeout, or
// (when given) `stop_at` arrived.
std::string Exchange(uint16_t port, const std::string& bytes, int timeout_ms = 3000,
                     bool half_close = false, const std::string& stop_at = "") {
  int fd = Connect(port);
  if (fd < 0)
    return "<connect failed>";
  if (!bytes.empty())
    send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
  if (half_close)
    shutdown(fd, SHUT_WR);
  std::string out;
  char buf[4096];
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (true) {
    int left = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                    deadline - std::chrono::steady_clock::now())
                                    .count());
    pollfd p{fd, POLLIN, 0};
    if (left <= 0 || poll(&p, 1, left) <= 0)
      break;
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0)
      break;
    out.append(buf, static_cast<std::size_t>(n));
    if (!stop_at.empty() && out.find(stop_at) != std::string::npos)
      break;
  }
  close(fd);
  return out;
}

Json FileLog() {
  return Json::array(
      {{{"name", "envoy.access_loggers.file"},
        {"typed_config",
         {{"@type", "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"},
          {"path", "/dev/stdout"}}}}});
}

Json TcpTo(const std::string& cluster, bool log = true) {
  Json t = {{"@type", "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"},
            {"stat_prefix", cluster},
            {"cluster", cluster}};
  if (log)
    t["access_log"] = FileLog();
  return {{"name", "envoy.filters.network.tcp_proxy"}, {"typed_config", t}};
}

Json ListenerFilter(const std::string& which) {
  const std::string type = which == "tls_inspector"    ? "tls_inspector.v3.TlsInspector"
                           : which == "http_inspector" ? "http_inspector.v3.HttpInspector"
                                                       : "original_dst.v3.OriginalDst";
  return {{"name", "envoy.filters.listener." + which},
          {"typed_config",
           {{"@type", "type.googleapis.com/envoy.extensions.filters.listener." + type}}}};
}

// Clusters as istiod sends them with these listeners (the dump holds listeners only):
// PassthroughCluster and the inbound ones are ORIGINAL_DST, the inbound ones leave from
// 127.0.0.6 (upstream_bind_config), BlackHoleCluster is STATIC with no endpoints.
Json IstiodClusters() {
  auto original_dst = [](const std::string& name, bool inbound) {
    Json c = {{"name", name},
              {"type", "ORIGINAL_DST"},
              {"connect_timeout", "1s"},
              {"lb_policy", "CLUSTER_PROVIDED"}};
    if (inbound) {
      c["upstream_bind_config"] = {
          {"source_address", {{"address", "127.0.0.6"}, {"port_value", 0}}}};
    }
    return c;
  };
  return Json::array(
      {original_dst("PassthroughCluster", false),
       original_dst("InboundPassthroughClusterIpv4", true),
       original_dst("inbound|80||", true),
       {{"name", "BlackHoleCluster"}, {"type", "STATIC"}, {"connect_timeout", "1s"}}});
}

// The sidecar's listeners from the real dump, made to run on loopback: the two capture
// listeners at 127.0.0.1 on free ports; virtualInbound's port-80 chains (and the
// http_inspector's port-80 exemption) moved to `app_port`; 0.0.0.0_9080 copied once per
// sniffed port in `sniffed`. `registry_only`: virtualOutbound's catch-all goes to
// BlackHoleCluster, as istiod builds it under outboundTrafficPolicy REGISTRY_ONLY.
// Access logs are added where istiod adds them when access logging is on.
Json IstiodSidecar(uint16_t app_port, const std::vector<uint16_t>& sniffed,
                   bool registry_only = false) {
  std::ifstream f(SLUICE_TEST_DATA "/istiod-1.18-sidecar-listeners.json");
  std::stringstream ss;
  ss << f.rdbuf();
  Json src = Json::parse(ss.str());
  Json out = Json::array();
  for (Json l : src["listeners"]) {
    const std::string name = l["name"];
    if (name == "virtualOutbound" || name == "virtualInbound") {
      l["address"]["socket_address"] = {{"address", "127.0.0.1"}, {"port_value", 0}};
      l["access_log"] = FileLog();
    }
    if (name == "virtualOutbound") {
      for (auto& fc : l["filter_chains"]) {
        auto& t = fc["filters"][0]["typed_config"];
        if (registry_only && fc["name"] == "virtualOutbound-catchall-tcp")
          t["cluster"] = t["stat_prefix"] = "BlackHoleCluster";
        t["access_log"] = FileLog();
      }
      out.push_back(l);
    } else if (name == "virtualInbound") {
      std::string text = l.dump();
      auto replace = [&](const std::string& from, const std::string& to) {
        for (std::size_t at = text.find(from); at != std::string::npos;
             at = text.find(from, at + to.size()))
          text.replace(at, from.size(), to);
      };
      replace("\"destination_port\":80", "\"destination_port\":" + std::to_string(app_port));
      replace("\"end\":81,\"start\":80",
              "\"end\":" + std::to_string(app_port + 1) + ",\"start\":" + std::to_string(app_port));
      out.push_back(Json::parse(text));
    } else if (name == "0.0.0.0_9080") {
      for (uint16_t p : sniffed) {
        Json copy = l;
        copy["name"] = "0.0.0.0_" + std::to_string(p);
        copy["address"]["socket_address"]["port_value"] = p;
        copy["default_filter_chain"]["filters"][0]["typed_config"]["access_log"] = FileLog();
        out.push_back(copy);
      }
    }
  }
  // Route "9080" under ALLOW_ANY: istiod's allow_any virtual host to PassthroughCluster.
  Json route = RouteConfig("9080", Json::array({{{"name", "allow_any"},
                                                 {"match", {{"prefix", "/"}}},
                                                 {"route", {{"cluster", "PassthroughCluster"}}}}}));
  return {{"listeners", out}, {"routes", Json::array({route})}, {"clusters", IstiodClusters()}};
}

// A fake SO_ORIGINAL_DST: every accepted connection "was for" 127.0.0.1:port.
struct FakeOriginalDst {
  std::atomic<uint16_t> port{0};
  sluice::proxy::ProxyOptions Options() {
    sluice::proxy::ProxyOptions o;
    o.original_dst = [this](int, int) -> std::optional<sockaddr_storage> {
      auto ss = sluice::proxy::ParseIp("127.0.0.1", port.load());
      return ss;
    };
    return o;
  }
};

}  // namespace

// ------------------------------------------------------------------ inspectors

TEST_CASE("tls_inspector reads transport protocol, SNI and ALPN from a ClientHello",
          "[listener][inspector]") {
  TlsHello h;
  const std::string hello = ClientHello("API.Example.com", {"h2", "http/1.1"});
  REQUIRE(InspectTls(hello, &h) == Inspect::kDone);
  CHECK(h.tls);
  CHECK(h.server_name == "api.example.com");  // lower case, as chains match it
  CHECK(h.alpn == std::vector<std::string>{"h2", "http/1.1"});
  // A ClientHello without either: still TLS.
  REQUIRE(InspectTls(ClientHello("", {}), &h) == Inspect::kDone);
  CHECK(h.tls);
  CHECK(h.server_name.empty());
  CHECK(h.alpn.empty());
  // Cut anywhere: wait for more.
  for (std::size_t cut : {1, 5, 20, 60})
    CHECK(InspectTls(std::string_view(hello).substr(0, cut), &h) == Inspect::kNeedMore);
  // Not TLS: done at once, no transport protocol "tls".
  REQUIRE(InspectTls("GET / HTTP/1.1\r\n", &h) == Inspect::kDone);
  CHECK_FALSE(h.tls);
  REQUIRE(InspectTls("SSH-2.0-OpenSSH_9.6\r\n", &h) == Inspect::kDone);
  CHECK_FALSE(h.tls);
}

TEST_CASE("http_inspector: http/1.1, http/1.0, h2c, or nothing", "[listener][inspector]") {
  std::string p;
  CHECK(InspectHttp("GET /x HTTP/1.1\r\nhost: a\r\n", &p) == Inspect::kDone);
  CHECK(p == "http/1.1");
  CHECK(InspectHttp("POST / HTTP/1.0\r\n", &p) == Inspect::kDone);
  CHECK(p == "http/1.0");
  CHECK(InspectHttp("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", &p) == Inspect::kDone);
  CHECK(p == "h2c");
  // Not yet enough to tell.
  CHECK(InspectHttp("GE", &p) == Inspect::kNeedMore);
  CHECK(InspectHttp("GET /x HTTP/1.1", &p) == Inspect::kNeedMore);
  CHECK(InspectHttp("PRI * HTTP/2", &p) == Inspect::kNeedMore);
  // Not HTTP: no ALPN.
  CHECK(InspectHttp("hello\n", &p) == Inspect::kDone);
  CHECK(p.empty());
  CHECK(InspectHttp("FOO / HTTP/1.1\r\n", &p) == Inspect::kDone);
  CHECK(p.empty());
  CHECK(InspectHttp("GET / HTTP/3.0\r\n", &p) == Inspect::kDone);
  CHECK(p.empty());
}

// ------------------------------------------------------------------ chain selection

TEST_CASE("transport protocol and ALPN choose the chain, and the bytes read are replayed",
          "[listener][proxy]") {
  LineServer tls_srv("tls"), h2("h2"), http("http"), raw("raw");
  auto chain = [](Json match, const std::string& cluster) {
    return Json{{"filter_chain_match", match}, {"filters", Json::array({TcpTo(cluster)})}};
  };
  Json l = Listener("sniff", Json::array({
                                 chain({{"transport_protocol", "tls"}}, "tls"),
                                 chain({{"application_protocols", {"h2c"}}}, "h2"),
                                 chain({{"application_protocols", {"http/1.1"}}}, "http"),
                             }));
  l["listener_filters"] =
      Json::array({ListenerFilter("tls_inspector"), ListenerFilter("http_inspector")});
  l["default_filter_chain"] = {{"filters", Json::array({TcpTo("raw")})}};
  Json doc = {{"listeners", {l}},
              {"clusters",
               {StaticCluster("tls", {tls_srv.port()}), StaticCluster("h2", {h2.port()}),
                StaticCluster("http", {http.port()}), StaticCluster("raw", {raw.port()})}}};
  auto p = StartProxy(doc);
  REQUIRE(p->error == "");
  const uint16_t port = p->Port("sniff");
  const std::string hello = ClientHello("a.test", {"h2"}) + "\n";
  CHECK(Exchange(port, hello).starts_with("tls 127.0.0.1 "));
  CHECK(Exchange(port, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\n").starts_with("h2 "));
  CHECK(Exchange(port, "GET / HTTP/1.1\r\nhost: x\r\n\r\n").find("http 127.0.0.1 GET / HTTP/1.1") !=
        std::string::npos);
  CHECK(Exchange(port, "hello raw\n") == "raw 127.0.0.1 hello raw\n");
  // The inspected bytes reached the upstream untouched.
  auto got = tls_srv.Received();
  REQUIRE(got.size() == 1);
  CHECK(got[0] == hello);
}

TEST_CASE(
    "TLS by SNI picks its chain, and no chain and no default closes with NR in the "
    "listener's access log",
    "[listener][proxy][log]") {
  LineServer a("a"), wild("wild");
  auto chain = [](const std::string& name, const std::string& cluster) {
    return Json{{"filter_chain_match", {{"server_names", {name}}}},
                {"filters", Json::array({TcpTo(cluster)})}};
  };
  Json l = Listener("tls", Json::array({chain("a.test", "a"), chain("*.b.test", "wild")}));
  l["listener_filters"] = Json::array({ListenerFilter("tls_inspector")});
  l["access_log"] = FileLog();
  Json doc = {{"listeners", {l}},
              {"clusters", {StaticCluster("a", {a.port()}), StaticCluster("wild", {wild.port()})}}};
  auto p = StartProxy(doc);
  REQUIRE(p->error == "");
  const uint16_t port = p->Port("tls");
  CHECK(Exchange(port, ClientHello("a.test", {}) + "\n").starts_with("a "));
  CHECK(Exchange(port, ClientHello("x.y.b.test", {}) + "\n").starts_with("wild "));
  CHECK(Exchange(port, ClientHello("c.test", {}) + "\n").empty());
  CHECK(Exchange(port, "plain\n").empty());  // not TLS: no server name, no chain
  CHECK(a.Received().size() == 1);
  CHECK(wild.Received().size() == 1);
  auto lines = p->LogLines(4);
  int nr = 0;
  for (const auto& line : lines) {
    if (line.find("\"- - -\" 0 NR - filter_chain_not_found ") != std::string::npos)
      ++nr;
  }
  CHECK(nr == 2);
  CHECK(p->proxy->stats().cx_no_chain.load() == 2);
}

TEST_CASE(
    "listener_filters_timeout: go on with what is known or close, and server-first "
    "protocols work where nothing is sniffed",
    "[listener][proxy][timeout]") {
  LineServer banner("srv", "220 hello\n");
  auto make = [&](bool cont) {
    Json l = Listener("l", Json::array({{{"filter_chain_match", {{"transport_protocol", "tls"}}},
                                         {"filters", Json::array({TcpTo("tls")})}}}));
    l["listener_filters"] = Json::array({ListenerFilter("tls_inspector")});
    l["listener_filters_timeout"] = "0.2s";
    l["continue_on_listener_filters_timeout"] = cont;
    l["default_filter_chain"] = {{"filters", Json::array({TcpTo("srv")})}};
    return Json{{"listeners", {l}},
                {"clusters",
                 {StaticCluster("srv", {banner.port()}), StaticCluster("tls", {banner.port()})}}};
  };
  {
    auto p = StartProxy(make(true));
    REQUIRE(p->error == "");
    // The client waits for the server's banner; after 200 ms the default chain serves.
    auto t0 = std::chrono::steady_clock::now();
    std::string got = Exchange(p->Port("l"), "", 1500, false, "\n");
    CHECK(got == "220 hello\n");
    const auto waited = std::chrono::steady_clock::now() - t0;
    CHECK(waited >= std::chrono::milliseconds(150));
    CHECK(waited < std::chrono::milliseconds(1000));
  }
  {
    auto p = StartProxy(make(false));
    REQUIRE(p->error == "");
    CHECK(Exchange(p->Port("l"), "", 1500).empty());  // closed at the timeout
  }
  {
    // Nothing sets a criterion the inspector reads: the connection is not read first.
    Json doc = make(false);
    doc["listeners"][0]["filter_chains"][0]["filter_chain_match"] = {{"destination_port", 1}};
    auto p = StartProxy(doc);
    REQUIRE(p->error == "");
    auto t0 = std::chrono::steady_clock::now();
    CHECK(Exchange(p->Port("l"), "", 1000, false, "\n") == "220 hello\n");
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(150));
  }
}

// ------------------------------------------------------------------ per-resource compile

TEST_CASE("Compile refuses a broken cluster by name, skips an internal listener, serves the rest",
          "[listener][config]") {
  Json internal = {{"name", "connect_originate"},
                   {"internal_listener", Json::object()},
                   {"filter_chains", Json::array({{{"filters", Json::array({TcpTo("good")})}}})}};
  Json bad_cluster = StaticCluster("bad", {80});
  bad_cluster["lb_policy"] = "LOAD_BALANCING_POLICY_CONFIG";
  Json doc = {
      {"listeners",
       {internal, Listener("ok", Json::array({{{"filters", Json::array({TcpTo("good")})}}}))}},
      {"clusters", {StaticCluster("good", {1}), bad_cluster}}};
  auto cfg = CompileJson(doc);
  REQUIRE(cfg);
  std::map<std::string, std::string> refused;
  for (const auto& r : (*cfg)->refused)
    refused[r.kind + " " + r.name] = r.reason;
  // The HBONE internal listener is of no use without mTLS: skipped with a warning that
  // names it (config/filters.h), not refused; the broken cluster is refused by name.
  CHECK(refused.size() == 1);
  CHECK(refused["cluster bad"].find("lb_policy") != std::string::npos);
  bool warned = false;
  for (const auto& w : (*cfg)->warnings)
    warned |= w.find("listener connect_originate: skipped") != std::string::npos &&
              w.find("internal listener") != std::string::npos;
  CHECK(warned);
  REQUIRE((*cfg)->listeners.size() == 1);
  CHECK((*cfg)->listeners[0].name == "ok");
  CHECK((*cfg)->FindCluster("good") != nullptr);
  CHECK((*cfg)->FindCluster("bad") == nullptr);
}

// ------------------------------------------------------------------ istiod's listeners

TEST_CASE("istiod's sidecar listeners: outbound passthrough, sniffed ports, inbound chains",
          "[listener][proxy][istiod]") {
  TestUpstream web({.name = "web", .record = false});  // an HTTP service on a sniffed port
  LineServer raw("raw");                               // a raw TCP service on a sniffed port
  LineServer unknown("unknown");                       // a destination no listener covers
  LineServer app("app");                               // the pod's app on its own port
  LineServer other("other");                           // a pod port without chains of its own
  FakeOriginalDst dst;
  auto doc = IstiodSidecar(app.port(), {web.port(), raw.port()});
  auto cfg = CompileJson(doc);
  REQUIRE(cfg);
  CHECK((*cfg)->refused.empty());
  // The original_dst filter restores the destination; only use_original_dst hands over.
  for (const auto& l : (*cfg)->listeners) {
    if (l.name == "virtualInbound") {
      CHECK(l.restore_original_dst);
      CHECK_FALSE(l.use_original_dst);
    } else if (l.name == "virtualOutbound") {
      CHECK(l.use_original_dst);
    }
  }
  auto p = StartProxy(doc, 1, dst.Options());
  REQUIRE(p->error == "");
  const uint16_t outbound = p->Port("virtualOutbound"), inbound = p->Port("virtualInbound");

  SECTION("outbound, sniffed port: HTTP takes the HTTP chain, anything else the TCP chain") {
    dst.port = web.port();
    CHECK(Get(outbound, "web.default", "/").Header("x-upstream") == "web");
    dst.port = raw.port();
    CHECK(Exchange(outbound, "not http\n") == "raw 127.0.0.1 not http\n");
  }
  SECTION("outbound, a destination no listener covers passes through (ALLOW_ANY)") {
    dst.port = unknown.port();
    CHECK(Exchange(outbound, "ping\n") == "unknown 127.0.0.1 ping\n");
    auto lines = p->LogLines(1);
    REQUIRE(!lines.empty());
    CHECK(lines.back().find(" PassthroughCluster ") != std::string::npos);
  }
  SECTION("outbound, TLS on a sniffed port passes through untouched") {
    dst.port = raw.port();
    const std::string hello = ClientHello("raw.example", {"h2"}) + "\n";
    CHECK(Exchange(outbound, hello).starts_with("raw "));
    REQUIRE(raw.Received().size() == 1);
    CHECK(raw.Received()[0] == hello);
  }
  SECTION("inbound HTTP to the app's own port reaches the app, from 127.0.0.6") {
    dst.port = app.port();
    Resp r = Get(inbound, "some-other-service.default.svc.cluster.local", "/x");
    CHECK(r.status == 200);
    CHECK(r.body == "app 127.0.0.6 GET /x HTTP/1.1\n");
  }
  SECTION("inbound TCP to a port without chains of its own passes through (not 400)") {
    dst.port = other.port();
    CHECK(Exchange(inbound, "raw bytes\n") == "other 127.0.0.6 raw bytes\n");
  }
  SECTION("inbound mTLS chains fail closed: nothing reaches the app") {
    dst.port = app.port();
    CHECK(Exchange(inbound, ClientHello("", {"istio-http/1.1", "istio"}) + "\n").empty());
    dst.port = other.port();
    CHECK(Exchange(inbound, ClientHello("", {"istio-peer-exchange", "istio"}) + "\n").empty());
    CHECK(app.Received().empty());
    CHECK(other.Received().empty());
    CHECK(p->proxy->stats().cx_fail_closed.load() == 2);
    auto lines = p->LogLines(2);
    int logged = 0;
    for (const auto& line : lines)
      logged += line.find(" sluice_tls_termination_unsupported ") != std::string::npos;
    CHECK(logged == 2);
    // Plain TLS (no Istio ALPN) to a port without chains takes istiod's TLS passthrough.
    CHECK(Exchange(inbound, ClientHello("other", {}) + "\n").starts_with("other 127.0.0.6 "));
  }
}

TEST_CASE(
    "istiod's sidecar listeners under REGISTRY_ONLY: an unknown destination is refused "
    "and logged as BlackHoleCluster",
    "[listener][proxy][istiod][log]") {
  LineServer unknown("unknown");
  FakeOriginalDst dst;
  auto p = StartProxy(IstiodSidecar(1, {}, /*registry_only=*/true), 1, dst.Options());
  REQUIRE(p->error == "");
  dst.port = unknown.port();
  CHECK(Exchange(p->Port("virtualOutbound"), "ping\n").empty());
  CHECK(unknown.Received().empty());
  auto lines = p->LogLines(1);
  REQUIRE(!lines.empty());
  CHECK(lines.back().find("\"- - -\" 0 UH ") != std::string::npos);
  CHECK(lines.back().find(" BlackHoleCluster ") != std::string::npos);
}
