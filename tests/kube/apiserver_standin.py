#!/usr/bin/env python3
"""A stand-in for the Kubernetes API server, for tests: the real wire protocol over a
small in-memory store (Python standard library only).

What it speaks, as kube-apiserver does:
  - discovery (/version, /api, /api/v1, /apis, /apis/<group>/<version>) for kubectl;
  - namespaces, pods, serviceaccounts (v1), daemonsets (apps/v1): get, list, watch,
    create (POST), update (PUT), patch (merge, strategic-merge for maps, JSON patch),
    delete;
  - lists with resourceVersion, `limit` + `continue` (a token names the list's
    resourceVersion and is served from that version; once compacted past it, 410
    Expired), fieldSelector (metadata.name, metadata.namespace, spec.nodeName,
    status.phase) and labelSelector (=, ==, !=, exists, !exists, in, notin);
  - watches: chunked, one JSON event a line, ADDED/MODIFIED/DELETED (a selector's
    view: an object that stops matching is DELETED), BOOKMARK with allowWatchBookmarks
    (periodically and before the timeout ends the stream), timeoutSeconds, and an ERROR
    event with a 410 Expired Status for a resourceVersion older than the compaction;
  - TokenRequest (serviceaccounts/<sa>/token: a token for the service account with
    audiences and an optional bound pod) and TokenReview (authenticated, user,
    audiences; status.error when not);
  - errors as Status objects: 400 BadRequest, 401 Unauthorized (no or unknown bearer
    token), 403 Forbidden (rules the test sets, with the real message), 404 NotFound,
    409 AlreadyExists / Conflict, 410 Expired.

Bearer tokens: --tokens-file (JSON {"token": "username"} or lines "token username"),
re-read when it changes, plus the tokens TokenRequest issued (valid for the API when
their audiences include the API's own).

Test controls, not part of the API (no authentication), under /_standin/:
  POST compact            older resourceVersions expire (410); {"after_list_pages": N}:
                          once N more list pages are served (a continue token expires)
  POST stop-watches       end every open watch now
  POST stall {"all": b, "watches": b}   hold API requests (or only watches) until unset
  POST tokens {"tokens": {...}}         replace the tokens (as the file would)
  POST forbid {"rules": [{"user", "verb", "resource", "namespace"?}]}  ("*" matches all)
  GET  stats              resourceVersion, compaction, open watches, request counts

usage: apiserver_standin.py [--port N] [--port-file F] [--tls-cert F --tls-key F]
                            [--tokens-file F] [--bookmark-interval S] [--verbose]
Prints "listening on PORT" to stdout once it listens.
"""
import argparse
import base64
import copy
import datetime
import http.server
import json
import os
import re
import secrets
import ssl
import sys
import threading
import time
import urllib.parse
import uuid

API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"

# resource -> (group, version, kind, namespaced, verbs)
RESOURCES = {
    ("", "namespaces"): ("", "v1", "Namespace", False),
    ("", "pods"): ("", "v1", "Pod", True),
    ("", "serviceaccounts"): ("", "v1", "ServiceAccount", True),
    ("apps", "daemonsets"): ("apps", "v1", "DaemonSet", True),
}
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
SHORT = {"pods": ["po"], "namespaces": ["ns"], "serviceaccounts": ["sa"], "daemonsets": ["ds"]}


def now_rfc3339(offset=0):
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=offset)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def status(code, reason, message, details=None):
    s = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
         "message": message, "reason": reason, "code": code}
    if details is not None:
        s["details"] = details
    return s


class ApiError(Exception):
    def __init__(self, code, reason, message, details=None):
        super().__init__(message)
        self.body = status(code, reason, message, details)
        self.code = code


def not_found(resource, name):
    return ApiError(404, "NotFound", f'{resource} "{name}" not found',
                    {"name": name, "kind": resource})


# ---- selectors ----

def split_top(s):
    """Splits at commas outside parentheses."""
    parts, depth, cur = [], 0, ""
    for c in s:
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        if c == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += c
    if cur.strip():
        parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def parse_label_selector(s):
    reqs = []
    for p in split_top(s or ""):
        m = re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", p)
        if m:
            vals = {v.strip() for v in m.group(3).split(",") if v.strip()}
            reqs.append((m.group(1), m.group(2), vals))
            continue
        m = re.fullmatch(r"([\w./-]+)\s*(==|!=|=)\s*([\w./-]*)", p)
        if m:
            op = "!=" if m.group(2) == "!=" else "="
            reqs.append((m.group(1), op, {m.group(3)}))
            continue
        m = re.fullmatch(r"(!?)([\w./-]+)", p)
        if m:
            reqs.append((m.group(2), "!exists" if m.group(1) else "exists", set()))
            continue
        raise ApiError(400, "BadRequest", f'unable to parse requirement: "{p}"')
    return reqs


