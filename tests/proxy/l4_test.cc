// TCP proxy and TLS passthrough by SNI. The TLS upstreams are real `openssl s_server`
// processes with self-signed certificates made by the test; the client is curl. The
// proxy never terminates TLS: a completed handshake with the right certificate shows
// the bytes went through untouched to the server chosen by the ClientHello's SNI.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <mutex>
#include <set>
#include <thread>

#include "harness.h"
#include "sluice/proxy/tls_sni.h"
#include "test_upstream.h"

extern char** environ;

using namespace sluice::testing;

namespace {

std::string Run(const std::string& cmd) {
  std::string out;
  FILE* f = popen(cmd.c_str(), "r");
  if (!f)
    return out;
  char buf[4096];
  std::size_t n;
  while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
    out.append(buf, n);
  pclose(f);
  return out;
}

// `openssl s_server` for one name, killed (and reaped) when the object goes.
class TlsServer {
 public:
  TlsServer(const std::string& dir, const std::string& name) : port_(FreeLoopbackPort()) {
    std::string key = dir + "/" + name + ".key", crt = dir + "/" + name + ".crt";
    Run("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=" + name + " -keyout " + key +
        " -out " + crt + " 2>/dev/null");
    std::vector<std::string> args = {
        "openssl", "s_server", "-quiet", "-www", "-accept", "127.0.0.1:" + std::to_string(port_),
        "-cert",   crt,        "-key",   key};
    std::vector<char*> argv;
    for (auto& a : args)
      argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    posix_spawnp(&pid_, "openssl", &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    WaitFor([&] {
      int fd = Connect(port_);
      if (fd < 0)
        return false;
      close(fd);
      return true;
    });
  }
  ~TlsServer() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      waitpid(pid_, nullptr, 0);
    }
  }
  uint16_t port() const { return port_; }

 private:
  uint16_t port_;
  pid_t pid_ = -1;
};

Json TcpProxy(const Json& target, bool access_log = true) {
  Json t = {{"@type", "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"},
            {"stat_prefix", "tcp"}};
  t.update(target);
  if (access_log) {
    t["access_log"] = Json::array(
        {{{"name", "envoy.access_loggers.file"},
          {"typed_config",
           {{"@type", "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"},
            {"path", "/dev/stdout"}}}}});
  }
  return {{"name", "envoy.filters.network.tcp_proxy"}, {"typed_config", t}};
}

}  // namespace

TEST_CASE("SNI is read from a real ClientHello", "[tls]") {
  // Capture one ClientHello from openssl s_client into a file, then parse it.
  TempDir dir;
  int lfd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  listen(lfd, 1);
  socklen_t len = sizeof(a);
  getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &len);
  std::string cmd =
      "timeout 2 openssl s_client -connect 127.0.0.1:" + std::to_string(ntohs(a.sin_port)) +
      " -servername api.example.com </dev/null >/dev/null 2>&1 &";
  std::system(cmd.c_str());
  int c = accept(lfd, nullptr, nullptr);
  std::string hello;
  std::string_view sni;
  sluice::proxy::SniStatus st = sluice::proxy::SniStatus::kNeedMore;
  while (st == sluice::proxy::SniStatus::kNeedMore) {
    char buf[4096];
    ssize_t n = recv(c, buf, sizeof(buf), 0);
    if (n <= 0)
      break;
    hello.append(buf, static_cast<std::size_t>(n));
    st = sluice::proxy::ParseClientHelloSni(hello, &sni);
  }
  close(c);
  close(lfd);
  REQUIRE(st == sluice::proxy::SniStatus::kFound);
  CHECK(sni == "api.example.com");
  // Every truncation asks for more; plaintext is recognised as not TLS.
  for (std::size_t cut = 0; cut < hello.size(); cut += 7) {
    CHECK(sluice::proxy::ParseClientHelloSni(std::string_view(hello).substr(0, cut), &sni) ==
          sluice::proxy::SniStatus::kNeedMore);
  }
  CHECK(sluice::proxy::ParseClientHelloSni("GET / HTTP/1.1\r\n", &sni) ==
        sluice::proxy::SniStatus::kNotTls);
}

