#!/usr/bin/env bash
# The DaemonSet's capability list, proven: the agent end-to-end tests run with the agent
# (and its L7 process) under a bounding set of exactly the capabilities
# deploy/kubernetes/daemonset.yaml adds, as uid 0 with no other capability (setpriv: a
# uid-0 process gets exactly its bounding set). The tests' own lab setup (namespaces,
# cgroups, the xDS server) keeps root's full set: it is the node, not the agent.
#
#   capabilities_test.sh BUILD_DIR DAEMONSET_YAML
#
# Then the check can fail: without SYS_ADMIN (setns into pods' namespaces; on kernels
# from 5.8 it also stands in for BPF, PERFMON and the networking program types' NET_ADMIN
# check) the same agent must not become ready.
set -euo pipefail
build=$1
daemonset=$2
# The agent container's capabilities.add, as the manifest lists them.
caps=$(/usr/bin/python3 - "$daemonset" <<'PY'
import sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc.get("kind") == "DaemonSet":
        for c in doc["spec"]["template"]["spec"]["containers"]:
            if c["name"] == "agent":
                print(",".join(c["securityContext"]["capabilities"]["add"]))
PY
)
[[ -n $caps ]] || { echo "capabilities_test: no capabilities.add for the agent in $daemonset" >&2; exit 1; }
echo "the agent's capabilities in $daemonset: $caps"

export SLUICE_AGENT_CAPS=$caps
echo "== kernel_agent, the agent under {$caps}"
# (Catch2 test specs: a comma separates alternatives, so names are matched by their tails.)
"$build/tests/daemon/kernel_agent" \
  "*restart keeps the data path,*L7 traffic recovers within a second of the restart"
echo "== kernel_agent_kube, the agent on the API stand-in under {$caps}"
"$build/tests/kube/kernel_agent_kube" "*ran before the agent*"

without=${caps//SYS_ADMIN/}
without=${without//,,/,}
without=${without#,}
without=${without%,}
export SLUICE_AGENT_CAPS=$without
echo "== without SYS_ADMIN ({$without}) the agent must not become ready"
if "$build/tests/daemon/kernel_agent" "*restart keeps the data path" >"/tmp/sluice-caps-neg.$$" 2>&1; then
  cat "/tmp/sluice-caps-neg.$$"
  rm -f "/tmp/sluice-caps-neg.$$"
  echo "FAIL: the agent ran without SYS_ADMIN: the bounding set did not apply" >&2
  exit 1
fi
grep -m3 -E "Operation not permitted|EPERM|permission" "/tmp/sluice-caps-neg.$$" || true
rm -f "/tmp/sluice-caps-neg.$$"
echo "ok: the agent passed under exactly {$caps}, and fails without SYS_ADMIN"
