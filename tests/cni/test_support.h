// Shared helpers for the CNI tests: a temp dir, a recording CniHandler, and running the
// real sluice-cni binary as a runtime would.
#pragma once

#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "cni_server.h"
#include "sluice/local/run_process.h"

namespace sluice::cni::testing {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "sluicet-cni-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr)
      throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// Records every call; answers with what the test configured. The server calls it on
// its own threads, so the test reads and configures it through locked accessors.
class RecordingHandler : public CniHandler {
 public:
  Result<AddReply> OnAdd(const PodInfo& pod) override {
    std::lock_guard lock(mu_);
    adds_.push_back(pod);
    if (fail_add_)
      return std::unexpected(*fail_add_);
    return AddReply{enrol_, "test handler"};
  }
  Result<void> OnDel(const PodInfo& pod) override {
    std::lock_guard lock(mu_);
    dels_.push_back(pod);
    return {};
  }
  Result<AddReply> OnCheck(const PodInfo& pod) override {
    std::lock_guard lock(mu_);
    checks_.push_back(pod);
    return AddReply{enrol_, ""};
  }

  std::vector<PodInfo> adds() const {
    std::lock_guard lock(mu_);
    return adds_;
  }
  std::vector<PodInfo> dels() const {
    std::lock_guard lock(mu_);
    return dels_;
  }
  std::vector<PodInfo> checks() const {
    std::lock_guard lock(mu_);
    return checks_;
  }
  void set_enrol(bool enrol) {
    std::lock_guard lock(mu_);
    enrol_ = enrol;
  }
  void set_fail_add(std::optional<Error> err) {
    std::lock_guard lock(mu_);
    fail_add_ = std::move(err);
  }

 private:
  mutable std::mutex mu_;
  std::vector<PodInfo> adds_, dels_, checks_;
  bool enrol_ = true;
  std::optional<Error> fail_add_;
};

struct CniEnv {
  std::string command;
  std::string container_id = "sluicet-c1";
  std::string netns = "/var/run/netns/sluicet-none";
  std::string ifname = "eth0";
  std::string args = "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-7d9;K8S_POD_UID=uid-1";
};

inline std::vector<std::string> EnvList(const CniEnv& e) {
  return {"CNI_COMMAND=" + e.command, "CNI_CONTAINERID=" + e.container_id,
          "CNI_NETNS=" + e.netns,     "CNI_IFNAME=" + e.ifname,
          "CNI_ARGS=" + e.args,       "CNI_PATH=/usr/lib/cni",
          "PATH=/usr/bin:/bin"};
}

inline local::ProcessResult RunSluiceCni(const CniEnv& e, const std::string& stdin_text) {
  auto r = local::RunProcess({SLUICE_CNI_BINARY}, EnvList(e), stdin_text, std::chrono::seconds(10));
  if (!r)
    throw std::runtime_error("running sluice-cni: " + r.error().message);
  return *r;
}

}  // namespace sluice::cni::testing
