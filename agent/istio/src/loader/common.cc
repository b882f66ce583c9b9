// The decoders' shared checks: host names (with Istio's wildcard rules), IP addresses
// and CIDR ranges, Kubernetes DNS names, and the metadata every kind carries.
#include <arpa/inet.h>

#include <algorithm>
#include <cctype>
#include <set>

#include "loader/decode.h"

namespace sluice::istio::detail {

std::string Upper(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::toupper(c); });
  return s;
}

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

}  // namespace sluice::istio::detail
