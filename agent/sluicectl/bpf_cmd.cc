// `sluicectl bpf …`: load, inspect, edit and remove the kernel data plane directly.
//
// `load` attaches the programs and exits: the pinned links keep them working. Every
// other subcommand opens only the pinned maps, so it never disturbs the hooks.
#include <fmt/format.h>

#include <net/if.h>

#include <iostream>
#include <string>
#include <vector>

#include "cli.h"
#include "commands.h"
#include "sluice/loader/dataplane.h"
#include "sluice/loader/encoding.h"
#include "sluice/loader/system.h"

namespace sluice::ctl {
namespace {

struct BpfFlags {
  std::string pin_root = "/sys/fs/bpf/sluice";
  std::string cgroup_root;
  MapSizes sizes;
  std::string kernel_fallback;
};

std::unique_ptr<Dataplane> OpenMaps(const BpfFlags& f) {
  DataplaneOptions o;
  o.pin_root = f.pin_root;
  o.maps_only = true;
  auto dp = Dataplane::Open(o);
  if (!dp)
    Die("", dp.error().message);
  return std::move(*dp);
}

// "weight=25,lb=ROUND_ROBIN,name=v1,ep=10.0.0.1:80,ep=10.0.0.2:80*3"
Result<ClusterSpec> ParseCluster(const std::string& text) {
  ClusterSpec c;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos)
      end = text.size();
    std::string item = text.substr(start, end - start);
    start = end + 1;
    if (item.empty())
      continue;
    auto eq = item.find('=');
    if (eq == std::string::npos)
      return Fail("--cluster '" + text + "': '" + item + "' is not key=value");
    std::string key = item.substr(0, eq), value = item.substr(eq + 1);
    if (key == "weight") {
      try {
        c.weight = static_cast<uint32_t>(std::stoul(value));
      } catch (...) {
        return Fail("--cluster '" + text + "': weight '" + value + "' is not a number");
      }
    } else if (key == "lb") {
      auto lb = ParseLbPolicy(value);
      SLUICE_RETURN_IF_ERROR_CTX(lb, "--cluster '" + text + "'");
      c.lb = *lb;
    } else if (key == "name") {
      c.name = value;
    } else if (key == "ep") {
      EndpointSpec ep;
      auto star = value.find('*');
      if (star != std::string::npos) {
        try {
          ep.weight = static_cast<uint32_t>(std::stoul(value.substr(star + 1)));
        } catch (...) {
          return Fail("--cluster '" + text + "': endpoint weight in '" + value +
                      "' is not a number");
        }
        value = value.substr(0, star);
      }
      auto addr = SocketAddress::Parse(value);
      SLUICE_RETURN_IF_ERROR_CTX(addr, "--cluster '" + text + "'");
      ep.address = *addr;
      c.endpoints.push_back(ep);
    } else {
      return Fail("--cluster '" + text + "': unknown key '" + key +
                  "' (expected weight, lb, name, ep)");
    }
  }
  return c;
}

std::string Frontend(const sluice_frontend_key& k) {
  return SocketAddress{FromKernel(k.ip, k.family), k.port}.ToString() +
         (k.protocol == 17 ? "/UDP" : "/TCP");
}

void DumpServices(Dataplane& dp) {
  auto services = dp.Services();
  if (!services)
    Die("", services.error().message);
  std::cout << fmt::format("{:<40} {:<24} {:>4} {:>4}  {}\n", "SERVICE", "FRONTEND", "ID", "REV",
                           "CLUSTERS (weight share, policy: backends)");
  for (const auto& s : *services) {
    std::string fe;
    for (const auto& k : s.frontends)
      fe += (fe.empty() ? "" : " ") + Frontend(k);
    if (s.redirect_to_proxy) {
      std::cout << fmt::format("{:<40} {:<24} {:>4} {:>4}  L7: to the pod's in-pod proxy ({})\n",
                               s.name, fe, s.id, s.revision, L7ReasonName(s.l7_reason));
      continue;
    }
    uint32_t prev = 0;
    uint32_t total = s.clusters.empty() ? 0 : s.clusters.back().weight_end;
    for (size_t c = 0; c < s.clusters.size(); c++) {
      const auto& cl = s.clusters[c];
      double share = total ? 100.0 * (cl.weight_end - prev) / total : 0;
      prev = cl.weight_end;
      std::string eps;
      for (const auto& b : s.backends[c])
        eps += (eps.empty() ? "" : " ") + b.ToString();
      std::cout << fmt::format(
          "{:<40} {:<24} {:>4} {:>4}  #{} {:.1f}% {}: {}\n", c == 0 ? s.name : "", c == 0 ? fe : "",
          c == 0 ? std::to_string(s.id) : "", c == 0 ? std::to_string(s.revision) : "", c, share,
          LbPolicyName(static_cast<LbPolicy>(cl.lb_policy)),
          eps.empty() ? "(none: connects are refused)" : eps);
    }
  }
}

