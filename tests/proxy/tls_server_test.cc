// TLS termination (tls_server.h) against real clients: curl and openssl s_client connect
// over loopback to a small server that runs tls::Connection on each accepted socket and
// answers one HTTP/1.1 request. Certificates are made by the openssl command line.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <catch2/catch.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "sluice/proxy/tls_server.h"

namespace fs = std::filesystem;
using namespace sluice::proxy::tls;

namespace {

std::string Sh(const std::string& cmd, int* status = nullptr) {
  std::string out;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  REQUIRE(p);
  std::array<char, 4096> buf{};
  while (std::size_t n = fread(buf.data(), 1, buf.size(), p))
    out.append(buf.data(), n);
  int st = pclose(p);
  if (status)
    *status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return out;
}

std::string Read(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// A CA, server certificates for a.example.com and *.wild.example.com, a client
// certificate of the CA (with a SPIFFE URI SAN) and one of another CA.
struct Certs {
  fs::path dir;
  Certs() {
    dir = fs::temp_directory_path() / ("sluice-tls-test-" + std::to_string(getpid()));
    fs::create_directories(dir);
    auto run = [&](const std::string& cmd) {
      int st = 0;
      std::string out = Sh("cd " + dir.string() + " && " + cmd, &st);
      INFO(cmd << "\n" << out);
      REQUIRE(st == 0);
    };
    auto ca = [&](const std::string& name) {
      run("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "
          "/CN=" +
          name + " -keyout " + name + ".key -out " + name + ".pem");
    };
    auto leaf = [&](const std::string& ca_name, const std::string& name, const std::string& cn,
                    const std::string& san) {
      run("openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj '/CN=" + cn +
          "' -keyout " + name + ".key -out " + name + ".csr");
      run("printf 'subjectAltName=" + san + "' > " + name + ".ext && openssl x509 -req -in " +
          name + ".csr -CA " + ca_name + ".pem -CAkey " + ca_name +
          ".key -CAcreateserial -days 2 -extfile " + name + ".ext -out " + name + ".pem");
    };
    ca("ca");
    ca("other-ca");
    leaf("ca", "a", "a.example.com", "DNS:a.example.com");
    leaf("ca", "wild", "*.wild.example.com", "DNS:*.wild.example.com");
    leaf("ca", "client", "sleep", "URI:spiffe://cluster.local/ns/default/sa/sleep");
    leaf("other-ca", "stranger", "stranger", "URI:spiffe://elsewhere/ns/x/sa/y");
    run("head -c 1048576 /dev/urandom > body.bin");  // a body of many TLS records
  }
  ~Certs() { fs::remove_all(dir); }
  CertificateConfig Cert(const std::string& name, std::vector<std::string> names) const {
    return {"kubernetes://" + name, Read(dir / (name + ".pem")), Read(dir / (name + ".key")),
            std::move(names)};
  }
  std::string Path(const std::string& file) const { return (dir / file).string(); }
};

// What the server saw of one connection.
struct Seen {
  Failure failure = Failure::kNone;
  std::string sni, alpn, subject, uri, error;
  std::size_t body = 0;
};

// Serves TLS on 127.0.0.1:port() until destroyed: each connection's request is answered
// "200 sni=... alpn=... body=N" (N: the request body's bytes, by content-length).
class Server {
 public:
  explicit Server(std::shared_ptr<const ServerContext> ctx) : ctx_(std::move(ctx)) {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
    REQUIRE(listen(fd_, 16) == 0);
    socklen_t len = sizeof(a);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { Loop(); });
  }
  ~Server() {
    stop_ = true;
    shutdown(fd_, SHUT_RDWR);
    thread_.join();
    close(fd_);
  }
  int port() const { return port_; }
  std::vector<Seen> seen() {
    std::lock_guard lock(mu_);
    return seen_;
  }

 private:
  void Loop() {
    while (!stop_) {
      int c = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0)
        return;
      Seen s = Serve(c);
      close(c);
      std::lock_guard lock(mu_);
      seen_.push_back(std::move(s));
    }
  }
  static bool Flush(int fd, Connection& tls) {
    while (!tls.PendingOutput().empty()) {
      auto out = tls.PendingOutput();
      ssize_t n = send(fd, out.data(), out.size(), MSG_NOSIGNAL);
      if (n <= 0)
        return false;
      tls.Consume(static_cast<std::size_t>(n));
    }
    return true;
  }
  Seen Serve(int fd) {
    Connection tls(ctx_);
    Seen s;
    std::string req;
    char buf[16384];
    for (;;) {
      ssize_t n = recv(fd, buf, sizeof(buf), 0);
      if (n <= 0)
        break;
      bool ok = tls.Feed({buf, static_cast<std::size_t>(n)});
      Flush(fd, tls);
      if (!ok)
        break;
      tls.Read(req);
      auto head_end = req.find("\r\n\r\n");
      if (head_end == std::string::npos)
        continue;
      std::size_t length = 0;
      if (auto cl = req.find("Content-Length: "); cl != std::string::npos)
        length = std::stoul(req.substr(cl + 16));
      if (req.size() < head_end + 4 + length)
        continue;
      s.body = length;
      std::string body = "sni=" + std::string(tls.sni()) + " alpn=" + std::string(tls.alpn()) +
                         " body=" + std::to_string(length) + "\n";
      tls.Write("HTTP/1.1 200 OK\r\ncontent-length: " + std::to_string(body.size()) +
                "\r\nconnection: close\r\n\r\n" + body);
      tls.Shutdown();
      Flush(fd, tls);
      break;
    }
    s.failure = tls.failure();
    s.sni = tls.sni();
    s.alpn = tls.alpn();
    s.subject = tls.peer_subject();
    s.uri = tls.peer_uri_sans().empty() ? "" : tls.peer_uri_sans().front();
    s.error = tls.error();
    return s;
  }

