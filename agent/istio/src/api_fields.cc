#include "api_fields.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string_view>
#include <vector>

namespace sluice::istio::detail {
namespace {

// Each message of the API with its fields' JSON names, as the CRDs' schemas list them
// (istio.io/api, kubernetes/customresourcedefinitions.gen.yaml). "name:Type" is a message,
// "name[]:Type" a list of messages, "name{}:Type" a map with message values; a bare name
// holds a scalar, or a list or map of scalars, and is not looked into. A message is named
// as in the protos; the kinds' spec messages as the kinds.
constexpr std::pair<std::string_view, std::string_view> kMessages[] = {
    // Kubernetes' envelope, for every kind here.
    {"Document", "apiVersion kind metadata:ObjectMeta spec status"},
    {"ObjectMeta",
     "name generateName namespace selfLink uid resourceVersion generation creationTimestamp "
     "deletionTimestamp deletionGracePeriodSeconds labels annotations ownerReferences "
     "finalizers managedFields"},

    // virtual_service.proto
    {"VirtualService", "hosts gateways http[]:HTTPRoute tls[]:TLSRoute tcp[]:TCPRoute exportTo"},
    {"HTTPRoute",
     "name match[]:HTTPMatchRequest route[]:HTTPRouteDestination redirect:HTTPRedirect "
     "directResponse:HTTPDirectResponse delegate:Delegate rewrite:HTTPRewrite timeout "
     "retries:HTTPRetry fault:HTTPFaultInjection mirror:Destination mirrors[]:HTTPMirrorPolicy "
     "mirrorPercent mirror_percent mirrorPercentage:Percent corsPolicy:CorsPolicy "
     "headers:Headers"},
    {"HTTPMatchRequest",
     "name uri:StringMatch scheme:StringMatch method:StringMatch authority:StringMatch "
     "headers{}:StringMatch port sourceLabels gateways queryParams{}:StringMatch ignoreUriCase "
     "withoutHeaders{}:StringMatch sourceNamespace statPrefix"},
    {"StringMatch", "exact prefix regex"},
    {"HTTPRouteDestination", "destination:Destination weight headers:Headers"},
    {"RouteDestination", "destination:Destination weight"},
    {"Destination", "host subset port:PortSelector"},
    {"PortSelector", "number"},
    {"Headers", "request:HeaderOperations response:HeaderOperations"},
    {"HeaderOperations", "set add remove"},
    {"HTTPRedirect", "uri authority port derivePort scheme redirectCode prefixRewrite"},
    {"HTTPDirectResponse", "status body:HTTPBody"},
    {"HTTPBody", "string bytes"},
    {"Delegate", "name namespace"},
    {"HTTPRewrite", "uri authority uriRegexRewrite:RegexRewrite"},
    {"RegexRewrite", "match rewrite"},
    {"HTTPRetry",
     "attempts perTryTimeout retryOn retryRemoteLocalities retryIgnorePreviousHosts backoff"},
    {"HTTPFaultInjection", "delay:Delay abort:Abort"},
    {"Delay", "fixedDelay exponentialDelay percentage:Percent percent"},
    {"Abort", "httpStatus grpcStatus http2Error percentage:Percent"},
    {"Percent", "value"},
    {"HTTPMirrorPolicy", "destination:Destination percentage:Percent"},
    {"CorsPolicy",
     "allowOrigin allowOrigins[]:StringMatch allowMethods allowHeaders exposeHeaders maxAge "
     "allowCredentials unmatchedPreflights"},
    {"TLSRoute", "match[]:TLSMatchAttributes route[]:RouteDestination"},
    {"TLSMatchAttributes",
     "sniHosts destinationSubnets port sourceLabels gateways sourceNamespace"},
    {"TCPRoute", "match[]:L4MatchAttributes route[]:RouteDestination"},
    {"L4MatchAttributes",
     "destinationSubnets port sourceSubnet sourceLabels gateways sourceNamespace"},

    // security/v1beta1/authorization_policy.proto (v1 shares it)
    {"AuthorizationPolicy",
     "selector:LabelSelector targetRef:PolicyTargetReference "
     "targetRefs[]:PolicyTargetReference rules[]:AuthzRule action provider:ExtensionProvider"},
    {"PolicyTargetReference", "group kind name namespace"},
    {"ExtensionProvider", "name"},
    {"AuthzRule", "from[]:AuthzFrom to[]:AuthzTo when[]:AuthzCondition"},
    {"AuthzFrom", "source:AuthzSource"},
    {"AuthzTo", "operation:AuthzOperation"},
    {"AuthzSource",
     "principals notPrincipals requestPrincipals notRequestPrincipals namespaces "
     "notNamespaces serviceAccounts notServiceAccounts ipBlocks notIpBlocks remoteIpBlocks "
     "notRemoteIpBlocks trustDomains notTrustDomains"},
    {"AuthzOperation", "hosts notHosts ports notPorts methods notMethods paths notPaths"},
    {"AuthzCondition", "key values notValues"},

    // destination_rule.proto
    {"DestinationRule",
     "host trafficPolicy:TrafficPolicy subsets[]:Subset exportTo "
     "workloadSelector:LabelSelector"},
    {"LabelSelector", "matchLabels"},  // istio.type.v1beta1.WorkloadSelector
    {"TrafficPolicy",
     "loadBalancer:LoadBalancerSettings connectionPool:ConnectionPoolSettings "
     "outlierDetection:OutlierDetection tls:ClientTLSSettings "
     "portLevelSettings[]:PortTrafficPolicy tunnel:TunnelSettings proxyProtocol:ProxyProtocol "
     "retryBudget:RetryBudget"},
    {"PortTrafficPolicy",
     "port:PortSelector loadBalancer:LoadBalancerSettings connectionPool:ConnectionPoolSettings "
     "outlierDetection:OutlierDetection tls:ClientTLSSettings"},
    {"TunnelSettings", "protocol targetHost targetPort"},
    {"ProxyProtocol", "version"},
    {"RetryBudget", "percent minRetryConcurrency budgetInterval"},
    {"Subset", "name labels trafficPolicy:TrafficPolicy"},
    {"LoadBalancerSettings",
     "simple consistentHash:ConsistentHashLB localityLbSetting:LocalityLoadBalancerSetting "
     "zoneAwareLbSetting:ZoneAwareLoadBalancerSetting warmupDurationSecs "
     "warmup:WarmupConfiguration"},
    {"ConsistentHashLB",
     "httpHeaderName httpCookie:HTTPCookie useSourceIp httpQueryParameterName ringHash:RingHash "
     "maglev:MagLev minimumRingSize"},
    {"RingHash", "minimumRingSize"},
    {"MagLev", "tableSize"},
    {"HTTPCookie", "name path ttl attributes[]:CookieAttribute"},
    {"CookieAttribute", "name value"},
    {"WarmupConfiguration", "duration minimumPercent aggression"},
    {"LocalityLoadBalancerSetting",
     "distribute[]:Distribute failover[]:Failover failoverPriority enabled"},
    {"Distribute", "from to"},
    {"Failover", "from to"},
    {"ZoneAwareLoadBalancerSetting", "enabled failover[]:Failover failoverPriority minClusterSize"},
    {"ConnectionPoolSettings", "tcp:TCPSettings http:HTTPSettings"},
    {"TCPSettings",
     "maxConnections connectTimeout tcpKeepalive:TcpKeepalive maxConnectionDuration "
     "idleTimeout"},
    {"TcpKeepalive", "probes time interval"},
    {"HTTPSettings",
     "http1MaxPendingRequests http2MaxRequests maxRequestsPerConnection maxRetries idleTimeout "
     "h2UpgradePolicy useClientProtocol maxConcurrentStreams "
     "http2KeepAlive:ConnectionKeepalive"},
    {"ConnectionKeepalive", "interval timeout"},
    {"OutlierDetection",
     "splitExternalLocalOriginErrors consecutiveLocalOriginFailures consecutiveGatewayErrors "
     "consecutive5xxErrors interval baseEjectionTime maxEjectionPercent minHealthPercent "
     "consecutiveErrors outlierDetectionHttpErrorCodes"},
    {"ClientTLSSettings",
     "mode clientCertificate privateKey caCertificates credentialName subjectAltNames sni "
     "insecureSkipVerify caCrl"},

    // gateway.proto
    {"Gateway", "servers[]:Server selector"},
    {"Server", "port:Port bind hosts tls:ServerTLSSettings name defaultEndpoint"},
    {"Port", "number protocol name targetPort"},
    {"ServerTLSSettings",
     "httpsRedirect mode serverCertificate privateKey caCertificates caCrl credentialName "
     "credentialNames tlsCertificates[]:TLSCertificate subjectAltNames verifyCertificateSpki "
     "verifyCertificateHash minProtocolVersion maxProtocolVersion cipherSuites "
     "insecureSkipVerify caCertCredentialName"},
    {"TLSCertificate", "serverCertificate privateKey caCertificates"},

    // service_entry.proto, workload_entry.proto
    {"ServiceEntry",
     "hosts addresses ports[]:ServicePort location resolution endpoints[]:WorkloadEntry "
     "workloadSelector:WorkloadSelector exportTo subjectAltNames"},
    {"ServicePort", "number protocol name targetPort"},
    {"WorkloadEntry", "address ports labels network locality weight serviceAccount"},
    {"WorkloadSelector", "labels"},

    // sidecar.proto
    {"Sidecar",
     "workloadSelector:WorkloadSelector ingress[]:IstioIngressListener "
     "egress[]:IstioEgressListener inboundConnectionPool:ConnectionPoolSettings "
     "outboundTrafficPolicy:OutboundTrafficPolicy"},
    {"IstioIngressListener",
     "port:SidecarPort bind captureMode defaultEndpoint tls:ServerTLSSettings "
     "connectionPool:ConnectionPoolSettings"},
    {"IstioEgressListener", "port:SidecarPort bind captureMode hosts"},
    {"SidecarPort", "number protocol name targetPort"},
    {"OutboundTrafficPolicy", "mode egressProxy:Destination"},
};

enum class Shape { kOne, kList, kMap };

struct FieldSchema {
  std::string_view name;
  std::string_view type;  // a message, or empty: not looked into
  Shape shape = Shape::kOne;
};

using Schema = std::map<std::string_view, std::vector<FieldSchema>, std::less<>>;

const Schema& Messages() {
  static const Schema schema = [] {
    Schema s;
    for (const auto& [message, text] : kMessages) {
      auto& fields = s[message];
      std::string_view rest = text;
      while (!rest.empty()) {
        auto space = rest.find(' ');
        std::string_view word = rest.substr(0, space);
        rest = space == std::string_view::npos ? std::string_view() : rest.substr(space + 1);
        if (word.empty())
          continue;
        FieldSchema f;
        auto colon = word.find(':');
        f.name = word.substr(0, colon);
        if (colon != std::string_view::npos) {
          f.type = word.substr(colon + 1);
          if (f.name.ends_with("[]")) {
            f.shape = Shape::kList;
          } else if (f.name.ends_with("{}")) {
            f.shape = Shape::kMap;
          }
          if (f.shape != Shape::kOne)
            f.name.remove_suffix(2);
        }
        fields.push_back(f);
      }
    }
    // A type the table names but does not define would silently end the check there.
    for (const auto& [message, fields] : s) {
      for (const auto& f : fields) {
        if (!f.type.empty() && !s.contains(f.type)) {
          std::fprintf(stderr, "api_fields.cc: %.*s.%.*s names undefined message %.*s\n",
                       int(message.size()), message.data(), int(f.name.size()), f.name.data(),
                       int(f.type.size()), f.type.data());
          std::abort();
        }
      }
    }
    return s;
  }();
  return schema;
}

// Edit distance of two short names, compared lower-case and without '_', so that
// "export_to" and "Exportto" both come close to "exportTo".
std::size_t Distance(std::string_view a, std::string_view b) {
  auto fold = [](std::string_view s) {
    std::string out;
    for (char c : s) {
      if (c != '_')
        out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    return out;
  };
  const std::string x = fold(a), y = fold(b);
  std::vector<std::size_t> row(y.size() + 1);
  for (std::size_t j = 0; j <= y.size(); ++j)
    row[j] = j;
  for (std::size_t i = 1; i <= x.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= y.size(); ++j) {
      const std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (x[i - 1] == y[j - 1] ? 0 : 1)});
      diagonal = up;
    }
  }
  return row[y.size()];
}

