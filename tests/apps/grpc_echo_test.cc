// `sluice-apps grpc-echo` and `grpc-client` as real subprocesses on loopback: the echo
// app's reply lines over gRPC, HTTP and TCP, the sample's own arguments, ForwardEcho,
// and the client's output and exit status when calls fail.
#include <catch2/catch.hpp>

#include <signal.h>

#include <chrono>
#include <regex>
#include <set>
#include <string>

#include "process_util.h"

using namespace sluice::apps::testing;

namespace {

struct Run {
  int exit_code = -1;
  std::string out, err;
};

// Runs sluice-apps to completion (at most 30 s) with stdout and stderr kept apart.
Run RunApps(const TempDir& dir, std::vector<std::string> args,
            const std::map<std::string, std::string>& env = {}) {
  static int counter = 0;
  std::string tag = "run-" + std::to_string(++counter);
  args.insert(args.begin(), AppsBin());
  Child child(std::move(args), dir / (tag + ".out"), dir / (tag + ".err"), env);
  Run r;
  r.exit_code = child.Wait(std::chrono::seconds(30));
  r.out = ReadFile(dir / (tag + ".out"));
  r.err = ReadFile(dir / (tag + ".err"));
  return r;
}

std::string Addr(int port) {
  return "127.0.0.1:" + std::to_string(port);
}

int CountOf(const std::string& text, const std::string& needle) {
  int n = 0;
  for (auto at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1))
    ++n;
  return n;
}

}  // namespace

TEST_CASE("grpc-echo answers Echo with the echo app's lines: version, hostname, port") {
  TempDir dir;
  AppServer echo(dir,
                 {"grpc-echo", "--address", "127.0.0.1", "--grpc", "0", "--port", "0", "--tcp", "0",
                  "--version", "v7"},
                 {{"HOSTNAME", "echo-v7-5d9c"}, {"NAMESPACE", "echo-grpc"}}, 3);
  const int port = echo.port("grpc");
  Run r =
      RunApps(dir, {"grpc-client", "--url", Addr(port), "--msg", "ping-42", "-H", "x-trace: abc"});
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  for (const std::string& line : std::vector<std::string>{
           "[0 body] ServiceVersion=v7", "[0 body] Hostname=echo-v7-5d9c",
           "[0 body] ServicePort=" + std::to_string(port), "[0 body] Proto=GRPC",
           "[0 body] Echo=ping-42", "[0 body] StatusCode=200", "[0 body] Namespace=echo-grpc",
           "[0 body] IP=127.0.0.1", "[0 body] Host=" + Addr(port),
           "[0 body] RequestHeader=x-trace:abc"})
    CHECK(r.out.find(line + "\n") != std::string::npos);
  CHECK(std::regex_search(r.out, std::regex(R"(\[0\] Latency=[0-9.]+(µs|ms|s)\n)")));
  CHECK(r.err.find("All 1 requests succeeded") != std::string::npos);

  SECTION("Host sets the call's :authority") {
    Run h = RunApps(dir, {"grpc-client", Addr(port), "-H", "Host: echo.echo-grpc:7070"});
    CHECK(h.exit_code == 0);
    CHECK(h.out.find("[0 body] Host=echo.echo-grpc:7070\n") != std::string::npos);
  }
  SECTION("--count makes that many calls, numbered from 0") {
    Run c = RunApps(dir, {"grpc-client", Addr(port), "--count", "25"});
    CHECK(c.exit_code == 0);
    CHECK(CountOf(c.out, "body] ServiceVersion=v7\n") == 25);
    CHECK(c.out.find("[24 body] ServiceVersion=v7") != std::string::npos);
    CHECK(c.err.find("All 25 requests succeeded") != std::string::npos);
  }
}

