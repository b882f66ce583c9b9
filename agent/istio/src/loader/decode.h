// The loader's decoders: one function per kind, from a parsed document (a Field, see
// yaml_field.h) to its typed model (model.h), one file per kind or family of kinds;
// and the checks they share (common.cc). A decoder reports the first bad field through
// the document's FieldErrors and returns what it read; the loader (loader.cc) then drops
// the document.
#pragma once

#include <algorithm>
#include <cstddef>
#include <iterator>
#include <string>
#include <vector>

#include "sluice/istio/loader.h"
#include "yaml_field.h"

namespace sluice::istio::detail {

// ------------------------------------------------------------ common.cc

template <std::size_t N>
bool OneOf(const std::string& v, const char* const (&options)[N]) {
  return std::find(std::begin(options), std::end(options), v) != std::end(options);
}

std::string Upper(std::string s);
std::string HostProblem(const std::string& host);
bool IsIpOrCidr(const std::string& text);
bool IsIp(const std::string& text);
void CheckIp(const Field& f, const std::string& ip);
void CheckHosts(const Field& f, const std::vector<std::string>& hosts, bool allow_namespace);
bool IsDnsName(const std::string& name, bool dots);
Meta DecodeMeta(const Field& doc, const Origin& origin, bool name_is_label);

// ------------------------------------------------------------ one decoder per kind

// kubernetes.cc
Service DecodeService(const Field& doc, const Meta& meta);
Workload DecodePod(const Field& doc, const Meta& meta);
Workload DecodeDeployment(const Field& doc, const Meta& meta);
EndpointGroup DecodeEndpoints(const Field& doc, const Meta& meta);
EndpointGroup DecodeEndpointSlice(const Field& doc, const Meta& meta);

// virtual_service.cc, destination_rule.cc, gateway.cc, service_entry.cc, sidecar.cc
VirtualService DecodeVirtualService(const Field& doc, const Meta& meta);
DestinationRule DecodeDestinationRule(const Field& doc, const Meta& meta);
Gateway DecodeGateway(const Field& doc, const Meta& meta);
ServiceEntry DecodeServiceEntry(const Field& doc, const Meta& meta);
Sidecar DecodeSidecar(const Field& doc, const Meta& meta);

// authorization_policy.cc. RejectedAuthorizationPolicy keeps what can be read of a
// refused document (namespace, selector, action) with `reason`, so the translator fails
// closed for the workloads it would have selected.
AuthorizationPolicy DecodeAuthorizationPolicy(const Field& doc, const Meta& meta);
AuthorizationPolicy RejectedAuthorizationPolicy(const YAML::Node& root, const Meta& meta,
                                                const std::string& reason);

// mesh_config.cc
Telemetry DecodeTelemetry(const Field& doc, const Meta& meta);
Secret DecodeSecret(const Field& doc, const Meta& meta);
void DecodeMeshConfigMap(const Field& doc, MeshConfig& mesh, FieldErrors& errors);

}  // namespace sluice::istio::detail
