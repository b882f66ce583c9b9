// What the admin endpoint's pages are made of, for the node and the gateway alike:
// the pod proxies' counters, the /config_dump JSON of a config snapshot, and the query
// string of a request; Prometheus families and the xDS acceptance text come with
// xds_status_text.h.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "pod_proxies.h"
#include "sluice/config/snapshot.h"
#include "xds_status_text.h"

namespace sluice::agent {

// Every proxy counter (proxy::NamedStats) of every pod, one family per counter,
// labelled by pod: sluice_proxy_requests_total{namespace="default",pod="sleep-1"}.
std::string ProxyMetrics(const std::vector<PodProxyStatus>& pods);

// The Envoy resources of a snapshot, as /config_dump shows them; SDS secrets without key
// material (private keys and passwords "[redacted]", as Envoy's config dump).
nlohmann::json DumpResources(const config::Snapshot& s);

// "namespace=default&x=y" -> "default" for key "namespace".
std::string QueryParam(const std::string& query, const std::string& key);

}  // namespace sluice::agent
