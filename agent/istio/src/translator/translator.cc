#include "sluice/istio/translator.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <set>
#include <unordered_map>

#include "envoy/extensions/access_loggers/file/v3/file.pb.h"
#include "envoy/extensions/filters/http/fault/v3/fault.pb.h"
#include "envoy/extensions/filters/http/router/v3/router.pb.h"
#include "envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.pb.h"
#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb.h"
#include "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.pb.h"

namespace sluice::istio {
namespace {

namespace cluster_v3 = envoy::config::cluster::v3;
namespace core_v3 = envoy::config::core::v3;
namespace endpoint_v3 = envoy::config::endpoint::v3;
namespace listener_v3 = envoy::config::listener::v3;
namespace route_v3 = envoy::config::route::v3;
namespace hcm_v3 = envoy::extensions::filters::network::http_connection_manager::v3;
namespace tcp_v3 = envoy::extensions::filters::network::tcp_proxy::v3;
using envoy::type::v3::FractionalPercent;

constexpr char kBlackHole[] = "BlackHoleCluster";
constexpr char kPassthrough[] = "PassthroughCluster";
constexpr char kMesh[] = "mesh";
// Istio's retry defaults when a VirtualService sets none.
constexpr char kDefaultRetryOn[] =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";
constexpr uint32_t kDefaultRetries = 2;
constexpr uint32_t kMaxU32 = 4294967295u;
// Istio's default access log format (text), as its proxies print it.
constexpr char kAccessLogFormat[] =
    "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" "
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "
    "\"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" "
    "\"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER% "
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

std::string ClusterName(uint32_t port, const std::string& subset, const std::string& host) {
  return "outbound|" + std::to_string(port) + "|" + subset + "|" + host;
}

void SetDurationMs(google::protobuf::Duration* d, int64_t ms) {
  d->set_seconds(ms / 1000);
  d->set_nanos(static_cast<int32_t>((ms % 1000) * 1000000));
}

// Istio's percent (0..100, fractional) -> Envoy's per-million fraction.
void SetPercent(FractionalPercent* f, double percent) {
  f->set_numerator(static_cast<uint32_t>(std::llround(percent * 10000.0)));
  f->set_denominator(FractionalPercent::MILLION);
}

core_v3::ConfigSource AdsSource() {
  core_v3::ConfigSource src;
  src.mutable_ads();
  src.mutable_initial_fetch_timeout();  // 0s: never block on a missing resource
  src.set_resource_api_version(core_v3::V3);
  return src;
}

// A host pattern from Istio config matches a hostname ("*.example.com", "*").
bool HostMatches(const std::string& pattern, const std::string& host) {
  if (pattern == "*")
    return true;
  if (pattern.starts_with("*")) {
    std::string_view suffix(pattern);
    suffix.remove_prefix(1);
    return host.size() > suffix.size() && host.ends_with(suffix);
  }
  return pattern == host;
}

bool HostsIntersect(const std::string& a, const std::string& b) {
  return HostMatches(a, b) || HostMatches(b, a);
}

// Parses "10.0.0.0/8" or "10.1.2.3" into a prefix range; false if not an IP.
bool ParseCidr(const std::string& text, core_v3::CidrRange* out) {
  auto slash = text.find('/');
  std::string ip = text.substr(0, slash);
  bool v6 = ip.find(':') != std::string::npos;
  if (!v6 && ip.find_first_not_of("0123456789.") != std::string::npos)
    return false;
  uint32_t len = v6 ? 128 : 32;
  if (slash != std::string::npos) {
    std::string_view digits = std::string_view(text).substr(slash + 1);
    auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), len);
    if (ec != std::errc() || p != digits.data() + digits.size() || len > (v6 ? 128u : 32u))
      return false;
  }
  out->set_address_prefix(ip);
  out->mutable_prefix_len()->set_value(len);
  return true;
}

class Builder {
 public:
  Builder(const Config& config, const Registry& registry, const ProxySpec& proxy)
      : config_(config), registry_(registry), proxy_(proxy) {}

  Translation Run() {
    registry_only_ = config_.mesh.outbound == MeshConfig::OutboundPolicy::kRegistryOnly;
    if (proxy_.kind == ProxySpec::Kind::kSidecar) {
      sidecar_ = FindSidecar();
      if (sidecar_ && sidecar_->registry_only)
        registry_only_ = *sidecar_->registry_only;
    }
    IndexByHost();
    access_log_ = AccessLogEnabled();
    BuildClusters();
    if (proxy_.kind == ProxySpec::Kind::kSidecar) {
      BuildSidecarListenersAndRoutes();
    } else {
      BuildGateway();
    }
    return std::move(out_);
  }

 private:
  // ------------------------------------------------------------ policy lookup

  // The DestinationRule for a hostname as istiod picks it: the proxy's namespace first,
  // then the service's namespace, then the root namespace.
  // Host -> the DestinationRules and mesh-bound VirtualServices naming it, so lookups
  // cost O(rules for that host), not O(all rules): 10,000 services x 1,000 rules adds up.
  // The Sidecar resource for this proxy, as istiod picks it: one in the proxy's namespace
  // whose workloadSelector matches its labels, else the namespace's selector-less one,
  // else the root namespace's selector-less one.
  const Sidecar* FindSidecar() const {
    const Sidecar* ns_default = nullptr;
    const Sidecar* root_default = nullptr;
    for (const auto& sc : config_.sidecars) {
      if (sc.meta.ns == proxy_.ns && !sc.workload_selector.empty() &&
          SelectorMatches(sc.workload_selector, proxy_.labels))
        return &sc;
      if (sc.workload_selector.empty() && sc.meta.ns == proxy_.ns && !ns_default)
        ns_default = &sc;
      if (sc.workload_selector.empty() && sc.meta.ns == config_.mesh.root_namespace &&
          !root_default)
        root_default = &sc;
    }
    return ns_default ? ns_default : root_default;
  }

  // Whether the Sidecar's egress hosts ("ns/host") let this proxy reach `svc`.
  bool SidecarAllows(const RegistryService& svc) const {
    if (!sidecar_)
      return true;
    for (const auto& entry : sidecar_->egress_hosts) {
      auto slash = entry.find('/');
      std::string ns = entry.substr(0, slash);
      std::string host = entry.substr(slash + 1);
      bool ns_ok = ns == "*" || (ns == "." && svc.ns == sidecar_->meta.ns) || ns == svc.ns;
      if (ns_ok && HostMatches(host, svc.hostname))
        return true;
    }
    return false;
  }

  void IndexByHost() {
    // The services this proxy sees, one per hostname: the one in the proxy's namespace
    // when several namespaces define the host, else the first (registry order).
    std::map<std::string, const RegistryService*> by_host;
    for (const auto& svc : registry_.services()) {
      if (!svc.VisibleFrom(proxy_.ns) || !SidecarAllows(svc))
        continue;
      auto [it, inserted] = by_host.emplace(svc.hostname, &svc);
      if (!inserted && svc.ns == proxy_.ns && it->second->ns != proxy_.ns)
        it->second = &svc;
    }
    for (const auto& svc : registry_.services()) {
      auto it = by_host.find(svc.hostname);
      if (it != by_host.end() && it->second == &svc)
        visible_.push_back(&svc);
    }
    for (const auto& dr : config_.destination_rules) {
      std::string host = registry_.Qualify(dr.host, dr.meta.ns);
      if (host.starts_with("*")) {
        dr_wildcard_.emplace_back(std::move(host), &dr);
      } else {
        dr_by_host_[host].push_back(&dr);
      }
    }
    for (const auto& vs : config_.virtual_services) {
      if (!BoundTo(vs, kMesh) || !VisibleVs(vs))
        continue;
      for (const auto& h : vs.hosts) {
        std::string host = registry_.Qualify(h, vs.meta.ns);
        if (host.starts_with("*")) {
          vs_wildcard_.emplace_back(std::move(host), &vs);
        } else {
          vs_by_host_[host].push_back(&vs);
        }
      }
    }
    for (const RegistryService* svc : visible_) {
      if (const VirtualService* vs = FindMeshVs(*svc))
        services_by_vs_[vs].push_back(svc);
    }
  }

