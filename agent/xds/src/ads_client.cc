#include "sluice/xds/ads_client.h"

#include <fmt/format.h>
#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <grpcpp/channel.h>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>

#include "client_delta.h"
#include "client_detail.h"
#include "envoy/service/discovery/v3/ads.grpc.pb.h"
#include "envoy/service/discovery/v3/discovery.pb.h"
#include "sluice/config/validate.h"

namespace sluice::xds {
namespace {

using envoy::config::cluster::v3::Cluster;
using envoy::config::endpoint::v3::ClusterLoadAssignment;
using envoy::config::listener::v3::Listener;
using envoy::config::route::v3::RouteConfiguration;
using envoy::extensions::transport_sockets::tls::v3::Secret;
using envoy::service::discovery::v3::DiscoveryRequest;
using envoy::service::discovery::v3::DiscoveryResponse;
using namespace client_detail;

// One response, resource by resource. What fails the whole response (a resource that
// does not decode, of another type, or named twice) is an error; otherwise each resource
// is accepted, skipped or refused on its own, as Envoy's LDS and CDS do.
template <class T>
struct Decoded {
  config::ResourceMap<T> accepted;
  std::map<std::string, ResourceIssue> refused, skipped;
  std::map<std::string, std::vector<std::string>> skipped_filters;  // accepted listeners
  std::set<std::string> names;  // every resource of the response
};

template <class T>
Result<Decoded<T>> Decode(const DiscoveryResponse& resp) {
  Decoded<T> out;
  for (int i = 0; i < resp.resources_size(); ++i) {
    const google::protobuf::Any* any = &resp.resources(i);
    envoy::service::discovery::v3::Resource wrapper;  // istiod may wrap (name, ttl, ...)
    if (any->Is<envoy::service::discovery::v3::Resource>()) {
      if (!any->UnpackTo(&wrapper)) {
        return Fail(fmt::format("resources[{}]: cannot decode Resource wrapper", i));
      }
      any = &wrapper.resource();
    }
    if (any->type_url() != resp.type_url()) {
      return Fail(fmt::format("resources[{}]: type {} in a response of type {}", i, any->type_url(),
                              resp.type_url()));
    }
    auto res = std::make_shared<T>();
    if (!any->UnpackTo(res.get())) {
      return Fail(
          fmt::format("resources[{}]: cannot decode as {}", i, T::descriptor()->full_name()));
    }
    const std::string name = NameOf(*res);
    if (!out.names.insert(name).second) {
      return Fail(fmt::format("resources[{}]: \"{}\" appears twice in one response", i, name));
    }
    config::Acceptance a = AcceptOne(*res);
    switch (a.use) {
      case config::Use::kServed:
        if (!a.skipped_filters.empty())
          out.skipped_filters.emplace(name, std::move(a.skipped_filters));
        out.accepted.emplace(name, std::move(res));
        break;
      case config::Use::kSkipped:
        out.skipped.emplace(name, ResourceIssue{std::move(a.reason), std::move(a.reason_class)});
        break;
      case config::Use::kRefused:
        out.refused.emplace(name, ResourceIssue{std::move(a.reason), std::move(a.reason_class)});
        break;
    }
  }
  return out;
}

// SotW for CDS/LDS with per-resource acceptance: the response's accepted resources, and
// for each refused one the version held before, if any (Envoy keeps the old listener or
// cluster; a new one stays absent).
template <class T>
std::shared_ptr<config::ResourceMap<T>> KeepRefused(Decoded<T>& got,
                                                    const config::ResourceMap<T>& held) {
  auto out = std::make_shared<config::ResourceMap<T>>(std::move(got.accepted));
  for (const auto& [name, _] : got.refused) {
    if (auto it = held.find(name); it != held.end())
      out->emplace(name, it->second);
  }
  return out;
}

// SotW merge for EDS/RDS: a response carries some of the subscribed resources; the others
// keep their last received version. (Names no longer subscribed were dropped when the
// CDS/LDS response that unsubscribed them was folded.) `held` is copy-on-write: the cost
// follows the response.
template <class T>
void MergeNamed(config::Resources<T>& held, config::ResourceMap<T>&& fresh,
                const std::set<std::string>& subscribed) {
  for (auto& [name, r] : fresh) {
    if (subscribed.contains(name))
      held.insert_or_assign(name, std::move(r));
  }
}

Result<std::string> ReadFile(const std::string& path, std::string_view what) {
  std::ifstream in(path);
  if (!in)
    return FailErrno(fmt::format("{} {}", what, path), errno);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string Trim(std::string s) {
  auto not_space = [](unsigned char ch) { return !std::isspace(ch); };
  s.erase(s.begin(), std::find_if(s.begin(), s.end(), not_space));
  s.erase(std::find_if(s.rbegin(), s.rend(), not_space).base(), s.end());
  return s;
}

}  // namespace

// The protocol state of the client: what it has received per type, what it subscribes
// to, and the versions and nonces it answers with. It survives reconnects, so a new stream
// starts from the versions already held. Used only on the stream thread.
struct AdsClient::State {
  struct PerType {
    std::string acked_version, nonce;
    std::set<std::string> names;  // EDS/RDS subscriptions; empty for wildcard CDS/LDS
    bool ever_accepted = false;
  };
  // Everything received and individually valid, warming or not. Each part is shared
  // and replaced whole when it changes, so trying a response on a copy costs pointers.
  template <class T>
  using Ptr = std::shared_ptr<const T>;
  struct Received {
    Ptr<config::ResourceMap<Cluster>> clusters = std::make_shared<config::ResourceMap<Cluster>>();
    // Copy-on-write (config::Resources): copying Received copies chunk pointers, and an
    // EDS/RDS response copies only the chunks it writes.
    config::Resources<ClusterLoadAssignment> endpoints;
    Ptr<config::ResourceMap<Listener>> listeners =
        std::make_shared<config::ResourceMap<Listener>>();
    config::Resources<RouteConfiguration> routes;
    // RdsNames per listener.
    Ptr<std::map<std::string, std::vector<std::string>>> listener_rds =
        std::make_shared<std::map<std::string, std::vector<std::string>>>();
    Ptr<std::set<std::string>> eds_names = std::make_shared<std::set<std::string>>();
    Ptr<std::set<std::string>> rds_names = std::make_shared<std::set<std::string>>();
    // Who uses each child: EDS service name -> clusters, route name -> listeners.
    Ptr<std::map<std::string, std::vector<std::string>>> eds_users =
        std::make_shared<std::map<std::string, std::vector<std::string>>>();
    Ptr<std::map<std::string, std::vector<std::string>>> route_users =
        std::make_shared<std::map<std::string, std::vector<std::string>>>();
    // SDS: the secrets the received listeners' TLS contexts name (config::SdsNames), and
    // those received of them. A listener does not wait for its secrets: its chains fail
    // closed until they come (the proxy's compile), so secrets are no part of warming.
    config::Resources<Secret> secrets;
    Ptr<std::set<std::string>> sds_names = std::make_shared<std::set<std::string>>();
  };

