#!/usr/bin/env python3
"""Checks that no lower layer of Sluice includes a higher one.

Each module (a directory with its public headers under include/sluice/<name>/) has a
layer; a file may include the public headers of its own module and of modules in lower
layers only. A module that reaches up (say the proxy including the daemon's headers)
turns the layering into a tangle that the next feature makes worse, so CI fails on it.
The table below is the layering docs/architecture.md describes; changing it is a design
decision, made in review, not a way to make this check pass.

usage: scripts/check-layers.py [ROOT]   (exit 1 and one line per violation if any)
"""
import pathlib
import re
import sys

# module directory -> (include name under sluice/, layer)
MODULES = {
    "agent/common": ("common", 0),
    "agent/envoy-api": ("envoy", 1),
    "loader": ("loader", 1),
    "agent/enrolment": ("enrolment", 1),
    "agent/kube": ("kube", 1),
    # sluice-cni asks the API server (kube) and applies the enrolment rule when the
    # agent is down (issue 19).
    "cni": ("cni", 2),
    "agent/config": ("config", 2),
    "agent/netns": ("netns", 2),
    "agent/filterchain": ("filterchain", 2),
    "agent/xds": ("xds", 3),
    "agent/proxy": ("proxy", 3),
    "agent/kernelsync": ("kernelsync", 3),
    "agent/istio": ("istio", 4),
    "agent/inspect": ("inspect", 5),
    "agent/local": ("local", 5),
    "agent/apps": ("apps", 5),
    "agent/daemon": ("daemon", 6),
    "agent/sluicectl": ("sluicectl", 6),
}

INCLUDE = re.compile(r'^\s*#\s*include\s+"sluice/([a-z_]+)/', re.M)


def main() -> int:
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    layer_of = {name: layer for name, layer in MODULES.values()}
    problems = []
    checked = 0
    for directory, (name, layer) in MODULES.items():
        base = root / directory
        if not base.is_dir():
            problems.append(f"{directory}: listed in check-layers.py but missing")
            continue
        for path in sorted(base.rglob("*")):
            if path.suffix not in (".h", ".hpp", ".cc", ".c") or "node_modules" in path.parts:
                continue
            checked += 1
            text = path.read_text(errors="replace")
            for match in INCLUDE.finditer(text):
                target = match.group(1)
                if target == name:
                    continue
                line = text.count("\n", 0, match.start()) + 1
                rel = path.relative_to(root)
                if target not in layer_of:
                    problems.append(f"{rel}:{line}: includes sluice/{target}/, a module "
                                    "check-layers.py does not know (add it to MODULES)")
                elif layer_of[target] >= layer:
                    problems.append(f"{rel}:{line}: {name} (layer {layer}) includes "
                                    f"sluice/{target}/ (layer {layer_of[target]}): a module "
                                    "may include only lower layers")
    for p in problems:
        print(p)
    if not problems:
        print(f"layers: {checked} files, no module includes its own layer or a higher one")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
