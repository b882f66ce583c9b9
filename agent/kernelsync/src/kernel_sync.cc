#include "sluice/kernelsync/kernel_sync.h"

#include <spdlog/spdlog.h>

namespace sluice::kernelsync {

Result<void> KernelSync::OnSnapshot(const config::Snapshot& snapshot) {
  auto plan = Plan(snapshot);
  if (!plan) {
    spdlog::error("kernel sync: config generation {}: {} (the kernel keeps generation {})",
                  snapshot.generation, plan.error().message, generation_);
    return std::unexpected(plan.error());
  }
  std::map<std::string, const ServiceSpec*> before;
  for (const auto& s : applied_.services)
    before[s.name] = &s;
  std::vector<ServiceSpec> upserts;
  std::vector<std::string> deletes;
  for (const auto& s : plan->services) {
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
                    snapshot.generation, r.error().message, generation_);
      return r;
    }
  }
  spdlog::info(
      "kernel sync: generation {}: {} kernel services ({} upserted, {} deleted), {} "
      "sent to the in-pod proxy",
      snapshot.generation, plan->services.size(), upserts.size(), deletes.size(),
      plan->l7_reasons.size());
  applied_ = std::move(*plan);
  generation_ = snapshot.generation;
  return {};
}

}  // namespace sluice::kernelsync
