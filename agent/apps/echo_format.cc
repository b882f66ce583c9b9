// The echo app's text formats (see echo_format.h): field lines written in the order
// Istio's pkg/test/echo server and forwarder write them, and Go's duration spelling.
#include "echo_format.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <map>

#include "http_message.h"

namespace sluice::apps {
namespace {

void Field(std::string& out, std::string_view key, std::string_view value) {
  out.append(key).append("=").append(value).append("\n");
}

void FieldNonEmpty(std::string& out, std::string_view key, std::string_view value) {
  if (!value.empty())
    Field(out, key, value);
}

// Go's fraction printing: `digits` decimals of `frac`, trailing zeros (and a bare
// point) dropped.
std::string WithFraction(std::uint64_t whole, std::uint64_t frac, int digits) {
  std::string out = std::to_string(whole);
  if (frac == 0)
    return out;
  char buf[16];
  std::snprintf(buf, sizeof buf, "%0*" PRIu64, digits, frac);
  std::string f(buf);
  while (!f.empty() && f.back() == '0')
    f.pop_back();
  return out + "." + f;
}

}  // namespace

std::string FormatGrpcEcho(const EchoIdentity& id, const GrpcEchoCall& call) {
  std::string out;
  // The echo app writes Host for :authority, then every metadata entry as RequestHeader.
  if (!call.authority.empty()) {
    Field(out, "Host", call.authority);
    Field(out, "RequestHeader", ":authority:" + call.authority);
  }
  for (const auto& [k, v] : call.metadata)
    if (!k.ends_with("-bin"))
      Field(out, "RequestHeader", k + ":" + v);
  Field(out, "StatusCode", "200");
  Field(out, "ServiceVersion", id.version);
  Field(out, "ServicePort", std::to_string(call.port));
  FieldNonEmpty(out, "Cluster", id.cluster);
  FieldNonEmpty(out, "Namespace", id.ns);
  Field(out, "IP", call.peer_ip.empty() ? "0.0.0.0" : call.peer_ip);
  FieldNonEmpty(out, "IstioVersion", id.istio_version);
  Field(out, "Proto", "GRPC");
  Field(out, "Echo", call.message);
  Field(out, "Hostname", id.hostname);
  return out;
}

Handler MakeEchoHttpHandler(EchoIdentity id) {
  return [id = std::move(id)](const Request& req, const ConnectionInfo& conn) {
    std::string body;
    Field(body, "ServiceVersion", id.version);
    Field(body, "ServicePort", std::to_string(conn.local_port));
    Field(body, "Host", req.Header("host").value_or(""));
    Field(body, "URL", req.target);
    FieldNonEmpty(body, "Cluster", id.cluster);
    FieldNonEmpty(body, "IstioVersion", id.istio_version);
    FieldNonEmpty(body, "Namespace", id.ns);
    Field(body, "Method", req.method);
    Field(body, "Proto", "HTTP/1." + std::to_string(req.version_minor));
    Field(body, "IP", conn.peer_ip);
    if (conn.tls)
      FieldNonEmpty(body, "Sni", conn.sni);
    // Go's http.Header: canonical names, sorted, values in arrival order. Go moves Host
    // out of the header map into r.Host, so it is not a RequestHeader line.
    std::map<std::string, std::vector<std::string>> headers;
    for (const auto& [k, v] : req.headers) {
      std::string name = CanonicalHeaderName(k);
      if (name != "Host")
        headers[name].push_back(v);
    }
    for (const auto& [k, values] : headers)
      for (const auto& v : values)
        Field(body, "RequestHeader", k + ":" + v);
    Field(body, "Hostname", id.hostname);
    Response resp;
    resp.headers.emplace_back("Content-Type", "application/text");
    resp.body = std::move(body);
    return resp;
  };
}

std::string FormatTcpEchoFields(const EchoIdentity& id, int port, std::string_view peer_ip) {
  std::string out;
  Field(out, "StatusCode", "200");
  FieldNonEmpty(out, "Cluster", id.cluster);
  FieldNonEmpty(out, "IstioVersion", id.istio_version);
  FieldNonEmpty(out, "Namespace", id.ns);
  Field(out, "ServiceVersion", id.version);
  Field(out, "ServicePort", std::to_string(port));
  Field(out, "IP", peer_ip);
  Field(out, "Proto", "TCP");
  Field(out, "Hostname", id.hostname);
  return out;
}

std::string GoDuration(std::chrono::nanoseconds d) {
  std::int64_t ns = d.count();
  std::string sign;
  if (ns < 0) {
    sign = "-";
    ns = -ns;
  }
  auto u = static_cast<std::uint64_t>(ns);
  if (u == 0)
    return "0s";
  if (u < 1'000)
    return sign + std::to_string(u) + "ns";
  if (u < 1'000'000)
    return sign + WithFraction(u / 1'000, u % 1'000, 3) + "µs";
  if (u < 1'000'000'000)
    return sign + WithFraction(u / 1'000'000, u % 1'000'000, 6) + "ms";
  std::uint64_t secs = u / 1'000'000'000, frac = u % 1'000'000'000;
  std::string out = sign;
  if (secs >= 3600)
    out += std::to_string(secs / 3600) + "h";
  if (secs >= 60)
    out += std::to_string((secs / 60) % 60) + "m";
  return out + WithFraction(secs % 60, frac, 9) + "s";
}

std::string FormatForwardedReply(int request_id, std::chrono::nanoseconds latency,
                                 int active_requests, std::string_view reply,
                                 const std::vector<std::pair<std::string, std::string>>& headers) {
  const std::string n = std::to_string(request_id);
  std::string out;
  out += "[" + n + "] Latency=" + GoDuration(latency) + "\n";
  out += "[" + n + "] ActiveRequests=" + std::to_string(active_requests) + "\n";
  std::size_t at = 0;
  while (at < reply.size()) {
    std::size_t nl = reply.find('\n', at);
    std::string_view line = reply.substr(at, nl == std::string_view::npos ? nl : nl - at);
    if (!line.empty())
      out.append("[" + n + " body] ").append(line).append("\n");
    if (nl == std::string_view::npos)
      break;
    at = nl + 1;
  }
  for (const auto& [k, v] : headers)
    out += "[" + n + "] ResponseHeader=" + k + ":" + v + "\n";
  return out;
}

Result<std::chrono::microseconds> ParseGoDuration(std::string_view text) {
  const std::string what = "duration \"" + std::string(text) + "\"";
  if (text.empty())
    return Fail(what + ": empty");
  double total_us = 0;
  std::string_view rest = text;
  bool bare = rest.find_first_not_of("0123456789.") == std::string_view::npos;
  while (!rest.empty()) {
    std::size_t num_end = rest.find_first_not_of("0123456789.");
    std::string num(rest.substr(0, num_end));
    if (num.empty() || num == "." || std::count(num.begin(), num.end(), '.') > 1)
      return Fail(what + ": want a number and a unit (ns, us, ms, s, m, h), e.g. 5s or 500ms");
    double value = std::stod(num);
    if (bare)
      return std::chrono::microseconds(static_cast<std::int64_t>(value * 1e6));
    rest.remove_prefix(num_end);
    std::size_t unit_end = rest.find_first_of("0123456789.");
    std::string_view unit = rest.substr(0, unit_end);
    double scale = 0;
    if (unit == "ns")
      scale = 1e-3;
    else if (unit == "us" || unit == "µs")
      scale = 1;
    else if (unit == "ms")
      scale = 1e3;
    else if (unit == "s")
      scale = 1e6;
    else if (unit == "m")
      scale = 60e6;
    else if (unit == "h")
      scale = 3600e6;
    else
      return Fail(what + ": unknown unit \"" + std::string(unit) + "\" (ns, us, ms, s, m, h)");
    total_us += value * scale;
    rest.remove_prefix(unit.size());
  }
  return std::chrono::microseconds(static_cast<std::int64_t>(total_us));
}

std::string FormatForwardedError(int request_id, std::string_view error) {
  return "[" + std::to_string(request_id) + " error] " + std::string(error) + "\n";
}

std::string GrpcErrorText(int code, std::string_view message) {
  // grpc-go's codes.Code.String() names.
  static constexpr const char* kNames[] = {
      "OK",       "Canceled",       "Unknown",          "InvalidArgument",   "DeadlineExceeded",
      "NotFound", "AlreadyExists",  "PermissionDenied", "ResourceExhausted", "FailedPrecondition",
      "Aborted",  "OutOfRange",     "Unimplemented",    "Internal",          "Unavailable",
      "DataLoss", "Unauthenticated"};
  std::string name = code >= 0 && code <= 16 ? kNames[code] : "Code(" + std::to_string(code) + ")";
  return "rpc error: code = " + name + " desc = " + std::string(message);
}

}  // namespace sluice::apps
