#!/usr/bin/env bash
# Task 9, Proxyless gRPC: the check of this example, as scripts/tasks.sh runs it. It runs
# the README's commands on the local cluster, prints them with their output and evidence,
# and a ✔/✘ per check: the grpc-agent pods' bootstrap and env, the node agent leaving
# them alone, 100 gRPC calls split about 25/75 by the client's own xDS balancing, no
# Sluice proxy or kube-proxy rule on their path, and the control plane serving the pods'
# GENERATOR: grpc nodes.
# shellcheck source=../lib/tasks.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/tasks.sh"

ns=echo-grpc
fqdn=echo.echo-grpc.svc.cluster.local
dir=examples/09-grpc-proxyless

# pod_field POD FIELD: a field of the pod's record in state.json ("" when none).
pod_field() {
  python3 - "$state_file" "$ns" "$1" "$2" <<'EOF' 2>/dev/null
import json, sys
state, ns, name, field = sys.argv[1:5]
for p in json.load(open(state)).get("pods", []):
    if p.get("namespace") == ns and p.get("name") == name:
        v = p.get(field, "")
        print(v if isinstance(v, str) else json.dumps(v))
EOF
}

# versions FILE: how many answers each version gave ("v1 N", "v2 N", "total N"); an answer
# names its version as ServiceVersion=vN (Istio's echo fields), else by its Hostname.
versions() {
  python3 - "$1" <<'EOF'
import re, sys
text = open(sys.argv[1], errors="replace").read()
found = re.findall(r"ServiceVersion=(v[0-9]+)", text)
if not found:
    found = re.findall(r"Hostname=echo-(v[0-9]+)-", text)
counts = {}
for v in found:
    counts[v] = counts.get(v, 0) + 1
for v in ("v1", "v2"):
    print(v, counts.get(v, 0))
print("total", len(found))
EOF
}

# The kube-proxy stand-in's packet count for the echo Service's gRPC port (its DNAT rules).
nat_packets() {
  local chain
  chain="SLUICE-LOCAL-$(python3 "$CHECK" state --state "$state_file" bridge 2>/dev/null)"
  iptables -w -t nat -L "$chain" -n -v -x 2>/dev/null |
    awk '/echo-grpc\/echo:7070/ {s += $1} END {print s + 0}'
}

