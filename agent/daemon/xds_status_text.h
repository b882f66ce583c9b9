// The admin pages' text that needs only the xDS client's status (and so is tested
// without the rest of the agent): Prometheus text exposition, and what /ready and
// /metrics say about xDS per-resource acceptance, for the node and the gateway alike.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "sluice/xds/ads_client.h"

namespace sluice::agent {

// One metric family: samples are (labels such as `{pod="x"}` or "", value).
std::string Prometheus(const std::string& name, const std::string& help, const std::string& type,
                       const std::vector<std::pair<std::string, uint64_t>>& samples);

// One line per listener the xDS client refused: "listener NAME refused: REASON", each
// prefixed with `stream` ("namespace view default: ") when it is not empty. Empty when
// none: /ready is 503 while this is not empty.
std::string RefusedListeners(const xds::AdsClientStatus& st, const std::string& stream = "");

// xDS per-resource acceptance as Prometheus families, one set of samples per stream
// (labels such as `view="default"`, or "" for the node's or gateway's stream):
//   sluice_xds_protocol{protocol}                         gauge: 1 for "delta" or "sotw"
//   sluice_xds_refused_resources{type,reason_class}       gauge: refused now
//   sluice_xds_skipped_resources{type,reason_class}       gauge: skipped now
//   sluice_xds_resources_refused_total{type,reason_class} counter
//   sluice_xds_resources_skipped_total{type,reason_class} counter
//   sluice_xds_skipped_filters{filter_type}               gauge: listeners skipping it
// What /config_dump shows of the stream and its per-resource acceptance: {"protocol":
// "delta"|"sotw" ("" before a stream), "connected": bool, "refused": {TYPE: {NAME: REASON}},
// "skipped": {TYPE: {NAME: REASON}}, "skipped_filters": {FILTER_TYPE: LISTENERS}}, TYPE
// being the resource's type URL. Refused and skipped resources are not in the dump's
// resource lists (a refused one's earlier version is, if it had one).
nlohmann::json XdsAcceptanceJson(const xds::AdsClientStatus& st);

std::string XdsAcceptanceMetrics(
    const std::vector<std::pair<std::string, xds::AdsClientStatus>>& streams);

}  // namespace sluice::agent