  // Candidates for a hostname, in config order (the vectors' elements are contiguous, so
  // pointer order is load order).
  template <class T>
  static std::vector<const T*> Candidates(
      const std::unordered_map<std::string, std::vector<const T*>>& exact,
      const std::vector<std::pair<std::string, const T*>>& wildcard, const std::string& host) {
    std::vector<const T*> out;
    if (auto it = exact.find(host); it != exact.end())
      out = it->second;
    for (const auto& [pattern, item] : wildcard) {
      if (HostMatches(pattern, host))
        out.push_back(item);
    }
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
  }

  // The DestinationRule for a hostname as istiod picks it: the proxy's namespace first,
  // then the service's namespace, then the root namespace.
  const DestinationRule* FindDestinationRule(const RegistryService& svc) const {
    const DestinationRule* best = nullptr;
    int best_rank = 99;
    for (const DestinationRule* dr : Candidates(dr_by_host_, dr_wildcard_, svc.hostname)) {
      int rank = dr->meta.ns == proxy_.ns                     ? 0
                 : dr->meta.ns == svc.ns                      ? 1
                 : dr->meta.ns == config_.mesh.root_namespace ? 2
                                                              : 99;
      bool visible =
          dr->export_to.empty() ||
          std::find(dr->export_to.begin(), dr->export_to.end(), "*") != dr->export_to.end() ||
          (rank == 0);
      if (rank == 99 && !visible)
        continue;
      if (rank < best_rank || !best) {
        best = dr;
        best_rank = rank;
      }
    }
    return best;
  }

  struct EffectivePolicy {
    std::optional<LoadBalancer> lb;
    std::optional<int64_t> connect_timeout_ms;
  };

  static void ApplyPolicy(const TrafficPolicy& tp, uint32_t port, EffectivePolicy& eff) {
    if (tp.load_balancer)
      eff.lb = tp.load_balancer;
    if (tp.connect_timeout_ms)
      eff.connect_timeout_ms = tp.connect_timeout_ms;
    for (const auto& pl : tp.port_level) {
      if (pl.port != port)
        continue;
      if (pl.load_balancer)
        eff.lb = pl.load_balancer;
      if (pl.connect_timeout_ms)
        eff.connect_timeout_ms = pl.connect_timeout_ms;
    }
  }

  static EffectivePolicy Policy(const DestinationRule* dr, const Subset* subset, uint32_t port) {
    EffectivePolicy eff;
    if (dr && dr->traffic_policy)
      ApplyPolicy(*dr->traffic_policy, port, eff);
    if (subset && subset->traffic_policy)
      ApplyPolicy(*subset->traffic_policy, port, eff);
    return eff;
  }

  bool AccessLogEnabled() const {
    std::optional<bool> root, local;
    for (const auto& t : config_.telemetries) {
      if (!t.access_logging)
        continue;
      if (t.meta.ns == config_.mesh.root_namespace)
        root = t.access_logging;
      if (t.meta.ns == proxy_.ns)
        local = t.access_logging;
    }
    if (local)
      return *local;
    if (root)
      return *root;
    return !config_.mesh.access_log_file.empty();
  }

  void AddAccessLog(
      google::protobuf::RepeatedPtrField<envoy::config::accesslog::v3::AccessLog>* logs) const {
    if (!access_log_)
      return;
    envoy::extensions::access_loggers::file::v3::FileAccessLog file;
    file.set_path(config_.mesh.access_log_file.empty() ? "/dev/stdout"
                                                       : config_.mesh.access_log_file);
    file.mutable_log_format()->mutable_text_format_source()->set_inline_string(kAccessLogFormat);
    auto* log = logs->Add();
    log->set_name("envoy.access_loggers.file");
    log->mutable_typed_config()->PackFrom(file);
  }

  // ------------------------------------------------------------ clusters

  void BuildClusters() {
    for (const RegistryService* svc_ptr : visible_) {
      const RegistryService& svc = *svc_ptr;
      const DestinationRule* dr = FindDestinationRule(svc);
      for (const auto& port : svc.ports) {
        if (port.protocol == Protocol::kUdp)
          continue;
        AddServiceCluster(svc, port, dr, nullptr);
        if (!dr)
          continue;
        for (const auto& subset : dr->subsets)
          AddServiceCluster(svc, port, dr, &subset);
      }
    }

    cluster_v3::Cluster blackhole;
    blackhole.set_name(kBlackHole);
    blackhole.set_type(cluster_v3::Cluster::STATIC);
    SetDurationMs(blackhole.mutable_connect_timeout(), config_.mesh.connect_timeout_ms);
    out_.resources.Add(std::move(blackhole));

    cluster_v3::Cluster passthrough;
    passthrough.set_name(kPassthrough);
    passthrough.set_type(cluster_v3::Cluster::ORIGINAL_DST);
    passthrough.set_lb_policy(cluster_v3::Cluster::CLUSTER_PROVIDED);
    SetDurationMs(passthrough.mutable_connect_timeout(), config_.mesh.connect_timeout_ms);
    SetCircuitBreakers(passthrough);
    out_.resources.Add(std::move(passthrough));
  }

  static void SetCircuitBreakers(cluster_v3::Cluster& c) {
    auto* t = c.mutable_circuit_breakers()->add_thresholds();
    t->mutable_max_connections()->set_value(kMaxU32);
    t->mutable_max_pending_requests()->set_value(kMaxU32);
    t->mutable_max_requests()->set_value(kMaxU32);
    t->mutable_max_retries()->set_value(kMaxU32);
    t->set_track_remaining(true);
  }

  void AddServiceCluster(const RegistryService& svc, const RegistryPort& port,
                         const DestinationRule* dr, const Subset* subset) {
    const std::string subset_name = subset ? subset->name : "";
    cluster_v3::Cluster c;
    c.set_name(ClusterName(port.port, subset_name, svc.hostname));
    EffectivePolicy policy = Policy(dr, subset, port.port);
    SetDurationMs(c.mutable_connect_timeout(),
                  policy.connect_timeout_ms.value_or(config_.mesh.connect_timeout_ms));

    bool passthrough = svc.resolution == RegistryService::Resolution::kPassthrough ||
                       (policy.lb && policy.lb->simple == LoadBalancer::Simple::kPassthrough);
    if (passthrough) {
      c.set_type(cluster_v3::Cluster::ORIGINAL_DST);
      c.set_lb_policy(cluster_v3::Cluster::CLUSTER_PROVIDED);
    } else {
      SetLbPolicy(c, policy.lb);
      switch (svc.resolution) {
        case RegistryService::Resolution::kDnsLb:
        case RegistryService::Resolution::kDnsRoundRobinLb:
          c.set_type(svc.resolution == RegistryService::Resolution::kDnsLb
                         ? cluster_v3::Cluster::STRICT_DNS
                         : cluster_v3::Cluster::LOGICAL_DNS);
          c.set_dns_lookup_family(cluster_v3::Cluster::V4_ONLY);
          c.mutable_dns_refresh_rate()->set_seconds(60);
          c.set_respect_dns_ttl(true);
          *c.mutable_load_assignment() = Endpoints(svc, port, subset, c.name(), true);
          break;
        default:
          c.set_type(cluster_v3::Cluster::EDS);
          *c.mutable_eds_cluster_config()->mutable_eds_config() = AdsSource();
          c.mutable_eds_cluster_config()->set_service_name(c.name());
          out_.resources.Add(Endpoints(svc, port, subset, c.name(), false));
          break;
      }
    }
    SetCircuitBreakers(c);

    // istiod's metadata: which service (and DestinationRule, subset) a cluster serves;
    // `proxy-config cluster` reads its DESTINATION RULE column from here.
    auto& istio = (*c.mutable_metadata()->mutable_filter_metadata())["istio"];
    auto& fields = *istio.mutable_fields();
    if (dr) {
      fields["config"].set_string_value("/apis/networking.istio.io/v1alpha3/namespaces/" +
                                        dr->meta.ns + "/destination-rule/" + dr->meta.name);
    }
    fields["default_original_port"].set_number_value(port.port);
    if (subset)
      fields["subset"].set_string_value(subset->name);
    auto* service = fields["services"].mutable_list_value()->add_values()->mutable_struct_value();
    (*service->mutable_fields())["host"].set_string_value(svc.hostname);
    (*service->mutable_fields())["name"].set_string_value(svc.name);
    (*service->mutable_fields())["namespace"].set_string_value(svc.ns);

    out_.resources.Add(std::move(c));
  }

