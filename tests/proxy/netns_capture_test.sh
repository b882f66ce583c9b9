#!/usr/bin/env bash
# Captured sidecar listeners in network namespaces: a "pod" namespace with istio-init's
# iptables REDIRECT (outbound to 15001, inbound to 15006, the proxy's uid 1337 and
# 127.0.0.6 exempt), sluice-proxy inside it serving the real istiod listeners of
# tests/proxy/data/ (virtualOutbound, virtualInbound, 0.0.0.0_9080), and a "client"
# namespace on the other end of a veth. Real curl and bash /dev/tcp traffic checks:
# sniffed HTTP and sniffed non-HTTP on an outbound port, passthrough of a destination no
# listener covers, inbound HTTP to the app's own port delivered from 127.0.0.6, and
# inbound non-HTTP to a port without chains of its own. Needs root; namespaces are named sluicet16c-* and removed on exit.
# Usage: netns_capture_test.sh SLUICE_PROXY_BIN DATA_DIR
set -euo pipefail

PROXY_BIN=$1
DATA=$2
POD=sluicet16c-pod-$$
CLI=sluicet16c-cli-$$
VA=sluicet16c-a
VB=sluicet16c-b
WORK=$(mktemp -d)
PIDS=()

cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$POD" 2>/dev/null || true
  ip netns del "$CLI" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  echo "--- access log" >&2
  cat "$WORK/access.log" >&2 || true
  echo "--- proxy stderr" >&2
  cat "$WORK/proxy.err" >&2 || true
  exit 1
}

ip netns add "$POD"
ip netns add "$CLI"
ip link add "$VA" type veth peer name "$VB"
ip link set "$VA" netns "$POD"
ip link set "$VB" netns "$CLI"
ip -n "$POD" addr add 10.216.0.2/24 dev "$VA"
ip -n "$CLI" addr add 10.216.0.1/24 dev "$VB"
for ns in "$POD" "$CLI"; do ip -n "$ns" link set lo up; done
ip -n "$POD" link set "$VA" up
ip -n "$CLI" link set "$VB" up

# istio-init's rules, abridged (tools/istio-iptables): everything inbound to 15006,
# everything outbound to 15001, except the proxy's own connections (uid 1337, and its
# inbound ones from 127.0.0.6) and loopback.
ipt() { ip netns exec "$POD" iptables -w -t nat "$@"; }
ipt -N ISTIO_REDIRECT
ipt -A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
ipt -N ISTIO_IN_REDIRECT
ipt -A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
ipt -N ISTIO_INBOUND
ipt -A PREROUTING -p tcp -j ISTIO_INBOUND
ipt -A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
ipt -N ISTIO_OUTPUT
ipt -A OUTPUT -p tcp -j ISTIO_OUTPUT
ipt -A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
ipt -A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
ipt -A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
ipt -A ISTIO_OUTPUT -j ISTIO_REDIRECT

# A server that answers "<name> <peer-ip> <first line>": as HTTP to an HTTP request,
# as a line otherwise.
cat >"$WORK/srv.py" <<'EOF'
import socket, sys, threading
name, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, port))
s.listen(16)
def serve(c, peer):
    got = b""
    c.settimeout(3)
    try:
        while True:
            d = c.recv(4096)
            if not d:
                break
            got += d
            if got.startswith(b"GET ") and b"\r\n\r\n" in got:
                break
            if not got.startswith(b"GET ") and got.endswith(b"\n"):
                break
    except OSError:
        pass
    line = got.split(b"\r\n")[0].split(b"\n")[0].decode(errors="replace")
    body = ("%s %s %s\n" % (name, peer[0], line)).encode()
    if got.startswith(b"GET "):
        body = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body
    try:
        c.sendall(body)
    except OSError:
        pass
    c.close()
while True:
    c, peer = s.accept()
    threading.Thread(target=serve, args=(c, peer), daemon=True).start()
EOF
ip netns exec "$POD" python3 "$WORK/srv.py" app 0.0.0.0 8080 &
PIDS+=($!)
ip netns exec "$POD" python3 "$WORK/srv.py" other 0.0.0.0 9999 &
PIDS+=($!)
ip netns exec "$CLI" python3 "$WORK/srv.py" web 10.216.0.1 9080 &
PIDS+=($!)
ip netns exec "$CLI" python3 "$WORK/srv.py" ext 10.216.0.1 7777 &
PIDS+=($!)

# The proxy's config: the dump's listeners at their own ports, virtualInbound's port-80
# chains moved to the app's 8080, the clusters and route istiod sends with them.
python3 - "$DATA/istiod-1.18-sidecar-listeners.json" "$WORK/config.json" <<'EOF'
import json, sys
src = json.load(open(sys.argv[1]))
text = json.dumps(src["listeners"], separators=(",", ":"))
text = text.replace('"destination_port":80,', '"destination_port":8080,')
text = text.replace('"destination_port":80}', '"destination_port":8080}')
text = text.replace('"start":80,"end":81', '"start":8080,"end":8081')
listeners = json.loads(text)
log = [{"name": "envoy.access_loggers.file", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
    "path": "/dev/stdout"}}]
