#!/usr/bin/env bash
# Kernel L4 benchmark through an Istio-configured TCP service on a local cluster (not a
# test): connections per second, and connect latency, from a pod to a TCP Service
#   - decided by Sluice's connect hook (a pod of an enrolled namespace; the Service, its
#     kernel record and its endpoint come from Istio/Kubernetes YAML through the control
#     plane, xDS and the agent's kernel sync, as a user sets them up),
#   - through the cluster's kube-proxy stand-in, iptables DNAT (a pod of a namespace
#     outside the mesh dialling the same VIP),
#   - direct to the endpoint's pod address (the same pod outside the mesh),
# first with 10 Services on the cluster, then with 10,000, in one run: every Service is a
# TCP port (`tcp-…`) selecting the same server pod, so the kernel has N services and the
# nat table N DNAT rules; the clients dial the Service in the middle of the list.
#
# The server is sluice_probe (greets, then closes after the client); each measurement is
# `sluice_probe bench` (connect, read the greeting, close, for SECONDS) run inside the
# client pod with `sluicectl local exec`. Figures: the median of ROUNDS rounds per path,
# paths alternated within a round.
#
#   tests/bench/l4_local_bench.sh [--services 10,10000] [--seconds 5] [--rounds 3]
#                                 [--agent-arg ARG]...
#
# --agent-arg passes ARG to the node agent (through a wrapper given to `local up
# --agent-bin`), e.g. --agent-arg --no-kernel-access-log to measure the hook without the
# agent's per-connection access-log lines.
#
# Root. The cluster is private (state dir, bridge, subnets, pins and cgroup named
# "sluicet-l4b…") and is torn down on exit, also on failure or Ctrl-C.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${BUILD_DIR:-$root/build}
ctl="$build/agent/sluicectl/sluicectl"
probe="$build/tests/tools/sluice_probe"
counts=10,10000
seconds=5
rounds=3
agent_args=()
while (($#)); do
  case $1 in
    --services) counts=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --agent-arg) agent_args+=("$2"); shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "l4_local_bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ $EUID -eq 0 ]] || { echo "l4_local_bench.sh: run as root" >&2; exit 1; }
for b in "$ctl" "$probe"; do
  [[ -x $b ]] || { echo "l4_local_bench.sh: $b missing (scripts/build.sh)" >&2; exit 1; }
done

if [[ ${SHIELD:-1} == 1 ]] && [[ -w /proc/self/autogroup ]]; then
  echo -20 >/proc/self/autogroup 2>/dev/null || true
fi

tag=sluicet-l4b
state=/tmp/$tag-local
work=$(mktemp -d /tmp/$tag-XXXXXX)
cg=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)
server_pid=""
local_() { "$ctl" local --state-dir "$state" "$@"; }
cleanup() {
  [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null || true
  "$ctl" local down --state-dir "$state" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# N Services (tcp-1 … tcp-N, port 7000) over one server pod, in namespace `bench`.
services_yaml() {  # FROM TO
  for ((i = $1; i <= $2; i++)); do
    printf -- '---\napiVersion: v1\nkind: Service\nmetadata: {name: tcp-%d, namespace: bench}\n' "$i"
    printf 'spec:\n  selector: {app: server}\n  ports:\n  - {name: tcp-probe, port: 7000, targetPort: 7100}\n'
  done
}
cat >"$work/base.yaml" <<'EOF'
apiVersion: v1
kind: Namespace
metadata: {name: bench}
---
apiVersion: v1
kind: Namespace
metadata:
  name: mesh
  labels: {istio.io/dataplane-mode: sluice}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: server, namespace: bench}
spec:
  replicas: 1
  selector: {matchLabels: {app: server}}
  template:
    metadata: {labels: {app: server}}
    spec:
      containers:
      - {name: sleep, image: curlimages/curl, command: ["/bin/sleep", "infinity"]}
EOF
for ns in mesh plain; do
  cat >>"$work/base.yaml" <<EOF
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: $ns}
spec:
  replicas: 1
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      containers:
      - {name: sleep, image: curlimages/curl, command: ["/bin/sleep", "infinity"]}
EOF
done

