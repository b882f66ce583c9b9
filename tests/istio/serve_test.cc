// `sluicectl xds serve` as a real process, consumed by the agent's real ADS client over a
// real gRPC stream on loopback: initial sync for a sidecar and a gateway node, a re-push
// when a file changes, and an invalid file reported while its last good version stays.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "sluice/config/store.h"
#include "sluice/xds/ads_client.h"
#include "sluice/xds/node.h"

namespace fs = std::filesystem;
using namespace std::chrono_literals;
namespace sx = sluice::xds;

namespace {

const fs::path kTestdata = SLUICE_ISTIO_TESTDATA;
const std::string kHello = "helloworld.default.svc.cluster.local";

template <class F>
bool WaitFor(F pred, std::chrono::milliseconds limit = 20s) {  // generous: shared CI cores
  auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (pred())
      return true;
    std::this_thread::sleep_for(10ms);
  }
  return pred();
}

struct TempDir {
  fs::path path;
  TempDir() {
    char tmpl[] = "/tmp/sluice-serve-test-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  // Write to a temporary name and rename, as editors and kubectl-style tools do.
  void Write(const std::string& name, const std::string& text) const {
    auto tmp = path / ("." + name + ".tmp");
    std::ofstream(tmp) << text;
    fs::rename(tmp, path / name);
  }
};

std::string ReadFile(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The server process; SIGTERM and reaped on scope exit, whatever happened.
class ServeProcess {
 public:
  ServeProcess(const fs::path& dir, const fs::path& stderr_file,
               const std::string& listen = "127.0.0.1:0") {
    int fds[2];
    REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
    pid_ = ::fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      ::dup2(fds[1], 1);
      int err = ::open(stderr_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (err >= 0)
        ::dup2(err, 2);
      ::execl(SLUICECTL_PATH, "sluicectl", "xds", "serve", "--config-dir", dir.c_str(), "--listen",
              listen.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ::close(fds[1]);
    out_ = fds[0];
  }
  ~ServeProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      int status = 0;
      for (int i = 0; i < 200 && ::waitpid(pid_, &status, WNOHANG) == 0; ++i) {
        std::this_thread::sleep_for(10ms);
      }
      if (::waitpid(pid_, &status, WNOHANG) == 0) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
      }
    }
    if (out_ >= 0)
      ::close(out_);
  }
  // Next stdout line, or "" after the timeout.
  std::string ReadLine(std::chrono::milliseconds timeout = 20s) {
    auto end = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      auto nl = buf_.find('\n');
      if (nl != std::string::npos) {
        std::string line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        if (line.starts_with("["))
          continue;  // a log line, should one reach stdout
        return line;
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          end - std::chrono::steady_clock::now());
      if (left.count() <= 0)
        return "";
      pollfd p{out_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0)
        return "";
      char tmp[512];
      ssize_t n = ::read(out_, tmp, sizeof tmp);
      if (n <= 0)
        return "";
      buf_.append(tmp, static_cast<size_t>(n));
    }
  }
  // Reads lines until one starts with `prefix` (an editor-style write can take two
  // reloads on a busy machine: the temporary file, then the rename).
  bool WaitLine(const std::string& prefix, std::chrono::milliseconds timeout = 20s) {
    auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      std::string line = ReadLine(std::chrono::duration_cast<std::chrono::milliseconds>(
          end - std::chrono::steady_clock::now()));
      if (line.starts_with(prefix))
        return true;
      if (line.empty())
        return false;
    }
    return false;
  }
  int Port() {
    std::string line = ReadLine();
    INFO("first line: " << line);
    auto at = line.find(" on 127.0.0.1:");
    REQUIRE(line.starts_with("serving "));
    REQUIRE(at != std::string::npos);
    return std::stoi(line.substr(at + 14));
  }

 private:
  pid_t pid_ = -1;
  int out_ = -1;
  std::string buf_;
};

sx::AdsClientOptions Client(int port, sx::NodeIdentity id) {
  sx::AdsClientOptions o;
  o.server = "127.0.0.1:" + std::to_string(port);
  o.node = sx::BuildNode(id);
  o.backoff = {.initial = 20ms, .max = 200ms, .multiplier = 2.0, .jitter = 0.2};
  return o;
}

bool HasCluster(sluice::config::ConfigStore& s, const std::string& name) {
  return s.Current()->clusters.count(name) == 1;
}

}  // namespace

