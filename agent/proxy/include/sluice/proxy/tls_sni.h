// Reads the server name from a TLS ClientHello without terminating TLS: the bytes are
// only inspected, then forwarded untouched.
#pragma once

#include <string_view>

namespace sluice::proxy {

enum class SniStatus { kNeedMore, kFound, kNoSni, kNotTls };

// Parses the first TLS record(s) in buf. kFound sets *sni (a view into buf).
// kNoSni: a ClientHello without server_name; kNotTls: the bytes are not a TLS
// handshake (plaintext, or malformed).
SniStatus ParseClientHelloSni(std::string_view buf, std::string_view* sni);

}  // namespace sluice::proxy
