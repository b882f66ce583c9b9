// Kernel features and their fallbacks (issue 22). The probes must find what this kernel
// has; each fallback, forced by the load option, must behave as documented in
// docs/kernel-dataplane.md on this (new) kernel, which is how CI runs the code older
// kernels take: a refused connect fails with EPERM instead of ECONNREFUSED, the netns
// cookie read by the BPF probe equals SO_NETNS_COOKIE's and enrols pods that are then
// translated, and the splice (plain single-writer stores) keeps bytes in order. Last, the
// compiled objects are read instruction by instruction: every helper they call and every
// atomic they use must be in the matrix, at or below the kernel it promises.
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <map>
#include <string>

#include "lab.h"
#include "sluice/loader/kernel_features.h"
#include "sluice/loader/netns_cookie.h"
#include "sluice/loader/system.h"

using namespace sluice;
using namespace sluice::test;

namespace {

// Puts the process-wide cookie source back for the tests that follow.
struct RestoreCookieSource {
  ~RestoreCookieSource() { SetNetnsCookieSource(NetnsCookieSource::kAuto); }
};

ServiceSpec L7(const std::string& name, std::vector<std::string> vips, uint16_t port) {
  ServiceSpec s = Service(name, std::move(vips), port, {});
  s.redirect_to_proxy = true;
  return s;
}

bool ProbeCgroupsLeft() {
  auto root = FindCgroup2Mount();
  REQUIRE(root);
  for (const auto& e : std::filesystem::directory_iterator(*root))
    if (e.path().filename().string().starts_with("sluice-netns-probe-"))
      return true;
  return false;
}

}  // namespace

TEST_CASE("fallback names parse, 'all' means every feature, unknown names are refused") {
  auto none = ParseKernelFallbacks("");
  REQUIRE(none);
  CHECK(none->empty());
  auto two = ParseKernelFallbacks("set_retval,netns_cookie");
  REQUIRE(two);
  CHECK(two->size() == 2);
  auto all = ParseKernelFallbacks("all");
  REQUIRE(all);
  CHECK(all->size() == std::size(kKernelFeatures));
  auto bad = ParseKernelFallbacks("set_retval,atomics");
  REQUIRE_FALSE(bad);
  CHECK_THAT(bad.error().message, Catch::Contains("atomics") && Catch::Contains("netns_cookie"));
}

TEST_CASE("the probes find this kernel's features, and a forced fallback reports off") {
  auto found = ProbeKernelFeatures();
  INFO((found ? found->Summary() : found.error().message));
  REQUIRE(found);
  // The build machine runs 6.x: both optional features are there.
  CHECK(found->set_retval);
  CHECK(found->netns_cookie);
  CHECK(found->forced.empty());

  auto forced = ProbeKernelFeatures({KernelFeature::kSetRetval, KernelFeature::kNetnsCookie});
  REQUIRE(forced);
  CHECK_FALSE(forced->set_retval);
  CHECK_FALSE(forced->netns_cookie);
  CHECK_THAT(forced->Summary(), Catch::Contains("set_retval=off(forced)") &&
                                    Catch::Contains("netns_cookie=off(forced)"));
}

TEST_CASE("set_retval fallback: a refused connect fails with EPERM, at once, still counted") {
  Lab lab;
  lab.ForceFallbacks({KernelFeature::kSetRetval});
  lab.AddPod("client", 10);
  lab.AddPod("a", 2);
  lab.Enrol("client", /*proxy_port=*/0, /*registry_only=*/true);
  CHECK_FALSE(lab.dp().features().set_retval);
  CHECK(lab.dp().features().netns_cookie);
  Apply(lab, Service("empty", {"10.96.211.61"}, 80, {Cluster("empty", 1, LbPolicy::kRandom, {})}));
  Apply(lab, L7("needs-proxy", {"10.96.211.62"}, 80));
  auto before = lab.ReadCounters();
  auto start = std::chrono::steady_clock::now();
  auto empty = lab.Connect("client", "10.96.211.61:80", 5);
  auto no_proxy = lab.Connect("client", "10.96.211.62:80", 3);
  auto unknown = lab.Connect("client", "10.211.0.2:9999", 3);  // REGISTRY_ONLY
  auto took = std::chrono::steady_clock::now() - start;
  INFO(empty.dump() << no_proxy.dump() << unknown.dump());
  CHECK(Count(empty, "errors", "EPERM") == 5);
  CHECK(Count(no_proxy, "errors", "EPERM") == 3);
  CHECK(Count(unknown, "errors", "EPERM") == 3);
  CHECK(took < std::chrono::seconds(3));  // refused, not a hang into a SYN timeout
  auto after = lab.ReadCounters();
  CHECK(Delta(before, after, SLUICE_CNT_NO_BACKEND) == 5);
  CHECK(Delta(before, after, SLUICE_CNT_NO_PROXY) == 3);
  CHECK(Delta(before, after, SLUICE_CNT_REGISTRY_DENIED) == 3);
}