  static void SetLbPolicy(cluster_v3::Cluster& c, const std::optional<LoadBalancer>& lb) {
    if (lb && lb->consistent_hash) {
      const auto& h = *lb->consistent_hash;
      if (h.maglev) {
        c.set_lb_policy(cluster_v3::Cluster::MAGLEV);
        if (h.table_size)
          c.mutable_maglev_lb_config()->mutable_table_size()->set_value(h.table_size);
      } else {
        c.set_lb_policy(cluster_v3::Cluster::RING_HASH);
        if (h.table_size) {
          c.mutable_ring_hash_lb_config()->mutable_minimum_ring_size()->set_value(h.table_size);
        }
      }
      return;
    }
    auto simple = lb ? lb->simple : LoadBalancer::Simple::kUnset;
    switch (simple) {
      case LoadBalancer::Simple::kRoundRobin:
        c.set_lb_policy(cluster_v3::Cluster::ROUND_ROBIN);
        break;
      case LoadBalancer::Simple::kRandom:
        c.set_lb_policy(cluster_v3::Cluster::RANDOM);
        break;
      default:  // unset and LEAST_REQUEST: Istio's default
        c.set_lb_policy(cluster_v3::Cluster::LEAST_REQUEST);
        break;
    }
  }

  // The endpoints of one service port, filtered by the subset's labels. DNS clusters
  // with no endpoints resolve the hostname itself.
  static endpoint_v3::ClusterLoadAssignment Endpoints(const RegistryService& svc,
                                                      const RegistryPort& port,
                                                      const Subset* subset, const std::string& name,
                                                      bool dns) {
    endpoint_v3::ClusterLoadAssignment cla;
    cla.set_cluster_name(name);
    if (dns && svc.endpoints.empty()) {
      auto* lb = cla.add_endpoints()->add_lb_endpoints();
      auto* sa = lb->mutable_endpoint()->mutable_address()->mutable_socket_address();
      sa->set_address(svc.hostname);
      sa->set_port_value(port.port);
      lb->mutable_load_balancing_weight()->set_value(1);
      return cla;
    }
    endpoint_v3::LocalityLbEndpoints* locality = nullptr;
    uint32_t total = 0;
    for (const auto& ep : svc.endpoints) {
      if (subset && !SelectorMatches(subset->labels, ep.labels))
        continue;
      auto pit = ep.ports.find(port.port);
      if (pit == ep.ports.end())
        continue;
      if (!locality)
        locality = cla.add_endpoints();
      auto* lb = locality->add_lb_endpoints();
      auto* sa = lb->mutable_endpoint()->mutable_address()->mutable_socket_address();
      sa->set_address(ep.address);
      sa->set_port_value(pit->second);
      if (!dns)
        lb->set_health_status(core_v3::HEALTHY);
      lb->mutable_load_balancing_weight()->set_value(ep.weight);
      total += ep.weight;
    }
    if (locality && !dns)
      locality->mutable_load_balancing_weight()->set_value(total);
    return cla;
  }

  // ------------------------------------------------------------ routes

  // Which port of `svc` a destination without a port number means: the service's only
  // port, else the port the request came in on.
  static uint32_t DestinationPort(const Destination& d, const RegistryService* svc,
                                  uint32_t listener_port) {
    if (d.port)
      return *d.port;
    if (svc && svc->ports.size() == 1)
      return svc->ports[0].port;
    return listener_port;
  }

  std::string DestinationCluster(const Destination& d, const std::string& vs_ns,
                                 uint32_t listener_port, const RegistryService** svc_out) const {
    const RegistryService* svc = registry_.Resolve(d.host, vs_ns);
    if (svc_out)
      *svc_out = svc;
    std::string host = svc ? svc->hostname : registry_.Qualify(d.host, vs_ns);
    return ClusterName(DestinationPort(d, svc, listener_port), d.subset, host);
  }

  static void SetStringMatcher(const StringMatch& m, bool ignore_case,
                               envoy::type::matcher::v3::StringMatcher* out) {
    switch (m.kind) {
      case StringMatch::Kind::kExact:
        out->set_exact(m.value);
        break;
      case StringMatch::Kind::kPrefix:
        out->set_prefix(m.value);
        break;
      case StringMatch::Kind::kRegex:
        out->mutable_safe_regex()->set_regex(m.value);
        break;
    }
    if (ignore_case)
      out->set_ignore_case(true);
  }

  static void AddHeaderMatch(route_v3::RouteMatch& rm, const std::string& name,
                             const StringMatch& m, bool invert) {
    auto* h = rm.add_headers();
    h->set_name(name);
    SetStringMatcher(m, false, h->mutable_string_match());
    if (invert)
      h->set_invert_match(true);
  }

  static route_v3::RouteMatch TranslateMatch(const HttpMatch* m) {
    route_v3::RouteMatch rm;
    if (!m || !m->uri) {
      rm.set_prefix("/");
    } else {
      switch (m->uri->kind) {
        case StringMatch::Kind::kExact:
          rm.set_path(m->uri->value);
          break;
        case StringMatch::Kind::kPrefix:
          rm.set_prefix(m->uri->value);
          break;
        case StringMatch::Kind::kRegex:
          rm.mutable_safe_regex()->set_regex(m->uri->value);
          break;
      }
      if (m->ignore_uri_case)
        rm.mutable_case_sensitive()->set_value(false);
    }
    if (!m)
      return rm;
    for (const auto& [name, sm] : m->headers)
      AddHeaderMatch(rm, name, sm, false);
    for (const auto& [name, sm] : m->without_headers)
      AddHeaderMatch(rm, name, sm, true);
    if (m->method)
      AddHeaderMatch(rm, ":method", *m->method, false);
    if (m->authority)
      AddHeaderMatch(rm, ":authority", *m->authority, false);
    if (m->scheme)
      AddHeaderMatch(rm, ":scheme", *m->scheme, false);
    for (const auto& [name, sm] : m->query_params) {
      auto* q = rm.add_query_parameters();
      q->set_name(name);
      SetStringMatcher(sm, false, q->mutable_string_match());
    }
    return rm;
  }

  static void AddHeaderOps(const HeaderOps& ops,
                           google::protobuf::RepeatedPtrField<core_v3::HeaderValueOption>* add,
                           google::protobuf::RepeatedPtrField<std::string>* remove) {
    for (const auto& [k, v] : ops.set) {
      auto* o = add->Add();
      o->mutable_header()->set_key(k);
      o->mutable_header()->set_value(v);
      o->set_append_action(core_v3::HeaderValueOption::OVERWRITE_IF_EXISTS_OR_ADD);
    }
    for (const auto& [k, v] : ops.add) {
      auto* o = add->Add();
      o->mutable_header()->set_key(k);
      o->mutable_header()->set_value(v);
      o->set_append_action(core_v3::HeaderValueOption::APPEND_IF_EXISTS_OR_ADD);
    }
    for (const auto& r : ops.remove)
      *remove->Add() = r;
  }

  static void SetRetryPolicy(const std::optional<HttpRetry>& retries, route_v3::RouteAction* ra) {
    if (retries && retries->attempts == 0)
      return;  // retries disabled explicitly
    auto* rp = ra->mutable_retry_policy();
    std::string retry_on = kDefaultRetryOn;
    uint32_t attempts = kDefaultRetries;
    if (retries) {
      attempts = static_cast<uint32_t>(retries->attempts);
      if (!retries->retry_on.empty())
        retry_on = retries->retry_on;
      if (retries->per_try_timeout_ms) {
        SetDurationMs(rp->mutable_per_try_timeout(), *retries->per_try_timeout_ms);
      }
    }
    // Istio lets retryOn list status codes ("5xx,503"): they become retriable codes.
    std::string policies;
    std::vector<uint32_t> codes;
    std::size_t start = 0;
    while (start <= retry_on.size()) {
      auto comma = retry_on.find(',', start);
      std::string token =
          retry_on.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
      start = comma == std::string::npos ? retry_on.size() + 1 : comma + 1;
      if (token.empty())
        continue;
      if (token.find_first_not_of("0123456789") == std::string::npos) {
        uint32_t code = 0;
        auto [p, ec] = std::from_chars(token.data(), token.data() + token.size(), code);
        if (ec == std::errc() && p == token.data() + token.size())
          codes.push_back(code);
        continue;
      }
      if (!policies.empty())
        policies += ",";
      policies += token;
    }
    if (!codes.empty() && policies.find("retriable-status-codes") == std::string::npos) {
      policies += policies.empty() ? "retriable-status-codes" : ",retriable-status-codes";
    }
    if (codes.empty() && policies.find("retriable-status-codes") != std::string::npos) {
      codes.push_back(503);
    }
    rp->set_retry_on(policies);
    rp->mutable_num_retries()->set_value(attempts);
    rp->set_host_selection_retry_max_attempts(5);
    for (uint32_t c : codes)
      rp->add_retriable_status_codes(c);
  }

