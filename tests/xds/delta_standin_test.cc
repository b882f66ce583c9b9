// Sluice's Delta ADS client against a stand-in server written in Python from Envoy's
// xds_protocol.rst, independent of Sluice's own server (delta_standin.py): nonces and
// ACKs by nonce, system_version_info, removed_resources, an xdstp:// name (opaque), a type
// never asked for, a per-resource NACK, and initial_resource_versions on reconnect. The
// script checks every request; this test checks what reached the store.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "scripted_ads.h"

using namespace sluice::testing;

TEST_CASE("delta client against a stand-in that follows Envoy's Delta rules") {
  const std::string xdstp = "xdstp://sluice.test/envoy.config.cluster.v3.Cluster/ns/b";
  auto dir = std::filesystem::temp_directory_path() /
             ("sluice-delta-standin-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string result = (dir / "result").string();
  const std::string cmd = std::string(SLUICE_PYTHON) + " " + SLUICE_DELTA_STANDIN + " " +
                          SLUICE_XDS_DESCRIPTORS + " " + result;
  FILE* p = ::popen(cmd.c_str(), "r");
  REQUIRE(p);
  char line[256] = {};
  const bool got_port = std::fgets(line, sizeof line, p) != nullptr;
  int port = 0;
  if (got_port)
    std::sscanf(line, "PORT %d", &port);
  if (port == 0) {
    ::pclose(p);
    std::filesystem::remove_all(dir);
    FAIL("the stand-in did not start: " << line);
  }

  sluice::config::ConfigStore store;
  sx::AdsClientOptions o;
  o.server = "127.0.0.1:" + std::to_string(port);
  sx::NodeIdentity id;
  id.ips = {"10.0.0.7"};
  id.pod_name = "app-1";
  o.node = sx::BuildNode(id);
  o.protocol = sx::XdsProtocol::kDelta;
  o.backoff.initial = 50ms;
  o.backoff.max = 200ms;
  sx::AdsClient client(o, store);
  REQUIRE(client.Start());
  const bool done = WaitFor([&] { return std::filesystem::exists(result); }, 60s);
  client.Stop();
  std::string verdict;
  if (done) {
    std::ifstream in(result);
    std::getline(in, verdict);
  }
  ::pclose(p);
  std::filesystem::remove_all(dir);
  REQUIRE(done);
  CHECK(verdict == "OK");

  auto s = store.Current();
  // "a" was removed, "bad" refused; the xdstp cluster, its endpoints (by the same opaque
  // name) and the listener naming it are in force, and so is "c" from the NACKed response.
  CHECK(s->clusters.size() == 2);
  CHECK(s->clusters.contains(xdstp));
  CHECK(s->clusters.contains("c"));
  CHECK(s->endpoints.size() == 1);
  CHECK(s->endpoints.contains(xdstp));
  CHECK(s->listeners.contains("tcp"));
  // The response that applied "c" was partly refused: its system_version_info is in the
  // snapshot, but only the later, wholly accepted one counts as ACKed.
  CHECK(s->versions.at(std::string(sx::kClusterType)) == "sv-3");
  auto st = client.Status();
  CHECK(st.protocol == "delta");
  CHECK(st.streams >= 2);
  const auto& cds = st.types.at(std::string(sx::kClusterType));
  CHECK(cds.refused.contains("bad"));
  CHECK(cds.removed == 1);
  CHECK(cds.acked_version == "sv-4");
}