  config::ConfigStore& store;
  envoy::config::core::v3::Node node;
  Received rx;
  std::map<std::string, PerType, std::less<>> types;
  std::map<std::string, TypeStatus> status;
  bool first_message = true;
  bool lds_requested = false;
  std::set<std::string> warned_filter_types;  // each skipped filter type is logged once

  State(config::ConfigStore& s, envoy::config::core::v3::Node n) : store(s), node(std::move(n)) {
    for (auto t : {kClusterType, kEndpointType, kListenerType, kRouteType, kSecretType}) {
      types[std::string(t)];
      status[std::string(t)];
    }
  }

  DiscoveryRequest Request(std::string_view type) {
    PerType& t = types.find(type)->second;
    DiscoveryRequest req;
    if (first_message) {
      *req.mutable_node() = node;  // once per stream, as Envoy does
      first_message = false;
    }
    req.set_type_url(std::string(type));
    req.set_version_info(t.acked_version);
    req.set_response_nonce(t.nonce);
    for (const auto& n : t.names)
      req.add_resource_names(n);
    status[std::string(type)].subscribed = t.names.size();
    return req;
  }

  // A new stream: re-subscribe to everything held, CDS first. Nonces belong to the old
  // stream and are dropped; versions are kept so the server knows what we have.
  std::vector<DiscoveryRequest> OnStreamStart() {
    first_message = true;
    for (auto& [_, t] : types)
      t.nonce.clear();
    std::vector<DiscoveryRequest> out;
    out.push_back(Request(kClusterType));
    if (!types.find(kEndpointType)->second.names.empty())
      out.push_back(Request(kEndpointType));
    if (lds_requested)
      out.push_back(Request(kListenerType));
    if (!types.find(kRouteType)->second.names.empty())
      out.push_back(Request(kRouteType));
    if (!types.find(kSecretType)->second.names.empty())
      out.push_back(Request(kSecretType));
    return out;
  }

