// sluice-cni chained by the agent itself (cni_conf.h).
#include "cni_conf.h"

#include <fcntl.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace sluice::agent {
namespace {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;  // keeps the primary's key order

constexpr std::string_view kTempPrefix = ".sluice-cni.tmp.";
constexpr std::string_view kOrigSuffix = ".sluice-orig";

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// Files libcni reads: *.conflist, *.conf, *.json; hidden files (our kept originals and
// temp files) are not candidates, as a shell glob `*` skips them too.
bool IsCandidate(std::string_view name) {
  return !name.empty() && name[0] != '.' &&
         (EndsWith(name, ".conflist") || EndsWith(name, ".conf") || EndsWith(name, ".json"));
}

Result<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return FailErrno("reading " + path, errno);
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad())
    return FailErrno("reading " + path, errno);
  return ss.str();
}

// Writes `text` to `target` through a temp file beside it and rename(2); the mode is the
// one of `mode_from` when that exists, else `mode`.
Result<void> AtomicWrite(const std::string& target, const std::string& text,
                         const std::string& mode_from, mode_t mode = 0644) {
  std::string tmpl = (fs::path(target).parent_path() / (std::string(kTempPrefix) + "XXXXXX"));
  int fd = ::mkstemp(tmpl.data());
  if (fd < 0)
    return FailErrno("creating a temp file beside " + target, errno);
  struct stat st {};
  if (!mode_from.empty() && ::stat(mode_from.c_str(), &st) == 0)
    mode = st.st_mode & 07777;
  const char* p = text.data();
  std::size_t left = text.size();
  int err = 0;
  while (left > 0) {
    ssize_t n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      err = n < 0 ? errno : EIO;
      break;
    }
    p += n;
    left -= static_cast<std::size_t>(n);
  }
  if (err == 0 && ::fchmod(fd, mode) != 0)
    err = errno;
  if (err == 0 && ::fsync(fd) != 0)
    err = errno;
  ::close(fd);
  if (err == 0 && ::rename(tmpl.c_str(), target.c_str()) != 0)
    err = errno;
  if (err != 0) {
    ::unlink(tmpl.c_str());
    return FailErrno("writing " + target, err);
  }
  return {};
}

std::string BackupOf(const std::string& dir, const std::string& name) {
  return (fs::path(dir) / ("." + name + std::string(kOrigSuffix))).string();
}

// The file install writes for a primary `name`: runtimes read a list only from a
// .conflist.
std::string TargetOf(const std::string& name) {
  if (EndsWith(name, ".conf"))
    return name.substr(0, name.size() - 5) + ".conflist";
  if (EndsWith(name, ".json"))
    return name.substr(0, name.size() - 5) + ".conflist";
  return name;
}

// The configuration a file holds, in list form (a single plugin becomes a one-plugin list).
Result<ojson> AsConflist(const std::string& path) {
  auto text = ReadFile(path);
  SLUICE_RETURN_IF_ERROR(text);
  ojson j = ojson::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    return Fail(path + ": not a CNI network configuration (not a JSON object)");
  if (j.contains("plugins")) {
    if (!j["plugins"].is_array())
      return Fail(path + ": \"plugins\" is not a list");
    return j;
  }
  if (!j.contains("type"))
    return Fail(path + ": not a CNI network configuration (neither \"plugins\" nor \"type\")");
  ojson list;
  list["cniVersion"] = j.contains("cniVersion") ? j["cniVersion"] : ojson();
  list["name"] = j.contains("name") ? j["name"] : ojson();
  ojson plugin = j;
  plugin.erase("cniVersion");
  plugin.erase("name");
  list["plugins"] = ojson::array({plugin});
  return list;
}

bool ChainsSluice(const ojson& list) {
  for (const auto& p : list["plugins"]) {
    if (p.is_object() && p.value("type", "") == "sluice-cni")
      return true;
  }
  return false;
}

ojson WithoutSluice(ojson list) {
  ojson kept = ojson::array();
  for (auto& p : list["plugins"]) {
    if (!(p.is_object() && p.value("type", "") == "sluice-cni"))
      kept.push_back(std::move(p));
  }
  list["plugins"] = std::move(kept);
  return list;
}

