#!/usr/bin/env bash
# credential.sh NAME CERT KEY [CA]: prints a Secret of type kubernetes.io/tls in
# istio-system with the certificate (tls.crt), its key (tls.key) and, for MUTUAL TLS, the
# CA of the clients (ca.crt): what
#   kubectl create -n istio-system secret tls NAME --cert=CERT --key=KEY --dry-run=client -o yaml
# prints, for the local cluster, which has no kubectl (`sluicectl local apply -f` reads it).
set -euo pipefail
if (($# < 3 || $# > 4)); then
  echo "usage: $0 NAME CERT KEY [CA]" >&2
  exit 2
fi
name=$1 cert=$2 key=$3 ca=${4:-}
for f in "$cert" "$key" ${ca:+"$ca"}; do
  [[ -r $f ]] || { echo "credential.sh: cannot read $f" >&2; exit 1; }
done
printf 'apiVersion: v1\nkind: Secret\nmetadata:\n  name: %s\n  namespace: istio-system\n' "$name"
printf 'type: kubernetes.io/tls\ndata:\n'
printf '  tls.crt: %s\n' "$(base64 -w0 "$cert")"
printf '  tls.key: %s\n' "$(base64 -w0 "$key")"
[[ -z $ca ]] || printf '  ca.crt: %s\n' "$(base64 -w0 "$ca")"
