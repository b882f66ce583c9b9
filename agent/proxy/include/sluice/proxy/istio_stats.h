// Istio's standard metrics (istio_requests_total and the rest), as Istio's stats filter
// (istio/proxy istio_stats) labels them, kept by the proxy and rendered as Prometheus
// text for the agent's /stats/prometheus.
//
// An Envoy sidecar learns its peer through metadata exchange; here the agent knows both
// ends: a pod's own identity (its namespace, name and labels, IstioStats' `self`), the
// upstream cluster's service (istiod's cluster metadata istio.services) and endpoint's
// workload (istiod's endpoint metadata istio.workload), and every pod of the node by
// address (PeerDirectory), which is what metadata exchange would have told for them.
//
// Cost: identities are interned once (when a config is compiled or a pod opens) and
// never freed, so the per-request key is a handful of pointers and integers; the
// request finds its series in a hash map (one uncontended lock: a pod's proxy has one
// worker) and adds to relaxed atomics. Label strings exist only when rendered. A proxy
// keeps at most `max_series` series; beyond it, samples go to one overflow series per
// reporter and protocol whose other labels say "overflow".
//
// As with Envoy, a listener chain records Istio's metrics only if it carries istiod's
// `istio.stats` filter (HTTP or network), and that filter's stats.PluginConfig decides
// what is recorded: `drop` leaves a metric out, `tags_to_remove` a label, `dimensions`
// set a label's value (CompileStatsConfig). The compiled config is interned, and a
// series' key points at it: recording skips dropped metrics (a bit test); labels are
// removed and set when the series is rendered, where series that then coincide are
// summed, as Envoy's stats do for equal tag sets.
#pragma once

#include <sys/socket.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "sluice/common/result.h"
#include "sluice/loader/ip.h"

namespace google::protobuf {
class Any;
}
namespace envoy::config::core::v3 {
class Metadata;
}
namespace envoy::config::cluster::v3 {
class Cluster;
}

namespace sluice::proxy::telemetry {

// A workload's identity, as Istio's peer metadata carries it. Empty: unknown.
struct Workload {
  std::string name, ns, app, version, canonical_service, canonical_revision, cluster;
  auto operator<=>(const Workload&) const = default;
};
// The service a cluster serves (istiod's cluster metadata istio.services[0]); for
// istiod's catch-all clusters (PassthroughCluster, BlackHoleCluster,
// InboundPassthroughCluster*) only `name`, the cluster's name, as Istio reports them.
struct Service {
  std::string host, name, ns;
  auto operator<=>(const Service&) const = default;
};

// Interned: equal values give the same pointer, valid for the life of the process.
const Workload* Intern(const Workload& w);
const Service* Intern(const Service& s);

// istiod's endpoint metadata filter_metadata.istio.workload,
// "name;namespace;canonical_service;canonical_revision;cluster"; nullptr without it.
const Workload* EndpointWorkload(const envoy::config::core::v3::Metadata& md);
// The cluster's service; nullptr when it has no istio.services and is not one of
// istiod's catch-all clusters.
const Service* ClusterService(const envoy::config::cluster::v3::Cluster& c);

// A pod's identity as Istio derives it (pkg/kube GetWorkloadMetaFromPod and
// labels.CanonicalService): the workload name is the label
// service.istio.io/workload-name, else the Deployment's name (the pod's name before
// "-<pod-template-hash>-"), else the name of whatever generated the pod (its name
// before a generated "-xxxxx" suffix), else the pod's name; the canonical service is the
// first of service.istio.io/canonical-name, app.kubernetes.io/name, app, else the
// workload; the revision the first of service.istio.io/canonical-revision,
// app.kubernetes.io/version, version, else "latest"; app and version are the labels of
// those names. `cluster`: the cluster ID (Istio's default "Kubernetes").
Workload PodWorkload(const std::string& ns, const std::string& name,
                     const std::map<std::string, std::string>& labels,
                     const std::string& cluster = "Kubernetes");

// The node's pods by address (the L7 process's pods): the peer a connection came from,
// and the pod an endpoint is. Thread-safe; readers take a shared lock.
class PeerDirectory {
 public:
  void Set(const IpAddress& ip, const Workload* w);
  void Erase(const IpAddress& ip, const Workload* w);  // only if it still maps to w
  const Workload* Find(const IpAddress& ip) const;
  const Workload* Find(const sockaddr_storage& addr) const;

