// The corpus of real istiod-fed Envoy config dumps (tests/conformance/istiod, provenance
// in its README) read as Sluice reads config files and printed as its debug views print
// it: every file loads, every v3 resource parses (only the v2 API and the legacy Istio
// extensions of 2019–2021 are named as unparsed), every resource prints as valid JSON
// that parses back to the same message, and `sluicectl proxy-config --file` prints
// istioctl's own rows for the dumps istio/istio has golden output for (the third-party
// oracle in tests/conformance/istiod/oracle).
#include <fcntl.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/message_differencer.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "envoy/config/listener/v3/listener.pb.h"
#include "sluice/envoy/descriptor_pool.h"
#include "sluice/proxy/config.h"
#include "sluice/proxy/config_json.h"
#include "sluicectl_run.h"

namespace fs = std::filesystem;

namespace {

const fs::path kCorpus = SLUICE_CORPUS;

std::string ReadFile(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

using sluice::testing::Run;
using sluice::testing::Sluicectl;

using Rows = std::vector<std::vector<std::string>>;

std::string Trim(const std::string& s) {
  auto b = s.find_first_not_of(' ');
  if (b == std::string::npos)
    return "";
  return s.substr(b, s.find_last_not_of(' ') - b + 1);
}

// The tables in `text` (blocks separated by blank lines) whose header starts with
// `cols[0]`: each row cut at the offsets of `cols` in its header line, cells trimmed.
// istioctl and Sluice both pad with tabwriter, each with its own widths and padding.
Rows Table(const std::string& text, const std::vector<std::string>& cols) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    lines.push_back(line);
  Rows rows;
  for (std::size_t i = 0; i < lines.size(); ++i) {
    if (!lines[i].starts_with(cols[0]))
      continue;
    std::vector<std::size_t> at;
    std::size_t from = 0;
    for (const auto& c : cols) {
      std::size_t p = lines[i].find(c, from);
      if (p == std::string::npos)
        break;
      at.push_back(p);
      from = p + c.size();
    }
    if (at.size() != cols.size())
      continue;
    for (std::size_t j = i + 1; j < lines.size() && !Trim(lines[j]).empty(); ++j) {
      std::vector<std::string> cells;
      for (std::size_t k = 0; k < at.size(); ++k) {
        if (at[k] >= lines[j].size()) {
          cells.push_back("");
          continue;
        }
        std::size_t end = k + 1 < at.size() ? at[k + 1] : std::string::npos;
        cells.push_back(Trim(lines[j].substr(at[k], end == std::string::npos ? end : end - at[k])));
      }
      rows.push_back(cells);
    }
  }
  return rows;
}

// Each corpus file: what it holds that parses, and how many resources are named as not
// parsing (v2 API resources, legacy Istio extensions).
struct Expect {
  const char* file;
  std::size_t listeners, routes, clusters, endpoints, unparsed;
};

// Types the corpus may name as unparsed: the xDS v2 API (Envoy removed it in 1.18) and
// Istio extensions of 2019–2021 that istiod no longer sends (Mixer, the authn filter,
// the stats and metadata-exchange Wasm configs of that era).
bool LegacyReason(const std::string& why) {
  for (const char* t : {"envoy.api.v2.", "istio.mixer.v1.", "stats.PluginConfig",
                        "envoy.tcp.metadataexchange.config.MetadataExchange",
                        "istio.envoy.config.filter.http.authn.v2alpha1.FilterConfig"}) {
    if (why.find(t) != std::string::npos)
      return true;
  }
  return false;
}

const std::vector<Expect> kExpect = {
#include "istiod_corpus_expect.inc"
};

}  // namespace

TEST_CASE("every corpus file loads, every current resource parses, the rest are named") {
  std::set<std::string> seen;
  for (const auto& e : fs::directory_iterator(kCorpus)) {
    if (e.path().extension() == ".json")
      seen.insert(e.path().filename().string());
  }
  std::set<std::string> expected;
  for (const auto& x : kExpect)
    expected.insert(x.file);
  CHECK(seen == expected);  // a new corpus file gets its line in the table

  for (const auto& x : kExpect) {
    INFO(x.file);
    auto loaded = sluice::proxy::LoadConfigJson(ReadFile(kCorpus / x.file));
    REQUIRE(loaded);
    CHECK(loaded->config_dump);
    CHECK(loaded->resources.listeners.size() == x.listeners);
    CHECK(loaded->resources.routes.size() == x.routes);
    CHECK(loaded->resources.clusters.size() == x.clusters);
    CHECK(loaded->resources.endpoints.size() == x.endpoints);
    CHECK(loaded->unparsed.size() == x.unparsed);
    for (const auto& why : loaded->unparsed) {
      INFO(why);
      CHECK(LegacyReason(why));
    }
  }
}

