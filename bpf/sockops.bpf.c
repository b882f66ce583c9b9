// SPDX-License-Identifier: GPL-2.0
/* Connection bookkeeping (sockops): per-endpoint live connection counts for the
 * connect hook's LEAST_REQUEST policy. A translated socket (marked by the connect hook
 * in sluice_sock_origin) counts up once when it is established and down once when it
 * reaches TCP_CLOSE, whichever way it closes. */
#include "vmlinux.h"

#include <bpf/bpf_helpers.h>

#include "sluice/dataplane.h"
#include "sluice/maps.bpf.h"

#define TCP_CLOSE_ 7

static __always_inline void sluice_conn_opened(struct bpf_sock_ops* skops) {
  struct bpf_sock* sk = skops->sk;
  if (!sk)
    return;
  struct sluice_sock_origin* o = bpf_sk_storage_get(&sluice_sock_origin, sk, 0, 0);
  if (!o || !(o->flags & SLUICE_SOCK_TRANSLATED) || (o->flags & SLUICE_SOCK_COUNTED))
    return;

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
  if (!o || !(o->flags & SLUICE_SOCK_COUNTED))
    return;
  o->flags &= ~SLUICE_SOCK_COUNTED;
  struct sluice_endpoint_stats* st = bpf_map_lookup_elem(&sluice_endpoint_stats, &o->backend);
  if (st && st->active > 0)
    __sync_fetch_and_add(&st->active, -1);
  sluice_count(SLUICE_CNT_CONN_CLOSED);
}

SEC("sockops")
int sluice_sockops(struct bpf_sock_ops* skops) {
  switch (skops->op) {
    case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
      sluice_conn_opened(skops);
      break;
    case BPF_SOCK_OPS_STATE_CB:
      if (skops->args[1] == TCP_CLOSE_)
        sluice_conn_closed(skops);
      break;
  }
  return 1;
}

char LICENSE[] SEC("license") = "GPL";
