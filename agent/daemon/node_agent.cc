#include "node_agent.h"

#include <spdlog/spdlog.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "sluice/netns/netns.h"

#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <sys/socket.h>
#include <unistd.h>

namespace sluice::agent {

namespace {

// "10.1.0.5/24" -> 10.1.0.5
std::optional<IpAddress> HostPart(const std::string& cidr) {
  auto ip = IpAddress::Parse(cidr.substr(0, cidr.find('/')));
  return ip ? std::optional<IpAddress>(*ip) : std::nullopt;
}

Result<uint64_t> CookieOf(const std::string& netns_path) {
  auto ns = netns::Netns::Open(netns_path);
  SLUICE_RETURN_IF_ERROR(ns);
  return ns->Cookie();
}

}  // namespace

// The host side of the pod's interface. Inside the pod's namespace, RTM_GETLINK on its
// interface gives IFLA_LINK, the veth peer's index in the peer's namespace; the peer is
// only trusted if, here, it exists and its own iflink points back at the pod's
// interface (an index alone could name anything).
int NodeAgent::HostIfindex(const cni::PodInfo& pod) const {
  const std::string ifname = pod.ifname.empty() ? "eth0" : pod.ifname;
  auto ns = netns::Netns::Open(pod.netns);
  if (!ns)
    return 0;
  int self = 0, peer = 0;
  (void)ns->Run([&] {
    self = static_cast<int>(if_nametoindex(ifname.c_str()));
    if (self == 0)
      return;
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0)
      return;
    struct {
      nlmsghdr nh;
      ifinfomsg ifi;
    } req{};
    req.nh.nlmsg_len = sizeof(req);
    req.nh.nlmsg_type = RTM_GETLINK;
    req.nh.nlmsg_flags = NLM_F_REQUEST;
    req.ifi.ifi_family = AF_UNSPEC;
    req.ifi.ifi_index = self;
    char buf[8192];
    if (send(fd, &req, sizeof(req), 0) == static_cast<ssize_t>(sizeof(req))) {
      ssize_t n = recv(fd, buf, sizeof(buf), 0);
      auto* nh = reinterpret_cast<nlmsghdr*>(buf);
      if (n > 0 && NLMSG_OK(nh, static_cast<unsigned>(n)) && nh->nlmsg_type == RTM_NEWLINK) {
        auto* ifi = static_cast<ifinfomsg*>(NLMSG_DATA(nh));
        int len = static_cast<int>(IFLA_PAYLOAD(nh));
        for (auto* a = IFLA_RTA(ifi); RTA_OK(a, len); a = RTA_NEXT(a, len))
          if (a->rta_type == IFLA_LINK)
            peer = *static_cast<int*>(RTA_DATA(a));
      }
    }
    close(fd);
  });
  if (peer <= 0)
    return 0;
  char name[IF_NAMESIZE];
  if (!if_indextoname(static_cast<unsigned>(peer), name))
    return 0;
  std::ifstream iflink(std::string("/sys/class/net/") + name + "/iflink");
  int back = 0;
  iflink >> back;
  return back == self ? peer : 0;
}

void NodeAgent::AttachTc(Record& r) {
  if (r.host_ifindex == 0)
    return;
  if (auto a = dp_.AttachPod(r.host_ifindex, registry_only_); !a) {
    spdlog::warn("pod {}/{}: tc on host interface {}: {}", r.info.pod_namespace, r.info.name,
                 r.host_ifindex, a.error().message);
    r.host_ifindex = 0;
  }
}

enrolment::Pod NodeAgent::PodFor(const cni::PodInfo& info) const {
  enrolment::Pod p;
  p.key = {info.pod_namespace, info.name};
  p.uid = info.uid;
  if (auto it = labels_.pods.find(p.key); it != labels_.pods.end()) {
    p.labels = it->second.labels;
    p.host_network = it->second.host_network;
    p.annotations = it->second.annotations;
  }
  return p;
}

EnrolmentInfo NodeAgent::InfoFor(const Record& r) const {
  EnrolmentInfo e;
  for (const auto& cidr : r.info.ips) {
    if (auto ip = HostPart(cidr)) {
      if (ip->is_v4())
        e.ip4 = *ip;
      else
        e.ip6 = *ip;
    }
  }
  e.proxy_port = opts_.proxy_port;
  e.registry_only = registry_only_;
  return e;
}

