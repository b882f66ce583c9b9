// Test helpers: a blocking HTTP/1.1 client over real loopback sockets, Envoy JSON
// builders, and a proxy started from Envoy JSON (so every test also exercises the
// Envoy → runtime compiler).
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "sluice/envoy/resource_set.h"
#include "sluice/proxy/http_codec.h"
#include "sluice/proxy/proxy.h"

namespace sluice::testing {

using Json = nlohmann::json;

struct Resp {
  int status = 0;                              // 0: no response (connection closed or timeout)
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
  std::string raw_head;
  std::string Header(const std::string& n) const {
    auto it = headers.find(n);
    return it == headers.end() ? "" : it->second;
  }
};

// A connection to 127.0.0.1:port, from `source` (another loopback address) when given.
inline int Connect(uint16_t port, const char* source = nullptr) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (source) {
    sockaddr_in s{};
    s.sin_family = AF_INET;
    inet_pton(AF_INET, source, &s.sin_addr);
    if (bind(fd, reinterpret_cast<sockaddr*>(&s), sizeof(s)) != 0) {
      close(fd);
      return -1;
    }
  }
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// Reads responses from fd into buf until `count` complete responses are parsed.
inline std::vector<Resp> ReadResponses(int fd, std::string& buf, std::size_t count, int timeout_ms,
                                       bool head_request = false) {
  std::vector<Resp> out;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  bool eof = false;
  while (out.size() < count) {
    // Try to parse what we have.
    proxy::http::ResponseHead h;
    auto st = proxy::http::ParseResponse(buf, head_request, &h);
    if (st == proxy::http::ParseStatus::kDone) {
      Resp r;
      r.status = h.status;
      r.raw_head = buf.substr(0, h.head_len);
      for (std::size_t i = 0; i < h.num_headers; ++i) {
        std::string n(h.headers[i].name);
        for (char& c : n)
          c = static_cast<char>(std::tolower(c));
        r.headers[n] = std::string(h.headers[i].value);
      }
      std::string_view rest = std::string_view(buf).substr(h.head_len);
      bool complete = false;
      std::size_t used = 0;
      if (h.no_body || h.status == 100) {
        complete = true;
      } else if (h.chunked) {
        proxy::http::ChunkedDecoder d;
        used = d.Feed(rest, &r.body);
        complete = d.done();
      } else if (h.content_length >= 0) {
        if (rest.size() >= static_cast<std::size_t>(h.content_length)) {
          used = static_cast<std::size_t>(h.content_length);
          r.body = std::string(rest.substr(0, used));
          complete = true;
        }
      } else if (eof) {
        r.body = std::string(rest);
        used = rest.size();
        complete = true;
      }
      if (complete) {
        buf.erase(0, h.head_len + used);
        if (h.status == 100)
          continue;  // interim
        out.push_back(std::move(r));
        continue;
      }
    } else if (st == proxy::http::ParseStatus::kError) {
      break;
    }
    if (eof)
      break;
    int left = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                    deadline - std::chrono::steady_clock::now())
                                    .count());
    if (left <= 0)
      break;
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, left) <= 0)
      break;
    char tmp[65536];
    ssize_t n = recv(fd, tmp, sizeof(tmp), 0);
    if (n <= 0) {
      eof = true;
      continue;
    }
    buf.append(tmp, static_cast<std::size_t>(n));
  }
  return out;
}

// Sends raw bytes on a new connection and reads one response.
inline Resp SendRaw(uint16_t port, const std::string& raw, int timeout_ms = 3000) {
  int fd = Connect(port);
  if (fd < 0)
    return {};
  send(fd, raw.data(), raw.size(), MSG_NOSIGNAL);
  std::string buf;
  auto v = ReadResponses(fd, buf, 1, timeout_ms, raw.rfind("HEAD ", 0) == 0);
  close(fd);
  return v.empty() ? Resp{} : v[0];
}

