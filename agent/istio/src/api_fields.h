// The field names of the Istio networking API that Sluice reads (Gateway, VirtualService,
// DestinationRule, ServiceEntry, Sidecar of networking.istio.io v1alpha3, v1beta1 and v1,
// which share one schema), and a check that refuses a field the API does not have.
//
// kubectl apply with strict field validation refuses such a document; without the check
// a misspelled `htttp:` left a VirtualService with no routes and no error, or a
// misspelled `rout:` a route that did nothing. Only field names are checked here; the
// decoders check the values of the fields Sluice uses. Kubernetes kinds are not checked:
// Sluice reads a few of their fields and the rest of their (large) schema is not its
// business.
#pragma once

#include <string>

#include "yaml_field.h"

namespace sluice::istio::detail {

// Whether CheckKnownFields knows the kind's schema.
bool HasApiSchema(const std::string& kind);

// Reports the first field of `doc` the kind's schema lacks, at the top level, in
// metadata (Kubernetes' ObjectMeta) or anywhere under spec, as
// "spec.http[0].rout: unknown field (did you mean \"route\"?)". status is not checked:
// the CRDs keep whatever it holds.
void CheckKnownFields(const Field& doc, const std::string& kind);

}  // namespace sluice::istio::detail
