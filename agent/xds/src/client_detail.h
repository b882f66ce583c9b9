// Helpers both ADS client protocols share (ads_client.cc, ads_client_delta.cc).
#pragma once

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <map>
#include <string>
#include <string_view>

#include "sluice/config/validate.h"
#include "sluice/xds/ads_client.h"

namespace sluice::xds::client_detail {

using envoy::config::cluster::v3::Cluster;
using envoy::config::endpoint::v3::ClusterLoadAssignment;
using envoy::config::listener::v3::Listener;
using envoy::config::route::v3::RouteConfiguration;
using envoy::extensions::transport_sockets::tls::v3::Secret;

inline const std::string& NameOf(const Cluster& c) {
  return c.name();
}
inline const std::string& NameOf(const ClusterLoadAssignment& c) {
  return c.cluster_name();
}
inline const std::string& NameOf(const Listener& l) {
  return l.name();
}
inline const std::string& NameOf(const RouteConfiguration& r) {
  return r.name();
}
inline const std::string& NameOf(const Secret& s) {
  return s.name();
}

inline config::Acceptance AcceptOne(const Cluster& c) {
  return config::AcceptCluster(c);
}
inline config::Acceptance AcceptOne(const ClusterLoadAssignment& c) {
  return config::AcceptEndpoints(c);
}
inline config::Acceptance AcceptOne(const Listener& l) {
  return config::AcceptListener(l);
}
inline config::Acceptance AcceptOne(const RouteConfiguration& r) {
  return config::AcceptRoute(r);
}
inline config::Acceptance AcceptOne(const Secret& s) {
  return config::AcceptSecret(s);
}

// Envoy's NACK text for refused resources: LDS "Error adding/updating listener(s) a: why\n
// b: why\n", CDS (and here EDS, RDS) the names joined by ", ".
inline std::string RefusalMessage(std::string_view type,
                                  const std::map<std::string, ResourceIssue>& r) {
  std::string out;
  if (type == kListenerType) {
    out = "Error adding/updating listener(s) ";
    for (const auto& [name, issue] : r)
      out += fmt::format("{}: {}\n", name, issue.reason);
    return out;
  }
  std::string_view kind = type == kClusterType    ? "cluster(s)"
                          : type == kEndpointType ? "endpoints"
                          : type == kSecretType   ? "secret(s)"
                                                  : "route(s)";
  out = fmt::format("Error adding/updating {} ", kind);
  bool first = true;
  for (const auto& [name, issue] : r) {
    out += fmt::format("{}{}: {}", first ? "" : ", ", name, issue.reason);
    first = false;
  }
  return out;
}

// "listener" for the listener type URL, and so on, for logs.
inline std::string_view ShortType(std::string_view type) {
  if (type == kClusterType)
    return "cluster";
  if (type == kEndpointType)
    return "endpoints";
  if (type == kListenerType)
    return "listener";
  if (type == kSecretType)
    return "secret";
  return "route";
}

// Responses with at least this many resources do not keep their storage for the next.
inline constexpr int kLargeResponse = 1000;

// One stream of either protocol until it breaks: `state`'s first requests, then each
// response handed to it and its answers (ACK/NACK, new subscriptions) written, with
// `publish` (the client's status) run before they go out. True when a response came.
template <class Response, class Stream, class State, class Publish>
bool PumpStream(Stream& stream, State& state, std::string_view server, std::string_view protocol,
                Publish publish) {
  bool ok = true;
  for (auto& req : state.OnStreamStart())
    ok = ok && stream.Write(req);
  bool got_response = false;
  Response resp;
  while (ok && stream.Read(&resp)) {
    if (!got_response)
      spdlog::info("xds: connected to {} ({})", server, protocol);
    got_response = true;
    auto reqs = state.OnResponse(resp);
    publish();  // before the ACK/NACK: whoever sees it sees this status
    for (auto& req : reqs) {
      if (!stream.Write(req))
        break;
    }
    // A large response (an initial sync, a full push): the message's own storage, which
    // the next Read would otherwise keep reusing, is freed (the allocator hands it back,
    // sluice/common/release_memory.h).
    if (resp.resources_size() >= kLargeResponse)
      Response().Swap(&resp);
  }
  return got_response;
}

}  // namespace sluice::xds::client_detail
