// Pods made the way a container runtime makes them: a named network namespace, then the
// .conflist bridge (+ host-local IPAM) -> sluice-cni, run by CniChain with the CNI
// environment and stdin. The agent side is the real CniServer with a handler that does
// what the agent does with a pod: open its network namespace and listen inside it.
//
// Needs root. Every kernel object is named "sluicet..." and removed even on failure.
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <thread>

#include "cni_server.h"
#include "sluice/local/cni_chain.h"
#include "sluice/netns/netns.h"
#include "test_support.h"

using namespace sluice;
using namespace sluice::cni;
using namespace sluice::local;  // CniChain
using namespace sluice::netns;
using namespace sluice::cni::testing;
using ojson = nlohmann::ordered_json;

namespace {

constexpr const char* kBridge = "sluicet-cnibr0";
constexpr const char* kSubnet = "10.199.77.0/24";

void RunOrFail(const std::vector<std::string>& argv) {
  auto r = RunProcess(argv, {"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, "", std::chrono::seconds(10));
  REQUIRE(r);
  INFO(argv[0] << " " << argv[1] << ": " << r->err);
  REQUIRE(r->exit_status == 0);
}

void RunQuietly(const std::vector<std::string>& argv) {
  (void)RunProcess(argv, {"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, "", std::chrono::seconds(10));
}

bool LinkExists(const std::string& name) {
  return std::filesystem::exists("/sys/class/net/" + name);
}

// A named network namespace as `ip netns add` (and container runtimes) make it: a bind
// mount under /var/run/netns. Deleting it also removes the veth end inside it, which
// takes the host end with it.
class NamedNetns {
 public:
  explicit NamedNetns(std::string name) : name_(std::move(name)) {
    RunQuietly({"/usr/sbin/ip", "netns", "del", name_});  // a leftover from a crash
    RunOrFail({"/usr/sbin/ip", "netns", "add", name_});
  }
  ~NamedNetns() { Delete(); }
  void Delete() {
    if (!deleted_)
      RunQuietly({"/usr/sbin/ip", "netns", "del", name_});
    deleted_ = true;
  }
  std::string path() const { return "/var/run/netns/" + name_; }

 private:
  std::string name_;
  bool deleted_ = false;
};

struct LinkGuard {
  std::string name;
  ~LinkGuard() {
    if (LinkExists(name))
      RunQuietly({"/usr/sbin/ip", "link", "del", name});
  }
};

// Runs fn on a thread that has joined the network namespace at `path`; the caller's
// thread never changes namespace.
Result<void> InNetns(const std::string& path, const std::function<void()>& fn) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return FailErrno("open " + path, errno);
  Result<void> result;
  std::thread t([&] {
    if (::setns(fd, CLONE_NEWNET) != 0) {
      result = FailErrno("setns " + path, errno);
      return;
    }
    fn();
  });
  t.join();
  ::close(fd);
  return result;
}

ino_t InodeOf(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? st.st_ino : 0;
}

// The network namespace a socket lives in (SIOCGSKNS, Linux 4.9+).
ino_t SocketNetnsInode(int sock) {
  int ns = ::ioctl(sock, SIOCGSKNS);
  if (ns < 0)
    return 0;
  struct stat st {};
  ino_t ino = ::fstat(ns, &st) == 0 ? st.st_ino : 0;
  ::close(ns);
  return ino;
}

// What the agent does for an enrolled pod, in miniature: open the pod's network
// namespace, read its cookie (the enrolment map's key) and listen inside it on loopback
// and on the pod's own address.
class InPodListenerHandler : public CniHandler {
 public:
  struct Pod {
    PodInfo info;
    std::uint64_t netns_cookie = 0;
    std::shared_ptr<UniqueFd> loopback_listener, pod_ip_listener;
    std::uint16_t loopback_port = 0;
  };

  Result<AddReply> OnAdd(const PodInfo& info) override {
    adds.push_back(info);
    if (info.ips.empty())
      return Fail("pod " + info.container_id + ": no IP in prevResult");
    auto netns = Netns::Open(info.netns);
    if (!netns)
      return std::unexpected(netns.error());
    auto cookie = netns->Cookie();
    if (!cookie)
      return std::unexpected(cookie.error());
    auto lo = netns->ListenTcp("127.0.0.1", 0);
    if (!lo)
      return std::unexpected(lo.error());
    auto own = netns->ListenTcp(info.ips[0].substr(0, info.ips[0].find('/')), 0);
    if (!own)
      return std::unexpected(own.error());
    Pod pod{info, *cookie, std::make_shared<UniqueFd>(std::move(*lo)),
            std::make_shared<UniqueFd>(std::move(*own)), 0};
    pod.loopback_port = LocalPort(pod.loopback_listener->get()).value_or(0);
    pods[info.container_id] = pod;
    return AddReply{true, "listening on 127.0.0.1:" + std::to_string(pod.loopback_port)};
  }

  Result<void> OnDel(const PodInfo& info) override {
    dels.push_back(info);
    pods.erase(info.container_id);  // closes the listeners
    return {};                      // unknown pods and vanished namespaces are fine
  }

  Result<AddReply> OnCheck(const PodInfo& info) override {
    checks.push_back(info);
    if (!pods.contains(info.container_id))
      return Fail("pod " + info.container_id + " is not set up");
    return AddReply{true, ""};
  }

  std::vector<PodInfo> adds, dels, checks;
  std::map<std::string, Pod> pods;
};

ojson Conflist(const TempDir& tmp, const std::string& socket, bool fail_open = false) {
  ojson bridge = {{"type", "bridge"},
                  {"bridge", kBridge},
                  {"isGateway", false},
                  {"ipMasq", false},
                  {"ipam",
                   {{"type", "host-local"},
                    {"ranges", ojson::array({ojson::array({{{"subnet", kSubnet}}})})},
                    {"dataDir", tmp / "ipam"}}}};
  ojson sluice = {{"type", "sluice-cni"}, {"agentSocket", socket}, {"agentTimeoutMs", 3000}};
  if (fail_open)
    sluice["failOpen"] = true;
  return {{"cniVersion", "1.0.0"},
          {"name", "sluicet-net"},
          {"plugins", ojson::array({bridge, sluice})}};
}

CniChain MakeChain(const ojson& conflist) {
  auto chain = CniChain::FromJson(conflist);
  REQUIRE(chain);
  chain->set_plugin_dirs(
      {std::filesystem::path(SLUICE_CNI_BINARY).parent_path().string(), "/usr/lib/cni"});
  chain->set_timeout(std::chrono::seconds(10));
  return std::move(*chain);
}

// containerd runs the loopback plugin in its own network before the pod's network.
void BringUpLoopback(const std::string& netns) {
  ojson conflist = {{"cniVersion", "1.0.0"},
                    {"name", "cni-loopback"},
                    {"plugins", ojson::array({{{"type", "loopback"}}})}};
  CniChain lo = MakeChain(conflist);
  RuntimeConf rt;
  rt.container_id = "sluicet-lo";
  rt.netns = netns;
  rt.ifname = "lo";
  PluginError perr;
  auto r = lo.Add(rt, &perr);
  INFO(perr.Describe());
  REQUIRE(r);
}

RuntimeConf Runtime(const std::string& id, const std::string& netns, const std::string& pod) {
  RuntimeConf rt;
  rt.container_id = id;
  rt.netns = netns;
  rt.ifname = "eth0";
  rt.args = {{"K8S_POD_NAMESPACE", "shop"}, {"K8S_POD_NAME", pod}, {"K8S_POD_UID", "uid-" + pod}};
  return rt;
}

// The host-side veth the bridge plugin reports (the interface without a sandbox).
std::string HostVeth(const ojson& result) {
  for (const auto& i : result["interfaces"]) {
    std::string name = i.value("name", "");
    if (!i.contains("sandbox") && name != kBridge)
      return name;
  }
  return "";
}

bool ConnectsTo(const std::string& netns, std::uint16_t port) {
  bool ok = false;
  auto r = InNetns(netns, [&] {
    int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ok = ::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    ::close(s);
  });
  return r && ok;
}

}  // namespace

TEST_CASE("bridge + host-local + sluice-cni: ADD hands the pod to the agent, DEL undoes all") {
  TempDir tmp;
  LinkGuard bridge_guard{kBridge};
  InPodListenerHandler handler;
  auto server = CniServer::Start({.socket_path = tmp / "run/cni.sock"}, handler);
  REQUIRE(server);
  CniChain chain = MakeChain(Conflist(tmp, (*server)->socket_path()));
  NamedNetns ns("sluicet-cni-p1");
  BringUpLoopback(ns.path());
  const RuntimeConf rt = Runtime("sluicet-c1", ns.path(), "cart-1");

  PluginError perr;
  auto result = chain.Add(rt, &perr);
  INFO(perr.Describe());
  REQUIRE(result);

  // The chain's result is bridge's, passed through sluice-cni unchanged.
  REQUIRE(result->contains("ips"));
  REQUIRE((*result)["ips"].size() == 1);
  const std::string address = (*result)["ips"][0]["address"];
  CHECK_THAT(address, Catch::StartsWith("10.199.77."));
  const std::string veth = HostVeth(*result);
  REQUIRE_FALSE(veth.empty());
  CHECK(LinkExists(veth));
  CHECK(LinkExists(kBridge));

  // The agent got the pod as the runtime described it.
  REQUIRE(handler.adds.size() == 1);
  const PodInfo& pod = handler.adds[0];
  CHECK(pod.netns == ns.path());
  CHECK(pod.ips == std::vector<std::string>{address});
  CHECK(pod.name == "cart-1");
  CHECK(pod.pod_namespace == "shop");
  CHECK(pod.uid == "uid-cart-1");
  CHECK(pod.container_id == "sluicet-c1");
  CHECK(pod.ifname == "eth0");

  // Its listeners live inside the pod's namespace (bound to the pod's own address,
  // which exists only there) and answer from inside the pod.
  REQUIRE(handler.pods.count("sluicet-c1") == 1);
  const std::uint16_t port = handler.pods["sluicet-c1"].loopback_port;
  {
    const auto& state = handler.pods["sluicet-c1"];
    CHECK(SocketNetnsInode(state.loopback_listener->get()) == InodeOf(ns.path()));
    CHECK(SocketNetnsInode(state.pod_ip_listener->get()) == InodeOf(ns.path()));
    CHECK(SocketNetnsInode(state.loopback_listener->get()) != InodeOf("/proc/self/ns/net"));
    // The cookie is the pod's: a socket made in the pod reports the same one.
    auto pod_ns = Netns::Open(ns.path());
    REQUIRE(pod_ns);
    CHECK(state.netns_cookie == *pod_ns->Cookie());
    CHECK(state.netns_cookie != *Netns::Current()->Cookie());
  }
  CHECK(ConnectsTo(ns.path(), port));

  // CHECK runs through the chain with the cached result.
  auto check = chain.Check(rt, *result, &perr);
  INFO(perr.Describe());
  CHECK(check);
  CHECK(handler.checks.size() == 1);

  // DEL in reverse order: the agent lets go of the pod, bridge removes the veth,
  // host-local releases the address.
  const std::string lease = tmp / ("ipam/sluicet-net/" + address.substr(0, address.find('/')));
  CHECK(std::filesystem::exists(lease));
  REQUIRE(chain.Del(rt, &*result, &perr));
  CHECK(handler.dels.size() == 1);
  CHECK(handler.pods.empty());
  CHECK_FALSE(LinkExists(veth));
  CHECK_FALSE(std::filesystem::exists(lease));
  CHECK_FALSE(ConnectsTo(ns.path(), port));

  // DEL is idempotent.
  auto again = chain.Del(rt, &*result, &perr);
  INFO(perr.Describe());
  CHECK(again);
  CHECK(handler.dels.size() == 2);
}

TEST_CASE("two pods get distinct addresses, DEL after the namespace is gone succeeds") {
  TempDir tmp;
  LinkGuard bridge_guard{kBridge};
  InPodListenerHandler handler;
  auto server = CniServer::Start({.socket_path = tmp / "cni.sock"}, handler);
  REQUIRE(server);
  CniChain chain = MakeChain(Conflist(tmp, (*server)->socket_path()));
  NamedNetns a("sluicet-cni-a"), b("sluicet-cni-b");
  BringUpLoopback(a.path());
  BringUpLoopback(b.path());
  auto rta = Runtime("sluicet-ca", a.path(), "a");
  auto rtb = Runtime("sluicet-cb", b.path(), "b");
  auto ra = chain.Add(rta);
  auto rb = chain.Add(rtb);
  REQUIRE(ra);
  REQUIRE(rb);
  CHECK((*ra)["ips"][0]["address"] != (*rb)["ips"][0]["address"]);
  CHECK(handler.pods.size() == 2);

  // The runtime lost the sandbox: the namespace is gone, DEL comes without CNI_NETNS.
  b.Delete();
  rtb.netns.clear();
  PluginError perr;
  auto del = chain.Del(rtb, &*rb, &perr);
  INFO(perr.Describe());
  CHECK(del);
  CHECK(handler.pods.size() == 1);
  CHECK(handler.dels.back().netns.empty());
  REQUIRE(chain.Del(rta, &*ra));
}

TEST_CASE("agent down: the chain's ADD fails closed, or passes with failOpen") {
  TempDir tmp;
  LinkGuard bridge_guard{kBridge};
  NamedNetns ns("sluicet-cni-down");
  const RuntimeConf rt = Runtime("sluicet-cd", ns.path(), "down");

  SECTION("fail closed") {
    CniChain chain = MakeChain(Conflist(tmp, tmp / "absent.sock"));
    PluginError perr;
    auto r = chain.Add(rt, &perr);
    REQUIRE_FALSE(r);
    CHECK(perr.plugin == "sluice-cni");
    CHECK(perr.code == codes::kTryAgainLater);
    // A runtime cleans up after a failed ADD with DEL; that must succeed too.
    CHECK(chain.Del(rt, nullptr, &perr));
  }
  SECTION("fail open") {
    CniChain chain = MakeChain(Conflist(tmp, tmp / "absent.sock", /*fail_open=*/true));
    auto r = chain.Add(rt);
    REQUIRE(r);
    CHECK_THAT((*r)["ips"][0]["address"].get<std::string>(), Catch::StartsWith("10.199.77."));
    CHECK(chain.Del(rt, &*r));
  }
}

TEST_CASE("Netns: cookies tell namespaces apart, and an open handle outlives the name") {
  NamedNetns a("sluicet-ns-a"), b("sluicet-ns-b");
  auto na = Netns::Open(a.path());
  auto na2 = Netns::Open(a.path());
  auto nb = Netns::Open(b.path());
  auto host = Netns::Current();
  REQUIRE(na);
  REQUIRE(na2);
  REQUIRE(nb);
  REQUIRE(host);
  CHECK(na->SameAs(*na2));
  CHECK_FALSE(na->SameAs(*nb));
  CHECK(*na->Cookie() == *na2->Cookie());
  CHECK(*na->Cookie() != *nb->Cookie());
  CHECK(*na->Cookie() != *host->Cookie());

  // A listener lives in the pod: reachable from inside once loopback is up (a fresh
  // namespace has it down, which is why runtimes run the loopback plugin).
  auto l = na->ListenTcp("127.0.0.1", 0);
  REQUIRE(l);
  CHECK(SocketNetnsInode(l->get()) == na->inode());
  const std::uint16_t port = *LocalPort(l->get());
  CHECK_FALSE(ConnectsTo(a.path(), port));
  BringUpLoopback(a.path());
  CHECK(ConnectsTo(a.path(), port));
  BringUpLoopback(b.path());
  CHECK_FALSE(ConnectsTo(b.path(), port));  // not in the other pod

  // The runtime removes the name; the agent's handle keeps the namespace usable.
  const auto cookie = *na->Cookie();
  a.Delete();
  CHECK_FALSE(std::filesystem::exists(a.path()));
  CHECK(*na->Cookie() == cookie);
  CHECK(na->ListenTcp("127.0.0.1", 0));
}

TEST_CASE("install-cni.sh chains sluice-cni into a bridge conflist that then works") {
  TempDir tmp;
  LinkGuard bridge_guard{kBridge};
  InPodListenerHandler handler;
  auto server = CniServer::Start({.socket_path = tmp / "run/cni.sock"}, handler);
  REQUIRE(server);
  std::filesystem::create_directories(tmp / "net.d");
  // The node's primary network, as an admin or another CNI left it: bridge alone.
  ojson primary = Conflist(tmp, "unused");
  primary["plugins"].erase(1);
  REQUIRE(primary["plugins"].size() == 1);
  std::ofstream(tmp / "net.d/10-bridge.conflist") << primary.dump(2) << "\n";

  auto install = [&](std::vector<std::string> extra) {
    std::vector<std::string> argv = {"/bin/bash",   SLUICE_INSTALL_CNI, "--cni-conf-dir",
                                     tmp / "net.d", "--cni-bin-dir",    tmp / "bin"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto r = RunProcess(argv, {"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, "", std::chrono::seconds(10));
    REQUIRE(r);
    INFO(r->out << r->err);
    REQUIRE(r->exit_status == 0);
  };
  install({"--plugin-binary", SLUICE_CNI_BINARY, "--agent-socket", (*server)->socket_path()});

  // Load the installed list as the runtime would, with the installed binary.
  auto chain = CniChain::FromFile(tmp / "net.d/10-bridge.conflist");
  REQUIRE(chain);
  REQUIRE(chain->size() == 2);
  chain->set_plugin_dirs({tmp / "bin", "/usr/lib/cni"});
  NamedNetns ns("sluicet-cni-inst");
  BringUpLoopback(ns.path());
  const RuntimeConf rt = Runtime("sluicet-ci", ns.path(), "installed");
  PluginError perr;
  auto result = chain->Add(rt, &perr);
  INFO(perr.Describe());
  REQUIRE(result);
  REQUIRE(handler.adds.size() == 1);
  CHECK(handler.adds[0].netns == ns.path());
  CHECK(handler.adds[0].ips[0] == (*result)["ips"][0]["address"]);
  REQUIRE(chain->Del(rt, &*result, &perr));
  CHECK(handler.pods.empty());

  // After --uninstall the runtime's list no longer reaches the agent.
  install({"--uninstall", "--remove-binary"});
  auto plain = CniChain::FromFile(tmp / "net.d/10-bridge.conflist");
  REQUIRE(plain);
  CHECK(plain->size() == 1);
  plain->set_plugin_dirs({tmp / "bin", "/usr/lib/cni"});
  auto again = plain->Add(rt, &perr);
  INFO(perr.Describe());
  REQUIRE(again);
  CHECK(handler.adds.size() == 1);
  CHECK(plain->Del(rt, &*again));
}
