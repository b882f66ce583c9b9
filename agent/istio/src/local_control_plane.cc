#include "sluice/istio/local_control_plane.h"

#include <poll.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include "sluice/xds/node.h"

namespace sluice::istio {

namespace fs = std::filesystem;

LocalControlPlane::LocalControlPlane(std::vector<std::string> paths)
    : paths_(std::move(paths)), state_(std::make_shared<State>()) {}

namespace {

template <class T>
void Append(std::vector<T>& to, const std::vector<T>& from) {
  to.insert(to.end(), from.begin(), from.end());
}

void Merge(Config& into, const LoadResult& file) {
  const Config& c = file.config;
  Append(into.namespaces, c.namespaces);
  Append(into.services, c.services);
  Append(into.workloads, c.workloads);
  Append(into.endpoint_groups, c.endpoint_groups);
  Append(into.gateways, c.gateways);
  Append(into.virtual_services, c.virtual_services);
  Append(into.destination_rules, c.destination_rules);
  Append(into.service_entries, c.service_entries);
  Append(into.telemetries, c.telemetries);
  Append(into.sidecars, c.sidecars);
  Append(into.authorization_policies, c.authorization_policies);
  Append(into.secrets, c.secrets);
  if (c.mesh_set) {
    into.mesh = c.mesh;
    into.mesh_set = true;
  }
}

}  // namespace

ReloadReport LocalControlPlane::Reload() {
  std::lock_guard reload_lock(reload_mu_);
  ReloadReport report;
  std::vector<std::string> list_errors;
  auto files = ListConfigFiles(paths_, &list_errors);
  Append(report.errors, list_errors);
  report.files = files.size();

  std::map<std::string, FileState> next;
  LoadResult merged;
  for (const auto& file : files) {
    FileState st;
    auto old = files_.find(file);
    if (old != files_.end())
      st = std::move(old->second);
    std::ifstream in(file, std::ios::binary);
    if (!in) {
      report.errors.push_back(file + ": cannot read: " + std::strerror(errno) +
                              (st.ever_good ? "; keeping its last good version" : ""));
    } else {
      std::stringstream buf;
      buf << in.rdbuf();
      std::string text = buf.str();
      const std::size_t hash = std::hash<std::string>{}(text);
      const bool changed = hash != st.text_hash || text.size() != st.text_size;
      if (changed || (st.errors.empty() && !st.ever_good)) {
        LoadResult fresh;
        LoadText(text, file, fresh);
        st.warnings = fresh.warnings;
        st.errors.clear();
        if (fresh.ok()) {
          st.last_good = std::move(fresh);
          st.ever_good = true;
        } else {
          for (const auto& e : fresh.errors) {
            st.errors.push_back(e +
                                (st.ever_good ? " (keeping the file's last good version)" : ""));
          }
          // Never loaded cleanly: its valid documents are all there is.
          if (!st.ever_good)
            st.last_good = std::move(fresh);
        }
      }
      // Unchanged files are not parsed again; their problems are reported again.
      Append(report.warnings, st.warnings);
      Append(report.errors, st.errors);
      st.text_hash = hash;
      st.text_size = text.size();
    }
    Merge(merged.config, st.last_good);
    next.emplace(file, std::move(st));
  }
  files_ = std::move(next);

  Validate(merged);
  for (const auto& e : merged.errors) {
    if (std::find(report.errors.begin(), report.errors.end(), e) == report.errors.end()) {
      report.errors.push_back(e);
    }
  }
  auto state = std::make_shared<State>();
  state->registry = Registry::Build(merged.config);
  Append(report.warnings, state->registry.warnings());
  state->config = std::move(merged.config);
  {
    std::lock_guard lock(state_mu_);
    state_ = std::move(state);
  }
  return report;
}

Result<ProxySpec> LocalControlPlane::ProxyFor(const envoy::config::core::v3::Node& node) {
  auto id = xds::ParseNodeId(node.id());
  SLUICE_RETURN_IF_ERROR_CTX(id, "node \"" + node.id() + "\"");
  ProxySpec spec;
  spec.ns = id->pod_namespace;
  const auto& md = node.metadata().fields();
  if (auto it = md.find("NAMESPACE"); it != md.end() && !it->second.string_value().empty()) {
    spec.ns = it->second.string_value();
  }
  if (auto it = md.find("LABELS"); it != md.end()) {
    for (const auto& [k, v] : it->second.struct_value().fields())
      spec.labels[k] = v.string_value();
  }
  spec.kind =
      id->role == xds::ProxyRole::kRouter ? ProxySpec::Kind::kGateway : ProxySpec::Kind::kSidecar;
  // istiod picks its generator from the node's metadata: istio-agent's grpc-agent
  // template (proxyless gRPC) sends GENERATOR: grpc with a sidecar node ID.
  if (auto it = md.find("GENERATOR"); it != md.end() && it->second.string_value() == "grpc" &&
                                      spec.kind == ProxySpec::Kind::kSidecar) {
    spec.kind = ProxySpec::Kind::kGrpc;
  }
  return spec;
}

void AddGatewaySecrets(const Config& config, const std::string& ns, xds::ResourceSet* out) {
  for (const auto& s : config.secrets) {
    if (s.meta.ns != ns)
      continue;
    if (auto cert = ExtractCertInfo(s)) {
      envoy::extensions::transport_sockets::tls::v3::Secret sec;
      sec.set_name("kubernetes://" + s.meta.name);
      auto* tc = sec.mutable_tls_certificate();
      tc->mutable_certificate_chain()->set_inline_bytes(cert->cert);
      tc->mutable_private_key()->set_inline_bytes(cert->key);
      out->Add(std::move(sec));
    }
    if (auto root = ExtractRoot(s)) {
      envoy::extensions::transport_sockets::tls::v3::Secret sec;
      sec.set_name("kubernetes://" + s.meta.name + "-cacert");
      sec.mutable_validation_context()->mutable_trusted_ca()->set_inline_bytes(*root);
      out->Add(std::move(sec));
    }
  }
}

xds::ResourceSet LocalControlPlane::ResourcesFor(const envoy::config::core::v3::Node& node) const {
  std::shared_ptr<const State> state;
  {
    std::lock_guard lock(state_mu_);
    state = state_;
  }
  auto spec = ProxyFor(node);
  if (!spec)
    return {};
  const std::string key = spec->Describe();
  std::lock_guard lock(state->cache_mu);  // concurrent streams for one key translate once
  auto& cached = state->cache[key];
  if (!cached) {
    auto rs = Translate(state->config, state->registry, *spec).resources;
    if (spec->kind == ProxySpec::Kind::kGateway)
      AddGatewaySecrets(state->config, spec->ns, &rs);
    cached = std::make_shared<const xds::ResourceSet>(std::move(rs));
  }
  return *cached;
}

std::size_t LocalControlPlane::Translations() const {
  std::shared_ptr<const State> state;
  {
    std::lock_guard lock(state_mu_);
    state = state_;
  }
  std::lock_guard lock(state->cache_mu);
  return state->cache.size();
}

// ---------------------------------------------------------------- DirWatcher

namespace {
constexpr uint32_t kWatchMask = IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE |
                                IN_DELETE | IN_DELETE_SELF | IN_ATTRIB | IN_ONLYDIR;
}

Result<DirWatcher> DirWatcher::Open(const std::string& dir) {
  int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (fd < 0)
    return FailErrno("inotify_init1", errno);
  DirWatcher w(fd);
  SLUICE_RETURN_IF_ERROR(w.AddTree(dir));
  return w;
}

DirWatcher::DirWatcher(DirWatcher&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), dirs_(std::move(other.dirs_)) {}

DirWatcher::~DirWatcher() {
  if (fd_ >= 0)
    ::close(fd_);
}

Result<void> DirWatcher::AddTree(const std::string& dir) {
  int wd = inotify_add_watch(fd_, dir.c_str(), kWatchMask);
  if (wd < 0)
    return FailErrno("inotify_add_watch " + dir, errno);
  dirs_[wd] = dir;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.is_directory(ec) && !e.path().filename().string().starts_with(".")) {
      if (auto r = AddTree(e.path().string()); !r)
        return r;
    }
  }
  return {};
}

