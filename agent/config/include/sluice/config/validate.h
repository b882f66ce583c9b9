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
#include "sluice/config/snapshot.h"

namespace sluice::config {

Result<void> ValidateCluster(const envoy::config::cluster::v3::Cluster& c);
Result<void> ValidateEndpoints(const envoy::config::endpoint::v3::ClusterLoadAssignment& cla);
Result<void> ValidateListener(const envoy::config::listener::v3::Listener& l);
Result<void> ValidateRoute(const envoy::config::route::v3::RouteConfiguration& r);

// Every resource, plus the references between them: each EDS cluster has its
// ClusterLoadAssignment, each listener's RDS name has its RouteConfiguration, each
// ClusterLoadAssignment belongs to an EDS cluster, and map keys equal resource names.
// With `base`, resources that are the very same object as in `base` (already accepted)
// skip their own checks; references are always checked.
Result<void> ValidateSnapshot(const Snapshot& s, const Snapshot* base = nullptr);

// The EDS service name of a cluster (eds_cluster_config.service_name, else its name);
// empty when the cluster is not of type EDS.
const std::string& EdsServiceName(const envoy::config::cluster::v3::Cluster& c);

// RDS route_config_names a listener's HTTP connection managers ask for, in order.
std::vector<std::string> RdsNames(const envoy::config::listener::v3::Listener& l);

}  // namespace sluice::config
