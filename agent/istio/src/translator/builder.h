// The translator's private parts: Builder, the state of one translation (one proxy's
// view of the config and the resources built so far), and the helpers its files share.
//
// Builder's member functions live in the file of their xDS part, as istiod lays out
// pilot/pkg/networking/core/: scope.cc (what the proxy sees), clusters.cc (CDS/EDS),
// routes.cc (RDS), listeners.cc (a sidecar's LDS), inbound.cc (a sidecar's virtualInbound
// and inbound clusters, from Sidecar ingress), gateway.cc (a gateway's listeners and
// routes), grpc.cc (a proxyless gRPC client's resources), access_log.cc, telemetry.cc
// (the istio.stats filters from Telemetry metrics); translator.cc runs them in order.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <google/protobuf/any.pb.h>
#include <google/protobuf/duration.pb.h>

#include "envoy/config/accesslog/v3/accesslog.pb.h"
#include "envoy/config/core/v3/config_source.pb.h"
#include "sluice/istio/translator.h"

namespace envoy::extensions::filters::network::http_connection_manager::v3 {
class HttpConnectionManager;
}

namespace sluice::istio::detail {

namespace cluster_v3 = envoy::config::cluster::v3;
namespace core_v3 = envoy::config::core::v3;
namespace endpoint_v3 = envoy::config::endpoint::v3;
namespace listener_v3 = envoy::config::listener::v3;
namespace route_v3 = envoy::config::route::v3;

inline constexpr char kBlackHole[] = "BlackHoleCluster";
inline constexpr char kPassthrough[] = "PassthroughCluster";
inline constexpr char kMesh[] = "mesh";

// "outbound|PORT|SUBSET|FQDN", istiod's name for an outbound cluster (clusters.cc).
std::string ClusterName(uint32_t port, const std::string& subset, const std::string& host);

// translator.cc
void SetDurationMs(google::protobuf::Duration* d, int64_t ms);
core_v3::ConfigSource AdsSource();

// A host pattern from Istio config matches a hostname ("*.example.com", "*") (scope.cc).
bool HostMatches(const std::string& pattern, const std::string& host);
bool HostsIntersect(const std::string& a, const std::string& b);

// The endpoints of one service port (and subset), grouped by locality (clusters.cc).
endpoint_v3::ClusterLoadAssignment Endpoints(const RegistryService& svc, const RegistryPort& port,
                                             const Subset* subset, const std::string& name,
                                             bool dns);

// The fault, (cors,) router HTTP filters of istiod's connection managers (listeners.cc).
void AddFaultAndRouter(
    envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager& hcm,
    bool cors);

// A proxyless gRPC client's API-listener connection manager, RDS `route_name` over ADS
// (listeners.cc).
google::protobuf::Any ApiListenerConnectionManager(const std::string& route_name);

// A DestinationRule's traffic policy for one port and subset, merged (clusters.cc).
struct EffectivePolicy {
  std::optional<LoadBalancer> lb;
  std::optional<int64_t> connect_timeout_ms;
  std::optional<ConnectionPool> connection_pool;
};

// A cluster's upstream HTTP protocol and connection-pool limits, in istiod's order
// (cluster_builder.go setUpstreamProtocol, cluster_traffic_policy.go applyH2Upgrade and
// applyConnectionPool): typed_extension_protocol_options
// envoy.extensions.upstreams.http.v3.HttpProtocolOptions with explicit HTTP/2 for HTTP2
// and gRPC ports, use_downstream_protocol_config for a sidecar's sniffed ports, the h2
// upgrade of outbound clusters, max_concurrent_streams on HTTP/2 clusters,
// useClientProtocol; and the circuit-breaker thresholds (istiod's defaults when the
// cluster has none yet) the pool overrides (clusters.cc).
void ApplyHttpProtocol(cluster_v3::Cluster& c, Protocol protocol, bool sidecar, bool outbound,
                       const std::optional<ConnectionPool>& pool, H2UpgradePolicy mesh_h2);
// istiod's passthroughHttpProtocolOptions: the client's protocol, idle timeout 5 min.
void SetPassthroughHttpProtocol(cluster_v3::Cluster& c);

class Builder {
 public:
  Builder(const Config& config, const Registry& registry, const ProxySpec& proxy)
      : config_(config), registry_(registry), proxy_(proxy) {}

