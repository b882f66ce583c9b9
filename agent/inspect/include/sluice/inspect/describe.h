// `sluicectl x describe svc NAME`: what istioctl x describe tells about a Service — its
// ports, the DestinationRule(s) for its host with their subsets and load balancer, the
// VirtualService(s) routing to it with weights and matches — plus whether its namespace
// is enrolled in Sluice.
#pragma once

#include <map>
#include <string>

#include "sluice/common/result.h"
#include "sluice/istio/model.h"
#include "sluice/istio/registry.h"

namespace sluice::inspect {

using NamespaceLabels = std::map<std::string, std::map<std::string, std::string>>;

// `ns_labels`: the namespaces' live labels (the local cluster's labels.json); when null,
// the labels of the Namespace objects in the config are used.
Result<std::string> DescribeService(const istio::Config& config, const istio::Registry& registry,
                                    const std::string& name, const std::string& ns,
                                    const NamespaceLabels* ns_labels);

}  // namespace sluice::inspect
