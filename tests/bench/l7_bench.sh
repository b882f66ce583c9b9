#!/usr/bin/env bash
# L7 benchmark: Sluice vs haproxy vs nginx on loopback, with wrk.
#
# The same job for each proxy: Host "bench.local" + prefix "/api" routed to two
# upstreams weighted 50/50, HTTP/1.1 keep-alive on both sides, no access log. The
# upstreams are the project's own (sluice-test-upstream, one epoll thread each). Sluice
# runs twice per round: on its io_uring backend (the default where the kernel has it;
# --io io_uring here, so a kernel without it fails loudly) and on epoll. With one worker
# it also runs the floor: sluice_null_proxy, which pairs each client connection with an
# upstream connection and copies bytes on the same event loop, doing no HTTP at all, so
# what it costs is the kernel's part of a userspace hop (FLOOR=0 skips it).
#
# CPU pinning (the machine has 2 cores): with one proxy worker, the proxy runs on CPU 0
# and wrk + both upstreams share CPU 1. With two workers the proxy may use both CPUs and
# shares them with wrk and the upstreams (so "per worker" figures there are pessimistic
# for every proxy alike).
#
# Then: the primary's latency with 100% mirroring to a slow shadow (200 ms per answer)
# against the same route without mirroring, alternated over MIRROR_ROUNDS (default 5)
# rounds; the medians are compared.
#
# Shielding from other work on the machine: when allowed (root), the script puts
# itself and everything it starts in its own scheduler autogroup at nice -20, so that
# concurrent builds in other sessions get little CPU while it measures (every proxy is
# measured under the same conditions). SHIELD=0 turns this off. The 1-minute load
# average is printed with every run.
#
# Usage: tests/bench/l7_bench.sh [BUILD_DIR] [SECONDS]
set -euo pipefail

if [[ ${SHIELD:-1} == 1 ]] && [[ -w /proc/self/autogroup ]]; then
  echo -20 >/proc/self/autogroup 2>/dev/null && echo "shield: own autogroup at nice -20" ||
    echo "shield: not permitted, running at normal priority"
fi
rounds=${ROUNDS:-3}
mirror_rounds=${MIRROR_ROUNDS:-5}
worker_counts=${WORKERS:-1 2}
# HOG=1: a busy loop shares CPU 0 with the one-worker proxy (equal priority), so the
# proxy, not the load side on CPU 1, is the bottleneck and requests/s compares the
# proxies' capacity on the same half of a core.
hog=${HOG:-0}
# QUOTA=1: instead, the one-worker proxy runs in a cgroup capped at half a core
# (CPU 0, 5 ms per 10 ms period) with nothing else on CPU 0. Every proxy then gets the
# same CPU budget whether or not it sleeps between events (under HOG, a proxy that
# waits for work hands the rest of its share to the busy loop), so requests/s is
# each proxy's capacity on half a core. Needs root and a cgroup cpu controller (v2 or
# v1, found in /proc/mounts).
quota=${QUOTA:-0}
floor=${FLOOR:-1}
if [[ $hog == 1 && $quota == 1 ]]; then
  echo "HOG=1 and QUOTA=1 are two ways to make the proxy the bottleneck: pick one" >&2
  exit 1
fi

root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$root/build}
secs=${2:-8}
conns=${CONNS:-64}
proxy_bin=$build/agent/proxy/sluice-proxy
up_bin=$build/tests/proxy/sluice-test-upstream
null_bin=$build/tests/bench/sluice_null_proxy
for b in "$proxy_bin" "$up_bin" "$null_bin"; do
  [[ -x $b ]] || { echo "missing $b (build sluice-proxy, sluice-test-upstream, sluice_null_proxy)" >&2; exit 1; }
done

tmp=$(mktemp -d /tmp/sluice-l7-bench-XXXXXX)
pids=()
cg=""  # the capped cgroup (QUOTA=1)
source "$root/tests/bench/lib.sh"
trap cleanup EXIT

UP1=19001 UP2=19002 SHADOW=19003 PORT_SLUICE=19080 PORT_HAPROXY=19081 PORT_NGINX=19082 PORT_MIRROR=19083

if [[ $quota == 1 ]]; then make_capped_cgroup; fi

for port in $UP1 $UP2 $SHADOW $PORT_SLUICE $PORT_HAPROXY $PORT_NGINX $PORT_MIRROR; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is already in use; stop what listens there first" >&2
    exit 1
  fi
done

start 1 "$up_bin" $UP1 v1
start 1 "$up_bin" $UP2 v2
start 1 "$up_bin" $SHADOW shadow 200
wait_port $UP1; wait_port $UP2; wait_port $SHADOW

