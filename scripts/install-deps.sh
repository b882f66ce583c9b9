#!/usr/bin/env bash
# Installs what Sluice needs to build, test and run, on Debian 12. Idempotent: it
# installs only what is missing, so the README's commands can call it every time.
set -euo pipefail

packages=(
  # build
  build-essential cmake ninja-build pkg-config clang llvm
  libclang-rt-14-dev  # libFuzzer + sanitizer runtimes for tests/fuzz
  libbpf-dev bpftool libelf-dev zlib1g-dev
  libspdlog-dev libfmt-dev
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  catch2 libyaml-cpp-dev nlohmann-json3-dev libcli11-dev libre2-dev libssl-dev
  libcurl4-openssl-dev  # the Kubernetes API client (agent/kube)
  libgoogle-perftools-dev  # tcmalloc for the agent and the proxy (SLUICE_MALLOC)
  # runtime and tests
  iproute2 iptables containernetworking-plugins curl openssl jq python3
  python3-yaml  # examples/05-service-entry/check.sh reads the example's YAML
  python3-grpcio python3-protobuf  # the Delta xDS stand-in server (tests/xds); the gRPC client and server of tests/e2e-grpc
  # deploy/kubernetes: rendered with `kubectl kustomize`, checked against the API's models
  # (tests/deploy); the image is built without docker (scripts/build-image.sh)
  python3-kubernetes umoci
  # vagrant/ and deploy/kubernetes/smoke-test.sh, checked offline (tests/deploy)
  vagrant shellcheck
  # Istio's metrics (/stats/prometheus) parsed by a real Prometheus parser (tests/proxy)
  python3-prometheus-client
  # benchmarks and peers
  wrk haproxy nginx-light iperf3
  libnghttp2-dev nghttp2-client  # HTTP/2 (agent/proxy/h2_session.cc); nghttp/h2load as peers
  linux-perf strace  # profiling the L7 proxy (docs/benchmarks.md)
  patchelf  # the allocator comparison of xds_bench (docs/benchmarks.md)
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ! command -v npm >/dev/null 2>&1; then
  missing+=(npm)
fi
# kubectl (with kustomize built in): Debian's kubernetes-client, unless the machine has a
# kubectl already (another package owning /usr/bin/kubectl would make it fail to install).
if ! command -v kubectl >/dev/null 2>&1; then
  missing+=(kubernetes-client)
fi

if ((${#missing[@]})); then
  if [[ $EUID -ne 0 ]]; then
    echo "install-deps: missing Debian packages: ${missing[*]}" >&2
    echo "install-deps: run as root (or install them yourself) and try again" >&2
    exit 1
  fi
  echo "install-deps: installing ${#missing[@]} Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts nginx and haproxy on install; the benchmarks start their own.
  for svc in nginx haproxy; do
    systemctl disable --now "$svc" >/dev/null 2>&1 || service "$svc" stop >/dev/null 2>&1 || true
  done
else
  echo "install-deps: all Debian packages present"
fi

# npm packages (pinned by lockfile) for every folder that declares some.
root=$(cd "$(dirname "$0")/.." && pwd)
while IFS= read -r lock; do
  dir=$(dirname "$lock")
  if [[ ! -d "$dir/node_modules" || "$lock" -nt "$dir/node_modules" ]]; then
    echo "install-deps: npm ci in ${dir#"$root"/}"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    touch "$dir/node_modules"
  fi
done < <(find "$root" -name package-lock.json -not -path '*/node_modules/*' -not -path '*/build*/*')