def labels_match(reqs, labels):
    labels = labels or {}
    for key, op, vals in reqs:
        has = key in labels
        v = labels.get(key)
        if op == "=" and not (has and v in vals):
            return False
        if op == "!=" and has and v in vals:
            return False
        if op == "in" and not (has and v in vals):
            return False
        if op == "notin" and has and v in vals:
            return False
        if op == "exists" and not has:
            return False
        if op == "!exists" and has:
            return False
    return True


FIELDS = {
    "metadata.name": lambda o: o["metadata"].get("name", ""),
    "metadata.namespace": lambda o: o["metadata"].get("namespace", ""),
    "spec.nodeName": lambda o: (o.get("spec") or {}).get("nodeName", ""),
    "status.phase": lambda o: (o.get("status") or {}).get("phase", ""),
}


def parse_field_selector(s):
    reqs = []
    for p in split_top(s or ""):
        m = re.fullmatch(r"([\w.]+)\s*(==|!=|=)\s*(.*)", p)
        if not m:
            raise ApiError(400, "BadRequest", f'invalid selector: \'{s}\'; can\'t understand \'{p}\'')
        if m.group(1) not in FIELDS:
            raise ApiError(400, "BadRequest", f'"{m.group(1)}" is not a known field selector: '
                           f'only "{", ".join(FIELDS)}"')
        reqs.append((m.group(1), m.group(2) != "!=", m.group(3)))
    return reqs


def fields_match(reqs, obj):
    return all((FIELDS[f](obj) == v) == eq for f, eq, v in reqs)


# ---- patches ----

def merge_patch(target, patch):
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(target, dict):
        target = {}
    out = dict(target)
    for k, v in patch.items():
        if k.startswith("$"):  # strategic-merge directives: not needed for maps
            continue
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def json_patch(target, ops):
    doc = copy.deepcopy(target)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent.setdefault(p, {})
        last = parts[-1]
        kind = op["op"]
        if kind in ("add", "replace"):
            if isinstance(parent, list):
                idx = len(parent) if last == "-" else int(last)
                if kind == "add":
                    parent.insert(idx, op["value"])
                else:
                    parent[idx] = op["value"]
            else:
                if kind == "replace" and last not in parent:
                    raise ApiError(422, "Invalid", f"replace {op['path']}: no such member")
                parent[last] = op["value"]
        elif kind == "remove":
            if isinstance(parent, list):
                del parent[int(last)]
            elif last in parent:
                del parent[last]
            else:
                raise ApiError(422, "Invalid", f"remove {op['path']}: no such member")
        elif kind == "test":
            if parent.get(last) != op.get("value"):
                raise ApiError(422, "Invalid", f"test {op['path']} failed")
        else:
            raise ApiError(400, "BadRequest", f"json patch op {kind} is not supported")
    return doc


# ---- protobuf bodies ----
# kubectl's typed clients (create namespace, create token) send protobuf. The envelope is
# "k8s\0" + runtime.Unknown{typeMeta=1{apiVersion=1, kind=2}, raw=2}; the few kinds they
# send here are decoded by field number into the JSON shape.

