// CniChain against small script plugins that record how they were called: order,
// environment, and the configuration each one got on stdin.
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <sstream>

#include "sluice/cni/chain.h"
#include "test_support.h"

using namespace sluice::cni;
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

TEST_CASE("DEL runs in reverse order with the cached result; CHECK in order") {
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
