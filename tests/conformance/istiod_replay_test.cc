// Real istiod configuration, replayed to the agent's own ADS client as istiod serves it,
// then compiled by the proxy: what Sluice accepts, what it refuses by name and why, what
// it skips, and that everything accepted is served (docs/control-plane.md, "Per-resource
// acceptance").
//
// The configuration is the corpus in istiod/ (dumps captured from istiod-fed Envoys, see
// its README): only what istiod sent is replayed — a dump's dynamic resources; its
// static ones came from the bootstrap. The server is a stand-in for istiod (which does
// not run here) that follows its state-of-the-world ADS: CDS and LDS answer with every
// resource, EDS and RDS with the names asked for, an ACK or NACK is not answered. A name
// the dump lacks (the 1.18 capture holds listeners only) is answered as istiod answers
// every name it is asked for: an empty ClusterLoadAssignment (a service without
// endpoints), an empty RouteConfiguration of that name (no virtual host: 404 NR).
#include <grpcpp/grpcpp.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "envoy/service/discovery/v3/ads.grpc.pb.h"
#include "sluice/config/store.h"
#include "sluice/proxy/config.h"
#include "sluice/proxy/config_json.h"
#include "sluice/proxy/istio_stats.h"
#include "sluice/xds/ads_client.h"

using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace sx = sluice::xds;
using envoy::service::discovery::v3::DiscoveryRequest;
using envoy::service::discovery::v3::DiscoveryResponse;

namespace {

// What istiod sent: the dump's dynamic resources (its "static_*" sections came from the
// bootstrap file, not from istiod), as Sluice's loader reads them.
sx::ResourceSet IstiodSent(const std::string& file, std::vector<std::string>* unparsed) {
  std::ifstream in(fs::path(SLUICE_CORPUS) / file);
  std::stringstream ss;
  ss << in.rdbuf();
  auto doc = nlohmann::json::parse(ss.str());
  for (auto& c : doc["configs"]) {
    for (auto it = c.begin(); it != c.end();) {
      if (it.key().starts_with("static"))
        it = c.erase(it);
      else
        ++it;
    }
  }
  auto loaded = sluice::proxy::LoadConfigJson(doc.dump());
  REQUIRE(loaded);
  *unparsed = loaded->unparsed;
  return loaded->resources;
}

class IstiodStandIn final
    : public envoy::service::discovery::v3::AggregatedDiscoveryService::Service {
 public:
  explicit IstiodStandIn(sx::ResourceSet rs) : rs_(std::move(rs)) {}

  grpc::Status StreamAggregatedResources(
      grpc::ServerContext*,
      grpc::ServerReaderWriter<DiscoveryResponse, DiscoveryRequest>* stream) override {
    std::map<std::string, std::set<std::string>> answered;  // per type: names last answered
    DiscoveryRequest req;
    while (stream->Read(&req)) {
      const std::string& type = req.type_url();
      std::set<std::string> names(req.resource_names().begin(), req.resource_names().end());
      {
        std::lock_guard lock(mu_);
        if (req.has_error_detail())
          nacks_[type] = req.error_detail().message();
        else if (!req.response_nonce().empty())
          nacks_.erase(type);
      }
      auto it = answered.find(type);
      if (!req.response_nonce().empty() && it != answered.end() && it->second == names)
        continue;  // an ACK or NACK of what was sent
      answered[type] = names;
      DiscoveryResponse resp;
      resp.set_type_url(type);
      resp.set_version_info("2023-06-20T09:08:58Z/4");
      resp.set_nonce(std::to_string(++nonce_));
      if (type == sx::kClusterType) {
        for (const auto& [n, c] : rs_.clusters)
          resp.add_resources()->PackFrom(c);
      } else if (type == sx::kListenerType) {
        for (const auto& [n, l] : rs_.listeners)
          resp.add_resources()->PackFrom(l);
      } else if (type == sx::kEndpointType) {
        for (const auto& n : names) {
          auto e = rs_.endpoints.find(n);
          envoy::config::endpoint::v3::ClusterLoadAssignment empty;
          empty.set_cluster_name(n);
          resp.add_resources()->PackFrom(e != rs_.endpoints.end() ? e->second : empty);
        }
      } else if (type == sx::kRouteType) {
        for (const auto& n : names) {
          auto r = rs_.routes.find(n);
          envoy::config::route::v3::RouteConfiguration empty;
          empty.set_name(n);
          resp.add_resources()->PackFrom(r != rs_.routes.end() ? r->second : empty);
        }
      }
      if (!stream->Write(resp))
        break;
    }
    return grpc::Status::OK;
  }

  std::string Nack(std::string_view type) {
    std::lock_guard lock(mu_);
    auto it = nacks_.find(std::string(type));
    return it == nacks_.end() ? "" : it->second;
  }

 private:
  sx::ResourceSet rs_;
  std::mutex mu_;
  std::map<std::string, std::string> nacks_;  // type -> error_detail of its last NACK
  int nonce_ = 0;
};

// The agent's ADS client against the stand-in, until the exchange has settled.
struct Replay {
  explicit Replay(const std::string& file) : sent(IstiodSent(file, &unparsed)), istiod(sent) {
    grpc::ServerBuilder b;
    int port = 0;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    b.RegisterService(&istiod);
    server = b.BuildAndStart();
    REQUIRE(port > 0);
    sx::AdsClientOptions o;
    o.server = "127.0.0.1:" + std::to_string(port);
    o.node.set_id("sidecar~10.244.0.12~replay.default~default.svc.cluster.local");
    client = std::make_unique<sx::AdsClient>(o, store);
    REQUIRE(client->Start());
    // Settled: LDS applied (it comes after CDS and EDS) and nothing changed for 300 ms.
    auto deadline = std::chrono::steady_clock::now() + 20s;
    std::string last;
    auto quiet_since = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() < deadline) {
      auto st = client->Status();
      std::string now;
      for (const auto& [t, s] : st.types)
        now += t + ":" + std::to_string(s.applied) + "/" + std::to_string(s.nacks) + ";";
      bool lds = st.types.contains(std::string(sx::kListenerType)) &&
                 st.types.at(std::string(sx::kListenerType)).applied > 0;
      if (now != last) {
        last = now;
        quiet_since = std::chrono::steady_clock::now();
      } else if (lds && std::chrono::steady_clock::now() - quiet_since > 300ms) {
        break;
      }
      std::this_thread::sleep_for(20ms);
    }
    status = client->Status();
  }
  ~Replay() {
    client->Stop();
    server->Shutdown();
  }
  const sx::TypeStatus& Type(std::string_view t) const { return status.types.at(std::string(t)); }
  std::set<std::string> Refused(std::string_view t) const {
    std::set<std::string> out;
    for (const auto& [n, i] : Type(t).refused)
      out.insert(n);
    return out;
  }
  std::set<std::string> Skipped(std::string_view t) const {
    std::set<std::string> out;
    for (const auto& [n, i] : Type(t).skipped)
      out.insert(n);
    return out;
  }

