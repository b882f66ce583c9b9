/* Sluice kernel data plane: map layouts shared by the BPF programs and the C++ loader.
 *
 * Declared once, included by both sides: the BPF objects compile it against vmlinux.h,
 * the loader against the UAPI headers, and the loader static_asserts every size. All
 * fields are fixed-width with explicit padding, so bpftool's BTF dump prints what the
 * programs see. Addresses are stored as bytes in network order and ports in host order,
 * so `bpftool map dump pinned /sys/fs/bpf/sluice/sluice_services` stays readable.
 *
 * Consistency model (see docs/kernel-dataplane.md): a service's backends are written
 * under a new revision, then the service record is switched to that revision in place
 * under its spin lock, then userspace waits for an RCU grace period and deletes the old
 * revision. A connect therefore sees either the old or the new backend set, never a mix,
 * and no connect can pick a removed backend once the update has returned.
 */
#ifndef SLUICE_BPF_ABI_H
#define SLUICE_BPF_ABI_H

#ifndef __bpf__
#include <linux/bpf.h>
#include <linux/types.h>
#endif

#define SLUICE_MAX_CLUSTERS 16    /* weighted clusters per service (route destinations) */
#define SLUICE_MAX_BACKENDS 65535 /* backend slots per cluster (u16 slot index) */
#define SLUICE_MAGLEV_SIZE 16381  /* prime; Maglev lookup table entries per cluster */
#define SLUICE_SERVICE_NAME_LEN 64

enum sluice_family {
  SLUICE_FAMILY_IPV4 = 4,
  SLUICE_FAMILY_IPV6 = 6,
};

/* Load-balancing policies; numbered as Envoy's Cluster.LbPolicy so xDS maps 1:1. */
enum sluice_lb_policy {
  SLUICE_LB_ROUND_ROBIN = 0,
  SLUICE_LB_LEAST_REQUEST = 1,
  SLUICE_LB_RING_HASH = 2,
  SLUICE_LB_RANDOM = 3,
  SLUICE_LB_MAGLEV = 5,
};

/* Per-reason counters (sluice_counters, a per-CPU array indexed by this enum). */
enum sluice_counter {
  SLUICE_CNT_TRANSLATED = 0,    /* connect rewritten to a backend */
  SLUICE_CNT_NOT_ENROLLED,      /* connect from a network namespace not in the mesh */
  SLUICE_CNT_NO_SERVICE,        /* enrolled, destination is not a service: passed through */
  SLUICE_CNT_NO_BACKEND,        /* chosen cluster has no endpoints: connect refused */
  SLUICE_CNT_BACKEND_MISSING,   /* backend slot absent (inconsistent state): refused */
  SLUICE_CNT_NO_SOCK_STORAGE,   /* translated, but origin not recorded (getpeername) */
  SLUICE_CNT_PEERNAME_RESTORED, /* getpeername answered with the service address */
  SLUICE_CNT_CONN_OPENED,       /* sockops: translated connection established */
  SLUICE_CNT_CONN_CLOSED,       /* sockops: translated connection closed */
  SLUICE_CNT_REDIRECTED,        /* connect sent to the pod's L7 proxy listener */
  SLUICE_CNT_NO_PROXY,          /* L7 service, but the pod has no proxy listener: refused */
  SLUICE_CNT_REGISTRY_DENIED,   /* REGISTRY_ONLY pod dialled an unknown destination: refused */
  SLUICE_CNT_BYPASS,            /* the agent's own upstream socket (bypass mark): untouched */
  SLUICE_CNT_ORIG_DST,          /* getsockopt(SO_ORIGINAL_DST) answered for the proxy */
  SLUICE_CNT_SPLICED,           /* socket joined to the sockhash (sk_msg splice) */
  SLUICE_CNT_NONTCP_DENIED,     /* tc: REGISTRY_ONLY pod sent non-TCP to an unknown place */
  SLUICE_CNT_INBOUND_STEERED,   /* sk_lookup: a connection to a pod port sent to its inbound side */
  SLUICE_CNT_POLICY_DENIED,     /* sk_lookup: a connection to a pod port refused by its L4 policy */
  SLUICE_CNT_INBOUND_UNSERVED,  /* sk_lookup: a guarded pod port had no inbound socket: refused */
  SLUICE_CNT_MAX,
};

/* An IPv4 address uses v4 and leaves the rest zero. */
union sluice_ip {
  __u8 v4[4];
  __u8 v6[16];
};

