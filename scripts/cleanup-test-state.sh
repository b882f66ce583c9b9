#!/usr/bin/env bash
# Removes kernel state a crashed test could have left: it only touches names the test
# suite owns (prefix "sluicet"), never a running agent's /sys/fs/bpf/sluice.
set -uo pipefail
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^sluicet' || true); do
  ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
done
for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep '^sluicet' || true); do
  ip link del "$link" 2>/dev/null || true
done
cg=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)
if [[ -n "$cg" ]]; then
  for d in "$cg"/sluicet*; do
    [[ -d "$d" ]] || continue
    # Children first; a cgroup with processes cannot go, so move them out first.
    find "$d" -depth -type d | while read -r sub; do
      if [[ -f "$sub/cgroup.procs" ]]; then
        while read -r pid; do echo "$pid" > "$cg/cgroup.procs" 2>/dev/null || true; done < "$sub/cgroup.procs"
      fi
      rmdir "$sub" 2>/dev/null || true
    done
  done
fi
for pin in /sys/fs/bpf/sluicet*; do
  [[ -e "$pin" ]] && rm -rf "$pin"
done
exit 0
