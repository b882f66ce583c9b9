// The node agent's poller thread: labels and view streams (pod_poller.h).
#include "pod_poller.h"

#include <spdlog/spdlog.h>

#include <chrono>

namespace sluice::agent {

void PodPoller::Start(PodPollerParts parts) {
  p_ = parts;
  if (p_.labels == nullptr)
    labels_applied_ = true;
  thread_ = std::thread([this] { Run(); });
}

void PodPoller::Wake() {
  std::lock_guard lock(wake_mu_);
  wake_ = true;
  wake_cv_.notify_one();
}

void PodPoller::Stop() {
  stopping_ = true;
  if (thread_.joinable())
    thread_.join();
}

void PodPoller::Run() {
  while (!stopping_) {
    {
      std::unique_lock lock(wake_mu_);
      wake_cv_.wait_for(lock, std::chrono::milliseconds(200), [&] { return wake_; });
      wake_ = false;
    }
    if (p_.labels) {
      auto changed = p_.labels->Poll();
      if (!changed)
        spdlog::error("{} (keeping the last good labels)", changed.error().message);
      else if (*changed) {
        p_.node->ApplyLabels(**changed);
        if (p_.after_labels)
          p_.after_labels(**changed);
        labels_applied_ = true;
      }
    }
    if (p_.sync_views) {
      for (const auto& view : p_.streams->Sync(p_.l7->Views()))
        p_.fanout->OnViewClosed(view);
    }
  }
}

}  // namespace sluice::agent
