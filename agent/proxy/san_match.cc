// Client certificate subjectAltName matching (san_match.h).
#include "sluice/proxy/san_match.h"

#include <arpa/inet.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cctype>

namespace sluice::proxy::tls {

namespace {

std::string Lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

// One label against a wildcard label with a single '*' (zero or more characters).
bool LabelWildcardMatch(std::string_view label, std::string_view pattern) {
  if (pattern == "*")
    return true;
  if (std::count(pattern.begin(), pattern.end(), '*') != 1)
    return false;
  const std::size_t star = pattern.find('*');
  const std::string_view head = pattern.substr(0, star), tail = pattern.substr(star + 1);
  return pattern.size() <= label.size() + 1 && label.starts_with(head) && label.ends_with(tail);
}

std::string_view AsView(const ASN1_STRING* s) {
  return {reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
          static_cast<std::size_t>(ASN1_STRING_length(s))};
}

}  // namespace

const char* SanTypeName(SanType t) {
  switch (t) {
    case SanType::kDns:
      return "DNS";
    case SanType::kUri:
      return "URI";
    case SanType::kEmail:
      return "EMAIL";
    case SanType::kIpAddress:
      return "IP_ADDRESS";
  }
  return "unknown";
}

bool DnsNameMatch(std::string_view name, std::string_view pattern) {
  const std::string n = Lower(name), p = Lower(pattern);
  if (n == p)
    return true;
  const std::size_t pdot = p.find('.'), ndot = n.find('.');
  if (pdot == std::string::npos || ndot == std::string::npos)
    return false;
  const std::string_view pfirst(p.data(), pdot), prest(p.data() + pdot + 1, p.size() - pdot - 1);
  const std::string_view nfirst(n.data(), ndot), nrest(n.data() + ndot + 1, n.size() - ndot - 1);
  if (pfirst.find('*') == std::string_view::npos || prest.find('*') != std::string_view::npos ||
      pfirst.starts_with("xn--")) {
    return false;
  }
  return nrest == prest && LabelWildcardMatch(nfirst, pfirst);
}

bool MatchSans(const std::vector<SanMatcher>& matchers, const std::vector<San>& sans) {
  for (const SanMatcher& m : matchers) {
    for (const San& s : sans) {
      if (s.type != m.type)
        continue;
      const bool hit = s.type == SanType::kDns && m.exact ? DnsNameMatch(*m.exact, s.value)
                                                          : m.matches && m.matches(s.value);
      if (hit)
        return true;
    }
  }
  return false;
}

std::vector<San> CertificateSans(X509* cert) {
  std::vector<San> out;
  auto* names =
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  if (!names)
    return out;
  for (int i = 0; i < sk_GENERAL_NAME_num(names); i++) {
    const GENERAL_NAME* g = sk_GENERAL_NAME_value(names, i);
    switch (g->type) {
      case GEN_DNS:
        out.push_back({SanType::kDns, std::string(AsView(g->d.dNSName))});
        break;
      case GEN_URI:
        out.push_back({SanType::kUri, std::string(AsView(g->d.uniformResourceIdentifier))});
        break;
      case GEN_EMAIL:
        out.push_back({SanType::kEmail, std::string(AsView(g->d.rfc822Name))});
        break;
      case GEN_IPADD: {
        const int len = ASN1_STRING_length(g->d.iPAddress);
        if (len != 4 && len != 16)
          break;
        char buf[INET6_ADDRSTRLEN] = {};
        inet_ntop(len == 4 ? AF_INET : AF_INET6, ASN1_STRING_get0_data(g->d.iPAddress), buf,
                  sizeof(buf));
        out.push_back({SanType::kIpAddress, buf});
        break;
      }
      default:
        break;
    }
  }
  GENERAL_NAMES_free(names);
  return out;
}

}  // namespace sluice::proxy::tls
