#!/usr/bin/env bash
# Builds Sluice's container image (OCI layout) from a build tree, without docker.
#
#   scripts/build-image.sh BUILD_DIR OUT_DIR
#   scripts/build-image.sh --rootfs-only BUILD_DIR OUT_DIR   (OUT_DIR/rootfs only; the
#                                                             Dockerfile's build stage)
#
# Writes OUT_DIR/oci (an OCI image layout, tag = the project version, e.g. :0.1.0) and
# OUT_DIR/sluice-agent-VERSION.oci.tar (the same layout as one archive, for
# `ctr -n k8s.io images import` or `skopeo copy oci-archive:...`). Needs umoci (Debian's
# umoci package), binutils and tar; no root: the layer is a tar made here with every
# file owned by root, added with `umoci raw add-layer`.
#
# The root filesystem holds exactly:
#   /usr/local/bin/{sluice-agent,sluice-cni,sluicectl}  from BUILD_DIR, debug info stripped
#   /usr/local/bin/install-cni.sh                       deploy/cni/install-cni.sh (init container)
#   bash, env, jq and the coreutils install-cni.sh calls, from this machine
#   every shared library those programs load (ldd) and the dynamic loader
#   /etc/nsswitch.conf (files, then DNS), /tmp, /var/run/sluice
# No CA bundle: the agent's only TLS peer is istiod, verified with the mesh root
# certificate the DaemonSet mounts (--xds-ca). Entrypoint: sluice-agent.
set -euo pipefail

rootfs_only=0
if [[ ${1:-} == --rootfs-only ]]; then
  rootfs_only=1
  shift
fi
if (($# != 2)); then
  echo "usage: $0 [--rootfs-only] BUILD_DIR OUT_DIR" >&2
  exit 2
fi
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "$1" && pwd)
mkdir -p "$2"
out=$(cd "$2" && pwd)

die() {
  echo "build-image: $*" >&2
  exit 1
}
tools=(ldd objcopy tar)
((rootfs_only)) || tools+=(umoci)
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null || die "$tool is required (scripts/install-deps.sh installs it)"
done

agent=$build/agent/daemon/sluice-agent
cni=$build/cni/sluice-cni
ctl=$build/agent/sluicectl/sluicectl
for bin in "$agent" "$cni" "$ctl"; do
  [[ -x $bin ]] || die "$bin is not built (ninja -C $build sluice-agent sluice-cni sluicectl)"
done
version=$("$agent" --version | awk '{print $2}')
[[ -n $version ]] || die "$agent --version printed no version"

stage=$out/rootfs
rm -rf "$stage" "$out/oci" "$out/layer.tar"
mkdir -p "$stage"/{usr/bin,usr/lib,usr/lib64,usr/local/bin,etc,tmp,var/run/sluice,proc,sys,dev}
chmod 1777 "$stage/tmp"
# Debian 12's merged /usr: /bin and /lib are links into /usr, so every path ldd prints
# (/lib/x86_64-linux-gnu/..., /lib64/ld-linux-x86-64.so.2) lands where it is looked for.
ln -s usr/bin "$stage/bin"
ln -s usr/lib "$stage/lib"
ln -s usr/lib64 "$stage/lib64"

elfs=()
for bin in "$agent" "$cni" "$ctl"; do
  objcopy --strip-debug "$bin" "$stage/usr/local/bin/$(basename "$bin")"
  elfs+=("$stage/usr/local/bin/$(basename "$bin")")
done
install -m 0755 "$root/deploy/cni/install-cni.sh" "$stage/usr/local/bin/install-cni.sh"
# What install-cni.sh runs (its shebang is /usr/bin/env bash).
for tool in bash env jq cat cp mv rm mkdir mktemp chmod dirname basename sleep; do
  path=$(command -v "$tool") || die "$tool not found on this machine"
  cp -L "$path" "$stage/usr/bin/$tool"
  elfs+=("$stage/usr/bin/$tool")
done

# Shared libraries, by the paths the loader resolves them to here.
declare -A libs=()
for elf in "${elfs[@]}"; do
  while read -r lib; do
    [[ -n $lib ]] && libs[$lib]=1
  done < <(ldd "$elf" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}')
done
((${#libs[@]})) || die "ldd found no libraries (not dynamic executables?)"
for lib in "${!libs[@]}"; do
  mkdir -p "$stage$(dirname "$lib")"
  cp -L "$lib" "$stage$lib"
done

printf 'hosts: files dns\n' >"$stage/etc/nsswitch.conf"
printf 'root:x:0:0:root:/:/usr/sbin/nologin\n' >"$stage/etc/passwd"
printf 'root:x:0:\n' >"$stage/etc/group"

if ((rootfs_only)); then
  echo "build-image: root filesystem of sluice-agent $version in $stage (${#libs[@]} shared libraries)"
  exit 0
fi

# One layer, every file owned by root:root, in a stable order.
tar --create --file "$out/layer.tar" --directory "$stage" --sort=name \
  --owner=0 --group=0 --numeric-owner --mtime=@0 .

layout=$out/oci
umoci init --layout "$layout"
umoci new --image "$layout:$version"
umoci raw add-layer --image "$layout:$version" "$out/layer.tar"
case $(uname -m) in
  x86_64) arch=amd64 ;;
  aarch64) arch=arm64 ;;
  *) arch=$(uname -m) ;;
esac
umoci config --image "$layout:$version" --os linux --architecture "$arch" \
  --config.entrypoint /usr/local/bin/sluice-agent \
  --config.env PATH=/usr/local/bin:/usr/bin:/bin \
  --config.workingdir / \
  --config.label "org.opencontainers.image.title=sluice-agent" \
  --config.label "org.opencontainers.image.version=$version"
umoci gc --layout "$layout"
rm -rf "$out/layer.tar" "$stage"

tar --create --file "$out/sluice-agent-$version.oci.tar" --directory "$layout" .
echo "build-image: $layout:$version ($(du -sh "$layout" | cut -f1), ${#libs[@]} shared libraries); $out/sluice-agent-$version.oci.tar"
