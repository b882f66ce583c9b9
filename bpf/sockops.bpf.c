// SPDX-License-Identifier: GPL-2.0
/* Connection bookkeeping (sockops) and same-node splicing (sk_msg).
 *
 * - Sockets translated while SLUICE_SET_TCP_METRICS was on (SLUICE_SOCK_METRICS) count
 *   in sluice_tcp_metrics per (client pod, service address, endpoint): opened when
 *   established; closed, and the bytes both ways, when they reach TCP_CLOSE. The agent
 *   serves them as Istio's istio_tcp_* series (reporter source).
 * - Sockets translated to a LEAST_REQUEST cluster (marked SLUICE_SOCK_COUNT by the
 *   connect hook in sluice_sock_origin) count up once per endpoint when established and
 *   down once when they reach TCP_CLOSE: the live counts LEAST_REQUEST reads. Other
 *   policies need no counts and skip this work.
 * - Sockets redirected to the pod's in-pod proxy record what they dialled under their
 *   own tuple in sluice_orig_dst, for the proxy's getsockopt(SO_ORIGINAL_DST).
 * - With SLUICE_SET_SPLICE on, both ends of an app <-> in-pod proxy connection go into
 *   the sluice_splice sockhash and the sk_msg program hands each sendmsg straight to the
 *   peer's receive queue, skipping the TCP/IP stack on the loopback hop.
 *
 * Ordering rule for the splice: bytes of one direction must never take both paths, or
 * the receiver could read a spliced message before an earlier one still queued in TCP.
 * The proxy's socket joins the sockhash before it can send anything, so its direction
 * is always spliced. The application's socket may send before the proxy's side is in
 * the sockhash; its first message then marks the flow no_splice and the whole direction
 * stays on TCP.
 *
 * Minimum kernel 5.10 (bpf_sock_ops.sk). No atomic but the 64-bit add (BPF_XADD, in
 * every kernel with BPF): the splice marks are single-writer bytes, see sluice_orig_dst.
 */
#include "vmlinux.h"

#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "sluice/addr.bpf.h"
#include "sluice/bpf_abi.h"
#include "sluice/maps.bpf.h"

#define TCP_FIN_WAIT1_ 4
#define TCP_FIN_WAIT2_ 5
#define TCP_CLOSE_ 7
#define TCP_CLOSE_WAIT_ 8
#define TCP_LAST_ACK_ 9
#define TCP_CLOSING_ 11
#define IPPROTO_TCP_ 6
#define AF_INET_ 2
#define SK_PASS_ 1
#define BPF_F_INGRESS_ 1

/* Single-byte accesses the compiler must neither merge with neighbours nor cache. */
#define READ_ONCE_U8(x) (*(volatile __u8*)&(x))
#define WRITE_ONCE_U8(x, v) (*(volatile __u8*)&(x) = (v))

/* This socket's own view (local, remote) from sockops context. A dual-stack socket's
 * IPv4 connection (mapped addresses) is an IPv4 tuple, the key its AF_INET peer and the
 * connect hook's records use (sluice/addr.bpf.h). */
static __always_inline void sluice_ops_tuple(const struct bpf_sock_ops* skops,
                                             struct sluice_tuple* t) {
  __builtin_memset(t, 0, sizeof(*t));
  t->local_port = (__u16)skops->local_port;
  t->remote_port = (__u16)bpf_ntohl(skops->remote_port);
  if (skops->family == AF_INET_) {
    __u32 l = skops->local_ip4, r = skops->remote_ip4;
    __builtin_memcpy(t->local.v4, &l, 4);
    __builtin_memcpy(t->remote.v4, &r, 4);
    t->family = SLUICE_FAMILY_IPV4;
  } else {
    __u32 l[4] = {skops->local_ip6[0], skops->local_ip6[1], skops->local_ip6[2],
                  skops->local_ip6[3]};
    __u32 r[4] = {skops->remote_ip6[0], skops->remote_ip6[1], skops->remote_ip6[2],
                  skops->remote_ip6[3]};
    sluice_tuple_addrs6(t, l, r);
  }
}

