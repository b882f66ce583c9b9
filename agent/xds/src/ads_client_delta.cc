// AdsClient's Delta (incremental) xDS: the per-type state, how a response becomes one
// ConfigStore::Edit (warming included), and the stream loop. The rules are in
// ads_client.h; docs/control-plane.md has the table.
#include <fmt/format.h>
#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <functional>

#include "client_delta.h"
#include "client_detail.h"
#include "envoy/service/discovery/v3/ads.grpc.pb.h"
#include "sluice/config/validate.h"

namespace sluice::xds {
namespace {

using namespace client_detail;
using Request = AdsClient::DeltaState::Request;
using Response = AdsClient::DeltaState::Response;
using Undo = std::vector<std::function<void()>>;

// The children a parent names: a cluster's EDS service name, a listener's RDS names.
std::vector<std::string> ChildrenOf(const Cluster& c) {
  const std::string& svc = config::EdsServiceName(c);
  if (svc.empty())
    return {};
  return {svc};
}
std::vector<std::string> ChildrenOf(const Listener& l) {
  return config::RdsNames(l);
}

// What a child becomes when the server removes it while a parent still uses it: empty, as
// Envoy's EDS and RDS subscriptions do on removal (the cluster keeps no endpoints, the
// listener no routes), so the parent stays valid.
std::shared_ptr<const ClusterLoadAssignment> EmptyChild(const ClusterLoadAssignment*,
                                                        const std::string& name) {
  auto c = std::make_shared<ClusterLoadAssignment>();
  c->set_cluster_name(name);
  return c;
}
std::shared_ptr<const RouteConfiguration> EmptyChild(const RouteConfiguration*,
                                                     const std::string& name) {
  auto r = std::make_shared<RouteConfiguration>();
  r->set_name(name);
  return r;
}

// One resource of a Delta response, decoded and judged.
template <class T>
struct DeltaDecoded {
  struct One {
    std::string name, version;
    std::shared_ptr<const T> res;
  };
  std::vector<One> accepted;
  std::map<std::string, std::string> skipped_versions;  // skipped: ACKed, not served
  std::map<std::string, ResourceIssue> refused, skipped;
  std::map<std::string, std::vector<std::string>> skipped_filters;  // accepted listeners
  std::set<std::string> decided;                                    // every resource's name
};

// Names are opaque (an xdstp:// name is a name like any other); the resource's own name
// must be the same. What fails the whole response (no name, another type, bytes that do
// not decode, a name twice, a name both updated and removed) is an error.
template <class T>
Result<DeltaDecoded<T>> DecodeDelta(const Response& resp) {
  DeltaDecoded<T> out;
  for (int i = 0; i < resp.resources_size(); ++i) {
    const auto& r = resp.resources(i);
    const std::string& name = r.name();
    if (name.empty())
      return Fail(fmt::format("resources[{}]: no name", i));
    if (!out.decided.insert(name).second)
      return Fail(fmt::format("resources[{}]: \"{}\" appears twice in one response", i, name));
    if (!r.has_resource()) {
      out.refused.emplace(name,
                          ResourceIssue{"carries no resource", std::string(config::kInvalid)});
      continue;
    }
    if (r.resource().type_url() != resp.type_url()) {
      return Fail(fmt::format("resources[{}] \"{}\": type {} in a response of type {}", i, name,
                              r.resource().type_url(), resp.type_url()));
    }
    auto res = std::make_shared<T>();
    if (!r.resource().UnpackTo(res.get())) {
      return Fail(fmt::format("resources[{}] \"{}\": cannot decode as {}", i, name,
                              T::descriptor()->full_name()));
    }
    if (NameOf(*res) != name) {
      out.refused.emplace(name, ResourceIssue{fmt::format("its own name is \"{}\"", NameOf(*res)),
                                              std::string(config::kInvalid)});
      continue;
    }
    config::Acceptance a = AcceptOne(*res);
    switch (a.use) {
      case config::Use::kServed:
        if (!a.skipped_filters.empty())
          out.skipped_filters.emplace(name, std::move(a.skipped_filters));
        out.accepted.push_back({name, r.version(), std::move(res)});
        break;
      case config::Use::kSkipped:
        out.skipped.emplace(name, ResourceIssue{std::move(a.reason), std::move(a.reason_class)});
        out.skipped_versions.emplace(name, r.version());
        break;
      case config::Use::kRefused:
        out.refused.emplace(name, ResourceIssue{std::move(a.reason), std::move(a.reason_class)});
        break;
    }
  }
  for (const auto& n : resp.removed_resources()) {
    if (out.decided.contains(n))
      return Fail(fmt::format("\"{}\" is both updated and removed in one response", n));
  }
  return out;
}

// Changes to a layer's received resources, each with its undo, so a response whose edit
// the store refuses leaves nothing behind.
template <class P, class C>
class LayerChange {
 public:
  LayerChange(WarmingLayer<P, C>& l, Undo& undo) : l_(l), undo_(undo) {}

