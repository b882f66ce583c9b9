// Random and mutated input into the protocol parsers and into sluice-cni's logic
// (in-process): they must answer with an error value, never throw or crash, and what
// they accept must round-trip.
#include <catch2/catch.hpp>
#include <cstring>
#include <nlohmann/json.hpp>
#include <random>

#include "sluice/cni/plugin.h"
#include "sluice/cni/protocol.h"
#include "test_support.h"

using namespace sluice::cni;
using json = nlohmann::json;

namespace {

std::string RandomBytes(std::mt19937& rng, std::size_t max_len) {
  std::uniform_int_distribution<std::size_t> len(0, max_len);
  std::uniform_int_distribution<int> byte(0, 255);
  std::string s(len(rng), '\0');
  for (auto& c : s)
    c = static_cast<char>(byte(rng));
  return s;
}

// Flips, inserts, deletes or truncates a few bytes of a valid input.
std::string Mutate(std::mt19937& rng, std::string s) {
  std::uniform_int_distribution<int> op(0, 3), count(1, 4), byte(0, 255);
  const char interesting[] = "{}[]\":,0-9eE.\\ntfu\xff\xc3";
  for (int i = count(rng); i > 0 && !s.empty(); --i) {
    std::uniform_int_distribution<std::size_t> pos(0, s.size() - 1);
    switch (op(rng)) {
      case 0:
        s[pos(rng)] = static_cast<char>(byte(rng));
        break;
      case 1:
        s.insert(pos(rng), 1, interesting[pos(rng) % (sizeof interesting - 1)]);
        break;
      case 2:
        s.erase(pos(rng), 1);
        break;
      case 3:
        s.resize(pos(rng));
        break;
    }
  }
  return s;
}

}  // namespace

TEST_CASE("protocol parsers reject garbage without throwing, and accepted input round-trips") {
  std::mt19937 rng(20261124);
  CniRequest req;
  req.op = Operation::kAdd;
  req.container_id = "c";
  req.netns = "/var/run/netns/x";
  req.ips = {"10.0.0.1/24"};
  const std::string valid_req = SerializeRequest(req);
  const std::string valid_reply = SerializeReply(CniReply{false, false, 11, "m", "d"});
  const std::string valid_frame = *EncodeFrame(FrameKind::kRequest, valid_req);
  int accepted = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string frame = i % 2 ? RandomBytes(rng, 24) : Mutate(rng, valid_frame);
    frame.resize(std::max(frame.size(), kHeaderSize));
    std::array<std::byte, kHeaderSize> h;
    std::memcpy(h.data(), frame.data(), kHeaderSize);
    CHECK_NOTHROW(DecodeHeader(h));

    std::string body = i % 3 ? Mutate(rng, valid_req) : RandomBytes(rng, 64);
    sluice::Result<CniRequest> parsed = sluice::Fail("unset");
    REQUIRE_NOTHROW(parsed = ParseRequest(body));
    if (parsed) {
      ++accepted;
      std::string again;
      REQUIRE_NOTHROW(again = SerializeRequest(*parsed));
      auto reparsed = ParseRequest(again);
      REQUIRE(reparsed);
      CHECK(reparsed->container_id == parsed->container_id);
      CHECK(reparsed->netns == parsed->netns);
      CHECK(reparsed->ips == parsed->ips);
    }
    CHECK_NOTHROW(ParseReply(Mutate(rng, valid_reply)));
  }
  CHECK(accepted > 0);  // the mutations also produce valid variants
}

TEST_CASE("sluice-cni logic answers every mangled input with exit 0 or the error JSON") {
  std::mt19937 rng(7);
  sluice::cni::testing::TempDir tmp;
  const std::string conf =
      json{{"cniVersion", "1.0.0"},
           {"name", "n"},
           {"type", "sluice-cni"},
           {"agentSocket", tmp / "absent.sock"},
           {"agentTimeoutMs", 200},
           {"prevResult", {{"cniVersion", "1.0.0"}, {"ips", {{{"address", "10.0.0.2/24"}}}}}}}
          .dump();
  const char* commands[] = {"ADD", "DEL", "CHECK", "VERSION", "", "\xff\xfe", "ADD\n"};
  for (int i = 0; i < 3000; ++i) {
    std::map<std::string, std::string> env = {
        {"CNI_COMMAND", commands[i % 7]},
        {"CNI_CONTAINERID", i % 5 ? "ctr" : RandomBytes(rng, 8)},
        {"CNI_NETNS", "/var/run/netns/sluicet-x"},
        {"CNI_IFNAME", "eth0"},
        {"CNI_ARGS", i % 4 ? "K8S_POD_NAME=p;K8S_POD_NAMESPACE=ns" : RandomBytes(rng, 16)}};
    std::string input = i % 3 ? Mutate(rng, conf) : conf;
    PluginOutput out;
    REQUIRE_NOTHROW(out = RunPlugin(env, input));
    if (out.exit_status == 0)
      continue;
    REQUIRE(out.exit_status == 1);
    json j = json::parse(out.stdout_text, nullptr, false);
    INFO("stdout: " << out.stdout_text);
    REQUIRE(j.is_object());
    CHECK(j["code"].is_number_integer());
    CHECK(j["msg"].is_string());
    CHECK(j["cniVersion"].is_string());
  }
}
