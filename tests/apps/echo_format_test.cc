// The echo app's text formats (agent/apps/echo_format.h): the reply lines users grep
// (ServiceVersion=v1), the client's "[N body]" lines, Go's duration spelling.
#include <catch2/catch.hpp>

#include "echo_format.h"

using namespace sluice::apps;
using namespace std::chrono_literals;

TEST_CASE("a gRPC Echo reply has the echo app's lines in its order") {
  EchoIdentity id{.version = "v1", .hostname = "echo-v1-abc", .cluster = "", .ns = "echo-grpc"};
  GrpcEchoCall call{.message = "hi",
                    .authority = "echo.echo-grpc.svc.cluster.local:7070",
                    .metadata = {{"user-agent", "grpc-c++/1.51.1"}, {"x-bin", "\x01"}},
                    .peer_ip = "10.0.0.7",
                    .port = 17070};
  CHECK(FormatGrpcEcho(id, call) ==
        "Host=echo.echo-grpc.svc.cluster.local:7070\n"
        "RequestHeader=:authority:echo.echo-grpc.svc.cluster.local:7070\n"
        "RequestHeader=user-agent:grpc-c++/1.51.1\n"
        "StatusCode=200\n"
        "ServiceVersion=v1\n"
        "ServicePort=17070\n"
        "Namespace=echo-grpc\n"
        "IP=10.0.0.7\n"
        "Proto=GRPC\n"
        "Echo=hi\n"
        "Hostname=echo-v1-abc\n");
  // Cluster and IstioVersion appear only when set; binary metadata never.
  id.cluster = "c1";
  id.istio_version = "1.24";
  std::string with = FormatGrpcEcho(id, call);
  CHECK(with.find("ServicePort=17070\nCluster=c1\nNamespace=echo-grpc\nIP=10.0.0.7\n"
                  "IstioVersion=1.24\n") != std::string::npos);
  CHECK(with.find("x-bin") == std::string::npos);
}

TEST_CASE("the HTTP echo body names version, port, URL and sorted request headers") {
  Handler h = MakeEchoHttpHandler({.version = "v2", .hostname = "pod-2"});
  Request req;
  req.method = "POST";
  req.target = "/a?b=1";
  req.headers = {{"host", "echo:80"}, {"x-b", "2"}, {"accept", "*/*"}, {"X-B", "3"}};
  ConnectionInfo conn{.peer_ip = "10.1.1.1", .peer_port = 5555, .local_port = 18080};
  Response resp = h(req, conn);
  CHECK(resp.status == 200);
  CHECK(resp.body ==
        "ServiceVersion=v2\nServicePort=18080\nHost=echo:80\nURL=/a?b=1\nMethod=POST\n"
        "Proto=HTTP/1.1\nIP=10.1.1.1\nRequestHeader=Accept:*/*\nRequestHeader=X-B:2\n"
        "RequestHeader=X-B:3\nHostname=pod-2\n");
}

TEST_CASE("the TCP echo fields") {
  CHECK(FormatTcpEchoFields({.version = "v1", .hostname = "h"}, 19090, "10.0.0.1") ==
        "StatusCode=200\nServiceVersion=v1\nServicePort=19090\nIP=10.0.0.1\nProto=TCP\n"
        "Hostname=h\n");
}

TEST_CASE("durations are spelled as Go prints them") {
  CHECK(GoDuration(0ns) == "0s");
  CHECK(GoDuration(999ns) == "999ns");
  CHECK(GoDuration(1500ns) == "1.5µs");
  CHECK(GoDuration(812345ns) == "812.345µs");
  CHECK(GoDuration(1500023ns) == "1.500023ms");
  CHECK(GoDuration(2s) == "2s");
  CHECK(GoDuration(2500ms) == "2.5s");
  CHECK(GoDuration(90s) == "1m30s");
  CHECK(GoDuration(3723s) == "1h2m3s");
}

TEST_CASE("grpc-client's --timeout takes Go durations") {
  CHECK(ParseGoDuration("5s").value() == 5s);
  CHECK(ParseGoDuration("500ms").value() == 500ms);
  CHECK(ParseGoDuration("1m30s").value() == 90s);
  CHECK(ParseGoDuration("250us").value() == 250us);
  CHECK(ParseGoDuration("1.5s").value() == 1500ms);
  CHECK(ParseGoDuration("3").value() == 3s);
  CHECK(ParseGoDuration("5x").error().message ==
        "duration \"5x\": unknown unit \"x\" (ns, us, ms, s, m, h)");
  CHECK_FALSE(ParseGoDuration("").has_value());
  CHECK_FALSE(ParseGoDuration("s").has_value());
}

TEST_CASE("a forwarded reply becomes the echo client's numbered lines") {
  CHECK(FormatForwardedReply(3, 1500us, 2, "ServiceVersion=v1\n\nHostname=h\n",
                             {{"content-type", "application/grpc"}}) ==
        "[3] Latency=1.5ms\n"
        "[3] ActiveRequests=2\n"
        "[3 body] ServiceVersion=v1\n"
        "[3 body] Hostname=h\n"
        "[3] ResponseHeader=content-type:application/grpc\n");
  CHECK(FormatForwardedError(0, "boom") == "[0 error] boom\n");
  CHECK(GrpcErrorText(14, "connection refused") ==
        "rpc error: code = Unavailable desc = connection refused");
  CHECK(GrpcErrorText(4, "x") == "rpc error: code = DeadlineExceeded desc = x");
}
