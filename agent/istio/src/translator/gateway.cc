// A gateway proxy's config: the servers of the Gateways whose selector matches its
// labels, grouped by port, become listeners on the port the gateway's Service targets —
// HTTP servers a listener and an "http.PORT" route configuration from the VirtualServices
// bound to the Gateway, TLS passthrough and TCP servers filter chains by SNI or to the
// tcp routes. istiod's counterpart is pilot/pkg/networking/core/gateway.go.
#include <algorithm>

#include "envoy/extensions/transport_sockets/tls/v3/tls.pb.h"
#include "translator/builder.h"

namespace sluice::istio::detail {

void Builder::BuildGateway() {
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
    } else if (protocol == "HTTPS" && (tls_mode == "SIMPLE" || tls_mode == "MUTUAL")) {
      BuildGatewayHttps(port, listen, servers);
    } else if (((protocol == "TLS" || protocol == "HTTPS") && tls_mode == "PASSTHROUGH") ||
               protocol == "TCP") {
      BuildGatewayL4(port, listen, servers, protocol == "TCP");
    } else {
      out_.warnings.push_back(
          servers.front().gateway->meta.origin.Describe("Gateway", servers.front().gateway->meta.ns,
                                                        servers.front().gateway->meta.name) +
          ": port " + std::to_string(port) + " protocol " + protocol + " with TLS mode " +
          tls_mode + " needs certificates, which Sluice does not serve; skipped");
    }
  }
}

