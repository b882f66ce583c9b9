// `apply` and `delete` on the local cluster: manifests become state (namespaces,
// Services with their VIPs, Pods, Deployments and their pods, external hosts, Istio
// resources as files for the control plane), and Sync rewrites everything derived from
// the state after each change: the control plane's Kubernetes view, the agent's labels,
// every pod's hosts file, the kube-proxy stand-in's NAT rules, state.json.
#include <algorithm>
#include <cctype>
#include <filesystem>
#include <random>
#include <variant>

#include "cluster_impl.h"
#include "sluice/istio/loader.h"
#include "sluice/local/derived.h"

namespace sluice::local {
namespace fs = std::filesystem;

// Everything derived from the state, rewritten after each change.
Result<void> Cluster::Impl::Sync() {
  std::vector<std::string> problems;
  auto ready = ReadyFn();
  std::string k8s = ConfigDir() + "/k8s";
  for (auto [file, text] : {std::pair{k8s + "/namespaces.yaml", NamespacesYaml(s)},
                            std::pair{k8s + "/services.yaml", ServicesYaml(s)},
                            std::pair{k8s + "/pods.yaml", PodsYaml(s, ready)}})
    if (auto r = WriteIfChanged(file, text, false); !r)
      problems.push_back(r.error().message);
  if (auto r = WriteIfChanged(StateDir() + "/labels.json", LabelsJson(s), false); !r)
    problems.push_back(r.error().message);
  for (const auto& p : s.pods)
    if (!p.host_network)
      if (auto r = WriteIfChanged(c.PodDir(p) + "/hosts", HostsFile(s, p.ns, p.name, p.ip), true);
          !r)
        problems.push_back(r.error().message);
  // The node agent's and control plane's view (they resolve DNS clusters such as an
  // external host's): every Service's FQDN and every external host.
  if (auto r = WriteIfChanged(StateDir() + "/hosts", HostsFile(s, "", "", ""), true); !r)
    problems.push_back(r.error().message);
  for (const auto& h : s.external_hosts)
    if (auto r =
            WriteIfChanged(c.PodDir(h.pod) + "/hosts", HostsFile(s, "", h.name, h.pod.ip), true);
        !r)
      problems.push_back(r.error().message);
  std::string rules = NatRules(s, NatChain(s.settings), ready);
  if (rules != nat_applied_) {
    if (auto r = RunTool({"iptables-restore", "-w", "--noflush"}, rules); !r)
      problems.push_back("kube-proxy stand-in: " + r.error().message);
    else
      nat_applied_ = rules;
  }
  if (auto r = SaveState(s); !r)
    problems.push_back(r.error().message);
  if (!problems.empty()) {
    std::string msg;
    for (const auto& p : problems)
      msg += (msg.empty() ? "" : "; ") + p;
    return Fail(msg);
  }
  return {};
}

std::string Cluster::Impl::IstioFile(const IstioObj& o) const {
  if (o.kind == "ConfigMap")
    return MeshFile();
  std::string name = o.kind + "-" + o.ns + "-" + o.name;
  for (char& ch : name)
    if (!(std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '.' || ch == '_'))
      ch = '_';
  return ConfigDir() + "/istio/" + name + ".yaml";
}

// Istio's demo profile (what the tasks are written against): access logs on stdout.
Result<void> Cluster::Impl::WriteDefaultMesh() {
  return WriteFileAtomic(MeshFile(),
                         "# Written by sluicectl local: the mesh config of Istio's demo profile.\n"
                         "# Apply a ConfigMap istio-system/istio to replace it.\n"
                         "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: istio\n"
                         "  namespace: istio-system\ndata:\n  mesh: |-\n"
                         "    accessLogFile: /dev/stdout\n");
}

Result<void> Cluster::Impl::ApplyOne(const Document& d) {
  return std::visit(
      [&](const auto& o) -> Result<void> {
        using T = std::decay_t<decltype(o)>;
        if constexpr (std::is_same_v<T, NamespaceObj>) {
          NamespaceRec* n = s.FindNamespace(o.ns.name);
          if (!n) {
            s.namespaces.push_back(o.ns);
            out << "namespace/" << o.ns.name << " created\n";
          } else {
            for (const auto& [k, v] : o.ns.labels)
              n->labels[k] = v;
            out << "namespace/" << o.ns.name << " configured\n";
          }
        } else if constexpr (std::is_same_v<T, ServiceObj>) {
          ServiceRec svc = o.svc;
          ServiceRec* cur = s.FindService(svc.ns, svc.name);
          if (cur) {
            if (!svc.cluster_ip.empty() && svc.cluster_ip != cur->cluster_ip)
              return Fail("spec.clusterIP: is immutable (the Service has " + cur->cluster_ip + ")");
            svc.cluster_ip = cur->cluster_ip;
            *cur = svc;
            out << "service/" << svc.name << " configured (" << svc.cluster_ip << ")\n";
          } else {
            if (svc.cluster_ip != "None") {
              auto vip = AllocateVip(s, svc.cluster_ip);
              SLUICE_RETURN_IF_ERROR(vip);
              svc.cluster_ip = *vip;
            }
            s.services.push_back(svc);
            out << "service/" << svc.name << " created (" << svc.cluster_ip << ")\n";
          }
        } else if constexpr (std::is_same_v<T, PodObj>) {
          if (auto r = CheckImages(o.spec, "spec"); !r)
            return r;
          if (PodRec* cur = s.FindPod(o.ns, o.name)) {
            if (cur->spec_hash == o.spec.hash) {
              out << "pod/" << o.name << " unchanged\n";
              return {};
            }
            if (auto r = DeletePod(o.ns, o.name); !r)
              return r;
          }
          if (auto r = CreatePod(o.ns, o.name, "Pod/" + o.name, o.spec); !r)
            return r;
          out << "pod/" << o.name << " created (" << s.FindPod(o.ns, o.name)->ip << ")\n";
        } else if constexpr (std::is_same_v<T, DeploymentObj>) {
          return ApplyDeployment(o);
        } else if constexpr (std::is_same_v<T, ExternalHostObj>) {
          for (const auto& h : s.external_hosts)
            if (h.name == o.host.name) {
              if (h.spec_hash == o.host.spec_hash) {
                out << "externalhost/" << o.host.name << " unchanged\n";
                return {};
              }
              if (auto r = DeleteExternal(o.host.name); !r)
                return r;
              break;
            }
          if (auto r = CreateExternal(o.host); !r)
            return r;
          for (const auto& h : s.external_hosts)
            if (h.name == o.host.name)
              out << "externalhost/" << o.host.name << " created (" << h.pod.ip << ")\n";
        } else if constexpr (std::is_same_v<T, IstioObj>) {
          return ApplyIstio(o, d);
        } else if constexpr (std::is_same_v<T, IgnoredObj>) {
          out << o.kind << "/" << o.name << " accepted (the local cluster has nothing to do for a "
              << o.kind << ")\n";
        }
        return {};
      },
      d.object);
}

Result<void> Cluster::Impl::ApplyIstio(const IstioObj& o, const Document& d) {
  // Validated by the translator's own loader first: a bad resource is refused here,
  // with the translator's message, rather than found later in the xds server's log.
  istio::LoadResult check;
  istio::LoadText(o.text, d.file, check);
  if (!check.errors.empty()) {
    std::string msg = check.errors.front();
    // The loader numbers documents within the text it was given (always 1).
    auto pos = msg.find(d.file + ": document 1");
    if (pos == 0)
      msg = msg.substr(d.file.size() + std::string(": document 1").size());
    while (!msg.empty() && msg.front() != ':' && msg.front() != ' ')
      msg.erase(0, 1);
    auto colon = msg.find(": ");
    return Fail(colon == std::string::npos ? msg : msg.substr(colon + 2));
  }
  std::string text = o.text;
  if (text.find("namespace:") == std::string::npos && o.ns != "default") {
    // Written without a namespace and applied with -n: say so in the copy.
    auto meta = text.find("metadata:");
    if (meta != std::string::npos)
      text.insert(text.find('\n', meta) + 1, "  namespace: " + o.ns + "\n");
  }
  std::string file = IstioFile(o);
  bool existed = fs::exists(file);
  if (auto r = WriteFileAtomic(file, "# From " + d.file + "\n" + text); !r)
    return r;
  std::erase_if(s.configs, [&](const ConfigRec& c2) { return c2.file == file; });
  s.configs.push_back({o.kind, o.ns, o.name, file});
  std::string kind_lower;
  for (char ch : o.kind)
    kind_lower += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  std::string group = o.api.substr(0, o.api.find('/'));
  out << kind_lower << (o.api == "v1" ? "" : "." + group) << "/" << o.name
      << (existed ? " configured" : " created") << "\n";
  return {};
}

// Every image must have a stand-in before anything of the document is made.
Result<void> Cluster::Impl::CheckImages(const PodSpec& spec, const std::string& field) {
  if (auto r = LoadImages(); !r)
    return r;
  for (std::size_t i = 0; i < spec.containers.size(); ++i)
    if (!images->Find(spec.containers[i].image))
      return Fail(field + ".containers[" + std::to_string(i) +
                  "].image: " + spec.containers[i].image +
                  " has no stand-in on the local cluster (see " + s.settings.images_json + ")");
  return {};
}

Result<void> Cluster::Impl::ApplyDeployment(const DeploymentObj& o) {
  if (auto r = CheckImages(o.spec, "spec.template.spec"); !r)
    return r;
  DeploymentRec* rec = nullptr;
  for (auto& d : s.deployments)
    if (d.ns == o.ns && d.name == o.name)
      rec = &d;
  std::string owner = "Deployment/" + o.name;
  auto owned = [&] {
    std::vector<std::string> names;
    for (const auto& p : s.pods)
      if (p.ns == o.ns && p.owner == owner)
        names.push_back(p.name);
    return names;
  };
  bool changed = rec && rec->spec_hash != o.spec.hash;
  if (changed) {
    for (const auto& n : owned())
      if (auto r = DeletePod(o.ns, n); !r)
        return r;
  }
  if (!rec) {
    s.deployments.push_back({o.ns, o.name, o.spec.hash, o.replicas});
    rec = &s.deployments.back();
  }
  rec->spec_hash = o.spec.hash;
  rec->replicas = o.replicas;
  auto names = owned();
  while (static_cast<int>(names.size()) > o.replicas) {
    if (auto r = DeletePod(o.ns, names.back()); !r)
      return r;
    names.pop_back();
  }
  int created = 0;
  for (unsigned seed = static_cast<unsigned>(std::random_device{}());
       static_cast<int>(names.size()) < o.replicas; ++seed) {
    std::string pod = PodNameFor(o.name, seed);
    if (s.FindPod(o.ns, pod))
      continue;
    if (auto r = CreatePod(o.ns, pod, owner, o.spec); !r)
      return r;
    out << "  pod/" << pod << " created (" << s.FindPod(o.ns, pod)->ip << ")\n";
    names.push_back(pod);
    ++created;
  }
  out << "deployment.apps/" << o.name
      << (changed   ? " configured"
          : created ? " created"
                    : " unchanged")
      << " (" << o.replicas << " replica" << (o.replicas == 1 ? "" : "s") << ")\n";
  return {};
}

ApplyReport Cluster::Impl::Apply(const std::vector<std::string>& files,
                                 const std::string& default_ns) {
  ApplyReport report;
  ManifestSet set = LoadManifests(files, default_ns);
  report.errors = set.errors;
  report.warnings = set.warnings;
  // Kubernetes does not care about order within a manifest; neither do we: namespaces
  // first, then what pods need (Services for their hosts file, external hosts), the
  // Istio resources (a gateway pod opens its listeners once its Gateway is there), then
  // pods.
  auto rank = [](const Document& d) {
    return std::visit(
        [](const auto& o) {
          using T = std::decay_t<decltype(o)>;
          if constexpr (std::is_same_v<T, NamespaceObj>)
            return 0;
          else if constexpr (std::is_same_v<T, ServiceObj> || std::is_same_v<T, ExternalHostObj>)
            return 1;
          else if constexpr (std::is_same_v<T, PodObj> || std::is_same_v<T, DeploymentObj>)
            return 3;
          else
            return 2;
        },
        d.object);
  };
  std::stable_sort(set.documents.begin(), set.documents.end(),
                   [&](const Document& a, const Document& b) { return rank(a) < rank(b); });
  for (const auto& d : set.documents) {
    std::string ns = std::visit(
        [](const auto& o) -> std::string {
          using T = std::decay_t<decltype(o)>;
          if constexpr (std::is_same_v<T, NamespaceObj>)
            return "";
          else if constexpr (std::is_same_v<T, ServiceObj>)
            return o.svc.ns;
          else if constexpr (std::is_same_v<T, ExternalHostObj>)
            return "";
          else
            return o.ns;
        },
        d.object);
    if (!ns.empty() && !s.FindNamespace(ns)) {
      report.errors.push_back(d.where + ": metadata.namespace: namespace \"" + ns +
                              "\" does not exist (apply a Namespace first)");
      continue;
    }
    if (auto r = ApplyOne(d); !r) {
      std::string msg = r.error().message;
      // Field errors from here name the field; runtime errors name the pod.
      report.errors.push_back(d.where + ": " + msg);
    }
  }
  if (auto r = Sync(); !r)
    report.errors.push_back(r.error().message);
  return report;
}

ApplyReport Cluster::Impl::Delete(const std::vector<std::string>& files,
                                  const std::string& default_ns) {
  ApplyReport report;
  ManifestSet set = LoadManifests(files, default_ns);
  report.errors = set.errors;
  report.warnings = set.warnings;
  // Reverse of apply: Istio resources, pods, Services, namespaces last.
  std::reverse(set.documents.begin(), set.documents.end());
  for (const auto& d : set.documents) {
    auto r = std::visit(
        [&](const auto& o) -> Result<void> {
          using T = std::decay_t<decltype(o)>;
          if constexpr (std::is_same_v<T, NamespaceObj>) {
            return DeleteNamespace(o.ns.name);
          } else if constexpr (std::is_same_v<T, ServiceObj>) {
            auto n = std::erase_if(s.services, [&](const ServiceRec& x) {
              return x.ns == o.svc.ns && x.name == o.svc.name;
            });
            out << "service/" << o.svc.name << (n ? " deleted\n" : " not found\n");
          } else if constexpr (std::is_same_v<T, PodObj>) {
            bool found = s.FindPod(o.ns, o.name) != nullptr;
            if (auto r2 = DeletePod(o.ns, o.name); !r2)
              return r2;
            out << "pod/" << o.name << (found ? " deleted\n" : " not found\n");
          } else if constexpr (std::is_same_v<T, DeploymentObj>) {
            std::vector<std::string> names;
            for (const auto& p : s.pods)
              if (p.ns == o.ns && p.owner == "Deployment/" + o.name)
                names.push_back(p.name);
            for (const auto& n : names)
              if (auto r2 = DeletePod(o.ns, n); !r2)
                return r2;
            auto n = std::erase_if(s.deployments, [&](const DeploymentRec& x) {
              return x.ns == o.ns && x.name == o.name;
            });
            out << "deployment.apps/" << o.name << (n ? " deleted" : " not found") << " ("
                << names.size() << " pods)\n";
          } else if constexpr (std::is_same_v<T, ExternalHostObj>) {
            if (auto r2 = DeleteExternal(o.host.name); !r2)
              return r2;
            out << "externalhost/" << o.host.name << " deleted\n";
          } else if constexpr (std::is_same_v<T, IstioObj>) {
            std::string file = IstioFile(o);
            std::error_code ec;
            bool found = fs::exists(file, ec);
            if (o.kind == "ConfigMap") {
              if (auto r2 = WriteDefaultMesh(); !r2)
                return r2;
            } else {
              fs::remove(file, ec);
            }
            std::erase_if(s.configs, [&](const ConfigRec& c2) { return c2.file == file; });
            out << o.kind << "/" << o.name << (found ? " deleted\n" : " not found\n");
          }
          return {};
        },
        d.object);
    if (!r)
      report.errors.push_back(d.where + ": " + r.error().message);
  }
  if (auto r = Sync(); !r)
    report.errors.push_back(r.error().message);
  return report;
}

Result<void> Cluster::Impl::DeleteNamespace(const std::string& ns) {
  if (ns == "default" || ns == "istio-system")
    return Fail("namespace " + ns + " always exists; it cannot be deleted");
  std::vector<std::string> names;
  for (const auto& p : s.pods)
    if (p.ns == ns)
      names.push_back(p.name);
  std::string problems;
  for (const auto& n : names)
    if (auto r = DeletePod(ns, n); !r)
      problems += r.error().message + "; ";
  std::erase_if(s.services, [&](const ServiceRec& x) { return x.ns == ns; });
  std::erase_if(s.deployments, [&](const DeploymentRec& x) { return x.ns == ns; });
  std::erase_if(s.configs, [&](const ConfigRec& x) {
    if (x.ns != ns)
      return false;
    std::error_code ec;
    fs::remove(x.file, ec);
    return true;
  });
  auto n = std::erase_if(s.namespaces, [&](const NamespaceRec& x) { return x.name == ns; });
  out << "namespace/" << ns << (n ? " deleted\n" : " not found\n");
  if (!problems.empty())
    return Fail(problems);
  return {};
}

}  // namespace sluice::local
