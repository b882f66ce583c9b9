#!/usr/bin/env bash
# The L7 soak (issue 21): mixed keep-alive, upgrade, slow and abusive clients at a steady
# rate against a pod's in-pod proxy for DURATION seconds, watching the L7 process's
# resident memory and file descriptors. Not a CI test: a documented run
# (docs/benchmarks.md, "L7 soak").
#
#   tests/bench/soak.sh [DURATION]        (default $DURATION or 600 s; 60 for a quick try)
#
# What it does:
# 1. Brings up a private local cluster (settings below: every name "sluicet-soak…", or
#    SOAK_NAME…) with examples/samples and the soak's upstream (soak-echo:
#    tests/bench/soak_upstream.py in a pod), labels `default` for Sluice and applies a
#    VirtualService with a path match for soak-echo.
#    It fails loudly unless the agent's kernel services mark soak-echo as L7 (sent to the
#    in-pod proxy) and a request from the sleep pod moves the pod's proxy counters.
# 2. Finds the L7 process (`sluice-agent --role l7`, the agent's only child) and records
#    its VmRSS and open descriptors, then runs tests/bench/soak_clients.py inside the
#    sleep pod for DURATION, sampling every SAMPLE_EVERY (30) seconds. The clients
#    linger after the run (LINGER, 75 s) so slow ones get the proxy's 408s, then it waits
#    SETTLE (45) seconds — longer than the upstream's keep-alive idle timeout (30 s), so
#    the proxy's pooled upstream connections are closed by then — and samples the end.
# 3. Prints a summary, writes a JSON report (REPORT, default build/soak/report.json, with
#    the clients' own report, every sample and the pod's proxy counters) and tears the
#    cluster down — always (trap), on failure or ^C too.
#
# Exit status 0 only if all of these hold:
# - no well-behaved client failed and no documented answer (403, 408, 400) was wrong;
# - the L7 process never restarted (same pid throughout, sluice_l7_restarts_total 0);
# - descriptors at the end are within FD_TOLERANCE (2) of the start: every client and
#   upstream connection is gone, the listeners, event loop and log files are what they
#   were;
# - VmRSS at the end is within RSS_TOLERANCE_KB (4096) of the warm-up baseline: the
#   first sample at or after WARMUP (90) seconds. Not the start: the first minutes
#   allocate what the process keeps and reuses (connection and buffer objects at the
#   mix's peak concurrency, the allocator's arenas for the worker thread), and by 90 s
#   every client class has completed a full cycle — the longest, a slow body's 60 s
#   request_timeout, and idle holds of up to 80 s — so growth after it is growth per
#   request or per connection, which is what a leak looks like. The end is after the
#   settle, when no connection is open, so it should be at or below the baseline.
#
# Other knobs: SCALE (1; multiplies every client rate), SOAK_CLASSES (e.g. "partial-body,h2c":
# only these client classes, to reproduce a finding), BUILD_DIR (./build), KEEP_LOGS=1
# (keep the cluster's logs next to the report). Needs root and the build tree
# (sluicectl, sluice-agent, sluice-apps, sluice-cni).
set -uo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
build=${BUILD_DIR:-$root/build}
SLUICECTL=$build/agent/sluicectl/sluicectl
duration=${1:-${DURATION:-600}}
sample_every=${SAMPLE_EVERY:-30}
warmup=${WARMUP:-90}
linger=${LINGER:-75}
settle=${SETTLE:-45}
scale=${SCALE:-1}
rss_tolerance_kb=${RSS_TOLERANCE_KB:-4096}
fd_tolerance=${FD_TOLERANCE:-2}
report=${REPORT:-$build/soak/report.json}

# The cluster's private settings: nothing shared with a user's cluster or the tests'.
# SOAK_NAME prefixes every name (state dir, bridge, namespaces, cgroup, pins). The
# default starts with "sluicet", so scripts/cleanup-test-state.sh removes what a crashed
# soak leaves — but scripts/test.sh runs that script when any suite ends, and it then
# removes a running soak's cluster too. Where others run the suite during the soak, give
# a name outside its reach (SOAK_NAME=sluicesoak; at most 14 characters); the soak's own
# teardown still removes everything, and `sluicectl local down --state-dir
# /tmp/NAME-local` does after a crash.
name=${SOAK_NAME:-sluicet-soak}
[[ $name =~ ^[a-z][a-z0-9-]{0,13}$ ]] || { echo "soak: SOAK_NAME: up to 14 of a-z 0-9 -" >&2; exit 1; }
state_dir=/tmp/$name-local
pin_root=/sys/fs/bpf/$name
admin=127.0.0.1:18600
proxy_port=18601
cg_mount=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)
up_settings=(--state-dir "$state_dir" --bridge "${name}0" --pod-subnet 10.243.0.0/16
  --service-subnet 10.103.0.0/16 --netns-prefix "$name-" --cgroup-dir "$cg_mount/$name"
  --pin-root "$pin_root" --admin-address "$admin" --proxy-port "$proxy_port")

