// Proxy's state shared by its threads: the options, the published snapshot and its
// version, the workers and their threads (or the group threads they are attached to),
// the counters. The workers read it (worker.cc);
// proxy.cc starts, updates, drains and stops them.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "sluice/proxy/proxy.h"
#include "snapshot.h"

namespace sluice::proxy {

namespace engine {
class Worker;
struct GroupThread;
}  // namespace engine

struct Proxy::Impl {
  ProxyOptions opts;
  std::mutex mu;
  std::shared_ptr<const engine::Snapshot> snap;  // guarded by mu
  std::atomic<uint64_t> version{0};
  std::vector<std::unique_ptr<engine::Worker>> workers;
  std::vector<std::thread> threads;                 // own threads (no group)
  std::vector<engine::GroupThread*> group_threads;  // with opts.group: each worker's thread
  ProxyStats stats;
  int log_fd = -1;
  bool stopped = false;
  std::atomic<bool> draining{false};  // Drain(): idle keep-alive connections are closed

  Result<std::shared_ptr<const engine::Snapshot>> BuildSnapshot(
      std::shared_ptr<const ProxyConfig> cfg);
  void Publish(std::shared_ptr<const engine::Snapshot> s);
};

}  // namespace sluice::proxy
