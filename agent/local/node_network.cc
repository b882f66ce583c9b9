// The local cluster's node network: the two conflists pods are made with (bridge +
// host-local IPAM, then sluice-cni; the external hosts' network without it), the
// kube-proxy stand-in's NAT chain set up and torn down (its per-Service rules are written
// by Sync, apply.cc), and the machine's IP forwarding saved before `up` and put back by
// `down`.
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cluster_impl.h"
#include "sluice/local/derived.h"

namespace sluice::local {
namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

namespace {

constexpr const char* kNetwork = "sluice-local";
constexpr const char* kExternalNetwork = "sluice-external";

// The bridge plugin turns IP forwarding on for a gateway bridge (the host routes for the
// pods). `up` writes down what it was before, `down` puts it back.
constexpr const char* kForwardingSysctls[] = {"/proc/sys/net/ipv4/ip_forward",
                                              "/proc/sys/net/ipv6/conf/all/forwarding"};

std::string ReadSysctl(const std::string& path) {
  std::ifstream f(path);
  std::string v;
  f >> v;
  return v;
}

}  // namespace

std::string NatChain(const Settings& st) {
  return "SLUICE-LOCAL-" + st.bridge;
}

void SaveForwarding(const std::string& state_dir) {
  const std::string file = state_dir + "/forwarding.orig";
  if (fs::exists(file))
    return;  // an earlier `up` of this cluster saw the machine's own values
  std::ofstream f(file);
  for (const char* path : kForwardingSysctls)
    if (std::string v = ReadSysctl(path); !v.empty())
      f << path << " " << v << "\n";
}

void RestoreForwarding(const std::string& state_dir, std::ostream& out,
                       std::vector<std::string>& problems) {
  std::ifstream f(state_dir + "/forwarding.orig");
  std::string path, value;
  while (f >> path >> value) {
    if (ReadSysctl(path) == value)
      continue;
    std::ofstream w(path);
    if (!(w << value << "\n").flush())
      problems.push_back("restoring " + path + " to " + value);
    else
      out << "restored " << path << " to " << value << "\n";
  }
}

Result<void> Cluster::Impl::WriteConflists() {
  auto net = ParseSubnet16(s.settings.pod_subnet, "pod subnet");
  SLUICE_RETURN_IF_ERROR(net);
  auto bridge = [&](const std::string& start, const std::string& end) {
    return ojson{{"type", "bridge"},
                 {"bridge", s.settings.bridge},
                 {"isGateway", true},
                 {"ipMasq", false},
                 {"hairpinMode", true},
                 {"ipam",
                  {{"type", "host-local"},
                   {"ranges", ojson::array({ojson::array({{{"subnet", net->Cidr()},
                                                           {"rangeStart", start},
                                                           {"rangeEnd", end},
                                                           {"gateway", net->Address(0, 1)}}})})},
                   {"routes", ojson::array({{{"dst", "0.0.0.0/0"}}})},
                   {"dataDir", StateDir() + "/cni/ipam"}}}};
  };
  ojson pods = {{"cniVersion", "1.0.0"},
                {"name", kNetwork},
                {"plugins", ojson::array({bridge(net->Address(0, 2), net->Address(254, 254)),
                                          {{"type", "sluice-cni"},
                                           {"agentSocket", StateDir() + "/cni.sock"},
                                           {"agentTimeoutMs", 5000}}})}};
  ojson ext = {{"cniVersion", "1.0.0"},
               {"name", kExternalNetwork},
               {"plugins", ojson::array({bridge(net->Address(255, 2), net->Address(255, 254))})}};
  if (auto r = WriteFileAtomic(Conflist(), pods.dump(2) + "\n"); !r)
    return r;
  return WriteFileAtomic(ExternalConflist(), ext.dump(2) + "\n");
}

Result<void> Cluster::Impl::SetUpNat() {
  std::string chain = NatChain(s.settings);
  (void)RunTool({"iptables", "-w", "-t", "nat", "-N", chain});
  std::vector<std::vector<std::string>> rules = {
      {"PREROUTING", "-s", s.settings.pod_subnet, "-j", chain},
      {"POSTROUTING", "-s", s.settings.pod_subnet, "-d", s.settings.pod_subnet, "-m", "conntrack",
       "--ctstate", "DNAT", "-m", "comment", "--comment", chain, "-j", "MASQUERADE"}};
  for (const auto& rule : rules) {
    std::vector<std::string> check = {"iptables", "-w", "-t", "nat", "-C"};
    check.insert(check.end(), rule.begin(), rule.end());
    if (RunTool(check))
      continue;
    std::vector<std::string> add = {"iptables", "-w", "-t", "nat", "-A"};
    add.insert(add.end(), rule.begin(), rule.end());
    SLUICE_RETURN_IF_ERROR_CTX(RunTool(add), "kube-proxy stand-in");
  }
  return {};
}

void Cluster::Impl::TearDownNat(const Settings& st, std::vector<std::string>& problems) {
  std::string chain = NatChain(st);
  std::vector<std::vector<std::string>> rules = {
      {"PREROUTING", "-s", st.pod_subnet, "-j", chain},
      {"POSTROUTING", "-s", st.pod_subnet, "-d", st.pod_subnet, "-m", "conntrack", "--ctstate",
       "DNAT", "-m", "comment", "--comment", chain, "-j", "MASQUERADE"}};
  for (const auto& rule : rules) {
    std::vector<std::string> del = {"iptables", "-w", "-t", "nat", "-D"};
    del.insert(del.end(), rule.begin(), rule.end());
    while (RunTool(del)) {
    }
  }
  (void)RunTool({"iptables", "-w", "-t", "nat", "-F", chain});
  (void)RunTool({"iptables", "-w", "-t", "nat", "-X", chain});
  if (RunTool({"iptables", "-w", "-t", "nat", "-S", chain}))
    problems.push_back("NAT chain " + chain + " is still there");
}

}  // namespace sluice::local