say() { printf '%s\n' "$*"; }
die() { printf 'soak: FAIL: %s\n' "$*" >&2; exit 1; }

[[ $EUID -eq 0 ]] || die "run as root (the local cluster makes network namespaces and loads BPF programs)"
[[ $duration =~ ^[0-9]+$ ]] || die "DURATION must be whole seconds, not '$duration'"
for bin in "$SLUICECTL" "$build/agent/daemon/sluice-agent" "$build/agent/apps/sluice-apps" \
  "$build/cni/sluice-cni"; do
  [[ -x $bin ]] || die "$bin is missing: build first (scripts/build.sh, or BUILD_DIR=...)"
done
[[ -n $cg_mount ]] || die "no cgroup2 mount in /proc/mounts"
[[ -e $state_dir ]] && die "$state_dir exists: another soak runs, or one crashed (scripts/cleanup-test-state.sh)"
for port in 18600 18601; do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && die "port $port is in use"
done

out=$(dirname "$report")
mkdir -p "$out"
work=$(mktemp -d /tmp/sluice-soak.XXXXXX)
samples=$work/samples.jsonl
client_log=$out/clients.log
client_report=$out/clients.json
rm -f "$client_log" "$client_report"
client_pid=""

sluicectl() { "$SLUICECTL" "$@"; }

teardown() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n $client_pid ]] && kill -0 "$client_pid" 2>/dev/null; then
    pkill -P "$client_pid" 2>/dev/null  # the clients, then the exec that waits for them
    kill "$client_pid" 2>/dev/null
    wait "$client_pid" 2>/dev/null
  fi
  if [[ ${KEEP_LOGS:-0} == 1 && -d $state_dir/logs ]]; then
    rm -rf "$out/logs"
    cp -r "$state_dir/logs" "$out/logs"
  fi
  if [[ -e $state_dir ]]; then
    say "== tear down: sluicectl local down"
    timeout 180 "$SLUICECTL" local down --state-dir "$state_dir" 2>&1 | tail -n 3 | sed 's/^/    /'
  fi
  rm -rf "$work"
  exit "$rc"
}
trap teardown EXIT
trap 'say "soak: interrupted"; exit 130' INT TERM

# ---------------------------------------------------------------------- the cluster
cat >"$work/soak-echo.yaml" <<EOF
# The soak's upstream: tests/bench/soak_upstream.py (a client image runs its own command).
apiVersion: v1
kind: Service
metadata:
  name: soak-echo
spec:
  ports:
  - name: http
    port: 8080
    targetPort: 8080
  selector:
    app: soak-echo
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: soak-echo
spec:
  replicas: 1
  selector:
    matchLabels:
      app: soak-echo
  template:
    metadata:
      labels:
        app: soak-echo
    spec:
      containers:
      - name: soak-echo
        image: curlimages/curl
        command: ["/usr/bin/python3", "$root/tests/bench/soak_upstream.py", "--port", "8080",
                  "--idle-timeout", "30"]
        ports:
        - containerPort: 8080
EOF
# A path match: more than one catch-all route, so the kernel cannot serve soak-echo and
# sends its connections to the in-pod proxy.
cat >"$work/soak-vs.yaml" <<EOF
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: soak-echo
spec:
  hosts:
  - soak-echo
  http:
  - name: soak
    match:
    - uri:
        prefix: /soak
    route:
    - destination:
        host: soak-echo
        port:
          number: 8080
  - name: rest
    route:
    - destination:
        host: soak-echo
        port:
          number: 8080
EOF

say "== cluster: sluicectl local up ${up_settings[*]} -f examples/samples -f soak-echo.yaml"
sluicectl local up "${up_settings[@]}" -f "$root/examples/samples" -f "$work/soak-echo.yaml" \
  >"$work/up.log" 2>&1 || { tail -n 20 "$work/up.log" >&2; die "the local cluster did not come up"; }