  void AddHashPolicy(const RegistryService* svc, uint32_t port, const std::string& subset,
                     route_v3::RouteAction* ra) const {
    if (!svc)
      return;
    const DestinationRule* dr = FindDestinationRule(*svc);
    const Subset* sub = nullptr;
    if (dr) {
      for (const auto& s : dr->subsets) {
        if (s.name == subset)
          sub = &s;
      }
    }
    auto policy = Policy(dr, sub, port);
    if (!policy.lb || !policy.lb->consistent_hash)
      return;
    const auto& h = *policy.lb->consistent_hash;
    auto* hp = ra->add_hash_policy();
    if (!h.header.empty()) {
      hp->mutable_header()->set_header_name(h.header);
    } else if (!h.cookie.empty()) {
      hp->mutable_cookie()->set_name(h.cookie);
      if (!h.cookie_path.empty())
        hp->mutable_cookie()->set_path(h.cookie_path);
      if (h.cookie_ttl_ms)
        SetDurationMs(hp->mutable_cookie()->mutable_ttl(), *h.cookie_ttl_ms);
    } else if (!h.query_param.empty()) {
      hp->mutable_query_parameter()->set_name(h.query_param);
    } else {
      hp->mutable_connection_properties()->set_source_ip(true);
    }
  }

  // One Envoy route for an Istio HTTP route and one of its matches.
  route_v3::Route TranslateHttpRoute(const HttpRoute& hr, const HttpMatch* match,
                                     const std::string& vs_ns, uint32_t listener_port) const {
    route_v3::Route r;
    if (!hr.name.empty())
      r.set_name(hr.name);
    *r.mutable_match() = TranslateMatch(match);

    if (hr.redirect) {
      auto* rd = r.mutable_redirect();
      if (!hr.redirect->uri.empty())
        rd->set_path_redirect(hr.redirect->uri);
      if (!hr.redirect->authority.empty())
        rd->set_host_redirect(hr.redirect->authority);
      if (!hr.redirect->scheme.empty())
        rd->set_scheme_redirect(hr.redirect->scheme);
      if (hr.redirect->port)
        rd->set_port_redirect(*hr.redirect->port);
      switch (hr.redirect->code) {
        case 302:
          rd->set_response_code(route_v3::RedirectAction::FOUND);
          break;
        case 303:
          rd->set_response_code(route_v3::RedirectAction::SEE_OTHER);
          break;
        case 307:
          rd->set_response_code(route_v3::RedirectAction::TEMPORARY_REDIRECT);
          break;
        case 308:
          rd->set_response_code(route_v3::RedirectAction::PERMANENT_REDIRECT);
          break;
        default:
          rd->set_response_code(route_v3::RedirectAction::MOVED_PERMANENTLY);
          break;
      }
    } else if (hr.direct_response) {
      auto* dr = r.mutable_direct_response();
      dr->set_status(hr.direct_response->status);
      if (!hr.direct_response->body.empty()) {
        dr->mutable_body()->set_inline_string(hr.direct_response->body);
      }
    } else {
      auto* ra = r.mutable_route();
      // Weights are relative (Envoy divides by their sum); zero-weight destinations
      // get no traffic and are left out as istiod does.
      struct Target {
        std::string cluster;
        uint32_t weight;
        const Headers* headers;
      };
      std::vector<Target> targets;
      const RegistryService* first_svc = nullptr;
      uint32_t first_port = 0;
      std::string first_subset;
      for (const auto& rd : hr.route) {
        uint32_t w = static_cast<uint32_t>(rd.weight.value_or(hr.route.size() == 1 ? 100 : 0));
        if (w == 0 && hr.route.size() > 1)
          continue;
        const RegistryService* svc = nullptr;
        auto name = DestinationCluster(rd.destination, vs_ns, listener_port, &svc);
        if (targets.empty()) {
          first_svc = svc;
          first_port = DestinationPort(rd.destination, svc, listener_port);
          first_subset = rd.destination.subset;
        }
        targets.push_back(Target{std::move(name), w, &rd.headers});
      }
      if (targets.size() == 1) {
        ra->set_cluster(targets[0].cluster);
        // A single destination's header operations apply to the whole route.
        AddHeaderOps(targets[0].headers->request, r.mutable_request_headers_to_add(),
                     r.mutable_request_headers_to_remove());
        AddHeaderOps(targets[0].headers->response, r.mutable_response_headers_to_add(),
                     r.mutable_response_headers_to_remove());
      } else {
        auto* wc = ra->mutable_weighted_clusters();
        for (const auto& t : targets) {
          auto* cw = wc->add_clusters();
          cw->set_name(t.cluster);
          cw->mutable_weight()->set_value(t.weight);
          AddHeaderOps(t.headers->request, cw->mutable_request_headers_to_add(),
                       cw->mutable_request_headers_to_remove());
          AddHeaderOps(t.headers->response, cw->mutable_response_headers_to_add(),
                       cw->mutable_response_headers_to_remove());
        }
      }
      SetDurationMs(ra->mutable_timeout(), hr.timeout_ms.value_or(0));
      SetRetryPolicy(hr.retries, ra);
      if (hr.rewrite) {
        if (!hr.rewrite->uri.empty())
          ra->set_prefix_rewrite(hr.rewrite->uri);
        if (!hr.rewrite->authority.empty())
          ra->set_host_rewrite_literal(hr.rewrite->authority);
      }
      if (hr.mirror) {
        auto* mp = ra->add_request_mirror_policies();
        mp->set_cluster(DestinationCluster(*hr.mirror, vs_ns, listener_port, nullptr));
        SetPercent(mp->mutable_runtime_fraction()->mutable_default_value(),
                   hr.mirror_percentage ? hr.mirror_percentage->value : 100.0);
      }
      AddHashPolicy(first_svc, first_port, first_subset, ra);
    }

    if (hr.fault) {
      envoy::extensions::filters::http::fault::v3::HTTPFault fault;
      if (hr.fault->delay) {
        auto* d = fault.mutable_delay();
        SetDurationMs(d->mutable_fixed_delay(), hr.fault->delay->fixed_delay_ms);
        SetPercent(d->mutable_percentage(),
                   hr.fault->delay->percentage ? hr.fault->delay->percentage->value : 100.0);
      }
      if (hr.fault->abort) {
        auto* a = fault.mutable_abort();
        a->set_http_status(hr.fault->abort->http_status);
        SetPercent(a->mutable_percentage(),
                   hr.fault->abort->percentage ? hr.fault->abort->percentage->value : 100.0);
      }
      (*r.mutable_typed_per_filter_config())["envoy.filters.http.fault"].PackFrom(fault);
    }
    AddHeaderOps(hr.headers.request, r.mutable_request_headers_to_add(),
                 r.mutable_request_headers_to_remove());
    AddHeaderOps(hr.headers.response, r.mutable_response_headers_to_add(),
                 r.mutable_response_headers_to_remove());
    return r;
  }

  // Does a VirtualService's match apply to this proxy and port? `gateway` is "mesh" or
  // the "ns/name" of a gateway. As istiod, sourceLabels and sourceNamespace are decided
  // here, for the proxy the config is built for (a view: its namespace and labels).
  template <class Match>
  bool MatchApplies(const Match& m, const std::string& gateway, const std::string& vs_ns,
                    uint32_t port) const {
    if (m.port && *m.port != port)
      return false;
    if (!m.source_namespace.empty() && m.source_namespace != proxy_.ns)
      return false;
    if (!SelectorMatches(m.source_labels, proxy_.labels))
      return false;
    if (m.gateways.empty())
      return true;
    for (const auto& g : m.gateways) {
      if (GatewayRef(g, vs_ns) == gateway)
        return true;
    }
    return false;
  }

