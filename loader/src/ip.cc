#include "sluice/loader/ip.h"

#include <arpa/inet.h>

#include <charconv>

namespace sluice {

Result<IpAddress> IpAddress::Parse(std::string_view text) {
  std::string s(text);
  IpAddress ip;
  if (inet_pton(AF_INET, s.c_str(), ip.bytes.data()) == 1) {
    ip.family = 4;
    return ip;
  }
  if (inet_pton(AF_INET6, s.c_str(), ip.bytes.data()) == 1) {
    ip.family = 6;
    return ip;
  }
  return Fail("'" + s + "' is not an IPv4 or IPv6 address");
}

std::string IpAddress::ToString() const {
  char buf[INET6_ADDRSTRLEN] = {};
  inet_ntop(family == 6 ? AF_INET6 : AF_INET, bytes.data(), buf, sizeof(buf));
  return buf;
}

namespace {

// "'TEXT'REST" for an error message, built by appending: GCC 12 at -O3 warns falsely
// (-Wrestrict) on a string that starts as a one-character literal + std::string.
std::string Quoted(std::string_view text, std::string_view rest) {
  std::string out;
  out.reserve(text.size() + rest.size() + 2);
  out += '\'';
  out += text;
  out += '\'';
  out += rest;
  return out;
}

}  // namespace

Result<SocketAddress> SocketAddress::Parse(std::string_view text) {
  std::string_view host, port;
  if (!text.empty() && text.front() == '[') {
    auto close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':')
      return Fail(Quoted(text, " is not [IPv6]:port"));
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else {
    auto colon = text.rfind(':');
    if (colon == std::string_view::npos)
      return Fail(Quoted(text, " has no :port"));
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
  }
  auto ip = IpAddress::Parse(host);
  SLUICE_RETURN_IF_ERROR_CTX(ip, std::string(text));
  unsigned value = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (ec != std::errc() || end != port.data() + port.size() || value == 0 || value > 65535)
    return Fail(Quoted(text, ": port must be 1..65535"));
  return SocketAddress{*ip, static_cast<uint16_t>(value)};
}

std::string SocketAddress::ToString() const {
  std::string out;  // appended, not "[" + ...: see Quoted
  if (ip.family == 6)
    out += '[';
  out += ip.ToString();
  if (ip.family == 6)
    out += ']';
  out += ':';
  out += std::to_string(port);
  return out;
}

}  // namespace sluice
