#!/usr/bin/env bash
# Task 8, Mirroring: the check of this example, as scripts/tasks.sh runs it (docs/tasks.md
# says what it checks and why). It runs the README's commands on the local cluster,
# prints them with their output and evidence, and a ✔/✘ per check.
# shellcheck source=../lib/tasks.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/tasks.sh"

check() {
  local client v1_pods v2_pods n=20 mark
  client=$(client_pod) || { fail "no client pod (Deployment sleep or curl in default)"; return; }
  local files_all files_mirror
  files_mirror=$(grep -l '^ *mirror:' "$examples"/08-mirroring/*.y*ml 2>/dev/null | head -n1)
  [[ -n $files_mirror ]] || { fail "examples/08-mirroring has no VirtualService with mirror:"; return; }
  files_all=()
  local f
  for f in "$examples"/08-mirroring/*.y*ml; do
    [[ $f == "$files_mirror" ]] || files_all+=(-f "examples/08-mirroring/$(basename "$f")")
  done
  run sluicectl local apply "${files_all[@]}"
  ((RC == 0)) || fail "apply of examples/08-mirroring (without the mirror rule) failed (exit $RC)"
  # The deployments of the task (httpbin-v1, httpbin-v2) start asynchronously.
  until_ok 30 eval '[[ -n $(pods_of default --labels app=httpbin,version=v2) ]] && quiet sluicectl local get pods && ! grep -E "^httpbin-v[12]" <<<"$OUT" | grep -vq Running'
  v1_pods=$(pods_of default --labels app=httpbin,version=v1)
  v2_pods=$(pods_of default --labels app=httpbin,version=v2)
  evidence "v1 pods: $(echo $v1_pods)  v2 pods: $(echo $v2_pods)"
  [[ -n $v1_pods && -n $v2_pods ]] || { fail "no httpbin v1 and v2 pods"; return; }

  logs_of() { # logs_of MARK PODS…: the pods' access-log lines carrying MARK
    local m=$1 p
    shift
    for p in "$@"; do
      quiet sluicectl local logs "$p"
      grep -F -- "$m" <<<"$OUT"
    done
    return 0
  }
  local sent_ok=0
  send() { # send MARK: n requests from the client, one exec; sent_ok counts the 200s
    run --max 2 sluicectl local exec "$client" -- sh -c \
      "for i in \$(seq $n); do curl -s -o /dev/null -w '%{http_code}\n' --max-time 5 -A '$1' http://httpbin:8000/headers; done"
    sent_ok=$(grep -c '^200$' <<<"$OUT")
  }

  # All to v1 (wait for the route: a first request must land on v1).
  local probe
  probe=$(marker 8p)
  # shellcheck disable=SC2086
  until_ok 10 eval 'quiet sluicectl local exec "$client" -- curl -s -o /dev/null -A "$probe" --max-time 3 http://httpbin:8000/headers; [[ -n $(logs_of "$probe" $v1_pods) && -z $(logs_of "$probe" $v2_pods) ]]'
  mark=$(marker 8a)
  local ok v1c v2c shadow
  send "$mark"
  ok=$sent_ok
  sleep 0.3
  # shellcheck disable=SC2086
  v1c=$(logs_of "$mark" $v1_pods | grep -c .)
  # shellcheck disable=SC2086
  v2c=$(logs_of "$mark" $v2_pods | grep -c .)
  evidence "without mirroring: $ok of $n answered 200; v1 logged $v1c, v2 logged $v2c"
  if ((v1c == n && v2c == 0)); then pass "all traffic to v1, none to v2"; else fail "without mirroring: v1 logged $v1c and v2 $v2c of $n (expected $n and 0)"; fi

  # With the mirror rule.
  run sluicectl local apply -f "examples/08-mirroring/$(basename "$files_mirror")"
  route_mirrors() {
    quiet sluicectl proxy-config route "$client" --name 8000 -o json || return 1
    printf '%s\n' "$OUT" >"$work/routes8.json"
    python3 "$CHECK" mirrors "$work/routes8.json" | grep -F '|v2|'
  }
  until_ok 10 route_mirrors
  show_cmd sluicectl proxy-config route "$client" --name 8000 -o json '|' grep -A3 requestMirrorPolicies
  indent 3 <<<"$(route_mirrors)"
  # Wait until mirroring is in force (a probe shows up at v2), then measure.
  probe=$(marker 8q)
  # shellcheck disable=SC2086
  until_ok 10 eval 'quiet sluicectl local exec "$client" -- curl -s -o /dev/null -A "$probe" --max-time 3 http://httpbin:8000/headers; sleep 0.2; [[ -n $(logs_of "$probe" $v2_pods) ]]'
  mark=$(marker 8b)
  send "$mark"
  ok=$sent_ok
  sleep 0.5 # mirrored requests are fire-and-forget: let the last ones land
  local v1_lines v2_lines
  # shellcheck disable=SC2086
  v1_lines=$(logs_of "$mark" $v1_pods)
  # shellcheck disable=SC2086
  v2_lines=$(logs_of "$mark" $v2_pods)
  v1c=$(grep -c . <<<"$v1_lines")
  v2c=$(grep -c . <<<"$v2_lines")
  shadow=$(grep -c 'host="[^"]*-shadow' <<<"$v2_lines")
  show_cmd sluicectl local logs "${v2_pods%%$'\n'*}" '|' tail -n 2
  indent 2 <<<"$(tail -n 2 <<<"$v2_lines")"
  evidence "with mirroring: $ok of $n answered 200; v1 logged $v1c, v2 logged $v2c ($shadow with a -shadow Host)"
  if ((ok == n)); then pass "every client request answered 200"; else fail "$ok of $n client requests answered 200"; fi
  if ((v1c == n)) && ! grep -q -- '-shadow' <<<"$v1_lines"; then
    pass "v1 served all $n client requests (none of them a mirror copy)"
  else
    fail "v1 logged $v1c of $n requests (expected exactly $n, none -shadow)"
  fi
  if ((v2c == n && shadow == n)); then
    pass "v2 received a copy of every request, each with the -shadow Host"
  else
    fail "v2 received $v2c copies ($shadow with -shadow Host) of $n requests"
  fi
  run sluicectl local delete -f examples/08-mirroring/
}

check
finish $?
