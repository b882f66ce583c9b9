#!/usr/bin/env bash
# Removes kernel state a crashed test could have left: it only touches names the test
# suite owns (prefix "sluicet"), never a running agent's /sys/fs/bpf/sluice.
set -uo pipefail
# Local clusters made by tests (tests/local): their processes first (agent, control
# plane, container monitors), then the NAT rules of their kube-proxy stand-in.
for state in /tmp/sluicet*-local; do
  [[ -d "$state" ]] || continue
  for pidfile in "$state"/agent.pid "$state"/xds.pid; do
    [[ -f "$pidfile" ]] && kill -9 "$(awk '{print $1}' "$pidfile")" 2>/dev/null || true
  done
  rm -rf "$state"
done
if command -v iptables >/dev/null; then
  for chain in $(iptables -w -t nat -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^SLUICE-LOCAL-sluicet/ {print $2}'); do
    iptables -w -t nat -S 2>/dev/null | grep -- "-j $chain\b\|--comment $chain " | sed 's/^-A/-D/' |
      while read -r rule; do eval iptables -w -t nat "$rule" 2>/dev/null || true; done
    iptables -w -t nat -F "$chain" 2>/dev/null || true
    iptables -w -t nat -X "$chain" 2>/dev/null || true
  done
fi
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
