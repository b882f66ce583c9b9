// The kernel path's Istio TCP series (kernel_tcp_stats.h) and the L7 wire's samples
// (istio_samples_wire.h): kernel records labelled by the proxy's rules from istiod's
// metadata and the node's pods, the cap, and one Prometheus text for both paths.
#include <google/protobuf/text_format.h>

#include <catch2/catch.hpp>
#include <sstream>

#include "istio_samples_wire.h"
#include "kernel_tcp_stats.h"

using namespace sluice;
using namespace sluice::agent;
namespace ist = sluice::proxy::telemetry;

namespace {

constexpr char kCluster[] = "outbound|9000||tcp-echo.default.svc.cluster.local";

config::SnapshotPtr EchoSnapshot() {
  auto s = std::make_shared<config::Snapshot>();
  auto c = std::make_shared<envoy::config::cluster::v3::Cluster>();
  REQUIRE(google::protobuf::TextFormat::ParseFromString(
      R"pb(name: "outbound|9000||tcp-echo.default.svc.cluster.local"
           type: EDS
           eds_cluster_config { service_name: "outbound|9000||tcp-echo.default.svc.cluster.local" }
           metadata {
             filter_metadata {
               key: "istio"
               value {
                 fields {
                   key: "services"
                   value {
                     list_value {
                       values {
                         struct_value {
                           fields {
                             key: "host"
                             value { string_value: "tcp-echo.default.svc.cluster.local" }
                           }
                           fields {
                             key: "name"
                             value { string_value: "tcp-echo" }
                           }
                           fields {
                             key: "namespace"
                             value { string_value: "default" }
                           }
                         }
                       }
                     }
                   }
                 }
               }
             }
           })pb",
      c.get()));
  auto cla = std::make_shared<envoy::config::endpoint::v3::ClusterLoadAssignment>();
  REQUIRE(google::protobuf::TextFormat::ParseFromString(
      R"pb(cluster_name: "outbound|9000||tcp-echo.default.svc.cluster.local"
           endpoints {
             lb_endpoints {
               endpoint { address { socket_address { address: "10.244.0.7" port_value: 9000 } } }
               metadata {
                 filter_metadata {
                   key: "istio"
                   value {
                     fields {
                       key: "workload"
                       value { string_value: "tcp-echo-v1;default;tcp-echo;v1;Kubernetes" }
                     }
                   }
                 }
               }
             }
             lb_endpoints {
               endpoint { address { socket_address { address: "10.244.1.9" port_value: 9000 } } }
             }
           })pb",
      cla.get()));
  s->clusters[kCluster] = c;
  s->endpoints[kCluster] = cla;
  return s;
}

kernelsync::KernelPlan EchoPlan() {
  kernelsync::KernelPlan plan;
  ServiceSpec svc;
  svc.name = "tcp-echo.default.svc.cluster.local:9000";
  svc.vips = {*IpAddress::Parse("10.96.0.20")};
  svc.port = 9000;
  ClusterSpec cs;
  cs.name = kCluster;
  svc.clusters = {cs};
  plan.services = {svc};
  return plan;
}

SocketAddress Addr(const char* s) {
  return *SocketAddress::Parse(s);
}

std::string Label(const ist::Sample& s, std::string_view name) {
  for (const auto& [n, v] : s.labels)
    if (n == name)
      return v;
  return "<absent>";
}

struct Node {
  KernelTcpLookups lookups;
  Node() {
    lookups.services = std::make_shared<const ServiceTelemetryIndex>(
        IndexServiceTelemetry(EchoPlan(), {EchoSnapshot()}));
    lookups.pods[7] = ist::Intern(
        ist::PodWorkload("default", "sleep-5d8f6", {{"app", "sleep"}, {"version", "v2"}}));
    // The endpoint 10.244.0.7 is a pod of this node: it adds app and version.
    lookups.pod_ips[*IpAddress::Parse("10.244.0.7")] = ist::Intern(
        ist::PodWorkload("default", "tcp-echo-v1-x2k9q", {{"app", "tcp-echo"}, {"version", "v1"}}));
  }
};

}  // namespace

