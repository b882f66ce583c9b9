#include "sluice/istio/registry.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <unordered_map>

#include "sluice/common/kube_names.h"

namespace sluice::istio {
namespace {

std::string Lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  return out;
}

// Istio's protocol selection for a Kubernetes port: appProtocol, then the name's
// prefix before '-' ("http-web", "grpc"), else unknown (auto-detected). Kubernetes'
// standard appProtocol names count as istiod counts them (pkg/config/kube
// ConvertProtocol): kubernetes.io/h2c is HTTP2, kubernetes.io/ws HTTP, kubernetes.io/wss
// HTTPS; and its well-known ports are TCP when neither names a protocol.
Protocol KubernetesPortProtocol(const ServicePort& p) {
  if (p.protocol == "UDP")
    return Protocol::kUdp;
  if (!p.app_protocol.empty()) {
    if (p.app_protocol == "kubernetes.io/h2c")
      return Protocol::kHttp2;
    if (p.app_protocol == "kubernetes.io/ws")
      return Protocol::kHttp;
    if (p.app_protocol == "kubernetes.io/wss")
      return Protocol::kHttps;
    Protocol ap = ParseProtocol(p.app_protocol.substr(0, p.app_protocol.find('-')));
    if (ap == Protocol::kUnknown)
      ap = ParseProtocol(p.app_protocol);  // "grpc-web"
    if (ap != Protocol::kUnknown)
      return ap;
  }
  std::string prefix = p.name.substr(0, p.name.find('-'));
  Protocol named = ParseProtocol(prefix);
  // Ports istiod never sniffs (SMTP, DNS, MySQL, MongoDB): TCP when nothing names them.
  if (named == Protocol::kUnknown &&
      (p.port == 25 || p.port == 53 || p.port == 3306 || p.port == 27017))
    return Protocol::kTcp;
  return named;
}

// The workload name istiod gives an endpoint (pkg/kube GetWorkloadMetaFromPod): for a
// Pod, as kube::PodWorkloadName derives it from its name and labels (the same rule the
// proxy's metrics use for the pod itself); a Deployment is its own workload.
std::string WorkloadName(const Workload& w) {
  if (auto it = w.pod_labels.find("service.istio.io/workload-name"); it != w.pod_labels.end())
    return it->second;
  if (w.kind == "Pod")
    return kube::PodWorkloadName(w.meta.name, w.pod_labels);
  return w.meta.name;
}

}  // namespace

const char* ProtocolName(Protocol p) {
  switch (p) {
    case Protocol::kHttp:
      return "HTTP";
    case Protocol::kHttp2:
      return "HTTP2";
    case Protocol::kGrpc:
      return "GRPC";
    case Protocol::kHttps:
      return "HTTPS";
    case Protocol::kTls:
      return "TLS";
    case Protocol::kTcp:
      return "TCP";
    case Protocol::kMongo:
      return "Mongo";
    case Protocol::kRedis:
      return "Redis";
    case Protocol::kMysql:
      return "MySQL";
    case Protocol::kUdp:
      return "UDP";
    case Protocol::kUnknown:
      return "UnsupportedProtocol";
  }
  return "UnsupportedProtocol";
}

Protocol ParseProtocol(std::string_view name) {
  std::string n = Lower(name);
  if (n == "http")
    return Protocol::kHttp;
  if (n == "http2" || n == "h2c")
    return Protocol::kHttp2;
  if (n == "grpc" || n == "grpc-web")
    return Protocol::kGrpc;
  if (n == "https")
    return Protocol::kHttps;
  if (n == "tls")
    return Protocol::kTls;
  if (n == "tcp")
    return Protocol::kTcp;
  if (n == "mongo")
    return Protocol::kMongo;
  if (n == "redis")
    return Protocol::kRedis;
  if (n == "mysql")
    return Protocol::kMysql;
  if (n == "udp")
    return Protocol::kUdp;
  return Protocol::kUnknown;
}

bool IsHttp(Protocol p) {
  return p == Protocol::kHttp || p == Protocol::kHttp2 || p == Protocol::kGrpc ||
         p == Protocol::kUnknown;
}

bool SelectorMatches(const Labels& selector, const Labels& labels) {
  for (const auto& [k, v] : selector) {
    auto it = labels.find(k);
    if (it == labels.end() || it->second != v)
      return false;
  }
  return true;
}

const RegistryPort* RegistryService::FindPort(uint32_t port) const {
  for (const auto& p : ports) {
    if (p.port == port)
      return &p;
  }
  return nullptr;
}

bool RegistryService::VisibleFrom(const std::string& from) const {
  if (export_to.empty())
    return true;
  for (const auto& e : export_to) {
    if (e == "*" || e == from || (e == "." && from == ns))
      return true;
  }
  return false;
}

std::string Registry::Qualify(const std::string& host, const std::string& ns) const {
  if (host.empty() || host == "*" || host.starts_with("*."))
    return host;
  auto dots = std::count(host.begin(), host.end(), '.');
  if (dots == 0)
    return host + "." + ns + ".svc." + domain_;
  return host;
}

