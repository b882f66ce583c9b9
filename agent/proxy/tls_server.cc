#include "sluice/proxy/tls_server.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cctype>

#include "sluice/filterchain/match.h"

namespace sluice::proxy::tls {

namespace {

// OpenSSL's error queue as text, emptied.
std::string Errors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    out += (out.empty() ? "" : "; ") + std::string(buf);
  }
  return out.empty() ? "no detail from OpenSSL" : out;
}

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
using OwnedBio = std::unique_ptr<BIO, BioFree>;

OwnedBio MemBio(const std::string& pem) {
  return OwnedBio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

std::string Lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

// The host_name of a ClientHello's server_name extension (RFC 6066 3), "" when absent.
std::string ClientHelloName(SSL* ssl) {
  const unsigned char* p = nullptr;
  std::size_t len = 0;
  if (!SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &p, &len) || len < 5)
    return "";
  std::size_t list = (std::size_t{p[0]} << 8) | p[1];
  if (list + 2 > len || p[2] != TLSEXT_NAMETYPE_host_name)
    return "";
  std::size_t n = (std::size_t{p[3]} << 8) | p[4];
  if (n + 5 > len)
    return "";
  return Lower(std::string_view(reinterpret_cast<const char*>(p + 5), n));
}

}  // namespace

struct ServerContext::Cert {
  std::vector<std::string> names;  // lower case
  X509* leaf = nullptr;
  EVP_PKEY* key = nullptr;
  STACK_OF(X509) * chain = nullptr;  // intermediates after the leaf
  ~Cert() {
    X509_free(leaf);
    EVP_PKEY_free(key);
    sk_X509_pop_free(chain, X509_free);
  }
};

const char* FailureName(Failure f) {
  switch (f) {
    case Failure::kNone:
      return "none";
    case Failure::kUnknownServerName:
      return "unknown_server_name";
    case Failure::kNoClientCertificate:
      return "no_client_certificate";
    case Failure::kBadClientCertificate:
      return "bad_client_certificate";
    case Failure::kClientSanMismatch:
      return "fail_verify_san";
    case Failure::kClientCertHashMismatch:
      return "fail_verify_cert_hash";
    case Failure::kHandshake:
      return "handshake";
    case Failure::kProtocol:
      return "protocol";
  }
  return "unknown";
}

ServerContext::~ServerContext() {
  SSL_CTX_free(base_);
}

