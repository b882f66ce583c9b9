#include "sluice/istio/loader.h"

#include <arpa/inet.h>
#include <re2/re2.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <system_error>

#include "api_fields.h"
#include "yaml_field.h"

namespace sluice::istio {
namespace {

namespace fs = std::filesystem;
using detail::Field;
using detail::FieldErrors;

constexpr const char* kIstioNetworkingVersions[] = {
    "networking.istio.io/v1alpha3", "networking.istio.io/v1beta1", "networking.istio.io/v1"};
constexpr const char* kTelemetryVersions[] = {"telemetry.istio.io/v1alpha1",
                                              "telemetry.istio.io/v1"};

// One YAML document cut out of a file, with the line it starts on (1-based), so that
// parse errors point at the file's own line numbers.
struct RawDocument {
  std::string text;
  int first_line = 1;
};

bool IsSeparator(std::string_view line, std::string_view marker) {
  if (line.substr(0, 3) != marker)
    return false;
  return line.size() == 3 || line[3] == ' ' || line[3] == '\t' || line[3] == '#' || line[3] == '\r';
}

// Splits on "---" / "..." lines ourselves: yaml-cpp's LoadAll gives up on the whole
// stream at the first broken document, and we must keep its neighbours.
std::vector<RawDocument> SplitDocuments(std::string_view text) {
  std::vector<RawDocument> docs(1);
  int line_no = 0;
  std::size_t pos = 0;
  bool ended = false;  // after "...", text up to the next "---" is outside any document
  while (pos < text.size()) {
    std::size_t nl = text.find('\n', pos);
    std::string_view line =
        text.substr(pos, nl == std::string_view::npos ? std::string_view::npos : nl - pos);
    pos = nl == std::string_view::npos ? text.size() : nl + 1;
    ++line_no;
    if (IsSeparator(line, "---")) {
      docs.push_back(RawDocument{"", line_no + 1});
      ended = false;
      // "--- {inline}" keeps the content after the marker on the same line.
      std::string_view rest = line.substr(3);
      if (rest.find_first_not_of(" \t\r") != std::string_view::npos && rest[0] != '#') {
        docs.back().text.append(rest).append("\n");
        docs.back().first_line = line_no;
      }
      continue;
    }
    if (IsSeparator(line, "...")) {
      ended = true;
      continue;
    }
    if (ended)
      continue;
    docs.back().text.append(line).append("\n");
  }
  return docs;
}

bool IsBlank(const std::string& text) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    auto p = line.find_first_not_of(" \t\r");
    if (p != std::string::npos && line[p] != '#' && line.substr(p) != "%YAML 1.2" &&
        line.substr(p, 5) != "%YAML") {
      return false;
    }
  }
  return true;
}

template <std::size_t N>
bool OneOf(const std::string& v, const char* const (&options)[N]) {
  return std::find(std::begin(options), std::end(options), v) != std::end(options);
}

std::string Upper(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::toupper(c); });
  return s;
}

// ---------------------------------------------------------------- shared decoders

// A host as Istio accepts it: DNS name characters, and a wildcard only as the whole
// host ("*") or as its leftmost label ("*.example.com"). Empty when fine, else why not.
std::string HostProblem(const std::string& host) {
  if (host.empty())
    return "must not be empty";
  if (host == "*")
    return {};
  std::string_view rest = host;
  if (rest.starts_with("*."))
    rest.remove_prefix(2);
  if (rest.find('*') != std::string_view::npos)
    return "wildcard \"*\" is only allowed as the leftmost label (got \"" + host + "\")";
  for (char c : rest) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '.' && c != '_' &&
        c != ':') {
      return "not a valid host name (got \"" + host + "\")";
    }
  }
  if (rest.empty() || rest.front() == '.' || rest.back() == '.' ||
      rest.find("..") != std::string_view::npos)
    return "not a valid host name (got \"" + host + "\")";
  return {};
}

// "10.0.0.1", "2001:db8::1", optionally with "/len".
bool IsIpOrCidr(const std::string& text) {
  auto slash = text.find('/');
  std::string ip = text.substr(0, slash);
  unsigned char buf[16];
  bool v6 = ::inet_pton(AF_INET6, ip.c_str(), buf) == 1;
  if (!v6 && ::inet_pton(AF_INET, ip.c_str(), buf) != 1)
    return false;
  if (slash == std::string::npos)
    return true;
  std::string len = text.substr(slash + 1);
  if (len.empty() || len.size() > 3 || len.find_first_not_of("0123456789") != std::string::npos)
    return false;
  return std::stoi(len) <= (v6 ? 128 : 32);
}

bool IsIp(const std::string& text) {
  return text.find('/') == std::string::npos && IsIpOrCidr(text);
}

// Reports an address that is not an IP on field `f`.
void CheckIp(const Field& f, const std::string& ip) {
  if (!IsIp(ip))
    f.Error("must be an IP address (got \"" + ip + "\")");
}

