#!/usr/bin/env bash
# Stand-in apps benchmark (not a test): wrk against sluice-apps httpbin and helloworld on
# loopback, with the access log written to a file as a pod's stdout would be.
#   scripts/bench-apps.sh [--seconds 5] [--connections 50]
# Needs a built sluice-apps (BUILD_DIR, default ./build) and wrk.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build}
bin="$build/agent/apps/sluice-apps"
seconds=5
conns=50
while (($#)); do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --connections) conns=$2; shift 2 ;;
    *) echo "bench-apps.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ -x $bin ]] || { echo "bench-apps.sh: build sluice-apps first ($bin missing)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "bench-apps.sh: wrk is not installed" >&2; exit 1; }

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

# start NAME ARGS...: runs a stand-in on a free loopback port (in this shell, so the
# cleanup trap knows its pid).
start() {
  local name=$1; shift
  "$bin" "$@" --address 127.0.0.1 --port 0 >"$tmp/$name.log" 2>"$tmp/$name.err" &
  pids+=($!)
}
# port NAME: waits for the "listening on" line and prints the port.
port() {
  for _ in $(seq 100); do
    if grep -q 'listening on http ' "$tmp/$1.err"; then
      grep -o 'listening on http [^ ]*' "$tmp/$1.err" | sed 's/.*://'
      return
    fi
    sleep 0.05
  done
  echo "bench-apps.sh: $1 did not start: $(cat "$tmp/$1.err")" >&2
  exit 1
}

start httpbin httpbin
SERVICE_VERSION=v1 HOSTNAME=bench start helloworld helloworld
httpbin_port=$(port httpbin)
hello_port=$(port helloworld)

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for target in "httpbin /get:$httpbin_port/get" "httpbin /status/200:$httpbin_port/status/200" \
              "helloworld /hello:$hello_port/hello"; do
  name=${target%%:*}
  url="http://127.0.0.1:${target#*:}"
  echo "== $name, $conns connections, ${seconds}s"
  wrk -t2 -c"$conns" -d"${seconds}s" --latency "$url" |
    grep -E 'Requests/sec|^ +(50|99)%|requests in|Non-2xx|Socket errors'
done
echo "== access log lines written: $(cat "$tmp"/*.log | wc -l)"
echo "== httpbin RSS after the runs: $(grep VmRSS /proc/${pids[0]}/status | awk '{print $2, $3}')"