/* sluice_services key: one service frontend (VIP, port, protocol). */
struct sluice_frontend_key {
  union sluice_ip ip;
  __u16 port;    /* host byte order */
  __u8 family;   /* enum sluice_family */
  __u8 protocol; /* IPPROTO_TCP / IPPROTO_UDP */
};

/* One weighted destination cluster of a service. */
struct sluice_service_cluster {
  __u32 weight_end; /* cumulative relative weight; cluster i owns [end(i-1), end(i)) */
  __u16 n_backends; /* backend slots (sluice_backends) in the current revision */
  __u8 lb_policy;   /* enum sluice_lb_policy */
  __u8 _pad;
};

/* sluice_services value. Userspace writes it with BPF_F_LOCK; BPF reads it under the
 * lock, so a connect sees one whole revision. Frontends of the same service carry
 * identical copies. */
struct sluice_service {
  struct bpf_spin_lock lock;
  __u32 id;           /* keys sluice_backends / sluice_maglev */
  __u32 revision;     /* backends of this revision are live */
  __u32 total_weight; /* sum of cluster weights */
  __u8 n_clusters;
  __u8 flags;     /* SLUICE_SVC_* */
  __u8 l7_reason; /* enum sluice_l7_reason, with SLUICE_SVC_REDIRECT */
  __u8 _pad;
  __u32 rr_cursor[SLUICE_MAX_CLUSTERS]; /* ROUND_ROBIN position, advanced under lock */
  struct sluice_service_cluster clusters[SLUICE_MAX_CLUSTERS];
  char name[SLUICE_SERVICE_NAME_LEN]; /* for people reading bpftool dumps */
};

/* The service needs L7 (routes beyond one catch-all, mirroring, faults, retries, gateway
 * egress, ...): connects go to the pod's in-pod proxy listener, which recovers the
 * dialled address with getsockopt(SO_ORIGINAL_DST). Clusters are then unused. */
#define SLUICE_SVC_REDIRECT 0x1

/* Why a service is redirected (sluice_service.l7_reason): kept for people reading dumps
 * (`sluicectl bpf dump services` prints it); the programs do not read it. */
enum sluice_l7_reason {
  SLUICE_L7_UNSPECIFIED = 0, /* set by hand (sluicectl bpf service set --l7) */
  SLUICE_L7_HTTP_ROUTING,    /* HTTP routes beyond one catch-all: matches, rewrites, ... */
  SLUICE_L7_TLS_SNI,         /* a TLS port routed by SNI */
  SLUICE_L7_SNIFFED,         /* a sniffed port whose HTTP and TCP chains route differently */
  SLUICE_L7_BY_SOURCE,       /* a filter chain chosen by the client's address or port */
  SLUICE_L7_BY_HOST,         /* hosts without a VIP on the port, routed by Host */
  SLUICE_L7_CLUSTER,         /* a cluster the kernel cannot serve (DNS, ORIGINAL_DST, ...) */
  SLUICE_L7_CIDR,            /* a destination range rather than one address */
  SLUICE_L7_VIEWS,           /* the pods' views route it differently */
  SLUICE_L7_HTTP2,           /* HTTP/2 or gRPC upstream: balanced per request */
  SLUICE_L7_REASON_MAX,
};

/* sluice_backends key: one slot of one cluster of one service revision. Weighted
 * endpoints occupy several slots (smooth weighted order for ROUND_ROBIN). */
struct sluice_backend_key {
  __u32 service_id;
  __u32 revision;
  __u16 slot;
  __u8 cluster;
  __u8 _pad;
};

/* An endpoint address; also the key of sluice_endpoint_stats. */
struct sluice_endpoint {
  union sluice_ip ip;
  __u16 port;  /* host byte order */
  __u8 family; /* enum sluice_family */
  __u8 _pad;
};

/* sluice_connlog record: a connection the kernel translated (the agent turns these into
 * the L4 lines of its access log). */
struct sluice_conn_event {
  __u64 netns_cookie;                  /* the client pod's network namespace */
  struct sluice_frontend_key frontend; /* the service address dialled */
  struct sluice_endpoint backend;      /* the endpoint chosen */
};

/* sluice_backends value. */
struct sluice_backend {
  struct sluice_endpoint ep;
};

/* sluice_endpoint_stats value: live translated connections per endpoint, kept by the
 * sockops program and read by LEAST_REQUEST. */
struct sluice_endpoint_stats {
  __u64 active;
  __u64 total;
};

/* sluice_maglev key: the consistent-hash table of one cluster revision. */
struct sluice_cluster_key {
  __u32 service_id;
  __u32 revision;
  __u8 cluster;
  __u8 _pad[3];
};