  // The active set: received resources whose dependencies have arrived. A cluster (new
  // or changed) waits for its ClusterLoadAssignment and a listener for its
  // RouteConfigurations; meanwhile the version in force, if any, stays.
  // `resp` is the response being applied: its version goes into the snapshot's versions.
  config::Snapshot BuildActive(const Received& r, const config::Snapshot& cur,
                               const DiscoveryResponse& resp) const {
    config::Snapshot s;
    for (const auto& [name, c] : *r.clusters) {
      const std::string& svc = config::EdsServiceName(*c);
      if (svc.empty()) {
        s.clusters.emplace(name, c);
      } else if (auto e = r.endpoints.find(svc); e != r.endpoints.end()) {
        s.clusters.emplace(name, c);
        s.endpoints.emplace(svc, e->second);
      } else if (auto old = cur.clusters.find(name); old != cur.clusters.end()) {
        const std::string& old_svc = config::EdsServiceName(*old->second);
        auto oe = cur.endpoints.find(old_svc);
        if (old_svc.empty() || oe != cur.endpoints.end()) {
          s.clusters.emplace(name, old->second);
          if (!old_svc.empty())
            s.endpoints.emplace(old_svc, oe->second);
        }
      }
    }
    for (const auto& [name, l] : *r.listeners) {
      const auto& rds = r.listener_rds->at(name);
      bool ready = std::ranges::all_of(rds, [&](const auto& n) { return r.routes.contains(n); });
      if (ready) {
        s.listeners.emplace(name, l);
        for (const auto& n : rds)
          s.routes.emplace(n, r.routes.at(n));
      } else if (auto old = cur.listeners.find(name); old != cur.listeners.end()) {
        auto old_rds = config::RdsNames(*old->second);
        if (std::ranges::all_of(old_rds, [&](const auto& n) { return cur.routes.contains(n); })) {
          s.listeners.emplace(name, old->second);
          for (const auto& n : old_rds)
            s.routes.emplace(n, cur.routes.at(n));
        }
      }
    }
    s.secrets = r.secrets;  // chunk pointers: secrets wait for nothing
    for (const auto& [type, t] : types) {
      if (!t.acked_version.empty())
        s.versions[type] = t.acked_version;
    }
    s.versions[resp.type_url()] = resp.version_info();
    return s;
  }

  // What one response refused and skipped, by name, and the filter types its accepted
  // listeners skip.
  struct Issues {
    std::map<std::string, ResourceIssue> refused, skipped;
    std::map<std::string, std::vector<std::string>> skipped_filters;
    std::set<std::string> decided;  // every name the response carried
  };

  template <class T>
  static void TakeIssues(Decoded<T>& got, Issues& issues) {
    issues.refused = std::move(got.refused);
    issues.skipped = std::move(got.skipped);
    issues.skipped_filters = std::move(got.skipped_filters);
    issues.decided = std::move(got.names);
  }

