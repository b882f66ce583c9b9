// A self-signed certificate for istiod's name (istiod.istio-system.svc), made with
// openssl into DIR/cert.pem and DIR/key.pem: the xDS server's TLS (as 15012) in tests.
#pragma once

#include <cstdlib>
#include <string>

namespace sluice::testing {

// True when openssl made both files.
inline bool MakeIstiodCert(const std::string& dir) {
  const std::string cmd =
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=istiod -addext "
      "subjectAltName=DNS:istiod.istio-system.svc -keyout " +
      dir + "/key.pem -out " + dir + "/cert.pem >/dev/null 2>&1";
  return std::system(cmd.c_str()) == 0;
}

}  // namespace sluice::testing
