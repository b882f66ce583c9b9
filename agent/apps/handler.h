// What a stand-in app sees of a connection, and the handler signature the server calls.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "http_message.h"

namespace sluice::apps {

struct ConnectionInfo {
  std::string peer_ip;  // "127.0.0.1", "::1"
  std::uint16_t peer_port = 0;
  std::uint16_t local_port = 0;
  bool tls = false;
  std::string sni;  // server name the TLS client asked for, "" if none
};

// Called once per request on the connection's own thread; it may block (/delay does).
using Handler = std::function<Response(const Request&, const ConnectionInfo&)>;

}  // namespace sluice::apps