TEST_CASE("TLS passthrough: the filter chain is chosen by SNI, bytes forwarded untouched",
          "[tls][proxy]") {
  TempDir dir;
  TlsServer a(dir.path(), "a.test"), b(dir.path(), "www.b.test");
  Json chains = Json::array({
      {{"filter_chain_match", {{"server_names", {"a.test"}}}},
       {"filters", {TcpProxy({{"cluster", "outbound|443||a.test"}})}}},
      {{"filter_chain_match", {{"server_names", {"*.b.test"}}}},
       {"filters", {TcpProxy({{"cluster", "outbound|443||b.test"}})}}},
  });
  Json l = Listener("tls", chains);
  l["listener_filters"] =
      Json::array({{{"name", "envoy.filters.listener.tls_inspector"},
                    {"typed_config",
                     {{"@type",
                       "type.googleapis.com/"
                       "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}}}});
  Json doc = {{"listeners", {l}},
              {"clusters",
               {StaticCluster("outbound|443||a.test", {a.port()}),
                StaticCluster("outbound|443||b.test", {b.port()})}}};
  auto p = StartProxy(doc);
  REQUIRE(p->error == "");
  uint16_t port = p->Port("tls");
  auto curl = [&](const std::string& host) {
    return Run("curl -sk -v --max-time 5 --resolve " + host + ":" + std::to_string(port) +
               ":127.0.0.1 https://" + host + ":" + std::to_string(port) + "/ 2>&1");
  };
  std::string out = curl("a.test");
  CHECK(out.find("subject: CN=a.test") != std::string::npos);
  CHECK(out.find("HTTP/1.0 200 ok") !=
        std::string::npos);  // s_server -www answered through the tunnel
  out = curl("www.b.test");
  CHECK(out.find("subject: CN=www.b.test") != std::string::npos);
  // No chain for this name: the connection is closed, no handshake.
  out = curl("c.test");
  CHECK(out.find("subject:") == std::string::npos);

  auto lines = p->LogLines(2);
  REQUIRE(lines.size() >= 2);
  CHECK(lines[0].find("\"- - -\" 0 - ") != std::string::npos);
  CHECK(lines[0].find(" outbound|443||a.test ") != std::string::npos);
  CHECK(lines[0].find(" a.test -") != std::string::npos);  // REQUESTED_SERVER_NAME, then ROUTE_NAME
  CHECK(lines[1].find(" outbound|443||b.test ") != std::string::npos);
}

TEST_CASE("TCP proxy to a cluster and to weighted clusters", "[tcp][proxy]") {
  TestUpstream u1({.name = "u1", .record = false}), u2({.name = "u2", .record = false});
  Json doc = {
      {"listeners",
       {Listener("single", Json::array({{{"filters", {TcpProxy({{"cluster", "c1"}}, false)}}}})),
        Listener("split", Json::array({{{"filters",
                                         {TcpProxy({{"weighted_clusters",
                                                     {{"clusters",
                                                       {{{"name", "c1"}, {"weight", 50}},
                                                        {{"name", "c2"}, {"weight", 50}}}}}}},
                                                   false)}}}}))}},
      {"clusters", {StaticCluster("c1", {u1.port()}), StaticCluster("c2", {u2.port()})}}};
  auto p = StartProxy(doc);
  REQUIRE(p->error == "");
  Resp r = SendRaw(p->Port("single"), "GET /t HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n");
  CHECK(r.status == 200);
  CHECK(r.Header("x-upstream") == "u1");
  // Raw bytes, untouched: the upstream sees the request exactly as sent (no proxy headers).
  CHECK(r.body == "GET /t HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n");
  int n1 = 0, n2 = 0;
  for (int i = 0; i < 200; ++i) {
    Resp s = SendRaw(p->Port("split"), "GET / HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n");
    (s.Header("x-upstream") == "u1" ? n1 : n2)++;
  }
  CHECK(n1 > 70);
  CHECK(n2 > 70);
}

TEST_CASE("TCP proxy passes a client half-close on and still delivers the answer", "[tcp][proxy]") {
  TestUpstream u1({.name = "u1", .record = false});
  Json doc = {{"listeners",
               Json::array({Listener(
                   "tcp", Json::array({{{"filters", {TcpProxy({{"cluster", "c1"}}, false)}}}}))})},
              {"clusters", Json::array({StaticCluster("c1", {u1.port()})})}};
  auto p = StartProxy(doc);
  REQUIRE(p->error == "");
  int fd = Connect(p->Port("tcp"));
  REQUIRE(fd >= 0);
  std::string req = "GET /half HTTP/1.1\r\nhost: h\r\n\r\n";  // keep-alive: only the FIN ends it
  send(fd, req.data(), req.size(), 0);
  shutdown(fd, SHUT_WR);
  std::string buf;
  auto rs = ReadResponses(fd, buf, 1, 3000);
  close(fd);
  REQUIRE(rs.size() == 1);
  CHECK(rs[0].status == 200);
  CHECK(rs[0].body.rfind("GET /half ", 0) == 0);
}

TEST_CASE("use_original_dst hands a connection to the listener of its original destination",
          "[tcp][proxy][handover]") {
  // istiod's sidecar shape: virtualOutbound receives everything; listeners with
  // bind_to_port false (0.0.0.0_8080, 0.0.0.0_7000) own the ports they name.
  TestUpstream fallback({.name = "fallback", .record = false});
  TestUpstream web({.name = "web", .record = false});
  TestUpstream net_a({.name = "net-a", .record = false});
  TestUpstream net_b({.name = "net-b", .record = false});
  Json vo = Listener("virtualOutbound", Json::array());
  vo["use_original_dst"] = true;
  vo.erase("filter_chains");
  vo["default_filter_chain"] = {{"filters", Json::array({TcpProxy({{"cluster", "fallback"}})})}};
  Json http = HttpListener("0.0.0.0_8080",
                           RouteConfig("8080", Json::array({{{"name", "all"},
                                                             {"match", {{"prefix", "/"}}},
                                                             {"route", {{"cluster", "web"}}}}})));
  http["address"]["socket_address"]["address"] = "0.0.0.0";
  http["address"]["socket_address"]["port_value"] = 8080;
  http["bind_to_port"] = false;
  // Dual stack: the same listener at "::" (an Envoy additional address).
  http["additional_addresses"] =
      Json::array({{{"address", {{"socket_address", {{"address", "::"}, {"port_value", 8080}}}}}}});
  auto ranged = [](const char* prefix, const char* cluster) {
    return Json{
        {"filter_chain_match",
         {{"prefix_ranges", Json::array({{{"address_prefix", prefix}, {"prefix_len", 16}}})}}},
        {"filters", Json::array({TcpProxy({{"cluster", cluster}})})}};
  };
  Json tcp = Listener("0.0.0.0_7000",
                      Json::array({ranged("10.1.0.0", "net-a"), ranged("10.2.0.0", "net-b")}));
  tcp["address"]["socket_address"]["address"] = "0.0.0.0";
  tcp["address"]["socket_address"]["port_value"] = 7000;
  tcp["bind_to_port"] = false;
  Json doc = {{"listeners", Json::array({vo, http, tcp})},
              {"clusters", Json::array({StaticCluster("fallback", {fallback.port()}),
                                        StaticCluster("web", {web.port()}),
                                        StaticCluster("net-a", {net_a.port()}),
                                        StaticCluster("net-b", {net_b.port()})})}};
  std::atomic<uint32_t> dst_ip{0};
  std::atomic<uint16_t> dst_port{0};
  std::atomic<bool> dst_v6{false};  // then fd00::<dst_ip's last byte>
  sluice::proxy::ProxyOptions opts;
  opts.original_dst = [&](int, int) -> std::optional<sockaddr_storage> {
    sockaddr_storage ss{};
    if (dst_v6) {
      auto* a6 = reinterpret_cast<sockaddr_in6*>(&ss);
      a6->sin6_family = AF_INET6;
      a6->sin6_port = htons(dst_port.load());
      a6->sin6_addr.s6_addr[0] = 0xfd;
      a6->sin6_addr.s6_addr[15] = static_cast<uint8_t>(dst_ip.load());
      return ss;
    }
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(dst_port.load());
    a->sin_addr.s_addr = htonl(dst_ip.load());
    return ss;
  };
  auto p = StartProxy(doc, 1, opts);
  REQUIRE(p->error == "");
  uint16_t port = p->Port("virtualOutbound");
  REQUIRE(port != 0);
  CHECK(p->Port("0.0.0.0_8080") == 0);  // never bound

  auto via = [&](uint32_t ip, uint16_t dport) {
    dst_ip = ip;
    dst_port = dport;
    return Get(port, "anything.example", "/").Header("x-upstream");
  };
  CHECK(via(0x0a090909, 8080) == "web");       // 10.9.9.9:8080 -> 0.0.0.0_8080's route
  CHECK(via(0x0a090909, 1234) == "fallback");  // no listener on 1234: virtualOutbound keeps it
  CHECK(via(0x0a010203, 7000) == "net-a");     // 10.1.2.3:7000 -> the 10.1/16 chain
  CHECK(via(0x0a020304, 7000) == "net-b");     // 10.2.3.4:7000 -> the 10.2/16 chain
  // IPv6 destinations go to listeners of their own family: [fd00::9]:8080 to the "::"
  // address of 0.0.0.0_8080; 0.0.0.0_7000 has no IPv6 address, so virtualOutbound keeps
  // [fd00::9]:7000.
  dst_v6 = true;
  CHECK(via(9, 8080) == "web");
  CHECK(via(9, 7000) == "fallback");
}

TEST_CASE("on_worker_start runs on every worker before it serves, and a failure fails Start",
          "[proxy][hooks]") {
  TestUpstream up({.name = "up", .record = false});
  Json doc = {
      {"listeners",
       Json::array({Listener(
           "tcp", Json::array({{{"filters", Json::array({TcpProxy({{"cluster", "up"}})})}}}))})},
      {"clusters", Json::array({StaticCluster("up", {up.port()})})}};
  std::mutex mu;
  std::set<int> workers;
  std::set<std::thread::id> threads;
  sluice::proxy::ProxyOptions opts;
  opts.on_worker_start = [&](int w) -> sluice::Result<void> {
    std::lock_guard lock(mu);
    workers.insert(w);
    threads.insert(std::this_thread::get_id());
    return {};
  };
  {
    auto p = StartProxy(doc, 2, opts);
    REQUIRE(p->error == "");
    CHECK(workers == std::set<int>{0, 1});
    CHECK(threads.size() == 2);
    CHECK(threads.count(std::this_thread::get_id()) == 0);
    CHECK(Get(p->Port("tcp"), "h", "/").Header("x-upstream") == "up");
  }
  opts.on_worker_start = [](int w) -> sluice::Result<void> {
    if (w == 1)
      return sluice::Fail("setns: no such namespace");
    return {};
  };
  auto p = StartProxy(doc, 2, opts);
  CHECK(p->error.find("starting a worker") != std::string::npos);
  CHECK(p->error.find("setns: no such namespace") != std::string::npos);
}
