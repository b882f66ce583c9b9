#!/usr/bin/env bash
# Tests deploy/cni/install-cni.sh against CNI config dirs in a temp dir.
#   install_cni_test.sh <install-cni.sh> <sluice-cni binary>
set -uo pipefail
script=${1:?install-cni.sh}
binary=${2:?sluice-cni}
tmp=$(mktemp -d /tmp/sluicet-install-XXXXXX)
trap 'rm -rf "$tmp"' EXIT

failures=0
current=
fail() {
  echo "FAIL [$current]: $*" >&2
  failures=$((failures + 1))
}
expect() { # expect DESCRIPTION COMMAND...
  local what=$1
  shift
  "$@" || fail "$what"
}
begin() {
  current=$1
  dir=$tmp/$1
  rm -rf "$dir"
  mkdir -p "$dir/net.d" "$dir/bin"
}
run() { "$script" --cni-conf-dir "$dir/net.d" --cni-bin-dir "$dir/bin" "$@" >"$dir/out" 2>&1; }
types() { jq -c '[.plugins[].type]' "$1"; }
no_temp_files() { ! compgen -G "$dir/net.d/.sluice-cni.tmp.*" >/dev/null; }

# A primary CNI's file as it ships: its own formatting, key order and a trailing space.
write_calico() {
  cat >"$dir/net.d/10-calico.conflist" <<'EOF'
{
  "name": "k8s-pod-network",
  "cniVersion": "0.4.0",
  "plugins": [
    {"type": "calico", "ipam": {"type": "calico-ipam"}, "mtu": 1440 },
    {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}}
  ]
} 
EOF
  chmod 0600 "$dir/net.d/10-calico.conflist"
  cp -p "$dir/net.d/10-calico.conflist" "$dir/pristine"
}

# --- install chains sluice-cni last and keeps the original ----------------------------
begin install
write_calico
expect "install exits 0" run --agent-socket /run/sluice/cni.sock --plugin-binary "$binary"
f=$dir/net.d/10-calico.conflist
expect "sluice-cni is last, others kept in order" \
  test "$(types "$f")" = '["calico","portmap","sluice-cni"]'
expect "agentSocket is set" test "$(jq -r '.plugins[-1].agentSocket' "$f")" = /run/sluice/cni.sock
expect "failOpen not set by default" test "$(jq -r '.plugins[-1].failOpen' "$f")" = null
expect "name and cniVersion kept" test "$(jq -c '[.name,.cniVersion]' "$f")" = '["k8s-pod-network","0.4.0"]'
expect "other plugins' settings unchanged" \
  test "$(jq -c '.plugins[0:2]' "$f")" = "$(jq -c '.plugins' "$dir/pristine")"
expect "original kept byte for byte" cmp -s "$dir/pristine" "$dir/net.d/.10-calico.conflist.sluice-orig"
expect "file mode kept" test "$(stat -c %a "$f")" = 600
expect "binary installed" test -x "$dir/bin/sluice-cni"
expect "binary is the plugin" cmp -s "$binary" "$dir/bin/sluice-cni"
expect "no temp files" no_temp_files
expect "only the conflist and its original" test "$(ls -A "$dir/net.d" | tr '\n' ' ')" = ".10-calico.conflist.sluice-orig 10-calico.conflist "

# --- idempotent -----------------------------------------------------------------------
begin idempotent
write_calico
run --agent-socket /run/sluice/cni.sock
f=$dir/net.d/10-calico.conflist
cp -p "$f" "$dir/after-first"
inode=$(stat -c %i "$f")
expect "second install exits 0" run --agent-socket /run/sluice/cni.sock
expect "second install does not rewrite" test "$(stat -c %i "$f")" = "$inode"
expect "content unchanged" cmp -s "$dir/after-first" "$f"
expect "says nothing to do" grep -q "nothing to do" "$dir/out"
expect "original still pristine" cmp -s "$dir/pristine" "$dir/net.d/.10-calico.conflist.sluice-orig"
expect "new options update the entry in place" run --agent-socket /x.sock --fail-open
expect "still one sluice-cni, last" test "$(types "$f")" = '["calico","portmap","sluice-cni"]'
expect "entry updated" test "$(jq -c '.plugins[-1]' "$f")" = '{"type":"sluice-cni","agentSocket":"/x.sock","failOpen":true}'

# --- uninstall restores the original exactly --------------------------------------------
begin uninstall
write_calico
run --plugin-binary "$binary"
run --fail-open # a second install in between must not matter
expect "uninstall exits 0" run --uninstall --remove-binary
expect "original restored byte for byte" cmp -s "$dir/pristine" "$dir/net.d/10-calico.conflist"
expect "mode restored" test "$(stat -c %a "$dir/net.d/10-calico.conflist")" = 600
expect "nothing else left" test "$(ls -A "$dir/net.d")" = 10-calico.conflist
expect "binary removed" test ! -e "$dir/bin/sluice-cni"
expect "uninstall again is fine" run --uninstall
expect "still the original" cmp -s "$dir/pristine" "$dir/net.d/10-calico.conflist"

# --- uninstall after someone else edited the file keeps their edit --------------------
begin edited
write_calico
run
f=$dir/net.d/10-calico.conflist
jq '.plugins[0].mtu = 9000' "$f" >"$dir/edit" && mv "$dir/edit" "$f"
expect "uninstall exits 0" run --uninstall
expect "sluice-cni removed" test "$(types "$f")" = '["calico","portmap"]'
expect "their edit kept" test "$(jq '.plugins[0].mtu' "$f")" = 9000
expect "original copy gone" test ! -e "$dir/net.d/.10-calico.conflist.sluice-orig"

