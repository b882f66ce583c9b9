#!/usr/bin/env bash
# Task 5, ServiceEntry: the check of this example, as scripts/tasks.sh runs it (docs/tasks.md
# says what it checks and why). It runs the README's commands on the local cluster,
# prints them with their output and evidence, and a ✔/✘ per check.
# shellcheck source=../lib/tasks.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/tasks.sh"

check() {
  local client cfg
  client=$(client_pod) || { fail "no client pod (Deployment sleep or curl in default)"; return; }
  # The example's routable "VM" entry uses addresses of the default pod network
  # (10.244.0.0/16). A cluster on another subnet (the CTest one) gets the same example
  # with those addresses moved into its own subnet, so nothing is ever sent off the bridge.
  local dir=examples/05-service-entry subnet prefix
  subnet=$(python3 "$CHECK" state --state "$state_file" pod_subnet 2>/dev/null)
  prefix=$(cut -d. -f1-2 <<<"${subnet:-10.244.0.0/16}")
  if [[ $prefix != 10.244 ]]; then
    mkdir -p "$work/05-service-entry"
    for f in "$examples"/05-service-entry/*; do
      sed "s/\b10\.244\./$prefix./g" "$f" >"$work/05-service-entry/$(basename "$f")"
    done
    dir=$work/05-service-entry
    note "(this cluster's pod subnet is $subnet: the example's 10.244.x addresses become $prefix.x)"
  fi
  run sluicectl local apply -f "$dir/"
  ((RC == 0)) || fail "apply of examples/05-service-entry failed (exit $RC)"
  cfg=$(config_dir)

  # Which hosts the example declares, by location (read from its YAML, not assumed).
  local ext_hosts int_hosts statics
  ext_hosts=$(python3 - "$dir" <<'PY'
import glob, sys, yaml
ext, internal, static = [], [], []
for f in sorted(glob.glob(sys.argv[1] + "/*.y*ml")):
    for d in yaml.safe_load_all(open(f)):
        if not d or d.get("kind") != "ServiceEntry":
            continue
        s = d.get("spec", {})
        (internal if s.get("location") == "MESH_INTERNAL" else ext).extend(s.get("hosts", []))
        if s.get("location") == "MESH_INTERNAL" and s.get("resolution") == "STATIC":
            for p in s.get("ports", [])[:1]:
                eps = ",".join(f"{e['address']}:{p['number']}" for e in s.get("endpoints", []))
                static.append(f"outbound|{p['number']}||{s['hosts'][0]}={eps}")
print(" ".join(ext)); print(" ".join(internal)); print(" ".join(static))
PY
  )
  statics=$(sed -n 3p <<<"$ext_hosts")
  int_hosts=$(sed -n 2p <<<"$ext_hosts")
  ext_hosts=$(sed -n 1p <<<"$ext_hosts")
  [[ -n $ext_hosts ]] || fail "examples/05-service-entry declares no MESH_EXTERNAL ServiceEntry"
  [[ -n $int_hosts ]] || fail "examples/05-service-entry declares no MESH_INTERNAL ServiceEntry"

  run --max 0 sluicectl registryz
  ((RC == 0)) || run --max 0 sluicectl registryz -f "$cfg"
  printf '%s\n' "$OUT" >"$work/registryz.json"
  # shellcheck disable=SC2086
  quiet python3 "$CHECK" registryz "$work/registryz.json" $ext_hosts $int_hosts
  evidence "registry entries (hostname, MeshExternal, resolution, addresses, endpoints):"
  indent 10 <<<"$OUT"
  local h
  for h in $ext_hosts; do
    if grep -q "^$h MeshExternal=true" <<<"$OUT"; then pass "$h: MeshExternal true"; else fail "$h: not in the registry with MeshExternal true"; fi
  done
  for h in $int_hosts; do
    if grep -q "^$h MeshExternal=false" <<<"$OUT"; then pass "$h: MeshExternal false"; else fail "$h: not in the registry with MeshExternal false"; fi
  done

  # The STATIC entries' endpoints, as the client's proxy has them.
  local entry cluster eps ep
  for entry in $statics; do
    cluster=${entry%%=*} eps=${entry#*=}
    until_ok 10 eval 'quiet sluicectl proxy-config endpoint "$client" --cluster "$cluster" && grep -qF "${eps%%,*}" <<<"$OUT"'
    run sluicectl proxy-config endpoint "$client" --cluster "$cluster"
    for ep in ${eps//,/ }; do
      if grep -qF "$ep " <<<"$OUT"; then pass "$cluster has endpoint $ep"; else fail "$cluster: endpoint $ep missing from proxy-config endpoint"; fi
    done
  done

  # Both route: the example's README says which request reaches each kind of entry; the
  # runner calls what the example's routes.txt lists (one "URL EXPECTED-STATUS" a line).
  local routes=$dir/routes.txt url want
  [[ $dir == /* ]] || routes=$root/$dir/routes.txt
  if [[ -f $routes ]]; then
    while read -r url want; do
      [[ -z $url || $url == \#* ]] && continue
      run sluicectl local exec "$client" -- curl -sk -o /dev/null -w '%{http_code}\n' --max-time 5 "$url"
      if [[ $OUT == "${want:-200}" ]]; then pass "$url answers ${want:-200}"; else fail "$url: expected ${want:-200}, got '${OUT}'"; fi
    done <"$routes"
  else
    fail "examples/05-service-entry/routes.txt is missing: no request to send to each entry"
  fi
  run sluicectl local delete -f "$dir/"
}

check
finish $?
