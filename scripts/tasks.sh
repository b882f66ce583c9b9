#!/usr/bin/env bash
# The eight Istio traffic-management tasks, run on the local cluster as a user would run
# them, each checked and reported: the commands, the evidence, PASS or FAIL.
#
#   scripts/tasks.sh [--task N]... [--keep] [--state-dir DIR]
#
#   --task N          run only task N (1-8, or its name: enrolment, ingress, egress-http,
#                     egress-tls, service-entry, destination-rule, traffic-shifting,
#                     mirroring); repeatable. Default: all eight, in order.
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
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build}
SLUICECTL="$build/agent/sluicectl/sluicectl"
CHECK="$root/scripts/tasks_check.py"
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
  traffic-shifting mirroring)
task_titles=(_
  "Enrolment: label the namespace, traffic goes through Sluice; remove it, it does not"
  "Ingress: Gateway + VirtualService for httpbin.example.com through the ingress gateway"
  "Egress HTTP: http://edition.cnn.com through the egress gateway"
  "Egress TLS passthrough: https://edition.cnn.com through the egress gateway by SNI"
  "ServiceEntry: MESH_EXTERNAL and MESH_INTERNAL entries in the registry, and routed"
  "DestinationRule: load-balancing policy LEAST_REQUEST, then RANDOM"
  "Traffic shifting: 25% to helloworld v1, 75% to v2"
  "Mirroring: all traffic to httpbin v1, a copy of each request to v2")

