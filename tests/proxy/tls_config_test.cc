// Downstream TLS config (issue 18): a filter chain's DownstreamTlsContext compiled with its
// SDS secrets into FilterChain::tls, failing closed (naming the field or secret) for what
// is not honoured or not received yet; a secret that arrives later served through
// CompileUpdate; and end to end from Istio YAML (Gateway SIMPLE + a v1 Secret) to a
// ServerContext that picks its certificate by SNI in a real in-memory handshake.
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <unistd.h>

#include <array>
#include <catch2/catch.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb.h"
#include "envoy/extensions/transport_sockets/tls/v3/tls.pb.h"
#include "harness.h"
#include "sluice/config/snapshot.h"
#include "sluice/istio/loader.h"
#include "sluice/istio/local_control_plane.h"
#include "sluice/istio/registry.h"
#include "sluice/istio/translator.h"
#include "sluice/proxy/config.h"
#include "sluice/proxy/tls_server.h"

namespace fs = std::filesystem;
namespace tls_v3 = envoy::extensions::transport_sockets::tls::v3;
namespace listener_v3 = envoy::config::listener::v3;
namespace config = sluice::config;
namespace istio = sluice::istio;
namespace proxy = sluice::proxy;
namespace filterchain = sluice::filterchain;
namespace sxds = sluice::xds;

