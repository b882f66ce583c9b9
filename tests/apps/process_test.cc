// sluice-apps as a real subprocess on loopback, driven by the real curl and raw sockets.
#include <catch2/catch.hpp>

#include <signal.h>

#include <chrono>
#include <fstream>
#include <future>
#include <set>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "images.h"
#include "process_util.h"

using namespace sluice::apps::testing;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

std::string Url(int port, const std::string& path) {
  return "http://127.0.0.1:" + std::to_string(port) + path;
}

// Body followed by the status code on the last line.
std::pair<std::string, int> Fetch(const std::vector<std::string>& args) {
  std::vector<std::string> all = args;
  all.insert(all.begin(), {"-w", "\n%{http_code}"});
  CurlResult r = Curl(all);
  REQUIRE(r.exit_code == 0);
  std::size_t nl = r.out.rfind('\n');
  REQUIRE(nl != std::string::npos);
  return {r.out.substr(0, nl), std::stoi(r.out.substr(nl + 1))};
}

json FetchJson(const std::vector<std::string>& args) {
  auto [body, code] = Fetch(args);
  REQUIRE(code == 200);
  json j = json::parse(body, nullptr, false);
  REQUIRE_FALSE(j.is_discarded());
  return j;
}

}  // namespace

TEST_CASE("httpbin: /headers shows the request's headers with httpbin's spelling") {
  TempDir dir;
  AppServer app(dir, {"httpbin", "--address", "127.0.0.1", "--port", "0"});
  json j = FetchJson(
      {"-H", "x-request-id: req-42", "-H", "X-B3-TRACEID: 7", Url(app.port(), "/headers")});
  REQUIRE(j.contains("headers"));
  CHECK(j["headers"]["X-Request-Id"] == "req-42");
  CHECK(j["headers"]["X-B3-Traceid"] == "7");
  CHECK(j["headers"]["User-Agent"].get<std::string>().starts_with("curl/"));
  CHECK(j["headers"]["Host"] == "127.0.0.1:" + std::to_string(app.port()));
}

TEST_CASE("httpbin: /get echoes args, headers, origin and url as JSON") {
  TempDir dir;
  AppServer app(dir, {"httpbin", "--address", "127.0.0.1", "--port", "0"});
  json j = FetchJson({Url(app.port(), "/get?show_env=1&name=a%20b&tag=x&tag=y")});
  CHECK(j["args"]["show_env"] == "1");
  CHECK(j["args"]["name"] == "a b");
  CHECK(j["args"]["tag"] == json::array({"x", "y"}));
  CHECK(j["origin"] == "127.0.0.1");
  CHECK(j["url"] == Url(app.port(), "/get?show_env=1&name=a%20b&tag=x&tag=y"));
  CHECK(j["headers"]["Accept"] == "*/*");
  CHECK_FALSE(j.contains("method"));  // kennethreitz's /get has no method field

  SECTION("go-httpbin style lists every value") {
    AppServer go(dir,
                 {"httpbin", "--style", "go-httpbin", "--address", "127.0.0.1", "--port", "0"});
    json g = FetchJson({Url(go.port(), "/get?a=1")});
    CHECK(g["args"]["a"] == json::array({"1"}));
    CHECK(g["headers"]["Accept"] == json::array({"*/*"}));
    CHECK(g["method"] == "GET");
  }
}

TEST_CASE("httpbin: /status/N answers N - a list answers one of them at random") {
  TempDir dir;
  AppServer app(dir, {"httpbin", "--address", "127.0.0.1", "--port", "0"});
  auto [body, code] = Fetch({Url(app.port(), "/status/418")});
  CHECK(code == 418);
  CHECK(Fetch({Url(app.port(), "/status/200")}).second == 200);
  CHECK(Fetch({"-X", "POST", Url(app.port(), "/status/201")}).second == 201);

  std::set<int> seen;
  for (int i = 0; i < 40; ++i) {
    int c = Fetch({Url(app.port(), "/status/500,503")}).second;
    REQUIRE((c == 500 || c == 503));
    seen.insert(c);
  }
  CHECK(seen.size() == 2);  // 40 fair draws give both codes except with p = 2^-39

  CHECK(Fetch({Url(app.port(), "/status/abc")}).second == 400);
  CHECK(Fetch({Url(app.port(), "/status/9999")}).second == 400);
}

