// Istio's standard metrics: identities (interned), the label values Istio's stats filter
// gives them, the per-pod series and their Prometheus text (istio_stats.h); and the
// session's hooks (telemetry_hooks.h) that record a request when its access-log entry
// is written and a TCP connection when it opens and closes; and a chain's istio.stats
// config (stats.PluginConfig) compiled into drop and label masks.
#include "sluice/proxy/istio_stats.h"

#include <google/protobuf/any.pb.h>
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/unknown_field_set.h>
#include <google/protobuf/util/json_util.h>
#include <netinet/in.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <deque>
#include <set>

#include <fmt/format.h>

#include "envoy/config/cluster/v3/cluster.pb.h"
#include "envoy/config/core/v3/base.pb.h"
#include "istio-proxy/stats/config.pb.h"
#include "session.h"
#include "sluice/common/cel_literal.h"
#include "sluice/common/kube_names.h"
#include "telemetry_hooks.h"
#include "udpa/type/v1/typed_struct.pb.h"

namespace sluice::proxy::telemetry {
namespace {

// Interned values live in a deque (stable addresses) indexed by a set of pointers.
template <typename T>
class Interner {
 public:
  const T* Get(const T& v) {
    std::lock_guard lock(mu_);
    if (auto it = index_.find(&v); it != index_.end())
      return *it;
    const T* p = &store_.emplace_back(v);
    index_.insert(p);
    return p;
  }