while (($#)); do
  case $1 in
    --task)
      [[ $# -ge 2 ]] || { echo "tasks.sh: --task needs a value" >&2; exit 2; }
      n=""
      for i in 1 2 3 4 5 6 7 8; do
        [[ $2 == "$i" || $2 == "${task_names[$i]}" || $2 == "0$i" ]] && n=$i
      done
      [[ -n $n ]] || { echo "tasks.sh: no task '$2' (1-8 or ${task_names[*]:1})" >&2; exit 2; }
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
((${#selected[@]})) || selected=(1 2 3 4 5 6 7 8)
[[ -t 1 ]] || color=0
state_dir=$(realpath -ms "$state_dir")
export SLUICE_LOCAL_STATE=$state_dir
# Commands are shown and run from the checkout, as the examples' READMEs write them.
cd "$root" || exit 1
state_file=$state_dir/state.json

if ((color)); then
  B=$'\033[1m' D=$'\033[2m' G=$'\033[32m' R=$'\033[31m' N=$'\033[0m'
else
  B="" D="" G="" R="" N=""
fi

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

# ---------------------------------------------------------------------------------------
# Reporting. Every command a task runs is printed as the user would type it, then its
# output (indented, shortened); evidence lines and checks follow.

# sluicectl as the user types it; the build tree's binary underneath.
sluicectl() { "$SLUICECTL" "$@"; }

show_cmd() {
  local out="" a
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then out+="$a "; else out+="'${a//\'/\'\\\'\'}' "; fi
  done
  printf '%s$ %s%s\n' "$B" "${out% }" "$N"
}

indent() { # indent [MAX_LINES] < text
  local max=${1:-15} n=0 line
  while IFS= read -r line; do
    n=$((n + 1))
    ((n <= max)) && printf '    %s\n' "$line"
  done
  if ((max == 0 && n > 0)); then
    printf '    %s(%d lines)%s\n' "$D" "$n" "$N"
  elif ((n > max)); then
    printf '    %s… (%d more lines)%s\n' "$D" $((n - max)) "$N"
  fi
  return 0
}

# run [--max N] [--timeout S] CMD…: shows and runs CMD; OUT holds stdout+stderr, RC status.
OUT="" RC=0
run() {
  local max=15 t=60
  while [[ $1 == --* ]]; do
    case $1 in --max) max=$2; shift 2 ;; --timeout) t=$2; shift 2 ;; *) break ;; esac
  done
  show_cmd "$@"
  local cmd=("$@")
  [[ ${cmd[0]} == sluicectl ]] && cmd[0]=$SLUICECTL
  OUT=$(timeout "$t" "${cmd[@]}" </dev/null 2>&1)
  RC=$?
  [[ -n $OUT ]] && indent "$max" <<<"$OUT"
  ((RC == 124)) && printf '    %s(timed out after %ss)%s\n' "$R" "$t" "$N"
  return $RC
}

# quiet CMD…: runs CMD without showing it (lookups the user would do by eye).
quiet() {
  local cmd=("$@")
  [[ ${cmd[0]} == sluicectl ]] && cmd[0]=$SLUICECTL
  OUT=$(timeout 60 "${cmd[@]}" </dev/null 2>&1)
  RC=$?
  return $RC
}

# answer: the first line of the last command's output, or that there was none.
answer() {
  if [[ -n $OUT ]]; then
    printf "'%s'" "$(head -n1 <<<"$OUT")"
  else
    printf 'no answer (exit status %s)' "$RC"
  fi
}

evidence() { printf '  %s▸%s %s\n' "$B" "$N" "$*"; }
note() { printf '  %s%s%s\n' "$D" "$*" "$N"; }

# pass "what" / fail "what": a check's outcome; failures are collected per task.
fail_file=""
pass() { printf '  %s✔ %s%s\n' "$G" "$*" "$N"; }
fail() {
  printf '  %s✘ %s%s\n' "$R" "$*" "$N"
  echo "$*" >>"$fail_file"
}

# until_ok SECONDS CMD…: retries a check (config propagates asynchronously) until it
# succeeds or the time is up; its last run's OUT/RC stay.
until_ok() {
  local deadline=$((SECONDS + $1))
  shift
  while :; do
    "$@" >/dev/null && return 0
    ((SECONDS >= deadline)) && return 1
    sleep 0.3
  done
}

# ---------------------------------------------------------------------------------------
# Cluster lookups (state.json, see docs/local-cluster.md).

pods_of() { # pods_of NS (--owner Deployment/X | --labels k=v,…)
  python3 "$CHECK" pods --state "$state_file" -n "$@" 2>/dev/null
}
first_pod() { pods_of "$@" | head -n1; }
client_pod() {
  local p
  for d in sleep curl; do
    p=$(first_pod default --owner "Deployment/$d")
    [[ -n $p ]] && { echo "$p"; return 0; }
  done
  return 1
}
agent_admin() { python3 "$CHECK" state --state "$state_file" agent_admin 2>/dev/null || echo 127.0.0.1:15000; }
config_dir() { python3 "$CHECK" state --state "$state_file" config_dir 2>/dev/null || echo "$state_dir/config"; }

# Sum of kernel connect-path counters from the agent's /metrics.
kernel_count() { # kernel_count REASON…
  local m
  m=$(curl -s --max-time 3 "http://$(agent_admin)/metrics") || { echo "?"; return; }
  local re
  re=$(IFS='|'; echo "$*")
  awk -v re="^sluice_kernel_connects_total\\{reason=\"($re)\"\\}" '$0 ~ re {s += $2} END {print s + 0}' <<<"$m"
}

# task_files DIR: the YAML files of an example directory, for messages.
yaml_in() { find "$1" -maxdepth 1 -name '*.yaml' -o -maxdepth 1 -name '*.yml' | sort; }

need_example() { # need_example DIR [FILE…]: FAIL (and return 1) when examples are missing
  local dir=$examples/$1 f
  shift
  if [[ ! -d $dir ]]; then
    fail "examples/${dir#"$examples"/} is missing (the task's Istio resources are not in the tree)"
    return 1
  fi
  for f in "$@"; do
    if [[ ! -f $dir/$f ]]; then
      fail "examples/${dir#"$examples"/}/$f is missing"
      return 1
    fi
  done
}

# A marker per request (User-Agent), so a log line can be tied to the request that made it.
marker() { echo "sluice-tasks/$1-$$-$RANDOM"; }

# ---------------------------------------------------------------------------------------
# Cluster up / down.

cluster_up() {
  printf '\n%s━━ Local cluster%s\n' "$B" "$N"
  show_cmd export SLUICE_LOCAL_STATE="$state_dir"
  local args=(sluicectl local up -f examples/samples -f examples/istio-system -f examples/external "${up_args[@]}")
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
# The tasks. Each runs in a subshell: it sets up what its README says, checks, shows the
# evidence, and removes what it applied (as the Istio task's "Cleanup" does), so any
# task can run alone.

# 1. Enrolment ---------------------------------------------------------------------------
task_1() {
  need_example 01-enrolment || true
  local client log
  client=$(client_pod) || { fail "no client pod (Deployment sleep or curl in default)"; return; }
  log=$state_dir/logs/agent-access.log
  note "The client pod $client calls httpbin; the node agent logs each connection the"
  note "kernel translates (and each request its in-pod proxy handles) in $log."

  request() { # request MARK: one request from the client pod, by Service name
    run sluicectl local exec "$client" -- curl -sS -o /dev/null -w '%{http_code}\n' \
      --max-time 5 -A "$1" http://httpbin:8000/get
  }
  new_log_lines() { # new_log_lines FROM_LINE MARK: the request's line, by User-Agent (L7),
    # or the kernel's line for a connection from this client to httpbin (L4).
    [[ -f $log ]] || return 0
    tail -n +"$(($1 + 1))" "$log" |
      grep -E -- "$(printf '%s' "$2" | sed 's/[][\.*^$]/\\&/g')|\"TCP\" kernel src=default/${client} .*service=httpbin\.default\.svc\.cluster\.local:8000" || true
  }

  # Labelled (the runner labelled `default` when the cluster came up).
  run sluicectl local get ns
  local before_lines before_k after_k mark lines
  before_lines=$( [[ -f $log ]] && wc -l <"$log" || echo 0)
  before_k=$(kernel_count translated redirected)
  mark=$(marker 1a)
  request "$mark"
  local status=$OUT
  # The access log is written when the request ends; allow a moment.
  until_ok 3 test -n "$(new_log_lines "$before_lines" "$mark")"
  lines=$(new_log_lines "$before_lines" "$mark")
  after_k=$(kernel_count translated redirected)
  show_cmd grep -F "$mark" "$log"
  [[ -n $lines ]] && indent 3 <<<"$lines"
  evidence "kernel counters translated+redirected: $before_k → $after_k"
  if [[ $status == 200 ]]; then pass "enrolled: the request answered 200"; else fail "enrolled: the request answered '${status}', not 200"; fi
  if [[ -n $lines ]]; then
    pass "enrolled: the agent's access log has the request's line"
  else
    # Say where the request went instead: the agent's kernel plan for the service.
    local plan
    plan=$(curl -s --max-time 3 "http://$(agent_admin)/config_dump" | python3 -c '
import json, sys
for s in (json.load(sys.stdin).get("kernel") or {}).get("services", []):
    if s.get("name", "").startswith("httpbin.default.svc.cluster.local:"):
        print("in the kernel (L4)" if not s.get("l7") else "sent to the in-pod proxy (L7)")
' 2>/dev/null)
    [[ -n $plan ]] && plan=" (the node agent's plan handles httpbin $plan)"
    fail "enrolled: no line for the request (User-Agent $mark) in $log$plan"
  fi
  if [[ $before_k == "?" || $after_k == "?" ]]; then
    fail "enrolled: could not read the kernel counters from the agent's /metrics ($(agent_admin))"
  elif ((after_k > before_k)); then
    pass "enrolled: the kernel counters moved"
  else
    fail "enrolled: the kernel counters (translated+redirected) did not move ($before_k → $after_k)"
  fi

  # Label removed: the pod leaves the mesh without a restart.
  run sluicectl local label namespace default istio.io/dataplane-mode-
  sleep 1 # the agent polls labels every 200 ms; give it a few periods
  before_lines=$( [[ -f $log ]] && wc -l <"$log" || echo 0)
  before_k=$(kernel_count translated redirected)
  local before_ne after_ne
  before_ne=$(kernel_count not_enrolled)
  mark=$(marker 1b)
  request "$mark"
  status=$OUT
  sleep 0.5
  lines=$(new_log_lines "$before_lines" "$mark")
  after_k=$(kernel_count translated redirected)
  after_ne=$(kernel_count not_enrolled)
  evidence "kernel counters translated+redirected: $before_k → $after_k, not_enrolled: $before_ne → $after_ne"
  if [[ $status == 200 ]]; then
    pass "not enrolled: the request still answers 200 (plain Service routing, no Sluice)"
  else
    fail "not enrolled: the request answered '${status}', not 200 (the cluster's plain Service routing)"
  fi
  if [[ -z $lines ]]; then
    pass "not enrolled: no new access-log line"
  else
    fail "not enrolled: the agent still logged the request: $lines"
  fi
  if [[ $before_k == "?" || $after_k == "?" ]]; then
    fail "not enrolled: could not read the kernel counters from the agent's /metrics ($(agent_admin))"
  elif [[ $before_k == "$after_k" ]] && ((after_ne > before_ne)); then
    pass "not enrolled: the kernel saw the connection and left it alone (not_enrolled moved)"
  elif [[ $before_k == "$after_k" ]]; then
    fail "not enrolled: the kernel's not_enrolled counter did not move ($before_ne → $after_ne)"
  else
    fail "not enrolled: the kernel counters moved ($before_k → $after_k)"
  fi

  # Put the label back for the other tasks, and check the pod is back in.
  run sluicectl local label namespace default istio.io/dataplane-mode=sluice
  sleep 1
  before_lines=$( [[ -f $log ]] && wc -l <"$log" || echo 0)
  before_k=$(kernel_count translated redirected)
  mark=$(marker 1c)
  until_ok 5 eval 'request "$mark" >/dev/null; [[ -n $(new_log_lines "$before_lines" "$mark") ]]'
  after_k=$(kernel_count translated redirected)
  request "$mark"
  evidence "kernel counters translated+redirected: $before_k → $after_k"
  if [[ $before_k != "?" && $after_k != "?" ]] && ((after_k > before_k)); then
    pass "labelled again: the kernel handles the pod's connections again (no restart)"
  else
    fail "labelled again: the kernel counters did not move ($before_k → $after_k)"
  fi
  if [[ -n $(new_log_lines "$before_lines" "$mark") ]]; then
    pass "labelled again: requests are logged again"
  else
    fail "labelled again: the request was not logged (User-Agent $mark)"
  fi
}

# 2. Ingress -----------------------------------------------------------------------------
task_2() {
  need_example 02-ingress || return
  local pf_pid="" pf_log=$work/port-forward.log gw mark
  trap '[[ -n $pf_pid ]] && kill $pf_pid 2>/dev/null; wait 2>/dev/null' RETURN
  run sluicectl local apply -f examples/02-ingress/
  ((RC == 0)) || fail "apply of examples/02-ingress failed (exit $RC)"

  show_cmd sluicectl local port-forward svc/istio-ingressgateway "$ingress_port:80" -n istio-system '&'
  "$SLUICECTL" local port-forward svc/istio-ingressgateway "$ingress_port:80" -n istio-system \
    >"$pf_log" 2>&1 </dev/null &
  pf_pid=$!
  until_ok 10 grep -q "Forwarding from" "$pf_log"
  indent 3 <"$pf_log"
  if ! grep -q "Forwarding from" "$pf_log"; then
    fail "port-forward did not start: $(tail -n 3 "$pf_log" | tr '\n' ' ')"
    return
  fi

  mark=$(marker 2)
  local url=http://127.0.0.1:$ingress_port
  # The gateway gets its routes from xDS a moment after the apply.
  until_ok 10 quiet curl -s -o /dev/null -w '%{http_code}' --max-time 3 -A "$mark" \
    -H Host:httpbin.example.com "$url/status/200"
  [[ $OUT == 200 ]] || sleep 0 # keep the last answer for the report
  run curl -s -I -A "$mark" --max-time 5 -H Host:httpbin.example.com "$url/status/200"
  if [[ $OUT == "HTTP/1.1 200"* ]]; then
    pass "/status/200 with Host httpbin.example.com: 200"
  else
    fail "/status/200 with Host httpbin.example.com: expected HTTP/1.1 200, got $(answer)"
  fi
  run curl -s -I -A "$mark" --max-time 5 -H Host:httpbin.example.com "$url/headers"
  if [[ $OUT == "HTTP/1.1 404"* ]]; then
    pass "/headers (no route) gives 404"
  else
    fail "/headers: expected HTTP/1.1 404, got $(answer)"
  fi

  gw=$(first_pod istio-system --labels istio=ingressgateway)
  if [[ -n $gw ]]; then
    run sluicectl local logs "$gw" -n istio-system
    local lines
    lines=$(grep -F -- "$mark" <<<"$OUT" || true)
    evidence "ingress gateway access log, this run's requests:"
    indent 4 <<<"$lines"
    if grep -q '/status/200' <<<"$lines" && grep -q 'outbound|8000||httpbin.default.svc.cluster.local' <<<"$lines"; then
      pass "the ingress gateway logged /status/200 to outbound|8000||httpbin.default.svc.cluster.local"
    else
      fail "the ingress gateway's log has no /status/200 line to outbound|8000||httpbin.default.svc.cluster.local"
    fi
  else
    fail "no ingress gateway pod (label istio=ingressgateway in istio-system)"
  fi
  run sluicectl local delete -f examples/02-ingress/
}

# 3. Egress HTTP -------------------------------------------------------------------------
task_3() {
  need_example 03-egress-http || return
  local client gw mark
  client=$(client_pod) || { fail "no client pod (Deployment sleep or curl in default)"; return; }
  gw=$(first_pod istio-system --labels istio=egressgateway)
  [[ -n $gw ]] || { fail "no egress gateway pod (label istio=egressgateway in istio-system)"; return; }
  run sluicectl local apply -f examples/03-egress-http/
  ((RC == 0)) || fail "apply of examples/03-egress-http failed (exit $RC)"

  # Wait for the route through the gateway: a probe request lands in the gateway's log.
  local probe
  probe=$(marker 3p)
  gw_has() { quiet sluicectl local logs "$gw" -n istio-system && grep -qF -- "$probe" <<<"$OUT"; }
  until_ok 10 eval 'quiet sluicectl local exec "$client" -- curl -s -o /dev/null --max-time 3 -A "$probe" http://edition.cnn.com/politics; gw_has'
  mark=$(marker 3)
  run sluicectl local exec "$client" -- curl -sS -o /dev/null -D - --max-time 5 -A "$mark" \
    http://edition.cnn.com/politics
  local status
  status=$(head -n1 <<<"$OUT" | awk '{print $2}')
  if [[ $status =~ ^[23][0-9][0-9]$ ]]; then
    pass "the client got an answer from edition.cnn.com ($status)"
  else
    fail "the client's request to http://edition.cnn.com/politics failed: $(answer)"
  fi
  quiet sluicectl local logs "$gw" -n istio-system
  local lines
  lines=$(grep -F -- "$mark" <<<"$OUT" | tail -n 2)
  show_cmd sluicectl local logs "$gw" -n istio-system '|' grep edition.cnn.com '|' tail -n 2
  indent 2 <<<"$lines"
  if grep -qF 'outbound|80||edition.cnn.com' <<<"$lines"; then
    pass "the egress gateway logged the request with outbound|80||edition.cnn.com"
  else
    fail "no line with outbound|80||edition.cnn.com for the request in the egress gateway's log"
  fi
  run sluicectl local delete -f examples/03-egress-http/
}

# 4. Egress TLS passthrough --------------------------------------------------------------
task_4() {
  need_example 04-egress-tls || return
  local client gw before lines ext_ip
  client=$(client_pod) || { fail "no client pod (Deployment sleep or curl in default)"; return; }
  gw=$(first_pod istio-system --labels istio=egressgateway)
  [[ -n $gw ]] || { fail "no egress gateway pod (label istio=egressgateway in istio-system)"; return; }
  run sluicectl local apply -f examples/04-egress-tls/
  ((RC == 0)) || fail "apply of examples/04-egress-tls failed (exit $RC)"

  count_443() {
    quiet sluicectl local logs "$gw" -n istio-system
    grep -cF 'outbound|443||edition.cnn.com' <<<"$OUT"
  }
  before=$(count_443)
  until_ok 10 eval 'quiet sluicectl local exec "$client" -- curl -sk -o /dev/null --max-time 3 https://edition.cnn.com/politics; (( $(count_443) > before ))'
  before=$(count_443)
  run sluicectl local exec "$client" -- curl -sSk -o /dev/null -D - --max-time 5 \
    https://edition.cnn.com/politics
  local status
  status=$(head -n1 <<<"$OUT" | awk '{print $2}')
  if [[ $status =~ ^[23][0-9][0-9]$ ]]; then
    pass "the client got an HTTPS answer from edition.cnn.com ($status)"
  else
    fail "the client's request to https://edition.cnn.com/politics failed: $(answer)"
  fi
  sleep 0.3
  quiet sluicectl local logs "$gw" -n istio-system
  lines=$(grep -F 'outbound|443||edition.cnn.com' <<<"$OUT" | tail -n 1)
  show_cmd sluicectl local logs "$gw" -n istio-system '|' grep 'outbound|443||edition.cnn.com' '|' tail -n 1
  indent 2 <<<"$lines"
  if (($(count_443) > before)); then
    pass "the egress gateway logged the connection with outbound|443||edition.cnn.com"
  else
    fail "no new outbound|443||edition.cnn.com line in the egress gateway's log"
  fi
  if [[ -n $lines && $lines == *'"- - -"'* ]]; then
    pass "the gateway's line is a TCP (passthrough) line, not an HTTP request: TLS was not terminated"
  elif [[ -n $lines ]]; then
    fail "the gateway's line is not a passthrough (\"- - -\") line: $lines"
  fi

  # The certificate the client sees must be the external host's own, not the gateway's.
  local seen own
  run sluicectl local exec "$client" -- sh -c \
    'openssl s_client -connect edition.cnn.com:443 -servername edition.cnn.com </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256 -subject'
  seen=$(grep -i fingerprint <<<"$OUT")
  ext_ip=$(python3 "$CHECK" external --state "$state_file" edition.cnn.com ip 2>/dev/null)
  if [[ -n $ext_ip ]]; then
    run sh -c "openssl s_client -connect $ext_ip:443 -servername edition.cnn.com </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256"
    own=$(grep -i fingerprint <<<"$OUT")
    if [[ -n $seen && $seen == "$own" ]]; then
      pass "the client saw the external host's own certificate (same SHA-256 fingerprint)"
    else
      fail "the certificate through the gateway ('${seen:-none}') is not the external host's ('${own:-none}')"
    fi
  else
    fail "edition.cnn.com has no ip in $state_file external_hosts; cannot compare certificates"
  fi
  run sluicectl local delete -f examples/04-egress-tls/
}

# 5. ServiceEntry ------------------------------------------------------------------------
task_5() {
  need_example 05-service-entry || return
  local client cfg
  client=$(client_pod) || { fail "no client pod (Deployment sleep or curl in default)"; return; }
  # The example's routable "VM" entry uses addresses of the default pod network
  # (10.244.0.0/16). A cluster on another subnet (the CTest one) gets the same example
  # with those addresses moved into its own subnet, so nothing is ever sent off the bridge.
  local dir=examples/05-service-entry subnet prefix
  subnet=$(python3 "$CHECK" state --state "$state_file" pod_subnet 2>/dev/null)
  prefix=$(cut -d. -f1-2 <<<"${subnet:-10.244.0.0/16}")
  if [[ $prefix != 10.244 ]]; then
    mkdir -p "$work/05-service-entry"
    for f in "$examples"/05-service-entry/*; do
      sed "s/\b10\.244\./$prefix./g" "$f" >"$work/05-service-entry/$(basename "$f")"
    done
    dir=$work/05-service-entry
    note "(this cluster's pod subnet is $subnet: the example's 10.244.x addresses become $prefix.x)"
  fi
  run sluicectl local apply -f "$dir/"
  ((RC == 0)) || fail "apply of examples/05-service-entry failed (exit $RC)"
  cfg=$(config_dir)

  # Which hosts the example declares, by location (read from its YAML, not assumed).
  local ext_hosts int_hosts statics
  ext_hosts=$(python3 - "$dir" <<'PY'
import glob, sys, yaml
ext, internal, static = [], [], []
for f in sorted(glob.glob(sys.argv[1] + "/*.y*ml")):
    for d in yaml.safe_load_all(open(f)):
        if not d or d.get("kind") != "ServiceEntry":
            continue
        s = d.get("spec", {})
        (internal if s.get("location") == "MESH_INTERNAL" else ext).extend(s.get("hosts", []))
        if s.get("location") == "MESH_INTERNAL" and s.get("resolution") == "STATIC":
            for p in s.get("ports", [])[:1]:
                eps = ",".join(f"{e['address']}:{p['number']}" for e in s.get("endpoints", []))
                static.append(f"outbound|{p['number']}||{s['hosts'][0]}={eps}")
print(" ".join(ext)); print(" ".join(internal)); print(" ".join(static))
PY
  )
  statics=$(sed -n 3p <<<"$ext_hosts")
  int_hosts=$(sed -n 2p <<<"$ext_hosts")
  ext_hosts=$(sed -n 1p <<<"$ext_hosts")
  [[ -n $ext_hosts ]] || fail "examples/05-service-entry declares no MESH_EXTERNAL ServiceEntry"
  [[ -n $int_hosts ]] || fail "examples/05-service-entry declares no MESH_INTERNAL ServiceEntry"

  run --max 0 sluicectl registryz
  ((RC == 0)) || run --max 0 sluicectl registryz -f "$cfg"
  printf '%s\n' "$OUT" >"$work/registryz.json"
  # shellcheck disable=SC2086
  quiet python3 "$CHECK" registryz "$work/registryz.json" $ext_hosts $int_hosts
  evidence "registry entries (hostname, MeshExternal, resolution, addresses, endpoints):"
  indent 10 <<<"$OUT"
  local h
  for h in $ext_hosts; do
    if grep -q "^$h MeshExternal=true" <<<"$OUT"; then pass "$h: MeshExternal true"; else fail "$h: not in the registry with MeshExternal true"; fi
  done
  for h in $int_hosts; do
    if grep -q "^$h MeshExternal=false" <<<"$OUT"; then pass "$h: MeshExternal false"; else fail "$h: not in the registry with MeshExternal false"; fi
  done

  # The STATIC entries' endpoints, as the client's proxy has them.
  local entry cluster eps ep
  for entry in $statics; do
    cluster=${entry%%=*} eps=${entry#*=}
    until_ok 10 eval 'quiet sluicectl proxy-config endpoint "$client" --cluster "$cluster" && grep -qF "${eps%%,*}" <<<"$OUT"'
    run sluicectl proxy-config endpoint "$client" --cluster "$cluster"
    for ep in ${eps//,/ }; do
      if grep -qF "$ep " <<<"$OUT"; then pass "$cluster has endpoint $ep"; else fail "$cluster: endpoint $ep missing from proxy-config endpoint"; fi
    done
  done

  # Both route: the example's README says which request reaches each kind of entry; the
  # runner calls what the example's routes.txt lists (one "URL EXPECTED-STATUS" a line).
  local routes=$dir/routes.txt url want
  [[ $dir == /* ]] || routes=$root/$dir/routes.txt
  if [[ -f $routes ]]; then
    while read -r url want; do
      [[ -z $url || $url == \#* ]] && continue
      run sluicectl local exec "$client" -- curl -sk -o /dev/null -w '%{http_code}\n' --max-time 5 "$url"
      if [[ $OUT == "${want:-200}" ]]; then pass "$url answers ${want:-200}"; else fail "$url: expected ${want:-200}, got '${OUT}'"; fi
    done <"$routes"
  else
    fail "examples/05-service-entry/routes.txt is missing: no request to send to each entry"
  fi
  run sluicectl local delete -f "$dir/"
}

# 6. DestinationRule ---------------------------------------------------------------------
task_6() {
  need_example 06-destination-rule || return
  local client fqdn=helloworld.default.svc.cluster.local
  client=$(client_pod) || { fail "no client pod (Deployment sleep or curl in default)"; return; }

  lb_of() { # prints the lbPolicy of the service's own (subset-less) cluster
    quiet sluicectl proxy-config cluster "$client" --fqdn $fqdn -o json || return 1
    printf '%s\n' "$OUT" >"$work/clusters.json"
    python3 "$CHECK" clusters "$work/clusters.json" | awk -v f="$fqdn" '$1 ~ "^outbound\\|[0-9]+\\|\\|" f "$" {print $2; exit}'
  }
  run sluicectl proxy-config cluster "$client" --fqdn $fqdn
  local before after
  before=$(lb_of)
  show_cmd sluicectl proxy-config cluster "$client" --fqdn $fqdn -o json '|' grep lbPolicy
  indent 3 <<<"  lbPolicy: ${before:-(none found)}"
  if [[ $before == LEAST_REQUEST ]]; then pass "before: lbPolicy LEAST_REQUEST (Istio's default)"; else fail "before: lbPolicy is '${before:-none}', expected LEAST_REQUEST"; fi

  run sluicectl local apply -f examples/06-destination-rule/
  ((RC == 0)) || fail "apply of examples/06-destination-rule failed (exit $RC)"
  until_ok 10 eval '[[ $(lb_of) == RANDOM ]]'
  after=$(lb_of)
  show_cmd sluicectl proxy-config cluster "$client" --fqdn $fqdn -o json '|' grep lbPolicy
  indent 3 <<<"  lbPolicy: ${after:-(none found)}"
  if [[ $after == RANDOM ]]; then pass "after the DestinationRule: lbPolicy RANDOM"; else fail "after the DestinationRule: lbPolicy is '${after:-none}', expected RANDOM"; fi

  # Subsets become clusters (the example's DestinationRule with subsets v1, v2).
  local subsets_file
  subsets_file=$(grep -l 'subsets:' "$examples"/06-destination-rule/*.y*ml 2>/dev/null | head -n1)
  if [[ -n $subsets_file ]]; then
    run sluicectl local apply -f "examples/06-destination-rule/$(basename "$subsets_file")"
    until_ok 10 eval 'quiet sluicectl proxy-config cluster "$client" --fqdn $fqdn && grep -q " v2 " <<<"$OUT"'
    run sluicectl proxy-config cluster "$client" --fqdn $fqdn
    if grep -qE "\bv1\b" <<<"$OUT" && grep -qE "\bv2\b" <<<"$OUT"; then
      pass "subsets v1 and v2 appear as clusters"
    else
      fail "subsets v1/v2 do not appear as clusters of $fqdn"
    fi
  else
    note "(examples/06-destination-rule has no DestinationRule with subsets; task 7 checks them)"
  fi
  run sluicectl local delete -f examples/06-destination-rule/
}

# 7. Traffic shifting --------------------------------------------------------------------
task_7() {
  need_example 07-traffic-shifting || return
  local client fqdn=helloworld.default.svc.cluster.local n=2000
  client=$(client_pod) || { fail "no client pod (Deployment sleep or curl in default)"; return; }
  run sluicectl local apply -f examples/07-traffic-shifting/
  ((RC == 0)) || fail "apply of examples/07-traffic-shifting failed (exit $RC)"

  route_weights() {  # [--admin ADDR]: the node stream's config (what the kernel serves)
    if (($#)); then
      quiet sluicectl proxy-config route "$@" --name 5000 -o json || return 1
    else
      quiet sluicectl proxy-config route "$client" --name 5000 -o json || return 1
    fi
    printf '%s\n' "$OUT" >"$work/routes.json"
    python3 "$CHECK" weights "$work/routes.json" | grep -F "$fqdn"
  }
  # The pod's own view, and the node stream the kernel's L4 services follow (each is a
  # stream of its own; a weights-only route is served in the kernel).
  until_ok 10 eval 'route_weights | grep -q "|v2|.* 75$" && route_weights --admin "$(agent_admin)" | grep -q "|v2|.* 75$"'
  show_cmd sluicectl proxy-config route "$client" --name 5000 -o json '|' grep -A1 weightedClusters
  local w
  w=$(route_weights)
  indent 4 <<<"$w"
  if grep -q "^outbound|5000|v1|$fqdn 25$" <<<"$w" && grep -q "^outbound|5000|v2|$fqdn 75$" <<<"$w"; then
    pass "proxy-config route shows v1 weight 25, v2 weight 75"
  else
    fail "proxy-config route does not show outbound|5000|v1|… 25 and outbound|5000|v2|… 75"
  fi
  run sluicectl proxy-config cluster "$client" --fqdn $fqdn
  if grep -qE "^$fqdn +5000 +v1 " <<<"$OUT" && grep -qE "^$fqdn +5000 +v2 " <<<"$OUT"; then
    pass "the DestinationRule's subsets v1 and v2 appear as clusters"
  else
    fail "proxy-config cluster shows no v1 and v2 subset clusters of $fqdn"
  fi

  # 2000 requests from one exec: curl reads 2000 URLs from its config on stdin and runs
  # 8 at a time. Each asks for a new connection (Connection: close), so a per-connection
  # choice (the kernel's) and a per-request one (the L7 proxy's) are measured alike.
  run --max 4 --timeout 120 sluicectl local exec "$client" -- sh -c \
    "yes 'url = \"http://helloworld:5000/hello\"' | head -n $n | curl -sS --no-progress-meter -Z --parallel-max 8 -H 'Connection: close' -K -"
  printf '%s\n' "$OUT" >"$work/answers.txt"
  quiet python3 "$CHECK" spread "$work/answers.txt"
  evidence "$n requests: $(grep -v '^other:' <<<"$OUT" | tr '\n' ' ')"
  grep '^other:' <<<"$OUT" | indent 3
  local answers v1 v2
  answers=$(sed -n 's/^answers=\([0-9]*\).*/\1/p' <<<"$OUT")
  v1=$(awk '$1 == "v1" {print $2}' <<<"$OUT")
  v2=$(awk '$1 == "v2" {print $2}' <<<"$OUT")
  : "${v1:=0}" "${v2:=0}" "${answers:=0}"
  if ((answers == n)); then pass "all $n requests answered"; else fail "$answers of $n requests answered"; fi
  # 25 ± 3 percentage points: v1 share in [22, 28].
  if ((answers > 0 && v1 * 100 >= 22 * answers && v1 * 100 <= 28 * answers)); then
    pass "v1 got $v1 ($(awk -v a="$v1" -v t="$answers" 'BEGIN {printf "%.1f", 100 * a / t}')%), v2 $v2: within 25/75 ± 3 points"
  else
    fail "v1 got $v1 and v2 $v2 of $answers: not within 25/75 ± 3 points"
  fi
  run sluicectl local delete -f examples/07-traffic-shifting/
}

# 8. Mirroring ---------------------------------------------------------------------------
task_8() {
  need_example 08-mirroring || return
  local client v1_pods v2_pods n=20 mark
  client=$(client_pod) || { fail "no client pod (Deployment sleep or curl in default)"; return; }
  local files_all files_mirror
  files_mirror=$(grep -l '^ *mirror:' "$examples"/08-mirroring/*.y*ml 2>/dev/null | head -n1)
  [[ -n $files_mirror ]] || { fail "examples/08-mirroring has no VirtualService with mirror:"; return; }
  files_all=()
  local f
  for f in "$examples"/08-mirroring/*.y*ml; do
    [[ $f == "$files_mirror" ]] || files_all+=(-f "examples/08-mirroring/$(basename "$f")")
  done
  run sluicectl local apply "${files_all[@]}"
  ((RC == 0)) || fail "apply of examples/08-mirroring (without the mirror rule) failed (exit $RC)"
  # The deployments of the task (httpbin-v1, httpbin-v2) start asynchronously.
  until_ok 30 eval '[[ -n $(pods_of default --labels app=httpbin,version=v2) ]] && quiet sluicectl local get pods && ! grep -E "^httpbin-v[12]" <<<"$OUT" | grep -vq Running'
  v1_pods=$(pods_of default --labels app=httpbin,version=v1)
  v2_pods=$(pods_of default --labels app=httpbin,version=v2)
  evidence "v1 pods: $(echo $v1_pods)  v2 pods: $(echo $v2_pods)"
  [[ -n $v1_pods && -n $v2_pods ]] || { fail "no httpbin v1 and v2 pods"; return; }

  logs_of() { # logs_of MARK PODS…: the pods' access-log lines carrying MARK
    local m=$1 p
    shift
    for p in "$@"; do
      quiet sluicectl local logs "$p"
      grep -F -- "$m" <<<"$OUT"
    done
    return 0
  }
  local sent_ok=0
  send() { # send MARK: n requests from the client, one exec; sent_ok counts the 200s
    run --max 2 sluicectl local exec "$client" -- sh -c \
      "for i in \$(seq $n); do curl -s -o /dev/null -w '%{http_code}\n' --max-time 5 -A '$1' http://httpbin:8000/headers; done"
    sent_ok=$(grep -c '^200$' <<<"$OUT")
  }

  # All to v1 (wait for the route: a first request must land on v1).
  local probe
  probe=$(marker 8p)
  # shellcheck disable=SC2086
  until_ok 10 eval 'quiet sluicectl local exec "$client" -- curl -s -o /dev/null -A "$probe" --max-time 3 http://httpbin:8000/headers; [[ -n $(logs_of "$probe" $v1_pods) && -z $(logs_of "$probe" $v2_pods) ]]'
  mark=$(marker 8a)
  local ok v1c v2c shadow
  send "$mark"
  ok=$sent_ok
  sleep 0.3
  # shellcheck disable=SC2086
  v1c=$(logs_of "$mark" $v1_pods | grep -c .)
  # shellcheck disable=SC2086
  v2c=$(logs_of "$mark" $v2_pods | grep -c .)
  evidence "without mirroring: $ok of $n answered 200; v1 logged $v1c, v2 logged $v2c"
  if ((v1c == n && v2c == 0)); then pass "all traffic to v1, none to v2"; else fail "without mirroring: v1 logged $v1c and v2 $v2c of $n (expected $n and 0)"; fi

  # With the mirror rule.
  run sluicectl local apply -f "examples/08-mirroring/$(basename "$files_mirror")"
  route_mirrors() {
    quiet sluicectl proxy-config route "$client" --name 8000 -o json || return 1
    printf '%s\n' "$OUT" >"$work/routes8.json"
    python3 "$CHECK" mirrors "$work/routes8.json" | grep -F '|v2|'
  }
  until_ok 10 route_mirrors
  show_cmd sluicectl proxy-config route "$client" --name 8000 -o json '|' grep -A3 requestMirrorPolicies
  indent 3 <<<"$(route_mirrors)"
  # Wait until mirroring is in force (a probe shows up at v2), then measure.
  probe=$(marker 8q)
  # shellcheck disable=SC2086
  until_ok 10 eval 'quiet sluicectl local exec "$client" -- curl -s -o /dev/null -A "$probe" --max-time 3 http://httpbin:8000/headers; sleep 0.2; [[ -n $(logs_of "$probe" $v2_pods) ]]'
  mark=$(marker 8b)
  send "$mark"
  ok=$sent_ok
  sleep 0.5 # mirrored requests are fire-and-forget: let the last ones land
  local v1_lines v2_lines
  # shellcheck disable=SC2086
  v1_lines=$(logs_of "$mark" $v1_pods)
  # shellcheck disable=SC2086
  v2_lines=$(logs_of "$mark" $v2_pods)
  v1c=$(grep -c . <<<"$v1_lines")
  v2c=$(grep -c . <<<"$v2_lines")
  shadow=$(grep -c 'host="[^"]*-shadow' <<<"$v2_lines")
  show_cmd sluicectl local logs "${v2_pods%%$'\n'*}" '|' tail -n 2
  indent 2 <<<"$(tail -n 2 <<<"$v2_lines")"
  evidence "with mirroring: $ok of $n answered 200; v1 logged $v1c, v2 logged $v2c ($shadow with a -shadow Host)"
  if ((ok == n)); then pass "every client request answered 200"; else fail "$ok of $n client requests answered 200"; fi
  if ((v1c == n)) && ! grep -q -- '-shadow' <<<"$v1_lines"; then
    pass "v1 served all $n client requests (none of them a mirror copy)"
  else
    fail "v1 logged $v1c of $n requests (expected exactly $n, none -shadow)"
  fi
  if ((v2c == n && shadow == n)); then
    pass "v2 received a copy of every request, each with the -shadow Host"
  else
    fail "v2 received $v2c copies ($shadow with -shadow Host) of $n requests"
  fi
  run sluicectl local delete -f examples/08-mirroring/
}

# ---------------------------------------------------------------------------------------

if [[ ! -d $examples/samples || ! -d $examples/istio-system || ! -d $examples/external ]]; then
  echo "tasks.sh: examples/samples, examples/istio-system and examples/external must exist" >&2
  exit 1
fi
cluster_up || exit 1
[[ $mode == up ]] && exit 0

declare -A result reason
for t in "${selected[@]}"; do
  printf '\n%s━━ Task %d: %s%s\n' "$B" "$t" "${task_titles[$t]}" "$N"
  note "examples/$(basename "$(ls -d "$examples"/0"$t"-* 2>/dev/null | head -n1)" 2>/dev/null)/README.md"
  fail_file=$work/task-$t.fail
  : >"$fail_file"
  start=$SECONDS
  agent_log=$state_dir/logs/agent.log
  agent_log_from=$( [[ -f $agent_log ]] && wc -l <"$agent_log" || echo 0)
  access_log=$state_dir/logs/agent-access.log
  access_log_from=$( [[ -f $access_log ]] && wc -l <"$access_log" || echo 0)
  (cd "$root" && "task_$t")
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