 private:
  struct Hash {
    std::size_t operator()(const IpAddress& a) const;
  };
  mutable std::shared_mutex mu_;
  std::unordered_map<IpAddress, const Workload*, Hash> by_ip_;
};

// Envoy's default histogram buckets, which Istio's histograms use (no
// sidecar.istio.io/statsHistogramBuckets here).
inline constexpr std::array<double, 19> kBuckets = {
    0.5,  1,    5,     10,    25,    50,     100,    250,     500,    1000,
    2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000};

struct Histogram {
  std::array<std::atomic<uint64_t>, kBuckets.size()> buckets{};  // not cumulative
  std::atomic<uint64_t> count{0}, sum{0};
  void Record(uint64_t v);
};

// Istio's standard metrics, by the names its stats filter's config uses (PluginConfig
// MetricConfig.name; the Prometheus name is "istio_" + it). gRPC's message counters
// (request_messages_total, response_messages_total) are never recorded here (no gRPC
// streaming is counted): a config naming them changes nothing.
enum Metric : uint8_t {
  kRequestsTotal,
  kRequestDuration,
  kRequestBytes,
  kResponseBytes,
  kTcpSentBytes,
  kTcpReceivedBytes,
  kTcpOpened,
  kTcpClosed,
  kMetricCount,
};
inline constexpr std::array<std::string_view, kMetricCount> kMetricNames = {
    "requests_total",
    "request_duration_milliseconds",
    "request_bytes",
    "response_bytes",
    "tcp_sent_bytes_total",
    "tcp_received_bytes_total",
    "tcp_connections_opened_total",
    "tcp_connections_closed_total"};

// Istio's standard labels (the stats filter's tag names); a label's bit in a removal
// mask is its index here.
inline constexpr std::array<std::string_view, 25> kTagNames = {"reporter",
                                                               "source_workload",
                                                               "source_workload_namespace",
                                                               "source_principal",
                                                               "source_app",
                                                               "source_version",
                                                               "source_canonical_service",
                                                               "source_canonical_revision",
                                                               "source_cluster",
                                                               "destination_workload",
                                                               "destination_workload_namespace",
                                                               "destination_principal",
                                                               "destination_app",
                                                               "destination_version",
                                                               "destination_service",
                                                               "destination_service_name",
                                                               "destination_service_namespace",
                                                               "destination_canonical_service",
                                                               "destination_canonical_revision",
                                                               "destination_cluster",
                                                               "request_protocol",
                                                               "response_flags",
                                                               "connection_security_policy",
                                                               "response_code",
                                                               "grpc_response_status"};
// A standard label's index in kTagNames; -1 for another name.
int TagIndex(std::string_view name);

// One chain's istio.stats filter, compiled (stats.PluginConfig, as istio/proxy's filter
// reads it). Interned: equal configs are one pointer, valid for the life of the process,
// so series recorded under a config outlive the config update that replaced it.
struct StatsConfig {
  // What one metric's labels become: standard labels left out (bit per kTagNames index),
  // standard labels given another value (in place), and labels added after Istio's
  // (in the config's order).
  struct MetricTags {
    uint32_t removed = 0;
    std::vector<std::pair<uint8_t, std::string>> replaced;
    std::vector<std::pair<std::string, std::string>> added;
    bool Changes() const { return removed || !replaced.empty() || !added.empty(); }
    auto operator<=>(const MetricTags&) const = default;
  };
  uint32_t drop = 0;  // bit per Metric: not recorded, not rendered
  std::array<MetricTags, kMetricCount> tags;
  bool Dropped(Metric m) const { return drop & (1u << m); }
  auto operator<=>(const StatsConfig&) const = default;
};
const StatsConfig* Intern(const StatsConfig& c);

// An istio.stats filter's typed_config (stats.PluginConfig, or a TypedStruct of one),
// compiled. What the proxy cannot do exactly is an error naming the field (and the
// metric and tag): a dimension whose value is not a CEL string literal, custom metric
// definitions, the waypoint reporter (SERVER_GATEWAY), a field this schema does not
// know. Ignored, as having no effect on what is counted: tcp_reporting_duration (TCP
// connections are reported when they close, not every interval), the deprecated
// rotation_interval and graceful_deletion_interval (istio/proxy ignores them too),
// MetricConfig.match (not implemented by istio/proxy either) and
// disable_host_header_fallback (Sluice never falls back to the Host header).
Result<const StatsConfig*> CompileStatsConfig(const google::protobuf::Any& typed_config);

enum Kind : uint8_t {
  kInbound = 1,   // reporter "destination" (the pod's inbound side), else "source"
  kTcp = 2,       // request_protocol "tcp", else "http"
  kOverflow = 4,  // the series past max_series
  kGrpc = 8,      // request_protocol "grpc" (a gRPC request), with grpc_response_status
};

// One label set's key: every pointer interned (or nullptr: unknown).
struct SeriesKey {
  const Workload* self = nullptr;        // this pod
  const Workload* peer_local = nullptr;  // the other end, a pod of this node
  const Workload* peer_eds = nullptr;    // the other end from the endpoint's metadata
  const Service* service = nullptr;
  const StatsConfig* stats = nullptr;  // the chain's istio.stats config (nullptr: none)
  uint32_t flags = 0;                  // Envoy's response flags (access_log.h bits)
  uint16_t code = 0;                   // HTTP status (0: none)
  int32_t grpc_status = -1;            // a gRPC request's grpc-status (-1: none)
  uint8_t kind = 0;
  bool operator==(const SeriesKey&) const = default;
};
struct SeriesKeyHash {
  std::size_t operator()(const SeriesKey& k) const;
};

struct Series {
  SeriesKey key;
  std::atomic<uint64_t> requests{0};
  Histogram duration_ms, request_bytes, response_bytes;
  std::atomic<uint64_t> tcp_opened{0}, tcp_closed{0}, tcp_sent{0}, tcp_received{0};
};

// What one series holds, its labels resolved (Istio's label names and order).
struct Sample {
  std::vector<std::pair<std::string_view, std::string>> labels;  // without response_code etc.
  const StatsConfig* stats = nullptr;  // what its chain's istio.stats drops and relabels
  bool tcp = false;
  uint64_t requests = 0;
  struct Hist {
    std::array<uint64_t, kBuckets.size()> buckets{};  // not cumulative
    uint64_t count = 0, sum = 0;
  } duration_ms, request_bytes, response_bytes;
  uint64_t tcp_opened = 0, tcp_closed = 0, tcp_sent = 0, tcp_received = 0;
};

// Istio's label values for a key (reporter, source_*, destination_*, request_protocol,
// response_code and grpc_response_status for HTTP, response_flags,
// connection_security_policy).
std::vector<std::pair<std::string_view, std::string>> Labels(const SeriesKey& k);
// Envoy's short response-flag string ("-" for none; "UH,UF" in Envoy's order).
std::string FlagString(uint32_t flags);

// One pod's series. Shared by its proxy (which records) and its owner (which collects);
// outlives proxy restarts within the process, so counters only grow while it lives.
class IstioStats {
 public:
  IstioStats(const Workload* self, std::shared_ptr<const PeerDirectory> peers,
             std::size_t max_series = 2000);

