#!/usr/bin/env bash
# HTTP/2 benchmark (issue 18; not a test): h2load against Sluice (sluice-proxy), haproxy
# and nginx, each taking HTTP/2 cleartext by prior knowledge (h2c, what `h2load` and
# `curl --http2-prior-knowledge` send) in front of the same upstreams, in one run.
#
# The job is tests/bench/l7_bench.sh's (docs/benchmarks.md, "L7 proxy"), with HTTP/2
# downstream: authority "bench.local" + prefix "/api" routed to two upstreams weighted
# 50/50 (the project's sluice-test-upstream, one epoll thread each, fixed 3-byte body),
# HTTP/1.1 keep-alive upstream (nginx cannot proxy HTTP/2 upstream outside grpc_pass, so
# every proxy translates h2 -> HTTP/1.1), no access log. Configs, generated below:
#   sluice   a static Envoy-style config, codec_type AUTO (the h2c preface picks HTTP/2)
#   haproxy  `bind … proto h2`, balance roundrobin 50/50, http-reuse always, nbthread 1
#   nginx    `listen … http2` (h2c by prior knowledge), upstream weights 50/50,
#            keepalive 128, worker_processes 1
#
# Load: h2load -c CONNS -m STREAMS (concurrent streams per connection) -t 1 for SECONDS
# (connections made inside the window, no warm-up, so the requests and the proxy's CPU
# time cover the same span), every request's latency written to a log (--log-file); p50
# and p99 come from that log. With one proxy worker the proxy is pinned to CPU 0, h2load
# and the upstreams share CPU 1 (as l7_bench.sh does); the load side is usually the
# bottleneck, so besides requests/s the script reports requests per CPU-second of the
# proxy (requests done ÷ the proxy's user+system time from /proc/PID/task/*/stat,
# nginx's worker included) and the ratios of Sluice's figures to haproxy's and nginx's.
#
# Each proxy is first asked once with curl --http2-prior-knowledge; one that does not
# answer 200 over HTTP/2 is reported as such and left out (its column "n/a"), so the
# run still compares the others.
#
# Usage: scripts/bench-h2.sh [--seconds 8] [--connections 16] [--streams 10] [--rounds 3]
#          [--only sluice,haproxy,nginx] [--sluice-b PATH]
#   --only       measure only these proxies (comma list), e.g. --only sluice
#   --sluice-b   A/B: a second sluice-proxy binary, measured as "sluice-b" right after
#                "sluice" in every round (same config, same conditions), with its ratio
#                to sluice in the summary
#   PERF_DATA=F  run `perf $PERF_ARGS -o F.<label> -p PID` (PERF_ARGS default "record -g";
#                "stat -e EVENTS" counts) on sluice-proxy during each of its h2load runs
#                (a profile costs CPU: do not read the figures of that run); PERF_ON=haproxy
#                profiles the proxies whose label starts so instead
#   KEEP=1       leave the generated configs and logs in the scratch directory (printed)
# Needs BUILD_DIR (default ./build) with sluice-proxy and sluice-test-upstream
# (cmake --build build --target sluice-proxy sluice-test-upstream), h2load (Debian
# nghttp2-client), haproxy, nginx (scripts/install-deps.sh). SHIELD=0: do not raise
# the benchmark's own autogroup to nice -20 (see l7_bench.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build}
secs=8 conns=16 streams=10 rounds=3 only="" proxy_b=""
while (($#)); do
  case $1 in
    --seconds) secs=${2:?}; shift 2 ;;
    --connections) conns=${2:?}; shift 2 ;;
    --streams) streams=${2:?}; shift 2 ;;
    --rounds) rounds=${2:?}; shift 2 ;;
    --only) only=${2:?}; shift 2 ;;
    --sluice-b) proxy_b=${2:?}; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-h2.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
