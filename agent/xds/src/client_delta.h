// The Delta (incremental) xDS state of AdsClient: what is held, by name and version, and
// what is subscribed. Internal to agent/xds (ads_client.cc, ads_client_delta.cc).
#pragma once

#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "envoy/service/discovery/v3/discovery.pb.h"
#include "sluice/config/store.h"
#include "sluice/xds/ads_client.h"

namespace sluice::xds {

// A parent type and its child type, as warming sees them: clusters and their
// ClusterLoadAssignment, listeners and their RouteConfigurations. A parent becomes active
// only when every child it names has arrived; until then its version in force (if any)
// stays, and so do the children that version names.
template <class P, class C>
struct WarmingLayer {
  config::ResourceMap<P> parents;   // received and individually valid, warming or not
  config::ResourceMap<C> children;  // received, of the subscribed names
  std::map<std::string, std::vector<std::string>> parent_children;  // received parent -> names
  std::map<std::string, std::set<std::string>> child_users;         // child -> received parents
  // Parents held in force at an older version while the new one warms, with the children
  // that older version names (kept in the store for it).
  std::map<std::string, std::vector<std::string>> kept;
};

struct AdsClient::DeltaState {
  using Cluster = envoy::config::cluster::v3::Cluster;
  using Cla = envoy::config::endpoint::v3::ClusterLoadAssignment;
  using Listener = envoy::config::listener::v3::Listener;
  using Route = envoy::config::route::v3::RouteConfiguration;
  using Secret = envoy::extensions::transport_sockets::tls::v3::Secret;
  using Request = envoy::service::discovery::v3::DeltaDiscoveryRequest;
  using Response = envoy::service::discovery::v3::DeltaDiscoveryResponse;

  struct PerType {
    bool wildcard = false;                        // CDS, LDS
    std::set<std::string> names;                  // EDS, RDS: subscribed names
    std::map<std::string, std::string> versions;  // held: name -> version
    std::string nonce;
    std::string system_version;  // of the last applied response
    bool ever_accepted = false;
  };

  DeltaState(config::ConfigStore& s, envoy::config::core::v3::Node n);

  // A new stream: the first request of each type held or subscribed, with
  // initial_resource_versions. CDS first.
  std::vector<Request> OnStreamStart();
  // Handles one response; returns the requests to send, in order.
  std::vector<Request> OnResponse(const Response& resp);

  config::ConfigStore& store;
  envoy::config::core::v3::Node node;
  WarmingLayer<Cluster, Cla> cds;
  WarmingLayer<Listener, Route> lds;
  std::map<std::string, PerType, std::less<>> types;
  std::map<std::string, TypeStatus> status;
  bool first_message = true;
  bool lds_requested = false;
  std::set<std::string> warned_types, warned_filter_types;
  std::map<std::string, std::vector<std::string>> listener_skipped_filters;  // accepted
  // SDS: the secret names each received listener's TLS contexts name, and how many
  // listeners name each secret. Secrets are subscribed by these names (SDS is no wildcard
  // type) and wait for nothing: a chain without its secret fails closed until it comes.
  std::map<std::string, std::vector<std::string>> listener_sds;
  std::map<std::string, int> sds_refs;

 private:
  Request NewRequest(std::string_view type);
};

}  // namespace sluice::xds
