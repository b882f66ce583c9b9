#include "sluice/proxy/config.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace sluice::proxy {
namespace {

struct StringViewHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view v) const { return std::hash<std::string_view>()(v); }
};

char Lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c;
}

bool EqualsMaybeCase(std::string_view a, std::string_view b, bool ignore_case) {
  return ignore_case ? http::EqualsIgnoreCase(a, b) : a == b;
}

bool StartsWithMaybeCase(std::string_view s, std::string_view p, bool ignore_case) {
  return s.size() >= p.size() && EqualsMaybeCase(s.substr(0, p.size()), p, ignore_case);
}

bool EndsWithMaybeCase(std::string_view s, std::string_view p, bool ignore_case) {
  return s.size() >= p.size() && EqualsMaybeCase(s.substr(s.size() - p.size()), p, ignore_case);
}

bool ContainsMaybeCase(std::string_view s, std::string_view p, bool ignore_case) {
  if (p.size() > s.size())
    return false;
  for (std::size_t i = 0; i + p.size() <= s.size(); ++i) {
    if (EqualsMaybeCase(s.substr(i, p.size()), p, ignore_case))
      return true;
  }
  return false;
}

// Value of a query parameter (raw, not percent-decoded); found tells presence.
std::string_view QueryParam(std::string_view query, std::string_view name, bool* found) {
  while (!query.empty()) {
    std::size_t amp = query.find('&');
    std::string_view kv = query.substr(0, amp);
    std::size_t eq = kv.find('=');
    std::string_view k = kv.substr(0, eq);
    if (k == name) {
      *found = true;
      return eq == std::string_view::npos ? std::string_view() : kv.substr(eq + 1);
    }
    if (amp == std::string_view::npos)
      break;
    query.remove_prefix(amp + 1);
  }
  *found = false;
  return {};
}

}  // namespace

std::string_view LbPolicyName(LbPolicy p) {
  switch (p) {
    case LbPolicy::kRoundRobin:
      return "ROUND_ROBIN";
    case LbPolicy::kLeastRequest:
      return "LEAST_REQUEST";
    case LbPolicy::kRandom:
      return "RANDOM";
    case LbPolicy::kRingHash:
      return "RING_HASH";
    case LbPolicy::kMaglev:
      return "MAGLEV";
  }
  return "UNKNOWN";
}

bool StringMatcher::Matches(std::string_view s) const {
  switch (kind) {
    case Kind::kExact:
      return EqualsMaybeCase(s, value, ignore_case);
    case Kind::kPrefix:
      return StartsWithMaybeCase(s, value, ignore_case);
    case Kind::kSuffix:
      return EndsWithMaybeCase(s, value, ignore_case);
    case Kind::kContains:
      return ContainsMaybeCase(s, value, ignore_case);
    case Kind::kRegex:
      return regex && RE2::FullMatch(re2::StringPiece(s.data(), s.size()), *regex);
  }
  return false;
}

bool CorsPolicy::OriginAllowed(std::string_view origin) const {
  for (const StringMatcher& m : allow_origins) {
    if (m.Matches("*") || m.Matches(origin))
      return true;
  }
  return false;
}

void RouteTable::BuildIndex() {
  exact.clear();
  suffixes.clear();
  prefixes.clear();
  catch_all.reset();
  for (std::size_t i = 0; i < vhosts.size(); ++i) {
    for (const std::string& d : vhosts[i].domains) {
      std::string l(d);
      for (char& c : l)
        c = Lower(c);
      if (l == "*") {
        if (!catch_all)
          catch_all = i;
      } else if (l.starts_with("*")) {
        suffixes.emplace_back(l.substr(1), i);
      } else if (l.ends_with("*")) {
        prefixes.emplace_back(l.substr(0, l.size() - 1), i);
      } else {
        exact.emplace(l, i);
      }
    }
  }
  auto longest_first = [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); };
  std::stable_sort(suffixes.begin(), suffixes.end(), longest_first);
  std::stable_sort(prefixes.begin(), prefixes.end(), longest_first);
}

const VirtualHost* RouteTable::FindVirtualHost(std::string_view host, bool strip_port) const {
  // Lower-case into a stack buffer: no allocation per request.
  char buf[256];
  if (host.size() > sizeof(buf))
    host = host.substr(0, sizeof(buf));
  for (std::size_t i = 0; i < host.size(); ++i)
    buf[i] = Lower(host[i]);
  std::string_view h(buf, host.size());
  if (strip_port) {
    // Strip ":port" (but not inside an IPv6 literal's brackets).
    std::size_t colon = h.rfind(':');
    std::size_t bracket = h.rfind(']');
    if (colon != std::string_view::npos && (bracket == std::string_view::npos || bracket < colon)) {
      h = h.substr(0, colon);
    }
  }
  if (auto it = exact.find(h); it != exact.end())
    return &vhosts[it->second];
  for (const auto& [suffix, idx] : suffixes) {
    // "*.foo.com" needs at least one character before ".foo.com"; "*-bar" likewise.
    if (h.size() > suffix.size() && h.ends_with(suffix))
      return &vhosts[idx];
  }
  for (const auto& [prefix, idx] : prefixes) {
    if (h.size() > prefix.size() && h.starts_with(prefix))
      return &vhosts[idx];
  }
  if (catch_all)
    return &vhosts[*catch_all];
  return nullptr;
}

bool UpgradeAllowed(std::string_view type, const HttpSettings& hcm, const RouteAction* route) {
  auto find = [&](const std::vector<UpgradeConfig>& v) -> const UpgradeConfig* {
    for (const UpgradeConfig& u : v) {
      if (http::EqualsIgnoreCase(u.type, type))
        return &u;
    }
    return nullptr;
  };
  if (const UpgradeConfig* r = route ? find(route->upgrades) : nullptr)
    return r->enabled;
  const UpgradeConfig* h = find(hcm.upgrades);
  return h && h->enabled;
}

