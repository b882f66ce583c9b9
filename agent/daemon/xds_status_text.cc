// Prometheus families and the xDS acceptance text of /ready and /metrics
// (xds_status_text.h).
#include "xds_status_text.h"

#include <map>

namespace sluice::agent {

std::string Prometheus(const std::string& name, const std::string& help, const std::string& type,
                       const std::vector<std::pair<std::string, uint64_t>>& samples) {
  std::string out = "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
  for (const auto& [labels, v] : samples)
    out += name + labels + " " + std::to_string(v) + "\n";
  return out;
}

std::string RefusedListeners(const xds::AdsClientStatus& st, const std::string& stream) {
  std::string out;
  auto it = st.types.find(std::string(xds::kListenerType));
  if (it == st.types.end())
    return out;
  for (const auto& [name, issue] : it->second.refused)
    out += stream + "listener " + name + " refused: " + issue.reason + "\n";
  return out;
}

nlohmann::json XdsAcceptanceJson(const xds::AdsClientStatus& st) {
  nlohmann::json j = {{"protocol", st.protocol},
                      {"connected", st.connected},
                      {"refused", nlohmann::json::object()},
                      {"skipped", nlohmann::json::object()},
                      {"skipped_filters", nlohmann::json::object()}};
  for (const auto& [type_url, ts] : st.types) {
    for (const auto& [name, issue] : ts.refused)
      j["refused"][type_url][name] = issue.reason;
    for (const auto& [name, issue] : ts.skipped)
      j["skipped"][type_url][name] = issue.reason;
    for (const auto& [filter, n] : ts.skipped_filters)
      j["skipped_filters"][filter] = n;
  }
  return j;
}

std::string XdsAcceptanceMetrics(
    const std::vector<std::pair<std::string, xds::AdsClientStatus>>& streams) {
  using Samples = std::vector<std::pair<std::string, uint64_t>>;
  Samples refused, skipped, refused_total, skipped_total, filters, protocols;
  auto labels = [](const std::string& stream, const std::string& rest) {
    return "{" + (stream.empty() ? rest : stream + "," + rest) + "}";
  };
  for (const auto& [stream, st] : streams) {
    if (!st.protocol.empty())
      protocols.push_back({labels(stream, "protocol=\"" + st.protocol + "\""), 1});
    for (const auto& [type_url, ts] : st.types) {
      const std::string type = "type=\"" + type_url + "\"";
      std::map<std::string, uint64_t> now_refused, now_skipped;
      for (const auto& [_, issue] : ts.refused)
        ++now_refused[issue.reason_class];
      for (const auto& [_, issue] : ts.skipped)
        ++now_skipped[issue.reason_class];
      auto add = [&](Samples& out, const std::map<std::string, uint64_t>& by_class) {
        for (const auto& [cls, n] : by_class)
          out.push_back({labels(stream, type + ",reason_class=\"" + cls + "\""), n});
      };
      add(refused, now_refused);
      add(skipped, now_skipped);
      add(refused_total, ts.refused_total);
      add(skipped_total, ts.skipped_total);
      for (const auto& [ft, n] : ts.skipped_filters)
        filters.push_back({labels(stream, "filter_type=\"" + ft + "\""), n});
    }
  }
  std::string out;
  out += Prometheus("sluice_xds_protocol",
                    "The ADS protocol of the stream (delta or sotw): 1 for the one in use", "gauge",
                    protocols);
  out += Prometheus("sluice_xds_refused_resources",
                    "xDS resources refused now (NACKed by name), by type and reason class", "gauge",
                    refused);
  out += Prometheus("sluice_xds_skipped_resources",
                    "xDS resources skipped now (ACKed, not served), by type and reason class",
                    "gauge", skipped);
  out += Prometheus("sluice_xds_resources_refused_total",
                    "xDS resources refused, by type and reason class", "counter", refused_total);
  out += Prometheus("sluice_xds_resources_skipped_total",
                    "xDS resources skipped, by type and reason class", "counter", skipped_total);
  out += Prometheus("sluice_xds_skipped_filters",
                    "Filter types skipped (no effect on routing), by how many accepted listeners "
                    "carry them",
                    "gauge", filters);
  return out;
}

}  // namespace sluice::agent