# ---------------------------------------------------------------- configs
sluice_config() {  # port mirror(0|1)
  local mirror=""
  [[ $2 == 1 ]] && mirror=',"request_mirror_policies":[{"cluster":"shadow"}]'
  cat <<EOF
{"listeners":[{"name":"http","address":{"socket_address":{"address":"127.0.0.1","port_value":$1}},
  "filter_chains":[{"filters":[{"name":"envoy.filters.network.http_connection_manager","typed_config":{
   "@type":"type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
   "stat_prefix":"bench","route_config":{"name":"r","virtual_hosts":[{"name":"bench","domains":["bench.local"],
    "routes":[{"name":"api","match":{"prefix":"/api"},"route":{"weighted_clusters":{"clusters":[
      {"name":"v1","weight":50},{"name":"v2","weight":50}]}$mirror}}]}]},
   "http_filters":[{"name":"envoy.filters.http.router","typed_config":{"@type":"type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}],
 "clusters":[$(cluster v1 $UP1),$(cluster v2 $UP2),$(cluster shadow $SHADOW)]}
EOF
}
sluice_config $PORT_SLUICE 0 >"$tmp/sluice.json"
sluice_config $PORT_MIRROR 1 >"$tmp/sluice-mirror.json"

haproxy_config() {  # threads
  cat <<EOF
global
  nbthread $1
  maxconn 4096
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:$PORT_HAPROXY
  acl host_bench hdr(host) -i bench.local
  acl api path_beg /api
  use_backend be if host_bench api
backend be
  balance roundrobin
  server v1 127.0.0.1:$UP1 weight 50
  server v2 127.0.0.1:$UP2 weight 50
EOF
}

nginx_config() {  # workers
  cat <<EOF
worker_processes $1;
daemon off;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $tmp; proxy_temp_path $tmp; fastcgi_temp_path $tmp; uwsgi_temp_path $tmp; scgi_temp_path $tmp;
  upstream api { server 127.0.0.1:$UP1 weight=50; server 127.0.0.1:$UP2 weight=50; keepalive 128; }
  server {
    listen 127.0.0.1:$PORT_NGINX;
    server_name bench.local;
    location /api { proxy_pass http://api; proxy_http_version 1.1; proxy_set_header Connection ""; }
    location / { return 404; }
  }
}
EOF
}

# ---------------------------------------------------------------- measure
results="$tmp/results"
: >"$results"

# The proxies alternate within each round (ROUNDS, default 3); medians are compared.
for round in $(seq "$rounds"); do
for workers in $worker_counts; do
  if [[ $workers == 1 ]]; then pcpu=0; wcpu=1; else pcpu=0,1; wcpu=0,1; fi
  if [[ $hog == 1 && $workers == 1 ]]; then
    taskset -c 0 sh -c 'while :; do :; done' &
    hog_pid=$!
  fi
  capped=""
  if [[ $quota == 1 && $workers == 1 ]]; then capped=1; fi
  start $pcpu "$proxy_bin" --config "$tmp/sluice.json" --workers $workers --access-log /dev/null \
    --io io_uring
  wait_port $PORT_SLUICE
  run_wrk "sluice/$workers#$round" $PORT_SLUICE $wcpu
  stop_last
  # The same engine on its epoll backend, to show what io_uring changes.
  start $pcpu "$proxy_bin" --config "$tmp/sluice.json" --workers $workers --access-log /dev/null \
    --io epoll
  wait_port $PORT_SLUICE
  run_wrk "sluice-epoll/$workers#$round" $PORT_SLUICE $wcpu
  stop_last

  haproxy_config $workers >"$tmp/haproxy.cfg"
  start $pcpu haproxy -f "$tmp/haproxy.cfg" -db
  wait_port $PORT_HAPROXY
  run_wrk "haproxy/$workers#$round" $PORT_HAPROXY $wcpu
  stop_last

  nginx_config $workers >"$tmp/nginx.conf"
  start $pcpu nginx -c "$tmp/nginx.conf" -p "$tmp"
  wait_port $PORT_NGINX
  run_wrk "nginx/$workers#$round" $PORT_NGINX $wcpu
  stop_last

  if [[ $floor == 1 && $workers == 1 ]]; then
    start $pcpu "$null_bin" $PORT_SLUICE $UP1 $UP2 --io io_uring
    wait_port $PORT_SLUICE
    run_wrk "floor/$workers#$round" $PORT_SLUICE $wcpu
    stop_last
  fi
  if [[ -n ${hog_pid:-} ]]; then
    kill "$hog_pid"; wait "$hog_pid" 2>/dev/null || true
    hog_pid=
  fi
  capped=""
done
done

# Mirroring: same route, one worker, with and without 100% mirroring to the slow shadow,
# alternated over several rounds (the median p99 of each is compared: one noisy run on a
# shared machine should not decide it).
for round in $(seq "$mirror_rounds"); do
  start 0 "$proxy_bin" --config "$tmp/sluice.json" --workers 1 --access-log /dev/null
  wait_port $PORT_SLUICE
  run_wrk "sluice/no-mirror#$round" $PORT_SLUICE 1
  stop_last
  start 0 "$proxy_bin" --config "$tmp/sluice-mirror.json" --workers 1 --access-log /dev/null
  wait_port $PORT_MIRROR
  run_wrk "sluice/mirror-100%#$round" $PORT_MIRROR 1
  stop_last
done

echo
echo "== medians over $rounds rounds; ratios (sluice / haproxy, sluice / nginx)"
awk -v rounds="$rounds" -v mrounds="$mirror_rounds" -v wcounts="$worker_counts" '
  function med(v, n,    i, j, t) {  # median of v[1..n] (sorts v)
    for (i = 2; i <= n; i++) { t = v[i]; for (j = i - 1; j >= 1 && v[j] > t; j--) v[j + 1] = v[j]; v[j + 1] = t }
    return (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
  }
  function ms(v) { if (v ~ /us$/) return (v+0) / 1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return (v+0)*1000; return v+0 }
  function m(arr, label, n,    r, v) { for (r = 1; r <= n; r++) v[r] = arr[label "#" r]; return med(v, n) }
  { split($2,a,"="); split($3,b,"="); split($4,c,"="); split($6,e,"="); rps[$1]=a[2]; p50[$1]=ms(b[2]); p99[$1]=ms(c[2]); eff[$1]=e[2] }
  END {
    nw = split(wcounts, ws, " ")
    for (iw = 1; iw <= nw; iw++) {
      w = ws[iw]
      split("sluice haproxy nginx sluice-epoll", names, " ")
      for (k = 1; k <= 4; k++) {
        l = names[k] "/" w
        R[k] = m(rps, l, rounds); P50[k] = m(p50, l, rounds); P99[k] = m(p99, l, rounds); E[k] = m(eff, l, rounds)
        printf "median %-10s rps=%.0f p50=%.2fms p99=%.2fms req_per_cpu_s=%.0f\n", l, R[k], P50[k], P99[k], E[k]
      }
      # Paired: the ratio within each round (measured minutes apart, not tens of minutes),
      # then the median, which a machine whose speed drifts during the run moves less.
      for (r = 1; r <= rounds; r++) {
        ls = "sluice/" w "#" r; lh = "haproxy/" w "#" r
        PR[r] = rps[ls] / rps[lh]; PE[r] = eff[ls] / eff[lh]
      }
      printf "%d worker(s), paired (median of the per-round ratios): rps %.2fx haproxy, req per proxy CPU-second %.2fx haproxy\n", w, med(PR, rounds), med(PE, rounds)
      printf "%d worker(s): rps %.2fx haproxy, %.2fx nginx; req per proxy CPU-second %.2fx haproxy, %.2fx nginx; p50 %.2fx haproxy, %.2fx nginx; p99 %.2fx haproxy, %.2fx nginx\n", w,
        R[1]/R[2], R[1]/R[3], E[1]/E[2], E[1]/E[3], P50[1]/P50[2], P50[1]/P50[3], P99[1]/P99[2], P99[1]/P99[3]
      if (w == 1 && ("floor/1#1" in rps)) {
        FR = m(rps, "floor/1", rounds); FE = m(eff, "floor/1", rounds)
        printf "median floor/1    rps=%.0f req_per_cpu_s=%.0f (a proxy that only copies bytes)\n", FR, FE
        printf "1 worker(s), the floor: req per CPU-second %.2fx haproxy, rps %.2fx haproxy; sluice reaches %.2f of the floor per CPU-second, %.2f of its rps\n",
          FE/E[2], FR/R[2], E[1]/FE, R[1]/FR
      }
      printf "%d worker(s), sluice on epoll: rps %.2fx haproxy; req per proxy CPU-second %.2fx haproxy; p99 %.2fx haproxy; io_uring vs epoll: rps %.2fx, req per CPU-second %.2fx\n", w,
        R[4]/R[2], E[4]/E[2], P99[4]/P99[2], R[1]/R[4], E[1]/E[4]
    }
    if (mrounds == 0) exit
    ma = m(p99, "sluice/no-mirror", mrounds); mb = m(p99, "sluice/mirror-100%", mrounds)
    printf "mirroring: median p99 with 100%% mirror to a slow shadow %.2f ms vs %.2f ms without = %.2fx\n", mb, ma, mb / ma
  }' "$results"
