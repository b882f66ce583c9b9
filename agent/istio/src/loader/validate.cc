// The loader's checks that span resources, run after every file is read: duplicate
// names of a kind, and subsets a VirtualService routes to that no DestinationRule for
// the host defines. What fails is removed and reported.
#include <map>
#include <optional>
#include <set>

#include "sluice/istio/loader.h"

namespace sluice::istio {

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
  DropDuplicates(c.authorization_policies, "AuthorizationPolicy", out);

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
