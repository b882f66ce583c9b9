// What the translator tests share: Istio YAML loaded and validated as `xds serve` loads a
// file, and translated for one proxy (a ProxySpec such as "sidecar:app=x@default").
#pragma once

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "sluice/istio/loader.h"
#include "sluice/istio/registry.h"
#include "sluice/istio/translator.h"

namespace sluice::istio::test {

inline std::string ReadFile(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

inline LoadResult Load(const std::string& text) {
  LoadResult r;
  LoadText(text, "t.yaml", r);
  Validate(r);
  return r;
}

inline Translation TranslateFor(const LoadResult& r, const std::string& proxy) {
  auto spec = ProxySpec::Parse(proxy);
  REQUIRE(spec.has_value());
  return Translate(r.config, Registry::Build(r.config), *spec);
}

}  // namespace sluice::istio::test