namespace {

std::string Sh(const std::string& cmd, int* status) {
  std::string out;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  REQUIRE(p);
  std::array<char, 4096> buf{};
  while (std::size_t n = fread(buf.data(), 1, buf.size(), p))
    out.append(buf.data(), n);
  int st = pclose(p);
  *status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return out;
}

std::string Read(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// A CA, server certificates for a.example.com and b.example.com, and client certificates
// (openssl CLI): "sleep" (URI spiffe://cluster.local/ns/default/sa/sleep, DNS
// client.example.com), "other" (URI spiffe://cluster.local/ns/other/sa/x, DNS
// other.example.org) and "wild" (DNS *.clients.example.com).
struct Certs {
  fs::path dir;
  Certs() {
    dir = fs::temp_directory_path() / ("sluice-tls-config-test-" + std::to_string(getpid()));
    fs::create_directories(dir);
    auto run = [&](const std::string& cmd) {
      int st = 0;
      std::string out = Sh("cd " + dir.string() + " && " + cmd, &st);
      INFO(cmd << "\n" << out);
      REQUIRE(st == 0);
    };
    run("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "
        "/CN=ca -keyout ca.key -out ca.pem");
    for (std::string name : {"a", "b"}) {
      run("openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj '/CN=" + name +
          ".example.com' -keyout " + name + ".key -out " + name + ".csr");
      run("printf 'subjectAltName=DNS:" + name + ".example.com' > " + name +
          ".ext && openssl x509 -req -in " + name +
          ".csr -CA ca.pem -CAkey ca.key "
          "-CAcreateserial -days 2 -extfile " +
          name + ".ext -out " + name + ".pem");
    }
    for (auto [name, sans] :
         {std::pair<std::string, std::string>{"sleep",
                                              "URI:spiffe://cluster.local/ns/default/sa/sleep,"
                                              "DNS:client.example.com"},
          {"other", "URI:spiffe://cluster.local/ns/other/sa/x,DNS:other.example.org"},
          {"wild", "DNS:*.clients.example.com"}}) {
      run("openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj '/CN=" + name +
          "' -keyout " + name + ".key -out " + name + ".csr");
      run("printf 'subjectAltName=" + sans + "\\nextendedKeyUsage=clientAuth' > " + name +
          ".ext && openssl x509 -req -in " + name + ".csr -CA ca.pem -CAkey ca.key " +
          "-CAcreateserial -days 2 -extfile " + name + ".ext -out " + name + ".pem");
    }
  }
  ~Certs() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  std::string pem(const std::string& n) const { return Read(dir / (n + ".pem")); }
  std::string key(const std::string& n) const { return Read(dir / (n + ".key")); }
  std::string path(const std::string& file) const { return (dir / file).string(); }
};

const Certs& TheCerts() {
  static Certs c;
  return c;
}

tls_v3::SdsSecretConfig Sds(const std::string& name) {
  tls_v3::SdsSecretConfig c;
  c.set_name(name);
  c.mutable_sds_config()->mutable_ads();
  return c;
}

tls_v3::Secret CertSecret(const std::string& name, const std::string& cert) {
  tls_v3::Secret s;
  s.set_name(name);
  s.mutable_tls_certificate()->mutable_certificate_chain()->set_inline_bytes(TheCerts().pem(cert));
  s.mutable_tls_certificate()->mutable_private_key()->set_inline_bytes(TheCerts().key(cert));
  return s;
}

tls_v3::Secret CaSecret(const std::string& name) {
  tls_v3::Secret s;
  s.set_name(name);
  s.mutable_validation_context()->mutable_trusted_ca()->set_inline_bytes(TheCerts().pem("ca"));
  return s;
}

// istiod's gateway HTTPS listener: one chain per server, SNI = hosts, a connection manager
// with an inline route config.
listener_v3::Listener Gateway443(
    const std::vector<std::pair<std::string, tls_v3::DownstreamTlsContext>>& servers,
    uint16_t port = 8443) {
  listener_v3::Listener l;
  l.set_name("0.0.0.0_443");
  l.mutable_address()->mutable_socket_address()->set_address("127.0.0.1");
  l.mutable_address()->mutable_socket_address()->set_port_value(port);
  l.add_listener_filters()->set_name("envoy.filters.listener.tls_inspector");
  for (const auto& [host, ctx] : servers) {
    auto* fc = l.add_filter_chains();
    fc->set_name("https." + host);
    fc->mutable_filter_chain_match()->add_server_names(host);
    fc->mutable_transport_socket()->set_name("envoy.transport_sockets.tls");
    fc->mutable_transport_socket()->mutable_typed_config()->PackFrom(ctx);
    envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager h;
    h.set_stat_prefix(host);
    auto* vh = h.mutable_route_config()->add_virtual_hosts();
    vh->set_name(host);
    vh->add_domains("*");
    auto* r = vh->add_routes();
    r->mutable_match()->set_prefix("/");
    r->mutable_direct_response()->set_status(200);
    h.add_http_filters()->set_name("envoy.filters.http.router");
    auto* f = fc->add_filters();
    f->set_name("envoy.filters.network.http_connection_manager");
    f->mutable_typed_config()->PackFrom(h);
  }
  return l;
}

tls_v3::DownstreamTlsContext Simple(const std::string& credential) {
  tls_v3::DownstreamTlsContext ctx;
  ctx.mutable_common_tls_context()->add_alpn_protocols("h2");
  ctx.mutable_common_tls_context()->add_alpn_protocols("http/1.1");
  *ctx.mutable_common_tls_context()->add_tls_certificate_sds_secret_configs() =
      Sds("kubernetes://" + credential);
  ctx.mutable_require_client_certificate()->set_value(false);
  return ctx;
}

tls_v3::DownstreamTlsContext Mutual(const std::string& credential) {
  tls_v3::DownstreamTlsContext ctx = Simple(credential);
  ctx.mutable_require_client_certificate()->set_value(true);
  *ctx.mutable_common_tls_context()
       ->mutable_combined_validation_context()
       ->mutable_validation_context_sds_secret_config() =
      Sds("kubernetes://" + credential + "-cacert");
  return ctx;
}

envoy::type::matcher::v3::StringMatcher Exact(const std::string& v) {
  envoy::type::matcher::v3::StringMatcher m;
  m.set_exact(v);
  return m;
}
envoy::type::matcher::v3::StringMatcher Prefix(const std::string& v, bool ignore_case = false) {
  envoy::type::matcher::v3::StringMatcher m;
  m.set_prefix(v);
  m.set_ignore_case(ignore_case);
  return m;
}
envoy::type::matcher::v3::StringMatcher Suffix(const std::string& v) {
  envoy::type::matcher::v3::StringMatcher m;
  m.set_suffix(v);
  return m;
}
envoy::type::matcher::v3::StringMatcher Regex(const std::string& v) {
  envoy::type::matcher::v3::StringMatcher m;
  m.mutable_safe_regex()->set_regex(v);
  return m;
}
tls_v3::SubjectAltNameMatcher Typed(tls_v3::SubjectAltNameMatcher::SanType type,
                                    envoy::type::matcher::v3::StringMatcher m) {
  tls_v3::SubjectAltNameMatcher t;
  t.set_san_type(type);
  *t.mutable_matcher() = std::move(m);
  return t;
}

// MUTUAL for "a-cred" with SAN matchers in the default validation context (istiod's place
// for a Gateway server's subjectAltNames): typed ones and deprecated untyped ones.
tls_v3::DownstreamTlsContext MutualSans(
    const std::vector<tls_v3::SubjectAltNameMatcher>& typed,
    const std::vector<envoy::type::matcher::v3::StringMatcher>& untyped = {}) {
  tls_v3::DownstreamTlsContext ctx = Mutual("a-cred");
  auto* v = ctx.mutable_common_tls_context()
                ->mutable_combined_validation_context()
                ->mutable_default_validation_context();
  for (const auto& t : typed)
    *v->add_match_typed_subject_alt_names() = t;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  for (const auto& u : untyped)
    *v->add_match_subject_alt_names() = u;
#pragma GCC diagnostic pop
  return ctx;
}

// The compiled context of a one-server gateway with `ctx` and a-cred's certificate and CA.
std::shared_ptr<const proxy::tls::ServerContext> CompiledTls(tls_v3::DownstreamTlsContext ctx) {
  sxds::ResourceSet rs;
  rs.Add(Gateway443({{"a.example.com", std::move(ctx)}}));
  rs.Add(CertSecret("kubernetes://a-cred", "a"));
  rs.Add(CaSecret("kubernetes://a-cred-cacert"));
  auto cfg = proxy::Compile(rs);
  REQUIRE(cfg);
  const auto& fc = (*cfg)->listeners.at(0).chains.at(0);
  INFO(fc.fail_closed);
  REQUIRE(fc.fail_closed == "");
  REQUIRE(fc.tls);
  return fc.tls;
}

const proxy::FilterChain& Chain(const proxy::ProxyConfig& cfg, std::size_t i) {
  REQUIRE(cfg.listeners.size() == 1);
  REQUIRE(cfg.listeners[0].chains.size() > i);
  return cfg.listeners[0].chains[i];
}

struct Handshake {
  std::string cn;  // the CN of the certificate the server sent; "" when the handshake failed
  proxy::tls::Failure failure = proxy::tls::Failure::kNone;  // the server's account
  std::string error;                                         // the server's words
  std::string client_error;  // what the client read (the alert), when it failed
};

// A client handshake against `ctx` in memory, offering `sni` and, when `client` names one
// of TheCerts(), that client certificate.
Handshake HandshakeWith(std::shared_ptr<const proxy::tls::ServerContext> ctx,
                        const std::string& sni, const std::string& client = "") {
  proxy::tls::Connection server(std::move(ctx));
  SSL_CTX* cctx = SSL_CTX_new(TLS_client_method());
  if (!client.empty()) {
    REQUIRE(SSL_CTX_use_certificate_file(cctx, TheCerts().path(client + ".pem").c_str(),
                                         SSL_FILETYPE_PEM) == 1);
    REQUIRE(SSL_CTX_use_PrivateKey_file(cctx, TheCerts().path(client + ".key").c_str(),
                                        SSL_FILETYPE_PEM) == 1);
  }
  SSL* c = SSL_new(cctx);
  BIO* cin = BIO_new(BIO_s_mem());
  BIO* cout = BIO_new(BIO_s_mem());
  SSL_set_bio(c, cin, cout);
  SSL_set_connect_state(c);
  SSL_set_tlsext_host_name(c, sni.c_str());
  for (int round = 0; round < 10; ++round) {
    SSL_do_handshake(c);
    char buf[16384];
    std::string to_server;
    int n;
    while ((n = BIO_read(cout, buf, sizeof buf)) > 0)
      to_server.append(buf, static_cast<std::size_t>(n));
    if (!to_server.empty() && !server.Feed(to_server)) {
      // The alert the server queued, to the client, which reads it.
      auto alert = server.PendingOutput();
      BIO_write(cin, alert.data(), static_cast<int>(alert.size()));
      ERR_clear_error();
      if (SSL_is_init_finished(c))
        SSL_read(c, buf, sizeof buf);
      else
        SSL_do_handshake(c);
      break;
    }
    auto pending = server.PendingOutput();
    if (!pending.empty()) {
      BIO_write(cin, pending.data(), static_cast<int>(pending.size()));
      server.Consume(pending.size());
    }
    if (SSL_is_init_finished(c) && server.handshake_done())
      break;
  }
  // Both ends done (under TLS 1.3 the client finishes before the server has checked
  // its certificate).
  Handshake out;
  if (SSL_is_init_finished(c) && server.handshake_done() && !server.failed()) {
    if (X509* peer = SSL_get1_peer_certificate(c)) {
      char name[256] = {};
      X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, name, sizeof name);
      out.cn = name;
      X509_free(peer);
    }
  }
  out.failure = server.failure();
  out.error = server.error();
  if (unsigned long e = ERR_get_error()) {
    char text[256];
    ERR_error_string_n(e, text, sizeof text);
    out.client_error = text;
  }
  ERR_clear_error();
  SSL_free(c);
  SSL_CTX_free(cctx);
  return out;
}

// The CN the server presented to a client without a certificate ("" when it failed).
std::string HandshakeCn(std::shared_ptr<const proxy::tls::ServerContext> ctx,
                        const std::string& sni) {
  return HandshakeWith(std::move(ctx), sni).cn;
}

}  // namespace

