// Runs the real sluice-cni binary the way a container runtime does: CNI_* environment,
// network configuration on stdin, result or error JSON on stdout, exit status.
#include <catch2/catch.hpp>
#include <chrono>
#include <nlohmann/json.hpp>
#include <optional>

#include "cni_server.h"
#include "sluice/cni/plugin.h"
#include "test_support.h"

using namespace sluice;
using namespace sluice::cni;
using namespace sluice::local;  // RunProcess
using namespace sluice::cni::testing;
using json = nlohmann::json;

namespace {

// What bridge + host-local hand over: the previous plugin's result.
const char* kPrevResult =
    R"({"cniVersion":"1.0.0","interfaces":[{"name":"sluicet-br0","mac":"aa:bb:cc:00:00:01"},)"
    R"({"name":"eth0","mac":"aa:bb:cc:00:00:02","sandbox":"/var/run/netns/sluicet-p1"}],)"
    R"("ips":[{"interface":1,"address":"10.77.0.5/24","gateway":"10.77.0.1"}],)"
    R"("routes":[{"dst":"0.0.0.0/0"}],"dns":{}})";

// A prevResult with every field of the CNI 1.0 result, both families, and keys the spec
// does not define (a later spec's "mtu", a plugin's own): all of it must pass unchanged.
const char* kFullPrevResult =
    R"({"cniVersion":"1.0.0","interfaces":[{"name":"sluicet-br0","mac":"aa:bb:cc:00:00:01"},)"
    R"({"name":"eth0","mac":"aa:bb:cc:00:00:02","mtu":1500,)"
    R"("sandbox":"/var/run/netns/sluicet-p1"}],)"
    R"("ips":[{"interface":1,"address":"10.77.0.5/24","gateway":"10.77.0.1"},)"
    R"({"interface":1,"address":"fd00:77::5/64","gateway":"fd00:77::1"}],)"
    R"("routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0","gw":"fd00:77::1"}],)"
    R"("dns":{"nameservers":["10.77.0.1"],"domain":"cluster.local",)"
    R"("search":["default.svc.cluster.local"],"options":["ndots:5"]},"x-vendor":{"k":1}})";

json Conf(const std::string& socket, bool with_prev = true) {
  json conf = {{"cniVersion", "1.0.0"},
               {"name", "sluicet-net"},
               {"type", "sluice-cni"},
               {"agentSocket", socket},
               {"agentTimeoutMs", 2000}};
  if (with_prev)
    conf["prevResult"] = json::parse(kPrevResult);
  return conf;
}

// The error JSON the spec requires: cniVersion, code, msg; non-zero exit.
json ExpectError(const ProcessResult& r, int code) {
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  CHECK(r.exit_status != 0);
  json j = json::parse(r.out, nullptr, false);
  REQUIRE(j.is_object());
  CHECK(j["code"] == code);
  CHECK(j["cniVersion"].is_string());
  CHECK(j["msg"].is_string());
  CHECK_FALSE(j["msg"].get<std::string>().empty());
  return j;
}

CniEnv Env(const std::string& command) {
  CniEnv e;
  e.command = command;
  return e;
}

}  // namespace

TEST_CASE("VERSION lists the supported spec versions") {
  auto r = RunSluiceCni(Env("VERSION"), R"({"cniVersion":"1.0.0"})");
  REQUIRE(r.exit_status == 0);
  json j = json::parse(r.out);
  CHECK(j["cniVersion"] == "1.0.0");
  auto versions = j["supportedVersions"].get<std::vector<std::string>>();
  CHECK(std::find(versions.begin(), versions.end(), "1.0.0") != versions.end());
  CHECK(std::find(versions.begin(), versions.end(), "0.4.0") != versions.end());
  CHECK(std::find(versions.begin(), versions.end(), "0.2.0") == versions.end());
}

