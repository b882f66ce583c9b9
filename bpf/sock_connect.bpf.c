// SPDX-License-Identifier: GPL-2.0
/* Connect-time service translation (cgroup/connect4, cgroup/connect6) and the matching
 * getpeername hooks. For a socket in an enrolled network namespace that connects to a
 * service frontend: pick a weighted cluster, pick an endpoint by the cluster's policy,
 * rewrite the destination, and remember the service address in socket storage so
 * getpeername reports what the application dialled. connect6 treats an IPv4-mapped
 * destination (::ffff:VIP, from a dual-stack socket) as the IPv4 frontend it is and
 * writes the IPv4 backend back mapped (sluice/addr.bpf.h).
 *
 * Minimum kernel: 5.8 (getpeername hooks, netns cookie in sock_addr). A refused connect
 * fails with ECONNREFUSED where the kernel has bpf_set_retval (5.18), else with EPERM
 * (the loader probes it and sets sluice_use_set_retval); see docs/kernel-dataplane.md.
 */
#include "vmlinux.h"

#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "sluice/addr.bpf.h"
#include "sluice/bpf_abi.h"
#include "sluice/lb.h"
#include "sluice/maps.bpf.h"

#define ECONNREFUSED 111
#define IPPROTO_TCP_ 6

/* Set by the loader before load from its probe of bpf_set_retval (or forced off). The
 * verifier knows read-only data, so with this false it never visits the helper call and
 * a kernel without the helper accepts the program. */
const volatile bool sluice_use_set_retval = false;

#define SOL_IP_ 0
#define SOL_IPV6_ 41
#define SO_ORIGINAL_DST_ 80 /* also IP6T_SO_ORIGINAL_DST at SOL_IPV6 */
#define AF_INET_ 2
#define AF_INET6_ 10
#define SLUICE_BPF_SOCK_DST_PORT_OFF 48 /* offsetof(struct bpf_sock, dst_port), UAPI */
_Static_assert(__builtin_offsetof(struct bpf_sock, dst_port) == SLUICE_BPF_SOCK_DST_PORT_OFF,
               "bpf_sock.dst_port moved");

/* Stores into the sock_addr context must be whole 32-bit writes; a barrier keeps the
 * compiler from splitting one into byte stores the verifier would refuse. */
#define SLUICE_CTX_STORE(field, value) \
  do {                                 \
    __u32 v_ = (value);                \
    asm volatile("" : "+r"(v_));       \
    (field) = v_;                      \
  } while (0)

enum sluice_verdict {
  SLUICE_PASS,      /* not ours: leave the connect alone */
  SLUICE_TRANSLATE, /* rewrite to *out */
  SLUICE_REDIRECT,  /* rewrite to the pod's proxy listener (in *out) */
  SLUICE_REFUSE,    /* fail the connect: ECONNREFUSED, or EPERM without set_retval */
};

/* Exact frontend first; then the port's catch-all (address all zero), which is how L7
 * listeners like "any address, port 80" reach the proxy. */
static __always_inline struct sluice_service* sluice_find_service(
    const struct sluice_frontend_key* fe) {
  struct sluice_service* svc = bpf_map_lookup_elem(&sluice_services, fe);
  if (svc)
    return svc;
  struct sluice_frontend_key any = *fe;
  __builtin_memset(&any.ip, 0, sizeof(any.ip));
  return bpf_map_lookup_elem(&sluice_services, &any);
}

/* Destinations a REGISTRY_ONLY pod may still reach: its own loopback and DNS. */
static __always_inline bool sluice_always_allowed(const struct sluice_frontend_key* fe) {
  if (fe->port == 53)
    return true;
  if (fe->family == SLUICE_FAMILY_IPV4)
    return fe->ip.v4[0] == 127;
  for (int i = 0; i < 15; i++)
    if (fe->ip.v6[i])
      return false;
  return fe->ip.v6[15] == 1;
}

static __always_inline void sluice_proxy_address(const struct sluice_frontend_key* fe,
                                                 const struct sluice_enrolment* enr,
                                                 struct sluice_endpoint* out) {
  __builtin_memset(out, 0, sizeof(*out));
  out->family = fe->family;
  out->port = enr->proxy_port;
  if (fe->family == SLUICE_FAMILY_IPV4) {
    out->ip.v4[0] = 127;
    out->ip.v4[3] = 1;
  } else {
    out->ip.v6[15] = 1;
  }
}

/* The client identity for consistent hashing: the socket's bound source address if any,
 * else the pod's address recorded at enrolment. */
