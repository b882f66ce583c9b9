#!/usr/bin/env bash
# Task 10, Secure gateway: the check of this example, as scripts/tasks.sh runs it (docs/tasks.md
# says what it checks and why). It runs the README's commands on the local cluster (the
# certificates in a scratch directory instead of ./example_certs1), prints them with
# their output and evidence, and a ✔/✘ per check.
# shellcheck source=../lib/tasks.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/tasks.sh"

dir=examples/10-secure-gateway

check() {
  local pf_pid="" pf_log=$work/port-forward-443.log certs=$work/example_certs1 mark
  trap '[[ -n $pf_pid ]] && kill $pf_pid 2>/dev/null; wait 2>/dev/null' RETURN
  mkdir -p "$certs"

  # 1. A CA, and a certificate for httpbin.example.com signed by it (the Istio task's commands).
  # (--max 0: openssl's key-generation progress dots are not worth showing)
  run --max 0 openssl req -x509 -sha256 -nodes -days 365 -newkey rsa:2048 \
    -subj '/O=example Inc./CN=example.com' -keyout "$certs/example.com.key" -out "$certs/example.com.crt"
  run --max 0 openssl req -out "$certs/httpbin.example.com.csr" -newkey rsa:2048 -nodes \
    -keyout "$certs/httpbin.example.com.key" -subj "/CN=httpbin.example.com/O=httpbin organization"
  run openssl x509 -req -sha256 -days 365 -CA "$certs/example.com.crt" -CAkey "$certs/example.com.key" \
    -set_serial 0 -in "$certs/httpbin.example.com.csr" -out "$certs/httpbin.example.com.crt"
  if ! openssl verify -CAfile "$certs/example.com.crt" "$certs/httpbin.example.com.crt" >/dev/null 2>&1; then
    fail "openssl did not make a certificate for httpbin.example.com signed by the example.com CA"
    return
  fi

  # 2. The Secret, the Gateway and the VirtualService.
  show_cmd $dir/credential.sh httpbin-credential "$certs/httpbin.example.com.crt" \
    "$certs/httpbin.example.com.key" '>' "$certs/httpbin-credential.yaml"
  if ! $dir/credential.sh httpbin-credential "$certs/httpbin.example.com.crt" \
    "$certs/httpbin.example.com.key" >"$certs/httpbin-credential.yaml"; then
    fail "$dir/credential.sh could not write the Secret httpbin-credential"
    return
  fi
  run sluicectl local apply -f "$certs/httpbin-credential.yaml"
  if ((RC != 0)); then
    fail "apply of the Secret httpbin-credential failed (exit $RC): $(answer)"
  elif grep -q "nothing to do for a Secret" <<<"$OUT"; then
    # The gateway's certificate comes from this Secret (credentialName, over SDS).
    fail "the local cluster ignored the Secret httpbin-credential ($(answer)): the control plane never sees the gateway's certificate"
  fi
  run sluicectl local apply -f $dir/gateway.yaml -f $dir/virtual-service.yaml
  ((RC == 0)) || fail "apply of $dir/gateway.yaml and virtual-service.yaml failed (exit $RC): $(answer)"

  # 3. The gateway's port 443 on a local port.
  show_cmd sluicectl local port-forward svc/istio-ingressgateway "$ingress_port:443" -n istio-system '&'
  "$SLUICECTL" local port-forward svc/istio-ingressgateway "$ingress_port:443" -n istio-system \
    >"$pf_log" 2>&1 </dev/null &
  pf_pid=$!
  until_ok 10 grep -q "Forwarding from" "$pf_log"
  indent 3 <"$pf_log"
  if ! grep -q "Forwarding from" "$pf_log"; then
    fail "port-forward to the gateway's port 443 did not start: $(tail -n 3 "$pf_log" | tr '\n' ' ')"
    cleanup "$certs"
    return
  fi

  # 4. HTTPS with the CA, over HTTP/2, then HTTP/1.1.
  local host=httpbin.example.com url="https://httpbin.example.com:$ingress_port"
  local resolve="$host:$ingress_port:127.0.0.1"
  mark=$(marker 10)
  # The gateway gets its listener, secret and routes from xDS a moment after the apply.
  until_ok 15 quiet curl -s -o /dev/null --max-time 3 --resolve "$resolve" \
    --cacert "$certs/example.com.crt" "$url/status/200"
  run --max 0 curl -v -sS -A "$mark" --max-time 5 --resolve "$resolve" --cacert "$certs/example.com.crt" \
    --http2 -o "$work/teapot.body" -w '\n%{http_code} HTTP/%{http_version}\n' "$url/status/418"
  local rc=$RC handshake=0 tls_out=$OUT
  evidence "the TLS handshake and the answer, as curl -v shows them:"
  grep -E 'ALPN: server|subject:|issuer:|SSL certificate verify|SSL connection using|^< HTTP|^curl: \(' <<<"$tls_out" | indent 8
  grep -q 'SSL certificate verify ok' <<<"$tls_out" && handshake=1
  if ((handshake)) && grep -q 'subject: CN=httpbin.example.com' <<<"$tls_out"; then
    pass "the gateway presented the certificate of httpbin-credential (CN=httpbin.example.com), verified by the example.com CA"
  else
    fail "no verified TLS handshake with the gateway for httpbin.example.com (curl exit $rc): $(grep -E '^curl: \(' <<<"$tls_out" | head -n1)"
    # What the gateway listens with, as istioctl would show it: is there a TLS chain on 8443?
    run --max 10 sluicectl proxy-config listener deploy/istio-ingressgateway -n istio-system
  fi
  if [[ $(tail -n1 <<<"$tls_out") == "418 HTTP/2" ]] && grep -qi teapot "$work/teapot.body" 2>/dev/null; then
    pass "https://httpbin.example.com/status/418 over HTTP/2 (ALPN h2): 418, httpbin's teapot"
  else
    fail "https://httpbin.example.com/status/418 with --http2: expected 418 over HTTP/2 and a teapot, got '$(tail -n1 <<<"$tls_out")' (curl exit $rc)"
  fi
  run curl -sS -A "$mark" --max-time 5 --resolve "$resolve" --cacert "$certs/example.com.crt" \
    --http2 -o /dev/null -w '%{http_code} HTTP/%{http_version}\n' "$url/status/200"
  if [[ $OUT == "200 HTTP/2" ]]; then
    pass "https://httpbin.example.com/status/200 over HTTP/2: 200"
  else
    fail "https://httpbin.example.com/status/200 with --http2: expected '200 HTTP/2', got $(answer)"
  fi
  run curl -sS -A "$mark" --max-time 5 --resolve "$resolve" --cacert "$certs/example.com.crt" \
    --http1.1 -o /dev/null -w '%{http_code} HTTP/%{http_version}\n' "$url/status/418"
  if [[ $OUT == "418 HTTP/1.1" ]]; then
    pass "the same over HTTP/1.1 (ALPN http/1.1): 418"
  else
    fail "https://httpbin.example.com/status/418 with --http1.1: expected '418 HTTP/1.1', got $(answer)"
  fi

  # 5. What must fail: a name the Gateway does not serve, and plain HTTP on the TLS port.
  #    Only telling when the gateway completes a handshake for the name it does serve.
  run curl -sS --max-time 5 --resolve "other.example.com:$ingress_port:127.0.0.1" \
    --cacert "$certs/example.com.crt" -o /dev/null -w '%{http_code}\n' \
    "https://other.example.com:$ingress_port/status/418"
  if ((!handshake)); then
    fail "unknown SNI other.example.com: not telling (curl exit $RC), the gateway completes no handshake for httpbin.example.com either"
  elif ((RC == 35)); then
    pass "unknown SNI other.example.com: the handshake fails (curl exit 35), no certificate offered"
  elif ((RC == 60)); then
    fail "unknown SNI other.example.com: the gateway answered the handshake with a certificate (curl exit 60, it does not match the name); it must refuse the name"
  else
    fail "unknown SNI other.example.com: expected a failed handshake (curl exit 35), got exit $RC, $(answer)"
  fi
  run curl -sS --max-time 5 -H "Host:$host" -o /dev/null -w '%{http_code}\n' \
    "http://127.0.0.1:$ingress_port/status/418"
  if ((!handshake)); then
    fail "plain HTTP on the TLS port: not telling (curl exit $RC), the gateway's TLS port does not work for HTTPS either"
  elif ((RC != 0)) && [[ $(tail -n1 <<<"$OUT") == 000 || -z $OUT || $OUT == curl:* ]]; then
    pass "plain HTTP on the TLS port gets no HTTP answer (curl exit $RC)"
  else
    fail "plain HTTP on the TLS port: expected no HTTP answer, got $(answer) (curl exit $RC)"
  fi

  # 6. The gateway's access log: the request over HTTP/2, to httpbin.
  local gw lines
  gw=$(first_pod istio-system --labels istio=ingressgateway)
  if [[ -n $gw ]]; then
    run --max 0 sluicectl local logs "$gw" -n istio-system
    lines=$(grep -F -- "$mark" <<<"$OUT" || true)
    evidence "ingress gateway access log, this run's requests:"
    indent 4 <<<"$lines"
    if grep -q '"GET /status/418 HTTP/2" 418' <<<"$lines" && grep -q 'outbound|8000||httpbin.default.svc.cluster.local' <<<"$lines"; then
      pass "the gateway logged \"GET /status/418 HTTP/2\" 418 to outbound|8000||httpbin.default.svc.cluster.local"
    else
      fail "the gateway's log has no \"GET /status/418 HTTP/2\" 418 line to outbound|8000||httpbin.default.svc.cluster.local"
    fi
  else
    fail "no ingress gateway pod (label istio=ingressgateway in istio-system)"
  fi

  # 7. Mutual TLS (the task's MUTUAL section, with subjectAltNames): client certificates
  #    signed by the same CA, one with the SAN the Gateway names and one without; the
  #    Secret gets ca.crt; the Gateway becomes MUTUAL.
  local client serial=0
  for client in client other; do
    serial=$((serial + 1))
    run --max 0 openssl req -out "$certs/$client.example.com.csr" -newkey rsa:2048 -nodes \
      -keyout "$certs/$client.example.com.key" -subj "/CN=$client.example.com/O=client organization"
    printf 'subjectAltName=DNS:%s.example.com\n' "$client" >"$certs/$client.ext"
    run openssl x509 -req -sha256 -days 365 -CA "$certs/example.com.crt" -CAkey "$certs/example.com.key" \
      -set_serial $serial -in "$certs/$client.example.com.csr" -extfile "$certs/$client.ext" \
      -out "$certs/$client.example.com.crt"
  done
  show_cmd $dir/credential.sh httpbin-credential "$certs/httpbin.example.com.crt" \
    "$certs/httpbin.example.com.key" "$certs/example.com.crt" '>' "$certs/httpbin-credential.yaml"
  $dir/credential.sh httpbin-credential "$certs/httpbin.example.com.crt" \
    "$certs/httpbin.example.com.key" "$certs/example.com.crt" >"$certs/httpbin-credential.yaml"
  run sluicectl local apply -f "$certs/httpbin-credential.yaml" -f $dir/gateway-mutual.yaml
  ((RC == 0)) || fail "apply of the Secret with ca.crt and $dir/gateway-mutual.yaml failed (exit $RC): $(answer)"
  local with_client=(--cert "$certs/client.example.com.crt" --key "$certs/client.example.com.key")
  # Until the gateway has the MUTUAL listener: a request without a certificate is refused.
  until_ok 15 bash -c "! curl -s -o /dev/null --max-time 3 --resolve $resolve --cacert $certs/example.com.crt $url/status/200"
  until_ok 15 quiet curl -s -o /dev/null --max-time 3 --resolve "$resolve" \
    --cacert "$certs/example.com.crt" "${with_client[@]}" "$url/status/200"
  run curl -sS --max-time 5 --resolve "$resolve" --cacert "$certs/example.com.crt" "${with_client[@]}" \
    -o /dev/null -w '%{http_code} HTTP/%{http_version}\n' "$url/status/418"
  if [[ $OUT == "418 HTTP/2" ]]; then
    pass "MUTUAL: a client certificate of the CA with DNS SAN client.example.com gets 418"
  else
    fail "MUTUAL: with the client.example.com certificate expected '418 HTTP/2', got $(answer) (curl exit $RC)"
  fi
  local mutual_ok=$((RC == 0))
  run curl -sS --max-time 5 --resolve "$resolve" --cacert "$certs/example.com.crt" \
    --cert "$certs/other.example.com.crt" --key "$certs/other.example.com.key" \
    -o /dev/null -w '%{http_code}\n' "$url/status/418"
  if ((!mutual_ok)); then
    fail "MUTUAL: a certificate without the SAN: not telling (curl exit $RC), the good certificate was refused too"
  elif ((RC != 0)) && [[ $OUT != *418* ]]; then
    pass "MUTUAL: a certificate of the same CA without the SAN (other.example.com) is refused at the handshake (curl exit $RC)"
  else
    fail "MUTUAL: a certificate without the Gateway's subjectAltNames got $(answer) (curl exit $RC); it must be refused"
  fi
  run curl -sS --max-time 5 --resolve "$resolve" --cacert "$certs/example.com.crt" \
    -o /dev/null -w '%{http_code}\n' "$url/status/418"
  if ((!mutual_ok)); then
    fail "MUTUAL: no client certificate: not telling (curl exit $RC), the good certificate was refused too"
  elif ((RC != 0)) && [[ $OUT != *418* ]]; then
    pass "MUTUAL: no client certificate is refused (curl exit $RC)"
  else
    fail "MUTUAL: without a client certificate got $(answer) (curl exit $RC); it must be refused"
  fi
  cleanup "$certs"
}

cleanup() {
  run sluicectl local delete -f $dir/gateway.yaml -f $dir/virtual-service.yaml -f "$1/httpbin-credential.yaml"
}

check
finish $?
