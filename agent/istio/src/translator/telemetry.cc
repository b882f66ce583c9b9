// Istio's metrics for a proxy: the istio.stats filters istiod puts on every sidecar and
// gateway chain (an HTTP filter before the router, a network filter before tcp_proxy),
// each with the stats.PluginConfig its Telemetry resources give it. istiod's
// counterpart is pilot/pkg/model/telemetry.go: applicableTelemetries (the root
// namespace's namespace-wide Telemetry, then the proxy namespace's, then those whose
// selector matches the proxy, in that order), mergeMetrics (providers, overrides by
// metric and mode, ALL_METRICS disabled dropping the filter) and generateStatsConfig;
// the filter positions are listener_builder.go's and networkfilter.go's.
#include <algorithm>

#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb.h"
#include "istio-proxy/stats/config.pb.h"
#include "sluice/istio/registry.h"
#include "translator/builder.h"

namespace sluice::istio::detail {

namespace {

namespace hcm_v3 = envoy::extensions::filters::network::http_connection_manager::v3;

constexpr char kStatsFilter[] = "istio.stats";
constexpr char kPrometheus[] = "prometheus";

// Istio's metric enum names (ALL_METRICS aside) in sorted order, as istiod's allMetrics,
// and their Prometheus names (metricToPrometheusMetric).
constexpr std::pair<const char*, const char*> kMetrics[] = {
    {"GRPC_REQUEST_MESSAGES", "request_messages_total"},
    {"GRPC_RESPONSE_MESSAGES", "response_messages_total"},
    {"REQUEST_COUNT", "requests_total"},
    {"REQUEST_DURATION", "request_duration_milliseconds"},
    {"REQUEST_SIZE", "request_bytes"},
    {"RESPONSE_SIZE", "response_bytes"},
    {"TCP_CLOSED_CONNECTIONS", "tcp_connections_closed_total"},
    {"TCP_OPENED_CONNECTIONS", "tcp_connections_opened_total"},
    {"TCP_RECEIVED_BYTES", "tcp_received_bytes_total"},
    {"TCP_SENT_BYTES", "tcp_sent_bytes_total"},
};

using Mode = TelemetryMetricOverride::Mode;

std::vector<Mode> Modes(Mode m) {
  if (m == Mode::kClientAndServer)
    return {Mode::kClient, Mode::kServer};
  return {m};
}

}  // namespace

std::vector<const Telemetry*> Builder::ApplicableTelemetries() const {
  std::vector<const Telemetry*> out;
  const std::string& root = config_.mesh.root_namespace;
  // The first namespace-wide Telemetry of a namespace is its (istiod's
  // namespaceWideTelemetryConfig, in creation order: here, load order).
  auto ns_wide = [&](const std::string& ns) -> const Telemetry* {
    for (const auto& t : config_.telemetries)
      if (t.meta.ns == ns && t.selector.empty())
        return &t;
    return nullptr;
  };
  if (!root.empty()) {
    if (const Telemetry* t = ns_wide(root))
      out.push_back(t);
  }
  if (proxy_.ns != root) {
    if (const Telemetry* t = ns_wide(proxy_.ns))
      out.push_back(t);
  }
  for (const auto& t : config_.telemetries) {
    if (t.meta.ns == proxy_.ns && !t.selector.empty() && SelectorMatches(t.selector, proxy_.labels))
      out.push_back(&t);
  }
  return out;
}

void Builder::BuildStatsConfigs() {
  std::vector<const TelemetryMetrics*> metrics;
  for (const Telemetry* t : ApplicableTelemetries())
    for (const auto& m : t->metrics)
      metrics.push_back(&m);
  // mergeMetrics, with MeshConfig's default metrics provider (prometheus) and no other
  // provider (the loader refuses any other name). Without any Metrics the default
  // provider's filter is there, unconfigured.
  struct Override {
    std::optional<bool> disabled;
    std::map<std::string, TelemetryTagOverride> tags;
  };
  bool in_scope = true;  // prometheus among the last providers named
  for (const auto* m : metrics) {
    if (!m->providers.empty())
      in_scope =
          std::find(m->providers.begin(), m->providers.end(), kPrometheus) != m->providers.end();
  }
  std::map<Mode, std::map<std::string, Override>> by_mode;
  std::set<Mode> disabled_all;
  std::optional<int64_t> interval;
  std::vector<std::string> parent = {kPrometheus};
  for (const auto* m : metrics) {
    const std::vector<std::string>& names = m->providers.empty() ? parent : m->providers;
    parent = names;
    if (!in_scope || std::find(names.begin(), names.end(), kPrometheus) == names.end())
      continue;
    if (m->reporting_interval_ms)
      interval = m->reporting_interval_ms;
    for (const auto& o : m->overrides) {
      const bool all = !o.custom && (o.metric.empty() || o.metric == "ALL_METRICS");
      if (all && o.disabled.value_or(false)) {
        for (Mode mode : Modes(o.mode))
          disabled_all.insert(mode);
        continue;
      }
      std::vector<std::string> names_of;
      if (o.custom) {
        names_of.push_back(o.metric);
      } else if (all) {
        for (const auto& [n, p] : kMetrics)
          names_of.emplace_back(n);
      } else {
        names_of.push_back(o.metric);
      }
      for (Mode mode : Modes(o.mode)) {
        disabled_all.erase(mode);  // a root-level disable, enabled again below it
        for (const auto& n : names_of) {
          Override& ov = by_mode[mode][n];
          if (o.disabled)
            ov.disabled = o.disabled;
          for (const auto& [k, v] : o.tags)
            ov.tags[k] = v;
        }
      }
    }
  }
  stats_ = {};
  if (!in_scope)
    return;  // the metrics providers in force are not prometheus: no filter
  for (Mode mode : {Mode::kClient, Mode::kServer}) {
    if (disabled_all.contains(mode))
      continue;  // ALL_METRICS disabled: istiod omits the filter for that side
    stats::PluginConfig cfg;
    // istiod: no Host-header fallback on the server side and at gateways.
    cfg.set_disable_host_header_fallback(mode == Mode::kServer ||
                                         proxy_.kind == ProxySpec::Kind::kGateway);
    if (interval)
      SetDurationMs(cfg.mutable_tcp_reporting_duration(), *interval);
    for (const auto& [metric, ov] : by_mode[mode]) {  // sorted by the Istio metric name
      auto* mc = cfg.add_metrics();
      std::string name = metric;
      for (const auto& [n, p] : kMetrics)
        if (metric == n)
          name = p;
      mc->set_name(name);
      mc->set_drop(ov.disabled.value_or(false));
      for (const auto& [tag, t] : ov.tags) {  // sorted by tag name, as istiod
        if (t.remove)
          mc->add_tags_to_remove(tag);
        else
          (*mc->mutable_dimensions())[tag] = t.value;
      }
    }
    google::protobuf::Any any;
    any.PackFrom(cfg);
    stats_[mode == Mode::kServer] = std::move(any);
  }
}

void Builder::AddStatsFilters() {
  for (auto& [name, l] : out_.resources.listeners) {
    // virtualInbound's chains report as the server (reporter "destination"); outbound
    // and gateway listeners as the client.
    const bool server =
        proxy_.kind == ProxySpec::Kind::kSidecar && l.traffic_direction() == core_v3::INBOUND;
    const auto& cfg = stats_[server];
    if (!cfg)
      continue;
    auto chain = [&](listener_v3::FilterChain& fc) {
      for (int i = 0; i < fc.filters_size(); ++i) {
        auto* f = fc.mutable_filters(i);
        if (f->name() == "envoy.filters.network.tcp_proxy") {
          listener_v3::Filter stats;
          stats.set_name(kStatsFilter);
          *stats.mutable_typed_config() = *cfg;
          *fc.add_filters() = std::move(stats);
          for (int j = fc.filters_size() - 1; j > i; --j)
            fc.mutable_filters()->SwapElements(j, j - 1);
          return;
        }
        hcm_v3::HttpConnectionManager hcm;
        if (!f->typed_config().Is<hcm_v3::HttpConnectionManager>() ||
            !f->typed_config().UnpackTo(&hcm))
          continue;
        // Before the router, the last filter (after fault and cors).
        hcm_v3::HttpFilter stats;
        stats.set_name(kStatsFilter);
        *stats.mutable_typed_config() = *cfg;
        *hcm.add_http_filters() = std::move(stats);
        const int n = hcm.http_filters_size();
        if (n >= 2)
          hcm.mutable_http_filters()->SwapElements(n - 1, n - 2);
        f->mutable_typed_config()->PackFrom(hcm);
        return;
      }
    };
    for (auto& fc : *l.mutable_filter_chains())
      chain(fc);
    if (l.has_default_filter_chain())
      chain(*l.mutable_default_filter_chain());
  }
}

}  // namespace sluice::istio::detail
