// proxy-config against a real gateway: the local control plane (`sluicectl xds serve`)
// on a unix socket, sluice-agent --role gateway in a network namespace of its own (as in
// a gateway pod) with its admin on a unix socket, and sluicectl asking that socket —
// directly and through a local-cluster state file.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "sluice/inspect/admin_client.h"
#include "sluicectl_run.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/sluice-inspect-live-XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// A child process, output to `log`, stopped with SIGTERM (then SIGKILL) when destroyed.
class Child {
 public:
  Child(const std::vector<std::string>& argv, const fs::path& log) {
    pid_ = fork();
    if (pid_ == 0) {
      int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      dup2(fd, 1);
      dup2(fd, 2);
      int null = open("/dev/null", O_RDONLY);
      dup2(null, 0);
      std::vector<char*> args;
      for (const auto& a : argv)
        args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
  }
  ~Child() {
    if (pid_ <= 0)
      return;
    kill(pid_, SIGTERM);
    for (int i = 0; i < 50; ++i) {
      if (waitpid(pid_, nullptr, WNOHANG) == pid_)
        return;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }

 private:
  pid_t pid_ = -1;
};

using sluice::testing::Run;
using sluice::testing::Sluicectl;

std::string ReadAll(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

TEST_CASE("proxy-config asks a real gateway agent on its unix: admin socket") {
  TempDir dir;
  const fs::path cfg = dir.path() / "config";
  fs::create_directories(cfg);
  // istio-system's gateways: the demo profile's (agent/local/profiles).
  for (const char* part : {"samples", "istio-system", "02-ingress"}) {
    const fs::path src = std::string(part) == "istio-system"
                             ? fs::path(SLUICE_EXAMPLES).parent_path() / "agent/local/profiles"
                             : fs::path(SLUICE_EXAMPLES) / part;
    for (const auto& e : fs::directory_iterator(src))
      fs::copy_file(e.path(), cfg / (std::string(part) + "-" + e.path().filename().string()));
  }
  const std::string xds = "unix:" + (dir.path() / "xds.sock").string();
  const fs::path admin_sock = dir.path() / "admin.sock";
  const std::string admin = "unix:" + admin_sock.string();

  Child cp({SLUICECTL_PATH, "xds", "serve", "--config-dir", cfg.string(), "--listen", xds},
           dir.path() / "xds.log");
  // The gateway pod: a network namespace with nothing in it; the xDS and admin sockets
  // are reached through the filesystem, as the local cluster's gateways are.
  Child gw(
      {"/usr/bin/unshare", "-n", SLUICE_AGENT_PATH, "--role", "gateway", "--xds-address", xds,
       "--pod-name", "istio-ingressgateway-5f8c7-abcde", "--pod-namespace", "istio-system",
       "--pod-ip", "10.244.0.9", "--pod-labels", "app=istio-ingressgateway,istio=ingressgateway",
       "--admin-address", admin, "--access-log", (dir.path() / "gw.log").string()},
      dir.path() / "agent.log");

  bool ready = false;
  for (int i = 0; i < 150 && !ready; ++i) {
    ready = sluice::inspect::AdminGet(admin, "/ready", 1000).has_value();
    if (!ready)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  INFO("xds serve: " << ReadAll(dir.path() / "xds.log"));
  INFO("agent: " << ReadAll(dir.path() / "agent.log"));
  REQUIRE(ready);

  Run l = Sluicectl({"proxy-config", "listener", "--admin", admin});
  REQUIRE(l.rc == 0);
  CHECK(l.out.find("0.0.0.0   8080 ALL   Route: http.8080") != std::string::npos);

  Run r = Sluicectl({"proxy-config", "route", "--admin", admin, "-o", "json"});
  REQUIRE(r.rc == 0);
  auto routes = json::parse(r.out);
  REQUIRE(routes.size() == 1);
  CHECK(routes[0]["name"] == "http.8080");
  CHECK(routes[0]["virtualHosts"][0]["domains"][0] == "httpbin.example.com");

  // Through the state file, the way `proxy-config deploy/istio-ingressgateway` finds it.
  std::ofstream(dir.path() / "state.json") << json{
      {"version", 1},
      {"agent_admin", "127.0.0.1:1"},
      {"config_dir", cfg.string()},
      {"pods",
       {{{"namespace", "istio-system"},
         {"name", "istio-ingressgateway-5f8c7-abcde"},
         {"owner", "Deployment/istio-ingressgateway"},
         {"admin", admin}}}}}.dump();
  Run c = Sluicectl({"proxy-config", "cluster", "deploy/istio-ingressgateway", "-n", "istio-system",
                     "--state-dir", dir.path().string(), "--fqdn",
                     "httpbin.default.svc.cluster.local"});
  REQUIRE(c.rc == 0);
  CHECK(c.out.find("httpbin.default.svc.cluster.local     8000     -          outbound      EDS") !=
        std::string::npos);
}
