#!/usr/bin/env bash
# A worker: joins the control plane with the bootstrap token the Vagrantfile made.
# The CA is not pinned (the synced folder is one-way, so the control plane's CA hash
# cannot reach the workers before they join): acceptable on a host-only test network,
# never on a real one.
# Env: CONTROL_PLANE_IP, JOIN_TOKEN.
set -euo pipefail
: "${CONTROL_PLANE_IP:?}" "${JOIN_TOKEN:?}"
if [[ -f /etc/kubernetes/kubelet.conf ]]; then
  echo "already joined"
  exit 0
fi
kubeadm join "${CONTROL_PLANE_IP}:6443" --token "$JOIN_TOKEN" \
  --discovery-token-unsafe-skip-ca-verification --node-name "$(hostname)"
