// Istio's metric samples on the L7 wire (kIstioStats): the L7 process sends its pods'
// series as data, not as Prometheus text, so the agent renders the union of them and the
// kernel path's series once (one `# TYPE` line per metric, equal label sets summed by
// RenderPrometheus).
//
// Format: a JSON array, one object per sample: "labels" ([[name, value], ...] in order),
// "tcp" (bool), and the sample's non-zero numbers: "requests", "duration_ms",
// "request_bytes", "response_bytes" (each {"buckets": [...], "count", "sum"}, buckets not
// cumulative, as Sample::Hist), "tcp_opened", "tcp_closed", "tcp_sent", "tcp_received".
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "sluice/common/result.h"
#include "sluice/proxy/istio_stats.h"

namespace sluice::agent {

std::string EncodeIstioSamples(const std::vector<proxy::telemetry::Sample>& samples);
// Errors name the sample and field. Label names are interned (Sample holds views).
Result<std::vector<proxy::telemetry::Sample>> DecodeIstioSamples(std::string_view json);

}  // namespace sluice::agent
