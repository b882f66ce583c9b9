// CniChain against small script plugins that record how they were called: order,
// environment, and the configuration each one got on stdin.
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <sstream>

#include "cni/test_support.h"
#include "sluice/local/cni_chain.h"

using namespace sluice::local;
using namespace sluice::cni::testing;
using ojson = nlohmann::ordered_json;

namespace {

// Logs "<name> <command>" to calls.log, keeps its stdin and CNI_* env, and on ADD answers
// with a result that names it and carries the prevResult's IP count + 1.
const char* kRecorder = R"(#!/bin/sh
dir=$(dirname "$0"); me=$(basename "$0")
echo "$me $CNI_COMMAND" >> "$dir/calls.log"
cat > "$dir/$me.$CNI_COMMAND.stdin"
env | grep '^CNI_' | sort > "$dir/$me.$CNI_COMMAND.env"
if [ "$CNI_COMMAND" = ADD ]; then
  printf '{"cniVersion":"1.0.0","ips":[{"address":"10.9.0.7/24"}],"by":"%s"}' "$me"
fi
)";

const char* kFailing = R"(#!/bin/sh
dir=$(dirname "$0")
echo "failing $CNI_COMMAND" >> "$dir/calls.log"
cat > /dev/null
[ "$CNI_COMMAND" = DEL ] && exit 0
printf '{"cniVersion":"1.0.0","code":42,"msg":"no capacity","details":"pool empty"}'
exit 1
)";

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteExecutable(const std::string& path, const char* text) {
  std::ofstream(path) << text;
  ::chmod(path.c_str(), 0755);
}

struct Fixture {
  TempDir tmp;
  Fixture() {
    WriteExecutable(tmp / "first", kRecorder);
    WriteExecutable(tmp / "second", kRecorder);
    WriteExecutable(tmp / "failing", kFailing);
  }
  CniChain Chain(const std::string& version, std::vector<std::string> types) {
    ojson plugins = ojson::array();
    for (const auto& t : types)
      plugins.push_back({{"type", t}, {"cniVersion", "0.0.1"}, {"name", "ignored"}});
    auto chain = CniChain::FromJson(
        {{"cniVersion", version}, {"name", "sluicet-list"}, {"plugins", plugins}});
    REQUIRE(chain);
    chain->set_plugin_dirs({tmp.path().string()});
    return std::move(*chain);
  }
  std::string Calls() { return Slurp(tmp / "calls.log"); }
  ojson Stdin(const std::string& plugin, const std::string& cmd) {
    return ojson::parse(Slurp(tmp / (plugin + "." + cmd + ".stdin")));
  }
  std::string Env(const std::string& plugin, const std::string& cmd) {
    return Slurp(tmp / (plugin + "." + cmd + ".env"));
  }
};

RuntimeConf Rt() {
  RuntimeConf rt;
  rt.container_id = "ctr-1";
  rt.netns = "/var/run/netns/sluicet-x";
  rt.args = {{"K8S_POD_NAMESPACE", "shop"}, {"K8S_POD_NAME", "cart"}};
  return rt;
}

}  // namespace

TEST_CASE("ADD runs plugins in order and feeds each the previous result") {
  Fixture f;
  auto chain = f.Chain("1.0.0", {"first", "second"});
  auto result = chain.Add(Rt());
  REQUIRE(result);
  CHECK(f.Calls() == "first ADD\nsecond ADD\n");
  CHECK((*result)["by"] == "second");

  ojson first = f.Stdin("first", "ADD");
  ojson second = f.Stdin("second", "ADD");
  CHECK_FALSE(first.contains("prevResult"));
  REQUIRE(second.contains("prevResult"));
  CHECK(second["prevResult"]["by"] == "first");
  // The list's name and version override the plugin's own.
  CHECK(second["name"] == "sluicet-list");
  CHECK(second["cniVersion"] == "1.0.0");

  std::string env = f.Env("first", "ADD");
  CHECK_THAT(env, Catch::Contains("CNI_COMMAND=ADD"));
  CHECK_THAT(env, Catch::Contains("CNI_CONTAINERID=ctr-1"));
  CHECK_THAT(env, Catch::Contains("CNI_NETNS=/var/run/netns/sluicet-x"));
  CHECK_THAT(env, Catch::Contains("CNI_IFNAME=eth0"));
  CHECK_THAT(env,
             Catch::Contains("CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart"));
  CHECK_THAT(env, Catch::Contains("CNI_PATH=" + f.tmp.path().string()));
}

