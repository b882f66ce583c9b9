// `sluicectl local port-forward`: a listener on 127.0.0.1 whose connections are made,
// one by one, from inside a pod's network namespace to a port of that pod, then spliced.
#pragma once

#include <atomic>
#include <functional>
#include <optional>
#include <string>

#include "sluice/common/result.h"

namespace sluice::local {

struct ForwardTarget {
  std::string netns;  // the pod's network namespace ("" = this one)
  std::string ip;     // the pod's address
  int port = 0;
};

struct PortForwardOptions {
  std::string listen_ip = "127.0.0.1";
  int local_port = 0;  // 0: any free port
  // Called per connection: which pod to reach (a Service picks among its ready pods).
  std::function<Result<ForwardTarget>()> pick;
};

class PortForwarder {
 public:
  // Binds the listener; returns the port it got.
  Result<int> Listen(const PortForwardOptions& opts);
  // Accepts and forwards until stop becomes true (checked every 100 ms).
  void Serve(const std::atomic<bool>& stop);

 private:
  PortForwardOptions opts_;
  int listen_fd_ = -1;
};

}  // namespace sluice::local
