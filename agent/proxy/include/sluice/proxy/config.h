// The L7 proxy's runtime configuration: compiled, immutable structures the hot path
// reads (route tables with precompiled RE2 matchers, clusters with endpoints and LB
// tables, listeners with filter chains). A ProxyConfig is built once per config change
// (Compile, from Envoy resources) and published as a shared_ptr; each worker picks the
// new one up between events. Only counters (active requests, outlier state, circuit
// breaker gauges) change after compilation, and those are atomics.
#pragma once

#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <re2/re2.h>

#include "sluice/common/result.h"
#include "sluice/filterchain/match.h"
#include "sluice/proxy/http_codec.h"
#include "sluice/proxy/rbac.h"

namespace sluice::xds {
struct ResourceSet;
}
namespace sluice::config {
struct Snapshot;
struct Diff;
}  // namespace sluice::config

namespace sluice::proxy {

namespace telemetry {
struct StatsConfig;
}
namespace tls {
class ServerContext;
}

namespace telemetry {
struct Workload;
struct Service;
}  // namespace telemetry

using Millis = std::chrono::milliseconds;

// A cluster as routes, mirrors and TCP proxies name it: an id given to its name once per
// process (InternCluster), so a route table or listener resolves its clusters through
// the ProxyConfig in force (ProxyConfig::ClusterAt) rather than by pointer. That lets a
// config change rebuild one cluster without rebuilding, or copying, the route tables
// that name it (CompileUpdate), and lets a route follow a cluster that arrives later.
using ClusterId = uint32_t;
inline constexpr ClusterId kNoCluster = UINT32_MAX;  // resolves to no cluster
ClusterId InternCluster(std::string_view name);
// The id of a name already interned; nullopt: no config of this process ever named it.
std::optional<ClusterId> FindClusterId(std::string_view name);

// ---------------------------------------------------------------- clusters

enum class LbPolicy { kRoundRobin, kLeastRequest, kRandom, kRingHash, kMaglev };
std::string_view LbPolicyName(LbPolicy p);

struct Endpoint {
  sockaddr_storage addr{};
  socklen_t addr_len = 0;
  std::string address;  // "ip:port", as the access log prints it
  uint32_t weight = 1;
  // EDS health_status DEGRADED: used only when no healthy (HEALTHY/UNKNOWN) endpoint
  // is available. UNHEALTHY, DRAINING and TIMEOUT endpoints are not compiled in at all.
  bool degraded = false;
  // istiod's endpoint metadata istio.workload, for Istio's metrics (nullptr: none).
  const telemetry::Workload* istio_workload = nullptr;
  // Runtime state, shared by the workers.
  std::atomic<uint32_t> active_requests{0};
  std::atomic<uint32_t> consecutive_5xx{0};
  std::atomic<int64_t> ejected_until_ms{0};  // steady clock; 0: not ejected
  std::atomic<uint32_t> times_ejected{0};
};

// "ip:port" or "[ip]:port" ("-" for another family) into out; with_port false: the IP
// alone. No allocation (the access log calls it per request).
void FormatAddr(const sockaddr_storage& ss, char* out, std::size_t n, bool with_port = true);
// An IP literal (v4 or v6) with a port, as a socket address; nullopt when `ip` is not one.
std::optional<sockaddr_storage> ParseIp(const std::string& ip, uint16_t port);
// Points an endpoint at `addr`: its address, length and access-log text.
void SetAddress(Endpoint& ep, const sockaddr_storage& addr);

struct CircuitBreakers {
  uint32_t max_connections = 1024;  // Envoy's defaults
  uint32_t max_pending_requests = 1024;
  uint32_t max_requests = 1024;
  uint32_t max_retries = 3;
};

struct OutlierDetection {
  bool enabled = false;
  uint32_t consecutive_5xx = 5;
  Millis base_ejection_time{30000};
  uint32_t max_ejection_percent = 10;
};

// A consistent-hash table over some of a cluster's endpoints: Maglev, built with the
// kernel's algorithm and table size (see lb.h).
struct HashTable {
  std::vector<uint16_t> entries;  // SLUICE_MAGLEV_SIZE entries, each an index into members
  std::vector<uint32_t> members;  // the cluster's endpoint indices in this table, in order
  bool empty() const { return members.empty(); }
};

enum class HashKind { kHeader, kCookie, kSourceIp };
struct HashPolicy {
  HashKind kind = HashKind::kHeader;
  std::string name;  // header (lower case) or cookie name
  bool terminal = false;
};

struct Cluster {
  std::string name;
  ClusterId id = kNoCluster;  // InternCluster(name)
  // Resolved through DNS (STRICT_DNS, LOGICAL_DNS with a name): rebuilt when an answer
  // changes.
  bool dns = false;
  // The service of istiod's cluster metadata, for Istio's metrics (nullptr: none).
  const telemetry::Service* istio_service = nullptr;
  LbPolicy lb = LbPolicy::kLeastRequest;
  std::vector<std::unique_ptr<Endpoint>> endpoints;
  // ORIGINAL_DST: no endpoint list; each connection goes where the client originally
  // connected (ProxyOptions.original_dst on a listener that uses it).
  bool original_dst = false;
  // upstream_bind_config.source_address: upstream connections leave from this address
  // (istiod's 127.0.0.6 for inbound clusters, so the app and iptables tell the proxy's
  // connections apart); port 0: any.
  std::optional<sockaddr_storage> bind_source;
  // The load-balancing tables, built by BuildLbTables (lb.h) when the cluster is compiled.
  // Endpoint weights (load_balancing_weight) as running sums, for weighted random and
  // least-request picks; empty when all weights are equal.
  std::vector<uint64_t> cumulative_weight;
  // Weighted ROUND_ROBIN: one period of a smooth schedule (endpoint indices; each
  // endpoint appears weight/gcd times, spread out rather than in runs); empty when all
  // weights are equal or the policy is not ROUND_ROBIN.
  std::vector<uint16_t> rr_schedule;
  Millis connect_timeout{10000};
  CircuitBreakers limits;
  // The protocol of its upstream requests (Envoy's HttpProtocolOptions in
  // typed_extension_protocol_options, or the deprecated http2_protocol_options /
  // protocol_selection): HTTP/1.1, HTTP/2 (h2c by prior knowledge: Sluice originates no
  // TLS, so no ALPN), or the downstream's (use_downstream_protocol_config: HTTP/2 for a
  // request that came on HTTP/2). Upgrades and TCP proxying are always HTTP/1.1 / TCP.
  enum class Protocol : uint8_t { kHttp1, kHttp2, kDownstream };
  Protocol protocol = Protocol::kHttp1;
  // http2_protocol_options, for HTTP/2 connections (h2_upstream.h). 0: the h2 layer's
  // own default (h2::Options).
  struct Http2 {
    // Streams per connection, further bounded by the server's SETTINGS (Envoy's default).
    uint32_t max_concurrent_streams = 2147483647;
    uint32_t initial_stream_window = 0;
    uint32_t initial_connection_window = 0;
    uint32_t hpack_table_size = 4096;
    uint32_t max_outbound_frames = 0;
    uint32_t max_outbound_control_frames = 0;
    uint32_t max_consecutive_inbound_frames_with_empty_payload = 0;
    uint32_t max_inbound_priority_frames_per_stream = 0;
    uint32_t max_inbound_window_update_frames_per_data_frame_sent = 0;
  } http2;
  // common_http_protocol_options: an HTTP/2 connection without streams this long is closed
  // (Envoy's default 1 h; 0: never), and one that carried this many streams takes no
  // more (0: no limit).
  Millis idle_timeout{3600000};
  uint32_t max_requests_per_connection = 0;
  bool Http2For(bool downstream_h2) const {
    return protocol == Protocol::kHttp2 || (protocol == Protocol::kDownstream && downstream_h2);
  }
  OutlierDetection outlier;
  // MAGLEV and RING_HASH (both served by Maglev, as in the kernel): the table over every
  // endpoint, and, when the cluster has endpoints of both families, one per family for
  // source-IP hashing (the kernel's table for an IPv4 connect holds only IPv4 endpoints).
  HashTable hash_table;
  HashTable hash_table_v4, hash_table_v6;
  // Gauges for circuit breaking, shared by the workers.
  mutable std::atomic<uint32_t> active_connections{0};
  mutable std::atomic<uint32_t> pending_requests{0};
  mutable std::atomic<uint32_t> active_requests{0};
  mutable std::atomic<uint32_t> active_retries{0};
  mutable std::atomic<uint64_t> rr_next{0};
  mutable std::atomic<uint64_t> overflow_total{0};
};

// ---------------------------------------------------------------- routes

struct StringMatcher {
  enum class Kind { kExact, kPrefix, kSuffix, kContains, kRegex };
  Kind kind = Kind::kExact;
  std::string value;
  bool ignore_case = false;
  std::shared_ptr<const RE2> regex;
  bool Matches(std::string_view s) const;
};

struct HeaderMatcher {
  std::string name;  // lower case
  enum class Kind { kString, kPresent };
  Kind kind = Kind::kPresent;
  StringMatcher match;
  bool present = true;  // for kPresent: must be present (true) or absent (false)
  bool invert = false;
};

struct QueryParamMatcher {
  std::string name;
  bool present_only = false;
  StringMatcher match;
};

struct HeaderOp {
  std::string name;  // lower case
  std::string value;
  enum class Action { kAppend, kAddIfAbsent, kOverwriteIfExistsOrAdd, kOverwriteIfExists };
  Action action = Action::kAppend;
};

struct HeaderMutations {
  std::vector<HeaderOp> add;
  std::vector<std::string> remove;  // lower case
  bool empty() const { return add.empty() && remove.empty(); }
};

struct RetryPolicy {
  uint32_t num_retries = 0;
  bool on_5xx = false;
  bool on_gateway_error = false;
  bool on_connect_failure = false;
  bool on_reset = false;
  bool on_refused_stream = false;
  bool on_retriable_status_codes = false;
  std::vector<uint16_t> retriable_status_codes;
  // The gRPC conditions: the response's grpc-status is 1, 4, 8, 13 or 14
  // (RetriableGrpcStatus in retry.h).
  bool on_grpc_cancelled = false;
  bool on_grpc_deadline_exceeded = false;
  bool on_grpc_resource_exhausted = false;
  bool on_grpc_internal = false;
  bool on_grpc_unavailable = false;
  Millis per_try_timeout{0};  // 0: none
  Millis base_interval{25};
  Millis max_interval{250};
};

struct FaultPolicy {
  uint32_t delay_per_million = 0;
  Millis delay{0};
  uint32_t abort_per_million = 0;
  uint16_t abort_status = 0;
  bool active() const { return delay_per_million > 0 || abort_per_million > 0; }
};

struct MirrorPolicy {
  std::string cluster_name;
  ClusterId cluster = kNoCluster;
  uint32_t per_million = 1000000;
  bool disable_shadow_host_suffix = false;
};

struct WeightedCluster {
  std::string name;
  ClusterId cluster = kNoCluster;  // ProxyConfig::ClusterAt null: unknown cluster (503 NC)
  uint32_t weight = 0;
  HeaderMutations request_headers, response_headers;
  std::string host_rewrite;
};

// One entry of upgrade_configs (the connection manager's or a route's): an HTTP/1.1
// Upgrade of this type (lower case, "websocket") is allowed or refused.
struct UpgradeConfig {
  std::string type;
  bool enabled = true;
};

// A route's stream-duration and gRPC timeout fields, applied by grpc::RouteTimeouts
// (grpc.h). nullopt: the field is absent (which differs from 0 in Envoy's rules).
struct StreamTimeouts {
  // RouteAction.max_stream_duration is present (Envoy's "new timeouts": the route's
  // `timeout` no longer applies) with its three fields.
  bool has_max_stream_duration = false;
  std::optional<Millis> max_stream_duration;         // 0: no limit
  std::optional<Millis> grpc_timeout_header_max;     // 0: the header's value, uncapped
  std::optional<Millis> grpc_timeout_header_offset;  // subtracted after the cap
  // The deprecated RouteAction.max_grpc_timeout (istiod's outbound routes) and
  // grpc_timeout_offset.
  std::optional<Millis> max_grpc_timeout;  // 0: the header's value, uncapped
  std::optional<Millis> grpc_timeout_offset;
};

struct RouteAction {
  std::string cluster_name;
  ClusterId cluster = kNoCluster;         // valid when cluster_name is set (weighted empty)
  std::vector<WeightedCluster> weighted;  // non-empty: weighted split
  uint32_t total_weight = 0;
  std::optional<std::string> prefix_rewrite;
  std::shared_ptr<const RE2> regex_rewrite;
  std::string regex_substitution;
  std::string host_rewrite;
  Millis timeout{15000};  // 0: no route timeout
  StreamTimeouts stream_timeouts;
  RetryPolicy retry;
  std::vector<MirrorPolicy> mirrors;
  std::vector<HashPolicy> hash_policies;
  std::vector<UpgradeConfig> upgrades;  // overrides the connection manager's, per type
};

struct RedirectAction {
  std::string scheme, host, path, prefix_rewrite;
  uint32_t port = 0;
  int status = 301;
  bool strip_query = false;
};

// A CORS policy as the envoy.filters.http.cors filter applies it to a route: the
// policies of the route, its virtual host and its route configuration
// (typed_per_filter_config, or the deprecated RouteAction.cors / VirtualHost.cors that
// istiod 1.18 and 1.19 send) merged once at compile time, field by field, the most
// specific level that sets a field winning, as Envoy's filter reads them per request.
struct CorsPolicy {
  std::vector<StringMatcher> allow_origins;  // allow_origin_string_match
  std::string allow_methods, allow_headers, expose_headers, max_age;
  bool allow_credentials = false;
  bool allow_private_network_access = false;
  // A preflight whose origin is not allowed goes upstream (Envoy's default) or is
  // answered here without access-control-allow-origin.
  bool forward_not_matching_preflights = true;
  // filter_enabled / shadow_enabled of the most specific policy (runtime default
  // values; Sluice has no runtime). Shadow mode evaluates the origin for Envoy's stats
  // only and never changes a request, so it has no effect here.
  uint32_t enabled_per_million = 1000000;
  uint32_t shadow_per_million = 0;
  // Envoy's test: a matcher that matches "*" or the origin itself.
  bool OriginAllowed(std::string_view origin) const;
};

struct Route {
  std::string name;
  // match
  enum class PathKind { kPrefix, kPath, kRegex, kPathSeparatedPrefix };
  PathKind path_kind = PathKind::kPrefix;
  std::string path;
  std::shared_ptr<const RE2> path_regex;
  bool case_sensitive = true;
  std::vector<HeaderMatcher> headers;
  std::vector<QueryParamMatcher> query_params;
  // action
  enum class Kind { kRoute, kRedirect, kDirectResponse };
  Kind kind = Kind::kRoute;
  RouteAction action;
  RedirectAction redirect;
  int direct_status = 200;
  std::string direct_body;
  HeaderMutations request_headers, response_headers;
  std::optional<FaultPolicy> fault;  // per-route override of the listener's fault filter
  // The CORS policy in force on this route (kRoute only); used when the connection
  // manager has the cors filter. Null: none.
  std::shared_ptr<const CorsPolicy> cors;
};

struct VirtualHost {
  std::string name;
  std::vector<std::string> domains;
  std::vector<Route> routes;
  HeaderMutations request_headers, response_headers;
  // require_tls (Envoy's, istiod's httpsRedirect): a request on a connection without TLS
  // (kAll), or one that is also not internal (kExternalOnly: no "x-envoy-internal: true"),
  // is answered 301 with location https://<host><path>, before any route.
  enum class TlsRequirement { kNone, kExternalOnly, kAll };
  TlsRequirement require_tls = TlsRequirement::kNone;
};

struct RouteTable {
  std::string name;
  std::vector<VirtualHost> vhosts;
  bool ignore_port = false;
  HeaderMutations request_headers, response_headers;
  // Domain index: exact (lower case) → vhost, wildcard lists longest first.
  std::map<std::string, std::size_t, std::less<>> exact;
  std::vector<std::pair<std::string, std::size_t>> suffixes;  // "*.foo.com" → ".foo.com"
  std::vector<std::pair<std::string, std::size_t>> prefixes;  // "foo.*" → "foo."
  std::optional<std::size_t> catch_all;