  static std::string GatewayRef(const std::string& g, const std::string& vs_ns) {
    if (g == kMesh || g.find('/') != std::string::npos)
      return g;
    auto dot = g.find('.');
    if (dot != std::string::npos)
      return g.substr(dot + 1) + "/" + g.substr(0, dot);  // name.ns
    return vs_ns + "/" + g;
  }

  static bool BoundTo(const VirtualService& vs, const std::string& gateway) {
    if (vs.gateways.empty())
      return gateway == kMesh;
    for (const auto& g : vs.gateways) {
      if (GatewayRef(g, vs.meta.ns) == gateway)
        return true;
    }
    return false;
  }

  bool VisibleVs(const VirtualService& vs) const {
    if (vs.export_to.empty())
      return true;
    for (const auto& e : vs.export_to) {
      if (e == "*" || e == proxy_.ns || (e == "." && vs.meta.ns == proxy_.ns))
        return true;
    }
    return false;
  }

  // Envoy routes for the HTTP part of a VirtualService at one port, for one gateway.
  std::vector<route_v3::Route> VsRoutes(const VirtualService& vs, const std::string& gateway,
                                        uint32_t port) const {
    std::vector<route_v3::Route> routes;
    for (const auto& hr : vs.http) {
      if (hr.match.empty()) {
        routes.push_back(TranslateHttpRoute(hr, nullptr, vs.meta.ns, port));
        continue;
      }
      for (const auto& m : hr.match) {
        if (!MatchApplies(m, gateway, vs.meta.ns, port))
          continue;
        routes.push_back(TranslateHttpRoute(hr, &m, vs.meta.ns, port));
      }
    }
    // istiod's metadata: the VirtualService a route comes from (`proxy-config route`
    // shows it in its VIRTUAL SERVICE column).
    for (auto& r : routes) {
      auto& istio = (*r.mutable_metadata()->mutable_filter_metadata())["istio"];
      (*istio.mutable_fields())["config"].set_string_value(
          "/apis/networking.istio.io/v1alpha3/namespaces/" + vs.meta.ns + "/virtual-service/" +
          vs.meta.name);
    }
    return routes;
  }

  // istiod's domains for a service's virtual host: the FQDN, the short forms a client in
  // the proxy's namespace can use, and the VIPs — each with and without ":port".
  std::vector<std::string> ServiceDomains(const RegistryService& svc, uint32_t port) const {
    std::vector<std::string> hosts{svc.hostname};
    if (svc.source == RegistryService::Source::kKubernetes) {
      std::string svc_suffix = ".svc." + registry_.domain();
      std::string base = svc.hostname.substr(0, svc.hostname.size() - svc_suffix.size());
      if (svc.ns == proxy_.ns)
        hosts.push_back(svc.name);
      hosts.push_back(base);
      hosts.push_back(base + ".svc");
    }
    for (const auto& a : svc.addresses) {
      if (a.find('/') == std::string::npos)
        hosts.push_back(a);
    }
    std::vector<std::string> domains;
    for (const auto& h : hosts) {
      domains.push_back(h);
      domains.push_back(h + ":" + std::to_string(port));
    }
    return domains;
  }

  // Per mesh-bound VirtualService, its hosts that match no visible service, in order.
  std::vector<std::pair<const VirtualService*, std::vector<std::string>>> UnregisteredVsHosts()
      const {
    std::vector<std::pair<const VirtualService*, std::vector<std::string>>> out;
    for (const auto& vs : config_.virtual_services) {
      if (!BoundTo(vs, kMesh) || !VisibleVs(vs))
        continue;
      std::vector<std::string> hosts;
      for (const auto& h : vs.hosts) {
        std::string host = registry_.Qualify(h, vs.meta.ns);
        bool covered = std::any_of(visible_.begin(), visible_.end(), [&](const auto* svc) {
          return HostMatches(host, svc->hostname);
        });
        if (!covered && host != "*")
          hosts.push_back(host);
      }
      if (!hosts.empty())
        out.emplace_back(&vs, std::move(hosts));
    }
    return out;
  }

  const VirtualService* FindMeshVs(const RegistryService& svc) const {
    auto candidates = Candidates(vs_by_host_, vs_wildcard_, svc.hostname);
    return candidates.empty() ? nullptr : candidates.front();
  }

  route_v3::Route DefaultRoute(const RegistryService& svc, uint32_t port) const {
    route_v3::Route r;
    r.set_name("default");
    r.mutable_match()->set_prefix("/");
    auto* ra = r.mutable_route();
    ra->set_cluster(ClusterName(port, "", svc.hostname));
    SetDurationMs(ra->mutable_timeout(), 0);
    SetRetryPolicy(std::nullopt, ra);
    AddHashPolicy(&svc, port, "", ra);
    return r;
  }

  void AddCatchAllVirtualHost(route_v3::RouteConfiguration& rc) const {
    auto* vh = rc.add_virtual_hosts();
    vh->add_domains("*");
    auto* r = vh->add_routes();
    r->mutable_match()->set_prefix("/");
    if (!registry_only_) {
      vh->set_name("allow_any");
      r->set_name("allow_any");
      r->mutable_route()->set_cluster(kPassthrough);
      SetDurationMs(r->mutable_route()->mutable_timeout(), 0);
    } else {
      vh->set_name("block_all");
      r->set_name("block_all");
      r->mutable_direct_response()->set_status(502);
    }
  }

  // ------------------------------------------------------------ listeners

  google::protobuf::Any HttpConnectionManager(const std::string& stat_prefix,
                                              const std::string& route_name) const {
    hcm_v3::HttpConnectionManager hcm;
    hcm.set_stat_prefix(stat_prefix);
    auto* rds = hcm.mutable_rds();
    *rds->mutable_config_source() = AdsSource();
    rds->set_route_config_name(route_name);
    auto* fault = hcm.add_http_filters();
    fault->set_name("envoy.filters.http.fault");
    fault->mutable_typed_config()->PackFrom(
        envoy::extensions::filters::http::fault::v3::HTTPFault());
    auto* router = hcm.add_http_filters();
    router->set_name("envoy.filters.http.router");
    router->mutable_typed_config()->PackFrom(
        envoy::extensions::filters::http::router::v3::Router());
    // As istiod: WebSocket upgrades are allowed; any other upgrade is refused (403).
    hcm.add_upgrade_configs()->set_upgrade_type("websocket");
    AddAccessLog(hcm.mutable_access_log());
    google::protobuf::Any any;
    any.PackFrom(hcm);
    return any;
  }

  google::protobuf::Any TcpProxy(const std::vector<std::pair<std::string, uint32_t>>& clusters,
                                 bool source_ip_hash = false) const {
    tcp_v3::TcpProxy tcp;
    if (source_ip_hash)  // as istiod's maybeSetHashPolicy: consistent hashing on the client
      tcp.add_hash_policy()->mutable_source_ip();
    if (clusters.size() == 1) {
      tcp.set_stat_prefix(clusters[0].first);
      tcp.set_cluster(clusters[0].first);
    } else {
      tcp.set_stat_prefix("outbound_weighted");
      for (const auto& [name, w] : clusters) {
        auto* c = tcp.mutable_weighted_clusters()->add_clusters();
        c->set_name(name);
        c->set_weight(w);
      }
    }
    AddAccessLog(tcp.mutable_access_log());
    google::protobuf::Any any;
    any.PackFrom(tcp);
    return any;
  }

  static listener_v3::Listener NewListener(const std::string& address, uint32_t port,
                                           bool outbound) {
    listener_v3::Listener l;
    l.set_name(address + "_" + std::to_string(port));
    auto* sa = l.mutable_address()->mutable_socket_address();
    sa->set_address(address);
    sa->set_port_value(port);
    if (outbound) {
      l.set_traffic_direction(core_v3::OUTBOUND);
      l.mutable_bind_to_port()->set_value(false);
    }
    return l;
  }

