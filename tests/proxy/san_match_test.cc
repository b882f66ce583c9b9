// Client certificate SAN matching (san_match.h, issue 18): DNS names against wildcard
// SANs as Envoy's dnsNameMatch does, matchers of one type against SANs of that type, and
// the SANs read out of a real certificate (openssl CLI), and the checks a ServerContext
// refuses to take.
#include "sluice/proxy/san_match.h"

#include "sluice/proxy/tls_server.h"

#include <openssl/pem.h>
#include <openssl/x509.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace tls = sluice::proxy::tls;
namespace fs = std::filesystem;

namespace {

tls::SanMatcher Exact(tls::SanType type, std::string value) {
  tls::SanMatcher m;
  m.type = type;
  m.exact = value;
  m.matches = [value](std::string_view s) { return s == value; };
  m.text = value;
  return m;
}

tls::SanMatcher Prefix(tls::SanType type, std::string value) {
  tls::SanMatcher m;
  m.type = type;
  m.matches = [value](std::string_view s) { return s.starts_with(value); };
  m.text = value;
  return m;
}

}  // namespace

TEST_CASE("DnsNameMatch: exact ignoring case, a wildcard SAN covers one label",
          "[proxy][tls][san]") {
  // Equal names, any case.
  CHECK(tls::DnsNameMatch("client.example.com", "client.example.com"));
  CHECK(tls::DnsNameMatch("Client.Example.COM", "client.example.com"));
  CHECK_FALSE(tls::DnsNameMatch("client.example.com", "client.example.org"));
  // A wildcard certificate name covers the first label only, never the bare domain.
  CHECK(tls::DnsNameMatch("a.example.com", "*.example.com"));
  CHECK(tls::DnsNameMatch("A.EXAMPLE.com", "*.example.COM"));
  CHECK_FALSE(tls::DnsNameMatch("a.b.example.com", "*.example.com"));
  CHECK_FALSE(tls::DnsNameMatch("example.com", "*.example.com"));
  // Partial wildcards in the first label: '*' is zero or more characters of that label.
  CHECK(tls::DnsNameMatch("foo-1.example.com", "foo*.example.com"));
  CHECK(tls::DnsNameMatch("foo.example.com", "foo*.example.com"));
  CHECK(tls::DnsNameMatch("a-bar.example.com", "*bar.example.com"));
  CHECK(tls::DnsNameMatch("fxr.example.com", "f*r.example.com"));
  CHECK_FALSE(tls::DnsNameMatch("baz.example.com", "foo*.example.com"));
  CHECK_FALSE(tls::DnsNameMatch("fr.examplee.com", "f*r.example.com"));
  // Not a wildcard: two stars, a star past the first label, an A-label, one label only.
  CHECK_FALSE(tls::DnsNameMatch("ab.example.com", "*a*.example.com"));
  CHECK_FALSE(tls::DnsNameMatch("a.b.example.com", "a.*.example.com"));
  CHECK_FALSE(tls::DnsNameMatch("xn--abc.example.com", "xn--*.example.com"));
  CHECK_FALSE(tls::DnsNameMatch("localhost", "*"));
  // The configured name is not a pattern: a wildcard there is a literal.
  CHECK_FALSE(tls::DnsNameMatch("*.example.com", "a.example.com"));
  CHECK(tls::DnsNameMatch("*.example.com", "*.example.com"));
}

