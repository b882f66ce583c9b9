#!/usr/bin/env bash
# Chains sluice-cni after the node's primary CNI plugin, or removes it again.
#
#   install-cni.sh [options]              install (idempotent)
#   install-cni.sh --uninstall [options]  remove, restoring the original configuration
#   install-cni.sh --binary-only --plugin-binary PATH   only copy the binary
#
# The DaemonSet's init container copies the binary (--binary-only); the agent chains
# sluice-cni itself once it is ready and keeps it chained (agent/daemon/cni_conf.h, same
# rules as below). An admin may still run this script by hand. What install does:
#   1. copies the sluice-cni binary into the CNI bin dir (when --plugin-binary is given);
#   2. picks the primary network configuration: --conflist, else the first *.conflist,
#      *.conf or *.json in the conf dir by name — the one the runtime uses (libcni order);
#   3. keeps the file byte for byte as .<name>.sluice-orig (an extension the runtime
#      ignores), then writes the conflist with sluice-cni as its LAST plugin. A single-
#      plugin .conf is turned into <base>.conflist with the same name and cniVersion;
#   4. writes through a temp file in the same directory and rename(2), so the runtime
#      never reads a half-written file.
# Running it again changes nothing when the result is the same; with other options it
# updates the sluice-cni entry in place. When the primary CNI rewrote its file since,
# the new file becomes the kept original.
#
# --uninstall restores the kept original exactly when the file is still what install
# wrote; when someone changed it since, it removes only the sluice-cni entry and keeps
# their change. It leaves the binary unless --remove-binary is given.
set -euo pipefail
export LC_ALL=C  # file order by bytes, as libcni sorts names

prog=install-cni.sh
conf_dir=/etc/cni/net.d
bin_dir=/opt/cni/bin
plugin_binary=
conflist=
agent_socket=
fail_open=
exclude_namespaces=
kubeconfig=
binary_only=0
wait_seconds=0
uninstall=0
remove_binary=0

usage() {
  cat <<EOF
usage: $prog [--uninstall] [options]
  --cni-conf-dir DIR     CNI network configurations (default $conf_dir)
  --cni-bin-dir DIR      CNI plugin binaries (default $bin_dir)
  --plugin-binary PATH   sluice-cni to copy into the bin dir
  --conflist NAME        the configuration file to chain into (default: the first by name)
  --agent-socket PATH    sets "agentSocket" in the sluice-cni entry
  --fail-open            sets "failOpen": true (pods start even when the agent is down)
  --exclude-namespaces L sets "excludeNamespaces" (comma-separated; the plugin's default is
                         kube-system): pods there start even when the agent is down
  --kubeconfig PATH      sets "kubeconfig": sluice-cni asks the API server whether a pod
                         is in the mesh when the agent is down
  --binary-only          with --plugin-binary: copy the binary, leave the configuration
  --wait SECONDS         wait this long for the primary CNI to write its configuration
  --uninstall            remove sluice-cni from the configuration
  --remove-binary        with --uninstall: also delete sluice-cni from the bin dir
EOF
}

die() {
  echo "$prog: $*" >&2
  exit 1
}
log() { echo "$prog: $*"; }

while (($#)); do
  case $1 in
    --cni-conf-dir) conf_dir=${2:?}; shift 2 ;;
    --cni-bin-dir) bin_dir=${2:?}; shift 2 ;;
    --plugin-binary) plugin_binary=${2:?}; shift 2 ;;
    --conflist) conflist=${2:?}; shift 2 ;;
    --agent-socket) agent_socket=${2:?}; shift 2 ;;
    --fail-open) fail_open=1; shift ;;
    --exclude-namespaces) exclude_namespaces=${2?}; shift 2 ;;
    --kubeconfig) kubeconfig=${2:?}; shift 2 ;;
    --binary-only) binary_only=1; shift ;;
    --wait) wait_seconds=${2:?}; shift 2 ;;
    --uninstall) uninstall=1; shift ;;
    --remove-binary) remove_binary=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

command -v jq >/dev/null || die "jq is required"
[[ -d $conf_dir ]] || die "CNI conf dir $conf_dir does not exist"
[[ $wait_seconds =~ ^[0-9]+$ ]] || die "--wait: not a number of seconds: $wait_seconds"

# Writes stdin to $1 atomically, keeping the mode of the file it replaces (or of $2).
atomic_write() {
  local target=$1 mode_from=${2:-$1} tmp
  tmp=$(mktemp "$(dirname "$target")/.sluice-cni.tmp.XXXXXX")
  if ! cat >"$tmp"; then
    rm -f "$tmp"
    die "cannot write $target"
  fi
  if [[ -e $mode_from ]]; then
    chmod --reference="$mode_from" "$tmp"
  else
    chmod 0644 "$tmp"
  fi
  mv -f "$tmp" "$target"
}

