#include "sluice/local/derived.h"

#include <arpa/inet.h>

#include <functional>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

namespace sluice::local {
namespace {

// YAML double-quoted scalar (JSON strings are valid YAML).
std::string Q(const std::string& s) {
  return nlohmann::json(s).dump();
}

void LabelsBlock(std::ostringstream& o, const Labels& labels, const std::string& indent) {
  if (labels.empty()) {
    o << indent << "labels: {}\n";
    return;
  }
  o << indent << "labels:\n";
  for (const auto& [k, v] : labels)
    o << indent << "  " << Q(k) << ": " << Q(v) << "\n";
}

}  // namespace

std::string Subnet16::Address(unsigned c, unsigned d) const {
  return std::to_string(a) + "." + std::to_string(b) + "." + std::to_string(c) + "." +
         std::to_string(d);
}

std::string Subnet16::Cidr() const {
  return Address(0, 0) + "/16";
}

Result<Subnet16> ParseSubnet16(const std::string& cidr, const std::string& what) {
  auto slash = cidr.find('/');
  in_addr addr{};
  if (slash == std::string::npos || cidr.substr(slash) != "/16" ||
      inet_pton(AF_INET, cidr.substr(0, slash).c_str(), &addr) != 1)
    return Fail(what + " \"" + cidr + "\": expected an IPv4 /16 such as 10.244.0.0/16");
  uint32_t v = ntohl(addr.s_addr);
  if ((v & 0xffff) != 0)
    return Fail(what + " \"" + cidr + "\": host bits set (expected A.B.0.0/16)");
  return Subnet16{v >> 24, (v >> 16) & 0xff};
}

Result<std::string> AllocateVip(const ClusterState& s, const std::string& wanted) {
  auto net = ParseSubnet16(s.settings.service_subnet, "service subnet");
  SLUICE_RETURN_IF_ERROR(net);
  std::set<std::string> used;
  for (const auto& svc : s.services)
    used.insert(svc.cluster_ip);
  if (!wanted.empty()) {
    in_addr addr{};
    if (inet_pton(AF_INET, wanted.c_str(), &addr) != 1)
      return Fail("spec.clusterIP: \"" + wanted + "\" is not an IPv4 address");
    uint32_t v = ntohl(addr.s_addr);
    if ((v >> 24) != net->a || ((v >> 16) & 0xff) != net->b)
      return Fail("spec.clusterIP: " + wanted + " is outside the service subnet " + net->Cidr());
    if ((v & 0xffff) <= 1 || (v & 0xffff) == 0xffff)
      return Fail("spec.clusterIP: " + wanted + " is reserved");
    if (used.contains(wanted))
      return Fail("spec.clusterIP: " + wanted + " is already allocated");
    return wanted;
  }
  for (unsigned i = 2; i < 0xffff; ++i) {
    std::string ip = net->Address(i >> 8, i & 0xff);
    if (!used.contains(ip))
      return ip;
  }
  return Fail("service subnet " + net->Cidr() + " is full");
}

std::string PodNameFor(const std::string& deployment, unsigned seed) {
  static constexpr char kAlphabet[] = "bcdfghjklmnpqrstvwxz2456789";
  std::string out = deployment + "-";
  uint64_t x = seed * 6364136223846793005ULL + 1442695040888963407ULL;
  for (int i = 0; i < 5; ++i) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    out += kAlphabet[(x >> 33) % (sizeof(kAlphabet) - 1)];
  }
  return out;
}

bool SelectorMatches(const Labels& selector, const Labels& labels) {
  if (selector.empty())
    return false;  // a Service without a selector has no automatic endpoints
  for (const auto& [k, v] : selector) {
    auto it = labels.find(k);
    if (it == labels.end() || it->second != v)
      return false;
  }
  return true;
}

std::vector<Endpoint> EndpointsFor(const ClusterState& s, const ServiceRec& svc,
                                   const ServicePortRec& port,
                                   const std::function<bool(const PodRec&)>& ready) {
  std::vector<Endpoint> out;
  for (const auto& p : s.pods) {
    if (p.ns != svc.ns || p.ip.empty() || !SelectorMatches(svc.selector, p.labels) || !ready(p))
      continue;
    int target = port.target_port;
    if (!port.target_port_name.empty()) {
      target = 0;
      for (const auto& cp : p.ports)
        if (cp.name == port.target_port_name)
          target = cp.port;
      if (target == 0)
        continue;
    }
    out.push_back({p.name, p.ip, target});
  }
  return out;
}

std::string HostsFile(const ClusterState& s, const std::string& ns, const std::string& name,
                      const std::string& ip) {
  std::ostringstream o;
  o << "# Written by sluicectl local: this pod's view of the cluster's names.\n"
    << "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";
  if (!ip.empty())
    o << ip << "\t" << name << "\n";
  for (const auto& svc : s.services) {
    if (svc.cluster_ip.empty() || svc.cluster_ip == "None")
      continue;
    o << svc.cluster_ip << "\t" << svc.name << "." << svc.ns << ".svc.cluster.local " << svc.name
      << "." << svc.ns << ".svc " << svc.name << "." << svc.ns;
    if (svc.ns == ns)
      o << " " << svc.name;
    o << "\n";
  }
  for (const auto& h : s.external_hosts) {
    if (h.pod.ip.empty())
      continue;
    o << h.pod.ip << "\t";
    for (std::size_t i = 0; i < h.hostnames.size(); ++i)
      o << (i ? " " : "") << h.hostnames[i];
    o << "\n";
  }
  return o.str();
}

