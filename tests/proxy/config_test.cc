// The Envoy → runtime compiler (errors name the resource and field), load-balancing
// policies, and live config updates (new routes apply, sockets survive, bad config is
// refused and the running one keeps serving).
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <set>

#include "harness.h"
#include "test_upstream.h"

using namespace sluice::testing;
using sluice::proxy::IoBackend;

namespace {

// Brace-initialised single elements come out as the element itself: make arrays.
Json Arr(const Json& j) {
  return j.is_array() ? j : Json::array({j});
}

Json Doc(const Json& routes, const Json& clusters, bool access_log = false) {
  return {{"listeners",
           Json::array({HttpListener("http", RouteConfig("r80", Arr(routes)), access_log)})},
          {"clusters", Arr(clusters)}};
}

// The config's error, or (Envoy's per-resource acceptance) the reasons of the listeners
// and clusters it refused.
std::string CompileError(const Json& doc) {
  auto c = CompileJson(doc);
  if (!c)
    return c.error().message;
  std::string refused;
  for (const auto& r : (*c)->refused)
    refused += (refused.empty() ? "" : "; ") + r.reason;
  return refused;
}

}  // namespace

TEST_CASE("compile errors name the resource and the field", "[config]") {
  Json bad_regex = Doc({{{"name", "re"},
                         {"match", {{"safe_regex", {{"regex", "(unclosed"}}}}},
                         {"route", {{"cluster", "c"}}}}},
                       {StaticCluster("c", {1})});
  std::string e = CompileError(bad_regex);
  INFO(e);
  CHECK(e.find("virtual host vh") != std::string::npos);
  CHECK(e.find("route re") != std::string::npos);
  CHECK(e.find("safe_regex") != std::string::npos);

  Json bad_retry =
      Doc({{{"name", "rt"},
            {"match", {{"prefix", "/"}}},
            {"route", {{"cluster", "c"}, {"retry_policy", {{"retry_on", "5xx,sometimes"}}}}}}},
          {StaticCluster("c", {1})});
  e = CompileError(bad_retry);
  CHECK(e.find("route rt") != std::string::npos);
  CHECK(e.find("retry_on") != std::string::npos);
  CHECK(e.find("sometimes") != std::string::npos);

  Json zero =
      Doc({{{"name", "w"},
            {"match", {{"prefix", "/"}}},
            {"route", {{"weighted_clusters", {{"clusters", {{{"name", "c"}, {"weight", 0}}}}}}}}}},
          {StaticCluster("c", {1})});
  CHECK(CompileError(zero).find("weights sum to 0") != std::string::npos);

  Json cl = StaticCluster("bad-lb", {1});
  cl["lb_policy"] = "CLUSTER_PROVIDED";
  e = CompileError(Doc(Json::array(), {cl}));
  CHECK(e.find("cluster bad-lb") != std::string::npos);
  CHECK(e.find("lb_policy") != std::string::npos);

  Json mirror =
      Doc({{{"name", "m"},
            {"match", {{"prefix", "/"}}},
            {"route", {{"cluster", "c"}, {"request_mirror_policies", {{{"cluster", "nope"}}}}}}}},
          {StaticCluster("c", {1})});
  CHECK(CompileError(mirror).find("unknown cluster nope") != std::string::npos);

  auto rs = sluice::proxy::ParseResourceSetJson(
      R"({"clusters": [{"name": "x", "lb_policy": "FASTEST"}]})");
  REQUIRE_FALSE(rs);
  CHECK(rs.error().message.find("clusters[0]") != std::string::npos);
}

TEST_CASE("an unknown cluster answers 503 NC, an empty cluster 503 UH", "[config][proxy]") {
  Json c = StaticCluster("empty", {});
  Json doc =
      Doc({{{"name", "nc"}, {"match", {{"prefix", "/nc"}}}, {"route", {{"cluster", "missing"}}}},
           {{"name", "uh"}, {"match", {{"prefix", "/uh"}}}, {"route", {{"cluster", "empty"}}}}},
          {c}, true);
  auto p = StartProxy(doc);
  REQUIRE(p->error == "");
  Resp r = Get(p->Port(), "h", "/nc");
  CHECK(r.status == 503);
  r = Get(p->Port(), "h", "/uh");
  CHECK(r.status == 503);
  CHECK(r.body == "no healthy upstream");
  auto lines = p->LogLines(2);
  REQUIRE(lines.size() == 2);
  CHECK(lines[0].find("\" 503 NC cluster_not_found ") != std::string::npos);
  CHECK(lines[1].find("\" 503 UH no_healthy_upstream ") != std::string::npos);
}

