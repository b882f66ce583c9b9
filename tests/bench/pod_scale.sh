#!/usr/bin/env bash
# Pods per node (not a test): what the node agent and its L7 process cost with N enrolled
# pods (Kubernetes' default maximum per node is 110). A local cluster runs N helloworld
# pods in an enrolled namespace, plus one client; the script reports, for the agent and
# its L7 process: resident memory, threads, open file descriptors, and CPU while idle
# (SECONDS of no traffic); then the same CPU figure while the client sends requests to
# the helloworld Service (every request is served by one pod's inbound proxy side and by
# the client pod's outbound proxy).
#
#   tests/bench/pod_scale.sh [--pods 110] [--seconds 30] [--l7-workers "0 2"]
#
# --l7-workers: the L7 process's threads (the agent's --l7-workers: 0 is a thread per
# pod in its namespace, N shared workers); a list runs the whole measure once per value,
# each on a fresh cluster, with the same load, and ends with a table of both. Default:
# the agent's own default.
#
# Root. The cluster is private (state dir, bridge, subnets, pins and cgroup named
# "sluicet-ps…") and is torn down on exit, also on failure or Ctrl-C.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${BUILD_DIR:-$root/build}
ctl="$build/agent/sluicectl/sluicectl"
pods=110
seconds=30
modes=default
while (($#)); do
  case $1 in
    --pods) pods=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --l7-workers) modes=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "pod_scale.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ $EUID -eq 0 ]] || { echo "pod_scale.sh: run as root" >&2; exit 1; }
[[ -x $ctl ]] || { echo "pod_scale.sh: $ctl missing (scripts/build.sh)" >&2; exit 1; }

tag=sluicet-ps
state=/tmp/$tag-local
work=$(mktemp -d /tmp/$tag-XXXXXX)
cg=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)
cleanup() {
  "$ctl" local down --state-dir "$state" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat >"$work/scale.yaml" <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: scale
  labels: {istio.io/dataplane-mode: sluice}
---
apiVersion: v1
kind: Service
metadata: {name: helloworld, namespace: scale}
spec:
  selector: {app: helloworld}
  ports:
  - {name: http, port: 5000}
---
# A request timeout: the client's outbound proxy routes the Service (L7), not the kernel.
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: helloworld, namespace: scale}
spec:
  hosts: [helloworld]
  http:
  - timeout: 5s
    route:
    - destination: {host: helloworld}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: scale}
spec:
  replicas: 1
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      containers:
      - {name: sleep, image: curlimages/curl, command: ["/bin/sleep", "infinity"]}
EOF

# Two Deployments (v1, v2: the local cluster takes up to 100 replicas each).
for v in 1 2; do
  n=$(( v == 1 ? (pods + 1) / 2 : pods / 2 ))
  cat >>"$work/scale.yaml" <<EOF
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: helloworld-v$v, namespace: scale}
spec:
  replicas: $n
  selector: {matchLabels: {app: helloworld, version: v$v}}
  template:
    metadata: {labels: {app: helloworld, version: v$v}}
    spec:
      containers:
      - {name: helloworld, image: istio/examples-helloworld-v$v, ports: [{containerPort: 5000}]}
EOF
done