TEST_CASE("a gateway HTTPS chain with its SDS secret is served with TLS, not fail_closed",
          "[proxy][tls]") {
  sxds::ResourceSet rs;
  rs.Add(Gateway443({{"a.example.com", Simple("a-cred")}}));
  rs.Add(CertSecret("kubernetes://a-cred", "a"));
  auto cfg = proxy::Compile(rs);
  REQUIRE(cfg);
  const auto& fc = Chain(**cfg, 0);
  CHECK(fc.fail_closed == "");
  REQUIRE(fc.tls);
  CHECK(fc.is_http);
  const auto& sc = fc.tls->config();
  REQUIRE(sc.certificates.size() == 1);
  CHECK(sc.certificates[0].name == "kubernetes://a-cred");
  CHECK(sc.certificates[0].server_names == std::vector<std::string>{"a.example.com"});
  CHECK(sc.alpn == std::vector<std::string>{"h2", "http/1.1"});
  CHECK_FALSE(sc.require_client_certificate);
  CHECK(sc.min_version == 0x0303);
  CHECK(sc.max_version == 0x0304);
  CHECK(HandshakeCn(fc.tls, "a.example.com") == "a.example.com");
}

TEST_CASE("a chain whose secret has not come fails closed naming it, and is served once it comes",
          "[proxy][tls]") {
  sxds::ResourceSet rs;
  rs.Add(Gateway443({{"a.example.com", Simple("a-cred")}}));
  config::Snapshot before = config::Snapshot::FromResourceSet(rs);
  auto cfg = proxy::Compile(before);
  REQUIRE(cfg);
  const auto& waiting = Chain(**cfg, 0);
  CHECK_FALSE(waiting.tls);
  CHECK_FALSE(waiting.is_http);
  CHECK(waiting.fail_closed ==
        "filter chain \"https.a.example.com\": transport_socket.typed_config.common_tls_context."
        "tls_certificate_sds_secret_configs[0]: secret kubernetes://a-cred not received; "
        "connections that select it are closed");
  bool warned = false;
  for (const auto& w : (*cfg)->warnings)
    warned |= w.find("secret kubernetes://a-cred not received") != std::string::npos;
  CHECK(warned);

  // The secret arrives: CompileUpdate rebuilds the listener that names it.
  rs.Add(CertSecret("kubernetes://a-cred", "a"));
  config::Snapshot after = config::Snapshot::FromResourceSet(rs);
  config::Diff diff = config::AdoptUnchanged(before, after);
  CHECK(diff.listeners.empty());
  CHECK(diff.secrets.added == std::vector<std::string>{"kubernetes://a-cred"});
  auto next = proxy::CompileUpdate(**cfg, after, diff);
  REQUIRE(next);
  const auto& served = Chain(**next, 0);
  CHECK(served.fail_closed == "");
  REQUIRE(served.tls);
  CHECK(served.is_http);
  CHECK((*next)->built_listeners == 1);
  CHECK(HandshakeCn(served.tls, "a.example.com") == "a.example.com");

  // A rotated certificate rebuilds it again; a secret that goes fails it closed again.
  rs.Add(CertSecret("kubernetes://a-cred", "b"));
  config::Snapshot rotated = config::Snapshot::FromResourceSet(rs);
  diff = config::AdoptUnchanged(after, rotated);
  CHECK(diff.secrets.changed == std::vector<std::string>{"kubernetes://a-cred"});
  auto third = proxy::CompileUpdate(**next, rotated, diff);
  REQUIRE(third);
  REQUIRE(Chain(**third, 0).tls);
  CHECK(Chain(**third, 0).tls->config().certificates[0].chain_pem == TheCerts().pem("b"));
  rs.secrets.clear();
  config::Snapshot gone = config::Snapshot::FromResourceSet(rs);
  diff = config::AdoptUnchanged(rotated, gone);
  auto fourth = proxy::CompileUpdate(**third, gone, diff);
  REQUIRE(fourth);
  CHECK_FALSE(Chain(**fourth, 0).tls);
  CHECK(Chain(**fourth, 0).fail_closed.find("secret kubernetes://a-cred not received") !=
        std::string::npos);
}

TEST_CASE(
    "MUTUAL requires client certificates against the -cacert secret, and fails closed "
    "without it",
    "[proxy][tls]") {
  sxds::ResourceSet rs;
  rs.Add(Gateway443({{"a.example.com", Mutual("a-cred")}}));
  rs.Add(CertSecret("kubernetes://a-cred", "a"));
  auto cfg = proxy::Compile(rs);
  REQUIRE(cfg);
  const auto& without = Chain(**cfg, 0);
  CHECK_FALSE(without.tls);
  CHECK(without.fail_closed.find("combined_validation_context.validation_context_sds_secret_"
                                 "config: secret kubernetes://a-cred-cacert not received") !=
        std::string::npos);

  rs.Add(CaSecret("kubernetes://a-cred-cacert"));
  cfg = proxy::Compile(rs);
  REQUIRE(cfg);
  const auto& with = Chain(**cfg, 0);
  CHECK(with.fail_closed == "");
  REQUIRE(with.tls);
  CHECK(with.tls->config().require_client_certificate);
  CHECK(with.tls->config().client_ca_pem == TheCerts().pem("ca"));
  // A client without a certificate does not complete the handshake.
  CHECK(HandshakeCn(with.tls, "a.example.com") == "");

  // A secret of the wrong kind under the -cacert name is no CA.
  rs.Add(CertSecret("kubernetes://a-cred-cacert", "b"));
  rs.secrets.erase("kubernetes://a-cred-cacert");
  auto wrong = CertSecret("kubernetes://a-cred-cacert", "b");
  rs.Add(wrong);
  cfg = proxy::Compile(rs);
  REQUIRE(cfg);
  CHECK(Chain(**cfg, 0).fail_closed.find(
            "secret kubernetes://a-cred-cacert is not a validation_context") != std::string::npos);
}