TEST_CASE(
    "load balancing: round robin, least request, random, ring hash and maglev by "
    "header/cookie/source IP",
    "[config][lb][proxy]") {
  std::vector<std::unique_ptr<TestUpstream>> ups;
  std::vector<uint16_t> ports;
  for (int i = 0; i < 3; ++i) {
    ups.push_back(std::make_unique<TestUpstream>(
        TestUpstream::Options{.name = "e" + std::to_string(i), .record = false}));
    ports.push_back(ups.back()->port());
  }
  auto route = [](const std::string& name, const Json& hash) {
    Json r = {{"name", name}, {"match", {{"prefix", "/" + name}}}, {"route", {{"cluster", name}}}};
    if (!hash.is_null())
      r["route"]["hash_policy"] = hash;
    return r;
  };
  Json routes = {route("rr", nullptr),
                 route("lr", nullptr),
                 route("rand", nullptr),
                 route("ring", Json::array({{{"header", {{"header_name", "x-user"}}}}})),
                 route("maglev", Json::array({{{"cookie", {{"name", "session"}}}}})),
                 route("srcip", Json::array({{{"connection_properties", {{"source_ip", true}}}}}))};
  Json clusters = {
      StaticCluster("rr", ports, "ROUND_ROBIN"), StaticCluster("lr", ports, "LEAST_REQUEST"),
      StaticCluster("rand", ports, "RANDOM"),    StaticCluster("ring", ports, "RING_HASH"),
      StaticCluster("maglev", ports, "MAGLEV"),  StaticCluster("srcip", ports, "RING_HASH")};
  auto p = StartProxy(Doc(routes, clusters));
  REQUIRE(p->error == "");
  Client c(p->Port());
  auto spread = [&](const std::string& path, const std::string& extra, int n) {
    std::map<std::string, int> seen;
    for (int i = 0; i < n; ++i)
      seen[c.Get("h", path, extra).Header("x-upstream")]++;
    return seen;
  };
  auto rr = spread("/rr", "", 30);
  CHECK(rr.size() == 3);
  CHECK(rr["e0"] == 10);
  CHECK(rr["e1"] == 10);
  CHECK(rr["e2"] == 10);
  CHECK(spread("/lr", "", 60).size() == 3);
  CHECK(spread("/rand", "", 60).size() == 3);
  // Same key, same endpoint; different keys spread.
  std::set<std::string> by_user;
  for (int u = 0; u < 20; ++u) {
    auto s = spread("/ring", "x-user: user" + std::to_string(u) + "\r\n", 5);
    CHECK(s.size() == 1);
    by_user.insert(s.begin()->first);
  }
  CHECK(by_user.size() >= 2);
  std::set<std::string> by_cookie;
  for (int u = 0; u < 20; ++u) {
    auto s = spread("/maglev", "cookie: a=b; session=s" + std::to_string(u) + "\r\n", 5);
    CHECK(s.size() == 1);
    by_cookie.insert(s.begin()->first);
  }
  CHECK(by_cookie.size() >= 2);
  CHECK(spread("/srcip", "", 10).size() == 1);
}

TEST_CASE("config update: new routes apply, the socket survives, bad config is refused",
          "[config][proxy]") {
  TestUpstream a({.name = "a", .record = false}), b({.name = "b", .record = false});
  auto doc_for = [&](const std::string& cluster) {
    return Doc({{{"name", "all"}, {"match", {{"prefix", "/"}}}, {"route", {{"cluster", cluster}}}}},
               {StaticCluster("a", {a.port()}), StaticCluster("b", {b.port()})});
  };
  auto p = StartProxy(doc_for("a"), 2);
  REQUIRE(p->error == "");
  uint16_t port = p->Port();
  Client keep(port);  // a keep-alive connection across the update
  CHECK(keep.Get("h", "/").Header("x-upstream") == "a");
  auto next = CompileJson(doc_for("b"));
  REQUIRE(next);
  REQUIRE(p->proxy->Update(*next));
  CHECK(p->Port() == port);
  CHECK(WaitFor([&] { return Get(port, "h", "/").Header("x-upstream") == "b"; }));
  CHECK(keep.Get("h", "/").Header("x-upstream") == "b");  // picked up between requests
  // A broken document never becomes a config: the caller keeps the running one.
  Json broken = doc_for("b");
  broken["routes"] = Json::array({{{"name", 5}}});
  CHECK_FALSE(CompileJson(broken));
  CHECK(Get(port, "h", "/").Header("x-upstream") == "b");
}

