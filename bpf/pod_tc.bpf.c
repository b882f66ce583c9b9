// SPDX-License-Identifier: GPL-2.0
/* Packet-level work on a pod's host-side interface (tc clsact), for what socket hooks
 * cannot do:
 *   - per-pod packet and byte counters, both directions (sluice_pod_stats);
 *   - REGISTRY_ONLY for non-TCP traffic: a pod marked SLUICE_POD_REGISTRY_ONLY may send
 *     UDP only to DNS (port 53), to registered UDP frontends and to known endpoints;
 *     other non-TCP IP packets are dropped (IPv6 neighbour discovery excepted). TCP is
 *     the connect hook's business.
 * Ingress on the host side is what the pod sends; egress is what it receives.
 */
#include "vmlinux.h"

#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "sluice/bpf_abi.h"
#include "sluice/maps.bpf.h"

#define TC_ACT_OK 0
#define TC_ACT_SHOT 2
#define ETH_P_IP_ 0x0800
#define ETH_P_IPV6_ 0x86DD
#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17
#define IPPROTO_ICMPV6_ 58
#define ETH_HLEN_ 14

static __always_inline struct sluice_pod_stats* sluice_stats(__u32 ifindex) {
  struct sluice_pod_stats* st = bpf_map_lookup_elem(&sluice_pod_stats, &ifindex);
  if (st)
    return st;
  struct sluice_pod_stats zero = {};
  bpf_map_update_elem(&sluice_pod_stats, &ifindex, &zero, BPF_NOEXIST);
  return bpf_map_lookup_elem(&sluice_pod_stats, &ifindex);
}

/* Is (address, UDP port) a registered destination? */
static __always_inline bool sluice_udp_known(const union sluice_ip* ip, __u8 family, __u16 port) {
  if (port == 53)
    return true;
  struct sluice_frontend_key fe = {};
  fe.ip = *ip;
  fe.port = port;
  fe.family = family;
  fe.protocol = IPPROTO_UDP_;
  if (bpf_map_lookup_elem(&sluice_services, &fe))
    return true;
  struct sluice_endpoint ep = {};
  ep.ip = *ip;
  ep.port = port;
  ep.family = family;
  return bpf_map_lookup_elem(&sluice_known_endpoints, &ep) != 0;
}

/* Verdict for a non-TCP packet from a REGISTRY_ONLY pod. */
static __always_inline bool sluice_allowed(struct __sk_buff* skb) {
  __u16 proto = bpf_ntohs(skb->protocol);
  union sluice_ip dst = {};
  if (proto == ETH_P_IP_) {
    struct iphdr ip;
    if (bpf_skb_load_bytes(skb, ETH_HLEN_, &ip, sizeof(ip)) < 0)
      return false;
    if (ip.protocol == IPPROTO_TCP_)
      return true;
    if (ip.protocol != IPPROTO_UDP_ || (bpf_ntohs(ip.frag_off) & 0x1fff))
      return false; /* other protocols, and fragments we cannot attribute */
    struct udphdr udp;
    if (bpf_skb_load_bytes(skb, ETH_HLEN_ + ip.ihl * 4, &udp, sizeof(udp)) < 0)
      return false;
    __builtin_memcpy(dst.v4, &ip.daddr, 4);
    return sluice_udp_known(&dst, SLUICE_FAMILY_IPV4, bpf_ntohs(udp.dest));
  }
  if (proto == ETH_P_IPV6_) {
    struct ipv6hdr ip6;
    if (bpf_skb_load_bytes(skb, ETH_HLEN_, &ip6, sizeof(ip6)) < 0)
      return false;
    if (ip6.nexthdr == IPPROTO_TCP_)
      return true;
    if (ip6.nexthdr == IPPROTO_ICMPV6_) {
      __u8 type;
      if (bpf_skb_load_bytes(skb, ETH_HLEN_ + sizeof(ip6), &type, 1) < 0)
        return false;
      return type >= 133 && type <= 137; /* router/neighbour discovery, redirect */
    }
    if (ip6.nexthdr != IPPROTO_UDP_)
      return false;
    struct udphdr udp;
    if (bpf_skb_load_bytes(skb, ETH_HLEN_ + sizeof(ip6), &udp, sizeof(udp)) < 0)
      return false;
    __builtin_memcpy(dst.v6, &ip6.daddr, 16);
    return sluice_udp_known(&dst, SLUICE_FAMILY_IPV6, bpf_ntohs(udp.dest));
  }
  return true; /* ARP and other non-IP traffic */
}

SEC("tc")
int sluice_from_pod(struct __sk_buff* skb) {
  __u32 ifindex = skb->ifindex;
  struct sluice_pod* pod = bpf_map_lookup_elem(&sluice_pods, &ifindex);
  if (!pod)
    return TC_ACT_OK;
  struct sluice_pod_stats* st = sluice_stats(ifindex);
  if ((pod->flags & SLUICE_POD_REGISTRY_ONLY) && !sluice_allowed(skb)) {
    if (st)
      st->denied_packets++;
    sluice_count(SLUICE_CNT_NONTCP_DENIED);
    return TC_ACT_SHOT;
  }
  if (st) {
    st->from_pod_packets++;
    st->from_pod_bytes += skb->len;
  }
  return TC_ACT_OK;
}

SEC("tc")
int sluice_to_pod(struct __sk_buff* skb) {
  __u32 ifindex = skb->ifindex;
  if (!bpf_map_lookup_elem(&sluice_pods, &ifindex))
    return TC_ACT_OK;
  struct sluice_pod_stats* st = sluice_stats(ifindex);
  if (st) {
    st->to_pod_packets++;
    st->to_pod_bytes += skb->len;
  }
  return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