# --- the primary CNI rewrites its file: the new one becomes the original -----------------
begin rewritten
write_calico
run
jq '.plugins[0].mtu = 1400' "$dir/pristine" >"$dir/net.d/10-calico.conflist"
cp "$dir/net.d/10-calico.conflist" "$dir/rewritten"
expect "install after rewrite exits 0" run
expect "chained again" test "$(types "$dir/net.d/10-calico.conflist")" = '["calico","portmap","sluice-cni"]'
expect "new original kept" cmp -s "$dir/rewritten" "$dir/net.d/.10-calico.conflist.sluice-orig"
run --uninstall
expect "the rewritten file is restored" cmp -s "$dir/rewritten" "$dir/net.d/10-calico.conflist"

# --- a single-plugin .conf becomes a .conflist, and back -------------------------------
begin conf
printf '{"cniVersion":"1.0.0","name":"mynet","type":"bridge","bridge":"cni0","ipam":{"type":"host-local","subnet":"10.22.0.0/16"}}\n' \
  >"$dir/net.d/10-mynet.conf"
cp -p "$dir/net.d/10-mynet.conf" "$dir/pristine"
expect "install exits 0" run
l=$dir/net.d/10-mynet.conflist
expect "conflist written" test -f "$l"
expect ".conf removed (the runtime would read it first)" test ! -e "$dir/net.d/10-mynet.conf"
expect "bridge then sluice-cni" test "$(types "$l")" = '["bridge","sluice-cni"]'
expect "name and version lifted to the list" test "$(jq -c '[.name,.cniVersion]' "$l")" = '["mynet","1.0.0"]'
expect "plugin keeps its settings" test "$(jq -c '.plugins[0].ipam.subnet' "$l")" = '"10.22.0.0/16"'
inode=$(stat -c %i "$l")
expect "second install exits 0" run
expect "second install does not rewrite" test "$(stat -c %i "$l")" = "$inode"
expect "uninstall exits 0" run --uninstall
expect ".conf restored byte for byte" cmp -s "$dir/pristine" "$dir/net.d/10-mynet.conf"
expect "generated conflist removed" test ! -e "$l"
expect "nothing else left" test "$(ls -A "$dir/net.d")" = 10-mynet.conf

# --- which file: the first by name, or the one asked for --------------------------------
begin choose
write_calico
printf '{"cniVersion":"1.0.0","name":"late","plugins":[{"type":"ptp"}]}\n' >"$dir/net.d/99-late.conflist"
echo "not a network" >"$dir/net.d/05-readme.txt"
run
expect "first by name is chained" test "$(types "$dir/net.d/10-calico.conflist")" = '["calico","portmap","sluice-cni"]'
expect "later file untouched" test "$(types "$dir/net.d/99-late.conflist")" = '["ptp"]'
run --uninstall
expect "--conflist picks a file" run --conflist 99-late.conflist
expect "chosen file chained" test "$(types "$dir/net.d/99-late.conflist")" = '["ptp","sluice-cni"]'
expect "calico untouched" cmp -s "$dir/pristine" "$dir/net.d/10-calico.conflist"

# --- the fields for an agent outage; --binary-only leaves the configuration ----------
begin fields
write_calico
expect "install with the outage fields exits 0" \
  run --exclude-namespaces kube-system,infra --kubeconfig /etc/cni/net.d/sluice-kubeconfig
expect "excludeNamespaces and kubeconfig set" \
  test "$(jq -c '.plugins[-1]' "$dir/net.d/10-calico.conflist")" = '{"type":"sluice-cni","excludeNamespaces":["kube-system","infra"],"kubeconfig":"/etc/cni/net.d/sluice-kubeconfig"}'
begin binary-only
write_calico
expect "--binary-only exits 0" run --binary-only --plugin-binary "$binary"
expect "binary installed" cmp -s "$binary" "$dir/bin/sluice-cni"
expect "configuration untouched" cmp -s "$dir/pristine" "$dir/net.d/10-calico.conflist"
expect "no original kept" test ! -e "$dir/net.d/.10-calico.conflist.sluice-orig"
expect "--binary-only needs the binary" eval '! run --binary-only'

# --- errors: clear message, non-zero, nothing changed ----------------------------------
begin errors
expect "empty dir fails" eval '! run'
expect "empty dir message" grep -q "no CNI network configuration" "$dir/out"
echo '{"cniVersion": "1.0.0", "plugins": [' >"$dir/net.d/10-broken.conflist"
cp "$dir/net.d/10-broken.conflist" "$dir/broken"
expect "bad JSON fails" eval '! run'
expect "bad JSON message names the file" grep -q "10-broken.conflist" "$dir/out"
expect "bad file untouched" cmp -s "$dir/broken" "$dir/net.d/10-broken.conflist"
expect "no original kept for a bad file" test ! -e "$dir/net.d/.10-broken.conflist.sluice-orig"
expect "unknown flag fails" eval '! run --bogus'
expect "missing conf dir fails" eval '! "$script" --cni-conf-dir "$dir/nope" >/dev/null 2>&1'
rm "$dir/net.d/10-broken.conflist"
( sleep 1; printf '{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"ptp"}]}\n' >"$dir/net.d/10-n.conflist" ) &
expect "--wait waits for the primary CNI" run --wait 5
wait
expect "chained after waiting" test "$(types "$dir/net.d/10-n.conflist")" = '["ptp","sluice-cni"]'

if ((failures)); then
  echo "install_cni_test: $failures failure(s)" >&2
  exit 1
fi
echo "install_cni_test: all passed"