TEST_CASE("workers use io_uring by default, epoll when the options or SLUICE_PROXY_IO ask",
          "[config][proxy]") {
  TestUpstream a({.name = "a", .record = false});
  Json doc = Doc({{{"name", "all"}, {"match", {{"prefix", "/"}}}, {"route", {{"cluster", "a"}}}}},
                 {StaticCluster("a", {a.port()})});
  // This suite also runs with SLUICE_PROXY_IO=epoll (its second ctest entry); io_uring
  // must be there otherwise (Linux 6.1+, as in CI): a silent fallback would leave the
  // io_uring backend untested.
  const char* env = std::getenv("SLUICE_PROXY_IO");
  const bool env_epoll = env && std::string(env) == "epoll";
  auto check = [&](IoBackend asked, IoBackend expected) {
    sluice::proxy::ProxyOptions o;
    o.io = asked;
    auto p = StartProxy(doc, 1, o);
    REQUIRE(p->error == "");
    INFO("asked " << sluice::proxy::IoBackendName(asked)
                  << ", fallback reason: " << p->proxy->io_fallback_reason());
    CHECK(p->proxy->io_backend() == expected);
    CHECK(Get(p->Port(), "h", "/").status == 200);
  };
  check(IoBackend::kAuto, env_epoll ? IoBackend::kEpoll : IoBackend::kUring);
  check(IoBackend::kEpoll, IoBackend::kEpoll);  // explicit options win over the variable
  check(IoBackend::kUring, IoBackend::kUring);
}

TEST_CASE("Stop() closes the listening socket and every connection before it returns",
          "[config][proxy]") {
  TestUpstream a({.name = "a", .record = false});
  auto p = StartProxy(
      Doc({{{"name", "all"}, {"match", {{"prefix", "/"}}}, {"route", {{"cluster", "a"}}}}},
          {StaticCluster("a", {a.port()})}),
      2);
  REQUIRE(p->error == "");
  uint16_t port = p->Port();
  Client keep(port);
  CHECK(keep.Get("h", "/").status == 200);
  p->proxy->Stop();
  // Nothing may linger: a socket the kernel still holds (an io_uring torn down after the
  // process moved on) would take new connections nobody accepts.
  int fd = Connect(port);
  CHECK(fd < 0);
  if (fd >= 0)
    close(fd);
  char c;
  pollfd pfd{keep.fd(), POLLIN, 0};
  REQUIRE(poll(&pfd, 1, 0) == 1);
  CHECK(recv(keep.fd(), &c, 1, MSG_DONTWAIT) == 0);  // the kept connection got its FIN
}

TEST_CASE("listener hooks: a custom socket opener is used for every worker", "[config][proxy]") {
  TestUpstream a({.name = "a", .record = false});
  int opened = 0;
  sluice::proxy::ProxyOptions opts;
  opts.open_listener = [&](const sluice::proxy::ListenerConfig& l,
                           uint16_t port) -> sluice::Result<int> {
    ++opened;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    inet_pton(AF_INET, l.address.c_str(), &sa.sin_addr);
    if (bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0 || listen(fd, 64) != 0) {
      close(fd);
      return sluice::FailErrno("bind", errno);
    }
    return fd;
  };
  auto p = StartProxy(
      Doc({{{"name", "all"}, {"match", {{"prefix", "/"}}}, {"route", {{"cluster", "a"}}}}},
          {StaticCluster("a", {a.port()})}),
      2, opts);
  REQUIRE(p->error == "");
  CHECK(opened == 2);
  CHECK(Get(p->Port(), "h", "/").status == 200);
}