export SLUICE_LOCAL_STATE=$state_dir
sluicectl local label namespace default istio.io/dataplane-mode=sluice >/dev/null ||
  die "could not label namespace default"
sluicectl local apply -f "$work/soak-vs.yaml" >/dev/null || die "could not apply the VirtualService"

# soak-echo must be sent to the in-pod proxy: the agent's kernel services say so.
l7_ok=0
for _ in $(seq 100); do
  if curl -sf "http://$admin/config_dump" |
    jq -e '.kernel.services[] | select(.name | test("soak-echo")) | select(.l7 == true)' >/dev/null 2>&1; then
    l7_ok=1
    break
  fi
  sleep 0.3
done
if ((l7_ok == 0)); then
  curl -s "http://$admin/config_dump" | jq -c '.kernel.services[]?, .kernel.l7_reasons' >&2
  die "soak-echo is not redirected to the in-pod proxy (the agent's /config_dump kernel services)"
fi
say "   kernel: $(sluicectl bpf --pin-root "$pin_root" dump services | grep soak-echo)"
say "   why:    $(curl -s "http://$admin/config_dump" | jq -r '.kernel.l7_reasons[] | select(test("soak-echo"))' | head -n 1)"

# ---------------------------------------------------------------------- the L7 process
agent_pid=$(awk '{print $1}' "$state_dir/agent.pid")
l7_pids=$(pgrep -P "$agent_pid")
[[ $(wc -w <<<"$l7_pids") == 1 ]] || die "expected one child of the agent ($agent_pid), found: ${l7_pids:-none}"
l7_pid=$l7_pids
[[ $(tr '\0' ' ' <"/proc/$l7_pid/cmdline") == *"--role l7"* ]] ||
  die "the agent's child $l7_pid is not the L7 process: $(tr '\0' ' ' <"/proc/$l7_pid/cmdline")"
say "   L7 process: pid $l7_pid ($(tr '\0' ' ' <"/proc/$l7_pid/cmdline" | cut -c1-80)…), agent pid $agent_pid"

