// A small HTTP/1.1 server for the stand-in workloads: keep-alive, optional TLS, one
// thread per connection (a handler may sleep, as /delay does, without holding up
// anyone else), and an access log line per request on stdout.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "handler.h"
#include "sluice/common/result.h"
#include "tls.h"

namespace sluice::apps {

struct ServerOptions {
  ParseLimits limits;
  int idle_timeout_seconds = 300;  // a keep-alive connection idle this long is closed
  int max_connections = 10000;     // beyond this, new connections are closed at once
};

class Server {
 public:
  Server(Handler handler, ServerOptions options = {});
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds and listens on address:port (port 0 picks a free one); `tls` null for plain
  // HTTP. Returns the bound port.
  Result<std::uint16_t> Listen(const std::string& address, std::uint16_t port,
                               std::shared_ptr<TlsContext> tls);

  // Starts one accept thread per listener and returns.
  void Start();

 private:
  struct Listener {
    int fd = -1;
    std::uint16_t port = 0;
    std::shared_ptr<TlsContext> tls;
  };
  void AcceptLoop(const Listener& listener);
  bool SpawnConnectionThread(int fd, const Listener& listener);
  void Serve(int fd, const Listener& listener);

  Handler handler_;
  ServerOptions options_;
  std::vector<Listener> listeners_;
  std::atomic<int> connections_{0};
};

// One access-log line, written with a single write(2) to stdout so lines from
// concurrent connections never interleave. The line starts exactly like gunicorn's
// (Combined Log Format, what `kubectl logs` shows for Istio's httpbin), then adds
// host="…" duration_ms=… and, on TLS, tls sni="…".
struct AccessLogEntry {
  std::string peer_ip;
  std::string method;  // "-" when the request could not be parsed
  std::string target;
  int version_minor = 1;
  int status = 0;
  std::size_t body_bytes = 0;
  std::string host;
  std::string user_agent;
  std::string referer;
  std::string sni;  // TLS only
  bool tls = false;
  double duration_ms = 0;
};
std::string FormatAccessLog(const AccessLogEntry& entry);

}  // namespace sluice::apps
