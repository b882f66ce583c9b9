// What Sluice does with each filter, listener and cluster it may meet in istiod's config:
// serve it, skip it (it has no effect on where traffic goes, or Sluice has no use for the
// resource yet), or refuse the listener that carries it (it may enforce policy, or it is
// unknown, so dropping it silently could change what traffic is let through).
//
// As Envoy, a filter is identified by its typed_config type URL; a TypedStruct
// (udpa.type.v1 / xds.type.v3) is looked through to the type URL it carries. Only a
// filter without typed_config is identified by its name. The table itself, with the
// reason for each entry, is in filters.cc.
#pragma once

#include <string>
#include <vector>

#include "envoy/config/cluster/v3/cluster.pb.h"
#include "envoy/config/listener/v3/listener.pb.h"
#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb.h"

namespace sluice::config {

enum class Use { kServed, kSkipped, kRefused };

// Reason classes (metric labels) for skipped and refused resources and filters.
inline constexpr std::string_view kSecurityFilter = "security_filter";         // refused
inline constexpr std::string_view kEcdsFilter = "ecds_filter";                 // refused
inline constexpr std::string_view kWasmFilter = "wasm_filter";                 // refused
inline constexpr std::string_view kUnknownFilter = "unknown_filter";           // refused
inline constexpr std::string_view kTelemetryFilter = "telemetry_filter";       // skipped
inline constexpr std::string_view kMtlsOnlyFilter = "mtls_only_filter";        // skipped
inline constexpr std::string_view kInternalListener = "internal_listener";     // skipped
inline constexpr std::string_view kCustomClusterType = "custom_cluster_type";  // skipped
inline constexpr std::string_view kInternalUpstream = "internal_upstream";     // skipped
inline constexpr std::string_view kInvalid = "invalid";  // refused by validate.h's checks

struct Verdict {
  Use use = Use::kServed;
  std::string reason;        // why skipped or refused; empty when served
  std::string reason_class;  // one of the k* classes above; empty when served
  std::string type;          // the type URL that decided (TypedStruct looked through), else name
};

Verdict ClassifyNetworkFilter(const envoy::config::listener::v3::Filter& f);
Verdict ClassifyHttpFilter(
    const envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter& f);
Verdict ClassifyListenerFilter(const envoy::config::listener::v3::ListenerFilter& f);

struct ListenerVerdict {
  // kSkipped: the whole listener (an internal listener, HBONE); kRefused: it carries a
  // filter Sluice must not drop (the first one found names the field).
  Use use = Use::kServed;
  std::string reason;
  std::string reason_class;
  // Filter types (type URL, else name) skipped in a listener that is served, sorted.
  std::vector<std::string> skipped_filters;
};

ListenerVerdict ClassifyListener(const envoy::config::listener::v3::Listener& l);

// kServed or kSkipped (a custom cluster_type, an internal-upstream cluster). Whether a
// served cluster is valid is validate.h's question.
Verdict ClassifyCluster(const envoy::config::cluster::v3::Cluster& c);

// The type URL of `any`, or, for a TypedStruct, the type URL inside it.
std::string EffectiveTypeUrl(const google::protobuf::Any& any);

}  // namespace sluice::config
