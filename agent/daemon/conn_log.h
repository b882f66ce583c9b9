// ConnLog: the L4 lines of the agent's access log.
//
// Connections the kernel translates never reach a proxy, so nothing would record them;
// with SLUICE_SET_CONNLOG on, the connect hook puts one record per translated connect in
// a BPF ring buffer, and this reader turns each into a line in the same access log the
// in-pod proxies write:
//   [2026-11-24T23:59:01.123Z] "TCP" kernel src=default/sleep-7d9f8 (10.244.0.5)
//     dst=10.96.0.12:8000 service=httpbin.default.svc.cluster.local:8000 upstream=10.244.0.7:80
// (one line). Pod and service names come from lookups the agent provides.
#pragma once

#include <atomic>
#include <functional>
#include <string>
#include <thread>

#include "sluice/common/result.h"
#include "sluice/loader/dataplane.h"

struct ring_buffer;

namespace sluice::agent {

class ConnLog {
 public:
  struct Lookups {
    // "namespace/name (ip)" of the pod with this network-namespace cookie, or "".
    std::function<std::string(uint64_t cookie)> pod;
    // The service name for a dialled address ("" when unknown).
    std::function<std::string(const SocketAddress&)> service;
  };
  // Reads Dataplane::ConnLogFd() and appends to `path` ("" or "-": stdout).
  static Result<std::unique_ptr<ConnLog>> Start(Dataplane& dp, const std::string& path,
                                                Lookups lookups);
  ~ConnLog();
  uint64_t lines() const { return lines_.load(std::memory_order_relaxed); }

 private:
  ConnLog() = default;
  static int OnEvent(void* ctx, void* data, size_t size);
  ring_buffer* rb_ = nullptr;
  int out_fd_ = -1;
  Lookups lookups_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> lines_{0};
  std::thread thread_;
};

}  // namespace sluice::agent