static __always_inline void sluice_reverse(const struct sluice_tuple* in,
                                           struct sluice_tuple* out) {
  __builtin_memset(out, 0, sizeof(*out));
  out->local = in->remote;
  out->remote = in->local;
  out->local_port = in->remote_port;
  out->remote_port = in->local_port;
  out->family = in->family;
}

static __always_inline bool sluice_splice_on(void) {
  struct sluice_settings* set = sluice_get_settings();
  return set && (set->flags & SLUICE_SET_SPLICE);
}

/* The application's side of a redirected connection is established. */
static __always_inline void sluice_redirect_established(struct bpf_sock_ops* skops,
                                                        struct sluice_sock_origin* o) {
  struct sluice_tuple self;
  sluice_ops_tuple(skops, &self);
  struct sluice_orig_dst od = {};
  __builtin_memcpy(od.dialled.ip.v6, o->vip.v6, 16);
  od.dialled.port = o->vip_port;
  od.dialled.family = o->family;
  bpf_map_update_elem(&sluice_orig_dst, &self, &od, BPF_ANY);
  if (sluice_splice_on() && bpf_sock_hash_update(skops, &sluice_splice, &self, BPF_ANY) == 0)
    sluice_count(SLUICE_CNT_SPLICED);
  /* TCP_CLOSE removes the orig-dst record. */
  bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

/* A passively opened socket: the in-pod proxy's side if the peer was redirected. */
static __always_inline void sluice_passive_established(struct bpf_sock_ops* skops) {
  struct sluice_tuple self, app;
  sluice_ops_tuple(skops, &self);
  sluice_reverse(&self, &app);
  struct sluice_orig_dst* od = bpf_map_lookup_elem(&sluice_orig_dst, &app);
  if (!od || !sluice_splice_on())
    return;
  if (bpf_sock_hash_update(skops, &sluice_splice, &self, BPF_ANY) == 0) {
    /* Only this hook writes peer_ready, and only ever to 1: a plain store. */
    WRITE_ONCE_U8(od->peer_ready, 1);
    sluice_count(SLUICE_CNT_SPLICED);
  }
}

/* The sluice_tcp_metrics record of a translated socket, created on first use. */
static __always_inline struct sluice_tcp_metrics* sluice_tcp_metrics_of(
    const struct sluice_sock_origin* o) {
  struct sluice_tcp_metrics_key k = {};
  k.netns_cookie = o->netns_cookie;
  k.frontend.ip = o->vip;
  k.frontend.port = o->vip_port;
  k.frontend.family = o->family;
  k.frontend.protocol = IPPROTO_TCP_;
  k.backend = o->backend;
  struct sluice_tcp_metrics* m = bpf_map_lookup_elem(&sluice_tcp_metrics, &k);
  if (m)
    return m;
  struct sluice_tcp_metrics zero = {};
  bpf_map_update_elem(&sluice_tcp_metrics, &k, &zero, BPF_NOEXIST);
  return bpf_map_lookup_elem(&sluice_tcp_metrics, &k);
}

static __always_inline void sluice_metrics_opened(struct bpf_sock_ops* skops,
                                                  struct sluice_sock_origin* o) {
  if (!(o->flags & SLUICE_SOCK_METRICS) || (o->flags & SLUICE_SOCK_METRICS_OPEN))
    return;
  struct sluice_tcp_metrics* m = sluice_tcp_metrics_of(o);
  if (!m)
    return;
  __sync_fetch_and_add(&m->opened, 1);
  o->flags |= SLUICE_SOCK_METRICS_OPEN;
  /* TCP_CLOSE adds the close and the bytes. */
  bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

/* bytes_acked and bytes_received count sequence numbers, so they include the SYN (acked
 * by the SYN-ACK) and each FIN that was acknowledged or received on this socket; the
 * metrics want payload. The FINs are told from the states the socket went through:
 * - the peer's FIN was processed here if it moved the state to CLOSE_WAIT or CLOSING,
 *   or closed it from FIN_WAIT2 (TIME_WAIT); an orphaned socket that is closed as soon as
 *   its FIN is acknowledged (a FIN_WAIT2 timewait) or a reset leaves rcv_nxt where it was
 *   on entering FIN_WAIT2;
 * - our FIN was acknowledged if the socket closes from FIN_WAIT2, or from FIN_WAIT1,
 *   CLOSING or LAST_ACK with nothing left unacknowledged. */
static __always_inline void sluice_metrics_state(struct bpf_sock_ops* skops,
                                                 struct sluice_sock_origin* o) {
  if (!(o->flags & SLUICE_SOCK_METRICS_OPEN))
    return;
  const __u32 old_state = skops->args[0], new_state = skops->args[1];
  if (new_state == TCP_CLOSE_WAIT_ || new_state == TCP_CLOSING_) {
    o->flags |= SLUICE_SOCK_PEER_FIN;
    return;
  }
  if (new_state == TCP_FIN_WAIT2_) {
    o->fw2_rcv_nxt = skops->rcv_nxt;
    o->flags |= SLUICE_SOCK_FIN_WAIT2;
    return;
  }
  if (new_state != TCP_CLOSE_)
    return;
  o->flags &= ~SLUICE_SOCK_METRICS_OPEN;
  struct sluice_tcp_metrics* m = sluice_tcp_metrics_of(o);
  if (!m)
    return;
  bool peer_fin = o->flags & SLUICE_SOCK_PEER_FIN;
  if (old_state == TCP_FIN_WAIT2_ && (o->flags & SLUICE_SOCK_FIN_WAIT2) &&
      skops->rcv_nxt != o->fw2_rcv_nxt)
    peer_fin = true;
  bool our_fin =
      old_state == TCP_FIN_WAIT2_ ||
      ((old_state == TCP_FIN_WAIT1_ || old_state == TCP_CLOSING_ || old_state == TCP_LAST_ACK_) &&
       skops->snd_una == skops->snd_nxt);
  __u64 sent = skops->bytes_acked, received = skops->bytes_received;
  __u64 sent_extra = 1 + (our_fin ? 1 : 0), received_extra = peer_fin ? 1 : 0;
  sent = sent > sent_extra ? sent - sent_extra : 0;
  received = received > received_extra ? received - received_extra : 0;
  __sync_fetch_and_add(&m->closed, 1);
  __sync_fetch_and_add(&m->client_sent, sent);
  __sync_fetch_and_add(&m->client_received, received);
}

static __always_inline void sluice_conn_opened(struct bpf_sock_ops* skops) {
  struct bpf_sock* sk = skops->sk;
  if (!sk)
    return;
  struct sluice_sock_origin* o = bpf_sk_storage_get(&sluice_sock_origin, sk, 0, 0);
  if (!o || !(o->flags & SLUICE_SOCK_TRANSLATED) || (o->flags & SLUICE_SOCK_COUNTED))
    return;
  if (o->flags & SLUICE_SOCK_REDIRECTED) {
    sluice_redirect_established(skops, o);
    return;
  }
  sluice_metrics_opened(skops, o);
  if (!(o->flags & SLUICE_SOCK_COUNT))
    return; /* not a LEAST_REQUEST cluster: no live count needed */

  struct sluice_endpoint_stats* st = bpf_map_lookup_elem(&sluice_endpoint_stats, &o->backend);
  if (!st) {
    struct sluice_endpoint_stats zero = {};
    bpf_map_update_elem(&sluice_endpoint_stats, &o->backend, &zero, BPF_NOEXIST);
    st = bpf_map_lookup_elem(&sluice_endpoint_stats, &o->backend);
    if (!st)
      return;
  }
  __sync_fetch_and_add(&st->active, 1);
  __sync_fetch_and_add(&st->total, 1);
  o->flags |= SLUICE_SOCK_COUNTED;
  sluice_count(SLUICE_CNT_CONN_OPENED);
  bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

static __always_inline void sluice_conn_closed(struct bpf_sock_ops* skops) {
  struct bpf_sock* sk = skops->sk;
  if (!sk)
    return;
  struct sluice_sock_origin* o = bpf_sk_storage_get(&sluice_sock_origin, sk, 0, 0);
  if (!o)
    return;
  if (o->flags & SLUICE_SOCK_REDIRECTED) {
    struct sluice_tuple self;
    sluice_ops_tuple(skops, &self);
    bpf_map_delete_elem(&sluice_orig_dst, &self);
    return;
  }
  sluice_metrics_state(skops, o);
  if (!(o->flags & SLUICE_SOCK_COUNTED))
    return;
  o->flags &= ~SLUICE_SOCK_COUNTED;
  struct sluice_endpoint_stats* st = bpf_map_lookup_elem(&sluice_endpoint_stats, &o->backend);
  if (st && st->active > 0)
    __sync_fetch_and_add(&st->active, -1);
  sluice_count(SLUICE_CNT_CONN_CLOSED);
}

/* A translated socket's state changed short of TCP_CLOSE (the TCP metrics' FIN marks). */
static __always_inline void sluice_conn_state(struct bpf_sock_ops* skops) {
  struct bpf_sock* sk = skops->sk;
  if (!sk)
    return;
  struct sluice_sock_origin* o = bpf_sk_storage_get(&sluice_sock_origin, sk, 0, 0);
  if (o && !(o->flags & SLUICE_SOCK_REDIRECTED))
    sluice_metrics_state(skops, o);
}

SEC("sockops")
int sluice_sockops(struct bpf_sock_ops* skops) {
  switch (skops->op) {
    case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
      sluice_conn_opened(skops);
      break;
    case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
      sluice_passive_established(skops);
      break;
    case BPF_SOCK_OPS_STATE_CB:
      if (skops->args[1] == TCP_CLOSE_)
        sluice_conn_closed(skops);
      else
        sluice_conn_state(skops);
      break;
  }
  return 1;
}

/* This socket's own view from sk_msg context, IPv4 for mapped addresses as above. */
static __always_inline void sluice_msg_tuple(const struct sk_msg_md* msg, struct sluice_tuple* t) {
  __builtin_memset(t, 0, sizeof(*t));
  t->local_port = (__u16)msg->local_port;
  t->remote_port = (__u16)bpf_ntohl(msg->remote_port);
  if (msg->family == AF_INET_) {
    __u32 l = msg->local_ip4, r = msg->remote_ip4;
    __builtin_memcpy(t->local.v4, &l, 4);
    __builtin_memcpy(t->remote.v4, &r, 4);
    t->family = SLUICE_FAMILY_IPV4;
  } else {
    __u32 l[4] = {msg->local_ip6[0], msg->local_ip6[1], msg->local_ip6[2], msg->local_ip6[3]};
    __u32 r[4] = {msg->remote_ip6[0], msg->remote_ip6[1], msg->remote_ip6[2], msg->remote_ip6[3]};
    sluice_tuple_addrs6(t, l, r);
  }
}

/* Runs on sendmsg of any socket in sluice_splice. Always SK_PASS: when the redirect is
 * not set up, the message simply takes the TCP path. */
SEC("sk_msg")
int sluice_splice_msg(struct sk_msg_md* msg) {
  struct sluice_tuple self, peer;
  sluice_msg_tuple(msg, &self);
  sluice_reverse(&self, &peer);

  struct sluice_orig_dst* od = bpf_map_lookup_elem(&sluice_orig_dst, &self);
  if (od) {
    /* The application's side. */
    __u8 ready = READ_ONCE_U8(od->peer_ready);
    if (READ_ONCE_U8(od->no_splice) || (ready & SLUICE_ORIG_LEGACY_NO_SPLICE))
      return SK_PASS_;
    if (!ready) {
      /* Only this side writes no_splice, and only ever to 1. Should sockops set
       * peer_ready at this moment, the next message still sees no_splice first. */
      WRITE_ONCE_U8(od->no_splice, 1);
      return SK_PASS_;
    }
    bpf_msg_redirect_hash(msg, &sluice_splice, &peer, BPF_F_INGRESS_);
    return SK_PASS_;
  }
  /* The proxy's side: its peer joined the sockhash before the proxy could accept. */
  bpf_msg_redirect_hash(msg, &sluice_splice, &peer, BPF_F_INGRESS_);
  return SK_PASS_;
}

char LICENSE[] SEC("license") = "GPL";