  // SotW EDS/RDS responses carry some of the subscribed names: their change to the active
  // set, as a ConfigStore::Edit whose cost follows the response (the resources it carries,
  // and the clusters or listeners they complete), instead of BuildActive's whole set.
  // nullopt when a user of a carried resource is in force at another version than the one
  // received (a warming update whose completion also retires what the old version named):
  // then BuildActive decides. `issues` names what the response carried and refused.
  static bool SameContent(const google::protobuf::Message& a, const google::protobuf::Message& b) {
    return config::CanonicalBytes(a) == config::CanonicalBytes(b);
  }
  template <class T>
  static bool InForce(const config::Resources<T>& cur, const std::string& name,
                      const std::shared_ptr<const T>& received) {
    auto it = cur.find(name);
    return it != cur.end() && (it->second == received || SameContent(*it->second, *received));
  }

  std::optional<config::SnapshotEdit> IncrementalEdit(const Received& r,
                                                      const config::Snapshot& cur,
                                                      const DiscoveryResponse& resp,
                                                      const Issues& issues) const {
    config::SnapshotEdit e;
    const bool eds = resp.type_url() == kEndpointType;
    const bool sds = resp.type_url() == kSecretType;
    for (const auto& n : issues.decided) {
      if (issues.refused.contains(n) || issues.skipped.contains(n))
        continue;
      if (sds) {  // in force as it comes (subscribed names only)
        if (auto it = r.secrets.find(n); it != r.secrets.end())
          e.secrets[n] = it->second;
        continue;
      }
      bool active = false;
      if (eds) {
        auto cla = r.endpoints.find(n);
        auto users = r.eds_users->find(n);
        if (cla == r.endpoints.end() || users == r.eds_users->end())
          continue;  // not subscribed
        for (const auto& c : users->second) {
          const auto& rc = r.clusters->at(c);
          if (!cur.clusters.contains(c))
            e.clusters[c] = rc;  // was waiting for these endpoints
          else if (!InForce(cur.clusters, c, rc))
            return std::nullopt;
          active = true;
        }
        if (active)
          e.endpoints[n] = cla->second;
      } else {
        auto route = r.routes.find(n);
        auto users = r.route_users->find(n);
        if (route == r.routes.end() || users == r.route_users->end())
          continue;
        for (const auto& l : users->second) {
          const auto& rl = r.listeners->at(l);
          if (cur.listeners.contains(l)) {
            if (!InForce(cur.listeners, l, rl))
              return std::nullopt;
            active = true;
            continue;
          }
          const auto& rds = r.listener_rds->at(l);
          if (!std::ranges::all_of(rds, [&](const auto& rn) { return r.routes.contains(rn); }))
            continue;  // still waiting for another route
          e.listeners[l] = rl;
          for (const auto& rn : rds)
            e.routes[rn] = r.routes.at(rn);
          active = true;
        }
        if (active)
          e.routes[n] = route->second;
      }
    }
    for (const auto& [type, t] : types) {
      if (!t.acked_version.empty())
        e.versions[type] = t.acked_version;
    }
    e.versions[resp.type_url()] = resp.version_info();
    return e;
  }