Result<void> NodeAgent::Apply(const enrolment::Changes& changes) {
  // `changes` may merge several steps (a namespace label, then a pod's own labels) that
  // decided one pod both ways; the state's final decision is what the kernel gets, once.
  Result<void> result;
  std::set<enrolment::PodKey> done;
  for (const auto& p : changes.unenrol) {
    auto it = pods_.find(p.key);
    if (it == pods_.end() || state_.IsEnrolled(p.key) || !done.insert(p.key).second)
      continue;
    if (auto r = dp_.Unenrol(it->second.cookie); !r) {
      result = std::unexpected(r.error());
      continue;
    }
    if (l7_)
      l7_->Close(p.key);  // after the kernel stopped redirecting to it
    spdlog::info("unenrolled pod {}/{}", p.key.pod_namespace, p.key.name);
  }
  for (const auto& p : changes.enrol) {
    auto it = pods_.find(p.key);
    if (it == pods_.end())
      continue;  // labelled, but not (yet) on this node
    if (!state_.IsEnrolled(p.key) || !done.insert(p.key).second)
      continue;  // decided otherwise by a later step, or already done
    // The capture listener first: once enrolled, the kernel redirects L7 services to it.
    if (l7_ && opts_.proxy_port != 0) {
      if (auto r = l7_->Open(p.key, it->second.info.netns, p.labels, it->second.info.ips); !r) {
        result = Wrap("enrolling pod " + p.key.pod_namespace + "/" + p.key.name, r.error());
        continue;
      }
    }
    if (auto r = dp_.Enrol(it->second.cookie, InfoFor(it->second)); !r) {
      result = Wrap("enrolling pod " + p.key.pod_namespace + "/" + p.key.name, r.error());
      continue;
    }
    spdlog::info("enrolled pod {}/{} (netns cookie {})", p.key.pod_namespace, p.key.name,
                 it->second.cookie);
  }
  return result;
}

void NodeAgent::SetPodLookup(PodLookup lookup) {
  std::lock_guard lock(mu_);
  lookup_ = std::move(lookup);
}

enrolment::Changes NodeAgent::Upsert(const cni::PodInfo& info) {
  if (Excluded(info.pod_namespace))
    return state_.RemovePod({info.pod_namespace, info.name});
  return state_.UpsertPod(PodFor(info));
}

Result<cni::AddReply> NodeAgent::OnAdd(const cni::PodInfo& pod) {
  auto cookie = CookieOf(pod.netns);
  if (!cookie)
    return Wrap("pod " + pod.pod_namespace + "/" + pod.name + ": network namespace " + pod.netns,
                cookie.error());
  const int host_if = HostIfindex(pod);
  const enrolment::PodKey key{pod.pod_namespace, pod.name};
  // A pod the label source has not shown yet: read it directly before deciding.
  PodLookup lookup;
  bool need_ns = false;
  {
    std::lock_guard lock(mu_);
    if (lookup_ && !Excluded(pod.pod_namespace) && !labels_.pods.contains(key)) {
      lookup = lookup_;
      need_ns = !labels_.namespaces.contains(pod.pod_namespace);
    }
  }
  std::optional<LookedUpPod> found;
  if (lookup) {
    auto r = lookup(pod.pod_namespace, pod.name, need_ns);
    if (!r)
      spdlog::warn("pod {}/{}: looking it up: {} (deciding on the labels known)", pod.pod_namespace,
                   pod.name, r.error().message);
    else
      found = std::move(*r);
  }
  std::lock_guard lock(mu_);
  enrolment::Changes ns_changes;
  if (found) {
    const auto now = std::chrono::steady_clock::now();
    if (found->pod && !labels_.pods.contains(key)) {
      fetched_pods_[key] = {*found->pod, now};
      labels_.pods[key] = *found->pod;
    }
    if (found->ns_labels && !labels_.namespaces.contains(pod.pod_namespace)) {
      fetched_namespaces_[pod.pod_namespace] = {*found->ns_labels, now};
      labels_.namespaces[pod.pod_namespace] = *found->ns_labels;
      ns_changes = state_.SetNamespace(pod.pod_namespace, *found->ns_labels);
    }
    spdlog::info("pod {}/{}: not in the label cache yet; read from the API ({})", pod.pod_namespace,
                 pod.name, found->pod ? "found" : "no such pod");
  }
  auto& rec = pods_[key] = Record{pod, *cookie, host_if};
  AttachTc(rec);
  auto changes = Upsert(pod);
  changes.enrol.insert(changes.enrol.end(), ns_changes.enrol.begin(), ns_changes.enrol.end());
  changes.unenrol.insert(changes.unenrol.end(), ns_changes.unenrol.begin(),
                         ns_changes.unenrol.end());
  auto applied = Apply(changes);
  Save();
  SLUICE_RETURN_IF_ERROR(applied);
  if (Excluded(pod.pod_namespace))
    return cni::AddReply{false, "excluded-namespace"};
  const auto decision = state_.DecisionFor(key);
  return cni::AddReply{decision.enrolled, std::string(enrolment::ReasonName(decision.reason))};
}