TEST_CASE("every corpus resource prints as valid JSON that parses back to itself") {
  for (const auto& x : kExpect) {
    INFO(x.file);
    auto loaded = sluice::proxy::LoadConfigJson(ReadFile(kCorpus / x.file));
    REQUIRE(loaded);
    auto check = [&](const auto& map) {
      for (const auto& [name, r] : map) {
        INFO(name);
        for (bool snake : {false, true}) {
          google::protobuf::util::JsonPrintOptions o;
          o.preserve_proto_field_names = snake;  // ads-dump prints snake, /config_dump camel
          std::vector<std::string> unknown;
          const std::string text = sluice::descriptors::MessageToJson(r, o, &unknown);
          CHECK(unknown.empty());  // everything the corpus holds is linked
          auto j = nlohmann::json::parse(text, nullptr, false);
          REQUIRE(!j.is_discarded());
          REQUIRE(j.is_object());
          std::remove_cvref_t<decltype(r)> back;
          REQUIRE(google::protobuf::util::JsonStringToMessage(text, &back).ok());
          CHECK(google::protobuf::util::MessageDifferencer::Equals(back, r));
        }
      }
    };
    check(loaded->resources.listeners);
    check(loaded->resources.routes);
    check(loaded->resources.clusters);
    check(loaded->resources.endpoints);
  }
}

TEST_CASE("the types istiod sends are all linked into the descriptor pool") {
  CHECK(sluice::descriptors::LinkAllTypes() == sluice::descriptors::CompiledProtoFiles().size());
  for (const char* t : {
           "udpa.type.v1.TypedStruct",
           "xds.type.v3.TypedStruct",
           "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
           "envoy.extensions.filters.http.cors.v3.Cors",
           "envoy.extensions.filters.http.set_filter_state.v3.Config",
           "envoy.extensions.filters.network.set_filter_state.v3.Config",
           "envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig",
           "envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport",
           "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer",
           "envoy.extensions.matching.common_inputs.network.v3.DestinationPortInput",
           "envoy.extensions.matching.common_inputs.network.v3.ApplicationProtocolInput",
           "xds.type.matcher.v3.IPMatcher",
           "xds.type.matcher.v3.Matcher",
           "envoy.extensions.filters.http.wasm.v3.Wasm",
           "envoy.extensions.filters.network.wasm.v3.Wasm",
           "envoy.extensions.filters.http.rbac.v3.RBAC",
           "envoy.extensions.filters.network.rbac.v3.RBAC",
           "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
           "envoy.extensions.filters.network.ext_authz.v3.ExtAuthz",
           "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
           "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
           "envoy.extensions.filters.http.stateful_session.v3.StatefulSession",
           "envoy.extensions.filters.http.grpc_web.v3.GrpcWeb",
           "envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig",
           "envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig",
           "envoy.extensions.transport_sockets.tls.v3.Secret",
           "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
           "envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol",
           "envoy.extensions.filters.listener.original_src.v3.OriginalSrc",
           "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
           "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
           "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
           "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
           "envoy.config.trace.v3.ZipkinConfig",
           "envoy.admin.v3.ConfigDump",
           "envoy.admin.v3.ListenersConfigDump",
           "envoy.admin.v3.EcdsConfigDump",
           "istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig",
       }) {
    INFO(t);
    CHECK(sluice::descriptors::IsLinkedType(std::string("type.googleapis.com/") + t));
  }
}

TEST_CASE("an Any of a type that is not linked still prints as valid JSON") {
  ::envoy::config::listener::v3::Listener l;
  l.set_name("with-unknown");
  auto* f = l.add_filter_chains()->add_filters();
  f->set_name("example.unknown");
  f->mutable_typed_config()->set_type_url("type.googleapis.com/example.v1.NotLinked");
  f->mutable_typed_config()->set_value("abc");
  google::protobuf::util::JsonPrintOptions o;
  std::string plain;
  // protobuf alone cannot print it: this is what made /config_dump invalid.
  CHECK_FALSE(google::protobuf::util::MessageToJsonString(l, &plain, o).ok());
  std::vector<std::string> unknown;
  const std::string text = sluice::descriptors::MessageToJson(l, o, &unknown);
  auto j = nlohmann::json::parse(text, nullptr, false);
  REQUIRE(!j.is_discarded());
  CHECK(j["name"] == "with-unknown");
  CHECK(j["filterChains"][0]["filters"][0]["typedConfig"] ==
        nlohmann::json({{"@type", "type.googleapis.com/example.v1.NotLinked"}, {"value", "YWJj"}}));
  CHECK(unknown == std::vector<std::string>{"type.googleapis.com/example.v1.NotLinked"});
}

TEST_CASE("ParseResourceSetJson reads a config_dump and names the first resource it cannot read") {
  auto rs = sluice::proxy::ParseResourceSetJson(ReadFile(kCorpus / "waypoint-1.21-httpbin.json"));
  REQUIRE(rs);
  CHECK(rs->listeners.contains("main_internal"));
  CHECK(rs->clusters.contains("inbound-vip|8000|http|httpbin.default.svc.cluster.local"));
  auto old =
      sluice::proxy::ParseResourceSetJson(ReadFile(kCorpus / "gateway-1.3-ingressgateway.json"));
  REQUIRE_FALSE(old);
  CHECK_THAT(old.error().message, Catch::Contains("envoy.api.v2."));
}

// ---------------------------------------------------------------- the istioctl oracle

