#include "local_source.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <filesystem>

#include "sluice/istio/local_control_plane.h"
#include "sluice/xds/ads_server.h"

namespace sluice::agent {

namespace {
void Report(const std::string& dir, const istio::ReloadReport& r) {
  for (const auto& w : r.warnings)
    spdlog::warn("{}: {}", dir, w);
  for (const auto& e : r.errors)
    spdlog::error("{}: {} (its last good version stays)", dir, e);
}
}  // namespace

Result<std::unique_ptr<LocalSource>> LocalSource::Start(const std::string& config_dir,
                                                        const std::string& socket_path) {
  std::error_code ec;
  if (!std::filesystem::is_directory(config_dir, ec))
    return Fail("--config-dir " + config_dir + ": not a directory");
  auto watcher = istio::DirWatcher::Open(config_dir);
  SLUICE_RETURN_IF_ERROR_CTX(watcher, "--config-dir " + config_dir);
  std::unique_ptr<LocalSource> s(new LocalSource());
  s->cp_ = std::make_unique<istio::LocalControlPlane>(std::vector<std::string>{config_dir});
  auto report = s->cp_->Reload();
  Report(config_dir, report);
  auto* cp = s->cp_.get();
  s->server_ = std::make_unique<xds::AdsServer>(
      [cp](const envoy::config::core::v3::Node& node) { return cp->ResourcesFor(node); });
  std::filesystem::create_directories(std::filesystem::path(socket_path).parent_path(), ec);
  ::unlink(socket_path.c_str());  // a stale socket of an earlier run
  xds::AdsServerOptions o;
  o.address = "unix:" + socket_path;
  SLUICE_RETURN_IF_ERROR_CTX(s->server_->Start(o), "--config-dir " + config_dir);
  s->socket_path_ = socket_path;
  s->address_ = o.address;
  spdlog::info("config from {} ({} files, {} errors), served to this agent on {}", config_dir,
               report.files, report.errors.size(), s->address_);
  s->watcher_ = std::thread([src = s.get(), config_dir, w = std::move(*watcher)]() mutable {
    while (!src->stop_) {
      auto changed = w.Wait(200);
      if (!changed) {
        spdlog::error("--config-dir {}: {}; no longer watching", config_dir,
                      changed.error().message);
        return;
      }
      if (!*changed)
        continue;
      auto r = src->cp_->Reload();
      Report(config_dir, r);
      uint64_t version = src->server_->Push();
      spdlog::info("{}: reloaded {} files ({} errors), version {}", config_dir, r.files,
                   r.errors.size(), version);
    }
  });
  return s;
}

LocalSource::~LocalSource() {
  stop_ = true;
  if (watcher_.joinable())
    watcher_.join();
  if (server_)
    server_->Stop();
  if (!socket_path_.empty())
    ::unlink(socket_path_.c_str());
}

}  // namespace sluice::agent
