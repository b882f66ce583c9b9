// ViewStreams: one xDS stream per config view — the namespace and label set of enrolled
// pods on this node.
//
// istiod answers each proxy for its own namespace (short host names like "reviews"
// qualified there, exportTo applied) and its own labels (the Sidecar resource whose
// workloadSelector matches them, else the namespace's default Sidecar). A sidecarless
// node serves pods of many namespaces and workloads, so the agent asks as a sidecar of
// each (namespace, labels) pair it hosts and hands that view's L7 config to exactly the
// pods it describes. Pods of one ReplicaSet share their labels, hence one stream; a
// namespace whose pods carry no labels has one stream. The agent cannot know which labels
// istiod's Sidecars select on, so any label difference is its own view.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "sluice/config/store.h"
#include "sluice/enrolment/enrolment.h"
#include "sluice/xds/ads_client.h"
#include "sluice/xds/node.h"

namespace sluice::agent {

// What one sidecar would be sent: pods of namespace `ns` with exactly these labels.
struct View {
  std::string ns;
  enrolment::Labels labels;
  // "NS", or "NS{k=v,k2=v2}" with labels: the key of streams, configs and metrics.
  std::string Id() const;
  auto operator<=>(const View&) const = default;
};

class ViewStreams {
 public:
  // Called on a stream's thread with each new config of a view (by its Id()).
  // A view's snapshot, with its store's diff from the view's previous one.
  using OnConfig =
      std::function<void(const std::string& view, const config::SnapshotPtr&, const config::Diff&)>;
  ViewStreams(xds::AdsClientOptions base, xds::NodeIdentity identity, OnConfig on_config)
      : base_(std::move(base)), identity_(std::move(identity)), on_config_(std::move(on_config)) {}
  ~ViewStreams() { StopAll(); }

  // Who each view's stream is, for istiod's XDS identity check (docs/kubernetes.md):
  // `account` gives the service account of the view's pods when its stream starts (sent
  // as SERVICE_ACCOUNT; "" keeps the node identity's), and `token` a bearer token for that
  // account, called for every stream it opens (on Kubernetes a TokenRequest bound to one
  // of the view's pods). Unset: the base options' token file, the same for every view.
  // Set before the first Sync().
  using AccountFn = std::function<std::string(const View&)>;
  using TokenFn = std::function<Result<std::string>(const View&, const std::string& account)>;
  void SetIdentitySource(AccountFn account, TokenFn token) {
    account_fn_ = std::move(account);
    token_fn_ = std::move(token);
  }

  // Starts streams for new views and stops those no longer listed; returns the ids of
  // the views whose stream was stopped.
  std::vector<std::string> Sync(const std::vector<View>& views);
  void StopAll();

  struct StreamStatus {
    View view;
    xds::AdsClientStatus status;
  };
  std::vector<StreamStatus> Status() const;

 private:
  struct Stream {
    View view;
    std::string account;  // the service account it asks as ("" for the node's)
    std::unique_ptr<config::ConfigStore> store;
    std::unique_ptr<xds::AdsClient> client;
  };
  xds::AdsClientOptions base_;
  xds::NodeIdentity identity_;
  OnConfig on_config_;
  AccountFn account_fn_;
  TokenFn token_fn_;
  mutable std::mutex mu_;
  std::map<std::string, Stream> streams_;  // by View::Id()
};

}  // namespace sluice::agent
