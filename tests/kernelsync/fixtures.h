// Istio-shaped Envoy resources for the kernel sync tests, written as istiod emits them
// (JSON, parsed into the real Envoy protos).
#pragma once

#include <google/protobuf/util/json_util.h>

#include <catch2/catch.hpp>
#include <string>

#include "envoy/extensions/filters/http/router/v3/router.pb.h"
#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb.h"
#include "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.pb.h"
#include "sluice/config/snapshot.h"

namespace sluice::test {

template <class T>
T FromJson(const std::string& json) {
  // Types that only appear inside Any must be linked in (and registered) for the JSON
  // parser to find them: descriptor() is an out-of-line call the optimiser keeps.
  static const void* const linked[] = {
      envoy::extensions::filters::http::router::v3::Router::descriptor(),
      envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager::
          descriptor(),
      envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy::descriptor(),
  };
  (void)linked;
  T msg;
  auto st = google::protobuf::util::JsonStringToMessage(json, &msg);
  INFO(json << "\n" << st.ToString());
  REQUIRE(st.ok());
  return msg;
}

inline std::string Eds(const std::string& name, const std::string& lb = "LEAST_REQUEST") {
  return R"({"name":")" + name + R"(","type":"EDS","lbPolicy":")" + lb +
         R"(","edsClusterConfig":{"edsConfig":{"ads":{}},"serviceName":")" + name + R"("}})";
}

// endpoints: "10.1.0.1:5000" or "10.1.0.1:5000 UNHEALTHY"
inline std::string Cla(const std::string& name, std::initializer_list<std::string> endpoints) {
  std::string lbe;
  for (const auto& e : endpoints) {
    auto sp = e.find(' ');
    std::string addr = e.substr(0, sp),
                health = sp == std::string::npos ? "HEALTHY" : e.substr(sp + 1);
    auto colon = addr.rfind(':');
    if (!lbe.empty())
      lbe += ",";
    lbe += R"({"endpoint":{"address":{"socketAddress":{"address":")" + addr.substr(0, colon) +
           R"(","portValue":)" + addr.substr(colon + 1) + R"(}}},"healthStatus":")" + health +
           R"(","loadBalancingWeight":1})";
  }
  return R"({"clusterName":")" + name + R"(","endpoints":[{"lbEndpoints":[)" + lbe + "]}]}";
}

// An outbound HTTP listener 0.0.0.0_PORT using RDS route "PORT".
inline std::string HttpListener(int port) {
  const std::string p = std::to_string(port);
  return R"({"name":"0.0.0.0_)" + p +
         R"(","address":{"socketAddress":{"address":"0.0.0.0","portValue":)" + p +
         R"(}},"trafficDirection":"OUTBOUND","filterChains":[{"filters":[{"name":"envoy.filters.network.http_connection_manager","typedConfig":{"@type":"type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager","statPrefix":"outbound_0.0.0.0_)" +
         p + R"(","rds":{"configSource":{"ads":{}},"routeConfigName":")" + p +
         R"("},"httpFilters":[{"name":"envoy.filters.http.router","typedConfig":{"@type":"type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]})";
}

inline std::string VirtualOutbound(const std::string& cluster) {
  return R"({"name":"virtualOutbound","address":{"socketAddress":{"address":"0.0.0.0","portValue":15001}},"useOriginalDst":true,"trafficDirection":"OUTBOUND","defaultFilterChain":{"filters":[{"name":"envoy.filters.network.tcp_proxy","typedConfig":{"@type":"type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy","statPrefix":")" +
         cluster + R"(","cluster":")" + cluster + R"("}}]}})";
}

inline std::string TcpListener(const std::string& vip, int port, const std::string& cluster) {
  const std::string p = std::to_string(port);
  return R"({"name":")" + vip + "_" + p + R"(","address":{"socketAddress":{"address":")" + vip +
         R"(","portValue":)" + p +
         R"(}},"trafficDirection":"OUTBOUND","filterChains":[{"filters":[{"name":"envoy.filters.network.tcp_proxy","typedConfig":{"@type":"type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy","statPrefix":")" +
         cluster + R"(","cluster":")" + cluster + R"("}}]}]})";
}

// Istio's default route retry policy.
inline const char* kDefaultRetry =
    R"("retryPolicy":{"retryOn":"connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes","numRetries":2,"retriableStatusCodes":[503],"hostSelectionRetryMaxAttempts":"5"})";

}  // namespace sluice::test
