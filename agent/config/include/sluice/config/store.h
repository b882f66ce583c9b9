// ConfigStore: holds the snapshot in force and publishes each accepted change.
//
// Apply() validates a candidate as a whole; if it is valid, it becomes the current
// snapshot and every subscriber receives (snapshot, diff); if not, the error is returned
// and the current snapshot stays. A resource whose content did not change keeps the
// previous snapshot's object, so consumers can skip it by pointer comparison.
//
// Subscribers run on the caller's thread (for the ADS client: its stream thread, before
// the ACK goes out), in subscription order, one Apply at a time, so each sees every diff
// exactly once and in order. A slow subscriber delays the ACK, as a slow main thread
// does in Envoy; hand heavy work to another thread.
#pragma once

#include <functional>
#include <mutex>
#include <vector>

#include "sluice/common/result.h"
#include "sluice/config/snapshot.h"

namespace sluice::config {

class ConfigStore {
 public:
  using Subscriber = std::function<void(const SnapshotPtr&, const Diff&)>;

  ConfigStore();

  // The snapshot in force (never null; empty before the first Apply).
  SnapshotPtr Current() const;

  // Validates and publishes `candidate`. Returns the diff against the previous snapshot.
  // An empty diff publishes nothing (no new generation, no callbacks).
  Result<Diff> Apply(Snapshot candidate);

  // As Apply, for a change to the snapshot in force: only the put resources are checked,
  // and only the references the edit can break (a put or removed cluster, endpoints,
  // listener or route and what names it). Its cost follows the size of the edit, not of
  // the snapshot (plus a pointer copy of each changed type's map).
  Result<Diff> Edit(SnapshotEdit edit);

  // Returns an id for Unsubscribe. The subscriber is not called for past snapshots.
  int Subscribe(Subscriber s);
  void Unsubscribe(int id);

 private:
  mutable std::mutex current_mu_;  // guards current_ only
  SnapshotPtr current_;
  Result<Diff> Publish(const SnapshotPtr& before, Snapshot next, Diff diff);
  std::mutex apply_mu_;  // serialises Apply and the subscriber list
  std::vector<std::pair<int, Subscriber>> subscribers_;
  int next_id_ = 1;
};

}  // namespace sluice::config