 private:
  struct Less {
    using is_transparent = void;
    bool operator()(const T* a, const T* b) const { return *a < *b; }
  };
  std::mutex mu_;
  std::deque<T> store_;
  std::set<const T*, Less> index_;
};

Interner<Workload>& Workloads() {
  static auto* i = new Interner<Workload>;  // never destroyed: workers may outlive statics
  return *i;
}
Interner<Service>& Services() {
  static auto* i = new Interner<Service>;
  return *i;
}
Interner<StatsConfig>& StatsConfigs() {
  static auto* i = new Interner<StatsConfig>;
  return *i;
}

const std::string* FindLabel(const std::map<std::string, std::string>& labels,
                             std::initializer_list<const char*> keys) {
  for (const char* k : keys)
    if (auto it = labels.find(k); it != labels.end())
      return &it->second;
  return nullptr;
}

const std::string& Or(const std::string& v, const std::string& fallback) {
  return v.empty() ? fallback : v;
}

const std::string kUnknown = "unknown";
const std::string kLatest = "latest";

}  // namespace

const Workload* Intern(const Workload& w) {
  return Workloads().Get(w);
}
const Service* Intern(const Service& s) {
  return Services().Get(s);
}
const StatsConfig* Intern(const StatsConfig& c) {
  return StatsConfigs().Get(c);
}

int TagIndex(std::string_view name) {
  for (std::size_t i = 0; i < kTagNames.size(); ++i)
    if (kTagNames[i] == name)
      return static_cast<int>(i);
  return -1;
}

// ---------------------------------------------------------------- istio.stats config

namespace {

Result<void> CompileInto(const ::stats::PluginConfig& pc, StatsConfig* out) {
  if (pc.reporter() == ::stats::SERVER_GATEWAY)
    return Fail("reporter SERVER_GATEWAY (a waypoint's reporter \"waypoint\") is not supported");
  for (int i = 0; i < pc.definitions_size(); ++i) {
    const auto& d = pc.definitions(i);
    // istio/proxy ignores a definition that names a standard metric.
    if (std::find(kMetricNames.begin(), kMetricNames.end(), d.name()) != kMetricNames.end() ||
        d.name() == "request_messages_total" || d.name() == "response_messages_total")
      continue;
    return Fail(fmt::format("definitions[{}] (metric \"{}\"): custom metrics are not supported", i,
                            d.name()));
  }
  for (int i = 0; i < pc.metrics_size(); ++i) {
    const auto& mc = pc.metrics(i);
    const std::string where =
        fmt::format("metrics[{}] (metric \"{}\")", i, mc.name().empty() ? "all" : mc.name());
    // The metrics it applies to: one by name, all when unnamed; a name that is not one
    // Sluice records (gRPC's message counters, a custom metric) changes nothing here.
    uint32_t targets = 0;
    if (mc.name().empty()) {
      targets = (1u << kMetricCount) - 1;
    } else if (auto it = std::find(kMetricNames.begin(), kMetricNames.end(), mc.name());
               it != kMetricNames.end()) {
      targets = 1u << (it - kMetricNames.begin());
    }
    if (mc.drop()) {
      // As istio/proxy: only a named metric is dropped (an unnamed drop matches none),
      // and the entry's tag changes are not read.
      if (!mc.name().empty())
        out->drop |= targets;
      continue;
    }
    auto each = [&](auto f) {
      for (int m = 0; m < kMetricCount; ++m)
        if (targets & (1u << m))
          f(out->tags[m]);
    };
    for (const auto& tag : mc.tags_to_remove()) {
      const int idx = TagIndex(tag);
      if (idx < 0)
        continue;  // istio/proxy: only standard tags are removed; another is ignored
      each([&](StatsConfig::MetricTags& t) {
        t.removed |= 1u << idx;
        std::erase_if(t.replaced, [&](const auto& r) { return r.first == idx; });
      });
    }
    // In tag-name order, as istio/proxy applies them.
    std::vector<std::pair<std::string, std::string>> dims(mc.dimensions().begin(),
                                                          mc.dimensions().end());
    std::sort(dims.begin(), dims.end());
    for (const auto& [tag, expr] : dims) {
      if (!targets)
        continue;
      auto value = cel::StringLiteral(expr);
      if (!value) {
        return Fail(fmt::format(
            "{}: dimensions[\"{}\"]: value `{}` is a CEL expression Sluice does not evaluate "
            "(only a string literal, such as 'v', is supported)",
            where, tag, expr));
      }
      const int idx = TagIndex(tag);
      if (idx >= 0) {
        each([&](StatsConfig::MetricTags& t) {
          t.removed &= ~(1u << idx);
          std::erase_if(t.replaced, [&](const auto& r) { return r.first == idx; });
          t.replaced.emplace_back(static_cast<uint8_t>(idx), *value);
        });
        continue;
      }
      if (!cel::PrometheusLabelName(tag)) {
        return Fail(fmt::format("{}: dimensions[\"{}\"]: not a Prometheus label name", where, tag));
      }
      Result<void> dup = {};
      each([&](StatsConfig::MetricTags& t) {
        for (const auto& [n, v] : t.added) {
          if (n == tag && dup) {
            dup =
                Fail(fmt::format("{}: dimensions[\"{}\"]: the tag is added twice to a metric "
                                 "(istio/proxy would report it twice)",
                                 where, tag));
          }
        }
        t.added.emplace_back(tag, *value);
      });
      SLUICE_RETURN_IF_ERROR(dup);
    }
  }
  return {};
}

}  // namespace

Result<const StatsConfig*> CompileStatsConfig(const google::protobuf::Any& any) {
  ::stats::PluginConfig pc;
  std::string_view type = any.type_url();
  type = type.substr(type.rfind('/') + 1);
  if (type == "udpa.type.v1.TypedStruct" || type == "xds.type.v3.TypedStruct") {
    // The two TypedStructs have one wire layout: type_url = 1, value = 2 (a Struct).
    udpa::type::v1::TypedStruct ts;
    if (!ts.ParseFromString(any.value()))
      return Fail("typed_config: not a TypedStruct");
    std::string inner = ts.type_url().substr(ts.type_url().rfind('/') + 1);
    if (inner != "stats.PluginConfig")
      return Fail("typed_config: a TypedStruct of " + ts.type_url() + ", not stats.PluginConfig");
    std::string json;
    (void)google::protobuf::util::MessageToJsonString(ts.value(), &json);
    auto st = google::protobuf::util::JsonStringToMessage(json, &pc);
    if (!st.ok())
      return Fail("typed_config: stats.PluginConfig: " + std::string(st.message()));
  } else if (type == "stats.PluginConfig") {
    if (!pc.ParseFromString(any.value()))
      return Fail("typed_config: not a stats.PluginConfig");
    // Fields 1-5 are istio/proxy's retired ones (it ignores them); any other unknown
    // field may change what is counted.
    const auto& unknown = pc.GetReflection()->GetUnknownFields(pc);
    for (int i = 0; i < unknown.field_count(); ++i) {
      if (unknown.field(i).number() > 5) {
        return Fail(fmt::format("typed_config: stats.PluginConfig field {} is not known",
                                unknown.field(i).number()));
      }
    }
  } else {
    return Fail("typed_config: type " + std::string(any.type_url()) + " is not stats.PluginConfig");
  }
  StatsConfig c;
  SLUICE_RETURN_IF_ERROR(CompileInto(pc, &c));
  return Intern(c);
}

const Workload* EndpointWorkload(const envoy::config::core::v3::Metadata& md) {
  auto it = md.filter_metadata().find("istio");
  if (it == md.filter_metadata().end())
    return nullptr;
  auto f = it->second.fields().find("workload");
  if (f == it->second.fields().end() || !f->second.has_string_value())
    return nullptr;
  // name;namespace;canonical_service;canonical_revision;cluster (istiod's
  // AppendLbEndpointMetadata; a revision of "latest" is sent empty).
  std::array<std::string, 5> parts;
  std::size_t i = 0;
  for (char c : f->second.string_value()) {
    if (c == ';') {
      if (++i == parts.size())
        return nullptr;
    } else {
      parts[i] += c;
    }
  }
  Workload w;
  w.name = parts[0];
  w.ns = parts[1];
  w.canonical_service = parts[2];
  w.canonical_revision = parts[3];
  w.cluster = parts[4];
  if (w.name.empty() && w.ns.empty() && w.canonical_service.empty())
    return nullptr;  // ";;;;Kubernetes": istiod knew nothing of it
  return Intern(w);
}

const Service* ClusterService(const envoy::config::cluster::v3::Cluster& c) {
  const std::string& name = c.name();
  if (name == "BlackHoleCluster" || name == "PassthroughCluster" ||
      name == "InboundPassthroughCluster" || name == "InboundPassthroughClusterIpv4" ||
      name == "InboundPassthroughClusterIpv6")
    return Intern(Service{"", name, ""});
  auto it = c.metadata().filter_metadata().find("istio");
  if (it == c.metadata().filter_metadata().end())
    return nullptr;
  auto s = it->second.fields().find("services");
  if (s == it->second.fields().end() || !s->second.has_list_value() ||
      s->second.list_value().values_size() == 0)
    return nullptr;
  const auto& fields = s->second.list_value().values(0).struct_value().fields();
  auto str = [&](const char* key) {
    auto f = fields.find(key);
    return f == fields.end() ? std::string() : f->second.string_value();
  };
  Service out{str("host"), str("name"), str("namespace")};
  if (out.name.empty())  // Istio: the host up to its first dot
    out.name = out.host.substr(0, out.host.find('.'));
  return Intern(out);
}

Workload PodWorkload(const std::string& ns, const std::string& name,
                     const std::map<std::string, std::string>& labels, const std::string& cluster) {
  Workload w;
  w.ns = ns;
  w.cluster = cluster;
  w.name = kube::PodWorkloadName(name, labels);
  const std::string* cs =
      FindLabel(labels, {"service.istio.io/canonical-name", "app.kubernetes.io/name", "app"});
  w.canonical_service = cs ? *cs : w.name;
  const std::string* cr = FindLabel(
      labels, {"service.istio.io/canonical-revision", "app.kubernetes.io/version", "version"});
  w.canonical_revision = cr ? *cr : kLatest;
  if (const std::string* a = FindLabel(labels, {"app"}))
    w.app = *a;
  if (const std::string* v = FindLabel(labels, {"version"}))
    w.version = *v;
  return w;
}

// ---------------------------------------------------------------- peers

std::size_t PeerDirectory::Hash::operator()(const IpAddress& a) const {
  uint64_t h = a.family;
  for (std::size_t i = 0; i < (a.family == 4 ? 4u : 16u); ++i)
    h = h * 1099511628211ull ^ a.bytes[i];
  return static_cast<std::size_t>(h);
}

void PeerDirectory::Set(const IpAddress& ip, const Workload* w) {
  std::unique_lock lock(mu_);
  by_ip_[ip] = w;
}

void PeerDirectory::Erase(const IpAddress& ip, const Workload* w) {
  std::unique_lock lock(mu_);
  if (auto it = by_ip_.find(ip); it != by_ip_.end() && it->second == w)
    by_ip_.erase(it);
}

const Workload* PeerDirectory::Find(const IpAddress& ip) const {
  std::shared_lock lock(mu_);
  auto it = by_ip_.find(ip);
  return it == by_ip_.end() ? nullptr : it->second;
}

const Workload* PeerDirectory::Find(const sockaddr_storage& addr) const {
  IpAddress ip;
  if (addr.ss_family == AF_INET) {
    ip.family = 4;
    std::memcpy(ip.bytes.data(), &reinterpret_cast<const sockaddr_in&>(addr).sin_addr, 4);
  } else if (addr.ss_family == AF_INET6) {
    ip.family = 6;
    std::memcpy(ip.bytes.data(), &reinterpret_cast<const sockaddr_in6&>(addr).sin6_addr, 16);
  } else {
    return nullptr;
  }
  return Find(ip);
}

// ---------------------------------------------------------------- series

void Histogram::Record(uint64_t v) {
  // Envoy counts a value in the first bucket whose bound is >= it.
  std::size_t i = 0;
  while (i < kBuckets.size() && static_cast<double>(v) > kBuckets[i])
    ++i;
  if (i < kBuckets.size())
    buckets[i].fetch_add(1, std::memory_order_relaxed);
  count.fetch_add(1, std::memory_order_relaxed);
  sum.fetch_add(v, std::memory_order_relaxed);
}

std::size_t SeriesKeyHash::operator()(const SeriesKey& k) const {
  auto mix = [](uint64_t h, uint64_t v) { return (h ^ v) * 0x9e3779b97f4a7c15ull; };
  uint64_t h = 0;
  h = mix(h, reinterpret_cast<uintptr_t>(k.self));
  h = mix(h, reinterpret_cast<uintptr_t>(k.peer_local));
  h = mix(h, reinterpret_cast<uintptr_t>(k.peer_eds));
  h = mix(h, reinterpret_cast<uintptr_t>(k.service));
  h = mix(h, reinterpret_cast<uintptr_t>(k.stats));
  h = mix(h, (uint64_t{k.flags} << 24) | (uint64_t{k.code} << 8) | k.kind);
  h = mix(h, static_cast<uint32_t>(k.grpc_status));
  return static_cast<std::size_t>(h ^ (h >> 29));
}

IstioStats::IstioStats(const Workload* self, std::shared_ptr<const PeerDirectory> peers,
                       std::size_t max_series)
    : self_(self), peers_(std::move(peers)), max_series_(max_series) {}

Series& IstioStats::Get(SeriesKey key) {
  key.self = self();
  std::lock_guard lock(mu_);
  if (auto it = series_.find(key); it != series_.end())
    return *it->second;
  if (series_.size() >= max_series_) {
    // One overflow series per reporter and protocol (kept apart from the cap).
    // (and per istio.stats config, so what it drops stays dropped).
    key = SeriesKey{.stats = key.stats,
                    .kind = static_cast<uint8_t>((key.kind & (kInbound | kTcp)) | kOverflow)};
    if (auto it = series_.find(key); it != series_.end())
      return *it->second;
  }
  auto s = std::make_unique<Series>();
  s->key = key;
  Series& ref = *s;
  series_.emplace(key, std::move(s));
  return ref;
}

std::size_t IstioStats::size() const {
  std::lock_guard lock(mu_);
  return series_.size();
}

void IstioStats::Collect(std::vector<Sample>* out) const {
  std::lock_guard lock(mu_);
  auto hist = [](const Histogram& h, Sample::Hist* o) {
    for (std::size_t i = 0; i < kBuckets.size(); ++i)
      o->buckets[i] = h.buckets[i].load(std::memory_order_relaxed);
    o->count = h.count.load(std::memory_order_relaxed);
    o->sum = h.sum.load(std::memory_order_relaxed);
  };
  for (const auto& [key, s] : series_) {
    Sample o;
    o.labels = Labels(key);
    o.stats = key.stats;
    o.tcp = key.kind & kTcp;
    o.requests = s->requests.load(std::memory_order_relaxed);
    hist(s->duration_ms, &o.duration_ms);
    hist(s->request_bytes, &o.request_bytes);
    hist(s->response_bytes, &o.response_bytes);
    o.tcp_opened = s->tcp_opened.load(std::memory_order_relaxed);
    o.tcp_closed = s->tcp_closed.load(std::memory_order_relaxed);
    o.tcp_sent = s->tcp_sent.load(std::memory_order_relaxed);
    o.tcp_received = s->tcp_received.load(std::memory_order_relaxed);
    out->push_back(std::move(o));
  }
}

// ---------------------------------------------------------------- labels

std::string FlagString(uint32_t flags) {
  // Envoy's short names, in its order (access_log.h).
  using engine::kFlagNames;
  std::string out;
  for (std::size_t i = 0; i < std::size(kFlagNames); ++i) {
    if (flags & (1u << i)) {
      if (!out.empty())
        out += ',';
      out += kFlagNames[i];
    }
  }
  return out.empty() ? "-" : out;
}

std::vector<std::pair<std::string_view, std::string>> Labels(const SeriesKey& k) {
  const bool inbound = k.kind & kInbound, tcp = k.kind & kTcp;
  std::vector<std::pair<std::string_view, std::string>> l;
  l.reserve(25);
  auto add = [&](std::string_view name, std::string value) {
    l.emplace_back(name, std::move(value));
  };
  if (k.kind & kOverflow) {
    // Past the cap: one series whose identity labels say so.
    add("reporter", inbound ? "destination" : "source");
    for (std::string_view n :
         {"source_workload", "source_canonical_service", "source_canonical_revision",
          "source_workload_namespace", "source_principal", "source_app", "source_version",
          "source_cluster", "destination_workload", "destination_workload_namespace",
          "destination_principal", "destination_app", "destination_version", "destination_service",
          "destination_canonical_service", "destination_canonical_revision",
          "destination_service_name", "destination_service_namespace", "destination_cluster"})
      add(n, "overflow");
    add("request_protocol", tcp ? "tcp" : "http");
    if (!tcp) {
      add("response_code", "overflow");
      add("grpc_response_status", "");
    }
    add("response_flags", "overflow");
    add("connection_security_policy", inbound ? "none" : "unknown");
    return l;
  }
  static const Workload kNone;
  const Workload& self = k.self ? *k.self : kNone;
  // The other end: what metadata exchange would have said (a pod of this node), else
  // istiod's endpoint metadata (which has no app or version).
  const Workload* local = k.peer_local;
  const Workload* eds = k.peer_eds;
  if (local && eds && (local->name != eds->name || local->ns != eds->ns))
    local = nullptr;  // the address is now another pod's than istiod's endpoint says
  auto peer = [&](std::string Workload::*f) -> std::string {
    if (eds && !(eds->*f).empty())
      return eds->*f;
    if (local && !(local->*f).empty())
      return local->*f;
    return "";
  };
  const std::string peer_name = peer(&Workload::name), peer_ns = peer(&Workload::ns);
  const std::string peer_app = local ? local->app : "", peer_version = local ? local->version : "";
  const std::string peer_cs = peer(&Workload::canonical_service),
                    peer_cr = peer(&Workload::canonical_revision),
                    peer_cluster = peer(&Workload::cluster);
  const Service* svc = k.service;

  add("reporter", inbound ? "destination" : "source");
  if (inbound) {
    add("source_workload", Or(peer_name, kUnknown));
    add("source_canonical_service", Or(peer_cs, kUnknown));
    add("source_canonical_revision", Or(peer_cr, kLatest));
    add("source_workload_namespace", Or(peer_ns, kUnknown));
    add("source_principal", kUnknown);  // no mTLS: no peer identity
    add("source_app", Or(peer_app, kUnknown));
    add("source_version", Or(peer_version, kUnknown));
    add("source_cluster", Or(peer_cluster, kUnknown));
    add("destination_workload", Or(self.name, kUnknown));
    add("destination_workload_namespace", Or(self.ns, kUnknown));
    add("destination_principal", kUnknown);
    add("destination_app", Or(self.app, kUnknown));
    add("destination_version", Or(self.version, kUnknown));
    add("destination_service",
        svc && !svc->host.empty() ? svc->host : Or(self.canonical_service, kUnknown));
    add("destination_canonical_service", Or(self.canonical_service, kUnknown));
    add("destination_canonical_revision", Or(self.canonical_revision, kLatest));
    add("destination_service_name",
        svc && !svc->name.empty() ? svc->name : Or(self.canonical_service, kUnknown));
    add("destination_service_namespace", Or(self.ns, kUnknown));
    add("destination_cluster", Or(self.cluster, kUnknown));
  } else {
    add("source_workload", Or(self.name, kUnknown));
    add("source_canonical_service", Or(self.canonical_service, kUnknown));
    add("source_canonical_revision", Or(self.canonical_revision, kLatest));
    add("source_workload_namespace", Or(self.ns, kUnknown));
    add("source_principal", kUnknown);
    add("source_app", Or(self.app, kUnknown));
    add("source_version", Or(self.version, kUnknown));
    add("source_cluster", Or(self.cluster, kUnknown));
    add("destination_workload", Or(peer_name, kUnknown));
    add("destination_workload_namespace", Or(peer_ns, kUnknown));
    add("destination_principal", kUnknown);
    add("destination_app", Or(peer_app, kUnknown));
    add("destination_version", Or(peer_version, kUnknown));
    add("destination_service", svc && !svc->host.empty() ? svc->host : kUnknown);
    add("destination_canonical_service", Or(peer_cs, kUnknown));
    add("destination_canonical_revision", Or(peer_cr, kLatest));
    add("destination_service_name", svc && !svc->name.empty() ? svc->name : kUnknown);
    // Istio's client side reports the peer's namespace here, not the service's.
    add("destination_service_namespace", Or(peer_ns, kUnknown));
    add("destination_cluster", Or(peer_cluster, kUnknown));
  }
  add("request_protocol", tcp ? "tcp" : (k.kind & kGrpc) ? "grpc" : "http");
  if (!tcp) {
    add("response_code", std::to_string(k.code));
    add("grpc_response_status", k.grpc_status >= 0 ? std::to_string(k.grpc_status) : "");
  }
  add("response_flags", FlagString(k.flags));
  // Plaintext: the server side says "none"; the client side cannot tell ("unknown").
  add("connection_security_policy", inbound ? "none" : "unknown");
  return l;
}

// ---------------------------------------------------------------- text

namespace {

void AppendEscaped(std::string& out, std::string_view v) {
  for (char c : v) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '"')
      out += "\\\"";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
}

std::string LabelText(const std::vector<std::pair<std::string_view, std::string>>& labels) {
  std::string out;
  for (const auto& [n, v] : labels) {
    if (!out.empty())
      out += ',';
    out += n;
    out += "=\"";
    AppendEscaped(out, v);
    out += '"';
  }
  return out;
}

void Add(Sample::Hist& a, const Sample::Hist& b) {
  for (std::size_t i = 0; i < kBuckets.size(); ++i)
    a.buckets[i] += b.buckets[i];
  a.count += b.count;
  a.sum += b.sum;
}

// A sample's label text for one metric: its chain's istio.stats config removes,
// replaces and adds labels.
std::string LabelTextFor(const Sample& s, Metric m) {
  const StatsConfig::MetricTags& t = s.stats->tags[m];
  std::vector<std::pair<std::string_view, std::string>> labels;
  labels.reserve(s.labels.size() + t.added.size());
  for (const auto& [n, v] : s.labels) {
    const int idx = TagIndex(n);
    if (idx >= 0 && (t.removed & (1u << idx)))
      continue;
    const std::string* value = &v;
    for (const auto& [r, rv] : t.replaced)
      if (r == idx)
        value = &rv;
    labels.emplace_back(n, *value);
  }
  for (const auto& [n, v] : t.added)
    labels.emplace_back(n, v);
  return LabelText(labels);
}

}  // namespace

