// Proxyless gRPC: what a gRPC client whose node metadata says GENERATOR: grpc is served,
// in the shape istiod's grpc generator gives it (pilot/pkg/networking/grpcgen/). Such a
// client has no Envoy: it reads the resources itself and balances its own RPCs.
//  - LDS: one API listener per visible service port, named "FQDN:PORT", whose HTTP
//    connection manager has the fault and router filters and takes its routes over RDS
//    from "outbound|PORT||FQDN". A client in the service's namespace may dial a short
//    form ("echo:7070", "echo.ns:7070", "echo.ns.svc:7070"); istiod answers those names
//    with the same listener, so they are listed as aliases (the ADS server serves an
//    alias only to a client that asks for it by name).
//  - RDS: "outbound|PORT||FQDN" holds the one virtual host of that service, with the
//    routes a sidecar would get (VirtualService matches, weighted destinations, retries,
//    faults) — and, as istiod does for proxyless clients, the route timeout also as
//    max_stream_duration, the field gRPC reads.
//  - CDS: an EDS cluster per service port and DestinationRule subset, with only what
//    gRPC implements: round robin (its default, so no lb_policy), LEAST_REQUEST, and
//    RING_HASH for consistent hashing. No Passthrough or BlackHole cluster.
//  - EDS: the same ClusterLoadAssignments as a sidecar's, with a locality per group.
// Services whose endpoints are found by DNS or passed through (resolution DNS, NONE)
// have no EDS endpoints to give a gRPC client and are left out.
#include "translator/builder.h"

namespace sluice::istio::detail {

namespace {

// istiod's setTimeout for a proxyless node: gRPC ignores `timeout` and reads
// max_stream_duration, so the route's timeout (0: none) goes there too.
void AdaptRouteForGrpc(route_v3::Route& r) {
  if (!r.has_route())
    return;
  auto* ra = r.mutable_route();
  *ra->mutable_max_stream_duration()->mutable_max_stream_duration() = ra->timeout();
}

}  // namespace

// The names a client in the proxy's namespace may give for `svc` that istiod expands to
// its FQDN (grpcgen's tryFindFQDN): "name", "name.ns", "name.ns.svc".
std::vector<std::string> Builder::GrpcShortNames(const RegistryService& svc) const {
  if (svc.source != RegistryService::Source::kKubernetes || svc.ns != proxy_.ns)
    return {};
  return {svc.name, svc.name + "." + svc.ns, svc.name + "." + svc.ns + ".svc"};
}

void Builder::AddGrpcCluster(const RegistryService& svc, const RegistryPort& port,
                             const DestinationRule* dr, const Subset* subset) {
  const std::string name = ClusterName(port.port, subset ? subset->name : "", svc.hostname);
  cluster_v3::Cluster c;
  c.set_name(name);
  c.set_type(cluster_v3::Cluster::EDS);
  c.mutable_eds_cluster_config()->set_service_name(c.name());
  c.mutable_eds_cluster_config()->mutable_eds_config()->mutable_ads();
  EffectivePolicy policy = Policy(dr, subset, port.port);
  if (policy.lb && policy.lb->consistent_hash) {
    if (policy.lb->consistent_hash->maglev) {
      // gRPC has no Maglev; istiod would send MAGLEV and the client would reject the
      // cluster. Refuse it here, by name, rather than serve one that cannot work.
      out_.warnings.push_back("proxyless gRPC: DestinationRule " + dr->meta.ns + "/" +
                              dr->meta.name + " asks for maglev, which gRPC does not " +
                              "implement; cluster " + name + " is not served");
      return;
    }
    c.set_lb_policy(cluster_v3::Cluster::RING_HASH);
    if (policy.lb->consistent_hash->table_size) {
      c.mutable_ring_hash_lb_config()->mutable_minimum_ring_size()->set_value(
          policy.lb->consistent_hash->table_size);
    }
  } else if (policy.lb && policy.lb->simple == LoadBalancer::Simple::kLeastRequest) {
    c.set_lb_policy(cluster_v3::Cluster::LEAST_REQUEST);
  }
  // ROUND_ROBIN and unset: gRPC's default. RANDOM: istiod warns and keeps the default.
  // Circuit breaking: gRPC implements max_requests only (gRFC A32), from http2MaxRequests
  // (istiod's grpcgen applyCircuitBreakers); no threshold otherwise.
  if (policy.connection_pool && policy.connection_pool->http2_max_requests > 0) {
    c.mutable_circuit_breakers()->add_thresholds()->mutable_max_requests()->set_value(
        policy.connection_pool->http2_max_requests);
  }
  out_.resources.Add(std::move(c));
  out_.resources.Add(Endpoints(svc, port, subset, name, false));
}

void Builder::BuildGrpc() {
  for (const RegistryService* svc_ptr : visible_) {
    const RegistryService& svc = *svc_ptr;
    if (svc.resolution != RegistryService::Resolution::kClientSideLb)
      continue;
    const DestinationRule* dr = FindDestinationRule(svc);
    const VirtualService* vs = FindMeshVs(svc);
    for (const auto& port : svc.ports) {
      if (port.protocol == Protocol::kUdp)
        continue;
      AddGrpcCluster(svc, port, dr, nullptr);
      if (dr) {
        for (const auto& subset : dr->subsets)
          AddGrpcCluster(svc, port, dr, &subset);
      }

      const std::string route_name = ClusterName(port.port, "", svc.hostname);
      const std::string suffix = ":" + std::to_string(port.port);
      listener_v3::Listener l;
      l.set_name(svc.hostname + suffix);
      auto* sa = l.mutable_address()->mutable_socket_address();
      sa->set_address(svc.addresses.empty() || svc.addresses[0].find('/') != std::string::npos
                          ? "0.0.0.0"
                          : svc.addresses[0]);
      sa->set_port_value(port.port);
      *l.mutable_api_listener()->mutable_api_listener() = ApiListenerConnectionManager(route_name);
      for (const auto& alias : GrpcShortNames(svc))
        out_.resources.listener_aliases[alias + suffix] = l.name();
      out_.resources.Add(std::move(l));

      route_v3::RouteConfiguration rc;
      rc.set_name(route_name);
      auto* vh = rc.add_virtual_hosts();
      vh->set_name(svc.hostname + suffix);
      for (auto& d : ServiceDomains(svc, port.port))
        vh->add_domains(std::move(d));
      std::vector<route_v3::Route> routes;
      if (vs)
        routes = VsRoutes(*vs, kMesh, port.port);
      if (routes.empty())
        routes.push_back(DefaultRoute(svc, port.port));
      for (auto& r : routes) {
        AdaptRouteForGrpc(r);
        *vh->add_routes() = std::move(r);
      }
      out_.resources.Add(std::move(rc));
    }
  }
}

}  // namespace sluice::istio::detail