TEST_CASE("bad inputs give the spec's error codes") {
  TempDir tmp;
  const std::string sock = tmp / "cni.sock";  // nobody listens: these fail before calling

  SECTION("missing prevResult on ADD -> 7") {
    auto j = ExpectError(RunSluiceCni(Env("ADD"), Conf(sock, false).dump()), 7);
    CHECK_THAT(j["msg"].get<std::string>(), Catch::Contains("prevResult"));
  }
  SECTION("missing prevResult on CHECK -> 7") {
    ExpectError(RunSluiceCni(Env("CHECK"), Conf(sock, false).dump()), 7);
  }
  SECTION("malformed JSON -> 6") {
    ExpectError(RunSluiceCni(Env("ADD"), R"({"cniVersion":"1.0.0","prevResult":)"), 6);
  }
  SECTION("unknown command -> 4") {
    auto j = ExpectError(RunSluiceCni(Env("UPDATE"), Conf(sock).dump()), 4);
    CHECK_THAT(j["msg"].get<std::string>(), Catch::Contains("UPDATE"));
  }
  SECTION("no command -> 4") {
    ExpectError(RunSluiceCni(Env(""), Conf(sock).dump()), 4);
  }
  SECTION("unknown version -> 1") {
    auto conf = Conf(sock);
    conf["cniVersion"] = "2.7.0";
    auto j = ExpectError(RunSluiceCni(Env("ADD"), conf.dump()), 1);
    CHECK_THAT(j["msg"].get<std::string>(), Catch::Contains("2.7.0"));
  }
  SECTION("unsupported old version -> 1") {
    auto conf = Conf(sock);
    conf["cniVersion"] = "0.2.0";
    ExpectError(RunSluiceCni(Env("ADD"), conf.dump()), 1);
  }
  SECTION("CHECK before 0.4.0 -> 1") {
    auto conf = Conf(sock);
    conf["cniVersion"] = "0.3.1";
    ExpectError(RunSluiceCni(Env("CHECK"), conf.dump()), 1);
  }
  SECTION("missing cniVersion -> 7") {
    auto conf = Conf(sock);
    conf.erase("cniVersion");
    ExpectError(RunSluiceCni(Env("ADD"), conf.dump()), 7);
  }
  SECTION("failOpen of the wrong type -> 7") {
    auto conf = Conf(sock);
    conf["failOpen"] = "yes";
    auto j = ExpectError(RunSluiceCni(Env("ADD"), conf.dump()), 7);
    CHECK_THAT(j["msg"].get<std::string>(), Catch::Contains("failOpen"));
  }
  SECTION("CNI_CONTAINERID missing -> 4") {
    auto e = Env("ADD");
    e.container_id.clear();
    ExpectError(RunSluiceCni(e, Conf(sock).dump()), 4);
  }
  SECTION("CNI_NETNS missing on ADD -> 4") {
    auto e = Env("ADD");
    e.netns.clear();
    ExpectError(RunSluiceCni(e, Conf(sock).dump()), 4);
  }
  SECTION("malformed CNI_ARGS -> 4") {
    auto e = Env("ADD");
    e.args = "K8S_POD_NAME=a;garbage";
    auto j = ExpectError(RunSluiceCni(e, Conf(sock).dump()), 4);
    CHECK_THAT(j["msg"].get<std::string>(), Catch::Contains("garbage"));
  }
}