  std::shared_ptr<const ServerContext> ctx_;
  int fd_ = -1, port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::mutex mu_;
  std::vector<Seen> seen_;
};

std::string Curl(const Certs& c, int port, const std::string& host, const std::string& extra,
                 int* status) {
  return Sh("curl -sS --max-time 5 --http1.1 --cacert " + c.Path("ca.pem") + " --resolve " + host +
                ":" + std::to_string(port) + ":127.0.0.1 " + extra + " https://" + host + ":" +
                std::to_string(port) + "/",
            status);
}

}  // namespace

TEST_CASE("TLS termination picks the certificate by SNI, and refuses a name it has none for") {
  Certs c;
  ServerConfig cfg;
  cfg.certificates = {c.Cert("a", {"a.example.com"}), c.Cert("wild", {"*.wild.example.com"})};
  auto ctx = ServerContext::Create(cfg);
  REQUIRE(ctx);
  Server s(*ctx);
  int st = -1;
  // curl checks the served certificate against the name: a wrong pick fails it.
  CHECK(Curl(c, s.port(), "a.example.com", "", &st) == "sni=a.example.com alpn=http/1.1 body=0\n");
  CHECK(st == 0);
  CHECK(Curl(c, s.port(), "x.wild.example.com", "", &st) ==
        "sni=x.wild.example.com alpn=http/1.1 body=0\n");
  CHECK(st == 0);
  // No certificate names b.example.com (and "*.wild" does not take the bare domain).
  for (const std::string host : {"b.example.com", "wild.example.com"}) {
    std::string out = Curl(c, s.port(), host, "", &st);
    INFO(out);
    CHECK(st == 35);  // CURLE_SSL_CONNECT_ERROR: the handshake failed
    CHECK_THAT(out, Catch::Contains("unrecognized name"));
  }
  auto seen = s.seen();
  REQUIRE(seen.size() == 4);
  CHECK(seen[2].failure == Failure::kUnknownServerName);
  CHECK(seen[2].sni == "b.example.com");
  CHECK(seen[3].failure == Failure::kUnknownServerName);

  // A certificate without names takes every other name, and ClientHellos without one.
  cfg.certificates.push_back(c.Cert("a", {}));
  auto fallback = ServerContext::Create(cfg);
  REQUIRE(fallback);
  Server s2(*fallback);
  std::string out = Sh("openssl s_client -connect 127.0.0.1:" + std::to_string(s2.port()) +
                       " -noservername </dev/null");
  CHECK_THAT(out, Catch::Contains("CN = a.example.com"));
  CHECK_THAT(out, Catch::Contains("Verify return code") || Catch::Contains("Verification"));
}

