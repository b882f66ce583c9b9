#!/usr/bin/env bash
# Kernel L4 benchmark (not a test): connection rate and latency through Sluice's connect
# hook vs a direct connection vs iptables DNAT, at 10 and 10,000 services. Run as root on
# an otherwise idle machine; figures go in docs/benchmarks.md with this command line.
#   scripts/bench-l4.sh [--services 10,10000] [--seconds 5] [--rounds 3]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build}
[[ $EUID -eq 0 ]] || { echo "bench-l4.sh: run as root" >&2; exit 1; }
"$root/scripts/build.sh"
exec "$build/tests/bench/sluice_bench_l4" "$@"