TEST_CASE("httpbin: /delay/1 waits a second without blocking other requests") {
  TempDir dir;
  AppServer app(dir, {"httpbin", "--address", "127.0.0.1", "--port", "0"});
  auto t0 = Clock::now();
  auto delayed = std::async(std::launch::async, [&] {
    auto r = Fetch({Url(app.port(), "/delay/1?x=1")});
    return std::make_pair(r, Clock::now());
  });
  // Wait until the delayed request is in the server (it logs after answering, so use time).
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  auto g0 = Clock::now();
  json j = FetchJson({Url(app.port(), "/get")});
  auto get_done = Clock::now();
  CHECK(get_done - g0 < std::chrono::milliseconds(800));  // far below the 1 s delay

  auto [result, delayed_done] = delayed.get();
  CHECK(result.second == 200);
  CHECK(delayed_done - t0 >= std::chrono::seconds(1));
  CHECK(get_done < delayed_done);  // /get finished while /delay/1 was still sleeping
  json d = json::parse(result.first, nullptr, false);
  REQUIRE_FALSE(d.is_discarded());
  CHECK(d["args"]["x"] == "1");
}

TEST_CASE("httpbin: /ip, /user-agent, /anything and 404") {
  TempDir dir;
  AppServer app(dir, {"httpbin", "--address", "127.0.0.1", "--port", "0"});
  CHECK(FetchJson({Url(app.port(), "/ip")})["origin"] == "127.0.0.1");
  CHECK(FetchJson({"-A", "sluice-test/1", Url(app.port(), "/user-agent")})["user-agent"] ==
        "sluice-test/1");
  json a = FetchJson({"-X", "PUT", "-H", "Content-Type: application/json", "--data",
                      R"({"k":[1,2]})", Url(app.port(), "/anything/deep/path?q=1")});
  CHECK(a["method"] == "PUT");
  CHECK(a["json"]["k"] == json::array({1, 2}));
  CHECK(a["data"] == R"({"k":[1,2]})");
  CHECK(a["url"] == Url(app.port(), "/anything/deep/path?q=1"));
  CHECK(a["args"]["q"] == "1");
  CHECK(Fetch({Url(app.port(), "/no/such/thing")}).second == 404);
  CHECK(Fetch({"-X", "POST", Url(app.port(), "/get")}).second == 405);
}

TEST_CASE("httpbin: keep-alive serves several requests on one connection") {
  TempDir dir;
  AppServer app(dir, {"httpbin", "--address", "127.0.0.1", "--port", "0"});
  CurlResult r =
      Curl({"-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null", "-w", "%{num_connects} ",
            Url(app.port(), "/get"), Url(app.port(), "/headers"), Url(app.port(), "/status/204")});
  REQUIRE(r.exit_code == 0);
  CHECK(r.out == "1 0 0 ");  // one connect, then the same connection reused twice

  // Pipelined on a raw socket: both answered, in order, then closed on request.
  std::string out = RawExchange(app.port(),
                                "GET /status/201 HTTP/1.1\r\nHost: a\r\n\r\n"
                                "GET /status/202 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
  std::size_t first = out.find("HTTP/1.1 201 ");
  std::size_t second = out.find("HTTP/1.1 202 ");
  CHECK(first == 0);
  CHECK(second != std::string::npos);
  CHECK(out.find("Connection: close") != std::string::npos);
}

TEST_CASE("httpbin: malformed requests get 400 and are logged") {
  TempDir dir;
  AppServer app(dir, {"httpbin", "--address", "127.0.0.1", "--port", "0"});
  CHECK(RawExchange(app.port(), "GARBAGE\r\n\r\n").starts_with("HTTP/1.1 400 "));
  CHECK(RawExchange(app.port(), "GET /get HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 400 "));
  CHECK(RawExchange(app.port(), "GET /get HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n")
            .starts_with("HTTP/1.1 400 "));
  CHECK(RawExchange(app.port(),
                    "POST /anything HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
                    "Content-Length: 4\r\n\r\nabcd")
            .starts_with("HTTP/1.1 400 "));
  // A TLS hello on the plain port is refused at once, not left hanging.
  auto t0 = Clock::now();
  CHECK(RawExchange(app.port(), std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11))
            .starts_with("HTTP/1.1 400 "));
  CHECK(Clock::now() - t0 < std::chrono::seconds(2));
  CHECK(app.WaitForLog("\"- - HTTP/1.1\" 400 ", std::chrono::seconds(2)));
  // The server is still healthy afterwards.
  CHECK(Fetch({Url(app.port(), "/status/200")}).second == 200);
}

