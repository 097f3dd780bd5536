#!/usr/bin/env bash
# Render every kustomize target under deploy/ and validate the result offline.
#
#   deploy/validate.sh            # from anywhere; exit 0 only if everything is valid
#
# What it checks:
#  1. `kubectl kustomize` renders each overlay, and each overlay combined with
#     the optional components it does not already use (a temporary kustomization).
#  2. Every rendered object, and every YAML file in deploy/examples/, validates
#     with kubernetes-validate in strict mode (unknown fields are errors)
#     against each Kubernetes version in K8S_VERSIONS. The schemas ship inside
#     the kubernetes-validate wheel, so no network is needed once it is installed.
#  3. Kinds kubernetes-validate has no schema for would only print a warning
#     there. Here they are errors, except PodMonitor (a Prometheus Operator
#     CRD), which is checked against deploy/schemas/podmonitor-v1.json instead,
#     and the SparkApplications of Apache's spark-kubernetes-operator and of the
#     Kubeflow spark-operator (deploy/examples/), checked against subsets of
#     those projects' CRDs (deploy/schemas/crd_subset.py, crd_check.py) with
#     their pod templates checked as Kubernetes PodTemplateSpecs.
#  4. The example scripts parse (bash -n).
#  5. deploy/base/agent.conf, the source of the ConfigMap, is identical to
#     conf/spark-shuffle-agent.conf (skipped with a notice while conf/ lacks it;
#     REQUIRE_CONF=1 turns the skip into a failure).
#
# Environment: KUBECTL (default: kubectl on PATH, else /usr/bin/kubectl),
# VENV (default: <repo>/.venv; created, and deploy/requirements.txt installed, if missing),
# K8S_VERSIONS (space-separated, default below).
set -euo pipefail

DEPLOY=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$DEPLOY")
VENV=${VENV:-$REPO/.venv}
# 1.37: the newest schema the pinned kubernetes-validate (1.37.0) ships; 1.30: the oldest
# release docs/deploy.md claims; 1.33 in between.
K8S_VERSIONS=${K8S_VERSIONS:-1.30 1.33 1.37}
REQUIREMENTS=$DEPLOY/requirements.txt  # pins kubernetes-validate

fail() { echo "validate.sh: FAIL: $*" >&2; exit 1; }

KUBECTL=${KUBECTL:-$(command -v kubectl || echo /usr/bin/kubectl)}
[[ -x $KUBECTL ]] || fail "kubectl not found (Debian package: kubectl)"
echo "kubectl: $("$KUBECTL" version --client 2>/dev/null | tr '\n' ' ')"

if [[ ! -x $VENV/bin/python ]]; then
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import kubernetes_validate, jsonschema, yaml' 2>/dev/null; then
  echo "installing $REQUIREMENTS into $VENV"
  "$VENV/bin/pip" install --quiet -r "$REQUIREMENTS" || fail "could not install $REQUIREMENTS"
fi
PY=$VENV/bin/python
KV=$VENV/bin/kubernetes-validate
echo "kubernetes-validate: $("$KV" --version); Kubernetes schema versions: $K8S_VERSIONS (strict)"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/overlays"

