// The text formats of Istio's echo test app (registry.istio.io/testing/app), which
// `sluice-apps grpc-echo` and `grpc-client` stand in for: the "Key=value" lines a
// server puts in every reply (ServiceVersion=v1, Hostname=..., Proto=GRPC), and the
// "[N] ..." / "[N body] ..." lines a client prints per request. Users and Istio's own
// tests read these lines (grep ServiceVersion=v2), so they follow the echo app exactly.
// Plain functions over plain structs: tested without sockets.
#pragma once

#include <chrono>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "handler.h"
#include "sluice/common/result.h"

namespace sluice::apps {

// Who the server says it is in every reply.
struct EchoIdentity {
  std::string version;        // --version
  std::string hostname;       // $HOSTNAME, else gethostname()
  std::string cluster;        // --cluster (line left out when empty)
  std::string ns;             // $NAMESPACE (line left out when empty)
  std::string istio_version;  // --istio-version (line left out when empty)
};

// What the server saw of one gRPC Echo call.
struct GrpcEchoCall {
  std::string message;
  std::string authority;  // the :authority the client sent
  // Request metadata as the server saw it (binary "-bin" entries are skipped).
  std::vector<std::pair<std::string, std::string>> metadata;
  std::string peer_ip;
  int port = 0;  // the port the call came in on
};

// The EchoResponse.message for one call, in the echo app's order: Host and
// RequestHeader lines first, then StatusCode, ServiceVersion, ServicePort, Cluster,
// Namespace, IP, IstioVersion, Proto=GRPC, Echo, Hostname; every line ends in '\n'.
std::string FormatGrpcEcho(const EchoIdentity& id, const GrpcEchoCall& call);

// The HTTP echo endpoint (--port): any method and path is 200 with the echo app's
// HTTP body (ServiceVersion, ServicePort, Host, URL, Method, Proto, IP, RequestHeader
// lines sorted by name, Hostname), Content-Type application/text; ServicePort is the
// port the request came in on.
Handler MakeEchoHttpHandler(EchoIdentity id);

// The first bytes a TCP echo port (--tcp) writes once the client has sent something:
// StatusCode, Cluster, IstioVersion, Namespace, ServiceVersion, ServicePort, IP,
// Proto=TCP, Hostname. Everything the client sends is then echoed back.
std::string FormatTcpEchoFields(const EchoIdentity& id, int port, std::string_view peer_ip);

// A duration as Go's time.Duration prints it ("812.345µs", "1.500023ms", "2s"): the
// echo client's Latency= lines use it.
std::string GoDuration(std::chrono::nanoseconds d);

// What one successful forwarded Echo call adds to the output, as Istio's forwarder
// writes it: "[N] Latency=…", "[N] ActiveRequests=…", one "[N body] LINE" per non-empty
// line of the reply, then "[N] ResponseHeader=k:v" per response metadata entry.
std::string FormatForwardedReply(int request_id, std::chrono::nanoseconds latency,
                                 int active_requests, std::string_view reply,
                                 const std::vector<std::pair<std::string, std::string>>& headers);

// A Go duration flag ("5s", "500ms", "1m30s", "250us"; a bare number is seconds), as
// the echo client's --timeout takes it.
Result<std::chrono::microseconds> ParseGoDuration(std::string_view text);

// "[N error] ERROR\n", the echo app's line for a request that failed.
std::string FormatForwardedError(int request_id, std::string_view error);

// A gRPC status as grpc-go prints an RPC error: "rpc error: code = Unavailable desc = …".
std::string GrpcErrorText(int code, std::string_view message);

}  // namespace sluice::apps