/* sluice_maglev value: slot index per Maglev table entry. */
struct sluice_maglev_table {
  __u16 slot[SLUICE_MAGLEV_SIZE];
  __u16 _pad;
};

/* sluice_enrolled value; the key is the network namespace cookie (u64). The pod's
 * addresses identify the client for consistent hashing before the socket is bound. */
struct sluice_enrolment {
  __u8 ip4[4];
  __u8 ip6[16];
  __u32 flags;      /* SLUICE_ENROL_* */
  __u16 proxy_port; /* the agent's outbound listener on the pod's loopback; 0: none */
  __u16 _pad;
};

/* outboundTrafficPolicy REGISTRY_ONLY: connects to anything that is not a service
 * (or loopback, or DNS on port 53) are refused instead of passed through. */
#define SLUICE_ENROL_REGISTRY_ONLY 0x1

/* sluice_sock_origin (socket local storage): what a translated socket dialled, and from
 * where (sockops has no netns cookie before Linux 5.15, so the connect hook records it). */
struct sluice_sock_origin {
  union sluice_ip vip;
  __u16 vip_port; /* host byte order */
  __u8 family;
  __u8 flags; /* SLUICE_SOCK_* */
  struct sluice_endpoint backend;
  __u64 netns_cookie; /* the client pod's network namespace */
  __u32 fw2_rcv_nxt;  /* sockops (TCP metrics): rcv_nxt on entering FIN_WAIT2 */
  __u32 _pad;
};

#define SLUICE_SOCK_TRANSLATED 0x1
#define SLUICE_SOCK_COUNTED 0x2
#define SLUICE_SOCK_REDIRECTED 0x4    /* sent to the in-pod proxy; backend is the listener */
#define SLUICE_SOCK_COUNT 0x8         /* LEAST_REQUEST cluster: sockops counts it live */
#define SLUICE_SOCK_METRICS 0x10      /* SLUICE_SET_TCP_METRICS was on: sockops counts it */
#define SLUICE_SOCK_METRICS_OPEN 0x20 /* counted as opened in sluice_tcp_metrics */
#define SLUICE_SOCK_PEER_FIN 0x40     /* TCP metrics: the peer's FIN moved the state */
#define SLUICE_SOCK_FIN_WAIT2 0x80    /* TCP metrics: fw2_rcv_nxt is set */

/* sluice_tcp_metrics key: the connections one pod made to one service address that the
 * kernel sent to one endpoint (Istio's TCP metrics of the kernel path, reporter source). */
struct sluice_tcp_metrics_key {
  __u64 netns_cookie;                  /* the client pod's network namespace */
  struct sluice_frontend_key frontend; /* the service address dialled (protocol TCP) */
  struct sluice_endpoint backend;      /* the endpoint chosen */
};

/* sluice_tcp_metrics value, kept by sockops for translated (not redirected) connections
 * while SLUICE_SET_TCP_METRICS is on; counters only grow (atomic adds). The byte counts
 * are the client socket's payload, added when the connection reaches TCP_CLOSE:
 * client_sent is what the endpoint acknowledged (tcp_sock.bytes_acked), client_received
 * what it sent (bytes_received), each less the SYN and FIN that those kernel counters
 * include. Istio names them from the proxy's side: its received bytes are client_sent. */
struct sluice_tcp_metrics {
  __u64 opened; /* established (BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB) */
  __u64 closed; /* reached TCP_CLOSE after being established */
  __u64 client_sent;
  __u64 client_received;
};

/* One end's view of a TCP connection; key of sluice_orig_dst and sluice_splice. */
struct sluice_tuple {
  union sluice_ip local;
  union sluice_ip remote;
  __u16 local_port;  /* host byte order */
  __u16 remote_port; /* host byte order */
  __u8 family;
  __u8 _pad[3];
};

/* sluice_orig_dst value, keyed by the application's side of a redirected connection:
 * the address it dialled, for getsockopt(SO_ORIGINAL_DST) on the proxy's side.
 *
 * The two splice marks are separate bytes, each written once (to 1) by one writer: plain
 * byte stores, no read-modify-write, so neither can undo the other and no atomic OR
 * (Linux 5.12) is needed. Before this layout both were bits of one u32 (PEER_READY 0x1,
 * NO_SPLICE 0x2 in the first byte); readers still honour that NO_SPLICE bit, so a record
 * written by an older program read back after an upgrade keeps its meaning. */