TEST_CASE("DEL runs in reverse order with the cached result, CHECK in order") {
  Fixture f;
  auto chain = f.Chain("1.0.0", {"first", "second"});
  ojson cached = {{"cniVersion", "1.0.0"}, {"by", "cache"}};
  REQUIRE(chain.Del(Rt(), &cached));
  CHECK(f.Calls() == "second DEL\nfirst DEL\n");
  CHECK(f.Stdin("first", "DEL")["prevResult"]["by"] == "cache");
  REQUIRE(chain.Check(Rt(), cached));
  CHECK(f.Calls() == "second DEL\nfirst DEL\nfirst CHECK\nsecond CHECK\n");
  CHECK(f.Stdin("second", "CHECK")["prevResult"]["by"] == "cache");
}

TEST_CASE("before 0.4.0: no CHECK, no prevResult on DEL") {
  Fixture f;
  auto chain = f.Chain("0.3.1", {"first"});
  ojson cached = {{"by", "cache"}};
  auto check = chain.Check(Rt(), cached);
  REQUIRE_FALSE(check);
  CHECK_THAT(check.error().message, Catch::Contains("does not support CHECK"));
  REQUIRE(chain.Del(Rt(), &cached));
  CHECK(f.Calls() == "first DEL\n");
  CHECK_FALSE(f.Stdin("first", "DEL").contains("prevResult"));
}

TEST_CASE("a failing plugin stops ADD and its CNI error is reported") {
  Fixture f;
  auto chain = f.Chain("1.0.0", {"first", "failing", "second"});
  PluginError err;
  auto r = chain.Add(Rt(), &err);
  REQUIRE_FALSE(r);
  CHECK(f.Calls() == "first ADD\nfailing ADD\n");
  CHECK(err.plugin == "failing");
  CHECK(err.command == "ADD");
  CHECK(err.code == 42);
  CHECK(err.msg == "no capacity");
  CHECK(err.details == "pool empty");
  CHECK(r.error().code == 42);
}

TEST_CASE("a missing plugin binary and bad conflists are clear errors") {
  Fixture f;
  auto chain = f.Chain("1.0.0", {"first", "nonexistent"});
  PluginError err;
  auto r = chain.Add(Rt(), &err);
  REQUIRE_FALSE(r);
  CHECK_THAT(r.error().message, Catch::Contains("\"nonexistent\" not found"));

  CHECK_THAT(
      CniChain::FromJson({{"cniVersion", "1.0.0"}, {"plugins", ojson::array()}}).error().message,
      Catch::Contains("\"name\""));
  CHECK_THAT(
      CniChain::FromJson({{"cniVersion", "1.0.0"}, {"name", "n"}, {"plugins", ojson::array()}})
          .error()
          .message,
      Catch::Contains("\"plugins\""));
  CHECK_THAT(
      CniChain::FromJson(
          {{"cniVersion", "1.0.0"}, {"name", "n"}, {"plugins", ojson::array({{{"bridge", "x"}}})}})
          .error()
          .message,
      Catch::Contains("plugins[0]"));
  auto missing = CniChain::FromFile(f.tmp / "absent.conflist");
  REQUIRE_FALSE(missing);
  CHECK_THAT(missing.error().message, Catch::Contains("absent.conflist"));
}

TEST_CASE("ResultCache keeps one result per network, container and interface") {
  TempDir tmp;
  ResultCache cache(tmp / "results");
  RuntimeConf rt = Rt();
  auto empty = cache.Load("net", rt);
  REQUIRE(empty);
  CHECK_FALSE(empty->has_value());

  ojson result = {{"cniVersion", "1.0.0"}, {"ips", ojson::array({{{"address", "10.1.0.2/24"}}})}};
  REQUIRE(cache.Save("net", rt, result));
  auto loaded = cache.Load("net", rt);
  REQUIRE(loaded);
  REQUIRE(loaded->has_value());
  CHECK(**loaded == result);

  RuntimeConf other = rt;
  other.ifname = "net1";
  CHECK_FALSE(cache.Load("net", other)->has_value());

  REQUIRE(cache.Remove("net", rt));
  CHECK_FALSE(cache.Load("net", rt)->has_value());
  CHECK(cache.Remove("net", rt));  // already gone is fine

  RuntimeConf evil = rt;
  evil.container_id = "../../etc";
  auto bad = cache.Save("net", evil, result);
  REQUIRE_FALSE(bad);
  CHECK_THAT(bad.error().message, Catch::Contains("container id"));
}

namespace {

ProcessResult Sluicectl(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {SLUICECTL_BINARY};
  argv.insert(argv.end(), args.begin(), args.end());
  auto r = RunProcess(argv, {"PATH=/usr/bin:/bin"}, "", std::chrono::seconds(10));
  REQUIRE(r);
  return *r;
}

}  // namespace