Result<bool> DirWatcher::Drain() {
  alignas(inotify_event) char buf[8192];
  bool changed = false;
  for (;;) {
    ssize_t n = ::read(fd_, buf, sizeof buf);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR)
        return changed;
      return FailErrno("inotify read", errno);
    }
    if (n == 0)
      return changed;
    for (char* p = buf; p < buf + n;) {
      auto* ev = reinterpret_cast<inotify_event*>(p);
      p += sizeof(inotify_event) + ev->len;
      changed = true;
      if ((ev->mask & IN_ISDIR) && (ev->mask & (IN_CREATE | IN_MOVED_TO)) && ev->len > 0) {
        auto it = dirs_.find(ev->wd);
        if (it != dirs_.end())
          (void)AddTree(it->second + "/" + ev->name);
      }
      if (ev->mask & IN_IGNORED)
        dirs_.erase(ev->wd);
    }
  }
}

Result<bool> DirWatcher::Wait(int timeout_ms, int settle_ms) {
  pollfd pfd{fd_, POLLIN, 0};
  int r = ::poll(&pfd, 1, timeout_ms);
  if (r < 0)
    return errno == EINTR ? Result<bool>(false) : FailErrno("poll inotify", errno);
  if (r == 0)
    return false;
  auto changed = Drain();
  if (!changed)
    return changed;
  // Let a burst of events (write, rename, chmod) finish before the caller reloads.
  for (;;) {
    r = ::poll(&pfd, 1, settle_ms);
    if (r <= 0)
      break;
    auto more = Drain();
    if (!more)
      return more;
  }
  return *changed;
}

}  // namespace sluice::istio