TEST_CASE("MatchSans: any SAN against any matcher, each matcher only its own SAN type",
          "[proxy][tls][san]") {
  const std::vector<tls::San> sans = {
      {tls::SanType::kUri, "spiffe://cluster.local/ns/default/sa/sleep"},
      {tls::SanType::kDns, "*.clients.example.com"},
  };
  // A URI matcher matches the URI SAN; a DNS matcher with the same text does not.
  CHECK(tls::MatchSans({Exact(tls::SanType::kUri, "spiffe://cluster.local/ns/default/sa/sleep")},
                       sans));
  CHECK_FALSE(tls::MatchSans(
      {Exact(tls::SanType::kDns, "spiffe://cluster.local/ns/default/sa/sleep")}, sans));
  // Exact DNS matchers use the DNS rules: the wildcard SAN covers a.clients.example.com.
  CHECK(tls::MatchSans({Exact(tls::SanType::kDns, "a.clients.example.com")}, sans));
  CHECK(tls::MatchSans({Exact(tls::SanType::kDns, "A.Clients.Example.com")}, sans));
  CHECK_FALSE(tls::MatchSans({Exact(tls::SanType::kDns, "clients.example.com")}, sans));
  // Other kinds compare the SAN text as it is (the wildcard is a literal for a prefix).
  CHECK(tls::MatchSans({Prefix(tls::SanType::kDns, "*.clients.")}, sans));
  CHECK_FALSE(tls::MatchSans({Prefix(tls::SanType::kDns, "a.clients.")}, sans));
  // Any of several: one non-matching and one matching matcher pass.
  CHECK(tls::MatchSans({Exact(tls::SanType::kUri, "spiffe://cluster.local/ns/x/sa/y"),
                        Prefix(tls::SanType::kUri, "spiffe://cluster.local/ns/default/")},
                       sans));
  CHECK_FALSE(tls::MatchSans({Exact(tls::SanType::kUri, "spiffe://cluster.local/ns/x/sa/y"),
                              Exact(tls::SanType::kEmail, "a@example.com")},
                             sans));
  // No matchers or no SANs: nothing matches.
  CHECK_FALSE(tls::MatchSans({}, sans));
  CHECK_FALSE(tls::MatchSans({Prefix(tls::SanType::kUri, "")}, {}));
}

TEST_CASE("CertificateSans reads DNS, URI, email and IP SANs as Envoy renders them",
          "[proxy][tls][san]") {
  struct Dir {
    fs::path path =
        fs::temp_directory_path() / ("sluice-san-match-test-" + std::to_string(getpid()));
    Dir() { fs::create_directories(path); }
    ~Dir() {
      std::error_code ec;
      fs::remove_all(path, ec);
    }
  } scratch;
  const fs::path& dir = scratch.path;
  const std::string cmd =
      "cd " + dir.string() +
      " && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 "
      "-subj /CN=c -keyout c.key -out c.pem -addext 'subjectAltName=DNS:client.example.com,"
      "URI:spiffe://cluster.local/ns/default/sa/sleep,email:a@example.com,IP:10.1.2.3,"
      "IP:2001:db8:0:0:0:0:0:1,otherName:1.2.3.4;UTF8:x' >/dev/null 2>&1";
  REQUIRE(std::system(cmd.c_str()) == 0);
  FILE* f = std::fopen((dir / "c.pem").c_str(), "r");
  REQUIRE(f);
  X509* cert = PEM_read_X509(f, nullptr, nullptr, nullptr);
  std::fclose(f);
  REQUIRE(cert);
  const std::vector<tls::San> want = {
      {tls::SanType::kDns, "client.example.com"},
      {tls::SanType::kUri, "spiffe://cluster.local/ns/default/sa/sleep"},
      {tls::SanType::kEmail, "a@example.com"},
      {tls::SanType::kIpAddress, "10.1.2.3"},
      {tls::SanType::kIpAddress, "2001:db8::1"},
  };
  CHECK(tls::CertificateSans(cert) == want);
  X509_free(cert);

  // A ServerContext refuses client checks it could not apply: SAN matchers or pins without
  // client certificates required, and a pin that is not a SHA-256.
  auto read = [&](const char* name) {
    std::ifstream in(dir / name);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  tls::ServerConfig sc;
  sc.certificates = {{"c", read("c.pem"), read("c.key"), {}}};
  sc.client_san_matchers = {Exact(tls::SanType::kUri, "spiffe://a")};
  auto made = tls::ServerContext::Create(sc);
  REQUIRE_FALSE(made);
  CHECK(made.error().message ==
        "TLS server: client certificate checks without client certificates required");
  sc.require_client_certificate = true;
  sc.client_ca_pem = read("c.pem");
  CHECK(tls::ServerContext::Create(sc));
  sc.client_cert_sha256 = {std::string(31, 'x')};
  made = tls::ServerContext::Create(sc);
  REQUIRE_FALSE(made);
  CHECK(made.error().message == "TLS server: a pinned client certificate hash is not 32 bytes");
}