TEST_CASE("httpbin: one access log line per request on stdout") {
  TempDir dir;
  AppServer app(dir, {"httpbin", "--address", "127.0.0.1", "--port", "0"});
  Fetch({"-H", "Host: httpbin-shadow:8000", Url(app.port(), "/status/418")});
  Fetch({Url(app.port(), "/get?x=1")});
  REQUIRE(app.WaitForLog("/get?x=1", std::chrono::seconds(2)));
  std::string log = app.AccessLog();
  // gunicorn's Combined Log Format first, then the Host (the mirror's "-shadow" shows here).
  CHECK(log.find("\"GET /status/418 HTTP/1.1\" 418 13 \"-\" \"curl/7.") != std::string::npos);
  CHECK(log.find("host=\"httpbin-shadow:8000\"") != std::string::npos);
  CHECK(log.find("\"GET /get?x=1 HTTP/1.1\" 200 ") != std::string::npos);
  CHECK(log.find("duration_ms=") != std::string::npos);
  CHECK(std::count(log.begin(), log.end(), '\n') == 2);
}

TEST_CASE("helloworld: /hello names SERVICE_VERSION and HOSTNAME - PORT from the env") {
  TempDir dir;
  AppServer app(
      dir, {"helloworld", "--address", "127.0.0.1"},
      {{"SERVICE_VERSION", "v2"}, {"HOSTNAME", "helloworld-v2-7d8f9-abcde"}, {"PORT", "0"}});
  auto [body, code] = Fetch({Url(app.port(), "/hello")});
  CHECK(code == 200);
  CHECK(body == "Hello version: v2, instance: helloworld-v2-7d8f9-abcde\n");
  CHECK(Fetch({Url(app.port(), "/health")}).second == 200);
  CHECK(Fetch({Url(app.port(), "/")}).second == 404);
  CHECK(app.WaitForLog("\"GET /hello HTTP/1.1\" 200 55 ", std::chrono::seconds(2)));
}

TEST_CASE("external host: HTTPS with a generated self-signed CA, SNI, and plain HTTP") {
  TempDir dir;
  {
    Child certs({AppsBin(), "certs", "--host", "edition.cnn.com", "--out", dir / "certs"},
                dir / "certs.out", dir / "certs.err");
    REQUIRE(certs.Wait(std::chrono::seconds(10)) == 0);
  }
  std::string ca = dir / "certs/ca.pem";
  AppServer app(dir,
                {"external", "--address", "127.0.0.1", "--http", "0", "--https", "0", "--cert",
                 dir / "certs/edition.cnn.com.pem", "--key", dir / "certs/edition.cnn.com-key.pem"},
                {}, 2);
  std::string hp = std::to_string(app.port("https"));
  auto [body, code] = Fetch({"--cacert", ca, "--resolve", "edition.cnn.com:" + hp + ":127.0.0.1",
                             "https://edition.cnn.com:" + hp + "/politics"});
  CHECK(code == 200);
  CHECK(body.find("<h1>edition.cnn.com:" + hp + "</h1>") != std::string::npos);
  CHECK(body.find("/politics") != std::string::npos);
  CHECK(app.WaitForLog("tls sni=\"edition.cnn.com\"", std::chrono::seconds(2)));

  // The certificate is checked for real: without the CA, or for another name, curl refuses.
  CurlResult untrusted = Curl({"--resolve", "edition.cnn.com:" + hp + ":127.0.0.1",
                               "https://edition.cnn.com:" + hp + "/politics"});
  CHECK(untrusted.exit_code == 60);
  CurlResult wrong_name = Curl({"--cacert", ca, "--resolve", "other.example:" + hp + ":127.0.0.1",
                                "https://other.example:" + hp + "/politics"});
  CHECK(wrong_name.exit_code == 60);
  CHECK(app.Stderr().find("tls handshake from 127.0.0.1 failed") != std::string::npos);
  // No SNI at all (a client dialling the IP) is served too.
  CHECK(Fetch({"-k", "https://127.0.0.1:" + hp + "/status/418"}).second == 418);

  auto [plain, plain_code] =
      Fetch({"-H", "Host: edition.cnn.com", Url(app.port("http"), "/politics")});
  CHECK(plain_code == 200);
  CHECK(plain.find("<h1>edition.cnn.com</h1>") != std::string::npos);
  // httpbin's endpoints are there too (egress tasks use httpbin.org's /headers).
  CHECK(FetchJson({Url(app.port("http"), "/headers")}).contains("headers"));

  SECTION("a second host reuses the CA, so one trust root serves many hosts") {
    Child again({AppsBin(), "certs", "--host", "httpbin.org", "--out", dir / "certs"},
                dir / "again.out", dir / "again.err");
    REQUIRE(again.Wait(std::chrono::seconds(10)) == 0);
    CHECK(ReadFile(dir / "again.out").find("(reused)") != std::string::npos);
    CHECK(ReadFile(dir / "certs/ca.pem") == ReadFile(ca));
    AppServer other(dir,
                    {"external", "--address", "127.0.0.1", "--https", "0", "--http", "0", "--cert",
                     dir / "certs/httpbin.org.pem", "--key", dir / "certs/httpbin.org-key.pem"},
                    {}, 2);
    std::string op = std::to_string(other.port("https"));
    CHECK(Fetch({"--cacert", ca, "--resolve", "httpbin.org:" + op + ":127.0.0.1",
                 "https://httpbin.org:" + op + "/status/418"})
              .second == 418);
  }
}

