// The L7 wire's config changes (l7_wire.h): a change travels as its delta against the
// generation the L7 process holds, and the whole set goes where that base is missing.
// - the delta's encoding applied with ApplyEdit gives the snapshot it was made from;
// - the L7 process's side (RunL7Host, in this process over a socketpair): a delta on its
//   base compiles only what changed, one on another base is refused with "resend", and a
//   whole set always applies;
// - the agent's side (L7Supervisor with the real `sluice-agent --role l7`): updates go as
//   deltas, a restarted process gets the whole config (its answer says it compiled every
//   cluster), and updates queued while the process is stopped end in the newest config.
// No pods, so no network namespace: unit tests.
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>

#include <catch2/catch.hpp>

#include "admin_text.h"
#include "l7_host.h"
#include "l7_supervisor.h"
#include "l7_wire.h"
#include "sluice/config/snapshot.h"
#include "sluice/proxy/config.h"

namespace agent = sluice::agent;
namespace config = sluice::config;
namespace l7wire = sluice::agent::l7wire;
using nlohmann::json;

namespace {

constexpr int kServices = 50;

std::string ClusterOf(int i) {
  return "outbound|80||svc-" + std::to_string(i) + ".test.svc.cluster.local";
}

json Cla(int i, int port) {
  return {{"cluster_name", ClusterOf(i)},
          {"endpoints",
           json::array({{{"lb_endpoints",
                          json::array({{{"endpoint",
                                         {{"address",
                                           {{"socket_address",
                                             {{"address", "10.1.0." + std::to_string(i + 1)},
                                              {"port_value", port}}}}}}}}})}}})}};
}

// kServices EDS clusters behind one RDS table and an outbound listener with
// use_original_dst (what a pod's config needs to be applied).
config::Snapshot Mesh(int services = kServices) {
  json clusters = json::array(), endpoints = json::array(), vhosts = json::array();
  for (int i = 0; i < services; ++i) {
    clusters.push_back({{"name", ClusterOf(i)},
                        {"type", "EDS"},
                        {"eds_cluster_config", {{"eds_config", {{"ads", json::object()}}}}},
                        {"connect_timeout", "1s"}});
    endpoints.push_back(Cla(i, 8080));
    vhosts.push_back({{"name", "svc-" + std::to_string(i)},
                      {"domains", json::array({"svc-" + std::to_string(i)})},
                      {"routes", json::array({{{"match", {{"prefix", "/"}}},
                                               {"route", {{"cluster", ClusterOf(i)}}}}})}});
  }
  json hcm = {
      {"name", "envoy.filters.network.http_connection_manager"},
      {"typed_config",
       {{"@type",
         "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager."
         "v3.HttpConnectionManager"},
        {"stat_prefix", "outbound"},
        {"rds", {{"route_config_name", "80"}, {"config_source", {{"ads", json::object()}}}}},
        {"http_filters",
         json::array({{{"name", "envoy.filters.http.router"},
                       {"typed_config",
                        {{"@type",
                          "type.googleapis.com/"
                          "envoy.extensions.filters.http.router.v3.Router"}}}}})}}}};
  json doc = {
      {"clusters", clusters},
      {"endpoints", endpoints},
      {"routes", json::array({{{"name", "80"}, {"virtual_hosts", vhosts}}})},
      {"listeners",
       json::array(
           {{{"name", "virtualOutbound"},
             {"address", {{"socket_address", {{"address", "0.0.0.0"}, {"port_value", 15001}}}}},
             {"use_original_dst", true},
             {"filter_chains", json::array({{{"filters", json::array({hcm})}}})}}})}};
  auto rs = sluice::proxy::ParseResourceSetJson(doc.dump());
  REQUIRE(rs);
  auto s = config::Snapshot::FromResourceSet(*rs);
  s.generation = 1;
  return s;
}

// `before` with service i's endpoint on `port`, as generation `gen`.
std::shared_ptr<const config::Snapshot> MoveEndpoint(const config::Snapshot& before, int i,
                                                     int port, uint64_t gen) {
  auto rs =
      sluice::proxy::ParseResourceSetJson(json{{"endpoints", json::array({Cla(i, port)})}}.dump());
  REQUIRE(rs);
  config::SnapshotEdit edit;
  for (auto& [name, cla] : rs->endpoints)
    edit.endpoints[name] =
        std::make_shared<const envoy::config::endpoint::v3::ClusterLoadAssignment>(cla);
  auto r = config::ApplyEdit(before, std::move(edit));
  REQUIRE(r);
  auto s = std::make_shared<config::Snapshot>(std::move(r->first));
  s->generation = gen;
  return s;
}

// Same names and, name by name, the same content.
template <class Map>
void CheckSame(const Map& a, const Map& b) {
  REQUIRE(a.size() == b.size());
  for (const auto& [name, r] : a) {
    REQUIRE(b.contains(name));
    CHECK(config::CanonicalBytes(*r) == config::CanonicalBytes(*b.at(name)));
  }
}

// The agent's end of a socketpair to an L7 host running on a thread of this process.
class Host {
 public:
  Host() {
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    agent_ = sv[0];
    thread_ = std::thread([fd = sv[1]] {
      agent::RunL7Host({.sock = fd, .port = 15001, .inbound_port = 0});
      close(fd);
    });
  }
  ~Host() {
    close(agent_);  // the host ends at the end of its stream
    thread_.join();
  }
  void Send(const l7wire::Message& m) { REQUIRE(l7wire::Send(agent_, m)); }
  // The host's answer to the config of this generation (status reports are skipped).
  json Applied(uint64_t generation) {
    while (true) {
      auto m = l7wire::Receive(agent_);
      REQUIRE(m);
      REQUIRE(*m);
      if ((*m)->type == l7wire::Type::kApplied &&
          (*m)->meta.value("generation", uint64_t{0}) == generation)
        return (*m)->meta;
    }
  }
  void Full(const config::Snapshot& s) {
    Send({l7wire::Type::kNodeConfig,
          {{"generation", s.generation}},
          l7wire::EncodeResources(s.ToResourceSet()),
          {}});
  }
  void Delta(const config::Snapshot& before, const config::Snapshot& after,
             std::optional<uint64_t> base = std::nullopt) {
    l7wire::Message m{l7wire::Type::kNodeConfig, {{"generation", after.generation}}, {}, {}};
    m.blob = l7wire::EncodeDelta(before, after, &m.meta);
    if (base)
      m.meta["base"] = *base;
    Send(m);
  }

