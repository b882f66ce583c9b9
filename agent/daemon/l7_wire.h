// The wire between the node agent and its L7 process (l7_supervisor.h, l7_host.h).
//
// One SOCK_STREAM socketpair carries framed messages both ways. A frame is a 12-byte
// header (type, metadata length, blob length, native byte order: both ends are the same
// binary on the same machine), JSON metadata, and an optional binary blob; a frame may
// carry file descriptors (SCM_RIGHTS, on its header). Configurations travel as their
// Envoy resources (a DiscoveryResponse of Any-packed resources), so the L7 process
// compiles exactly what the agent received. A config the L7 process already holds is
// brought up to date by its change alone (a delta against the generation it holds, see
// kNodeConfig); the whole set goes only to a process without that base.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "sluice/common/result.h"
#include "sluice/config/snapshot.h"
#include "sluice/envoy/resource_set.h"
#include "sluice/netns/netns.h"

namespace sluice::agent::l7wire {

enum class Type : uint32_t {
  // agent -> L7 process
  // Configs. meta {view, generation}; blob: the whole set (empty: none / forget the
  // view). With meta "base" (a generation, not 0): a delta, to be applied to the config
  // of generation `base` only: blob the resources put (EncodeDelta), meta "removed"
  // {clusters, endpoints, listeners, routes: [names]} and "versions". A process that
  // does not hold `base` applies nothing and answers kApplied with "resend": true; the
  // agent then sends the whole set.
  kNodeConfig = 1,
  kViewConfig = 2,
  kPodOpen = 3,            // meta {namespace, name, netns, labels{}, ips[], sockets[]}; fds: the
                           // pod's listening sockets, named in that order by sockets[]
                           // ("capture_v4", "capture_v6", "inbound_v4", "inbound_v6")
  kPodClose = 4,           // meta {namespace, name}
  kDrain = 5,              // meta {grace_ms}: stop accepting, finish what runs, exit
  kStatusRequest = 6,      // meta {seq}: a status now, carrying this seq
  kIstioStatsRequest = 7,  // meta {seq}: the pods' Istio metrics now, carrying this seq
  // L7 process -> agent
  kApplied = 100,     // meta {view ("" for the node's), generation, applied, error, resend,
                      // built: {clusters, routes, listeners}}: what the compile built
  kStatus = 101,      // meta {seq, pods: [...]}: every second (seq 0), and when asked
  kInbound = 102,     // meta {namespace, name, netns, ports: [{port, reason}], policies:
                      // [{port, address, rules: [{action, sources[]}]}]}: the ports the pod's
                      // inbound side serves now (the agent steers exactly these) and the
                      // kernel policies of its ports (the agent enforces exactly these)
  kIstioStats = 103,  // meta {seq}; blob: the samples as JSON (istio_samples_wire.h)
};

struct Message {
  Type type = Type::kStatus;
  nlohmann::json meta = nlohmann::json::object();
  std::string blob;
  std::vector<netns::UniqueFd> fds;
};

// Writes the whole frame (blocking). Errors name what failed.
Result<void> Send(int sock, const Message& m);
// Reads one whole frame (blocking); nullopt at end of stream.
Result<std::optional<Message>> Receive(int sock);

std::string EncodeResources(const xds::ResourceSet& rs);
Result<xds::ResourceSet> DecodeResources(const std::string& blob);

// The change from `before` to `after` (two snapshots of one config, resources shared by
// pointer where unchanged, as the config store makes them): the blob of the resources of
// `after` that are not `before`'s object, and in `meta` "removed" (names per type) and
// "versions". Its cost is a walk over both snapshots' names plus the encoding of what
// changed. Sets meta "base" to before.generation.
std::string EncodeDelta(const config::Snapshot& before, const config::Snapshot& after,
                        nlohmann::json* meta);
// The same from `diff`, the change from the snapshot of generation `base` to `after` (as
// the config store gives it): its cost follows the change alone.
std::string EncodeDelta(uint64_t base, const config::Snapshot& after, const config::Diff& diff,
                        nlohmann::json* meta);
// A delta's edit (config::ApplyEdit applies it); errors name the resource that does not
// unpack.
Result<config::SnapshotEdit> DecodeDelta(const nlohmann::json& meta, const std::string& blob);

}  // namespace sluice::agent::l7wire
