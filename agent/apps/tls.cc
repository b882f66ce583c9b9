#include "tls.h"

#include <arpa/inet.h>
#include <sys/stat.h>

#include <cstdio>
#include <filesystem>
#include <memory>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

namespace sluice::apps {
namespace {

struct Free {
  void operator()(X509* p) const { X509_free(p); }
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
  void operator()(BIO* p) const { BIO_free(p); }
  void operator()(X509_EXTENSION* p) const { X509_EXTENSION_free(p); }
  void operator()(BIGNUM* p) const { BN_free(p); }
};
template <class T>
using Owned = std::unique_ptr<T, Free>;

// Offer HTTP/1.1 when the client lists it, so ALPN-aware clients never try h2.
int SelectAlpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
               unsigned int inlen, void*) {
  static const unsigned char kHttp11[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
  unsigned char* selected = nullptr;
  if (SSL_select_next_proto(&selected, outlen, kHttp11, sizeof kHttp11, in, inlen) !=
      OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_NOACK;
  *out = selected;
  return SSL_TLSEXT_ERR_OK;
}

Result<Owned<EVP_PKEY>> NewKey() {
  Owned<EVP_PKEY> key(EVP_EC_gen("P-256"));
  if (!key)
    return Fail("generating EC P-256 key: " + OpenSslErrors());
  return key;
}

Result<void> AddExt(X509* cert, X509V3_CTX* ctx, int nid, const std::string& value) {
  Owned<X509_EXTENSION> ext(X509V3_EXT_conf_nid(nullptr, ctx, nid, value.c_str()));
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1)
    return Fail(std::string("certificate extension ") + OBJ_nid2sn(nid) + "=" + value + ": " +
                OpenSslErrors());
  return {};
}

// A certificate for `subject_cn` holding `key`, signed by `issuer_key` (issuer = the cert
// itself when `issuer` is null).
Result<Owned<X509>> NewCert(const std::string& subject_cn, EVP_PKEY* key, X509* issuer,
                            EVP_PKEY* issuer_key, long days, bool is_ca, const std::string& san) {
  Owned<X509> cert(X509_new());
  if (!cert)
    return Fail("X509_new: " + OpenSslErrors());
  X509_set_version(cert.get(), X509_VERSION_3);
  unsigned char serial_bytes[16];
  if (RAND_bytes(serial_bytes, sizeof serial_bytes) != 1)
    return Fail("random serial: " + OpenSslErrors());
  serial_bytes[0] &= 0x7f;  // serials are positive
  Owned<BIGNUM> serial(BN_bin2bn(serial_bytes, sizeof serial_bytes, nullptr));
  if (!serial || !BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(cert.get())))
    return Fail("certificate serial: " + OpenSslErrors());
  // Valid from an hour ago, so clocks a little behind still accept it.
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
  X509_time_adj_ex(X509_getm_notAfter(cert.get()), static_cast<int>(days), 0, nullptr);
  X509_set_pubkey(cert.get(), key);
  X509_NAME* name = X509_get_subject_name(cert.get());
  std::string cn = subject_cn.substr(0, 64);  // CN is at most 64 characters
  if (X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                                 reinterpret_cast<const unsigned char*>("Sluice stand-in"), -1, -1,
                                 0) != 1 ||
      X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1,
                                 0) != 1)
    return Fail("certificate subject " + subject_cn + ": " + OpenSslErrors());
  X509_set_issuer_name(cert.get(), issuer ? X509_get_subject_name(issuer) : name);

  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, issuer ? issuer : cert.get(), cert.get(), nullptr, nullptr, 0);
  if (is_ca) {
    SLUICE_RETURN_IF_ERROR(AddExt(cert.get(), &ctx, NID_basic_constraints, "critical,CA:TRUE"));
    SLUICE_RETURN_IF_ERROR(AddExt(cert.get(), &ctx, NID_key_usage, "critical,keyCertSign,cRLSign"));
    SLUICE_RETURN_IF_ERROR(AddExt(cert.get(), &ctx, NID_subject_key_identifier, "hash"));
  } else {
    for (auto [nid, value] : {std::pair{NID_basic_constraints, std::string("CA:FALSE")},
                              {NID_key_usage, "critical,digitalSignature,keyEncipherment"},
                              {NID_ext_key_usage, "serverAuth"},
                              {NID_subject_key_identifier, "hash"},
                              {NID_authority_key_identifier, "keyid:always"},
                              {NID_subject_alt_name, san}}) {
      SLUICE_RETURN_IF_ERROR(AddExt(cert.get(), &ctx, nid, value));
    }
  }
  if (X509_sign(cert.get(), issuer_key, EVP_sha256()) <= 0)
    return Fail("signing certificate for " + subject_cn + ": " + OpenSslErrors());
  return cert;
}

