// TLS termination for the L7 engine's downstream connections (OpenSSL), transport-agnostic:
// ciphertext in from the socket, plaintext out to the HTTP codec, and back. No socket
// code here, so the same connection object runs under either event-loop backend and
// under tests that feed it bytes.
//
// A ServerContext is what one listener's TLS filter chains say (Envoy's
// DownstreamTlsContext, as istiod builds it for a Gateway server with tls.mode SIMPLE or
// MUTUAL): the certificates, each for the server names of its chain; the CA that client
// certificates must chain to, when they are required; the ALPN protocols offered.
// Contexts are immutable and shared by every connection of a config.
//
// The certificate is chosen by the ClientHello's server name, as Envoy chooses a filter
// chain by `server_names` (filterchain::ServerNameScore, the same ranking): an exact name first,
// then the longest wildcard suffix
// ("*.example.com" matches "a.example.com", not "example.com"), then a certificate with no
// names (a chain without server_names). A name that none of them takes fails the handshake
// with an unrecognized_name alert; so does a ClientHello without a name when no
// certificate without names exists.
//
// MUTUAL may also name the subjectAltNames a client certificate must carry
// (client_san_matchers, san_match.h): checked once per handshake, right after OpenSSL has
// verified the chain; a certificate none of whose SANs matches fails the handshake with a
// handshake_failure alert (Failure::kClientSanMismatch, Envoy's ssl.fail_verify_san). So
// does one whose hash is not pinned, when hashes are (kClientCertHashMismatch,
// ssl.fail_verify_cert_hash).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/common/result.h"
#include "sluice/proxy/san_match.h"

typedef struct ssl_st SSL;
typedef struct ssl_ctx_st SSL_CTX;
typedef struct bio_st BIO;
typedef struct x509_store_ctx_st X509_STORE_CTX;

namespace sluice::proxy::tls {

struct CertificateConfig {
  std::string name;  // for errors: the secret ("kubernetes://httpbin-credential")
  std::string chain_pem;
  std::string key_pem;
  // The SNI names this certificate serves ("httpbin.example.com", "*.example.com");
  // empty: any name, and ClientHellos without one.
  std::vector<std::string> server_names;
};

struct ServerConfig {
  std::vector<CertificateConfig> certificates;
  // PEM CA certificates a client certificate must chain to (MUTUAL). Required when
  // require_client_certificate is set.
  std::string client_ca_pem;
  bool require_client_certificate = false;
  // With client certificates required: one of the certificate's SANs must match one of
  // these (empty: any certificate the CA signed).
  std::vector<SanMatcher> client_san_matchers;
  // And, when either list is set (Envoy's verify_certificate_hash / verify_certificate_spki):
  // the SHA-256 of the certificate's DER must be in the first, or the SHA-256 of its
  // SubjectPublicKeyInfo's DER in the second (32 raw bytes each).
  std::vector<std::string> client_cert_sha256;
  std::vector<std::string> client_spki_sha256;
  // Offered in this order of preference; the first one the client offers too is chosen
  // (none in common: the handshake goes on without ALPN, and HTTP/1.1 is spoken).
  std::vector<std::string> alpn = {"h2", "http/1.1"};
  // TLS 1.2 and 1.3 by default, as Envoy's server defaults.
  int min_version = 0x0303;  // TLS1_2_VERSION
  int max_version = 0x0304;  // TLS1_3_VERSION
};

class ServerContext {
 public:
  // Errors name the certificate and what is wrong with it (not PEM, key not matching the
  // certificate, a CA that does not parse).
  static Result<std::shared_ptr<const ServerContext>> Create(const ServerConfig& config);
  ~ServerContext();
  ServerContext(const ServerContext&) = delete;
  ServerContext& operator=(const ServerContext&) = delete;

  const ServerConfig& config() const { return config_; }

 private:
  friend class Connection;
  struct Cert;
  ServerContext() = default;
  // The certificate for `sni` (nullptr: none takes it); `sni` empty: no name was sent.
  const Cert* Select(std::string_view sni) const;

  ServerConfig config_;
  std::vector<std::unique_ptr<Cert>> certs_;
  SSL_CTX* base_ = nullptr;  // the context connections start on (client CA, ALPN, versions)
  std::vector<uint8_t> alpn_wire_;
};

// Why a connection ended badly, for counters and logs.
enum class Failure {
  kNone,
  kUnknownServerName,  // no certificate for the ClientHello's name
  kNoClientCertificate,
  kBadClientCertificate,
  kClientSanMismatch,       // chain verified, but no SAN matched client_san_matchers
  kClientCertHashMismatch,  // neither its hash nor its SPKI hash is in the pinned lists
  kHandshake,  // any other handshake failure (no common version or cipher, not TLS, ...)
  kProtocol,   // an error after the handshake (bad record, ...)
};
const char* FailureName(Failure f);

// One downstream TLS session over memory buffers.
class Connection {
 public:
  explicit Connection(std::shared_ptr<const ServerContext> ctx);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Bytes read from the socket. Drives the handshake; afterwards, decrypted data becomes
  // readable with Read(). False when the connection failed (failure() says why, and
  // PendingOutput() may hold the alert to send before closing).
  bool Feed(std::string_view ciphertext);
  // Decrypted bytes, appended to `out`; how many.
  std::size_t Read(std::string& out);
  // Plaintext to send (after the handshake). False when the connection failed.
  bool Write(std::string_view plaintext);
  // Bytes to write to the socket (handshake messages, records, alerts), then Consume()d.
  std::string_view PendingOutput() const {
    return {out_.data() + out_pos_, out_.size() - out_pos_};
  }
  void Consume(std::size_t n);
  // A close_notify alert is queued in PendingOutput().
  void Shutdown();

  bool handshake_done() const { return done_; }
  bool failed() const { return failure_ != Failure::kNone; }
  Failure failure() const { return failure_; }
  const std::string& error() const { return error_; }  // OpenSSL's words, for logs
  bool peer_closed() const { return peer_closed_; }    // close_notify received
  std::string_view alpn() const { return alpn_; }      // "h2", "http/1.1" or ""
  std::string_view sni() const { return sni_; }
  // The client certificate's subject and URI SANs (MUTUAL), for the access log and
  // x-forwarded-client-cert.
  const std::string& peer_subject() const { return peer_subject_; }
  const std::vector<std::string>& peer_uri_sans() const { return peer_uri_sans_; }

 private:
  friend class ServerContext;
  static int OnClientHello(SSL* ssl, int* alert, void* arg);
  // OpenSSL's chain verification, then the SAN and hash checks (installed when the config
  // has any).
  static int OnVerifyClient(X509_STORE_CTX* store, void* arg);
  bool SansMatch(X509* leaf);   // false: failure_ and error_ say why
  bool HashPinned(X509* leaf);  // likewise
  void Drain();                 // moves ciphertext the session produced into out_
  bool Fail(Failure f);
  bool Progress();  // handshake / read step after new input

  std::shared_ptr<const ServerContext> ctx_;
  SSL* ssl_ = nullptr;
  BIO* in_ = nullptr;  // ciphertext from the peer (both BIOs owned by ssl_)
  BIO* out_bio_ = nullptr;
  std::string out_;
  std::size_t out_pos_ = 0;
  std::string plain_;  // decrypted, not yet Read()
  bool done_ = false, peer_closed_ = false;
  Failure failure_ = Failure::kNone;
  std::string error_, alpn_, sni_, peer_subject_;
  std::vector<std::string> peer_uri_sans_;
};

}  // namespace sluice::proxy::tls