TEST_CASE("stdin is read up to 1 MiB: a huge or endless input is refused at once with code 5") {
  TempDir tmp;
  const std::string sock = tmp / "cni.sock";
  // The input comes from the shell, not from this process: a forked copy of a test
  // holding 100 MB would count in the child's peak memory.
  auto run_shell = [](const std::string& command) {
    return RunProcess({"/bin/sh", "-c", command, SLUICE_CNI_BINARY}, EnvList(Env("ADD")), "",
                      std::chrono::seconds(5));
  };
  // Answered within a second, at most 64 MiB resident: without the cap, 100 MB took
  // 13 s and 394 MB, and /dev/zero never ended.
  for (const auto& [what, command] : std::vector<std::pair<std::string, std::string>>{
           {"100 MB piped in", R"({ printf '{"cniVersion":"1.0.0","name":"'; )"
                               R"(head -c 104857600 /dev/zero | tr '\0' a; printf '"}'; })"
                               R"( | exec "$0")"},
           {"/dev/zero piped in", R"(cat /dev/zero | exec "$0")"},
           {"stdin is /dev/zero", R"(exec "$0" </dev/zero)"}}) {
    INFO(what);
    const auto start = std::chrono::steady_clock::now();
    sluice::Result<ProcessResult> r = run_shell(command);
    const auto took = std::chrono::steady_clock::now() - start;
    REQUIRE(r);  // an error here is RunProcess's 5 s timeout: the plugin kept reading
    auto j = ExpectError(*r, codes::kIoFailure);
    CHECK(j["msg"] ==
          "network configuration on stdin is over sluice-cni's limit of 1048576 bytes (1 MiB)");
    CHECK(took < std::chrono::seconds(1));
    CHECK(r->max_rss_kb < 64 * 1024);
  }

  // The cap itself: a configuration padded to exactly 1 MiB is read and parsed (the
  // agent is absent: 11); one byte more is refused unparsed.
  std::string at_cap = Conf(sock).dump();
  at_cap.resize(kMaxNetworkConfigBytes, ' ');
  ExpectError(RunSluiceCni(Env("ADD"), at_cap), codes::kTryAgainLater);
  ExpectError(RunSluiceCni(Env("ADD"), at_cap + " "), codes::kIoFailure);
  // A failed read is an I/O failure too (a directory as stdin: EISDIR).
  auto dir = run_shell(R"(exec "$0" </)");
  REQUIRE(dir);
  CHECK(ExpectError(*dir, codes::kIoFailure)["msg"] ==
        "reading the network configuration from stdin: Is a directory");
  // VERSION needs no configuration and still answers.
  auto v = RunProcess({"/bin/sh", "-c", "exec \"$0\" </dev/zero", SLUICE_CNI_BINARY},
                      EnvList(Env("VERSION")), "", std::chrono::seconds(5));
  REQUIRE(v);
  CHECK(v->exit_status == 0);
  CHECK(json::parse(v->out)["cniVersion"] == "1.0.0");
}

TEST_CASE("prevResult of the wrong shape is refused with code 7, naming the field") {
  TempDir tmp;
  const std::string sock = tmp / "cni.sock";  // nobody listens: these fail before calling
  struct Case {
    const char* pointer;        // JSON pointer into prevResult
    std::optional<json> value;  // the bad value, or nullopt to remove the field
    std::string msg;            // after "network configuration: "
  };
  const auto cidr = [](const char* path, const char* got) {
    return std::string(path) +
           ": must be an IP address with its prefix length, e.g. \"10.1.0.5/24\" (got \"" + got +
           "\")";
  };
  const std::string not_index =
      ": must be a non-negative integer (an index into prevResult.interfaces)";
  const std::vector<Case> cases = {
      {"/cniVersion", 1, "prevResult.cniVersion: must be a string"},
      {"/interfaces", json::object(), "prevResult.interfaces: must be an array"},
      {"/interfaces/0", "eth0", "prevResult.interfaces[0]: must be an object"},
      {"/interfaces/1/name", std::nullopt, "prevResult.interfaces[1].name: is required"},
      {"/interfaces/1/name", 7, "prevResult.interfaces[1].name: must be a string"},
      {"/interfaces/0/mac", 5, "prevResult.interfaces[0].mac: must be a string"},
      {"/interfaces/1/sandbox", true, "prevResult.interfaces[1].sandbox: must be a string"},
      {"/ips", "10.77.0.5/24", "prevResult.ips: must be an array"},
      {"/ips/0", 1, "prevResult.ips[0]: must be an object"},
      {"/ips/0/address", std::nullopt, "prevResult.ips[0].address: is required"},
      {"/ips/0/address", 10, "prevResult.ips[0].address: must be a string"},
      {"/ips/0/address", "10.77.0.5", cidr("prevResult.ips[0].address", "10.77.0.5")},
      {"/ips/0/address", "10.77.0.5/33", cidr("prevResult.ips[0].address", "10.77.0.5/33")},
      {"/ips/0/address", "10.77.0.300/24", cidr("prevResult.ips[0].address", "10.77.0.300/24")},
      {"/ips/1/address", "fd00:77::5/129", cidr("prevResult.ips[1].address", "fd00:77::5/129")},
      {"/ips/1/address", "fd00:77::5/", cidr("prevResult.ips[1].address", "fd00:77::5/")},
      {"/ips/0/gateway", "10.77.0.1/24",
       "prevResult.ips[0].gateway: must be an IP address (got \"10.77.0.1/24\")"},
      {"/ips/0/gateway", json::array({"10.77.0.1"}), "prevResult.ips[0].gateway: must be a string"},
      {"/ips/0/interface", "1", "prevResult.ips[0].interface" + not_index},
      {"/ips/0/interface", -1, "prevResult.ips[0].interface" + not_index},
      {"/ips/0/interface", 1.5, "prevResult.ips[0].interface" + not_index},
      {"/ips/1/interface", 5,
       "prevResult.ips[1].interface: 5 is not an index into prevResult.interfaces (2 entries)"},
      {"/ips/0/interface", 2,
       "prevResult.ips[0].interface: 2 is not an index into prevResult.interfaces (2 entries)"},
      {"/interfaces", std::nullopt,
       "prevResult.ips[0].interface: 1 is not an index into prevResult.interfaces (0 entries)"},
      {"/routes", json::object(), "prevResult.routes: must be an array"},
      {"/routes/0", "0.0.0.0/0", "prevResult.routes[0]: must be an object"},
      {"/routes/0/dst", std::nullopt, "prevResult.routes[0].dst: is required"},
      {"/routes/0/dst", "default", cidr("prevResult.routes[0].dst", "default")},
      {"/routes/1/gw", "fd00:77::1/64",
       "prevResult.routes[1].gw: must be an IP address (got \"fd00:77::1/64\")"},
      {"/dns", json::array(), "prevResult.dns: must be an object"},
      {"/dns/nameservers", "10.77.0.1", "prevResult.dns.nameservers: must be an array of strings"},
      {"/dns/nameservers/0", 53, "prevResult.dns.nameservers[0]: must be a string"},
      {"/dns/domain", json::array({"cluster.local"}), "prevResult.dns.domain: must be a string"},
      {"/dns/search/0", false, "prevResult.dns.search[0]: must be a string"},
      {"/dns/options", json::object(), "prevResult.dns.options: must be an array of strings"},
      {"", "not an object", "prevResult: must be an object"},
  };
  for (const auto& c : cases) {
    json conf = Conf(sock);
    conf["prevResult"] = json::parse(kFullPrevResult);
    json::json_pointer ptr(c.pointer);
    if (!c.value) {
      conf["prevResult"][ptr.parent_pointer()].erase(ptr.back());
    } else {
      conf["prevResult"][ptr] = *c.value;
    }
    INFO("prevResult" << c.pointer << " = " << (c.value ? c.value->dump() : "(removed)"));
    for (const char* command : {"ADD", "CHECK"}) {
      auto j = ExpectError(RunSluiceCni(Env(command), conf.dump()), codes::kInvalidNetworkConfig);
      CHECK(j["msg"] == "network configuration: " + c.msg);
    }
  }
}