Result<std::shared_ptr<const ServerContext>> ServerContext::Create(const ServerConfig& config) {
  if (config.certificates.empty())
    return Fail("TLS server: no certificate");
  if (config.require_client_certificate && config.client_ca_pem.empty())
    return Fail("TLS server: client certificates required but no CA to verify them");
  const bool checks_client = !config.client_san_matchers.empty() ||
                             !config.client_cert_sha256.empty() ||
                             !config.client_spki_sha256.empty();
  if (checks_client && !config.require_client_certificate)
    return Fail("TLS server: client certificate checks without client certificates required");
  for (const auto* list : {&config.client_cert_sha256, &config.client_spki_sha256}) {
    for (const std::string& h : *list) {
      if (h.size() != SHA256_DIGEST_LENGTH)
        return Fail("TLS server: a pinned client certificate hash is not 32 bytes");
    }
  }
  std::shared_ptr<ServerContext> ctx(new ServerContext());
  ctx->config_ = config;
  ERR_clear_error();
  for (const auto& c : config.certificates) {
    const std::string what = "certificate " + (c.name.empty() ? "(unnamed)" : c.name);
    auto cert = std::make_unique<Cert>();
    for (const auto& n : c.server_names)
      cert->names.push_back(Lower(n));
    auto bio = MemBio(c.chain_pem);
    cert->leaf = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr);
    if (!cert->leaf)
      return Fail(what + ": the certificate chain is not PEM: " + Errors());
    cert->chain = sk_X509_new_null();
    while (X509* more = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr))
      sk_X509_push(cert->chain, more);
    ERR_clear_error();  // the end of the PEM stream is reported as an error
    auto kbio = MemBio(c.key_pem);
    cert->key = PEM_read_bio_PrivateKey(kbio.get(), nullptr, nullptr, nullptr);
    if (!cert->key)
      return Fail(what + ": the private key is not PEM: " + Errors());
    if (X509_check_private_key(cert->leaf, cert->key) != 1)
      return Fail(what + ": the private key does not match the certificate");
    ctx->certs_.push_back(std::move(cert));
  }

  SSL_CTX* base = SSL_CTX_new(TLS_server_method());
  if (!base)
    return Fail("TLS server: SSL_CTX_new: " + Errors());
  ctx->base_ = base;
  SSL_CTX_set_min_proto_version(base, config.min_version);
  SSL_CTX_set_max_proto_version(base, config.max_version);
  SSL_CTX_set_options(base, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
  SSL_CTX_set_mode(base, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_client_hello_cb(base, &Connection::OnClientHello, nullptr);
  // Sessions (IDs and tickets) live in this SSL_CTX only, so they resume only under the
  // config whose checks the client certificate passed; without a context OpenSSL fails a
  // resumption with internal_error whenever client certificates are verified.
  static constexpr unsigned char kSessionContext[] = "sluice-downstream-tls";
  SSL_CTX_set_session_id_context(base, kSessionContext, sizeof(kSessionContext) - 1);
  if (config.require_client_certificate) {
    X509_STORE* store = SSL_CTX_get_cert_store(base);
    auto bio = MemBio(config.client_ca_pem);
    int n = 0;
    while (X509* ca = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) {
      X509_STORE_add_cert(store, ca);
      X509_free(ca);
      n++;
    }
    ERR_clear_error();
    if (n == 0)
      return Fail("TLS server: the client CA is not PEM");
    SSL_CTX_set_verify(base, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
    if (checks_client)
      SSL_CTX_set_cert_verify_callback(base, &Connection::OnVerifyClient, nullptr);
  }
  for (const auto& p : config.alpn) {
    if (p.empty() || p.size() > 255)
      return Fail("TLS server: ALPN protocol '" + p + "' must be 1 to 255 bytes");
    ctx->alpn_wire_.push_back(static_cast<uint8_t>(p.size()));
    ctx->alpn_wire_.insert(ctx->alpn_wire_.end(), p.begin(), p.end());
  }
  if (!ctx->alpn_wire_.empty()) {
    SSL_CTX_set_alpn_select_cb(
        base,
        [](SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
           unsigned int inlen, void* arg) -> int {
          const auto* self = static_cast<const ServerContext*>(arg);
          unsigned char* chosen = nullptr;
          // The server's list first: its order is the preference.
          if (SSL_select_next_proto(&chosen, outlen, self->alpn_wire_.data(),
                                    static_cast<unsigned>(self->alpn_wire_.size()), in,
                                    inlen) != OPENSSL_NPN_NEGOTIATED)
            return SSL_TLSEXT_ERR_NOACK;
          *out = chosen;
          return SSL_TLSEXT_ERR_OK;
        },
        ctx.get());
  }
  return std::shared_ptr<const ServerContext>(std::move(ctx));
}

const ServerContext::Cert* ServerContext::Select(std::string_view sni) const {
  // As Envoy ranks filter chains by server_names (the filter-chain matcher's own score):
  // exact, then the longest wildcard suffix, then names unset; the first on a tie.
  const Cert* best = nullptr;
  int best_score = -1;
  for (const auto& c : certs_) {
    if (int score = filterchain::ServerNameScore(c->names, sni); score > best_score) {
      best = c.get();
      best_score = score;
    }
  }
  return best;
}

Connection::Connection(std::shared_ptr<const ServerContext> ctx) : ctx_(std::move(ctx)) {
  ssl_ = SSL_new(ctx_->base_);
  in_ = BIO_new(BIO_s_mem());
  out_bio_ = BIO_new(BIO_s_mem());
  BIO_set_mem_eof_return(in_, -1);  // empty means "more to come", not EOF
  SSL_set_bio(ssl_, in_, out_bio_);
  SSL_set_app_data(ssl_, this);
  SSL_set_accept_state(ssl_);
}

Connection::~Connection() {
  SSL_free(ssl_);  // frees both BIOs
}

int Connection::OnClientHello(SSL* ssl, int* alert, void*) {
  auto* self = static_cast<Connection*>(SSL_get_app_data(ssl));
  self->sni_ = ClientHelloName(ssl);
  const ServerContext::Cert* cert = self->ctx_->Select(self->sni_);
  if (!cert) {
    self->failure_ = Failure::kUnknownServerName;
    self->error_ = self->sni_.empty() ? "no server name, and no certificate serves any name"
                                      : "no certificate for server name " + self->sni_;
    *alert = SSL_AD_UNRECOGNIZED_NAME;
    return SSL_CLIENT_HELLO_ERROR;
  }
  if (SSL_use_cert_and_key(ssl, cert->leaf, cert->key, cert->chain, 1) != 1) {
    self->failure_ = Failure::kHandshake;
    self->error_ = "loading the certificate: " + Errors();
    *alert = SSL_AD_INTERNAL_ERROR;
    return SSL_CLIENT_HELLO_ERROR;
  }
  return SSL_CLIENT_HELLO_SUCCESS;
}

int Connection::OnVerifyClient(X509_STORE_CTX* store, void*) {
  const int chain_ok = X509_verify_cert(store);
  if (chain_ok <= 0)
    return chain_ok;  // OpenSSL's own failure (kBadClientCertificate)
  auto* ssl =
      static_cast<SSL*>(X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()));
  auto* self = static_cast<Connection*>(SSL_get_app_data(ssl));
  const ServerConfig& config = self->ctx_->config_;
  X509* leaf = X509_STORE_CTX_get0_cert(store);
  // OpenSSL sends the alert for this error: handshake_failure, as Envoy does.
  X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION);
  if (!config.client_san_matchers.empty() && !self->SansMatch(leaf))
    return 0;
  if ((!config.client_cert_sha256.empty() || !config.client_spki_sha256.empty()) &&
      !self->HashPinned(leaf)) {
    return 0;
  }
  X509_STORE_CTX_set_error(store, X509_V_OK);
  return 1;
}