struct sluice_orig_dst {
  struct sluice_endpoint dialled;
  __u8 peer_ready; /* sockops: the proxy's accepted socket is in sluice_splice */
  __u8 no_splice;  /* sk_msg: bytes went through TCP first: never splice (ordering) */
  __u8 _pad[2];
};
#define SLUICE_ORIG_LEGACY_NO_SPLICE 0x2 /* the old NO_SPLICE bit, in peer_ready's byte */

/* sluice_settings (array, one entry): switches the agent sets at run time. */
struct sluice_settings {
  __u32 flags;       /* SLUICE_SET_* */
  __u32 bypass_mark; /* SO_MARK of the agent's own upstream sockets: never translated */
};
#define SLUICE_SET_SPLICE 0x1      /* join app and in-pod proxy sockets with sk_msg */
#define SLUICE_SET_CONNLOG 0x2     /* one sluice_connlog record per connect the kernel translates */
#define SLUICE_SET_TCP_METRICS 0x4 /* count translated connections in sluice_tcp_metrics */

/* sluice_pods value, keyed by the ifindex of a pod's host-side interface (where the tc
 * programs are attached). */
struct sluice_pod {
  __u32 flags; /* SLUICE_POD_* */
  __u32 _pad;
};
/* REGISTRY_ONLY for what socket hooks cannot see: non-TCP packets from the pod go only
 * to DNS (port 53) or to registered UDP frontends and endpoints. */
#define SLUICE_POD_REGISTRY_ONLY 0x1

/* sluice_pod_stats value (per CPU), keyed by the same ifindex. */
struct sluice_pod_stats {
  __u64 from_pod_packets;
  __u64 from_pod_bytes;
  __u64 to_pod_packets;
  __u64 to_pod_bytes;
  __u64 denied_packets;
};
#define SLUICE_DEFAULT_BYPASS_MARK 0x5117

/* L4 policy of a pod port, enforced by the sk_lookup program (pod_inbound.bpf.c) before
 * it steers: the network rbac filters of the port's inbound chain that need only
 * addresses and ports (agent/proxy/rbac_l4.h), one rule per filter in chain order. A
 * connection is refused when some DENY rule holds its source, or some ALLOW rule does not
 * (an ALLOW rule without sources refuses everything), exactly Envoy's outcome for those
 * filters. */
#define SLUICE_POLICY_MAX_RULES 8

enum sluice_policy_kind {
  SLUICE_POLICY_NONE = 0,
  SLUICE_POLICY_ALLOW = 1, /* refused unless the source is in the rule's prefixes */
  SLUICE_POLICY_DENY = 2,  /* refused if the source is in the rule's prefixes */
};

/* sluice_inbound_policy value, keyed by (pod address, port, TCP) like sluice_inbound. The
 * rules' prefixes are sluice_policy_prefixes entries of generation `gen`: an update
 * writes the other generation, switches this value, waits for an RCU grace period, then
 * removes the old generation, so a connect sees one whole policy. */
struct sluice_inbound_policy {
  __u8 n_rules;
  __u8 gen; /* 0 or 1 */
  __u8 _pad[2];
  __u8 kind[SLUICE_POLICY_MAX_RULES]; /* enum sluice_policy_kind, per rule */
};

/* sluice_policy_prefixes key (LPM trie): one source prefix of one rule. Every field up to
 * `src` is always matched whole (SLUICE_POLICY_FIXED_BITS); prefixlen is that plus the
 * source prefix length. IPv4 addresses use the first 4 bytes of pod and src. */
struct sluice_policy_key {
  __u32 prefixlen;
  __u8 family; /* enum sluice_family */
  __u8 gen;
  __u8 rule; /* index in chain order */
  __u8 _pad;
  __u16 port; /* host byte order */
  __u16 _pad2;
  __u8 pod[16];
  __u8 src[16];
};
#define SLUICE_POLICY_FIXED_BITS ((8 + 16) * 8)

/* sluice_inbound_guard value, keyed by (pod address, port or 0, TCP) like sluice_inbound:
 * what the sk_lookup program does with a connection to a port the agent steers when that
 * port's inbound socket is missing (the agent is restarting and took its sockets with it,
 * or the pod's inbound socket never opened). The agent writes it before it steers the port
 * and removes it after it stops, and leaves it in place when it exits: it outlives the
 * sockets on purpose. */
enum sluice_guard {
  SLUICE_GUARD_OPEN = 0,   /* the application may take the connection */
  SLUICE_GUARD_CLOSED = 1, /* the port carries policy: refused (counted inbound_unserved) */
};

#endif /* SLUICE_BPF_ABI_H */
