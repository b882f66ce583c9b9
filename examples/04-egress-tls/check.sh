#!/usr/bin/env bash
# Task 4, Egress TLS passthrough: the check of this example, as scripts/tasks.sh runs it (docs/tasks.md
# says what it checks and why). It runs the README's commands on the local cluster,
# prints them with their output and evidence, and a ✔/✘ per check.
# shellcheck source=../lib/tasks.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/tasks.sh"

check() {
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

check
finish $?
