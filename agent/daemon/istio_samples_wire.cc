// Istio's metric samples as the L7 process sends them to the agent (istio_samples_wire.h).
#include "istio_samples_wire.h"

#include <mutex>
#include <nlohmann/json.hpp>
#include <set>

namespace sluice::agent {

namespace telemetry = proxy::telemetry;

namespace {

// Label names live as long as the process: Sample::labels holds views of them. Istio's
// label set is fixed, so a handful of names; a peer sending more is refused.
Result<std::string_view> InternLabelName(const std::string& name) {
  static std::mutex mu;
  static auto* names = new std::set<std::string, std::less<>>;  // never freed
  std::lock_guard lock(mu);
  if (auto it = names->find(name); it != names->end())
    return std::string_view(*it);
  if (names->size() >= 256)
    return Fail("more than 256 distinct label names");
  return std::string_view(*names->insert(name).first);
}

nlohmann::json HistJson(const telemetry::Sample::Hist& h) {
  return {{"buckets", h.buckets}, {"count", h.count}, {"sum", h.sum}};
}

Result<void> HistFrom(const nlohmann::json& j, telemetry::Sample::Hist* h) {
  if (!j.is_object() || !j.contains("buckets") || !j["buckets"].is_array() ||
      j["buckets"].size() != h->buckets.size())
    return Fail("not a histogram of " + std::to_string(h->buckets.size()) + " buckets");
  try {
    for (std::size_t i = 0; i < h->buckets.size(); ++i)
      h->buckets[i] = j["buckets"][i].get<uint64_t>();
    h->count = j.value("count", uint64_t{0});
    h->sum = j.value("sum", uint64_t{0});
  } catch (const nlohmann::json::exception& e) {
    return Fail(e.what());
  }
  return {};
}

}  // namespace

std::string EncodeIstioSamples(const std::vector<telemetry::Sample>& samples) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& s : samples) {
    nlohmann::json o;
    nlohmann::json labels = nlohmann::json::array();
    for (const auto& [n, v] : s.labels)
      labels.push_back({n, v});
    o["labels"] = std::move(labels);
    o["tcp"] = s.tcp;
    auto num = [&](const char* name, uint64_t v) {
      if (v != 0)
        o[name] = v;
    };
    num("requests", s.requests);
    auto hist = [&](const char* name, const telemetry::Sample::Hist& h) {
      if (h.count != 0)
        o[name] = HistJson(h);
    };
    hist("duration_ms", s.duration_ms);
    hist("request_bytes", s.request_bytes);
    hist("response_bytes", s.response_bytes);
    num("tcp_opened", s.tcp_opened);
    num("tcp_closed", s.tcp_closed);
    num("tcp_sent", s.tcp_sent);
    num("tcp_received", s.tcp_received);
    out.push_back(std::move(o));
  }
  return out.dump();
}

Result<std::vector<telemetry::Sample>> DecodeIstioSamples(std::string_view json) {
  auto j = nlohmann::json::parse(json, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_array())
    return Fail("Istio samples from the L7 process: not a JSON array");
  std::vector<telemetry::Sample> out;
  out.reserve(j.size());
  for (std::size_t i = 0; i < j.size(); ++i) {
    const auto& o = j[i];
    const std::string where = "Istio sample " + std::to_string(i);
    if (!o.is_object() || !o.contains("labels") || !o["labels"].is_array())
      return Fail(where + ": no labels");
    telemetry::Sample s;
    for (const auto& l : o["labels"]) {
      if (!l.is_array() || l.size() != 2 || !l[0].is_string() || !l[1].is_string())
        return Fail(where + ": a label is not [name, value]");
      auto name = InternLabelName(l[0].get<std::string>());
      if (!name)
        return Fail(where + ": " + name.error().message);
      s.labels.emplace_back(*name, l[1].get<std::string>());
    }
    s.tcp = o.value("tcp", false);
    try {
      s.requests = o.value("requests", uint64_t{0});
      s.tcp_opened = o.value("tcp_opened", uint64_t{0});
      s.tcp_closed = o.value("tcp_closed", uint64_t{0});
      s.tcp_sent = o.value("tcp_sent", uint64_t{0});
      s.tcp_received = o.value("tcp_received", uint64_t{0});
    } catch (const nlohmann::json::exception& e) {
      return Fail(where + ": " + e.what());
    }
    for (auto [name, h] :
         {std::pair{"duration_ms", &s.duration_ms}, std::pair{"request_bytes", &s.request_bytes},
          std::pair{"response_bytes", &s.response_bytes}}) {
      if (!o.contains(name))
        continue;
      if (auto r = HistFrom(o[name], h); !r)
        return Fail(where + ": " + name + ": " + r.error().message);
    }
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace sluice::agent
