// ResourceSet: the Envoy resources one proxy is served, as whole state-of-the-world
// maps keyed by resource name. The Istio translator produces one per proxy; the ADS
// server serves it; the ADS client assembles one from what it has received.
#pragma once

#include <cstddef>
#include <map>
#include <string>
#include <string_view>
#include <utility>

#include "envoy/config/cluster/v3/cluster.pb.h"
#include "envoy/config/endpoint/v3/endpoint.pb.h"
#include "envoy/config/listener/v3/listener.pb.h"
#include "envoy/config/route/v3/route.pb.h"
#include "envoy/extensions/transport_sockets/tls/v3/secret.pb.h"

namespace sluice::xds {

// xDS type URLs, as Envoy and istiod spell them.
inline constexpr std::string_view kListenerType =
    "type.googleapis.com/envoy.config.listener.v3.Listener";
inline constexpr std::string_view kRouteType =
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
inline constexpr std::string_view kClusterType =
    "type.googleapis.com/envoy.config.cluster.v3.Cluster";
inline constexpr std::string_view kEndpointType =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
// SDS: not a wildcard type; a client asks by name for the secrets its listeners name
// ("kubernetes://NAME", "kubernetes://NAME-cacert", as istiod serves gateway credentials).
inline constexpr std::string_view kSecretType =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

struct ResourceSet {
  std::map<std::string, envoy::config::listener::v3::Listener> listeners;
  std::map<std::string, envoy::config::route::v3::RouteConfiguration> routes;
  std::map<std::string, envoy::config::cluster::v3::Cluster> clusters;
  std::map<std::string, envoy::config::endpoint::v3::ClusterLoadAssignment> endpoints;
  std::map<std::string, envoy::extensions::transport_sockets::tls::v3::Secret> secrets;
  // Other names a subscriber may use for a listener: alias -> canonical listener name.
  // Proxyless gRPC asks for LDS "helloworld:5000" or "helloworld.default:5000"; istiod
  // answers with the FQDN's listener under the name asked for. The ADS server serves an
  // alias only to a subscription that names it, never as part of a wildcard answer.
  std::map<std::string, std::string> listener_aliases;

  // Each Add keys the resource by its own name field.
  void Add(envoy::config::listener::v3::Listener l) {
    std::string name = l.name();
    listeners.insert_or_assign(std::move(name), std::move(l));
  }
  void Add(envoy::config::route::v3::RouteConfiguration r) {
    std::string name = r.name();
    routes.insert_or_assign(std::move(name), std::move(r));
  }
  void Add(envoy::config::cluster::v3::Cluster c) {
    std::string name = c.name();
    clusters.insert_or_assign(std::move(name), std::move(c));
  }
  void Add(envoy::config::endpoint::v3::ClusterLoadAssignment e) {
    std::string name = e.cluster_name();
    endpoints.insert_or_assign(std::move(name), std::move(e));
  }
  void Add(envoy::extensions::transport_sockets::tls::v3::Secret s) {
    std::string name = s.name();
    secrets.insert_or_assign(std::move(name), std::move(s));
  }

  std::size_t size() const {
    return listeners.size() + routes.size() + clusters.size() + endpoints.size() + secrets.size();
  }
};

}  // namespace sluice::xds