static __always_inline __u32 sluice_client_hash(const struct bpf_sock* sk,
                                                const struct sluice_enrolment* enr, __u8 family) {
  union sluice_ip ip = {};
  if (family == SLUICE_FAMILY_IPV4) {
    __u32 src = sk ? sk->src_ip4 : 0;
    if (src)
      __builtin_memcpy(ip.v4, &src, 4);
    else
      __builtin_memcpy(ip.v4, enr->ip4, 4);
  } else {
    __u32 src[4] = {};
    if (sk) {
      src[0] = sk->src_ip6[0];
      src[1] = sk->src_ip6[1];
      src[2] = sk->src_ip6[2];
      src[3] = sk->src_ip6[3];
    }
    if (src[0] | src[1] | src[2] | src[3])
      __builtin_memcpy(ip.v6, src, 16);
    else
      __builtin_memcpy(ip.v6, enr->ip6, 16);
  }
  return sluice_hash_ip(&ip, family);
}

static __always_inline __u64 sluice_active(const struct sluice_backend* be) {
  struct sluice_endpoint_stats* st = bpf_map_lookup_elem(&sluice_endpoint_stats, &be->ep);
  return st ? st->active : 0;
}

/* The translation itself, over plain values: frontend in, backend out. */
static __always_inline enum sluice_verdict sluice_translate(const struct sluice_frontend_key* fe,
                                                            const struct bpf_sock* sk,
                                                            const struct sluice_enrolment* enr,
                                                            struct sluice_endpoint* out,
                                                            bool* count) {
  struct sluice_service* svc = sluice_find_service(fe);
  if (!svc) {
    if ((enr->flags & SLUICE_ENROL_REGISTRY_ONLY) && !sluice_always_allowed(fe)) {
      sluice_count(SLUICE_CNT_REGISTRY_DENIED);
      return SLUICE_REFUSE;
    }
    sluice_count(SLUICE_CNT_NO_SERVICE);
    return SLUICE_PASS;
  }

  __u32 r_cluster = bpf_get_prandom_u32();
  __u32 r_slot = bpf_get_prandom_u32();
  struct sluice_backend_key bk = {};
  __u32 cluster, total, rr = 0;
  __u16 n;
  __u8 policy, flags;

  /* One consistent view of the service: revision and its cluster table together. */
  bpf_spin_lock(&svc->lock);
  flags = svc->flags;
  total = svc->total_weight;
  cluster = sluice_pick_cluster(svc->clusters, svc->n_clusters, total ? r_cluster % total : 0);
  if (cluster >= SLUICE_MAX_CLUSTERS)
    cluster = 0;
  bk.service_id = svc->id;
  bk.revision = svc->revision;
  n = svc->clusters[cluster].n_backends;
  policy = svc->clusters[cluster].lb_policy;
  if (policy == SLUICE_LB_ROUND_ROBIN)
    rr = svc->rr_cursor[cluster]++;
  bpf_spin_unlock(&svc->lock);

  if (flags & SLUICE_SVC_REDIRECT) {
    if (!enr->proxy_port) {
      sluice_count(SLUICE_CNT_NO_PROXY);
      return SLUICE_REFUSE;
    }
    sluice_proxy_address(fe, enr, out);
    return SLUICE_REDIRECT;
  }
  if (n == 0) {
    sluice_count(SLUICE_CNT_NO_BACKEND);
    return SLUICE_REFUSE;
  }
  bk.cluster = cluster;

  struct sluice_backend* be = 0;
  *count = policy == SLUICE_LB_LEAST_REQUEST;
  switch (policy) {
    case SLUICE_LB_ROUND_ROBIN:
      bk.slot = rr % n;
      break;
    case SLUICE_LB_LEAST_REQUEST:
      if (n > 1) {
        __u32 a, b;
        sluice_pick_two(r_slot, n, &a, &b);
        bk.slot = a;
        struct sluice_backend* ba = bpf_map_lookup_elem(&sluice_backends, &bk);
        bk.slot = b;
        struct sluice_backend* bb = bpf_map_lookup_elem(&sluice_backends, &bk);
        if (ba && bb)
          be = sluice_active(bb) < sluice_active(ba) ? bb : ba;
        else
          be = ba ? ba : bb;
      } else {
        bk.slot = 0;
      }
      break;
    case SLUICE_LB_RING_HASH:
    case SLUICE_LB_MAGLEV: {
      struct sluice_cluster_key ck = {
          .service_id = bk.service_id, .revision = bk.revision, .cluster = bk.cluster};
      struct sluice_maglev_table* t = bpf_map_lookup_elem(&sluice_maglev, &ck);
      __u32 h = sluice_client_hash(sk, enr, fe->family) % SLUICE_MAGLEV_SIZE;
      /* The compiler proves h is in range and drops a plain check; the verifier cannot
       * follow its multiply-shift modulo. Hide h from the optimizer, then bound it. */
      asm volatile("" : "+r"(h));
      bk.slot = (t && h < SLUICE_MAGLEV_SIZE) ? t->slot[h] : 0;
      break;
    }
    default: /* RANDOM */
      bk.slot = r_slot % n;
      break;
  }
  if (!be)
    be = bpf_map_lookup_elem(&sluice_backends, &bk);
  if (!be || be->ep.family != fe->family) {
    sluice_count(SLUICE_CNT_BACKEND_MISSING);
    return SLUICE_REFUSE;
  }
  *out = be->ep;
  return SLUICE_TRANSLATE;
}

