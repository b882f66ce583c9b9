#include "sluice/filterchain/envoy.h"

namespace sluice::filterchain {
namespace {

using envoy::config::listener::v3::FilterChainMatch;

template <class Ranges>
Result<std::vector<Prefix>> Prefixes(const Ranges& ranges, const char* field) {
  std::vector<Prefix> out;
  for (const auto& r : ranges) {
    auto p = Prefix::Make(r.address_prefix(), r.has_prefix_len()
                                                  ? std::optional<uint32_t>(r.prefix_len().value())
                                                  : std::nullopt);
    SLUICE_RETURN_IF_ERROR_CTX(p, field);
    out.push_back(*p);
  }
  return out;
}

}  // namespace

Result<Match> FromEnvoy(const FilterChainMatch& f) {
  Match m;
  m.destination_port = f.has_destination_port() ? f.destination_port().value() : 0;
  auto dst = Prefixes(f.prefix_ranges(), "prefix_ranges");
  auto direct = Prefixes(f.direct_source_prefix_ranges(), "direct_source_prefix_ranges");
  auto src = Prefixes(f.source_prefix_ranges(), "source_prefix_ranges");
  SLUICE_RETURN_IF_ERROR(dst);
  SLUICE_RETURN_IF_ERROR(direct);
  SLUICE_RETURN_IF_ERROR(src);
  m.prefix_ranges = std::move(*dst);
  m.direct_source_prefix_ranges = std::move(*direct);
  m.source_prefix_ranges = std::move(*src);
  for (const auto& n : f.server_names()) {
    std::string lower = n;
    for (char& ch : lower)
      ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    m.server_names.push_back(std::move(lower));
  }
  m.transport_protocol = f.transport_protocol();
  m.application_protocols.assign(f.application_protocols().begin(),
                                 f.application_protocols().end());
  switch (f.source_type()) {
    case FilterChainMatch::SAME_IP_OR_LOOPBACK:
      m.source_type = SourceType::kSameIpOrLoopback;
      break;
    case FilterChainMatch::EXTERNAL:
      m.source_type = SourceType::kExternal;
      break;
    default:
      break;
  }
  m.source_ports.assign(f.source_ports().begin(), f.source_ports().end());
  return m;
}

}  // namespace sluice::filterchain