TEST_CASE("a full prevResult passes through unchanged, and DEL goes on without a bad one") {
  TempDir tmp;
  RecordingHandler handler;
  auto server = CniServer::Start({.socket_path = tmp / "cni.sock"}, handler);
  REQUIRE(server);
  const std::string head = R"({"cniVersion":"1.0.0","name":"sluicet-net","type":"sluice-cni",)"
                           R"("agentSocket":")" +
                           (*server)->socket_path() + R"(","prevResult":)";
  auto r = RunSluiceCni(Env("ADD"), head + kFullPrevResult + "}");
  INFO(r.err);
  REQUIRE(r.exit_status == 0);
  CHECK(r.out == std::string(kFullPrevResult) + "\n");
  REQUIRE(handler.adds().size() == 1);
  CHECK(handler.adds()[0].ips == std::vector<std::string>{"10.77.0.5/24", "fd00:77::5/64"});

  // A DEL must not block the sandbox's removal: the bad prevResult is named in the log
  // and left out, the agent still hears of the DEL.
  for (const char* bad : {R"({"ips":"10.77.0.5/24"})", "7"}) {
    auto d = RunSluiceCni(Env("DEL"), head + bad + "}");
    CHECK(d.exit_status == 0);
    CHECK(d.out.empty());
    CHECK_THAT(d.err, Catch::Contains("sluice-cni: DEL: ignoring prevResult: prevResult"));
  }
  REQUIRE(handler.dels().size() == 2);
  CHECK(handler.dels()[0].ips.empty());
}

