// A DNS cluster follows its name: the real sluice-proxy binary runs in a private mount
// namespace whose /etc/hosts the test owns (so getaddrinfo, unchanged, answers from it
// and nothing asks a DNS server), with a STRICT_DNS cluster whose name moves from
// 127.0.0.2 to 127.0.0.3. Requests follow within a few refresh periods, without a
// reload. Needs root (a mount namespace): labelled kernel.
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>

#include "harness.h"
#include "test_upstream.h"

using namespace sluice::testing;

#ifndef SLUICE_PROXY_BIN
#define SLUICE_PROXY_BIN ""
#endif

namespace {

// Rewrites the file in place: a bind mount keeps pointing at the same inode.
void WriteInPlace(const std::string& path, const std::string& text) {
  int fd = open(path.c_str(), O_WRONLY | O_TRUNC);
  REQUIRE(fd >= 0);
  REQUIRE(write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()));
  close(fd);
}

}  // namespace

TEST_CASE("sluice-proxy: a STRICT_DNS cluster follows its name when the answer changes",
          "[dns][proxy][binary]") {
  REQUIRE(geteuid() == 0);
  // Same port, two loopback addresses: only the name's answer tells them apart.
  TestUpstream first({.name = "first", .address = "127.0.0.2", .record = false});
  TestUpstream second(
      {.name = "second", .port = first.port(), .address = "127.0.0.3", .record = false});
  TempDir dir;
  const std::string hosts = dir.path() + "/hosts", cfg = dir.path() + "/config.json",
                    err = dir.path() + "/stderr";
  const std::string name = "backend.sluice.test";
  std::ofstream(hosts) << "127.0.0.1 localhost\n127.0.0.2 " << name << "\n";
  const uint16_t port = FreeLoopbackPort();
  Json cluster = {
      {"name", "backend"},
      {"type", "STRICT_DNS"},
      {"connect_timeout", "1s"},
      {"dns_refresh_rate", "0.2s"},
      {"load_assignment",
       {{"cluster_name", "backend"},
        {"endpoints",
         Json::array(
             {{{"lb_endpoints", Json::array({{{"endpoint",
                                               {{"address",
                                                 {{"socket_address",
                                                   {{"address", name},
                                                    {"port_value", first.port()}}}}}}}}})}}})}}}};
  Json doc = {
      {"listeners", Json::array({HttpListener(
                        "http",
                        RouteConfig("r", Json::array({{{"name", "all"},
                                                       {"match", {{"prefix", "/"}}},
                                                       {"route", {{"cluster", "backend"}}}}})),
                        false)})},
      {"clusters", Json::array({cluster})}};
  doc["listeners"][0]["address"]["socket_address"]["port_value"] = port;
  std::ofstream(cfg) << doc.dump();

  ProxyProcess proxy(SLUICE_PROXY_BIN, cfg, err, [&] {
    if (unshare(CLONE_NEWNS) != 0 || mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) ||
        mount(hosts.c_str(), "/etc/hosts", nullptr, MS_BIND, nullptr) != 0) {
      perror("private /etc/hosts");
      _exit(126);
    }
  });
  REQUIRE(proxy.pid() > 0);

  REQUIRE(WaitFor([&] { return Get(port, "h", "/").Header("x-upstream") == "first"; }, 3000));
  CHECK(second.count() == 0);
  // The name moves: within a few 200 ms refreshes every request goes to the new address.
  WriteInPlace(hosts, "127.0.0.1 localhost\n127.0.0.3 " + name + "\n");
  CHECK(WaitFor([&] { return Get(port, "h", "/").Header("x-upstream") == "second"; }, 3000));
  const uint64_t before = first.count();
  for (int i = 0; i < 10; ++i)
    CHECK(Get(port, "h", "/").Header("x-upstream") == "second");
  CHECK(first.count() == before);
  // The name goes away: its endpoints go with it (503, no healthy upstream).
  WriteInPlace(hosts, "127.0.0.1 localhost\n");
  CHECK(WaitFor([&] { return Get(port, "h", "/").status == 503; }, 3000));
}
