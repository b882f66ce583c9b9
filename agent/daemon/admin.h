// The agent's admin HTTP endpoint, on 127.0.0.1 only: GET handlers by path, one thread,
// one request per connection. Enough for readiness probes, Prometheus and config dumps.
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
  using Handler = std::function<AdminReply()>;
  ~AdminServer();
  void Handle(const std::string& path, Handler h) { handlers_[path] = std::move(h); }
  // Binds 127.0.0.1:port (0: any) and serves on its own thread; returns the port. Any
  // other address is refused: the admin endpoint is never exposed off the node.
  Result<int> Start(const std::string& address);
  void Stop();

 private:
  void Serve();
  std::map<std::string, Handler> handlers_;
  int fd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace sluice::agent