agent_bin=()
if ((${#agent_args[@]})); then
  printf '#!/bin/sh\nexec %q "$@"' "$build/agent/daemon/sluice-agent" >"$work/agent"
  printf ' %q' "${agent_args[@]}" >>"$work/agent"
  printf '\n' >>"$work/agent"
  chmod +x "$work/agent"
  agent_bin=(--agent-bin "$work/agent")
  echo "l4_local_bench: agent arguments: ${agent_args[*]}"
fi

IFS=, read -r -a ns_counts <<<"$counts"
first=${ns_counts[0]}
services_yaml 1 "$first" >"$work/services-1.yaml"
echo "l4_local_bench: cluster up with $first services (state $state)"
"$ctl" local up --state-dir "$state" --bridge sluicet-l4b0 --pod-subnet 10.245.0.0/16 \
  --service-subnet 10.98.0.0/16 --netns-prefix sluicet-l4b- --cgroup-dir "$cg/sluicet-l4b" \
  --pin-root /sys/fs/bpf/sluicet-l4b --admin-address 127.0.0.1:18470 --proxy-port 18471 \
  "${agent_bin[@]}" -f "$work/base.yaml" -f "$work/services-1.yaml" >/dev/null

pod_field() {  # NAMESPACE FIELD: of the pod of deployment "client"/"server" there
  jq -r --arg ns "$1" '.pods[] | select(.namespace == $ns) | .'"$2" "$state/state.json" | head -1
}
server_ip=$(pod_field bench ip)
server_netns=$(pod_field bench netns)
"$probe" serve --netns "$server_netns" --listen 0.0.0.0:7100 --id server >"$work/server.log" 2>&1 &
server_pid=$!
sleep 0.5

kernel_services() {
  "$ctl" bpf --pin-root /sys/fs/bpf/sluicet-l4b dump services 2>/dev/null | grep -c '_7000\|:7000' || true
}
nat_rules() { iptables -w -t nat -S 2>/dev/null | grep -c -- '--dport 7000' || true; }
wait_for() {  # N: the kernel and the nat table hold N services
  local n=$1 t0=$SECONDS
  until [[ $(kernel_services) -ge $n && $(nat_rules) -ge $n ]]; do
    ((SECONDS - t0 < 600)) || { echo "l4_local_bench: the cluster did not reach $n services" >&2; exit 1; }
    sleep 1
  done
  echo "l4_local_bench: $n services in the kernel and the nat table ($((SECONDS - t0)) s)"
}

bench() {  # NAMESPACE TARGET -> one JSON line
  local pod
  pod=$(jq -r --arg ns "$1" '.pods[] | select(.namespace == $ns) | .name' "$state/state.json" | head -1)
  local_ exec "$pod" -n "$1" -- "$probe" bench --netns /proc/self/ns/net --to "$2" \
    --seconds "$seconds"
}

results=()
done_count=$first
for n in "${ns_counts[@]}"; do
  if ((n > done_count)); then
    services_yaml $((done_count + 1)) "$n" >"$work/services-$n.yaml"
    echo "l4_local_bench: adding services $((done_count + 1))..$n"
    local_ apply -f "$work/services-$n.yaml" >/dev/null
    done_count=$n
  fi
  wait_for "$n"
  mid=$(((n + 1) / 2))
  vip=$(jq -r --arg name "tcp-$mid" '.services[] | select(.name == $name) | .cluster_ip' \
    "$state/state.json")
  [[ -n $vip && $vip != null ]] || { echo "l4_local_bench: no VIP for tcp-$mid" >&2; exit 1; }
  echo "l4_local_bench: $n services; dialling tcp-$mid ($vip:7000), endpoint $server_ip:7100"
  for ((r = 1; r <= rounds; r++)); do
    for path in direct iptables kernel; do
      case $path in
        direct) out=$(bench plain "$server_ip:7100") ;;
        iptables) out=$(bench plain "$vip:7000") ;;
        kernel) out=$(bench mesh "$vip:7000") ;;
      esac
      results+=("$(jq -c --arg p "$path" --argjson n "$n" --argjson r "$r" \
        '{services: $n, path: $p, round: $r} + .' <<<"$out")")
      echo "  round $r $path: $(jq -r '"\(.rate|floor) conn/s, p50 \(.p50_us) us, p99 \(.p99_us) us"' <<<"$out")"
    done
  done
done

echo
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%s\n' "${results[@]}" | jq -rs '
  group_by(.services)[] as $g
  | ($g | group_by(.path) | map({path: .[0].path,
        rate: (map(.rate) | sort | .[(length / 2 | floor)]),
        p50: (map(.p50_us) | sort | .[(length / 2 | floor)]),
        p99: (map(.p99_us) | sort | .[(length / 2 | floor)])})) as $m
  | ($m | map(select(.path == "direct"))[0].rate) as $direct
  | ($m | map(select(.path == "iptables"))[0].rate) as $ipt
  | "services \($g[0].services):",
    ($m[] | "  \(.path | . + "         " | .[0:9]) \(.rate | floor) conn/s   p50 \(.p50) us   p99 \(.p99) us   ÷direct \((.rate / $direct * 100 | floor) / 100)   ÷iptables \((.rate / $ipt * 100 | floor) / 100)")'
