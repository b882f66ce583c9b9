/* Selection arithmetic shared by the connect hook and the loader's tests.
 *
 * Pure functions over plain values: the BPF program calls them with its map data and
 * random numbers; the unit tests call the very same code with chosen inputs.
 */
#ifndef SLUICE_LB_H
#define SLUICE_LB_H

#include "sluice/bpf_abi.h"

#ifdef __bpf__
#define SLUICE_INLINE static __always_inline
#else
#define SLUICE_INLINE static inline
#endif

/* Index of the cluster owning point r in [0, total_weight): clusters hold cumulative
 * weight_end values, so a relative weight w owns w/total of the range. */
SLUICE_INLINE __u32 sluice_pick_cluster(const struct sluice_service_cluster* clusters,
                                        __u32 n_clusters, __u32 r) {
  __u32 i;
  for (i = 0; i < SLUICE_MAX_CLUSTERS; i++) {
    if (i + 1 >= n_clusters || r < clusters[i].weight_end)
      return i;
  }
  return SLUICE_MAX_CLUSTERS - 1;
}

/* Two distinct slots out of n (n >= 2) from one random number: power-of-two choices
 * must compare two different candidates, or with two endpoints it would pick blindly
 * half of the time. */
SLUICE_INLINE void sluice_pick_two(__u32 r, __u32 n, __u32* a, __u32* b) {
  __u32 first = (r & 0xffff) % n;
  __u32 step = 1 + ((r >> 16) % (n - 1));
  *a = first;
  *b = (first + step) % n;
}

/* murmur3's 32-bit finalizer over the words of an address: the client key of the
 * consistent-hash policies. Userspace uses the same function to predict placement. */
SLUICE_INLINE __u32 sluice_mix32(__u32 h) {
  h ^= h >> 16;
  h *= 0x85ebca6bU;
  h ^= h >> 13;
  h *= 0xc2b2ae35U;
  h ^= h >> 16;
  return h;
}

SLUICE_INLINE __u32 sluice_hash_ip(const union sluice_ip* ip, __u8 family) {
  __u32 words[4] = {0, 0, 0, 0};
  __u32 n = family == SLUICE_FAMILY_IPV6 ? 4 : 1;
  __u32 h = 0x5117ce00U ^ family, i;
  __builtin_memcpy(words, ip->v6, 16);
  for (i = 0; i < 4; i++) {
    if (i >= n)
      break;
    h = sluice_mix32(h ^ words[i]) * 5 + 0xe6546b64U;
  }
  return sluice_mix32(h);
}

#endif /* SLUICE_LB_H */
