/* IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) in the socket hooks (BPF side only).
 *
 * A program that opens one dual-stack AF_INET6 socket for every destination (gRPC's C
 * core, Java) reaches an IPv4 service as ::ffff:VIP: cgroup/connect6 sees the mapped
 * address, and sockops, sk_msg and getsockopt later see that socket's addresses mapped.
 * The traffic itself is IPv4. Sluice keeps one view of such a connection, the IPv4 one:
 * its frontend, backend, remembered origin and tuples are IPv4, so a mapped socket meets
 * the same services, endpoint counts, metrics and orig-dst records as an AF_INET socket,
 * and the in-pod proxy's accepted socket (AF_INET, on 127.0.0.1) finds it by the same key.
 * Only what the application reads back (its rewritten destination, getpeername) is
 * mapped again.
 */
#ifndef SLUICE_ADDR_BPF_H
#define SLUICE_ADDR_BPF_H

#include "vmlinux.h"

#include <bpf/bpf_endian.h>

#include "sluice/bpf_abi.h"

/* An address as four network-order words, the form the contexts' *_ip6[] fields give. */
static __always_inline bool sluice_v4_mapped(const __u32 a[4]) {
  return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0x0000ffff);
}

/* ::ffff:v4 into four network-order words. */
static __always_inline void sluice_map_v4(__u32 out[4], const __u8 v4[4]) {
  out[0] = 0;
  out[1] = 0;
  out[2] = bpf_htonl(0x0000ffff);
  __builtin_memcpy(&out[3], v4, 4);
}

/* A tuple from an AF_INET6 socket's (local, remote) addresses: IPv4 when both are mapped
 * (the connection is IPv4), else IPv6. Ports and padding are the caller's; *t is zeroed
 * by the caller. */
static __always_inline void sluice_tuple_addrs6(struct sluice_tuple* t, const __u32 l[4],
                                                const __u32 r[4]) {
  if (sluice_v4_mapped(l) && sluice_v4_mapped(r)) {
    __builtin_memcpy(t->local.v4, &l[3], 4);
    __builtin_memcpy(t->remote.v4, &r[3], 4);
    t->family = SLUICE_FAMILY_IPV4;
    return;
  }
  __builtin_memcpy(t->local.v6, l, 16);
  __builtin_memcpy(t->remote.v6, r, 16);
  t->family = SLUICE_FAMILY_IPV6;
}

#endif /* SLUICE_ADDR_BPF_H */
