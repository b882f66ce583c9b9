#!/usr/bin/env bash
# The control-plane node: kubeadm init, flannel as the primary CNI, istiod (istioctl's
# minimal profile), then Sluice's kustomization. The workers join with JOIN_TOKEN.
# Env: NODE_IP, ISTIO_VERSION, JOIN_TOKEN.
set -euo pipefail
: "${NODE_IP:?}" "${ISTIO_VERSION:?}" "${JOIN_TOKEN:?}"
export KUBECONFIG=/etc/kubernetes/admin.conf

if [[ ! -f /etc/kubernetes/admin.conf ]]; then
  kubeadm init --apiserver-advertise-address "$NODE_IP" --pod-network-cidr 10.244.0.0/16 \
    --node-name "$(hostname)" --token "$JOIN_TOKEN" --token-ttl 0
fi
mkdir -p /home/vagrant/.kube
install -o vagrant -g vagrant -m 0600 /etc/kubernetes/admin.conf /home/vagrant/.kube/config

# flannel on the host-only interface (eth1), the primary CNI Sluice chains after.
curl -fsSL https://github.com/flannel-io/flannel/releases/latest/download/kube-flannel.yml |
  sed 's|- --kube-subnet-mgr|- --kube-subnet-mgr\n        - --iface=eth1|' |
  kubectl apply -f -
kubectl -n kube-flannel rollout status ds/kube-flannel-ds --timeout=300s

# istiod: the minimal profile (no gateways; Sluice is the data plane).
if ! command -v istioctl >/dev/null; then
  curl -fsSL "https://github.com/istio/istio/releases/download/${ISTIO_VERSION}/istioctl-${ISTIO_VERSION}-linux-amd64.tar.gz" |
    tar -xz -C /usr/local/bin istioctl
fi
istioctl install -y --set profile=minimal
kubectl -n istio-system rollout status deploy/istiod --timeout=300s

kubectl apply -k /sluice/deploy/kubernetes
echo "control plane ready; now: vagrant up w1 w2"