TEST_CASE("TLS fields Sluice does not honour fail the chain closed, naming the field",
          "[proxy][tls]") {
  auto check = [](tls_v3::DownstreamTlsContext ctx, const std::string& field) {
    sxds::ResourceSet rs;
    rs.Add(Gateway443({{"a.example.com", std::move(ctx)}}));
    rs.Add(CertSecret("kubernetes://a-cred", "a"));
    rs.Add(CaSecret("kubernetes://a-cred-cacert"));
    auto cfg = proxy::Compile(rs);
    REQUIRE(cfg);
    const auto& fc = Chain(**cfg, 0);
    INFO(fc.fail_closed);
    CHECK_FALSE(fc.tls);
    CHECK_FALSE(fc.is_http);
    CHECK(fc.fail_closed.find(field) != std::string::npos);
  };
  // SAN matchers: OTHER_NAME, both lists at once, a regex RE2 refuses.
  auto other_name = MutualSans({Typed(tls_v3::SubjectAltNameMatcher::OTHER_NAME, Exact("x"))});
  other_name.mutable_common_tls_context()
      ->mutable_combined_validation_context()
      ->mutable_default_validation_context()
      ->mutable_match_typed_subject_alt_names(0)
      ->set_oid("1.3.6.1.4.1.311.20.2.3");
  check(other_name,
        "combined_validation_context.match_typed_subject_alt_names[0].san_type: OTHER_NAME "
        "(oid \"1.3.6.1.4.1.311.20.2.3\") is not implemented");
  check(MutualSans({Typed(tls_v3::SubjectAltNameMatcher::URI, Exact("spiffe://a"))},
                   {Exact("spiffe://b")}),
        "combined_validation_context: match_typed_subject_alt_names and the deprecated "
        "match_subject_alt_names are both set");
  check(MutualSans({}, {Exact("spiffe://a"), Regex("spiffe://(unclosed")}),
        "combined_validation_context.match_subject_alt_names[1].safe_regex: invalid regex");
  check(MutualSans({Typed(tls_v3::SubjectAltNameMatcher::SAN_TYPE_UNSPECIFIED, Exact("x"))}),
        "match_typed_subject_alt_names[0].san_type: SAN_TYPE_UNSPECIFIED is not a SAN type");
  auto ciphers = Simple("a-cred");
  ciphers.mutable_common_tls_context()->mutable_tls_params()->add_cipher_suites(
      "ECDHE-RSA-AES256-GCM-SHA384");
  check(ciphers, "tls_params.cipher_suites");
  auto sni = Simple("a-cred");
  sni.mutable_require_sni()->set_value(true);
  check(sni, "require_sni");
  auto tickets = Simple("a-cred");
  tickets.mutable_session_ticket_keys()->add_keys()->set_inline_bytes(std::string(80, 'k'));
  check(tickets, "session_ticket_keys");
  auto crl = Mutual("a-cred");
  crl.mutable_common_tls_context()
      ->mutable_combined_validation_context()
      ->mutable_default_validation_context()
      ->mutable_crl()
      ->set_inline_bytes("x");
  check(crl, "crl");
  auto optional = Mutual("a-cred");
  optional.mutable_require_client_certificate()->set_value(false);
  check(optional, "without require_client_certificate");
  auto not_ads = Simple("a-cred");
  not_ads.mutable_common_tls_context()
      ->mutable_tls_certificate_sds_secret_configs(0)
      ->mutable_sds_config()
      ->mutable_api_config_source();
  check(not_ads, "tls_certificate_sds_secret_configs[0].sds_config: only ads");

  // TLS 1.3 only is honoured.
  auto v13 = Simple("a-cred");
  v13.mutable_common_tls_context()->mutable_tls_params()->set_tls_minimum_protocol_version(
      tls_v3::TlsParameters::TLSv1_3);
  sxds::ResourceSet rs;
  rs.Add(Gateway443({{"a.example.com", v13}}));
  rs.Add(CertSecret("kubernetes://a-cred", "a"));
  auto cfg = proxy::Compile(rs);
  REQUIRE(cfg);
  REQUIRE(Chain(**cfg, 0).tls);
  CHECK(Chain(**cfg, 0).tls->config().min_version == 0x0304);
}

TEST_CASE(
    "MUTUAL with subjectAltNames: a client certificate with a matching URI SAN is accepted, "
    "one without is refused at the handshake with handshake_failure",
    "[proxy][tls][san]") {
  // istiod's shape: the deprecated untyped exact matcher, one per Gateway subjectAltName.
  auto tls = CompiledTls(MutualSans({}, {Exact("spiffe://cluster.local/ns/default/sa/sleep")}));
  // Envoy compiles each untyped matcher once per SAN type.
  const auto& m = tls->config().client_san_matchers;
  REQUIRE(m.size() == 4);
  CHECK(m[0].type == proxy::tls::SanType::kDns);
  CHECK(m[1].type == proxy::tls::SanType::kUri);
  CHECK(m[1].text == "URI exact spiffe://cluster.local/ns/default/sa/sleep");
  CHECK(m[2].type == proxy::tls::SanType::kEmail);
  CHECK(m[3].type == proxy::tls::SanType::kIpAddress);

  Handshake ok = HandshakeWith(tls, "a.example.com", "sleep");
  INFO(ok.error << " / " << ok.client_error);
  CHECK(ok.cn == "a.example.com");
  CHECK(ok.failure == proxy::tls::Failure::kNone);

  Handshake refused = HandshakeWith(tls, "a.example.com", "other");
  INFO(refused.error << " / " << refused.client_error);
  CHECK(refused.cn == "");
  CHECK(refused.failure == proxy::tls::Failure::kClientSanMismatch);
  CHECK(std::string(proxy::tls::FailureName(refused.failure)) == "fail_verify_san");
  CHECK(refused.error.find("URI:spiffe://cluster.local/ns/other/sa/x") != std::string::npos);
  CHECK(refused.error.find("[URI exact spiffe://cluster.local/ns/default/sa/sleep]") !=
        std::string::npos);
  CHECK(refused.client_error.find("alert handshake failure") != std::string::npos);

  // No certificate: refused as before, before any SAN is looked at.
  Handshake none = HandshakeWith(tls, "a.example.com");
  CHECK(none.cn == "");
  CHECK(none.failure == proxy::tls::Failure::kNoClientCertificate);
}