TEST_CASE("bad TLS files: the server refuses to start and names the file") {
  TempDir dir;
  { std::ofstream(dir / "junk.pem") << "not a certificate\n"; }
  Child c({AppsBin(), "httpbin", "--address", "127.0.0.1", "--port", "0", "--https-port", "0",
           "--cert", dir / "junk.pem", "--key", dir / "junk.pem"},
          dir / "out", dir / "err");
  CHECK(c.Wait(std::chrono::seconds(5)) == 1);
  CHECK(ReadFile(dir / "err").find("certificate " + (dir / "junk.pem")) != std::string::npos);
}

TEST_CASE("images.json: the helloworld image's command runs the stand-in with its defaults") {
  auto map = sluice::apps::ImageMap::Load(SLUICE_IMAGES_JSON);
  REQUIRE(map.has_value());
  const auto* entry = map->Find("docker.io/istio/examples-helloworld-v1:1.0");
  REQUIRE(entry != nullptr);
  std::vector<std::string> argv = sluice::apps::ExpandCommand(*entry, AppsBin(), 0);
  REQUIRE(argv.size() >= 2);
  REQUIRE(argv.front() == AppsBin());
  argv.erase(argv.begin());  // AppServer adds the binary itself
  argv.insert(argv.end(), {"--address", "127.0.0.1"});
  std::map<std::string, std::string> env = entry->env;
  env["HOSTNAME"] = "helloworld-v1-pod";
  TempDir dir;
  AppServer app(dir, argv, env);
  CHECK(Fetch({Url(app.port(), "/hello")}).first ==
        "Hello version: v1, instance: helloworld-v1-pod\n");
}

