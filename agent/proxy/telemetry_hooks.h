// Where a session reports to Istio's standard metrics (istio_stats.cc): a request or a
// TCP connection when its access-log entry is written (Session::LogRequest), and a TCP
// connection when it has reached its endpoint (Session::StartTcp). Both return at once
// when the proxy keeps no Istio metrics (ProxyOptions.istio_stats unset) or the session's
// chain carries no istio.stats filter (FilterChain::istio_stats), as Envoy records only
// where istiod put the filter; a metric that filter drops is not recorded.
#pragma once

namespace sluice::proxy::engine {

class Session;
void RecordTelemetry(const Session& s);
void RecordTcpOpen(const Session& s);

}  // namespace sluice::proxy::engine
