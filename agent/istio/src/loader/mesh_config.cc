// Decoders of the mesh-wide settings: Telemetry (access logging on or off for a
// namespace or the mesh) and the `istio` ConfigMap's MeshConfig (outbound traffic
// policy, root namespace, access log file, trust domain, connect timeout).
#include <yaml-cpp/yaml.h>

#include "loader/decode.h"

namespace sluice::istio::detail {

Telemetry DecodeTelemetry(const Field& doc, const Meta& meta) {
  Telemetry t;
  t.meta = meta;
  Field logging = doc["spec"]["accessLogging"];
  for (auto& lf : logging.List()) {
    bool disabled = lf["disabled"].Bool().value_or(false);
    bool has_provider = !lf["providers"].List().empty();
    if (disabled) {
      t.access_logging = false;
    } else if (has_provider || !t.access_logging.has_value()) {
      t.access_logging = true;
    }
  }
  return t;
}

// The `istio` ConfigMap: data.mesh is MeshConfig YAML in a string.
void DecodeMeshConfigMap(const Field& doc, MeshConfig& mesh, FieldErrors& errors) {
  Field data = doc["data"]["mesh"];
  auto text = data.Str();
  if (!text)
    return;
  YAML::Node node;
  try {
    node = YAML::Load(*text);
  } catch (const YAML::Exception& e) {
    data.Error("not valid YAML: " + e.msg);
    return;
  }
  Field m(node, data.path(), &errors);
  if (auto mode = m["outboundTrafficPolicy"]["mode"].Str()) {
    if (*mode == "ALLOW_ANY") {
      mesh.outbound = MeshConfig::OutboundPolicy::kAllowAny;
    } else if (*mode == "REGISTRY_ONLY") {
      mesh.outbound = MeshConfig::OutboundPolicy::kRegistryOnly;
    } else {
      m["outboundTrafficPolicy"]["mode"].Error("must be ALLOW_ANY or REGISTRY_ONLY");
    }
  }
  if (auto v = m["rootNamespace"].Str())
    mesh.root_namespace = *v;
  if (auto v = m["accessLogFile"].Str())
    mesh.access_log_file = *v;
  if (auto v = m["trustDomain"].Str())
    mesh.domain = *v;
  if (auto v = m["connectTimeout"].DurationMs())
    mesh.connect_timeout_ms = *v;
}

}  // namespace sluice::istio::detail