TEST_CASE("httpbin: hundreds of open connections are served independently") {
  TempDir dir;
  AppServer app(dir, {"httpbin", "--address", "127.0.0.1", "--port", "0"});
  constexpr int kConns = 300;
  std::vector<std::unique_ptr<Conn>> conns;
  for (int i = 0; i < kConns; ++i)
    conns.push_back(std::make_unique<Conn>(app.port()));
  // The first connection stays silent while all the others are answered: a server
  // that handled connections one at a time would be stuck on it.
  auto t0 = Clock::now();
  for (int i = kConns - 1; i >= 1; --i)
    conns[i]->Send("GET /status/202 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
  int answered = 0;
  for (int i = kConns - 1; i >= 1; --i)
    answered += conns[i]->ReadAll().starts_with("HTTP/1.1 202 ");
  CHECK(answered == kConns - 1);
  CHECK(Clock::now() - t0 < std::chrono::seconds(3));
  conns[0]->Send("GET /ip HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
  CHECK(conns[0]->ReadAll().starts_with("HTTP/1.1 200 "));
}

TEST_CASE("httpbin: large bodies (Expect: 100-continue) are echoed, too large ones get 413") {
  TempDir dir;
  AppServer app(dir, {"httpbin", "--address", "127.0.0.1", "--port", "0"});
  std::string big(2 * 1024 * 1024, 'z');
  { std::ofstream(dir / "big.txt") << big; }
  json j = FetchJson({"-H", "Expect: 100-continue", "-H", "Content-Type: text/plain",
                      "--data-binary", "@" + (dir / "big.txt"), Url(app.port(), "/anything")});
  CHECK(j["data"].get<std::string>().size() == big.size());
  json chunked =
      FetchJson({"-H", "Transfer-Encoding: chunked", "-H", "Content-Type: text/plain",
                 "--data-binary", "@" + (dir / "big.txt"), Url(app.port(), "/anything")});
  CHECK(chunked["data"].get<std::string>() == big);
  CHECK(chunked["headers"]["Transfer-Encoding"] == "chunked");
  { std::ofstream(dir / "huge.txt") << std::string(11 * 1024 * 1024, 'z'); }
  CHECK(Fetch({"--data-binary", "@" + (dir / "huge.txt"), Url(app.port(), "/anything")}).second ==
        413);
}

TEST_CASE("httpbin: listens on IPv6 and IPv4 with --address ::") {
  TempDir dir;
  AppServer app(dir, {"httpbin", "--address", "::", "--port", "0"});
  Conn v6(app.port(), /*ipv6=*/true);
  v6.Send("GET /ip HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
  std::string out = v6.ReadAll();
  CHECK(out.starts_with("HTTP/1.1 200 "));
  CHECK(out.find("\"origin\": \"::1\"") != std::string::npos);
  CHECK(FetchJson({Url(app.port(), "/ip")})["origin"] == "127.0.0.1");
}

TEST_CASE("SIGTERM stops the server at once, even with a request in flight") {
  TempDir dir;
  AppServer app(dir, {"httpbin", "--address", "127.0.0.1", "--port", "0"});
  Conn c(app.port());
  c.Send("GET /delay/10 HTTP/1.1\r\nHost: a\r\n\r\n");
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  auto t0 = Clock::now();
  kill(app.child().pid(), SIGTERM);
  CHECK(app.child().Wait(std::chrono::seconds(2)) == 0);
  CHECK(Clock::now() - t0 < std::chrono::seconds(1));
  CHECK(app.Stderr().find("exiting") != std::string::npos);
}

TEST_CASE("sluice-apps image prints the command line the local cluster runs") {
  TempDir dir;
  auto run = [&](std::vector<std::string> args) {
    args.insert(args.begin(), {AppsBin(), "image"});
    Child c(args, dir / "out", dir / "err");
    int rc = c.Wait(std::chrono::seconds(5));
    return std::make_pair(rc, ReadFile(dir / "out") + ReadFile(dir / "err"));
  };
  auto [rc, out] = run({"docker.io/mccutchen/go-httpbin:v2.15.0", "--container-port", "8080",
                        "--map", SLUICE_IMAGES_JSON});
  REQUIRE(rc == 0);
  json j = json::parse(out);
  CHECK(j["standin"] == "httpbin");
  CHECK(j["command"] ==
        json::array({AppsBin(), "httpbin", "--style", "go-httpbin", "--port", "8080"}));
  // Without --map it reads the copy next to the binary in the build tree.
  auto [rc2, out2] = run({"curlimages/curl:8.1.2"});
  REQUIRE(rc2 == 0);
  CHECK(json::parse(out2)["command"].is_null());
  auto [rc3, out3] =
      run({"docker.io/istio/examples-bookinfo-ratings-v1", "--map", SLUICE_IMAGES_JSON});
  CHECK(rc3 == 3);
  CHECK(out3.find("no stand-in for docker.io/istio/examples-bookinfo-ratings-v1") !=
        std::string::npos);
}

TEST_CASE("external --redirect-https answers plain HTTP with 301 to https, like the real host") {
  TempDir dir;
  AppServer app(dir, {"external", "--address", "127.0.0.1", "--http", "0", "--redirect-https"});
  CurlResult r = Curl(
      {"-o", "/dev/null", "-D", "-", "-H", "Host: edition.cnn.com", Url(app.port(), "/politics")});
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.starts_with("HTTP/1.1 301 Moved Permanently\r\n"));
  CHECK(r.out.find("Location: https://edition.cnn.com/politics\r\n") != std::string::npos);
}

TEST_CASE("httpbin: HEAD, as the ingress task's curl -I sends, answers headers only") {
  TempDir dir;
  AppServer app(dir, {"httpbin", "--address", "127.0.0.1", "--port", "0"});
  CurlResult head = Curl({"-I", "-H", "Host: httpbin.example.com", Url(app.port(), "/status/200")});
  REQUIRE(head.exit_code == 0);
  CHECK(head.out.starts_with("HTTP/1.1 200 OK\r\n"));
  // curl -I would fail (exit 18 or hang) if a body followed the headers.
  CurlResult get_head = Curl({"-I", Url(app.port(), "/get")});
  REQUIRE(get_head.exit_code == 0);
  CHECK(get_head.out.find("Content-Type: application/json\r\n") != std::string::npos);
  CHECK(get_head.out.ends_with("\r\n\r\n"));
  CHECK(app.WaitForLog("\"HEAD /get HTTP/1.1\" 200 0 ", std::chrono::seconds(2)));
}
