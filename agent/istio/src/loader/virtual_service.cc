// Decoder of VirtualService: hosts, gateways, exportTo, and its http, tls and tcp routes
// with their matches, weighted destinations, redirects, rewrites, retries, faults, CORS
// policies, mirrors and header operations. String matches with a regex are checked with
// RE2, as Envoy would reject them.
#include <re2/re2.h>
#include <algorithm>
#include <array>

#include "loader/decode.h"

namespace sluice::istio::detail {

namespace {

std::optional<StringMatch> DecodeStringMatch(const Field& f) {
  if (!f.present())
    return std::nullopt;
  auto entries = f.Entries();
  if (entries.size() != 1) {
    f.Error("must have exactly one of exact, prefix, regex");
    return std::nullopt;
  }
  auto& [key, value] = entries[0];
  StringMatch m;
  if (key == "exact") {
    m.kind = StringMatch::Kind::kExact;
  } else if (key == "prefix") {
    m.kind = StringMatch::Kind::kPrefix;
  } else if (key == "regex") {
    m.kind = StringMatch::Kind::kRegex;
  } else {
    value.Error("unknown match type (want exact, prefix or regex)");
    return std::nullopt;
  }
  m.value = value.StrOr("");
  if (m.kind == StringMatch::Kind::kRegex) {
    // Envoy matches with RE2, so a pattern RE2 refuses would be NACKed by the proxy.
    RE2 re(m.value, RE2::Quiet);
    if (!re.ok())
      value.Error("invalid RE2 regex \"" + m.value + "\": " + re.error());
  }
  return m;
}

std::vector<std::pair<std::string, StringMatch>> DecodeMatchMap(const Field& f) {
  std::vector<std::pair<std::string, StringMatch>> out;
  for (auto& [k, v] : f.Entries()) {
    auto m = DecodeStringMatch(v);
    if (m)
      out.emplace_back(k, *m);
  }
  return out;
}

Destination DecodeDestination(const Field& f) {
  Destination d;
  if (!f.present()) {
    f.Error("required");
    return d;
  }
  d.host = f["host"].Required();
  d.subset = f["subset"].StrOr("");
  Field port = f["port"];
  if (port.present())
    d.port = port["number"].Port();
  return d;
}

HeaderOps DecodeHeaderOps(const Field& f) {
  HeaderOps ops;
  for (auto& [k, v] : f["set"].Entries())
    ops.set.emplace_back(k, v.StrOr(""));
  for (auto& [k, v] : f["add"].Entries())
    ops.add.emplace_back(k, v.StrOr(""));
  ops.remove = f["remove"].StrList();
  return ops;
}

Headers DecodeHeaders(const Field& f) {
  Headers h;
  h.request = DecodeHeaderOps(f["request"]);
  h.response = DecodeHeaderOps(f["response"]);
  return h;
}

std::optional<Percent> DecodePercent(const Field& f) {
  if (!f.present())
    return std::nullopt;
  auto v = f["value"].Number(0, 100);
  return Percent{v.value_or(100.0)};
}

std::vector<RouteDestination> DecodeRouteDestinations(const Field& f) {
  std::vector<RouteDestination> out;
  for (auto& rf : f.List("a list of destinations")) {
    RouteDestination rd;
    rd.destination = DecodeDestination(rf["destination"]);
    if (auto w = rf["weight"]; w.present()) {
      auto v = w.Int(0, 100);
      if (v)
        rd.weight = static_cast<int32_t>(*v);
    }
    rd.headers = DecodeHeaders(rf["headers"]);
    out.push_back(std::move(rd));
  }
  if (out.size() > 1) {
    int64_t sum = 0;
    for (auto& rd : out)
      sum += rd.weight.value_or(0);
    if (sum == 0)
      f.Error("weights of the destinations sum to 0; give at least one a weight");
  }
  return out;
}

HttpMatch DecodeHttpMatch(const Field& f) {
  HttpMatch m;
  m.name = f["name"].StrOr("");
  m.uri = DecodeStringMatch(f["uri"]);
  m.scheme = DecodeStringMatch(f["scheme"]);
  m.method = DecodeStringMatch(f["method"]);
  m.authority = DecodeStringMatch(f["authority"]);
  m.headers = DecodeMatchMap(f["headers"]);
  m.without_headers = DecodeMatchMap(f["withoutHeaders"]);
  m.query_params = DecodeMatchMap(f["queryParams"]);
  m.port = f["port"].Port();
  m.gateways = f["gateways"].StrList();
  m.source_labels = f["sourceLabels"].StrMap();
  m.source_namespace = f["sourceNamespace"].Str().value_or("");
  m.ignore_uri_case = f["ignoreUriCase"].Bool().value_or(false);
  return m;
}

HttpRoute DecodeHttpRoute(const Field& f) {
  HttpRoute r;
  r.name = f["name"].StrOr("");
  for (auto& mf : f["match"].List())
    r.match.push_back(DecodeHttpMatch(mf));
  r.route = DecodeRouteDestinations(f["route"]);
  if (Field rf = f["redirect"]; rf.present()) {
    HttpRedirect rd;
    rd.uri = rf["uri"].StrOr("");
    rd.authority = rf["authority"].StrOr("");
    rd.scheme = rf["scheme"].StrOr("");
    rd.port = rf["port"].Port();
    rd.code = static_cast<uint32_t>(rf["redirectCode"].Int(300, 399).value_or(301));
    r.redirect = rd;
  }
  if (Field df = f["directResponse"]; df.present()) {
    DirectResponse d;
    if (!df["status"].present())
      df["status"].Error("required");
    d.status = static_cast<uint32_t>(df["status"].Int(200, 599).value_or(0));
    Field body = df["body"];
    if (body.present())
      d.body = body["string"].StrOr(body["bytes"].StrOr(""));
    r.direct_response = d;
  }
  if (Field wf = f["rewrite"]; wf.present()) {
    r.rewrite = HttpRewrite{wf["uri"].StrOr(""), wf["authority"].StrOr("")};
  }
  r.timeout_ms = f["timeout"].DurationMs();
  if (Field rf = f["retries"]; rf.present()) {
    HttpRetry rt;
    rt.attempts = static_cast<int32_t>(rf["attempts"].Int(0, 1 << 20).value_or(0));
    rt.per_try_timeout_ms = rf["perTryTimeout"].DurationMs();
    rt.retry_on = rf["retryOn"].StrOr("");
    r.retries = rt;
  }
  if (Field ff = f["fault"]; ff.present()) {
    HttpFault fault;
    if (Field d = ff["delay"]; d.present()) {
      HttpFault::Delay delay;
      if (!d["fixedDelay"].present())
        d["fixedDelay"].Error("required");
      delay.fixed_delay_ms = d["fixedDelay"].DurationMs().value_or(0);
      delay.percentage = DecodePercent(d["percentage"]);
      if (auto p = d["percent"].Int(0, 100); p && !delay.percentage) {
        delay.percentage = Percent{static_cast<double>(*p)};
      }
      fault.delay = delay;
    }
    if (Field a = ff["abort"]; a.present()) {
      HttpFault::Abort abort;
      if (Field g = a["grpcStatus"]; g.present()) {
        // gRPC's status code names, as Istio's validation accepts them.
        static constexpr std::array<std::string_view, 17> kCodes = {"OK",
                                                                    "CANCELLED",
                                                                    "UNKNOWN",
                                                                    "INVALID_ARGUMENT",
                                                                    "DEADLINE_EXCEEDED",
                                                                    "NOT_FOUND",
                                                                    "ALREADY_EXISTS",
                                                                    "PERMISSION_DENIED",
                                                                    "RESOURCE_EXHAUSTED",
                                                                    "FAILED_PRECONDITION",
                                                                    "ABORTED",
                                                                    "OUT_OF_RANGE",
                                                                    "UNIMPLEMENTED",
                                                                    "INTERNAL",
                                                                    "UNAVAILABLE",
                                                                    "DATA_LOSS",
                                                                    "UNAUTHENTICATED"};
        std::string name = g.StrOr("");
        auto it = std::find(kCodes.begin(), kCodes.end(), name);
        if (it == kCodes.end()) {
          g.Error("\"" + name + "\" is not a gRPC status code name (UNAVAILABLE, INTERNAL, …)");
        } else {
          abort.grpc_status = static_cast<uint32_t>(it - kCodes.begin());
        }
        if (a["httpStatus"].present())
          a["httpStatus"].Error("only one of httpStatus and grpcStatus may be set");
      } else {
        if (!a["httpStatus"].present())
          a["httpStatus"].Error("required (or grpcStatus)");
        abort.http_status = static_cast<uint32_t>(a["httpStatus"].Int(200, 599).value_or(0));
      }
      abort.percentage = DecodePercent(a["percentage"]);
      fault.abort = abort;
    }
    r.fault = fault;
  }
  if (Field cf = f["corsPolicy"]; cf.present()) {
    CorsPolicy c;
    if (Field of = cf["allowOrigins"]; of.present()) {
      for (auto& m : of.List()) {
        if (auto sm = DecodeStringMatch(m))
          c.allow_origins.push_back(std::move(*sm));
      }
    }
    c.allow_origin = cf["allowOrigin"].StrList();
    c.allow_methods = cf["allowMethods"].StrList();
    c.allow_headers = cf["allowHeaders"].StrList();
    c.expose_headers = cf["exposeHeaders"].StrList();
    if (Field mf = cf["maxAge"]; mf.present()) {
      c.max_age_ms = mf.DurationMs();
      if (!c.max_age_ms)
        mf.Error("not a duration (\"24h\", \"600s\")");
    }
    c.allow_credentials = cf["allowCredentials"].Bool();
    if (Field uf = cf["unmatchedPreflights"]; uf.present()) {
      std::string v = uf.StrOr("");
      if (v == "IGNORE")
        c.forward_unmatched_preflights = false;
      else if (v != "FORWARD" && v != "UNSPECIFIED")
        uf.Error("\"" + v + "\" is not one of UNSPECIFIED, FORWARD, IGNORE");
    }
    r.cors = std::move(c);
  }
  if (Field mf = f["mirror"]; mf.present())
    r.mirror = DecodeDestination(mf);
  r.mirror_percentage = DecodePercent(f["mirrorPercentage"]);
  if (auto p = f["mirrorPercent"].Int(0, 100); p && !r.mirror_percentage) {
    r.mirror_percentage = Percent{static_cast<double>(*p)};
  }
  r.headers = DecodeHeaders(f["headers"]);

  int actions = (r.route.empty() ? 0 : 1) + (r.redirect ? 1 : 0) + (r.direct_response ? 1 : 0);
  if (actions == 0) {
    f.Error("needs one of route, redirect or directResponse");
  } else if (actions > 1) {
    f.Error("route, redirect and directResponse are mutually exclusive");
  }
  return r;
}

L4Route DecodeL4Route(const Field& f, bool tls) {
  L4Route r;
  for (auto& mf : f["match"].List()) {
    L4Match m;
    if (tls) {
      m.sni_hosts = mf["sniHosts"].StrList();
      CheckHosts(mf["sniHosts"], m.sni_hosts, false);
      if (m.sni_hosts.empty())
        mf["sniHosts"].Error("required for a tls route");
    }
    m.destination_subnets = mf["destinationSubnets"].StrList();
    m.port = mf["port"].Port();
    m.gateways = mf["gateways"].StrList();
    m.source_labels = mf["sourceLabels"].StrMap();
    m.source_namespace = mf["sourceNamespace"].Str().value_or("");
    r.match.push_back(std::move(m));
  }
  if (tls && r.match.empty())
    f["match"].Error("required for a tls route");
  if (!f["route"].present())
    f["route"].Error("required");
  r.route = DecodeRouteDestinations(f["route"]);
  return r;
}

}  // namespace

VirtualService DecodeVirtualService(const Field& doc, const Meta& meta) {
  VirtualService vs;
  vs.meta = meta;
  Field spec = doc["spec"];
  vs.hosts = spec["hosts"].StrList();
  if (vs.hosts.empty() && !spec["hosts"].present())
    spec["hosts"].Error("required");
  CheckHosts(spec["hosts"], vs.hosts, false);
  vs.gateways = spec["gateways"].StrList();
  vs.export_to = spec["exportTo"].StrList();
  for (auto& hf : spec["http"].List())
    vs.http.push_back(DecodeHttpRoute(hf));
  for (auto& tf : spec["tls"].List())
    vs.tls.push_back(DecodeL4Route(tf, true));
  for (auto& tf : spec["tcp"].List())
    vs.tcp.push_back(DecodeL4Route(tf, false));
  if (vs.http.empty() && vs.tls.empty() && vs.tcp.empty()) {
    spec.Error("needs at least one of http, tls, tcp routes");
  }
  return vs;
}

}  // namespace sluice::istio::detail
