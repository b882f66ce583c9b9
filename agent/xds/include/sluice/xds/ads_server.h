// AdsServer: an Aggregated Discovery Service, state of the world (SotW,
// StreamAggregatedResources) and incremental (Delta, DeltaAggregatedResources) on the same
// service, that serves each connecting proxy the ResourceSet a callback computes for its
// node, and pushes new versions when told.
//
// Protocol, as Envoy's xds_protocol.rst describes SotW and istiod behaves (ads_server.cc
// cites the rules; docs/control-plane.md has the whole table):
// - One gRPC stream per proxy; its first request must carry the Node (else the stream
//   ends with INVALID_ARGUMENT), which is handed to the callback.
// - Subscriptions. LDS and CDS: a first request naming nothing is a (legacy) wildcard;
//   "*" is an explicit wildcard, and ["*", "X"] is the wildcard plus X. Once a client has
//   named anything, [] unsubscribes from all. EDS and RDS serve the names asked for.
// - Every response has a version_info (the server's push generation) and a fresh nonce.
//   A request whose response_nonce is not the last one sent for its type is stale and
//   ignored (a nonce for a type this stream never answered comes from an earlier stream
//   and counts as a new subscription). A request carrying error_detail is a NACK:
//   recorded and reported; it is answered only when it also subscribes to something new,
//   and never with EDS/RDS content the client rejected.
// - Names that match nothing get no response (the client's does-not-exist timer
//   decides); a later Push() that creates them sends them.
// - Push() recomputes every stream's ResourceSet. CDS and LDS are resent whole when any
//   of their covered resources changed, appeared or went away; EDS and RDS carry only the
//   subscribed resources that changed (SotW allows that for these types), so an endpoint
//   update sends one ClusterLoadAssignment, not all of them. SDS (Secret, asked by name
//   like EDS/RDS) follows the same rules.
// - A named LDS subscription to one of ResourceSet::listener_aliases gets the canonical
//   listener under the alias's name; a wildcard never includes aliases.
// - Types other than these five (SRDS, ...) are answered with an empty response, as istiod
//   answers types it has no generator for.
// - When the client half-closes, every request already received is answered and the
//   stream ends with OK.
//
// Delta (xds_protocol.rst "Incremental xDS", istiod's pilot/pkg/xds/delta.go where the spec
// leaves a choice; docs/control-plane.md has the table):
// - Every resource has a version: a hash of its canonical bytes. The stream keeps, per type,
//   what the client holds (name -> version): what it reported in initial_resource_versions
//   on a new stream, then what was sent, minus what it unsubscribed from.
// - Subscriptions: resource_names_subscribe / _unsubscribe change the set; "*" is the
//   wildcard, and a first CDS/LDS request naming nothing is a (legacy) wildcard.
// - A response carries only resources the client lacks or holds at another version, and
//   removed_resources for names the client holds that no longer exist (also for
//   initial_resource_versions naming something gone). Each response has a fresh nonce and
//   system_version_info (the push generation).
// - A request with response_nonce is an ACK (or, with error_detail, a NACK, recorded and
//   not answered); one whose nonce is not the last sent for its type is stale and ignored.
//   A request without nonce changes the subscription and is answered with what it adds.
// - A first wildcard request is answered even when the set is empty; types other than the
//   four get an empty response.
//
// Costs follow the change: the server keeps per stream a hash per resource between pushes.
// Push(hint) names the resources that changed (istiod's PushRequest.ConfigsUpdated); only
// those are hashed and compared, in both protocols. Push() without a hint recomputes all.
//
// Wiring it (e.g. `sluicectl xds serve`):
//   AdsServer server([&](const Node& n) { return TranslateFor(n); });
//   auto port = server.Start({.address = "127.0.0.1:15010"});
//   ... files changed ... server.Push();
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "envoy/config/core/v3/base.pb.h"
#include "sluice/common/result.h"
#include "sluice/envoy/resource_set.h"

namespace grpc {
class Server;
}

