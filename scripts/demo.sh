#!/usr/bin/env bash
# The README's main command. On a fresh Debian 12 machine, as root: installs what is
# missing, builds, then brings up a local cluster (Istio's httpbin, sleep and helloworld
# samples as pods made through the real CNI chain, the ingress and egress gateways, a
# local stand-in for edition.cnn.com), enrols the default namespace and runs Istio's
# eight traffic-management tasks, printing the commands, the evidence and PASS/FAIL for
# each (scripts/tasks.sh; docs/tasks.md). The cluster is removed at the end.
#
#   scripts/demo.sh                 all eight tasks
#   scripts/demo.sh --task 7 --keep one task, and leave the cluster up to explore
#   scripts/demo-l4.sh              the kernel L4 path alone (25/75 split, bpftool view)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [[ $EUID -ne 0 ]]; then
  echo "demo.sh: run as root (it loads BPF programs and makes network namespaces)" >&2
  exit 1
fi
"$root/scripts/build.sh"
exec "$root/scripts/tasks.sh" "$@"