std::string RenderPrometheus(const std::vector<Sample>& samples) {
  // Each sample's label text once; a metric whose labels its config changes gets its own
  // (kept in `changed`, whose strings do not move). Series are keyed by views of them.
  std::vector<std::string> base(samples.size());
  std::size_t label_bytes = 0;
  for (std::size_t i = 0; i < samples.size(); ++i) {
    base[i] = LabelText(samples[i].labels);
    label_bytes += base[i].size();
  }
  std::deque<std::string> changed;
  // Every line is "NAME{LABELS[,le="B"]} VALUE": written with appends and to_chars, since
  // a node's scrape is tens of megabytes and this loop is all of its cost. Each histogram
  // series is 22 lines, so the text is reserved up front.
  std::string out;
  out.reserve(label_bytes * 70 + 4096);
  auto line = [&](std::string_view name, std::string_view suffix, std::string_view labels,
                  std::string_view le, uint64_t v) {
    out.append(name).append(suffix).push_back('{');
    out.append(labels);
    if (!le.empty())
      out.append(",le=\"").append(le).push_back('"');
    out.append("} ");
    char buf[24];
    auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
    out.append(buf, end).push_back('\n');
  };
  static const std::array<std::string, kBuckets.size()> kLe = [] {
    std::array<std::string, kBuckets.size()> le;
    for (std::size_t i = 0; i < kBuckets.size(); ++i)
      le[i] = fmt::format("{}", kBuckets[i]);
    return le;
  }();
  // Equal label sets summed (per metric: a removed label may make two series one), in a
  // stable order.
  auto rows = [&](Metric m, bool tcp, auto&& add) {
    for (std::size_t i = 0; i < samples.size(); ++i) {
      const Sample& s = samples[i];
      if (s.tcp != tcp || (s.stats && s.stats->Dropped(m)))
        continue;
      if (s.stats && s.stats->tags[m].Changes())
        add(std::string_view(changed.emplace_back(LabelTextFor(s, m))), s);
      else
        add(std::string_view(base[i]), s);
    }
  };
  auto counter = [&](Metric m, bool tcp, uint64_t Sample::*field) {
    std::map<std::string_view, uint64_t> sum;
    rows(m, tcp, [&](std::string_view labels, const Sample& s) { sum[labels] += s.*field; });
    if (sum.empty())
      return;
    const std::string name = fmt::format("istio_{}", kMetricNames[m]);
    out.append("# TYPE ").append(name).append(" counter\n");
    for (const auto& [labels, v] : sum)
      line(name, "", labels, "", v);
  };
  auto histogram = [&](Metric m, Sample::Hist Sample::*field) {
    std::map<std::string_view, Sample::Hist> sum;
    rows(m, false, [&](std::string_view labels, const Sample& s) {
      if ((s.*field).count == 0)
        return;  // a request that ended before this was measured
      Add(sum[labels], s.*field);
    });
    if (sum.empty())
      return;
    const std::string name = fmt::format("istio_{}", kMetricNames[m]);
    out.append("# TYPE ").append(name).append(" histogram\n");
    for (const auto& [labels, h] : sum) {
      uint64_t cumulative = 0;
      for (std::size_t i = 0; i < kBuckets.size(); ++i) {
        cumulative += h.buckets[i];
        line(name, "_bucket", labels, kLe[i], cumulative);
      }
      line(name, "_bucket", labels, "+Inf", h.count);
      line(name, "_sum", labels, "", h.sum);
      line(name, "_count", labels, "", h.count);
    }
  };
  counter(kRequestsTotal, false, &Sample::requests);
  histogram(kRequestDuration, &Sample::duration_ms);
  histogram(kRequestBytes, &Sample::request_bytes);
  histogram(kResponseBytes, &Sample::response_bytes);
  counter(kTcpSentBytes, true, &Sample::tcp_sent);
  counter(kTcpReceivedBytes, true, &Sample::tcp_received);
  counter(kTcpOpened, true, &Sample::tcp_opened);
  counter(kTcpClosed, true, &Sample::tcp_closed);
  return out;
}

}  // namespace sluice::proxy::telemetry

