// Istio's standard metrics: identities (interned), the label values Istio's stats filter
// gives them, the per-pod series and their Prometheus text (istio_stats.h); and the
// session's hooks (telemetry_hooks.h) that record a request when its access-log entry
// is written and a TCP connection when it opens and closes.
#include "sluice/proxy/istio_stats.h"

#include <netinet/in.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <set>

#include <fmt/format.h>

#include "envoy/config/cluster/v3/cluster.pb.h"
#include "envoy/config/core/v3/base.pb.h"
#include "session.h"
#include "sluice/common/kube_names.h"
#include "telemetry_hooks.h"

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
  h = mix(h, (uint64_t{k.flags} << 24) | (uint64_t{k.code} << 8) | k.kind);
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
    key = SeriesKey{.kind = static_cast<uint8_t>((key.kind & (kInbound | kTcp)) | kOverflow)};
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
  add("request_protocol", tcp ? "tcp" : "http");
  if (!tcp) {
    add("response_code", std::to_string(k.code));
    add("grpc_response_status", "");  // HTTP/1.1 only: no gRPC here
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

}  // namespace

std::string RenderPrometheus(const std::vector<Sample>& samples) {
  // Equal label sets summed, in a stable order.
  std::map<std::string, Sample> http, tcp;
  for (const auto& s : samples) {
    auto& m = s.tcp ? tcp : http;
    auto [it, fresh] = m.try_emplace(LabelText(s.labels), s);
    if (fresh)
      continue;
    Sample& t = it->second;
    t.requests += s.requests;
    Add(t.duration_ms, s.duration_ms);
    Add(t.request_bytes, s.request_bytes);
    Add(t.response_bytes, s.response_bytes);
    t.tcp_opened += s.tcp_opened;
    t.tcp_closed += s.tcp_closed;
    t.tcp_sent += s.tcp_sent;
    t.tcp_received += s.tcp_received;
  }
  std::string out;
  auto counter = [&](std::string_view name, const std::map<std::string, Sample>& m,
                     uint64_t Sample::*field) {
    bool typed = false;
    for (const auto& [labels, s] : m) {
      if (!typed) {
        fmt::format_to(std::back_inserter(out), "# TYPE {} counter\n", name);
        typed = true;
      }
      fmt::format_to(std::back_inserter(out), "{}{{{}}} {}\n", name, labels, s.*field);
    }
  };
  auto histogram = [&](std::string_view name, Sample::Hist Sample::*field) {
    bool typed = false;
    for (const auto& [labels, s] : http) {
      const Sample::Hist& h = s.*field;
      if (h.count == 0)
        continue;  // a request that ended before this was measured
      if (!typed) {
        fmt::format_to(std::back_inserter(out), "# TYPE {} histogram\n", name);
        typed = true;
      }
      uint64_t cumulative = 0;
      for (std::size_t i = 0; i < kBuckets.size(); ++i) {
        cumulative += h.buckets[i];
        fmt::format_to(std::back_inserter(out), "{}_bucket{{{},le=\"{}\"}} {}\n", name, labels,
                       kBuckets[i], cumulative);
      }
      fmt::format_to(std::back_inserter(out), "{}_bucket{{{},le=\"+Inf\"}} {}\n", name, labels,
                     h.count);
      fmt::format_to(std::back_inserter(out), "{}_sum{{{}}} {}\n", name, labels, h.sum);
      fmt::format_to(std::back_inserter(out), "{}_count{{{}}} {}\n", name, labels, h.count);
    }
  };
  counter("istio_requests_total", http, &Sample::requests);
  histogram("istio_request_duration_milliseconds", &Sample::duration_ms);
  histogram("istio_request_bytes", &Sample::request_bytes);
  histogram("istio_response_bytes", &Sample::response_bytes);
  counter("istio_tcp_sent_bytes_total", tcp, &Sample::tcp_sent);
  counter("istio_tcp_received_bytes_total", tcp, &Sample::tcp_received);
  counter("istio_tcp_connections_opened_total", tcp, &Sample::tcp_opened);
  counter("istio_tcp_connections_closed_total", tcp, &Sample::tcp_closed);
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
  return k;
}

}  // namespace

void RecordTelemetry(const Session& s) {
  telemetry::IstioStats* st = s.w->opts().istio_stats.get();
  if (!st || !s.chain || !s.chain->fail_closed.empty())
    return;  // no chain served it: Istio's filters never ran
  if (s.chain->is_http) {
    // cluster and endpoint are this request's only once it was routed (Dispatch); a
    // request that failed before keeps the last one's, which must not be read.
    const Cluster* cluster = s.route ? s.cluster : nullptr;
    const Endpoint* ep = s.route ? s.up_ep : nullptr;
    telemetry::SeriesKey k = KeyOf(s, *st, cluster, ep);
    k.code = static_cast<uint16_t>(s.status);
    k.flags = s.flags;
    telemetry::Series& se = st->Get(k);
    se.requests.fetch_add(1, std::memory_order_relaxed);
    se.duration_ms.Record(static_cast<uint64_t>(std::max<int64_t>(0, s.w->now() - s.start_ms)));
    se.request_bytes.Record(s.req.head_len + s.bytes_rx);
    se.response_bytes.Record(s.bytes_tx);
    return;
  }
  telemetry::SeriesKey k = KeyOf(s, *st, s.cluster, s.up_ep);
  k.kind |= telemetry::kTcp;
  k.flags = s.flags;
  telemetry::Series& se = st->Get(k);
  if (!s.up_ep)  // it never reached an endpoint, so RecordTcpOpen did not count it
    se.tcp_opened.fetch_add(1, std::memory_order_relaxed);
  se.tcp_closed.fetch_add(1, std::memory_order_relaxed);
  se.tcp_sent.fetch_add(s.bytes_tx, std::memory_order_relaxed);
  se.tcp_received.fetch_add(s.bytes_rx, std::memory_order_relaxed);
}

void RecordTcpOpen(const Session& s) {
  telemetry::IstioStats* st = s.w->opts().istio_stats.get();
  if (!st)
    return;
  telemetry::SeriesKey k = KeyOf(s, *st, s.cluster, s.up_ep);
  k.kind |= telemetry::kTcp;
  st->Get(k).tcp_opened.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace sluice::proxy::engine