  // Folds a decoded response into a copy of what is held; returns whether the
  // subscription of the dependent type (EDS after CDS, RDS after LDS) changed.
  Result<bool> Fold(const DiscoveryResponse& resp, Received& next, Issues& issues) {
    const std::string& type = resp.type_url();
    if (type == kClusterType) {
      auto got = Decode<Cluster>(resp);
      SLUICE_RETURN_IF_ERROR(got);
      next.clusters = KeepRefused(*got, *next.clusters);
      TakeIssues(*got, issues);
      auto eds = std::make_shared<std::set<std::string>>();
      auto users = std::make_shared<std::map<std::string, std::vector<std::string>>>();
      for (const auto& [name, c] : *next.clusters) {
        if (const auto& svc = config::EdsServiceName(*c); !svc.empty()) {
          eds->insert(svc);
          (*users)[svc].push_back(name);
        }
      }
      next.eds_users = std::move(users);
      if (*eds == *next.eds_names)
        return false;
      next.eds_names = eds;
      next.endpoints.EraseIf([&](const auto& kv) { return !eds->contains(kv.first); });
      return true;
    }
    if (type == kEndpointType) {
      auto got = Decode<ClusterLoadAssignment>(resp);
      SLUICE_RETURN_IF_ERROR(got);
      MergeNamed(next.endpoints, std::move(got->accepted), *next.eds_names);
      TakeIssues(*got, issues);
      return false;
    }
    if (type == kListenerType) {
      auto got = Decode<Listener>(resp);
      SLUICE_RETURN_IF_ERROR(got);
      next.listeners = KeepRefused(*got, *next.listeners);
      TakeIssues(*got, issues);
      auto by_listener = std::make_shared<std::map<std::string, std::vector<std::string>>>();
      auto rds = std::make_shared<std::set<std::string>>();
      auto users = std::make_shared<std::map<std::string, std::vector<std::string>>>();
      for (const auto& [name, l] : *next.listeners) {
        auto names = config::RdsNames(*l);
        rds->insert(names.begin(), names.end());
        for (const auto& n : names)
          (*users)[n].push_back(name);
        by_listener->emplace(name, std::move(names));
      }
      next.listener_rds = std::move(by_listener);
      next.route_users = std::move(users);
      auto sds = std::make_shared<std::set<std::string>>();
      for (const auto& [name, l] : *next.listeners) {
        auto names = config::SdsNames(*l);
        sds->insert(names.begin(), names.end());
      }
      if (*sds != *next.sds_names) {
        next.secrets.EraseIf([&](const auto& kv) { return !sds->contains(kv.first); });
        next.sds_names = std::move(sds);
      }
      if (*rds == *next.rds_names)
        return false;
      next.rds_names = rds;
      next.routes.EraseIf([&](const auto& kv) { return !rds->contains(kv.first); });
      return true;
    }
    if (type == kRouteType) {
      auto got = Decode<RouteConfiguration>(resp);
      SLUICE_RETURN_IF_ERROR(got);
      MergeNamed(next.routes, std::move(got->accepted), *next.rds_names);
      TakeIssues(*got, issues);
      return false;
    }
    if (type == kSecretType) {
      auto got = Decode<Secret>(resp);
      SLUICE_RETURN_IF_ERROR(got);
      MergeNamed(next.secrets, std::move(got->accepted), *next.sds_names);
      TakeIssues(*got, issues);
      return false;
    }
    return Fail(fmt::format("type {} is not supported", type));
  }

  // Records what a response refused and skipped in the type's status: for CDS and LDS
  // (state of the world) the response's lists replace the old ones; EDS and RDS carry
  // some names, so only those are updated, and names no longer subscribed go. A skipped
  // resource and a skipped filter type are logged once, when first seen.
  void Record(const std::string& type, Issues& issues) {
    TypeStatus& st = status[type];
    const bool sotw = type == kClusterType || type == kListenerType;
    auto update = [&](std::map<std::string, ResourceIssue>& held,
                      std::map<std::string, ResourceIssue>& fresh,
                      const std::set<std::string>& decided) {
      if (sotw) {
        held = std::move(fresh);
        return;
      }
      for (const auto& name : decided)
        held.erase(name);
      for (auto& [name, issue] : fresh)
        held.insert_or_assign(name, std::move(issue));
      const auto& subscribed = types.find(type)->second.names;
      std::erase_if(held, [&](const auto& kv) { return !subscribed.contains(kv.first); });
    };
    for (const auto& [name, issue] : issues.skipped) {
      auto old = st.skipped.find(name);
      if (old == st.skipped.end() || old->second.reason != issue.reason)
        spdlog::warn("xds: {} \"{}\": {}", ShortType(type), name, issue.reason);
      ++st.skipped_total[issue.reason_class];
    }
    for (const auto& [name, issue] : issues.refused)
      ++st.refused_total[issue.reason_class];
    update(st.refused, issues.refused, issues.decided);
    update(st.skipped, issues.skipped, issues.decided);
    if (type == kListenerType) {
      // The filter types skipped by the listeners of this response that were accepted.
      st.skipped_filters.clear();
      for (const auto& [listener, filter_types] : issues.skipped_filters) {
        for (const auto& ft : filter_types) {
          ++st.skipped_filters[ft];
          if (warned_filter_types.insert(ft).second) {
            spdlog::warn(
                "xds: filter type {} (first in listener \"{}\") has no effect on where "
                "traffic goes: skipped",
                ft, listener);
          }
        }
      }
    }
  }