// Checks each entry of a host list field; `allow_namespace` accepts Gateway's "ns/host".
void CheckHosts(const Field& f, const std::vector<std::string>& hosts, bool allow_namespace) {
  std::set<std::string> seen;
  auto items = f.List();
  for (std::size_t i = 0; i < hosts.size() && i < items.size(); ++i) {
    std::string host = hosts[i];
    if (allow_namespace) {
      auto slash = host.find('/');
      if (slash != std::string::npos)
        host = host.substr(slash + 1);
    }
    if (auto problem = HostProblem(host); !problem.empty()) {
      items[i].Error(problem);
      return;
    }
    if (!seen.insert(hosts[i]).second) {
      items[i].Error("duplicate host \"" + hosts[i] + "\"");
      return;
    }
  }
}

// Kubernetes object names: a DNS-1123 label (lower-case letters, digits, '-', at most 63,
// alphanumeric at both ends), or with `dots` a DNS-1123 subdomain (labels joined by '.').
bool IsDnsName(const std::string& name, bool dots) {
  if (name.empty() || name.size() > (dots ? 253u : 63u))
    return false;
  std::size_t label = 0;
  for (std::size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    if (c == '.' && dots) {
      if (label == 0 || name[i - 1] == '-')
        return false;
      label = 0;
      continue;
    }
    bool alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
    if (!alnum && c != '-')
      return false;
    if (c == '-' && label == 0)
      return false;
    ++label;
  }
  return name.back() != '-' && name.back() != '.';
}

Meta DecodeMeta(const Field& doc, const Origin& origin, bool name_is_label) {
  Meta m;
  Field md = doc["metadata"];
  if (md.present() && !md.is_map())
    md.Error("must be a mapping");
  m.name = md["name"].Required();
  if (!m.name.empty() && !IsDnsName(m.name, !name_is_label)) {
    md["name"].Error(name_is_label ? "must be a DNS-1123 label (lower-case letters, digits, '-')"
                                   : "must be a DNS-1123 subdomain (lower-case letters, "
                                     "digits, '-', '.')");
  }
  m.ns = md["namespace"].StrOr("default");
  if (m.ns.empty())
    m.ns = "default";
  if (!IsDnsName(m.ns, false))
    md["namespace"].Error("must be a DNS-1123 label (lower-case letters, digits, '-')");
  m.labels = md["labels"].StrMap();
  m.annotations = md["annotations"].StrMap();
  m.origin = origin;
  return m;
}

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

// ---------------------------------------------------------------- Kubernetes

Service DecodeService(const Field& doc, const Meta& meta) {
  Service s;
  s.meta = meta;
  Field spec = doc["spec"];
  s.selector = spec["selector"].StrMap();
  s.cluster_ip = spec["clusterIP"].StrOr("");
  std::set<std::string> names;
  std::set<std::pair<uint32_t, std::string>> numbers;
  for (auto& pf : spec["ports"].List()) {
    ServicePort p;
    p.name = pf["name"].StrOr("");
    if (!pf["port"].present())
      pf["port"].Error("required");
    p.port = pf["port"].Port().value_or(0);
    p.protocol = Upper(pf["protocol"].StrOr("TCP"));
    if (p.protocol != "TCP" && p.protocol != "UDP" && p.protocol != "SCTP") {
      pf["protocol"].Error("must be TCP, UDP or SCTP");
    }
    p.app_protocol = pf["appProtocol"].StrOr("");
    Field tp = pf["targetPort"];
    if (tp.present()) {
      if (tp.is_scalar() && tp.node().Tag() != "!" &&
          tp.node().Scalar().find_first_not_of("0123456789") == std::string::npos) {
        p.target_port = tp.Port().value_or(0);
      } else {
        p.target_port_name = tp.Required();
      }
    }
    if (!p.name.empty() && !names.insert(p.name).second) {
      pf["name"].Error("duplicate port name \"" + p.name + "\"");
    }
    if (!numbers.insert({p.port, p.protocol}).second) {
      pf["port"].Error("duplicate port " + std::to_string(p.port) + "/" + p.protocol);
    }
    s.ports.push_back(std::move(p));
  }
  return s;
}

std::vector<ContainerPort> DecodeContainers(const Field& podspec) {
  std::vector<ContainerPort> out;
  for (auto& c : podspec["containers"].List()) {
    for (auto& pf : c["ports"].List()) {
      ContainerPort p;
      p.name = pf["name"].StrOr("");
      p.port = pf["containerPort"].Port().value_or(0);
      out.push_back(std::move(p));
    }
  }
  return out;
}

std::vector<std::string> SplitIps(const std::string& s);

// The sluice.io/pod-ips annotation: the addresses of a Pod or a Deployment's replicas.
std::vector<std::string> AnnotatedIps(const Field& doc, const Meta& meta) {
  auto it = meta.annotations.find("sluice.io/pod-ips");
  if (it == meta.annotations.end())
    return {};
  auto ips = SplitIps(it->second);
  for (const auto& ip : ips)
    CheckIp(doc["metadata"]["annotations"]["sluice.io/pod-ips"], ip);
  return ips;
}