bool Connection::HashPinned(X509* leaf) {
  const ServerConfig& config = ctx_->config_;
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  auto in = [&](const std::vector<std::string>& list) {
    const std::string_view got(reinterpret_cast<const char*>(md), n);
    return std::find(list.begin(), list.end(), got) != list.end();
  };
  if (!config.client_cert_sha256.empty() && X509_digest(leaf, EVP_sha256(), md, &n) == 1 &&
      in(config.client_cert_sha256)) {
    return true;
  }
  if (!config.client_spki_sha256.empty()) {
    // The whole SubjectPublicKeyInfo, DER (what `openssl pkey -pubin -outform DER` writes).
    unsigned char* spki = nullptr;
    const int len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(leaf), &spki);
    const bool ok =
        len > 0 && EVP_Digest(spki, static_cast<std::size_t>(len), md, &n, EVP_sha256(), nullptr);
    OPENSSL_free(spki);
    if (ok && in(config.client_spki_sha256))
      return true;
  }
  failure_ = Failure::kClientCertHashMismatch;
  error_ = "client certificate hash check failed: neither its SHA-256 nor its SPKI's is pinned";
  return false;
}

bool Connection::SansMatch(X509* leaf) {
  const std::vector<San> sans = CertificateSans(leaf);
  if (MatchSans(ctx_->config_.client_san_matchers, sans))
    return true;
  failure_ = Failure::kClientSanMismatch;
  error_ = "client certificate SAN check failed: none of";
  for (const San& s : sans)
    error_ += std::string(" ") + SanTypeName(s.type) + ":" + s.value;
  if (sans.empty())
    error_ += " (no SANs)";
  error_ += " matches";
  for (const SanMatcher& m : ctx_->config_.client_san_matchers)
    error_ += " [" + m.text + "]";
  return false;
}

