// sluicectl ads-dump: fetch a proxy's configuration over ADS exactly as the agent does
// (same client, same validation, same warming) and print it. Point it at istiod
// (15010 plaintext, 15012 TLS + token) or at `sluicectl xds serve`.
#include <google/protobuf/util/json_util.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <iostream>
#include <map>
#include <mutex>
#include <thread>

#include "cli.h"
#include "commands.h"
#include "sluice/config/store.h"
#include "sluice/config/validate.h"
#include "sluice/envoy/descriptor_pool.h"
#include "sluice/xds/ads_client.h"
#include "sluice/xds/node.h"

namespace sluice::ctl {
namespace {

struct AdsDumpOptions {
  std::string server = "127.0.0.1:15010";
  std::string role = "sidecar";
  std::string ip = "127.0.0.1";
  std::string pod = "sluicectl";
  std::string ns = "default";
  std::vector<std::string> labels;  // k=v
  bool tls = false;
  std::string ca_file, server_name, token_file;
  double timeout_s = 10;
  bool json = false;
  bool watch = false;
};

// Every type the server was asked for has been ACKed at least once (and EDS/RDS only
// matter when there is something to subscribe to).
bool Synced(const xds::AdsClientStatus& st) {
  // Applied, wholly or with some resources refused by name (those are reported).
  auto acked = [&](std::string_view type) {
    auto it = st.types.find(std::string(type));
    return it != st.types.end() && it->second.applied > 0;
  };
  auto needed = [&](std::string_view type) {
    auto it = st.types.find(std::string(type));
    return it != st.types.end() && it->second.subscribed > 0;
  };
  return acked(xds::kClusterType) && acked(xds::kListenerType) &&
         (!needed(xds::kEndpointType) || acked(xds::kEndpointType)) &&
         (!needed(xds::kRouteType) || acked(xds::kRouteType));
}

// Valid JSON for every resource: Any payloads of types Sluice does not link print as
// {"@type", "value": base64} (descriptor_pool.h), never null.
std::string Json(const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  return descriptors::MessageToJson(m, o);
}

template <class Map>
void JsonArray(std::ostream& os, const char* key, const Map& m, bool last = false) {
  os << "  \"" << key << "\": [";
  bool first = true;
  for (const auto& [_, r] : m) {
    os << (first ? "\n    " : ",\n    ") << Json(*r);
    first = false;
  }
  os << (first ? "]" : "\n  ]") << (last ? "\n" : ",\n");
}

// The version each type was last ACKed at (the snapshot only changes when content does).
std::map<std::string, std::string> Versions(const xds::AdsClientStatus& st) {
  std::map<std::string, std::string> out;
  for (const auto& [type, t] : st.types)
    if (!t.acked_version.empty())
      out[type] = t.acked_version;
  return out;
}

void PrintJson(const config::Snapshot& s, const std::map<std::string, std::string>& versions) {
  std::cout << "{\n";
  JsonArray(std::cout, "clusters", s.clusters);
  JsonArray(std::cout, "endpoints", s.endpoints);
  JsonArray(std::cout, "listeners", s.listeners);
  JsonArray(std::cout, "routes", s.routes);
  std::cout << "  \"versions\": {";
  bool first = true;
  for (const auto& [type, v] : versions) {
    std::cout << (first ? "" : ", ") << "\"" << type << "\": \"" << v << "\"";
    first = false;
  }
  std::cout << "}\n}\n";
}

void PrintTables(const config::Snapshot& s, const std::map<std::string, std::string>& versions) {
  using envoy::config::cluster::v3::Cluster;
  std::printf("CLUSTERS (%zu)\n", s.clusters.size());
  std::printf("  %-60s %-12s %-14s %s\n", "NAME", "TYPE", "LB", "ENDPOINTS");
  for (const auto& [name, c] : s.clusters) {
    const std::string& svc = config::EdsServiceName(*c);
    const auto* cla = &c->load_assignment();
    if (!svc.empty())
      cla = s.endpoints.at(svc).get();
    int n = 0;
    for (const auto& loc : cla->endpoints())
      n += loc.lb_endpoints_size();
    std::printf("  %-60s %-12s %-14s %d\n", name.c_str(),
                Cluster::DiscoveryType_Name(c->type()).c_str(),
                Cluster::LbPolicy_Name(c->lb_policy()).c_str(), n);
  }
  std::printf("LISTENERS (%zu)\n", s.listeners.size());
  std::printf("  %-40s %-24s %s\n", "NAME", "ADDRESS", "ROUTES");
  for (const auto& [name, l] : s.listeners) {
    std::string addr = l->address().socket_address().address() + ":" +
                       std::to_string(l->address().socket_address().port_value());
    std::string rds;
    for (const auto& r : config::RdsNames(*l))
      rds += (rds.empty() ? "" : ",") + r;
    std::printf("  %-40s %-24s %s\n", name.c_str(), addr.c_str(), rds.empty() ? "-" : rds.c_str());
  }
  std::printf("ROUTES (%zu)\n", s.routes.size());
  std::printf("  %-40s %s\n", "NAME", "VIRTUAL HOSTS");
  for (const auto& [name, r] : s.routes) {
    std::printf("  %-40s %d\n", name.c_str(), r->virtual_hosts_size());
  }
  for (const auto& [type, v] : versions) {
    std::printf("version %s %s\n", type.substr(type.rfind('.') + 1).c_str(), v.c_str());
  }
}

void PrintDiff(const config::SnapshotPtr& s, const config::Diff& d) {
  auto part = [](const char* kind, const config::TypeDiff& t) {
    if (t.empty())
      return std::string();
    return std::string(kind) + " +" + std::to_string(t.added.size()) + " ~" +
           std::to_string(t.changed.size()) + " -" + std::to_string(t.removed.size()) + "  ";
  };
  std::printf("generation %llu: %s%s%s%s\n", static_cast<unsigned long long>(s->generation),
              part("clusters", d.clusters).c_str(), part("endpoints", d.endpoints).c_str(),
              part("listeners", d.listeners).c_str(), part("routes", d.routes).c_str());
  std::fflush(stdout);
}

void RunAdsDump(const AdsDumpOptions& o) {
  spdlog::set_level(spdlog::level::warn);  // stdout is for the config
  xds::NodeIdentity id;
  if (o.role == "router") {
    id.role = xds::ProxyRole::kRouter;
  } else if (o.role != "sidecar") {
    Die("ads-dump", "--role: \"" + o.role + "\" is not sidecar or router", 2);
  }
  id.ips = {o.ip};
  id.pod_name = o.pod;
  id.pod_namespace = o.ns;
  for (const auto& kv : o.labels) {
    auto eq = kv.find('=');
    if (eq == std::string::npos) {
      Die("ads-dump", "--label: \"" + kv + "\" is not key=value", 2);
    }
    id.labels[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  xds::AdsClientOptions co;
  co.server = o.server;
  co.tls = o.tls;
  co.ca_file = o.ca_file;
  co.tls_server_name = o.server_name;
  co.token_file = o.token_file;
  co.node = xds::BuildNode(id);
  co.backoff = {.initial = std::chrono::milliseconds(200), .max = std::chrono::seconds(2)};

  config::ConfigStore store;
  if (o.watch)
    store.Subscribe(PrintDiff);
  xds::AdsClient client(co, store);
  if (auto ok = client.Start(); !ok) {
    Die("ads-dump", ok.error().message, 2);
  }
  auto deadline = std::chrono::steady_clock::now() +
                  std::chrono::milliseconds(static_cast<int64_t>(o.timeout_s * 1000));
  while (!o.watch && !Synced(client.Status())) {
    if (std::chrono::steady_clock::now() > deadline) {
      auto st = client.Status();
      client.Stop();
      std::cerr << "sluicectl ads-dump: no complete config from " << o.server << " as "
                << co.node.id() << " within " << o.timeout_s << " s";
      if (!st.last_stream_error.empty())
        std::cerr << " (stream: " << st.last_stream_error << ")";
      std::cerr << "\n";
      for (const auto& [type, t] : st.types) {
        if (!t.last_nack.empty())
          std::cerr << "  NACK " << type << ": " << t.last_nack << "\n";
      }
      throw CLI::RuntimeError(1);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (o.watch) {
    while (true)
      std::this_thread::sleep_for(std::chrono::hours(1));  // until ^C
  }
  auto versions = Versions(client.Status());
  bool refused = false;  // by name, in a NACK: printed, and the exit status says so
  for (const auto& [type, t] : client.Status().types) {
    for (const auto& [name, issue] : t.refused) {
      std::cerr << "refused " << type << " \"" << name << "\": " << issue.reason << "\n";
      refused = true;
    }
  }
  client.Stop();
  auto snap = store.Current();
  if (o.json) {
    PrintJson(*snap, versions);
  } else {
    PrintTables(*snap, versions);
  }
  if (refused)
    throw CLI::RuntimeError(1);
}

}  // namespace

void AddAdsCommands(CLI::App& app) {
  auto o = std::make_shared<AdsDumpOptions>();
  auto* cmd = app.add_subcommand(
      "ads-dump", "Fetch a proxy's config over ADS as the agent does (istiod or xds serve)");
  cmd->add_option("--server", o->server, "ADS server host:port")->capture_default_str();
  cmd->add_option("--role", o->role, "sidecar or router (gateway)")->capture_default_str();
  cmd->add_option("--ip", o->ip, "the proxy's IP (node ID, INSTANCE_IPS)")->capture_default_str();
  cmd->add_option("--pod", o->pod, "pod name")->capture_default_str();
  cmd->add_option("--namespace,-n", o->ns, "pod namespace")->capture_default_str();
  cmd->add_option("--label,-l", o->labels, "pod label key=value (repeatable)");
  cmd->add_flag("--tls", o->tls, "TLS (istiod's port 15012)");
  cmd->add_option("--ca-file", o->ca_file, "CA bundle to verify the server");
  cmd->add_option("--server-name", o->server_name, "name to verify in the server certificate");
  cmd->add_option("--token-file", o->token_file, "bearer token file (needs --tls)");
  cmd->add_option("--timeout", o->timeout_s, "seconds to wait for a complete config")
      ->capture_default_str();
  cmd->add_flag("--json", o->json, "print the resources as JSON");
  cmd->add_flag("--watch", o->watch, "stay connected and print each applied diff");
  cmd->callback([o] { RunAdsDump(*o); });
}

}  // namespace sluice::ctl
