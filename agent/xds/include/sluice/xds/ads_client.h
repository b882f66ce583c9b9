// AdsClient: the agent's side of Envoy's Aggregated Discovery Service (one gRPC stream for
// CDS, EDS, LDS and RDS), feeding a config::ConfigStore. It speaks incremental (Delta) or
// state-of-the-world (SotW) xDS, as AdsClientOptions::protocol says: auto tries Delta and
// uses SotW from then on if the server answers Delta with UNIMPLEMENTED.
//
// Delta (xds_protocol.rst "Incremental xDS", as Envoy speaks it): CDS and LDS are wildcard
// (a first request naming nothing); EDS and RDS subscribe and unsubscribe by name as
// clusters and listeners come and go (the subscription goes out before the ACK that
// caused it). Each response is ACKed or NACKed by its nonce; resources are taken one by
// one (refused ones are named in the NACK, keep their earlier version, the rest apply);
// removed_resources are removed; names are opaque (xdstp:// included). Every response
// becomes one ConfigStore::Edit, whose cost follows the change. On reconnect the first
// request of each type carries initial_resource_versions (what is held, by name). Warming
// is as in SotW below. A CLA or route configuration the server removes while a cluster or
// listener still uses it becomes empty, as Envoy does.
//
// State of the world, as Envoy speaks it to istiod:
// - CDS and LDS are wildcard subscriptions; EDS and RDS subscribe to the names the held
//   clusters (EDS service names) and listeners (HCM rds.route_config_name) ask for.
// - SDS (both protocols) subscribes to the secret names the held listeners'
//   DownstreamTlsContexts name (config::SdsNames), updated with every LDS response
//   (before its ACK). Secrets are no
//   part of warming: a listener is applied at once, and the proxy fails the chains whose
//   secret has not come closed until it does (Envoy keeps such a listener warming).
// - Every response is ACKed (version_info = its version, response_nonce = its nonce) or
//   NACKed (version_info = the last accepted version, error_detail = why), per type.
// - Warming: a new cluster becomes active only with its ClusterLoadAssignment, a new
//   listener only with its RouteConfiguration; until then the previous version (if any)
//   stays. Each accepted response yields one consistent snapshot in the store.
// - LDS is requested once CDS is accepted and its clusters have warmed (or EDS has
//   answered), giving Envoy's init order CDS -> EDS -> LDS -> RDS. A new EDS (RDS)
//   subscription goes out before the CDS (LDS) ACK that caused it.
// - EDS/RDS responses may carry a subset of the subscribed names; the others keep their
//   last version. Types are independent.
// - Per-resource acceptance, as Envoy's LDS and CDS: a resource Sluice cannot serve is
//   refused by name and the response's other resources are applied; the response is then
//   NACKed (version in force = the last fully accepted one, error_detail naming every
//   refused resource). A refused resource keeps its earlier version, if any. Resources
//   Sluice has no use for (an internal listener, a custom cluster type) are skipped:
//   ACKed, not served, logged once. A response that does not decode, or names a resource
//   twice, is NACKed whole.
// - On a broken stream it reconnects with exponential backoff and jitter; the store keeps
//   the last good snapshot for however long that takes. On reconnect it re-sends the
//   versions it holds and its current subscriptions.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "envoy/config/core/v3/base.pb.h"
#include "sluice/common/result.h"
#include "sluice/config/store.h"
#include "sluice/xds/backoff.h"

namespace grpc {
class Channel;
class ClientContext;
class Status;
}  // namespace grpc