  Translation Run();  // translator.cc

 private:
  // ------------------------------------------------------------ scope.cc
  const Sidecar* FindSidecar() const;
  bool SidecarAllows(const RegistryService& svc) const;
  void IndexByHost();
  const DestinationRule* FindDestinationRule(const RegistryService& svc) const;
  const VirtualService* FindMeshVs(const RegistryService& svc) const;
  bool VisibleVs(const VirtualService& vs) const;
  static std::string GatewayRef(const std::string& g, const std::string& vs_ns);
  static bool BoundTo(const VirtualService& vs, const std::string& gateway);

  // Does a VirtualService's match apply to this proxy and port? `gateway` is "mesh" or
  // the "ns/name" of a gateway. As istiod, sourceLabels and sourceNamespace are decided
  // here, for the proxy the config is built for (a view: its namespace and labels).
  template <class Match>
  bool MatchApplies(const Match& m, const std::string& gateway, const std::string& vs_ns,
                    uint32_t port) const {
    if (m.port && *m.port != port)
      return false;
    if (!m.source_namespace.empty() && m.source_namespace != proxy_.ns)
      return false;
    if (!SelectorMatches(m.source_labels, proxy_.labels))
      return false;
    if (m.gateways.empty())
      return true;
    for (const auto& g : m.gateways) {
      if (GatewayRef(g, vs_ns) == gateway)
        return true;
    }
    return false;
  }

  // ------------------------------------------------------------ access_log.cc
  bool AccessLogEnabled() const;
  void AddAccessLog(
      google::protobuf::RepeatedPtrField<envoy::config::accesslog::v3::AccessLog>* logs) const;

  // ------------------------------------------------------------ telemetry.cc
  // The Telemetry resources that apply to this proxy, in istiod's merge order.
  std::vector<const Telemetry*> ApplicableTelemetries() const;
  // stats_: the istio.stats config (packed stats.PluginConfig) of the client side (and
  // gateways) and of the server side; none where metrics are off for that side.
  void BuildStatsConfigs();
  // Puts the filter on every chain of the listeners built: before the router of each
  // connection manager, before each tcp_proxy.
  void AddStatsFilters();

  // ------------------------------------------------------------ clusters.cc
  static EffectivePolicy Policy(const DestinationRule* dr, const Subset* subset, uint32_t port);
  void BuildClusters();
  void AddServiceCluster(const RegistryService& svc, const RegistryPort& port,
                         const DestinationRule* dr, const Subset* subset);

  // ------------------------------------------------------------ routes.cc
  std::string DestinationCluster(const Destination& d, const std::string& vs_ns,
                                 uint32_t listener_port, const RegistryService** svc_out) const;
  void AddHashPolicy(const RegistryService* svc, uint32_t port, const std::string& subset,
                     route_v3::RouteAction* ra) const;
  route_v3::Route TranslateHttpRoute(const HttpRoute& hr, const HttpMatch* match,
                                     const std::string& vs_ns, uint32_t listener_port) const;
  std::vector<route_v3::Route> VsRoutes(const VirtualService& vs, const std::string& gateway,
                                        uint32_t port) const;
  std::vector<std::string> ServiceDomains(const RegistryService& svc, uint32_t port) const;
  std::vector<std::pair<const VirtualService*, std::vector<std::string>>> UnregisteredVsHosts()
      const;
  route_v3::Route DefaultRoute(const RegistryService& svc, uint32_t port) const;
  void AddCatchAllVirtualHost(route_v3::RouteConfiguration& rc) const;

  // ------------------------------------------------------------ listeners.cc
  google::protobuf::Any HttpConnectionManager(const std::string& stat_prefix,
                                              const std::string& route_name) const;
  google::protobuf::Any TcpProxy(const std::vector<std::pair<std::string, uint32_t>>& clusters,
                                 bool source_ip_hash = false) const;
  static listener_v3::Listener NewListener(const std::string& address, uint32_t port,
                                           bool outbound);
  static void AddTlsInspector(listener_v3::Listener& l);
  bool SourceIpHash(const RegistryService* svc, const std::string& subset, uint32_t port) const;
  std::vector<listener_v3::FilterChain> TcpChains(const RegistryService& svc, uint32_t port,
                                                  const std::vector<std::string>& own) const;
  std::vector<std::pair<std::string, uint32_t>> L4Clusters(const L4Route& r,
                                                           const std::string& vs_ns,
                                                           uint32_t port) const;
  void BuildSidecarListenersAndRoutes();

