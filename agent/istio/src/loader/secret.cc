// Decoder of Secret (v1), and what istiod reads from one for a gateway's credentialName
// (pilot/pkg/credentials/kube/secrets.go: ExtractCertInfo, ExtractRoot).
#include <fmt/format.h>

#include "loader/decode.h"
#include "sluice/common/base64.h"

namespace sluice::istio {

namespace {

bool HasValue(const Secret& s, std::initializer_list<const char*> keys) {
  for (const char* k : keys) {
    auto it = s.data.find(k);
    if (it == s.data.end() || it->second.empty())
      return false;
  }
  return true;
}

bool HasKeys(const Secret& s, std::initializer_list<const char*> keys) {
  for (const char* k : keys)
    if (!s.data.contains(k))
      return false;
  return true;
}

// "a, b, c, and 2 more...", as istiod lists what a Secret has instead.
std::string KeysFound(const Secret& s) {
  std::string out;
  std::size_t n = 0;
  for (const auto& [k, _] : s.data) {
    if (n++ < 3)
      out += (out.empty() ? "" : ", ") + k;
  }
  if (n > 3)
    out += fmt::format(", and {} more...", n - 3);
  return out;
}

std::string Describe(const Secret& s) {
  return "Secret " + s.meta.ns + "/" + s.meta.name;
}

}  // namespace

Result<CertInfo> ExtractCertInfo(const Secret& s) {
  if (HasValue(s, {"cert", "key"}))
    return CertInfo{s.data.at("cert"), s.data.at("key")};
  if (HasValue(s, {"tls.crt", "tls.key"}))
    return CertInfo{s.data.at("tls.crt"), s.data.at("tls.key")};
  if (HasKeys(s, {"cert", "key"}))
    return Fail(Describe(s) + ": found keys \"cert\" and \"key\", but they were empty");
  if (HasKeys(s, {"tls.crt", "tls.key"}))
    return Fail(Describe(s) + ": found keys \"tls.crt\" and \"tls.key\", but they were empty");
  return Fail(Describe(s) +
              ": found secret, but didn't have expected keys (cert and key) or (tls.crt and "
              "tls.key); found: " +
              KeysFound(s));
}

Result<std::string> ExtractRoot(const Secret& s) {
  if (HasValue(s, {"cacert"}))
    return s.data.at("cacert");
  if (HasValue(s, {"ca.crt"}))
    return s.data.at("ca.crt");
  if (HasKeys(s, {"cacert"}))
    return Fail(Describe(s) + ": found key \"cacert\", but it was empty");
  if (HasKeys(s, {"ca.crt"}))
    return Fail(Describe(s) + ": found key \"ca.crt\", but it was empty");
  return Fail(
      Describe(s) +
      ": found secret, but didn't have expected keys cacert or ca.crt; found: " + KeysFound(s));
}

namespace detail {

Secret DecodeSecret(const Field& doc, const Meta& meta) {
  Secret s;
  s.meta = meta;
  s.type = doc["type"].StrOr("Opaque");
  for (auto& [key, value] : doc["data"].Entries()) {
    auto text = value.Str();
    if (!text)
      continue;  // Str() reported the wrong type
    auto bytes = DecodeBase64(*text, "value");
    if (!bytes) {
      value.Error(bytes.error().message);
      continue;
    }
    s.data[key] = std::move(*bytes);
  }
  // The API server merges stringData over data (write-only, plain text).
  for (auto& [key, value] : doc["stringData"].Entries()) {
    if (auto text = value.Str())
      s.data[key] = *text;
  }
  return s;
}

}  // namespace detail

}  // namespace sluice::istio