std::vector<std::string> SplitIps(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s + ",") {
    if (c == ',' || c == ' ') {
      if (!cur.empty())
        out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  return out;
}

Workload DecodePod(const Field& doc, const Meta& meta) {
  Workload w;
  w.kind = "Pod";
  w.meta = meta;
  w.pod_labels = meta.labels;
  w.container_ports = DecodeContainers(doc["spec"]);
  Field status = doc["status"];
  for (auto& ip : status["podIPs"].List()) {
    w.ips.push_back(ip["ip"].Required());
    CheckIp(ip["ip"], w.ips.back());
  }
  if (w.ips.empty()) {
    if (auto ip = status["podIP"].Str()) {
      w.ips.push_back(*ip);
      CheckIp(status["podIP"], *ip);
    }
  }
  if (w.ips.empty())
    w.ips = AnnotatedIps(doc, meta);
  return w;
}

Workload DecodeDeployment(const Field& doc, const Meta& meta) {
  Workload w;
  w.kind = "Deployment";
  w.meta = meta;
  Field tmpl = doc["spec"]["template"];
  w.pod_labels = tmpl["metadata"]["labels"].StrMap();
  w.container_ports = DecodeContainers(tmpl["spec"]);
  w.ips = AnnotatedIps(doc, meta);
  return w;
}

EndpointGroup DecodeEndpoints(const Field& doc, const Meta& meta) {
  EndpointGroup g;
  g.kind = "Endpoints";
  g.meta = meta;
  g.service = meta.name;
  // Endpoints has subsets[] of addresses x ports; flatten while every subset shares ports.
  for (auto& sub : doc["subsets"].List()) {
    std::vector<EndpointPort> ports;
    for (auto& pf : sub["ports"].List()) {
      ports.push_back(EndpointPort{pf["name"].StrOr(""), pf["port"].Port().value_or(0)});
    }
    for (auto& af : sub["addresses"].List()) {
      EndpointAddress a;
      a.ip = af["ip"].Required();
      CheckIp(af["ip"], a.ip);
      if (af["targetRef"]["kind"].StrOr("") == "Pod")
        a.target_pod = af["targetRef"]["name"].StrOr("");
      g.addresses.push_back(std::move(a));
    }
    for (auto& p : ports) {
      bool seen = std::any_of(g.ports.begin(), g.ports.end(),
                              [&](const EndpointPort& q) { return q.name == p.name; });
      if (!seen)
        g.ports.push_back(p);
    }
  }
  return g;
}

EndpointGroup DecodeEndpointSlice(const Field& doc, const Meta& meta) {
  EndpointGroup g;
  g.kind = "EndpointSlice";
  g.meta = meta;
  auto it = meta.labels.find("kubernetes.io/service-name");
  if (it == meta.labels.end()) {
    doc["metadata"]["labels"].Error("must carry kubernetes.io/service-name");
  } else {
    g.service = it->second;
  }
  for (auto& ef : doc["endpoints"].List()) {
    auto ready = ef["conditions"]["ready"].Bool();
    if (ready.has_value() && !*ready)
      continue;
    std::string pod;
    if (ef["targetRef"]["kind"].StrOr("") == "Pod")
      pod = ef["targetRef"]["name"].StrOr("");
    auto ips = ef["addresses"].StrList();
    auto fields = ef["addresses"].List();
    for (std::size_t i = 0; i < ips.size(); ++i) {
      CheckIp(fields[i], ips[i]);
      g.addresses.push_back(EndpointAddress{ips[i], pod, {}});
    }
  }
  for (auto& pf : doc["ports"].List()) {
    g.ports.push_back(EndpointPort{pf["name"].StrOr(""), pf["port"].Port().value_or(0)});
  }
  return g;
}

// ---------------------------------------------------------------- Istio networking

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
      if (!a["httpStatus"].present())
        a["httpStatus"].Error("required");
      abort.http_status = static_cast<uint32_t>(a["httpStatus"].Int(200, 599).value_or(0));
      abort.percentage = DecodePercent(a["percentage"]);
      fault.abort = abort;
    }
    r.fault = fault;
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

