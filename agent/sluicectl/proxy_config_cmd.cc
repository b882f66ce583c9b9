// `sluicectl proxy-config cluster|route|endpoint|listener [POD|deploy/NAME]`: the Envoy
// configuration a workload's proxy runs, printed as istioctl prints it.
//
// Where the configuration comes from, first match wins:
//  0. --file PATH: a saved config dump, offline — an Envoy admin /config_dump (as
//     `istioctl proxy-config all -o json` or Envoy's admin print it; each resource read
//     through the linked descriptor pool, one that does not parse named on stderr) or
//     Sluice's own {"listeners": [...], ...};
//  1. --admin ADDR (HOST:PORT or unix:PATH): a running agent's /config_dump
//     (with ?namespace=NS when -n is given: the node agent's per-namespace L7 config);
//  2. --config-dir DIR: translated in-process, offline — the sidecar of namespace -n, or
//     the gateway a POD's labels (or --gateway KEY=VALUE) select;
//  3. POD resolved through the local cluster's state file: a gateway pod's own admin
//     socket, any other pod's view (namespace and labels) on the node agent's admin.
// An explicit --config-dir wins over the state file so offline use never reaches into a
// running cluster by accident.
#include <google/protobuf/util/json_util.h>

#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "cli.h"
#include "commands.h"
#include "sluice/envoy/descriptor_pool.h"
#include "sluice/inspect/admin_client.h"
#include "sluice/inspect/config_dump.h"
#include "sluice/inspect/local_state.h"
#include "sluice/inspect/table.h"
#include "sluice/istio/loader.h"
#include "sluice/istio/registry.h"
#include "sluice/istio/translator.h"
#include "sluice/proxy/config.h"
#include "sluice/proxy/config_json.h"

