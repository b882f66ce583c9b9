// Shared helpers for the CNI tests: a temp dir, a recording CniHandler, and running the
// real sluice-cni binary as a runtime would.
#pragma once

#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <mutex>
#include <string>
#include <vector>

#include "sluice/cni/process.h"
#include "sluice/cni/server.h"

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

// Records every call; answers with what the test configured.
class RecordingHandler : public CniHandler {
 public:
  Result<AddReply> OnAdd(const PodInfo& pod) override {
    std::lock_guard lock(mu);
    adds.push_back(pod);
    if (fail_add)
      return std::unexpected(*fail_add);
    return AddReply{enrol, "test handler"};
  }
  Result<void> OnDel(const PodInfo& pod) override {
    std::lock_guard lock(mu);
    dels.push_back(pod);
    return {};
  }
  Result<AddReply> OnCheck(const PodInfo& pod) override {
    std::lock_guard lock(mu);
    checks.push_back(pod);
    if (fail_check)
      return std::unexpected(*fail_check);
    return AddReply{enrol, ""};
  }

  std::mutex mu;
  std::vector<PodInfo> adds, dels, checks;
  bool enrol = true;
  std::optional<Error> fail_add;
  std::optional<Error> fail_check;
};

struct CniEnv {
  std::string command;
  std::string container_id = "sluicet-c1";
  std::string netns = "/var/run/netns/sluicet-none";
  std::string ifname = "eth0";
  std::string args = "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-7d9;K8S_POD_UID=uid-1";
};

inline ProcessResult RunSluiceCni(const CniEnv& e, const std::string& stdin_text) {
  std::vector<std::string> env = {"CNI_COMMAND=" + e.command, "CNI_CONTAINERID=" + e.container_id,
                                  "CNI_NETNS=" + e.netns,     "CNI_IFNAME=" + e.ifname,
                                  "CNI_ARGS=" + e.args,       "CNI_PATH=/usr/lib/cni",
                                  "PATH=/usr/bin:/bin"};
  auto r = RunProcess({SLUICE_CNI_BINARY}, env, stdin_text, std::chrono::seconds(10));
  if (!r)
    throw std::runtime_error("running sluice-cni: " + r.error().message);
  return *r;
}

}  // namespace sluice::cni::testing