std::optional<LoadBalancer> DecodeLoadBalancer(const Field& f) {
  if (!f.present())
    return std::nullopt;
  LoadBalancer lb;
  if (auto s = f["simple"].Str()) {
    if (*s == "LEAST_REQUEST" || *s == "LEAST_CONN") {
      lb.simple = LoadBalancer::Simple::kLeastRequest;
    } else if (*s == "ROUND_ROBIN") {
      lb.simple = LoadBalancer::Simple::kRoundRobin;
    } else if (*s == "RANDOM") {
      lb.simple = LoadBalancer::Simple::kRandom;
    } else if (*s == "PASSTHROUGH") {
      lb.simple = LoadBalancer::Simple::kPassthrough;
    } else if (*s == "UNSPECIFIED") {
      lb.simple = LoadBalancer::Simple::kUnset;
    } else {
      f["simple"].Error("must be one of LEAST_REQUEST, ROUND_ROBIN, RANDOM, PASSTHROUGH (got \"" +
                        *s + "\")");
    }
  }
  if (Field ch = f["consistentHash"]; ch.present()) {
    if (f["simple"].present())
      f.Error("simple and consistentHash are mutually exclusive");
    LoadBalancer::ConsistentHash h;
    h.header = ch["httpHeaderName"].StrOr("");
    h.query_param = ch["httpQueryParameterName"].StrOr("");
    h.source_ip = ch["useSourceIp"].Bool().value_or(false);
    if (Field c = ch["httpCookie"]; c.present()) {
      h.cookie = c["name"].Required();
      h.cookie_path = c["path"].StrOr("");
      h.cookie_ttl_ms = c["ttl"].DurationMs();
    }
    int keys = !h.header.empty() + !h.query_param.empty() + h.source_ip + !h.cookie.empty();
    if (keys != 1) {
      ch.Error(
          "needs exactly one of httpHeaderName, httpCookie, useSourceIp, "
          "httpQueryParameterName");
    }
    if (Field m = ch["maglev"]; m.present()) {
      h.maglev = true;
      h.table_size = static_cast<uint64_t>(m["tableSize"].Int(1, 5000011).value_or(0));
    } else if (Field rh = ch["ringHash"]; rh.present()) {
      h.table_size = static_cast<uint64_t>(rh["minimumRingSize"].Int(1, 8388608).value_or(0));
    } else if (auto mrs = ch["minimumRingSize"].Int(1, 8388608)) {
      h.table_size = static_cast<uint64_t>(*mrs);
    }
    lb.consistent_hash = h;
  }
  return lb;
}

std::optional<TrafficPolicy> DecodeTrafficPolicy(const Field& f) {
  if (!f.present())
    return std::nullopt;
  TrafficPolicy tp;
  tp.load_balancer = DecodeLoadBalancer(f["loadBalancer"]);
  tp.connect_timeout_ms = f["connectionPool"]["tcp"]["connectTimeout"].DurationMs();
  std::set<uint32_t> seen;
  for (auto& pf : f["portLevelSettings"].List()) {
    TrafficPolicy::PortPolicy pp;
    if (!pf["port"]["number"].present())
      pf["port"]["number"].Error("required");
    pp.port = pf["port"]["number"].Port().value_or(0);
    if (!seen.insert(pp.port).second)
      pf["port"]["number"].Error("duplicate port");
    pp.load_balancer = DecodeLoadBalancer(pf["loadBalancer"]);
    pp.connect_timeout_ms = pf["connectionPool"]["tcp"]["connectTimeout"].DurationMs();
    tp.port_level.push_back(std::move(pp));
  }
  return tp;
}

DestinationRule DecodeDestinationRule(const Field& doc, const Meta& meta) {
  DestinationRule dr;
  dr.meta = meta;
  Field spec = doc["spec"];
  dr.host = spec["host"].Required();
  if (auto problem = HostProblem(dr.host); !dr.host.empty() && !problem.empty())
    spec["host"].Error(problem);
  dr.traffic_policy = DecodeTrafficPolicy(spec["trafficPolicy"]);
  dr.export_to = spec["exportTo"].StrList();
  std::set<std::string> names;
  for (auto& sf : spec["subsets"].List()) {
    Subset s;
    s.name = sf["name"].Required();
    s.labels = sf["labels"].StrMap();
    s.traffic_policy = DecodeTrafficPolicy(sf["trafficPolicy"]);
    if (!s.name.empty() && !names.insert(s.name).second) {
      sf["name"].Error("duplicate subset name \"" + s.name + "\"");
    }
    dr.subsets.push_back(std::move(s));
  }
  return dr;
}

Gateway DecodeGateway(const Field& doc, const Meta& meta) {
  Gateway gw;
  gw.meta = meta;
  Field spec = doc["spec"];
  gw.selector = spec["selector"].StrMap();
  static const char* const kProtocols[] = {"HTTP", "HTTPS", "HTTP2", "GRPC", "TLS", "TCP", "MONGO"};
  static const char* const kTlsModes[] = {"PASSTHROUGH",  "SIMPLE",           "MUTUAL",
                                          "ISTIO_MUTUAL", "AUTO_PASSTHROUGH", "OPTIONAL_MUTUAL"};
  if (!spec["servers"].present())
    spec["servers"].Error("required");
  for (auto& sf : spec["servers"].List()) {
    GatewayServer s;
    s.name = sf["name"].StrOr("");
    Field port = sf["port"];
    if (!port.present())
      port.Error("required");
    if (port.present() && !port["number"].present())
      port["number"].Error("required");
    s.port = port["number"].Port().value_or(0);
    s.port_name = port["name"].StrOr("");
    s.protocol = Upper(port["protocol"].Required());
    if (!s.protocol.empty() && !OneOf(s.protocol, kProtocols)) {
      port["protocol"].Error("unsupported protocol \"" + s.protocol + "\"");
    }
    s.hosts = sf["hosts"].StrList();
    CheckHosts(sf["hosts"], s.hosts, true);
    if (s.hosts.empty())
      sf["hosts"].Error("required");
    Field tls = sf["tls"];
    if (tls.present()) {
      s.https_redirect = tls["httpsRedirect"].Bool().value_or(false);
      s.tls_mode = tls["mode"].StrOr("");
      if (!s.tls_mode.empty() && !OneOf(s.tls_mode, kTlsModes)) {
        tls["mode"].Error("unsupported TLS mode \"" + s.tls_mode + "\"");
      }
    }
    if ((s.protocol == "TLS" || s.protocol == "HTTPS") && s.tls_mode.empty()) {
      sf["tls"].Error("required for protocol " + s.protocol);
    }
    gw.servers.push_back(std::move(s));
  }
  return gw;
}

