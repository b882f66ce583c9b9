"""Starts tests/kube/apiserver_standin.py for a test: a private directory with a TLS
certificate for 127.0.0.1 (openssl), a tokens file, and a kubeconfig for kubectl."""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = pathlib.Path(__file__).resolve().parent
ADMIN_TOKEN = "standin-admin-token"


class Standin:
    def __init__(self, tls=True, bookmark_interval=1.0):
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="sluice-kube-"))
        self.tokens = self.dir / "tokens"
        self.tokens.write_text(f"{ADMIN_TOKEN} admin\n")
        args = [sys.executable, str(HERE / "apiserver_standin.py"), "--port-file",
                str(self.dir / "port"), "--tokens-file", str(self.tokens),
                "--bookmark-interval", str(bookmark_interval)]
        self.ca = None
        if tls:
            self.ca = self.dir / "cert.pem"
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                            "-keyout", str(self.dir / "key.pem"), "-out", str(self.ca),
                            "-days", "1", "-subj", "/CN=sluice-apiserver-standin",
                            "-addext", "subjectAltName=IP:127.0.0.1"],
                           check=True, capture_output=True)
            args += ["--tls-cert", str(self.ca), "--tls-key", str(self.dir / "key.pem")]
        self.log = open(self.dir / "standin.log", "w")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self.log)
        port_file = self.dir / "port"
        for _ in range(100):
            if port_file.exists():
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"the stand-in exited: {(self.dir / 'standin.log').read_text()}")
            time.sleep(0.05)
        else:
            raise RuntimeError("the stand-in wrote no port file in 5 s")
        self.port = int(port_file.read_text())
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.kubeconfig = self.dir / "kubeconfig"
        self.write_kubeconfig(ADMIN_TOKEN)

    def write_kubeconfig(self, token, path=None):
        cluster = {"server": self.url}
        if self.ca:
            cluster["certificate-authority"] = str(self.ca)
        config = {"apiVersion": "v1", "kind": "Config",
                  "clusters": [{"name": "standin", "cluster": cluster}],
                  "users": [{"name": "u", "user": {"token": token}}],
                  "contexts": [{"name": "c", "context": {"cluster": "standin", "user": "u"}}],
                  "current-context": "c"}
        (path or self.kubeconfig).write_text(json.dumps(config))  # JSON is YAML

    def control(self, what, body=None):
        """POST (or GET for stats) a /_standin/ control; returns its JSON answer."""
        import ssl
        ctx = ssl.create_default_context(cafile=str(self.ca)) if self.ca else None
        data = json.dumps(body or {}).encode() if what != "stats" else None
        req = urllib.request.Request(f"{self.url}/_standin/{what}", data=data,
                                     method="GET" if data is None else "POST")
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return json.loads(r.read())

    def api(self, method, path, body=None, token=ADMIN_TOKEN,
            content_type="application/json"):
        """One API request; returns (status, JSON answer)."""
        import ssl
        import urllib.error
        ctx = ssl.create_default_context(cafile=str(self.ca)) if self.ca else None
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def pod(ns, name, node="node-1", labels=None, sa="default", ip=None):
    p = {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
         "spec": {"nodeName": node, "serviceAccountName": sa,
                  "containers": [{"name": "app", "image": "sluice/sluice-apps"}]}}
    if ip:
        p["status"] = {"podIP": ip, "podIPs": [{"ip": ip}]}
    return p
