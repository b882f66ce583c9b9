// DnsCache and DNS clusters: answers come from the cache without holding up a compile,
// are refreshed at the cluster's dns_refresh_rate, and a change is announced. The
// resolver is injected here (these tests must not depend on the machine's DNS); the
// kernel-labelled dns_refresh_test runs the real getaddrinfo through /etc/hosts.
#include <arpa/inet.h>
#include <netinet/in.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <mutex>
#include <thread>

#include "harness.h"
#include "sluice/proxy/dns.h"

using namespace sluice::testing;
using sluice::proxy::DnsCache;
using namespace std::chrono_literals;

namespace {

sockaddr_storage V4(const char* ip) {
  sockaddr_storage ss{};
  auto* a = reinterpret_cast<sockaddr_in*>(&ss);
  a->sin_family = AF_INET;
  inet_pton(AF_INET, ip, &a->sin_addr);
  return ss;
}

// A resolver whose answers the test sets; it counts the questions.
struct FakeDns {
  std::mutex mu;
  std::map<std::string, std::vector<std::string>> answers;
  std::chrono::milliseconds delay{0};
  std::atomic<int> asked{0};
  DnsCache::Resolve Fn() {
    return [this](const std::string& host) -> sluice::Result<std::vector<sockaddr_storage>> {
      asked++;
      std::chrono::milliseconds d;
      {
        std::lock_guard lock(mu);
        d = delay;
      }
      std::this_thread::sleep_for(d);
      std::lock_guard lock(mu);
      auto it = answers.find(host);
      if (it == answers.end())
        return sluice::Fail("cannot resolve \"" + host + "\": Name or service not known");
      std::vector<sockaddr_storage> out;
      for (const auto& ip : it->second)
        out.push_back(V4(ip.c_str()));
      return out;
    };
  }
  void Set(const std::string& host, std::vector<std::string> ips) {
    std::lock_guard lock(mu);
    answers[host] = std::move(ips);
  }
};

std::string Ip(const sockaddr_storage& ss) {
  char buf[INET_ADDRSTRLEN] = "";
  inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&ss)->sin_addr, buf, sizeof(buf));
  return buf;
}

Json DnsCluster(const std::string& name, const std::string& type, const std::string& host, int port,
                const std::string& refresh = "5s") {
  return {{"name", name},
          {"type", type},
          {"connect_timeout", "1s"},
          {"dns_refresh_rate", refresh},
          {"load_assignment",
           {{"cluster_name", name},
            {"endpoints",
             Json::array(
                 {{{"lb_endpoints",
                    Json::array({{{"endpoint",
                                   {{"address",
                                     {{"socket_address",
                                       {{"address", host}, {"port_value", port}}}}}}}}})}}})}}}};
}

}  // namespace

TEST_CASE("DnsCache: a first answer is waited for briefly, then refreshed and announced", "[dns]") {
  FakeDns fake;
  fake.Set("svc.example", {"10.0.0.1"});
  DnsCache cache({.resolve = fake.Fn(), .first_wait = 500ms});
  std::atomic<int> changes{0};
  cache.Subscribe([&] { changes++; });

  auto a = cache.Lookup("svc.example", 100ms);
  REQUIRE(a.addrs.size() == 1);
  CHECK(Ip(a.addrs[0]) == "10.0.0.1");
  // Asked again within its refresh: from the cache, no new question.
  const int asked = fake.asked.load();
  CHECK(Ip(cache.Lookup("svc.example", 100ms).addrs.at(0)) == "10.0.0.1");
  CHECK(fake.asked.load() == asked);

  // Unchanged answers are not news; a changed one is, within about the refresh.
  std::this_thread::sleep_for(350ms);
  CHECK(fake.asked.load() >= asked + 2);  // refreshed every 100 ms
  CHECK(changes.load() == 0);
  fake.Set("svc.example", {"10.0.0.2", "10.0.0.3"});
  REQUIRE(WaitFor([&] { return changes.load() == 1; }, 1000));
  auto b = cache.Lookup("svc.example", 100ms);
  REQUIRE(b.addrs.size() == 2);
  CHECK(Ip(b.addrs[0]) == "10.0.0.2");
  CHECK(Ip(b.addrs[1]) == "10.0.0.3");

  // A failed lookup keeps the last answer (Envoy keeps a DNS cluster's hosts) and is no news.
  {
    std::lock_guard lock(fake.mu);
    fake.answers.erase("svc.example");
  }
  const int seen = fake.asked.load();
  REQUIRE(WaitFor([&] { return fake.asked.load() >= seen + 2; }, 1000));
  auto kept = cache.Lookup("svc.example", 100ms);
  CHECK(kept.addrs.size() == 2);
  CHECK_THAT(kept.error, Catch::Contains("cannot resolve"));
  CHECK(changes.load() == 1);

  // A name that does not resolve: no addresses, the resolver's reason.
  auto c = cache.Lookup("nowhere.example", 100ms);
  CHECK(c.addrs.empty());
  CHECK_THAT(c.error, Catch::Contains("cannot resolve \"nowhere.example\""));
}

