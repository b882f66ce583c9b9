// Validation of Envoy resources before Sluice accepts them.
//
// Each function checks what the data plane relies on: required fields, names, supported
// cluster types and LB policies, weights, addresses, regexes and references between
// resources. Errors name the resource and the field:
//   cluster "outbound|80||a.example": lb_policy: ...
// These messages go verbatim into an xDS NACK's error_detail.
#pragma once

#include <string>
#include <vector>

#include "sluice/common/result.h"
#include "sluice/config/filters.h"
#include "sluice/config/snapshot.h"

namespace sluice::config {

Result<void> ValidateCluster(const envoy::config::cluster::v3::Cluster& c);
Result<void> ValidateEndpoints(const envoy::config::endpoint::v3::ClusterLoadAssignment& cla);
// ValidateListener also refuses a listener that carries a filter Sluice must not drop
// (filters.h); an internal listener passes here and is skipped by AcceptListener.
Result<void> ValidateListener(const envoy::config::listener::v3::Listener& l);
Result<void> ValidateRoute(const envoy::config::route::v3::RouteConfiguration& r);
// A secret Sluice can use: tls_certificate (certificate_chain and private_key inline) or
// validation_context (trusted_ca inline); other types and file data sources are refused.
Result<void> ValidateSecret(const envoy::extensions::transport_sockets::tls::v3::Secret& s);

// Per-resource acceptance, as Envoy's: what the xDS client does with one resource of a
// response. kServed: applied; kSkipped: ACKed but not served (Sluice has no use for it,
// filters.h says why); kRefused: named in the NACK, while the response's other resources
// are applied. `reason` is relative to the resource (the field, then the problem), as
// the ValidateX messages after their "kind \"name\": " prefix.
struct Acceptance {
  Use use = Use::kServed;
  std::string reason;
  std::string reason_class;                  // filters.h's k* classes; kInvalid for a failed check
  std::vector<std::string> skipped_filters;  // listeners: filter types skipped, sorted
};
Acceptance AcceptCluster(const envoy::config::cluster::v3::Cluster& c);
Acceptance AcceptEndpoints(const envoy::config::endpoint::v3::ClusterLoadAssignment& cla);
Acceptance AcceptListener(const envoy::config::listener::v3::Listener& l);
Acceptance AcceptRoute(const envoy::config::route::v3::RouteConfiguration& r);
Acceptance AcceptSecret(const envoy::extensions::transport_sockets::tls::v3::Secret& s);

// Every resource, plus the references between them: each EDS cluster has its
// ClusterLoadAssignment, each listener's RDS name has its RouteConfiguration, each
// ClusterLoadAssignment belongs to an EDS cluster, and map keys equal resource names.
// With `base`, resources that are the very same object as in `base` (already accepted)
// skip their own checks; references are always checked.
Result<void> ValidateSnapshot(const Snapshot& s, const Snapshot* base = nullptr);

// ValidateSnapshot for `after` = `before` + an edit whose effect is `diff`: the added and
// changed resources are checked, and the references they, or the removals, can break.
// Costs follow the diff, except that a ClusterLoadAssignment left without the cluster of
// its own name, and a removed RouteConfiguration, are looked up among all clusters
// (listeners).
Result<void> ValidateEdit(const Snapshot& before, const Snapshot& after, const Diff& diff);

// The EDS service name of a cluster (eds_cluster_config.service_name, else its name);
// empty when the cluster is not of type EDS.
const std::string& EdsServiceName(const envoy::config::cluster::v3::Cluster& c);

// RDS route_config_names a listener's HTTP connection managers ask for, in order.
std::vector<std::string> RdsNames(const envoy::config::listener::v3::Listener& l);
// SDS secret names a listener's TLS transport sockets (DownstreamTlsContext) ask for:
// tls_certificate_sds_secret_configs, validation_context_sds_secret_config (plain or in
// combined_validation_context), first appearance order, without repeats.
std::vector<std::string> SdsNames(const envoy::config::listener::v3::Listener& l);

}  // namespace sluice::config
