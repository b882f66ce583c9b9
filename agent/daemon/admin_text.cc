// The admin endpoint's formats: Prometheus families, config dumps, query strings
// (admin_text.h).
#include "admin_text.h"

#include <google/protobuf/util/json_util.h>

#include "sluice/envoy/descriptor_pool.h"
#include "sluice/proxy/proxy.h"

namespace sluice::agent {

namespace {

// Every linked type prints as Envoy would; an Any of a type Sluice does not link prints
// as {"@type", "value": base64} rather than failing the resource (descriptor_pool.h),
// so /config_dump is always valid JSON.
template <class M>
nlohmann::json ToJson(const M& msg) {
  google::protobuf::util::JsonPrintOptions o;
  return nlohmann::json::parse(descriptors::MessageToJson(msg, o), nullptr, false);
}

// A Prometheus label value: backslash, double quote and newline escaped (text format).
std::string LabelValue(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\' || c == '"')
      out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

// Envoy's config dump redacts what is marked sensitive (MessageUtil::redact): a secret's
// private key and password print as "[redacted]", certificates and CAs as they are.
envoy::extensions::transport_sockets::tls::v3::Secret Redacted(
    envoy::extensions::transport_sockets::tls::v3::Secret s) {
  auto redact = [](envoy::config::core::v3::DataSource* d) {
    if (d->has_inline_string())
      d->set_inline_string("[redacted]");
    else if (d->specifier_case() != envoy::config::core::v3::DataSource::SPECIFIER_NOT_SET)
      d->set_inline_bytes("[redacted]");
  };
  if (s.has_tls_certificate()) {
    redact(s.mutable_tls_certificate()->mutable_private_key());
    if (s.tls_certificate().has_password())
      redact(s.mutable_tls_certificate()->mutable_password());
  }
  if (s.has_session_ticket_keys()) {
    for (auto& k : *s.mutable_session_ticket_keys()->mutable_keys())
      redact(&k);
  }
  if (s.has_generic_secret())
    redact(s.mutable_generic_secret()->mutable_secret());
  return s;
}

}  // namespace

std::string ProxyMetrics(const std::vector<PodProxyStatus>& pods) {
  std::string out;
  for (const auto& st : proxy::NamedStats(proxy::ProxyStats{})) {
    std::vector<std::pair<std::string, uint64_t>> samples;
    for (const auto& p : pods) {
      uint64_t v = 0;
      for (const auto& [n, value] : p.stats)
        if (n == st.name)
          v = value;
      samples.push_back(
          {"{namespace=\"" + p.key.pod_namespace + "\",pod=\"" + p.key.name + "\"}", v});
    }
    out += Prometheus("sluice_proxy_" + std::string(st.name), std::string(st.help),
                      st.gauge ? "gauge" : "counter", samples);
  }
  // RBAC decisions per policy (AuthorizationPolicy rules: "ns[NS]-policy[NAME]-rule[i]").
  std::vector<std::pair<std::string, uint64_t>> samples;
  for (const auto& p : pods) {
    for (const auto& c : p.rbac_policies) {
      const std::pair<std::string_view, uint64_t> decisions[] = {
          {"allowed", c.allowed},
          {"denied", c.denied},
          {"shadow_allowed", c.shadow_allowed},
          {"shadow_denied", c.shadow_denied}};
      for (const auto& [decision, v] : decisions) {
        if (v == 0)
          continue;
        samples.push_back({"{namespace=\"" + p.key.pod_namespace + "\",pod=\"" + p.key.name +
                               "\",policy=\"" + LabelValue(c.policy) + "\",decision=\"" +
                               std::string(decision) + "\"}",
                           v});
      }
    }
  }
  out += Prometheus("sluice_proxy_rbac_policy_total",
                    "RBAC decisions per policy (enforced and shadow) by each pod's proxy",
                    "counter", samples);
  return out;
}

nlohmann::json DumpResources(const config::Snapshot& s) {
  nlohmann::json j;
  j["generation"] = s.generation;
  j["versions"] = s.versions;
  j["clusters"] = nlohmann::json::array();
  j["endpoints"] = nlohmann::json::array();
  j["listeners"] = nlohmann::json::array();
  j["routes"] = nlohmann::json::array();
  j["secrets"] = nlohmann::json::array();
  for (const auto& [n, c] : s.clusters)
    j["clusters"].push_back(ToJson(*c));
  for (const auto& [n, e] : s.endpoints)
    j["endpoints"].push_back(ToJson(*e));
  for (const auto& [n, l] : s.listeners)
    j["listeners"].push_back(ToJson(*l));
  for (const auto& [n, r] : s.routes)
    j["routes"].push_back(ToJson(*r));
  for (const auto& [n, sec] : s.secrets)
    j["secrets"].push_back(ToJson(Redacted(*sec)));
  return j;
}

std::string QueryParam(const std::string& query, const std::string& key) {
  size_t pos = 0;
  while (pos <= query.size()) {
    size_t amp = query.find('&', pos);
    std::string part = query.substr(pos, amp == std::string::npos ? amp : amp - pos);
    if (part.starts_with(key + "="))
      return part.substr(key.size() + 1);
    if (amp == std::string::npos)
      break;
    pos = amp + 1;
  }
  return "";
}

}  // namespace sluice::agent