TEST_CASE("with set_retval (this kernel) the same refusals are ECONNREFUSED") {
  Lab lab;
  lab.AddPod("client", 10);
  lab.Enrol("client");
  REQUIRE(lab.dp().features().set_retval);
  Apply(lab, Service("empty", {"10.96.211.63"}, 80, {Cluster("empty", 1, LbPolicy::kRandom, {})}));
  auto r = lab.Connect("client", "10.96.211.63:80", 5);
  INFO(r.dump());
  CHECK(Count(r, "errors", "ECONNREFUSED") == 5);
}

TEST_CASE("the BPF probe reads the same netns cookie as SO_NETNS_COOKIE, and cleans up") {
  Lab lab;
  lab.AddPod("p", 5);
  for (const std::string& path :
       {std::string("/proc/self/ns/net"), "/run/netns/" + lab.pod("p").netns}) {
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    auto by_sockopt = NetnsCookieBySockopt(fd, path);
    auto by_bpf = NetnsCookieByBpfProbe(fd, path);
    close(fd);
    INFO(path << ": " << (by_sockopt ? "" : by_sockopt.error().message)
              << (by_bpf ? "" : by_bpf.error().message));
    REQUIRE(by_sockopt);
    REQUIRE(by_bpf);
    CHECK(*by_bpf == *by_sockopt);
    CHECK(*by_bpf != 0);
  }
  auto here = CurrentNetnsCookie();
  REQUIRE(here);
  auto host = NetnsCookieByBpfProbe(-1, "current");
  REQUIRE(host);
  CHECK(*host == *here);
  CHECK_FALSE(ProbeCgroupsLeft());
}