  // ------------------------------------------------------------ authz.cc
  std::vector<const AuthorizationPolicy*> SelectedPolicies() const;
  void BuildAuthz();  // fills authz_, authz_http_, authz_tcp_

  // ------------------------------------------------------------ inbound.cc
  void BuildInbound();
  // `protocol`: the port's; `svc` and `service_port`: the Service whose DestinationRule's
  // connection pool applies (none for a Sidecar ingress listener, as istiod).
  cluster_v3::Cluster InboundCluster(const SidecarIngress& in, Protocol protocol,
                                     const RegistryService* svc, uint32_t service_port) const;
  // The filters, upgrades and access log every sidecar connection manager (outbound RDS
  // and inbound inline) ends with, packed.
  google::protobuf::Any FinishConnectionManager(
      envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager& hcm)
      const;
  google::protobuf::Any InboundHttpConnectionManager(const std::string& stat_prefix,
                                                     const std::string& cluster, uint32_t port,
                                                     const std::string& decorator_host) const;

  // ------------------------------------------------------------ grpc.cc
  std::vector<std::string> GrpcShortNames(const RegistryService& svc) const;
  void AddGrpcCluster(const RegistryService& svc, const RegistryPort& port,
                      const DestinationRule* dr, const Subset* subset);
  void BuildGrpc();

  // ------------------------------------------------------------ gateway.cc
  void BuildGateway();
  uint32_t GatewayListenPort(uint32_t port) const;
  template <class Servers>
  void BuildGatewayHttp(uint32_t port, uint32_t listen, const Servers& servers);
  // The route configuration `name` of gateway servers on `port`: a virtual host per host
  // of the VirtualServices bound to them, or istiod's 404 blackhole when none.
  template <class Servers>
  route_v3::RouteConfiguration GatewayRoutes(const std::string& name, uint32_t port,
                                             const Servers& servers) const;
  template <class Servers>
  void BuildGatewayHttps(uint32_t port, uint32_t listen, const Servers& servers);
  template <class Servers>
  void BuildGatewayL4(uint32_t port, uint32_t listen, const Servers& servers, bool tcp);
  void AddGatewayTcpFilters(listener_v3::FilterChain& fc, google::protobuf::Any tcp_proxy) const;

  const Config& config_;
  const Registry& registry_;
  const ProxySpec& proxy_;
  bool access_log_ = false;
  std::array<std::optional<google::protobuf::Any>, 2> stats_;  // [server]
  bool registry_only_ = false;        // outboundTrafficPolicy in force for this proxy
  const Sidecar* sidecar_ = nullptr;  // the Sidecar resource scoping this proxy, if any
  Translation out_;
  std::vector<const RegistryService*> visible_;
  std::map<const VirtualService*, std::vector<const RegistryService*>> services_by_vs_;
  // Host -> the DestinationRules and mesh-bound VirtualServices naming it, so lookups
  // cost O(rules for that host), not O(all rules): 10,000 services x 1,000 rules adds up.
  std::unordered_map<std::string, std::vector<const DestinationRule*>> dr_by_host_;
  std::vector<std::pair<std::string, const DestinationRule*>> dr_wildcard_;
  std::unordered_map<std::string, std::vector<const VirtualService*>> vs_by_host_;
  std::vector<std::pair<std::string, const VirtualService*>> vs_wildcard_;
  std::set<std::string> emitted_listeners_;  // TCP listeners by name (one per VIP and port)
  // AuthorizationPolicy for this proxy (authz.cc): whether any selects it, and the packed
  // envoy.filters.http.rbac / envoy.filters.network.rbac configs in istiod's order.
  bool authz_ = false;
  std::vector<google::protobuf::Any> authz_http_;
  std::vector<google::protobuf::Any> authz_tcp_;
};

}  // namespace sluice::istio::detail
