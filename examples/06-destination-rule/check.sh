#!/usr/bin/env bash
# Task 6, DestinationRule: the check of this example, as scripts/tasks.sh runs it (docs/tasks.md
# says what it checks and why). It runs the README's commands on the local cluster,
# prints them with their output and evidence, and a ✔/✘ per check.
# shellcheck source=../lib/tasks.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/tasks.sh"

check() {
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

check
finish $?