ServiceEntry DecodeServiceEntry(const Field& doc, const Meta& meta) {
  ServiceEntry se;
  se.meta = meta;
  Field spec = doc["spec"];
  se.hosts = spec["hosts"].StrList();
  CheckHosts(spec["hosts"], se.hosts, false);
  if (se.hosts.empty())
    spec["hosts"].Error("required");
  se.addresses = spec["addresses"].StrList();
  for (std::size_t i = 0; i < se.addresses.size(); ++i) {
    if (!IsIpOrCidr(se.addresses[i])) {
      spec["addresses"].List()[i].Error("must be an IP address or CIDR range (got \"" +
                                        se.addresses[i] + "\")");
    }
  }
  se.export_to = spec["exportTo"].StrList();
  std::set<std::string> names;
  std::set<uint32_t> numbers;
  for (auto& pf : spec["ports"].List()) {
    ServiceEntryPort p;
    if (!pf["number"].present())
      pf["number"].Error("required");
    p.number = pf["number"].Port().value_or(0);
    p.name = pf["name"].Required();
    p.protocol = Upper(pf["protocol"].StrOr("TCP"));
    p.target_port = pf["targetPort"].Port().value_or(0);
    if (!p.name.empty() && !names.insert(p.name).second) {
      pf["name"].Error("duplicate port name \"" + p.name + "\"");
    }
    if (p.number != 0 && !numbers.insert(p.number).second) {
      pf["number"].Error("duplicate port number " + std::to_string(p.number));
    }
    se.ports.push_back(std::move(p));
  }
  auto location = spec["location"].StrOr("MESH_EXTERNAL");
  if (location == "MESH_EXTERNAL") {
    se.location = ServiceEntry::Location::kMeshExternal;
  } else if (location == "MESH_INTERNAL") {
    se.location = ServiceEntry::Location::kMeshInternal;
  } else {
    spec["location"].Error("must be MESH_EXTERNAL or MESH_INTERNAL (got \"" + location + "\")");
  }
  auto resolution = spec["resolution"].StrOr("NONE");
  if (resolution == "NONE") {
    se.resolution = ServiceEntry::Resolution::kNone;
  } else if (resolution == "STATIC") {
    se.resolution = ServiceEntry::Resolution::kStatic;
  } else if (resolution == "DNS") {
    se.resolution = ServiceEntry::Resolution::kDns;
  } else if (resolution == "DNS_ROUND_ROBIN") {
    se.resolution = ServiceEntry::Resolution::kDnsRoundRobin;
  } else {
    spec["resolution"].Error("must be NONE, STATIC, DNS or DNS_ROUND_ROBIN (got \"" + resolution +
                             "\")");
  }
  for (auto& ef : spec["endpoints"].List()) {
    WorkloadEntry we;
    we.address = ef["address"].Required();
    we.labels = ef["labels"].StrMap();
    for (auto& [k, v] : ef["ports"].Entries())
      we.ports[k] = v.Port().value_or(0);
    we.weight = static_cast<uint32_t>(ef["weight"].Int(0, 1 << 24).value_or(0));
    se.endpoints.push_back(std::move(we));
  }
  if (se.resolution == ServiceEntry::Resolution::kStatic) {
    auto eps = spec["endpoints"].List();
    for (std::size_t i = 0; i < se.endpoints.size() && i < eps.size(); ++i) {
      if (!IsIpOrCidr(se.endpoints[i].address) ||
          se.endpoints[i].address.find('/') != std::string::npos) {
        eps[i]["address"].Error("must be an IP address when resolution is STATIC (got \"" +
                                se.endpoints[i].address + "\")");
      }
    }
  }
  if (se.resolution == ServiceEntry::Resolution::kNone && !se.endpoints.empty()) {
    spec["endpoints"].Error("must be empty when resolution is NONE");
  }
  if (se.resolution == ServiceEntry::Resolution::kDns && se.endpoints.empty()) {
    for (std::size_t i = 0; i < se.hosts.size(); ++i) {
      if (se.hosts[i].starts_with("*")) {
        spec["hosts"].List()[i].Error("wildcard host needs endpoints when resolution is DNS");
      }
    }
  }
  return se;
}