TEST_CASE("agent down: ADD fails closed by default, passes through with failOpen") {
  TempDir tmp;
  const std::string sock = tmp / "cni.sock";
  SECTION("fail closed -> 11 try again later") {
    auto j = ExpectError(RunSluiceCni(Env("ADD"), Conf(sock).dump()), 11);
    CHECK_THAT(j["details"].get<std::string>(), Catch::Contains(sock));
  }
  SECTION("failOpen -> prevResult unchanged, exit 0") {
    auto conf = Conf(sock);
    conf["failOpen"] = true;
    auto r = RunSluiceCni(Env("ADD"), conf.dump());
    INFO(r.err);
    REQUIRE(r.exit_status == 0);
    CHECK(json::parse(r.out) == json::parse(kPrevResult));
    CHECK_THAT(r.err, Catch::Contains("failOpen"));
  }
  SECTION("DEL succeeds with the agent down, with or without prevResult and netns") {
    auto r = RunSluiceCni(Env("DEL"), Conf(sock).dump());
    CHECK(r.exit_status == 0);
    CHECK(r.out.empty());
    auto e = Env("DEL");
    e.netns.clear();
    r = RunSluiceCni(e, Conf(sock, false).dump());
    CHECK(r.exit_status == 0);
    CHECK(r.out.empty());
  }
}

TEST_CASE("agent up: ADD passes prevResult through byte for byte and hands over the pod") {
  TempDir tmp;
  RecordingHandler handler;
  auto server = CniServer::Start({.socket_path = tmp / "cni.sock"}, handler);
  REQUIRE(server);
  // Build the stdin by hand so prevResult's exact text (key order included) is known.
  const std::string stdin_text =
      R"({"cniVersion":"1.0.0","name":"sluicet-net","type":"sluice-cni",)"
      R"("agentSocket":")" +
      (*server)->socket_path() + R"(","prevResult":)" + kPrevResult + "}";
  auto r = RunSluiceCni(Env("ADD"), stdin_text);
  INFO(r.err);
  REQUIRE(r.exit_status == 0);
  CHECK(r.out == std::string(kPrevResult) + "\n");

  REQUIRE(handler.adds().size() == 1);
  const auto adds = handler.adds();
  const PodInfo& pod = adds[0];
  CHECK(pod.name == "cart-7d9");
  CHECK(pod.pod_namespace == "shop");
  CHECK(pod.uid == "uid-1");
  CHECK(pod.container_id == "sluicet-c1");
  CHECK(pod.netns == "/var/run/netns/sluicet-none");
  CHECK(pod.ifname == "eth0");
  CHECK(pod.ips == std::vector<std::string>{"10.77.0.5/24"});
  CHECK(pod.cni_version == "1.0.0");

  SECTION("CHECK prints nothing on success") {
    auto c = RunSluiceCni(Env("CHECK"), stdin_text);
    CHECK(c.exit_status == 0);
    CHECK(c.out.empty());
    CHECK(handler.checks().size() == 1);
  }
  SECTION("DEL twice succeeds, each reaching the agent") {
    for (int i = 0; i < 2; ++i) {
      auto d = RunSluiceCni(Env("DEL"), stdin_text);
      CHECK(d.exit_status == 0);
      CHECK(d.out.empty());
    }
    CHECK(handler.dels().size() == 2);
  }
}

TEST_CASE("agent refusal is returned as the agent's CNI error") {
  TempDir tmp;
  RecordingHandler handler;
  auto server = CniServer::Start({.socket_path = tmp / "cni.sock"}, handler);
  REQUIRE(server);
  const std::string sock = (*server)->socket_path();

  handler.set_fail_add(Error{"open netns /var/run/netns/sluicet-none: No such file", ENOENT});
  auto j = ExpectError(RunSluiceCni(Env("ADD"), Conf(sock).dump()), codes::kAgentFailed);
  CHECK_THAT(j["msg"].get<std::string>(), Catch::Contains("open netns"));

  // failOpen covers an unreachable agent only: an agent that says no still wins.
  auto conf = Conf(sock);
  conf["failOpen"] = true;
  ExpectError(RunSluiceCni(Env("ADD"), conf.dump()), codes::kAgentFailed);

  handler.set_fail_add(Error{"still syncing", EAGAIN});
  ExpectError(RunSluiceCni(Env("ADD"), Conf(sock).dump()), codes::kTryAgainLater);
}
