// The agent's lifecycle on a node, without root (issue 19): sluice-cni chained into a
// conf dir by the agent (ChainOnce, the inotify keeper, the kubeconfig for the plugin),
// interplay with deploy/cni/install-cni.sh, and the upgrade-or-uninstall rule.
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "cni_conf.h"
#include "shutdown.h"

using namespace sluice;
using namespace sluice::agent;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "sluicet-life-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr)
      throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

std::string Read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void Write(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

// A primary CNI's file as it ships: its own formatting and key order.
const char* kCalico = R"({
  "name": "k8s-pod-network",
  "cniVersion": "0.4.0",
  "plugins": [
    {"type": "calico", "ipam": {"type": "calico-ipam"}, "mtu": 1440 },
    {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}}
  ]
}
)";

const char* kBridgeConf =
    R"({"cniVersion":"1.0.0","name":"bridge-net","type":"bridge","bridge":"cni0",)"
    R"("ipam":{"type":"host-local","subnet":"10.88.0.0/16"}})";

std::vector<std::string> Types(const std::string& path) {
  std::vector<std::string> out;
  const json list = json::parse(Read(path));
  for (const auto& p : list["plugins"])
    out.push_back(p.value("type", ""));
  return out;
}

CniConfOptions Opts(const TempDir& t) {
  CniConfOptions o;
  o.conf_dir = t.path().string();
  o.entry.agent_socket = "/var/run/sluice/cni.sock";
  o.settle = std::chrono::milliseconds(50);
  return o;
}

template <class F>
bool Eventually(F pred, std::chrono::milliseconds limit = std::chrono::milliseconds(3000)) {
  auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (pred())
      return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return pred();
}

bool Chained(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec))
    return false;
  auto j = json::parse(Read(path), nullptr, false);
  return !j.is_discarded() && j.contains("plugins") && !j["plugins"].empty() &&
         j["plugins"].back().value("type", "") == "sluice-cni";
}

int Sh(const std::string& cmd) {
  return std::system(cmd.c_str());
}

}  // namespace

