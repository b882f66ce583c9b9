// Client certificate subjectAltName checks for TLS termination (MUTUAL with
// subjectAltNames): Envoy's CertificateValidationContext.match_typed_subject_alt_names and
// the deprecated match_subject_alt_names istiod still writes, after the chain verified.
//
// Envoy's rules (default_validator.cc matchSubjectAltName, san_matcher.cc): a certificate
// passes when ANY of its SANs matches ANY matcher. A matcher tests SANs of its type only
// (an untyped, deprecated matcher is compiled into one per type: DNS, URI, EMAIL and
// IP_ADDRESS). A SAN is compared as Envoy renders it: DNS, URI and email names as their
// bytes, IP addresses as text ("10.0.0.1", "2001:db8::1"). An exact matcher on a DNS SAN
// compares by DNS rules (DnsNameMatch): case-insensitive, and a wildcard SAN in the
// certificate ("*.example.com") covers one label of the configured name.
//
// The string test itself is a predicate (compile.cc wraps the proxy's compiled
// StringMatcher, so exact/prefix/suffix/contains/safe_regex/ignore_case are one
// implementation), which keeps this library free of the route configuration.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

typedef struct x509_st X509;

namespace sluice::proxy::tls {

enum class SanType { kDns, kUri, kEmail, kIpAddress };
const char* SanTypeName(SanType t);  // Envoy's enum names: "DNS", "URI", "EMAIL", "IP_ADDRESS"

// One subjectAltName of a certificate, rendered as Envoy renders it.
struct San {
  SanType type = SanType::kDns;
  std::string value;
  bool operator==(const San&) const = default;
};

struct SanMatcher {
  SanType type = SanType::kUri;
  std::function<bool(std::string_view)> matches;
  // Set for an exact matcher: DNS SANs are compared with DnsNameMatch(*exact, san)
  // instead of `matches` (Envoy ignores ignore_case there: DNS names compare caselessly).
  std::optional<std::string> exact;
  std::string text;  // for errors and logs: "URI exact spiffe://..."
};

// Whether `name` (a configured DNS name) is covered by `pattern` (a certificate's DNS SAN,
// perhaps a wildcard): equal ignoring ASCII case; or a pattern with a '*' in its first label
// only (not an "xn--" A-label), at least two labels on both sides, the rest equal, and the
// first label of `name` matching the wildcard label ("*", "foo*", "*bar", "f*r"; the '*'
// standing for zero or more characters of that one label).
bool DnsNameMatch(std::string_view name, std::string_view pattern);

// Whether one of `sans` matches one of `matchers` (false when either is empty).
bool MatchSans(const std::vector<SanMatcher>& matchers, const std::vector<San>& sans);

// The DNS, URI, email and IP subjectAltNames of `cert`, in certificate order (other kinds,
// and IP entries of a length other than 4 or 16, are left out).
std::vector<San> CertificateSans(X509* cert);

}  // namespace sluice::proxy::tls
