// Decoder of Sidecar: the workload selector, egress hosts ("namespace/host") and the
// outbound traffic policy that scope a proxy's view, and the ingress listeners that give
// it inbound chains (translator/inbound.cc).
//
// Ingress follows istio's validation (pkg/config/validation: ValidateSidecar) for what is
// malformed, and refuses by name, with the reason, what Sluice cannot serve: a listener
// bound to an address, captureMode NONE, TLS termination, a defaultEndpoint on the
// instance IP or a unix socket, connection limits. Such a Sidecar is dropped whole, so a
// workload is never served half of what its Sidecar asks for.
#include <set>

#include "loader/decode.h"

namespace sluice::istio::detail {

namespace {

constexpr char kNotSupported[] = "not supported by Sluice: ";

// Istio's protocol names (pkg/config/protocol Parse), as Istio spells them; "" if the name
// is none of them.
std::string IstioProtocol(const std::string& written) {
  static const char* const kNames[] = {"HTTP", "HTTP2", "GRPC",  "GRPC-Web", "HTTPS", "TLS",
                                       "TCP",  "Mongo", "Redis", "MySQL",    "UDP",   "HTTP_PROXY"};
  for (const char* n : kNames) {
    if (Upper(n) == Upper(written))
      return n;
  }
  return {};
}

// Go's net.SplitHostPort, which istio's validation applies to defaultEndpoint: "host:port"
// or "[host]:port". Empty `problem` when it splits.
struct HostPort {
  std::string host, port, problem;
};

HostPort SplitHostPort(const std::string& s) {
  HostPort out;
  std::size_t colon = s.rfind(':');
  if (colon == std::string::npos) {
    out.problem = "missing port in address";
    return out;
  }
  if (!s.empty() && s[0] == '[') {
    std::size_t end = s.find(']');
    if (end == std::string::npos) {
      out.problem = "missing ']' in address";
    } else if (end + 1 == s.size()) {
      out.problem = "missing port in address";
    } else if (end + 1 != colon) {
      out.problem = s[end + 1] == ':' ? "too many colons in address" : "missing port in address";
    } else {
      out.host = s.substr(1, end - 1);
    }
  } else {
    out.host = s.substr(0, colon);
    if (out.host.find(':') != std::string::npos)
      out.problem = "too many colons in address";
    else if (out.host.find_first_of("[]") != std::string::npos)
      out.problem = "unexpected '[' or ']' in address";
  }
  out.port = s.substr(colon + 1);
  if (out.port.find_first_of("[]") != std::string::npos && out.problem.empty())
    out.problem = "unexpected '[' or ']' in address";
  return out;
}

// connectionPool / inboundConnectionPool. Sluice's translator applies one connection
// pool setting anywhere, tcp.connectTimeout (DestinationRule too); the connection limits
// istiod turns into circuit breakers are not translated, so they are refused by name
// rather than silently left at Istio's defaults.
std::optional<int64_t> DecodeInboundPool(const Field& f) {
  if (!f.present())
    return std::nullopt;
  if (!f.is_map()) {
    f.Error("must be a mapping");
    return std::nullopt;
  }
  if (!f["tcp"].present() && !f["http"].present()) {
    f.Error("connection pool must have at least one field (tcp or http)");
    return std::nullopt;
  }
  std::optional<int64_t> timeout;
  for (auto& [key, field] : f["tcp"].Entries()) {
    if (key == "connectTimeout") {
      timeout = field.DurationMs();
      if (timeout && *timeout < 1)
        field.Error("must be at least 1ms");
    } else {
      field.Error(std::string(kNotSupported) +
                  "connection limits and timeouts other than tcp.connectTimeout are not "
                  "translated to the inbound cluster");
    }
  }
  for (auto& [key, field] : f["http"].Entries()) {
    field.Error(std::string(kNotSupported) +
                "HTTP connection pool settings are not translated to the inbound cluster "
                "(only tcp.connectTimeout is)");
  }
  return timeout;
}

SidecarIngress DecodeIngress(const Field& f, std::set<uint32_t>& ports) {
  SidecarIngress in;
  Field port = f["port"];
  if (!port.present()) {
    port.Error("required");
    return in;
  }
  if (!port["number"].present())
    port["number"].Error("required");
  in.port = port["number"].Port().value_or(0);
  if (in.port && !ports.insert(in.port).second) {
    port["number"].Error("duplicate port " + std::to_string(in.port) +
                         " (ingress listeners' ports must be unique)");
  }
  if (port["targetPort"].present())
    port["targetPort"].Error("has no impact on Sidecars (Istio refuses it)");
  in.port_name = port["name"].StrOr("");
  if (!in.port_name.empty() && !IsDnsName(in.port_name, false)) {
    port["name"].Error("invalid port name \"" + in.port_name +
                       "\": must be a DNS-1123 label (lower-case letters, digits, '-')");
  }
  if (auto p = port["protocol"].Str(); p && !p->empty()) {
    in.protocol = IstioProtocol(*p);
    if (in.protocol.empty()) {
      port["protocol"].Error("unsupported protocol \"" + *p +
                             "\" (HTTP, HTTP2, GRPC, GRPC-Web, HTTPS, TLS, TCP, Mongo, Redis, "
                             "MySQL, or unset to detect HTTP)");
    } else if (in.protocol == "UDP") {
      port["protocol"].Error(std::string(kNotSupported) + "UDP ingress listeners");
    } else if (in.protocol == "HTTP_PROXY") {
      port["protocol"].Error(std::string(kNotSupported) +
                             "HTTP_PROXY is a protocol of egress listeners");
    }
  }

  if (auto bind = f["bind"].Str(); bind && !bind->empty()) {
    if (!IsIp(*bind)) {
      f["bind"].Error("must be an IP address (got \"" + *bind + "\")");
    } else {
      f["bind"].Error(std::string(kNotSupported) +
                      "bind; Sluice serves an ingress port on virtualInbound for every "
                      "address of the pod (leave bind unset)");
    }
  }
  if (auto mode = f["captureMode"].Str()) {
    if (*mode == "NONE") {
      f["captureMode"].Error(std::string(kNotSupported) +
                             "NONE (a listener bound to the port in the pod); Sluice's inbound "
                             "side takes redirected connections: use DEFAULT or IPTABLES");
    } else if (*mode != "DEFAULT" && *mode != "IPTABLES") {
      f["captureMode"].Error("must be DEFAULT, IPTABLES or NONE (got \"" + *mode + "\")");
    }
  }

  const std::string ep = f["defaultEndpoint"].StrOr("");
  Field epf = f["defaultEndpoint"];
  if (ep.starts_with("unix://")) {
    std::string path = ep.substr(7);
    if (path.empty()) {
      epf.Error("unix address must not be empty");
    } else if (path[0] != '@' && (path[0] != '/' || path.back() == '/')) {
      epf.Error(path + " is not an absolute path to a file");
    } else {
      epf.Error(std::string(kNotSupported) + "a unix domain socket endpoint (\"" + ep +
                "\"); Sluice's proxy delivers to 127.0.0.1:PORT, [::1]:PORT or the pod's own "
                "address (defaultEndpoint unset)");
    }
  } else if (!ep.empty()) {
    HostPort hp = SplitHostPort(ep);
    if (!hp.problem.empty()) {
      epf.Error("address " + ep + ": " + hp.problem);
    } else if (hp.host != "" && hp.host != "127.0.0.1" && hp.host != "0.0.0.0" &&
               hp.host != "::1" && hp.host != "::") {
      epf.Error(
          "must be of form 127.0.0.1:<port>, 0.0.0.0:<port>, [::1]:<port>, [::]:<port>, "
          "unix://filepath or unset (got \"" +
          ep + "\")");
    } else {
      int64_t n = -1;
      if (!hp.port.empty() && hp.port.size() <= 6 &&
          hp.port.find_first_not_of("0123456789") == std::string::npos) {
        n = std::stoll(hp.port);
      }
      if (n < 0) {
        epf.Error("port (" + hp.port + ") is not a number");
      } else if (n < 1 || n > 65535) {
        epf.Error("port number " + hp.port + " must be in the range 1..65535");
      } else if (hp.host == "0.0.0.0" || hp.host == "::") {
        epf.Error(std::string(kNotSupported) + "\"" + ep +
                  "\" (istiod: the pod's instance IP); Sluice does not resolve a pod's "
                  "address here: use 127.0.0.1:PORT or [::1]:PORT, or leave defaultEndpoint "
                  "unset to deliver to the pod's own address on the same port");
      } else if (hp.host.empty()) {
        epf.Error(std::string(kNotSupported) + "\"" + ep +
                  "\": istiod ignores its port and delivers to the original destination; "
                  "leave defaultEndpoint unset for that, or write 127.0.0.1:PORT");
      } else {
        in.endpoint_address = hp.host;
        in.endpoint_port = static_cast<uint32_t>(n);
      }
    }
  }

  if (f["tls"].present()) {
    f["tls"].Error(std::string(kNotSupported) +
                   "TLS termination on sidecar ingress (issue 18); the Sidecar is refused "
                   "rather than served without it");
  }
  in.connect_timeout_ms = DecodeInboundPool(f["connectionPool"]);
  return in;
}

}  // namespace

Sidecar DecodeSidecar(const Field& doc, const Meta& meta) {
  Sidecar sc;
  sc.meta = meta;
  Field spec = doc["spec"];
  sc.workload_selector = spec["workloadSelector"]["labels"].StrMap();
  for (auto& ef : spec["egress"].List()) {
    // An egress listener on one port, bound to an address or with its own capture mode
    // is a listener Sluice does not build: refused, not widened to every port.
    if (ef["port"].present())
      ef["port"].Error(std::string(kNotSupported) +
                       "an egress listener on one port; Sluice scopes hosts for every port "
                       "(leave port unset)");
    else if (auto bind = ef["bind"].Str(); bind && !bind->empty())
      ef["bind"].Error(std::string(kNotSupported) + "bind on an egress listener");
    else if (auto mode = ef["captureMode"].Str(); mode && *mode != "DEFAULT" && *mode != "IPTABLES")
      ef["captureMode"].Error(std::string(kNotSupported) + "captureMode " + *mode +
                              " on an egress listener");
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
  // istiod (initSidecarScopeInternalIndexes): no egress listener is one for "*/*"; an
  // ingress-only Sidecar must not hide every service from its workloads.
  if (spec["egress"].List().empty())
    sc.egress_hosts.push_back("*/*");
  if (auto mode = spec["outboundTrafficPolicy"]["mode"].Str()) {
    if (*mode == "REGISTRY_ONLY") {
      sc.registry_only = true;
    } else if (*mode == "ALLOW_ANY") {
      sc.registry_only = false;
    } else {
      spec["outboundTrafficPolicy"]["mode"].Error("must be ALLOW_ANY or REGISTRY_ONLY");
    }
  }
  std::set<uint32_t> ports;
  // istiod's InboundConnectionPoolForPort: a listener's own connectionPool, else this one.
  auto pool_timeout = DecodeInboundPool(spec["inboundConnectionPool"]);
  for (auto& inf : spec["ingress"].List()) {
    sc.ingress.push_back(DecodeIngress(inf, ports));
    if (!inf["connectionPool"].present())
      sc.ingress.back().connect_timeout_ms = pool_timeout;
  }
  return sc;
}

}  // namespace sluice::istio::detail
