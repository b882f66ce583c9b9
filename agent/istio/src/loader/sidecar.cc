// Decoder of Sidecar: the workload selector, egress hosts ("namespace/host") and the
// outbound traffic policy that scope a proxy's view.
#include "loader/decode.h"

namespace sluice::istio::detail {

Sidecar DecodeSidecar(const Field& doc, const Meta& meta) {
  Sidecar sc;
  sc.meta = meta;
  Field spec = doc["spec"];
  sc.workload_selector = spec["workloadSelector"]["labels"].StrMap();
  for (auto& ef : spec["egress"].List()) {
    auto hosts = ef["hosts"].StrList();
    auto fields = ef["hosts"].List();
    if (hosts.empty())
      ef["hosts"].Error("required");
    for (std::size_t i = 0; i < hosts.size(); ++i) {
      auto slash = hosts[i].find('/');
      if (slash == std::string::npos || slash == 0) {
        fields[i].Error("must be namespace/host, e.g. \"./*\" or \"istio-system/*\" (got \"" +
                        hosts[i] + "\")");
        break;
      }
      if (auto problem = HostProblem(hosts[i].substr(slash + 1)); !problem.empty()) {
        fields[i].Error(problem);
        break;
      }
      sc.egress_hosts.push_back(hosts[i]);
    }
  }
  if (auto mode = spec["outboundTrafficPolicy"]["mode"].Str()) {
    if (*mode == "REGISTRY_ONLY") {
      sc.registry_only = true;
    } else if (*mode == "ALLOW_ANY") {
      sc.registry_only = false;
    } else {
      spec["outboundTrafficPolicy"]["mode"].Error("must be ALLOW_ANY or REGISTRY_ONLY");
    }
  }
  return sc;
}

}  // namespace sluice::istio::detail
