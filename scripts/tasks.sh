#!/usr/bin/env bash
# The eight Istio traffic-management tasks, Istio's proxyless gRPC example (task 9) and
# the Secure Gateways task (task 10),
# run on the local cluster as a user would run them, each checked and reported: the
# commands, the evidence, PASS or FAIL.
#
#   scripts/tasks.sh [--task N]... [--keep] [--state-dir DIR]
#
#   --task N          run only task N (1-10, or its name: enrolment, ingress, egress-http,
#                     egress-tls, service-entry, destination-rule, traffic-shifting,
#                     mirroring, grpc-proxyless, secure-gateway); repeatable. Default: all
#                     ten, in order.
#   --keep            leave the cluster up at the end (default: `sluicectl local down`).
#   --state-dir DIR   the local cluster's state directory (default $SLUICE_LOCAL_STATE or
#                     /var/run/sluice/local).
#   --ingress-port P  local port for the ingress port-forward (default 8080).
#   --up-arg ARG      extra argument for `sluicectl local up` (repeatable; the CTest
#                     suite pins the agent's admin port, pin root and subnet with it).
#   --cgroup-name N   run the cluster's pods under <cgroup2 mount>/N (passed to `local up`
#                     as --cgroup-dir; the mount is found in /proc/mounts).
#   --up-only         bring the cluster up (and label `default`), run nothing, keep it.
#   --down-only       tear the cluster in --state-dir down, run nothing.
#   --no-color        plain output.
#
# It builds nothing: it expects the build tree (BUILD_DIR, default ./build; see
# scripts/build.sh). Exit status 0 only if every task that ran passed. Needs root (the
# local cluster makes network namespaces and loads BPF programs). docs/tasks.md says
# what each task checks and why.
#
# Each task's check lives with its example: examples/NN-*/check.sh, next to the
# manifests and the README, run here one after the other; examples/lib/tasks.sh is what
# they share with this runner (the report's format, the cluster lookups).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build}
SLUICECTL="$build/agent/sluicectl/sluicectl"
examples="$root/examples"

state_dir=${SLUICE_LOCAL_STATE:-/var/run/sluice/local}
keep=0
mode=run
ingress_port=8080
color=1
selected=()
up_args=()

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

task_names=(_ enrolment ingress egress-http egress-tls service-entry destination-rule
  traffic-shifting mirroring grpc-proxyless secure-gateway)
task_titles=(_
  "Enrolment: label the namespace, traffic goes through Sluice; remove it, it does not"
  "Ingress: Gateway + VirtualService for httpbin.example.com through the ingress gateway"
  "Egress HTTP: http://edition.cnn.com through the egress gateway"
  "Egress TLS passthrough: https://edition.cnn.com through the egress gateway by SNI"
  "ServiceEntry: MESH_EXTERNAL and MESH_INTERNAL entries in the registry, and routed"
  "DestinationRule: load-balancing policy LEAST_REQUEST, then RANDOM"
  "Traffic shifting: 25% to helloworld v1, 75% to v2"
  "Mirroring: all traffic to httpbin v1, a copy of each request to v2"
  "Proxyless gRPC: grpc-agent pods, a 25/75 split by the client's own xDS, no proxy"
  "Secure gateway: SIMPLE TLS on 443 for httpbin.example.com with a Secret, over HTTP/2")