TEST_CASE("DnsCache: a slow resolver does not hold up the caller, and its late answer is announced",
          "[dns]") {
  FakeDns fake;
  fake.Set("slow.example", {"10.0.0.9"});
  fake.delay = 600ms;
  DnsCache cache({.resolve = fake.Fn(), .first_wait = 100ms});
  std::atomic<int> changes{0};
  cache.Subscribe([&] { changes++; });
  const auto start = std::chrono::steady_clock::now();
  auto a = cache.Lookup("slow.example", 5000ms);
  const auto waited = std::chrono::steady_clock::now() - start;
  CHECK(a.addrs.empty());
  CHECK(a.error.empty());  // still resolving, not failed
  CHECK(waited < 400ms);
  REQUIRE(WaitFor([&] { return changes.load() == 1; }, 2000));
  CHECK(Ip(cache.Lookup("slow.example", 5000ms).addrs.at(0)) == "10.0.0.9");
}

TEST_CASE(
    "DNS clusters: STRICT_DNS has a host per address, LOGICAL_DNS the first, a pending "
    "name leaves its cluster empty with a warning",
    "[dns][config]") {
  FakeDns fake;
  fake.Set("multi.example", {"127.0.0.1", "127.0.0.2"});
  DnsCache cache({.resolve = fake.Fn(), .first_wait = 500ms});
  Json doc = {{"clusters", Json::array({DnsCluster("strict", "STRICT_DNS", "multi.example", 8080),
                                        DnsCluster("logical", "LOGICAL_DNS", "multi.example", 8080),
                                        DnsCluster("gone", "STRICT_DNS", "gone.example", 80)})}};
  auto rs = sluice::proxy::ParseResourceSetJson(doc.dump());
  REQUIRE(rs);
  auto cfg = sluice::proxy::Compile(*rs, &cache);
  REQUIRE(cfg);
  const auto* strict = (*cfg)->FindCluster("strict");
  REQUIRE(strict);
  REQUIRE(strict->endpoints.size() == 2);
  CHECK(strict->endpoints[0]->address == "127.0.0.1:8080");
  CHECK(strict->endpoints[1]->address == "127.0.0.2:8080");
  const auto* logical = (*cfg)->FindCluster("logical");
  REQUIRE(logical);
  REQUIRE(logical->endpoints.size() == 1);
  CHECK(logical->endpoints[0]->address == "127.0.0.1:8080");
  const auto* gone = (*cfg)->FindCluster("gone");
  REQUIRE(gone);
  CHECK(gone->endpoints.empty());
  REQUIRE((*cfg)->warnings.size() == 1);
  CHECK_THAT((*cfg)->warnings[0], Catch::Contains("cluster gone") &&
                                      Catch::Contains("cannot resolve \"gone.example\"") &&
                                      Catch::Contains("the endpoint is left out"));
}