check() {
  run --max 20 sluicectl local apply -f $dir/grpc-echo.yaml
  ((RC == 0)) || fail "apply of $dir/grpc-echo.yaml failed (exit $RC)"
  local v1 v2
  v1=$(first_pod $ns --owner Deployment/echo-v1)
  v2=$(first_pod $ns --owner Deployment/echo-v2)
  if [[ -z $v1 || -z $v2 ]]; then
    fail "no echo-v1/echo-v2 pod in $ns after the apply"
    return
  fi
  run sluicectl local get pods -n $ns

  # 1. The grpc-agent template: a bootstrap naming the pod and the control plane, and
  #    GRPC_XDS_BOOTSTRAP in exec.
  run --max 30 sluicectl local exec -n $ns deploy/echo-v1 -- sh -c 'cat $GRPC_XDS_BOOTSTRAP'
  printf '%s\n' "$OUT" >"$work/bootstrap.json"
  local ip1 want_id
  ip1=$(pod_field "$v1" ip)
  want_id="sidecar~$ip1~$v1.$ns~$ns.svc.cluster.local"
  if python3 - "$work/bootstrap.json" "$want_id" "$state_dir/xds.sock" <<'EOF'; then
import json, sys
b = json.load(open(sys.argv[1]))
ok = (b["node"]["id"] == sys.argv[2]
      and b["node"]["metadata"]["GENERATOR"] == "grpc"
      and b["xds_servers"][0]["server_uri"] == "unix://" + sys.argv[3])
sys.exit(0 if ok else 1)
EOF
    pass "the bootstrap names node $want_id, GENERATOR grpc, and unix://$state_dir/xds.sock"
  else
    fail "the bootstrap in $v1 (\$GRPC_XDS_BOOTSTRAP) is not the grpc-agent one for node $want_id"
  fi

  # 2. The node agent leaves the pods alone (proxyless), though the namespace is enrolled.
  run sluicectl agent --admin "$(agent_admin)" pods
  local rows
  rows=$(grep -E "^$ns +echo-v[12]-" <<<"$OUT")
  if [[ $(grep -c ' no .* proxyless-grpc$' <<<"$rows") == 2 ]]; then
    pass "the agent knows both echo pods and enrols neither (reason proxyless-grpc)"
  else
    fail "the agent does not list both echo pods as not enrolled, reason proxyless-grpc"
  fi

  # 3. The split: subsets, then 25/75; 100 calls from the client's own xDS balancing.
  run sluicectl local apply -f $dir/destination-rule.yaml -f $dir/virtual-service.yaml
  ((RC == 0)) || fail "apply of the DestinationRule and VirtualService failed (exit $RC)"
  local before_k before_ne before_nat access_from
  before_k=$(kernel_count translated redirected)
  before_ne=$(kernel_count not_enrolled)
  before_nat=$(nat_packets)
  access_from=$( [[ -f $state_dir/logs/agent-access.log ]] && wc -l <"$state_dir/logs/agent-access.log" || echo 0)
  # The control plane pushes asynchronously after an apply: retry until the split is in
  # force (both versions answer, v2 more often), at most 20 s.
  local n=100 counts c1=0 c2=0 total=0 deadline=$((SECONDS + 20))
  while :; do
    run --max 4 --timeout 60 sluicectl local exec -n $ns deploy/echo-v1 -- \
      sluice-apps grpc-client --url "xds:///$fqdn:7070" --count $n
    printf '%s\n' "$OUT" >"$work/calls.txt"
    counts=$(versions "$work/calls.txt")
    c1=$(awk '$1 == "v1" {print $2}' <<<"$counts")
    c2=$(awk '$1 == "v2" {print $2}' <<<"$counts")
    total=$(awk '$1 == "total" {print $2}' <<<"$counts")
    ((total == n && c1 >= 12 && c1 <= 40)) && break
    ((SECONDS >= deadline)) && break
    sleep 1
  done
  evidence "$n calls: v1 $c1, v2 $c2 ($total answered)"
  if ((total == n)); then pass "all $n calls answered"; else fail "$total of $n calls answered"; fi
  # Binomial(100, 0.25): mean 25, sd 4.3; 12..40 is three standard deviations.
  if ((total > 0 && c1 >= 12 && c1 <= 40 && c1 + c2 == total)); then
    pass "v1 answered $c1 and v2 $c2 of $total: a 25/75 split (v1 within 12..40)"
  else
    fail "v1 answered $c1 and v2 $c2 of $total: not a 25/75 split (v1 outside 12..40)"
  fi

  # 4. No proxy on the path: no connect translated or redirected by Sluice's kernel hooks,
  #    no line in the agent's access log, no packet through the kube-proxy stand-in's
  #    VIP rules: the calls went from the pod straight to the echo pods' own addresses.
  local after_k after_ne after_nat new_access
  after_k=$(kernel_count translated redirected)
  after_ne=$(kernel_count not_enrolled)
  after_nat=$(nat_packets)
  new_access=$(tail -n +"$((access_from + 1))" "$state_dir/logs/agent-access.log" 2>/dev/null | grep -c "$ns" || true)
  show_cmd sluicectl agent metrics '|' grep sluice_kernel_connects_total
  evidence "kernel translated+redirected: $before_k → $after_k; not_enrolled: $before_ne → $after_ne"
  evidence "kube-proxy stand-in packets to $ns/echo:7070: $before_nat → $after_nat"
  # (The calls dial pod addresses, which no Service frontend names, so the connect hook
  # has nothing to count for them either way; a VIP dialled from these pods would count
  # as not_enrolled.)
  if [[ $before_k != "?" && $before_k == "$after_k" ]]; then
    pass "Sluice's kernel translated or redirected none of the calls' connects"
  else
    fail "the kernel counters say Sluice handled the calls (translated+redirected $before_k → $after_k, not_enrolled $before_ne → $after_ne)"
  fi
  if [[ $new_access == 0 ]]; then
    pass "the agent's access log has no line for the calls (no in-pod proxy)"
  else
    fail "the agent's access log has $new_access new lines naming $ns"
  fi
  if [[ $before_nat == "$after_nat" ]]; then
    pass "no packet to the Service VIP: the client dialled the pods' addresses itself"
  else
    fail "packets went through the kube-proxy stand-in's rules for $ns/echo:7070 ($before_nat → $after_nat)"
  fi

  # 5. The control plane served the pods' own gRPC xDS clients (node IDs of their
  #    bootstraps; the node agent opens no stream for a pod it does not enrol) with the
  #    proxyless-gRPC generator ("serving ID as grpc:NS").
  local xlog=$state_dir/logs/xds.log lines
  show_cmd grep "serving sidecar~$ip1~" "$xlog"
  lines=$(grep -F "serving $want_id as " "$xlog" 2>/dev/null | tail -n 3)
  [[ -n $lines ]] && indent 3 <<<"$lines"
  if grep -qF "serving $want_id as grpc:$ns" <<<"$lines"; then
    pass "the control plane served the GENERATOR: grpc node $want_id its proxyless-gRPC translation"
  else
    fail "no 'serving $want_id as grpc:$ns' in $xlog: the control plane never served the pod's gRPC client as proxyless gRPC"
  fi

  run sluicectl local delete -f $dir/
}

check
finish $?
