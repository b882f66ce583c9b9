// Decoder of ServiceEntry: hosts, addresses, ports, location, resolution and endpoints,
// with the rules that tie resolution to endpoints (STATIC needs IPs, NONE none, DNS with
// a wildcard host needs endpoints).
#include <set>

#include "loader/decode.h"

namespace sluice::istio::detail {

ServiceEntry DecodeServiceEntry(const Field& doc, const Meta& meta) {
  ServiceEntry se;
  se.meta = meta;
  Field spec = doc["spec"];
  se.hosts = spec["hosts"].StrList();
  CheckHosts(spec["hosts"], se.hosts, false);
  if (se.hosts.empty())
    spec["hosts"].Error("required");
  se.addresses = spec["addresses"].StrList();
  for (std::size_t i = 0; i < se.addresses.size(); ++i) {
    if (!IsIpOrCidr(se.addresses[i])) {
      spec["addresses"].List()[i].Error("must be an IP address or CIDR range (got \"" +
                                        se.addresses[i] + "\")");
    }
  }
  se.export_to = spec["exportTo"].StrList();
  std::set<std::string> names;
  std::set<uint32_t> numbers;
  for (auto& pf : spec["ports"].List()) {
    ServiceEntryPort p;
    if (!pf["number"].present())
      pf["number"].Error("required");
    p.number = pf["number"].Port().value_or(0);
    p.name = pf["name"].Required();
    p.protocol = Upper(pf["protocol"].StrOr("TCP"));
    p.target_port = pf["targetPort"].Port().value_or(0);
    if (!p.name.empty() && !names.insert(p.name).second) {
      pf["name"].Error("duplicate port name \"" + p.name + "\"");
    }
    if (p.number != 0 && !numbers.insert(p.number).second) {
      pf["number"].Error("duplicate port number " + std::to_string(p.number));
    }
    se.ports.push_back(std::move(p));
  }
  auto location = spec["location"].StrOr("MESH_EXTERNAL");
  if (location == "MESH_EXTERNAL") {
    se.location = ServiceEntry::Location::kMeshExternal;
  } else if (location == "MESH_INTERNAL") {
    se.location = ServiceEntry::Location::kMeshInternal;
  } else {
    spec["location"].Error("must be MESH_EXTERNAL or MESH_INTERNAL (got \"" + location + "\")");
  }
  auto resolution = spec["resolution"].StrOr("NONE");
  if (resolution == "NONE") {
    se.resolution = ServiceEntry::Resolution::kNone;
  } else if (resolution == "STATIC") {
    se.resolution = ServiceEntry::Resolution::kStatic;
  } else if (resolution == "DNS") {
    se.resolution = ServiceEntry::Resolution::kDns;
  } else if (resolution == "DNS_ROUND_ROBIN") {
    se.resolution = ServiceEntry::Resolution::kDnsRoundRobin;
  } else {
    spec["resolution"].Error("must be NONE, STATIC, DNS or DNS_ROUND_ROBIN (got \"" + resolution +
                             "\")");
  }
  for (auto& ef : spec["endpoints"].List()) {
    WorkloadEntry we;
    we.address = ef["address"].Required();
    we.labels = ef["labels"].StrMap();
    for (auto& [k, v] : ef["ports"].Entries())
      we.ports[k] = v.Port().value_or(0);
    we.weight = static_cast<uint32_t>(ef["weight"].Int(0, 1 << 24).value_or(0));
    se.endpoints.push_back(std::move(we));
  }
  if (se.resolution == ServiceEntry::Resolution::kStatic) {
    auto eps = spec["endpoints"].List();
    for (std::size_t i = 0; i < se.endpoints.size() && i < eps.size(); ++i) {
      if (!IsIpOrCidr(se.endpoints[i].address) ||
          se.endpoints[i].address.find('/') != std::string::npos) {
        eps[i]["address"].Error("must be an IP address when resolution is STATIC (got \"" +
                                se.endpoints[i].address + "\")");
      }
    }
  }
  if (se.resolution == ServiceEntry::Resolution::kNone && !se.endpoints.empty()) {
    spec["endpoints"].Error("must be empty when resolution is NONE");
  }
  if (se.resolution == ServiceEntry::Resolution::kDns && se.endpoints.empty()) {
    for (std::size_t i = 0; i < se.hosts.size(); ++i) {
      if (se.hosts[i].starts_with("*")) {
        spec["hosts"].List()[i].Error("wildcard host needs endpoints when resolution is DNS");
      }
    }
  }
  return se;
}

}  // namespace sluice::istio::detail
