#!/usr/bin/env bash
# Task 1, Enrolment: the check of this example, as scripts/tasks.sh runs it (docs/tasks.md
# says what it checks and why). It runs the README's commands on the local cluster,
# prints them with their output and evidence, and a ✔/✘ per check.
# shellcheck source=../lib/tasks.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/tasks.sh"

check() {
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

check
finish $?