  std::vector<std::string> unparsed;
  sx::ResourceSet sent;
  IstiodStandIn istiod;
  std::unique_ptr<grpc::Server> server;
  sluice::config::ConfigStore store;
  std::unique_ptr<sx::AdsClient> client;
  sx::AdsClientStatus status;
};

// Accepted resources are the ones sent less the refused and the skipped.
template <class M>
std::set<std::string> Names(const M& m) {
  std::set<std::string> out;
  for (const auto& [n, r] : m)
    out.insert(n);
  return out;
}
std::set<std::string> Minus(std::set<std::string> a, const std::set<std::string>& b) {
  for (const auto& x : b)
    a.erase(x);
  return a;
}

// Compiles what the client accepted, as the gateway role and sluice-proxy do.
std::shared_ptr<const sluice::proxy::ProxyConfig> Served(const Replay& r) {
  auto cfg = sluice::proxy::Compile(r.store.Current()->ToResourceSet());
  REQUIRE(cfg);
  return *cfg;
}
std::set<std::string> ListenerNames(const sluice::proxy::ProxyConfig& c) {
  std::set<std::string> out;
  for (const auto& l : c.listeners)
    out.insert(l.name.substr(0, l.name.find('~')));
  return out;
}

}  // namespace

TEST_CASE(
    "an Istio 1.18 sidecar's listeners: virtualInbound served with its rbac filters, HBONE "
    "listeners skipped or refused by name, every other listener served") {
  Replay r("sidecar-1.18-productpage-listeners.json");
  CHECK(r.unparsed.empty());
  REQUIRE(r.sent.listeners.size() == 27);
  // virtualInbound carries the rbac filters (AuthorizationPolicy) and Istio's network
  // authn filter (mTLS peer identity: nothing on plaintext): served. HBONE's
  // connect_terminate carries connect_baggage, which Sluice does not know: refused by
  // name, in the NACK.
  CHECK(r.Refused(sx::kListenerType) == std::set<std::string>{"connect_terminate"});
  for (const auto& [name, issue] : r.Type(sx::kListenerType).refused) {
    INFO(name << ": " << issue.reason);
    CHECK(issue.reason_class == "unknown_filter");
  }
  const std::string nack = r.istiod.Nack(sx::kListenerType);
  CHECK(nack.find("virtualInbound") == std::string::npos);
  CHECK(nack.find("connect_terminate") != std::string::npos);
  // The HBONE listeners have no socket address: no use without mTLS, skipped (ACKed).
  CHECK(r.Skipped(sx::kListenerType) ==
        std::set<std::string>{"connect_originate", "main_internal"});
  // The telemetry filters of the served listeners are skipped and counted by type.
  const auto& filters = r.Type(sx::kListenerType).skipped_filters;
  CHECK(filters.size() >= 3);
  // Everything else is in force and compiles: no listener refused by the proxy.
  const auto accepted = Minus(Minus(Names(r.sent.listeners), r.Refused(sx::kListenerType)),
                              r.Skipped(sx::kListenerType));
  CHECK(accepted.size() == 24);
  CHECK(Names(r.store.Current()->listeners) == accepted);
  auto served = Served(r);
  for (const auto& x : served->refused)
    FAIL_CHECK(x.kind << " " << x.name << ": " << x.reason);
  CHECK(ListenerNames(*served) == accepted);
  // The proxy enforces virtualInbound's policy: its HTTP chains carry the compiled rbac
  // filters, its TCP chains the network ones.
  std::size_t http_rbac = 0, network_rbac = 0;
  for (const auto& l : served->listeners) {
    if (l.name != "virtualInbound")
      continue;
    for (const auto& c : l.chains) {
      http_rbac += c.http.rbac.size();
      network_rbac += c.network_rbac.size();
    }
  }
  CHECK(http_rbac > 0);
  CHECK(network_rbac > 0);
  // istiod put istio.stats (an empty stats.PluginConfig) on every chain: each served
  // chain records Istio's metrics, with nothing dropped.
  std::size_t chains = 0;
  for (const auto& l : served->listeners) {
    for (const auto& c : l.chains) {
      if (!c.fail_closed.empty())
        continue;
      INFO(l.name << " " << c.name);
      ++chains;
      REQUIRE(c.istio_stats);
      CHECK(c.istio_stats->drop == 0);
    }
  }
  CHECK(chains > 20);
}