std::string Unknown(const std::string& key, const std::vector<FieldSchema>& fields) {
  std::string_view best;
  std::size_t best_distance = 3;  // suggest only a near miss
  for (const auto& f : fields) {
    if (std::size_t d = Distance(key, f.name); d < best_distance) {
      best = f.name;
      best_distance = d;
    }
  }
  if (best.empty() && fields.size() <= 4) {
    std::string names;
    for (const auto& f : fields)
      names += (names.empty() ? "" : ", ") + std::string(f.name);
    return "unknown field (fields here: " + names + ")";
  }
  if (best.empty())
    return "unknown field";
  return "unknown field (did you mean \"" + std::string(best) + "\"?)";
}

void Walk(const Field& f, std::string_view message) {
  auto it = Messages().find(message);
  if (it == Messages().end() || !f.is_map())
    return;
  const auto& fields = it->second;
  for (const auto& [key, child] : f.Entries()) {
    auto spec = std::find_if(fields.begin(), fields.end(),
                             [&](const FieldSchema& s) { return s.name == key; });
    if (spec == fields.end()) {
      child.Error(Unknown(key, fields));
      return;
    }
    if (spec->type.empty())
      continue;
    if (spec->shape == Shape::kOne) {
      Walk(child, spec->type);
    } else if (spec->shape == Shape::kList && child.is_list()) {
      for (const auto& item : child.List())
        Walk(item, spec->type);
    } else if (spec->shape == Shape::kMap && child.is_map()) {
      for (const auto& [name, value] : child.Entries())
        Walk(value, spec->type);
    }
  }
}

}  // namespace

bool HasApiSchema(const std::string& kind) {
  for (const char* k : {"Gateway", "VirtualService", "DestinationRule", "ServiceEntry", "Sidecar",
                        "AuthorizationPolicy"}) {
    if (kind == k)
      return true;
  }
  return false;
}

void CheckKnownFields(const Field& doc, const std::string& kind) {
  if (!HasApiSchema(kind))
    return;
  Walk(doc, "Document");
  Walk(doc["spec"], kind);
}

}  // namespace sluice::istio::detail
