// SPDX-License-Identifier: GPL-2.0
/* The inbound side of an enrolled pod, without iptables: an sk_lookup program attached to
 * the pod's network namespace. When a TCP connection arrives for (pod address, port) and
 * sluice_inbound holds a socket for it — the pod's inbound proxy listener, which the
 * agent opened inside the pod — the kernel hands the connection to that socket instead of
 * the application's. The packet is not rewritten: the accepted socket's local address is
 * still the pod address and port the client dialled, so the proxy reads the original
 * destination with getsockname (no conntrack, no SO_ORIGINAL_DST).
 *
 * Connections from a loopback source are left alone: the proxy's own upstream connection
 * to the application (bound to 127.0.0.6, istiod's upstream_bind_config) must reach the
 * application, not the proxy again. So is every port the agent did not register: only
 * ports whose inbound configuration needs the proxy pay for the hop.
 *
 * Before steering, the port's L4 policy (sluice_inbound_policy, the network rbac filters
 * that need only addresses and ports) decides: a refused connection gets SK_DROP, so the
 * kernel finds no socket and answers the SYN with a RST (the client's connect fails with
 * ECONNREFUSED), counted as policy_denied. The loopback exemption above comes first: the
 * proxy's own upstream connection has passed the policy already.
 *
 * A steered port whose socket is missing — the agent's sockets close when it exits or
 * crashes, and a pod's inbound socket may never have opened — is decided by the port's
 * guard (sluice_inbound_guard), which the agent leaves in place: a port whose policy only
 * the proxy enforces is refused (SK_DROP, counted inbound_unserved) until a proxy takes it
 * again; any other port reaches the application, as it would without the inbound side.
 */
#include "vmlinux.h"

#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "sluice/bpf_abi.h"
#include "sluice/maps.bpf.h"

#define IPPROTO_TCP_ 6
#define AF_INET_ 2
#define AF_INET6_ 10

/* Fills the key from the connection's local (pod) address; false for a loopback source. */
static __always_inline bool sluice_inbound_key(struct bpf_sk_lookup* ctx,
                                               struct sluice_frontend_key* key) {
  key->port = (__u16)ctx->local_port; /* host byte order in this context */
  key->protocol = IPPROTO_TCP_;
  if (ctx->family == AF_INET_) {
    __u32 remote = ctx->remote_ip4;
    if (((__u8*)&remote)[0] == 127)
      return false;
    __u32 local = ctx->local_ip4;
    __builtin_memcpy(key->ip.v4, &local, 4);
    key->family = SLUICE_FAMILY_IPV4;
    return true;
  }
  if (ctx->family == AF_INET6_) {
    __u32 r0 = ctx->remote_ip6[0], r1 = ctx->remote_ip6[1], r2 = ctx->remote_ip6[2],
          r3 = ctx->remote_ip6[3];
    if (r0 == 0 && r1 == 0 && r2 == 0 && r3 == bpf_htonl(1))
      return false;
    __u32 l[4] = {ctx->local_ip6[0], ctx->local_ip6[1], ctx->local_ip6[2], ctx->local_ip6[3]};
    __builtin_memcpy(key->ip.v6, l, 16);
    key->family = SLUICE_FAMILY_IPV6;
    return true;
  }
  return false;
}

/* True when the port's policy refuses the connection's source. */
static __always_inline bool sluice_policy_denies(struct bpf_sk_lookup* ctx,
                                                 const struct sluice_frontend_key* key) {
  struct sluice_inbound_policy* pol = bpf_map_lookup_elem(&sluice_inbound_policy, key);
  if (!pol)
    return false;
  struct sluice_policy_key pk = {};
  pk.family = key->family;
  pk.gen = pol->gen;
  pk.port = key->port;
  __builtin_memcpy(pk.pod, key->ip.v6, 16);
  if (key->family == SLUICE_FAMILY_IPV4) {
    __u32 remote = ctx->remote_ip4;
    __builtin_memcpy(pk.src, &remote, 4);
    pk.prefixlen = SLUICE_POLICY_FIXED_BITS + 32;
  } else {
    __u32 r[4] = {ctx->remote_ip6[0], ctx->remote_ip6[1], ctx->remote_ip6[2], ctx->remote_ip6[3]};
    __builtin_memcpy(pk.src, r, 16);
    pk.prefixlen = SLUICE_POLICY_FIXED_BITS + 128;
  }
  /* Envoy runs every filter of the chain; the connection survives only if none refuses. */
  for (__u32 i = 0; i < SLUICE_POLICY_MAX_RULES; i++) {
    if (i >= pol->n_rules)
      break;
    __u8 kind = pol->kind[i];
    pk.rule = (__u8)i;
    bool held = bpf_map_lookup_elem(&sluice_policy_prefixes, &pk) != NULL;
    if (kind == SLUICE_POLICY_DENY && held)
      return true;
    if (kind == SLUICE_POLICY_ALLOW && !held)
      return true;
  }
  return false;
}

/* True when the port's guard (its own, else port 0's) refuses a connection no inbound
 * socket took. */
static __always_inline bool sluice_guard_closed(struct sluice_frontend_key* key) {
  __u8* guard = bpf_map_lookup_elem(&sluice_inbound_guard, key);
  if (!guard) {
    key->port = 0;
    guard = bpf_map_lookup_elem(&sluice_inbound_guard, key);
  }
  return guard && *guard == SLUICE_GUARD_CLOSED;
}

SEC("sk_lookup")
int sluice_inbound_lookup(struct bpf_sk_lookup* ctx) {
  if (ctx->protocol != IPPROTO_TCP_)
    return SK_PASS;
  struct sluice_frontend_key key = {};
  if (!sluice_inbound_key(ctx, &key))
    return SK_PASS;
  if (sluice_policy_denies(ctx, &key)) {
    sluice_count(SLUICE_CNT_POLICY_DENIED);
    return SK_DROP;
  }
  const __u16 port = key.port;
  struct bpf_sock* sk = bpf_map_lookup_elem(&sluice_inbound, &key);
  if (!sk) {
    /* Port 0 stands for every port not registered on its own: a pod whose passthrough
     * chains (ports no Service declares) carry a policy sends them all to its proxy. */
    key.port = 0;
    sk = bpf_map_lookup_elem(&sluice_inbound, &key);
  }
  if (sk) {
    long err = bpf_sk_assign(ctx, sk, 0);
    bpf_sk_release(sk);
    if (err == 0) {
      sluice_count(SLUICE_CNT_INBOUND_STEERED);
      return SK_PASS;
    }
  }
  /* No inbound socket took it: none is registered (the port is not steered, or the agent
   * is restarting and its sockets went with it), or the one registered is closing. The
   * port's guard, left by the agent, says whether the application may have it. */
  key.port = port;
  if (sluice_guard_closed(&key)) {
    sluice_count(SLUICE_CNT_INBOUND_UNSERVED);
    return SK_DROP;
  }
  return SK_PASS;
}

char LICENSE[] SEC("license") = "GPL";
