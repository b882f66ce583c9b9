#include "sluice/filterchain/match.h"

#include <algorithm>

namespace sluice::filterchain {
namespace {

// How a chain meets one criterion: unset (0: matches any value, when nothing matches
// more specifically), not at all (-1), or with a specificity (> 0, more is better).
constexpr int kUnset = 0;
constexpr int kNo = -1;

int PrefixScore(const std::vector<Prefix>& ranges, const IpAddress& a) {
  if (ranges.empty())
    return kUnset;
  int best = kNo;
  for (const Prefix& p : ranges) {
    if (p.Contains(a))
      best = std::max(best, static_cast<int>(p.length) + 1);
  }
  return best;
}

// One criterion over the chains still in the running. `known`: the fact it reads is
// there. Returns false when the choice stops here undecided (the fact is unknown and a
// chain sets the criterion); `in` is then every chain still possible.
template <class Sets, class Score>
bool Narrow(std::vector<std::size_t>& in, std::span<const Match> chains, bool known, Sets sets,
            Score score) {
  if (!known) {
    return std::none_of(in.begin(), in.end(), [&](std::size_t i) { return sets(chains[i]); });
  }
  int best = kNo;
  std::vector<int> scores(in.size());
  for (std::size_t k = 0; k < in.size(); ++k) {
    const Match& m = chains[in[k]];
    scores[k] = sets(m) ? score(m) : kUnset;
    best = std::max(best, scores[k]);
  }
  std::vector<std::size_t> kept;
  if (best != kNo) {
    for (std::size_t k = 0; k < in.size(); ++k) {
      if (scores[k] == best)
        kept.push_back(in[k]);
    }
  }
  in = std::move(kept);
  return true;
}

bool IsLoopback(const IpAddress& a) {
  if (a.is_v4())
    return a.bytes[0] == 127;
  IpAddress one{};
  one.family = 6;
  one.bytes[15] = 1;
  return a == one;
}

}  // namespace

Result<Prefix> Prefix::Make(std::string_view address, std::optional<uint32_t> length) {
  auto ip = IpAddress::Parse(address);
  if (!ip)
    return Fail("\"" + std::string(address) + "\" is not an IP address");
  Prefix p{*ip, 0};
  const uint32_t max = ip->is_v4() ? 32 : 128;
  p.length = length.value_or(max);
  if (p.length > max)
    return Fail("prefix length " + std::to_string(p.length) + " is too long for " +
                std::string(address));
  return p;
}

bool Prefix::Contains(const IpAddress& a) const {
  if (a.family != address.family)
    return false;
  const uint32_t full = length / 8, rest = length % 8;
  if (!std::equal(a.bytes.begin(), a.bytes.begin() + full, address.bytes.begin()))
    return false;
  if (rest == 0)
    return true;
  const auto mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (a.bytes[full] & mask) == (address.bytes[full] & mask);
}

std::string Prefix::ToString() const {
  return address.ToString() + "/" + std::to_string(length);
}

std::vector<std::size_t> Select(std::span<const Match> chains, const Connection& c, bool* decided) {
  bool scratch = true;
  bool& final_answer = decided ? *decided : scratch;
  final_answer = true;
  std::vector<std::size_t> in(chains.size());
  for (std::size_t i = 0; i < in.size(); ++i)
    in[i] = i;
  // One criterion; true when the walk stops here (nothing left, or the criterion is
  // undecided for want of its fact).
  auto stop = [&](bool known, auto sets, auto score) {
    if (!Narrow(in, chains, known, sets, score)) {
      final_answer = false;
      return true;
    }
    return in.empty();
  };

  if (stop(
          true, [](const Match& m) { return m.destination_port != 0; },
          [&](const Match& m) { return m.destination_port == c.destination_port ? 1 : kNo; }))
    return in;
  if (stop(
          true, [](const Match& m) { return !m.prefix_ranges.empty(); },
          [&](const Match& m) { return PrefixScore(m.prefix_ranges, c.destination); }))
    return in;
  if (stop(
          c.server_name.has_value(), [](const Match& m) { return !m.server_names.empty(); },
          [&](const Match& m) { return ServerNameScore(m.server_names, *c.server_name); }))
    return in;
  if (stop(
          c.transport_protocol.has_value(),
          [](const Match& m) { return !m.transport_protocol.empty(); },
          [&](const Match& m) { return m.transport_protocol == *c.transport_protocol ? 1 : kNo; }))
    return in;
  // ALPN: the first of the client's protocols that some chain names decides; then the
  // chains naming none.
  std::string chosen;
  if (c.application_protocols) {
    for (const std::string& p : *c.application_protocols) {
      for (std::size_t i : in) {
        const auto& aps = chains[i].application_protocols;
        if (std::find(aps.begin(), aps.end(), p) != aps.end()) {
          chosen = p;
          break;
        }
      }
      if (!chosen.empty())
        break;
    }
  }
  if (stop(
          c.application_protocols.has_value(),
          [](const Match& m) { return !m.application_protocols.empty(); },
          [&](const Match& m) {
            return !chosen.empty() &&
                           std::find(m.application_protocols.begin(), m.application_protocols.end(),
                                     chosen) != m.application_protocols.end()
                       ? 1
                       : kNo;
          }))
    return in;
  if (stop(
          c.direct_source.has_value(),
          [](const Match& m) { return !m.direct_source_prefix_ranges.empty(); },
          [&](const Match& m) {
            return PrefixScore(m.direct_source_prefix_ranges, *c.direct_source);
          }))
    return in;
  if (stop(
          c.source.has_value(), [](const Match& m) { return m.source_type != SourceType::kAny; },
          [&](const Match& m) {
            const bool local = *c.source == c.destination || IsLoopback(*c.source);
            return (m.source_type == SourceType::kSameIpOrLoopback) == local ? 1 : kNo;
          }))
    return in;
  if (stop(
          c.source.has_value(), [](const Match& m) { return !m.source_prefix_ranges.empty(); },
          [&](const Match& m) { return PrefixScore(m.source_prefix_ranges, *c.source); }))
    return in;
  stop(
      c.source_port.has_value(), [](const Match& m) { return !m.source_ports.empty(); },
      [&](const Match& m) {
        return std::find(m.source_ports.begin(), m.source_ports.end(), *c.source_port) !=
                       m.source_ports.end()
                   ? 1
                   : kNo;
      });
  return in;
}

int ServerNameScore(const std::vector<std::string>& names, std::string_view sni) {
  if (names.empty())
    return kUnset;
  int best = kNo;
  for (const std::string& n : names) {
    if (n == sni && !sni.empty())
      return 1 << 20;  // exact beats every wildcard
    if (n.starts_with("*.") && sni.size() > n.size() - 1 &&
        sni.ends_with(std::string_view(n).substr(1)))
      best = std::max(best, static_cast<int>(n.size()));  // the longest suffix wins
  }
  return best;
}

}  // namespace sluice::filterchain