std::string NamespacesYaml(const ClusterState& s) {
  std::ostringstream o;
  o << "# Written by sluicectl local: the cluster's namespaces.\n";
  for (const auto& n : s.namespaces) {
    o << "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: " << Q(n.name) << "\n";
    LabelsBlock(o, n.labels, "  ");
  }
  return o.str();
}

std::string ServicesYaml(const ClusterState& s) {
  std::ostringstream o;
  o << "# Written by sluicectl local: the cluster's Services with their VIPs.\n";
  for (const auto& svc : s.services) {
    o << "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: " << Q(svc.name)
      << "\n  namespace: " << Q(svc.ns) << "\n";
    LabelsBlock(o, svc.labels, "  ");
    o << "spec:\n  clusterIP: " << Q(svc.cluster_ip) << "\n  selector:";
    if (svc.selector.empty())
      o << " {}";
    o << "\n";
    for (const auto& [k, v] : svc.selector)
      o << "    " << Q(k) << ": " << Q(v) << "\n";
    o << "  ports:\n";
    for (const auto& p : svc.ports) {
      o << "  - port: " << p.port << "\n    protocol: " << p.protocol << "\n";
      if (!p.name.empty())
        o << "    name: " << Q(p.name) << "\n";
      if (!p.target_port_name.empty())
        o << "    targetPort: " << Q(p.target_port_name) << "\n";
      else
        o << "    targetPort: " << p.target_port << "\n";
    }
  }
  return o.str();
}

std::string PodsYaml(const ClusterState& s, const std::function<bool(const PodRec&)>& ready) {
  std::ostringstream o;
  o << "# Written by sluicectl local: the running pods and their addresses.\n";
  for (const auto& p : s.pods) {
    if (p.ip.empty() || !ready(p))
      continue;
    o << "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: " << Q(p.name)
      << "\n  namespace: " << Q(p.ns) << "\n";
    LabelsBlock(o, p.labels, "  ");
    o << "spec:\n  hostNetwork: " << (p.host_network ? "true" : "false") << "\n  containers:\n";
    for (const auto& c : p.containers) {
      o << "  - name: " << Q(c.name) << "\n    image: " << Q(c.image) << "\n";
      if (&c == &p.containers.front() && !p.ports.empty()) {
        o << "    ports:\n";
        for (const auto& cp : p.ports) {
          o << "    - containerPort: " << cp.port << "\n";
          if (!cp.name.empty())
            o << "      name: " << Q(cp.name) << "\n";
        }
      }
    }
    o << "status:\n  podIP: " << Q(p.ip) << "\n";
  }
  return o.str();
}

std::string LabelsJson(const ClusterState& s) {
  nlohmann::json j{{"namespaces", nlohmann::json::object()}, {"pods", nlohmann::json::object()}};
  for (const auto& n : s.namespaces)
    j["namespaces"][n.name] = n.labels;
  for (const auto& p : s.pods) {
    auto& pod = j["pods"][p.ns + "/" + p.name];
    pod = {{"labels", p.labels}, {"hostNetwork", p.host_network}};
    // The agent's enrolment rule reads Istio's injection annotations (a grpc-agent pod is
    // proxyless).
    if (!p.annotations.empty())
      pod["annotations"] = p.annotations;
  }
  return j.dump(1) + "\n";
}

std::string NatRules(const ClusterState& s, const std::string& chain,
                     const std::function<bool(const PodRec&)>& ready) {
  std::ostringstream o;
  // Declaring the chain in a --noflush restore empties it first: the rules are replaced
  // as one transaction, never seen half-written.
  o << "*nat\n:" << chain << " - [0:0]\n";
  for (const auto& svc : s.services) {
    if (svc.cluster_ip.empty() || svc.cluster_ip == "None")
      continue;
    for (const auto& port : svc.ports) {
      auto eps = EndpointsFor(s, svc, port, ready);
      std::string proto = port.protocol == "UDP" ? "udp" : port.protocol == "SCTP" ? "sctp" : "tcp";
      for (std::size_t i = 0; i < eps.size(); ++i) {
        o << "-A " << chain << " -d " << svc.cluster_ip << "/32 -p " << proto << " --dport "
          << port.port << " -m comment --comment \"" << svc.ns << "/" << svc.name << ":"
          << port.port << "\"";
        // Each rule takes its share of what the rules before it left: uniform overall.
        std::size_t left = eps.size() - i;
        if (left > 1) {
          char prob[32];
          std::snprintf(prob, sizeof(prob), "%.6f", 1.0 / static_cast<double>(left));
          o << " -m statistic --mode random --probability " << prob;
        }
        o << " -j DNAT --to-destination " << eps[i].ip << ":" << eps[i].port << "\n";
      }
    }
  }
  o << "COMMIT\n";
  return o.str();
}

}  // namespace sluice::local
