#!/usr/bin/python3
"""Validates Kubernetes manifests offline against the API's own models.

    validate_manifests.py (--kustomize DIR | FILE...) [--sluice-policy] [--expect-error PATH]...

Each object is walked against the typed models of Debian's python3-kubernetes (generated
from the API's OpenAPI document): apiVersion and kind pick the model class (and must be a
kind that group/version serves), every key must be one of the class's JSON names
(attribute_map), every value the type openapi_types gives ('list[V1Container]',
'dict(str, str)', 'int', a nested class...), and a required field may not be missing (the
model's setter refuses None with a ValueError). Errors name the object and the field path.

--sluice-policy adds what Sluice's install must hold beyond the schema: the agent's
DaemonSet is not privileged, drops ALL capabilities and adds only known ones, uses the
host network, gets a projected token with audience istio-ca, mounts only volumes it
declares, and a ResourceQuota admits its priority class in its namespace.

--expect-error PATH inverts the result: the run passes only when validation fails and
some error names each PATH given (how the test proves the checker can fail).

Run with Debian's /usr/bin/python3, which sees python3-kubernetes and python3-yaml.
"""
import argparse
import re
import subprocess
import sys

import yaml
from kubernetes import client

# Kinds newer than python3-kubernetes' models (Kubernetes 1.22): ValidatingAdmissionPolicy
# and its binding (admissionregistration.k8s.io/v1, GA in 1.30), written out here from
# the API reference (kubernetes.io/docs/reference/kubernetes-api/policy-resources/
# validating-admission-policy-v1/) in the generated models' shape: the JSON names, their
# types, and the required ones. Cluster-scoped.
def hand_model(name, fields, required=()):
    """A class shaped as the generated models (attribute_map, openapi_types, a setter
    check that refuses a missing required field with ValueError)."""
    def init(self, **kwargs):
        for attr in required:
            if kwargs.get(attr) is None:
                raise ValueError(f"Invalid value for `{attr}`, must not be `None`")
    return type(name, (), {
        "attribute_map": {a: a for a in fields},
        "openapi_types": dict(fields),
        "__init__": init,
    })