run_mode() {  # WORKERS ("default": the agent's own)
  local w=$1
  agent_bin=$build/agent/daemon/sluice-agent
  if [[ $w != default ]]; then
    # The agent with --l7-workers W: a wrapper named like it (it execs the real binary,
    # whose /proc/self/exe then starts the L7 process with the same value).
    agent_bin=$work/sluice-agent
    printf '#!/bin/sh\nexec %q "$@" --l7-workers %q\n' "$build/agent/daemon/sluice-agent" "$w" >"$agent_bin"
    chmod +x "$agent_bin"
  fi
  echo "#### --l7-workers $w"
  echo "pod_scale: cluster up with $pods helloworld pods and a client (state $state)"
  t0=$SECONDS
  "$ctl" local up --state-dir "$state" --profile minimal --agent-bin "$agent_bin" --bridge sluicet-ps0 \
    --pod-subnet 10.247.0.0/16 --service-subnet 10.99.0.0/16 --netns-prefix sluicet-ps- \
    --cgroup-dir "$cg/sluicet-ps" --pin-root /sys/fs/bpf/sluicet-ps \
    --admin-address 127.0.0.1:18480 --proxy-port 18481 --ready-timeout 120 \
    -f "$work/scale.yaml" >"$work/up.log"
  echo "pod_scale: up in $((SECONDS - t0)) s"

  # The node agent (--role node) and its L7 process (--role l7), by command line.
  pid_of_role() {
    local role=$1 p
    for p in /proc/[0-9]*; do
      if { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -q -- "sluice-agent.*--role $role.*sluicet-ps\|sluice-agent.*sluicet-ps.*--role $role"; then
        basename "$p"; return
      fi
    done
  }
  agent=$(pid_of_role node)
  [[ -n $agent ]] || { echo "pod_scale: no node agent process found" >&2; exit 1; }
  l7=$(pgrep -P "$agent" -f -- '--role l7' | head -1 || true)
  [[ -n $l7 ]] || { echo "pod_scale: no L7 process under the agent ($agent)" >&2; exit 1; }

  enrolled() { curl -s http://127.0.0.1:18480/pods | jq '[.[] | select(.enrolled == true)] | length' 2>/dev/null || echo 0; }
  t0=$SECONDS
  until (( $(enrolled) >= pods + 1 )); do
    ((SECONDS - t0 < 300)) || { echo "pod_scale: only $(enrolled) pods enrolled" >&2; exit 1; }
    sleep 2
  done
  echo "pod_scale: $((pods + 1)) pods enrolled"

  ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
  figures() {  # PID NAME
    local rss threads fds
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$1/status")
    threads=$(awk '/^Threads/ {print $2}' "/proc/$1/status")
    fds=$(find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    printf '%-12s RSS %6d MiB   threads %4d   fds %5d\n' "$2" $((rss / 1024)) "$threads" "$fds"
    last_figures="$((rss / 1024)) MiB | $threads | $fds"
  }
  cpu_over() {  # SECONDS: CPU % of one core of the agent and the L7 process over that time
    local a0 l0 a1 l1 hz
    hz=$(getconf CLK_TCK)
    a0=$(ticks "$agent"); l0=$(ticks "$l7")
    sleep "$1"
    a1=$(ticks "$agent"); l1=$(ticks "$l7")
    printf 'agent %.1f%%, L7 process %.1f%% of one core\n' \
      "$(echo "100 * ($a1 - $a0) / $hz / $1" | bc -l)" "$(echo "100 * ($l1 - $l0) / $hz / $1" | bc -l)"
  }

  echo "== $((pods + 1)) enrolled pods, idle"
  figures "$agent" "node agent"
  figures "$l7" "L7 process"
  idle=$(cpu_over "$seconds")
  echo "idle CPU over $seconds s: $idle"
  l7_idle_figures=$last_figures
  l7_idle_cpu=$(sed -n 's/.*L7 process \([0-9.]*%\).*/\1/p' <<<"$idle")

  echo "== under load: wrk in the client pod, 16 connections to helloworld:5000/hello (L7: the VirtualService's timeout)"
  a0=$(ticks "$agent"); l0=$(ticks "$l7")
  "$ctl" local exec --state-dir "$state" -n scale deploy/client -- \
    wrk -t1 -c16 -d"${seconds}s" --latency http://helloworld.scale:5000/hello >"$work/wrk.txt" 2>&1 || true
  a1=$(ticks "$agent"); l1=$(ticks "$l7")
  hz=$(getconf CLK_TCK)
  grep -E "Requests/sec|Non-2xx|Socket errors| 99%" "$work/wrk.txt" || { cat "$work/wrk.txt"; exit 1; }
  printf 'CPU over the run: agent %.1f%%, L7 process %.1f%% of one core\n' \
    "$(echo "100 * ($a1 - $a0) / $hz / $seconds" | bc -l)" "$(echo "100 * ($l1 - $l0) / $hz / $seconds" | bc -l)"
  l7_load_cpu=$(printf '%.1f %%' "$(echo "100 * ($l1 - $l0) / $hz / $seconds" | bc -l)")
  rps=$(awk '/Requests\/sec/ {printf "%d", $2}' "$work/wrk.txt")
  p99=$(awk '$1 == "99%" {print $2}' "$work/wrk.txt")
  figures "$agent" "node agent"
  figures "$l7" "L7 process"
  summary+=("| $w | $((pods + 1)) | $l7_idle_figures | $l7_idle_cpu | $l7_load_cpu | $rps | $p99 |")
  "$ctl" local down --state-dir "$state" >/dev/null 2>&1 || true
}

summary=()
for m in $modes; do
  run_mode "$m"
done
echo
echo "L7 process, $((pods + 1)) enrolled pods, wrk -t1 -c16 for $seconds s:"
echo "| --l7-workers | pods | RSS | threads | fds | idle CPU | CPU under load | req/s | p99 |"
echo "|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${summary[@]}"