 private:
  int agent_ = -1;
  std::thread thread_;
};

template <class F>
bool WaitFor(F pred, int timeout_ms = 10000) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (std::chrono::steady_clock::now() < end) {
    if (pred())
      return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return pred();
}

}  // namespace

TEST_CASE("a config delta on the wire, applied to its base, gives the snapshot it came from",
          "[daemon][l7]") {
  const config::Snapshot s1 = Mesh();
  auto s2 = MoveEndpoint(s1, 3, 9090, 2);
  config::SnapshotEdit remove;
  remove.removed_clusters = {ClusterOf(4)};
  remove.removed_endpoints = {ClusterOf(4)};
  auto r3 = config::ApplyEdit(*s2, std::move(remove));
  REQUIRE(r3);
  const config::Snapshot& s3 = r3->first;

  json meta = json::object();
  const std::string blob = l7wire::EncodeDelta(s1, s3, &meta);
  CHECK(meta["base"] == 1);
  CHECK(meta["removed"]["clusters"] == json::array({ClusterOf(4)}));
  CHECK(meta["removed"]["endpoints"] == json::array({ClusterOf(4)}));
  auto edit = l7wire::DecodeDelta(meta, blob);
  REQUIRE(edit);
  // Only what changed travels: one ClusterLoadAssignment.
  CHECK(edit->endpoints.size() == 1);
  CHECK(edit->clusters.empty());
  CHECK(edit->routes.empty());
  CHECK(edit->listeners.empty());
  auto applied = config::ApplyEdit(s1, std::move(*edit));
  REQUIRE(applied);
  CheckSame(applied->first.clusters, s3.clusters);
  CheckSame(applied->first.endpoints, s3.endpoints);
  CheckSame(applied->first.routes, s3.routes);
  CheckSame(applied->first.listeners, s3.listeners);

  CHECK_FALSE(l7wire::DecodeDelta(meta, "not a DiscoveryResponse \xff\xff"));
}