ojson Entry(const CniEntryOptions& e) {
  ojson j;
  j["type"] = "sluice-cni";
  if (!e.agent_socket.empty())
    j["agentSocket"] = e.agent_socket;
  if (e.fail_open)
    j["failOpen"] = true;
  j["excludeNamespaces"] = e.exclude_namespaces;
  if (!e.kubeconfig.empty())
    j["kubeconfig"] = e.kubeconfig;
  return j;
}

std::string Render(const ojson& j) {
  return j.dump(2) + "\n";
}

// Same configuration, whatever the formatting and key order.
bool SameJson(const std::string& text, const ojson& want) {
  auto have = nlohmann::json::parse(text, nullptr, false);
  return !have.is_discarded() && have == nlohmann::json::parse(want.dump());
}

Result<std::string> FindPrimary(const CniConfOptions& opts) {
  if (!opts.conflist.empty()) {
    const std::string path = (fs::path(opts.conf_dir) / opts.conflist).string();
    std::error_code ec;
    if (!fs::is_regular_file(path, ec))
      return std::string();  // not written yet (the primary CNI may still come)
    return opts.conflist;
  }
  std::error_code ec;
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(opts.conf_dir, ec)) {
    const std::string name = e.path().filename().string();
    std::error_code ec2;
    if (IsCandidate(name) && e.is_regular_file(ec2))
      names.push_back(name);
  }
  if (ec)
    return FailErrno("reading the CNI conf dir " + opts.conf_dir, ec.value());
  if (names.empty())
    return std::string();
  return *std::min_element(names.begin(), names.end());  // byte order, as libcni sorts
}

Result<void> CopyFile(const std::string& from, const std::string& to) {
  auto text = ReadFile(from);
  SLUICE_RETURN_IF_ERROR(text);
  return AtomicWrite(to, *text, from);
}

std::string Base64(std::string_view in) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8) | uint8_t(in[i + 2]);
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += kAlphabet[v & 63];
  }
  if (i + 1 == in.size()) {
    uint32_t v = uint8_t(in[i]) << 16;
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += "==";
  } else if (i + 2 == in.size()) {
    uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8);
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' '))
    s.pop_back();
  return s;
}

}  // namespace

Result<ChainOutcome> ChainOnce(const CniConfOptions& opts) {
  ChainOutcome out;
  auto primary = FindPrimary(opts);
  SLUICE_RETURN_IF_ERROR(primary);
  if (primary->empty()) {
    out.kind = ChainOutcome::Kind::kNoPrimary;
    out.message = opts.conflist.empty()
                      ? "no CNI network configuration (*.conflist, *.conf, *.json) in " +
                            opts.conf_dir + " yet"
                      : opts.conf_dir + "/" + opts.conflist + " does not exist yet";
    return out;
  }
  const std::string path = (fs::path(opts.conf_dir) / *primary).string();
  auto current = AsConflist(path);
  SLUICE_RETURN_IF_ERROR(current);
  const std::string target_name = TargetOf(*primary);
  const std::string target = (fs::path(opts.conf_dir) / target_name).string();
  out.target = target;

  // A .conflist made from a .conf or .json keeps its original under the old name.
  std::error_code ec;
  std::string backup = BackupOf(opts.conf_dir, *primary);
  if (EndsWith(*primary, ".conflist") && !fs::exists(backup, ec)) {
    const std::string base = primary->substr(0, primary->size() - 9);
    for (const char* ext : {".conf", ".json"}) {
      if (fs::exists(BackupOf(opts.conf_dir, base + ext), ec))
        backup = BackupOf(opts.conf_dir, base + ext);
    }
  }
  std::string note;
  if (ChainsSluice(*current)) {
    if (!fs::exists(backup, ec))
      note = " (" + path + " already chained sluice-cni; no original is kept)";
  } else {
    // A fresh original: the first chaining, or the primary CNI rewrote its file.
    SLUICE_RETURN_IF_ERROR_CTX(CopyFile(path, backup), "keeping the original of " + path);
  }

  ojson desired = WithoutSluice(*current);
  desired["plugins"].push_back(Entry(opts.entry));
  if (fs::is_regular_file(target, ec)) {
    auto have = ReadFile(target);
    if (have && SameJson(*have, desired)) {
      out.kind = ChainOutcome::Kind::kUnchanged;
      out.message = target + " already chains sluice-cni" + note;
      return out;
    }
  }
  SLUICE_RETURN_IF_ERROR(AtomicWrite(target, Render(desired), path));
  out.kind = ChainOutcome::Kind::kWritten;
  if (target != path) {
    if (::unlink(path.c_str()) != 0 && errno != ENOENT)
      return FailErrno("removing " + path + " (converted into " + target + ")", errno);
    out.message = "converted " + path + " into " + target + " with sluice-cni chained last";
  } else {
    out.message = "chained sluice-cni as the last plugin of " + target;
  }
  out.message += note;
  return out;
}

