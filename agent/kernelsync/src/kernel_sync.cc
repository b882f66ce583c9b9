#include "sluice/kernelsync/kernel_sync.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <optional>
#include <set>

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

const ServiceSpec* FindIn(const PlanEdit& e, const std::string& name) {
  auto it = std::lower_bound(e.services.begin(), e.services.end(), name,
                             [](const ServiceSpec& s, const std::string& n) { return s.name < n; });
  return it != e.services.end() && it->name == name ? &*it : nullptr;
}

}  // namespace

// The node's spec first, then every view folded in: a service only a view sees is
// added; one the views route differently goes to the in-pod proxy.
std::optional<KernelSync::Merged> KernelSync::MergeOne(const std::string& name,
                                                       const std::string* source,
                                                       const PlanEdit* edit) const {
  // A source's spec and reason for `name`, the edit's where the edit is of that source.
  auto spec_of = [&](const std::string* src, const KernelPlan& plan,
                     std::optional<std::string>* reason) -> const ServiceSpec* {
    const bool edited = edit && ((!src && !source) || (src && source && *src == *source));
    if (edited) {
      if (const ServiceSpec* s = FindIn(*edit, name)) {
        if (reason)
          *reason = edit->reasons.at(name);
        return s;
      }
    }
    const ServiceSpec* s = plan.Find(name);
    if (s && reason) {
      auto r = plan.l7_reasons.find(name);
      *reason = r == plan.l7_reasons.end() ? std::nullopt : std::optional<std::string>(r->second);
    }
    return s;
  };
  std::optional<Merged> out;
  std::optional<std::string> node_reason;
  if (const ServiceSpec* n = spec_of(nullptr, node_.plan, &node_reason))
    out = Merged{*n, std::move(node_reason)};
  for (const auto& [view, src] : views_) {
    const ServiceSpec* s = spec_of(&view, src.plan, nullptr);
    if (!s)
      continue;
    if (!out) {
      out = Merged{*s, std::nullopt};
      if (s->redirect_to_proxy)
        out->reason = "L7 in view " + view;
      continue;
    }
    // One kernel service serves every pod, so where views route a service differently
    // (one needs L7, or its clusters, weights or LB differ: a VirtualService or
    // DestinationRule exported to its own namespace only) it goes to the in-pod proxy,
    // which routes it with each pod's own view. Endpoints are not compared: they differ
    // only while an update is on its way to the streams, and comparing them would move
    // services to the proxy and back on every endpoint change.
    ServiceSpec& mine = out->spec;
    if (mine.redirect_to_proxy)
      continue;
    if (s->redirect_to_proxy) {
      mine.redirect_to_proxy = true;
      mine.l7_reason = s->l7_reason;
      out->reason =
          "needs L7 in view " + view + "; each pod's proxy routes it with its own view's config";
    } else if (!SameShape(mine, *s)) {
      mine.redirect_to_proxy = true;
      mine.l7_reason = L7Reason::kViews;
      out->reason = "routed differently in view " + view +
                    " (clusters, weights or LB); each pod's proxy routes it with its own "
                    "view's config";
    }
  }
  return out;
}

KernelPlan KernelSync::MergeAll() const {
  std::set<std::string> names;
  for (const auto& s : node_.plan.services)
    names.insert(s.name);
  for (const auto& [view, src] : views_)
    for (const auto& s : src.plan.services)
      names.insert(s.name);
  KernelPlan out;
  out.registry_only = node_.plan.registry_only;
  out.services.reserve(names.size());
  for (const auto& name : names) {
    auto m = MergeOne(name, nullptr, nullptr);
    if (!m)
      continue;
    if (m->reason)
      out.l7_reasons.emplace(name, std::move(*m->reason));
    out.services.push_back(std::move(m->spec));
  }
  return out;
}

Result<bool> KernelSync::TryReplan(Source& src, const std::string* view,
                                   const config::Snapshot& snapshot, const config::Diff* diff,
                                   uint64_t generation) {
  if (!diff || src.snapshot_id == 0 || diff->base != src.snapshot_id)
    return false;
  auto edit = Replan(src.plan, snapshot, *diff);
  SLUICE_RETURN_IF_ERROR(edit);
  if (!*edit)
    return false;
  // The merged specs of the services it decided again, against what the kernel has.
  PlanEdit merged;
  std::vector<ServiceSpec> upserts;
  for (const auto& spec : (*edit)->services) {
    auto m = MergeOne(spec.name, view, &**edit);
    if (!m)
      continue;  // not possible: the source itself has it
    const ServiceSpec* cur = applied_.Find(spec.name);
    auto cur_reason = applied_.l7_reasons.find(spec.name);
    const bool same_reason = cur_reason == applied_.l7_reasons.end()
                                 ? !m->reason
                                 : m->reason && *m->reason == cur_reason->second;
    if (cur && *cur == m->spec && same_reason)
      continue;
    if (!cur || !(*cur == m->spec))
      upserts.push_back(m->spec);
    merged.reasons[spec.name] = std::move(m->reason);
    merged.services.push_back(std::move(m->spec));
  }
  if (!upserts.empty()) {
    if (auto r = dp_.Apply(upserts, {}); !r) {
      spdlog::error("kernel sync: config generation {}: {} (the kernel keeps generation {})",
                    snapshot.generation, r.error().message, generation_);
      return std::unexpected(r.error());
    }
  }
  last_ = SyncStats{true, (*edit)->replanned, upserts.size(), 0};
  Commit(src.plan, std::move(**edit));
  src.generation = snapshot.generation;
  src.snapshot_id = snapshot.id;
  Commit(applied_, std::move(merged));
  generation_ = generation;
  spdlog::debug("kernel sync: generation {}: {} services decided again, {} upserted", generation,
                last_.replanned, last_.upserts);
  return true;
}

Result<void> KernelSync::OnSnapshot(const config::Snapshot& snapshot, const config::Diff* diff) {
  auto done = TryReplan(node_, nullptr, snapshot, diff, snapshot.generation);
  SLUICE_RETURN_IF_ERROR(done);
  if (*done)
    return {};
  auto plan = Plan(snapshot);
  if (!plan) {
    spdlog::error("kernel sync: config generation {}: {} (the kernel keeps generation {})",
                  snapshot.generation, plan.error().message, generation_);
    return std::unexpected(plan.error());
  }
  Source previous = std::move(node_);
  node_ = Source{std::move(*plan), snapshot.generation, snapshot.id};
  if (auto r = ApplyMerged(snapshot.generation); !r) {
    node_ = std::move(previous);
    return r;
  }
  return {};
}

Result<void> KernelSync::OnView(const std::string& name, const config::Snapshot* snapshot,
                                const config::Diff* diff) {
  std::optional<Source> previous;
  if (auto it = views_.find(name); it != views_.end()) {
    if (snapshot) {
      auto done = TryReplan(it->second, &name, *snapshot, diff, generation_);
      SLUICE_RETURN_IF_ERROR(done);
      if (*done)
        return {};
    }
    previous = it->second;
  }
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
    views_[name] = Source{std::move(*plan), snapshot->generation, snapshot->id};
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
  KernelPlan plan = MergeAll();
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
  size_t planned = node_.plan.services.size();
  for (const auto& [v, src] : views_)
    planned += src.plan.services.size();
  last_ = SyncStats{false, planned, upserts.size(), deletes.size()};
  applied_ = std::move(plan);
  generation_ = generation;
  return {};
}

}  // namespace sluice::kernelsync