  // Handles one response; returns the requests to send, in order.
  std::vector<DiscoveryRequest> OnResponse(const DiscoveryResponse& resp) {
    std::vector<DiscoveryRequest> out;
    auto it = types.find(resp.type_url());
    if (it == types.end()) {
      spdlog::warn("xds: ignoring a response of unsubscribed type {}", resp.type_url());
      return out;
    }
    PerType& t = it->second;
    TypeStatus& st = status[resp.type_url()];
    t.nonce = resp.nonce();
    st.last_nonce = resp.nonce();

    auto t0 = std::chrono::steady_clock::now();
    Received next = rx;
    Issues issues;
    auto folded = Fold(resp, next, issues);
    auto t1 = std::chrono::steady_clock::now();
    Result<config::Diff> applied = std::unexpected(Error{});
    if (!folded) {
      applied = std::unexpected(folded.error());
    } else {
      config::SnapshotPtr cur = store.Current();
      std::optional<config::SnapshotEdit> edit;
      if (resp.type_url() == kEndpointType || resp.type_url() == kRouteType ||
          resp.type_url() == kSecretType)
        edit = IncrementalEdit(next, *cur, resp, issues);
      applied = edit ? store.Edit(std::move(*edit)) : store.Apply(BuildActive(next, *cur, resp));
    }
    auto t2 = std::chrono::steady_clock::now();
    spdlog::debug("xds: {} version {} ({} resources): decode {} ms, apply {} ms", resp.type_url(),
                  resp.version_info(), resp.resources_size(),
                  std::chrono::duration_cast<std::chrono::milliseconds>(t1 - t0).count(),
                  std::chrono::duration_cast<std::chrono::milliseconds>(t2 - t1).count());
    auto nack = [&](const std::string& why) {
      // NACK: the version we still run, the nonce we answer, and why.
      spdlog::warn("xds: NACK {} version {}: {}", resp.type_url(), resp.version_info(), why);
      DiscoveryRequest req = Request(resp.type_url());
      req.mutable_error_detail()->set_code(3);  // INVALID_ARGUMENT
      req.mutable_error_detail()->set_message(why);
      st.last_nack = why;
      ++st.nacks;
      return req;
    };
    if (!applied) {
      out.push_back(nack(applied.error().message));
      return out;
    }
    // Applied: every accepted resource is in force, whether or not some were refused.
    const bool sds_changed = next.sds_names != rx.sds_names;
    rx = std::move(next);
    t.ever_accepted = true;
    ++st.applied;
    const bool partial = !issues.refused.empty();
    const std::string refusal = partial ? RefusalMessage(resp.type_url(), issues.refused) : "";
    Record(resp.type_url(), issues);

    // As Envoy: a new EDS (RDS) subscription goes out before the CDS (LDS) ACK, so the
    // server can answer both together.
    if (*folded) {
      const bool cds = resp.type_url() == kClusterType;
      auto& dep = types.find(cds ? kEndpointType : kRouteType)->second;
      dep.names = cds ? *rx.eds_names : *rx.rds_names;
      out.push_back(Request(cds ? kEndpointType : kRouteType));
    }
    // SDS is asked by name, for the secrets the listeners name now (as Envoy, before the
    // LDS ACK).
    if (sds_changed) {
      types.find(kSecretType)->second.names = *rx.sds_names;
      out.push_back(Request(kSecretType));
    }
    if (partial) {
      // Some refused: NACKed with every refused resource named, and the version in force
      // stays the last fully accepted one (as Envoy's mux), though the rest is applied.
      out.push_back(nack(refusal));
    } else {
      t.acked_version = resp.version_info();
      st.acked_version = resp.version_info();
      st.last_nack.clear();
      ++st.acks;
      out.push_back(Request(resp.type_url()));
    }

    // LDS once CDS is in and the clusters have warmed (or EDS has answered at least once).
    if (!lds_requested && types.find(kClusterType)->second.ever_accepted) {
      bool warm = std::ranges::all_of(*rx.eds_names,
                                      [&](const auto& n) { return rx.endpoints.contains(n); });
      if (warm || types.find(kEndpointType)->second.ever_accepted) {
        lds_requested = true;
        out.push_back(Request(kListenerType));
      }
    }
    return out;
  }
};

AdsClient::AdsClient(AdsClientOptions opts, config::ConfigStore& store)
    : opts_(std::move(opts)),
      store_(store),
      state_(std::make_unique<State>(store, opts_.node)),
      delta_(std::make_unique<DeltaState>(store, opts_.node)) {
  status_.configured = opts_.protocol;
}

AdsClient::~AdsClient() {
  Stop();
}

Result<void> AdsClient::Start() {
  if (!opts_.token_file.empty() && !opts_.tls) {
    return Fail("xds: token_file needs TLS (gRPC sends no call credentials in plaintext)");
  }
  if (opts_.token_source && !opts_.tls) {
    return Fail("xds: a token source needs TLS (gRPC sends no call credentials in plaintext)");
  }
  if (opts_.tls && !opts_.ca_file.empty()) {
    SLUICE_RETURN_IF_ERROR(ReadFile(opts_.ca_file, "xds: ca_file"));
  }
  if (!opts_.token_file.empty()) {
    SLUICE_RETURN_IF_ERROR(ReadFile(opts_.token_file, "xds: token_file"));
  }
  std::lock_guard lock(mu_);
  if (thread_.joinable())
    return Fail("xds: client already started");
  stopping_ = false;
  thread_ = std::thread([this] { Run(); });
  return {};
}

void AdsClient::Stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    if (ctx_)
      ctx_->TryCancel();
  }
  cv_.notify_all();
  if (thread_.joinable())
    thread_.join();
}