  std::set<std::string> parents, children;  // touched names

  void SetParent(const std::string& name, std::shared_ptr<const P> p) {
    auto old = l_.parents.find(name);
    std::shared_ptr<const P> before = old == l_.parents.end() ? nullptr : old->second;
    auto kids_it = l_.parent_children.find(name);
    std::vector<std::string> old_kids =
        kids_it == l_.parent_children.end() ? std::vector<std::string>{} : kids_it->second;
    undo_.push_back([this, name, before, old_kids] {
      Put(l_.parents, name, before);
      Index(name, before ? &old_kids : nullptr);
    });
    std::vector<std::string> kids = p ? ChildrenOf(*p) : std::vector<std::string>{};
    Put(l_.parents, name, p);
    Index(name, p ? &kids : nullptr);
    parents.insert(name);
    for (const auto& k : old_kids)
      children.insert(k);
  }

  void SetChild(const std::string& name, std::shared_ptr<const C> c) {
    auto old = l_.children.find(name);
    std::shared_ptr<const C> before = old == l_.children.end() ? nullptr : old->second;
    undo_.push_back([this, name, before] { Put(l_.children, name, before); });
    Put(l_.children, name, c);
    children.insert(name);
    if (auto u = l_.child_users.find(name); u != l_.child_users.end())
      parents.insert(u->second.begin(), u->second.end());  // they may warm or change
  }

  bool Has(bool parent, const std::string& name) const {
    return parent ? l_.parents.contains(name) : l_.children.contains(name);
  }

  bool Used(const std::string& child) const {
    auto u = l_.child_users.find(child);
    return u != l_.child_users.end() && !u->second.empty();
  }

  // The children the received parents name, for the child type's subscription.
  std::set<std::string> Wanted() const {
    std::set<std::string> out;
    for (const auto& [k, users] : l_.child_users)
      if (!users.empty())
        out.insert(k);
    return out;
  }

  // What the touched names become in the store: a received parent whose children have
  // all arrived is put with them; one still warming keeps the version in force (and that
  // version's children stay); a parent no longer received goes. A child stays while a
  // received parent names it or a kept version needs it.
  void Resolve(const config::Resources<P>& cur_parents, const config::Resources<C>& cur_children,
               config::ResourceMap<P>& put_p, std::vector<std::string>& rm_p,
               config::ResourceMap<C>& put_c, std::vector<std::string>& rm_c) {
    std::set<std::string> kids_to_check = children;
    for (const auto& p : parents) {
      if (auto k = l_.kept.find(p); k != l_.kept.end()) {
        kids_to_check.insert(k->second.begin(), k->second.end());
        undo_.push_back([this, p, old = k->second] { l_.kept[p] = old; });
        l_.kept.erase(k);
      }
      auto rx = l_.parents.find(p);
      auto cur = cur_parents.find(p);
      if (rx != l_.parents.end()) {
        const auto& kids = l_.parent_children[p];
        const bool ready =
            std::ranges::all_of(kids, [&](const auto& k) { return l_.children.contains(k); });
        if (ready) {
          if (cur == cur_parents.end() || cur->second != rx->second)
            put_p[p] = rx->second;
          kids_to_check.insert(kids.begin(), kids.end());
        } else if (cur != cur_parents.end()) {
          auto old_kids = ChildrenOf(*cur->second);
          kids_to_check.insert(old_kids.begin(), old_kids.end());
          undo_.push_back([this, p] { l_.kept.erase(p); });
          l_.kept[p] = std::move(old_kids);
        }
      } else if (cur != cur_parents.end()) {
        rm_p.push_back(p);
      }
    }
    for (const auto& k : kids_to_check) {
      auto rx = l_.children.find(k);
      auto cur = cur_children.find(k);
      if (rx != l_.children.end() && Used(k)) {
        if (cur == cur_children.end() || cur->second != rx->second)
          put_c[k] = rx->second;
      } else if (KeptNeeds(k)) {
        // the version in force of a warming parent names it: it stays as it is
      } else if (cur != cur_children.end()) {
        rm_c.push_back(k);
      }
    }
  }