TEST_CASE("TLS termination negotiates ALPN by the server's preference, h2 first") {
  Certs c;
  ServerConfig cfg;
  cfg.certificates = {c.Cert("a", {"a.example.com"})};
  auto ctx = ServerContext::Create(cfg);
  REQUIRE(ctx);
  Server s(*ctx);
  auto alpn = [&](const std::string& offer) {
    return Sh("openssl s_client -connect 127.0.0.1:" + std::to_string(s.port()) +
              " -servername a.example.com -alpn " + offer + " </dev/null");
  };
  CHECK_THAT(alpn("http/1.1,h2"), Catch::Contains("ALPN protocol: h2"));
  CHECK_THAT(alpn("http/1.1"), Catch::Contains("ALPN protocol: http/1.1"));
  CHECK_THAT(alpn("spdy/3"), Catch::Contains("No ALPN negotiated"));
  // curl offering h2 and http/1.1 gets h2 (it then speaks HTTP/2; this server does not,
  // so only the negotiation is looked at).
  std::string v = Sh("curl -sv --max-time 5 --http2 --cacert " + c.Path("ca.pem") +
                     " --resolve a.example.com:" + std::to_string(s.port()) +
                     ":127.0.0.1 https://a.example.com:" + std::to_string(s.port()) + "/");
  CHECK_THAT(v, Catch::Contains("ALPN: server accepted h2") ||
                    Catch::Contains("ALPN, server accepted to use h2"));
}

TEST_CASE("TLS termination with client certificates: MUTUAL verifies them against the CA") {
  Certs c;
  ServerConfig cfg;
  cfg.certificates = {c.Cert("a", {"a.example.com"})};
  cfg.require_client_certificate = true;
  cfg.client_ca_pem = Read(c.dir / "ca.pem");
  auto ctx = ServerContext::Create(cfg);
  REQUIRE(ctx);
  Server s(*ctx);
  int st = -1;
  // A request body goes through the records whole.
  std::string out =
      Curl(c, s.port(), "a.example.com",
           "--cert " + c.Path("client.pem") + " --key " + c.Path("client.key") +
               " --data-binary @" + c.Path("body.bin") + " -H 'Content-Type: x' -H 'Expect:'",
           &st);
  CHECK(st == 0);
  CHECK(out == "sni=a.example.com alpn=http/1.1 body=1048576\n");
  Curl(c, s.port(), "a.example.com", "", &st);
  CHECK(st != 0);
  Curl(c, s.port(), "a.example.com",
       "--cert " + c.Path("stranger.pem") + " --key " + c.Path("stranger.key"), &st);
  CHECK(st != 0);
  auto seen = s.seen();
  REQUIRE(seen.size() == 3);
  CHECK(seen[0].failure == Failure::kNone);
  CHECK(seen[0].body == 1048576);
  CHECK_THAT(seen[0].subject, Catch::Contains("CN = sleep") || Catch::Contains("CN=sleep"));
  CHECK(seen[0].uri == "spiffe://cluster.local/ns/default/sa/sleep");
  CHECK(seen[1].failure == Failure::kNoClientCertificate);
  CHECK(seen[2].failure == Failure::kBadClientCertificate);
}

TEST_CASE("a TLS server config that cannot work is refused, naming the certificate") {
  Certs c;
  ServerConfig cfg;
  auto mismatched = c.Cert("a", {"a.example.com"});
  mismatched.key_pem = Read(c.dir / "wild.key");
  cfg.certificates = {mismatched};
  auto r = ServerContext::Create(cfg);
  REQUIRE_FALSE(r);
  CHECK_THAT(r.error().message,
             Catch::Contains("kubernetes://a") && Catch::Contains("does not match"));
  auto garbage = c.Cert("wild", {});
  garbage.chain_pem = "not a certificate";
  cfg.certificates = {garbage};
  r = ServerContext::Create(cfg);
  REQUIRE_FALSE(r);
  CHECK_THAT(r.error().message, Catch::Contains("kubernetes://wild") && Catch::Contains("not PEM"));
  cfg.certificates = {c.Cert("a", {})};
  cfg.require_client_certificate = true;
  r = ServerContext::Create(cfg);
  REQUIRE_FALSE(r);
  CHECK_THAT(r.error().message, Catch::Contains("no CA"));
}
