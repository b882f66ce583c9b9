// SPDX-License-Identifier: GPL-2.0
/* Names a network namespace by its cookie where the kernel has no SO_NETNS_COOKIE
 * (before 5.14). The loader attaches this program to a private, empty cgroup, moves a
 * short-lived child process into that cgroup and the namespace, and lets it open one
 * socket: the program records bpf_get_netns_cookie() of that socket, which is the key
 * the connect hooks look up in sluice_enrolled. Its map is private (not pinned).
 *
 * Minimum kernel: 5.7 (bpf_get_netns_cookie in cgroup/sock_create programs). Before
 * 5.12 a namespace's cookie is made on first use; this read makes it, and every later
 * read, here or in the connect hooks, returns the same value.
 */
#include "vmlinux.h"

#include <bpf/bpf_helpers.h>

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, __u64);
} sluice_probe_cookie SEC(".maps");

SEC("cgroup/sock_create")
int sluice_netns_probe(struct bpf_sock* ctx) {
  __u32 zero = 0;
  __u64 cookie = bpf_get_netns_cookie(ctx);
  bpf_map_update_elem(&sluice_probe_cookie, &zero, &cookie, BPF_ANY);
  return 1; /* never refuse the socket */
}

char LICENSE[] SEC("license") = "GPL";