TEST_CASE("netns_cookie fallback: pods enrolled by the probe's cookie are translated") {
  RestoreCookieSource restore;
  Lab lab;
  lab.ForceFallbacks({KernelFeature::kNetnsCookie});
  lab.AddPod("client", 10);
  lab.AddPod("a", 2);
  lab.Serve("a", {"10.211.0.2:8080", "[fd11::2]:8080"}, "a");
  lab.Enrol("client");  // opens the data plane first, so the cookie comes from the probe
  CHECK_FALSE(lab.dp().features().netns_cookie);
  CHECK(GetNetnsCookieSource() == NetnsCookieSource::kBpfProbe);
  Apply(lab, Service("web", {"10.96.211.64", "fd96::64"}, 80,
                     {Cluster("web", 1, LbPolicy::kRoundRobin,
                              {Ep("10.211.0.2:8080"), Ep("[fd11::2]:8080")})}));
  auto before = lab.ReadCounters();
  auto v4 = lab.Connect("client", "10.96.211.64:80", 5, {"--peer"});
  auto v6 = lab.Connect("client", "[fd96::64]:80", 5, {"--peer"});
  INFO(v4.dump() << v6.dump());
  CHECK(Count(v4, "by_server", "a") == 5);
  CHECK(Count(v6, "by_server", "a") == 5);
  CHECK(v4["peer_mismatch"] == 0);
  CHECK(Delta(before, lab.ReadCounters(), SLUICE_CNT_TRANSLATED) == 10);
  // The key is the cookie itself, whichever way it was read.
  int fd = open(("/run/netns/" + lab.pod("client").netns).c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  auto by_sockopt = NetnsCookieBySockopt(fd, "client");
  close(fd);
  REQUIRE(by_sockopt);
  auto enrolled = lab.dp().Enrolled();
  REQUIRE(enrolled);
  CHECK(enrolled->contains(*by_sockopt));
  CHECK_FALSE(ProbeCgroupsLeft());
}

TEST_CASE("every fallback forced: redirect, SO_ORIGINAL_DST and the splice keep bytes in order") {
  RestoreCookieSource restore;
  Lab lab;
  lab.ForceFallbacks({std::begin(kKernelFeatures), std::end(kKernelFeatures)});
  lab.AddPod("client", 10);
  lab.Serve("client", {"127.0.0.1:15001", "[::1]:15001"}, "proxy", {"--orig-dst"}, true);
  lab.Enrol("client", 15001);
  Apply(lab, L7("echo", {"10.96.211.65", "fd96::65"}, 7000));
  auto before = lab.ReadCounters();
  auto v4 = lab.Connect("client", "10.96.211.65:7000", 20, {"--echo", "200000"});
  auto v6 = lab.Connect("client", "[fd96::65]:7000", 20, {"--echo", "200000"});
  INFO(v4.dump() << v6.dump());
  CHECK(v4["ok"] == 20);
  CHECK(v4["echo_mismatch"] == 0);
  CHECK(v6["ok"] == 20);
  CHECK(v6["echo_mismatch"] == 0);
  auto after = lab.ReadCounters();
  CHECK(Delta(before, after, SLUICE_CNT_ORIG_DST) == 40);  // the 4-byte dst_port read
  CHECK(Delta(before, after, SLUICE_CNT_SPLICED) == 80);
  auto greet = lab.Connect("client", "10.96.211.65:7000", 3);
  INFO(greet.dump());
  CHECK(Count(greet, "by_server", "proxy 10.96.211.65:7000") == 3);
}

namespace {

// Helpers the data plane's objects may call, with the first kernel that offers each to
// the program types that call it (see docs/kernel-dataplane.md). Optional ones are
// behind a probe and a read-only switch.
struct HelperUse {
  const char* min_kernel;
  bool optional;
};
const std::map<int, HelperUse> kHelpers = {
    {BPF_FUNC_map_lookup_elem, {"3.19", false}},  {BPF_FUNC_map_update_elem, {"3.19", false}},
    {BPF_FUNC_map_delete_elem, {"3.19", false}},  {BPF_FUNC_get_prandom_u32, {"4.1", false}},
    {BPF_FUNC_skb_load_bytes, {"4.5", false}},    {BPF_FUNC_sock_ops_cb_flags_set, {"4.16", false}},
    {BPF_FUNC_sock_hash_update, {"4.18", false}}, {BPF_FUNC_msg_redirect_hash, {"4.18", false}},
    {BPF_FUNC_spin_lock, {"5.1", false}},         {BPF_FUNC_spin_unlock, {"5.1", false}},
    {BPF_FUNC_sk_storage_get, {"5.10", false}},   {BPF_FUNC_get_netns_cookie, {"5.7", false}},
    {BPF_FUNC_ringbuf_reserve, {"5.8", false}},   {BPF_FUNC_ringbuf_submit, {"5.8", false}},
    {BPF_FUNC_sk_assign, {"5.9", false}},         {BPF_FUNC_sk_release, {"5.9", false}},
    {BPF_FUNC_set_retval, {"5.18", true}},
};

}  // namespace

TEST_CASE("the compiled objects call only matrix helpers and use no atomic beyond add") {
  for (const char* name : {"sluice_sock_connect", "sluice_sockops", "sluice_pod_tc",
                           "sluice_pod_inbound", "sluice_netns_probe"}) {
    const std::string path = std::string(SLUICE_BPF_OBJECT_DIR) + "/" + name + ".bpf.o";
    bpf_object* obj = bpf_object__open_file(path.c_str(), nullptr);
    INFO(path);
    REQUIRE(obj);
    bpf_program* prog;
    bpf_object__for_each_program(prog, obj) {
      const std::string pname = bpf_program__name(prog);
      const bpf_insn* insn = bpf_program__insns(prog);
      for (size_t i = 0; i < bpf_program__insn_cnt(prog); i++) {
        INFO(pname << " insn " << i);
        const bpf_insn& in = insn[i];
        if (in.code == (BPF_JMP | BPF_CALL) && in.src_reg == 0) {
          auto it = kHelpers.find(in.imm);
          INFO("helper #" << in.imm << " is not in the kernel matrix");
          REQUIRE(it != kHelpers.end());
          if (it->second.optional)
            CHECK((pname == "sluice_connect4" || pname == "sluice_connect6"));
        }
        if (BPF_CLASS(in.code) == BPF_STX && BPF_MODE(in.code) == BPF_ATOMIC) {
          // Only the plain add (BPF_XADD, every kernel); OR/AND/XOR/fetch need 5.12.
          CHECK(in.imm == BPF_ADD);
        }
      }
    }
    bpf_object__close(obj);
  }
}