  static void AddTlsInspector(listener_v3::Listener& l) {
    auto* lf = l.add_listener_filters();
    lf->set_name("envoy.filters.listener.tls_inspector");
    lf->mutable_typed_config()->PackFrom(
        envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector());
  }

  // Whether a DestinationRule puts consistent hashing on the client's IP on this
  // destination (the subset's load balancer, when it has one, decides).
  bool SourceIpHash(const RegistryService* svc, const std::string& subset, uint32_t port) const {
    const DestinationRule* dr = svc ? FindDestinationRule(*svc) : nullptr;
    if (!dr)
      return false;
    const Subset* sub = nullptr;
    for (const auto& s : dr->subsets) {
      if (s.name == subset)
        sub = &s;
    }
    auto policy = Policy(dr, sub, port);
    return policy.lb && policy.lb->consistent_hash && policy.lb->consistent_hash->source_ip;
  }

  // The filter chains of a TCP service on `port`, as istiod's
  // buildSidecarOutboundTCPFilterChainOpts: its VirtualService's tcp routes in order — a
  // route whose applying matches name destinationSubnets gets a chain on those; one that
  // applies to any destination ends the list — then, unless that happened, a chain to the
  // service's own cluster. `own`: the service's prefixes (a wildcard listener's chains
  // match on them; a VIP listener's on nothing).
  std::vector<listener_v3::FilterChain> TcpChains(const RegistryService& svc, uint32_t port,
                                                  const std::vector<std::string>& own) const {
    std::vector<listener_v3::FilterChain> out;
    auto chain = [&](const std::vector<std::string>& prefixes,
                     const std::vector<std::pair<std::string, uint32_t>>& clusters,
                     bool source_ip_hash) {
      listener_v3::FilterChain c;
      for (const auto& p : prefixes) {
        core_v3::CidrRange range;
        if (ParseCidr(p, &range))
          *c.mutable_filter_chain_match()->add_prefix_ranges() = std::move(range);
      }
      auto* f = c.add_filters();
      f->set_name("envoy.filters.network.tcp_proxy");
      *f->mutable_typed_config() = TcpProxy(clusters, source_ip_hash);
      out.push_back(std::move(c));
    };
    auto hashed = [&](const L4Route& tr, const std::string& vs_ns) {
      if (tr.route.size() != 1)
        return false;  // istiod hashes a single destination only
      const RegistryService* dest = nullptr;
      DestinationCluster(tr.route[0].destination, vs_ns, port, &dest);
      return SourceIpHash(dest, tr.route[0].destination.subset, port);
    };
    bool terminal = false;
    if (const VirtualService* vs = FindMeshVs(svc)) {
      for (const auto& tr : vs->tcp) {
        if (tr.route.empty())
          continue;
        std::vector<std::string> subnets;
        bool any_destination = tr.match.empty();
        for (const auto& m : tr.match) {
          if (!MatchApplies(m, kMesh, vs->meta.ns, port))
            continue;
          if (m.destination_subnets.empty()) {
            any_destination = true;
            break;
          }
          subnets.insert(subnets.end(), m.destination_subnets.begin(), m.destination_subnets.end());
        }
        if (any_destination) {
          chain(own, L4Clusters(tr, vs->meta.ns, port), hashed(tr, vs->meta.ns));
          terminal = true;
          break;
        }
        if (!subnets.empty()) {
          chain(subnets, L4Clusters(tr, vs->meta.ns, port), hashed(tr, vs->meta.ns));
          std::vector<std::string> a = subnets, b = own;
          std::sort(a.begin(), a.end());
          std::sort(b.begin(), b.end());
          terminal |= a == b;  // the service's own chain would be its duplicate
        }
      }
    }
    if (!terminal)
      chain(own, {{ClusterName(port, "", svc.hostname), 100}}, SourceIpHash(&svc, "", port));
    return out;
  }

  std::vector<std::pair<std::string, uint32_t>> L4Clusters(const L4Route& r,
                                                           const std::string& vs_ns,
                                                           uint32_t port) const {
    std::vector<std::pair<std::string, uint32_t>> out;
    for (const auto& rd : r.route) {
      uint32_t w = static_cast<uint32_t>(rd.weight.value_or(r.route.size() == 1 ? 100 : 0));
      if (w == 0 && r.route.size() > 1)
        continue;
      out.emplace_back(DestinationCluster(rd.destination, vs_ns, port, nullptr), w);
    }
    return out;
  }

