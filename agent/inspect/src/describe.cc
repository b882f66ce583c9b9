#include "sluice/inspect/describe.h"

#include <fmt/format.h>

#include <algorithm>
#include <vector>

#include "sluice/istio/translator.h"
#include "sluice/kernelsync/plan.h"

namespace sluice::inspect {
namespace {

using namespace sluice::istio;

constexpr const char* kEnrolLabel = "istio.io/dataplane-mode";
constexpr const char* kEnrolValue = "sluice";

// istioctl's kname: the name alone in the default namespace, else NAME.NS.
std::string KName(const Meta& m) {
  return m.ns == "default" ? m.name : m.name + "." + m.ns;
}

bool HostMatches(const std::string& pattern, const std::string& fqdn) {
  if (pattern == "*")
    return true;
  if (pattern.starts_with("*."))
    return fqdn.size() > pattern.size() - 1 && fqdn.ends_with(pattern.substr(1));
  return pattern == fqdn;
}

std::string LbName(const LoadBalancer& lb) {
  if (lb.consistent_hash) {
    const auto& h = *lb.consistent_hash;
    std::string by = !h.header.empty()        ? "header " + h.header
                     : !h.cookie.empty()      ? "cookie " + h.cookie
                     : !h.query_param.empty() ? "query parameter " + h.query_param
                                              : "source IP";
    return fmt::format("consistent hash ({}{})", by, h.maglev ? ", maglev" : ", ring hash");
  }
  switch (lb.simple) {
    case LoadBalancer::Simple::kRoundRobin:
      return "ROUND_ROBIN";
    case LoadBalancer::Simple::kRandom:
      return "RANDOM";
    case LoadBalancer::Simple::kPassthrough:
      return "PASSTHROUGH";
    case LoadBalancer::Simple::kLeastRequest:
    case LoadBalancer::Simple::kUnset:
      break;
  }
  return "LEAST_REQUEST";
}

std::string DescribeStringMatch(const std::string& what, const StringMatch& m) {
  const char* kind = m.kind == StringMatch::Kind::kExact    ? "exact"
                     : m.kind == StringMatch::Kind::kPrefix ? "prefix"
                                                            : "regex";
  return fmt::format("{} {} {}", what, kind, m.value);
}

std::string DescribeHttpMatch(const HttpMatch& m) {
  std::vector<std::string> conds;
  if (m.uri)
    conds.push_back(DescribeStringMatch("uri", *m.uri));
  if (m.method)
    conds.push_back(DescribeStringMatch("method", *m.method));
  if (m.authority)
    conds.push_back(DescribeStringMatch("authority", *m.authority));
  if (m.scheme)
    conds.push_back(DescribeStringMatch("scheme", *m.scheme));
  for (const auto& [k, v] : m.headers)
    conds.push_back(DescribeStringMatch("header " + k, v));
  for (const auto& [k, v] : m.without_headers)
    conds.push_back("not " + DescribeStringMatch("header " + k, v));
  for (const auto& [k, v] : m.query_params)
    conds.push_back(DescribeStringMatch("query " + k, v));
  if (m.port)
    conds.push_back(fmt::format("port {}", *m.port));
  if (!m.gateways.empty())
    conds.push_back(fmt::format("gateways {}", fmt::join(m.gateways, ",")));
  if (conds.empty())
    return "any request";
  return fmt::format("{}", fmt::join(conds, " and "));
}

std::string DescribeDestination(const Destination& d) {
  std::string s = fmt::format("host \"{}\"", d.host);
  if (!d.subset.empty())
    s += fmt::format(" subset \"{}\"", d.subset);
  if (d.port)
    s += fmt::format(" port {}", *d.port);
  return s;
}

void RouteLines(const std::vector<RouteDestination>& route, const char* what, std::string& out) {
  for (const auto& rd : route) {
    int weight = rd.weight ? *rd.weight : (route.size() == 1 ? 100 : 0);
    out += fmt::format("   {} to {} with weight {}%\n", what, DescribeDestination(rd.destination),
                       weight);
  }
}

std::string Ms(int64_t ms) {
  return ms % 1000 == 0 ? fmt::format("{}s", ms / 1000) : fmt::format("{}ms", ms);
}

bool Selects(const Labels& selector, const RegistryService& svc) {
  for (const auto& ep : svc.endpoints) {
    if (SelectorMatches(selector, ep.labels))
      return true;
  }
  return false;
}

bool VsConcerns(const VirtualService& vs, const Registry& reg, const RegistryService& svc) {
  for (const auto& h : vs.hosts) {
    if (HostMatches(reg.Qualify(h, vs.meta.ns), svc.hostname))
      return true;
  }
  auto dest = [&](const std::vector<RouteDestination>& rds) {
    for (const auto& rd : rds) {
      if (reg.Qualify(rd.destination.host, vs.meta.ns) == svc.hostname)
        return true;
    }
    return false;
  };
  for (const auto& r : vs.http) {
    if (dest(r.route) || (r.mirror && reg.Qualify(r.mirror->host, vs.meta.ns) == svc.hostname))
      return true;
  }
  for (const auto& r : vs.tls) {
    if (dest(r.route))
      return true;
  }
  for (const auto& r : vs.tcp) {
    if (dest(r.route))
      return true;
  }
  return false;
}

// Where each port's connections are decided for a pod of `ns`: the kernel's plan for the
// config such a pod's sidecar would get (kernelsync::Plan, as the node agent runs it).
std::string DataPaths(const Config& config, const Registry& registry, const RegistryService& svc,
                      const std::string& ns) {
  istio::ProxySpec proxy;
  proxy.ns = ns;
  auto t = istio::Translate(config, registry, proxy);
  auto plan = kernelsync::Plan(config::Snapshot::FromResourceSet(t.resources));
  if (!plan)
    return fmt::format("   Data path: not planned ({})\n", plan.error().message);
  std::string out;
  for (const auto& port : svc.ports) {
    const ServiceSpec* found = nullptr;
    for (const auto& k : plan->services) {
      if (k.port != port.port)
        continue;
      for (const auto& vip : k.vips) {
        const std::string v = vip.ToString();
        if (std::find(svc.addresses.begin(), svc.addresses.end(), v) != svc.addresses.end() ||
            (!found && (v == "0.0.0.0" || v == "::")))
          found = &k;
      }
    }
    if (!found) {
      out += fmt::format("   Data path, port {}: not a kernel service (no VIP, or passthrough)\n",
                         port.port);
    } else if (found->redirect_to_proxy) {
      std::string why(L7ReasonName(found->l7_reason));
      if (auto r = plan->l7_reasons.find(found->name); r != plan->l7_reasons.end())
        why = r->second;
      out += fmt::format("   Data path, port {}: the in-pod L7 proxy ({})\n", port.port, why);
    } else {
      std::vector<std::string> clusters;
      for (const auto& c : found->clusters)
        clusters.push_back(fmt::format("{} weight {} {}", c.name, c.weight, LbPolicyName(c.lb)));
      out += fmt::format("   Data path, port {}: the kernel, at connect time ({})\n", port.port,
                         fmt::join(clusters, "; "));
    }
  }
  return out;
}

}  // namespace

Result<std::string> DescribeService(const Config& config, const Registry& registry,
                                    const std::string& name, const std::string& ns,
                                    const NamespaceLabels* ns_labels) {
  const Service* svc = nullptr;
  for (const auto& s : config.services) {
    if (s.meta.name == name && s.meta.ns == ns)
      svc = &s;
  }
  if (!svc)
    return Fail(fmt::format("service {}/{} not found", ns, name));
  const RegistryService* rs = registry.Resolve(name, ns);

  std::string out = fmt::format("Service: {}\n", KName(svc->meta));
  for (const auto& p : svc->ports) {
    const RegistryPort* rp = rs ? rs->FindPort(p.port) : nullptr;
    std::string proto = rp ? ProtocolName(rp->protocol) : p.protocol;
    std::string target = p.target_port                 ? std::to_string(p.target_port)
                         : !p.target_port_name.empty() ? p.target_port_name
                                                       : std::to_string(p.port);
    out += fmt::format("   Port: {} {}/{} targets pod port {}\n", p.name, p.port, proto, target);
  }
  if (rs)
    out += DataPaths(config, registry, *rs, ns);
  if (rs) {
    std::vector<std::string> eps;
    for (const auto& ep : rs->endpoints)
      eps.push_back(ep.address);
    out += eps.empty() ? "   No endpoints (no pod matches the selector)\n"
                       : fmt::format("   Endpoints: {}\n", fmt::join(eps, ", "));
  }
  const std::string fqdn = rs ? rs->hostname : registry.Qualify(name, ns);

  for (const auto& dr : config.destination_rules) {
    if (!HostMatches(registry.Qualify(dr.host, dr.meta.ns), fqdn))
      continue;
    out += fmt::format("DestinationRule: {} for \"{}\"\n", KName(dr.meta), dr.host);
    std::vector<std::string> matching, other;
    for (const auto& s : dr.subsets)
      (rs && Selects(s.labels, *rs) ? matching : other).push_back(s.name);
    if (!dr.subsets.empty() && (!rs || rs->endpoints.empty())) {
      // No endpoints to hold the subsets' labels against.
      out += fmt::format("   Subsets: {}\n", fmt::join(other, ","));
    } else if (!dr.subsets.empty()) {
      out += fmt::format("   Matching subsets: {}\n", fmt::join(matching, ","));
      if (!other.empty())
        out += fmt::format("      (Non-matching subsets {})\n", fmt::join(other, ","));
    }
    if (!dr.traffic_policy) {
      out += "   No Traffic Policy\n";
    } else {
      std::vector<std::string> policies;
      if (dr.traffic_policy->load_balancer)
        policies.push_back("load balancer");
      if (dr.traffic_policy->connect_timeout_ms)
        policies.push_back("connection pool");
      if (!policies.empty())
        out += fmt::format("   Policies: {}\n", fmt::join(policies, "/"));
      if (dr.traffic_policy->load_balancer)
        out += fmt::format("   Load balancer: {}\n", LbName(*dr.traffic_policy->load_balancer));
      for (const auto& pl : dr.traffic_policy->port_level) {
        if (pl.load_balancer)
          out += fmt::format("   Port {} load balancer: {}\n", pl.port, LbName(*pl.load_balancer));
      }
    }
    for (const auto& s : dr.subsets) {
      if (s.traffic_policy && s.traffic_policy->load_balancer)
        out += fmt::format("   Subset {} load balancer: {}\n", s.name,
                           LbName(*s.traffic_policy->load_balancer));
    }
  }
  bool any_dr = false;
  for (const auto& dr : config.destination_rules)
    any_dr = any_dr || HostMatches(registry.Qualify(dr.host, dr.meta.ns), fqdn);
  if (!any_dr)
    out += "DestinationRule: none (load balancer LEAST_REQUEST, Istio's default)\n";

  bool any_vs = false;
  for (const auto& vs : config.virtual_services) {
    if (!VsConcerns(vs, registry, rs ? *rs : RegistryService{.hostname = fqdn}))
      continue;
    any_vs = true;
    out += fmt::format("VirtualService: {}\n", KName(vs.meta));
    if (!vs.gateways.empty())
      out += fmt::format("   Gateways: {}\n", fmt::join(vs.gateways, ", "));
    if (!vs.http.empty())
      out += fmt::format("   {} HTTP route(s)\n", vs.http.size());
    for (const auto& r : vs.http) {
      RouteLines(r.route, "Route", out);
      for (std::size_t i = 0; i < r.match.size(); ++i)
        out += fmt::format("      {} {}\n", i == 0 ? "when" : "or", DescribeHttpMatch(r.match[i]));
      if (r.redirect)
        out += fmt::format("   Redirect to {}{}\n", r.redirect->authority, r.redirect->uri);
      if (r.direct_response)
        out += fmt::format("   Direct response {}\n", r.direct_response->status);
      if (r.mirror) {
        double pct = r.mirror_percentage ? r.mirror_percentage->value : 100.0;
        out += fmt::format("   Mirror to {} ({}%)\n", DescribeDestination(*r.mirror), pct);
      }
      if (r.timeout_ms)
        out += fmt::format("   Timeout: {}\n", Ms(*r.timeout_ms));
      if (r.retries)
        out += fmt::format("   Retries: {} attempt(s){}\n", r.retries->attempts,
                           r.retries->retry_on.empty() ? "" : " on " + r.retries->retry_on);
      if (r.fault && r.fault->delay)
        out += fmt::format("   Fault: delay {} ({}%)\n", Ms(r.fault->delay->fixed_delay_ms),
                           r.fault->delay->percentage ? r.fault->delay->percentage->value : 100.0);
      if (r.fault && r.fault->abort)
        out += fmt::format("   Fault: abort with HTTP {} ({}%)\n", r.fault->abort->http_status,
                           r.fault->abort->percentage ? r.fault->abort->percentage->value : 100.0);
    }
    for (const auto& [routes, kind] : {std::pair{&vs.tls, "TLS"}, std::pair{&vs.tcp, "TCP"}}) {
      for (const auto& r : *routes) {
        RouteLines(r.route, kind == std::string("TLS") ? "TLS route" : "TCP route", out);
        for (std::size_t i = 0; i < r.match.size(); ++i) {
          std::vector<std::string> conds;
          if (!r.match[i].sni_hosts.empty())
            conds.push_back(fmt::format("sni {}", fmt::join(r.match[i].sni_hosts, ",")));
          if (r.match[i].port)
            conds.push_back(fmt::format("port {}", *r.match[i].port));
          if (!r.match[i].gateways.empty())
            conds.push_back(fmt::format("gateways {}", fmt::join(r.match[i].gateways, ",")));
          out += fmt::format("      {} {}\n", i == 0 ? "when" : "or",
                             conds.empty() ? std::string("any connection")
                                           : fmt::format("{}", fmt::join(conds, " and ")));
        }
      }
    }
  }
  if (!any_vs)
    out += "VirtualService: none (requests go to every endpoint of the service)\n";

  // Enrolment: the namespace label, then pods that decide for themselves.
  Labels labels;
  if (ns_labels) {
    if (auto it = ns_labels->find(ns); it != ns_labels->end())
      labels = Labels(it->second.begin(), it->second.end());
  } else {
    for (const auto& n : config.namespaces) {
      if (n.meta.name == ns)
        labels = n.meta.labels;
    }
  }
  auto it = labels.find(kEnrolLabel);
  if (it != labels.end() && it->second == kEnrolValue) {
    out +=
        fmt::format("Enrolment: namespace {} is enrolled ({}={})\n", ns, kEnrolLabel, kEnrolValue);
  } else {
    out += fmt::format(
        "Enrolment: namespace {} is not enrolled (to enrol it: sluicectl local label namespace {} "
        "{}={})\n",
        ns, ns, kEnrolLabel, kEnrolValue);
  }
  for (const auto& w : config.workloads) {
    if (w.meta.ns != ns || svc->selector.empty() || !SelectorMatches(svc->selector, w.pod_labels))
      continue;
    auto l = w.pod_labels.find(kEnrolLabel);
    if (l != w.pod_labels.end())
      out += fmt::format("   {} {}: pods labelled {}={} ({})\n", w.kind, w.meta.name, kEnrolLabel,
                         l->second, l->second == kEnrolValue ? "enrolled" : "not enrolled");
  }
  return out;
}

}  // namespace sluice::inspect