TEST_CASE("cni conf: a conflist is chained with sluice-cni last and its original kept") {
  TempDir t;
  Write(t / "10-calico.conflist", kCalico);
  ::chmod((t / "10-calico.conflist").c_str(), 0600);
  auto o = Opts(t);
  o.entry.fail_open = true;
  o.entry.exclude_namespaces = {"kube-system", "infra"};
  o.entry.kubeconfig = "/etc/cni/net.d/sluice-kubeconfig";

  auto r = ChainOnce(o);
  REQUIRE(r);
  CHECK(r->kind == ChainOutcome::Kind::kWritten);
  CHECK(r->target == t / "10-calico.conflist");
  CHECK(Types(t / "10-calico.conflist") ==
        std::vector<std::string>{"calico", "portmap", "sluice-cni"});
  auto j = json::parse(Read(t / "10-calico.conflist"));
  CHECK(j["name"] == "k8s-pod-network");
  CHECK(j["cniVersion"] == "0.4.0");
  auto entry = j["plugins"].back();
  CHECK(entry["agentSocket"] == "/var/run/sluice/cni.sock");
  CHECK(entry["failOpen"] == true);
  CHECK(entry["excludeNamespaces"] == json::array({"kube-system", "infra"}));
  CHECK(entry["kubeconfig"] == "/etc/cni/net.d/sluice-kubeconfig");
  CHECK(Read(t / ".10-calico.conflist.sluice-orig") == kCalico);
  struct stat st {};
  REQUIRE(::stat((t / "10-calico.conflist").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);

  SECTION("a second pass writes nothing") {
    const auto before = fs::last_write_time(t / "10-calico.conflist");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    auto again = ChainOnce(o);
    REQUIRE(again);
    CHECK(again->kind == ChainOutcome::Kind::kUnchanged);
    CHECK(fs::last_write_time(t / "10-calico.conflist") == before);
  }
  SECTION("changed entry fields are updated in place, the original stays") {
    o.entry.fail_open = false;
    auto again = ChainOnce(o);
    REQUIRE(again);
    CHECK(again->kind == ChainOutcome::Kind::kWritten);
    CHECK_FALSE(json::parse(Read(t / "10-calico.conflist"))["plugins"].back().contains("failOpen"));
    CHECK(Types(t / "10-calico.conflist").size() == 3);
    CHECK(Read(t / ".10-calico.conflist.sluice-orig") == kCalico);
  }
  SECTION("the primary CNI rewrites its file: re-chained, the new file kept as original") {
    const std::string rewritten =
        std::string(kCalico).replace(std::string(kCalico).find("1440"), 4, "1400");
    Write(t / "10-calico.conflist", rewritten);
    auto again = ChainOnce(o);
    REQUIRE(again);
    CHECK(again->kind == ChainOutcome::Kind::kWritten);
    CHECK(Chained(t / "10-calico.conflist"));
    CHECK(json::parse(Read(t / "10-calico.conflist"))["plugins"][0]["mtu"] == 1400);
    CHECK(Read(t / ".10-calico.conflist.sluice-orig") == rewritten);
  }
  SECTION("Unchain restores the original byte for byte") {
    auto u = Unchain(t.path().string());
    REQUIRE(u);
    CHECK(Read(t / "10-calico.conflist") == kCalico);
    CHECK_FALSE(fs::exists(t / ".10-calico.conflist.sluice-orig"));
  }
  SECTION("Unchain after someone else's change removes only the entry") {
    auto j2 = json::parse(Read(t / "10-calico.conflist"));
    j2["plugins"].insert(j2["plugins"].begin() + 2, json{{"type", "bandwidth"}});
    Write(t / "10-calico.conflist", j2.dump());
    auto u = Unchain(t.path().string());
    REQUIRE(u);
    CHECK(Types(t / "10-calico.conflist") ==
          std::vector<std::string>{"calico", "portmap", "bandwidth"});
    CHECK_FALSE(fs::exists(t / ".10-calico.conflist.sluice-orig"));
  }
}

TEST_CASE("cni conf: a single-plugin .conf becomes a .conflist, and comes back on Unchain") {
  TempDir t;
  Write(t / "10-bridge.conf", kBridgeConf);
  Write(t / "99-loopback.conf", R"({"cniVersion":"1.0.0","name":"lo","type":"loopback"})");
  auto o = Opts(t);
  auto r = ChainOnce(o);
  REQUIRE(r);
  CHECK(r->kind == ChainOutcome::Kind::kWritten);
  CHECK_FALSE(fs::exists(t / "10-bridge.conf"));
  REQUIRE(fs::exists(t / "10-bridge.conflist"));
  auto j = json::parse(Read(t / "10-bridge.conflist"));
  CHECK(j["name"] == "bridge-net");
  CHECK(j["cniVersion"] == "1.0.0");
  CHECK(Types(t / "10-bridge.conflist") == std::vector<std::string>{"bridge", "sluice-cni"});
  CHECK_FALSE(j["plugins"][0].contains("cniVersion"));
  CHECK(Read(t / ".10-bridge.conf.sluice-orig") == kBridgeConf);
  // The .conflist is now the primary: a second pass finds the kept .conf original.
  auto again = ChainOnce(o);
  REQUIRE(again);
  CHECK(again->kind == ChainOutcome::Kind::kUnchanged);
  CHECK(Read(t / "99-loopback.conf").find("sluice") == std::string::npos);

  auto u = Unchain(t.path().string());
  REQUIRE(u);
  CHECK(Read(t / "10-bridge.conf") == kBridgeConf);
  CHECK_FALSE(fs::exists(t / "10-bridge.conflist"));
}

TEST_CASE("cni conf: the primary is libcni's first file by name, or the one named") {
  TempDir t;
  auto o = Opts(t);
  SECTION("an empty dir: nothing to chain yet") {
    auto r = ChainOnce(o);
    REQUIRE(r);
    CHECK(r->kind == ChainOutcome::Kind::kNoPrimary);
  }
  SECTION("kept originals and other hidden files are never the primary") {
    Write(t / ".00-old.conflist.sluice-orig", kCalico);
    Write(t / ".01-hidden.conflist", kCalico);
    Write(t / "20-calico.conflist", kCalico);
    Write(t / "30-other.conflist", kCalico);
    Write(t / "05-notes.txt", "x");
    auto r = ChainOnce(o);
    REQUIRE(r);
    CHECK(r->target == t / "20-calico.conflist");
    CHECK(Chained(t / "20-calico.conflist"));
    CHECK_FALSE(Chained(t / "30-other.conflist"));
    CHECK(Read(t / ".00-old.conflist.sluice-orig") == kCalico);
  }
  SECTION("--cni-conflist names it") {
    Write(t / "20-calico.conflist", kCalico);
    Write(t / "30-other.conflist", kCalico);
    o.conflist = "30-other.conflist";
    auto r = ChainOnce(o);
    REQUIRE(r);
    CHECK(Chained(t / "30-other.conflist"));
    CHECK_FALSE(Chained(t / "20-calico.conflist"));
  }
  SECTION("a file that is not a configuration is an error naming it") {
    Write(t / "10-broken.conflist", "{not json");
    auto r = ChainOnce(o);
    REQUIRE_FALSE(r);
    CHECK_THAT(r.error().message, Catch::Contains("10-broken.conflist"));
  }
}

TEST_CASE("cni conf: the agent's chaining and install-cni.sh undo each other") {
  TempDir t;
  Write(t / "10-calico.conflist", kCalico);
  const std::string script = SLUICE_INSTALL_CNI;
  SECTION("chained by the agent, removed by install-cni.sh --uninstall") {
    REQUIRE(ChainOnce(Opts(t)));
    REQUIRE(Sh(script + " --uninstall --cni-conf-dir " + t.path().string() + " >/dev/null") == 0);
    CHECK(Read(t / "10-calico.conflist") == kCalico);
  }
  SECTION("chained by install-cni.sh, taken over by the agent, removed by Unchain") {
    REQUIRE(Sh(script + " --cni-conf-dir " + t.path().string() +
               " --agent-socket /var/run/sluice/cni.sock >/dev/null") == 0);
    REQUIRE(Chained(t / "10-calico.conflist"));
    auto r = ChainOnce(Opts(t));
    REQUIRE(r);
    CHECK(Types(t / "10-calico.conflist") ==
          std::vector<std::string>{"calico", "portmap", "sluice-cni"});
    REQUIRE(Unchain(t.path().string()));
    CHECK(Read(t / "10-calico.conflist") == kCalico);
  }
}

TEST_CASE("cni conf keeper: writes only once ready, re-chains a rewrite, never loops") {
  TempDir t;
  Write(t / "10-calico.conflist", kCalico);
  std::atomic<bool> ready{false};
  auto k = CniConfKeeper::Start(Opts(t), [&] { return ready.load(); });
  REQUIRE(k);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  CHECK_FALSE(Chained(t / "10-calico.conflist"));
  CHECK_FALSE((*k)->Status().ready);

  ready = true;
  CHECK(Eventually([&] { return Chained(t / "10-calico.conflist"); }));
  CHECK((*k)->Status().ready);
  CHECK(Eventually([&] { return (*k)->Status().chained; }));

  // The primary CNI rewrites its file (as Calico's install does: temp + rename).
  Write(t / ".calico.tmp", kCalico);
  fs::rename(t / ".calico.tmp", t / "10-calico.conflist");
  auto start = std::chrono::steady_clock::now();
  CHECK(Eventually([&] { return Chained(t / "10-calico.conflist"); }));
  auto took = std::chrono::steady_clock::now() - start;
  CHECK(took < std::chrono::seconds(2));
  // And in place (truncate + write), as a plain `cat >` does.
  Write(t / "10-calico.conflist", kCalico);
  CHECK(Eventually([&] { return Chained(t / "10-calico.conflist"); }));

  // Its own writes cause one pass that finds nothing to do: the write count settles.
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  const auto writes = (*k)->Status().writes;
  const auto passes = (*k)->Status().passes;
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));
  CHECK((*k)->Status().writes == writes);
  CHECK((*k)->Status().passes <= passes + 1);
  CHECK(writes == 3);
  CHECK_THAT((*k)->StatusText(), Catch::Contains("chained: yes"));

  // A new primary appearing later (the conf dir was empty at first) is chained too.
  (*k)->Stop();
  CHECK(Read(t / ".10-calico.conflist.sluice-orig") == kCalico);
}