Result<std::vector<std::string>> Unchain(const std::string& conf_dir) {
  std::vector<std::string> log;
  std::error_code ec;
  if (!fs::is_directory(conf_dir, ec))
    return log;
  std::vector<std::string> backups, conflists, temps;
  for (const auto& e : fs::directory_iterator(conf_dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.size() > 1 + kOrigSuffix.size() && name[0] == '.' && EndsWith(name, kOrigSuffix))
      backups.push_back(name);
    else if (name.starts_with(kTempPrefix))
      temps.push_back(name);
    else if (EndsWith(name, ".conflist"))
      conflists.push_back(name);
  }
  if (ec)
    return FailErrno("reading the CNI conf dir " + conf_dir, ec.value());
  std::sort(backups.begin(), backups.end());
  auto in_dir = [&](const std::string& n) { return (fs::path(conf_dir) / n).string(); };
  for (const auto& b : backups) {
    const std::string orig = b.substr(1, b.size() - 1 - kOrigSuffix.size());
    const std::string backup = in_dir(b);
    const std::string target = in_dir(TargetOf(orig));
    if (!fs::exists(target, ec)) {
      fs::remove(backup, ec);
      log.push_back(target + " is gone; dropped the kept original " + backup);
      continue;
    }
    auto now = AsConflist(target);
    auto was = AsConflist(backup);
    if (now && was && WithoutSluice(*now) == WithoutSluice(*was)) {
      // Still what the chaining wrote: the original back, byte for byte.
      if (::rename(backup.c_str(), in_dir(orig).c_str()) != 0)
        return FailErrno("restoring " + in_dir(orig) + " from " + backup, errno);
      if (target != in_dir(orig))
        fs::remove(target, ec);
      log.push_back("restored the original " + in_dir(orig));
    } else if (now) {
      // Changed since: take out only our entry.
      SLUICE_RETURN_IF_ERROR(AtomicWrite(target, Render(WithoutSluice(*now)), target));
      fs::remove(backup, ec);
      log.push_back(target + " changed since it was chained; removed only the sluice-cni entry");
    } else {
      return Wrap("removing sluice-cni from " + target, now.error());
    }
  }
  if (backups.empty()) {
    // No record of a chaining: still make sure no configuration chains sluice-cni.
    for (const auto& c : conflists) {
      auto list = AsConflist(in_dir(c));
      if (list && ChainsSluice(*list)) {
        SLUICE_RETURN_IF_ERROR(AtomicWrite(in_dir(c), Render(WithoutSluice(*list)), in_dir(c)));
        log.push_back("removed sluice-cni from " + in_dir(c));
      }
    }
  }
  for (const auto& t : temps)
    fs::remove(in_dir(t), ec);
  const std::string kubeconfig = in_dir(kCniKubeconfigName);
  if (fs::remove(kubeconfig, ec))
    log.push_back("removed " + kubeconfig);
  return log;
}

Result<std::string> WriteCniKubeconfig(const std::string& conf_dir, const KubeconfigSource& src) {
  std::string token;
  if (!src.token_file.empty()) {
    auto t = ReadFile(src.token_file);
    SLUICE_RETURN_IF_ERROR_CTX(t, "the kubeconfig for sluice-cni: the token");
    token = Trim(*t);
  }
  std::string ca_data;
  if (!src.ca_file.empty()) {
    auto ca = ReadFile(src.ca_file);
    SLUICE_RETURN_IF_ERROR_CTX(ca, "the kubeconfig for sluice-cni: the CA");
    ca_data = Base64(*ca);
  }
  // JSON is YAML: every kubeconfig reader takes it.
  nlohmann::ordered_json cluster = {{"server", src.server}};
  if (!ca_data.empty())
    cluster["certificate-authority-data"] = ca_data;
  nlohmann::ordered_json user = nlohmann::ordered_json::object();
  if (!token.empty())
    user["token"] = token;
  nlohmann::ordered_json kc = {
      {"apiVersion", "v1"},
      {"kind", "Config"},
      {"clusters", {{{"name", "local"}, {"cluster", cluster}}}},
      {"users", {{{"name", "sluice-cni"}, {"user", user}}}},
      {"contexts",
       {{{"name", "sluice-cni"}, {"context", {{"cluster", "local"}, {"user", "sluice-cni"}}}}}},
      {"current-context", "sluice-cni"}};
  const std::string path = (fs::path(conf_dir) / kCniKubeconfigName).string();
  SLUICE_RETURN_IF_ERROR(AtomicWrite(path, kc.dump(2) + "\n", "", 0600));
  return path;
}