TEST_CASE("sluicectl xds serve: sidecar and gateway sync, re-push on change, last good kept") {
  TempDir dir;
  fs::copy_file(kTestdata / "apps" / "helloworld.yaml", dir.path / "helloworld.yaml");
  fs::copy_file(kTestdata / "apps" / "httpbin.yaml", dir.path / "httpbin.yaml");
  fs::copy_file(kTestdata / "golden" / "ingress-httpbin" / "config.yaml",
                dir.path / "ingress.yaml");
  TempDir logs;
  ServeProcess server(dir.path, logs.path / "stderr");
  int port = server.Port();

  sx::NodeIdentity sidecar;
  sidecar.ips = {"10.244.1.5"};
  sidecar.pod_name = "sleep-7f8b9c-x2x4z";
  sidecar.pod_namespace = "default";
  sidecar.labels = {{"app", "sleep"}};
  sluice::config::ConfigStore sidecar_store;
  sx::AdsClient sidecar_client(Client(port, sidecar), sidecar_store);
  REQUIRE(sidecar_client.Start());

  sx::NodeIdentity gateway;
  gateway.role = sx::ProxyRole::kRouter;
  gateway.ips = {"10.244.0.7"};
  gateway.pod_name = "istio-ingressgateway-5c7d8d9f-abcde";
  gateway.pod_namespace = "istio-system";
  gateway.labels = {{"istio", "ingressgateway"}, {"app", "istio-ingressgateway"}};
  sluice::config::ConfigStore gateway_store;
  sx::AdsClient gateway_client(Client(port, gateway), gateway_store);
  REQUIRE(gateway_client.Start());

  // Initial sync: the sidecar gets the mesh's outbound config, the gateway its listener.
  REQUIRE(WaitFor([&] {
    auto s = sidecar_store.Current();
    return s->clusters.count("outbound|5000||" + kHello) && s->routes.count("5000") &&
           s->listeners.count("0.0.0.0_5000") && s->endpoints.count("outbound|5000||" + kHello);
  }));
  CHECK(sidecar_store.Current()
            ->endpoints.at("outbound|5000||" + kHello)
            ->endpoints(0)
            .lb_endpoints_size() == 3);
  CHECK(sidecar_store.Current()->listeners.count("0.0.0.0_80") == 0);
  REQUIRE(WaitFor([&] {
    auto s = gateway_store.Current();
    return s->listeners.count("0.0.0.0_80") && s->routes.count("http.80");
  }));
  CHECK(gateway_store.Current()->routes.at("http.80")->virtual_hosts(0).name() ==
        "httpbin.example.com:80");

  // A new file: subsets and a 25/75 split reach the connected sidecar without reconnecting.
  uint64_t streams = sidecar_client.Status().streams;
  dir.Write("routing.yaml", ReadFile(kTestdata / "golden" / "weighted-subsets" / "config.yaml"));
  REQUIRE(server.WaitLine("reloaded 4 files (0 errors)"));
  REQUIRE(WaitFor([&] {
    auto s = sidecar_store.Current();
    if (!s->routes.count("5000"))
      return false;
    const auto& route = s->routes.at("5000")->virtual_hosts(0).routes(0).route();
    return HasCluster(sidecar_store, "outbound|5000|v1|" + kHello) &&
           route.weighted_clusters().clusters_size() == 2;
  }));
  {
    const auto& wc = sidecar_store.Current()
                         ->routes.at("5000")
                         ->virtual_hosts(0)
                         .routes(0)
                         .route()
                         .weighted_clusters();
    CHECK(wc.clusters(0).weight().value() == 25);
    CHECK(wc.clusters(1).weight().value() == 75);
  }
  CHECK(sidecar_client.Status().streams == streams);

  // The file turns invalid: the error is reported, the file's last good version stays.
  uint64_t generation = sidecar_store.Current()->generation;
  dir.Write("routing.yaml",
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
            "metadata: {name: hello-routing}\nspec: {hosts: [helloworld], "
            "http: [{route: [{destination: {host: helloworld}, weight: 500}]}]}\n");
  REQUIRE(server.WaitLine("reloaded 4 files (1 errors)"));
  std::this_thread::sleep_for(300ms);  // a wrong push would have arrived by now
  CHECK(sidecar_store.Current()->generation == generation);
  CHECK(HasCluster(sidecar_store, "outbound|5000|v2|" + kHello));
  std::string errors = ReadFile(logs.path / "stderr");
  CHECK(errors.find("routing.yaml: document 1 (VirtualService default/hello-routing): "
                    "spec.http[0].route[0].weight: must be an integer 0..100 (keeping the "
                    "file's last good version)") != std::string::npos);

  // Removing the file removes what it defined.
  fs::remove(dir.path / "routing.yaml");
  REQUIRE(server.WaitLine("reloaded 3 files (0 errors)"));
  REQUIRE(WaitFor([&] { return !HasCluster(sidecar_store, "outbound|5000|v1|" + kHello); }));
  CHECK(HasCluster(sidecar_store, "outbound|5000||" + kHello));

  sidecar_client.Stop();
  gateway_client.Stop();
}