bool Connection::Fail(Failure f) {
  if (failure_ == Failure::kNone) {
    failure_ = f;
    error_ = Errors();
  }
  ERR_clear_error();
  Drain();  // the alert, if OpenSSL wrote one
  return false;
}

void Connection::Drain() {
  char buf[16384];
  int n;
  while ((n = BIO_read(out_bio_, buf, sizeof(buf))) > 0)
    out_.append(buf, static_cast<std::size_t>(n));
}

bool Connection::Progress() {
  if (!done_) {
    ERR_clear_error();
    int r = SSL_do_handshake(ssl_);
    if (r != 1) {
      int err = SSL_get_error(ssl_, r);
      if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
        Drain();
        return true;
      }
      if (failure_ != Failure::kNone)  // decided by the ClientHello callback
        return Fail(failure_);
      const unsigned long e = ERR_peek_error();
      const int reason = ERR_GET_REASON(e);
      if (reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE)
        return Fail(Failure::kNoClientCertificate);
      if (reason == SSL_R_CERTIFICATE_VERIFY_FAILED)
        return Fail(Failure::kBadClientCertificate);
      return Fail(Failure::kHandshake);
    }
    done_ = true;
    const unsigned char* proto = nullptr;
    unsigned int len = 0;
    SSL_get0_alpn_selected(ssl_, &proto, &len);
    alpn_.assign(reinterpret_cast<const char*>(proto), len);
    if (X509* peer = SSL_get0_peer_certificate(ssl_)) {
      char buf[512];
      X509_NAME_oneline(X509_get_subject_name(peer), buf, sizeof(buf));
      peer_subject_ = buf;
      for (San& s : CertificateSans(peer)) {
        if (s.type == SanType::kUri)
          peer_uri_sans_.push_back(std::move(s.value));
      }
    }
  }
  char buf[16384];
  for (;;) {
    ERR_clear_error();
    int n = SSL_read(ssl_, buf, sizeof(buf));
    if (n > 0) {
      plain_.append(buf, static_cast<std::size_t>(n));
      continue;
    }
    int err = SSL_get_error(ssl_, n);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
      break;
    if (err == SSL_ERROR_ZERO_RETURN) {
      peer_closed_ = true;
      break;
    }
    return Fail(Failure::kProtocol);
  }
  Drain();
  return true;
}

bool Connection::Feed(std::string_view ciphertext) {
  if (failed())
    return false;
  if (!ciphertext.empty() &&
      BIO_write(in_, ciphertext.data(), static_cast<int>(ciphertext.size())) !=
          static_cast<int>(ciphertext.size()))
    return Fail(Failure::kProtocol);
  return Progress();
}

std::size_t Connection::Read(std::string& out) {
  const std::size_t n = plain_.size();
  out += plain_;
  plain_.clear();
  return n;
}

bool Connection::Write(std::string_view plaintext) {
  if (failed() || !done_)
    return false;
  while (!plaintext.empty()) {
    ERR_clear_error();
    int n = SSL_write(ssl_, plaintext.data(),
                      static_cast<int>(std::min<std::size_t>(plaintext.size(), 1 << 30)));
    if (n <= 0)
      return Fail(Failure::kProtocol);
    plaintext.remove_prefix(static_cast<std::size_t>(n));
  }
  Drain();
  return true;
}

void Connection::Consume(std::size_t n) {
  out_pos_ += std::min(n, out_.size() - out_pos_);
  if (out_pos_ == out_.size()) {
    out_.clear();
    out_pos_ = 0;
  }
}

void Connection::Shutdown() {
  if (done_ && !failed()) {
    SSL_shutdown(ssl_);
    Drain();
  }
}

}  // namespace sluice::proxy::tls