// ---- CniConfKeeper ----

Result<std::unique_ptr<CniConfKeeper>> CniConfKeeper::Start(CniConfOptions opts,
                                                            std::function<bool()> ready) {
  if (!opts.kube.server.empty() && opts.entry.kubeconfig.empty())
    opts.entry.kubeconfig = (fs::path(opts.conf_dir) / kCniKubeconfigName).string();
  std::unique_ptr<CniConfKeeper> k(new CniConfKeeper(std::move(opts), std::move(ready)));
  k->inotify_fd_ = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (k->inotify_fd_ < 0)
    return FailErrno("inotify_init1 (watching the CNI conf dir)", errno);
  k->wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (k->wake_fd_ < 0)
    return FailErrno("eventfd", errno);
  k->status_.enabled = true;
  k->thread_ = std::thread([p = k.get()] { p->Run(); });
  return k;
}

CniConfKeeper::CniConfKeeper(CniConfOptions opts, std::function<bool()> ready)
    : opts_(std::move(opts)), ready_(std::move(ready)) {}

CniConfKeeper::~CniConfKeeper() {
  Stop();
  if (inotify_fd_ >= 0)
    ::close(inotify_fd_);
  if (wake_fd_ >= 0)
    ::close(wake_fd_);
}

void CniConfKeeper::Stop() {
  if (stop_.exchange(true))
    return;
  uint64_t one = 1;
  (void)!::write(wake_fd_, &one, sizeof(one));
  if (thread_.joinable())
    thread_.join();
}

CniConfStatus CniConfKeeper::Status() const {
  std::lock_guard lock(mu_);
  return status_;
}

std::string CniConfKeeper::StatusText() const {
  auto s = Status();
  std::ostringstream o;
  o << "conf dir: " << opts_.conf_dir << "\n"
    << "primary: " << (opts_.conflist.empty() ? "(the first by name)" : opts_.conflist) << "\n"
    << "ready: " << (s.ready ? "yes" : "no (nothing is written before the agent is ready)") << "\n"
    << "chained: " << (s.chained ? "yes, in " + s.target : "no") << "\n"
    << "passes: " << s.passes << ", conflist writes: " << s.writes
    << ", kubeconfig writes: " << s.kubeconfig_writes << "\n"
    << "last action: " << s.last_action << "\n"
    << "last error: " << (s.last_error.empty() ? "none" : s.last_error) << "\n";
  return o.str();
}

void CniConfKeeper::KubeconfigPass(bool force) {
  if (opts_.kube.server.empty())
    return;
  struct stat st {};
  long long mtime = -1, size = -1;
  unsigned long long ino = 0;
  if (!opts_.kube.token_file.empty() && ::stat(opts_.kube.token_file.c_str(), &st) == 0) {
    mtime = static_cast<long long>(st.st_mtim.tv_sec) * 1000000000LL + st.st_mtim.tv_nsec;
    size = st.st_size;
    ino = st.st_ino;
  }
  std::error_code ec;
  const bool missing = !fs::exists(fs::path(opts_.conf_dir) / kCniKubeconfigName, ec);
  if (!force && !missing && mtime == token_mtime_ && size == token_size_ && ino == token_ino_)
    return;
  auto r = WriteCniKubeconfig(opts_.conf_dir, opts_.kube);
  std::lock_guard lock(mu_);
  if (!r) {
    status_.last_error = r.error().message;
    spdlog::warn("cni conf: {}", r.error().message);
    return;
  }
  token_mtime_ = mtime;
  token_size_ = size;
  token_ino_ = ino;
  status_.kubeconfig_writes++;
  spdlog::info("cni conf: wrote {} for sluice-cni ({})", *r,
               status_.kubeconfig_writes == 1 ? "first" : "the token or the file changed");
}