TEST_CASE("an optional listener that cannot open is left closed, any other fails the config",
          "[config][proxy]") {
  TestUpstream up({.name = "up", .record = false});
  auto doc_with = [&]() {
    Json doc =
        Doc({{{"name", "all"}, {"match", {{"prefix", "/"}}}, {"route", {{"cluster", "up"}}}}},
            {StaticCluster("up", {up.port()})});
    Json extra = doc["listeners"][0];
    extra["name"] = "nowhere";
    extra["address"]["socket_address"]["address"] = "192.0.2.1";  // on no interface here
    doc["listeners"].push_back(extra);
    return doc;
  };
  auto cfg = CompileJson(doc_with());
  REQUIRE(cfg);
  auto mutable_cfg = std::make_shared<sluice::proxy::ProxyConfig>(**cfg);
  mutable_cfg->listeners.back().optional = true;
  sluice::proxy::ProxyOptions quiet;
  quiet.access_log_path = "/dev/null";
  auto p = sluice::proxy::Proxy::Start(mutable_cfg, quiet);
  REQUIRE(p);
  CHECK((*p)->Port("nowhere") == 0);
  const uint16_t port = (*p)->Port(mutable_cfg->listeners.front().name);
  REQUIRE(port != 0);
  CHECK(Get(port, "h", "/").Header("x-upstream") == "up");  // the rest serves
  (*p)->Stop();

  auto strict = sluice::proxy::Proxy::Start(*cfg, quiet);
  REQUIRE_FALSE(strict);
  CHECK_THAT(strict.error().message, Catch::Contains("listener nowhere: bind 192.0.2.1"));
}

TEST_CASE("ORIGINAL_DST: the original_dst hook decides where HTTP requests go", "[config][proxy]") {
  TestUpstream target({.name = "target", .record = false});
  Json od_cluster = {{"name", "PassthroughCluster"},
                     {"type", "ORIGINAL_DST"},
                     {"lb_policy", "CLUSTER_PROVIDED"},
                     {"connect_timeout", "1s"}};
  Json http = HttpListener(
      "http",
      RouteConfig("r", Json::array({{{"name", "all"},
                                     {"match", {{"prefix", "/"}}},
                                     {"route", {{"cluster", "PassthroughCluster"}}}}})),
      true);
  http["listener_filters"] =
      Json::array({{{"name", "envoy.filters.listener.original_dst"},
                    {"typed_config",
                     {{"@type",
                       "type.googleapis.com/"
                       "envoy.extensions.filters.listener.original_dst.v3.OriginalDst"}}}}});
  Json doc = {{"listeners", Json::array({http})}, {"clusters", Json::array({od_cluster})}};
  sluice::proxy::ProxyOptions opts;
  uint16_t target_port = target.port();
  std::atomic<int> asked{0};
  opts.original_dst = [&](int, int) -> std::optional<sockaddr_storage> {
    ++asked;
    sockaddr_storage ss{};
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(target_port);
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return ss;
  };
  auto p = StartProxy(doc, 1, opts);
  REQUIRE(p->error == "");
  Resp r = Get(p->Port(), "h", "/");
  CHECK(r.status == 200);
  CHECK(r.Header("x-upstream") == "target");
  CHECK(asked.load() == 1);
  auto lines = p->LogLines(1);
  REQUIRE(lines.size() == 1);
  // UPSTREAM_HOST and DOWNSTREAM_LOCAL_ADDRESS are the original destination.
  std::string addr = "127.0.0.1:" + std::to_string(target_port);
  CHECK(lines[0].find("\"" + addr + "\" PassthroughCluster ") != std::string::npos);
  CHECK(lines[0].find(" " + addr + " 127.0.0.1:") != std::string::npos);
}

TEST_CASE("endpoint weights: round robin and random honour load_balancing_weight",
          "[config][lb][proxy]") {
  TestUpstream light({.name = "light", .record = false}), heavy({.name = "heavy", .record = false});
  auto cluster = [&](const std::string& name, const std::string& lb) {
    Json c = StaticCluster(name, {light.port(), heavy.port()}, lb);
    c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["load_balancing_weight"] = 1;
    c["load_assignment"]["endpoints"][0]["lb_endpoints"][1]["load_balancing_weight"] = 3;
    return c;
  };
  Json routes = Json::array(
      {{{"name", "rr"}, {"match", {{"prefix", "/rr"}}}, {"route", {{"cluster", "rr"}}}},
       {{"name", "rand"}, {"match", {{"prefix", "/rand"}}}, {"route", {{"cluster", "rand"}}}}});
  auto p = StartProxy(
      Doc(routes, Json::array({cluster("rr", "ROUND_ROBIN"), cluster("rand", "RANDOM")})));
  REQUIRE(p->error == "");
  Client c(p->Port());
  int heavy_rr = 0, heavy_rand = 0;
  for (int i = 0; i < 400; ++i)
    heavy_rr += c.Get("h", "/rr").Header("x-upstream") == "heavy";
  for (int i = 0; i < 1000; ++i)
    heavy_rand += c.Get("h", "/rand").Header("x-upstream") == "heavy";
  CHECK(heavy_rr == 300);  // exactly 3 of every 4
  CHECK(heavy_rand > 700);
  CHECK(heavy_rand < 800);
}

