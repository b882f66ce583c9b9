// A listener filter chain's FilterChainMatch, as filterchain::Match.
#pragma once

#include "envoy/config/listener/v3/listener_components.pb.h"
#include "sluice/filterchain/match.h"

namespace sluice::filterchain {

// Errors name the field ("prefix_ranges: \"x\" is not an IP address").
[[nodiscard]] Result<Match> FromEnvoy(const envoy::config::listener::v3::FilterChainMatch& m);

}  // namespace sluice::filterchain
