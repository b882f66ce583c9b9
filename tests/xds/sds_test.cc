// SDS over ADS (issue 18): the agent's client asks for the secrets its listeners name, by
// name, and Sluice's server answers with exactly those, over real gRPC streams on loopback,
// in both protocols (SotW and Delta), in plaintext and as Kubernetes mode meets istiod
// (TLS on 15012 with a bearer token: the agent reads Secrets only through istiod's SDS). A
// secret change, and a listener that names another secret, reach the store.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "envoy/extensions/transport_sockets/tls/v3/tls.pb.h"
#include "fixtures.h"
#include "istiod_cert.h"
#include "sluice/config/store.h"
#include "sluice/xds/ads_client.h"
#include "sluice/xds/ads_server.h"
#include "sluice/xds/node.h"

using namespace std::chrono_literals;
namespace sx = sluice::xds;
namespace config = sluice::config;
namespace tls_v3 = envoy::extensions::transport_sockets::tls::v3;
using Kind = sx::AdsServerEvent::Kind;

namespace {

template <class F>
bool WaitFor(F pred, std::chrono::milliseconds limit = 5s) {
  auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (pred())
      return true;
    std::this_thread::sleep_for(5ms);
  }
  return pred();
}

tls_v3::Secret CertSecret(const std::string& name, const std::string& cert) {
  tls_v3::Secret s;
  s.set_name(name);
  s.mutable_tls_certificate()->mutable_certificate_chain()->set_inline_bytes(cert);
  s.mutable_tls_certificate()->mutable_private_key()->set_inline_bytes("KEY of " + name);
  return s;
}

// A gateway's HTTPS listener whose one chain names the SDS secret `credential` over ADS.
envoy::config::listener::v3::Listener TlsListener(const std::string& credential) {
  auto l = sluice::testing::HttpListener("0.0.0.0_443", 443, "https.443");
  tls_v3::DownstreamTlsContext ctx;
  auto* sds = ctx.mutable_common_tls_context()->add_tls_certificate_sds_secret_configs();
  sds->set_name(credential);
  sds->mutable_sds_config()->mutable_ads();
  auto* ts = l.mutable_filter_chains(0)->mutable_transport_socket();
  ts->set_name("envoy.transport_sockets.tls");
  ts->mutable_typed_config()->PackFrom(ctx);
  return l;
}

sx::ResourceSet Set(const std::string& credential, const std::string& cert_a) {
  sx::ResourceSet rs = sluice::testing::HttpbinSet(1);
  rs.Add(TlsListener(credential));
  rs.Add(sluice::testing::RouteTo("https.443", "httpbin.example.com", rs.clusters.begin()->first));
  rs.Add(CertSecret("kubernetes://a-cred", cert_a));
  rs.Add(CertSecret("kubernetes://b-cred", "CERT b"));
  rs.Add(CertSecret("kubernetes://unrelated", "CERT unrelated"));
  return rs;
}

struct ControlPlane {
  explicit ControlPlane(sx::ResourceSet rs)
      : rs_(std::move(rs)), server([this](const envoy::config::core::v3::Node&) {
          std::lock_guard lock(mu_);
          return rs_;
        }) {
    server.OnEvent([this](const sx::AdsServerEvent& e) {
      std::lock_guard lock(mu_);
      events_.push_back(e);
    });
  }
  void Set(sx::ResourceSet rs) {
    {
      std::lock_guard lock(mu_);
      rs_ = std::move(rs);
    }
    server.Push();
  }
  std::vector<sx::AdsServerEvent> Events(Kind k, std::string_view type) {
    std::lock_guard lock(mu_);
    std::vector<sx::AdsServerEvent> out;
    for (const auto& e : events_)
      if (e.kind == k && e.type_url == type)
        out.push_back(e);
    return out;
  }

  std::mutex mu_;
  sx::ResourceSet rs_;
  std::vector<sx::AdsServerEvent> events_;
  sx::AdsServer server;
};

std::vector<std::string> SecretNames(const config::SnapshotPtr& s) {
  std::vector<std::string> out;
  for (const auto& [name, _] : s->secrets)
    out.push_back(name);
  return out;
}