void DumpEndpoints(Dataplane& dp) {
  auto eps = dp.Endpoints();
  if (!eps)
    Die("", eps.error().message);
  std::cout << fmt::format("{:<28} {:>8} {:>10}\n", "ENDPOINT", "ACTIVE", "TOTAL");
  for (const auto& e : *eps)
    std::cout << fmt::format("{:<28} {:>8} {:>10}\n", e.endpoint.ToString(), e.active, e.total);
}

void DumpEnrolment(Dataplane& dp) {
  auto en = dp.Enrolled();
  if (!en)
    Die("", en.error().message);
  std::cout << fmt::format("{:<20} {:<16} {:<24} {:<11} {}\n", "NETNS COOKIE", "POD IPV4",
                           "POD IPV6", "PROXY PORT", "OUTBOUND POLICY");
  for (const auto& [cookie, info] : *en)
    std::cout << fmt::format("{:<20} {:<16} {:<24} {:<11} {}\n", cookie, info.ip4.ToString(),
                             info.ip6.ToString(),
                             info.proxy_port ? std::to_string(info.proxy_port) : "-",
                             info.registry_only ? "REGISTRY_ONLY" : "ALLOW_ANY");
}

void DumpPods(Dataplane& dp) {
  auto pods = dp.Pods();
  if (!pods)
    Die("", pods.error().message);
  std::cout << fmt::format("{:<20} {:<14} {:>12} {:>14} {:>12} {:>14} {:>8}\n", "INTERFACE",
                           "POLICY", "FROM PKTS", "FROM BYTES", "TO PKTS", "TO BYTES", "DENIED");
  for (const auto& [ifindex, s] : *pods) {
    char name[IF_NAMESIZE] = {};
    std::string iface = if_indextoname(static_cast<unsigned>(ifindex), name)
                            ? fmt::format("{} ({})", name, ifindex)
                            : fmt::format("ifindex {}", ifindex);
    std::cout << fmt::format("{:<20} {:<14} {:>12} {:>14} {:>12} {:>14} {:>8}\n", iface,
                             s.registry_only ? "REGISTRY_ONLY" : "ALLOW_ANY", s.from_pod_packets,
                             s.from_pod_bytes, s.to_pod_packets, s.to_pod_bytes, s.denied_packets);
  }
}

void DumpCounters(Dataplane& dp) {
  auto c = dp.ReadCounters();
  if (!c)
    Die("", c.error().message);
  std::cout << fmt::format("{:<20} {:>12}\n", "COUNTER", "VALUE");
  for (uint32_t i = 0; i < SLUICE_CNT_MAX; i++)
    std::cout << fmt::format("{:<20} {:>12}\n", CounterName(static_cast<sluice_counter>(i)),
                             (*c)[i]);
}

}  // namespace