t0=$SECONDS
restarted=0
# The agent gone is no measurement: torn down from outside (the state dir went with it:
# another session's scripts/cleanup-test-state.sh, see SOAK_NAME) is exit status 2, an
# agent that died on its own is a failure with its log's last lines.
check_agent() {
  kill -0 "$agent_pid" 2>/dev/null && return 0
  if [[ ! -e $state_dir/state.json ]]; then
    printf 'soak: INCONCLUSIVE: the cluster was removed under the soak (agent %s gone, %s too):\n' \
      "$agent_pid" "$state_dir/state.json" >&2
    printf 'soak: another session ran scripts/cleanup-test-state.sh? Run again, or with SOAK_NAME=sluicesoak\n' >&2
    exit 2
  fi
  tail -n 20 "$state_dir/logs/agent.log" >&2
  die "the agent (pid $agent_pid) died during the soak: its log's last lines are above"
}
sample() {  # sample LABEL: one line of samples.jsonl, and a line on the terminal
  local label=$1 rss fds socks cpu load now_pid
  check_agent
  now_pid=$(pgrep -P "$agent_pid" | head -n 1)
  if [[ $now_pid != "$l7_pid" ]]; then
    restarted=1
    say "   !! the L7 process changed: pid $l7_pid -> ${now_pid:-none}"
    [[ -n $now_pid ]] && l7_pid=$now_pid
  fi
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$l7_pid/status" 2>/dev/null)
  fds=$(find "/proc/$l7_pid/fd" -mindepth 1 2>/dev/null | wc -l)
  socks=$(find "/proc/$l7_pid/fd" -mindepth 1 -lname 'socket:*' 2>/dev/null | wc -l)
  cpu=$(awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$l7_pid/stat" 2>/dev/null)
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  local arss afds
  arss=$(awk '/^VmRSS:/ {print $2}' "/proc/$agent_pid/status" 2>/dev/null)
  afds=$(find "/proc/$agent_pid/fd" -mindepth 1 2>/dev/null | wc -l)
  printf '{"label":"%s","t":%d,"pid":%s,"rss_kb":%s,"fds":%s,"sockets":%s,"cpu_s":%s,"load":"%s","agent_rss_kb":%s,"agent_fds":%s}\n' \
    "$label" $((SECONDS - t0)) "$l7_pid" "${rss:-null}" "$fds" "$socks" "${cpu:-null}" "$load" \
    "${arss:-null}" "$afds" >>"$samples"
  printf '   %-8s t=%4ss  L7 rss=%6s kB  fds=%4s (sockets %4s)  cpu=%6ss  agent rss=%6s kB fds=%3s  load %s\n' \
    "$label" $((SECONDS - t0)) "${rss:-?}" "$fds" "$socks" "${cpu:-?}" "${arss:-?}" "$afds" "$load"
}

# The start: before any request has been through the proxy (so no pooled upstream
# connection is counted in it).
sample start

metric() {  # metric NAME [LABEL]: the value of a sample of the agent's /metrics
  curl -s "http://$admin/metrics" | awk -v n="$1" -v l="${2:-}" '
    ($1 == n || index($1, n "{") == 1) && (l == "" || index($1, l)) { print $2; exit }'
}
sleep_pod=$(sluicectl local get pods -n default | awk '$1 ~ /^sleep-/ {print $1; exit}')
[[ -n $sleep_pod ]] || die "no sleep pod"
before=$(metric sluice_proxy_requests_total "pod=\"$sleep_pod\"")
code=$(sluicectl local exec deploy/sleep -- curl -s -o /dev/null -w '%{http_code}' --max-time 5 \
  http://soak-echo:8080/soak/check </dev/null)
after=$(metric sluice_proxy_requests_total "pod=\"$sleep_pod\"")
[[ $code == 200 ]] || die "curl http://soak-echo:8080/soak/check from the sleep pod: $code, expected 200"
((${after:-0} > ${before:-0})) ||
  die "a request from $sleep_pod did not move its in-pod proxy's requests_total ($before -> $after)"
say "   sleep pod $sleep_pod -> soak-echo: 200 through its in-pod proxy (requests_total $before -> $after)"

say "== soak: $duration s of clients (tests/bench/soak_clients.py in deploy/sleep), then ${linger} s linger + ${settle} s settle"
t0=$SECONDS  # samples' times count from the clients' start
sluicectl local exec deploy/sleep -- /usr/bin/python3 "$root/tests/bench/soak_clients.py" \
  --target soak-echo:8080 --duration "$duration" --linger "$linger" --scale "$scale" \
  ${SOAK_CLASSES:+--only "$SOAK_CLASSES"} \
  --report "$client_report" </dev/null >"$client_log" 2>&1 &
client_pid=$!
shown=0
show_client_log() {  # what the clients printed since the last call
  local n
  n=$(wc -l <"$client_log")
  if ((n > shown)); then
    sed -n "$((shown + 1)),${n}p" "$client_log" | sed 's/^/   | /'
    shown=$n
  fi
}
next=$((t0 + sample_every))
while kill -0 "$client_pid" 2>/dev/null; do
  sleep 1
  if ((SECONDS >= next)); then
    show_client_log
    if ((SECONDS - t0 <= duration + 2)); then sample run; else sample linger; fi
    next=$((next + sample_every))
  fi
done
wait "$client_pid"
client_rc=$?
client_pid=""
show_client_log
sample "run-end"
say "== settle: ${settle} s with no clients"
sleep "$settle"
sample end
curl -s "http://$admin/metrics" >"$work/metrics.txt"
cp "$work/metrics.txt" "$out/metrics-end.txt"
l7_restarts=$(metric sluice_l7_restarts_total)
l7_up=$(metric sluice_l7_up)

# ---------------------------------------------------------------------- the verdict
python3 - "$samples" "$client_report" "$work/metrics.txt" "$report" "$sleep_pod" <<EOF
import json, sys
samples_path, clients_path, metrics_path, report_path, pod = sys.argv[1:6]
samples = [json.loads(l) for l in open(samples_path)]
try:
    clients = json.load(open(clients_path))
except (OSError, ValueError) as e:
    clients = {"error": f"no client report: {e}"}
proxy = {}
for line in open(metrics_path):
    if line.startswith("sluice_proxy_") and f'pod="{pod}"' in line:
        name, value = line.split()[0], line.split()[-1]
        proxy[name.split("{")[0][len("sluice_proxy_"):]] = int(float(value))
start, end = samples[0], samples[-1]
run = [s for s in samples if s["label"] == "run"]
warm = next((s for s in run if s["t"] >= $warmup), run[-1] if run else start)
checks = []
def check(ok, what):
    checks.append({"ok": bool(ok), "check": what})
wb = clients.get("well_behaved_failures")
wrong = clients.get("wrong_answers")
check(wb == 0, f"well-behaved client failures: {wb} (must be 0)")
check(wrong == 0, f"wrong documented answers (403/408/400): {wrong} (must be 0)")
check($client_rc == 0, f"the clients' exit status: $client_rc")
check($restarted == 0 and "$l7_restarts" == "0" and "$l7_up" == "1",
      f"L7 process: one pid throughout: {'yes' if $restarted == 0 else 'NO'}, "
      f"sluice_l7_restarts_total $l7_restarts, sluice_l7_up $l7_up")
check(end["fds"] <= start["fds"] + $fd_tolerance,
      f"fds: start {start['fds']}, end {end['fds']} (tolerance +$fd_tolerance)")
if end["rss_kb"] is not None and warm["rss_kb"] is not None:
    check(end["rss_kb"] <= warm["rss_kb"] + $rss_tolerance_kb,
          f"VmRSS: warm (t={warm['t']} s) {warm['rss_kb']} kB, end {end['rss_kb']} kB "
          f"(tolerance +$rss_tolerance_kb kB)")
else:
    check(False, "VmRSS: the L7 process was gone")
check(proxy.get("downstream_cx_active", -1) == 0,
      f"the pod's proxy: downstream_cx_active {proxy.get('downstream_cx_active')} at the end (must be 0)")
check(proxy.get("buffered_bytes", -1) == 0,
      f"the pod's proxy: buffered_bytes {proxy.get('buffered_bytes')} at the end (must be 0)")
post = [s for s in run if s["t"] >= warm["t"]]
slope = None
if len(post) >= 3:
    n = len(post); mt = sum(s["t"] for s in post) / n; mr = sum(s["rss_kb"] for s in post) / n
    den = sum((s["t"] - mt) ** 2 for s in post)
    slope = round(60 * sum((s["t"] - mt) * (s["rss_kb"] - mr) for s in post) / den, 1) if den else None
rep = {"commit": "$(git -C "$root" rev-parse --short HEAD 2>/dev/null)$(git -C "$root" diff --quiet HEAD 2>/dev/null || echo '+changes')",
       "kernel": "$(uname -r)", "cpus": $(nproc), "duration_s": $duration, "scale": $scale, "warmup_s": $warmup, "linger_s": $linger,
       "settle_s": $settle, "tolerances": {"rss_kb": $rss_tolerance_kb, "fds": $fd_tolerance},
       "l7": {"start": start, "warm": warm, "end": end,
              "max_rss_kb": max(s["rss_kb"] or 0 for s in samples),
              "max_fds": max(s["fds"] for s in samples),
              "rss_slope_kb_per_min_after_warmup": slope},
       "l7_restarts_total": "$l7_restarts", "proxy_counters": proxy,
       "samples": samples, "clients": clients, "checks": checks,
       "passed": all(c["ok"] for c in checks)}
with open(report_path, "w") as f:
    json.dump(rep, f, indent=1)
print("== summary")
print(f"   L7 process: start rss {start['rss_kb']} kB fds {start['fds']}; warm (t={warm['t']} s) "
      f"rss {warm['rss_kb']} kB fds {warm['fds']}; end rss {end['rss_kb']} kB fds {end['fds']}; "
      f"max rss {rep['l7']['max_rss_kb']} kB fds {rep['l7']['max_fds']}; "
      f"rss slope after warm-up {slope} kB/min; cpu {end['cpu_s']} s")
if "classes" in clients:
    lat = clients["keepalive_latency_ms"]
    print(f"   keep-alive latency: p50 {lat['p50']} ms, p99 {lat['p99']} ms, max {lat['max']} ms")
    for name, c in clients["classes"].items():
        outs = ", ".join(f"{k} {v}" for k, v in sorted(c["outcomes"].items()))
        print(f"   {name:<18} {c['kind']:<12} started {c['started']:<6} {outs}")
        for fl in c["failures"][:5]:
            print(f"      at {fl['t']} s: {fl['reason']}")
counters = ", ".join(f"{k} {v}" for k, v in proxy.items())
print(f"   the sleep pod's proxy counters: {counters}")
for c in checks:
    print(f"   {'PASS' if c['ok'] else 'FAIL'}  {c['check']}")
print(f"   report: {report_path}")
sys.exit(0 if rep["passed"] else 1)
EOF