// ---------------------------------------------------------------- the session's hooks

namespace sluice::proxy::engine {
namespace {

// The pod's inbound side: the listener that restores the original destination without
// handing connections over (istiod's virtualInbound; see PodProxies::ForPods). The rest
// is the outbound side (the capture listener and the listeners it hands over to).
bool Inbound(const Session& s) {
  return s.lc && s.lc->restore_original_dst && !s.lc->use_original_dst;
}

telemetry::SeriesKey KeyOf(const Session& s, const telemetry::IstioStats& st,
                           const Cluster* cluster, const Endpoint* ep) {
  telemetry::SeriesKey k;
  if (Inbound(s)) {
    k.kind = telemetry::kInbound;
    if (s.facts.source)
      k.peer_local = st.peers() ? st.peers()->Find(*s.facts.source) : nullptr;
  } else if (ep) {
    k.peer_eds = ep->istio_workload;
    k.peer_local = st.peers() ? st.peers()->Find(ep->addr) : nullptr;
  }
  k.service = cluster ? cluster->istio_service : nullptr;
  k.stats = s.chain ? s.chain->istio_stats : nullptr;
  return k;
}

}  // namespace

void RecordTelemetry(const Session& s) {
  telemetry::IstioStats* st = s.w->opts().istio_stats.get();
  if (!st || !s.chain || !s.chain->fail_closed.empty() || !s.chain->istio_stats)
    return;  // no chain served it, or its chain carries no istio.stats: nothing recorded
  const telemetry::StatsConfig& cfg = *s.chain->istio_stats;
  using telemetry::Metric;
  auto on = [&](Metric m) { return !cfg.Dropped(m); };
  if (s.chain->is_http) {
    // cluster and endpoint are this request's only once it was routed (Dispatch); a
    // request that failed before keeps the last one's, which must not be read.
    const Cluster* cluster = s.route ? s.cluster : nullptr;
    const Endpoint* ep = s.route ? s.up_ep : nullptr;
    telemetry::SeriesKey k = KeyOf(s, *st, cluster, ep);
    k.code = static_cast<uint16_t>(s.status);
    k.flags = s.flags;
    if (s.grpc) {
      k.kind |= telemetry::kGrpc;
      std::string gs = s.GrpcStatus();
      if (auto v = grpc::ParseGrpcStatus(gs))
        k.grpc_status = *v;
    }
    telemetry::Series& se = st->Get(k);
    if (on(telemetry::kRequestsTotal))
      se.requests.fetch_add(1, std::memory_order_relaxed);
    if (on(telemetry::kRequestDuration)) {
      se.duration_ms.Record(static_cast<uint64_t>(std::max<int64_t>(0, s.w->now() - s.start_ms)));
    }
    if (on(telemetry::kRequestBytes))
      se.request_bytes.Record(s.req.head_len + s.bytes_rx);
    if (on(telemetry::kResponseBytes))
      se.response_bytes.Record(s.bytes_tx);
    return;
  }
  telemetry::SeriesKey k = KeyOf(s, *st, s.cluster, s.up_ep);
  k.kind |= telemetry::kTcp;
  k.flags = s.flags;
  telemetry::Series& se = st->Get(k);
  if (!s.up_ep && on(telemetry::kTcpOpened))                // it never reached an endpoint, so
    se.tcp_opened.fetch_add(1, std::memory_order_relaxed);  // RecordTcpOpen did not count it
  if (on(telemetry::kTcpClosed))
    se.tcp_closed.fetch_add(1, std::memory_order_relaxed);
  if (on(telemetry::kTcpSentBytes))
    se.tcp_sent.fetch_add(s.bytes_tx, std::memory_order_relaxed);
  if (on(telemetry::kTcpReceivedBytes))
    se.tcp_received.fetch_add(s.bytes_rx, std::memory_order_relaxed);
}

void RecordTcpOpen(const Session& s) {
  telemetry::IstioStats* st = s.w->opts().istio_stats.get();
  if (!st || !s.chain || !s.chain->istio_stats ||
      s.chain->istio_stats->Dropped(telemetry::kTcpOpened))
    return;
  telemetry::SeriesKey k = KeyOf(s, *st, s.cluster, s.up_ep);
  k.kind |= telemetry::kTcp;
  st->Get(k).tcp_opened.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace sluice::proxy::engine