# Validate one multi-document YAML file. kubernetes-validate exits 0 when it has
# no schema for a kind; turn that into a failure unless we check the kind here.
validate_stream() {
  local file=$1 label=$2 out rc=0 version_args=()
  for v in $K8S_VERSIONS; do version_args+=(-k "$v"); done
  # --no-warn: kinds without a schema are handled (as errors, or against our own
  # schema) by the Python step below instead of as warnings.
  out=$("$KV" --strict --quiet --no-warn "${version_args[@]}" "$file" 2>&1) || rc=$?
  if [[ -n $out ]]; then echo "$out" | sed "s#$file#$label#g"; fi
  [[ $rc -eq 0 ]] || fail "$label: kubernetes-validate reported errors"
  if ! "$PY" - "$file" "$label" "$DEPLOY/schemas" "$K8S_VERSIONS" <<'PY'
import json, sys, yaml, jsonschema
from kubernetes_validate import utils
path, label, schema_dir, versions = sys.argv[1:5]
sys.path.insert(0, schema_dir)
import crd_check
# Kinds outside the Kubernetes OpenAPI that we validate against our own schema.
own = {("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor-v1.json"}
# Operators' SparkApplications: subsets of their CRDs (deploy/schemas/crd_subset.py), unknown fields
# are errors, and their pod templates are checked as Kubernetes PodTemplateSpecs.
crds = {("spark.apache.org/v1", "SparkApplication"): "sparkapplication-apache-v1.json",
        ("sparkoperator.k8s.io/v1beta2", "SparkApplication"): "sparkapplication-kubeflow-v1beta2.json"}
bad = 0
docs = [d for d in yaml.safe_load_all(open(path)) if d]
if not docs:
    print(f"ERROR {label}: no objects rendered"); sys.exit(1)
for doc in docs:
    key = (doc.get("apiVersion"), doc.get("kind"))
    name = f'{key[1]}/{doc.get("metadata", {}).get("name")}'
    if key in crds:
        subset = json.load(open(f"{schema_dir}/{crds[key]}"))
        errors = list(jsonschema.Draft202012Validator(crd_check.resource_schema(subset)).iter_errors(doc))
        for where, tmpl in crd_check.pod_templates(doc, subset):
            wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": tmpl}
            for v in versions.split():
                try:
                    utils.validate(wrapped, v, strict=True)
                except utils.ValidationError as e:
                    print(f"ERROR {label}: {name}: {where} (as a Kubernetes {v} PodTemplateSpec): {e}")
                    bad += 1
        for e in errors:
            where = ".".join(str(p) for p in e.absolute_path) or "(root)"
            print(f"ERROR {label}: {name}: {where}: {e.message}")
        bad += bool(errors)
        if not errors:
            print(f"ok    {label}: {name} against deploy/schemas/{crds[key]}, pod templates as Kubernetes {versions}")
        continue
    if key in own:
        schema = json.load(open(f"{schema_dir}/{own[key]}"))
        errors = list(jsonschema.Draft202012Validator(schema).iter_errors(doc))
        for e in errors:
            where = ".".join(str(p) for p in e.absolute_path) or "(root)"
            print(f"ERROR {label}: {name}: {where}: {e.message}")
        bad += bool(errors)
        if not errors:
            print(f"ok    {label}: {name} against deploy/schemas/{own[key]}")
        continue
    try:
        utils.validate(doc, utils.latest_version(), strict=True)
    except utils.SchemaNotFoundError:
        print(f"ERROR {label}: {name}: no schema for {key[0]} {key[1]}; "
              "add one under deploy/schemas/ or drop the object")
        bad += 1
    except utils.ValidationError:
        pass  # already reported (and failed) by the CLI run above
sys.exit(1 if bad else 0)
PY
  then
    fail "$label: invalid objects"
  fi
  echo "ok    $label: all $(grep -c "^kind:" "$file") objects valid (Kubernetes $K8S_VERSIONS strict, or own schema)"
}

# Targets: each overlay alone, and each overlay with every optional component it
# does not already use (rendered through a temporary kustomization; kustomize wants
# relative paths, and refuses a component's resources twice).
render() {
  local name=$1 kdir=$2
  "$KUBECTL" kustomize "$kdir" > "$WORK/$name.yaml" 2> "$WORK/$name.err" ||
    { cat "$WORK/$name.err" >&2; fail "kubectl kustomize $kdir"; }
  validate_stream "$WORK/$name.yaml" "$name"
}

overlays=()
for d in "$DEPLOY"/overlays/*/; do overlays+=("$(basename "$d")"); done
components=()
for d in "$DEPLOY"/components/*/; do components+=("$(basename "$d")"); done
[[ ${#overlays[@]} -gt 0 ]] || fail "no overlays under $DEPLOY/overlays"

for o in "${overlays[@]}"; do
  render "overlays/$o" "$DEPLOY/overlays/$o"
  combo="$WORK/combo-$o"
  mkdir -p "$combo"
  rel=$(realpath --relative-to="$combo" "$DEPLOY")
  {
    echo "apiVersion: kustomize.config.k8s.io/v1beta1"
    echo "kind: Kustomization"
    echo "resources: [\"$rel/overlays/$o\"]"
    echo "components:"
    for c in "${components[@]}"; do
      grep -q "components/$c\$" "$DEPLOY/overlays/$o/kustomization.yaml" ||
        echo "  - \"$rel/components/$c\""
    done
  } > "$combo/kustomization.yaml"
  render "overlays/$o+components" "$combo"
done

# Rendered copies for the pytest structural checks (tests/deploy/).
if [[ -n ${RENDER_DIR:-} ]]; then
  mkdir -p "$RENDER_DIR"
  for f in "$WORK"/overlays/*.yaml; do cp "$f" "$RENDER_DIR/"; done
fi

for f in "$DEPLOY"/examples/*.yaml; do
  validate_stream "$f" "examples/$(basename "$f")"
done
for f in "$DEPLOY"/examples/*.sh; do
  bash -n "$f" || fail "examples/$(basename "$f") does not parse"
  echo "ok    examples/$(basename "$f"): bash -n"
done

conf=$REPO/conf/spark-shuffle-agent.conf
if [[ -f $conf ]]; then
  cmp -s "$conf" "$DEPLOY/base/agent.conf" ||
    { diff -u "$conf" "$DEPLOY/base/agent.conf" >&2 || true
      fail "deploy/base/agent.conf differs from conf/spark-shuffle-agent.conf (cp conf/spark-shuffle-agent.conf deploy/base/agent.conf)"; }
  echo "ok    deploy/base/agent.conf is identical to conf/spark-shuffle-agent.conf"
elif [[ ${REQUIRE_CONF:-0} == 1 ]]; then
  fail "conf/spark-shuffle-agent.conf is missing"
else
  echo "SKIP  conf/spark-shuffle-agent.conf does not exist yet; agent.conf not compared"
fi

echo "validate.sh: all manifests valid"