Sidecar DecodeSidecar(const Field& doc, const Meta& meta) {
  Sidecar sc;
  sc.meta = meta;
  Field spec = doc["spec"];
  sc.workload_selector = spec["workloadSelector"]["labels"].StrMap();
  for (auto& ef : spec["egress"].List()) {
    auto hosts = ef["hosts"].StrList();
    auto fields = ef["hosts"].List();
    if (hosts.empty())
      ef["hosts"].Error("required");
    for (std::size_t i = 0; i < hosts.size(); ++i) {
      auto slash = hosts[i].find('/');
      if (slash == std::string::npos || slash == 0) {
        fields[i].Error("must be namespace/host, e.g. \"./*\" or \"istio-system/*\" (got \"" +
                        hosts[i] + "\")");
        break;
      }
      if (auto problem = HostProblem(hosts[i].substr(slash + 1)); !problem.empty()) {
        fields[i].Error(problem);
        break;
      }
      sc.egress_hosts.push_back(hosts[i]);
    }
  }
  if (auto mode = spec["outboundTrafficPolicy"]["mode"].Str()) {
    if (*mode == "REGISTRY_ONLY") {
      sc.registry_only = true;
    } else if (*mode == "ALLOW_ANY") {
      sc.registry_only = false;
    } else {
      spec["outboundTrafficPolicy"]["mode"].Error("must be ALLOW_ANY or REGISTRY_ONLY");
    }
  }
  return sc;
}

Telemetry DecodeTelemetry(const Field& doc, const Meta& meta) {
  Telemetry t;
  t.meta = meta;
  Field logging = doc["spec"]["accessLogging"];
  for (auto& lf : logging.List()) {
    bool disabled = lf["disabled"].Bool().value_or(false);
    bool has_provider = !lf["providers"].List().empty();
    if (disabled) {
      t.access_logging = false;
    } else if (has_provider || !t.access_logging.has_value()) {
      t.access_logging = true;
    }
  }
  return t;
}

// The `istio` ConfigMap: data.mesh is MeshConfig YAML in a string.
void DecodeMeshConfigMap(const Field& doc, MeshConfig& mesh, FieldErrors& errors) {
  Field data = doc["data"]["mesh"];
  auto text = data.Str();
  if (!text)
    return;
  YAML::Node node;
  try {
    node = YAML::Load(*text);
  } catch (const YAML::Exception& e) {
    data.Error("not valid YAML: " + e.msg);
    return;
  }
  Field m(node, data.path(), &errors);
  if (auto mode = m["outboundTrafficPolicy"]["mode"].Str()) {
    if (*mode == "ALLOW_ANY") {
      mesh.outbound = MeshConfig::OutboundPolicy::kAllowAny;
    } else if (*mode == "REGISTRY_ONLY") {
      mesh.outbound = MeshConfig::OutboundPolicy::kRegistryOnly;
    } else {
      m["outboundTrafficPolicy"]["mode"].Error("must be ALLOW_ANY or REGISTRY_ONLY");
    }
  }
  if (auto v = m["rootNamespace"].Str())
    mesh.root_namespace = *v;
  if (auto v = m["accessLogFile"].Str())
    mesh.access_log_file = *v;
  if (auto v = m["trustDomain"].Str())
    mesh.domain = *v;
  if (auto v = m["connectTimeout"].DurationMs())
    mesh.connect_timeout_ms = *v;
}