TEST_CASE(
    "SAN matchers: prefix, suffix, regex, ignore_case, DNS rules for exact DNS, typed matchers "
    "test their own SAN type only",
    "[proxy][tls][san]") {
  using SAN = tls_v3::SubjectAltNameMatcher;
  struct Case {
    const char* what;
    tls_v3::DownstreamTlsContext ctx;
    bool sleep, other, wild;  // which client certificates pass
  };
  const std::vector<Case> cases = {
      {"untyped prefix", MutualSans({}, {Prefix("spiffe://cluster.local/ns/default/")}), true,
       false, false},
      {"untyped suffix", MutualSans({}, {Suffix("/sa/x")}), false, true, false},
      {"untyped regex",
       MutualSans({}, {Regex(R"(spiffe://cluster\.local/ns/(default|prod)/sa/.+)")}), true, false,
       false},
      {"untyped regex matches the whole SAN only", MutualSans({}, {Regex("spiffe://cluster")}),
       false, false, false},
      {"untyped exact on the DNS SAN", MutualSans({}, {Exact("client.example.com")}), true, false,
       false},
      {"untyped exact on the DNS SAN, other case", MutualSans({}, {Exact("CLIENT.Example.com")}),
       true, false, false},
      {"untyped exact covered by a wildcard SAN", MutualSans({}, {Exact("a.clients.example.com")}),
       false, false, true},
      {"two untyped, either", MutualSans({}, {Exact("other.example.org"), Suffix("/sa/sleep")}),
       true, true, false},
      {"typed URI exact",
       MutualSans({Typed(SAN::URI, Exact("spiffe://cluster.local/ns/default/sa/sleep"))}), true,
       false, false},
      {"typed DNS does not match a URI SAN",
       MutualSans({Typed(SAN::DNS, Exact("spiffe://cluster.local/ns/default/sa/sleep"))}), false,
       false, false},
      {"typed DNS prefix does not match a URI SAN",
       MutualSans({Typed(SAN::DNS, Prefix("spiffe://"))}), false, false, false},
      {"typed URI does not match a DNS SAN",
       MutualSans({Typed(SAN::URI, Exact("other.example.org"))}), false, false, false},
      {"typed DNS exact and a wildcard SAN",
       MutualSans({Typed(SAN::DNS, Exact("x.clients.example.com"))}), false, false, true},
      {"typed URI prefix ignore_case",
       MutualSans({Typed(SAN::URI, Prefix("SPIFFE://CLUSTER.LOCAL/NS/OTHER/", true))}), false, true,
       false},
      {"typed EMAIL: none has one", MutualSans({Typed(SAN::EMAIL, Prefix(""))}), false, false,
       false},
      {"typed IP_ADDRESS: none has one", MutualSans({Typed(SAN::IP_ADDRESS, Prefix(""))}), false,
       false, false},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    auto tls = CompiledTls(c.ctx);
    for (auto [client, want] :
         {std::pair{"sleep", c.sleep}, std::pair{"other", c.other}, std::pair{"wild", c.wild}}) {
      Handshake h = HandshakeWith(tls, "a.example.com", client);
      INFO(client << ": " << h.error);
      CHECK((h.cn == "a.example.com") == want);
      CHECK(h.failure ==
            (want ? proxy::tls::Failure::kNone : proxy::tls::Failure::kClientSanMismatch));
    }
  }
}

TEST_CASE(
    "verify_certificate_hash and verify_certificate_spki pin client certificates (either "
    "list), after the SAN check, and malformed entries fail the chain naming them",
    "[proxy][tls][san]") {
  auto sh = [](const std::string& cmd) {
    int st = 0;
    std::string out = Sh("cd " + TheCerts().dir.string() + " && " + cmd, &st);
    REQUIRE(st == 0);
    while (!out.empty() && (out.back() == '\n' || out.back() == ' '))
      out.pop_back();
    return out;
  };
  // As an operator makes them: the colon fingerprint, plain hex, and base64 of the SPKI's.
  std::string fp = sh("openssl x509 -in sleep.pem -noout -fingerprint -sha256");
  fp = fp.substr(fp.find('=') + 1);
  REQUIRE(fp.size() == 95);
  const std::string other_hex =
      sh("openssl x509 -in other.pem -outform DER | openssl dgst -sha256 -r | cut -d' ' -f1");
  REQUIRE(other_hex.size() == 64);
  const std::string sleep_spki =
      sh("openssl x509 -in sleep.pem -noout -pubkey | openssl pkey -pubin -outform DER | "
         "openssl dgst -sha256 -binary | base64");
  REQUIRE(sleep_spki.size() == 44);

  using F = proxy::tls::Failure;
  auto pinned = [](std::vector<std::string> hashes, std::vector<std::string> spkis,
                   std::vector<envoy::type::matcher::v3::StringMatcher> sans = {}) {
    auto ctx = MutualSans({}, sans);
    auto* v = ctx.mutable_common_tls_context()
                  ->mutable_combined_validation_context()
                  ->mutable_default_validation_context();
    for (const auto& h : hashes)
      v->add_verify_certificate_hash(h);
    for (const auto& h : spkis)
      v->add_verify_certificate_spki(h);
    return ctx;
  };
  struct Case {
    const char* what;
    tls_v3::DownstreamTlsContext ctx;
    F sleep, other;
  };
  const std::vector<Case> cases = {
      {"fingerprint of sleep", pinned({fp}, {}), F::kNone, F::kClientCertHashMismatch},
      {"hex of other", pinned({other_hex}, {}), F::kClientCertHashMismatch, F::kNone},
      {"spki of sleep", pinned({}, {sleep_spki}), F::kNone, F::kClientCertHashMismatch},
      {"hash of other or spki of sleep", pinned({other_hex}, {sleep_spki}), F::kNone, F::kNone},
      {"SAN of sleep and hash of other", pinned({other_hex}, {}, {Suffix("/sa/sleep")}),
       F::kClientCertHashMismatch, F::kClientSanMismatch},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    auto tls = CompiledTls(c.ctx);
    Handshake sleep = HandshakeWith(tls, "a.example.com", "sleep");
    Handshake other = HandshakeWith(tls, "a.example.com", "other");
    INFO(sleep.error << " / " << other.error);
    CHECK(sleep.failure == c.sleep);
    CHECK(other.failure == c.other);
    CHECK((sleep.cn == "a.example.com") == (c.sleep == F::kNone));
    CHECK((other.cn == "a.example.com") == (c.other == F::kNone));
  }

  auto refused = [](tls_v3::DownstreamTlsContext ctx, const std::string& field) {
    sxds::ResourceSet rs;
    rs.Add(Gateway443({{"a.example.com", std::move(ctx)}}));
    rs.Add(CertSecret("kubernetes://a-cred", "a"));
    rs.Add(CaSecret("kubernetes://a-cred-cacert"));
    auto cfg = proxy::Compile(rs);
    REQUIRE(cfg);
    const auto& fc = Chain(**cfg, 0);
    INFO(fc.fail_closed);
    CHECK_FALSE(fc.tls);
    CHECK(fc.fail_closed.find(field) != std::string::npos);
  };
  refused(pinned({fp, "abc"}, {}),
          "verify_certificate_hash[1]: \"abc\" is not a hex-encoded SHA-256");
  refused(pinned({other_hex.substr(0, 62) + "zz"}, {}), "verify_certificate_hash[0]");
  refused(pinned({}, {"AAAA"}),
          "verify_certificate_spki[0]: \"AAAA\" is not a base64-encoded SHA-256");
}