  // Sidecar outbound: per HTTP port a listener + route config named after the port; per
  // TLS port SNI filter chains; per TCP port chains matched on the services' addresses.
  void BuildSidecarListenersAndRoutes() {
    emitted_listeners_.clear();
    std::map<uint32_t, std::vector<const RegistryService*>> http_ports, tls_ports, tcp_ports;
    for (const RegistryService* svc_ptr : visible_) {
      const RegistryService& svc = *svc_ptr;
      for (const auto& p : svc.ports) {
        if (p.protocol == Protocol::kUdp)
          continue;
        if (IsHttp(p.protocol)) {
          http_ports[p.port].push_back(&svc);
        } else if (p.protocol == Protocol::kTls || p.protocol == Protocol::kHttps) {
          tls_ports[p.port].push_back(&svc);
        } else {
          tcp_ports[p.port].push_back(&svc);
        }
      }
    }

    for (const auto& [port, services] : http_ports) {
      route_v3::RouteConfiguration rc;
      rc.set_name(std::to_string(port));
      rc.mutable_validate_clusters()->set_value(false);
      rc.set_ignore_port_in_host_matching(true);
      // A domain may name one virtual host only (Envoy rejects the config otherwise); the
      // first claim wins, e.g. Kubernetes "a" in namespace "b" over a ServiceEntry "a.b".
      std::set<std::string> used_domains;
      auto add_domains = [&](route_v3::VirtualHost* vh, const std::vector<std::string>& ds) {
        for (const auto& d : ds) {
          if (used_domains.insert(d).second)
            vh->add_domains(d);
        }
      };
      for (const auto* svc : services) {
        auto* vh = rc.add_virtual_hosts();
        vh->set_name(svc->hostname + ":" + std::to_string(port));
        add_domains(vh, ServiceDomains(*svc, port));
        const VirtualService* vs = FindMeshVs(*svc);
        std::vector<route_v3::Route> routes;
        if (vs)
          routes = VsRoutes(*vs, kMesh, port);
        if (routes.empty())
          routes.push_back(DefaultRoute(*svc, port));
        for (auto& r : routes)
          *vh->add_routes() = std::move(r);
      }
      // VirtualService hosts that name no service (istiod: "no port information, default
      // to 80"): a virtual host on the ports of the services the VirtualService does
      // cover, or on port 80 when it covers none.
      for (const auto& [vs, hosts] : UnregisteredVsHosts()) {
        std::set<uint32_t> ports;
        for (const auto* svc : services_by_vs_[vs]) {
          for (const auto& p : svc->ports) {
            if (IsHttp(p.protocol))
              ports.insert(p.port);
          }
        }
        if (ports.empty())
          ports.insert(80);
        if (!ports.count(port))
          continue;
        auto routes = VsRoutes(*vs, kMesh, port);
        if (routes.empty())
          continue;
        for (const auto& host : hosts) {
          route_v3::VirtualHost vh;
          vh.set_name(host + ":" + std::to_string(port));
          add_domains(&vh, {host, host + ":" + std::to_string(port)});
          if (vh.domains_size() == 0)
            continue;
          for (const auto& r : routes)
            *vh.add_routes() = r;
          *rc.add_virtual_hosts() = std::move(vh);
        }
      }
      AddCatchAllVirtualHost(rc);
      out_.resources.Add(std::move(rc));

      auto l = NewListener("0.0.0.0", port, true);
      auto* fc = l.add_filter_chains();
      auto* f = fc->add_filters();
      f->set_name("envoy.filters.network.http_connection_manager");
      *f->mutable_typed_config() =
          HttpConnectionManager("outbound_0.0.0.0_" + std::to_string(port), std::to_string(port));
      out_.resources.Add(std::move(l));
    }

    for (const auto& [port, services] : tls_ports) {
      auto l = NewListener("0.0.0.0", port, true);
      AddTlsInspector(l);
      for (const auto* svc : services) {
        std::vector<std::pair<std::string, uint32_t>> clusters;
        const VirtualService* vs = FindMeshVs(*svc);
        if (vs) {
          for (const auto& tr : vs->tls) {
            for (const auto& m : tr.match) {
              if (!MatchApplies(m, kMesh, vs->meta.ns, port))
                continue;
              bool sni = std::any_of(m.sni_hosts.begin(), m.sni_hosts.end(), [&](auto& h) {
                return HostsIntersect(registry_.Qualify(h, vs->meta.ns), svc->hostname);
              });
              if (sni && clusters.empty())
                clusters = L4Clusters(tr, vs->meta.ns, port);
            }
          }
        }
        if (clusters.empty())
          clusters.emplace_back(ClusterName(port, "", svc->hostname), 100);
        auto* fc = l.add_filter_chains();
        fc->mutable_filter_chain_match()->add_server_names(svc->hostname);
        auto* f = fc->add_filters();
        f->set_name("envoy.filters.network.tcp_proxy");
        *f->mutable_typed_config() = TcpProxy(clusters);
      }
      out_.resources.Add(std::move(l));
    }

    // TCP ports, as istiod builds them (its buildSidecarOutboundListener): a listener on
    // each service's VIP, "VIP_PORT" (further VIPs as additional addresses); a service
    // whose address is a CIDR gets chains matched on it in the port's wildcard listener,
    // and one without an address the wildcard's default chain.
    for (const auto& [port, services] : tcp_ports) {
      std::optional<listener_v3::Listener> wildcard;
      std::set<std::string> seen_ranges;
      for (const auto* svc : services) {
        std::vector<std::string> ips, cidrs;
        for (const auto& a : svc->addresses) {
          core_v3::CidrRange range;
          if (!ParseCidr(a, &range))
            continue;
          const bool host =
              a.find('/') == std::string::npos ||
              range.prefix_len().value() == (a.find(':') == std::string::npos ? 32u : 128u);
          (host ? ips : cidrs).push_back(range.address_prefix());
          if (!host)
            cidrs.back() = a;
        }
        if (!ips.empty()) {
          auto l = NewListener(ips.front(), port, true);
          if (emitted_listeners_.count(l.name())) {
            out_.warnings.push_back("port " + std::to_string(port) + ": TCP service " +
                                    svc->hostname + " has the address " + ips.front() +
                                    " of another service on that port; skipped");
          } else {
            for (std::size_t k = 1; k < ips.size(); ++k) {
              auto* sa = l.add_additional_addresses()->mutable_address()->mutable_socket_address();
              sa->set_address(ips[k]);
              sa->set_port_value(port);
            }
            for (auto& chain : TcpChains(*svc, port, {}))
              *l.add_filter_chains() = std::move(chain);
            emitted_listeners_.insert(l.name());
            out_.resources.Add(std::move(l));
          }
        }
        if (!cidrs.empty() || ips.empty()) {
          if (!wildcard)
            wildcard = NewListener("0.0.0.0", port, true);
          for (auto& chain : TcpChains(*svc, port, cidrs)) {
            std::string key;
            for (const auto& r : chain.filter_chain_match().prefix_ranges())
              key += r.address_prefix() + "/" + std::to_string(r.prefix_len().value()) + ",";
            if (!chain.filter_chain_match().prefix_ranges().empty()) {
              if (seen_ranges.insert(key).second)
                *wildcard->add_filter_chains() = std::move(chain);
              else
                out_.warnings.push_back("port " + std::to_string(port) + ": TCP service " +
                                        svc->hostname +
                                        " has the same addresses as another service on that "
                                        "port; skipped");
            } else if (!wildcard->has_default_filter_chain()) {
              *wildcard->mutable_default_filter_chain() = std::move(chain);
            } else {
              out_.warnings.push_back("port " + std::to_string(port) + ": TCP service " +
                                      svc->hostname +
                                      " has no address to tell it apart from another service "
                                      "on the same port; skipped");
            }
          }
        }
      }
      if (wildcard)
        out_.resources.Add(std::move(*wildcard));
    }

    // Everything the proxy intercepts without a more specific listener.
    auto vo = NewListener("0.0.0.0", 15001, false);
    vo.set_name("virtualOutbound");
    vo.mutable_use_original_dst()->set_value(true);
    vo.set_traffic_direction(core_v3::OUTBOUND);
    auto* f = vo.mutable_default_filter_chain()->add_filters();
    f->set_name("envoy.filters.network.tcp_proxy");
    const char* fallback = registry_only_ ? kBlackHole : kPassthrough;
    *f->mutable_typed_config() = TcpProxy({{fallback, 100}});
    out_.resources.Add(std::move(vo));
  }

  // ------------------------------------------------------------ gateway

  void BuildGateway() {
    struct BoundServer {
      const Gateway* gateway;
      const GatewayServer* server;
    };
    std::map<uint32_t, std::vector<BoundServer>> by_port;
    for (const auto& gw : config_.gateways) {
      if (gw.selector.empty() || !SelectorMatches(gw.selector, proxy_.labels))
        continue;
      for (const auto& s : gw.servers)
        by_port[s.port].push_back(BoundServer{&gw, &s});
    }

    for (const auto& [port, servers] : by_port) {
      const std::string protocol = servers.front().server->protocol;
      const std::string& tls_mode = servers.front().server->tls_mode;
      // Like istiod, the gateway listens on the targetPort its Service maps the server port
      // to (ingressgateway: 80 -> 8080), and names the listener and route after it.
      const uint32_t listen = GatewayListenPort(port);
      if (protocol == "HTTP" || protocol == "HTTP2" || protocol == "GRPC") {
        BuildGatewayHttp(port, listen, servers);
      } else if (((protocol == "TLS" || protocol == "HTTPS") && tls_mode == "PASSTHROUGH") ||
                 protocol == "TCP") {
        BuildGatewayL4(port, listen, servers, protocol == "TCP");
      } else {
        out_.warnings.push_back(
            servers.front().gateway->meta.origin.Describe(
                "Gateway", servers.front().gateway->meta.ns, servers.front().gateway->meta.name) +
            ": port " + std::to_string(port) + " protocol " + protocol + " with TLS mode " +
            tls_mode + " needs certificates, which Sluice does not serve; skipped");
      }
    }
  }

  // The port the gateway workload listens on for a Gateway server port: the targetPort of
  // a Service in front of this gateway (selecting its labels) that exposes the port;
  // the server port itself when there is none.
  uint32_t GatewayListenPort(uint32_t port) const {
    // The gateway's full pod labels: the proxy's own, or those of the workloads they
    // select (a node may announce only istio=ingressgateway).
    std::vector<const Labels*> pods{&proxy_.labels};
    for (const auto& w : config_.workloads)
      if (!proxy_.labels.empty() && SelectorMatches(proxy_.labels, w.pod_labels))
        pods.push_back(&w.pod_labels);
    for (const auto& svc : config_.services) {
      if (svc.selector.empty())
        continue;
      bool fronts = false;
      for (const auto* l : pods)
        fronts |= SelectorMatches(svc.selector, *l);
      if (!fronts)
        continue;
      for (const auto& sp : svc.ports)
        if (sp.port == port && sp.target_port != 0)
          return sp.target_port;
    }
    return port;
  }

