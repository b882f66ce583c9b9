// NodeAdminRoutes: the node agent's admin pages (served by AdminServer, admin.h).
//
//   /ready        200 once a configuration reached the kernel and no stream (the node's
//                 or a view's) has a refused listener, and (with the API server) the first
//                 lists of pods and namespaces are applied; else 503, saying why
//   /metrics      Prometheus: config generation, kernel services, features in use and
//                 connect counters, xDS streams (the node's and each view's) with their
//                 refused and skipped resources and skipped filter types, pods, the L7
//                 process and every pod proxy's counters
//   /config_dump  the node's config and the kernel's services; ?namespace=NS[&pod=NAME]:
//                 what that view's pods run in the L7 process
//   /pods         the pods the agent knows, enrolled or not, and their L7 listeners
//   /kube         with labels from the API server: its reflectors (synced, lists, 410s,
//                 watch events, the last error)
//   /stats/prometheus  Istio's standard metrics of the pods' proxies (istio_requests_total,
//                 ...; docs/telemetry.md), as an Envoy sidecar serves them; 503 when the
//                 L7 process does not answer
//
// The routes only read: the kernel's state through ConfigFanout (under its lock), the
// rest from the objects that own it.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "admin.h"
#include "config_fanout.h"
#include "l7_supervisor.h"
#include "node_agent.h"
#include "sluice/config/store.h"
#include "sluice/loader/dataplane.h"
#include "sluice/xds/ads_client.h"
#include "view_streams.h"

namespace sluice::agent {

struct NodeAdminParts {
  const config::ConfigStore& store;  // the node's stream
  const xds::AdsClient& client;      // ... and its client
  const ViewStreams& streams;
  const ConfigFanout& fanout;
  Dataplane& dataplane;
  NodeAgent& node;
  L7Supervisor& l7;
  uint16_t proxy_port = 0;  // the capture listeners' (0: no L7 proxies)
  // With labels from the API server: why the agent is not ready for labels yet ("" when
  // it is), and the reflectors' status (/kube, sluice_kube_* in /metrics).
  std::function<std::string()> labels_not_ready;
  std::function<nlohmann::json()> kube_status;
};

class NodeAdminRoutes {
 public:
  explicit NodeAdminRoutes(NodeAdminParts parts) : p_(parts) {}

  // Adds the routes above to `server` (before it starts); they use this object.
  void Register(AdminServer& server);

  AdminReply Ready() const;
  AdminReply Metrics() const;
  AdminReply ConfigDump(const std::string& query) const;
  AdminReply Pods() const;
  AdminReply Kube() const;
  AdminReply IstioStats() const;

 private:
  NodeAdminParts p_;
};

}  // namespace sluice::agent