Result<void> NodeAgent::OnDel(const cni::PodInfo& pod) {
  std::lock_guard lock(mu_);
  const enrolment::PodKey key{pod.pod_namespace, pod.name};
  auto it = pods_.find(key);
  if (it == pods_.end())
    return {};  // unknown pod: DEL is idempotent
  if (state_.IsEnrolled(key))
    (void)dp_.Unenrol(it->second.cookie);
  if (l7_)
    l7_->Close(key);
  if (it->second.host_ifindex)
    (void)dp_.DetachPod(it->second.host_ifindex);
  state_.RemovePod(key);
  pods_.erase(it);
  Save();
  return {};
}

Result<cni::AddReply> NodeAgent::OnCheck(const cni::PodInfo& pod) {
  std::lock_guard lock(mu_);
  const enrolment::PodKey key{pod.pod_namespace, pod.name};
  auto it = pods_.find(key);
  if (it == pods_.end())
    return Fail("pod " + pod.pod_namespace + "/" + pod.name + " is not known to the agent");
  const bool want = state_.IsEnrolled(key);
  auto enrolled = dp_.Enrolled();
  SLUICE_RETURN_IF_ERROR(enrolled);
  if (want != enrolled->contains(it->second.cookie))
    return Fail("pod " + pod.pod_namespace + "/" + pod.name + ": enrolment map disagrees (" +
                (want ? "missing" : "present") + ")");
  return cni::AddReply{want, "consistent"};
}

void NodeAgent::ApplyLabels(const LabelSnapshot& labels) {
  std::lock_guard lock(mu_);
  labels_ = labels;
  // Labels read directly for a CNI ADD stand until the source shows the object (or for
  // half a minute: an object the source never shows is gone).
  const auto now = std::chrono::steady_clock::now();
  constexpr auto kKeepFetched = std::chrono::seconds(30);
  for (auto it = fetched_pods_.begin(); it != fetched_pods_.end();) {
    if (labels_.pods.contains(it->first) || !pods_.contains(it->first) ||
        now - it->second.second > kKeepFetched) {
      it = fetched_pods_.erase(it);
    } else {
      labels_.pods[it->first] = it->second.first;
      ++it;
    }
  }
  for (auto it = fetched_namespaces_.begin(); it != fetched_namespaces_.end();) {
    if (labels_.namespaces.contains(it->first) || now - it->second.second > kKeepFetched) {
      it = fetched_namespaces_.erase(it);
    } else {
      labels_.namespaces[it->first] = it->second.first;
      ++it;
    }
  }
  enrolment::Changes all;
  auto merge = [&](enrolment::Changes c) {
    all.enrol.insert(all.enrol.end(), c.enrol.begin(), c.enrol.end());
    all.unenrol.insert(all.unenrol.end(), c.unenrol.begin(), c.unenrol.end());
  };
  for (const auto& [ns, l] : labels_.namespaces)
    merge(state_.SetNamespace(ns, l));
  std::set<std::string> known_ns;
  for (const auto& [key, rec] : pods_)
    known_ns.insert(key.pod_namespace);
  for (const auto& ns : known_ns)
    if (!labels_.namespaces.contains(ns))
      merge(state_.RemoveNamespace(ns));
  for (const auto& [key, rec] : pods_)
    merge(Upsert(rec.info));
  if (auto r = Apply(all); !r)
    spdlog::error("applying label changes: {}", r.error().message);
  if (reconcile_pending_) {
    reconcile_pending_ = false;
    ReconcileKernel();
  }
  // Pods that stay enrolled may have new labels: their proxy follows its new view.
  if (l7_ && opts_.proxy_port != 0) {
    for (const auto& [key, rec] : pods_) {
      if (!state_.IsEnrolled(key))
        continue;
      if (auto r = l7_->Open(key, rec.info.netns, PodFor(rec.info).labels, rec.info.ips); !r)
        spdlog::error("{}", r.error().message);
    }
  }
}

void NodeAgent::SetRegistryOnly(bool registry_only) {
  std::lock_guard lock(mu_);
  if (registry_only == registry_only_)
    return;
  registry_only_ = registry_only;
  for (auto& [key, rec] : pods_) {
    if (state_.IsEnrolled(key))
      (void)dp_.Enrol(rec.cookie, InfoFor(rec));
    AttachTc(rec);  // non-TCP REGISTRY_ONLY is the tc program's
  }
}

