# Helpers the L7 benchmarks share (sourced by l7_bench.sh and telemetry_bench.sh; not run
# alone). They use the caller's globals: tmp (a scratch directory), pids (the processes
# started), cg and capped (QUOTA's cgroup, and whether the next start joins it), conns and
# secs (wrk's connections and duration), results (the file each run's line is added to).

cleanup() {
  if [[ -n ${hog_pid:-} ]]; then kill "$hog_pid" 2>/dev/null || true; fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [[ -n $cg ]]; then rmdir "$cg" 2>/dev/null || echo "could not remove cgroup $cg" >&2; fi
  if [[ -n ${cg_enabled_cpu:-} ]]; then echo -cpu >"$cg_enabled_cpu/cgroup.subtree_control" 2>/dev/null || true; fi
  rm -rf "$tmp"
}

start() {  # start CPUS CMD...: runs pinned (and in $capped's cgroup when set), remembers the pid
  local cpus=$1; shift
  if [[ -n ${capped:-} ]]; then
    # Joins the cgroup before exec, so forked workers (nginx) are capped too.
    sh -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' sh "$cg" taskset -c "$cpus" "$@" \
      >"$tmp/$(basename "$1").$RANDOM.log" 2>&1 &
  else
    taskset -c "$cpus" "$@" >"$tmp/$(basename "$1").$RANDOM.log" 2>&1 &
  fi
  pids+=($!)
}

# QUOTA=1: a cgroup capped at half a core, under the cpu controller of cgroup v2 when
# the unified hierarchy has it, else of cgroup v1.
make_capped_cgroup() {
  local v2 v1
  v2=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)
  if [[ -n $v2 ]] && grep -qw cpu "$v2/cgroup.controllers" 2>/dev/null; then
    if ! grep -qw cpu "$v2/cgroup.subtree_control"; then
      echo +cpu >"$v2/cgroup.subtree_control"
      cg_enabled_cpu=$v2  # given back in cleanup
    fi
    cg=$v2/sluice-l7-bench.$$
    mkdir "$cg"
    echo "5000 10000" >"$cg/cpu.max"
  else
    v1=$(awk '$3 == "cgroup" && $4 ~ /(^|,)cpu(,|$)/ {print $2; exit}' /proc/mounts)
    if [[ -z $v1 ]]; then
      echo "QUOTA=1: no cgroup cpu controller (v2 or v1) in /proc/mounts" >&2
      exit 1
    fi
    cg=$v1/sluice-l7-bench.$$
    mkdir "$cg"
    echo 10000 >"$cg/cpu.cfs_period_us"
    echo 5000 >"$cg/cpu.cfs_quota_us"
  fi
  echo "quota: the one-worker proxies run in $cg, capped at 5 ms of CPU per 10 ms"
}

stop_last() {
  local p=${pids[-1]}
  kill "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  unset 'pids[-1]'
}

wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "port $1 did not open" >&2; exit 1
}

# ---------------------------------------------------------------- configs
cluster() {  # name port
  cat <<EOF
{"name":"$1","type":"STATIC","connect_timeout":"1s","lb_policy":"ROUND_ROBIN",
 "load_assignment":{"cluster_name":"$1","endpoints":[{"lb_endpoints":[{"endpoint":{"address":{"socket_address":{"address":"127.0.0.1","port_value":$2}}}}]}]}}
EOF
}

cpu_ticks() {  # user+system clock ticks of a process, its threads and its children
  local total=0 p t
  for p in "$1" $(pgrep -P "$1" || true); do
    for t in /proc/"$p"/task/*/stat; do
      [[ -r $t ]] || continue
      total=$((total + $(awk '{print $14 + $15}' "$t")))
    done
  done
  echo "$total"
}

run_wrk() {  # label port cpus
  local out t0 t1 pid=${pids[-1]}
  t0=$(cpu_ticks "$pid")
  out=$(taskset -c "$3" wrk -t1 -c"$conns" -d"${secs}s" --latency -H "Host: bench.local" \
        "http://127.0.0.1:$2/api/items" 2>&1)
  local rps p50 p99 non2xx
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out")
  t1=$(cpu_ticks "$pid")
  # Requests per CPU-second of the proxy: its throughput per fully used core, which the
  # shared 2-core machine cannot show directly (the load side saturates first).
  local per_core
  per_core=$(awk -v r="$rps" -v s="$secs" -v d="$((t1 - t0))" -v hz="$(getconf CLK_TCK)" \
             'BEGIN { if (d > 0) printf "%.0f", r * s / (d / hz); else print "n/a" }')
  printf '%-22s rps=%-10s p50=%-9s p99=%-9s non2xx=%-4s req_per_cpu_s=%-7s load=%s\n' "$1" "$rps" \
    "$p50" "$p99" "${non2xx:-0}" "$per_core" "$(cut -d' ' -f1 /proc/loadavg)" | tee -a "$results"
}