proxy_bin=$build/agent/proxy/sluice-proxy
up_bin=$build/tests/proxy/sluice-test-upstream
for b in "$proxy_bin" "$up_bin" ${proxy_b:+"$proxy_b"}; do
  [[ -x $b ]] || { echo "bench-h2.sh: missing $b (build sluice-proxy and sluice-test-upstream)" >&2; exit 1; }
done
for t in h2load haproxy nginx curl taskset; do
  command -v $t >/dev/null || { echo "bench-h2.sh: $t is not installed (scripts/install-deps.sh)" >&2; exit 1; }
done

if [[ ${SHIELD:-1} == 1 ]] && [[ -w /proc/self/autogroup ]]; then
  echo -20 >/proc/self/autogroup 2>/dev/null && echo "shield: own autogroup at nice -20" ||
    echo "shield: not permitted, running at normal priority"
fi

tmp=$(mktemp -d /tmp/sluice-h2-bench-XXXXXX)
pids=()
cg="" capped=""
# start, stop_last, wait_port, cluster, cpu_ticks, cleanup: shared with l7_bench.sh.
source "$root/tests/bench/lib.sh"
if [[ ${KEEP:-0} == 1 ]]; then
  trap 'tmp_keep=$tmp; tmp=""; cleanup; echo "kept $tmp_keep"' EXIT
else
  trap cleanup EXIT
fi

UP1=19101 UP2=19102 PORT_SLUICE=19180 PORT_HAPROXY=19181 PORT_NGINX=19182
for port in $UP1 $UP2 $PORT_SLUICE $PORT_HAPROXY $PORT_NGINX; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "bench-h2.sh: port $port is already in use; stop what listens there first" >&2
    exit 1
  fi
done

start 1 "$up_bin" $UP1 v1
start 1 "$up_bin" $UP2 v2
wait_port $UP1
wait_port $UP2

