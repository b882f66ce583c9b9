// IP addresses as the data plane stores them (network-order bytes, family 4 or 6).
#pragma once

#include <array>
#include <compare>
#include <cstdint>
#include <string>
#include <string_view>

#include "sluice/common/result.h"

namespace sluice {

struct IpAddress {
  uint8_t family = 4;               // 4 or 6
  std::array<uint8_t, 16> bytes{};  // IPv4 uses the first 4

  [[nodiscard]] static Result<IpAddress> Parse(std::string_view text);
  [[nodiscard]] std::string ToString() const;
  [[nodiscard]] bool is_v4() const { return family == 4; }
  auto operator<=>(const IpAddress&) const = default;
};

// "10.0.0.1:80" or "[fd00::1]:80".
struct SocketAddress {
  IpAddress ip;
  uint16_t port = 0;

  [[nodiscard]] static Result<SocketAddress> Parse(std::string_view text);
  [[nodiscard]] std::string ToString() const;
  auto operator<=>(const SocketAddress&) const = default;
};

}  // namespace sluice