TEST_CASE("proxy-config routes --file prints istioctl's rows for istio's gateway dumps") {
  for (const char* name :
       {"gateway-routes-istio-gateway", "gateway-routes-k8s-gateway", "gateway-routes-empty"}) {
    INFO(name);
    Run r = Sluicectl(
        {"proxy-config", "routes", "--file", (kCorpus / (std::string(name) + ".json")).string()});
    INFO(r.err);
    REQUIRE(r.rc == 0);
    const std::vector<std::string> cols{"NAME", "VHOST NAME", "DOMAINS", "MATCH",
                                        "VIRTUAL SERVICE"};
    const Rows want =
        Table(ReadFile(kCorpus / "oracle" / (std::string(name) + ".routes.txt")), cols);
    CHECK(want.size() >= 2);
    CHECK(Table(r.out, cols) == want);
  }
}

TEST_CASE("proxy-config endpoint --file shows istioctl's endpoints, statuses and clusters") {
  Run r =
      Sluicectl({"proxy-config", "endpoint", "--file", (kCorpus / "endpoints-2022.json").string()});
  INFO(r.err);
  REQUIRE(r.rc == 0);
  // istioctl's summary view: NAME STATUS LOCALITY CLUSTER; Sluice's (as `istioctl pc
  // endpoint`): ENDPOINT STATUS OUTLIER CHECK CLUSTER. The same hosts, statuses, clusters.
  auto triples = [](const Rows& rows) {
    std::multiset<std::tuple<std::string, std::string, std::string>> out;
    for (const auto& row : rows)
      out.emplace(row.front(), row[1], row.back());
    return out;
  };
  auto want = triples(Table(ReadFile(kCorpus / "oracle" / "endpoints-2022.endpoints.txt"),
                            {"NAME", "STATUS", "LOCALITY", "CLUSTER"}));
  auto got = triples(Table(r.out, {"ENDPOINT", "STATUS", "OUTLIER CHECK", "CLUSTER"}));
  CHECK(want.size() > 10);
  CHECK(got == want);
}

TEST_CASE("proxy-config listener and cluster --file on a waypoint match istioctl's summary") {
  const std::string file = (kCorpus / "waypoint-1.21-httpbin.json").string();
  const std::string oracle = ReadFile(kCorpus / "oracle" / "waypoint-1.21-httpbin.all.txt");
  // istioctl's `all` view adds a NAME column ("listener/NAME", "cluster/NAME") and, for
  // a cluster whose name is no subset key, repeats that prefixed name as SERVICE FQDN.
  auto without_name = [](Rows rows, const std::string& prefix) {
    std::multiset<std::vector<std::string>> out;
    for (auto& row : rows) {
      row.erase(row.begin());
      if (row.front().starts_with(prefix))
        row.front() = row.front().substr(prefix.size());
      out.insert(row);
    }
    return out;
  };
  auto as_set = [](const Rows& rows) {
    return std::multiset<std::vector<std::string>>(rows.begin(), rows.end());
  };

  Run l = Sluicectl({"proxy-config", "listener", "--file", file});
  INFO(l.out << l.err);
  REQUIRE(l.rc == 0);
  const auto want_l = without_name(
      Table(oracle, {"NAME", "ADDRESSES", "PORT", "MATCH", "DESTINATION"}), "listener/");
  CHECK(want_l.size() == 5);
  CHECK(as_set(Table(l.out, {"ADDRESSES", "PORT", "MATCH", "DESTINATION"})) == want_l);

  Run c = Sluicectl({"proxy-config", "cluster", "--file", file});
  INFO(c.out << c.err);
  REQUIRE(c.rc == 0);
  const auto want_c = without_name(Table(oracle, {"NAME", "SERVICE FQDN", "PORT", "SUBSET",
                                                  "DIRECTION", "TYPE", "DESTINATION RULE"}),
                                   "cluster/");
  CHECK(want_c.size() == 3);
  CHECK(as_set(Table(c.out, {"SERVICE FQDN", "PORT", "SUBSET", "DIRECTION", "TYPE",
                             "DESTINATION RULE"})) == want_c);
}

TEST_CASE("proxy-config listener --file on a real 1.18 sidecar shows its filter-chain matches") {
  Run r = Sluicectl({"proxy-config", "listener", "--file",
                     (kCorpus / "sidecar-1.18-productpage-listeners.json").string()});
  INFO(r.err);
  REQUIRE(r.rc == 0);
  const Rows rows = Table(r.out, {"ADDRESSES", "PORT", "MATCH", "DESTINATION"});
  REQUIRE(rows.size() > 27);
  std::set<std::string> matches;
  for (const auto& row : rows)
    matches.insert(row[2]);
  // virtualInbound's chains as istioctl words them.
  CHECK(matches.contains("ALL"));
  CHECK(std::any_of(matches.begin(), matches.end(),
                    [](const std::string& m) { return m.starts_with("Trans: tls"); }));
  CHECK(std::any_of(matches.begin(), matches.end(),
                    [](const std::string& m) { return m.starts_with("Trans: raw_buffer"); }));
}