TEST_CASE(
    "a kernel record is labelled as the proxy labels a TCP connection, bytes by Istio's sides") {
  Node n;
  std::vector<TcpMetricsRecord> recs = {
      {7, Addr("10.96.0.20:9000"), Addr("10.244.0.7:9000"), 2, 1, 1000, 3000},
      // A pod that left the node: left out.
      {99, Addr("10.96.0.20:9000"), Addr("10.244.0.7:9000"), 5, 5, 5, 5},
  };
  auto samples = KernelTcpSamples(recs, n.lookups);
  REQUIRE(samples.size() == 1);
  const auto& s = samples[0];
  CHECK(s.tcp);
  CHECK(s.tcp_opened == 2);
  CHECK(s.tcp_closed == 1);
  CHECK(s.tcp_received == 1000);  // from the client
  CHECK(s.tcp_sent == 3000);      // to the client
  CHECK(Label(s, "reporter") == "source");
  CHECK(Label(s, "source_workload") == "sleep");
  CHECK(Label(s, "source_workload_namespace") == "default");
  CHECK(Label(s, "source_app") == "sleep");
  CHECK(Label(s, "source_version") == "v2");
  CHECK(Label(s, "destination_workload") == "tcp-echo-v1");
  CHECK(Label(s, "destination_app") == "tcp-echo");
  CHECK(Label(s, "destination_version") == "v1");
  CHECK(Label(s, "destination_canonical_service") == "tcp-echo");
  CHECK(Label(s, "destination_service") == "tcp-echo.default.svc.cluster.local");
  CHECK(Label(s, "destination_service_name") == "tcp-echo");
  CHECK(Label(s, "destination_service_namespace") == "default");
  CHECK(Label(s, "request_protocol") == "tcp");
  CHECK(Label(s, "response_flags") == "-");
  CHECK(Label(s, "connection_security_policy") == "unknown");
  CHECK(Label(s, "response_code") == "<absent>");
}

TEST_CASE("kernel records that resolve alike are one series, and an unknown endpoint is unknown") {
  Node n;
  std::vector<TcpMetricsRecord> recs = {
      {7, Addr("10.96.0.20:9000"), Addr("10.244.0.7:9000"), 1, 1, 10, 20},
      {7, Addr("10.96.0.20:9000"), Addr("10.244.0.7:9000"), 1, 1, 1, 2},
      // An endpoint without metadata, on another node.
      {7, Addr("10.96.0.20:9000"), Addr("10.244.1.9:9000"), 1, 0, 0, 0},
      // A service address the kernel does not serve (any more).
      {7, Addr("10.96.0.99:80"), Addr("10.244.1.9:80"), 1, 1, 4, 4},
  };
  auto samples = KernelTcpSamples(recs, n.lookups);
  REQUIRE(samples.size() == 3);
  int checked = 0;
  for (const auto& s : samples) {
    if (Label(s, "destination_workload") == "tcp-echo-v1") {
      CHECK(s.tcp_opened == 2);
      CHECK(s.tcp_received == 11);
      CHECK(s.tcp_sent == 22);
      checked++;
    } else if (Label(s, "destination_service") == "tcp-echo.default.svc.cluster.local") {
      CHECK(Label(s, "destination_workload") == "unknown");
      CHECK(s.tcp_opened == 1);
      CHECK(s.tcp_closed == 0);
      checked++;
    } else {
      CHECK(Label(s, "destination_service") == "unknown");
      CHECK(Label(s, "destination_workload") == "unknown");
      CHECK(Label(s, "source_workload") == "sleep");
      checked++;
    }
  }
  CHECK(checked == 3);
}

