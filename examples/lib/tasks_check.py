#!/usr/bin/env python3
"""Small readers used by the task checks (examples/NN-*/check.sh, examples/lib/tasks.sh)
to look inside JSON and logs.

Each subcommand reads what a user's command printed (state.json, `proxy-config -o
json`, `registryz`, access logs) and prints a few plain lines the shell script checks
and shows as evidence. Nothing here decides PASS or FAIL on its own except where the
subcommand says so (exit status 1 with a reason on stderr).
"""
import argparse
import json
import re
import sys


def load_json(path):
    try:
        if path == "-":
            return json.load(sys.stdin)
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        sys.exit(f"tasks_check: cannot read JSON from {path}: {e}")


def pods(args):
    """Pod names from the local cluster's state file, by owner or labels."""
    state = load_json(args.state)
    want = {}
    for kv in filter(None, (args.labels or "").split(",")):
        k, _, v = kv.partition("=")
        want[k] = v
    for p in state.get("pods", []):
        if args.namespace and p.get("namespace") != args.namespace:
            continue
        if args.owner and p.get("owner") != args.owner:
            continue
        labels = p.get("labels") or {}
        if any(labels.get(k) != v for k, v in want.items()):
            continue
        print(p["name"])


def state_field(args):
    state = load_json(args.state)
    value = state.get(args.field)
    if value is None:  # fields the runtime keeps with its settings
        value = (state.get("settings") or {}).get(args.field)
    if value is None:
        sys.exit(f"tasks_check: {args.state} has no field '{args.field}'")
    print(value if isinstance(value, str) else json.dumps(value))


def external_host(args):
    state = load_json(args.state)
    for h in state.get("external_hosts", []):
        if h.get("name") == args.name or args.name in (h.get("hostnames") or []):
            value = h.get(args.field)
            if value is None:  # the host's runtime record, as a pod
                value = (h.get("pod") or {}).get(args.field, "")
            print(value)
            return
    sys.exit(f"tasks_check: no external host '{args.name}' in {args.state}")


def resources(doc, kind_key):
    """The resources in a proxy-config/config_dump JSON, whatever its wrapping:
    a list, {"clusters": [...]}, or Envoy admin's {"cluster": {...}} entries."""
    if isinstance(doc, dict):
        for key in (kind_key, kind_key.rstrip("s"), "configs", "items"):
            if key in doc and isinstance(doc[key], list):
                return resources(doc[key], kind_key)
        for key in ("cluster", "route_config", "routeConfig"):
            if key in doc and isinstance(doc[key], dict):
                return [doc[key]]
        return [doc]
    out = []
    for item in doc or []:
        out.extend(resources(item, kind_key))
    return out


def clusters(args):
    """One line per cluster: NAME LBPOLICY (Envoy's default ROUND_ROBIN when unset)."""
    for c in resources(load_json(args.file), "clusters"):
        if "name" not in c:
            continue
        print(c["name"], c.get("lbPolicy", c.get("lb_policy", "ROUND_ROBIN")))


def walk(node):
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def weights(args):
    """One line per weighted cluster in the routes: CLUSTER WEIGHT."""
    for node in walk(load_json(args.file)):
        wc = node.get("weightedClusters") or node.get("weighted_clusters")
        if isinstance(wc, dict):
            for c in wc.get("clusters", []):
                w = c.get("weight", 0)
                if isinstance(w, dict):  # UInt32Value in some JSON printers
                    w = w.get("value", 0)
                print(c.get("name"), w)


def mirrors(args):
    """One line per request mirror policy: CLUSTER PERCENT."""
    for node in walk(load_json(args.file)):
        for key in ("requestMirrorPolicies", "request_mirror_policies"):
            for m in node.get(key) or []:
                frac = (m.get("runtimeFraction") or m.get("runtime_fraction") or {}).get(
                    "defaultValue", {}
                )
                num = frac.get("numerator", 100 if not frac else 0)
                den = frac.get("denominator", "HUNDRED")
                scale = {"HUNDRED": 100, "TEN_THOUSAND": 10000, "MILLION": 1000000}.get(den, 100)
                print(m.get("cluster"), f"{100.0 * num / scale:g}%")


def registryz(args):
    """One line per registry entry whose hostname is asked for:
    HOSTNAME MeshExternal=… Resolution=… addresses=… endpoints=…"""
    doc = load_json(args.file)
    entries = doc if isinstance(doc, list) else doc.get("services", [])
    found = set()
    for e in entries:
        host = e.get("hostname") or e.get("Hostname")
        if host not in args.hosts:
            continue
        found.add(host)
        attrs = e.get("Attributes") or e.get("attributes") or {}
        addrs = []
        vips = (e.get("clusterVIPs") or {}).get("Addresses") or {}
        for per_cluster in vips.values() if isinstance(vips, dict) else []:
            addrs.extend(map(str, per_cluster or []))
        addrs = ",".join(addrs) or e.get("defaultAddress", "-")
        eps = e.get("endpoints") or e.get("Endpoints") or []
        ep_addrs = []
        for ep in eps if isinstance(eps, list) else []:
            if isinstance(ep, dict):
                ep_addrs.append(str(ep.get("address") or ep.get("Address") or ep))
            else:
                ep_addrs.append(str(ep))
        print(
            host,
            f"MeshExternal={str(e.get('MeshExternal', attrs.get('MeshExternal'))).lower()}",
            f"Resolution={e.get('Resolution', e.get('resolution', '-'))}",
            f"addresses={addrs}",
            f"endpoints={','.join(ep_addrs) or '-'}",
        )
    missing = [h for h in args.hosts if h not in found]
    if missing:
        print("not in the registry: " + " ".join(missing), file=sys.stderr)
        sys.exit(1)


def spread(args):
    """Counts helloworld answers by version: 'Hello version: vN, instance: POD'."""
    counts = {}
    other = 0
    total = 0
    samples = {}
    for line in open(args.file, errors="replace"):
        line = line.strip()
        if not line:
            continue
        total += 1
        m = re.match(r"Hello version: (\S+), instance: (\S+)", line)
        if m:
            counts[m.group(1)] = counts.get(m.group(1), 0) + 1
        else:
            other += 1
            samples[line] = samples.get(line, 0) + 1
    answered = sum(counts.values())
    print(f"answers={answered} other_lines={other}")
    for v in sorted(counts):
        print(f"{v} {counts[v]} {100.0 * counts[v] / max(answered, 1):.1f}")
    for line, n in sorted(samples.items(), key=lambda kv: -kv[1])[:3]:
        print(f"other: {n}x {line}")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pods")
    p.add_argument("--state", required=True)
    p.add_argument("--namespace", "-n")
    p.add_argument("--owner")
    p.add_argument("--labels")
    p.set_defaults(fn=pods)
    p = sub.add_parser("state")
    p.add_argument("--state", required=True)
    p.add_argument("field")
    p.set_defaults(fn=state_field)
    p = sub.add_parser("external")
    p.add_argument("--state", required=True)
    p.add_argument("name")
    p.add_argument("field")
    p.set_defaults(fn=external_host)
    for name, fn in (("clusters", clusters), ("weights", weights), ("mirrors", mirrors),
                     ("spread", spread)):
        p = sub.add_parser(name)
        p.add_argument("file")
        p.set_defaults(fn=fn)
    p = sub.add_parser("registryz")
    p.add_argument("file")
    p.add_argument("hosts", nargs="+")
    p.set_defaults(fn=registryz)
    args = ap.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
