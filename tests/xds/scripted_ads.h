// A scripted ADS server and an AdsClient connected to it over a real gRPC stream, for the
// client's protocol tests: the server sends exactly the responses a test writes, including
// ones Sluice's own server never would, and records every request.
#pragma once

#include <grpcpp/grpcpp.h>
#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>

#include "envoy/service/discovery/v3/ads.grpc.pb.h"
#include "fixtures.h"
#include "sluice/xds/ads_client.h"
#include "sluice/xds/node.h"

namespace sluice::testing {

using namespace std::chrono_literals;
namespace sx = sluice::xds;
using envoy::service::discovery::v3::DiscoveryRequest;
using envoy::service::discovery::v3::DiscoveryResponse;

class ScriptedAds final
    : public envoy::service::discovery::v3::AggregatedDiscoveryService::Service {
 public:
  grpc::Status StreamAggregatedResources(
      grpc::ServerContext*,
      grpc::ServerReaderWriter<DiscoveryResponse, DiscoveryRequest>* stream) override {
    {
      std::lock_guard lock(mu_);
      stream_ = stream;
    }
    DiscoveryRequest req;
    while (stream->Read(&req)) {
      std::lock_guard lock(mu_);
      requests_.push_back(req);
      cv_.notify_all();
    }
    std::lock_guard lock(mu_);
    stream_ = nullptr;
    return grpc::Status::OK;
  }

  bool Send(const std::string& type, const std::string& version, const std::string& nonce,
            const std::vector<google::protobuf::Any>& resources) {
    DiscoveryResponse resp;
    resp.set_type_url(type);
    resp.set_version_info(version);
    resp.set_nonce(nonce);
    for (const auto& r : resources)
      *resp.add_resources() = r;
    std::lock_guard lock(mu_);
    return stream_ && stream_->Write(resp);
  }

  // The next request not yet taken, whatever its type.
  std::optional<DiscoveryRequest> Next(std::chrono::milliseconds limit = 5s) {
    std::unique_lock lock(mu_);
    if (!cv_.wait_for(lock, limit, [&] { return taken_ < requests_.size(); }))
      return std::nullopt;
    return requests_[taken_++];
  }
  size_t Pending() {
    std::lock_guard lock(mu_);
    return requests_.size() - taken_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<DiscoveryRequest> requests_;
  size_t taken_ = 0;
  grpc::ServerReaderWriter<DiscoveryResponse, DiscoveryRequest>* stream_ = nullptr;
};

template <class T>
inline google::protobuf::Any Pack(const T& m) {
  google::protobuf::Any a;
  a.PackFrom(m);
  return a;
}

inline envoy::config::cluster::v3::Cluster StaticCluster(const std::string& name) {
  envoy::config::cluster::v3::Cluster c;
  c.set_name(name);
  c.set_type(envoy::config::cluster::v3::Cluster::STATIC);
  auto* sa = c.mutable_load_assignment()
                 ->add_endpoints()
                 ->add_lb_endpoints()
                 ->mutable_endpoint()
                 ->mutable_address()
                 ->mutable_socket_address();
  sa->set_address("127.0.0.1");
  sa->set_port_value(9000);
  return c;
}

inline size_t Endpoints(const sluice::config::SnapshotPtr& s, const std::string& name) {
  auto it = s->endpoints.find(name);
  return it == s->endpoints.end() ? 0 : it->second->endpoints(0).lb_endpoints_size();
}

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

struct Fixture {
  Fixture() {
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    b.RegisterService(&ads);
    server = b.BuildAndStart();
    REQUIRE(server);
    sx::AdsClientOptions o;
    o.server = "127.0.0.1:" + std::to_string(port);
    sx::NodeIdentity id;
    id.ips = {"10.0.0.7"};
    id.pod_name = "app-1";
    o.node = sx::BuildNode(id);
    client = std::make_unique<sx::AdsClient>(o, store);
    REQUIRE(client->Start());
  }
  ~Fixture() {
    client->Stop();
    server->Shutdown(std::chrono::system_clock::now() + 1s);
  }
  // The next request, which must be of `type`.
  DiscoveryRequest Expect(std::string_view type) {
    auto r = ads.Next();
    REQUIRE(r);
    REQUIRE(r->type_url() == type);
    return *r;
  }
  ScriptedAds ads;
  int port = 0;
  std::unique_ptr<grpc::Server> server;
  sluice::config::ConfigStore store;
  std::unique_ptr<sx::AdsClient> client;
};

}  // namespace sluice::testing