namespace sluice::xds {

// What the server saw on one stream, for status pages and tests.
struct AdsServerEvent {
  // kUnsupportedType: a request for a type this server does not serve (e.g. SRDS), answered
  // with an empty response.
  // kResponse: a response went out; resource_names are the resources it carries and
  // removed the names it removes (Delta).
  enum class Kind {
    kConnect,
    kRequest,
    kAck,
    kNack,
    kStale,
    kUnsupportedType,
    kDisconnect,
    kResponse
  };
  Kind kind;
  std::string node_id;
  std::string type_url;
  std::string version;  // ACK/NACK: version_info the client reports
  std::string nonce;
  std::vector<std::string> resource_names;  // SotW: the request's; Delta: subscribed
  std::string error;                        // NACK: error_detail.message
  bool delta = false;                       // the stream is a Delta one
  std::vector<std::string> removed;         // Delta: unsubscribed (request), removed (response)
};

// What a push changed, per type URL: names of resources that changed, appeared or went
// away (listener aliases included when theirs change). Only these are hashed and compared;
// a type not named is unchanged. As istiod's PushRequest.ConfigsUpdated.
struct PushHint {
  std::map<std::string, std::set<std::string>> changed;
  void Add(std::string_view type, std::string name) {
    changed[std::string(type)].insert(std::move(name));
  }
};

struct AdsServerOptions {
  std::string address = "127.0.0.1:15010";
  // TLS (as istiod's 15012): PEM certificate chain and key; empty means plaintext.
  std::string cert_file, key_file;
  // When set, every stream must carry "authorization: Bearer <token>" with this token.
  std::string required_token;
  // Authentication with istiod's XDS identity check (PILOT_ENABLE_XDS_IDENTITY_CHECK, on by
  // default in istiod). When set, it is called with each stream's bearer token (without
  // "Bearer "; empty when none came) and returns the caller's identities as SPIFFE URIs
  // ("spiffe://cluster.local/ns/NS/sa/SA"), or an error: the stream ends UNAUTHENTICATED.
  // The stream's node must then match one identity as istiod's checkConnectionIdentity
  // decides: the proxy's config namespace (metadata NAMESPACE, else the node id's) equals
  // the identity's namespace, and its metadata SERVICE_ACCOUNT, when set, the identity's
  // service account. Otherwise the stream ends PERMISSION_DENIED "authorization failed: no
  // identities ([...]) matched NS/SA", as istiod answers.
  using AuthenticateFn = std::function<Result<std::vector<std::string>>(const std::string& token)>;
  AuthenticateFn authenticate;
};

// istiod's checkConnectionIdentity (pilot/pkg/xds/auth.go) for one node: the index of the
// first identity that may act as it, or an error in istiod's words. Exposed for tests.
Result<size_t> CheckConnectionIdentity(const envoy::config::core::v3::Node& node,
                                       const std::vector<std::string>& identities);

class AdsServer {
 public:
  // Called on a stream's first request and on every Push(), from the stream's thread
  // (several streams may call it at once).
  using ResourceFn = std::function<ResourceSet(const envoy::config::core::v3::Node&)>;
  // The same, without a copy per stream and push: many nodes can share one set. The set
  // must not change once returned; build a new one and Push().
  using SharedResourceFn =
      std::function<std::shared_ptr<const ResourceSet>(const envoy::config::core::v3::Node&)>;
  using EventFn = std::function<void(const AdsServerEvent&)>;

  explicit AdsServer(ResourceFn resources);
  explicit AdsServer(SharedResourceFn resources);
  ~AdsServer();
  AdsServer(const AdsServer&) = delete;
  AdsServer& operator=(const AdsServer&) = delete;

  // Binds and serves; returns the bound port (useful with port 0).
  Result<int> Start(const AdsServerOptions& opts);
  // Recomputes every connected proxy's resources and sends what changed. Returns the new
  // version. Safe from any thread.
  uint64_t Push();
  // As Push(), when the caller knows what changed: only the hinted resources are hashed
  // and compared with what each client holds; the others are taken as unchanged. Pushes
  // not yet sent to a stream merge (a full one wins).
  uint64_t Push(const PushHint& hint);
  // Closes every stream and stops serving.
  void Stop();

  // Called on the stream threads; keep it quick. Set before Start().
  void OnEvent(EventFn fn) { on_event_ = std::move(fn); }

  size_t Connected() const;
  uint64_t Version() const { return version_.load(); }

  class Service;    // the gRPC service (ads_server.cc)
  class Reclaimer;  // frees replaced sets off the streams' threads (ads_server.cc)
  struct Stream;
  // Streams served so far by protocol, for status pages and tests.
  uint64_t DeltaStreams() const { return delta_streams_.load(); }

 private:
  friend class Service;
  SharedResourceFn resources_;
  EventFn on_event_;
  std::atomic<uint64_t> version_{1};
  std::atomic<uint64_t> delta_streams_{0};
  uint64_t QueuePush(const PushHint* hint);
  std::unique_ptr<Service> service_;
  std::unique_ptr<Reclaimer> reclaimer_;
  std::unique_ptr<grpc::Server> server_;
  mutable std::mutex mu_;  // guards streams_ and stopping_
  std::list<Stream*> streams_;
  bool stopping_ = false;
};

}  // namespace sluice::xds
