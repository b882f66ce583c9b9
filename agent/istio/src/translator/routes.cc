// RDS: Envoy routes from the HTTP routes of a VirtualService (matches, weighted
// destinations, redirects, direct responses, rewrites, timeouts, retries, faults, CORS
// policies, mirrors, header operations, consistent-hash policies), a service's
// virtual-host domains, the default route and the catch-all virtual host. istiod's counterparts are
// pilot/pkg/networking/core/httproute.go, route/route.go and route/retry/retry.go.
#include <charconv>
#include <cmath>

#include "envoy/extensions/filters/http/cors/v3/cors.pb.h"
#include "envoy/extensions/filters/http/fault/v3/fault.pb.h"
#include "translator/builder.h"

namespace sluice::istio::detail {

namespace {

using envoy::type::v3::FractionalPercent;

// Istio's retry defaults when a VirtualService sets none.
constexpr char kDefaultRetryOn[] =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";
constexpr uint32_t kDefaultRetries = 2;

// Istio's percent (0..100, fractional) -> Envoy's per-million fraction.
void SetPercent(FractionalPercent* f, double percent) {
  f->set_numerator(static_cast<uint32_t>(std::llround(percent * 10000.0)));
  f->set_denominator(FractionalPercent::MILLION);
}

// Which port of `svc` a destination without a port number means: the service's only
// port, else the port the request came in on.
uint32_t DestinationPort(const Destination& d, const RegistryService* svc, uint32_t listener_port) {
  if (d.port)
    return *d.port;
  if (svc && svc->ports.size() == 1)
    return svc->ports[0].port;
  return listener_port;
}

void SetStringMatcher(const StringMatch& m, bool ignore_case,
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

void AddHeaderMatch(route_v3::RouteMatch& rm, const std::string& name, const StringMatch& m,
                    bool invert) {
  auto* h = rm.add_headers();
  h->set_name(name);
  SetStringMatcher(m, false, h->mutable_string_match());
  if (invert)
    h->set_invert_match(true);
}

route_v3::RouteMatch TranslateMatch(const HttpMatch* m) {
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

void AddHeaderOps(const HeaderOps& ops,
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

void SetRetryPolicy(const std::optional<HttpRetry>& retries, route_v3::RouteAction* ra) {
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

}  // namespace

std::string Builder::DestinationCluster(const Destination& d, const std::string& vs_ns,
                                        uint32_t listener_port,
                                        const RegistryService** svc_out) const {
  const RegistryService* svc = registry_.Resolve(d.host, vs_ns);
  if (svc_out)
    *svc_out = svc;
  std::string host = svc ? svc->hostname : registry_.Qualify(d.host, vs_ns);
  return ClusterName(DestinationPort(d, svc, listener_port), d.subset, host);
}

void Builder::AddHashPolicy(const RegistryService* svc, uint32_t port, const std::string& subset,
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
route_v3::Route Builder::TranslateHttpRoute(const HttpRoute& hr, const HttpMatch* match,
                                            const std::string& vs_ns,
                                            uint32_t listener_port) const {
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
      if (hr.fault->abort->grpc_status) {
        a->set_grpc_status(*hr.fault->abort->grpc_status);
      } else {
        a->set_http_status(hr.fault->abort->http_status);
      }
      SetPercent(a->mutable_percentage(),
                 hr.fault->abort->percentage ? hr.fault->abort->percentage->value : 100.0);
    }
    (*r.mutable_typed_per_filter_config())["envoy.filters.http.fault"].PackFrom(fault);
  }
  if (hr.cors) {
    // istiod's TranslateCORSPolicy (1.20 on): the cors filter's per-route policy.
    const CorsPolicy& in = *hr.cors;
    envoy::extensions::filters::http::cors::v3::CorsPolicy cors;
    cors.mutable_forward_not_matching_preflights()->set_value(in.forward_unmatched_preflights);
    if (!in.allow_origins.empty()) {
      for (const StringMatch& m : in.allow_origins)
        SetStringMatcher(m, false, cors.add_allow_origin_string_match());
    } else {
      for (const std::string& o : in.allow_origin)
        cors.add_allow_origin_string_match()->set_exact(o);
    }
    auto* enabled = cors.mutable_filter_enabled()->mutable_default_value();
    enabled->set_numerator(100);
    enabled->set_denominator(FractionalPercent::HUNDRED);
    if (in.allow_credentials)
      cors.mutable_allow_credentials()->set_value(*in.allow_credentials);
    auto join = [](const std::vector<std::string>& v) {
      std::string out;
      for (const auto& s : v)
        out += (out.empty() ? "" : ",") + s;
      return out;
    };
    cors.set_allow_headers(join(in.allow_headers));
    cors.set_allow_methods(join(in.allow_methods));
    cors.set_expose_headers(join(in.expose_headers));
    if (in.max_age_ms)
      cors.set_max_age(std::to_string(*in.max_age_ms / 1000));
    (*r.mutable_typed_per_filter_config())["envoy.filters.http.cors"].PackFrom(cors);
  }
  AddHeaderOps(hr.headers.request, r.mutable_request_headers_to_add(),
               r.mutable_request_headers_to_remove());
  AddHeaderOps(hr.headers.response, r.mutable_response_headers_to_add(),
               r.mutable_response_headers_to_remove());
  return r;
}

// Envoy routes for the HTTP part of a VirtualService at one port, for one gateway.
std::vector<route_v3::Route> Builder::VsRoutes(const VirtualService& vs, const std::string& gateway,
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
std::vector<std::string> Builder::ServiceDomains(const RegistryService& svc, uint32_t port) const {
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
std::vector<std::pair<const VirtualService*, std::vector<std::string>>>
Builder::UnregisteredVsHosts() const {
  std::vector<std::pair<const VirtualService*, std::vector<std::string>>> out;
  for (const auto& vs : config_.virtual_services) {
    if (!BoundTo(vs, kMesh) || !VisibleVs(vs))
      continue;
    std::vector<std::string> hosts;
    for (const auto& h : vs.hosts) {
      std::string host = registry_.Qualify(h, vs.meta.ns);
      bool covered = std::any_of(visible_.begin(), visible_.end(),
                                 [&](const auto* svc) { return HostMatches(host, svc->hostname); });
      if (!covered && host != "*")
        hosts.push_back(host);
    }
    if (!hosts.empty())
      out.emplace_back(&vs, std::move(hosts));
  }
  return out;
}

route_v3::Route Builder::DefaultRoute(const RegistryService& svc, uint32_t port) const {
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

void Builder::AddCatchAllVirtualHost(route_v3::RouteConfiguration& rc) const {
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

}  // namespace sluice::istio::detail
