#include "ns_streams.h"

#include <spdlog/spdlog.h>

#include <set>

namespace sluice::agent {

std::vector<std::string> NamespaceStreams::Sync(const std::vector<std::string>& namespaces) {
  const std::set<std::string> want(namespaces.begin(), namespaces.end());
  std::vector<std::string> stopped;
  std::map<std::string, Stream> gone;
  {
    std::lock_guard lock(mu_);
    for (auto it = streams_.begin(); it != streams_.end();) {
      if (want.contains(it->first)) {
        ++it;
        continue;
      }
      stopped.push_back(it->first);
      gone.insert(streams_.extract(it++));
    }
    for (const auto& ns : want) {
      if (streams_.contains(ns))
        continue;
      Stream s;
      s.store = std::make_unique<config::ConfigStore>();
      s.store->Subscribe([this, ns](const config::SnapshotPtr& snap, const config::Diff&) {
        on_config_(ns, snap);
      });
      xds::NodeIdentity id = identity_;
      id.pod_namespace = ns;
      xds::AdsClientOptions o = base_;
      o.node = xds::BuildNode(id);
      s.client = std::make_unique<xds::AdsClient>(o, *s.store);
      if (auto r = s.client->Start(); !r) {
        spdlog::error("xDS stream for namespace {}: {}", ns, r.error().message);
        continue;
      }
      spdlog::info("xDS: stream for namespace {} (as {})", ns, o.node.id());
      streams_.emplace(ns, std::move(s));
    }
  }
  for (auto& [ns, s] : gone) {  // outside the lock: Stop joins the stream thread
    s.client->Stop();
    spdlog::info("xDS: stream for namespace {} closed (no pods left)", ns);
  }
  return stopped;
}

void NamespaceStreams::StopAll() {
  std::map<std::string, Stream> all;
  {
    std::lock_guard lock(mu_);
    all.swap(streams_);
  }
  for (auto& [ns, s] : all)
    s.client->Stop();
}

config::SnapshotPtr NamespaceStreams::Current(const std::string& ns) const {
  std::lock_guard lock(mu_);
  auto it = streams_.find(ns);
  if (it == streams_.end())
    return nullptr;
  auto s = it->second.store->Current();
  return s && s->generation > 0 ? s : nullptr;
}

std::map<std::string, xds::AdsClientStatus> NamespaceStreams::Status() const {
  std::lock_guard lock(mu_);
  std::map<std::string, xds::AdsClientStatus> out;
  for (const auto& [ns, s] : streams_)
    out[ns] = s.client->Status();
  return out;
}

}  // namespace sluice::agent
