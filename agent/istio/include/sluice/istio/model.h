// Typed model of the Kubernetes and Istio resources the local control plane reads.
//
// Only the fields Sluice acts on are modelled; the loader (loader.h) fills these from
// YAML and rejects wrong types and values with the field's path. Optional Istio fields
// use std::optional so "unset" (Istio's defaults apply) differs from an explicit zero.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "sluice/common/result.h"

namespace sluice::istio {

using Labels = std::map<std::string, std::string>;

// Where a resource came from, for error messages: "dir/x.yaml: document 2 (Kind ns/name)".
struct Origin {
  std::string file;
  int document = 0;  // 1-based index of the YAML document in the file
  std::string Describe(const std::string& kind, const std::string& ns,
                       const std::string& name) const;
};

struct Meta {
  std::string name;
  std::string ns;  // "default" when the document has none
  Labels labels;
  std::map<std::string, std::string> annotations;
  Origin origin;
  std::string Key() const { return ns + "/" + name; }
};

// ---------------------------------------------------------------- Kubernetes

struct Namespace {
  Meta meta;
};

struct ServicePort {
  std::string name;
  uint32_t port = 0;
  uint32_t target_port = 0;      // 0: same as port, or named (below)
  std::string target_port_name;  // targetPort given as a container port name
  std::string protocol = "TCP";  // Kubernetes L4 protocol
  std::string app_protocol;
};

struct Service {
  Meta meta;
  Labels selector;
  std::vector<ServicePort> ports;
  std::string cluster_ip;  // "" or "None" (headless)
};

struct ContainerPort {
  std::string name;
  uint32_t port = 0;
};

// A Pod, or a Deployment's pod template. Deployments have no addresses in a manifest;
// the annotation sluice.io/pod-ips ("10.0.0.5,10.0.0.6") gives the replicas' IPs so a
// plain manifest can describe a local cluster.
struct Workload {
  std::string kind;  // "Pod" or "Deployment"
  Meta meta;
  Labels pod_labels;  // the pod's labels (template labels for a Deployment)
  std::vector<std::string> ips;
  std::vector<ContainerPort> container_ports;
};

struct EndpointAddress {
  std::string ip;
  std::string target_pod;  // targetRef name when kind is Pod
  Labels labels;           // EndpointSlice has none; filled from the Pod when known
};

struct EndpointPort {
  std::string name;
  uint32_t port = 0;
};

// Endpoints and EndpointSlice, both reduced to addresses x ports for one Service.
struct EndpointGroup {
  std::string kind;
  Meta meta;
  std::string service;  // Endpoints: its own name; EndpointSlice: kubernetes.io/service-name
  std::vector<EndpointAddress> addresses;
  std::vector<EndpointPort> ports;
};

// ---------------------------------------------------------------- Istio

struct PortSelector {
  uint32_t number = 0;
};

struct Destination {
  std::string host;
  std::string subset;
  std::optional<uint32_t> port;
};

struct StringMatch {
  enum class Kind { kExact, kPrefix, kRegex };
  Kind kind = Kind::kExact;
  std::string value;
};

struct HeaderOps {
  std::vector<std::pair<std::string, std::string>> set;
  std::vector<std::pair<std::string, std::string>> add;
  std::vector<std::string> remove;
  bool empty() const { return set.empty() && add.empty() && remove.empty(); }
};

struct Headers {
  HeaderOps request;
  HeaderOps response;
};

struct HttpMatch {
  std::string name;
  std::optional<StringMatch> uri, scheme, method, authority;
  std::vector<std::pair<std::string, StringMatch>> headers;
  std::vector<std::pair<std::string, StringMatch>> without_headers;
  std::vector<std::pair<std::string, StringMatch>> query_params;
  std::optional<uint32_t> port;
  std::vector<std::string> gateways;
  Labels source_labels;          // the client proxy's labels must include these
  std::string source_namespace;  // the client proxy's namespace, when set
  bool ignore_uri_case = false;
};

struct RouteDestination {
  Destination destination;
  std::optional<int32_t> weight;
  Headers headers;
};

struct Percent {
  double value = 100.0;  // 0..100
};

struct HttpRedirect {
  std::string uri, authority, scheme;
  std::optional<uint32_t> port;
  uint32_t code = 301;
};

struct HttpRewrite {
  std::string uri, authority;
};

struct HttpRetry {
  int32_t attempts = 0;
  std::optional<int64_t> per_try_timeout_ms;
  std::string retry_on;
};

struct HttpFault {
  struct Delay {
    int64_t fixed_delay_ms = 0;
    std::optional<Percent> percentage;
  };
  struct Abort {
    uint32_t http_status = 0;
    std::optional<uint32_t> grpc_status;  // grpcStatus, as its code (14 for UNAVAILABLE)
    std::optional<Percent> percentage;
  };
  std::optional<Delay> delay;
  std::optional<Abort> abort;
};

// VirtualService http[].corsPolicy. istiod turns it into the route's CORS filter policy
// (route/route.go TranslateCORSPolicy).
struct CorsPolicy {
  std::vector<StringMatch> allow_origins;
  std::vector<std::string> allow_origin;  // deprecated exact origins (used without allowOrigins)
  std::vector<std::string> allow_methods, allow_headers, expose_headers;
  std::optional<int64_t> max_age_ms;
  std::optional<bool> allow_credentials;
  bool forward_unmatched_preflights = true;  // unmatchedPreflights: IGNORE makes it false
};

struct DirectResponse {
  uint32_t status = 0;
  std::string body;
};

struct HttpRoute {
  std::string name;
  std::vector<HttpMatch> match;
  std::vector<RouteDestination> route;
  std::optional<HttpRedirect> redirect;
  std::optional<DirectResponse> direct_response;
  std::optional<HttpRewrite> rewrite;
  std::optional<int64_t> timeout_ms;
  std::optional<HttpRetry> retries;
  std::optional<HttpFault> fault;
  std::optional<CorsPolicy> cors;
  std::optional<Destination> mirror;
  std::optional<Percent> mirror_percentage;
  Headers headers;
};

struct L4Match {
  std::vector<std::string> sni_hosts;  // TLS only
  std::vector<std::string> destination_subnets;
  std::optional<uint32_t> port;
  std::vector<std::string> gateways;
  Labels source_labels;          // the client proxy's labels must include these
  std::string source_namespace;  // the client proxy's namespace, when set
};

struct L4Route {
  std::vector<L4Match> match;
  std::vector<RouteDestination> route;
};

struct VirtualService {
  Meta meta;
  std::vector<std::string> hosts;
  std::vector<std::string> gateways;  // empty: bound to "mesh"
  std::vector<std::string> export_to;
  std::vector<HttpRoute> http;
  std::vector<L4Route> tls;
  std::vector<L4Route> tcp;
};

struct LoadBalancer {
  enum class Simple { kUnset, kLeastRequest, kRoundRobin, kRandom, kPassthrough };
  Simple simple = Simple::kUnset;
  struct ConsistentHash {
    std::string header, cookie, cookie_path, query_param;
    std::optional<int64_t> cookie_ttl_ms;
    bool source_ip = false;
    bool maglev = false;
    uint64_t table_size = 0;  // maglev table size or ring minimum size; 0 = default
  };
  std::optional<ConsistentHash> consistent_hash;
};

// h2UpgradePolicy, of a DestinationRule's connectionPool.http and of the mesh config.
enum class H2UpgradePolicy { kDefault, kDoNotUpgrade, kUpgrade };

// connectionPool (ConnectionPoolSettings) beyond tcp.connectTimeout (kept apart, above):
// the limits and HTTP protocol choices istiod's applyConnectionPool and shouldH2Upgrade
// read (pilot/pkg/networking/core/cluster_traffic_policy.go). 0 = unset, as istiod reads
// them (it cannot tell an explicit 0 from unset either).
struct ConnectionPool {
  uint32_t max_connections = 0;                            // tcp.maxConnections
  uint32_t http1_max_pending_requests = 0;                 // http.http1MaxPendingRequests
  uint32_t http2_max_requests = 0;                         // http.http2MaxRequests
  uint32_t max_retries = 0;                                // http.maxRetries
  uint32_t max_concurrent_streams = 0;                     // http.maxConcurrentStreams
  H2UpgradePolicy h2_upgrade = H2UpgradePolicy::kDefault;  // http.h2UpgradePolicy
  bool use_client_protocol = false;                        // http.useClientProtocol
};

struct TrafficPolicy {
  std::optional<LoadBalancer> load_balancer;
  std::optional<int64_t> connect_timeout_ms;
  // The connectionPool block, when present: a subset's or a port's replaces the whole
  // block of the level above, as istiod merges them.
  std::optional<ConnectionPool> connection_pool;
  struct PortPolicy {
    uint32_t port = 0;
    std::optional<LoadBalancer> load_balancer;
    std::optional<int64_t> connect_timeout_ms;
    std::optional<ConnectionPool> connection_pool;
  };
  std::vector<PortPolicy> port_level;
};

struct Subset {
  std::string name;
  Labels labels;
  std::optional<TrafficPolicy> traffic_policy;
};

struct DestinationRule {
  Meta meta;
  std::string host;
  std::optional<TrafficPolicy> traffic_policy;
  std::vector<Subset> subsets;
  std::vector<std::string> export_to;
};

struct GatewayServer {
  std::string name;
  uint32_t port = 0;
  std::string port_name;
  std::string protocol;  // upper-case: HTTP, HTTPS, TLS, TCP, HTTP2, GRPC
  std::vector<std::string> hosts;
  std::string tls_mode;  // PASSTHROUGH, SIMPLE, MUTUAL, ISTIO_MUTUAL, AUTO_PASSTHROUGH
  bool https_redirect = false;
  // SIMPLE and MUTUAL: the Secret (in the gateway's namespace) holding tls.crt and
  // tls.key (and ca.crt for MUTUAL), served over SDS as istiod does.
  std::string credential_name;
  std::vector<std::string> subject_alt_names;  // MUTUAL: accepted client SANs (exact)
  // MUTUAL: pinned client certificates (base64 SHA-256 of the SPKI, hex SHA-256 of the
  // certificate), as istiod passes them to the validation context.
  std::vector<std::string> verify_certificate_spki, verify_certificate_hash;
  // TLS fields Sluice does not honour yet (file paths, spki/hash pins, cipher suites,
  // protocol versions, credentialNames): such a server is refused by name (fail closed).
  std::vector<std::string> unsupported_tls_fields;
};

struct Gateway {
  Meta meta;
  Labels selector;
  std::vector<GatewayServer> servers;
};

struct ServiceEntryPort {
  std::string name;
  uint32_t number = 0;
  std::string protocol;
  uint32_t target_port = 0;
};

struct WorkloadEntry {
  std::string address;
  std::map<std::string, uint32_t> ports;  // port name -> port
  Labels labels;
  uint32_t weight = 0;
};

struct ServiceEntry {
  enum class Location { kMeshExternal, kMeshInternal };
  enum class Resolution { kNone, kStatic, kDns, kDnsRoundRobin };
  Meta meta;
  std::vector<std::string> hosts;
  std::vector<std::string> addresses;
  std::vector<ServiceEntryPort> ports;
  Location location = Location::kMeshExternal;
  Resolution resolution = Resolution::kNone;
  std::vector<WorkloadEntry> endpoints;
  std::vector<std::string> export_to;
};

// One Sidecar ingress listener: the inbound port istiod gives a chain on the proxy's
// virtualInbound listener and an "inbound|PORT||" cluster. What Sluice cannot serve
// (bind, captureMode NONE, tls, a defaultEndpoint on the instance IP or a unix socket,
// connection limits) is refused by the loader, never kept here half-understood.
struct SidecarIngress {
  uint32_t port = 0;
  std::string port_name;
  std::string protocol;  // upper-case as Istio parses it ("HTTP", "GRPC-WEB"); "" = sniffed
  // defaultEndpoint, parsed: empty address = ORIGINAL_DST (the pod's own address and the
  // same port); else "127.0.0.1" or "::1" and the port to deliver to.
  std::string endpoint_address;
  uint32_t endpoint_port = 0;
  // connectionPool.tcp.connectTimeout of this listener, else of inboundConnectionPool.
  std::optional<int64_t> connect_timeout_ms;
};

// A Sidecar resource: which hosts the proxies it applies to can reach ("ns/host"
// patterns), their outbound traffic policy, and their ingress listeners.
struct Sidecar {
  Meta meta;
  Labels workload_selector;  // empty: every proxy of the namespace
  std::vector<std::string> egress_hosts;
  std::optional<bool> registry_only;  // outboundTrafficPolicy.mode, when set
  std::vector<SidecarIngress> ingress;
};

// Telemetry `metrics` (telemetry.istio.io Metrics), as istiod's mergeMetrics reads it
// (pilot/pkg/model/telemetry.go). Only the prometheus provider exists here.
struct TelemetryTagOverride {
  bool remove = false;  // operation REMOVE, else UPSERT with `value` (a CEL string literal)
  std::string value;
  auto operator<=>(const TelemetryTagOverride&) const = default;
};
struct TelemetryMetricOverride {
  // match.metric (ALL_METRICS, REQUEST_COUNT, ...; "" with no match: all metrics), or
  // match.customMetric with `custom` set.
  std::string metric;
  bool custom = false;
  enum class Mode { kClientAndServer, kClient, kServer } mode = Mode::kClientAndServer;
  std::optional<bool> disabled;
  std::map<std::string, TelemetryTagOverride> tags;  // tagOverrides
};
struct TelemetryMetrics {
  std::vector<std::string> providers;  // providers[].name; empty: inherited
  std::vector<TelemetryMetricOverride> overrides;
  std::optional<int64_t> reporting_interval_ms;
};

struct Telemetry {
  Meta meta;
  std::optional<bool> access_logging;  // unset when the resource says nothing about it
  Labels selector;                     // spec.selector.matchLabels; empty: namespace-wide
  std::vector<TelemetryMetrics> metrics;
};

// ---------------------------------------------------------------- Istio security

// security.istio.io AuthorizationPolicy (v1 and v1beta1), as istiod's authz builder
// reads it (pilot/pkg/security/authz). Values are kept as written: the translator
// (translator/authz.cc) turns them into Envoy RBAC matchers exactly as istiod does.
struct AuthzSource {
  std::vector<std::string> principals, not_principals;
  std::vector<std::string> request_principals, not_request_principals;
  std::vector<std::string> namespaces, not_namespaces;
  std::vector<std::string> service_accounts, not_service_accounts;
  std::vector<std::string> trust_domains, not_trust_domains;
  std::vector<std::string> ip_blocks, not_ip_blocks;
  std::vector<std::string> remote_ip_blocks, not_remote_ip_blocks;
};

struct AuthzOperation {
  std::vector<std::string> hosts, not_hosts;
  std::vector<std::string> ports, not_ports;
  std::vector<std::string> methods, not_methods;
  std::vector<std::string> paths, not_paths;
};

struct AuthzCondition {
  std::string key;  // "request.headers[x-user]", "source.ip", ...
  std::vector<std::string> values, not_values;
};

struct AuthzRule {
  std::vector<AuthzSource> from;
  std::vector<AuthzOperation> to;
  std::vector<AuthzCondition> when;
};

struct AuthorizationPolicy {
  // kCustom only on a rejected policy (CUSTOM needs an ext_authz provider Sluice lacks).
  enum class Action { kAllow, kDeny, kAudit, kCustom };
  Meta meta;
  Labels selector;  // spec.selector.matchLabels; empty selects every workload in scope
  Action action = Action::kAllow;
  std::vector<AuthzRule> rules;
  bool dry_run = false;  // annotation istio.io/dry-run: the rules become shadow rules
  // Non-empty when the loader refused the document (the error it reported). The policy is
  // then kept only to fail closed: the translator gives the workloads it selects a policy
  // that allows nothing (ALLOW) or denies everything (DENY, CUSTOM), never no policy.
  std::string rejected;
};

struct MeshConfig {
  enum class OutboundPolicy { kAllowAny, kRegistryOnly };
  OutboundPolicy outbound = OutboundPolicy::kAllowAny;
  std::string root_namespace = "istio-system";
  std::string access_log_file;  // accessLogFile: "" = off
  std::string domain = "cluster.local";
  int64_t connect_timeout_ms = 10000;
  // h2UpgradePolicy: UPGRADE makes every HTTP port's outbound clusters HTTP/2 unless a
  // DestinationRule says otherwise (istiod's shouldH2Upgrade).
  H2UpgradePolicy h2_upgrade = H2UpgradePolicy::kDefault;
};

// Everything the loader accepted, in load order.
// A Kubernetes Secret (v1): what a Gateway's credentialName names. `data` is decoded
// (the document's base64 `data`, with `stringData` over it, as the API server merges).
struct Secret {
  Meta meta;
  std::string type;  // "kubernetes.io/tls", "Opaque", ...
  std::map<std::string, std::string> data;
};

// What istiod serves from a Secret for a gateway's certificate: `cert` and `key`, else
// `tls.crt` and `tls.key` (pilot/pkg/credentials/kube/secrets.go ExtractCertInfo).
struct CertInfo {
  std::string cert, key;
};
Result<CertInfo> ExtractCertInfo(const Secret& s);
// ... and for its client CA (MUTUAL: credentialName-cacert): `cacert`, else `ca.crt`
// (ExtractRoot). Errors say what the Secret has instead, as istiod's do.
Result<std::string> ExtractRoot(const Secret& s);

struct Config {
  std::vector<Namespace> namespaces;
  std::vector<Service> services;
  std::vector<Workload> workloads;
  std::vector<EndpointGroup> endpoint_groups;
  std::vector<Gateway> gateways;
  std::vector<VirtualService> virtual_services;
  std::vector<DestinationRule> destination_rules;
  std::vector<ServiceEntry> service_entries;
  std::vector<Telemetry> telemetries;
  std::vector<Sidecar> sidecars;
  std::vector<AuthorizationPolicy> authorization_policies;
  std::vector<Secret> secrets;
  MeshConfig mesh;
  bool mesh_set = false;  // a mesh config (the `istio` ConfigMap) was read
};

}  // namespace sluice::istio
