// LocalControlPlane: what `sluicectl xds serve` runs. It keeps the translated Istio
// config of a set of files/directories and answers, per connecting xDS node, with the
// resources istiod would send that node.
//
// Reloads are per file: a file that fails to load is reported and its last good
// version stays in force, while the other files' changes apply. (A file that never loaded
// cleanly contributes only its valid documents.) Cross-file problems (duplicate names,
// undefined subsets) drop the offending resource, as LoadPaths does.
//
// Proxies are told apart as istiod does, from the node: ID `sidecar~…` translates for a
// sidecar in metadata NAMESPACE (else the ID's namespace); `router~…` for a gateway
// selected by metadata LABELS.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "envoy/config/core/v3/base.pb.h"
#include "sluice/common/result.h"
#include "sluice/envoy/resource_set.h"
#include "sluice/istio/loader.h"
#include "sluice/istio/registry.h"
#include "sluice/istio/translator.h"

namespace sluice::istio {

// The SDS secrets istiod serves a gateway from the Kubernetes Secrets of its namespace
// (pilot/pkg/xds/sds.go): "kubernetes://NAME" (tls_certificate from tls.crt/tls.key or
// cert/key) and, when the Secret has a CA (ca.crt or cacert), "kubernetes://NAME-cacert"
// (validation_context.trusted_ca). A Secret without a usable certificate gives no
// tls_certificate (a chain naming it fails closed: not received). SDS is asked by name,
// so a proxy gets only the ones its listeners name.
void AddGatewaySecrets(const Config& config, const std::string& ns, xds::ResourceSet* out);

struct ReloadReport {
  std::vector<std::string> errors;  // each names file, document and field
  std::vector<std::string> warnings;
  std::size_t files = 0;
};

class LocalControlPlane {
 public:
  explicit LocalControlPlane(std::vector<std::string> paths);

  // Re-reads every file (unchanged files are not re-parsed). Thread-safe with
  // ResourcesFor: connected proxies see either the old or the new config, whole.
  ReloadReport Reload();

  // The translation for one xDS node; an empty set (and a warning) for a node ID
  // istiod would refuse.
  xds::ResourceSet ResourcesFor(const envoy::config::core::v3::Node& node) const;

  static Result<ProxySpec> ProxyFor(const envoy::config::core::v3::Node& node);

  // Translations done since the last Reload (cache misses), for tests and status.
  std::size_t Translations() const;

 private:
  struct FileState {
    std::size_t text_hash = 0;  // of the content last parsed (change detection)
    std::size_t text_size = 0;
    LoadResult last_good;  // its documents as of the last error-free load
    bool ever_good = false;
    std::vector<std::string> errors, warnings;  // of the last parse of `text`
  };
  struct State {
    Config config;
    Registry registry;
    // Translations of this config, by ProxySpec::Describe(): every sidecar of a namespace
    // with the same labels (and every replica of a gateway) is served the same set,
    // translated once. Labels are part of the key: a Sidecar's workloadSelector and a
    // match's sourceLabels make pods of one namespace differ.
    mutable std::mutex cache_mu;
    mutable std::map<std::string, std::shared_ptr<const xds::ResourceSet>> cache;
  };

  std::vector<std::string> paths_;
  std::mutex reload_mu_;  // serialises Reload
  std::map<std::string, FileState> files_;
  mutable std::mutex state_mu_;  // guards state_ (the pointer, not the object)
  std::shared_ptr<const State> state_;
};

// Watches a directory tree with inotify for files written, moved, created or removed.
class DirWatcher {
 public:
  static Result<DirWatcher> Open(const std::string& dir);
  DirWatcher(DirWatcher&& other) noexcept;
  DirWatcher& operator=(DirWatcher&&) = delete;
  DirWatcher(const DirWatcher&) = delete;
  ~DirWatcher();

  // Waits up to timeout_ms for a change; after one, waits for `settle_ms` of quiet (an
  // editor's write-rename-chmod is one change). True if anything changed.
  Result<bool> Wait(int timeout_ms, int settle_ms = 50);

 private:
  explicit DirWatcher(int fd) : fd_(fd) {}
  Result<void> AddTree(const std::string& dir);
  Result<bool> Drain();  // reads pending events; adds watches for new directories
  int fd_ = -1;
  std::map<int, std::string> dirs_;  // watch descriptor -> directory
};

}  // namespace sluice::istio
