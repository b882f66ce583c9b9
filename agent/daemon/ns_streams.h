// NamespaceStreams: one xDS stream per namespace that has enrolled pods on this node.
//
// istiod answers each proxy for its own namespace: short host names ("reviews")
// qualified in that namespace, exportTo and Sidecar scoping applied. A sidecarless node
// serves pods of many namespaces, so the agent asks as a sidecar of each namespace it
// hosts — one stream per namespace, not per pod (pods of one namespace get the same
// answer; Sidecar resources with workload selectors are the exception, see
// docs/node-agent.md) — and hands each namespace's L7 config to that namespace's pods.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "sluice/config/store.h"
#include "sluice/xds/ads_client.h"
#include "sluice/xds/node.h"

namespace sluice::agent {

class NamespaceStreams {
 public:
  // Called on a stream's thread with each new config of a namespace.
  using OnConfig = std::function<void(const std::string& ns, const config::SnapshotPtr&)>;
  NamespaceStreams(xds::AdsClientOptions base, xds::NodeIdentity identity, OnConfig on_config)
      : base_(std::move(base)), identity_(std::move(identity)), on_config_(std::move(on_config)) {}
  ~NamespaceStreams() { StopAll(); }

  // Starts streams for new namespaces and stops those no longer listed; returns the
  // namespaces whose stream was stopped.
  std::vector<std::string> Sync(const std::vector<std::string>& namespaces);
  void StopAll();

  // The config in force for a namespace (nullptr when there is no stream or no answer).
  config::SnapshotPtr Current(const std::string& ns) const;
  std::map<std::string, xds::AdsClientStatus> Status() const;

 private:
  struct Stream {
    std::unique_ptr<config::ConfigStore> store;
    std::unique_ptr<xds::AdsClient> client;
  };
  xds::AdsClientOptions base_;
  xds::NodeIdentity identity_;
  OnConfig on_config_;
  mutable std::mutex mu_;
  std::map<std::string, Stream> streams_;
};

}  // namespace sluice::agent
