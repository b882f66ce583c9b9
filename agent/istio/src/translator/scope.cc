// Which config one proxy sees, as istiod's SidecarScope and PushContext decide it
// (pilot/pkg/model/sidecar.go, push_context.go): its Sidecar resource, the services
// visible to it (exportTo, Sidecar egress hosts, one service per hostname), the host
// index of DestinationRules and mesh-bound VirtualServices, and the rules that pick the
// DestinationRule and VirtualService for a service.
#include <algorithm>

#include "translator/builder.h"

namespace sluice::istio::detail {

namespace {

// Candidates for a hostname, in config order (the vectors' elements are contiguous, so
// pointer order is load order).
template <class T>
std::vector<const T*> Candidates(
    const std::unordered_map<std::string, std::vector<const T*>>& exact,
    const std::vector<std::pair<std::string, const T*>>& wildcard, const std::string& host) {
  std::vector<const T*> out;
  if (auto it = exact.find(host); it != exact.end())
    out = it->second;
  for (const auto& [pattern, item] : wildcard) {
    if (HostMatches(pattern, host))
      out.push_back(item);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

}  // namespace

// A host pattern from Istio config matches a hostname ("*.example.com", "*").
bool HostMatches(const std::string& pattern, const std::string& host) {
  if (pattern == "*")
    return true;
  if (pattern.starts_with("*")) {
    std::string_view suffix(pattern);
    suffix.remove_prefix(1);
    return host.size() > suffix.size() && host.ends_with(suffix);
  }
  return pattern == host;
}

bool HostsIntersect(const std::string& a, const std::string& b) {
  return HostMatches(a, b) || HostMatches(b, a);
}

// The Sidecar resource for this proxy, as istiod picks it: one in the proxy's namespace
// whose workloadSelector matches its labels, else the namespace's selector-less one,
// else the root namespace's selector-less one.
const Sidecar* Builder::FindSidecar() const {
  const Sidecar* ns_default = nullptr;
  const Sidecar* root_default = nullptr;
  for (const auto& sc : config_.sidecars) {
    if (sc.meta.ns == proxy_.ns && !sc.workload_selector.empty() &&
        SelectorMatches(sc.workload_selector, proxy_.labels))
      return &sc;
    if (sc.workload_selector.empty() && sc.meta.ns == proxy_.ns && !ns_default)
      ns_default = &sc;
    if (sc.workload_selector.empty() && sc.meta.ns == config_.mesh.root_namespace && !root_default)
      root_default = &sc;
  }
  return ns_default ? ns_default : root_default;
}

// Whether the Sidecar's egress hosts ("ns/host") let this proxy reach `svc`.
bool Builder::SidecarAllows(const RegistryService& svc) const {
  if (!sidecar_)
    return true;
  for (const auto& entry : sidecar_->egress_hosts) {
    auto slash = entry.find('/');
    std::string ns = entry.substr(0, slash);
    std::string host = entry.substr(slash + 1);
    bool ns_ok = ns == "*" || (ns == "." && svc.ns == sidecar_->meta.ns) || ns == svc.ns;
    if (ns_ok && HostMatches(host, svc.hostname))
      return true;
  }
  return false;
}

void Builder::IndexByHost() {
  // The services this proxy sees, one per hostname: the one in the proxy's namespace
  // when several namespaces define the host, else the first (registry order).
  std::map<std::string, const RegistryService*> by_host;
  for (const auto& svc : registry_.services()) {
    if (!svc.VisibleFrom(proxy_.ns) || !SidecarAllows(svc))
      continue;
    auto [it, inserted] = by_host.emplace(svc.hostname, &svc);
    if (!inserted && svc.ns == proxy_.ns && it->second->ns != proxy_.ns)
      it->second = &svc;
  }
  for (const auto& svc : registry_.services()) {
    auto it = by_host.find(svc.hostname);
    if (it != by_host.end() && it->second == &svc)
      visible_.push_back(&svc);
  }
  for (const auto& dr : config_.destination_rules) {
    std::string host = registry_.Qualify(dr.host, dr.meta.ns);
    if (host.starts_with("*")) {
      dr_wildcard_.emplace_back(std::move(host), &dr);
    } else {
      dr_by_host_[host].push_back(&dr);
    }
  }
  for (const auto& vs : config_.virtual_services) {
    if (!BoundTo(vs, kMesh) || !VisibleVs(vs))
      continue;
    for (const auto& h : vs.hosts) {
      std::string host = registry_.Qualify(h, vs.meta.ns);
      if (host.starts_with("*")) {
        vs_wildcard_.emplace_back(std::move(host), &vs);
      } else {
        vs_by_host_[host].push_back(&vs);
      }
    }
  }
  for (const RegistryService* svc : visible_) {
    if (const VirtualService* vs = FindMeshVs(*svc))
      services_by_vs_[vs].push_back(svc);
  }
}

// The DestinationRule for a hostname as istiod picks it: the proxy's namespace first,
// then the service's namespace, then the root namespace.
const DestinationRule* Builder::FindDestinationRule(const RegistryService& svc) const {
  const DestinationRule* best = nullptr;
  int best_rank = 99;
  for (const DestinationRule* dr : Candidates(dr_by_host_, dr_wildcard_, svc.hostname)) {
    int rank = dr->meta.ns == proxy_.ns                     ? 0
               : dr->meta.ns == svc.ns                      ? 1
               : dr->meta.ns == config_.mesh.root_namespace ? 2
                                                            : 99;
    bool visible =
        dr->export_to.empty() ||
        std::find(dr->export_to.begin(), dr->export_to.end(), "*") != dr->export_to.end() ||
        (rank == 0);
    if (rank == 99 && !visible)
      continue;
    if (rank < best_rank || !best) {
      best = dr;
      best_rank = rank;
    }
  }
  return best;
}

const VirtualService* Builder::FindMeshVs(const RegistryService& svc) const {
  auto candidates = Candidates(vs_by_host_, vs_wildcard_, svc.hostname);
  return candidates.empty() ? nullptr : candidates.front();
}

bool Builder::VisibleVs(const VirtualService& vs) const {
  if (vs.export_to.empty())
    return true;
  for (const auto& e : vs.export_to) {
    if (e == "*" || e == proxy_.ns || (e == "." && vs.meta.ns == proxy_.ns))
      return true;
  }
  return false;
}

std::string Builder::GatewayRef(const std::string& g, const std::string& vs_ns) {
  if (g == kMesh || g.find('/') != std::string::npos)
    return g;
  auto dot = g.find('.');
  if (dot != std::string::npos)
    return g.substr(dot + 1) + "/" + g.substr(0, dot);  // name.ns
  return vs_ns + "/" + g;
}

bool Builder::BoundTo(const VirtualService& vs, const std::string& gateway) {
  if (vs.gateways.empty())
    return gateway == kMesh;
  for (const auto& g : vs.gateways) {
    if (GatewayRef(g, vs.meta.ns) == gateway)
      return true;
  }
  return false;
}

}  // namespace sluice::istio::detail
