// Translator: Istio config -> the Envoy resources istiod would serve one proxy.
//
// Three kinds of proxy, as istiod distinguishes them by node ID and metadata:
//  - a sidecar (`sidecar~…`) in a namespace: outbound clusters for every visible
//    service port and subset, EDS endpoints, per-port route configurations ("5000")
//    built from mesh-bound VirtualServices, outbound listeners, Passthrough/BlackHole;
//    and, when its Sidecar resource has ingress listeners, virtualInbound and the
//    "inbound|PORT||" clusters (translator/inbound.cc);
//  - a gateway (`router~…`) selected by its pod labels: listeners for the servers of the
//    Gateways whose selector matches, on the targetPort the gateway's Service maps each
//    server port to ("0.0.0.0_8080", "http.8080" for port 80), routes from the
//    VirtualServices bound to those Gateways, SNI filter chains for TLS passthrough;
//  - a proxyless gRPC client (metadata GENERATOR: grpc) in a namespace: API listeners
//    "FQDN:PORT" (short-name aliases too), route configs "outbound|PORT||FQDN", EDS
//    clusters and endpoints — istiod's grpc generator (translator/grpc.cc).
// Names and semantics follow istiod; docs/control-plane.md lists what is left out.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "sluice/common/result.h"
#include "sluice/envoy/resource_set.h"
#include "sluice/istio/model.h"
#include "sluice/istio/registry.h"

namespace sluice::istio {

struct ProxySpec {
  enum class Kind { kSidecar, kGateway, kGrpc };
  Kind kind = Kind::kSidecar;
  std::string ns = "default";  // the proxy's namespace (gateways: istio-system)
  Labels labels;               // the proxy pod's labels; select Gateways

  // "sidecar:NAMESPACE", "sidecar:KEY=VALUE[,KEY=VALUE…]@NAMESPACE" (a pod with labels),
  // "grpc:NAMESPACE" or "gateway:KEY=VALUE[,KEY=VALUE…][@NAMESPACE]".
  static Result<ProxySpec> Parse(std::string_view text);
  std::string Describe() const;
};

struct Translation {
  xds::ResourceSet resources;
  std::vector<std::string> warnings;  // config Sluice read but cannot express
};

// Pure function of its inputs: the same config always gives byte-identical resources.
Translation Translate(const Config& config, const Registry& registry, const ProxySpec& proxy);

// The resources as one JSON document {"listeners":[…],"routes":[…],"clusters":[…],
// "endpoints":[…]}, each list sorted by name, printed with protobuf's JSON printer; and
// "listenerAliases":{alias: listener} when there are any (proxyless gRPC).
Result<std::string> ResourcesToJson(const xds::ResourceSet& resources);

}  // namespace sluice::istio