  // The clusters its routes mirror to (a mirror to a cluster that is not there fails the
  // table, so a change that removes one recompiles the tables that name it).
  std::vector<std::string> mirror_clusters;

  void BuildIndex();
  // Envoy's order: exact, longest suffix wildcard, longest prefix wildcard, "*".
  // strip_port: compare without ":port" (ignore_port here, or the connection manager's
  // strip_any_host_port).
  const VirtualHost* FindVirtualHost(std::string_view host) const {
    return FindVirtualHost(host, ignore_port);
  }
  const VirtualHost* FindVirtualHost(std::string_view host, bool strip_port) const;
};

// Request attributes a route matches on.
const Route* MatchRoute(const VirtualHost& vh, const http::RequestHead& req);
bool RouteMatches(const Route& r, const http::RequestHead& req);

// ---------------------------------------------------------------- listeners

// An envoy.filters.http.rbac filter of a connection manager (in http_filters order; all
// run before the fault and CORS filters, as istiod orders them).
struct HttpRbac {
  std::string name;  // the filter's name in http_filters
  RbacFilter filter;
};

// An envoy.filters.network.rbac filter of a chain, before its terminal filter. `proto` is
// the filter's config as received, for what reads more than the compiled engine (the
// node agent's projection of L4-only rules into the kernel).
struct NetworkRbac {
  std::string name;
  RbacFilter filter;
  std::shared_ptr<const envoy::extensions::filters::network::rbac::v3::RBAC> proto;
};

struct HttpSettings {
  std::string route_config_name;
  // From RDS (route_tables[route_config_name], rebound when that table changes) rather
  // than the connection manager's own route_config.
  bool rds = false;
  // Envoy's downstream address rules, for the RBAC remote_ip principal: with
  // use_remote_address false the client is the XFF entry xff_num_trusted_hops from the
  // right; with it true, the peer (or, with trusted hops, the XFF entry hops-1 from it).
  bool use_remote_address = false;
  uint32_t xff_num_trusted_hops = 0;
  std::vector<HttpRbac> rbac;
  std::shared_ptr<const RouteTable> routes;
  FaultPolicy fault;  // from an envoy.filters.http.fault filter
  // An envoy.filters.http.cors filter is in http_filters (routes' CorsPolicy apply), and
  // whether it comes before the fault filter (istiod puts it after).
  bool cors = false;
  bool cors_before_fault = false;
  bool strip_any_host_port = false;
  http::Limits limits;
  std::size_t max_request_body = 1024 * 1024;  // Listener per_connection_buffer_limit_bytes
  // HCM common_http_protocol_options.idle_timeout: a keep-alive connection with no
  // request in flight is closed after this long (Envoy's default 1 h; 0: never).
  Millis idle_timeout{3600 * 1000};
  // The HCM's timeouts for a request (0: none). Where Envoy has none by default, Sluice
  // has one, so a client cannot hold a connection by sending slowly:
  // - request_headers_timeout: from a request's first byte until its head is complete
  //   (408; Envoy: none; Sluice: 10 s);
  // - request_timeout: from its first byte until the whole request (body included) is
  //   in (408; Envoy: none; Sluice: 60 s);
  // - stream_idle_timeout: nothing received or sent for the request for this long
  //   (408 before the response started, else a reset; flag SI; Envoy's 5 min).
  Millis request_headers_timeout{10000};
  Millis request_timeout{60000};
  Millis stream_idle_timeout{300000};
  // common_http_protocol_options.max_stream_duration (0: none): a stream's limit where
  // its route sets none (grpc::RouteTimeouts).
  Millis max_stream_duration{0};
  // upgrade_configs: the Upgrade types let through (a route may override per type);
  // any other Upgrade request is answered 403, as Envoy does.
  std::vector<UpgradeConfig> upgrades;
  // codec_type: AUTO serves HTTP/1.1 and HTTP/2 (h2c by its preface, or ALPN h2 after
  // TLS); HTTP1 never HTTP/2 (the preface is a 400); HTTP2 only HTTP/2.
  enum class Codec : uint8_t { kAuto, kHttp1, kHttp2 };
  Codec codec = Codec::kAuto;
  // http2_protocol_options (0: unset, h2::Options' default: 100 streams, 64 KiB per
  // stream, 1 MiB per connection; Envoy's own defaults are 2^31-1 and 256 MiB, which let
  // one client park that much in the proxy).
  uint32_t h2_max_concurrent_streams = 0;
  uint32_t h2_initial_stream_window = 0;
  uint32_t h2_initial_connection_window = 0;
  // The routes' virtual host is found with ":port" stripped.
  bool StripPort() const { return strip_any_host_port || (routes && routes->ignore_port); }
};

// Envoy's rule: the route's entry for the type decides when it has one, else the
// connection manager's; a type in neither is refused. (`type` in any case.)
bool UpgradeAllowed(std::string_view type, const HttpSettings& hcm, const RouteAction* route);

struct TcpSettings {
  std::string stat_prefix;
  std::string cluster_name;
  ClusterId cluster = kNoCluster;  // valid when cluster_name is set
  std::vector<WeightedCluster> weighted;
  uint32_t total_weight = 0;
};

struct FilterChain {
  std::string name;
  // The chain's istio.stats filter (HTTP in the connection manager, or network before
  // tcp_proxy), compiled and interned; nullptr: the chain carries none, and, as in Envoy,
  // records none of Istio's metrics.
  const telemetry::StatsConfig* istio_stats = nullptr;
  // Its filter_chain_match, as the filter-chain matcher (filterchain::Select) reads it.
  filterchain::Match match;
  bool is_http = true;
  // Network rbac filters, in order, evaluated once the chain is chosen (Envoy evaluates
  // them on the first byte; the facts they read are all known by then).
  std::vector<NetworkRbac> network_rbac;
  HttpSettings http;
  TcpSettings tcp;
  bool access_log = false;
  // The chain's DownstreamTlsContext (transport_socket envoy.transport_sockets.tls), with
  // its SDS secrets resolved: the session terminates TLS with it before the HTTP codec.
  // nullptr: plaintext.
  std::shared_ptr<const tls::ServerContext> tls;
  // A chain Sluice cannot serve yet (a transport_socket that terminates TLS, issue 18):
  // a connection that selects it is closed, counted and logged with this reason, never
  // passed through as plaintext. Empty: served.
  std::string fail_closed;
};

// A listener filter that reads the first bytes (tls_inspector, http_inspector), and the
// destination ports its filter_disabled predicate turns it off for.
struct Inspector {
  bool enabled = false;
  std::vector<std::pair<uint32_t, uint32_t>> disabled_ports;  // [start, end)
  bool On(uint16_t destination_port) const;
};

struct ListenerConfig {
  std::string name;
  // The Listener resource it comes from (name is "resource~address" for the entries of
  // additional_addresses).
  std::string resource;
  std::string address = "127.0.0.1";
  uint16_t port = 0;
  std::vector<FilterChain> chains;
  std::vector<filterchain::Match> matches;  // chains[i].match, as Select reads them
  std::optional<FilterChain> default_chain;
  // The original_dst listener filter (or use_original_dst, which implies it in Envoy):
  // the connection's local address, for chain matching and logging, becomes its
  // original destination (the original_dst hook, SO_ORIGINAL_DST by default).
  bool restore_original_dst = false;
  // use_original_dst: the hand-over. A connection whose restored destination is another
  // listener's address (bind_to_port false: istiod's outbound listeners 0.0.0.0_80 and
  // the like) goes to that listener; with none, this listener keeps it.
  bool use_original_dst = false;
  // bind_to_port false: no socket of its own; it receives connections handed over by a
  // use_original_dst listener whose original destination matches its address and port.
  bool bind_to_port = true;
  // A listener whose socket may be impossible here (the in-pod IPv6 capture listener in
  // a pod without IPv6): failing to open it is logged, not an error of the config.
  bool optional = false;
  Inspector tls_inspector, http_inspector;
  // listener_filters_timeout (Envoy's default 15 s; 0: none) and what to do when the
  // inspectors have not finished by then: choose with what is known, or close.
  Millis filters_timeout{15000};
  bool continue_on_filters_timeout = false;
  // The listener's own access_log: a connection no chain takes is logged (flag NR).
  bool access_log = false;
  // Envoy's filter-chain match over what is known of a connection (filterchain::Select),
  // falling back to the default chain. nullptr with *decided true: no chain and no
  // default (the connection is closed, NR). *decided false: a fact left unknown (SNI,
  // transport or application protocol) could change the choice; read more first.
  const FilterChain* Select(const filterchain::Connection& c, bool* decided) const;
};

// A resource Compile could not build: left out, the rest served. kind: "listener",
// "cluster".
struct Refused {
  std::string kind, name, reason;
};

struct ProxyConfig {
  std::vector<ListenerConfig> listeners;
  // Problems that did not reject the config (a DNS cluster whose host does not
  // resolve: it has no endpoints and answers 503 UH), each naming its resource.
  std::vector<std::string> warnings;
  // Listeners and clusters left out, each with its reason; routes to a refused cluster
  // behave as to an unknown one (503 NC, TCP closed).
  std::vector<Refused> refused;
  // The clusters by ClusterId (null: none of that name here). A cluster object is shared
  // by consecutive configs while its resources do not change, so its pooled upstream
  // connections, circuit-breaker gauges and outlier state carry over a config swap.
  std::vector<std::shared_ptr<Cluster>> cluster_slots;
  std::size_t cluster_count = 0;
  std::map<std::string, std::shared_ptr<RouteTable>, std::less<>> route_tables;
  const Cluster* ClusterAt(ClusterId id) const {
    return id < cluster_slots.size() ? cluster_slots[id].get() : nullptr;
  }
  const Cluster* FindCluster(std::string_view name) const;

