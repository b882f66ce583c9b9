#include "sluice/xds/ads_server.h"

#include <fmt/format.h>
#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <deque>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "envoy/service/discovery/v3/ads.grpc.pb.h"
#include "envoy/service/discovery/v3/discovery.pb.h"

namespace sluice::xds {
namespace {

using envoy::service::discovery::v3::DiscoveryRequest;
using envoy::service::discovery::v3::DiscoveryResponse;
using Event = AdsServerEvent;

std::string DeterministicBytes(const google::protobuf::Message& m) {
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream sos(&bytes);
    google::protobuf::io::CodedOutputStream cos(&sos);
    cos.SetSerializationDeterministic(true);
    m.SerializeToCodedStream(&cos);
  }
  return bytes;
}

bool IsWildcardType(const std::string& type) {
  return type == kClusterType || type == kListenerType;
}

// Calls f(name, message) for every resource of `type` in `rs`.
template <class F>
bool ForEachOfType(const ResourceSet& rs, const std::string& type, F&& f) {
  auto each = [&f](const auto& m) {
    for (const auto& [name, r] : m)
      f(name, static_cast<const google::protobuf::Message&>(r));
  };
  if (type == kClusterType) {
    each(rs.clusters);
  } else if (type == kEndpointType) {
    each(rs.endpoints);
  } else if (type == kListenerType) {
    each(rs.listeners);
  } else if (type == kRouteType) {
    each(rs.routes);
  } else {
    return false;
  }
  return true;
}

Result<std::string> ReadFile(const std::string& path, std::string_view what) {
  std::ifstream in(path);
  if (!in)
    return FailErrno(fmt::format("{} {}", what, path), errno);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

// What the server shares with one stream's threads.
struct AdsServer::Stream {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<DiscoveryRequest> inbox;
  bool reader_done = false;
  bool stopping = false;
  uint64_t pushed = 0;  // latest version Push() asked for
  grpc::ServerContext* ctx = nullptr;
};

class AdsServer::Service final
    : public envoy::service::discovery::v3::AggregatedDiscoveryService::Service {
 public:
  explicit Service(AdsServer& owner) : owner_(owner) {}
  std::string required_token;

  grpc::Status StreamAggregatedResources(
      grpc::ServerContext* ctx,
      grpc::ServerReaderWriter<DiscoveryResponse, DiscoveryRequest>* stream) override;

 private:
  AdsServer& owner_;
};

namespace {

// The protocol state of one stream, used only on its handler thread.
class Session {
 public:
  Session(AdsServer::SharedResourceFn& fn, AdsServer::EventFn& on_event,
          grpc::ServerReaderWriter<DiscoveryResponse, DiscoveryRequest>* stream)
      : fn_(fn), on_event_(on_event), stream_(stream) {}

  const std::string& node_id() const { return node_.id(); }
  bool has_node() const { return has_node_; }

  // Returns an error status to end the stream with, or OK to go on.
  grpc::Status OnRequest(const DiscoveryRequest& req, uint64_t version) {
    if (!has_node_) {
      if (!req.has_node() || req.node().id().empty()) {
        return {grpc::StatusCode::INVALID_ARGUMENT, "the first request must carry node.id"};
      }
      node_ = req.node();
      has_node_ = true;
      Emit(Event::Kind::kConnect, req);
      Recompute(version);
    }
    const std::string& type = req.type_url();
    Emit(Event::Kind::kRequest, req);
    if (type != kClusterType && type != kEndpointType && type != kListenerType &&
        type != kRouteType) {
      spdlog::warn("xds server: {} asked for unsupported type {}", node_.id(), type);
      return grpc::Status::OK;  // as Envoy's servers: unknown types get no response
    }
    PerType& t = types_[type];
    // A nonce for a type this stream never answered comes from an earlier stream (a
    // reconnect): it is a new subscription, as istiod treats it.
    const bool answered = !t.last_nonce.empty();
    if (answered && !req.response_nonce().empty() && req.response_nonce() != t.last_nonce) {
      Emit(Event::Kind::kStale, req);  // answers a response we have since replaced
      return grpc::Status::OK;
    }
    bool names_changed = SetSubscription(t, type, req);
    if (req.has_error_detail()) {
      spdlog::warn("xds server: {} NACKed {} version {}: {}", node_.id(), type, t.sent_version,
                   req.error_detail().message());
      Emit(Event::Kind::kNack, req);
      if (names_changed)
        Send(type, t, true);
      return grpc::Status::OK;
    }
    if (answered && !req.response_nonce().empty()) {  // matches our last nonce: an ACK
      Emit(Event::Kind::kAck, req);
      if (names_changed)
        Send(type, t, true);
      return grpc::Status::OK;
    }
    Send(type, t, true);  // a new subscription on this stream
    return grpc::Status::OK;
  }

  void OnPush(uint64_t version) {
    if (!has_node_ || version <= version_)
      return;
    auto t0 = std::chrono::steady_clock::now();
    auto previous = rs_;  // freed after the sends, off the update's path
    Recompute(version);
    auto t1 = std::chrono::steady_clock::now();
    // CDS before EDS before LDS before RDS, so a client never sees a reference first.
    for (auto type : {kClusterType, kEndpointType, kListenerType, kRouteType}) {
      auto it = types_.find(std::string(type));
      if (it != types_.end())
        Send(it->first, it->second, false);
    }
    auto ms = [](auto d) {
      return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
    };
    spdlog::debug("xds server: {} push {}: resources {} ms, diff and send {} ms", node_.id(),
                  version, ms(t1 - t0), ms(std::chrono::steady_clock::now() - t1));
    previous.reset();
  }

 private:
  struct PerType {
    bool wildcard = false;
    std::set<std::string> names;
    std::map<std::string, uint64_t> sent;  // name -> content hash last sent
    std::string last_nonce, sent_version;
  };

  void Recompute(uint64_t version) {
    rs_ = fn_(node_);
    if (!rs_)
      rs_ = std::make_shared<const ResourceSet>();
    version_ = version;
  }

  static bool SetSubscription(PerType& t, const std::string& type, const DiscoveryRequest& req) {
    std::set<std::string> names(req.resource_names().begin(), req.resource_names().end());
    bool wildcard = IsWildcardType(type) && (names.empty() || names.contains("*"));
    if (wildcard)
      names.clear();
    bool changed = wildcard != t.wildcard || names != t.names;
    t.wildcard = wildcard;
    t.names = std::move(names);
    return changed;
  }

  // full: answer a (new) subscription with everything it covers. Otherwise send only
  // when something changed: the whole set for CDS/LDS, the changed resources for EDS/RDS.
  // Each resource is serialized once, for its hash and, if sent, as the Any's value.
  void Send(const std::string& type, PerType& t, bool full) {
    const bool whole = IsWildcardType(type);
    std::vector<std::string> out;  // serialized resources to send
    std::map<std::string, uint64_t> now;
    bool changed = false;
    ForEachOfType(*rs_, type, [&](const std::string& name, const google::protobuf::Message& m) {
      if (!t.wildcard && !t.names.contains(name))
        return;
      std::string bytes = DeterministicBytes(m);
      uint64_t h = std::hash<std::string>{}(bytes);
      now.emplace(name, h);
      auto old = t.sent.find(name);
      bool differs = old == t.sent.end() || old->second != h;
      changed = changed || differs;
      if (full || whole || differs)
        out.push_back(std::move(bytes));
    });
    if (now.size() != t.sent.size())
      changed = true;  // something went away
    if (!full && !changed)
      return;
    if (!full && !whole && out.empty()) {
      t.sent = std::move(now);  // only removals: the client drops them with its subscription
      return;
    }
    DiscoveryResponse resp;
    resp.set_type_url(type);
    resp.set_version_info(std::to_string(version_));
    resp.set_nonce(std::to_string(++nonce_));
    for (auto& bytes : out) {
      auto* any = resp.add_resources();
      any->set_type_url(type);
      any->set_value(std::move(bytes));
    }
    t.sent = std::move(now);
    t.last_nonce = resp.nonce();
    t.sent_version = resp.version_info();
    stream_->Write(resp);
  }

  void Emit(Event::Kind kind, const DiscoveryRequest& req) {
    if (!on_event_)
      return;
    Event e{kind,
            node_.id(),
            req.type_url(),
            req.version_info(),
            req.response_nonce(),
            {req.resource_names().begin(), req.resource_names().end()},
            req.has_error_detail() ? req.error_detail().message() : ""};
    on_event_(e);
  }

  AdsServer::SharedResourceFn& fn_;
  AdsServer::EventFn& on_event_;
  grpc::ServerReaderWriter<DiscoveryResponse, DiscoveryRequest>* stream_;
  envoy::config::core::v3::Node node_;
  bool has_node_ = false;
  std::shared_ptr<const ResourceSet> rs_;
  uint64_t version_ = 0;
  uint64_t nonce_ = 0;
  std::map<std::string, PerType> types_;
};

}  // namespace

grpc::Status AdsServer::Service::StreamAggregatedResources(
    grpc::ServerContext* ctx,
    grpc::ServerReaderWriter<DiscoveryResponse, DiscoveryRequest>* stream) {
  if (!required_token.empty()) {
    auto md = ctx->client_metadata();
    auto it = md.find("authorization");
    if (it == md.end() ||
        std::string_view(it->second.data(), it->second.size()) != "Bearer " + required_token) {
      return {grpc::StatusCode::UNAUTHENTICATED, "missing or wrong bearer token"};
    }
  }
  Stream s;
  s.ctx = ctx;
  {
    std::lock_guard lock(owner_.mu_);
    if (owner_.stopping_)
      return {grpc::StatusCode::UNAVAILABLE, "server stopping"};
    owner_.streams_.push_back(&s);
  }
  auto unregister = [&] {
    std::lock_guard lock(owner_.mu_);
    owner_.streams_.remove(&s);
  };
  // The first request is read here, before the reader thread exists, so a stream
  // without a node ends with a status the client can read (cancelling a blocked reader
  // would replace it with CANCELLED).
  DiscoveryRequest first;
  if (!stream->Read(&first)) {
    unregister();
    return grpc::Status::OK;
  }
  if (!first.has_node() || first.node().id().empty()) {
    unregister();
    return {grpc::StatusCode::INVALID_ARGUMENT, "the first request must carry node.id"};
  }
  s.inbox.push_back(std::move(first));
  // gRPC allows one reader and one writer at a time: reads happen on this thread,
  // writes on the handler thread below.
  std::thread reader([&s, stream] {
    DiscoveryRequest req;
    while (stream->Read(&req)) {
      std::lock_guard lock(s.mu);
      s.inbox.push_back(std::move(req));
      s.cv.notify_one();
    }
    std::lock_guard lock(s.mu);
    s.reader_done = true;
    s.cv.notify_one();
  });

  Session session(owner_.resources_, owner_.on_event_, stream);
  grpc::Status result = grpc::Status::OK;
  while (result.ok()) {
    std::deque<DiscoveryRequest> batch;
    uint64_t pushed;
    {
      std::unique_lock lock(s.mu);
      s.cv.wait(lock,
                [&] { return s.stopping || !s.inbox.empty() || s.reader_done || s.pushed > 0; });
      if (s.stopping || (s.reader_done && s.inbox.empty()))
        break;
      batch.swap(s.inbox);
      pushed = s.pushed;
      s.pushed = 0;
    }
    for (const auto& req : batch) {
      result = session.OnRequest(req, owner_.version_.load());
      if (!result.ok())
        break;
    }
    if (pushed > 0 && result.ok())
      session.OnPush(pushed);
  }

  ctx->TryCancel();  // unblocks the reader
  reader.join();
  unregister();
  if (owner_.on_event_ && session.has_node()) {
    owner_.on_event_(Event{Event::Kind::kDisconnect, session.node_id(), "", "", "", {}, ""});
  }
  return result;
}

AdsServer::AdsServer(ResourceFn resources)
    : resources_([fn = std::move(resources)](const envoy::config::core::v3::Node& n) {
        return std::make_shared<const ResourceSet>(fn(n));
      }) {}

AdsServer::AdsServer(SharedResourceFn resources) : resources_(std::move(resources)) {}

AdsServer::~AdsServer() {
  Stop();
}

Result<int> AdsServer::Start(const AdsServerOptions& opts) {
  if (server_)
    return Fail("xds server: already started");
  std::shared_ptr<grpc::ServerCredentials> creds;
  if (!opts.cert_file.empty() || !opts.key_file.empty()) {
    auto cert = ReadFile(opts.cert_file, "xds server: cert_file");
    SLUICE_RETURN_IF_ERROR(cert);
    auto key = ReadFile(opts.key_file, "xds server: key_file");
    SLUICE_RETURN_IF_ERROR(key);
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({*key, *cert});
    creds = grpc::SslServerCredentials(ssl);
  } else {
    creds = grpc::InsecureServerCredentials();
  }
  service_ = std::make_unique<Service>(*this);
  service_->required_token = opts.required_token;
  {
    std::lock_guard lock(mu_);
    stopping_ = false;
  }
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(opts.address, creds, &port);
  builder.RegisterService(service_.get());
  builder.SetMaxReceiveMessageSize(-1);
  server_ = builder.BuildAndStart();
  if (!server_ || port == 0) {
    server_.reset();
    return Fail(fmt::format("xds server: cannot listen on {}", opts.address));
  }
  spdlog::info("xds server: serving ADS on {} (port {})", opts.address, port);
  return port;
}

uint64_t AdsServer::Push() {
  uint64_t v = ++version_;
  std::lock_guard lock(mu_);
  for (Stream* s : streams_) {
    std::lock_guard slock(s->mu);
    s->pushed = v;
    s->cv.notify_one();
  }
  return v;
}

void AdsServer::Stop() {
  if (!server_)
    return;
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    for (Stream* s : streams_) {
      s->ctx->TryCancel();  // also ends a stream still waiting for its first request
      std::lock_guard slock(s->mu);
      s->stopping = true;
      s->cv.notify_one();
    }
  }
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  server_->Wait();
  server_.reset();
  service_.reset();
}

size_t AdsServer::Connected() const {
  std::lock_guard lock(mu_);
  return streams_.size();
}

}  // namespace sluice::xds