while (($#)); do
  case $1 in
    --task)
      [[ $# -ge 2 ]] || { echo "tasks.sh: --task needs a value" >&2; exit 2; }
      n=""
      for i in 1 2 3 4 5 6 7 8 9 10; do
        [[ $2 == "$i" || $2 == "${task_names[$i]}" || $2 == "$(printf %02d "$i")" ]] && n=$i
      done
      [[ -n $n ]] || { echo "tasks.sh: no task '$2' (1-10 or ${task_names[*]:1})" >&2; exit 2; }
      selected+=("$n")
      shift 2 ;;
    --keep) keep=1; shift ;;
    --state-dir) state_dir=${2:?--state-dir needs a value}; shift 2 ;;
    --ingress-port) ingress_port=${2:?--ingress-port needs a value}; shift 2 ;;
    --up-arg) up_args+=("${2?--up-arg needs a value}"); shift 2 ;;
    --cgroup-name)
      cg_mount=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)
      [[ -n $cg_mount ]] || { echo "tasks.sh: no cgroup2 mount in /proc/mounts" >&2; exit 1; }
      up_args+=("--cgroup-dir=$cg_mount/${2:?--cgroup-name needs a value}")
      shift 2 ;;
    --up-only) mode=up; keep=1; shift ;;
    --down-only) mode=down; shift ;;
    --no-color) color=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "tasks.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