#ifndef SLUICE_PROXY_BIN
#define SLUICE_PROXY_BIN ""
#endif

TEST_CASE(
    "sluice-proxy binary: SIGHUP reloads, a bad file is reported and the running config stays",
    "[config][proxy][binary]") {
  TestUpstream a({.name = "a", .record = false}), b({.name = "b", .record = false});
  TempDir dir;
  std::string cfg = dir.path() + "/config.json", err = dir.path() + "/stderr";
  const uint16_t port = FreeLoopbackPort();  // a fixed port for the binary
  auto write = [&](const Json& doc) {
    std::ofstream f(cfg);
    f << doc.dump();
  };
  auto doc_for = [&](const std::string& cluster) {
    Json d = Doc(
        Json::array(
            {{{"name", "all"}, {"match", {{"prefix", "/"}}}, {"route", {{"cluster", cluster}}}}}),
        Json::array({StaticCluster("a", {a.port()}), StaticCluster("b", {b.port()})}));
    d["listeners"][0]["address"]["socket_address"]["port_value"] = port;
    return d;
  };
  write(doc_for("a"));
  ProxyProcess proxy(SLUICE_PROXY_BIN, cfg, err);
  const pid_t pid = proxy.pid();
  REQUIRE(pid > 0);
  REQUIRE(WaitFor([&] { return Get(port, "h", "/").Header("x-upstream") == "a"; }));
  Json bad = doc_for("b");
  bad["routes"] = Json::array(
      {{{"name", "r"}, {"virtual_hosts", {{{"name", "v"}, {"domains", Json::array()}}}}}});
  write(bad);
  kill(pid, SIGHUP);
  CHECK(WaitFor([&] {
    std::ifstream f(err);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str().find("reload rejected") != std::string::npos &&
           ss.str().find("domains is empty") != std::string::npos;
  }));
  CHECK(Get(port, "h", "/").Header("x-upstream") == "a");
  write(doc_for("b"));
  kill(pid, SIGHUP);
  CHECK(WaitFor([&] { return Get(port, "h", "/").Header("x-upstream") == "b"; }));
}

TEST_CASE(
    "Drain: the listener closes, a request in flight finishes with connection: close, "
    "idle connections close",
    "[config][proxy][drain]") {
  TestUpstream a({.name = "a", .record = false});
  auto p = StartProxy(
      Doc({{{"name", "all"}, {"match", {{"prefix", "/"}}}, {"route", {{"cluster", "a"}}}}},
          {StaticCluster("a", {a.port()})}));
  REQUIRE(p->error == "");
  const uint16_t port = p->Port();
  Client idle(port);
  CHECK(idle.Get("h", "/").status == 200);  // a keep-alive connection, now idle
  Client busy(port);
  std::string slow = "GET / HTTP/1.1\r\nhost: h\r\nx-delay-ms: 400\r\n\r\n";
  REQUIRE(write(busy.fd(), slow.data(), slow.size()) == static_cast<ssize_t>(slow.size()));
  usleep(100 * 1000);  // the request is at the upstream
  CHECK(p->proxy->stats().active_cx.load() == 2);

  REQUIRE(p->proxy->Drain());
  // New connections are refused once the worker has let go of the socket.
  CHECK(WaitFor([&] {
    int fd = Connect(port);
    bool refused = fd < 0;
    if (fd >= 0)
      close(fd);
    return refused;
  }));
  // The request in flight still gets its answer...
  std::string buf;
  auto r = ReadResponses(busy.fd(), buf, 1, 3000);
  REQUIRE(r.size() == 1);
  CHECK(r[0].status == 200);
  // ...telling the client not to send another on this connection, which then closes.
  CHECK(r[0].Header("connection") == "close");
  CHECK(read(busy.fd(), buf.data(), 1) == 0);
  // Every connection is closed by the proxy soon after.
  CHECK(WaitFor([&] { return p->proxy->stats().active_cx.load() == 0; }));
  char c;
  CHECK(read(idle.fd(), &c, 1) == 0);  // EOF from the proxy
}
