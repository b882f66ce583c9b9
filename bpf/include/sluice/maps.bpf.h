/* Sluice BPF maps, defined once for every BPF object (BPF side only).
 *
 * All maps pin by name under the loader's pin root (default /sys/fs/bpf/sluice), so
 * every object of the data plane shares them, and a restarted agent adopts them. The
 * loader sets max_entries before load; the numbers here are the defaults.
 */
#ifndef SLUICE_MAPS_BPF_H
#define SLUICE_MAPS_BPF_H

#include "vmlinux.h"

#include <bpf/bpf_helpers.h>

#include "sluice/bpf_abi.h"

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 65536);
  __type(key, struct sluice_frontend_key);
  __type(value, struct sluice_service);
  __uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_services SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 262144);
  __type(key, struct sluice_backend_key);
  __type(value, struct sluice_backend);
  __uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_backends SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 1024);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, struct sluice_cluster_key);
  __type(value, struct sluice_maglev_table);
  __uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_maglev SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 131072);
  __type(key, struct sluice_endpoint);
  __type(value, struct sluice_endpoint_stats);
  __uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_endpoint_stats SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 16384);
  __type(key, __u64); /* network namespace cookie */
  __type(value, struct sluice_enrolment);
  __uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_enrolled SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_SK_STORAGE);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, int);
  __type(value, struct sluice_sock_origin);
  __uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_sock_origin SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
  __uint(max_entries, SLUICE_CNT_MAX);
  __type(key, __u32); /* enum sluice_counter */
  __type(value, __u64);
  __uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_counters SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_LRU_HASH);
  __uint(max_entries, 65536);
  __type(key, struct sluice_tuple); /* the application's side */
  __type(value, struct sluice_orig_dst);
  __uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_orig_dst SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_SOCKHASH);
  __uint(max_entries, 65536);
  __type(key, struct sluice_tuple);
  __type(value, __u64);
  __uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_splice SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, struct sluice_settings);
  __uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_settings SEC(".maps");

/* Every endpoint address some live service revision points at (value 1; the loader
 * counts the slots in userspace), kept by the loader: the registry as tc sees it. */
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 131072);
  __type(key, struct sluice_endpoint);
  __type(value, __u32);
  __uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_known_endpoints SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 16384);
  __type(key, __u32); /* ifindex of the pod's host-side interface */
  __type(value, struct sluice_pod);
  __uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_pods SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
  __uint(max_entries, 16384);
  __type(key, __u32);
  __type(value, struct sluice_pod_stats);
  __uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_pod_stats SEC(".maps");

/* The inbound side of enrolled pods (sk_lookup, pod_inbound.bpf.c): (pod address, port,
 * TCP) -> the listening socket of the pod's inbound proxy, which serves connections to
 * that port. A port that is not here reaches the pod's application directly. */
struct {
  __uint(type, BPF_MAP_TYPE_SOCKHASH);
  __uint(max_entries, 65536);
  __type(key, struct sluice_frontend_key);
  __type(value, __u64);
  __uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_inbound SEC(".maps");

/* What a steered pod port wants when its inbound socket is gone (enum sluice_guard): the
 * sockets close with the agent, these entries stay, so a port whose policy only the pod's
 * proxy enforces is refused while no proxy can take it, never handed to the application
 * unchecked. Port 0 stands for every port not registered on its own, as in sluice_inbound. */
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 65536);
  __type(key, struct sluice_frontend_key);
  __type(value, __u8);
  __uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_inbound_guard SEC(".maps");

/* Translated connections, while SLUICE_SET_CONNLOG is on (the agent's L4 access log). A
 * full buffer drops records; the connect itself is never affected. */
struct {
  __uint(type, BPF_MAP_TYPE_RINGBUF);
  __uint(max_entries, 256 * 1024);
  __uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_connlog SEC(".maps");

/* Istio's TCP metrics of connections the kernel translates (SLUICE_SET_TCP_METRICS), per
 * (client pod, service address, endpoint). LRU: past its size the least recently used
 * key is dropped with its counts; the agent reads it at every scrape. */
struct {
  __uint(type, BPF_MAP_TYPE_LRU_HASH);
  __uint(max_entries, 65536);
  __type(key, struct sluice_tcp_metrics_key);
  __type(value, struct sluice_tcp_metrics);
  __uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_tcp_metrics SEC(".maps");

/* L4 policy of pod ports (sk_lookup, pod_inbound.bpf.c): which ports have one and its
 * rules, and each rule's source prefixes. A port that is not here has no kernel policy. */
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 16384);
  __type(key, struct sluice_frontend_key);
  __type(value, struct sluice_inbound_policy);
  __uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_inbound_policy SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_LPM_TRIE);
  __uint(max_entries, 65536);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, struct sluice_policy_key);
  __type(value, __u8); /* unused (1) */
  __uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_policy_prefixes SEC(".maps");

static __always_inline struct sluice_settings* sluice_get_settings(void) {
  __u32 zero = 0;
  return bpf_map_lookup_elem(&sluice_settings, &zero);
}

static __always_inline void sluice_count(enum sluice_counter reason) {
  __u32 key = reason;
  __u64* v = bpf_map_lookup_elem(&sluice_counters, &key);
  if (v)
    *v += 1; /* per-CPU slot: no atomic needed */
}

#endif /* SLUICE_MAPS_BPF_H */
