#!/usr/bin/env bash
# The container image test (tests/deploy/CMakeLists.txt): builds the image from the
# build tree with scripts/build-image.sh, unpacks it with umoci, and runs the programs
# from its root filesystem with chroot — so a missing shared library, loader or tool in
# the image fails here, not on a node.
#
#   image_test.sh BUILD_DIR VERSION
#
# Checks: `sluice-agent --version` prints "sluice-agent VERSION"; the image's entrypoint
# is sluice-agent; sluicectl, sluice-cni and install-cni.sh (bash, env, jq and the
# coreutils it calls) run there too. As root it uses chroot directly; otherwise a user
# namespace (unshare -r) gives chroot and umoci --rootless, so it needs no root.
set -euo pipefail
build=${1:?usage: image_test.sh BUILD_DIR VERSION}
version=${2:?usage: image_test.sh BUILD_DIR VERSION}
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/sluice-image-test.XXXXXX")
trap 'rm -rf "$work"' EXIT

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

"$root/scripts/build-image.sh" "$build" "$work/out"
[[ -f $work/out/sluice-agent-$version.oci.tar ]] || fail "no image archive sluice-agent-$version.oci.tar"

if ((EUID == 0)); then
  as_root=()
  rootless=()
else
  as_root=(unshare --user --map-root-user)
  rootless=(--rootless)
fi
umoci unpack "${rootless[@]}" --image "$work/out/oci:$version" "$work/bundle" >/dev/null
rootfs=$work/bundle/rootfs
in_image() { "${as_root[@]}" chroot "$rootfs" "$@"; }

entry=$(jq -r '.process.args[0]' "$work/bundle/config.json")
[[ $entry == /usr/local/bin/sluice-agent ]] || fail "image entrypoint is $entry, not /usr/local/bin/sluice-agent"

got=$(in_image /usr/local/bin/sluice-agent --version) || fail "sluice-agent --version failed in the image"
[[ $got == "sluice-agent $version" ]] || fail "sluice-agent --version printed '$got', expected 'sluice-agent $version'"
echo "in the image: $got"

got=$(in_image /usr/local/bin/sluicectl version) || fail "sluicectl version failed in the image"
[[ $got == "sluicectl $version" ]] || fail "sluicectl version printed '$got'"

# sluice-cni without CNI_COMMAND answers with a CNI error object (JSON on stdout).
out=$(in_image /usr/local/bin/sluice-cni </dev/null 2>/dev/null || true)
jq -e '.code' <<<"$out" >/dev/null || fail "sluice-cni in the image did not answer with a CNI error object: $out"

# install-cni.sh end to end inside the image: chain into a conflist, then remove again.
mkdir -p "$rootfs/t/net.d" "$rootfs/t/bin"
printf '{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"ptp"}]}\n' >"$rootfs/t/net.d/10-k8s.conflist"
in_image /usr/local/bin/install-cni.sh --cni-conf-dir /t/net.d --cni-bin-dir /t/bin \
  --plugin-binary /usr/local/bin/sluice-cni >/dev/null || fail "install-cni.sh failed in the image"
jq -e '.plugins[-1].type == "sluice-cni"' "$rootfs/t/net.d/10-k8s.conflist" >/dev/null ||
  fail "install-cni.sh in the image did not chain sluice-cni"
[[ -x $rootfs/t/bin/sluice-cni ]] || fail "install-cni.sh in the image did not copy sluice-cni"
in_image /usr/local/bin/install-cni.sh --uninstall --cni-conf-dir /t/net.d >/dev/null ||
  fail "install-cni.sh --uninstall failed in the image"
jq -e '.plugins | length == 1' "$rootfs/t/net.d/10-k8s.conflist" >/dev/null ||
  fail "install-cni.sh --uninstall in the image did not restore the conflist"
echo "ok: image sluice-agent:$version runs sluice-agent, sluicectl, sluice-cni and install-cni.sh"