bool RouteMatches(const Route& r, const http::RequestHead& req) {
  const bool ic = !r.case_sensitive;
  switch (r.path_kind) {
    case Route::PathKind::kPrefix:
      if (!StartsWithMaybeCase(req.path, r.path, ic))
        return false;
      break;
    case Route::PathKind::kPath:
      if (!EqualsMaybeCase(req.path, r.path, ic))
        return false;
      break;
    case Route::PathKind::kPathSeparatedPrefix:
      if (!StartsWithMaybeCase(req.path, r.path, ic))
        return false;
      if (req.path.size() > r.path.size() && req.path[r.path.size()] != '/')
        return false;
      break;
    case Route::PathKind::kRegex:
      if (!r.path_regex ||
          !RE2::FullMatch(re2::StringPiece(req.path.data(), req.path.size()), *r.path_regex)) {
        return false;
      }
      break;
  }
  for (const HeaderMatcher& hm : r.headers) {
    bool found = false;
    std::string_view v;
    if (hm.name == ":authority" || hm.name == "host") {
      v = req.host;
      found = !req.host.empty();
    } else if (hm.name == ":method") {
      v = req.method;
      found = true;
    } else if (hm.name == ":path") {
      v = req.target;
      found = true;
    } else {
      v = req.Get(hm.name, &found);
    }
    bool result;
    if (hm.kind == HeaderMatcher::Kind::kPresent) {
      result = found == hm.present;
    } else {
      result = found && hm.match.Matches(v);
    }
    if (hm.invert)
      result = !result;
    if (!result)
      return false;
  }
  for (const QueryParamMatcher& qm : r.query_params) {
    bool found = false;
    std::string_view v = QueryParam(req.query, qm.name, &found);
    if (!found)
      return false;
    if (!qm.present_only && !qm.match.Matches(v))
      return false;
  }
  return true;
}

const Route* MatchRoute(const VirtualHost& vh, const http::RequestHead& req) {
  for (const Route& r : vh.routes) {
    if (RouteMatches(r, req))
      return &r;
  }
  return nullptr;
}

void FormatAddr(const sockaddr_storage& ss, char* out, std::size_t n, bool with_port) {
  char ip[INET6_ADDRSTRLEN];
  unsigned port;
  if (ss.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
    port = ntohs(a->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
    port = ntohs(a->sin6_port);
  } else {
    snprintf(out, n, "-");
    return;
  }
  if (with_port)
    snprintf(out, n, ss.ss_family == AF_INET6 ? "[%s]:%u" : "%s:%u", ip, port);
  else
    snprintf(out, n, "%s", ip);
}

std::optional<sockaddr_storage> ParseIp(const std::string& ip, uint16_t port) {
  sockaddr_storage ss{};
  auto* a4 = reinterpret_cast<sockaddr_in*>(&ss);
  auto* a6 = reinterpret_cast<sockaddr_in6*>(&ss);
  if (inet_pton(AF_INET, ip.c_str(), &a4->sin_addr) == 1) {
    a4->sin_family = AF_INET;
    a4->sin_port = htons(port);
    return ss;
  }
  if (inet_pton(AF_INET6, ip.c_str(), &a6->sin6_addr) == 1) {
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons(port);
    return ss;
  }
  return std::nullopt;
}

void SetAddress(Endpoint& ep, const sockaddr_storage& addr) {
  ep.addr = addr;
  ep.addr_len = addr.ss_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
  char text[64];
  FormatAddr(addr, text, sizeof(text));
  ep.address = text;
}

bool Inspector::On(uint16_t destination_port) const {
  if (!enabled)
    return false;
  for (const auto& [start, end] : disabled_ports) {
    if (destination_port >= start && destination_port < end)
      return false;
  }
  return true;
}

const FilterChain* ListenerConfig::Select(const filterchain::Connection& c, bool* decided) const {
  auto in = filterchain::Select(matches, c, decided);
  if (!*decided)
    return nullptr;
  // Envoy refuses a listener whose chains have equal matches, so one is left at most.
  if (!in.empty())
    return &chains[in.front()];
  return default_chain ? &*default_chain : nullptr;
}

namespace {

// Every cluster name any config of this process named, with its id. Only compiles touch
// it; the hot path reads a config's cluster_slots by id.
struct ClusterNames {
  std::mutex mu;
  std::unordered_map<std::string, ClusterId, StringViewHash, std::equal_to<>> ids;
};
ClusterNames& Names() {
  static ClusterNames* n = new ClusterNames();  // never destroyed: workers may outlive main
  return *n;
}

}  // namespace

ClusterId InternCluster(std::string_view name) {
  ClusterNames& n = Names();
  std::lock_guard lock(n.mu);
  if (auto it = n.ids.find(name); it != n.ids.end())
    return it->second;
  const auto id = static_cast<ClusterId>(n.ids.size());
  n.ids.emplace(std::string(name), id);
  return id;
}

std::optional<ClusterId> FindClusterId(std::string_view name) {
  ClusterNames& n = Names();
  std::lock_guard lock(n.mu);
  if (auto it = n.ids.find(name); it != n.ids.end())
    return it->second;
  return std::nullopt;
}

const Cluster* ProxyConfig::FindCluster(std::string_view name) const {
  auto id = FindClusterId(name);
  return id ? ClusterAt(*id) : nullptr;
}

}  // namespace sluice::proxy