TEST_CASE(
    "an Istio 1.10 sidecar: every cluster and route accepted, every listener served but "
    "virtualInbound, whose legacy authn filter is not even decodable") {
  Replay r("sidecar-1.10-details.json");
  // The 1.10 virtualInbound carries istio.authentication.v1alpha1 (no proto here): the
  // loader names it, and it never reaches the client.
  REQUIRE(r.unparsed.size() == 1);
  CHECK(r.unparsed[0].find("virtualInbound") != std::string::npos);
  CHECK_FALSE(r.sent.listeners.contains("virtualInbound"));
  CHECK(r.sent.clusters.size() == 23);
  CHECK(r.Refused(sx::kClusterType).empty());
  CHECK(Names(r.store.Current()->clusters) == Names(r.sent.clusters));
  CHECK(r.Refused(sx::kListenerType).empty());
  CHECK(Names(r.store.Current()->listeners) == Names(r.sent.listeners));
  // Istio 1.10's telemetry is Wasm (stats, metadata exchange): skipped as telemetry.
  CHECK_FALSE(r.Type(sx::kListenerType).skipped_filters.empty());
  // Routes: every name the listeners ask for came from the dump.
  CHECK(r.Refused(sx::kRouteType).empty());
  CHECK(r.store.Current()->routes.size() == r.sent.routes.size());
  auto served = Served(r);
  for (const auto& x : served->refused)
    FAIL_CHECK(x.kind << " " << x.name << ": " << x.reason);
  CHECK(ListenerNames(*served) == Names(r.sent.listeners));
  CHECK(served->cluster_count == r.sent.clusters.size());
}

TEST_CASE("an Istio 1.7 ingress gateway's clusters: all accepted and compiled") {
  Replay r("gateway-1.7alpha-ingressgateway.json");
  CHECK(r.sent.clusters.size() == 59);
  CHECK(r.Refused(sx::kClusterType).empty());
  CHECK(r.Skipped(sx::kClusterType).empty());
  CHECK(Names(r.store.Current()->clusters) == Names(r.sent.clusters));
  auto served = Served(r);
  for (const auto& x : served->refused)
    FAIL_CHECK(x.kind << " " << x.name << ": " << x.reason);
  CHECK(served->cluster_count == 59);
}

TEST_CASE("an Istio 1.21 waypoint: its internal listener skipped, nothing refused") {
  Replay r("waypoint-1.21-httpbin.json");
  CHECK(r.Skipped(sx::kListenerType) == std::set<std::string>{"main_internal"});
  CHECK(r.Refused(sx::kListenerType).empty());
  CHECK(r.Refused(sx::kClusterType).empty());
  CHECK(r.store.Current()->listeners.empty());
}