std::string CertOf(const config::SnapshotPtr& s, const std::string& name) {
  auto it = s->secrets.find(name);
  return it == s->secrets.end() ? ""
                                : it->second->tls_certificate().certificate_chain().inline_bytes();
}

}  // namespace

TEST_CASE("SDS: the client asks for the secrets its listeners name and receives exactly those",
          "[xds][sds]") {
  const auto protocol = GENERATE(sx::XdsProtocol::kSotw, sx::XdsProtocol::kDelta);
  const bool istiod = GENERATE(false, true);
  INFO((protocol == sx::XdsProtocol::kSotw ? "SotW" : "Delta") << (istiod ? ", TLS+token" : ""));
  char tmpl[] = "/tmp/sluice-sds-test-XXXXXX";
  REQUIRE(mkdtemp(tmpl) != nullptr);
  const std::filesystem::path dir(tmpl);
  struct Cleanup {
    std::filesystem::path d;
    ~Cleanup() { std::filesystem::remove_all(d); }
  } cleanup{dir};
  ControlPlane cp(Set("kubernetes://a-cred", "CERT a"));
  sx::AdsServerOptions so;
  so.address = "127.0.0.1:0";
  if (istiod) {  // istiod's 15012: TLS, and the agent's bearer token
    REQUIRE(sluice::testing::MakeIstiodCert(dir.string()));
    std::ofstream(dir / "token") << "s3cr3t-jwt\n";
    so.cert_file = (dir / "cert.pem").string();
    so.key_file = (dir / "key.pem").string();
    so.required_token = "s3cr3t-jwt";
  }
  auto port = cp.server.Start(so);
  REQUIRE(port);

  config::ConfigStore store;
  sx::AdsClientOptions o;
  o.server = "127.0.0.1:" + std::to_string(*port);
  sx::NodeIdentity id;
  id.ips = {"10.244.1.9"};
  id.pod_name = "istio-ingressgateway-1";
  id.pod_namespace = "istio-system";
  o.node = sx::BuildNode(id);
  o.backoff = {.initial = 20ms, .max = 200ms, .multiplier = 2.0, .jitter = 0.2};
  o.protocol = protocol;
  if (istiod) {
    o.tls = true;
    o.ca_file = (dir / "cert.pem").string();
    o.tls_server_name = "istiod.istio-system.svc";
    o.token_file = (dir / "token").string();
  }
  sx::AdsClient client(o, store);
  REQUIRE(client.Start());

  // Only the named secret: SDS is no wildcard type. (The listener that names it may come
  // in a later snapshot than the secret: wait for both.)
  REQUIRE(WaitFor([&] {
    auto s = store.Current();
    return s->secrets.size() == 1 && s->listeners.contains("0.0.0.0_443");
  }));
  auto snap = store.Current();
  CHECK(SecretNames(snap) == std::vector<std::string>{"kubernetes://a-cred"});
  CHECK(CertOf(snap, "kubernetes://a-cred") == "CERT a");
  CHECK(snap->listeners.contains("0.0.0.0_443"));
  REQUIRE(WaitFor([&] { return !cp.Events(Kind::kAck, sx::kSecretType).empty(); }));
  auto requests = cp.Events(Kind::kRequest, sx::kSecretType);
  REQUIRE_FALSE(requests.empty());
  CHECK(requests.front().resource_names == std::vector<std::string>{"kubernetes://a-cred"});
  CHECK(cp.Events(Kind::kNack, sx::kSecretType).empty());
  CHECK(client.Status().types.at(std::string(sx::kSecretType)).subscribed == 1);

  // A rotated certificate is pushed to the subscriber.
  cp.Set(Set("kubernetes://a-cred", "CERT a, rotated"));
  REQUIRE(
      WaitFor([&] { return CertOf(store.Current(), "kubernetes://a-cred") == "CERT a, rotated"; }));

  // The listener names another secret: the subscription follows, the old secret goes.
  cp.Set(Set("kubernetes://b-cred", "CERT a, rotated"));
  REQUIRE(WaitFor([&] {
    return SecretNames(store.Current()) == std::vector<std::string>{"kubernetes://b-cred"};
  }));
  CHECK(CertOf(store.Current(), "kubernetes://b-cred") == "CERT b");
  CHECK(cp.Events(Kind::kNack, sx::kSecretType).empty());
  client.Stop();
  cp.server.Stop();
}