namespace {

struct CommandResult {
  int exit_code = -1;
  std::string out, err;
};

CommandResult RunSluicectl(const std::string& args) {
  TempDir tmp;
  std::string cmd = std::string(SLUICECTL_PATH) + " " + args + " 2>" + (tmp.path / "err").string();
  CommandResult r;
  FILE* p = ::popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0)
    r.out.append(buf, n);
  int status = ::pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.err = ReadFile(tmp.path / "err");
  return r;
}

}  // namespace

TEST_CASE("sluicectl xds serve --listen unix:PATH: proxies in other namespaces reach it by file") {
  TempDir dir;
  fs::copy_file(kTestdata / "apps" / "helloworld.yaml", dir.path / "helloworld.yaml");
  TempDir run;
  std::string sock = (run.path / "xds.sock").string();
  {
    // A socket file left by a server that died is replaced, not a bind error.
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    std::snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", sock.c_str());
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&sun), sizeof(sun)) == 0);
    ::close(fd);
  }
  ServeProcess server(dir.path, run.path / "stderr", "unix:" + sock);
  std::string line = server.ReadLine();
  CHECK(line == "serving 1 files from " + dir.path.string() + " on unix:" + sock + " (0 errors)");

  sx::NodeIdentity sidecar;
  sidecar.ips = {"10.244.1.5"};
  sidecar.pod_name = "sleep-7f8b9c-x2x4z";
  sidecar.pod_namespace = "default";
  sx::AdsClientOptions o = Client(0, sidecar);
  o.server = "unix:" + sock;
  sluice::config::ConfigStore store;
  sx::AdsClient client(o, store);
  REQUIRE(client.Start());
  CHECK(WaitFor([&] { return HasCluster(store, "outbound|5000||" + kHello); }));
}

TEST_CASE("sluicectl translate prints the resources and fails on invalid documents") {
  const std::string apps = (kTestdata / "apps" / "httpbin.yaml").string();
  const std::string ingress = (kTestdata / "golden" / "ingress-httpbin" / "config.yaml").string();
  auto r = RunSluicectl("translate -f " + apps + " -f " + ingress +
                        " --proxy gateway:istio=ingressgateway");
  CHECK(r.exit_code == 0);
  CHECK(r.err.empty());
  CHECK(r.out.find("\"name\": \"0.0.0.0_80\"") != std::string::npos);
  CHECK(r.out.find("\"routeConfigName\": \"http.80\"") != std::string::npos);

  r = RunSluicectl("translate -f " + apps + " --proxy sidecar:default -o yaml");
  CHECK(r.exit_code == 0);
  CHECK(r.out.find("name: outbound|8000||httpbin.default.svc.cluster.local") != std::string::npos);

  // One refused document fails the translation: its error on stderr, nothing on stdout
  // (its valid neighbour, a DestinationRule, is not translated without it), exit 1.
  const std::string bad = (kTestdata / "invalid" / "bad-weight.yaml").string();
  r = RunSluicectl("translate -f " + apps + " -f " + bad + " --proxy sidecar:default");
  CHECK(r.exit_code == 1);
  CHECK(r.err.find("error: " + bad +
                   ": document 2 (VirtualService default/reviews): spec.http[0].route[1].weight: "
                   "must be an integer 0..100") != std::string::npos);
  CHECK(r.out.empty());
  // The same for a field the Istio API does not have, in either output format.
  const std::string unknown = (kTestdata / "invalid" / "unknown-field-nested.yaml").string();
  for (const char* format : {"json", "yaml"}) {
    r = RunSluicectl("translate -f " + apps + " -f " + unknown + " -o " + format);
    CHECK(r.exit_code == 1);
    CHECK(r.err.find("error: " + unknown +
                     ": document 1 (VirtualService default/reviews): spec.http[0].rout: unknown "
                     "field (did you mean \"route\"?)") != std::string::npos);
    CHECK(r.out.empty());
  }

  r = RunSluicectl("translate -f " + apps + " --proxy router:x");
  CHECK(r.exit_code == 2);
  CHECK(r.err.find(
            "want sidecar:NAMESPACE, sidecar:KEY=VALUE[,KEY=VALUE]@NAMESPACE, grpc:NAMESPACE or "
            "gateway:KEY=VALUE") != std::string::npos);

  r = RunSluicectl("registryz -f " +
                   (kTestdata / "golden" / "serviceentry" / "config.yaml").string());
  CHECK(r.exit_code == 0);
  CHECK(r.out.find("\"hostname\": \"mymongodb.somedomain\"") != std::string::npos);
  CHECK(r.out.find("\"MeshExternal\": false") != std::string::npos);
}
