// The agent keeps sluice-cni chained into the node's CNI configuration itself (issue 19).
//
// Once the agent is ready (data plane loaded, CNI socket listening, and whatever else the
// `ready` callback waits for), CniConfKeeper writes the sluice-cni entry as the LAST
// plugin of the primary network configuration, with the same rules as
// deploy/cni/install-cni.sh (docs/cni.md):
//   - the primary is --cni-conflist, else what libcni loads first: the first *.conflist,
//     *.conf or *.json by byte order of the name (hidden files, such as the originals
//     kept below, are never candidates);
//   - the file is kept byte for byte as .<name>.sluice-orig before the first change, and
//     again whenever the primary CNI rewrote it without our entry;
//   - a single-plugin .conf (or .json) becomes <base>.conflist with the same name and
//     cniVersion, as runtimes read a plugin list only from a .conflist;
//   - writes go through a temp file in the same directory and rename(2);
//   - a pass that would write what is already there writes nothing.
// It watches the directory with inotify: when the primary CNI rewrites its file (our
// entry gone), the next pass re-chains within `settle` of the last change. Its own
// writes cause one more pass that finds nothing to do, so it never loops.
//
// With a KubeconfigSource it also writes the kubeconfig sluice-cni uses when the agent is
// unreachable (conf dir/sluice-kubeconfig, mode 0600: server, CA data, the agent's own
// token), as Istio's CNI does, and rewrites it when the token file rotates.
//
// Unchain() is install-cni.sh --uninstall: the original back when the file is still what
// was written, else only our entry removed.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "sluice/common/result.h"

namespace sluice::agent {

inline constexpr const char* kCniKubeconfigName = "sluice-kubeconfig";

// The sluice-cni entry's fields (cni/plugin.cc reads them).
struct CniEntryOptions {
  std::string agent_socket;  // "agentSocket"; empty: the plugin's default
  bool fail_open = false;    // "failOpen"
  // "excludeNamespaces": pods there start even when the agent is unreachable.
  std::vector<std::string> exclude_namespaces{"kube-system"};
  std::string kubeconfig;  // "kubeconfig" (a path); empty: none
};

// Where the API server is, for the kubeconfig handed to sluice-cni.
struct KubeconfigSource {
  std::string server;      // "https://10.96.0.1:443"
  std::string ca_file;     // PEM; empty: none (the system's, or plain http in tests)
  std::string token_file;  // the agent's token; re-read when it changes
};

struct CniConfOptions {
  std::string conf_dir;  // empty: the keeper is off
  std::string conflist;  // the primary's file name; empty: libcni's choice
  CniEntryOptions entry;
  // With a server: write conf_dir/sluice-kubeconfig and point the entry at it.
  KubeconfigSource kube;
  // Quiet time after a change in the directory before the next pass (the primary CNI may
  // write in steps), and the pass made anyway without any event.
  std::chrono::milliseconds settle{200};
  std::chrono::milliseconds resync{30000};
};

// What one pass did.
struct ChainOutcome {
  enum class Kind { kUnchanged, kWritten, kNoPrimary };
  Kind kind = Kind::kNoPrimary;
  std::string target;   // the file that chains sluice-cni (path)
  std::string message;  // for the log
};

// One install pass over opts.conf_dir (no thread, no kubeconfig). Errors name the file.
[[nodiscard]] Result<ChainOutcome> ChainOnce(const CniConfOptions& opts);

// install-cni.sh --uninstall over conf_dir, plus the kubeconfig written for the plugin.
// Returns one log line per file it changed.
[[nodiscard]] Result<std::vector<std::string>> Unchain(const std::string& conf_dir);

// Writes conf_dir/sluice-kubeconfig (0600, temp + rename) from `src`; the token and the
// CA are embedded, as the plugin runs on the host where the agent's files are not.
[[nodiscard]] Result<std::string> WriteCniKubeconfig(const std::string& conf_dir,
                                                     const KubeconfigSource& src);

struct CniConfStatus {
  bool enabled = false;  // a conf dir is set
  bool ready = false;    // the agent said ready; passes run
  bool chained = false;  // the last pass left sluice-cni chained
  std::string target;    // the file that chains it
  std::string last_action;
  std::string last_error;  // "" when the last pass went well
  uint64_t passes = 0;
  uint64_t writes = 0;  // passes that wrote the conflist
  uint64_t kubeconfig_writes = 0;
};

class CniConfKeeper {
 public:
  // Starts the watch thread. Nothing is written until `ready` returns true (it is asked
  // every 200 ms until then; null: ready at once).
  [[nodiscard]] static Result<std::unique_ptr<CniConfKeeper>> Start(CniConfOptions opts,
                                                                    std::function<bool()> ready);
  ~CniConfKeeper();  // Stop()
  CniConfKeeper(const CniConfKeeper&) = delete;
  CniConfKeeper& operator=(const CniConfKeeper&) = delete;

  // Ends the thread; the files stay as they are.
  void Stop();
  CniConfStatus Status() const;
  // A human-readable status (the admin's /cni_conf).
  std::string StatusText() const;
  const CniConfOptions& options() const { return opts_; }

 private:
  CniConfKeeper(CniConfOptions opts, std::function<bool()> ready);
  void Run();
  void Pass();
  void KubeconfigPass(bool force);

  CniConfOptions opts_;
  std::function<bool()> ready_;
  int inotify_fd_ = -1;
  int wake_fd_ = -1;
  int watch_ = -1;
  std::atomic<bool> stop_{false};
  mutable std::mutex mu_;
  CniConfStatus status_;
  // the token file's identity at the last kubeconfig write (mtime ns, size, inode)
  long long token_mtime_ = -1, token_size_ = -1;
  unsigned long long token_ino_ = 0;
  std::thread thread_;
};

}  // namespace sluice::agent
