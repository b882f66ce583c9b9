// Mangled input never crashes the local control plane: every golden manifest, mutated a
// few thousand ways (deterministically), loads with errors that name the file and document,
// and whatever is accepted translates to resources the agent's config model accepts.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "sluice/config/validate.h"
#include "sluice/istio/loader.h"
#include "sluice/istio/registry.h"
#include "sluice/istio/translator.h"

namespace fs = std::filesystem;
using namespace sluice::istio;

namespace {

std::string ReadFile(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string Mutate(std::string text, std::mt19937& rng) {
  static const std::string kChars = "{}[]:,-#'\"\n 0123456789abcxyz*&!|>%@`./\t";
  int edits = 1 + static_cast<int>(rng() % 3);
  for (int i = 0; i < edits && !text.empty(); ++i) {
    std::size_t pos = rng() % text.size();
    switch (rng() % 4) {
      case 0:
        text[pos] = kChars[rng() % kChars.size()];
        break;
      case 1:
        text.erase(pos, 1 + rng() % 8);
        break;
      case 2:
        text.insert(pos, 1, kChars[rng() % kChars.size()]);
        break;
      default: {  // duplicate a line elsewhere
        std::size_t a = text.rfind('\n', pos);
        a = a == std::string::npos ? 0 : a + 1;
        std::size_t b = text.find('\n', pos);
        std::string line = text.substr(a, b == std::string::npos ? std::string::npos : b - a + 1);
        text.insert(rng() % text.size(), line);
        break;
      }
    }
  }
  return text;
}

}  // namespace

TEST_CASE("mutated manifests: clear errors, no crash, valid output") {
  const fs::path golden = fs::path(SLUICE_ISTIO_TESTDATA) / "golden";
  // SLUICE_FUZZ_SEED / SLUICE_FUZZ_ROUNDS explore further by hand; CI uses the defaults.
  const char* seed_env = std::getenv("SLUICE_FUZZ_SEED");
  const char* rounds_env = std::getenv("SLUICE_FUZZ_ROUNDS");
  std::mt19937 rng(seed_env ? static_cast<unsigned>(std::atoi(seed_env)) : 20261124u);
  const int rounds = rounds_env ? std::atoi(rounds_env) : 150;
  int accepted = 0, rejected = 0;
  for (const auto& dir : fs::directory_iterator(golden)) {
    // The case's apps (Services, Deployments, Pods) are mangled along with its config.
    std::string base;
    std::ifstream apps(dir.path() / "apps");
    for (std::string app; std::getline(apps, app);) {
      if (!app.empty())
        base += ReadFile(golden.parent_path() / "apps" / app) + "\n---\n";
    }
    base += ReadFile(dir.path() / "config.yaml");
    for (int i = 0; i < rounds; ++i) {
      std::string text = Mutate(base, rng);
      LoadResult r;
      LoadText(text, "t.yaml", r);
      Validate(r);
      for (const auto& e : r.errors) {
        INFO("input:\n" << text);
        REQUIRE(e.starts_with("t.yaml: document "));
      }
      (r.ok() ? accepted : rejected)++;
      Registry registry = Registry::Build(r.config);
      for (const char* proxy :
           {"sidecar:default", "gateway:istio=egressgateway", "gateway:istio=ingressgateway"}) {
        auto t = Translate(r.config, registry, *ProxySpec::Parse(proxy));
        REQUIRE(ResourcesToJson(t.resources).has_value());
        auto valid = sluice::config::ValidateSnapshot(
            sluice::config::Snapshot::FromResourceSet(t.resources));
        INFO("input:\n" << text << "\nproxy " << proxy);
        CHECK((valid ? std::string() : valid.error().message) == "");
      }
    }
  }
  // The mutations exercise both paths.
  CHECK(accepted > 100);
  CHECK(rejected > 100);
}
