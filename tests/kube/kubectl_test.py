#!/usr/bin/env python3
"""The API stand-in speaks what real clients expect: the real kubectl, over TLS with a
bearer token, lists (paged too), labels, watches, deletes, creates tokens against it,
and reads its errors as it reads kube-apiserver's."""
import json
import os
import shutil
import subprocess
import sys
import time
import unittest

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import standin  # noqa: E402

KUBECTL = shutil.which("kubectl")


@unittest.skipIf(KUBECTL is None, "kubectl is not installed")
class KubectlAgainstStandin(unittest.TestCase):
    def setUp(self):
        self.s = standin.Standin()
        self.addCleanup(self.s.stop)
        for name, labels in (("demo", {}), ("other", {"team": "b"})):
            code, out = self.s.api("POST", "/api/v1/namespaces",
                                   {"metadata": {"name": name, "labels": labels}})
            self.assertEqual(code, 201, out)
        for i in range(3):
            code, out = self.s.api("POST", "/api/v1/namespaces/demo/pods",
                                   standin.pod("demo", f"p{i}", labels={"app": f"a{i}"}))
            self.assertEqual(code, 201, out)
        self.s.api("POST", "/api/v1/namespaces/other/pods", standin.pod("other", "q0", node="node-2"))

    def kubectl(self, *args, check=True, kubeconfig=None, timeout=30):
        env = dict(os.environ, KUBECONFIG=str(kubeconfig or self.s.kubeconfig))
        r = subprocess.run([KUBECTL, *args], env=env, capture_output=True, text=True,
                           timeout=timeout)
        if check and r.returncode != 0:
            self.fail(f"kubectl {' '.join(args)}: exit {r.returncode}: {r.stderr}")
        return r

    def test_get_pods_all_namespaces_json(self):
        out = json.loads(self.kubectl("get", "pods", "-A", "-o", "json").stdout)
        names = sorted(f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in out["items"])
        self.assertEqual(names, ["demo/p0", "demo/p1", "demo/p2", "other/q0"])

    def test_chunked_list_follows_continue(self):
        r = self.kubectl("get", "pods", "-A", "--chunk-size=1", "-o", "name", "-v=6")
        self.assertEqual(r.stdout.split(), ["pod/p0", "pod/p1", "pod/p2", "pod/q0"])
        pages = [l for l in r.stderr.splitlines() if "GET" in l and "/api/v1/pods?" in l]
        self.assertEqual(len(pages), 4, r.stderr)
        self.assertEqual(sum("continue=" in l for l in pages), 3, r.stderr)

    def test_selectors(self):
        r = self.kubectl("get", "pods", "-A", "-l", "app in (a0,a2)", "-o", "name")
        self.assertEqual(r.stdout.split(), ["pod/p0", "pod/p2"])
        r = self.kubectl("get", "pods", "-A", "--field-selector",
                         "spec.nodeName=node-1,metadata.name!=p1", "-o", "name")
        self.assertEqual(r.stdout.split(), ["pod/p0", "pod/p2"])
        r = self.kubectl("get", "ns", "-l", "team", "-o", "name")
        self.assertEqual(r.stdout.split(), ["namespace/other"])

    def test_label_namespace(self):
        self.kubectl("label", "ns", "demo", "istio.io/dataplane-mode=sluice")
        ns = json.loads(self.kubectl("get", "ns", "demo", "-o", "json").stdout)
        self.assertEqual(ns["metadata"]["labels"]["istio.io/dataplane-mode"], "sluice")
        self.kubectl("label", "ns", "demo", "istio.io/dataplane-mode-")
        ns = json.loads(self.kubectl("get", "ns", "demo", "-o", "json").stdout)
        self.assertNotIn("istio.io/dataplane-mode", ns["metadata"]["labels"])

    def test_watch_sees_changes(self):
        env = dict(os.environ, KUBECONFIG=str(self.s.kubeconfig))
        w = subprocess.Popen([KUBECTL, "get", "pods", "-n", "demo", "-w", "--output-watch-events",
                              "-o", "json"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.time() + 10
            while self.s.control("stats")["openWatches"] == 0:
                self.assertLess(time.time(), deadline, "kubectl opened no watch")
                time.sleep(0.1)
            self.kubectl("label", "pod", "p1", "-n", "demo", "version=v2")
            self.kubectl("delete", "pod", "p2", "-n", "demo")
            time.sleep(1.5)
        finally:
            w.terminate()
            out, err = w.communicate(timeout=10)
        events = [json.loads(d) for d in split_json(out)]
        seen = [(e["type"], e["object"]["metadata"]["name"]) for e in events]
        self.assertIn(("MODIFIED", "p1"), seen, err)
        self.assertIn(("DELETED", "p2"), seen, err)
        mod = [e for e in events if e["type"] == "MODIFIED" and e["object"]["metadata"]["name"] == "p1"]
        self.assertEqual(mod[0]["object"]["metadata"]["labels"]["version"], "v2")

    def test_delete_pod_then_not_found(self):
        r = self.kubectl("delete", "pod", "p0", "-n", "demo")
        self.assertIn('pod "p0" deleted', r.stdout)
        r = self.kubectl("get", "pod", "p0", "-n", "demo", check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn('Error from server (NotFound): pods "p0" not found', r.stderr)

    def test_unknown_token_is_unauthorized(self):
        bad = self.s.dir / "bad-kubeconfig"
        self.s.write_kubeconfig("not-a-token", bad)
        r = self.kubectl("get", "pods", "-A", check=False, kubeconfig=bad)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("error: You must be logged in to the server", r.stderr)

    def test_forbidden_has_the_real_message(self):
        self.s.control("forbid", {"rules": [{"user": "admin", "verb": "list", "resource": "pods"}]})
        r = self.kubectl("get", "pods", "-A", check=False)
        self.assertIn('Error from server (Forbidden): pods is forbidden: User "admin" cannot '
                      'list resource "pods" in API group "" at the cluster scope', r.stderr)
        r = self.kubectl("get", "pods", "-n", "demo", check=False)
        self.assertIn('in the namespace "demo"', r.stderr)

    def test_create_namespace_and_conflict(self):
        self.kubectl("create", "namespace", "fresh")  # protobuf from kubectl's typed client
        r = self.kubectl("create", "namespace", "fresh", check=False)
        self.assertIn('Error from server (AlreadyExists): namespaces "fresh" already exists',
                      r.stderr)

    def test_create_token_and_review_it(self):
        r = self.kubectl("create", "token", "default", "-n", "demo", "--audience", "istio-ca",
                         "--duration", "1h", "--bound-object-kind", "Pod",
                         "--bound-object-name", "p1")
        token = r.stdout.strip()
        self.assertTrue(token)
        code, review = self.s.api("POST", "/apis/authentication.k8s.io/v1/tokenreviews",
                                  {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                                   "spec": {"token": token, "audiences": ["istio-ca"]}})
        self.assertEqual(code, 201, review)
        self.assertTrue(review["status"]["authenticated"], review)
        self.assertEqual(review["status"]["user"]["username"], "system:serviceaccount:demo:default")
        # the bound pod gone, the token is dead
        self.kubectl("delete", "pod", "p1", "-n", "demo")
        _, review = self.s.api("POST", "/apis/authentication.k8s.io/v1/tokenreviews",
                               {"spec": {"token": token, "audiences": ["istio-ca"]}})
        self.assertFalse(review["status"].get("authenticated", False))
        self.assertIn("no longer exists", review["status"]["error"])
        r = self.kubectl("create", "token", "nobody", "-n", "demo", check=False)
        self.assertIn('serviceaccounts "nobody" not found', r.stderr)


def split_json(text):
    """kubectl -w -o json prints one pretty-printed object after another."""
    dec = json.JSONDecoder()
    i, out = 0, []
    text = text.strip()
    while i < len(text):
        obj, j = dec.raw_decode(text, i)
        out.append(json.dumps(obj))
        i = j
        while i < len(text) and text[i].isspace():
            i += 1
    return out


if __name__ == "__main__":
    unittest.main(verbosity=2)