inline Resp Get(uint16_t port, const std::string& host, const std::string& path,
                const std::string& extra_headers = "", int timeout_ms = 3000) {
  return SendRaw(port,
                 "GET " + path + " HTTP/1.1\r\nhost: " + host + "\r\n" + extra_headers +
                     "connection: close\r\n\r\n",
                 timeout_ms);
}

// A keep-alive client connection.
class Client {
 public:
  explicit Client(uint16_t port) : fd_(Connect(port)) {}
  ~Client() {
    if (fd_ >= 0)
      close(fd_);
  }
  Resp Request(const std::string& raw, int timeout_ms = 3000) {
    send(fd_, raw.data(), raw.size(), MSG_NOSIGNAL);
    auto v = ReadResponses(fd_, buf_, 1, timeout_ms);
    return v.empty() ? Resp{} : v[0];
  }
  Resp Get(const std::string& host, const std::string& path, const std::string& extra = "") {
    return Request("GET " + path + " HTTP/1.1\r\nhost: " + host + "\r\n" + extra + "\r\n");
  }
  int fd() const { return fd_; }

 private:
  int fd_;
  std::string buf_;
};

// ------------------------------------------------------------------ Envoy JSON

inline Json Endpoints(const std::vector<uint16_t>& ports) {
  Json lbs = Json::array();
  for (uint16_t p : ports) {
    lbs.push_back(
        {{"endpoint",
          {{"address", {{"socket_address", {{"address", "127.0.0.1"}, {"port_value", p}}}}}}}});
  }
  return Json::array({{{"lb_endpoints", lbs}}});
}

inline Json StaticCluster(const std::string& name, const std::vector<uint16_t>& ports,
                          const std::string& lb = "ROUND_ROBIN") {
  return {{"name", name},
          {"type", "STATIC"},
          {"connect_timeout", "1s"},
          {"lb_policy", lb},
          {"load_assignment", {{"cluster_name", name}, {"endpoints", Endpoints(ports)}}}};
}