# ---------------------------------------------------------------- configs
cat >"$tmp/sluice.json" <<JSON
{"listeners":[{"name":"h2c","address":{"socket_address":{"address":"127.0.0.1","port_value":$PORT_SLUICE}},
  "filter_chains":[{"filters":[{"name":"envoy.filters.network.http_connection_manager","typed_config":{
   "@type":"type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
   "stat_prefix":"bench","codec_type":"AUTO",
   "route_config":{"name":"r","virtual_hosts":[{"name":"bench","domains":["bench.local"],
    "routes":[{"name":"api","match":{"prefix":"/api"},"route":{"weighted_clusters":{"clusters":[
      {"name":"v1","weight":50},{"name":"v2","weight":50}]}}}]}]},
   "http_filters":[{"name":"envoy.filters.http.router","typed_config":{"@type":"type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}],
 "clusters":[$(cluster v1 $UP1),$(cluster v2 $UP2)]}
JSON

cat >"$tmp/haproxy.cfg" <<CFG
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:$PORT_HAPROXY proto h2
  acl host_bench hdr(host) -i bench.local
  acl api path_beg /api
  use_backend be if host_bench api
backend be
  balance roundrobin
  server v1 127.0.0.1:$UP1 weight 50
  server v2 127.0.0.1:$UP2 weight 50
CFG

cat >"$tmp/nginx.conf" <<CFG
worker_processes 1;
daemon off;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;  # streams per h2 connection too (nginx >= 1.19.7)
  client_body_temp_path $tmp; proxy_temp_path $tmp; fastcgi_temp_path $tmp; uwsgi_temp_path $tmp; scgi_temp_path $tmp;
  upstream api { server 127.0.0.1:$UP1 weight=50; server 127.0.0.1:$UP2 weight=50; keepalive 128; }
  server {
    listen 127.0.0.1:$PORT_NGINX http2;
    server_name bench.local;
    location /api { proxy_pass http://api; proxy_http_version 1.1; proxy_set_header Connection ""; }
    location / { return 404; }
  }
}
CFG

start_proxy() {  # name
  case $1 in
    sluice) start 0 "$proxy_bin" --config "$tmp/sluice.json" --workers 1 --access-log /dev/null
            port=$PORT_SLUICE ;;
    sluice-b) start 0 "$proxy_b" --config "$tmp/sluice.json" --workers 1 --access-log /dev/null
              port=$PORT_SLUICE ;;
    haproxy) start 0 haproxy -f "$tmp/haproxy.cfg" -db
             port=$PORT_HAPROXY ;;
    nginx) start 0 nginx -c "$tmp/nginx.conf" -p "$tmp"
           port=$PORT_NGINX ;;
  esac
  wait_port $port
}

# ---------------------------------------------------------------- preflight
# One request over h2c to each proxy: a proxy that does not answer 200 over HTTP/2 is
# left out of the run (and said so).
proxies=()
candidates=(sluice ${proxy_b:+sluice-b} haproxy nginx)
if [[ -n $only ]]; then
  IFS=, read -r -a want <<<"$only"
  for w in "${want[@]}"; do
    [[ " ${candidates[*]} " == *" $w "* ]] || { echo "bench-h2.sh: --only: unknown proxy '$w'" >&2; exit 2; }
  done
  sel=()
  for p in "${candidates[@]}"; do [[ ",$only," == *",$p,"* ]] && sel+=("$p"); done
  candidates=("${sel[@]}")
fi
for p in "${candidates[@]}"; do
  start_proxy $p
  got=$(curl -s -o /dev/null -w '%{http_code} HTTP/%{http_version}' --max-time 3 \
        --http2-prior-knowledge -H 'Host: bench.local' "http://127.0.0.1:$port/api/items" 2>&1 || true)
  stop_last
  if [[ $got == "200 HTTP/2" ]]; then
    proxies+=("$p")
  else
    echo "$p: curl --http2-prior-knowledge http://127.0.0.1:$port/api/items (authority bench.local) answered '$got', not '200 HTTP/2': left out of this run"
  fi
done
((${#proxies[@]})) || { echo "bench-h2.sh: no proxy answered h2c" >&2; exit 1; }

# ---------------------------------------------------------------- measure
results=$tmp/results
: >"$results"
hz=$(getconf CLK_TCK)

cpu_split() {  # user and system clock ticks of a process and its children's threads
  local u=0 s=0 p t
  for p in "$1" $(pgrep -P "$1" || true); do
    for t in /proc/"$p"/task/*/stat; do
      [[ -r $t ]] || continue
      read -r a b < <(awk '{print $14, $15}' "$t")
      u=$((u + a)) s=$((s + b))
    done
  done
  echo "$u $s"
}

run_h2load() {  # label port
  local pid=${pids[-1]} log=$tmp/h2load.log out t0 t1
  rm -f "$log"
  local perf_pid=""
  if [[ -n ${PERF_DATA:-} && $1 == ${PERF_ON:-sluice}* ]]; then
    # shellcheck disable=SC2086
    perf ${PERF_ARGS:-record -g} -o "$PERF_DATA.${1//#/-}" -p "$pid" >/dev/null 2>&1 &
    perf_pid=$!
    sleep 0.5
  fi
  t0=$(cpu_ticks "$pid")
  local ut0 st0
  read -r ut0 st0 < <(cpu_split "$pid")
  out=$(taskset -c 1 h2load -t 1 -c "$conns" -m "$streams" -D "$secs" \
        --log-file="$log" -H ':authority: bench.local' "http://127.0.0.1:$2/api/items" 2>&1)
  t1=$(cpu_ticks "$pid")
  local ut1 st1
  read -r ut1 st1 < <(cpu_split "$pid")
  if [[ -n $perf_pid ]]; then kill -INT "$perf_pid"; wait "$perf_pid" || true; fi
  local done ok2xx lat
  done=$(awk '/^requests:/ {print $8}' <<<"$out")
  ok2xx=$(awk '/^status codes:/ {print $3}' <<<"$out")
  # p50 / p99 from the per-request log: "start(us) status duration(us)".
  lat=$(awk '{print $3}' "$log" 2>/dev/null | sort -n | awk '
        {v[NR] = $1} END { if (NR == 0) { print "n/a n/a 0"; exit }
          i50 = int(NR * 0.50); if (i50 < 1) i50 = 1; i99 = int(NR * 0.99); if (i99 < 1) i99 = 1
          printf "%.2fms %.2fms %d\n", v[i50] / 1000, v[i99] / 1000, NR }')
  local p50 p99 n rps per_cpu
  read -r p50 p99 n <<<"$lat"
  rps=$(awk -v n="$n" -v s="$secs" 'BEGIN { printf "%.0f", n / s }')
  # Requests per proxy CPU-second: every request h2load completed, over the CPU the
  # proxy spent meanwhile.
  per_cpu=$(awk -v r="${done:-0}" -v d="$((t1 - t0))" -v hz="$hz" \
            'BEGIN { if (d > 0) printf "%.0f", r / (d / hz); else print "n/a" }')
  # The proxy's user and system CPU per request, microseconds (the split of the above).
  local us_split
  us_split=$(awk -v r="${done:-0}" -v u="$((ut1 - ut0))" -v s="$((st1 - st0))" -v hz="$hz" \
             'BEGIN { if (r > 0) printf "usr_us=%.2f sys_us=%.2f", u / hz * 1e6 / r, s / hz * 1e6 / r }')
  printf '%-14s rps=%-9s p50=%-9s p99=%-9s done=%-8s 2xx=%-8s req_per_cpu_s=%-7s load=%-5s %s\n' "$1" "$rps" \
    "$p50" "$p99" "${done:-0}" "${ok2xx:-0}" "$per_cpu" "$(cut -d' ' -f1 /proc/loadavg)" "$us_split" | tee -a "$results"
  if [[ ${done:-0} != "${ok2xx:-0}" ]]; then
    echo "  $1: $(grep -E '^(requests|status codes):' <<<"$out" | tr '\n' ' ')"
  fi
}

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); h2load -c $conns -m $streams, ${secs}s per run, $rounds round(s)"
for round in $(seq "$rounds"); do
  for p in "${proxies[@]}"; do
    start_proxy "$p"
    run_h2load "$p#$round" "$port"
    stop_last
  done
done

echo
echo "== medians over $rounds round(s); ratios of sluice to haproxy and nginx"
awk -v rounds="$rounds" -v have="${proxies[*]}" '
  function med(v, n,    i, j, t) {
    for (i = 2; i <= n; i++) { t = v[i]; for (j = i - 1; j >= 1 && v[j] > t; j--) v[j + 1] = v[j]; v[j + 1] = t }
    return (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
  }
  function m(arr, name,    r, v) { for (r = 1; r <= rounds; r++) v[r] = arr[name "#" r]; return med(v, rounds) }
  { split($2, a, "="); split($4, c, "="); split($7, e, "=")
    rps[$1] = a[2]; p99[$1] = c[2] + 0; eff[$1] = e[2] + 0 }
  END {
    n = split(have, names, " ")
    for (k = 1; k <= n; k++) {
      R[names[k]] = m(rps, names[k]); P[names[k]] = m(p99, names[k]); E[names[k]] = m(eff, names[k])
      printf "median %-8s rps=%.0f p99=%.2fms req_per_cpu_s=%.0f\n", names[k], R[names[k]], P[names[k]], E[names[k]]
    }
    if (!("sluice" in R)) { print "sluice: not measured (it did not answer h2c), no ratios"; exit }
    for (k = 1; k <= n; k++) {
      o = names[k]; if (o == "sluice") continue
      if (o == "sluice-b") {
        printf "sluice-b / sluice: req per proxy CPU-second %.2fx, rps %.2fx, p99 %.2fx\n", E[o] / E["sluice"], R[o] / R["sluice"], P[o] / P["sluice"]
        continue
      }
      printf "sluice / %s: req per proxy CPU-second %.2fx, rps %.2fx, p99 %.2fx\n", o, E["sluice"] / E[o], R["sluice"] / R[o], P["sluice"] / P[o]
    }
  }' "$results"
