// The access log line of a request or a TCP connection, in Envoy's default format
// (%START_TIME% "%REQ(:METHOD)% ..." %RESPONSE_CODE% %RESPONSE_FLAGS% ...), appended to
// the worker's log buffer; the worker writes the buffer out after each event batch.
#include "access_log.h"

#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <iterator>

#include <fmt/format.h>

#include "session.h"
#include "telemetry_hooks.h"

namespace sluice::proxy::engine {
void Session::LogRequest() {
  RecordTelemetry(*this);  // Istio's metrics, whether or not the chain logs
  // A connection no chain served (NR) or one closed by a chain that fails closed is
  // logged by the listener's own access_log; the rest by their chain's.
  const bool served = chain && chain->fail_closed.empty();
  if (!(served ? chain->access_log : lc && lc->access_log))
    return;
  auto& b = w->log_buffer();
  bool tcp = !served || !chain->is_http;
  int64_t duration = w->now() - (tcp ? conn_start_ms : start_ms);
  // %START_TIME%, from the loop's clock: no wall-clock read on the request path.
  auto wall = std::chrono::system_clock::now() - std::chrono::milliseconds(duration);
  std::time_t t = std::chrono::system_clock::to_time_t(wall);
  std::tm tm{};
  gmtime_r(&t, &tm);
  int ms = static_cast<int>(
      std::chrono::duration_cast<std::chrono::milliseconds>(wall.time_since_epoch()).count() %
      1000);
  auto dash = [](std::string_view v) { return v.empty() ? std::string_view("-") : v; };
  std::string_view flag_str;
  char flag_buf[64];
  std::size_t fl = 0;
  for (std::size_t i = 0; i < std::size(kFlagNames); ++i) {
    if (flags & (1u << i)) {
      if (fl)
        flag_buf[fl++] = ',';
      std::size_t n = std::strlen(kFlagNames[i]);
      std::memcpy(flag_buf + fl, kFlagNames[i], n);
      fl += n;
    }
  }
  flag_str = fl ? std::string_view(flag_buf, fl) : std::string_view("-");
  const char* cluster_name = cluster ? cluster->name.c_str() : "-";
  std::string_view route_name = route && !route->name.empty() ? std::string_view(route->name) : "-";
  if (tcp) {
    fmt::format_to(
        std::back_inserter(b),
        "[{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z] \"- - -\" 0 {} - {} \"-\" {} {} {} - "
        "\"-\" \"-\" \"-\" \"-\" \"{}\" {} {} {} {} {} -\n",
        tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms,
        flag_str, termination, bytes_rx, bytes_tx, duration, up_host, cluster_name, up_local, local,
        peer, sni.empty() ? std::string_view("-") : std::string_view(sni));
    return;
  }
  std::string_view xff = req.Get(http::HeaderId::kXForwardedFor);
  std::string_view rid =
      generated_id ? std::string_view(request_id) : req.Get(http::HeaderId::kXRequestId);
  char svc[24] = "-";
  if (response_started && service_time_ms >= 0)
    snprintf(svc, sizeof(svc), "%lld", static_cast<long long>(service_time_ms));
  fmt::format_to(
      std::back_inserter(b),
      "[{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z] \"{} {} {}\" {} {} {} - \"-\" {} {} {} {} "
      "\"{}\" \"{}\" \"{}\" \"{}\" \"{}\" {} {} {} {} {} {}\n",
      tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms,
      dash(req.method), dash(req.target),
      req.method.empty()  ? "-"
      : downstream_h2     ? "HTTP/2"
      : req.minor_version ? "HTTP/1.1"
                          : "HTTP/1.0",
      status, flag_str, details, bytes_rx, bytes_tx, duration, svc, dash(xff),
      dash(req.Get(http::HeaderId::kUserAgent)), dash(rid), dash(req.host), up_host, cluster_name,
      up_local, local, peer, sni.empty() ? std::string_view("-") : std::string_view(sni),
      route_name);
}

}  // namespace sluice::proxy::engine