namespace sluice::xds {

// Which ADS protocol the client speaks. kAuto: Delta, unless the server answers it with
// UNIMPLEMENTED; then SotW for the rest of the client's life (logged once).
enum class XdsProtocol { kAuto, kDelta, kSotw };
std::string_view XdsProtocolName(XdsProtocol p);  // "auto", "delta", "sotw"
Result<XdsProtocol> ParseXdsProtocol(std::string_view s);

struct AdsClientOptions {
  std::string server = "127.0.0.1:15010";  // host:port (gRPC target)
  // TLS (istiod's 15012): CA bundle to verify the server, and optionally the name to
  // verify in its certificate (istiod.istio-system.svc).
  bool tls = false;
  std::string ca_file;
  std::string tls_server_name;
  // A file holding a bearer token, re-read for every stream (tokens rotate); sent as
  // "authorization: Bearer <token>". Only over TLS (gRPC refuses call credentials on a
  // plaintext channel).
  std::string token_file;
  // Instead of token_file: called for every stream to get its bearer token (the node
  // agent asks the API server for a token of the pods' service account, see
  // docs/kubernetes.md "istiod's identity check"). Only over TLS, as token_file.
  std::function<Result<std::string>()> token_source;
  envoy::config::core::v3::Node node;
  BackoffPolicy backoff;
  XdsProtocol protocol = XdsProtocol::kAuto;
};

// Why one resource was refused or skipped; reason_class is one of sluice/config/filters.h's
// classes (config::kInvalid for a failed check), for metrics.
struct ResourceIssue {
  std::string reason;
  std::string reason_class;
};

// Per resource type, what the client last accepted and last refused.
struct TypeStatus {
  // version_info (SotW) or system_version_info (Delta) of the last ACKed response
  std::string acked_version;
  std::string last_nonce;
  std::string last_nack;  // error_detail of the last NACK sent, empty if none since ACK
  uint64_t acks = 0, nacks = 0;
  uint64_t applied = 0;   // responses applied, wholly (ACKed) or in part (some refused)
  size_t subscribed = 0;  // explicit names (EDS/RDS); 0 for wildcard types
  size_t held = 0;        // Delta: resources held (what initial_resource_versions names)
  uint64_t removed = 0;   // Delta: removed_resources applied
  // Resources refused (NACKed by name; an earlier version, if any, stays in force) and
  // skipped (ACKed, not served), as the latest responses left them.
  std::map<std::string, ResourceIssue> refused, skipped;
  // Refusals and skips seen so far, by reason class (counters).
  std::map<std::string, uint64_t> refused_total, skipped_total;
  // LDS: filter types skipped, and in how many of the accepted listeners.
  std::map<std::string, uint64_t> skipped_filters;
};

struct AdsClientStatus {
  bool connected = false;
  uint64_t streams = 0;          // streams opened so far
  uint64_t failed_attempts = 0;  // connection attempts that ended without a response
  std::chrono::milliseconds last_backoff{0};
  std::string last_stream_error;
  std::map<std::string, TypeStatus> types;  // by type URL, of the protocol in use
  XdsProtocol configured = XdsProtocol::kAuto;
  std::string protocol;              // "delta" or "sotw": the latest stream's; "" before any
  bool delta_unimplemented = false;  // auto: the server answered Delta with UNIMPLEMENTED
};

class AdsClient {
 public:
  AdsClient(AdsClientOptions opts, config::ConfigStore& store);
  ~AdsClient();
  AdsClient(const AdsClient&) = delete;
  AdsClient& operator=(const AdsClient&) = delete;

  // Checks the options (TLS files readable, token only over TLS), then runs the stream on
  // its own thread, reconnecting until Stop().
  Result<void> Start();
  void Stop();  // cancels the stream, joins; the store keeps its snapshot

  AdsClientStatus Status() const;

  struct State;       // the SotW protocol state (ads_client.cc)
  struct DeltaState;  // the Delta protocol state (ads_client_delta.cc)

 private:
  void Run();
  // One stream until it breaks; true when at least one response arrived.
  bool RunStream(std::string& error);
  // One stream of either protocol on `channel`; true when at least one response arrived.
  bool RunSotw(const std::shared_ptr<grpc::Channel>& channel, grpc::ClientContext& ctx,
               grpc::Status& st);
  bool RunDelta(const std::shared_ptr<grpc::Channel>& channel, grpc::ClientContext& ctx,
                grpc::Status& st);
  void PublishStatus(bool connected);

  AdsClientOptions opts_;
  config::ConfigStore& store_;
  std::unique_ptr<State> state_;  // survives reconnects: received resources, versions
  std::unique_ptr<DeltaState> delta_;
  bool use_delta_ = false;  // the protocol of the current stream
  bool delta_unimplemented_ = false;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::shared_ptr<grpc::ClientContext> ctx_;  // the live stream, for Stop()
  AdsClientStatus status_;
  std::thread thread_;
};

}  // namespace sluice::xds