TEST_CASE(
    "MUTUAL with subjectAltNames through the proxy: curl with a matching client certificate "
    "gets its answer, others are refused and counted",
    "[proxy][tls][san][curl]") {
  const uint16_t port = sluice::testing::FreeLoopbackPort();
  sxds::ResourceSet rs;
  rs.Add(Gateway443(
      {{"a.example.com", MutualSans({}, {Exact("spiffe://cluster.local/ns/default/sa/sleep")})}},
      port));
  rs.Add(CertSecret("kubernetes://a-cred", "a"));
  rs.Add(CaSecret("kubernetes://a-cred-cacert"));
  auto cfg = proxy::Compile(rs);
  REQUIRE(cfg);
  REQUIRE((*cfg)->listeners.at(0).chains.at(0).tls);
  sluice::testing::TempDir dir;
  proxy::ProxyOptions opts;
  opts.workers = 1;
  opts.access_log_path = dir.path() + "/access.log";
  auto p = proxy::Proxy::Start(*cfg, opts);
  REQUIRE(p);
  const Certs& c = TheCerts();
  auto curl = [&](const std::string& client, int* status) {
    std::string flags;
    if (!client.empty())
      flags = " --cert " + c.path(client + ".pem") + " --key " + c.path(client + ".key");
    return Sh("curl -sS --max-time 5 -o /dev/null -w 'code=%{http_code}' --cacert " +
                  c.path("ca.pem") + flags + " --resolve a.example.com:" + std::to_string(port) +
                  ":127.0.0.1 https://a.example.com:" + std::to_string(port) + "/hello",
              status);
  };
  const uint64_t errors_before = (*p)->stats().tls_handshake_errors.load();
  const uint64_t san_before = (*p)->stats().tls_fail_verify_san.load();
  int st = -1;
  std::string ok = curl("sleep", &st);
  INFO(ok);
  CHECK(st == 0);
  CHECK(ok.find("code=200") != std::string::npos);
  // HTTP/1.1 too (curl offers h2 first by default).
  std::string ok_h2 =
      Sh("curl -sS --http1.1 --max-time 5 -o /dev/null -w 'code=%{http_code}' "
         "--cacert " +
             c.path("ca.pem") + " --cert " + c.path("sleep.pem") + " --key " + c.path("sleep.key") +
             " --resolve a.example.com:" + std::to_string(port) +
             ":127.0.0.1 https://a.example.com:" + std::to_string(port) + "/h1",
         &st);
  INFO(ok_h2);
  CHECK(st == 0);
  CHECK(ok_h2.find("code=200") != std::string::npos);

  std::string other = curl("other", &st);
  INFO(other);
  CHECK(st != 0);
  CHECK(other.find("code=200") == std::string::npos);
  // Under TLS 1.3 the client has finished before the server checks its certificate, so
  // curl may see the connection reset rather than the alert; under TLS 1.2 the alert comes
  // in the handshake: handshake_failure, as Envoy sends.
  std::string other12 =
      Sh("curl -sS --tls-max 1.2 --max-time 5 -o /dev/null --cacert " + c.path("ca.pem") +
             " --cert " + c.path("other.pem") + " --key " + c.path("other.key") +
             " --resolve a.example.com:" + std::to_string(port) +
             ":127.0.0.1 https://a.example.com:" + std::to_string(port) + "/",
         &st);
  INFO(other12);
  CHECK(st == 35);
  CHECK(other12.find("alert handshake failure") != std::string::npos);

  // A session of a verified client resumes (TLS 1.2 session ID and TLS 1.3 ticket): the
  // certificate was checked when the session was made, in this same context.
  for (std::string version : {"-tls1_2", "-tls1_3"}) {
    const std::string s_client = "openssl s_client -connect 127.0.0.1:" + std::to_string(port) +
                                 " -servername a.example.com " + version + " -CAfile " +
                                 c.path("ca.pem") + " -cert " + c.path("sleep.pem") + " -key " +
                                 c.path("sleep.key");
    const std::string sess = c.path("session" + version + ".pem");
    std::string first = Sh("(sleep 0.5) | " + s_client + " -sess_out " + sess, &st);
    INFO(version << " first: " << first);
    CHECK(first.find("Verify return code: 0 (ok)") != std::string::npos);
    std::string again = Sh("(sleep 0.5) | " + s_client + " -sess_in " + sess, &st);
    INFO(version << " again: " << again);
    CHECK(again.find("Reused, TLSv1") != std::string::npos);
  }
  std::string none = curl("", &st);
  INFO(none);
  CHECK(st != 0);
  CHECK(none.find("code=200") == std::string::npos);
  CHECK(sluice::testing::WaitFor(
      [&] { return (*p)->stats().tls_handshake_errors.load() == errors_before + 3; }));
  // Envoy's ssl.fail_verify_san: the two certificates without the SAN (not the missing one).
  CHECK((*p)->stats().tls_fail_verify_san.load() == san_before + 2);
  (*p)->Stop();
}