static __always_inline void sluice_remember(struct bpf_sock_addr* ctx,
                                            const struct sluice_frontend_key* fe,
                                            const struct sluice_endpoint* be, __u8 flags,
                                            __u64 cookie) {
  struct bpf_sock* sk = ctx->sk;
  if (!sk)
    return;
  struct sluice_sock_origin* o =
      bpf_sk_storage_get(&sluice_sock_origin, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
  if (!o) {
    sluice_count(SLUICE_CNT_NO_SOCK_STORAGE);
    return;
  }
  o->vip = fe->ip;
  o->vip_port = fe->port;
  o->family = fe->family;
  o->flags = flags;
  o->backend = *be;
  o->netns_cookie = cookie;
}

/* Shared tail of connect4/connect6: enrolment check, translate, verdict. Returns the
 * hook's return value; fills *out when the destination must be rewritten. */
static __always_inline int sluice_connect(struct bpf_sock_addr* ctx,
                                          const struct sluice_frontend_key* fe,
                                          struct sluice_endpoint* out, bool* rewrite) {
  *rewrite = false;
  __u64 cookie = bpf_get_netns_cookie(ctx);
  struct sluice_enrolment* enr = bpf_map_lookup_elem(&sluice_enrolled, &cookie);
  if (!enr) {
    sluice_count(SLUICE_CNT_NOT_ENROLLED);
    return 1;
  }
  /* The agent's own upstream connections (its proxy, inside a pod's namespace) carry
   * the bypass mark and are never translated or redirected again. Checked after the
   * enrolment lookup, so the node's other sockets pay nothing for it. */
  struct sluice_settings* set = sluice_get_settings();
  if (set && set->bypass_mark && ctx->sk && ctx->sk->mark == set->bypass_mark) {
    sluice_count(SLUICE_CNT_BYPASS);
    return 1;
  }
  bool count = false;
  switch (sluice_translate(fe, ctx->sk, enr, out, &count)) {
    case SLUICE_PASS:
      return 1;
    case SLUICE_REFUSE:
      /* Returning 0 alone makes connect() fail with EPERM. */
      if (sluice_use_set_retval)
        bpf_set_retval(-ECONNREFUSED);
      return 0;
    case SLUICE_REDIRECT:
      sluice_remember(ctx, fe, out, SLUICE_SOCK_TRANSLATED | SLUICE_SOCK_REDIRECTED, cookie);
      sluice_count(SLUICE_CNT_REDIRECTED);
      *rewrite = true;
      return 1;
    case SLUICE_TRANSLATE:
      break;
  }
  /* Only LEAST_REQUEST reads live counts: other policies skip that sockops bookkeeping.
   * TCP metrics (Istio's, from the kernel path) are decided here, once per connection. */
  __u8 flags = SLUICE_SOCK_TRANSLATED | (count ? SLUICE_SOCK_COUNT : 0);
  if (set && (set->flags & SLUICE_SET_TCP_METRICS) && fe->protocol == IPPROTO_TCP_)
    flags |= SLUICE_SOCK_METRICS;
  sluice_remember(ctx, fe, out, flags, cookie);
  sluice_count(SLUICE_CNT_TRANSLATED);
  if (set && (set->flags & SLUICE_SET_CONNLOG)) {
    struct sluice_conn_event* ev = bpf_ringbuf_reserve(&sluice_connlog, sizeof(*ev), 0);
    if (ev) {
      ev->netns_cookie = cookie;
      ev->frontend = *fe;
      ev->backend = *out;
      bpf_ringbuf_submit(ev, 0);
    }
  }
  *rewrite = true;
  return 1;
}

SEC("cgroup/connect4")
int sluice_connect4(struct bpf_sock_addr* ctx) {
  struct sluice_frontend_key fe = {};
  struct sluice_endpoint be = {};
  bool rewrite;
  __u32 dst = ctx->user_ip4;

  __builtin_memcpy(fe.ip.v4, &dst, 4);
  fe.port = bpf_ntohs((__u16)ctx->user_port);
  fe.family = SLUICE_FAMILY_IPV4;
  fe.protocol = ctx->protocol;
  int ret = sluice_connect(ctx, &fe, &be, &rewrite);
  if (rewrite) {
    __builtin_memcpy(&dst, be.ip.v4, 4);
    SLUICE_CTX_STORE(ctx->user_ip4, dst);
    SLUICE_CTX_STORE(ctx->user_port, bpf_htons(be.port));
  }
  return ret;
}

SEC("cgroup/connect6")
int sluice_connect6(struct bpf_sock_addr* ctx) {
  struct sluice_frontend_key fe = {};
  struct sluice_endpoint be = {};
  bool rewrite;
  __u32 dst[4];

  dst[0] = ctx->user_ip6[0];
  dst[1] = ctx->user_ip6[1];
  dst[2] = ctx->user_ip6[2];
  dst[3] = ctx->user_ip6[3];
  /* ::ffff:VIP is the IPv4 frontend VIP: its backend (or the proxy's 127.0.0.1) is IPv4
   * and goes back mapped. A real IPv6 destination stays IPv6 and only ever gets IPv6
   * backends (sluice_translate refuses a family mismatch). */
  const bool mapped = sluice_v4_mapped(dst);
  if (mapped) {
    __builtin_memcpy(fe.ip.v4, &dst[3], 4);
    fe.family = SLUICE_FAMILY_IPV4;
  } else {
    __builtin_memcpy(fe.ip.v6, dst, 16);
    fe.family = SLUICE_FAMILY_IPV6;
  }
  fe.port = bpf_ntohs((__u16)ctx->user_port);
  fe.protocol = ctx->protocol;
  int ret = sluice_connect(ctx, &fe, &be, &rewrite);
  if (rewrite) {
    if (mapped)
      sluice_map_v4(dst, be.ip.v4);
    else
      __builtin_memcpy(dst, be.ip.v6, 16);
    SLUICE_CTX_STORE(ctx->user_ip6[0], dst[0]);
    SLUICE_CTX_STORE(ctx->user_ip6[1], dst[1]);
    SLUICE_CTX_STORE(ctx->user_ip6[2], dst[2]);
    SLUICE_CTX_STORE(ctx->user_ip6[3], dst[3]);
    SLUICE_CTX_STORE(ctx->user_port, bpf_htons(be.port));
  }
  return ret;
}

/* The origin of a translated socket whose frontend family is `family`, or of either
 * family when `either` (an AF_INET6 socket remembers an IPv4 frontend it dialled mapped). */
static __always_inline struct sluice_sock_origin* sluice_origin(struct bpf_sock_addr* ctx,
                                                                __u8 family, bool either) {
  struct bpf_sock* sk = ctx->sk;
  if (!sk)
    return 0;
  struct sluice_sock_origin* o = bpf_sk_storage_get(&sluice_sock_origin, sk, 0, 0);
  if (!o || !(o->flags & SLUICE_SOCK_TRANSLATED) || (o->family != family && !either))
    return 0;
  sluice_count(SLUICE_CNT_PEERNAME_RESTORED);
  return o;
}

/* A translated socket reports the service address it dialled, as with kube-proxy. */
SEC("cgroup/getpeername4")
int sluice_getpeername4(struct bpf_sock_addr* ctx) {
  struct sluice_sock_origin* o = sluice_origin(ctx, SLUICE_FAMILY_IPV4, false);
  if (o) {
    __u32 vip;
    __builtin_memcpy(&vip, o->vip.v4, 4);
    SLUICE_CTX_STORE(ctx->user_ip4, vip);
    SLUICE_CTX_STORE(ctx->user_port, bpf_htons(o->vip_port));
  }
  return 1;
}

/* A dual-stack socket that dialled ::ffff:VIP remembers the IPv4 frontend: it reads the
 * mapped VIP back. */
SEC("cgroup/getpeername6")
int sluice_getpeername6(struct bpf_sock_addr* ctx) {
  struct sluice_sock_origin* o = sluice_origin(ctx, SLUICE_FAMILY_IPV6, true);
  if (o) {
    __u32 vip[4];
    if (o->family == SLUICE_FAMILY_IPV4)
      sluice_map_v4(vip, o->vip.v4);
    else
      __builtin_memcpy(vip, o->vip.v6, 16);
    SLUICE_CTX_STORE(ctx->user_ip6[0], vip[0]);
    SLUICE_CTX_STORE(ctx->user_ip6[1], vip[1]);
    SLUICE_CTX_STORE(ctx->user_ip6[2], vip[2]);
    SLUICE_CTX_STORE(ctx->user_ip6[3], vip[3]);
    SLUICE_CTX_STORE(ctx->user_port, bpf_htons(o->vip_port));
  }
  return 1;
}

/* bpf_sock.dst_port (network order) as a 4-byte load, the one form every kernel accepts
 * and answers alike: before 5.18 the field is a __u32 that only allows 4-byte loads; since
 * then it is a __be16 followed by padding, and a 4-byte load at its offset is kept for old
 * programs. Both give the port zero-extended. A plain `sk->dst_port` compiles to a 2-byte
 * load against today's vmlinux.h. The offset is fixed UAPI (no CO-RE relocation). */
static __always_inline __u16 sluice_sk_dst_port(const struct bpf_sock* sk) {
  __u32 port = *(const volatile __u32*)((const char*)sk + SLUICE_BPF_SOCK_DST_PORT_OFF);
  return bpf_ntohs((__u16)port);
}

/* The in-pod proxy asks its accepted socket where the application meant to go, with
 * getsockopt(SOL_IP or SOL_IPV6, SO_ORIGINAL_DST) as it would behind iptables REDIRECT.
 * The connect hook and sockops recorded it under the application's side of the
 * connection, which is this socket's (remote, local). A connection between mapped
 * addresses is IPv4 here as there (sluice_tuple_addrs6), and so is its answer. */
SEC("cgroup/getsockopt")
int sluice_getsockopt(struct bpf_sockopt* ctx) {
  if (ctx->optname != SO_ORIGINAL_DST_ || (ctx->level != SOL_IP_ && ctx->level != SOL_IPV6_))
    return 1;
  struct bpf_sock* sk = ctx->sk;
  if (!sk)
    return 1;
  struct sluice_tuple key = {};
  key.local_port = sluice_sk_dst_port(sk);
  key.remote_port = (__u16)sk->src_port;
  if (sk->family == AF_INET_) {
    __u32 a = sk->dst_ip4, b = sk->src_ip4;
    __builtin_memcpy(key.local.v4, &a, 4);
    __builtin_memcpy(key.remote.v4, &b, 4);
    key.family = SLUICE_FAMILY_IPV4;
  } else {
    __u32 a[4], b[4];
    a[0] = sk->dst_ip6[0];
    a[1] = sk->dst_ip6[1];
    a[2] = sk->dst_ip6[2];
    a[3] = sk->dst_ip6[3];
    b[0] = sk->src_ip6[0];
    b[1] = sk->src_ip6[1];
    b[2] = sk->src_ip6[2];
    b[3] = sk->src_ip6[3];
    sluice_tuple_addrs6(&key, a, b);
  }
  struct sluice_orig_dst* od = bpf_map_lookup_elem(&sluice_orig_dst, &key);
  if (!od)
    return 1; /* not a redirected connection: the kernel's own answer stands */

  void* data = ctx->optval;
  void* end = ctx->optval_end;
  if (od->dialled.family == SLUICE_FAMILY_IPV4) {
    struct sockaddr_in* sin = data;
    if ((void*)(sin + 1) > end)
      return 1;
    __builtin_memset(sin, 0, sizeof(*sin));
    sin->sin_family = AF_INET_;
    sin->sin_port = bpf_htons(od->dialled.port);
    __builtin_memcpy(&sin->sin_addr.s_addr, od->dialled.ip.v4, 4);
    ctx->optlen = sizeof(*sin);
  } else {
    struct sockaddr_in6* sin6 = data;
    if ((void*)(sin6 + 1) > end)
      return 1;
    __builtin_memset(sin6, 0, sizeof(*sin6));
    sin6->sin6_family = AF_INET6_;
    sin6->sin6_port = bpf_htons(od->dialled.port);
    __builtin_memcpy(&sin6->sin6_addr, od->dialled.ip.v6, 16);
    ctx->optlen = sizeof(*sin6);
  }
  ctx->retval = 0;
  sluice_count(SLUICE_CNT_ORIG_DST);
  return 1;
}

char LICENSE[] SEC("license") = "GPL";
