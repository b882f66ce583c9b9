// The agent side of the CNI protocol: a Unix-socket server that hands each pod event
// from sluice-cni to a CniHandler the agent implements.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "sluice/cni/protocol.h"
#include "sluice/common/result.h"

namespace sluice::cni {

// One pod sandbox as the container runtime described it to the plugin.
struct PodInfo {
  std::string name;
  std::string pod_namespace;
  std::string uid;
  std::string netns;  // path to the network namespace (may be empty or gone on DEL)
  std::string container_id;
  std::string ifname;
  std::vector<std::string> ips;  // CIDR strings from prevResult ("10.1.0.5/24")
  std::string cni_version;
};

struct AddReply {
  bool enrolled = false;
  std::string message;  // free text for the plugin's log
};

// Implemented by the agent. Calls are serialized by the server (never two at once), so
// an implementation needs no locking of its own against other CNI calls.
//
// An error becomes a CNI error for the runtime: Error::code EAGAIN or EBUSY maps to CNI
// code 11 ("try again later"), anything else to 100 (the agent failed the pod).
// OnDel must succeed for pods it does not know and for namespaces already gone.
class CniHandler {
 public:
  virtual ~CniHandler() = default;
  virtual Result<AddReply> OnAdd(const PodInfo& pod) = 0;
  virtual Result<void> OnDel(const PodInfo& pod) = 0;
  virtual Result<AddReply> OnCheck(const PodInfo& pod) = 0;
};

struct CniServerOptions {
  std::string socket_path = "/var/run/sluice/cni.sock";
  // Budget for reading a request and for writing the reply, per connection.
  std::chrono::milliseconds io_timeout{5000};
  // Connections served at once; beyond that a client is answered "try again later".
  std::size_t max_connections = 64;
  // Besides the socket's 0600 mode, the peer's uid (SO_PEERCRED) must be root or the
  // agent's own; set false only for tests that need another uid.
  bool check_peer_uid = true;
};

struct CniServerStats {
  std::uint64_t requests = 0;       // well-formed requests handed to the handler
  std::uint64_t bad_requests = 0;   // rejected frames or bodies
  std::uint64_t timeouts = 0;       // clients that did not send a request in time
  std::uint64_t rejected_busy = 0;  // turned away at max_connections
  std::uint64_t rejected_peer = 0;  // peers with a uid other than root or the agent's
};

class CniServer {
 public:
  // Creates the socket's directory (0700 when it has to create it), removes a stale
  // socket file, binds, sets the socket mode to 0600 and starts serving.
  static Result<std::unique_ptr<CniServer>> Start(CniServerOptions options, CniHandler& handler);
  ~CniServer();
  CniServer(const CniServer&) = delete;
  CniServer& operator=(const CniServer&) = delete;

  // Stops accepting, wakes and joins every connection thread, removes the socket file.
  void Stop();
  const std::string& socket_path() const { return options_.socket_path; }
  CniServerStats stats() const;

 private:
  struct Connection {
    int fd = -1;
    std::thread thread;
    std::atomic<bool> done{false};
  };

  CniServer(CniServerOptions options, CniHandler& handler, int listen_fd, int wake_fd);
  void AcceptLoop();
  void Serve(Connection& conn);
  CniReply Dispatch(const CniRequest& req);
  void ReapFinished();

  CniServerOptions options_;
  CniHandler& handler_;
  int listen_fd_;
  int wake_fd_;  // eventfd that ends the accept loop
  std::thread accept_thread_;
  std::mutex handler_mu_;  // serializes handler calls
  mutable std::mutex mu_;  // guards connections_, stats_
  std::list<Connection> connections_;
  CniServerStats stats_;
  bool stopped_ = false;
};

}  // namespace sluice::cni
