"""Validation of custom resources against the vendored CRD schema subsets (used by deploy/validate.sh).

A CRD schema is OpenAPI v3 (structural), not JSON Schema: an object with `properties` and no
`x-kubernetes-preserve-unknown-fields` has no other fields, which the API server enforces with strict
field validation (kubectl's default since 1.27). to_json_schema() makes that explicit
(`additionalProperties: false`) so a misspelt field fails offline as it would on apply.
Pod templates were cut out of the subset (crd_subset.py marks them `x-pod-template`); pod_templates()
finds them in a document so they can be checked against Kubernetes' own PodTemplateSpec.
"""

from __future__ import annotations

INT_OR_STRING = {"anyOf": [{"type": "integer"}, {"type": "string"}]}


def to_json_schema(s: dict) -> dict:
    if s.get("x-kubernetes-int-or-string"):
        return INT_OR_STRING
    out = {k: v for k, v in s.items() if k in ("type", "enum", "required", "format", "minimum", "maximum", "pattern")}
    if out.get("format") in ("int32", "int64", "double", "float", "byte", "date-time", "quantity"):
        del out["format"]  # OpenAPI formats, not JSON Schema ones
    if s.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if "properties" in s:
        out["properties"] = {k: to_json_schema(v) for k, v in s["properties"].items()}
        if not s.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    elif isinstance(s.get("additionalProperties"), dict):
        out["additionalProperties"] = to_json_schema(s["additionalProperties"])
    if "items" in s:
        out["items"] = to_json_schema(s["items"])
    return out


def resource_schema(subset: dict) -> dict:
    """The JSON Schema of a whole custom resource: the CRD's schema plus apiVersion, kind and metadata,
    which every object has and the API server checks itself (CRDs need not declare them)."""
    group, version, kind = subset["x-group-version-kind"]
    out = to_json_schema(subset)
    out["properties"] = {**out.get("properties", {}), "apiVersion": {"const": f"{group}/{version}"},
                         "kind": {"const": kind}, "metadata": {"type": "object"}}
    out["required"] = sorted(set(out.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
    return out


def pod_templates(doc, schema: dict, path: str = ""):
    """(path, value) of every pod template in doc, by the subset's x-pod-template marks."""
    if schema.get("x-pod-template"):
        yield path, doc
        return
    if isinstance(doc, dict):
        for k, v in doc.items():
            sub = schema.get("properties", {}).get(k)
            if sub is not None:
                yield from pod_templates(v, sub, f"{path}.{k}" if path else k)
    elif isinstance(doc, list) and "items" in schema:
        for i, v in enumerate(doc):
            yield from pod_templates(v, schema["items"], f"{path}[{i}]")
