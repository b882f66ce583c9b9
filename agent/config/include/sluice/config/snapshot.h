// The agent's view of its configuration: immutable snapshots of Envoy resources, and the
// diff between two consecutive snapshots.
//
// A Snapshot is never modified once published; consumers hold a SnapshotPtr for as long
// as they need it. Resources are shared between consecutive snapshots (shared_ptr per
// resource, and the maps in chunks), so an endpoint-only update copies one chunk of
// pointers, not 10,000 clusters.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "sluice/common/result.h"
#include "sluice/config/resources.h"
#include "sluice/envoy/resource_set.h"

namespace sluice::config {

template <class T>
using ResourceMap = std::map<std::string, std::shared_ptr<const T>>;

struct Snapshot {
  // Shared in chunks between snapshots (resources.h): a snapshot made from the previous
  // one by one change copies one chunk per changed type.
  Resources<envoy::config::cluster::v3::Cluster> clusters;
  Resources<envoy::config::endpoint::v3::ClusterLoadAssignment> endpoints;
  Resources<envoy::config::listener::v3::Listener> listeners;
  Resources<envoy::config::route::v3::RouteConfiguration> routes;
  // SDS secrets by name ("kubernetes://NAME"): the certificates and CAs listeners' TLS
  // contexts name. They carry key material: never logged, redacted in config dumps.
  Resources<envoy::extensions::transport_sockets::tls::v3::Secret> secrets;
  // Versions (xDS version_info per type URL) the resources came from; informational.
  std::map<std::string, std::string> versions;
  uint64_t generation = 0;  // set by ConfigStore: 1 for the first accepted snapshot
  // Set by ConfigStore: unique among every store's snapshots in the process (0: never
  // published), so a Diff can name the snapshot it was taken against.
  uint64_t id = 0;

  static Snapshot FromResourceSet(const xds::ResourceSet& rs);
  xds::ResourceSet ToResourceSet() const;
  std::size_t size() const {
    return clusters.size() + endpoints.size() + listeners.size() + routes.size() + secrets.size();
  }
};
using SnapshotPtr = std::shared_ptr<const Snapshot>;

// Names that appeared, changed (content differs) or disappeared for one resource type.
struct TypeDiff {
  std::vector<std::string> added, changed, removed;
  bool empty() const { return added.empty() && changed.empty() && removed.empty(); }
};

// Field order is the order consumers apply it in: clusters, endpoints, listeners,
// routes (CDS, EDS, LDS, RDS), so nothing is referenced before it exists. Secrets (SDS)
// come last in the struct; a consumer that compiles listeners reads them with the
// listeners (a secret change rebuilds the listeners that name it).
struct Diff {
  TypeDiff clusters, endpoints, listeners, routes;
  uint64_t base = 0;  // the id of the snapshot it goes from (ConfigStore sets it)
  TypeDiff secrets;
  bool empty() const {
    return clusters.empty() && endpoints.empty() && listeners.empty() && routes.empty() &&
           secrets.empty();
  }
};

// A change to a snapshot, as an incremental (Delta) xDS response or an EDS/RDS update
// brings it: per type, resources put (added, or replacing the one of that name) and names
// removed. A name both put and removed is an error. `versions` are merged into the
// snapshot's.
struct SnapshotEdit {
  ResourceMap<envoy::config::cluster::v3::Cluster> clusters;
  ResourceMap<envoy::config::endpoint::v3::ClusterLoadAssignment> endpoints;
  ResourceMap<envoy::config::listener::v3::Listener> listeners;
  ResourceMap<envoy::config::route::v3::RouteConfiguration> routes;
  ResourceMap<envoy::extensions::transport_sockets::tls::v3::Secret> secrets;
  std::vector<std::string> removed_clusters, removed_endpoints, removed_listeners, removed_routes;
  std::vector<std::string> removed_secrets;
  std::map<std::string, std::string> versions;
  bool empty() const {
    return clusters.empty() && endpoints.empty() && listeners.empty() && routes.empty() &&
           secrets.empty() && removed_clusters.empty() && removed_endpoints.empty() &&
           removed_listeners.empty() && removed_routes.empty() && removed_secrets.empty();
  }
};

Diff ComputeDiff(const Snapshot& before, const Snapshot& after);
// As ComputeDiff, and resources of `after` whose content equals the one in `before` are
// replaced by `before`'s object, so consumers can tell "unchanged" by pointer.
Diff AdoptUnchanged(const Snapshot& before, Snapshot& after);
// `before` with `edit` applied: its cost follows the edit (the maps share every chunk the
// edit does not touch; only put resources are compared, by content, with the ones they
// replace; a put equal to the one in force keeps the object in force and is no change).
// Fails, naming the resource, when a name is both put and removed, or when a put
// resource's name differs from its key.
Result<std::pair<Snapshot, Diff>> ApplyEdit(const Snapshot& before, SnapshotEdit edit);

// Deterministic bytes of a message (map fields sorted), for equality and hashing.
std::string CanonicalBytes(const google::protobuf::Message& m);

}  // namespace sluice::config
