// RFC 4648 base64, as Kubernetes writes Secret data and kubeconfig *-data fields: the
// standard and the URL-safe alphabet, padding optional, whitespace skipped.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "sluice/common/result.h"

namespace sluice {

// `what` names the field for the error ("data.tls.crt").
inline Result<std::string> DecodeBase64(std::string_view in, std::string_view what) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z')
      return c - 'A';
    if (c >= 'a' && c <= 'z')
      return c - 'a' + 26;
    if (c >= '0' && c <= '9')
      return c - '0' + 52;
    if (c == '+' || c == '-')
      return 62;
    if (c == '/' || c == '_')
      return 63;
    return -1;
  };
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    if (c == '=' || c == '\n' || c == '\r' || c == ' ' || c == '\t')
      continue;
    int v = value(c);
    if (v < 0)
      return Fail(std::string(what) + ": not base64 (character '" + std::string(1, c) + "')");
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  return out;
}

}  // namespace sluice
