// The agent's admin HTTP endpoint, on 127.0.0.1 or a Unix socket only: GET handlers by
// path, one thread, one request per connection. Enough for readiness probes, Prometheus
// and config dumps. A Unix socket (`unix:PATH`) lets the host reach the admin of an
// agent that runs inside a pod's network namespace (the gateway role).
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <string>
#include <thread>

#include "sluice/common/result.h"

namespace sluice::agent {

struct AdminReply {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

class AdminServer {
 public:
  // The handler gets the query string ("namespace=default"), without the '?'.
  using Handler = std::function<AdminReply(const std::string& query)>;
  ~AdminServer();
  void Handle(const std::string& path, Handler h) { handlers_[path] = std::move(h); }
  void Handle(const std::string& path, std::function<AdminReply()> h) {
    handlers_[path] = [h = std::move(h)](const std::string&) { return h(); };
  }
  // Binds 127.0.0.1:port (0: any) or `unix:PATH` (mode 0600, replacing a stale socket)
  // and serves on its own thread; returns the port (0 for a Unix socket). Any other
  // address is refused: the admin endpoint is never exposed off the node.
  Result<int> Start(const std::string& address);
  void Stop();

 private:
  void Serve();
  std::map<std::string, Handler> handlers_;
  int fd_ = -1;
  std::string unix_path_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace sluice::agent