TEST_CASE("cni conf keeper: waits for the primary CNI's file") {
  TempDir t;
  auto k = CniConfKeeper::Start(Opts(t), nullptr);
  REQUIRE(k);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK_FALSE((*k)->Status().chained);
  Write(t / "10-bridge.conf", kBridgeConf);
  CHECK(Eventually([&] { return Chained(t / "10-bridge.conflist"); }));
  CHECK_FALSE(fs::exists(t / "10-bridge.conf"));
}

TEST_CASE("cni conf keeper: the kubeconfig for sluice-cni, rewritten when the token rotates") {
  TempDir t;
  TempDir secrets;
  Write(t / "10-calico.conflist", kCalico);
  Write(secrets / "token", "token-one\n");
  Write(secrets / "ca.crt", "-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----\n");
  auto o = Opts(t);
  o.kube = {"https://10.96.0.1:443", secrets / "ca.crt", secrets / "token"};
  auto k = CniConfKeeper::Start(o, nullptr);
  REQUIRE(k);
  const std::string kc = t / kCniKubeconfigName;
  REQUIRE(Eventually([&] { return Chained(t / "10-calico.conflist") && fs::exists(kc); }));
  CHECK(json::parse(Read(t / "10-calico.conflist"))["plugins"].back()["kubeconfig"] == kc);
  struct stat st {};
  REQUIRE(::stat(kc.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  auto j = json::parse(Read(kc));
  CHECK(j["current-context"] == "sluice-cni");
  CHECK(j["clusters"][0]["cluster"]["server"] == "https://10.96.0.1:443");
  // base64 of the PEM
  CHECK(j["clusters"][0]["cluster"]["certificate-authority-data"] ==
        "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCmFiYwotLS0tLUVORCBDRVJUSUZJQ0FURS0tLS0tCg==");
  CHECK(j["users"][0]["user"]["token"] == "token-one");

  // The kubelet rotates the projected token (a new file renamed into place).
  Write(secrets / "token.new", "token-two-longer\n");
  fs::rename(secrets / "token.new", secrets / "token");
  CHECK(Eventually([&] {
    auto now = json::parse(Read(kc), nullptr, false);
    return !now.is_discarded() && now["users"][0]["user"]["token"] == "token-two-longer";
  }));
  (*k)->Stop();

  // Unchain takes the kubeconfig too.
  REQUIRE(Unchain(t.path().string()));
  CHECK_FALSE(fs::exists(kc));
  CHECK(Read(t / "10-calico.conflist") == kCalico);
}

TEST_CASE("shutdown: --daemonset is NAMESPACE/NAME") {
  auto r = DaemonSetRef::Parse("sluice-system/sluice-agent");
  REQUIRE(r);
  CHECK(r->ns == "sluice-system");
  CHECK(r->name == "sluice-agent");
  for (const char* bad : {"sluice-agent", "/x", "x/", "a/b/c", ""}) {
    auto b = DaemonSetRef::Parse(bad);
    REQUIRE_FALSE(b);
    CHECK_THAT(b.error().message, Catch::Contains("--daemonset"));
  }
}

TEST_CASE("shutdown: upgrade or uninstall, decided by the DaemonSet") {
  const DaemonSetRef ref{"sluice-system", "sluice-agent"};
  using Lookup = Result<std::optional<json>>;
  SECTION("present: an upgrade") {
    auto d = DecideStop(ref, Lookup(json{{"metadata", {{"name", "sluice-agent"}}}}));
    CHECK_FALSE(d.uninstall);
    CHECK_THAT(d.why, Catch::Contains("still there"));
  }
  SECTION("gone (404): an uninstall") {
    auto d = DecideStop(ref, Lookup(std::optional<json>()));
    CHECK(d.uninstall);
    CHECK_THAT(d.why, Catch::Contains("sluice-system/sluice-agent"));
  }
  SECTION("being deleted (foreground): an uninstall") {
    auto d = DecideStop(
        ref, Lookup(json{{"metadata", {{"deletionTimestamp", "2026-12-07T03:00:00Z"}}}}));
    CHECK(d.uninstall);
    CHECK_THAT(d.why, Catch::Contains("deletionTimestamp"));
  }
  SECTION("the API server unreachable or erroring: keep everything") {
    auto d = DecideStop(ref, Lookup(Fail("GET /apis/apps/v1/...: connection refused")));
    CHECK_FALSE(d.uninstall);
    CHECK_THAT(d.why, Catch::Contains("connection refused"));
    auto forbidden = DecideStop(ref, Lookup(Fail("403 Forbidden", 403)));
    CHECK_FALSE(forbidden.uninstall);
    auto server_error = DecideStop(ref, Lookup(Fail("500 InternalError", 500)));
    CHECK_FALSE(server_error.uninstall);
  }
  SECTION("the agent's token refused (its service account deleted): an uninstall") {
    auto d = DecideStop(ref, Lookup(Fail("GET ...: 401 Unauthorized", 401)));
    CHECK(d.uninstall);
    CHECK_THAT(d.why, Catch::Contains("401"));
  }
}

TEST_CASE("shutdown: Uninstall restores the conflist and removes the agent's files") {
  TempDir t;
  TempDir run;
  Write(t / "10-calico.conflist", kCalico);
  REQUIRE(ChainOnce(Opts(t)));
  REQUIRE(WriteCniKubeconfig(t.path().string(), {"http://127.0.0.1:1", "", ""}));
  Write(run / "pods.json", "{}");
  std::vector<std::string> log;
  UninstallPlan plan;
  plan.cni_conf_dir = t.path().string();
  plan.pin_root = run / "no-pins-here";  // Cleanup of an absent pin root is a no-op
  plan.state_file = run / "pods.json";
  auto r = Uninstall(plan, &log);
  REQUIRE(r);
  CHECK(Read(t / "10-calico.conflist") == kCalico);
  CHECK_FALSE(fs::exists(t / kCniKubeconfigName));
  CHECK_FALSE(fs::exists(run / "pods.json"));
  std::string all;
  for (const auto& l : log)
    all += l + "\n";
  CHECK_THAT(all, Catch::Contains("restored the original"));
  CHECK_THAT(all, Catch::Contains("removed " + (run / "pods.json")));
}