// The port the gateway workload listens on for a Gateway server port: the targetPort of
// a Service in front of this gateway (selecting its labels) that exposes the port;
// the server port itself when there is none.
uint32_t Builder::GatewayListenPort(uint32_t port) const {
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
route_v3::RouteConfiguration Builder::GatewayRoutes(const std::string& name, uint32_t port,
                                                    const Servers& servers) const {
  route_v3::RouteConfiguration rc;
  rc.set_name(name);
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
        std::string vh_name = vs_host + ":" + std::to_string(port);
        if (vhosts.count(vh_name))
          continue;  // first VirtualService for a host wins
        auto routes = VsRoutes(vs, gw_ref, port);
        if (routes.empty())
          continue;
        route_v3::VirtualHost vh;
        vh.set_name(vh_name);
        vh.add_domains(vs_host);
        vh.add_domains(vs_host + ":*");
        // tls.httpsRedirect on an HTTP server: istiod makes Envoy redirect to https.
        if (bound.server->https_redirect)
          vh.set_require_tls(route_v3::VirtualHost::ALL);
        for (auto& r : routes)
          *vh.add_routes() = std::move(r);
        vhosts.emplace(vh_name, std::move(vh));
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
  for (auto& [vh_name, vh] : vhosts)
    *rc.add_virtual_hosts() = std::move(vh);
  return rc;
}

template <class Servers>
void Builder::BuildGatewayHttp(uint32_t port, uint32_t listen, const Servers& servers) {
  const std::string route_name = "http." + std::to_string(listen);
  out_.resources.Add(GatewayRoutes(route_name, port, servers));
  auto l = NewListener("0.0.0.0", listen, false);
  auto* f = l.add_filter_chains()->add_filters();
  f->set_name("envoy.filters.network.http_connection_manager");
  *f->mutable_typed_config() =
      HttpConnectionManager("outbound_0.0.0.0_" + std::to_string(listen), route_name);
  out_.resources.Add(std::move(l));
}

// HTTPS servers that terminate TLS (tls.mode SIMPLE or MUTUAL with a credentialName), in
// istiod's shape (pilot/pkg/networking/core/gateway.go, listener.go and
// pilot/pkg/security/model/authentication.go): one listener with the TLS inspector, and
// per server a filter chain matching its hosts as SNI names (none when a host is "*"), a
// DownstreamTlsContext whose certificate is the SDS secret "kubernetes://CREDENTIAL" over
// ADS (MUTUAL: client certificates required, verified against the secret
// "kubernetes://CREDENTIAL-cacert" and the server's subjectAltNames), ALPN h2 and
// http/1.1, and a connection manager on the route configuration
// "https.PORT.PORT_NAME.GATEWAY.NAMESPACE".
template <class Servers>
void Builder::BuildGatewayHttps(uint32_t port, uint32_t listen, const Servers& servers) {
  namespace tls_v3 = envoy::extensions::transport_sockets::tls::v3;
  auto l = NewListener("0.0.0.0", listen, false);
  AddTlsInspector(l);
  auto sds = [](const std::string& name) {
    tls_v3::SdsSecretConfig c;
    c.set_name(name);
    c.mutable_sds_config()->mutable_ads();
    c.mutable_sds_config()->set_resource_api_version(envoy::config::core::v3::V3);
    return c;
  };
  for (const auto& bound : servers) {
    const GatewayServer& srv = *bound.server;
    const Meta& gw = bound.gateway->meta;
    const std::string where = gw.origin.Describe("Gateway", gw.ns, gw.name) + ": server " +
                              (srv.name.empty() ? srv.port_name : srv.name) + " (port " +
                              std::to_string(port) + ")";
    if (srv.tls_mode != "SIMPLE" && srv.tls_mode != "MUTUAL") {
      out_.warnings.push_back(where + ": TLS mode " + srv.tls_mode +
                              " on an HTTPS port shared with SIMPLE/MUTUAL servers; skipped");
      continue;
    }
    if (srv.credential_name.empty()) {
      out_.warnings.push_back(where + ": TLS mode " + srv.tls_mode +
                              " without credentialName (certificate files in the gateway pod "
                              "are not supported); skipped");
      continue;
    }
    if (!srv.unsupported_tls_fields.empty()) {
      std::string list;
      for (const auto& f : srv.unsupported_tls_fields)
        list += (list.empty() ? "" : ", ") + f;
      out_.warnings.push_back(where + ": tls." + list +
                              " not supported by Sluice; the server is skipped (fail closed)");
      continue;
    }
    const std::string route_name =
        "https." + std::to_string(port) + "." + srv.port_name + "." + gw.name + "." + gw.ns;
    out_.resources.Add(
        GatewayRoutes(route_name, port, std::vector<std::decay_t<decltype(bound)>>{bound}));

    auto* fc = l.add_filter_chains();
    std::set<std::string> sni;
    for (const auto& h : srv.hosts) {
      auto slash = h.find('/');
      sni.insert(slash == std::string::npos ? h : h.substr(slash + 1));
    }
    if (!sni.contains("*"))
      for (const auto& h : sni)
        fc->mutable_filter_chain_match()->add_server_names(h);

    tls_v3::DownstreamTlsContext ctx;
    auto* common = ctx.mutable_common_tls_context();
    common->add_alpn_protocols("h2");
    common->add_alpn_protocols("http/1.1");
    *common->add_tls_certificate_sds_secret_configs() = sds("kubernetes://" + srv.credential_name);
    const bool mutual = srv.tls_mode == "MUTUAL";
    ctx.mutable_require_client_certificate()->set_value(mutual);
    if (mutual) {
      auto* combined = common->mutable_combined_validation_context();
      // istiod still writes the deprecated match_subject_alt_names (StringToExactMatch).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
      for (const auto& san : srv.subject_alt_names)
        combined->mutable_default_validation_context()->add_match_subject_alt_names()->set_exact(
            san);
#pragma GCC diagnostic pop
      for (const auto& pin : srv.verify_certificate_spki)
        combined->mutable_default_validation_context()->add_verify_certificate_spki(pin);
      for (const auto& pin : srv.verify_certificate_hash)
        combined->mutable_default_validation_context()->add_verify_certificate_hash(pin);
      *combined->mutable_validation_context_sds_secret_config() =
          sds("kubernetes://" + srv.credential_name + "-cacert");
    }
    auto* ts = fc->mutable_transport_socket();
    ts->set_name("envoy.transport_sockets.tls");
    ts->mutable_typed_config()->PackFrom(ctx);

    auto* f = fc->add_filters();
    f->set_name("envoy.filters.network.http_connection_manager");
    *f->mutable_typed_config() =
        HttpConnectionManager(srv.name.empty() ? route_name : srv.name, route_name);
  }
  if (l.filter_chains_size() == 0)
    return;
  out_.resources.Add(std::move(l));
}

// A gateway TCP chain: the AuthorizationPolicies' network rbac filters, then tcp_proxy.
void Builder::AddGatewayTcpFilters(listener_v3::FilterChain& fc,
                                   google::protobuf::Any tcp_proxy) const {
  for (const auto& config : authz_tcp_) {
    auto* f = fc.add_filters();
    f->set_name("envoy.filters.network.rbac");
    *f->mutable_typed_config() = config;
  }
  auto* f = fc.add_filters();
  f->set_name("envoy.filters.network.tcp_proxy");
  *f->mutable_typed_config() = std::move(tcp_proxy);
}

template <class Servers>
void Builder::BuildGatewayL4(uint32_t port, uint32_t listen, const Servers& servers, bool tcp) {
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
            bool allowed = std::any_of(
                bound.server->hosts.begin(), bound.server->hosts.end(), [&](const std::string& sh) {
                  auto slash = sh.find('/');
                  return HostsIntersect(slash == std::string::npos ? sh : sh.substr(slash + 1), h);
                });
            if (allowed && seen_sni.insert(h).second)
              sni.push_back(h);
          }
          if (!tcp && sni.empty())
            continue;
          auto* fc = l.add_filter_chains();
          for (const auto& h : sni)
            fc->mutable_filter_chain_match()->add_server_names(h);
          AddGatewayTcpFilters(*fc, TcpProxy(L4Clusters(r, vs.meta.ns, port)));
        }
        if (tcp && r.match.empty())
          AddGatewayTcpFilters(*l.add_filter_chains(), TcpProxy(L4Clusters(r, vs.meta.ns, port)));
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

}  // namespace sluice::istio::detail
