// LocalSource: the agent's config from local Istio/Kubernetes YAML instead of istiod.
//
// It runs the project's translator (the local control plane `sluicectl xds serve` runs)
// inside the agent and serves it over ADS on a private Unix socket that the agent's own
// xDS clients connect to — so everything after the stream (ACK/NACK, warming, the last
// good config, one stream per namespace) is the same pipeline as with istiod. The
// directory is watched; a bad file is reported and its last good version stays.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "sluice/common/result.h"

namespace sluice::istio {
class LocalControlPlane;
}
namespace sluice::xds {
class AdsServer;
}

namespace sluice::agent {

class LocalSource {
 public:
  // Translates `config_dir` and serves it on `socket_path`; returns the xDS address
  // to connect to ("unix:PATH").
  static Result<std::unique_ptr<LocalSource>> Start(const std::string& config_dir,
                                                    const std::string& socket_path);
  ~LocalSource();
  const std::string& address() const { return address_; }

 private:
  LocalSource() = default;
  std::unique_ptr<istio::LocalControlPlane> cp_;
  std::unique_ptr<xds::AdsServer> server_;
  std::string address_, socket_path_;
  std::atomic<bool> stop_{false};
  std::thread watcher_;
};

}  // namespace sluice::agent
