// ServiceSpec -> the kernel records that represent it (pure; no syscalls).
//
// A service with VIPs of both families becomes one kernel service per family: a
// connect4 hook can only rewrite to an IPv4 endpoint, so each family gets its own
// backend set made of that family's endpoints.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "sluice/common/result.h"
#include "sluice/bpf_abi.h"
#include "sluice/loader/service.h"

namespace sluice {

struct EncodedCluster {
  std::vector<sluice_backend> slots;            // sluice_backends values, by slot index
  std::optional<std::vector<uint16_t>> maglev;  // consistent-hash table, if the policy uses one
};

struct EncodedService {
  uint8_t family = 4;
  sluice_service record{};                     // id and revision filled in
  std::vector<sluice_frontend_key> frontends;  // one per VIP of this family
  std::vector<EncodedCluster> clusters;
};

// Families present among the spec's VIPs (4, 6 or both).
[[nodiscard]] std::vector<uint8_t> Families(const ServiceSpec& spec);

// Encodes one family of a validated spec under the given id and revision.
[[nodiscard]] Result<EncodedService> Encode(const ServiceSpec& spec, uint8_t family, uint32_t id,
                                            uint32_t revision);

[[nodiscard]] sluice_frontend_key FrontendKey(const IpAddress& ip, uint16_t port,
                                              Protocol protocol);
[[nodiscard]] sluice_endpoint ToKernel(const SocketAddress& addr);
[[nodiscard]] SocketAddress FromKernel(const sluice_endpoint& ep);
[[nodiscard]] IpAddress FromKernel(const sluice_ip& ip, uint8_t family);

}  // namespace sluice
