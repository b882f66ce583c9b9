// L7Supervisor: the node agent's side of its L7 process (l7_host.h).
//
// The pods' L7 proxies parse what any client and any upstream sends; a fault there must
// not take the node agent with it. So they run in a process of their own, which this
// class starts, feeds and restarts:
//
// - It owns the pods' listening sockets (capture and inbound, opened in each pod's
//   namespace when the pod is enrolled) and hands the L7 process a copy of each. While
//   the process restarts, the kernel keeps redirecting and steering to those sockets
//   and connections wait in their backlog, so a restart costs the pods time, not
//   refused connections.
// - It steers to a pod's inbound socket exactly the ports the L7 process says the pod's
//   proxy serves there (InboundSteering), once the config that serves them is in force.
// - It keeps the last config of the node and of each view, and every pod, and replays
//   them to each new process; config updates supersede queued ones, so a slow or
//   stopped process never makes the agent's xDS threads wait. A config update travels
//   as its change against the one sent before (l7_wire.h); the whole set goes to a new
//   process, when the process asks for it (it does not hold that base), and when the
//   update supersedes a queued one (whose change would otherwise be lost). Whole sets
//   are encoded by the writer thread, not the caller's.
// - It restarts the process at once when it exits (with a short backoff when it keeps
//   dying) and kills it when it stays silent past the heartbeat timeout (a wedge).
//
// The kernel's state is the agent's alone: the L7 process never touches it.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "inbound_steering.h"
#include "l7_wire.h"
#include "pod_l7.h"
#include "pod_proxies.h"
#include "sluice/config/snapshot.h"
#include "view_streams.h"

namespace sluice::agent {

struct L7SupervisorOptions {
  // The L7 process's command line; the supervisor adds --l7-socket-fd and
  // --l7-agent-pid (normally: this executable, --role l7 and the L7 options).
  std::vector<std::string> argv;
  uint16_t port = 15001;          // the capture listeners'
  uint16_t inbound_port = 15006;  // the inbound listeners' (0: no inbound side)
  // Where a pod's inbound ports are steered (nullptr: nowhere; the inbound listeners
  // then receive nothing).
  InboundSteering* inbound = nullptr;
  // Called (outside any lock) after a pod opened, closed or changed labels.
  std::function<void()> on_pods_changed;
  // A process that sends nothing for this long (it reports every second) is killed.
  std::chrono::milliseconds heartbeat_timeout{5000};
};

// How a config (the node's, or a view's) fared in the L7 process.
struct L7ConfigState {
  uint64_t sent = 0;            // generation last handed over
  uint64_t applied = 0;         // generation its pods run
  std::string error;            // why the last one was refused ("" when it was not)
  config::SnapshotPtr running;  // the snapshot of `applied`
  // What the L7 process compiled for `applied` (proxy::ProxyConfig's built_*): the whole
  // config after a whole set, only what changed after a change.
  struct Built {
    uint64_t clusters = 0, routes = 0, listeners = 0;
  } built;
};

class L7Supervisor : public PodL7 {
 public:
  explicit L7Supervisor(L7SupervisorOptions opts);
  ~L7Supervisor() override;
  L7Supervisor(const L7Supervisor&) = delete;
  L7Supervisor& operator=(const L7Supervisor&) = delete;

  // Starts the first L7 process.
  Result<void> Start();

  // The node's config, and each view's (nullptr: forget the view); handed over now and
  // to every later process. `diff`, when given, is the change from the snapshot given
  // before for that config (the config store's, when each of its snapshots is given in
  // order): the change sent is made from it, at the cost of the change; without it (or
  // when it does not start from the snapshot given before: Diff::base) from a walk over
  // both snapshots.
  void SetNodeConfig(config::SnapshotPtr s, const config::Diff* diff = nullptr);
  void SetViewConfig(const std::string& view, config::SnapshotPtr s,
                     const config::Diff* diff = nullptr);

