// The stand-in for Istio's echo test app (registry.istio.io/testing/app), the workload of
// Istio's proxyless-gRPC sample (samples/grpc-echo): proto.EchoTestService (Echo and
// ForwardEcho) on every --grpc port, the echo app's HTTP answer on every --port and its
// TCP echo on every --tcp port, each reply naming the server's version and hostname.
// Flags the sample passes that the stand-in does not act on are accepted and reported
// (see docs/standin-apps.md).
#pragma once

#include <string>
#include <vector>

#include "echo_format.h"

namespace sluice::apps {

struct GrpcEchoOptions {
  std::string address = "0.0.0.0";  // "::" for IPv6 and IPv4
  // The echo app's defaults when a kind of port is not given at all.
  std::vector<int> grpc_ports{7070};
  std::vector<int> http_ports{8080};
  std::vector<int> tcp_ports{9090};
  EchoIdentity identity;
};

// Listens on every port, prints "grpc-echo: listening on grpc|http|tcp ADDRESS:PORT" on
// stderr per listener (port 0: the kernel's choice), serves until SIGTERM or SIGINT,
// then exits 0. Returns 1 when a port cannot be bound (the message names it).
int RunGrpcEcho(const GrpcEchoOptions& options);

}  // namespace sluice::apps
