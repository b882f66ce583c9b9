#include "sluice/kernelsync/kernel_sync.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <optional>

namespace sluice::kernelsync {

namespace {

// What the kernel does with a service's connections, endpoints aside: its clusters, their
// weights and LB policies. Views agree on endpoints except for a moment (EDS updates
// reach the streams one after another); a different shape is a rule of their own.
bool SameShape(const ServiceSpec& a, const ServiceSpec& b) {
  return std::equal(a.clusters.begin(), a.clusters.end(), b.clusters.begin(), b.clusters.end(),
                    [](const ClusterSpec& x, const ClusterSpec& y) {
                      return x.name == y.name && x.weight == y.weight && x.lb == y.lb;
                    });
}

// The node's plan, with every view folded in (see OnView).
KernelPlan Merge(const KernelPlan& node, const std::map<std::string, KernelPlan>& views) {
  KernelPlan out = node;
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < out.services.size(); i++)
    index[out.services[i].name] = i;
  for (const auto& [view, plan] : views) {
    for (const auto& s : plan.services) {
      auto it = index.find(s.name);
      if (it == index.end()) {
        index[s.name] = out.services.size();
        out.services.push_back(s);
        if (s.redirect_to_proxy)
          out.l7_reasons.push_back(s.name + ": L7 in view " + view);
        continue;
      }
      // One kernel service serves every pod, so where views route a service differently
      // (one needs L7, or its clusters, weights or LB differ: a VirtualService or
      // DestinationRule exported to its own namespace only) it goes to the in-pod proxy,
      // which routes it with each pod's own view. Endpoints are not compared: they differ
      // only while an update is on its way to the streams, and comparing them would move
      // services to the proxy and back on every endpoint change.
      ServiceSpec& mine = out.services[it->second];
      if (mine.redirect_to_proxy)
        continue;
      if (s.redirect_to_proxy) {
        mine.redirect_to_proxy = true;
        mine.l7_reason = s.l7_reason;
        out.l7_reasons.push_back(s.name + ": needs L7 in view " + view +
                                 "; each pod's proxy routes it with its own view's config");
      } else if (!SameShape(mine, s)) {
        mine.redirect_to_proxy = true;
        mine.l7_reason = L7Reason::kViews;
        out.l7_reasons.push_back(s.name + ": routed differently in view " + view +
                                 " (clusters, weights or LB); each pod's proxy routes it with "
                                 "its own view's config");
      }
    }
  }
  std::sort(out.services.begin(), out.services.end(),
            [](const ServiceSpec& a, const ServiceSpec& b) { return a.name < b.name; });
  return out;
}

}  // namespace

Result<void> KernelSync::OnSnapshot(const config::Snapshot& snapshot) {
  auto plan = Plan(snapshot);
  if (!plan) {
    spdlog::error("kernel sync: config generation {}: {} (the kernel keeps generation {})",
                  snapshot.generation, plan.error().message, generation_);
    return std::unexpected(plan.error());
  }
  KernelPlan previous = std::move(node_);
  node_ = std::move(*plan);
  if (auto r = ApplyMerged(snapshot.generation); !r) {
    node_ = std::move(previous);
    return r;
  }
  return {};
}

Result<void> KernelSync::OnView(const std::string& name, const config::Snapshot* snapshot) {
  std::optional<KernelPlan> previous;
  if (auto it = views_.find(name); it != views_.end())
    previous = it->second;
  if (!snapshot) {
    if (!previous)
      return {};
    views_.erase(name);
  } else {
    auto plan = Plan(*snapshot);
    if (!plan) {
      spdlog::error(
          "kernel sync: namespace {}: config generation {}: {} (its last good view stays)", name,
          snapshot->generation, plan.error().message);
      return std::unexpected(plan.error());
    }
    views_[name] = std::move(*plan);
  }
  if (auto r = ApplyMerged(generation_); !r) {
    if (previous)
      views_[name] = std::move(*previous);
    else
      views_.erase(name);
    return r;
  }
  return {};
}

Result<void> KernelSync::ApplyMerged(uint64_t generation) {
  KernelPlan plan = Merge(node_, views_);
  std::map<std::string, const ServiceSpec*> before;
  for (const auto& s : applied_.services)
    before[s.name] = &s;
  std::vector<ServiceSpec> upserts;
  std::vector<std::string> deletes;
  for (const auto& s : plan.services) {
    auto it = before.find(s.name);
    if (it == before.end() || !(*it->second == s))
      upserts.push_back(s);
    if (it != before.end())
      before.erase(it);
  }
  for (const auto& [name, spec] : before)
    deletes.push_back(name);
  if (!upserts.empty() || !deletes.empty()) {
    if (auto r = dp_.Apply(upserts, deletes); !r) {
      spdlog::error("kernel sync: config generation {}: {} (the kernel keeps generation {})",
                    generation, r.error().message, generation_);
      return r;
    }
  }
  spdlog::info(
      "kernel sync: generation {}{}: {} kernel services ({} upserted, {} deleted), {} "
      "sent to the in-pod proxy",
      generation, views_.empty() ? "" : fmt::format(" + {} pod views", views_.size()),
      plan.services.size(), upserts.size(), deletes.size(), plan.l7_reasons.size());
  applied_ = std::move(plan);
  generation_ = generation;
  return {};
}

}  // namespace sluice::kernelsync