void NodeAgent::Save() const {
  nlohmann::json j = nlohmann::json::array();
  for (const auto& [key, rec] : pods_)
    j.push_back({{"namespace", key.pod_namespace},
                 {"name", key.name},
                 {"uid", rec.info.uid},
                 {"netns", rec.info.netns},
                 {"ips", rec.info.ips},
                 {"cookie", rec.cookie},
                 {"host_ifindex", rec.host_ifindex}});
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(fs::path(opts_.state_file).parent_path(), ec);
  const std::string tmp = opts_.state_file + ".tmp";
  std::ofstream(tmp) << j.dump(1) << "\n";
  fs::rename(tmp, opts_.state_file, ec);
  if (ec)
    spdlog::error("writing {}: {}", opts_.state_file, ec.message());
}

Result<void> NodeAgent::Restore(bool until_labels) {
  std::lock_guard lock(mu_);
  std::ifstream in(opts_.state_file);
  if (in) {
    std::stringstream text;
    text << in.rdbuf();
    auto j = nlohmann::json::parse(text.str(), nullptr, false);
    if (j.is_discarded() || !j.is_array())
      return Fail(opts_.state_file + ": not a JSON array of pods");
    for (const auto& p : j) {
      cni::PodInfo info;
      info.pod_namespace = p.value("namespace", "");
      info.name = p.value("name", "");
      info.uid = p.value("uid", "");
      info.netns = p.value("netns", "");
      info.ips = p.value("ips", std::vector<std::string>{});
      const uint64_t cookie = p.value("cookie", uint64_t{0});
      // A namespace path can be reused by another pod: trust it only if its cookie is the
      // one recorded.
      auto now = CookieOf(info.netns);
      if (!now || *now != cookie) {
        spdlog::info("pod {}/{} is gone (its network namespace {} {})", info.pod_namespace,
                     info.name, info.netns, now ? "was reused" : "no longer exists");
        continue;
      }
      pods_[{info.pod_namespace, info.name}] = Record{info, cookie, p.value("host_ifindex", 0)};
      (void)Upsert(info);
    }
  }
  if (until_labels) {
    reconcile_pending_ = true;
    spdlog::info("restored {} pods from {}; the enrolment map is reconciled once labels arrive",
                 pods_.size(), opts_.state_file);
  } else {
    ReconcileKernel();
    spdlog::info("restored {} pods from {}", pods_.size(), opts_.state_file);
  }
  Save();
  return {};
}

void NodeAgent::ReconcileKernel() {
  // The kernel's enrolment map keeps only pods this agent knows and enrols.
  auto enrolled = dp_.Enrolled();
  if (!enrolled) {
    spdlog::error("reconciling the enrolment map: {}", enrolled.error().message);
    return;
  }
  std::set<uint64_t> want;
  for (const auto& [key, rec] : pods_)
    if (state_.IsEnrolled(key))
      want.insert(rec.cookie);
  for (const auto& [cookie, info] : *enrolled)
    if (!want.contains(cookie))
      (void)dp_.Unenrol(cookie);
  // Enrolled pods lost their capture listener with the previous agent: reopen them.
  for (const auto& [key, rec] : pods_) {
    if (!l7_ || opts_.proxy_port == 0 || !state_.IsEnrolled(key))
      continue;
    if (auto r = l7_->Open(key, rec.info.netns, PodFor(rec.info).labels, rec.info.ips); !r)
      spdlog::error("{}", r.error().message);
  }
}

std::string NodeAgent::PodByCookie(uint64_t cookie) const {
  std::lock_guard lock(mu_);
  for (const auto& [key, rec] : pods_) {
    if (rec.cookie != cookie)
      continue;
    std::string ip = rec.info.ips.empty() ? "" : rec.info.ips.front();
    ip = ip.substr(0, ip.find('/'));
    return key.pod_namespace + "/" + key.name + (ip.empty() ? "" : " (" + ip + ")");
  }
  return "";
}

std::vector<PodIdentity> NodeAgent::PodIdentities() const {
  std::lock_guard lock(mu_);
  std::vector<PodIdentity> out;
  for (const auto& [key, rec] : pods_) {
    PodIdentity p{key, {}, rec.info.ips, rec.cookie};
    if (auto it = labels_.pods.find(key); it != labels_.pods.end())
      p.labels = it->second.labels;
    out.push_back(std::move(p));
  }
  return out;
}

std::vector<PodStatus> NodeAgent::Pods() const {
  std::lock_guard lock(mu_);
  std::vector<PodStatus> out;
  for (const auto& [key, rec] : pods_) {
    auto d = state_.DecisionFor(key);
    out.push_back({key, rec.info.uid, rec.info.netns, rec.info.ips, rec.cookie, rec.host_ifindex,
                   d.enrolled,
                   Excluded(key.pod_namespace) ? std::string("excluded-namespace")
                                               : std::string(enrolment::ReasonName(d.reason))});
  }
  return out;
}

}  // namespace sluice::agent