void DecodeDocument(const YAML::Node& root, const Origin& origin, LoadResult& out) {
  FieldErrors errors;
  Field doc(root, "", &errors);
  const std::string where = origin.file + ": document " + std::to_string(origin.document);
  if (!root.IsMap()) {
    out.errors.push_back(where + ": must be a mapping with apiVersion and kind");
    return;
  }
  auto kind = doc["kind"].Str();
  auto api = doc["apiVersion"].Str();
  if (errors.failed()) {
    out.errors.push_back(where + ": " + *errors.first);
    return;
  }
  if (!kind || kind->empty()) {
    out.errors.push_back(where + ": kind: required");
    return;
  }
  if (!api || api->empty()) {
    out.errors.push_back(where + " (" + *kind + "): apiVersion: required");
    return;
  }
  const bool istio = OneOf(*api, kIstioNetworkingVersions);
  // Before any field is read: a misspelled field explains the errors that would follow
  // (a VirtualService whose `htttp:` leaves it without routes).
  if (istio)
    detail::CheckKnownFields(doc, *kind);
  // Service and Namespace names become DNS labels (name.ns.svc.cluster.local).
  Meta meta = DecodeMeta(doc, origin, *kind == "Service" || *kind == "Namespace");
  const std::string described = origin.Describe(*kind, meta.ns, meta.name);
  auto report = [&] { out.errors.push_back(described + ": " + *errors.first); };
  if (errors.failed())
    return report();

  auto wrong_version = [&](const std::string& versions) {
    out.errors.push_back(described + ": apiVersion: " + *api + " is not a version of " + *kind +
                         " that Sluice reads (" + versions + ")");
  };
  Config& c = out.config;
  const bool core = *api == "v1";
  const std::string istio_versions = "networking.istio.io/v1alpha3, v1beta1, v1";

  if (*kind == "Namespace" && core) {
    c.namespaces.push_back(Namespace{meta});
    c.namespaces.back().meta.ns = "";
  } else if (*kind == "Service" && core) {
    auto s = DecodeService(doc, meta);
    if (errors.failed())
      return report();
    c.services.push_back(std::move(s));
  } else if (*kind == "Pod" && core) {
    auto w = DecodePod(doc, meta);
    if (errors.failed())
      return report();
    c.workloads.push_back(std::move(w));
  } else if (*kind == "Deployment" && *api == "apps/v1") {
    auto w = DecodeDeployment(doc, meta);
    if (errors.failed())
      return report();
    c.workloads.push_back(std::move(w));
  } else if (*kind == "Endpoints" && core) {
    auto g = DecodeEndpoints(doc, meta);
    if (errors.failed())
      return report();
    c.endpoint_groups.push_back(std::move(g));
  } else if (*kind == "EndpointSlice" && *api == "discovery.k8s.io/v1") {
    auto g = DecodeEndpointSlice(doc, meta);
    if (errors.failed())
      return report();
    c.endpoint_groups.push_back(std::move(g));
  } else if (*kind == "ConfigMap" && core) {
    if (meta.name != "istio") {
      out.warnings.push_back(described +
                             ": only the ConfigMap named \"istio\" (mesh config) is "
                             "read; skipped");
      return;
    }
    MeshConfig mesh = c.mesh;
    DecodeMeshConfigMap(doc, mesh, errors);
    if (errors.failed())
      return report();
    c.mesh = mesh;
    c.mesh_set = true;
  } else if (*kind == "Gateway" || *kind == "VirtualService" || *kind == "DestinationRule" ||
             *kind == "ServiceEntry" || *kind == "Sidecar") {
    if (!api->starts_with("networking.istio.io/")) {
      // gateway.networking.k8s.io Gateway and friends are a different API.
      out.warnings.push_back(described + ": kind " + *kind + " of " + *api +
                             " is not read by Sluice; skipped");
      return;
    }
    if (!istio)
      return wrong_version(istio_versions);
    if (*kind == "Gateway") {
      auto g = DecodeGateway(doc, meta);
      if (errors.failed())
        return report();
      c.gateways.push_back(std::move(g));
    } else if (*kind == "VirtualService") {
      auto v = DecodeVirtualService(doc, meta);
      if (errors.failed())
        return report();
      c.virtual_services.push_back(std::move(v));
    } else if (*kind == "DestinationRule") {
      auto d = DecodeDestinationRule(doc, meta);
      if (errors.failed())
        return report();
      c.destination_rules.push_back(std::move(d));
    } else if (*kind == "ServiceEntry") {
      auto s = DecodeServiceEntry(doc, meta);
      if (errors.failed())
        return report();
      c.service_entries.push_back(std::move(s));
    } else {
      auto sc = DecodeSidecar(doc, meta);
      if (errors.failed())
        return report();
      c.sidecars.push_back(std::move(sc));
    }
  } else if (*kind == "Telemetry") {
    if (!OneOf(*api, kTelemetryVersions))
      return wrong_version("telemetry.istio.io/v1alpha1, v1");
    auto t = DecodeTelemetry(doc, meta);
    if (errors.failed())
      return report();
    c.telemetries.push_back(std::move(t));
  } else {
    out.warnings.push_back(described + ": kind " + *kind + " (" + *api +
                           ") is not used by Sluice; skipped");
  }
}

bool IsConfigFile(const fs::path& p) {
  auto ext = p.extension().string();
  return ext == ".yaml" || ext == ".yml" || ext == ".json";
}

}  // namespace

std::string Origin::Describe(const std::string& kind, const std::string& ns,
                             const std::string& name) const {
  std::string s = file + ": document " + std::to_string(document) + " (" + kind + " ";
  const std::string shown = name.empty() ? "<unnamed>" : name;
  if (kind == "Namespace")
    return s + shown + ")";
  return s + ns + "/" + shown + ")";
}


void LoadText(std::string_view text, const std::string& file, LoadResult& out) {
  auto docs = SplitDocuments(text);
  int index = 0;
  for (const auto& raw : docs) {
    if (IsBlank(raw.text))
      continue;
    ++index;
    Origin origin{file, index};
    YAML::Node root;
    try {
      root = YAML::Load(raw.text);
    } catch (const YAML::Exception& e) {
      std::string msg = e.msg;
      std::string where = file + ": document " + std::to_string(index);
      if (!e.mark.is_null()) {
        where += ": line " + std::to_string(raw.first_line + e.mark.line) + ", column " +
                 std::to_string(e.mark.column + 1);
      }
      out.errors.push_back(where + ": not valid YAML: " + msg);
      continue;
    }
    DecodeDocument(root, origin, out);
  }
}

std::vector<std::string> ListConfigFiles(const std::vector<std::string>& paths,
                                         std::vector<std::string>* errors) {
  std::vector<std::string> files;
  for (const auto& p : paths) {
    std::error_code ec;
    auto status = fs::status(p, ec);
    if (ec || !fs::exists(status)) {
      if (errors)
        errors->push_back(p + ": no such file or directory");
      continue;
    }
    if (fs::is_directory(status)) {
      std::vector<std::string> found;
      for (auto it = fs::recursive_directory_iterator(
               p, fs::directory_options::follow_directory_symlink, ec);
           !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
        // Skip hidden files and dirs (editor swap files, Kubernetes' ..data symlinks).
        if (it->path().filename().string().starts_with(".")) {
          if (it->is_directory())
            it.disable_recursion_pending();
          continue;
        }
        if (it->is_regular_file() && IsConfigFile(it->path()))
          found.push_back(it->path().string());
      }
      if (ec && errors)
        errors->push_back(p + ": " + ec.message());
      std::sort(found.begin(), found.end());
      files.insert(files.end(), found.begin(), found.end());
    } else {
      files.push_back(p);
    }
  }
  return files;
}

