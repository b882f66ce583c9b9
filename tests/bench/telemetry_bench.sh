#!/usr/bin/env bash
# What Istio's standard metrics cost the proxy per request (issue 17: at most 3%), paired.
#
# One sluice-proxy worker serves the L7 benchmark's job (l7_bench.sh: Host bench.local,
# /api routed 50/50 to two upstreams, keep-alive, no access log) in two ways that differ
# only in the metrics: "off" (no istio.stats filter, no pod identity) and "on" (the HCM
# carries istiod's istio.stats filter and the proxy keeps the metrics as pod
# bench/bench-5d9c8b7f6d-bxxxx, --istio-workload; the clusters carry istiod's
# istio.services metadata and the endpoints istio.workload, so every label resolves).
# The two alternate for ROUNDS rounds (default 7), each round measuring both back to back;
# the per-round ratio on/off is the paired figure, and its median is reported.
#
# The proxy is the bottleneck by construction: it runs on CPU 0 in a cgroup capped at half
# a core (as l7_bench.sh QUOTA=1), wrk and the upstreams on CPU 1. requests/s is then its
# capacity on that budget; req_per_cpu_s divides by the CPU it actually used.
# After each "on" run the proxy writes its metrics, and the script checks that
# istio_requests_total counted the requests (a benchmark of metrics that were not kept
# would measure nothing).
#
# Usage: tests/bench/telemetry_bench.sh [BUILD_DIR] [SECONDS]
set -euo pipefail

if [[ ${SHIELD:-1} == 1 ]] && [[ -w /proc/self/autogroup ]]; then
  echo -20 >/proc/self/autogroup 2>/dev/null && echo "shield: own autogroup at nice -20" ||
    echo "shield: not permitted, running at normal priority"
fi
rounds=${ROUNDS:-7}
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$root/build}
secs=${2:-8}
conns=${CONNS:-64}
proxy_bin=$build/agent/proxy/sluice-proxy
up_bin=$build/tests/proxy/sluice-test-upstream
for b in "$proxy_bin" "$up_bin"; do
  [[ -x $b ]] || { echo "missing $b (build sluice-proxy, sluice-test-upstream)" >&2; exit 1; }
done
command -v wrk >/dev/null || { echo "wrk is missing (scripts/install-deps.sh installs it)" >&2; exit 1; }

tmp=$(mktemp -d /tmp/sluice-telemetry-bench-XXXXXX)
pids=()
cg=""
source "$root/tests/bench/lib.sh"
trap cleanup EXIT

UP1=19101 UP2=19102 PORT=19180
for port in $UP1 $UP2 $PORT; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is already in use; stop what listens there first" >&2
    exit 1
  fi
done
make_capped_cgroup
start 1 "$up_bin" $UP1 v1
start 1 "$up_bin" $UP2 v2
wait_port $UP1; wait_port $UP2

# A cluster as istiod sends it: the service in the cluster's metadata, the workload in
# the endpoint's.
istio_cluster() {  # subset port
  local name="outbound|80|$1|api.bench.svc.cluster.local"
  cat <<JSON
{"name":"$name","type":"STATIC","connect_timeout":"1s","lb_policy":"ROUND_ROBIN",
 "metadata":{"filter_metadata":{"istio":{"services":[{"host":"api.bench.svc.cluster.local","name":"api","namespace":"bench"}]}}},
 "load_assignment":{"cluster_name":"$name","endpoints":[{"lb_endpoints":[{
   "endpoint":{"address":{"socket_address":{"address":"127.0.0.1","port_value":$2}}},
   "metadata":{"filter_metadata":{"istio":{"workload":"api-$1;bench;api;$1;Kubernetes"}}}}]}]}}
JSON
}
config() {  # with_stats(0|1)
  local stats=""
  if [[ $1 == 1 ]]; then
    stats='{"name":"istio.stats","typed_config":{"@type":"type.googleapis.com/udpa.type.v1.TypedStruct","type_url":"type.googleapis.com/stats.PluginConfig","value":{}}},'
  fi
  cat <<JSON
{"listeners":[{"name":"http","address":{"socket_address":{"address":"127.0.0.1","port_value":$PORT}},
  "filter_chains":[{"filters":[{"name":"envoy.filters.network.http_connection_manager","typed_config":{
   "@type":"type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
   "stat_prefix":"bench","route_config":{"name":"r","virtual_hosts":[{"name":"bench","domains":["bench.local"],
    "routes":[{"name":"api","match":{"prefix":"/api"},"route":{"weighted_clusters":{"clusters":[
      {"name":"outbound|80|v1|api.bench.svc.cluster.local","weight":50},{"name":"outbound|80|v2|api.bench.svc.cluster.local","weight":50}]}}}]}]},
   "http_filters":[$stats{"name":"envoy.filters.http.router","typed_config":{"@type":"type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}],
 "clusters":[$(istio_cluster v1 $UP1),$(istio_cluster v2 $UP2)]}
JSON
}
config 0 >"$tmp/off.json"
config 1 >"$tmp/on.json"

results="$tmp/results"
: >"$results"
for round in $(seq "$rounds"); do
  for mode in off on; do
    capped=1
    if [[ $mode == on ]]; then
      start 0 "$proxy_bin" --config "$tmp/on.json" --access-log /dev/null \
        --istio-workload bench/bench-5d9c8b7f6d-bxxxx --istio-stats-file "$tmp/on.prom"
    else
      start 0 "$proxy_bin" --config "$tmp/off.json" --access-log /dev/null
    fi
    capped=""
    wait_port $PORT
    run_wrk "$mode#$round" $PORT 1
    stop_last
    if [[ $mode == on ]]; then
      counted=$(awk '/^istio_requests_total\{/ {n += $NF} END {printf "%d", n}' "$tmp/on.prom")
      echo "  on#$round: istio_requests_total counted $counted requests"
      [[ $counted -gt 0 ]] || { echo "the metrics counted nothing: the benchmark is void" >&2; exit 1; }
    fi
  done
done

echo
echo "== $rounds paired rounds, metrics on / off (median of the per-round ratios)"
awk -v rounds="$rounds" '
  function med(v, n,    i, j, t) {
    for (i = 2; i <= n; i++) { t = v[i]; for (j = i - 1; j >= 1 && v[j] > t; j--) v[j + 1] = v[j]; v[j + 1] = t }
    return (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
  }
  function ms(v) { if (v ~ /us$/) return (v+0) / 1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return (v+0)*1000; return v+0 }
  { split($2,a,"="); split($4,c,"="); split($6,e,"="); rps[$1]=a[2]; p99[$1]=ms(c[2]); eff[$1]=e[2] }
  END {
    for (r = 1; r <= rounds; r++) {
      R[r] = rps["on#" r] / rps["off#" r]; E[r] = eff["on#" r] / eff["off#" r]; P[r] = p99["on#" r] / p99["off#" r]
      ron[r] = rps["on#" r]; roff[r] = rps["off#" r]
    }
    printf "median rps: off %.0f, on %.0f\n", med(roff, rounds), med(ron, rounds)
    printf "paired: rps %.3fx, req per proxy CPU-second %.3fx, p99 %.3fx (on / off); cost per request %.1f%%\n",
      med(R, rounds), med(E, rounds), med(P, rounds), (1 / med(E, rounds) - 1) * 100
  }' "$results"
