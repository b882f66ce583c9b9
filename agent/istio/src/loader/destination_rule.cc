// Decoder of DestinationRule: its host, exportTo, subsets and the traffic policies
// Sluice applies (load balancer, including consistent hashing; connect timeout; the
// connection pool's limits and HTTP/2 choices; port-level settings).
#include <set>

#include "loader/decode.h"

namespace sluice::istio::detail {

namespace {

std::optional<LoadBalancer> DecodeLoadBalancer(const Field& f) {
  if (!f.present())
    return std::nullopt;
  LoadBalancer lb;
  if (auto s = f["simple"].Str()) {
    if (*s == "LEAST_REQUEST" || *s == "LEAST_CONN") {
      lb.simple = LoadBalancer::Simple::kLeastRequest;
    } else if (*s == "ROUND_ROBIN") {
      lb.simple = LoadBalancer::Simple::kRoundRobin;
    } else if (*s == "RANDOM") {
      lb.simple = LoadBalancer::Simple::kRandom;
    } else if (*s == "PASSTHROUGH") {
      lb.simple = LoadBalancer::Simple::kPassthrough;
    } else if (*s == "UNSPECIFIED") {
      lb.simple = LoadBalancer::Simple::kUnset;
    } else {
      f["simple"].Error("must be one of LEAST_REQUEST, ROUND_ROBIN, RANDOM, PASSTHROUGH (got \"" +
                        *s + "\")");
    }
  }
  if (Field ch = f["consistentHash"]; ch.present()) {
    if (f["simple"].present())
      f.Error("simple and consistentHash are mutually exclusive");
    LoadBalancer::ConsistentHash h;
    h.header = ch["httpHeaderName"].StrOr("");
    h.query_param = ch["httpQueryParameterName"].StrOr("");
    h.source_ip = ch["useSourceIp"].Bool().value_or(false);
    if (Field c = ch["httpCookie"]; c.present()) {
      h.cookie = c["name"].Required();
      h.cookie_path = c["path"].StrOr("");
      h.cookie_ttl_ms = c["ttl"].DurationMs();
    }
    int keys = !h.header.empty() + !h.query_param.empty() + h.source_ip + !h.cookie.empty();
    if (keys != 1) {
      ch.Error(
          "needs exactly one of httpHeaderName, httpCookie, useSourceIp, "
          "httpQueryParameterName");
    }
    if (Field m = ch["maglev"]; m.present()) {
      h.maglev = true;
      h.table_size = static_cast<uint64_t>(m["tableSize"].Int(1, 5000011).value_or(0));
    } else if (Field rh = ch["ringHash"]; rh.present()) {
      h.table_size = static_cast<uint64_t>(rh["minimumRingSize"].Int(1, 8388608).value_or(0));
    } else if (auto mrs = ch["minimumRingSize"].Int(1, 8388608)) {
      h.table_size = static_cast<uint64_t>(*mrs);
    }
    lb.consistent_hash = h;
  }
  return lb;
}

// connectionPool beyond tcp.connectTimeout (read apart): nullopt when absent. Values
// are refused where istio's validation refuses them (negative counts, an unknown
// h2UpgradePolicy).
std::optional<ConnectionPool> DecodeConnectionPool(const Field& f) {
  if (!f.present())
    return std::nullopt;
  constexpr int64_t kMaxI32 = 2147483647;
  auto count = [](const Field& v) { return static_cast<uint32_t>(v.Int(0, kMaxI32).value_or(0)); };
  ConnectionPool p;
  Field tcp = f["tcp"];
  Field http = f["http"];
  p.max_connections = count(tcp["maxConnections"]);
  p.http1_max_pending_requests = count(http["http1MaxPendingRequests"]);
  p.http2_max_requests = count(http["http2MaxRequests"]);
  p.max_retries = count(http["maxRetries"]);
  p.max_concurrent_streams = count(http["maxConcurrentStreams"]);
  p.use_client_protocol = http["useClientProtocol"].Bool().value_or(false);
  if (auto v = http["h2UpgradePolicy"].Str()) {
    if (*v == "DEFAULT")
      p.h2_upgrade = H2UpgradePolicy::kDefault;
    else if (*v == "DO_NOT_UPGRADE")
      p.h2_upgrade = H2UpgradePolicy::kDoNotUpgrade;
    else if (*v == "UPGRADE")
      p.h2_upgrade = H2UpgradePolicy::kUpgrade;
    else
      http["h2UpgradePolicy"].Error("must be one of DEFAULT, DO_NOT_UPGRADE, UPGRADE (got \"" + *v +
                                    "\")");
  }
  if (p.h2_upgrade == H2UpgradePolicy::kUpgrade && p.use_client_protocol)
    http["useClientProtocol"].Error("must not be true when h2UpgradePolicy is UPGRADE");
  return p;
}

std::optional<TrafficPolicy> DecodeTrafficPolicy(const Field& f) {
  if (!f.present())
    return std::nullopt;
  TrafficPolicy tp;
  tp.load_balancer = DecodeLoadBalancer(f["loadBalancer"]);
  tp.connect_timeout_ms = f["connectionPool"]["tcp"]["connectTimeout"].DurationMs();
  tp.connection_pool = DecodeConnectionPool(f["connectionPool"]);
  std::set<uint32_t> seen;
  for (auto& pf : f["portLevelSettings"].List()) {
    TrafficPolicy::PortPolicy pp;
    if (!pf["port"]["number"].present())
      pf["port"]["number"].Error("required");
    pp.port = pf["port"]["number"].Port().value_or(0);
    if (!seen.insert(pp.port).second)
      pf["port"]["number"].Error("duplicate port");
    pp.load_balancer = DecodeLoadBalancer(pf["loadBalancer"]);
    pp.connect_timeout_ms = pf["connectionPool"]["tcp"]["connectTimeout"].DurationMs();
    pp.connection_pool = DecodeConnectionPool(pf["connectionPool"]);
    tp.port_level.push_back(std::move(pp));
  }
  return tp;
}

}  // namespace

DestinationRule DecodeDestinationRule(const Field& doc, const Meta& meta) {
  DestinationRule dr;
  dr.meta = meta;
  Field spec = doc["spec"];
  dr.host = spec["host"].Required();
  if (auto problem = HostProblem(dr.host); !dr.host.empty() && !problem.empty())
    spec["host"].Error(problem);
  dr.traffic_policy = DecodeTrafficPolicy(spec["trafficPolicy"]);
  dr.export_to = spec["exportTo"].StrList();
  std::set<std::string> names;
  for (auto& sf : spec["subsets"].List()) {
    Subset s;
    s.name = sf["name"].Required();
    s.labels = sf["labels"].StrMap();
    s.traffic_policy = DecodeTrafficPolicy(sf["trafficPolicy"]);
    if (!s.name.empty() && !names.insert(s.name).second) {
      sf["name"].Error("duplicate subset name \"" + s.name + "\"");
    }
    dr.subsets.push_back(std::move(s));
  }
  return dr;
}

}  // namespace sluice::istio::detail
