#include "proc_scan.h"

#include <dirent.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <sys/stat.h>

#include <cctype>
#include <filesystem>
#include <fstream>
#include <set>

#include <spdlog/spdlog.h>

#include "node_agent.h"
#include "sluice/netns/netns.h"

namespace sluice::agent {

namespace {

bool IsUid(std::string_view s) {
  // 8-4-4-4-12 hex digits
  if (s.size() != 36)
    return false;
  for (size_t i = 0; i < s.size(); ++i) {
    const bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash ? s[i] != '-' : !std::isxdigit(static_cast<unsigned char>(s[i])))
      return false;
  }
  return true;
}

}  // namespace

std::optional<std::string> PodUidFromCgroupLine(std::string_view line) {
  // Every path component "…pod<UID>" or "…pod<UID>.slice"; the last one wins (nested
  // runtimes put a pod's cgroup inside another's).
  std::optional<std::string> found;
  size_t start = 0;
  while (start <= line.size()) {
    size_t slash = line.find('/', start);
    std::string_view part =
        line.substr(start, slash == std::string_view::npos ? line.npos : slash - start);
    if (part.ends_with(".slice"))
      part.remove_suffix(6);
    for (size_t at = part.find("pod"); at != std::string_view::npos;
         at = part.find("pod", at + 1)) {
      std::string uid(part.substr(at + 3));
      for (char& c : uid) {
        if (c == '_')
          c = '-';
      }
      if (IsUid(uid))
        found = uid;
    }
    if (slash == std::string_view::npos)
      break;
    start = slash + 1;
  }
  return found;
}

Result<std::map<std::string, FoundPod>> ScanPods(const std::string& proc_root,
                                                 const std::string& netns_dir) {
  namespace fs = std::filesystem;
  // The runtime's names of namespaces, by (device, inode).
  std::map<std::pair<dev_t, ino_t>, std::string> named;
  std::error_code ec;
  for (fs::directory_iterator it(netns_dir, ec), end; !ec && it != end; it.increment(ec)) {
    struct stat st {};
    if (stat(it->path().c_str(), &st) == 0)
      named[{st.st_dev, st.st_ino}] = it->path().string();
  }
  DIR* d = opendir(proc_root.c_str());
  if (!d)
    return FailErrno("reading " + proc_root, errno);
  std::map<std::string, FoundPod> out;
  while (dirent* e = readdir(d)) {
    char* end = nullptr;
    long pid = std::strtol(e->d_name, &end, 10);
    if (pid <= 0 || *end != '\0')
      continue;
    const std::string dir = proc_root + "/" + e->d_name;
    std::ifstream in(dir + "/cgroup");
    std::string line;
    std::optional<std::string> uid;
    while (std::getline(in, line)) {
      if (line.rfind("0::", 0) == 0)  // the cgroup v2 line
        uid = PodUidFromCgroupLine(line.substr(3));
    }
    if (!uid || out.contains(*uid))
      continue;
    const std::string ns = dir + "/ns/net";
    struct stat st {};
    if (stat(ns.c_str(), &st) != 0)
      continue;  // exited, or not ours to see
    FoundPod p{.pid = static_cast<pid_t>(pid), .netns = ns};
    if (auto it = named.find({st.st_dev, st.st_ino}); it != named.end())
      p.netns = it->second;
    out.emplace(*uid, std::move(p));
  }
  closedir(d);
  return out;
}

Result<bool> NetnsHasAddress(const std::string& netns_path, const std::string& ip) {
  auto ns = netns::Netns::Open(netns_path);
  SLUICE_RETURN_IF_ERROR(ns);
  bool found = false;
  int err = 0;
  SLUICE_RETURN_IF_ERROR(ns->Run([&] {
    ifaddrs* list = nullptr;
    if (getifaddrs(&list) != 0) {
      err = errno;
      return;
    }
    for (ifaddrs* a = list; a && !found; a = a->ifa_next) {
      if (!a->ifa_addr || (a->ifa_addr->sa_family != AF_INET && a->ifa_addr->sa_family != AF_INET6))
        continue;
      char host[NI_MAXHOST];
      const socklen_t len =
          a->ifa_addr->sa_family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6);
      if (getnameinfo(a->ifa_addr, len, host, sizeof host, nullptr, 0, NI_NUMERICHOST) != 0)
        continue;
      std::string h(host);
      if (auto pct = h.find('%'); pct != std::string::npos)
        h.resize(pct);  // fe80::1%eth0
      found = h == ip;
    }
    freeifaddrs(list);
  }));
  if (err != 0)
    return FailErrno("listing the addresses of " + netns_path, err);
  return found;
}

size_t AddRunningPods(NodeAgent& node, const LabelSnapshot& labels, const std::string& proc_root,
                      const std::string& netns_dir) {
  std::set<enrolment::PodKey> known;
  for (const auto& p : node.Pods())
    known.insert(p.key);
  std::vector<std::pair<enrolment::PodKey, const PodLabels*>> missing;
  for (const auto& [key, pod] : labels.pods) {
    if (!known.contains(key) && !pod.uid.empty() && !pod.ips.empty() && !pod.host_network)
      missing.emplace_back(key, &pod);
  }
  if (missing.empty())
    return 0;
  auto found = ScanPods(proc_root, netns_dir);
  if (!found) {
    spdlog::warn("looking for pods that ran before the agent: {}", found.error().message);
    return 0;
  }
  size_t added = 0;
  for (const auto& [key, pod] : missing) {
    auto it = found->find(pod->uid);
    if (it == found->end())
      continue;
    const std::string& ip = pod->ips.front();
    auto has = NetnsHasAddress(it->second.netns, ip);
    if (!has || !*has) {
      spdlog::warn(
          "pod {}/{} (uid {}): process {} is not in a namespace with the pod's IP {}; "
          "not taken",
          key.pod_namespace, key.name, pod->uid, it->second.pid, ip);
      continue;
    }
    cni::PodInfo info;
    info.name = key.name;
    info.pod_namespace = key.pod_namespace;
    info.uid = pod->uid;
    info.netns = it->second.netns;
    info.container_id = "proc-scan-" + pod->uid;
    info.ifname = "eth0";
    for (const auto& a : pod->ips)
      info.ips.push_back(a + (a.find(':') == std::string::npos ? "/32" : "/128"));
    auto r = node.OnAdd(info);
    if (!r) {
      spdlog::warn("pod {}/{} that ran before the agent: {}", key.pod_namespace, key.name,
                   r.error().message);
      continue;
    }
    spdlog::info("pod {}/{} ran before the agent: found by its cgroup (pid {}, {}), {}",
                 key.pod_namespace, key.name, it->second.pid, it->second.netns,
                 r->enrolled ? "enrolled" : "not enrolled");
    ++added;
  }
  return added;
}

}  // namespace sluice::agent