def pb_fields(data):
    i, out = 0, []
    while i < len(data):
        key, i = pb_varint(data, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, i = pb_varint(data, i)
        elif wire == 2:
            n, i = pb_varint(data, i)
            val, i = data[i:i + n], i + n
        elif wire == 1:
            val, i = data[i:i + 8], i + 8
        elif wire == 5:
            val, i = data[i:i + 4], i + 4
        else:
            raise ApiError(400, "BadRequest", f"protobuf: wire type {wire} is not supported")
        out.append((num, val))
    return out


def pb_varint(data, i):
    shift = value = 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


PB_MAP = "map"
PB_REPEATED = "repeated"
PB_META = {1: "name", 2: "generateName", 3: "namespace", 5: "uid", 6: "resourceVersion",
           11: ("labels", PB_MAP), 12: ("annotations", PB_MAP)}
PB_KINDS = {
    "Namespace": {1: ("metadata", PB_META)},
    "ServiceAccount": {1: ("metadata", PB_META)},
    "TokenRequest": {1: ("metadata", PB_META), 2: ("spec", {
        1: ("audiences", PB_REPEATED), 4: ("expirationSeconds", int),
        3: ("boundObjectRef", {1: "kind", 2: "apiVersion", 3: "name", 4: "uid"})})},
    "DeleteOptions": {},
}


def pb_decode(data, schema):
    out = {}
    for num, val in pb_fields(data):
        spec = schema.get(num)
        if spec is None:
            continue
        if isinstance(spec, str):
            if val:
                out[spec] = val.decode()
            continue
        name, kind = spec
        if kind is int:
            out[name] = val
        elif kind == PB_REPEATED:
            out.setdefault(name, []).append(val.decode())
        elif kind == PB_MAP:
            entry = dict(pb_fields(val))
            out.setdefault(name, {})[entry.get(1, b"").decode()] = entry.get(2, b"").decode()
        else:
            out[name] = pb_decode(val, kind)
    return out


def protobuf_object(raw):
    if not raw.startswith(b"k8s\0"):
        raise ApiError(400, "BadRequest", "protobuf body without the k8s envelope")
    env = dict(pb_fields(raw[4:]))
    tm = dict(pb_fields(env.get(1, b"")))
    api_version, kind = tm.get(1, b"").decode(), tm.get(2, b"").decode()
    if kind not in PB_KINDS:
        raise ApiError(415, "UnsupportedMediaType",
                       f"this stand-in decodes protobuf {', '.join(PB_KINDS)} only, not {kind}; "
                       "send application/json")
    obj = pb_decode(env.get(2, b""), PB_KINDS[kind])
    obj["apiVersion"], obj["kind"] = api_version, kind
    return obj


# ---- the store ----

class Store:
    def __init__(self):
        self.lock = threading.Condition()
        self.rv = 1
        self.horizon = 0          # resourceVersions below this are compacted (410)
        self.objects = {r: {} for r in RESOURCES}   # (group, resource) -> key -> object
        self.log = []             # (rv, resource, type, key, obj, prev)
        self.watch_gen = 0        # bumped by stop-watches
        self.stall_all = False
        self.stall_watches = False
        self.open_watches = 0
        self.requests = {}
        self.issued = {}          # token -> {username, audiences, expires, pod: (ns, name, uid)}
        self.static_tokens = {}
        self.forbid = []
        self.compact_after_pages = 0

    def next_rv(self):
        self.rv += 1
        return self.rv

    def record(self, res, typ, key, obj, prev):
        self.log.append((int(obj["metadata"]["resourceVersion"]), res, typ, key,
                         copy.deepcopy(obj), copy.deepcopy(prev)))
        self.lock.notify_all()

    def state_at(self, res, rv):
        """The collection as it was at resourceVersion rv (rv >= horizon)."""
        state = dict(self.objects[res])
        for erv, eres, typ, key, obj, prev in reversed(self.log):
            if erv <= rv:
                break
            if eres != res:
                continue
            if typ == "ADDED":
                state.pop(key, None)
            else:
                state[key] = prev
        return state

    def compact(self):
        self.horizon = self.rv
        self.log = [e for e in self.log if e[0] > self.horizon]


def key_of(ns, name):
    return f"{ns}/{name}" if ns else name


def sort_key(k):
    return tuple(k.split("/"))


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sluice-apiserver-standin"
    store: Store = None
    opts = None

    def log_message(self, fmt, *args):
        if self.opts.verbose:
            sys.stderr.write("standin: " + (fmt % args) + "\n")

    # ---- plumbing ----

    def send_json(self, code, body, content_type="application/json"):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        raw = self.raw_body
        if not raw:
            return None
        ctype = (self.headers.get("Content-Type") or "application/json").split(";")[0].strip()
        if ctype == "application/vnd.kubernetes.protobuf":
            return protobuf_object(raw)
        if not ctype.endswith("json"):
            raise ApiError(415, "UnsupportedMediaType",
                           f'the body of the request was in an unknown format - accepted media '
                           'types include: application/json, application/json-patch+json, '
                           'application/merge-patch+json, application/strategic-merge-patch+json')
        try:
            return json.loads(raw)
        except ValueError as e:
            raise ApiError(400, "BadRequest", f"the request body is not JSON: {e}")

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def do_PUT(self):
        self.dispatch("PUT")

    def do_PATCH(self):
        self.dispatch("PATCH")

    def do_DELETE(self):
        self.dispatch("DELETE")

    def dispatch(self, method):
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
        path = url.path.rstrip("/") or "/"
        # read the whole body first, so an early error leaves the connection usable
        n = int(self.headers.get("Content-Length") or 0)
        self.raw_body = self.rfile.read(n) if n else b""
        try:
            if path.startswith("/_standin/"):
                return self.control(method, path[len("/_standin/"):])
            user = self.authenticate()
            self.wait_unstalled(query)
            return self.api(method, path, query, user)
        except ApiError as e:
            return self.send_json(e.code, e.body)
        except (BrokenPipeError, ConnectionResetError):
            return None

    def wait_unstalled(self, query):
        watch = query.get("watch") in ("true", "1")
        st = self.store
        with st.lock:
            while st.stall_all or (watch and st.stall_watches):
                st.lock.wait(0.1)

    def authenticate(self):
        auth = self.headers.get("Authorization", "")
        unauthorized = ApiError(401, "Unauthorized", "Unauthorized")
        if not auth.startswith("Bearer "):
            raise unauthorized
        token = auth[len("Bearer "):].strip()
        self.server.reload_tokens()
        st = self.store
        with st.lock:
            if token in st.static_tokens:
                return st.static_tokens[token]
            info = st.issued.get(token)
            if info and self.token_valid(info) is None and API_AUDIENCE in info["audiences"]:
                return info["username"]
        raise unauthorized

    def token_valid(self, info):
        """None when the issued token is valid, else why not (under the lock)."""
        if time.time() > info["expires"]:
            return "token has expired"
        if info.get("pod"):
            ns, name, uid = info["pod"]
            pod = self.store.objects[("", "pods")].get(key_of(ns, name))
            if pod is None or (uid and pod["metadata"]["uid"] != uid):
                return f'pod "{name}" (uid {uid}) of the bound token no longer exists'
        return None

    def check_forbidden(self, user, verb, group, resource, ns, name):
        for rule in self.store.forbid:
            if all(rule.get(k, "*") in ("*", v) for k, v in
                   (("user", user), ("verb", verb), ("resource", resource))) and \
                    rule.get("namespace", "*") in ("*", ns or ""):
                what = f'{resource} "{name}"' if name else resource
                scope = f'in the namespace "{ns}"' if ns else "at the cluster scope"
                details = {"kind": resource}
                if name:
                    details["name"] = name
                if group:
                    details["group"] = group
                raise ApiError(403, "Forbidden",
                               f'{what} is forbidden: User "{user}" cannot {verb} resource '
                               f'"{resource}" in API group "{group}" {scope}', details)

    # ---- test controls ----

    def control(self, method, what):
        st = self.store
        body = json.loads(self.raw_body) if self.raw_body else None
        with st.lock:
            if what == "compact":
                after = int((body or {}).get("after_list_pages", 0))
                if after:  # later: once that many list pages are served, then a write
                    st.compact_after_pages = after
                else:
                    st.compact()
            elif what == "stop-watches":
                st.watch_gen += 1
            elif what == "stall":
                st.stall_all = bool((body or {}).get("all", False))
                st.stall_watches = bool((body or {}).get("watches", False))
            elif what == "tokens":
                st.static_tokens = dict((body or {}).get("tokens", {}))
            elif what == "forbid":
                st.forbid = list((body or {}).get("rules", []))
            elif what != "stats":
                raise ApiError(404, "NotFound", f"no control {what}")
            st.lock.notify_all()
            return self.send_json(200, {"resourceVersion": st.rv, "horizon": st.horizon,
                                        "openWatches": st.open_watches,
                                        "requests": st.requests})

    # ---- discovery ----

    def discovery(self, path):
        if path == "/version":
            return {"major": "1", "minor": "32", "gitVersion": "v1.32.0-sluice-standin",
                    "gitCommit": "0" * 40, "gitTreeState": "clean",
                    "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23",
                    "compiler": "gc", "platform": "linux/amd64"}
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": self.server.address}]}
        if path == "/apis":
            groups = []
            for g in ("apps", "authentication.k8s.io"):
                gv = {"groupVersion": f"{g}/v1", "version": "v1"}
                groups.append({"name": g, "versions": [gv], "preferredVersion": gv})
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
        lists = {"/api/v1": "v1", "/apis/apps/v1": "apps/v1",
                 "/apis/authentication.k8s.io/v1": "authentication.k8s.io/v1"}
        if path in lists:
            gv = lists[path]
            group = gv.split("/")[0] if "/" in gv else ""
            res = []
            for (g, r), (_, _, kind, namespaced) in RESOURCES.items():
                if g == group:
                    res.append({"name": r, "singularName": kind.lower(), "namespaced": namespaced,
                                "kind": kind, "verbs": VERBS, "shortNames": SHORT.get(r, [])})
            if group == "":
                res.append({"name": "serviceaccounts/token", "singularName": "",
                            "namespaced": True, "group": "authentication.k8s.io",
                            "version": "v1", "kind": "TokenRequest", "verbs": ["create"]})
            if group == "authentication.k8s.io":
                res.append({"name": "tokenreviews", "singularName": "tokenreview",
                            "namespaced": False, "kind": "TokenReview", "verbs": ["create"]})
            return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                    "resources": res}
        return None

    # ---- the API ----

    def api(self, method, path, query, user):
        if method == "GET":
            d = self.discovery(path)
            if d is not None:
                return self.send_json(200, d)
        if path == "/apis/authentication.k8s.io/v1/tokenreviews" and method == "POST":
            self.count("create", "tokenreviews")
            self.check_forbidden(user, "create", "authentication.k8s.io", "tokenreviews", "", "")
            return self.send_json(201, self.review(self.body() or {}))
        m = re.fullmatch(r"/(?:api/v1|apis/(apps)/v1)(?:/namespaces/([^/]+))?/([a-z]+)"
                         r"(?:/([^/]+))?(?:/([a-z]+))?", path)
        if not m:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        group, ns, resource, name, sub = m.group(1) or "", m.group(2), m.group(3), m.group(4), m.group(5)
        if (group, resource) not in RESOURCES:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        _, version, kind, namespaced = RESOURCES[(group, resource)]
        # a cluster-scoped kind under a namespace, or a namespaced object or write without one
        if (not namespaced and ns is not None) or \
                (namespaced and ns is None and (name is not None or method != "GET")):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        res = (group, resource)
        if sub == "token" and resource == "serviceaccounts" and method == "POST":
            self.count("create", "serviceaccounts/token")
            self.check_forbidden(user, "create", group, "serviceaccounts/token", ns, name)
            return self.send_json(201, self.token_request(ns, name, self.body() or {}))
        if sub is not None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if name is None:
            if method == "GET":
                watch = query.get("watch") in ("true", "1")
                verb = "watch" if watch else "list"
                self.count(verb, resource)
                self.check_forbidden(user, verb, group, resource, ns, "")
                if watch:
                    return self.watch(res, kind, group, version, ns, query)
                return self.send_json(200, self.list(res, kind, group, version, ns, query))
            if method == "POST":
                self.count("create", resource)
                self.check_forbidden(user, "create", group, resource, ns, "")
                return self.send_json(201, self.create(res, kind, group, version, ns, self.body()))
            raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on the requested resource")
        verb = {"GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method)
        if verb is None:
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        self.count(verb, resource)
        self.check_forbidden(user, verb, group, resource, ns, name)
        st = self.store
        key = key_of(ns, name)
        with st.lock:
            cur = st.objects[res].get(key)
            if method == "GET":
                if cur is None:
                    raise not_found(resource, name)
                return self.send_json(200, cur)
            if method == "DELETE":
                if cur is None:
                    raise not_found(resource, name)
                self.delete(res, key)
                if resource == "namespaces":  # the namespace's objects go with it
                    for r in RESOURCES:
                        if RESOURCES[r][3]:
                            for k in [k for k in st.objects[r] if k.startswith(name + "/")]:
                                self.delete(r, k)
                return self.send_json(200, cur)
            body = self.body()
            if method == "PUT":
                if cur is None:
                    raise not_found(resource, name)
                want = (body or {}).get("metadata", {}).get("resourceVersion")
                if want and want != cur["metadata"]["resourceVersion"]:
                    raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {resource} '
                                   f'"{name}": the object has been modified; please apply your '
                                   'changes to the latest version and try again',
                                   {"name": name, "kind": resource})
                new = body
            else:
                if cur is None:
                    raise not_found(resource, name)
                ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
                if ctype == "application/json-patch+json":
                    new = json_patch(cur, body or [])
                elif ctype in ("application/merge-patch+json",
                               "application/strategic-merge-patch+json"):
                    new = merge_patch(cur, body or {})
                else:
                    raise ApiError(415, "UnsupportedMediaType",
                                   f'the body of the request was in an unknown format - accepted '
                                   'media types include: application/json-patch+json, '
                                   'application/merge-patch+json, '
                                   'application/strategic-merge-patch+json')
            return self.send_json(200, self.update(res, key, cur, new))

    def count(self, verb, resource):
        with self.store.lock:
            k = f"{verb} {resource}"
            self.store.requests[k] = self.store.requests.get(k, 0) + 1

    # store changes, under the lock

    def create(self, res, kind, group, version, ns, obj):
        st = self.store
        if not isinstance(obj, dict):
            raise ApiError(400, "BadRequest", "the request body must be an object")
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        name = meta.get("name")
        if not name:
            raise ApiError(422, "Invalid", f'{res[1]} "" is invalid: metadata.name: Required value: '
                           'name or generateName is required')
        with st.lock:
            if ns is not None:
                if key_of("", ns) not in st.objects[("", "namespaces")]:
                    raise not_found("namespaces", ns)
                meta["namespace"] = ns
            key = key_of(ns, name)
            if key in st.objects[res]:
                raise ApiError(409, "AlreadyExists", f'{res[1]} "{name}" already exists',
                               {"name": name, "group": group, "kind": res[1]} if group else
                               {"name": name, "kind": res[1]})
            obj["apiVersion"] = f"{group}/{version}" if group else version
            obj["kind"] = kind
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_rfc3339()
            meta["resourceVersion"] = str(st.next_rv())
            meta.pop("deletionTimestamp", None)
            if res == ("", "pods"):
                obj.setdefault("status", {}).setdefault("phase", "Pending")
            if res == ("", "namespaces"):
                obj.setdefault("status", {"phase": "Active"})
                meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
            st.objects[res][key] = obj
            st.record(res, "ADDED", key, obj, None)
            if res == ("", "namespaces"):  # the service account controller's "default"
                self.create(("", "serviceaccounts"), "ServiceAccount", "", "v1", name,
                            {"metadata": {"name": "default"}})
            return copy.deepcopy(obj)

    def update(self, res, key, cur, new):
        st = self.store
        new = copy.deepcopy(new)
        meta = new.setdefault("metadata", {})
        for k in ("name", "namespace", "uid", "creationTimestamp"):
            if k in cur["metadata"]:
                meta[k] = cur["metadata"][k]
        new["apiVersion"], new["kind"] = cur["apiVersion"], cur["kind"]
        if res == ("", "namespaces"):
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
        meta["resourceVersion"] = cur["metadata"]["resourceVersion"]
        if new == cur:  # a no-op write keeps the version, as the real server does
            return copy.deepcopy(cur)
        meta["resourceVersion"] = str(st.next_rv())
        st.objects[res][key] = new
        st.record(res, "MODIFIED", key, new, cur)
        return copy.deepcopy(new)

    def delete(self, res, key):
        st = self.store
        cur = st.objects[res].pop(key)
        gone = copy.deepcopy(cur)
        gone["metadata"]["resourceVersion"] = str(st.next_rv())
        st.record(res, "DELETED", key, gone, cur)

    # lists and watches

    def list(self, res, kind, group, version, ns, query):
        st = self.store
        labels = parse_label_selector(query.get("labelSelector", ""))
        fields = parse_field_selector(query.get("fieldSelector", ""))
        limit = int(query.get("limit") or 0)
        cont = query.get("continue", "")
        with st.lock:
            if cont:
                try:
                    token = json.loads(base64.urlsafe_b64decode(cont.encode()))
                    rv, start = int(token["rv"]), token["start"]
                except (ValueError, KeyError, TypeError):
                    raise ApiError(400, "BadRequest", "continue key is not valid: "
                                   "incorrect encoded start resourceVersion (version meta.k8s.io/v1)")
                if rv < st.horizon:
                    raise ApiError(410, "Expired",
                                   "The provided continue parameter is too old to display a "
                                   "consistent list result. You can start a new list without the "
                                   "continue parameter, or use the continue token in this response "
                                   "to retrieve the remainder of the results. Continuing with the "
                                   "provided token results in an inconsistent list - objects that "
                                   "were created, modified, or deleted between the time the first "
                                   "chunk was returned and now may show up in the list.")
                state = st.state_at(res, rv)
            else:
                rv, start = st.rv, ""
                state = st.objects[res]
            items = []
            for k in sorted(state, key=sort_key):
                o = state[k]
                if ns is not None and o["metadata"].get("namespace") != ns:
                    continue
                if start and sort_key(k) <= sort_key(start):
                    continue
                if not labels_match(labels, o["metadata"].get("labels")) or not fields_match(fields, o):
                    continue
                items.append(k)
            meta = {"resourceVersion": str(rv)}
            if limit and len(items) > limit:
                meta["continue"] = base64.urlsafe_b64encode(json.dumps(
                    {"v": "meta.k8s.io/v1", "rv": rv, "start": items[limit - 1]}).encode()).decode()
                meta["remainingItemCount"] = len(items) - limit
                items = items[:limit]
            out = []
            for k in items:
                o = copy.deepcopy(state[k])
                o.pop("apiVersion", None)
                o.pop("kind", None)
                out.append(o)
            if st.compact_after_pages:
                st.compact_after_pages -= 1
                if not st.compact_after_pages:
                    st.next_rv()  # a write elsewhere (leases and events never rest)
                    st.compact()
        return {"kind": kind + "List", "apiVersion": f"{group}/{version}" if group else version,
                "metadata": meta, "items": out}

    def watch(self, res, kind, group, version, ns, query):
        st = self.store
        labels = parse_label_selector(query.get("labelSelector", ""))
        fields = parse_field_selector(query.get("fieldSelector", ""))
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        timeout = float(query.get("timeoutSeconds") or 1800)
        rv_param = query.get("resourceVersion", "")
        api_version = f"{group}/{version}" if group else version

        def matches(o):
            if o is None:
                return False
            if ns is not None and o["metadata"].get("namespace") != ns:
                return False
            return labels_match(labels, o["metadata"].get("labels")) and fields_match(fields, o)

        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()

        def send(event):
            data = json.dumps(event).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        def end():
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

        with st.lock:
            st.open_watches += 1
            gen = st.watch_gen
            initial = []
            if rv_param in ("", "0"):
                pos = st.rv
                for k in sorted(st.objects[res], key=sort_key):
                    if matches(st.objects[res][k]):
                        initial.append({"type": "ADDED", "object": copy.deepcopy(st.objects[res][k])})
            else:
                try:
                    pos = int(rv_param)
                except ValueError:
                    pos = -1
                if pos < st.horizon:
                    st.open_watches -= 1
                    err = status(410, "Expired", f"too old resource version: {rv_param} ({st.horizon})")
                    err.pop("details", None)
                    send({"type": "ERROR", "object": err})
                    end()
                    return None
        deadline = time.monotonic() + timeout
        next_bookmark = time.monotonic() + self.opts.bookmark_interval
        try:
            for e in initial:
                send(e)
            while True:
                out = []
                with st.lock:
                    for erv, eres, typ, key, obj, prev in st.log:
                        if erv <= pos or eres != res:
                            continue
                        now_m, was_m = matches(obj), matches(prev)
                        if typ == "MODIFIED":
                            typ = ("MODIFIED" if was_m else "ADDED") if now_m else \
                                ("DELETED" if was_m else None)
                        elif not now_m:
                            typ = None
                        if typ:
                            out.append({"type": typ, "object": obj})
                    pos = max(pos, st.rv)
                    stopped = st.watch_gen != gen
                    if not out and not stopped:
                        st.lock.wait(min(0.2, max(0.0, deadline - time.monotonic())))
                for e in out:
                    send(e)
                if stopped:
                    break
                nowt = time.monotonic()
                done = nowt >= deadline
                if bookmarks and (nowt >= next_bookmark or done):
                    # bookmarks carry the version the watch has reached
                    send({"type": "BOOKMARK", "object": {
                        "kind": kind, "apiVersion": api_version,
                        "metadata": {"resourceVersion": str(pos),
                                     "creationTimestamp": None}}})
                    next_bookmark = nowt + self.opts.bookmark_interval
                if done:
                    break
            end()
        finally:
            with st.lock:
                st.open_watches -= 1
        return None

    # tokens

    def token_request(self, ns, sa, body):
        st = self.store
        spec = body.get("spec") or {}
        with st.lock:
            if key_of(ns, sa) not in st.objects[("", "serviceaccounts")]:
                raise not_found("serviceaccounts", sa)
            audiences = spec.get("audiences") or [API_AUDIENCE]
            seconds = int(spec.get("expirationSeconds") or 3600)
            pod = None
            ref = spec.get("boundObjectRef")
            if ref:
                if ref.get("kind") != "Pod":
                    raise ApiError(400, "BadRequest", f'cannot bind token to {ref.get("kind")}: '
                                   'only Pod is supported by this stand-in')
                cur = st.objects[("", "pods")].get(key_of(ns, ref.get("name", "")))
                if cur is None:
                    raise not_found("pods", ref.get("name", ""))
                if ref.get("uid") and ref["uid"] != cur["metadata"]["uid"]:
                    raise ApiError(409, "Conflict", f'the UID in the bound object reference '
                                   f'({ref["uid"]}) does not match the UID in record. The object '
                                   'might have been deleted and then recreated')
                pod = (ns, ref["name"], cur["metadata"]["uid"])
            token = "standin." + secrets.token_urlsafe(24)
            st.issued[token] = {"username": f"system:serviceaccount:{ns}:{sa}",
                                "audiences": audiences, "expires": time.time() + seconds,
                                "pod": pod, "ns": ns, "sa": sa}
        out_spec = dict(spec)
        out_spec["audiences"] = audiences
        out_spec["expirationSeconds"] = seconds
        return {"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"name": sa, "namespace": ns, "creationTimestamp": now_rfc3339()},
                "spec": out_spec,
                "status": {"token": token, "expirationTimestamp": now_rfc3339(seconds)}}

    def review(self, body):
        st = self.store
        spec = body.get("spec") or {}
        token = spec.get("token", "")
        want = spec.get("audiences") or []
        out = {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
               "metadata": {"creationTimestamp": None}, "spec": spec, "status": {}}
        self.server.reload_tokens()
        with st.lock:
            if token in st.static_tokens:
                have = [API_AUDIENCE]
                user = {"username": st.static_tokens[token], "groups": ["system:authenticated"]}
                why = None
            elif token in st.issued:
                info = st.issued[token]
                have = info["audiences"]
                user = {"username": info["username"], "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, info["username"])),
                        "groups": ["system:serviceaccounts", f"system:serviceaccounts:{info['ns']}",
                                   "system:authenticated"]}
                if info.get("pod"):
                    user["extra"] = {"authentication.kubernetes.io/pod-name": [info["pod"][1]],
                                     "authentication.kubernetes.io/pod-uid": [info["pod"][2]]}
                why = self.token_valid(info)
            else:
                out["status"] = {"user": {}, "error": "[invalid bearer token, token lookup failed]"}
                return out
        target = want or [API_AUDIENCE]
        common = [a for a in target if a in have]
        if why is None and not common:
            why = f"token audiences {json.dumps(have)} is invalid for the target audiences {json.dumps(target)}"
        if why is not None:
            out["status"] = {"user": {}, "error": f"[invalid bearer token, {why}]"}
            return out
        out["status"] = {"authenticated": True, "user": user, "audiences": common}
        return out


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, handler, opts, store):
        super().__init__(addr, handler)
        self.opts = opts
        self.store = store
        self.tokens_stamp = None
        scheme = "https" if opts.tls_cert else "http"
        self.address = f"127.0.0.1:{self.server_address[1]}"
        self.url = f"{scheme}://{self.address}"

    def reload_tokens(self):
        path = self.opts.tokens_file
        if not path:
            return
        try:
            stt = os.stat(path)
        except OSError:
            return
        stamp = (stt.st_mtime_ns, stt.st_size, stt.st_ino)
        if stamp == self.tokens_stamp:
            return
        with open(path) as f:
            text = f.read()
        tokens = {}
        if text.strip().startswith("{"):
            tokens = json.loads(text)
        else:
            for line in text.splitlines():
                parts = line.split()
                if len(parts) >= 2 and not parts[0].startswith("#"):
                    tokens[parts[0]] = parts[1]
        with self.store.lock:
            self.store.static_tokens = tokens
            self.tokens_stamp = stamp


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--tokens-file")
    ap.add_argument("--bookmark-interval", type=float, default=1.0)
    ap.add_argument("--verbose", action="store_true")
    opts = ap.parse_args()
    store = Store()
    Handler.store = store
    Handler.opts = opts
    srv = Server(("127.0.0.1", opts.port), Handler, opts, store)
    seed = Handler.__new__(Handler)  # the namespaces every cluster starts with
    for ns in ("default", "kube-system"):
        seed.create(("", "namespaces"), "Namespace", "", "v1", None, {"metadata": {"name": ns}})
    if opts.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(opts.tls_cert, opts.tls_key)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    port = srv.server_address[1]
    if opts.port_file:
        tmp = opts.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{port}\n")
        os.rename(tmp, opts.port_file)
    print(f"listening on {port}", flush=True)
    try:
        srv.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