void AddBpfCommands(CLI::App& app) {
  auto flags = std::make_shared<BpfFlags>();
  auto* bpf = app.add_subcommand("bpf", "Kernel data plane: load, inspect, edit, remove");
  bpf->require_subcommand(1);
  bpf->add_option("--pin-root", flags->pin_root, "bpffs directory of the data plane's pins")
      ->capture_default_str();

  auto* load = bpf->add_subcommand(
      "load", "Load and attach the programs (adopting existing pins), then exit; they stay");
  load->add_option("--cgroup-root", flags->cgroup_root,
                   "cgroup v2 directory to attach to (default: the cgroup2 mount root)");
  load->add_option("--max-frontends", flags->sizes.frontends, "sluice_services entries")
      ->capture_default_str();
  load->add_option("--max-backends", flags->sizes.backends, "sluice_backends entries")
      ->capture_default_str();
  load->add_option("--max-maglev", flags->sizes.maglev_tables, "consistent-hash tables")
      ->capture_default_str();
  load->add_option("--max-endpoints", flags->sizes.endpoints, "sluice_endpoint_stats entries")
      ->capture_default_str();
  load->add_option("--max-enrolled", flags->sizes.enrolled_netns, "enrolled network namespaces")
      ->capture_default_str();
  load->add_option("--kernel-fallback", flags->kernel_fallback,
                   "kernel features to do without (set_retval,netns_cookie or all)");
  load->callback([flags] {
    DataplaneOptions o{flags->pin_root, flags->cgroup_root, flags->sizes, false};
    auto fallbacks = ParseKernelFallbacks(flags->kernel_fallback);
    if (!fallbacks)
      Die("", fallbacks.error().message);
    o.kernel_fallbacks = *fallbacks;
    auto dp = Dataplane::Open(o);
    if (!dp)
      Die("", dp.error().message);
    std::cout << ((*dp)->adopted() ? "adopted" : "loaded") << " the data plane at "
              << flags->pin_root << ", attached to " << (*dp)->options().cgroup_path << "\n";
    std::cout << "kernel features: " << (*dp)->features().Summary() << "\n";
  });

  auto* cleanup = bpf->add_subcommand("cleanup", "Detach the programs and remove every pin");
  cleanup->callback([flags] {
    if (auto r = Dataplane::Cleanup(flags->pin_root); !r)
      Die("", r.error().message);
    std::cout << "removed " << flags->pin_root << "\n";
  });

  auto* service = bpf->add_subcommand("service", "Create, replace or delete a kernel service");
  service->require_subcommand(1);
  struct SetArgs {
    std::string name;
    std::vector<std::string> vips;
    uint16_t port = 0;
    std::string protocol = "TCP";
    std::vector<std::string> clusters;
    bool l7 = false;
  };
  auto args = std::make_shared<SetArgs>();
  auto* set = service->add_subcommand("set", "Create or replace a service");
  set->add_option("name", args->name, "service name (unique)")->required();
  set->add_option("--vip", args->vips, "service address (repeatable; IPv4 and/or IPv6)")
      ->required();
  set->add_option("--port", args->port, "service port")->required();
  set->add_option("--protocol", args->protocol, "TCP or UDP")->capture_default_str();
  set->add_option("--cluster", args->clusters,
                  "weighted cluster: weight=W,lb=POLICY,ep=IP:PORT[*WEIGHT],... (repeatable)");
  set->add_flag("--l7", args->l7,
                "needs L7: send connects to the pod's in-pod proxy (no clusters); a VIP of "
                "0.0.0.0 or :: catches every address on the port");
  set->callback([flags, args] {
    ServiceSpec spec;
    spec.name = args->name;
    spec.port = args->port;
    if (args->protocol == "UDP")
      spec.protocol = Protocol::kUdp;
    else if (args->protocol != "TCP")
      Die("", "--protocol: expected TCP or UDP, got '" + args->protocol + "'");
    for (const auto& v : args->vips) {
      auto ip = IpAddress::Parse(v);
      if (!ip)
        Die("", "--vip: " + ip.error().message);
      spec.vips.push_back(*ip);
    }
    spec.redirect_to_proxy = args->l7;
    if (args->clusters.empty() && !args->l7)
      Die("", "--cluster is required (at least one), unless --l7");
    for (const auto& c : args->clusters) {
      auto cl = ParseCluster(c);
      if (!cl)
        Die("", cl.error().message);
      spec.clusters.push_back(*cl);
    }
    auto dp = OpenMaps(*flags);
    if (auto r = dp->UpsertService(spec); !r)
      Die("", r.error().message);
  });
  auto del_name = std::make_shared<std::string>();
  auto* del = service->add_subcommand("delete", "Delete a service");
  del->add_option("name", *del_name, "service name")->required();
  del->callback([flags, del_name] {
    auto dp = OpenMaps(*flags);
    if (auto r = dp->DeleteService(*del_name); !r)
      Die("", r.error().message);
  });

  struct EnrolArgs {
    std::string netns;
    std::string ip4 = "0.0.0.0";
    std::string ip6 = "::";
    uint16_t proxy_port = 0;
    bool registry_only = false;
  };
  auto enrol_args = std::make_shared<EnrolArgs>();
  auto* enrol = bpf->add_subcommand("enrol", "Put a network namespace in the mesh");
  enrol->alias("enroll");
  enrol->add_option("--netns", enrol_args->netns, "/run/netns/NAME or /proc/PID/ns/net")
      ->required();
  enrol->add_option("--ip4", enrol_args->ip4, "the pod's IPv4 address (consistent-hash key)");
  enrol->add_option("--ip6", enrol_args->ip6, "the pod's IPv6 address");
  enrol->add_option("--proxy-port", enrol_args->proxy_port,
                    "port of the agent's outbound listener on the pod's loopback (L7 services)");
  enrol->add_flag("--registry-only", enrol_args->registry_only,
                  "outboundTrafficPolicy REGISTRY_ONLY: refuse connects to non-services");
  enrol->callback([flags, enrol_args] {
    auto cookie = NetnsCookie(enrol_args->netns);
    if (!cookie)
      Die("", cookie.error().message);
    EnrolmentInfo info;
    auto ip4 = IpAddress::Parse(enrol_args->ip4);
    auto ip6 = IpAddress::Parse(enrol_args->ip6);
    if (!ip4 || !ip4->is_v4())
      Die("", "--ip4: '" + enrol_args->ip4 + "' is not an IPv4 address");
    if (!ip6 || ip6->is_v4())
      Die("", "--ip6: '" + enrol_args->ip6 + "' is not an IPv6 address");
    info.ip4 = *ip4;
    info.ip6 = *ip6;
    info.proxy_port = enrol_args->proxy_port;
    info.registry_only = enrol_args->registry_only;
    auto dp = OpenMaps(*flags);
    if (auto r = dp->Enrol(*cookie, info); !r)
      Die("", r.error().message);
    std::cout << "enrolled " << enrol_args->netns << " (netns cookie " << *cookie << ")\n";
  });
  auto unenrol_ns = std::make_shared<std::string>();
  auto* unenrol = bpf->add_subcommand("unenrol", "Take a network namespace out of the mesh");
  unenrol->alias("unenroll");
  unenrol->add_option("--netns", *unenrol_ns, "/run/netns/NAME or /proc/PID/ns/net")->required();
  unenrol->callback([flags, unenrol_ns] {
    auto cookie = NetnsCookie(*unenrol_ns);
    if (!cookie)
      Die("", cookie.error().message);
    auto dp = OpenMaps(*flags);
    auto r = dp->Unenrol(*cookie);
    if (!r)
      Die("", r.error().message);
    std::cout << (*r ? "unenrolled " : "was not enrolled: ") << *unenrol_ns << "\n";
  });

  auto splice = std::make_shared<std::string>();
  auto* splice_cmd = bpf->add_subcommand(
      "splice", "Switch sk_msg splicing of app <-> in-pod proxy sockets (new connections)");
  splice_cmd->add_option("state", *splice, "on | off")
      ->required()
      ->check(CLI::IsMember({"on", "off"}));
  splice_cmd->callback([flags, splice] {
    auto dp = OpenMaps(*flags);
    if (auto r = dp->SetSplice(*splice == "on"); !r)
      Die("", r.error().message);
    std::cout << "splice " << *splice << "\n";
  });

  auto what = std::make_shared<std::string>("all");
  auto* dump = bpf->add_subcommand("dump", "Print the kernel state as tables");
  dump->add_option("what", *what, "services | endpoints | enrolment | pods | counters | all")
      ->check(CLI::IsMember(
          {"services", "endpoints", "enrolment", "enrollment", "pods", "counters", "all"}))
      ->capture_default_str();
  dump->callback([flags, what] {
    auto dp = OpenMaps(*flags);
    const bool all = *what == "all";
    if (all || *what == "services")
      DumpServices(*dp);
    if (all)
      std::cout << "\n";
    if (all || *what == "endpoints")
      DumpEndpoints(*dp);
    if (all)
      std::cout << "\n";
    if (all || *what == "enrolment" || *what == "enrollment")
      DumpEnrolment(*dp);
    if (all)
      std::cout << "\n";
    if (all || *what == "pods")
      DumpPods(*dp);
    if (all)
      std::cout << "\n";
    if (all || *what == "counters")
      DumpCounters(*dp);
  });
}

}  // namespace sluice::ctl