TEST_CASE(
    "a Gateway SIMPLE with credentialName and a v1 Secret, from YAML to FilterChain::tls "
    "picking the certificate by SNI",
    "[proxy][tls]") {
  auto indent = [](const std::string& pem) {
    std::string out;
    std::istringstream in(pem);
    for (std::string line; std::getline(in, line);)
      out += "      " + line + "\n";
    return out;
  };
  const Certs& c = TheCerts();
  std::string yaml = R"(apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https-a, protocol: HTTPS}
    tls: {mode: SIMPLE, credentialName: a-credential}
    hosts: ["a.example.com"]
  - port: {number: 443, name: https-b, protocol: HTTPS}
    tls: {mode: SIMPLE, credentialName: b-credential}
    hosts: ["b.example.com"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a, namespace: istio-system}
spec:
  hosts: [a.example.com, b.example.com]
  gateways: [gw]
  http: [{route: [{destination: {host: httpbin.default.svc.cluster.local, port: {number: 8000}}}]}]
)";
  for (std::string n : {"a", "b"}) {
    yaml += "---\napiVersion: v1\nkind: Secret\nmetadata: {name: " + n +
            "-credential, namespace: istio-system}\ntype: kubernetes.io/tls\nstringData:\n"
            "  tls.crt: |\n" +
            indent(c.pem(n)) + "  tls.key: |\n" + indent(c.key(n));
  }
  istio::LoadResult loaded;
  istio::LoadText(yaml, "t.yaml", loaded);
  istio::Validate(loaded);
  for (const auto& e : loaded.errors)
    UNSCOPED_INFO(e);
  REQUIRE(loaded.errors.empty());
  REQUIRE(loaded.config.secrets.size() == 2);
  auto spec = istio::ProxySpec::Parse("gateway:istio=ingressgateway@istio-system");
  REQUIRE(spec);
  auto t = istio::Translate(loaded.config, istio::Registry::Build(loaded.config), *spec);
  istio::AddGatewaySecrets(loaded.config, "istio-system", &t.resources);
  REQUIRE(t.resources.secrets.count("kubernetes://a-credential"));
  REQUIRE(t.resources.secrets.count("kubernetes://b-credential"));
  CHECK_FALSE(t.resources.secrets.count("kubernetes://a-credential-cacert"));  // no ca.crt

  auto cfg = proxy::Compile(t.resources);
  REQUIRE(cfg);
  const proxy::ListenerConfig* l = nullptr;
  for (const auto& x : (*cfg)->listeners)
    if (x.resource == "0.0.0.0_443")
      l = &x;
  REQUIRE(l);
  REQUIRE(l->chains.size() == 2);
  CHECK(l->tls_inspector.enabled);
  for (const auto& fc : l->chains) {
    INFO(fc.name << ": " << fc.fail_closed);
    CHECK(fc.fail_closed == "");
    REQUIRE(fc.tls);
    REQUIRE(fc.match.server_names.size() == 1);
    // Each chain's context serves its own host's certificate, and no other name.
    const std::string host = fc.match.server_names[0];
    CHECK(HandshakeCn(fc.tls, host) == host);
    CHECK(HandshakeCn(fc.tls, host == "a.example.com" ? "b.example.com" : "a.example.com") == "");
  }
  // And the chain the listener selects by SNI is the one with that certificate.
  for (std::string host : {"a.example.com", "b.example.com"}) {
    filterchain::Connection conn;
    conn.server_name = host;
    conn.transport_protocol = "tls";
    conn.destination_port = 443;
    conn.application_protocols = std::vector<std::string>{"h2", "http/1.1"};
    conn.direct_source = conn.source = conn.destination;
    conn.source_port = 40000;
    bool decided = false;
    const proxy::FilterChain* fc = l->Select(conn, &decided);
    REQUIRE(fc);
    CHECK(HandshakeCn(fc->tls, host) == host);
  }
}

// A Gateway server on 443 for a.example.com with these `tls:` lines (under mode and
// credentialName a-credential), its VirtualService, and the Secret with ca.crt.
std::string GatewayYaml(const std::string& tls_lines) {
  auto indent = [](const std::string& pem) {
    std::string out;
    std::istringstream in(pem);
    for (std::string line; std::getline(in, line);)
      out += "      " + line + "\n";
    return out;
  };
  const Certs& c = TheCerts();
  return R"(apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https-a, protocol: HTTPS}
    tls:
      credentialName: a-credential
)" + tls_lines +
         R"(    hosts: ["a.example.com"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a, namespace: istio-system}
spec:
  hosts: [a.example.com]
  gateways: [gw]
  http: [{route: [{destination: {host: httpbin.default.svc.cluster.local, port: {number: 8000}}}]}]
---
apiVersion: v1
kind: Secret
metadata: {name: a-credential, namespace: istio-system}
type: kubernetes.io/tls
stringData:
  tls.crt: |
)" + indent(c.pem("a")) +
         "  tls.key: |\n" + indent(c.key("a")) + "  ca.crt: |\n" + indent(c.pem("ca"));
}

TEST_CASE(
    "a Gateway MUTUAL with subjectAltNames and a Secret with ca.crt, from YAML: istiod's "
    "shape, accepted for a matching client certificate and refused for another",
    "[proxy][tls][san]") {
  const std::string yaml = GatewayYaml(
      "      mode: MUTUAL\n"
      "      subjectAltNames: [\"spiffe://cluster.local/ns/default/sa/sleep\", "
      "\"client.example.com\"]\n");
  istio::LoadResult loaded;
  istio::LoadText(yaml, "t.yaml", loaded);
  istio::Validate(loaded);
  for (const auto& e : loaded.errors)
    UNSCOPED_INFO(e);
  REQUIRE(loaded.errors.empty());
  auto spec = istio::ProxySpec::Parse("gateway:istio=ingressgateway@istio-system");
  REQUIRE(spec);
  auto t = istio::Translate(loaded.config, istio::Registry::Build(loaded.config), *spec);
  for (const auto& w : t.warnings)
    UNSCOPED_INFO(w);
  istio::AddGatewaySecrets(loaded.config, "istio-system", &t.resources);
  REQUIRE(t.resources.secrets.count("kubernetes://a-credential-cacert"));

  // istiod's shape (authentication.go ApplyCredentialSDSToServerCommonTLSContext): a
  // combined validation context, the SANs as deprecated exact matchers in its default
  // context, the CA from the "-cacert" secret.
  const listener_v3::Listener* gl = nullptr;
  for (const auto& [name, l] : t.resources.listeners)
    if (name == "0.0.0.0_443")
      gl = &l;
  REQUIRE(gl);
  REQUIRE(gl->filter_chains_size() == 1);
  tls_v3::DownstreamTlsContext dtc;
  REQUIRE(gl->filter_chains(0).transport_socket().typed_config().UnpackTo(&dtc));
  CHECK(dtc.require_client_certificate().value());
  const auto& cv = dtc.common_tls_context().combined_validation_context();
  CHECK(cv.validation_context_sds_secret_config().name() == "kubernetes://a-credential-cacert");
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  REQUIRE(cv.default_validation_context().match_subject_alt_names_size() == 2);
  CHECK(cv.default_validation_context().match_subject_alt_names(0).exact() ==
        "spiffe://cluster.local/ns/default/sa/sleep");
  CHECK(cv.default_validation_context().match_subject_alt_names(1).exact() == "client.example.com");
#pragma GCC diagnostic pop
  CHECK(cv.default_validation_context().match_typed_subject_alt_names_size() == 0);

  auto cfg = proxy::Compile(t.resources);
  REQUIRE(cfg);
  const proxy::FilterChain* fc = nullptr;
  for (const auto& l : (*cfg)->listeners)
    if (l.resource == "0.0.0.0_443")
      fc = &l.chains.at(0);
  REQUIRE(fc);
  INFO(fc->fail_closed);
  REQUIRE(fc->tls);
  CHECK(fc->tls->config().client_san_matchers.size() == 8);
  CHECK(HandshakeWith(fc->tls, "a.example.com", "sleep").cn == "a.example.com");
  Handshake other = HandshakeWith(fc->tls, "a.example.com", "other");
  CHECK(other.cn == "");
  CHECK(other.failure == proxy::tls::Failure::kClientSanMismatch);
  CHECK(HandshakeWith(fc->tls, "a.example.com").failure ==
        proxy::tls::Failure::kNoClientCertificate);
}