 private:
  template <class T>
  static void Put(config::ResourceMap<T>& m, const std::string& name, std::shared_ptr<const T> v) {
    if (v)
      m.insert_or_assign(name, std::move(v));
    else
      m.erase(name);
  }

  // Sets parent `name`'s children (none when absent) in both indexes.
  void Index(const std::string& name, const std::vector<std::string>* kids) {
    if (auto old = l_.parent_children.find(name); old != l_.parent_children.end()) {
      for (const auto& k : old->second) {
        auto u = l_.child_users.find(k);
        if (u == l_.child_users.end())
          continue;
        u->second.erase(name);
        if (u->second.empty())
          l_.child_users.erase(u);
      }
      l_.parent_children.erase(old);
    }
    if (!kids)
      return;
    l_.parent_children[name] = *kids;
    for (const auto& k : *kids)
      l_.child_users[k].insert(name);
  }

  bool KeptNeeds(const std::string& child) const {
    return std::ranges::any_of(l_.kept, [&](const auto& kv) {
      return std::ranges::find(kv.second, child) != kv.second.end();
    });
  }

  WarmingLayer<P, C>& l_;
  Undo& undo_;
};

}  // namespace

AdsClient::DeltaState::DeltaState(config::ConfigStore& s, envoy::config::core::v3::Node n)
    : store(s), node(std::move(n)) {
  for (auto t : {kClusterType, kEndpointType, kListenerType, kRouteType, kSecretType}) {
    types[std::string(t)];
    status[std::string(t)];
  }
}

Request AdsClient::DeltaState::NewRequest(std::string_view type) {
  Request req;
  if (first_message) {
    *req.mutable_node() = node;  // once per stream, as Envoy does
    first_message = false;
  }
  req.set_type_url(std::string(type));
  return req;
}

std::vector<Request> AdsClient::DeltaState::OnStreamStart() {
  first_message = true;
  std::vector<Request> out;
  auto initial = [&](std::string_view type, bool wildcard) {
    PerType& t = types.find(type)->second;
    t.nonce.clear();
    Request req = NewRequest(type);
    if (!wildcard) {
      for (const auto& n : t.names)
        req.add_resource_names_subscribe(n);
    }
    // "Reconnect": what is held, so the server sends only what differs.
    for (const auto& [name, v] : t.versions)
      (*req.mutable_initial_resource_versions())[name] = v;
    status[std::string(type)].subscribed = t.names.size();
    out.push_back(std::move(req));
  };
  for (auto& [_, t] : types)
    t.nonce.clear();
  types.find(kClusterType)->second.wildcard = true;
  initial(kClusterType, true);  // names nothing: the (legacy) wildcard, as Envoy asks
  if (!types.find(kEndpointType)->second.names.empty())
    initial(kEndpointType, false);
  if (lds_requested) {
    types.find(kListenerType)->second.wildcard = true;
    initial(kListenerType, true);
  }
  if (!types.find(kRouteType)->second.names.empty())
    initial(kRouteType, false);
  if (!types.find(kSecretType)->second.names.empty())
    initial(kSecretType, false);
  return out;
}

std::vector<Request> AdsClient::DeltaState::OnResponse(const Response& resp) {
  std::vector<Request> out;
  const std::string& type = resp.type_url();
  auto it = types.find(type);
  if (it == types.end()) {
    // Not asked for: ignored and not answered, as Envoy ignores unknown type URLs.
    if (warned_types.insert(type).second)
      spdlog::warn("xds: ignoring a delta response of unsubscribed type {}", type);
    return out;
  }
  PerType& t = it->second;
  TypeStatus& st = status[type];
  t.nonce = resp.nonce();
  st.last_nonce = resp.nonce();
  auto nack = [&](const std::string& why) {
    spdlog::warn("xds: NACK delta {} nonce {}: {}", type, resp.nonce(), why);
    Request req = NewRequest(type);
    req.set_response_nonce(resp.nonce());
    req.mutable_error_detail()->set_code(3);  // INVALID_ARGUMENT
    req.mutable_error_detail()->set_message(why);
    st.last_nack = why;
    ++st.nacks;
    return req;
  };

  auto t0 = std::chrono::steady_clock::now();
  Undo undo;
  LayerChange<Cluster, Cla> cc(cds, undo);
  LayerChange<Listener, Route> lc(lds, undo);
  // The decisions of this response, for the status and the versions held.
  std::map<std::string, ResourceIssue> refused, skipped;
  std::map<std::string, std::vector<std::string>> skipped_filters;
  std::set<std::string> decided;
  std::map<std::string, std::string> new_versions;  // name -> version now held
  std::vector<std::string> removed_names;

  // Folds the response into the received resources of its layer. `as_parent`: CDS/LDS.
  auto fold = [&]<class T>(auto& change, bool as_parent,
                           const std::set<std::string>* subscribed) -> Result<void> {
    auto got = DecodeDelta<T>(resp);
    SLUICE_RETURN_IF_ERROR(got);
    for (auto& one : got->accepted) {
      if (subscribed && !subscribed->contains(one.name))
        continue;  // not asked for (any more): ignored
      if constexpr (std::is_same_v<T, Cluster> || std::is_same_v<T, Listener>) {
        change.SetParent(one.name, one.res);
      } else {
        change.SetChild(one.name, one.res);
      }
      new_versions[one.name] = one.version;
    }
    for (const auto& [name, v] : got->skipped_versions) {
      if (as_parent) {
        if constexpr (std::is_same_v<T, Cluster> || std::is_same_v<T, Listener>)
          change.SetParent(name, nullptr);
      }
      new_versions[name] = v;
    }
    for (const auto& name : resp.removed_resources()) {
      if (!t.versions.contains(name) && !change.Has(as_parent, name))
        continue;  // not held: nothing to do
      removed_names.push_back(name);
      if constexpr (std::is_same_v<T, Cluster> || std::is_same_v<T, Listener>) {
        change.SetParent(name, nullptr);
      } else {
        if (change.Used(name))
          change.SetChild(name, EmptyChild(static_cast<const T*>(nullptr), name));
        else
          change.SetChild(name, nullptr);
      }
    }
    refused = std::move(got->refused);
    skipped = std::move(got->skipped);
    skipped_filters = std::move(got->skipped_filters);
    decided = std::move(got->decided);
    return {};
  };
  // SDS: secrets of the subscribed names are put in force as they come; a removal takes
  // the secret out (the chains that name it fail closed again).
  config::SnapshotEdit sds_edit;
  auto fold_secrets = [&]() -> Result<void> {
    auto got = DecodeDelta<Secret>(resp);
    SLUICE_RETURN_IF_ERROR(got);
    for (auto& one : got->accepted) {
      if (!t.names.contains(one.name))
        continue;  // not asked for (any more): ignored
      sds_edit.secrets[one.name] = one.res;
      new_versions[one.name] = one.version;
    }
    for (const auto& [name, v] : got->skipped_versions)
      new_versions[name] = v;
    for (const auto& name : resp.removed_resources()) {
      if (!t.versions.contains(name))
        continue;
      removed_names.push_back(name);
      sds_edit.removed_secrets.push_back(name);
    }
    refused = std::move(got->refused);
    skipped = std::move(got->skipped);
    decided = std::move(got->decided);
    return {};
  };
  Result<void> folded;
  if (type == kSecretType)
    folded = fold_secrets();
  else if (type == kClusterType)
    folded = fold.template operator()<Cluster>(cc, true, nullptr);
  else if (type == kEndpointType)
    folded = fold.template operator()<Cla>(cc, false, &t.names);
  else if (type == kListenerType)
    folded = fold.template operator()<Listener>(lc, true, nullptr);
  else
    folded = fold.template operator()<Route>(lc, false, &t.names);

  // The child type's subscription follows the received parents: new names are subscribed,
  // names no parent uses any more unsubscribed (and dropped).
  std::vector<std::string> subscribe, unsubscribe;
  const bool parent_type = type == kClusterType || type == kListenerType;
  const std::string child_type(type == kClusterType ? kEndpointType : kRouteType);
  if (folded && parent_type) {
    const auto wanted = type == kClusterType ? cc.Wanted() : lc.Wanted();
    const auto& have = types.find(child_type)->second.names;
    std::ranges::set_difference(wanted, have, std::back_inserter(subscribe));
    std::ranges::set_difference(have, wanted, std::back_inserter(unsubscribe));
    for (const auto& n : unsubscribe) {
      if (type == kClusterType)
        cc.SetChild(n, nullptr);
      else
        lc.SetChild(n, nullptr);
    }
  }

  Result<config::Diff> applied = std::unexpected(Error{});
  if (folded) {
    config::SnapshotPtr cur = store.Current();
    config::SnapshotEdit edit;
    cc.Resolve(cur->clusters, cur->endpoints, edit.clusters, edit.removed_clusters, edit.endpoints,
               edit.removed_endpoints);
    lc.Resolve(cur->listeners, cur->routes, edit.listeners, edit.removed_listeners, edit.routes,
               edit.removed_routes);
    // Every type's latest applied version: an edit that warms nothing publishes nothing,
    // so a later one carries the versions of those before it.
    for (const auto& [tu, pt] : types)
      if (!pt.system_version.empty())
        edit.versions[tu] = pt.system_version;
    edit.versions[type] = resp.system_version_info();
    edit.secrets = std::move(sds_edit.secrets);
    edit.removed_secrets = std::move(sds_edit.removed_secrets);
    applied = store.Edit(std::move(edit));
  } else {
    applied = std::unexpected(folded.error());
  }
  auto t1 = std::chrono::steady_clock::now();
  spdlog::debug("xds: delta {} {} ({} resources, {} removed): decode and apply {:.2f} ms", type,
                resp.system_version_info(), resp.resources_size(), resp.removed_resources_size(),
                std::chrono::duration<double, std::milli>(t1 - t0).count());
  if (!applied) {
    for (auto u = undo.rbegin(); u != undo.rend(); ++u)
      (*u)();
    out.push_back(nack(applied.error().message));
    return out;
  }

  // Applied: versions held, subscriptions, status.
  for (auto& [name, v] : new_versions)
    t.versions.insert_or_assign(name, std::move(v));
  for (const auto& n : removed_names)
    t.versions.erase(n);
  t.ever_accepted = true;
  t.system_version = resp.system_version_info();
  ++st.applied;
  st.removed += removed_names.size();
  const bool partial = !refused.empty();
  const std::string refusal = partial ? RefusalMessage(type, refused) : "";
  for (const auto& [name, issue] : skipped) {
    auto old = st.skipped.find(name);
    if (old == st.skipped.end() || old->second.reason != issue.reason)
      spdlog::warn("xds: {} \"{}\": {}", ShortType(type), name, issue.reason);
    ++st.skipped_total[issue.reason_class];
  }
  for (const auto& [name, issue] : refused)
    ++st.refused_total[issue.reason_class];
  for (const auto& n : decided) {
    st.refused.erase(n);
    st.skipped.erase(n);
  }
  for (const auto& n : removed_names) {
    st.refused.erase(n);
    st.skipped.erase(n);
  }
  st.refused.merge(refused);
  st.skipped.merge(skipped);
  if (type == kListenerType) {
    for (const auto& n : decided)
      if (!refused.contains(n))
        listener_skipped_filters.erase(n);
    for (const auto& n : removed_names)
      listener_skipped_filters.erase(n);
    for (auto& [listener, fts] : skipped_filters) {
      for (const auto& ft : fts) {
        if (warned_filter_types.insert(ft).second) {
          spdlog::warn(
              "xds: filter type {} (first in listener \"{}\") has no effect on where "
              "traffic goes: skipped",
              ft, listener);
        }
      }
      listener_skipped_filters[listener] = std::move(fts);
    }
    st.skipped_filters.clear();
    for (const auto& [_, fts] : listener_skipped_filters)
      for (const auto& ft : fts)
        ++st.skipped_filters[ft];
  }
  st.held = t.versions.size();

  // SDS follows the listeners received: the secret names of the listeners this response
  // carried or removed are recounted (its cost follows the response), and names that
  // came into use are subscribed, names out of use unsubscribed and their secrets
  // dropped, before the LDS ACK.
  std::vector<std::string> sds_subscribe, sds_unsubscribe;
  if (type == kListenerType) {
    std::set<std::string> touched(decided.begin(), decided.end());
    touched.insert(removed_names.begin(), removed_names.end());
    for (const auto& name : touched) {
      std::vector<std::string> now;
      if (auto l = lds.parents.find(name); l != lds.parents.end() && l->second)
        now = config::SdsNames(*l->second);
      auto& was = listener_sds[name];
      for (const auto& n : was) {
        if (--sds_refs[n] == 0) {
          sds_refs.erase(n);
          sds_unsubscribe.push_back(n);
        }
      }
      for (const auto& n : now) {
        if (sds_refs[n]++ == 0) {
          if (auto u = std::ranges::find(sds_unsubscribe, n); u != sds_unsubscribe.end())
            sds_unsubscribe.erase(u);  // named again by another listener
          else
            sds_subscribe.push_back(n);
        }
      }
      if (now.empty())
        listener_sds.erase(name);
      else
        was = std::move(now);
    }
  }
  if (!sds_subscribe.empty() || !sds_unsubscribe.empty()) {
    PerType& sdt = types.find(kSecretType)->second;
    TypeStatus& sst = status[std::string(kSecretType)];
    Request req = NewRequest(kSecretType);
    config::SnapshotEdit drop;
    for (const auto& n : sds_subscribe) {
      sdt.names.insert(n);
      req.add_resource_names_subscribe(n);
    }
    for (const auto& n : sds_unsubscribe) {
      sdt.names.erase(n);
      sdt.versions.erase(n);
      sst.refused.erase(n);
      sst.skipped.erase(n);
      req.add_resource_names_unsubscribe(n);
      drop.removed_secrets.push_back(n);
    }
    sst.subscribed = sdt.names.size();
    sst.held = sdt.versions.size();
    if (!drop.removed_secrets.empty()) {
      if (auto dropped = store.Edit(std::move(drop)); !dropped)
        spdlog::warn("xds: dropping unsubscribed secrets: {}", dropped.error().message);
    }
    out.push_back(std::move(req));
  }

  // As Envoy: the child type's (un)subscription goes out before this response's ACK.
  if (!subscribe.empty() || !unsubscribe.empty()) {
    PerType& ct = types.find(child_type)->second;
    TypeStatus& cst = status[child_type];
    Request req = NewRequest(child_type);
    for (const auto& n : subscribe) {
      ct.names.insert(n);
      req.add_resource_names_subscribe(n);
    }
    for (const auto& n : unsubscribe) {
      ct.names.erase(n);
      ct.versions.erase(n);
      cst.refused.erase(n);
      cst.skipped.erase(n);
      req.add_resource_names_unsubscribe(n);
    }
    cst.subscribed = ct.names.size();
    cst.held = ct.versions.size();
    out.push_back(std::move(req));
  }
  if (partial) {
    out.push_back(nack(refusal));
  } else {
    Request ack = NewRequest(type);
    ack.set_response_nonce(resp.nonce());
    st.acked_version = resp.system_version_info();
    st.last_nack.clear();
    ++st.acks;
    out.push_back(std::move(ack));
  }

  // LDS once CDS is in and the clusters have warmed (or EDS has answered at least once).
  if (!lds_requested && types.find(kClusterType)->second.ever_accepted) {
    const auto& eds = types.find(kEndpointType)->second;
    bool warm =
        std::ranges::all_of(eds.names, [&](const auto& n) { return cds.children.contains(n); });
    if (warm || eds.ever_accepted) {
      lds_requested = true;
      types.find(kListenerType)->second.wildcard = true;
      Request req = NewRequest(kListenerType);
      for (const auto& [name, v] : types.find(kListenerType)->second.versions)
        (*req.mutable_initial_resource_versions())[name] = v;
      out.push_back(std::move(req));
    }
  }
  return out;
}

bool AdsClient::RunDelta(const std::shared_ptr<grpc::Channel>& channel, grpc::ClientContext& ctx,
                         grpc::Status& st) {
  auto stub = envoy::service::discovery::v3::AggregatedDiscoveryService::NewStub(channel);
  auto stream = stub->DeltaAggregatedResources(&ctx);
  bool got_response = client_detail::PumpStream<DeltaState::Response>(
      *stream, *delta_, opts_.server, "delta", [this] { PublishStatus(true); });
  st = stream->Finish();
  return got_response;
}

}  // namespace sluice::xds
