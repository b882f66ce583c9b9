#!/usr/bin/env bash
# The multi-node test bed and the real-cluster smoke test cannot run here (no hypervisor,
# no cluster): this checks what can be checked offline. `vagrant validate` loads the
# Vagrantfile with Vagrant itself (every node, provisioner and setting it declares), and
# shellcheck checks the provisioning scripts and deploy/kubernetes/smoke-test.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
for tool in vagrant shellcheck; do
  command -v "$tool" >/dev/null || {
    echo "multinode_check: $tool is not installed (scripts/install-deps.sh installs it)" >&2
    exit 1
  }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A copy, so validation leaves no .vagrant/ or .token in the tree.
cp -r "$root/vagrant" "$work/vagrant"
rm -rf "$work/vagrant/.vagrant" "$work/vagrant/.token"
(cd "$work/vagrant" && VAGRANT_HOME="$work/vagrant-home" vagrant validate --ignore-provider)
test -s "$work/vagrant/.token" || { echo "multinode_check: the Vagrantfile made no join token" >&2; exit 1; }
grep -Eq '^[a-z0-9]{6}\.[a-z0-9]{16}$' "$work/vagrant/.token" ||
  { echo "multinode_check: the join token is not kubeadm's format: $(cat "$work/vagrant/.token")" >&2; exit 1; }
shellcheck "$root"/vagrant/provision/*.sh "$root/deploy/kubernetes/smoke-test.sh"
echo "multinode_check: Vagrantfile valid, join token well-formed, scripts clean"