  // What the compile that made this config built (the rest it took over from the config
  // before, unchanged objects shared): clusters, route tables and listeners compiled from
  // their resources, and listeners copied to point at a rebuilt route table.
  std::size_t built_clusters = 0, built_routes = 0, built_listeners = 0, rebound_listeners = 0;

  // Per resource, what the compile said of it (for the next CompileUpdate, which redoes
  // only the resources it rebuilds; `warnings` and `refused` are these, clusters first).
  std::map<std::string, std::vector<std::string>, std::less<>> cluster_warnings, listener_warnings;
  std::map<std::string, std::string, std::less<>> refused_clusters, refused_listeners;
};

class DnsCache;

// Builds the runtime configuration from Envoy resources. A listener or cluster it
// cannot build is left out and named in `refused` with its reason (Envoy's per-resource
// acceptance); the rest is served. Reasons name the resource and field ("listener x:
// filter_chains[2]: ..."); an error is returned only for what fails the whole config. DNS
// clusters' names come from `dns` (nullptr: DnsCache::Default()); one not answered yet
// leaves its cluster without those endpoints and a warning — recompile when the cache
// says an answer changed.
Result<std::shared_ptr<const ProxyConfig>> Compile(const xds::ResourceSet& resources,
                                                   DnsCache* dns = nullptr);
// The same from the agent's snapshot (its resources held by pointer).
Result<std::shared_ptr<const ProxyConfig>> Compile(const config::Snapshot& resources,
                                                   DnsCache* dns = nullptr);

// `prev` (compiled from some snapshot) brought to `next`, where `diff` names what differs
// between the two (config::Diff, as the config store or ApplyEdit gives it). Its cost
// follows the change: only the clusters whose Cluster or ClusterLoadAssignment changed,
// the route tables that changed (or mirror to a cluster that went away) and the listeners
// that changed are compiled; every other cluster and route table is the same object as in
// `prev`, and the other listeners are copied, re-pointed at rebuilt route tables. The
// result is what Compile(next) would give. `dns_changed`: DNS clusters to rebuild as well
// (their answer changed).
Result<std::shared_ptr<const ProxyConfig>> CompileUpdate(
    const ProxyConfig& prev, const config::Snapshot& next, const config::Diff& diff,
    DnsCache* dns = nullptr, const std::vector<std::string>& dns_changed = {});
// The DNS clusters of a config, by name (for CompileUpdate's dns_changed).
std::vector<std::string> DnsClusters(const ProxyConfig& cfg);

// Reads an Envoy-shaped JSON document {"listeners": [...], "routes": [...],
// "clusters": [...], "endpoints": [...]}, each element the proto3 JSON of a Listener,
// RouteConfiguration, Cluster or ClusterLoadAssignment, or an Envoy admin /config_dump
// (config_json.h: LoadConfigJson, strict — the first resource that does not parse is the
// error).
Result<xds::ResourceSet> ParseResourceSetJson(std::string_view json);

}  // namespace sluice::proxy
