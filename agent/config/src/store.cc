#include "sluice/config/store.h"

#include <algorithm>
#include <atomic>

#include "sluice/config/validate.h"

namespace sluice::config {

ConfigStore::ConfigStore() : current_(std::make_shared<const Snapshot>()) {}

SnapshotPtr ConfigStore::Current() const {
  std::lock_guard lock(current_mu_);
  return current_;
}

Result<Diff> ConfigStore::Apply(Snapshot candidate) {
  std::lock_guard apply_lock(apply_mu_);
  SnapshotPtr before = Current();
  // Equal content first takes the accepted object, so validation skips what was already
  // checked: an endpoint update does not re-check 10,000 clusters.
  Diff diff = AdoptUnchanged(*before, candidate);
  SLUICE_RETURN_IF_ERROR(ValidateSnapshot(candidate, before.get()));
  return Publish(before, std::move(candidate), std::move(diff));
}

Result<Diff> ConfigStore::Edit(SnapshotEdit edit) {
  std::lock_guard apply_lock(apply_mu_);
  SnapshotPtr before = Current();
  auto edited = ApplyEdit(*before, std::move(edit));
  SLUICE_RETURN_IF_ERROR(edited);
  auto& [next, diff] = *edited;
  SLUICE_RETURN_IF_ERROR(ValidateEdit(*before, next, diff));
  return Publish(before, std::move(next), std::move(diff));
}

// Under apply_mu_.
Result<Diff> ConfigStore::Publish(const SnapshotPtr& before, Snapshot next, Diff diff) {
  if (diff.empty())
    return diff;
  static std::atomic<uint64_t> next_id{1};
  next.generation = before->generation + 1;
  next.id = next_id.fetch_add(1, std::memory_order_relaxed);
  diff.base = before->id;
  auto after = std::make_shared<const Snapshot>(std::move(next));
  {
    std::lock_guard lock(current_mu_);
    current_ = after;
  }
  for (const auto& [id, sub] : subscribers_)
    sub(after, diff);
  return diff;
}

int ConfigStore::Subscribe(Subscriber s) {
  std::lock_guard apply_lock(apply_mu_);
  int id = next_id_++;
  subscribers_.emplace_back(id, std::move(s));
  return id;
}

void ConfigStore::Unsubscribe(int id) {
  std::lock_guard apply_lock(apply_mu_);
  std::erase_if(subscribers_, [id](const auto& p) { return p.first == id; });
}

}  // namespace sluice::config