const RegistryService* Registry::Resolve(const std::string& host, const std::string& ns) const {
  std::string fqdn = Qualify(host, ns);
  auto [b, e] = by_host_.equal_range(fqdn);
  if (b == e && std::count(host.begin(), host.end(), '.') == 1) {
    // "reviews.other": Istio does not expand it, but Kubernetes DNS does; accept it.
    auto alt = by_host_.equal_range(host + ".svc." + domain_);
    b = alt.first;
    e = alt.second;
  }
  const RegistryService* found = nullptr;
  for (auto it = b; it != e; ++it) {
    const auto& s = services_[it->second];
    if (!s.VisibleFrom(ns))
      continue;
    if (s.ns == ns)
      return &s;
    if (!found)
      found = &s;
  }
  return found;
}

Registry Registry::Build(const Config& config) {
  Registry r;
  r.domain_ = config.mesh.domain;

  // Endpoint sources for Kubernetes Services, keyed by namespace/service.
  std::map<std::string, std::vector<const EndpointGroup*>> groups;
  for (const auto& g : config.endpoint_groups)
    groups[g.meta.ns + "/" + g.service].push_back(&g);
  std::map<std::string, const Workload*> pods;  // ns/name -> Pod (labels for Endpoints)
  // ns \0 key \0 value -> workloads with that label, so a selector looks at the
  // workloads carrying its first label instead of every workload in the mesh.
  std::unordered_map<std::string, std::vector<const Workload*>> by_label;
  for (const auto& w : config.workloads) {
    if (w.kind == "Pod")
      pods[w.meta.Key()] = &w;
    for (const auto& [k, v] : w.pod_labels) {
      by_label[w.meta.ns + '\0' + k + '\0' + v].push_back(&w);
    }
  }

  for (const auto& svc : config.services) {
    RegistryService s;
    s.source = RegistryService::Source::kKubernetes;
    s.name = svc.meta.name;
    s.ns = svc.meta.ns;
    s.hostname = svc.meta.name + "." + svc.meta.ns + ".svc." + r.domain_;
    s.labels = svc.meta.labels;
    if (!svc.cluster_ip.empty() && svc.cluster_ip != "None")
      s.addresses.push_back(svc.cluster_ip);
    if (svc.cluster_ip == "None")
      s.resolution = RegistryService::Resolution::kPassthrough;
    auto it = svc.meta.annotations.find("networking.istio.io/exportTo");
    if (it != svc.meta.annotations.end()) {
      std::string cur;
      for (char c : it->second + ",") {
        if (c == ',') {
          if (!cur.empty())
            s.export_to.push_back(cur);
          cur.clear();
        } else if (c != ' ') {
          cur += c;
        }
      }
    }
    for (const auto& p : svc.ports) {
      s.ports.push_back(RegistryPort{p.name, p.port, KubernetesPortProtocol(p)});
    }

    auto git = groups.find(svc.meta.Key());
    if (git != groups.end()) {
      // Endpoints/EndpointSlices given explicitly: ports matched by name.
      for (const auto* g : git->second) {
        for (const auto& a : g->addresses) {
          RegistryEndpoint ep;
          ep.address = a.ip;
          auto pod = pods.find(svc.meta.ns + "/" + a.target_pod);
          if (pod != pods.end()) {
            ep.labels = pod->second->pod_labels;
            ep.workload = WorkloadName(*pod->second);
          }
          for (const auto& sp : svc.ports) {
            for (const auto& gp : g->ports) {
              if (gp.name == sp.name || g->ports.size() == 1)
                ep.ports[sp.port] = gp.port;
            }
          }
          s.endpoints.push_back(std::move(ep));
        }
      }
    } else if (!svc.selector.empty()) {
      // Pods and Deployments (with sluice.io/pod-ips) that the selector picks.
      const auto& [first_key, first_value] = *svc.selector.begin();
      auto candidates = by_label.find(svc.meta.ns + '\0' + first_key + '\0' + first_value);
      static const std::vector<const Workload*> kNone;
      for (const Workload* wp : candidates == by_label.end() ? kNone : candidates->second) {
        const Workload& w = *wp;
        if (!SelectorMatches(svc.selector, w.pod_labels))
          continue;
        for (const auto& ip : w.ips) {
          RegistryEndpoint ep;
          ep.address = ip;
          ep.labels = w.pod_labels;
          ep.workload = WorkloadName(w);
          for (const auto& sp : svc.ports) {
            uint32_t target = sp.target_port != 0 ? sp.target_port : sp.port;
            if (!sp.target_port_name.empty()) {
              target = 0;
              for (const auto& cp : w.container_ports) {
                if (cp.name == sp.target_port_name)
                  target = cp.port;
              }
              if (target == 0)
                continue;  // the pod does not expose that named port
            }
            ep.ports[sp.port] = target;
          }
          s.endpoints.push_back(std::move(ep));
        }
      }
    }
    r.services_.push_back(std::move(s));
  }

  for (const auto& se : config.service_entries) {
    for (const auto& host : se.hosts) {
      RegistryService s;
      s.source = RegistryService::Source::kServiceEntry;
      s.name = se.meta.name;
      s.ns = se.meta.ns;
      s.hostname = host;
      s.addresses = se.addresses;
      s.mesh_external = se.location == ServiceEntry::Location::kMeshExternal;
      s.export_to = se.export_to;
      s.labels = se.meta.labels;
      switch (se.resolution) {
        case ServiceEntry::Resolution::kNone:
          s.resolution = RegistryService::Resolution::kPassthrough;
          break;
        case ServiceEntry::Resolution::kStatic:
          s.resolution = RegistryService::Resolution::kClientSideLb;
          break;
        case ServiceEntry::Resolution::kDns:
          s.resolution = RegistryService::Resolution::kDnsLb;
          break;
        case ServiceEntry::Resolution::kDnsRoundRobin:
          s.resolution = RegistryService::Resolution::kDnsRoundRobinLb;
          break;
      }
      for (const auto& p : se.ports) {
        s.ports.push_back(RegistryPort{p.name, p.number, ParseProtocol(p.protocol)});
      }
      for (const auto& we : se.endpoints) {
        RegistryEndpoint ep;
        ep.address = we.address;
        ep.labels = we.labels;
        ep.weight = we.weight == 0 ? 1 : we.weight;
        for (const auto& p : se.ports) {
          auto pit = we.ports.find(p.name);
          ep.ports[p.number] = pit != we.ports.end() ? pit->second
                               : p.target_port != 0  ? p.target_port
                                                     : p.number;
        }
        s.endpoints.push_back(std::move(ep));
      }
      r.services_.push_back(std::move(s));
    }
  }

  std::stable_sort(r.services_.begin(), r.services_.end(), [](const auto& a, const auto& b) {
    return std::tie(a.hostname, a.ns) < std::tie(b.hostname, b.ns);
  });
  // One service per hostname and namespace (stable_sort kept load order among equals).
  std::vector<RegistryService> unique;
  unique.reserve(r.services_.size());
  for (auto& s : r.services_) {
    if (!unique.empty() && unique.back().hostname == s.hostname && unique.back().ns == s.ns) {
      r.warnings_.push_back("host " + s.hostname + " in namespace " + s.ns + " is defined by " +
                            unique.back().name + " and again by " + s.name +
                            "; the first one is used");
      continue;
    }
    unique.push_back(std::move(s));
  }
  r.services_ = std::move(unique);
  for (std::size_t i = 0; i < r.services_.size(); ++i) {
    r.by_host_.emplace(r.services_[i].hostname, i);
  }
  return r;
}

