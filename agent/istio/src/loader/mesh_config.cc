// Decoders of the mesh-wide settings: Telemetry (access logging on or off for a
// namespace or the mesh; metrics overrides for the prometheus provider, which the
// translator turns into istio.stats filters) and the `istio` ConfigMap's MeshConfig
// (outbound traffic policy, root namespace, access log file, trust domain, connect
// timeout).
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <cctype>

#include "loader/decode.h"
#include "sluice/common/cel_literal.h"

namespace sluice::istio::detail {

namespace {

constexpr std::array<const char*, 11> kIstioMetrics = {
    "ALL_METRICS",        "REQUEST_COUNT",          "REQUEST_DURATION",       "REQUEST_SIZE",
    "RESPONSE_SIZE",      "TCP_OPENED_CONNECTIONS", "TCP_CLOSED_CONNECTIONS", "TCP_SENT_BYTES",
    "TCP_RECEIVED_BYTES", "GRPC_REQUEST_MESSAGES",  "GRPC_RESPONSE_MESSAGES"};

// A field of `f` not in `known`: an error naming it (a Telemetry field Sluice does not
// honour must not be dropped silently).
void OnlyKeys(const Field& f, std::initializer_list<std::string_view> known) {
  for (const auto& [k, v] : f.Entries()) {
    if (std::find(known.begin(), known.end(), k) == known.end())
      v.Error("not supported by Sluice's metrics (only the prometheus provider's overrides)");
  }
}

TelemetryMetricOverride DecodeMetricOverride(const Field& o) {
  TelemetryMetricOverride out;
  OnlyKeys(o, {"match", "disabled", "tagOverrides"});
  Field match = o["match"];
  OnlyKeys(match, {"metric", "customMetric", "mode"});
  if (match["metric"].present() && match["customMetric"].present())
    match["customMetric"].Error("metric and customMetric are one of: set one");
  if (auto m = match["metric"].Str()) {
    if (std::find_if(kIstioMetrics.begin(), kIstioMetrics.end(),
                     [&](const char* n) { return *m == n; }) == kIstioMetrics.end()) {
      match["metric"].Error("\"" + *m +
                            "\" is not an Istio metric (ALL_METRICS, REQUEST_COUNT, ...)");
    }
    out.metric = *m;
  } else if (auto c = match["customMetric"].Str()) {
    out.metric = *c;
    out.custom = true;
  }
  if (auto mode = match["mode"].Str()) {
    if (*mode == "CLIENT")
      out.mode = TelemetryMetricOverride::Mode::kClient;
    else if (*mode == "SERVER")
      out.mode = TelemetryMetricOverride::Mode::kServer;
    else if (*mode != "CLIENT_AND_SERVER")
      match["mode"].Error("must be CLIENT_AND_SERVER, CLIENT or SERVER");
  }
  out.disabled = o["disabled"].Bool();
  for (const auto& [name, t] : o["tagOverrides"].Entries()) {
    OnlyKeys(t, {"operation", "value"});
    TelemetryTagOverride tag;
    const std::string op = t["operation"].StrOr("UPSERT");
    if (op == "REMOVE") {
      tag.remove = true;
    } else if (op != "UPSERT") {
      t["operation"].Error("must be UPSERT or REMOVE");
    } else {
      auto value = t["value"].Str();
      if (!value || value->empty()) {
        t["value"].Error("required for UPSERT");
      } else if (!cel::StringLiteral(*value)) {
        t["value"].Error("`" + *value +
                         "` is a CEL expression Sluice does not evaluate: only a string literal "
                         "(such as 'v') is supported");
      } else if (!cel::PrometheusLabelName(name)) {
        t.Error("\"" + name + "\" is not a Prometheus label name");
      }
      tag.value = value.value_or("");
    }
    out.tags[name] = tag;
  }
  return out;
}

}  // namespace

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
  Field spec = doc["spec"];
  t.selector = spec["selector"]["matchLabels"].StrMap();
  for (auto& mf : spec["metrics"].List()) {
    OnlyKeys(mf, {"providers", "overrides", "reportingInterval"});
    TelemetryMetrics m;
    for (auto& p : mf["providers"].List()) {
      std::string name = p["name"].Required();
      // istiod matches provider names case-insensitively; only prometheus is here.
      std::string lower = name;
      std::transform(lower.begin(), lower.end(), lower.begin(),
                     [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
      if (!name.empty() && lower != "prometheus") {
        p["name"].Error("provider \"" + name +
                        "\" is not supported: Sluice's metrics are the prometheus provider's");
      }
      m.providers.push_back("prometheus");
    }
    for (auto& o : mf["overrides"].List())
      m.overrides.push_back(DecodeMetricOverride(o));
    m.reporting_interval_ms = mf["reportingInterval"].DurationMs();
    t.metrics.push_back(std::move(m));
  }
  if (!t.metrics.empty() && (spec["targetRef"].present() || spec["targetRefs"].present())) {
    (spec["targetRef"].present() ? spec["targetRef"] : spec["targetRefs"])
        .Error(
            "not supported with metrics: targetRef attaches a Telemetry to a waypoint or a "
            "Gateway API gateway, which Sluice does not run");
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
  if (auto v = m["h2UpgradePolicy"].Str()) {
    if (*v == "DO_NOT_UPGRADE")
      mesh.h2_upgrade = H2UpgradePolicy::kDoNotUpgrade;
    else if (*v == "UPGRADE")
      mesh.h2_upgrade = H2UpgradePolicy::kUpgrade;
    else
      m["h2UpgradePolicy"].Error("must be DO_NOT_UPGRADE or UPGRADE (got \"" + *v + "\")");
  }
}

}  // namespace sluice::istio::detail
