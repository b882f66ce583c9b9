# The task checks' shared library, in bash: sourced by the runner (scripts/tasks.sh) and
# by each task's check (examples/NN-*/check.sh).
#
# A check runs the commands of its example's README as a user would, and reports each
# the same way: the command as typed (show_cmd, run), its output indented and shortened,
# evidence lines (evidence, note) and a ✔/✘ per check (pass, fail; a failure is also
# written to the task's fail file). The lookups read the local cluster's state.json
# (docs/local-cluster.md) and the node agent's admin endpoint.
#
# The runner sets the environment below for each check. A check run by hand, on a
# cluster that is up (`sudo examples/07-traffic-shifting/check.sh`), gets the defaults
# and prints PASS or FAIL itself (finish).
#
#   BUILD_DIR           the build tree (default ./build)
#   SLUICE_LOCAL_STATE  the local cluster's state directory (default /var/run/sluice/local)
#   TASKS_WORK          scratch directory (default: a new one, removed at the end)
#   TASKS_FAIL_FILE     fail() appends each failed check here (default: in TASKS_WORK)
#   TASKS_COLOR         1: colours (default: when stdout is a terminal)
#   TASKS_INGRESS_PORT  local port for the ingress port-forward (default 8080)
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${BUILD_DIR:-$root/build}
SLUICECTL="$build/agent/sluicectl/sluicectl"
CHECK="$root/examples/lib/tasks_check.py"
examples="$root/examples"
state_dir=$(realpath -ms "${SLUICE_LOCAL_STATE:-/var/run/sluice/local}")
state_file=$state_dir/state.json
ingress_port=${TASKS_INGRESS_PORT:-8080}

if [[ -n ${TASKS_WORK:-} ]]; then
  work=$TASKS_WORK
  tasks_standalone=0
else
  work=$(mktemp -d /tmp/sluice-tasks.XXXXXX)
  tasks_standalone=1
  trap 'rm -rf "$work"' EXIT
fi
fail_file=${TASKS_FAIL_FILE:-$work/fail}
[[ -n ${TASKS_FAIL_FILE:-} ]] || : >"$fail_file"

if [[ -n ${TASKS_COLOR:-} ]]; then color=$TASKS_COLOR; elif [[ -t 1 ]]; then color=1; else color=0; fi
if ((color)); then
  B=$'\033[1m' D=$'\033[2m' G=$'\033[32m' R=$'\033[31m' N=$'\033[0m'
else
  B="" D="" G="" R="" N=""
fi

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

# finish STATUS: the end of a check script. Under the runner, exits with STATUS (the runner
# reads the fail file); run by hand, also prints PASS or FAIL and exits 1 on a failure.
finish() {
  local rc=$1
  if ((tasks_standalone)); then
    if [[ -s $fail_file ]] || ((rc != 0)); then
      printf '%sFAIL%s  %s\n' "$R" "$N" "$(paste -sd ';' "$fail_file")"
      exit 1
    fi
    printf '%sPASS%s\n' "$G" "$N"
  fi
  exit "$rc"
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

# A marker per request (User-Agent), so a log line can be tied to the request that made it.
marker() { echo "sluice-tasks/$1-$$-$RANDOM"; }

# Commands are shown and run from the checkout, as the examples' READMEs write them.
cd "$root" || exit 1
