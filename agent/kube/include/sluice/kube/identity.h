// The identity istiod gives an xDS client from its bearer token (istiod's
// KubeJWTAuthenticator, security/pkg/server/ca/authenticate/kubeauth): the API server
// reviews the token for the audience istio-ca (TokenReview); it must be authenticated and
// belong to a service account (username "system:serviceaccount:NS:SA", group
// "system:serviceaccounts"); the identity is spiffe://TRUST_DOMAIN/ns/NS/sa/SA.
// `sluicectl xds serve --authenticate kube` uses it with the XDS identity check.
#pragma once

#include <string>
#include <vector>

#include "sluice/kube/client.h"

namespace sluice::kube {

// The SPIFFE identities of the token's holder, or an error in istiod's words.
[[nodiscard]] Result<std::vector<std::string>> IstioIdentities(
    Client& api, const std::string& token, const std::string& trust_domain,
    const std::vector<std::string>& audiences = {"istio-ca"});

}  // namespace sluice::kube