for l in listeners:
    l["access_log"] = log
    for fc in l.get("filter_chains", []) + ([l["default_filter_chain"]] if "default_filter_chain" in l else []):
        for f in fc["filters"]:
            if f["name"] == "envoy.filters.network.tcp_proxy":
                f["typed_config"]["access_log"] = log
def odst(name, inbound):
    c = {"name": name, "type": "ORIGINAL_DST", "connect_timeout": "1s", "lb_policy": "CLUSTER_PROVIDED"}
    if inbound:
        c["upstream_bind_config"] = {"source_address": {"address": "127.0.0.6", "port_value": 0}}
    return c
clusters = [odst("PassthroughCluster", False), odst("InboundPassthroughClusterIpv4", True),
            odst("inbound|80||", True),
            {"name": "BlackHoleCluster", "type": "STATIC", "connect_timeout": "1s"}]
routes = [{"name": "9080", "virtual_hosts": [{"name": "allow_any", "domains": ["*"], "routes": [
    {"name": "allow_any", "match": {"prefix": "/"}, "route": {"cluster": "PassthroughCluster"}}]}]}]
json.dump({"listeners": listeners, "clusters": clusters, "routes": routes}, open(sys.argv[2], "w"))
EOF
chmod a+rx "$WORK"
chmod a+r "$WORK/config.json"
touch "$WORK/access.log"
chmod a+rw "$WORK/access.log"
ip netns exec "$POD" setpriv --reuid=1337 --regid=1337 --clear-groups \
  "$PROXY_BIN" --config "$WORK/config.json" --access-log "$WORK/access.log" \
  2>"$WORK/proxy.err" &
PIDS+=($!)

# Ready: the capture listeners answer, and the servers listen.
for i in $(seq 100); do
  if ip netns exec "$POD" bash -c 'exec 3<>/dev/tcp/127.0.0.1/15001' 2>/dev/null &&
    ip netns exec "$CLI" bash -c 'exec 3<>/dev/tcp/10.216.0.1/7777' 2>/dev/null &&
    ip netns exec "$POD" bash -c 'exec 3<>/dev/tcp/127.0.0.1/8080' 2>/dev/null; then
    break
  fi
  sleep 0.1
done

raw() {  # raw NS HOST PORT LINE: sends one line, prints the answer
  ip netns exec "$1" timeout 5 bash -c \
    "exec 3<>/dev/tcp/$2/$3; printf '%s\n' '$4' >&3; cat <&3" 2>/dev/null || true
}

# Outbound, sniffed port 9080: HTTP takes the HTTP chain (PassthroughCluster by route),
# anything else the TCP chain; both reach the real destination from the pod's address.
out=$(ip netns exec "$POD" curl -s --max-time 5 http://10.216.0.1:9080/sniffed)
[[ "$out" == "web 10.216.0.2 GET /sniffed HTTP/1.1" ]] || fail "outbound HTTP on 9080: '$out'"
out=$(raw "$POD" 10.216.0.1 9080 "not http")
[[ "$out" == "web 10.216.0.2 not http" ]] || fail "outbound TCP on sniffed 9080: '$out'"
# Outbound to a destination no listener covers: virtualOutbound's passthrough.
out=$(raw "$POD" 10.216.0.1 7777 "ping")
[[ "$out" == "ext 10.216.0.2 ping" ]] || fail "outbound passthrough: '$out'"
# Inbound HTTP to the app's own port: the port's chain, delivered to the app from
# 127.0.0.6 (upstream_bind_config), whatever the Host.
out=$(ip netns exec "$CLI" curl -s --max-time 5 -H 'host: reviews.other.svc' http://10.216.0.2:8080/in)
[[ "$out" == "app 127.0.0.6 GET /in HTTP/1.1" ]] || fail "inbound HTTP: '$out'"
# Inbound non-HTTP to a pod port without chains of its own: virtualInbound's TCP
# passthrough chain (InboundPassthroughClusterIpv4), also from 127.0.0.6. (The app's
# port 8080 is an HTTP port in this config: raw bytes there get the HCM's 400, as in
# Envoy.)
out=$(raw "$CLI" 10.216.0.2 9999 "raw in")
[[ "$out" == "other 127.0.0.6 raw in" ]] || fail "inbound TCP: '$out'"

# The access log saw the passthrough.
sleep 0.3
grep -q ' PassthroughCluster ' "$WORK/access.log" || fail "no PassthroughCluster line in the access log"
echo "PASS: captured sidecar listeners in network namespaces"