inline Json Hcm(const Json& route_config, bool access_log = true,
                const Json& extra_filters = Json::array()) {
  Json filters = extra_filters;
  filters.push_back(
      {{"name", "envoy.filters.http.router"},
       {"typed_config",
        {{"@type", "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}}});
  Json h = {{"@type",
             "type.googleapis.com/"
             "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"},
            {"stat_prefix", "http"},
            {"http_filters", filters}};
  if (route_config.is_string()) {
    h["rds"] = {{"route_config_name", route_config}};
  } else {
    h["route_config"] = route_config;
  }
  if (access_log) {
    h["access_log"] = Json::array(
        {{{"name", "envoy.access_loggers.file"},
          {"typed_config",
           {{"@type", "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"},
            {"path", "/dev/stdout"}}}}});
  }
  return {{"name", "envoy.filters.network.http_connection_manager"}, {"typed_config", h}};
}

// The document with these upgrade types allowed on the first listener's connection
// manager (upgrade_configs), as istiod allows "websocket".
inline Json WithUpgrades(Json doc, const std::vector<std::string>& types) {
  Json list = Json::array();
  for (const auto& t : types)
    list.push_back({{"upgrade_type", t}});
  doc["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["upgrade_configs"] = list;
  return doc;
}

inline Json Listener(const std::string& name, const Json& chains) {
  return {{"name", name},
          {"address", {{"socket_address", {{"address", "127.0.0.1"}, {"port_value", 0}}}}},
          {"filter_chains", chains}};
}

inline Json HttpListener(const std::string& name, const Json& route_config, bool access_log = true,
                         const Json& extra_filters = Json::array()) {
  return Listener(
      name,
      Json::array({{{"filters", Json::array({Hcm(route_config, access_log, extra_filters)})}}}));
}

// One virtual host "*" (or given domains) with these routes.
inline Json RouteConfig(const std::string& name, const Json& routes,
                        const Json& domains = Json::array({"*"})) {
  return {
      {"name", name},
      {"virtual_hosts", Json::array({{{"name", "vh"}, {"domains", domains}, {"routes", routes}}})}};
}

// ------------------------------------------------------------------ proxy

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/sluice-proxy-test-XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

struct RunningProxy {
  TempDir dir;
  std::shared_ptr<const proxy::ProxyConfig> config;  // as started (its clusters' gauges live)
  std::unique_ptr<proxy::Proxy> proxy;
  std::string log_path;
  std::string error;
  uint16_t Port(const std::string& listener = "http") const { return proxy->Port(listener); }
  // The access log is flushed by the worker after the response is written: wait up
  // to a second for at least `min_lines`.
  std::vector<std::string> LogLines(std::size_t min_lines = 0) const {
    for (int i = 0; i < 100; ++i) {
      auto v = ReadLog();
      if (v.size() >= min_lines)
        return v;
      usleep(10000);
    }
    return ReadLog();
  }
  std::vector<std::string> ReadLog() const {
    std::ifstream f(log_path);
    std::vector<std::string> lines;
    std::string l;
    while (std::getline(f, l))
      lines.push_back(l);
    return lines;
  }
  ~RunningProxy() {
    if (proxy)
      proxy->Stop();
  }
};

// A listening TCP socket on 127.0.0.1 at a free port (written to *port): the test
// servers' shared opening.
inline int ListenLoopback(int backlog, uint16_t* port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  listen(fd, backlog);
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  *port = ntohs(a.sin_port);
  return fd;
}

// A loopback port nothing listens on (bound, read, released).
inline uint16_t FreeLoopbackPort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

// The sluice-proxy binary as a child process (`--config CONFIG`, stderr to ERR_PATH,
// stdout dropped), stopped with SIGTERM when this goes. `in_child` runs between fork and
// exec (a test's namespace set-up); it exits the child itself on failure.
class ProxyProcess {
 public:
  ProxyProcess(const std::string& bin, const std::string& config, const std::string& err_path,
               const std::function<void()>& in_child = {}) {
    pid_ = fork();
    if (pid_ == 0) {
      int fd = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, 2);
      int devnull = open("/dev/null", O_WRONLY);
      dup2(devnull, 1);
      if (in_child)
        in_child();
      execl(bin.c_str(), "sluice-proxy", "--config", config.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
  }
  ~ProxyProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      waitpid(pid_, nullptr, 0);
    }
  }
  ProxyProcess(const ProxyProcess&) = delete;
  ProxyProcess& operator=(const ProxyProcess&) = delete;
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
};

inline Result<std::shared_ptr<const proxy::ProxyConfig>> CompileJson(const Json& doc) {
  auto rs = proxy::ParseResourceSetJson(doc.dump());
  if (!rs)
    return std::unexpected(rs.error());
  return proxy::Compile(*rs);
}

inline std::unique_ptr<RunningProxy> StartProxy(const Json& doc, int workers = 1,
                                                proxy::ProxyOptions opts = {}) {
  auto rp = std::make_unique<RunningProxy>();
  rp->log_path = rp->dir.path() + "/access.log";
  auto cfg = CompileJson(doc);
  if (!cfg) {
    rp->error = cfg.error().message;
    return rp;
  }
  opts.workers = workers;
  opts.access_log_path = rp->log_path;
  rp->config = *cfg;
  auto p = proxy::Proxy::Start(*cfg, opts);
  if (!p) {
    rp->error = p.error().message;
    return rp;
  }
  rp->proxy = std::move(*p);
  return rp;
}

// Waits until pred() or the timeout; returns pred().
template <class F>
bool WaitFor(F pred, int timeout_ms = 2000) {
  auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (std::chrono::steady_clock::now() < end) {
    if (pred())
      return true;
    usleep(5000);
  }
  return pred();
}

}  // namespace sluice::testing
