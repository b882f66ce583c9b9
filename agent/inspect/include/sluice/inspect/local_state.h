// The local cluster's state file (STATE/state.json, written by `sluicectl local`): where
// the node agent's and the gateways' admin endpoints are, which pods exist, and the
// config directory. Inspection commands resolve POD / deploy/NAME through it.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "sluice/common/result.h"

namespace sluice::inspect {

struct LocalPod {
  std::string ns, name, owner, ip;
  std::string admin;  // gateway pods: their own admin ("unix:PATH"); else empty
  std::map<std::string, std::string> labels;
};

struct LocalState {
  std::string path;  // the state file read
  std::string agent_admin;
  std::string config_dir;
  std::vector<LocalPod> pods;
  // STATE/labels.json's namespace labels (what `local label namespace` set), if present.
  std::map<std::string, std::map<std::string, std::string>> namespace_labels;
};

// STATE/state.json with STATE from $SLUICE_LOCAL_STATE, else /var/run/sluice/local.
std::string DefaultStatePath();

// Reads a state file; errors name the file and the field.
Result<LocalState> LoadLocalState(const std::string& path);

// Resolves "NAME", "NAME.NS", "deploy/NAME" (also deployment/, deployments/) or
// "pod/NAME" in namespace `ns` ("" = default, or the NS of NAME.NS).
// Error: "pod default/x not found in /var/run/sluice/local/state.json".
Result<const LocalPod*> FindPod(const LocalState& state, const std::string& ref,
                                const std::string& ns);

// Splits a pod reference into (kind, name, namespace): kind is "pod" or "deploy".
struct PodRef {
  std::string kind = "pod";
  std::string name;
  std::string ns;  // from NAME.NS, else the ns given, else "default"
};
PodRef ParsePodRef(const std::string& ref, const std::string& ns);

}  // namespace sluice::inspect
