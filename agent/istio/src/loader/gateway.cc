// Decoder of Gateway: its selector and servers (port, protocol, hosts, TLS mode).
#include <string_view>

#include "loader/decode.h"

namespace sluice::istio::detail {

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
      s.credential_name = tls["credentialName"].StrOr("");
      s.subject_alt_names = tls["subjectAltNames"].StrList();
      for (const char* f : {"serverCertificate", "privateKey", "caCertificates", "caCrl",
                            "credentialNames", "caCertCredentialName", "tlsCertificates",
                            "minProtocolVersion", "maxProtocolVersion", "cipherSuites",
                            "ecdhCurves"}) {
        if (tls[f].present())
          s.unsupported_tls_fields.push_back(f);
      }
      // Client certificate pins: istiod writes them for MUTUAL only; under another mode
      // they would pin nothing, so such a server is refused rather than served without.
      for (const char* f : {"verifyCertificateSpki", "verifyCertificateHash"}) {
        if (!tls[f].present())
          continue;
        if (s.tls_mode != "MUTUAL")
          s.unsupported_tls_fields.push_back(f);
        else if (std::string_view(f) == "verifyCertificateSpki")
          s.verify_certificate_spki = tls[f].StrList();
        else
          s.verify_certificate_hash = tls[f].StrList();
      }
    }
    if ((s.protocol == "TLS" || s.protocol == "HTTPS") && s.tls_mode.empty()) {
      sf["tls"].Error("required for protocol " + s.protocol);
    }
    gw.servers.push_back(std::move(s));
  }
  return gw;
}

}  // namespace sluice::istio::detail