  template <class Servers>
  void BuildGatewayHttp(uint32_t port, uint32_t listen, const Servers& servers) {
    const std::string route_name = "http." + std::to_string(listen);
    route_v3::RouteConfiguration rc;
    rc.set_name(route_name);
    rc.mutable_validate_clusters()->set_value(false);
    rc.set_ignore_port_in_host_matching(true);

    std::map<std::string, route_v3::VirtualHost> vhosts;  // by name, as istiod sorts
    for (const auto& bound : servers) {
      const std::string gw_ref = bound.gateway->meta.ns + "/" + bound.gateway->meta.name;
      for (const auto& vs : config_.virtual_services) {
        if (!BoundTo(vs, gw_ref))
          continue;
        for (const auto& vs_host : vs.hosts) {
          bool matched = std::any_of(
              bound.server->hosts.begin(), bound.server->hosts.end(), [&](const std::string& h) {
                // Server hosts may be "ns/host"; the namespace part selects VirtualServices.
                auto slash = h.find('/');
                std::string ns_part = slash == std::string::npos ? "*" : h.substr(0, slash);
                std::string host_part = slash == std::string::npos ? h : h.substr(slash + 1);
                if (ns_part != "*" && ns_part != "." && ns_part != vs.meta.ns)
                  return false;
                if (ns_part == "." && vs.meta.ns != bound.gateway->meta.ns)
                  return false;
                return HostsIntersect(host_part, vs_host);
              });
          if (!matched)
            continue;
          std::string name = vs_host + ":" + std::to_string(port);
          if (vhosts.count(name))
            continue;  // first VirtualService for a host wins
          auto routes = VsRoutes(vs, gw_ref, port);
          if (routes.empty())
            continue;
          route_v3::VirtualHost vh;
          vh.set_name(name);
          vh.add_domains(vs_host);
          vh.add_domains(vs_host + ":*");
          // tls.httpsRedirect on an HTTP server: istiod makes Envoy redirect to https.
          if (bound.server->https_redirect)
            vh.set_require_tls(route_v3::VirtualHost::ALL);
          for (auto& r : routes)
            *vh.add_routes() = std::move(r);
          vhosts.emplace(name, std::move(vh));
        }
      }
    }
    if (vhosts.empty()) {
      // No VirtualService for this server: istiod answers 404 for every request.
      route_v3::VirtualHost vh;
      vh.set_name("blackhole:" + std::to_string(port));
      vh.add_domains("*");
      auto* r = vh.add_routes();
      r->set_name("default");
      r->mutable_match()->set_prefix("/");
      r->mutable_direct_response()->set_status(404);
      vhosts.emplace(vh.name(), vh);
    }
    for (auto& [name, vh] : vhosts)
      *rc.add_virtual_hosts() = std::move(vh);
    out_.resources.Add(std::move(rc));

    auto l = NewListener("0.0.0.0", listen, false);
    auto* f = l.add_filter_chains()->add_filters();
    f->set_name("envoy.filters.network.http_connection_manager");
    *f->mutable_typed_config() =
        HttpConnectionManager("outbound_0.0.0.0_" + std::to_string(listen), route_name);
    out_.resources.Add(std::move(l));
  }

  template <class Servers>
  void BuildGatewayL4(uint32_t port, uint32_t listen, const Servers& servers, bool tcp) {
    auto l = NewListener("0.0.0.0", listen, false);
    if (!tcp)
      AddTlsInspector(l);
    std::set<std::string> seen_sni;
    for (const auto& bound : servers) {
      const std::string gw_ref = bound.gateway->meta.ns + "/" + bound.gateway->meta.name;
      for (const auto& vs : config_.virtual_services) {
        if (!BoundTo(vs, gw_ref))
          continue;
        for (const auto& r : tcp ? vs.tcp : vs.tls) {
          for (const auto& m : r.match) {
            if (!MatchApplies(m, gw_ref, vs.meta.ns, port))
              continue;
            std::vector<std::string> sni;
            for (const auto& h : m.sni_hosts) {
              bool allowed =
                  std::any_of(bound.server->hosts.begin(), bound.server->hosts.end(),
                              [&](const std::string& sh) {
                                auto slash = sh.find('/');
                                return HostsIntersect(
                                    slash == std::string::npos ? sh : sh.substr(slash + 1), h);
                              });
              if (allowed && seen_sni.insert(h).second)
                sni.push_back(h);
            }
            if (!tcp && sni.empty())
              continue;
            auto* fc = l.add_filter_chains();
            for (const auto& h : sni)
              fc->mutable_filter_chain_match()->add_server_names(h);
            auto* f = fc->add_filters();
            f->set_name("envoy.filters.network.tcp_proxy");
            *f->mutable_typed_config() = TcpProxy(L4Clusters(r, vs.meta.ns, port));
          }
          if (tcp && r.match.empty()) {
            auto* f = l.add_filter_chains()->add_filters();
            f->set_name("envoy.filters.network.tcp_proxy");
            *f->mutable_typed_config() = TcpProxy(L4Clusters(r, vs.meta.ns, port));
          }
        }
      }
    }
    if (l.filter_chains_size() == 0) {
      out_.warnings.push_back("gateway port " + std::to_string(port) +
                              ": no VirtualService routes bound to it; no listener");
      return;
    }
    out_.resources.Add(std::move(l));
  }

  const Config& config_;
  const Registry& registry_;
  const ProxySpec& proxy_;
  bool access_log_ = false;
  bool registry_only_ = false;        // outboundTrafficPolicy in force for this proxy
  const Sidecar* sidecar_ = nullptr;  // the Sidecar resource scoping this proxy, if any
  Translation out_;
  std::vector<const RegistryService*> visible_;
  std::map<const VirtualService*, std::vector<const RegistryService*>> services_by_vs_;
  std::unordered_map<std::string, std::vector<const DestinationRule*>> dr_by_host_;
  std::vector<std::pair<std::string, const DestinationRule*>> dr_wildcard_;
  std::unordered_map<std::string, std::vector<const VirtualService*>> vs_by_host_;
  std::vector<std::pair<std::string, const VirtualService*>> vs_wildcard_;
  std::set<std::string> emitted_listeners_;  // TCP listeners by name (one per VIP and port)
};

}  // namespace

Result<ProxySpec> ProxySpec::Parse(std::string_view text) {
  ProxySpec p;
  auto colon = text.find(':');
  std::string_view kind = text.substr(0, colon);
  std::string_view rest = colon == std::string_view::npos ? "" : text.substr(colon + 1);
  if (kind == "sidecar") {
    p.kind = Kind::kSidecar;
    if (rest.empty())
      return Fail("--proxy sidecar:NAMESPACE: namespace missing");
    p.ns = std::string(rest);
    return p;
  }
  if (kind == "gateway") {
    p.kind = Kind::kGateway;
    p.ns = "istio-system";
    auto at = rest.find('@');
    if (at != std::string_view::npos) {
      p.ns = std::string(rest.substr(at + 1));
      rest = rest.substr(0, at);
    }
    while (!rest.empty()) {
      auto comma = rest.find(',');
      std::string_view kv = rest.substr(0, comma);
      rest = comma == std::string_view::npos ? "" : rest.substr(comma + 1);
      auto eq = kv.find('=');
      if (eq == std::string_view::npos || eq == 0) {
        return Fail("--proxy gateway:KEY=VALUE: \"" + std::string(kv) + "\" is not KEY=VALUE");
      }
      p.labels[std::string(kv.substr(0, eq))] = std::string(kv.substr(eq + 1));
    }
    if (p.labels.empty())
      return Fail("--proxy gateway:KEY=VALUE: labels missing");
    return p;
  }
  return Fail("--proxy \"" + std::string(text) +
              "\": want sidecar:NAMESPACE or gateway:KEY=VALUE[,KEY=VALUE]");
}

std::string ProxySpec::Describe() const {
  if (kind == Kind::kSidecar)
    return "sidecar:" + ns;
  std::string s = "gateway:";
  bool first = true;
  for (const auto& [k, v] : labels) {
    if (!first)
      s += ",";
    s += k + "=" + v;
    first = false;
  }
  return s + "@" + ns;
}

Translation Translate(const Config& config, const Registry& registry, const ProxySpec& proxy) {
  return Builder(config, registry, proxy).Run();
}

Result<std::string> ResourcesToJson(const xds::ResourceSet& resources) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = false;
  std::string out = "{";
  auto section = [&](const char* name, const auto& map) -> Result<void> {
    if (out.size() > 1)
      out += ",";
    out += "\"";
    out += name;
    out += "\":[";
    bool first = true;
    for (const auto& [key, msg] : map) {
      std::string json;
      auto status = google::protobuf::util::MessageToJsonString(msg, &json, options);
      if (!status.ok()) {
        return Fail(std::string(name) + " " + key + ": " + std::string(status.message()));
      }
      if (!first)
        out += ",";
      out += json;
      first = false;
    }
    out += "]";
    return {};
  };
  SLUICE_RETURN_IF_ERROR(section("listeners", resources.listeners));
  SLUICE_RETURN_IF_ERROR(section("routes", resources.routes));
  SLUICE_RETURN_IF_ERROR(section("clusters", resources.clusters));
  SLUICE_RETURN_IF_ERROR(section("endpoints", resources.endpoints));
  out += "}";
  return out;
}

}  // namespace sluice::istio
