#!/usr/bin/env bash
# Task 3, Egress HTTP: the check of this example, as scripts/tasks.sh runs it (docs/tasks.md
# says what it checks and why). It runs the README's commands on the local cluster,
# prints them with their output and evidence, and a ✔/✘ per check.
# shellcheck source=../lib/tasks.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/tasks.sh"

check() {
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

check
finish $?