std::string Registry::RegistryzJson() const {
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  for (const auto& s : services_) {
    nlohmann::ordered_json j;
    nlohmann::ordered_json attrs;
    attrs["ServiceRegistry"] =
        s.source == RegistryService::Source::kKubernetes ? "Kubernetes" : "External";
    attrs["Name"] = s.source == RegistryService::Source::kKubernetes ? s.name : s.hostname;
    attrs["Namespace"] = s.ns;
    attrs["Labels"] = s.labels;
    nlohmann::ordered_json export_to = nlohmann::ordered_json::object();
    for (const auto& e : s.export_to)
      export_to[e == "." ? s.ns : e] = true;
    attrs["ExportTo"] = export_to;
    j["Attributes"] = attrs;
    nlohmann::ordered_json ports = nlohmann::ordered_json::array();
    for (const auto& p : s.ports) {
      ports.push_back({{"name", p.name}, {"port", p.port}, {"protocol", ProtocolName(p.protocol)}});
    }
    j["ports"] = ports;
    j["hostname"] = s.hostname;
    j["clusterVIPs"] = {{"Addresses", {{"Kubernetes", s.addresses}}}};
    j["defaultAddress"] = s.addresses.empty() ? "0.0.0.0" : s.addresses.front();
    j["Resolution"] = static_cast<int>(s.resolution);
    j["MeshExternal"] = s.mesh_external;
    j["ResourceVersion"] = "";
    // Not in istiod's registryz (it shows them at /debug/endpointz): a ServiceEntry's
    // own endpoints, so a STATIC entry's workloads can be read next to its addresses.
    if (s.source == RegistryService::Source::kServiceEntry && !s.endpoints.empty()) {
      nlohmann::ordered_json eps = nlohmann::ordered_json::array();
      for (const auto& e : s.endpoints) {
        nlohmann::ordered_json ep_ports = nlohmann::ordered_json::object();
        for (const auto& [svc_port, ep_port] : e.ports) {
          const RegistryPort* p = s.FindPort(svc_port);
          ep_ports[p && !p->name.empty() ? p->name : std::to_string(svc_port)] = ep_port;
        }
        eps.push_back({{"address", e.address}, {"ports", ep_ports}, {"labels", e.labels}});
      }
      j["endpoints"] = eps;
    }
    out.push_back(std::move(j));
  }
  return out.dump(2);
}

}  // namespace sluice::istio