  // This pod's identity (its labels may change); later samples carry the new one.
  void SetSelf(const Workload* self) { self_.store(self, std::memory_order_relaxed); }
  const Workload* self() const { return self_.load(std::memory_order_relaxed); }
  const PeerDirectory* peers() const { return peers_.get(); }

  // The series for a key (self is filled in here), created on first use.
  Series& Get(SeriesKey key);

  // Every series' values now, labels resolved.
  void Collect(std::vector<Sample>* out) const;
  std::size_t size() const;

 private:
  std::atomic<const Workload*> self_;
  std::shared_ptr<const PeerDirectory> peers_;
  const std::size_t max_series_;
  mutable std::mutex mu_;
  std::unordered_map<SeriesKey, std::unique_ptr<Series>, SeriesKeyHash> series_;
};

// Prometheus text (format 0.0.4, as Envoy's /stats/prometheus): for each metric one
// `# TYPE` line, then its samples; series with equal labels (two pods of one workload,
// or series that a removed label made equal) are summed. A metric a sample's config
// drops is left out for it; its removed labels are absent and its set ones replaced. Histograms as
// `_bucket{...,le="..."}` (cumulative, then "+Inf"), `_sum`,
// `_count`.
std::string RenderPrometheus(const std::vector<Sample>& samples);

}  // namespace sluice::proxy::telemetry