LoadResult LoadPaths(const std::vector<std::string>& paths) {
  LoadResult out;
  for (const auto& file : ListConfigFiles(paths, &out.errors)) {
    std::ifstream in(file, std::ios::binary);
    if (!in) {
      out.errors.push_back(file + ": cannot read: " + std::strerror(errno));
      continue;
    }
    std::stringstream buf;
    buf << in.rdbuf();
    LoadText(buf.str(), file, out);
  }
  Validate(out);
  return out;
}

// ---------------------------------------------------------------- cross-resource checks

namespace {

template <class T>
void DropDuplicates(std::vector<T>& items, const char* kind, LoadResult& out) {
  std::map<std::string, Origin> seen;
  std::vector<T> kept;
  for (auto& item : items) {
    auto [it, inserted] = seen.emplace(item.meta.Key(), item.meta.origin);
    if (!inserted) {
      out.errors.push_back(item.meta.origin.Describe(kind, item.meta.ns, item.meta.name) +
                           ": metadata.name: duplicate; " + kind + " " + item.meta.Key() +
                           " is already defined in " + it->second.file + " document " +
                           std::to_string(it->second.document));
      continue;
    }
    kept.push_back(std::move(item));
  }
  items = std::move(kept);
}

// The FQDN a host written in a resource of namespace `ns` refers to, as Istio resolves
// short names ("reviews" -> "reviews.<ns>.svc.cluster.local").
std::string Qualify(const std::string& host, const std::string& ns, const std::string& domain) {
  if (host.find('.') == std::string::npos && host != "*")
    return host + "." + ns + ".svc." + domain;
  return host;
}

}  // namespace

void Validate(LoadResult& out) {
  Config& c = out.config;
  DropDuplicates(c.namespaces, "Namespace", out);
  DropDuplicates(c.services, "Service", out);
  DropDuplicates(c.gateways, "Gateway", out);
  DropDuplicates(c.virtual_services, "VirtualService", out);
  DropDuplicates(c.destination_rules, "DestinationRule", out);
  DropDuplicates(c.service_entries, "ServiceEntry", out);
  DropDuplicates(c.telemetries, "Telemetry", out);
  DropDuplicates(c.sidecars, "Sidecar", out);

  // Subsets a VirtualService routes to must be defined by a DestinationRule for the host;
  // Istio would accept it and answer 503 "NR" at run time, Sluice says so up front.
  std::map<std::string, std::set<std::string>> subsets;  // host FQDN -> names
  for (const auto& dr : c.destination_rules) {
    auto& names = subsets[Qualify(dr.host, dr.meta.ns, c.mesh.domain)];
    for (const auto& s : dr.subsets)
      names.insert(s.name);
  }
  std::vector<VirtualService> kept;
  for (auto& vs : c.virtual_services) {
    std::optional<std::string> problem;
    auto check = [&](const Destination& d, const std::string& path) {
      if (problem || d.subset.empty())
        return;
      auto fqdn = Qualify(d.host, vs.meta.ns, c.mesh.domain);
      auto it = subsets.find(fqdn);
      if (it == subsets.end() || !it->second.count(d.subset)) {
        problem = path + ".subset: subset \"" + d.subset + "\" of host " + fqdn +
                  " is not defined by any DestinationRule";
      }
    };
    for (std::size_t i = 0; i < vs.http.size(); ++i) {
      const auto& r = vs.http[i];
      std::string base = "spec.http[" + std::to_string(i) + "]";
      for (std::size_t j = 0; j < r.route.size(); ++j) {
        check(r.route[j].destination, base + ".route[" + std::to_string(j) + "].destination");
      }
      if (r.mirror)
        check(*r.mirror, base + ".mirror");
    }
    for (auto* l4 : {&vs.tls, &vs.tcp}) {
      const char* name = l4 == &vs.tls ? "tls" : "tcp";
      for (std::size_t i = 0; i < l4->size(); ++i) {
        for (std::size_t j = 0; j < (*l4)[i].route.size(); ++j) {
          check((*l4)[i].route[j].destination, std::string("spec.") + name + "[" +
                                                   std::to_string(i) + "].route[" +
                                                   std::to_string(j) + "].destination");
        }
      }
    }
    if (problem) {
      out.errors.push_back(vs.meta.origin.Describe("VirtualService", vs.meta.ns, vs.meta.name) +
                           ": " + *problem);
      continue;
    }
    kept.push_back(std::move(vs));
  }
  c.virtual_services = std::move(kept);
}

}  // namespace sluice::istio
