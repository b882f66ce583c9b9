// How the loader learns a network namespace's cookie, the key the connect hooks look up
// in sluice_enrolled (bpf_get_netns_cookie()).
//
// Linux 5.14+ answers getsockopt(SO_NETNS_COOKIE) on any socket made inside the
// namespace. Older kernels do not; there a BPF program (bpf/netns_probe.bpf.c) attached
// to a private cgroup reads the cookie of a socket a short-lived child process opens in
// the namespace. Both give the same value, so the maps and programs do not care which
// one ran. The data plane picks the source from its feature probe (or the forced
// netns_cookie fallback); NetnsCookie() and CurrentNetnsCookie() in system.h use it.
#pragma once

#include <cstdint>
#include <string>

#include "sluice/common/result.h"

namespace sluice {

enum class NetnsCookieSource : uint8_t {
  kAuto,      // SO_NETNS_COOKIE, or the BPF probe where the kernel lacks it (default)
  kSockopt,   // SO_NETNS_COOKIE only
  kBpfProbe,  // the BPF probe only (the forced fallback)
};

// Process-wide; Dataplane::Open sets it from its feature probe.
void SetNetnsCookieSource(NetnsCookieSource source);
[[nodiscard]] NetnsCookieSource GetNetnsCookieSource();

// The cookie of the network namespace open at `netns_fd` (a /proc/PID/ns/net or
// /run/netns/NAME file), by the current source. `what` names it in errors.
[[nodiscard]] Result<uint64_t> NetnsCookieOfFd(int netns_fd, const std::string& what);

// The two sources, for tests that compare them.
[[nodiscard]] Result<uint64_t> NetnsCookieBySockopt(int netns_fd, const std::string& what);
[[nodiscard]] Result<uint64_t> NetnsCookieByBpfProbe(int netns_fd, const std::string& what);

}  // namespace sluice
