#include "view_streams.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <set>

namespace sluice::agent {

std::string View::Id() const {
  std::string id = ns;
  if (!labels.empty()) {
    id += "{";
    for (const auto& [k, v] : labels) {
      if (id.back() != '{')
        id += ',';
      id += k + "=" + v;
    }
    id += "}";
  }
  return id;
}

namespace {

// FNV-1a of the view's labels: keeps the node IDs of one namespace's views apart (istiod
// lists proxies by ID) without putting the labels themselves into the ID.
std::string LabelsTag(const enrolment::Labels& labels) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (const auto& [k, v] : labels) {
    for (char c : k + "=" + v + ",") {
      h ^= static_cast<unsigned char>(c);
      h *= 0x100000001b3ull;
    }
  }
  char buf[9];
  std::snprintf(buf, sizeof(buf), "%08x", static_cast<uint32_t>(h ^ (h >> 32)));
  return buf;
}

}  // namespace

std::vector<std::string> ViewStreams::Sync(const std::vector<View>& views) {
  std::map<std::string, const View*> want;
  for (const auto& v : views)
    want.emplace(v.Id(), &v);
  std::vector<std::string> stopped;
  std::map<std::string, Stream> gone;
  {
    std::lock_guard lock(mu_);
    for (auto it = streams_.begin(); it != streams_.end();) {
      // A view whose pods now run as another service account asks again as that one
      // (its first pod may have been seen before the API server said whose it is).
      const bool same_account = !account_fn_ || account_fn_(it->second.view) == it->second.account;
      if (want.contains(it->first) && same_account) {
        ++it;
        continue;
      }
      if (!want.contains(it->first))
        stopped.push_back(it->first);  // a restarted one keeps its config meanwhile
      gone.insert(streams_.extract(it++));
    }
    for (const auto& [id, view] : want) {
      if (streams_.contains(id))
        continue;
      Stream s;
      s.view = *view;
      s.store = std::make_unique<config::ConfigStore>();
      s.store->Subscribe([this, id](const config::SnapshotPtr& snap, const config::Diff& diff) {
        on_config_(id, snap, diff);
      });
      xds::NodeIdentity node = identity_;
      node.pod_namespace = view->ns;
      node.labels = {view->labels.begin(), view->labels.end()};
      if (!view->labels.empty())
        node.pod_name += "-" + LabelsTag(view->labels);
      std::string account;
      if (account_fn_)
        account = account_fn_(*view);
      if (!account.empty())
        node.service_account = account;
      s.account = account;
      xds::AdsClientOptions o = base_;
      o.node = xds::BuildNode(node);
      if (token_fn_) {
        o.token_source = [fn = token_fn_, v = *view, account] { return fn(v, account); };
      }
      s.client = std::make_unique<xds::AdsClient>(o, *s.store);
      if (auto r = s.client->Start(); !r) {
        spdlog::error("xDS stream for {}: {}", id, r.error().message);
        continue;
      }
      spdlog::info("xDS: stream for {} (as {})", id, o.node.id());
      streams_.emplace(id, std::move(s));
    }
  }
  for (auto& [id, s] : gone) {  // outside the lock: Stop joins the stream thread
    s.client->Stop();
    if (std::find(stopped.begin(), stopped.end(), id) != stopped.end())
      spdlog::info("xDS: stream for {} closed (no pods left)", id);
    else
      spdlog::info("xDS: stream for {} restarted as another service account", id);
  }
  return stopped;
}

void ViewStreams::StopAll() {
  std::map<std::string, Stream> all;
  {
    std::lock_guard lock(mu_);
    all.swap(streams_);
  }
  for (auto& [id, s] : all)
    s.client->Stop();
}

std::vector<ViewStreams::StreamStatus> ViewStreams::Status() const {
  std::lock_guard lock(mu_);
  std::vector<StreamStatus> out;
  for (const auto& [id, s] : streams_)
    out.push_back({s.view, s.client->Status()});
  return out;
}

}  // namespace sluice::agent
