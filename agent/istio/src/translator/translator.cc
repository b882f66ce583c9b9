// The translator's entry points: Translate() runs one Builder (builder.h) for one proxy
// (its scope, then clusters, then a sidecar's listeners and routes or a gateway's), and
// the ProxySpec and JSON helpers of translator.h; also the small proto helpers the parts
// share. istiod's counterpart is pilot/pkg/networking/core/configgen.go.
#include "sluice/istio/translator.h"

#include <google/protobuf/util/json_util.h>

#include <nlohmann/json.hpp>

#include "translator/builder.h"

namespace sluice::istio::detail {

void SetDurationMs(google::protobuf::Duration* d, int64_t ms) {
  d->set_seconds(ms / 1000);
  d->set_nanos(static_cast<int32_t>((ms % 1000) * 1000000));
}

core_v3::ConfigSource AdsSource() {
  core_v3::ConfigSource src;
  src.mutable_ads();
  src.mutable_initial_fetch_timeout();  // 0s: never block on a missing resource
  src.set_resource_api_version(core_v3::V3);
  return src;
}

Translation Builder::Run() {
  registry_only_ = config_.mesh.outbound == MeshConfig::OutboundPolicy::kRegistryOnly;
  if (proxy_.kind != ProxySpec::Kind::kGateway) {
    sidecar_ = FindSidecar();
    if (sidecar_ && sidecar_->registry_only)
      registry_only_ = *sidecar_->registry_only;
  }
  IndexByHost();
  if (proxy_.kind == ProxySpec::Kind::kGrpc) {
    BuildGrpc();  // its own clusters: EDS only, no Passthrough or BlackHole
    return std::move(out_);
  }
  access_log_ = AccessLogEnabled();
  BuildClusters();
  if (proxy_.kind == ProxySpec::Kind::kSidecar) {
    BuildSidecarListenersAndRoutes();
    BuildInbound();
  } else {
    // A gateway's policies go on its own listeners, as istiod's: HTTP rbac first in each
    // connection manager (FinishConnectionManager), network rbac before each tcp_proxy.
    BuildAuthz();
    BuildGateway();
  }
  // Istio's metrics on every chain built, as the Telemetry resources say (telemetry.cc).
  BuildStatsConfigs();
  AddStatsFilters();
  return std::move(out_);
}

}  // namespace sluice::istio::detail

namespace sluice::istio {

using detail::Builder;

namespace {

// "KEY=VALUE[,KEY=VALUE…]" into `out`; an error names the bad entry.
Result<void> ParseLabels(std::string_view rest, const char* usage, Labels& out) {
  while (!rest.empty()) {
    auto comma = rest.find(',');
    std::string_view kv = rest.substr(0, comma);
    rest = comma == std::string_view::npos ? "" : rest.substr(comma + 1);
    auto eq = kv.find('=');
    if (eq == std::string_view::npos || eq == 0) {
      return Fail(std::string(usage) + ": \"" + std::string(kv) + "\" is not KEY=VALUE");
    }
    out[std::string(kv.substr(0, eq))] = std::string(kv.substr(eq + 1));
  }
  return {};
}

std::string DescribeLabels(const Labels& labels) {
  std::string s;
  for (const auto& [k, v] : labels) {
    if (!s.empty())
      s += ",";
    s += k + "=" + v;
  }
  return s;
}

}  // namespace

Result<ProxySpec> ProxySpec::Parse(std::string_view text) {
  ProxySpec p;
  auto colon = text.find(':');
  std::string_view kind = text.substr(0, colon);
  std::string_view rest = colon == std::string_view::npos ? "" : text.substr(colon + 1);
  if (kind == "sidecar") {
    // "sidecar:NAMESPACE", or "sidecar:KEY=VALUE[,…]@NAMESPACE" for a pod with labels (a
    // Sidecar's workloadSelector, a match's sourceLabels).
    p.kind = Kind::kSidecar;
    auto at = rest.find('@');
    if (at != std::string_view::npos) {
      SLUICE_RETURN_IF_ERROR(
          ParseLabels(rest.substr(0, at), "--proxy sidecar:KEY=VALUE@NAMESPACE", p.labels));
      rest = rest.substr(at + 1);
    }
    if (rest.empty())
      return Fail("--proxy sidecar:NAMESPACE: namespace missing");
    p.ns = std::string(rest);
    return p;
  }
  if (kind == "grpc") {
    p.kind = Kind::kGrpc;
    if (rest.empty())
      return Fail("--proxy grpc:NAMESPACE: namespace missing");
    p.ns = std::string(rest);
    return p;
  }
  if (kind == "gateway") {
    p.kind = Kind::kGateway;
    p.ns = "istio-system";
    auto at = rest.find('@');
    if (at != std::string_view::npos) {
      p.ns = std::string(rest.substr(at + 1));
      rest = rest.substr(0, at);
    }
    SLUICE_RETURN_IF_ERROR(ParseLabels(rest, "--proxy gateway:KEY=VALUE", p.labels));
    if (p.labels.empty())
      return Fail("--proxy gateway:KEY=VALUE: labels missing");
    return p;
  }
  return Fail("--proxy \"" + std::string(text) +
              "\": want sidecar:NAMESPACE, sidecar:KEY=VALUE[,KEY=VALUE]@NAMESPACE, "
              "grpc:NAMESPACE or gateway:KEY=VALUE[,KEY=VALUE]");
}

// Also the key of LocalControlPlane's translation cache: it must tell apart every input
// of a translation, so a sidecar's labels are part of it.
std::string ProxySpec::Describe() const {
  if (kind == Kind::kSidecar)
    return labels.empty() ? "sidecar:" + ns : "sidecar:" + DescribeLabels(labels) + "@" + ns;
  if (kind == Kind::kGrpc)
    return "grpc:" + ns;
  return "gateway:" + DescribeLabels(labels) + "@" + ns;
}

Translation Translate(const Config& config, const Registry& registry, const ProxySpec& proxy) {
  return Builder(config, registry, proxy).Run();
}

Result<std::string> ResourcesToJson(const xds::ResourceSet& resources) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = false;
  std::string out = "{";
  auto section = [&](const char* name, const auto& map) -> Result<void> {
    if (out.size() > 1)
      out += ",";
    out += "\"";
    out += name;
    out += "\":[";
    bool first = true;
    for (const auto& [key, msg] : map) {
      std::string json;
      auto status = google::protobuf::util::MessageToJsonString(msg, &json, options);
      if (!status.ok()) {
        return Fail(std::string(name) + " " + key + ": " + std::string(status.message()));
      }
      if (!first)
        out += ",";
      out += json;
      first = false;
    }
    out += "]";
    return {};
  };
  SLUICE_RETURN_IF_ERROR(section("listeners", resources.listeners));
  SLUICE_RETURN_IF_ERROR(section("routes", resources.routes));
  SLUICE_RETURN_IF_ERROR(section("clusters", resources.clusters));
  SLUICE_RETURN_IF_ERROR(section("endpoints", resources.endpoints));
  if (!resources.listener_aliases.empty()) {  // a proxyless gRPC client's short names
    nlohmann::json aliases(resources.listener_aliases);
    out += ",\"listenerAliases\":" + aliases.dump();
  }
  out += "}";
  return out;
}

}  // namespace sluice::istio