TEST_CASE("a delta made from the store's diff carries what the walk over both snapshots finds",
          "[daemon][l7]") {
  const config::Snapshot s1 = Mesh();
  auto moved = MoveEndpoint(s1, 3, 9090, 2);
  config::SnapshotEdit edit;
  edit.removed_clusters = {ClusterOf(4)};
  edit.removed_endpoints = {ClusterOf(4)};
  edit.endpoints[ClusterOf(3)] = moved->endpoints.at(ClusterOf(3));
  auto r = config::ApplyEdit(s1, std::move(edit));
  REQUIRE(r);
  json walk_meta = json::object(), diff_meta = json::object();
  const std::string walk = l7wire::EncodeDelta(s1, r->first, &walk_meta);
  const std::string from_diff = l7wire::EncodeDelta(1, r->first, r->second, &diff_meta);
  CHECK(walk_meta == diff_meta);
  auto a = l7wire::DecodeDelta(walk_meta, walk);
  auto b = l7wire::DecodeDelta(diff_meta, from_diff);
  REQUIRE(a);
  REQUIRE(b);
  CHECK(a->endpoints.size() == 1);
  REQUIRE(b->endpoints.size() == 1);
  CHECK(config::CanonicalBytes(*a->endpoints.begin()->second) ==
        config::CanonicalBytes(*b->endpoints.begin()->second));
  CHECK(b->removed_clusters == std::vector<std::string>{ClusterOf(4)});
}

TEST_CASE("SDS secrets travel on the wire, whole and as deltas, and /config_dump redacts keys",
          "[daemon][l7][tls]") {
  auto secret = [](const std::string& name, const std::string& cert) {
    envoy::extensions::transport_sockets::tls::v3::Secret s;
    s.set_name(name);
    s.mutable_tls_certificate()->mutable_certificate_chain()->set_inline_bytes(cert);
    s.mutable_tls_certificate()->mutable_private_key()->set_inline_bytes("PRIVATE KEY BYTES");
    return s;
  };
  const config::Snapshot s1 = Mesh();
  sluice::xds::ResourceSet rs = s1.ToResourceSet();
  rs.Add(secret("kubernetes://a", "CERT a"));
  auto ca = secret("kubernetes://a-cacert", "");
  ca.clear_tls_certificate();
  ca.mutable_validation_context()->mutable_trusted_ca()->set_inline_bytes("CA a");
  rs.Add(ca);
  auto whole = l7wire::DecodeResources(l7wire::EncodeResources(rs));
  REQUIRE(whole);
  REQUIRE(whole->secrets.size() == 2);
  CHECK(whole->secrets.at("kubernetes://a").tls_certificate().private_key().inline_bytes() ==
        "PRIVATE KEY BYTES");

  config::Snapshot s2 = config::Snapshot::FromResourceSet(rs);
  config::AdoptUnchanged(s1, s2);  // unchanged resources keep s1's objects, as the store does
  json meta = json::object();
  std::string blob = l7wire::EncodeDelta(s1, s2, &meta);
  auto edit = l7wire::DecodeDelta(meta, blob);
  REQUIRE(edit);
  CHECK(edit->secrets.size() == 2);
  CHECK(edit->listeners.empty());
  // A rotated certificate and a removed CA.
  sluice::xds::ResourceSet rotated = rs;
  rotated.Add(secret("kubernetes://a", "CERT a2"));
  rotated.secrets.erase("kubernetes://a-cacert");
  config::Snapshot s3 = config::Snapshot::FromResourceSet(rotated);
  const config::Diff diff = config::AdoptUnchanged(s2, s3);
  meta = json::object();
  blob = l7wire::EncodeDelta(2, s3, diff, &meta);
  CHECK(meta["removed"]["secrets"] == json::array({"kubernetes://a-cacert"}));
  edit = l7wire::DecodeDelta(meta, blob);
  REQUIRE(edit);
  REQUIRE(edit->secrets.size() == 1);
  CHECK(edit->secrets.at("kubernetes://a")->tls_certificate().certificate_chain().inline_bytes() ==
        "CERT a2");
  CHECK(edit->removed_secrets == std::vector<std::string>{"kubernetes://a-cacert"});

  // The dump shows the certificates and CAs, never a private key.
  json dump = agent::DumpResources(s2);
  REQUIRE(dump["secrets"].size() == 2);
  const std::string text = dump.dump();
  CHECK(text.find("PRIVATE KEY BYTES") == std::string::npos);
  CHECK(text.find("UFJJVkFURSBLRVkgQllURVM=") == std::string::npos);  // nor its base64
  const json& cert = dump["secrets"][0];
  CHECK(cert["name"] == "kubernetes://a");
  // "[redacted]" as bytes, printed base64 as proto3 JSON prints bytes (Envoy's dump too).
  CHECK(cert["tlsCertificate"]["privateKey"]["inlineBytes"] == "W3JlZGFjdGVkXQ==");
  CHECK(cert["tlsCertificate"]["certificateChain"]["inlineBytes"] == "Q0VSVCBh");  // "CERT a"
  CHECK(dump["secrets"][1]["validationContext"]["trustedCa"]["inlineBytes"] == "Q0EgYQ==");
}