HAND_MODELS = {
    "HandNamedRuleWithOperations": hand_model("HandNamedRuleWithOperations", {
        "apiGroups": "list[str]", "apiVersions": "list[str]", "operations": "list[str]",
        "resourceNames": "list[str]", "resources": "list[str]", "scope": "str"}),
    "HandMatchResources": hand_model("HandMatchResources", {
        "excludeResourceRules": "list[HandNamedRuleWithOperations]", "matchPolicy": "str",
        "namespaceSelector": "V1LabelSelector", "objectSelector": "V1LabelSelector",
        "resourceRules": "list[HandNamedRuleWithOperations]"}),
    "HandValidation": hand_model("HandValidation", {
        "expression": "str", "message": "str", "messageExpression": "str", "reason": "str"},
        required=("expression",)),
    "HandNamedExpression": hand_model("HandNamedExpression", {
        "name": "str", "expression": "str"}, required=("name", "expression")),
    "HandAuditAnnotation": hand_model("HandAuditAnnotation", {
        "key": "str", "valueExpression": "str"}, required=("key", "valueExpression")),
    "HandParamKind": hand_model("HandParamKind", {"apiVersion": "str", "kind": "str"}),
    "HandParamRef": hand_model("HandParamRef", {
        "name": "str", "namespace": "str", "parameterNotFoundAction": "str",
        "selector": "V1LabelSelector"}),
    "HandValidatingAdmissionPolicySpec": hand_model("HandValidatingAdmissionPolicySpec", {
        "auditAnnotations": "list[HandAuditAnnotation]", "failurePolicy": "str",
        "matchConditions": "list[HandNamedExpression]", "matchConstraints": "HandMatchResources",
        "paramKind": "HandParamKind", "validations": "list[HandValidation]",
        "variables": "list[HandNamedExpression]"}),
    "HandValidatingAdmissionPolicyBindingSpec": hand_model(
        "HandValidatingAdmissionPolicyBindingSpec", {
            "matchResources": "HandMatchResources", "paramRef": "HandParamRef",
            "policyName": "str", "validationActions": "list[str]"}),
    "HandValidatingAdmissionPolicy": hand_model("HandValidatingAdmissionPolicy", {
        "apiVersion": "str", "kind": "str", "metadata": "V1ObjectMeta",
        "spec": "HandValidatingAdmissionPolicySpec"}),
    "HandValidatingAdmissionPolicyBinding": hand_model("HandValidatingAdmissionPolicyBinding", {
        "apiVersion": "str", "kind": "str", "metadata": "V1ObjectMeta",
        "spec": "HandValidatingAdmissionPolicyBindingSpec"}),
}
HAND_KINDS = {("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy"),
              ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding")}


def find_model(type_name):
    return HAND_MODELS.get(type_name) or getattr(client.models, type_name, None)


LIST_RE = re.compile(r"^list\[(.*)\]$")
DICT_RE = re.compile(r"^dict\(([^,]*), (.*)\)$")


def model_class(api_version, kind):
    """The model class of apiVersion/kind, or an error text."""
    if (api_version, kind) in HAND_KINDS:
        return HAND_MODELS["Hand" + kind], False, None
    group, _, version = api_version.partition("/")
    if not version:
        group, version = "core", group
    # The client's own mapping (kubernetes.utils.create_from_yaml): group and version to
    # an API class, which has read_[namespaced_]<kind> when the group serves the kind.
    api_name = "".join(w.capitalize() for w in "".join(group.rsplit(".k8s.io", 1)).split("."))
    api_name += version.capitalize() + "Api"
    api = getattr(client, api_name, None)
    if api is None:
        return None, None, f"apiVersion {api_version!r} is not a known group/version"
    snake = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", kind)).lower()
    if hasattr(api, f"read_namespaced_{snake}"):
        namespaced = True
    elif hasattr(api, f"read_{snake}"):
        namespaced = False
    else:
        return None, None, f"kind {kind!r} is not served by {api_version!r}"
    cls = getattr(client.models, version.capitalize() + kind, None)
    if cls is None:
        return None, None, f"no model for {api_version} {kind}"
    return cls, namespaced, None


def check_scalar(value, type_name):
    if type_name == "str":
        return isinstance(value, str)
    if type_name == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if type_name == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if type_name == "bool":
        return isinstance(value, bool)
    if type_name in ("datetime", "date"):
        return isinstance(value, str) or hasattr(value, "isoformat")
    if type_name == "object":  # IntOrString, RawExtension, JSON: any value
        return True
    raise KeyError(type_name)


def describe(value):
    return "null" if value is None else type(value).__name__


def walk(value, type_name, path, errors):
    """Appends (path, message) for every problem in value against type_name."""
    if value is None:
        return  # an explicit null is an absent optional field; required ones are checked by the model
    m = LIST_RE.match(type_name)
    if m:
        if not isinstance(value, list):
            errors.append((path, f"expected a list, got {describe(value)}"))
            return
        for i, item in enumerate(value):
            walk(item, m.group(1), f"{path}[{i}]", errors)
        return
    m = DICT_RE.match(type_name)
    if m:
        if not isinstance(value, dict):
            errors.append((path, f"expected a map, got {describe(value)}"))
            return
        for k, v in value.items():
            if not isinstance(k, str):
                errors.append((f"{path}.{k}", "map key is not a string"))
            walk(v, m.group(2), f"{path}.{k}", errors)
        return
    cls = find_model(type_name)
    if cls is None:
        try:
            ok = check_scalar(value, type_name)
        except KeyError:
            errors.append((path, f"checker does not know the type {type_name!r}"))
            return
        if not ok:
            errors.append((path, f"expected {type_name}, got {describe(value)} {value!r}"))
        return
    if not isinstance(value, dict):
        errors.append((path, f"expected an object ({type_name}), got {describe(value)}"))
        return
    by_json = {j: a for a, j in cls.attribute_map.items()}
    kwargs = {}
    for key, v in value.items():
        attr = by_json.get(key)
        sub = f"{path}.{key}" if path else key
        if attr is None:
            errors.append((sub, f"unknown field (not in {type_name})"))
            continue
        kwargs[attr] = v
        walk(v, cls.openapi_types[attr], sub, errors)
    # Required fields: the generated setters raise ValueError for None. Fill each one
    # reported with a stand-in and try again, so every missing field is named.
    for _ in range(len(cls.attribute_map) + 1):
        try:
            cls(**kwargs)
            break
        except ValueError as e:
            m = re.search(r"`(\w+)`", str(e))
            attr = m.group(1) if m else None
            if attr not in cls.attribute_map or attr in kwargs and kwargs[attr] is not None:
                errors.append((path or "(top)", f"{type_name}: {e}"))
                break
            sub = f"{path}.{cls.attribute_map[attr]}" if path else cls.attribute_map[attr]
            errors.append((sub, "required field is missing"))
            kwargs[attr] = 0 if cls.openapi_types[attr] == "int" else "x"


def validate(obj):
    """(object name, [(path, message)]) for one manifest object."""
    if not isinstance(obj, dict):
        return "(not an object)", [("", f"document is a {describe(obj)}, not an object")]
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    meta = obj.get("metadata") or {}
    name = f"{kind or '?'} {meta.get('namespace', '') + '/' if meta.get('namespace') else ''}{meta.get('name', '?')}"
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return name, [("", "apiVersion and kind must both be set")]
    cls, namespaced, err = model_class(api_version, kind)
    if err:
        return name, [("", err)]
    errors = []
    walk(obj, cls.__name__, "", errors)
    if not meta.get("name"):
        errors.append(("metadata.name", "required field is missing"))
    if namespaced is False and "namespace" in meta:
        errors.append(("metadata.namespace", f"{kind} is cluster-scoped and has no namespace"))
    return name, errors


def pod_spec_policy(ds, objects):
    """Sluice's own rules for the agent's DaemonSet (--sluice-policy)."""
    allowed_caps = {"BPF", "NET_ADMIN", "SYS_ADMIN", "SYS_RESOURCE", "SYS_PTRACE"}
    errors = []
    spec = ds.get("spec", {}).get("template", {}).get("spec", {})
    base = "spec.template.spec"
    if spec.get("hostNetwork") is not True:
        errors.append((f"{base}.hostNetwork", "must be true"))
    containers = [("containers", c) for c in spec.get("containers", [])]
    containers += [("initContainers", c) for c in spec.get("initContainers", [])]
    volumes = {v.get("name"): v for v in spec.get("volumes", [])}
    for i, (field, c) in enumerate(containers):
        p = f"{base}.{field}[{c.get('name', i)}]"
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            errors.append((f"{p}.securityContext.privileged", "must not be true"))
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            errors.append((f"{p}.securityContext.capabilities.drop", "must contain ALL"))
        for cap in caps.get("add") or []:
            if cap not in allowed_caps:
                errors.append((f"{p}.securityContext.capabilities.add", f"{cap} is not in the documented list"))
        for vm in c.get("volumeMounts") or []:
            if vm.get("name") not in volumes:
                errors.append((f"{p}.volumeMounts[{vm.get('name')}]", "no volume of that name"))
        for env in c.get("env") or []:
            ref = (env.get("valueFrom") or {}).get("configMapKeyRef")
            if ref:
                cm = objects.get(("ConfigMap", ds["metadata"].get("namespace"), ref.get("name")))
                if cm is None and not ref.get("optional"):
                    errors.append((f"{p}.env[{env.get('name')}]", f"no ConfigMap {ref.get('name')} in the install"))
                elif cm is not None and ref.get("key") not in (cm.get("data") or {}):
                    errors.append((f"{p}.env[{env.get('name')}]", f"ConfigMap {ref.get('name')} has no key {ref.get('key')}"))
    audiences = [
        s["serviceAccountToken"].get("audience")
        for v in volumes.values()
        for s in (v.get("projected") or {}).get("sources", [])
        if "serviceAccountToken" in s
    ]
    if "istio-ca" not in audiences:
        errors.append((f"{base}.volumes", "no projected service-account token with audience istio-ca"))
    prio = spec.get("priorityClassName")
    ns = ds["metadata"].get("namespace")
    if prio and ns != "kube-system":
        quota = any(
            kind == "ResourceQuota" and qns == ns and any(
                e.get("scopeName") == "PriorityClass" and e.get("operator") == "In" and prio in (e.get("values") or [])
                for e in (((o.get("spec") or {}).get("scopeSelector") or {}).get("matchExpressions") or []))
            for (kind, qns, _), o in objects.items())
        if not quota:
            errors.append((f"{base}.priorityClassName", f"{prio} outside kube-system needs a ResourceQuota scoped to it in {ns}"))
    return errors


def token_policy(objects):
    """When a ClusterRole lets the agent create service account tokens, a bound
    ValidatingAdmissionPolicy must limit it to the audience istio-ca and pod-bound tokens."""
    errors = []
    for (kind, _, name), role in objects.items():
        if kind != "ClusterRole":
            continue
        for i, rule in enumerate(role.get("rules") or []):
            if "serviceaccounts/token" not in (rule.get("resources") or []):
                continue
            policies = [o for (k, _, _), o in objects.items() if k == "ValidatingAdmissionPolicy"
                        and any("serviceaccounts/token" in (r.get("resources") or [])
                                for r in (((o.get("spec") or {}).get("matchConstraints") or {})
                                          .get("resourceRules") or []))]
            if not policies:
                errors.append((f"ClusterRole {name}", f"rules[{i}]",
                               "creating serviceaccounts/token needs a ValidatingAdmissionPolicy on it"))
                continue
            for pol in policies:
                pname = pol["metadata"].get("name")
                exprs = " ".join(v.get("expression", "") for v in (pol["spec"].get("validations") or []))
                if "'istio-ca'" not in exprs or "boundObjectRef" not in exprs:
                    errors.append((f"ValidatingAdmissionPolicy {pname}", "spec.validations",
                                   "must limit tokens to the audience istio-ca and to pod-bound tokens"))
                if not any(k == "ValidatingAdmissionPolicyBinding" and
                           (o.get("spec") or {}).get("policyName") == pname and
                           "Deny" in ((o.get("spec") or {}).get("validationActions") or [])
                           for (k, _, _), o in objects.items()):
                    errors.append((f"ValidatingAdmissionPolicy {pname}", "(binding)",
                                   "no ValidatingAdmissionPolicyBinding with validationActions [Deny]"))
    return errors


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*")
    ap.add_argument("--kustomize", metavar="DIR", help="render DIR with `kubectl kustomize` first")
    ap.add_argument("--kubectl", default="kubectl")
    ap.add_argument("--sluice-policy", action="store_true")
    ap.add_argument("--expect-error", action="append", default=[], metavar="PATH")
    args = ap.parse_args()

    texts = []
    if args.kustomize:
        r = subprocess.run([args.kubectl, "kustomize", args.kustomize], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"kubectl kustomize {args.kustomize} failed:\n{r.stderr}", file=sys.stderr)
            return 1
        texts.append((f"kustomize {args.kustomize}", r.stdout))
    for f in args.files:
        with open(f) as fh:
            texts.append((f, fh.read()))
    if not texts:
        ap.error("nothing to validate")

    objects, problems, count = {}, [], 0
    for source, text in texts:
        try:
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as e:
            print(f"{source}: not YAML: {e}", file=sys.stderr)
            return 1
        for obj in docs:
            count += 1
            name, errors = validate(obj)
            problems += [(source, name, p, m) for p, m in errors]
            if isinstance(obj, dict):
                meta = obj.get("metadata") or {}
                objects[(obj.get("kind"), meta.get("namespace"), meta.get("name"))] = obj
    if args.sluice_policy:
        ds = [o for (k, _, n), o in objects.items() if k == "DaemonSet" and n == "sluice-agent"]
        if not ds:
            problems.append(("policy", "DaemonSet sluice-agent", "", "not in the manifests"))
        for d in ds:
            problems += [("policy", f"DaemonSet {d['metadata'].get('namespace')}/sluice-agent", p, m)
                         for p, m in pod_spec_policy(d, objects)]
        problems += [("policy", n, p, m) for n, p, m in token_policy(objects)]

    for source, name, path, msg in problems:
        print(f"{source}: {name}: {path or '(object)'}: {msg}")
    if args.expect_error:
        missing = [e for e in args.expect_error if not any(p == e for _, _, p, _ in problems)]
        if not problems:
            print("FAIL: expected validation errors, found none")
            return 1
        if missing:
            print(f"FAIL: no error named {', '.join(missing)}")
            return 1
        print(f"ok: {len(problems)} errors, including each expected one ({len(args.expect_error)})")
        return 0
    if problems:
        print(f"FAIL: {len(problems)} problems in {count} objects")
        return 1
    if count == 0:
        print("FAIL: no objects")
        return 1
    print(f"ok: {count} objects valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