Result<void> WritePem(const std::string& path, X509* cert, EVP_PKEY* key) {
  Owned<BIO> bio(BIO_new_file(path.c_str(), "w"));
  if (!bio)
    return Fail(path + ": cannot open for writing: " + OpenSslErrors());
  if (key) {
    ::chmod(path.c_str(), 0600);
    if (PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1)
      return Fail(path + ": writing key: " + OpenSslErrors());
  } else if (PEM_write_bio_X509(bio.get(), cert) != 1) {
    return Fail(path + ": writing certificate: " + OpenSslErrors());
  }
  return {};
}

std::string FileSafe(std::string_view host) {
  std::string out;
  for (char c : host) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-';
    out += ok ? c : '_';
  }
  return out;
}

}  // namespace

std::string OpenSslErrors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty())
      out += "; ";
    out += buf;
  }
  return out.empty() ? "unknown OpenSSL error" : out;
}

Result<std::shared_ptr<TlsContext>> TlsContext::Load(const std::string& cert_path,
                                                     const std::string& key_path) {
  ERR_clear_error();
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (!ctx)
    return Fail("SSL_CTX_new: " + OpenSslErrors());
  std::shared_ptr<TlsContext> owned(new TlsContext(ctx));
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  if (SSL_CTX_use_certificate_chain_file(ctx, cert_path.c_str()) != 1)
    return Fail("certificate " + cert_path + ": " + OpenSslErrors());
  if (SSL_CTX_use_PrivateKey_file(ctx, key_path.c_str(), SSL_FILETYPE_PEM) != 1)
    return Fail("private key " + key_path + ": " + OpenSslErrors());
  if (SSL_CTX_check_private_key(ctx) != 1)
    return Fail("private key " + key_path + " does not match certificate " + cert_path);
  SSL_CTX_set_alpn_select_cb(ctx, SelectAlpn, nullptr);
  return owned;
}

TlsContext::~TlsContext() {
  SSL_CTX_free(ctx_);
}

Result<CertPaths> MakeSelfSignedCerts(const std::string& dir,
                                      const std::vector<std::string>& hosts) {
  if (hosts.empty())
    return Fail("no host name given for the server certificate");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec)
    return Fail(dir + ": " + ec.message());
  ERR_clear_error();
  CertPaths paths{dir + "/ca.pem", dir + "/ca-key.pem", dir + "/" + FileSafe(hosts[0]) + ".pem",
                  dir + "/" + FileSafe(hosts[0]) + "-key.pem"};

  Owned<X509> ca;
  Owned<EVP_PKEY> ca_key;
  if (std::filesystem::exists(paths.ca_cert) && std::filesystem::exists(paths.ca_key)) {
    Owned<BIO> cb(BIO_new_file(paths.ca_cert.c_str(), "r"));
    Owned<BIO> kb(BIO_new_file(paths.ca_key.c_str(), "r"));
    if (cb)
      ca.reset(PEM_read_bio_X509(cb.get(), nullptr, nullptr, nullptr));
    if (!ca)
      return Fail("existing CA certificate " + paths.ca_cert + ": " + OpenSslErrors());
    if (kb)
      ca_key.reset(PEM_read_bio_PrivateKey(kb.get(), nullptr, nullptr, nullptr));
    if (!ca_key)
      return Fail("existing CA key " + paths.ca_key + ": " + OpenSslErrors());
    if (X509_check_private_key(ca.get(), ca_key.get()) != 1)
      return Fail("existing CA key " + paths.ca_key + " does not match " + paths.ca_cert);
  } else {
    auto key = NewKey();
    SLUICE_RETURN_IF_ERROR(key);
    ca_key = std::move(*key);
    auto cert = NewCert("Sluice stand-in CA", ca_key.get(), nullptr, ca_key.get(), 3650, true, "");
    SLUICE_RETURN_IF_ERROR_CTX(cert, "CA certificate");
    ca = std::move(*cert);
    SLUICE_RETURN_IF_ERROR(WritePem(paths.ca_key, nullptr, ca_key.get()));
    SLUICE_RETURN_IF_ERROR(WritePem(paths.ca_cert, ca.get(), nullptr));
    paths.ca_created = true;
  }

  std::string san;
  for (const auto& h : hosts) {
    if (h.empty() || h.find(',') != std::string::npos)
      return Fail("host name '" + h + "' is not valid in a certificate");
    unsigned char buf[16];
    bool ip = inet_pton(AF_INET, h.c_str(), buf) == 1 || inet_pton(AF_INET6, h.c_str(), buf) == 1;
    if (!san.empty())
      san += ',';
    san += (ip ? "IP:" : "DNS:") + h;
  }
  auto key = NewKey();
  SLUICE_RETURN_IF_ERROR(key);
  auto cert = NewCert(hosts[0], key->get(), ca.get(), ca_key.get(), 825, false, san);
  SLUICE_RETURN_IF_ERROR_CTX(cert, "server certificate for " + hosts[0]);
  SLUICE_RETURN_IF_ERROR(WritePem(paths.key, nullptr, key->get()));
  SLUICE_RETURN_IF_ERROR(WritePem(paths.cert, cert->get(), nullptr));
  return paths;
}

}  // namespace sluice::apps
