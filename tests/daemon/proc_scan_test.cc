// Pods that ran before the agent: found by their kubelet cgroup, their namespace named as
// the runtime names it, their IP checked inside it (issue 19).
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "proc_scan.h"
#include "sluice/loader/system.h"

namespace fs = std::filesystem;
using sluice::agent::PodUidFromCgroupLine;

TEST_CASE("a pod's UID is read from its kubelet cgroup, with either cgroup driver") {
  // systemd driver (kubeadm's default), a containerd container scope inside the pod slice
  CHECK(PodUidFromCgroupLine("/kubepods.slice/kubepods-besteffort.slice/"
                             "kubepods-besteffort-pod0f5e3a52_9c1b_4d8e_a0b7_2c4f1e6d8a90.slice/"
                             "cri-containerd-4b1d9e3f.scope") ==
        "0f5e3a52-9c1b-4d8e-a0b7-2c4f1e6d8a90");
  // guaranteed pods sit right under kubepods.slice
  CHECK(PodUidFromCgroupLine("/kubepods.slice/kubepods-pod1a2b3c4d_0000_1111_2222_333344445555"
                             ".slice/crio-77.scope") == "1a2b3c4d-0000-1111-2222-333344445555");
  // cgroupfs driver
  CHECK(PodUidFromCgroupLine("/kubepods/burstable/pod6c3a1f0e-8d2b-4e5f-9a7c-1b2d3e4f5a6b/"
                             "9f8e7d6c5b4a") == "6c3a1f0e-8d2b-4e5f-9a7c-1b2d3e4f5a6b");
  // not pods: the node's own services, a slice without a UID, a name that merely contains "pod"
  CHECK_FALSE(PodUidFromCgroupLine("/system.slice/containerd.service"));
  CHECK_FALSE(PodUidFromCgroupLine("/kubepods.slice/kubepods-besteffort.slice"));
  CHECK_FALSE(PodUidFromCgroupLine("/user.slice/podman-1234.scope"));
  CHECK_FALSE(PodUidFromCgroupLine("/"));
}

TEST_CASE("a running pod is found by /proc scan, named by its runtime netns, IP checked") {
  REQUIRE(geteuid() == 0);
  const std::string tag = "sl-scan-" + std::to_string(getpid());
  const std::string ns = tag;
  const std::string uid = "5e0c7a1b-2d3f-4a5b-8c6d-7e8f9a0b1c2d";
  auto host = sluice::FindCgroup2Mount();
  REQUIRE(host);
  // The kubelet's layout (systemd driver) under a private test cgroup.
  const fs::path base = fs::path(*host) / (tag + ".slice");
  const fs::path pod = base / "kubepods-besteffort-pod5e0c7a1b_2d3f_4a5b_8c6d_7e8f9a0b1c2d.slice";
  pid_t child = -1;
  struct Cleanup {
    std::string ns;
    fs::path base, pod;
    pid_t* child;
    ~Cleanup() {
      if (*child > 0) {
        kill(*child, SIGKILL);
        waitpid(*child, nullptr, 0);
      }
      rmdir(pod.c_str());
      rmdir(base.c_str());
      (void)!std::system(("ip netns del " + ns + " 2>/dev/null").c_str());
    }
  } cleanup{ns, base, pod, &child};
  REQUIRE(std::system(("ip netns add " + ns).c_str()) == 0);
  REQUIRE(std::system(("ip -n " + ns + " link add d0 type veth peer name d1 && ip -n " + ns +
                       " addr add 10.250.7.9/32 dev d0 && ip -n " + ns + " link set d0 up")
                          .c_str()) == 0);
  fs::create_directories(pod);
  child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    std::ofstream(pod / "cgroup.procs") << getpid() << "\n";
    execlp("ip", "ip", "netns", "exec", ns.c_str(), "sleep", "60", nullptr);
    _exit(127);
  }
  // ip netns exec joins the namespace, then becomes sleep.
  std::map<std::string, sluice::agent::FoundPod> found;
  for (int i = 0; i < 100; ++i) {
    auto scan = sluice::agent::ScanPods();
    REQUIRE(scan);
    found = *scan;
    if (found.contains(uid) && found[uid].netns == "/var/run/netns/" + ns)
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  REQUIRE(found.contains(uid));
  CHECK(found[uid].pid == child);
  CHECK(found[uid].netns == "/var/run/netns/" + ns);  // the runtime's name, not /proc/PID
  auto has = sluice::agent::NetnsHasAddress(found[uid].netns, "10.250.7.9");
  REQUIRE(has);
  CHECK(*has);
  auto other = sluice::agent::NetnsHasAddress(found[uid].netns, "10.250.7.10");
  REQUIRE(other);
  CHECK_FALSE(*other);
  // Without the runtime's directory the process's own handle names it.
  auto bare = sluice::agent::ScanPods("/proc", "/nonexistent");
  REQUIRE(bare);
  REQUIRE(bare->contains(uid));
  CHECK(bare->at(uid).netns.rfind("/proc/", 0) == 0);
}
