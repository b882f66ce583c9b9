// Service registry: the services a proxy can address, built from Kubernetes Services
// (with endpoints from Endpoints/EndpointSlices, or Pods/Deployments matched by the
// selector) and from ServiceEntries — the same merged view istiod keeps and shows at
// /debug/registryz.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "sluice/istio/model.h"

namespace sluice::istio {

// Application protocol of a port, as Istio infers it from the port's protocol field,
// appProtocol, or name prefix ("http-web" -> HTTP).
enum class Protocol {
  kHttp,
  kHttp2,
  kGrpc,
  kHttps,
  kTls,
  kTcp,
  kMongo,
  kRedis,
  kMysql,
  kUdp,
  kUnknown
};
const char* ProtocolName(Protocol p);
Protocol ParseProtocol(std::string_view name);  // "HTTP", "tls", ... ; kUnknown otherwise
bool IsHttp(Protocol p);                        // HTTP, HTTP2, GRPC (and unknown: sniffed as HTTP)

struct RegistryPort {
  std::string name;
  uint32_t port = 0;
  Protocol protocol = Protocol::kUnknown;
};

struct RegistryEndpoint {
  std::string address;
  Labels labels;
  uint32_t weight = 1;
  std::map<uint32_t, uint32_t> ports;  // service port -> endpoint (target) port
  // The workload it belongs to, as istiod names it (a Deployment's name, a Pod's own
  // name or its service.istio.io/workload-name label); empty when not known. Its
  // namespace is the service's.
  std::string workload;
};

struct RegistryService {
  enum class Source { kKubernetes, kServiceEntry };
  // Istio's model.Resolution: how a proxy finds the service's endpoints.
  enum class Resolution { kClientSideLb = 0, kDnsLb = 1, kPassthrough = 2, kDnsRoundRobinLb = 3 };

  std::string hostname;  // FQDN for Kubernetes, the ServiceEntry host as written
  std::string name;      // Service / ServiceEntry name
  std::string ns;
  Source source = Source::kKubernetes;
  std::vector<std::string> addresses;  // cluster IP or ServiceEntry addresses (VIPs)
  std::vector<RegistryPort> ports;
  Resolution resolution = Resolution::kClientSideLb;
  bool mesh_external = false;
  std::vector<std::string> export_to;  // empty: "*"
  Labels labels;
  std::vector<RegistryEndpoint> endpoints;

  const RegistryPort* FindPort(uint32_t port) const;
  bool VisibleFrom(const std::string& ns) const;  // exportTo "*", "." or the namespace
};

class Registry {
 public:
  static Registry Build(const Config& config);

  // Sorted by hostname, then namespace.
  const std::vector<RegistryService>& services() const { return services_; }

  // Resolves a host as written in an Istio resource of namespace `ns`: short names
  // ("reviews") are relative to `ns`, "reviews.other" to namespace other. Returns the
  // service visible from `ns` with that hostname, preferring one in `ns` itself.
  const RegistryService* Resolve(const std::string& host, const std::string& ns) const;

  // The FQDN Istio gives to `host` written in namespace `ns`.
  std::string Qualify(const std::string& host, const std::string& ns) const;

  const std::string& domain() const { return domain_; }

  // Services dropped because another one already had the same hostname in the same
  // namespace (two ServiceEntries naming one host): the first in load order wins.
  const std::vector<std::string>& warnings() const { return warnings_; }

  // The registry as istiod's /debug/registryz shows it (a JSON array).
  std::string RegistryzJson() const;

 private:
  std::vector<RegistryService> services_;
  std::multimap<std::string, std::size_t> by_host_;
  std::string domain_ = "cluster.local";
  std::vector<std::string> warnings_;
};

// Labels `selector` selects: every key present with an equal value (empty selects all).
bool SelectorMatches(const Labels& selector, const Labels& labels);

}  // namespace sluice::istio