TEST_CASE("sluicectl cni add/check/del runs the list and keeps the result for DEL") {
  Fixture f;
  const std::string conflist = f.tmp / "net.conflist";
  std::ofstream(conflist) << R"({"cniVersion":"1.0.0","name":"sluicet-list","plugins":[)"
                          << R"({"type":"first"},{"type":"second"}]})";
  const std::string cache = f.tmp / "cache";
  std::vector<std::string> common = {"--conflist",  conflist,    "--container-id", "ctr-9",
                                     "--pod",       "shop/cart", "--cni-path",     f.tmp / "",
                                     "--cache-dir", cache};
  auto with = [&](std::vector<std::string> head, bool netns = true) {
    if (netns) {
      head.push_back("--netns");
      head.push_back("/var/run/netns/sluicet-y");
    }
    head.insert(head.end(), common.begin(), common.end());
    return head;
  };

  auto add = Sluicectl(with({"cni", "add"}));
  INFO(add.err);
  REQUIRE(add.exit_status == 0);
  CHECK(ojson::parse(add.out)["by"] == "second");
  CHECK(std::filesystem::exists(cache + "/sluicet-list-ctr-9-eth0"));
  CHECK_THAT(f.Env("first", "ADD"), Catch::Contains("K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart"));

  auto check = Sluicectl(with({"cni", "check"}));
  CHECK(check.exit_status == 0);
  CHECK(f.Stdin("first", "CHECK")["prevResult"]["by"] == "second");

  // DEL without a netns (the sandbox is gone) still gets the cached result.
  auto del = Sluicectl(with({"cni", "del"}, false));
  CHECK(del.exit_status == 0);
  CHECK(f.Stdin("first", "DEL")["prevResult"]["by"] == "second");
  CHECK_FALSE(std::filesystem::exists(cache + "/sluicet-list-ctr-9-eth0"));
  CHECK(f.Calls() == "first ADD\nsecond ADD\nfirst CHECK\nsecond CHECK\nsecond DEL\nfirst DEL\n");

  auto again = Sluicectl(with({"cni", "del"}, false));
  CHECK(again.exit_status == 0);
  CHECK_FALSE(f.Stdin("first", "DEL").contains("prevResult"));

  auto check_gone = Sluicectl(with({"cni", "check"}));
  CHECK(check_gone.exit_status != 0);
  CHECK_THAT(check_gone.err, Catch::Contains("no cached ADD result"));
}

TEST_CASE("sluicectl cni add: a failing plugin is reported and the list is torn down") {
  Fixture f;
  const std::string conflist = f.tmp / "net.conflist";
  std::ofstream(conflist) << R"({"cniVersion":"1.0.0","name":"sluicet-list","plugins":[)"
                          << R"({"type":"first"},{"type":"failing"}]})";
  auto add = Sluicectl({"cni", "add", "--conflist", conflist, "--container-id", "ctr-f", "--netns",
                        "/var/run/netns/sluicet-z", "--cni-path", f.tmp / "", "--cache-dir",
                        f.tmp / "cache"});
  CHECK(add.exit_status == 1);
  CHECK_THAT(add.err, Catch::Contains("plugin failing ADD failed (CNI error 42): no capacity"));
  CHECK(f.Calls() == "first ADD\nfailing ADD\nfailing DEL\nfirst DEL\n");
  CHECK_FALSE(std::filesystem::exists(f.tmp / "cache/sluicet-list-ctr-f-eth0"));

  auto bad = Sluicectl({"cni", "add", "--conflist", conflist, "--container-id", "c", "--netns",
                        "/x", "--pod", "no-slash"});
  CHECK(bad.exit_status != 0);
  CHECK_THAT(bad.err, Catch::Contains("--pod \"no-slash\""));
}

TEST_CASE("sluicectl cni --loopback brings lo up first and down last, as containerd does") {
  Fixture f;
  WriteExecutable(f.tmp / "loopback", kRecorder);
  const std::string conflist = f.tmp / "net.conflist";
  std::ofstream(conflist) << R"({"cniVersion":"1.0.0","name":"sluicet-list","plugins":[)"
                          << R"({"type":"first"}]})";
  std::vector<std::string> common = {"--conflist",    conflist,    "--container-id",
                                     "ctr-l",         "--netns",   "/var/run/netns/sluicet-l",
                                     "--cni-path",    f.tmp / "",  "--cache-dir",
                                     f.tmp / "cache", "--loopback"};
  auto run = [&](const char* cmd) {
    std::vector<std::string> argv = {"cni", cmd};
    argv.insert(argv.end(), common.begin(), common.end());
    return Sluicectl(argv);
  };
  REQUIRE(run("add").exit_status == 0);
  REQUIRE(run("del").exit_status == 0);
  CHECK(f.Calls() == "loopback ADD\nfirst ADD\nfirst DEL\nloopback DEL\n");
  CHECK_THAT(f.Env("loopback", "ADD"), Catch::Contains("CNI_IFNAME=lo"));
  CHECK(f.Stdin("loopback", "ADD")["name"] == "cni-loopback");
}