AdsClientStatus AdsClient::Status() const {
  std::lock_guard lock(mu_);
  return status_;
}

void AdsClient::PublishStatus(bool connected) {
  std::lock_guard lock(mu_);
  status_.connected = connected;
  status_.types = use_delta_ ? delta_->status : state_->status;
}

void AdsClient::Run() {
  Backoff backoff(opts_.backoff);
  while (true) {
    std::string error;
    bool got_response = RunStream(error);
    std::unique_lock lock(mu_);
    if (stopping_)
      return;
    if (got_response) {
      backoff.Reset();
    } else {
      ++status_.failed_attempts;
    }
    auto delay = backoff.Next();
    status_.last_backoff = delay;
    status_.last_stream_error = error;
    spdlog::info("xds: stream to {} ended ({}); reconnecting in {} ms", opts_.server, error,
                 delay.count());
    cv_.wait_for(lock, delay, [this] { return stopping_; });
    if (stopping_)
      return;
  }
}

bool AdsClient::RunStream(std::string& error) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);  // a full CDS/EDS response is many megabytes
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (opts_.tls) {
    grpc::SslCredentialsOptions ssl;
    if (!opts_.ca_file.empty()) {
      auto ca = ReadFile(opts_.ca_file, "ca_file");
      if (!ca) {
        error = ca.error().message;
        return false;
      }
      ssl.pem_root_certs = *ca;
    }
    if (!opts_.tls_server_name.empty())
      args.SetSslTargetNameOverride(opts_.tls_server_name);
    creds = grpc::SslCredentials(ssl);
  } else {
    creds = grpc::InsecureChannelCredentials();
  }
  // A fresh channel per attempt: our backoff, not the channel's, paces reconnects.
  auto channel = grpc::CreateCustomChannel(opts_.server, creds, args);
  // A context per stream, with a fresh bearer token; registered for Stop().
  auto open = [&](bool delta) -> std::shared_ptr<grpc::ClientContext> {
    auto ctx = std::make_shared<grpc::ClientContext>();
    if (opts_.token_source) {
      auto token = opts_.token_source();  // a fresh one per stream
      if (!token) {
        error = "token: " + token.error().message;
        return nullptr;
      }
      ctx->set_credentials(grpc::AccessTokenCredentials(Trim(*token)));
    } else if (!opts_.token_file.empty()) {
      auto token = ReadFile(opts_.token_file, "token_file");  // re-read: tokens rotate
      if (!token) {
        error = token.error().message;
        return nullptr;
      }
      ctx->set_credentials(grpc::AccessTokenCredentials(Trim(*token)));
    }
    std::lock_guard lock(mu_);
    if (stopping_)
      return nullptr;
    ctx_ = ctx;
    ++status_.streams;
    use_delta_ = delta;
    status_.protocol = delta ? "delta" : "sotw";
    return ctx;
  };
  auto finish = [&](const grpc::Status& st) {
    error = st.ok() ? "stream closed by server"
                    : fmt::format("{} ({})", st.error_message(), static_cast<int>(st.error_code()));
    std::lock_guard lock(mu_);
    ctx_.reset();
  };
  const bool try_delta = opts_.protocol == XdsProtocol::kDelta ||
                         (opts_.protocol == XdsProtocol::kAuto && !delta_unimplemented_);
  if (try_delta) {
    auto ctx = open(true);
    if (!ctx)
      return false;
    grpc::Status st;
    bool got = RunDelta(channel, *ctx, st);
    finish(st);
    if (got || st.error_code() != grpc::StatusCode::UNIMPLEMENTED ||
        opts_.protocol != XdsProtocol::kAuto) {
      PublishStatus(false);
      return got;
    }
    // auto: this server has no Delta; state of the world from now on, on this channel.
    spdlog::warn("xds: {} does not implement Delta ADS ({}); using state of the world",
                 opts_.server, st.error_message());
    std::lock_guard lock(mu_);
    delta_unimplemented_ = true;
    status_.delta_unimplemented = true;
    --status_.streams;  // the Delta attempt was no stream
  }
  auto ctx = open(false);
  if (!ctx)
    return false;
  grpc::Status st;
  bool got = RunSotw(channel, *ctx, st);
  finish(st);
  PublishStatus(false);
  return got;
}

bool AdsClient::RunSotw(const std::shared_ptr<grpc::Channel>& channel, grpc::ClientContext& ctx,
                        grpc::Status& st) {
  auto stub = envoy::service::discovery::v3::AggregatedDiscoveryService::NewStub(channel);
  auto stream = stub->StreamAggregatedResources(&ctx);
  bool got_response = client_detail::PumpStream<DiscoveryResponse>(
      *stream, *state_, opts_.server, "state of the world", [this] { PublishStatus(true); });
  st = stream->Finish();
  return got_response;
}

std::string_view XdsProtocolName(XdsProtocol p) {
  switch (p) {
    case XdsProtocol::kAuto:
      return "auto";
    case XdsProtocol::kDelta:
      return "delta";
    case XdsProtocol::kSotw:
      return "sotw";
  }
  return "auto";
}

Result<XdsProtocol> ParseXdsProtocol(std::string_view s) {
  for (auto p : {XdsProtocol::kAuto, XdsProtocol::kDelta, XdsProtocol::kSotw}) {
    if (s == XdsProtocolName(p))
      return p;
  }
  return Fail(fmt::format("xds protocol \"{}\": expected auto, delta or sotw", s));
}

}  // namespace sluice::xds
