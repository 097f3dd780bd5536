"""Cut a CustomResourceDefinition's schema down to the subset deploy/validate.sh vendors.

    python3 deploy/schemas/crd_subset.py CRD.yaml VERSION SOURCE > deploy/schemas/NAME.json

Keeps the openAPIV3Schema of VERSION without `status` and without descriptions, down to four property
levels from the root (spec.executor.securityContext.runAsUser); anything deeper becomes a stub of its
type that accepts any content, and so do pod templates (`podTemplateSpec`, `template`): validate.sh
checks those against Kubernetes' own PodTemplateSpec schema instead. SOURCE (repository@commit:path) is
recorded in the output, so a refresh is one command.
"""

from __future__ import annotations

import json
import sys

import yaml

DEPTH = 4
POD_TEMPLATES = {"podTemplateSpec", "template"}


def cut(schema: dict, depth: int) -> dict:
    out = {k: v for k, v in schema.items() if k not in ("description", "properties", "items", "additionalProperties")}
    if "properties" in schema:
        if depth == 0:
            return {"type": schema.get("type", "object"), "x-kubernetes-preserve-unknown-fields": True}
        out["properties"] = {
            name: ({"type": "object", "x-kubernetes-preserve-unknown-fields": True, "x-pod-template": True}
                   if name in POD_TEMPLATES else cut(sub, depth - 1))
            for name, sub in schema["properties"].items()
        }
    if "items" in schema:
        out["items"] = cut(schema["items"], depth)
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = cut(schema["additionalProperties"], depth)
    return out


def main(path: str, version: str, source: str) -> None:
    crd = yaml.safe_load(open(path))
    v = next(v for v in crd["spec"]["versions"] if v["name"] == version)
    root = dict(v["schema"]["openAPIV3Schema"])
    root["properties"] = {k: p for k, p in root["properties"].items() if k != "status"}
    subset = cut(root, DEPTH)
    subset["x-source"] = source
    subset["x-group-version-kind"] = [crd["spec"]["group"], version, crd["spec"]["names"]["kind"]]
    json.dump(subset, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(*sys.argv[1:4])