  // Opens the pod's listening sockets (so the pod can be enrolled at once) and hands the
  // pod over; called again with other labels, moves it to that view.
  Result<void> Open(const enrolment::PodKey& key, const std::string& netns,
                    const enrolment::Labels& labels, const std::vector<std::string>& ips) override;
  void Close(const enrolment::PodKey& key) override;
  // SIGTERM: the process stops accepting, finishes requests (up to `grace`) and ends.
  void DrainAll(std::chrono::milliseconds grace);

  // Asks the process for its status and waits up to `wait` for it (else the last one).
  void RefreshStatus(std::chrono::milliseconds wait);
  std::vector<PodProxyStatus> List() const;
  // Asks the process for its pods' Istio metrics (istio_samples_wire.h) and waits up to
  // `wait`; nullopt when no process answered in time.
  std::optional<std::string> IstioMetrics(std::chrono::milliseconds wait);
  std::vector<View> Views() const;
  L7ConfigState Node() const;
  std::map<std::string, L7ConfigState> ViewStates() const;
  pid_t pid() const;
  uint64_t restarts() const;  // processes started after the first

 private:
  struct Pod {
    std::string netns;
    enrolment::Labels labels;
    std::vector<std::string> ips;
    PodSockets sockets;
    std::vector<InboundPort> inbound;    // steered to its inbound sockets (or only guarded)
    std::vector<KernelPolicy> policies;  // enforced by the kernel
    bool reported = false;               // the L7 process has reported its inbound side
  };
  void SteerLocked(const enrolment::PodKey& key, Pod& pod, std::vector<InboundPort> ports,
                   std::vector<KernelPolicy> policies);
  struct ConfigSlot {
    L7ConfigState state;
    std::map<uint64_t, config::SnapshotPtr> in_flight;  // sent, not yet answered
  };

  void Run();  // the supervising thread: start, read, reap, restart
  Result<pid_t> Spawn(std::shared_ptr<netns::UniqueFd>* sock);
  void WriterLoop();
  // A message queued for the process. A config's whole set (`full`) is encoded from
  // `snap` when it is sent.
  struct Outgoing {
    l7wire::Message m;
    config::SnapshotPtr snap;
    bool full = false;
  };
  // Queues a message; a config message replaces a queued one for the same config (and,
  // when it is a change, becomes the whole set: the change it superseded is lost).
  void Enqueue(Outgoing o);
  void Enqueue(l7wire::Message m) { Enqueue(Outgoing{std::move(m), nullptr, false}); }
  // The config last given for `view` (nullptr: none). Under mu_.
  config::SnapshotPtr SentLocked(const std::string& view) const;
  // The config `s` of `view` ("" for the node's): its change against `before` (the one
  // sent before) when there is one, else the whole set; nullptr: forget it.
  Outgoing ConfigMessage(const std::string& view, const config::SnapshotPtr& s,
                         const config::SnapshotPtr& before,
                         const config::Diff* diff = nullptr) const;
  void SetConfig(const std::string& view, config::SnapshotPtr s, const config::Diff* diff);
  l7wire::Message PodMessage(const enrolment::PodKey& key, const Pod& pod) const;
  void OnMessage(l7wire::Message m);
  void ReplayLocked();

  const L7SupervisorOptions opts_;
  mutable std::mutex mu_;
  std::condition_variable cv_;  // the outbox, the status, the process's end
  std::map<enrolment::PodKey, Pod> pods_;
  ConfigSlot node_;
  config::SnapshotPtr node_snap_;
  std::map<std::string, ConfigSlot> views_;
  std::map<std::string, config::SnapshotPtr> view_snaps_;
  std::map<enrolment::PodKey, PodProxyStatus> status_;
  uint64_t status_seq_ = 0, asked_seq_ = 0;
  uint64_t istio_seq_ = 0;  // the last kIstioStats answered, and its text
  std::string istio_text_;
  std::deque<Outgoing> outbox_;
  // The current process's stream (none between processes); shared with a send under
  // way, so the descriptor is not closed (and its number reused) beneath it.
  std::shared_ptr<netns::UniqueFd> sock_;
  pid_t pid_ = -1;
  uint64_t starts_ = 0;
  bool stopping_ = false, writer_stop_ = false;
  std::thread runner_, writer_;
};

}  // namespace sluice::agent