# The primary configuration: what libcni would load first.
find_primary() {
  if [[ -n $conflist ]]; then
    [[ -f $conf_dir/$conflist ]] || die "$conf_dir/$conflist does not exist"
    echo "$conflist"
    return
  fi
  local f
  for f in "$conf_dir"/*; do
    case $f in
      *.conflist | *.conf | *.json) [[ -f $f ]] && { basename "$f"; return; } ;;
    esac
  done
}

backup_of() { echo "$conf_dir/.$1.sluice-orig"; }

# The conflist a file holds, normalized to list form (a .conf becomes a one-plugin list).
as_conflist() {
  jq -e 'if has("plugins") then .
         elif has("type") then {cniVersion, name, plugins: [del(.cniVersion, .name)]}
         else error("neither \"plugins\" nor \"type\"") end' "$1" 2>/dev/null
}

sluice_entry() {
  jq -n --arg socket "$agent_socket" --arg failopen "$fail_open" \
    --arg exclude "$exclude_namespaces" --arg kubeconfig "$kubeconfig" \
    '{type: "sluice-cni"}
     + (if $socket != "" then {agentSocket: $socket} else {} end)
     + (if $failopen != "" then {failOpen: true} else {} end)
     + (if $exclude != "" then {excludeNamespaces: ($exclude | split(",") | map(select(. != "")))} else {} end)
     + (if $kubeconfig != "" then {kubeconfig: $kubeconfig} else {} end)'
}

without_sluice() { jq '.plugins |= map(select(.type != "sluice-cni"))'; }

with_sluice() {
  local entry
  entry=$(sluice_entry)
  jq --argjson entry "$entry" '.plugins |= map(select(.type != "sluice-cni")) + [$entry]'
}

# Which file install writes for a primary named $1: runtimes read a list only from a
# .conflist (a .conf or .json must hold a single plugin).
target_of() {
  case $1 in
    *.conf) echo "${1%.conf}.conflist" ;;
    *.json) echo "${1%.json}.conflist" ;;
    *) echo "$1" ;;
  esac
}

install() {
  if [[ -n $plugin_binary ]]; then
    [[ -f $plugin_binary && -x $plugin_binary ]] || die "--plugin-binary $plugin_binary is not an executable file"
    mkdir -p "$bin_dir"
    # shellcheck disable=SC2094 # reads the source, writes a temp file beside the target
    atomic_write "$bin_dir/sluice-cni" "$plugin_binary" <"$plugin_binary"
    log "installed $bin_dir/sluice-cni"
  fi
  if ((binary_only)); then
    [[ -n $plugin_binary ]] || die "--binary-only needs --plugin-binary"
    return
  fi

  local primary waited=0
  while primary=$(find_primary) && [[ -z $primary ]]; do
    ((waited < wait_seconds)) || die "no CNI network configuration (*.conflist, *.conf, *.json) in $conf_dir"
    sleep 1
    waited=$((waited + 1))
  done
  local path=$conf_dir/$primary backup current
  current=$(as_conflist "$path") || die "$path: not a CNI network configuration (bad JSON or no \"plugins\"/\"type\")"
  local target
  target=$conf_dir/$(target_of "$primary")
  # A .conflist we generated from a .conf or .json is what is found next time: its
  # original is kept under the old name.
  backup=$(backup_of "$primary")
  if [[ $primary == *.conflist && ! -e $backup ]]; then
    local ext
    for ext in conf json; do
      if [[ -e $(backup_of "${primary%.conflist}.$ext") ]]; then
        backup=$(backup_of "${primary%.conflist}.$ext")
      fi
    done
  fi

  if jq -e '.plugins | any(.type == "sluice-cni")' <<<"$current" >/dev/null; then
    [[ -e $backup ]] || log "warning: $path already chains sluice-cni but no original is kept"
  else
    # A fresh original (first install, or the primary CNI rewrote its file): keep it.
    cp -p "$path" "$backup.tmp" && mv -f "$backup.tmp" "$backup"
  fi

  local desired
  desired=$(with_sluice <<<"$current")
  if [[ -f $target ]] && [[ $(cat "$target") == "$desired" ]]; then
    log "$target already chains sluice-cni; nothing to do"
    return
  fi
  atomic_write "$target" "$path" <<<"$desired"
  if [[ $target != "$path" ]]; then
    rm -f "$path"
    log "converted $path into $target with sluice-cni chained last"
  else
    log "chained sluice-cni as the last plugin of $target"
  fi
}

uninstall() {
  local found=0 backup orig target
  shopt -s nullglob dotglob
  for backup in "$conf_dir"/.*.sluice-orig; do
    found=1
    orig=$(basename "$backup")
    orig=${orig#.}
    orig=${orig%.sluice-orig}
    target=$conf_dir/$(target_of "$orig")
    if [[ ! -e $target ]]; then
      # Our file is gone (the primary CNI was removed or rewrote it under another name).
      rm -f "$backup"
      log "$target is gone; dropped the kept original"
      continue
    fi
    local now was
    now=$(as_conflist "$target" | without_sluice) || now=
    was=$(as_conflist "$backup" | without_sluice) || was=
    if [[ -n $now && $now == "$was" ]]; then
      # Still exactly what install wrote: put the original back, byte for byte.
      if [[ $target != "$conf_dir/$orig" ]]; then
        mv -f "$backup" "$conf_dir/$orig"
        rm -f "$target"
      else
        mv -f "$backup" "$target"
      fi
      log "restored the original $conf_dir/$orig"
    else
      # Changed since install: take out only our entry.
      as_conflist "$target" | without_sluice | atomic_write "$target"
      rm -f "$backup"
      log "$target changed since install; removed only the sluice-cni entry"
    fi
  done
  if ((!found)); then
    # No record of an install: still make sure no configuration chains sluice-cni.
    local f
    for f in "$conf_dir"/*.conflist; do
      if jq -e '.plugins | any(.type == "sluice-cni")' "$f" >/dev/null 2>&1; then
        jq '.plugins |= map(select(.type != "sluice-cni"))' "$f" | atomic_write "$f"
        log "removed sluice-cni from $f"
      fi
    done
  fi
  rm -f "$conf_dir"/.sluice-cni.tmp.*
  if ((remove_binary)); then
    rm -f "$bin_dir/sluice-cni"
    log "removed $bin_dir/sluice-cni"
  fi
}

if ((uninstall)); then
  uninstall
else
  install
fi
