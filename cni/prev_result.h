// prevResult checked against the CNI result schema (spec 1.0.0, "ADD Success") before
// sluice-cni takes the pod's addresses from it or hands it back to the runtime: a wrong
// type written by a plugin earlier in the chain is refused by its field path instead of
// being passed on to the runtime, or to the agent as a pod address.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace sluice::cni {

// Empty when `prev` fits the schema, else the first field that does not, as
// "prevResult.ips[1].interface: 5 is not an index into prevResult.interfaces (2 entries)".
// Checks cniVersion, interfaces, ips, routes and dns; other keys (a later spec's, a
// plugin's own) pass unchecked, and an absent or null optional field is fine.
std::string PrevResultProblem(const nlohmann::ordered_json& prev);

}  // namespace sluice::cni