TEST_CASE("grpc-echo takes the sample's arguments and serves every gRPC, HTTP and TCP port") {
  TempDir dir;
  // The argument shapes of samples/grpc-echo/grpc-echo.yaml (--flag=value, repeated
  // flags, flags it does not act on), with kernel-chosen ports; and a comma list.
  AppServer echo(dir,
                 {"grpc-echo",
                  "--address",
                  "127.0.0.1",
                  "--metrics=15014",
                  "--port",
                  "0",
                  "--tcp",
                  "0",
                  "--xds-grpc-server=0",
                  "--grpc",
                  "0",
                  "--grpc",
                  "0",
                  "--port",
                  "0",
                  "--port",
                  "0",
                  "--version",
                  "v2",
                  "--crt=/cert.crt",
                  "--key=/cert.key"},
                 {{"HOSTNAME", "echo-v2-x"}}, 6);
  REQUIRE(echo.ports("grpc").size() == 2);
  REQUIRE(echo.ports("http").size() == 3);
  REQUIRE(echo.ports("tcp").size() == 1);
  CHECK(echo.Stderr().find("--xds-grpc-server 0: served as plain gRPC") != std::string::npos);
  CHECK(echo.Stderr().find("--metrics 15014: not served") != std::string::npos);

  for (int port : echo.ports("grpc")) {
    Run r = RunApps(dir, {"grpc-client", Addr(port)});
    CHECK(r.exit_code == 0);
    CHECK(r.out.find("[0 body] ServicePort=" + std::to_string(port) + "\n") != std::string::npos);
    CHECK(r.out.find("[0 body] ServiceVersion=v2\n") != std::string::npos);
  }
  // The sample's readiness probe is an HTTP GET / on --port 8080.
  for (int port : echo.ports("http")) {
    CurlResult c = Curl({"http://" + Addr(port) + "/path?q=1", "-H", "X-Tag: t1"});
    REQUIRE(c.exit_code == 0);
    CHECK(c.out.find("ServiceVersion=v2\n") != std::string::npos);
    CHECK(c.out.find("ServicePort=" + std::to_string(port) + "\n") != std::string::npos);
    CHECK(c.out.find("URL=/path?q=1\n") != std::string::npos);
    CHECK(c.out.find("Method=GET\nProto=HTTP/1.1\n") != std::string::npos);
    CHECK(c.out.find("RequestHeader=X-Tag:t1\n") != std::string::npos);
    CHECK(c.out.find("Hostname=echo-v2-x\n") != std::string::npos);
  }
  // TCP: the fields once the client speaks, then the bytes echoed.
  Conn conn(echo.port("tcp"));
  conn.Send("hello tcp\n");
  std::string got;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
  while (got.find("hello tcp\n") == std::string::npos &&
         std::chrono::steady_clock::now() < deadline)
    got += conn.ReadSome();
  CHECK(got.starts_with("StatusCode=200\n"));
  CHECK(got.find("ServiceVersion=v2\nServicePort=" + std::to_string(echo.port("tcp")) +
                 "\nIP=127.0.0.1\nProto=TCP\nHostname=echo-v2-x\n") != std::string::npos);
  CHECK(got.ends_with("hello tcp\n"));

  SECTION("a flag the stand-in does not know is refused, not ignored") {
    Run bad = RunApps(dir, {"grpc-echo", "--grpc", "0", "--tls", "17070"});
    CHECK(bad.exit_code != 0);
    CHECK(bad.err.find("--tls") != std::string::npos);
  }
  SECTION("comma-separated port lists, as Go's IntSlice flags take them") {
    AppServer two(
        dir, {"grpc-echo", "--address", "127.0.0.1", "--grpc", "0,0", "--port", "0", "--tcp", "0"},
        {}, 4);
    CHECK(two.ports("grpc").size() == 2);
  }
}

TEST_CASE(
    "grpc-echo's ForwardEcho makes the calls itself, and grpc-client --forward-via prints them") {
  TempDir dir;
  AppServer a(dir,
              {"grpc-echo", "--address", "127.0.0.1", "--grpc", "0", "--port", "0", "--tcp", "0",
               "--version", "va"},
              {{"HOSTNAME", "pod-a"}}, 3);
  AppServer b(dir,
              {"grpc-echo", "--address", "127.0.0.1", "--grpc", "0", "--port", "0", "--tcp", "0",
               "--version", "vb"},
              {{"HOSTNAME", "pod-b"}}, 3);
  // Ask a to call b five times.
  Run r = RunApps(dir, {"grpc-client", "--forward-via", Addr(a.port("grpc")), "--url",
                        "grpc://" + Addr(b.port("grpc")), "--count", "5", "--msg", "via-a"});
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(CountOf(r.out, "body] ServiceVersion=vb\n") == 5);
  CHECK(CountOf(r.out, "body] Hostname=pod-b\n") == 5);
  CHECK(CountOf(r.out, "body] Echo=via-a\n") == 5);
  CHECK(r.out.find("ServiceVersion=va") == std::string::npos);
  CHECK(r.out.find("[4 body] Proto=GRPC\n") != std::string::npos);

  SECTION("a failed forward is the remote server's error, and exit status 1") {
    TempDir other;
    int dead = 0;
    {
      AppServer gone(
          other,
          {"grpc-echo", "--address", "127.0.0.1", "--grpc", "0", "--port", "0", "--tcp", "0"}, {},
          3);
      dead = gone.port("grpc");
    }
    Run f = RunApps(dir, {"grpc-client", "--forward-via", Addr(a.port("grpc")), "--url", Addr(dead),
                          "--count", "3", "--timeout", "2s"});
    CHECK(f.exit_code == 1);
    CHECK(f.out.empty());
    CHECK(f.err.find("ForwardEcho on " + Addr(a.port("grpc")) +
                     ": rpc error: code = Unknown desc = 3/3 requests had errors; first error: "
                     "rpc error: code = Unavailable") != std::string::npos);
  }
}

