// TLS for the stand-ins: a server context from PEM files, and a self-signed CA plus a
// server certificate for a host name (the "external host" edition.cnn.com).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <openssl/ssl.h>

#include "sluice/common/result.h"

namespace sluice::apps {

// Owns an SSL_CTX that serves one certificate for every SNI name.
class TlsContext {
 public:
  static Result<std::shared_ptr<TlsContext>> Load(const std::string& cert_path,
                                                  const std::string& key_path);
  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  SSL_CTX* get() const { return ctx_; }

 private:
  explicit TlsContext(SSL_CTX* ctx) : ctx_(ctx) {}
  SSL_CTX* ctx_;
};

// The last OpenSSL error queue entries as text ("error:0480006C:PEM routines::no start line").
std::string OpenSslErrors();

struct CertPaths {
  std::string ca_cert;  // DIR/ca.pem
  std::string ca_key;   // DIR/ca-key.pem
  std::string cert;     // DIR/<host>.pem
  std::string key;      // DIR/<host>-key.pem
  bool ca_created = false;
};

// Writes into `dir` (created if absent) a CA (reused when ca.pem and ca-key.pem are already
// there, so several hosts can share one trust root) and a server certificate whose subject
// is hosts[0] and whose subjectAltName lists every host (DNS names or IP literals).
Result<CertPaths> MakeSelfSignedCerts(const std::string& dir,
                                      const std::vector<std::string>& hosts);

}  // namespace sluice::apps
