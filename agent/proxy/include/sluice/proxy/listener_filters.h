// The listener filters that read a connection's first bytes before a filter chain is
// chosen, as Envoy's tls_inspector and http_inspector do: they only look (the bytes
// stay in the session's buffer and are replayed into the chosen chain) and say what
// the chain match needs -- transport protocol, SNI, ALPN. Pure functions over a buffer,
// so the parsers are tested and fuzzed without sockets.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace sluice::proxy {

enum class Inspect { kNeedMore, kDone };

// tls_inspector: a TLS ClientHello gives transport protocol "tls", its server name
// (lower case; empty when it has none) and its ALPN list in the client's order.
// Anything else is not TLS and leaves the transport protocol "raw_buffer".
struct TlsHello {
  bool tls = false;
  std::string server_name;
  std::vector<std::string> alpn;
};
Inspect InspectTls(std::string_view buf, TlsHello* out);

// http_inspector (for connections that are not TLS): "http/1.1" or "http/1.0" from an
// HTTP/1 request line with a known method, "h2c" from the HTTP/2 connection preface,
// "" for anything else (no ALPN).
Inspect InspectHttp(std::string_view buf, std::string* protocol);

}  // namespace sluice::proxy
