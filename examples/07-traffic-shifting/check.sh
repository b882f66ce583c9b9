#!/usr/bin/env bash
# Task 7, Traffic shifting: the check of this example, as scripts/tasks.sh runs it (docs/tasks.md
# says what it checks and why). It runs the README's commands on the local cluster,
# prints them with their output and evidence, and a ✔/✘ per check.
# shellcheck source=../lib/tasks.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/tasks.sh"

check() {
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

check
finish $?
