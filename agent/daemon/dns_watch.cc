#include "dns_watch.h"

#include <spdlog/spdlog.h>

#include "sluice/proxy/dns.h"

namespace sluice::agent {

DnsWatch::DnsWatch(std::function<void()> recompile) : recompile_(std::move(recompile)) {
  thread_ = std::thread([this] {
    std::unique_lock lock(mu_);
    while (true) {
      cv_.wait(lock, [this] { return pending_ || stop_; });
      if (stop_)
        return;
      pending_ = false;
      lock.unlock();
      spdlog::info("DNS: an answer changed; recompiling the L7 configs that use it");
      recompile_();
      lock.lock();
    }
  });
  subscription_ = proxy::DnsCache::Default().Subscribe([this] {
    std::lock_guard lock(mu_);
    pending_ = true;
    cv_.notify_one();
  });
}

DnsWatch::~DnsWatch() {
  proxy::DnsCache::Default().Unsubscribe(subscription_);
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_one();
  thread_.join();
}

}  // namespace sluice::agent
