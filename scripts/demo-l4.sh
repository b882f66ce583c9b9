#!/usr/bin/env bash
# The kernel data plane alone, on one machine, in about ten seconds (scripts/demo.sh runs
# the Istio tasks on a local cluster):
#   - two server "pods" (network namespaces, 10.77.0.2 and 10.77.0.3) behind a bridge,
#   - one client pod (10.77.0.10), enrolled in the mesh,
#   - a service VIP 10.96.77.1:80 split 25/75 between the two servers.
# The client dials the VIP 4000 times; the cgroup connect hook picks a server for each
# connection in the kernel. The script prints the spread, the kernel's view via
# `sluicectl bpf dump` and raw `bpftool map dump`, then removes everything it made.
#
# Uses its own pin root and cgroup, so it never touches a running agent's state.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build}

if [[ $EUID -ne 0 ]]; then
  echo "demo-l4.sh: run as root (it loads BPF programs and makes network namespaces)" >&2
  exit 1
fi

"$root/scripts/build.sh"

sluicectl="$build/agent/sluicectl/sluicectl"
probe="$build/tests/tools/sluice_probe"
pins=/sys/fs/bpf/sluice-demo
tag=sluicedemo
cg_mount=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)
[[ -n "$cg_mount" ]] || { echo "demo-l4.sh: no cgroup2 mount in /proc/mounts" >&2; exit 1; }
cg="$cg_mount/$tag"
pids=()

cleanup() {
  set +e
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  "$sluicectl" bpf --pin-root "$pins" cleanup >/dev/null 2>&1
  for ns in ${tag}-client ${tag}-a ${tag}-b; do ip netns del "$ns" 2>/dev/null; done
  ip link del ${tag}-br 2>/dev/null
  if [[ -d "$cg" ]]; then
    while read -r p; do echo "$p" >"$cg_mount/cgroup.procs"; done <"$cg/cgroup.procs"
    rmdir "$cg"
  fi
}
trap cleanup EXIT
cleanup

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Pods: network namespaces on a bridge"
ip link add ${tag}-br type bridge
ip link set ${tag}-br up
i=0
for pod in client:10.77.0.10 a:10.77.0.2 b:10.77.0.3; do
  name=${pod%%:*} addr=${pod#*:}
  ns=${tag}-$name
  ip netns add "$ns"
  ip link add "${tag}$i" type veth peer name eth0 netns "$ns"
  ip link set "${tag}$i" master ${tag}-br up
  ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
  echo "  $ns  $addr"
  i=$((i + 1))
done

"$probe" serve --netns ${tag}-a --listen 10.77.0.2:8080 --id server-a >/dev/null &
pids+=($!)
"$probe" serve --netns ${tag}-b --listen 10.77.0.3:8080 --id server-b >/dev/null &
pids+=($!)

step "Load the kernel programs on cgroup $cg"
mkdir -p "$cg"
"$sluicectl" bpf --pin-root "$pins" load --cgroup-root "$cg"
echo "+ sluicectl bpf service set demo --vip 10.96.77.1 --port 80 --cluster weight=25,... --cluster weight=75,..."
"$sluicectl" bpf --pin-root "$pins" service set demo --vip 10.96.77.1 --port 80 \
  --cluster "name=server-a,weight=25,lb=LEAST_REQUEST,ep=10.77.0.2:8080" \
  --cluster "name=server-b,weight=75,lb=LEAST_REQUEST,ep=10.77.0.3:8080"
"$sluicectl" bpf --pin-root "$pins" enrol --netns /run/netns/${tag}-client --ip4 10.77.0.10

step "The client dials 10.96.77.1:80 4000 times"
report=$("$probe" connect --netns ${tag}-client --cgroup "$cg" --to 10.96.77.1:80 --count 4000 --peer)
python3 - "$report" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
print(f"  connections: {r['ok']} of {r['attempts']} succeeded, errors: {r['errors'] or 'none'}")
for server, n in sorted(r["by_server"].items()):
    print(f"  {server}: {n:5d}  ({100.0 * n / max(r['ok'], 1):.1f}%)  {'#' * (n // 80)}")
print(f"  getpeername() reported the VIP on every socket: {r['peer_mismatch'] == 0}")
PY

step "The kernel's view: sluicectl bpf dump"
"$sluicectl" bpf --pin-root "$pins" dump all

step "The same, raw: bpftool map dump pinned $pins/sluice_services"
echo "(first 50 lines: the record has room for 16 weighted clusters)"
bpftool map dump pinned "$pins/sluice_services" | head -50

step "Unenrolled, the client reaches nothing at the VIP (no translation)"
"$sluicectl" bpf --pin-root "$pins" unenrol --netns /run/netns/${tag}-client
"$probe" connect --netns ${tag}-client --cgroup "$cg" --to 10.96.77.1:80 --count 3 |
  python3 -c 'import json,sys; r=json.load(sys.stdin); print("  %d of 3 connected; errors: %s" % (r["ok"], r["errors"]))'

step "Clean up: programs, pins, namespaces, cgroup"
