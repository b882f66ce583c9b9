// What the admin endpoint's pages are made of, for the node and the gateway alike:
// Prometheus text exposition (a metric family with its HELP and TYPE lines), the
// /config_dump JSON of a config snapshot, and the query string of a request.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "pod_proxies.h"
#include "sluice/config/snapshot.h"

namespace sluice::agent {

// One metric family: samples are (labels such as `{pod="x"}` or "", value).
std::string Prometheus(const std::string& name, const std::string& help, const std::string& type,
                       const std::vector<std::pair<std::string, uint64_t>>& samples);

// Every proxy counter (proxy::NamedStats) of every pod, one family per counter,
// labelled by pod: sluice_proxy_requests_total{namespace="default",pod="sleep-1"}.
std::string ProxyMetrics(const std::vector<PodProxyStatus>& pods);

// The Envoy resources of a snapshot, as /config_dump shows them.
nlohmann::json DumpResources(const config::Snapshot& s);

// "namespace=default&x=y" -> "default" for key "namespace".
std::string QueryParam(const std::string& query, const std::string& key);

}  // namespace sluice::agent
