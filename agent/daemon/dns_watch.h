// DnsWatch: recompiles L7 configs when a DNS cluster's answer changes.
//
// The proxy resolves DNS clusters' names through the process's DnsCache, which re-resolves
// them at each cluster's dns_refresh_rate. When an answer changes (the name moved, or a
// first answer came in after its config compiled without it) the configs that use it
// must be compiled again from the same resources. The cache tells on its resolver
// thread, which must not compile (a compile may wait on that very thread), so the watch
// runs `recompile` on a thread of its own; several changes in a row make one call.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>

namespace sluice::agent {

class DnsWatch {
 public:
  explicit DnsWatch(std::function<void()> recompile);
  ~DnsWatch();
  DnsWatch(const DnsWatch&) = delete;
  DnsWatch& operator=(const DnsWatch&) = delete;

 private:
  std::function<void()> recompile_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool pending_ = false, stop_ = false;
  uint64_t subscription_ = 0;
  std::thread thread_;
};

}  // namespace sluice::agent