TEST_CASE("the L7 process applies a delta on its base only, and asks for the whole set otherwise",
          "[daemon][l7]") {
  const config::Snapshot s1 = Mesh();
  Host host;
  // A delta before any config: no base.
  auto s2 = MoveEndpoint(s1, 7, 9001, 2);
  host.Delta(s1, *s2);
  json a = host.Applied(2);
  CHECK(a["resend"] == true);
  CHECK(a["applied"] == false);

  host.Full(s1);
  a = host.Applied(1);
  REQUIRE(a["applied"] == true);
  CHECK(a["built"]["clusters"] == kServices);
  CHECK(a["built"]["routes"] == 1);
  CHECK(a["built"]["listeners"] == 1);

  // On its base: one cluster compiled, nothing else.
  host.Delta(s1, *s2);
  a = host.Applied(2);
  REQUIRE(a["applied"] == true);
  CHECK(a["built"]["clusters"] == 1);
  CHECK(a["built"]["routes"] == 0);
  CHECK(a["built"]["listeners"] == 0);

  // A gap: generation 3 was never sent, so a change from it has no base here.
  auto s3 = MoveEndpoint(*s2, 8, 9002, 3);
  auto s4 = MoveEndpoint(*s3, 9, 9003, 4);
  host.Delta(*s3, *s4);
  a = host.Applied(4);
  CHECK(a["resend"] == true);
  CHECK(a["applied"] == false);
  // The whole set mends it, and the next delta applies on it.
  host.Full(*s4);
  a = host.Applied(4);
  REQUIRE(a["applied"] == true);
  CHECK(a["built"]["clusters"] == kServices);
  auto s5 = MoveEndpoint(*s4, 10, 9004, 5);
  host.Delta(*s4, *s5);
  a = host.Applied(5);
  REQUIRE(a["applied"] == true);
  CHECK(a["built"]["clusters"] == 1);
}