namespace sluice::ctl {
namespace {

using Json = nlohmann::ordered_json;

struct PcOptions {
  std::string pod;
  std::string ns;
  std::string admin;
  std::string file;
  std::string config_dir;
  std::string gateway;  // KEY=VALUE[,KEY=VALUE]
  std::string state_file = inspect::DefaultStatePath();
  std::string output = "short";
  inspect::ClusterFilter cluster;
  inspect::RouteFilter route;
  inspect::EndpointFilter endpoint;
  inspect::ListenerFilter listener;
};

std::set<std::string> KnownNamespaces(const istio::Config& c) {
  std::set<std::string> out{"default"};
  auto add = [&](const auto& list) {
    for (const auto& r : list)
      out.insert(r.meta.ns);
  };
  add(c.services);
  add(c.workloads);
  add(c.virtual_services);
  add(c.destination_rules);
  add(c.service_entries);
  add(c.gateways);
  add(c.sidecars);
  for (const auto& n : c.namespaces)
    out.insert(n.meta.name);
  return out;
}

// The proxy a POD of the config directory is: a gateway if a Gateway selects its labels
// (or it carries istio=…gateway), else a sidecar of its namespace.
Result<istio::ProxySpec> ProxyForConfigPod(const istio::Config& config, const PcOptions& o) {
  inspect::PodRef ref = inspect::ParsePodRef(o.pod, o.ns);
  // Exact names first; then generated names: a pod NAME-… of deploy/NAME (a running
  // cluster's config holds its pods, not Deployments), a Deployment D of pod D-….
  const istio::Workload* found = nullptr;
  const istio::Workload* generated = nullptr;
  for (const auto& w : config.workloads) {
    if (w.meta.ns != ref.ns)
      continue;
    if (ref.kind == "deploy" ? w.kind == "Deployment" && w.meta.name == ref.name
                             : w.meta.name == ref.name)
      found = &w;
    else if (ref.kind == "deploy"
                 ? w.kind == "Pod" && w.meta.name.starts_with(ref.name + "-")
                 : w.kind == "Deployment" && ref.name.starts_with(w.meta.name + "-"))
      generated = generated ? generated : &w;
  }
  if (!found)
    found = generated;
  if (!found)
    return Fail((ref.kind == "deploy" ? "deployment " : "pod ") + ref.ns + "/" + ref.name +
                " not found in " + o.config_dir);
  istio::ProxySpec spec;
  spec.ns = ref.ns;
  bool gateway = false;
  for (const auto& g : config.gateways) {
    if (!g.selector.empty() && istio::SelectorMatches(g.selector, found->pod_labels))
      gateway = true;
  }
  if (auto it = found->pod_labels.find("istio");
      it != found->pod_labels.end() && it->second.ends_with("gateway"))
    gateway = true;
  if (gateway) {
    spec.kind = istio::ProxySpec::Kind::kGateway;
    spec.labels = found->pod_labels;
  }
  return spec;
}

Result<Json> TranslateDir(const PcOptions& o) {
  auto loaded = istio::LoadPaths({o.config_dir});
  for (const auto& e : loaded.errors)
    std::cerr << "warning: " << e << "\n";
  istio::ProxySpec spec;
  if (!o.pod.empty()) {
    auto s = ProxyForConfigPod(loaded.config, o);
    SLUICE_RETURN_IF_ERROR(s);
    spec = *s;
  } else if (!o.gateway.empty()) {
    auto s = istio::ProxySpec::Parse("gateway:" + o.gateway + (o.ns.empty() ? "" : "@" + o.ns));
    if (!s)
      return Fail("--gateway " + o.gateway + ": " + s.error().message);
    spec = *s;
  } else {
    spec.ns = o.ns.empty() ? "default" : o.ns;
    if (!KnownNamespaces(loaded.config).contains(spec.ns))
      return Fail("namespace " + spec.ns + " not found in " + o.config_dir);
  }
  auto registry = istio::Registry::Build(loaded.config);
  auto translation = istio::Translate(loaded.config, registry, spec);
  auto json = istio::ResourcesToJson(translation.resources);
  SLUICE_RETURN_IF_ERROR(json);
  return Json::parse(*json);
}

// A saved dump: its resources as the admin's /config_dump serves them (camelCase proto
// JSON in plain arrays), whichever form the file has.
Result<Json> ReadDumpFile(const std::string& path) {
  std::ifstream f(path);
  if (!f)
    return Fail("cannot open " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  auto loaded = proxy::LoadConfigJson(ss.str());
  if (!loaded)
    return Wrap(path, loaded.error());
  for (const std::string& u : loaded->unparsed)
    std::cerr << "warning: " << path << ": not shown: " << u << "\n";
  Json out = Json::object();
  auto add = [&](const char* key, const auto& map) {
    out[key] = Json::array();
    google::protobuf::util::JsonPrintOptions opts;
    for (const auto& [name, r] : map)
      out[key].push_back(Json::parse(descriptors::MessageToJson(r, opts)));
  };
  add("clusters", loaded->resources.clusters);
  add("endpoints", loaded->resources.endpoints);
  add("listeners", loaded->resources.listeners);
  add("routes", loaded->resources.routes);
  return out;
}

Result<Json> FetchDump(const PcOptions& o) {
  std::string address, path = "/config_dump";
  if (!o.file.empty())
    return ReadDumpFile(o.file);
  if (!o.admin.empty()) {
    address = o.admin;
    if (!o.ns.empty())
      path += "?namespace=" + o.ns;
  } else if (!o.config_dir.empty()) {
    return TranslateDir(o);
  } else {
    auto state = inspect::LoadLocalState(o.state_file);
    SLUICE_RETURN_IF_ERROR(state);
    if (o.pod.empty())
      return Fail("which pod? give POD or deploy/NAME (or --admin ADDR, or --config-dir DIR)");
    auto pod = inspect::FindPod(*state, o.pod, o.ns);
    SLUICE_RETURN_IF_ERROR(pod);
    if (!(*pod)->admin.empty()) {
      address = (*pod)->admin;  // a gateway: its own admin, its own config
    } else {
      if (state->agent_admin.empty())
        return Fail(state->path + ": agent_admin: missing");
      address = state->agent_admin;
      path += "?namespace=" + (*pod)->ns + "&pod=" + (*pod)->name;  // the pod's own view
    }
  }
  auto body = inspect::AdminGet(address, path);
  SLUICE_RETURN_IF_ERROR(body);
  auto j = Json::parse(*body, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return Fail(address + path + ": the answer is not a JSON config dump");
  // The node agent says when a namespace's own config is not (yet) what its pods run.
  if (auto src = j.find("source");
      src != j.end() && src->is_string() && src->get<std::string>().starts_with("node stream"))
    std::cerr << "note: " << address << ": " << src->get<std::string>() << "\n";
  if (auto err = j.find("l7_error"); err != j.end() && err->is_string())
    std::cerr << "warning: " << address << ": the agent reports: " << err->get<std::string>()
              << "\n";
  return j;
}

void AddCommon(CLI::App* sub, const std::shared_ptr<PcOptions>& o) {
  sub->add_option("pod", o->pod, "POD, POD.NAMESPACE or deploy/NAME");
  sub->add_option("-n,--namespace", o->ns, "namespace of the pod (default: default)");
  sub->add_option("--admin", o->admin, "ask this admin endpoint: HOST:PORT or unix:PATH");
  sub->add_option("--file", o->file,
                  "read a saved config dump: an Envoy /config_dump (e.g. `istioctl "
                  "proxy-config all -o json`) or sluice-agent's /config_dump");
  sub->add_option("--config-dir", o->config_dir,
                  "offline: translate the Istio/Kubernetes YAML in DIR in-process")
      ->check(CLI::ExistingPath);
  sub->add_option("--gateway", o->gateway,
                  "with --config-dir and no POD: the gateway selected by KEY=VALUE[,KEY=VALUE]");
  sub->add_option("--state-file", o->state_file, "the local cluster's state file")
      ->capture_default_str();
  sub->add_option_function<std::string>(
      "--state-dir", [o](const std::string& dir) { o->state_file = dir + "/state.json"; },
      "the local cluster's state directory (as `sluicectl local --state-dir`)");
  sub->add_option("-o,--output", o->output, "short (table), json or yaml")
      ->check(CLI::IsMember({"short", "json", "yaml"}))
      ->capture_default_str();
}

template <class Print>
void Run(const std::string& cmd, const PcOptions& o, Print print) {
  auto out = inspect::ParseOutput(o.output);
  if (!out)
    Die("proxy-config " + cmd, out.error().message);
  auto dump = FetchDump(o);
  if (!dump)
    Die("proxy-config " + cmd, dump.error().message);
  auto text = print(*dump, *out);
  if (!text)
    Die("proxy-config " + cmd, text.error().message);
  std::cout << *text;
  std::cout.flush();
}

}  // namespace

void AddProxyConfigCommands(CLI::App& app) {
  auto* pc = app.add_subcommand("proxy-config",
                                "A proxy's Envoy configuration, as istioctl proxy-config shows it");
  pc->alias("pc");
  pc->require_subcommand(1);

  {
    auto o = std::make_shared<PcOptions>();
    auto* c = pc->add_subcommand("cluster", "Clusters (services, subsets, load balancing)");
    c->alias("clusters");
    AddCommon(c, o);
    c->add_option("--fqdn", o->cluster.fqdn, "only clusters whose name contains this FQDN");
    c->add_option("--port", o->cluster.port, "only clusters of this port");
    c->add_option("--subset", o->cluster.subset, "only clusters of this subset");
    c->add_option("--direction", o->cluster.direction, "inbound or outbound");
    c->callback([o] {
      Run("cluster", *o, [&](const Json& d, inspect::Output out) {
        return inspect::PrintClusters(d, o->cluster, out);
      });
    });
  }
  {
    auto o = std::make_shared<PcOptions>();
    auto* c = pc->add_subcommand("route", "Route configurations (virtual hosts, matches)");
    c->alias("routes");
    AddCommon(c, o);
    c->add_option("--name", o->route.name, "only the route configuration of this name");
    c->callback([o] {
      Run("route", *o, [&](const Json& d, inspect::Output out) {
        return inspect::PrintRoutes(d, o->route, out);
      });
    });
  }
  {
    auto o = std::make_shared<PcOptions>();
    auto* c = pc->add_subcommand("endpoint", "Endpoints of each cluster and their health");
    c->alias("endpoints");
    AddCommon(c, o);
    c->add_option("--cluster", o->endpoint.cluster, "only endpoints of this cluster");
    c->add_option("--address", o->endpoint.address, "only endpoints with this address");
    c->add_option("--port", o->endpoint.port, "only endpoints with this port");
    c->add_option("--status", o->endpoint.status, "only endpoints with this health status");
    c->callback([o] {
      Run("endpoint", *o, [&](const Json& d, inspect::Output out) {
        return inspect::PrintEndpoints(d, o->endpoint, out);
      });
    });
  }
  {
    auto o = std::make_shared<PcOptions>();
    auto* c =
        pc->add_subcommand("all", "Clusters, listeners, routes and endpoints, one after another");
    AddCommon(c, o);
    c->callback([o] {
      Run("all", *o, [&](const Json& d, inspect::Output out) -> Result<std::string> {
        if (out != inspect::Output::kShort) {
          Json all = Json::object();
          for (const char* k : {"clusters", "listeners", "routes", "endpoints"})
            all[k] = d.contains(k) ? d[k] : Json::array();
          return out == inspect::Output::kYaml ? inspect::JsonToYaml(all) : all.dump(4) + "\n";
        }
        std::string text;
        for (auto part : {inspect::PrintClusters(d, {}, out), inspect::PrintListeners(d, {}, out),
                          inspect::PrintRoutes(d, {}, out), inspect::PrintEndpoints(d, {}, out)}) {
          if (part)  // a kind the dump has none of is left out, as istioctl does
            text += (text.empty() ? "" : "\n") + *part;
        }
        return text;
      });
    });
  }
  {
    auto o = std::make_shared<PcOptions>();
    auto* c = pc->add_subcommand("listener", "Listeners and their filter chains");
    c->alias("listeners");
    AddCommon(c, o);
    c->add_option("--address", o->listener.address, "only listeners on this address");
    c->add_option("--port", o->listener.port, "only listeners on this port");
    c->add_option("--type", o->listener.type, "only listeners of this type: HTTP, TCP, HTTP+TCP");
    c->callback([o] {
      Run("listener", *o, [&](const Json& d, inspect::Output out) {
        return inspect::PrintListeners(d, o->listener, out);
      });
    });
  }
}

}  // namespace sluice::ctl
