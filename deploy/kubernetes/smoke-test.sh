#!/usr/bin/env bash
# Smoke test of Sluice on a real Kubernetes cluster with istiod installed: install the
# kustomization, enrol a namespace, split traffic 25/75 between two versions of Istio's
# helloworld sample with a VirtualService, count who answered, and uninstall.
#
#   deploy/kubernetes/smoke-test.sh [--keep] [--requests N] [--image-dir DIR]
#
# Needs kubectl pointed at the cluster (KUBECONFIG), istiod running in istio-system, and
# the image sluice/sluice-agent:VERSION on every node (vagrant/ imports it; elsewhere set
# it with `kustomize edit set image`). Pulls docker.io/istio/examples-helloworld-v{1,2}
# and docker.io/curlimages/curl. Exits 0 only when every step passed. --keep leaves
# Sluice and the test namespace installed. Not run in CI: no cluster can run there.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ns=sluice-smoke
requests=200
keep=0
while (($#)); do
  case $1 in
    --keep) keep=1 ;;
    --requests) requests=$2; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "smoke-test: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

step() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

cleanup() {
  if ((keep)); then
    return
  fi
  step "uninstall"
  kubectl delete namespace "$ns" --ignore-not-found --wait=true --timeout=120s || true
  kubectl delete -k "$here" --ignore-not-found --wait=true --timeout=180s || true
}
trap cleanup EXIT

command -v kubectl >/dev/null || fail "kubectl is not installed"
kubectl get deploy istiod -n istio-system >/dev/null 2>&1 ||
  fail "istiod is not running in istio-system (istioctl install --set profile=minimal)"

step "install Sluice (kubectl apply -k $here)"
kubectl apply -k "$here"
kubectl -n sluice-system rollout status ds/sluice-agent --timeout=300s ||
  fail "the sluice-agent DaemonSet did not become ready"

step "enrol namespace $ns and deploy helloworld v1, v2 and a client"
kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f -
kubectl label namespace "$ns" istio.io/dataplane-mode=sluice --overwrite
kubectl apply -n "$ns" -f - <<'YAML'
apiVersion: v1
kind: Service
metadata: {name: helloworld, labels: {app: helloworld}}
spec:
  ports: [{port: 5000, name: http}]
  selector: {app: helloworld}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: helloworld-v1}
spec:
  selector: {matchLabels: {app: helloworld, version: v1}}
  template:
    metadata: {labels: {app: helloworld, version: v1}}
    spec:
      containers:
      - {name: helloworld, image: docker.io/istio/examples-helloworld-v1, ports: [{containerPort: 5000}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: helloworld-v2}
spec:
  selector: {matchLabels: {app: helloworld, version: v2}}
  template:
    metadata: {labels: {app: helloworld, version: v2}}
    spec:
      containers:
      - {name: helloworld, image: docker.io/istio/examples-helloworld-v2, ports: [{containerPort: 5000}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client}
spec:
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      containers:
      - {name: curl, image: docker.io/curlimages/curl, command: [sleep, infinity]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: helloworld}
spec:
  host: helloworld
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: helloworld}
spec:
  hosts: [helloworld]
  http:
  - route:
    - {destination: {host: helloworld, subset: v1}, weight: 25}
    - {destination: {host: helloworld, subset: v2}, weight: 75}
YAML
for d in helloworld-v1 helloworld-v2 client; do
  kubectl -n "$ns" rollout status "deploy/$d" --timeout=300s || fail "deploy/$d is not ready"
done

step "the agent enrolled the client pod"
client=$(kubectl -n "$ns" get pod -l app=client -o jsonpath='{.items[0].metadata.name}')
node=$(kubectl -n "$ns" get pod "$client" -o jsonpath='{.spec.nodeName}')
agent=$(kubectl -n sluice-system get pod -l app.kubernetes.io/name=sluice-agent \
  --field-selector "spec.nodeName=$node" -o jsonpath='{.items[0].metadata.name}')
enrolled=0
for _ in $(seq 30); do
  if kubectl -n sluice-system exec "$agent" -- sluicectl agent pods 2>/dev/null | grep -q "$ns/$client"; then
    enrolled=1
    break
  fi
  sleep 1
done
((enrolled)) || fail "pod $ns/$client is not enrolled by the agent on $node ($agent)"

step "$requests requests through the 25/75 split"
out=$(kubectl -n "$ns" exec "$client" -- sh -c \
  "for i in \$(seq $requests); do curl -s --max-time 5 http://helloworld:5000/hello; done")
v1=$(grep -c 'version: v1' <<<"$out" || true)
v2=$(grep -c 'version: v2' <<<"$out" || true)
echo "v1: $v1, v2: $v2 (of $requests)"
((v1 + v2 == requests)) || fail "only $((v1 + v2)) of $requests requests were answered"
share=$((100 * v2 / requests))
((share >= 65 && share <= 85)) || fail "v2 got ${share}% of the requests, want 75% +- 10"

step "PASS"