TEST_CASE("the supervisor sends changes as deltas and the whole config to a restarted L7 process",
          "[daemon][l7]") {
  agent::L7Supervisor sup(
      {.argv = {SLUICE_AGENT_PATH, "--role", "l7", "--inbound-port", "0", "--log-level", "warn"}});
  REQUIRE(sup.Start());
  auto s1 = std::make_shared<const config::Snapshot>(Mesh());
  sup.SetNodeConfig(s1);
  REQUIRE(WaitFor([&] { return sup.Node().applied == 1; }));
  CHECK(sup.Node().built.clusters == kServices);

  auto s2 = MoveEndpoint(*s1, 1, 9001, 2);
  sup.SetNodeConfig(s2);
  REQUIRE(WaitFor([&] { return sup.Node().applied == 2; }));
  CHECK(sup.Node().built.clusters == 1);
  CHECK(sup.Node().built.routes == 0);
  CHECK(sup.Node().built.listeners == 0);

  // A new process has no base: the replay is the whole config.
  const pid_t first = sup.pid();
  REQUIRE(first > 0);
  REQUIRE(kill(first, SIGKILL) == 0);
  REQUIRE(WaitFor([&] {
    return sup.restarts() == 1 && sup.pid() != first && sup.Node().built.clusters == kServices;
  }));
  CHECK(sup.Node().applied == 2);
  // and a change after it is a delta on that base.
  // (with the store's diff: the change made from it)
  config::SnapshotEdit e3;
  e3.endpoints[ClusterOf(2)] = MoveEndpoint(*s2, 2, 9002, 3)->endpoints.at(ClusterOf(2));
  auto r3 = config::ApplyEdit(*s2, std::move(e3));
  REQUIRE(r3);
  auto s3 = std::make_shared<config::Snapshot>(std::move(r3->first));
  s3->generation = 3;
  sup.SetNodeConfig(s3, &r3->second);
  REQUIRE(WaitFor([&] { return sup.Node().applied == 3; }));
  CHECK(sup.Node().built.clusters == 1);

  // Changes queued while the process cannot read supersede each other; it ends on the
  // newest config (a superseded change turns the next into the whole set).
  REQUIRE(kill(sup.pid(), SIGSTOP) == 0);
  std::shared_ptr<const config::Snapshot> s = s3;
  for (uint64_t gen = 4; gen <= 8; ++gen) {
    s = MoveEndpoint(*s, static_cast<int>(gen), static_cast<int>(9000 + gen), gen);
    sup.SetNodeConfig(s);
  }
  REQUIRE(kill(sup.pid(), SIGCONT) == 0);
  REQUIRE(WaitFor([&] { return sup.Node().applied == 8; }));
  CHECK(sup.Node().error.empty());
  CHECK(sup.Node().running == s);
  // One more change applies as a delta: the process holds generation 8.
  auto s9 = MoveEndpoint(*s, 20, 9020, 9);
  sup.SetNodeConfig(s9);
  REQUIRE(WaitFor([&] { return sup.Node().applied == 9; }));
  CHECK(sup.Node().built.clusters == 1);
}

TEST_CASE("the wire's cost of a one-endpoint change at 10,000 services (printed)",
          "[.bench][daemon][l7]") {
  using Clock = std::chrono::steady_clock;
  auto ms = [](Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); };
  auto s = std::make_shared<const config::Snapshot>(Mesh(10000));
  auto t0 = Clock::now();
  const std::string whole = l7wire::EncodeResources(s->ToResourceSet());
  const double whole_ms = ms(Clock::now() - t0);
  std::vector<double> encode, decode, from_diff;
  for (int i = 0; i < 50; ++i) {
    config::SnapshotEdit change;
    change.endpoints[ClusterOf(i * 97 % 10000)] =
        MoveEndpoint(*s, i * 97 % 10000, 9000 + i, 0)->endpoints.at(ClusterOf(i * 97 % 10000));
    auto applied = config::ApplyEdit(*s, std::move(change));
    REQUIRE(applied);
    auto next = std::make_shared<config::Snapshot>(std::move(applied->first));
    next->generation = s->generation + 1;
    json diff_meta = json::object();
    auto d0 = Clock::now();
    (void)l7wire::EncodeDelta(s->generation, *next, applied->second, &diff_meta);
    from_diff.push_back(ms(Clock::now() - d0));
    json meta = json::object();
    auto e0 = Clock::now();
    const std::string blob = l7wire::EncodeDelta(*s, *next, &meta);
    auto e1 = Clock::now();
    auto edit = l7wire::DecodeDelta(meta, blob);
    auto e2 = Clock::now();
    REQUIRE(edit);
    CHECK(edit->endpoints.size() == 1);
    encode.push_back(ms(e1 - e0));
    decode.push_back(ms(e2 - e1));
    s = next;
  }
  std::sort(encode.begin(), encode.end());
  std::sort(decode.begin(), decode.end());
  std::sort(from_diff.begin(), from_diff.end());
  std::printf(
      "10000 services: whole set encoded %.1f ms (%zu bytes); one-endpoint delta encoded median "
      "%.3f ms by the walk, %.3f ms from the store's diff; decoded median %.3f ms\n",
      whole_ms, whole.size(), encode[encode.size() / 2], from_diff[from_diff.size() / 2],
      decode[decode.size() / 2]);
}
