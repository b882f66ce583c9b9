#!/usr/bin/env bash
# Every node: containerd, kubelet/kubeadm/kubectl from pkgs.k8s.io, the kernel settings
# Kubernetes needs, and Sluice's image imported into containerd.
# Env: K8S_VERSION (e.g. v1.30), NODE_IP (this node's host-only address).
set -euo pipefail
: "${K8S_VERSION:?}" "${NODE_IP:?}"
export DEBIAN_FRONTEND=noninteractive

swapoff -a
sed -i '/\sswap\s/d' /etc/fstab
printf 'overlay\nbr_netfilter\n' >/etc/modules-load.d/k8s.conf
modprobe overlay
modprobe br_netfilter
cat >/etc/sysctl.d/99-k8s.conf <<'SYSCTL'
net.bridge.bridge-nf-call-iptables = 1
net.bridge.bridge-nf-call-ip6tables = 1
net.ipv4.ip_forward = 1
SYSCTL
sysctl --system >/dev/null

apt-get update -qq
apt-get install -y -qq apt-transport-https ca-certificates curl gpg containerd jq >/dev/null
mkdir -p /etc/containerd
containerd config default >/etc/containerd/config.toml
# kubelet's default cgroup driver is systemd; containerd must agree.
sed -i 's/SystemdCgroup = false/SystemdCgroup = true/' /etc/containerd/config.toml
systemctl restart containerd

install -d -m 0755 /etc/apt/keyrings
curl -fsSL "https://pkgs.k8s.io/core:/stable:/${K8S_VERSION}/deb/Release.key" |
  gpg --dearmor --yes -o /etc/apt/keyrings/kubernetes-apt-keyring.gpg
echo "deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] https://pkgs.k8s.io/core:/stable:/${K8S_VERSION}/deb/ /" \
  >/etc/apt/sources.list.d/kubernetes.list
apt-get update -qq
apt-get install -y -qq kubelet kubeadm kubectl >/dev/null
apt-mark hold kubelet kubeadm kubectl >/dev/null
# The node's address on the host-only network, not the NAT interface every VM shares.
echo "KUBELET_EXTRA_ARGS=--node-ip=${NODE_IP}" >/etc/default/kubelet
systemctl restart kubelet

# bpffs where the agent pins (systemd mounts it on Debian; make sure).
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

# Sluice's image, built on the host by scripts/build-image.sh into vagrant/.image.
archive=$(find /sluice/vagrant/.image -maxdepth 1 -name "sluice-agent-*.oci.tar" 2>/dev/null | sort | head -n1)
if [[ -z $archive ]]; then
  echo "provision: no image at /sluice/vagrant/.image (run scripts/build-image.sh build vagrant/.image on the host)" >&2
  exit 1
fi
ctr -n k8s.io images import --base-name sluice/sluice-agent "$archive"