void CniConfKeeper::Pass() {
  KubeconfigPass(false);
  auto r = ChainOnce(opts_);
  std::lock_guard lock(mu_);
  status_.passes++;
  if (!r) {
    if (status_.last_error != r.error().message)
      spdlog::warn("cni conf: {}", r.error().message);
    status_.last_error = r.error().message;
    status_.chained = false;
    return;
  }
  status_.last_error.clear();
  status_.chained = r->kind != ChainOutcome::Kind::kNoPrimary;
  status_.target = r->target;
  if (r->kind == ChainOutcome::Kind::kWritten) {
    status_.writes++;
    spdlog::info("cni conf: {}", r->message);
  } else if (r->message != status_.last_action) {
    spdlog::info("cni conf: {}", r->message);
  }
  status_.last_action = r->message;
}

void CniConfKeeper::Run() {
  using Clock = std::chrono::steady_clock;
  bool ready = false;
  bool dirty = true;
  Clock::time_point due = Clock::now();
  Clock::time_point next_resync = Clock::now() + opts_.resync;
  char buf[4096] __attribute__((aligned(alignof(struct inotify_event))));
  while (!stop_.load()) {
    if (watch_ < 0) {
      watch_ = ::inotify_add_watch(inotify_fd_, opts_.conf_dir.c_str(),
                                   IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE |
                                       IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF);
      if (watch_ < 0) {
        std::lock_guard lock(mu_);
        std::string err = "watching " + opts_.conf_dir + ": " + std::strerror(errno);
        if (status_.last_error != err)
          spdlog::warn("cni conf: {} (retrying every second)", err);
        status_.last_error = err;
      } else {
        dirty = true;  // whatever happened while unwatched
      }
    }
    if (!ready && (!ready_ || ready_())) {
      ready = true;
      std::lock_guard lock(mu_);
      status_.ready = true;
      spdlog::info("cni conf: the agent is ready; chaining sluice-cni into {}", opts_.conf_dir);
    }
    const auto now = Clock::now();
    if (now >= next_resync) {
      dirty = true;
      next_resync = now + opts_.resync;
    }
    if (ready && watch_ >= 0 && dirty && now >= due) {
      dirty = false;
      Pass();
    }
    // Sleep until an event, the settle deadline, the next readiness check or resync.
    auto wait = std::chrono::milliseconds(1000);
    if (!ready)
      wait = std::chrono::milliseconds(200);
    if (dirty)
      wait = std::min(wait, std::chrono::duration_cast<std::chrono::milliseconds>(
                                std::max(due - now, Clock::duration::zero())));
    if (!opts_.kube.server.empty() && ready)
      wait = std::min(wait, std::chrono::milliseconds(1000));  // token rotation
    pollfd fds[2] = {{inotify_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    int n = ::poll(fds, 2, static_cast<int>(wait.count()));
    if (n < 0 && errno != EINTR)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (n > 0 && (fds[0].revents & POLLIN)) {
      ssize_t len;
      while ((len = ::read(inotify_fd_, buf, sizeof(buf))) > 0) {
        for (char* p = buf; p < buf + len;) {
          auto* ev = reinterpret_cast<inotify_event*>(p);
          p += sizeof(inotify_event) + ev->len;
          if (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED)) {
            if (watch_ >= 0)
              ::inotify_rm_watch(inotify_fd_, watch_);
            watch_ = -1;  // re-added on the next round
            continue;
          }
          const std::string_view name = ev->len > 0 ? std::string_view(ev->name) : "";
          // Hidden files (kept originals, temp files) and the kubeconfig are ours and not
          // read by libcni.
          if (name.empty() || !IsCandidate(name))
            continue;
          if (!dirty)
            spdlog::debug("cni conf: {} changed in {}", name, opts_.conf_dir);
          dirty = true;
          due = Clock::now() + opts_.settle;
        }
      }
    }
    if (n > 0 && (fds[1].revents & POLLIN)) {
      uint64_t v;
      (void)!::read(wake_fd_, &v, sizeof(v));
    }
    if (ready && !stop_.load())
      KubeconfigPass(false);
  }
}

}  // namespace sluice::agent