TEST_CASE("require_tls: a plaintext request gets 301 to https with the same host and path",
          "[proxy][tls]") {
  namespace t = sluice::testing;
  t::Json routes =
      t::Json::array({{{"match", {{"prefix", "/"}}}, {"direct_response", {{"status", 200}}}}});
  t::Json all = t::RouteConfig("r", routes,
                               t::Json::array({"secure.example.com", "secure.example.com:8080"}));
  all["virtual_hosts"][0]["require_tls"] = "ALL";
  t::Json external = {{"name", "ext"},
                      {"domains", {"ext.example.com"}},
                      {"require_tls", "EXTERNAL_ONLY"},
                      {"routes", routes}};
  t::Json open = {{"name", "open"}, {"domains", {"*"}}, {"routes", routes}};
  all["virtual_hosts"].push_back(external);
  all["virtual_hosts"].push_back(open);
  t::Json doc = {{"listeners", {t::HttpListener("http", all)}}};
  auto p = t::StartProxy(doc);
  REQUIRE(p->error == "");
  const uint16_t port = p->Port();

  t::Resp r = t::Get(port, "secure.example.com", "/a/b?x=1");
  CHECK(r.status == 301);
  CHECK(r.Header("location") == "https://secure.example.com/a/b?x=1");
  r = t::Get(port, "secure.example.com:8080", "/");
  CHECK(r.status == 301);
  CHECK(r.Header("location") == "https://secure.example.com:8080/");
  // EXTERNAL_ONLY: an internal request (x-envoy-internal: true) is served as it is.
  r = t::Get(port, "ext.example.com", "/p");
  CHECK(r.status == 301);
  CHECK(r.Header("location") == "https://ext.example.com/p");
  r = t::SendRaw(port,
                 "GET /p HTTP/1.1\r\nHost: ext.example.com\r\nx-envoy-internal: true\r\n\r\n");
  CHECK(r.status == 200);
  // A virtual host without the requirement is untouched.
  r = t::Get(port, "other.example.com", "/p");
  CHECK(r.status == 200);
}

TEST_CASE(
    "a Gateway MUTUAL with verifyCertificateHash, from YAML: the pin reaches the validation "
    "context as istiod writes it, and only the pinned client certificate is accepted",
    "[proxy][tls][san]") {
  const Certs& c = TheCerts();
  int st = -1;
  std::string hash =
      Sh("openssl x509 -in " + c.path("sleep.pem") + " -outform der | sha256sum", &st);
  REQUIRE(st == 0);
  hash = hash.substr(0, 64);
  auto translate = [](const std::string& yaml, std::vector<std::string>* warnings) {
    istio::LoadResult loaded;
    istio::LoadText(yaml, "t.yaml", loaded);
    istio::Validate(loaded);
    for (const auto& e : loaded.errors)
      UNSCOPED_INFO(e);
    REQUIRE(loaded.errors.empty());
    auto spec = istio::ProxySpec::Parse("gateway:istio=ingressgateway@istio-system");
    REQUIRE(spec);
    auto t = istio::Translate(loaded.config, istio::Registry::Build(loaded.config), *spec);
    *warnings = t.warnings;
    istio::AddGatewaySecrets(loaded.config, "istio-system", &t.resources);
    return t.resources;
  };
  std::vector<std::string> warnings;
  auto res = translate(
      GatewayYaml("      mode: MUTUAL\n      verifyCertificateHash: [\"" + hash + "\"]\n"),
      &warnings);
  REQUIRE(res.listeners.count("0.0.0.0_443"));
  const listener_v3::Listener& gl = res.listeners.at("0.0.0.0_443");
  REQUIRE(gl.filter_chains_size() == 1);
  tls_v3::DownstreamTlsContext dtc;
  REQUIRE(gl.filter_chains(0).transport_socket().typed_config().UnpackTo(&dtc));
  const auto& dv =
      dtc.common_tls_context().combined_validation_context().default_validation_context();
  REQUIRE(dv.verify_certificate_hash_size() == 1);
  CHECK(dv.verify_certificate_hash(0) == hash);
  auto cfg = proxy::Compile(res);
  REQUIRE(cfg);
  const proxy::FilterChain* fc = nullptr;
  for (const auto& l : (*cfg)->listeners)
    if (l.resource == "0.0.0.0_443")
      fc = &l.chains.at(0);
  REQUIRE(fc);
  INFO(fc->fail_closed);
  REQUIRE(fc->tls);
  CHECK(HandshakeWith(fc->tls, "a.example.com", "sleep").cn == "a.example.com");
  CHECK(HandshakeWith(fc->tls, "a.example.com", "other").failure ==
        proxy::tls::Failure::kClientCertHashMismatch);

  // Under SIMPLE there is no client certificate to pin: the server is refused by name,
  // never served without the pin it asked for.
  auto simple = translate(
      GatewayYaml("      mode: SIMPLE\n      verifyCertificateSpki: [\"AAAA\"]\n"), &warnings);
  CHECK(simple.listeners.count("0.0.0.0_443") == 0);
  bool named = false;
  for (const auto& w : warnings)
    named |= w.find("verifyCertificateSpki") != std::string::npos;
  CHECK(named);
}
