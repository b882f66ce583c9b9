// PodPoller: the node agent's thread that follows its pods.
//
// Every 200 ms, or at once when a pod opened, closed or changed labels (Wake(), from the
// L7 supervisor and from the API server's watch), it polls the label source (the API
// server, or the label file) and hands changed labels to the node agent, then opens an xDS stream
// for each view (namespace and labels) of the pods here and stops those of views no pod is in any
// more; a stopped view is forgotten by the kernel and the L7 process (ConfigFanout).
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

#include "config_fanout.h"
#include "l7_supervisor.h"
#include "labels.h"
#include "node_agent.h"
#include "view_streams.h"

namespace sluice::agent {

struct PodPollerParts {
  LabelSource* labels = nullptr;  // none: no labels
  NodeAgent* node = nullptr;
  L7Supervisor* l7 = nullptr;
  ViewStreams* streams = nullptr;
  ConfigFanout* fanout = nullptr;
  bool sync_views = true;  // one xDS stream per view (else the node's stream serves all)
  // Called on the poller's thread after each new label state was applied (the API-server
  // source: pods that ran before the agent are looked for here).
  std::function<void(const LabelSnapshot&)> after_labels;
};

class PodPoller {
 public:
  PodPoller() = default;
  ~PodPoller() { Stop(); }
  PodPoller(const PodPoller&) = delete;
  PodPoller& operator=(const PodPoller&) = delete;

  // Starts the thread on these parts (they outlive it: Stop() before they go).
  void Start(PodPollerParts parts);
  // A pod changed: poll now rather than at the next tick. Any thread, even before
  // Start() (the first poll then comes at once).
  void Wake();
  void Stop();
  // The label source's first labels have been applied (always true without a source).
  bool LabelsApplied() const { return labels_applied_.load(); }

 private:
  void Run();

  PodPollerParts p_;
  std::mutex wake_mu_;
  std::condition_variable wake_cv_;
  bool wake_ = false;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> labels_applied_{false};
  std::thread thread_;
};

}  // namespace sluice::agent
