#!/usr/bin/env bash
# Task 2, Ingress: the check of this example, as scripts/tasks.sh runs it (docs/tasks.md
# says what it checks and why). It runs the README's commands on the local cluster,
# prints them with their output and evidence, and a ✔/✘ per check.
# shellcheck source=../lib/tasks.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/tasks.sh"

check() {
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

check
finish $?
