// Golden tests: the manifests of the Istio traffic-management tasks, translated and
// compared (as JSON values, so key order does not matter) with reviewed expected files.
//
// testdata/golden/<case>/ holds config.yaml, `apps` (which testdata/apps/*.yaml files the
// case needs), `proxies` (one ProxySpec per line) and expected/<proxy>.json.
// SLUICE_UPDATE_GOLDEN=1 rewrites the expected files: review every diff before committing.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "sluice/config/validate.h"
#include "sluice/istio/loader.h"
#include "sluice/istio/registry.h"
#include "sluice/istio/translator.h"

namespace fs = std::filesystem;
using namespace sluice::istio;
using nlohmann::json;

namespace {

const fs::path kTestdata = SLUICE_ISTIO_TESTDATA;

std::vector<std::string> Lines(const fs::path& p) {
  std::ifstream in(p);
  std::vector<std::string> out;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty())
      out.push_back(line);
  }
  return out;
}

std::string ExpectedName(std::string proxy) {
  for (char& c : proxy) {
    if (c == ':' || c == '/' || c == ',' || c == '@')
      c = '_';
  }
  return proxy + ".json";
}

bool UpdateMode() {
  const char* v = std::getenv("SLUICE_UPDATE_GOLDEN");
  return v && std::string(v) == "1";
}

// Lists the JSON paths where two documents differ, so a failure shows what changed.
void Diff(const json& want, const json& got, const std::string& path,
          std::vector<std::string>& out) {
  if (out.size() > 20)
    return;
  if (want.type() != got.type()) {
    out.push_back(path + ": expected " + want.dump() + ", got " + got.dump());
    return;
  }
  if (want.is_object()) {
    for (auto it = want.begin(); it != want.end(); ++it) {
      if (!got.contains(it.key())) {
        out.push_back(path + "." + it.key() + ": missing");
      } else {
        Diff(it.value(), got[it.key()], path + "." + it.key(), out);
      }
    }
    for (auto it = got.begin(); it != got.end(); ++it) {
      if (!want.contains(it.key()))
        out.push_back(path + "." + it.key() + ": unexpected " + it.value().dump());
    }
  } else if (want.is_array()) {
    if (want.size() != got.size()) {
      out.push_back(path + ": expected " + std::to_string(want.size()) + " items, got " +
                    std::to_string(got.size()));
    }
    for (std::size_t i = 0; i < std::min(want.size(), got.size()); ++i) {
      Diff(want[i], got[i], path + "[" + std::to_string(i) + "]", out);
    }
  } else if (want != got) {
    out.push_back(path + ": expected " + want.dump() + ", got " + got.dump());
  }
}

void CompareOrUpdate(const fs::path& expected_path, const json& got) {
  if (UpdateMode()) {
    fs::create_directories(expected_path.parent_path());
    std::ofstream(expected_path) << got.dump(2) << "\n";
    WARN("rewrote " << expected_path.string() << ": review it before committing");
    return;
  }
  REQUIRE(fs::exists(expected_path));
  std::ifstream in(expected_path);
  json want = json::parse(in);
  std::vector<std::string> diffs;
  Diff(want, got, "", diffs);
  std::string report;
  for (const auto& d : diffs)
    report += d + "\n";
  INFO("differences:\n" << report);
  CHECK(diffs.empty());
}

LoadResult LoadCase(const fs::path& dir) {
  std::vector<std::string> files;
  for (const auto& app : Lines(dir / "apps"))
    files.push_back((kTestdata / "apps" / app).string());
  files.push_back((dir / "config.yaml").string());
  return LoadPaths(files);
}

}  // namespace

TEST_CASE("golden: Istio task manifests translate to the reviewed Envoy resources") {
  int compared = 0;
  std::vector<fs::path> cases;
  for (const auto& e : fs::directory_iterator(kTestdata / "golden"))
    cases.push_back(e.path());
  std::sort(cases.begin(), cases.end());
  for (const auto& dir : cases) {
    LoadResult loaded = LoadCase(dir);
    INFO("case " << dir.filename().string());
    REQUIRE(loaded.errors.empty());
    Registry registry = Registry::Build(loaded.config);
    for (const auto& line : Lines(dir / "proxies")) {
      INFO("proxy " << line);
      auto proxy = ProxySpec::Parse(line);
      REQUIRE(proxy.has_value());
      Translation t = Translate(loaded.config, registry, *proxy);
      CHECK(t.warnings.empty());
      // What the translator serves a sidecar or gateway, the agent's config model must
      // accept. A proxyless gRPC node's API listeners are for gRPC's client, which Envoy
      // (and the agent) refuse over LDS; gRPC's own client checks those
      // (grpc_proxyless_test).
      if (proxy->kind != ProxySpec::Kind::kGrpc) {
        auto valid = sluice::config::ValidateSnapshot(
            sluice::config::Snapshot::FromResourceSet(t.resources));
        INFO((valid ? std::string("valid") : valid.error().message));
        CHECK(valid.has_value());
      }
      auto text = ResourcesToJson(t.resources);
      REQUIRE(text.has_value());
      CompareOrUpdate(dir / "expected" / ExpectedName(line), json::parse(*text));
      ++compared;
    }
    if (fs::exists(dir / "expected" / "registryz.json") || dir.filename() == "serviceentry") {
      CompareOrUpdate(dir / "expected" / "registryz.json", json::parse(registry.RegistryzJson()));
    }
  }
  CHECK(compared >= 10);
}

TEST_CASE("translation is deterministic: the same input gives byte-identical output") {
  LoadResult loaded = LoadCase(kTestdata / "golden" / "weighted-subsets");
  REQUIRE(loaded.ok());
  auto proxy = ProxySpec::Parse("sidecar:default");
  REQUIRE(proxy);
  auto a =
      ResourcesToJson(Translate(loaded.config, Registry::Build(loaded.config), *proxy).resources);
  auto b =
      ResourcesToJson(Translate(loaded.config, Registry::Build(loaded.config), *proxy).resources);
  REQUIRE(a);
  REQUIRE(b);
  // Cluster metadata is a protobuf Struct (a map): compare as JSON values.
  CHECK(json::parse(*a) == json::parse(*b));
}