TEST_CASE("grpc-client: calls to a server that is down print errors and exit 1") {
  TempDir dir;
  int dead = 0;
  {
    AppServer gone(
        dir, {"grpc-echo", "--address", "127.0.0.1", "--grpc", "0", "--port", "0", "--tcp", "0"},
        {}, 3);
    dead = gone.port("grpc");
  }  // SIGTERM: the port is closed now
  auto t0 = std::chrono::steady_clock::now();
  Run r = RunApps(dir, {"grpc-client", "--url", Addr(dead), "--count", "3", "--timeout", "3s"});
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(10));
  INFO(r.out << r.err);
  CHECK(r.exit_code == 1);
  for (int i = 0; i < 3; ++i)
    CHECK(r.out.find("[" + std::to_string(i) + " error] rpc error: code = Unavailable desc = ") !=
          std::string::npos);
  CHECK(r.out.find("body]") == std::string::npos);
  CHECK(r.err.find("3/3 requests had errors; first error: rpc error: code = Unavailable") !=
        std::string::npos);

  SECTION("a header gRPC cannot send is refused, naming it, here and in ForwardEcho") {
    Run h = RunApps(dir, {"grpc-client", Addr(dead), "-H", "bad key: v"});
    CHECK(h.exit_code == 1);
    CHECK(h.err.find("header \"bad key\": a gRPC metadata name is") != std::string::npos);
    AppServer live(
        dir, {"grpc-echo", "--address", "127.0.0.1", "--grpc", "0", "--port", "0", "--tcp", "0"},
        {}, 3);
    Run f = RunApps(dir, {"grpc-client", "--forward-via", Addr(live.port("grpc")), "--url",
                          Addr(live.port("grpc")), "-H", "bad key: v"});
    CHECK(f.exit_code == 1);
    CHECK(f.err.find("rpc error: code = Unknown desc = header \"bad key\":") != std::string::npos);
    // The server refused it (gRPC would have aborted the process) and still serves.
    Run ok = RunApps(dir, {"grpc-client", Addr(live.port("grpc"))});
    CHECK(ok.exit_code == 0);
  }
  SECTION("a URL it cannot call is refused, naming it") {
    Run u = RunApps(dir, {"grpc-client", "http://echo:8080/"});
    CHECK(u.exit_code == 1);
    CHECK(u.err.find("url http://echo:8080/: only xds:/// and grpc://") != std::string::npos);
  }
  SECTION("xds:/// with a bootstrap that is not there fails with gRPC's own reason") {
    Run x = RunApps(dir, {"grpc-client", "xds:///echo.test:7070", "--timeout", "2s"},
                    {{"GRPC_XDS_BOOTSTRAP", dir / "missing.json"}});
    CHECK(x.exit_code == 1);
    CHECK(x.out.find("[0 error] rpc error: code = Unavailable desc = Failed to create XdsClient") !=
          std::string::npos);
  }
}

TEST_CASE("grpc-echo exits 0 on SIGTERM and names a port it cannot bind") {
  TempDir dir;
  AppServer echo(
      dir, {"grpc-echo", "--address", "127.0.0.1", "--grpc", "0", "--port", "0", "--tcp", "0"}, {},
      3);
  Run clash = RunApps(dir, {"grpc-echo", "--address", "127.0.0.1", "--grpc", "0", "--port",
                            std::to_string(echo.port("http")), "--tcp", "0"});
  CHECK(clash.exit_code == 1);
  CHECK(clash.err.find(std::to_string(echo.port("http"))) != std::string::npos);
  kill(echo.child().pid(), SIGTERM);
  CHECK(echo.child().Wait(std::chrono::seconds(3)) == 0);
}