((${#selected[@]})) || selected=(1 2 3 4 5 6 7 8 9 10)
[[ -t 1 ]] || color=0
state_dir=$(realpath -ms "$state_dir")
export SLUICE_LOCAL_STATE=$state_dir

if [[ $EUID -ne 0 ]]; then
  echo "tasks.sh: run as root (the local cluster makes network namespaces and loads BPF programs)" >&2
  exit 1
fi
for bin in "$SLUICECTL" "$build/agent/daemon/sluice-agent" "$build/agent/apps/sluice-apps" \
  "$build/cni/sluice-cni"; do
  if [[ ! -x $bin ]]; then
    echo "tasks.sh: $bin is missing: build first (scripts/build.sh, or BUILD_DIR=...)" >&2
    exit 1
  fi
done

work=$(mktemp -d /tmp/sluice-tasks.XXXXXX)

# What every check sees (examples/lib/tasks.sh reads it); the library also gives this
# runner its reporting (show_cmd, run, quiet, indent, note, fail) and cds to the checkout.
export BUILD_DIR=$build TASKS_WORK=$work TASKS_COLOR=$color TASKS_INGRESS_PORT=$ingress_port
# shellcheck source=../examples/lib/tasks.sh
source "$examples/lib/tasks.sh"

# ---------------------------------------------------------------------------------------
# Cluster up / down.

cluster_up() {
  printf '\n%s━━ Local cluster%s\n' "$B" "$N"
  show_cmd export SLUICE_LOCAL_STATE="$state_dir"
  local args=(sluicectl local up --profile demo -f examples/samples -f examples/external "${up_args[@]}")
  run --max 40 --timeout 180 "${args[@]}"
  if ((RC != 0)); then
    printf '%sFAIL: the local cluster did not come up (exit %s); no task can run.%s\n' "$R" "$RC" "$N"
    return 1
  fi
  run sluicectl local label namespace default istio.io/dataplane-mode=sluice
  if ((RC != 0)); then
    printf '%sFAIL: could not label namespace default for enrolment.%s\n' "$R" "$N"
    return 1
  fi
  run --max 30 sluicectl local get pods -A
  # Pods start asynchronously; wait (bounded) until every pod is Running.
  local deadline=$((SECONDS + 60))
  while :; do
    quiet sluicectl local get pods -A
    if ((RC == 0)) && ! awk 'NR > 1 && $0 !~ /Running/ {bad = 1} END {exit !bad}' <<<"$OUT"; then
      break
    fi
    if ((SECONDS >= deadline)); then
      note "not every pod is Running after 60 s:"
      indent 30 <<<"$OUT"
      break
    fi
    sleep 0.5
  done
  return 0
}

cluster_down() {
  printf '\n%s━━ Tear down%s\n' "$B" "$N"
  run --timeout 120 sluicectl local down
}

if [[ $mode == down ]]; then
  cluster_down
  rm -rf "$work"
  exit $RC
fi

on_exit() {
  local rc=$?
  if ((keep == 0)); then
    cluster_down >/dev/null 2>&1 || true
    echo "(cluster torn down: sluicectl local down)"
  fi
  rm -rf "$work"
  exit $rc
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------
# The tasks. Each is its example's check.sh, run as a process of its own: it sets up what
# its README says, checks, shows the evidence, and removes what it applied (as the Istio
# task's "Cleanup" does), so any task can run alone.

# run_task N: runs task N's check; its failed checks land in $fail_file.
run_task() {
  local dir
  dir=$(ls -d "$examples"/"$(printf %02d "$1")"-* 2>/dev/null | head -n1)
  if [[ -z $dir ]]; then
    fail "examples/$(printf %02d "$1")-${task_names[$1]} is missing (the task's Istio resources are not in the tree)"
    return 1
  fi
  if [[ ! -x $dir/check.sh ]]; then
    fail "examples/$(basename "$dir")/check.sh is missing (or not executable)"
    return 1
  fi
  TASKS_FAIL_FILE=$fail_file "$dir/check.sh"
}

# ---------------------------------------------------------------------------------------

if [[ ! -d $examples/samples || ! -d $examples/external ]]; then
  echo "tasks.sh: examples/samples and examples/external must exist" >&2
  exit 1
fi
cluster_up || exit 1
[[ $mode == up ]] && exit 0

declare -A result reason
for t in "${selected[@]}"; do
  printf '\n%s━━ Task %d: %s%s\n' "$B" "$t" "${task_titles[$t]}" "$N"
  note "examples/$(basename "$(ls -d "$examples"/"$(printf %02d "$t")"-* 2>/dev/null | head -n1)" 2>/dev/null)/README.md"
  fail_file=$work/task-$t.fail
  : >"$fail_file"
  start=$SECONDS
  agent_log=$state_dir/logs/agent.log
  agent_log_from=$( [[ -f $agent_log ]] && wc -l <"$agent_log" || echo 0)
  access_log=$state_dir/logs/agent-access.log
  access_log_from=$( [[ -f $access_log ]] && wc -l <"$access_log" || echo 0)
  run_task "$t"
  sub_rc=$?
  ((sub_rc != 0)) && [[ ! -s $fail_file ]] && echo "the task's script stopped with status $sub_rc" >>"$fail_file"
  if [[ -s $fail_file && -f $agent_log ]]; then
    # What the node agent complained about meanwhile: often the reason itself.
    complaints=$(tail -n +"$((agent_log_from + 1))" "$agent_log" | grep -E '\[(error|warning)\]' | awk '!seen[substr($0, 27)]++' | tail -n 5)
    if [[ -n $complaints ]]; then
      note "the node agent's log ($agent_log) during the task, errors and warnings:"
      indent 5 <<<"$complaints"
    fi
    proxied=$(tail -n +"$((access_log_from + 1))" "$access_log" 2>/dev/null | tail -n 3)
    if [[ -n $proxied ]]; then
      note "the last lines of the node agent's access log ($access_log) during the task:"
      indent 3 <<<"$proxied"
    fi
  fi
  if [[ -s $fail_file ]]; then
    result[$t]=FAIL
    reason[$t]=$(head -n1 "$fail_file")
    printf '%sFAIL%s  task %d (%ds): %s\n' "$R" "$N" "$t" $((SECONDS - start)) "$(paste -sd ';' "$fail_file")"
  else
    result[$t]=PASS
    printf '%sPASS%s  task %d (%ds)\n' "$G" "$N" "$t" $((SECONDS - start))
  fi
done

printf '\n%s━━ Summary%s\n' "$B" "$N"
all=0
for t in "${selected[@]}"; do
  if [[ ${result[$t]} == PASS ]]; then
    printf '  %sPASS%s  %d %-18s\n' "$G" "$N" "$t" "${task_names[$t]}"
  else
    all=1
    printf '  %sFAIL%s  %d %-18s %s\n' "$R" "$N" "$t" "${task_names[$t]}" "${reason[$t]}"
  fi
done
exit $all