TEST_CASE("a pod's kernel series are capped, the rest go to the overflow series") {
  Node n;
  std::vector<TcpMetricsRecord> recs = {
      {7, Addr("10.96.0.20:9000"), Addr("10.244.0.7:9000"), 1, 1, 1, 1},
      {7, Addr("10.96.0.20:9000"), Addr("10.244.1.9:9000"), 2, 2, 2, 2},
      {7, Addr("10.96.0.99:80"), Addr("10.244.1.9:80"), 3, 3, 3, 3},
  };
  auto samples = KernelTcpSamples(recs, n.lookups, /*max_series=*/1);
  REQUIRE(samples.size() == 2);
  uint64_t overflow = 0;
  for (const auto& s : samples)
    if (Label(s, "source_workload") == "overflow") {
      CHECK(Label(s, "reporter") == "source");
      CHECK(Label(s, "request_protocol") == "tcp");
      overflow = s.tcp_opened;
    }
  CHECK(overflow == 5);
}

TEST_CASE("the L7 process's samples cross the wire whole, and render once with the kernel's") {
  Node n;
  auto kernel = KernelTcpSamples(
      {{7, Addr("10.96.0.20:9000"), Addr("10.244.0.7:9000"), 1, 1, 100, 200}}, n.lookups);
  REQUIRE(kernel.size() == 1);
  // The proxy's series for the same label set (the same client took the proxy once), and
  // an HTTP series with a histogram.
  ist::Sample proxy_tcp = kernel[0];
  proxy_tcp.tcp_opened = 1;
  proxy_tcp.tcp_closed = 1;
  proxy_tcp.tcp_received = 5;
  proxy_tcp.tcp_sent = 7;
  ist::Sample http;
  http.labels = {{"reporter", "source"}, {"response_code", "200"}, {"x", "a\"b\\c\nd"}};
  http.requests = 3;
  http.duration_ms.buckets[2] = 3;
  http.duration_ms.count = 3;
  http.duration_ms.sum = 12;
  http.request_bytes.count = 3;
  http.request_bytes.buckets[5] = 3;
  http.response_bytes.count = 3;
  http.response_bytes.buckets[6] = 3;

  auto decoded = DecodeIstioSamples(EncodeIstioSamples({proxy_tcp, http}));
  REQUIRE(decoded.has_value());
  REQUIRE(decoded->size() == 2);
  CHECK((*decoded)[0].labels == proxy_tcp.labels);
  CHECK((*decoded)[0].tcp);
  CHECK((*decoded)[0].tcp_sent == 7);
  CHECK((*decoded)[1].labels == http.labels);
  CHECK((*decoded)[1].duration_ms.buckets == http.duration_ms.buckets);
  CHECK((*decoded)[1].duration_ms.sum == 12);
  CHECK((*decoded)[1].requests == 3);

  std::vector<ist::Sample> all = *decoded;
  all.insert(all.end(), kernel.begin(), kernel.end());
  const std::string text = ist::RenderPrometheus(all);
  INFO(text);
  std::istringstream in(text);
  std::string line;
  std::map<std::string, int> types;
  std::vector<std::string> opened;
  while (std::getline(in, line)) {
    if (line.rfind("# TYPE ", 0) == 0)
      types[line]++;
    if (line.rfind("istio_tcp_connections_opened_total{", 0) == 0)
      opened.push_back(line);
  }
  for (const auto& [t, count] : types)
    CHECK(count == 1);
  REQUIRE(opened.size() == 1);  // equal labels: one series, summed
  CHECK(opened[0].ends_with(" 2"));
  CHECK(text.find("istio_tcp_received_bytes_total{") != std::string::npos);
  CHECK(text.find("} 105\n") != std::string::npos);  // received: 100 + 5

  CHECK(!DecodeIstioSamples("# TYPE istio_requests_total counter\n").has_value());
  CHECK(!DecodeIstioSamples(R"([{"labels": [["a"]]}])").has_value());
}
