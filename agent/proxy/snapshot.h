// A worker's view of the configuration: the ProxyConfig and the listening sockets that
// serve it, published together by Proxy::Update and taken by each worker between
// events. Sessions keep the snapshot they started on, so a request finishes on the
// config it began with.
#pragma once

#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sluice/proxy/config.h"

namespace sluice::proxy::engine {

// Downstream connections open on a listener, over all workers (its connection limit).
// Kept apart from the sockets: a connection may outlive its listener's sockets.
struct ListenerCount {
  std::atomic<uint32_t> active{0};
};

struct ListenerSockets {
  std::string name, key;
  uint16_t port = 0;
  std::vector<int> fds;  // one per worker
  std::shared_ptr<ListenerCount> count = std::make_shared<ListenerCount>();
  ~ListenerSockets() {
    for (int fd : fds) {
      if (fd >= 0)
        close(fd);
    }
  }
};

struct Snapshot {
  std::shared_ptr<const ProxyConfig> cfg;
  struct Listener {
    const ListenerConfig* cfg;
    std::shared_ptr<ListenerSockets> socks;
  };
  std::vector<Listener> listeners;
};

}  // namespace sluice::proxy::engine
