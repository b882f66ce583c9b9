#include "sluice/loader/encoding.h"

#include <cstring>

#include "sluice/loader/lb_tables.h"

namespace sluice {

std::vector<uint8_t> Families(const ServiceSpec& spec) {
  bool v4 = false, v6 = false;
  for (const auto& ip : spec.vips)
    (ip.is_v4() ? v4 : v6) = true;
  std::vector<uint8_t> out;
  if (v4)
    out.push_back(4);
  if (v6)
    out.push_back(6);
  return out;
}

sluice_frontend_key FrontendKey(const IpAddress& ip, uint16_t port, Protocol protocol) {
  sluice_frontend_key k{};
  std::memcpy(k.ip.v6, ip.bytes.data(), 16);
  k.port = port;
  k.family = ip.family;
  k.protocol = static_cast<uint8_t>(protocol);
  return k;
}

sluice_endpoint ToKernel(const SocketAddress& addr) {
  sluice_endpoint ep{};
  std::memcpy(ep.ip.v6, addr.ip.bytes.data(), 16);
  ep.port = addr.port;
  ep.family = addr.ip.family;
  return ep;
}

IpAddress FromKernel(const sluice_ip& ip, uint8_t family) {
  IpAddress out;
  out.family = family;
  std::memcpy(out.bytes.data(), ip.v6, family == 6 ? 16 : 4);
  return out;
}

SocketAddress FromKernel(const sluice_endpoint& ep) {
  return SocketAddress{FromKernel(ep.ip, ep.family), ep.port};
}

Result<EncodedService> Encode(const ServiceSpec& spec, uint8_t family, uint32_t id,
                              uint32_t revision) {
  EncodedService out;
  out.family = family;
  auto& r = out.record;
  r.id = id;
  r.revision = revision;
  r.n_clusters = static_cast<uint8_t>(spec.clusters.size());
  r.flags = spec.redirect_to_proxy ? SLUICE_SVC_REDIRECT : 0;
  r.l7_reason = spec.redirect_to_proxy ? static_cast<uint8_t>(spec.l7_reason) : 0;
  std::strncpy(r.name, spec.name.c_str(), sizeof(r.name) - 1);

  for (const auto& ip : spec.vips) {
    if (ip.family == family)
      out.frontends.push_back(FrontendKey(ip, spec.port, spec.protocol));
  }

  std::vector<uint32_t> weights;
  for (const auto& c : spec.clusters)
    weights.push_back(c.weight);
  auto ends = CumulativeWeights(weights);
  SLUICE_RETURN_IF_ERROR_CTX(ends, "service '" + spec.name + "': clusters");
  r.total_weight = ends->empty() ? 0 : ends->back();

  for (size_t c = 0; c < spec.clusters.size(); c++) {
    const auto& cl = spec.clusters[c];
    std::vector<const EndpointSpec*> eps;
    for (const auto& e : cl.endpoints)
      if (e.address.ip.family == family)
        eps.push_back(&e);

    EncodedCluster enc;
    std::vector<uint32_t> ep_weights;
    for (const auto* e : eps)
      ep_weights.push_back(e->weight);
    const bool hashed = cl.lb == LbPolicy::kMaglev || cl.lb == LbPolicy::kRingHash;
    if (hashed) {
      // Consistent hashing: one slot per endpoint; weights live in the table.
      std::vector<std::string> names;
      for (const auto* e : eps) {
        enc.slots.push_back(sluice_backend{ToKernel(e->address)});
        names.push_back(e->address.ToString());
      }
      if (!eps.empty())
        enc.maglev = BuildMaglevTable(names, ep_weights, SLUICE_MAGLEV_SIZE);
    } else {
      for (uint16_t i : WeightedSlots(ep_weights, SLUICE_MAX_BACKENDS))
        enc.slots.push_back(sluice_backend{ToKernel(eps[i]->address)});
    }
    r.clusters[c].weight_end = (*ends)[c];
    r.clusters[c].n_backends = static_cast<uint16_t>(enc.slots.size());
    r.clusters[c].lb_policy = static_cast<uint8_t>(cl.lb);
    out.clusters.push_back(std::move(enc));
  }
  return out;
}

}  // namespace sluice
