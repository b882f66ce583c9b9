// The client half of the echo stand-in: making Echo calls to a URL the way Istio's echo
// app forwards them (ForwardEcho, and its `client` command), and calling ForwardEcho on
// a remote echo server. `sluice-apps grpc-client` and the server's own ForwardEcho both
// use it, so "ask a pod to call echo" and "call echo from here" print the same lines.
//
// URLs: xds:///echo.ns.svc.cluster.local:7070 resolves through gRPC's own xDS client
// (the process needs GRPC_XDS_BOOTSTRAP or GRPC_XDS_BOOTSTRAP_CONFIG, as any proxyless
// gRPC workload); grpc://HOST:PORT and a bare HOST:PORT dial directly.
#pragma once

#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "sluice/common/result.h"

namespace sluice::apps {

struct ForwardRequest {
  std::string url;
  int count = 1;  // below 2: one call (the echo app's rule)
  int qps = 0;    // 0: no pacing
  // For the whole set of calls, as the echo app applies it.
  std::chrono::microseconds timeout = std::chrono::seconds(5);
  std::string message = "HelloWorld";
  // "Host" sets the call's :authority; the rest are sent as metadata (names lowercased).
  std::vector<std::pair<std::string, std::string>> headers;
};

struct ForwardResult {
  std::vector<std::string> outputs;  // per call: its "[N] ..." lines, "" when it failed
  std::vector<std::string> errors;   // per call: "" or the error (grpc-go's wording)
  int failed = 0;
  // "2/5 requests had errors; first error: rpc error: …", "" when none failed.
  std::string Summary() const;
};

// The gRPC channel target for an echo URL: "xds:///x:7070" as is, "grpc://h:p" and
// "h:p" as "h:p". Other schemes (http://, tcp://) are refused, naming the URL.
Result<std::string> GrpcTarget(const std::string& url);

// Makes the calls (up to 20 at a time over one channel, as the echo app does) and
// collects every output and error. Fails only for a URL it cannot dial at all, or a
// header gRPC cannot send (named).
Result<ForwardResult> ForwardEcho(const ForwardRequest& request);

// Calls proto.EchoTestService/ForwardEcho on `server` (HOST:PORT) with `request`: the
// remote echo server makes the calls. Returns its output entries, or the RPC's error
// in grpc-go's wording.
Result<std::vector<std::string>> ForwardEchoVia(const std::string& server,
                                                const ForwardRequest& request);

// `sluice-apps grpc-client`: makes the calls here (or, with `forward_via` set, has that
// echo server make them through ForwardEcho) and prints the output entries on stdout as
// Istio's echo client does, then "All N requests succeeded" or what failed on stderr.
// Returns the exit status: 0 when every call succeeded, 1 otherwise.
int RunGrpcClient(const ForwardRequest& request, const std::string& forward_via);

}  // namespace sluice::apps
