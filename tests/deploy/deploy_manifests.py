"""What the tests under tests/deploy/ share: where things are, the values the manifests must agree
on, and readers for rendered objects, the agent's config file and the example spark-submit scripts.

Also the two ways a test runs something real: Spark building an executor pod from example settings
against a simulated API server (spark_pod_probe.py), and the agent binary with a DaemonSet's
command line moved onto the local machine.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CONF = REPO / "conf" / "spark-shuffle-agent.conf"

AGENT_NAMESPACE = "spark-shuffle-agent"
SHUFFLE_PORT = 7337
METRICS_PORT = 7338
# The local dir each overlay uses; the examples must use the same one.
LOCAL_DIR = {
    "hostnetwork": "/var/lib/spark/local",
    "podnetwork": "/var/lib/spark/local",
    "podnetwork-volumes": "/var/lib/spark/local",
    "fork-labels": "/tmp/spark-local",
}
STATE_DIR = "/var/lib/spark-shuffle-agent"
OVERLAYS = sorted(LOCAL_DIR)
# The overlays in pod network mode (agent.network.mode pod, three capabilities).
POD_NETWORK_OVERLAYS = ["podnetwork", "podnetwork-volumes"]
# local-path-provisioner's base dir on the node, which components/node-local-volumes mounts
# in the agent at the same path and adds as a root.
PROVISIONER_DIR = "/opt/local-path-provisioner"
# The agent's roots besides LOCAL_DIR, and the ClusterRoles besides the base one, that an
# overlay gets from the components it uses.
EXTRA_ROOTS = {"podnetwork-volumes": [PROVISIONER_DIR]}
NODE_LOCAL_VOLUMES_ROLE = "spark-shuffle-agent-node-local-volumes"
EXTRA_ROLES = {"podnetwork-volumes": {NODE_LOCAL_VOLUMES_ROLE}}
# The file each overlay's ConfigMap is generated from (conf/ once it exists, which
# deploy/base/agent.conf must equal).
DEFAULT_CONF = CONF if CONF.exists() else DEPLOY / "base" / "agent.conf"
CONF_SOURCE = {
    "hostnetwork": DEFAULT_CONF,
    "fork-labels": DEFAULT_CONF,
    "podnetwork": DEPLOY / "overlays" / "podnetwork" / "agent.conf",
    "podnetwork-volumes": DEPLOY / "overlays" / "podnetwork-volumes" / "agent.conf",
}

def one(objects: list[dict], kind: str) -> dict:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_spec(objects: list[dict]) -> dict:
    return one(objects, "DaemonSet")["spec"]["template"]["spec"]


def container(spec: dict, name: str, init: bool = False) -> dict:
    key = "initContainers" if init else "containers"
    return next(c for c in spec[key] if c["name"] == name)


def flag_values(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == flag]


def seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|min|h)?", text.strip())
    assert m, f"unparsable duration {text!r}"
    scale = {"ms": 0.001, "s": 1, "min": 60, "h": 3600, None: 1}[m.group(2)]
    return int(m.group(1)) * scale


def conf_entries(path: Path) -> dict[str, str]:
    """The uncommented `key value` (or `key=value`) lines of an agent config file; a later line wins."""
    entries = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        k, _, v = line.replace("=", " ", 1).partition(" ")
        entries[k] = v.strip()
    return entries


def conf_value(key: str) -> str | None:
    """The value of an uncommented key in conf/spark-shuffle-agent.conf, if present."""
    return conf_entries(CONF).get(key) if CONF.exists() else None


def submit_confs(script: Path) -> dict[str, str]:
    """The --conf key=value pairs of an example spark-submit script, shell variables expanded."""
    text = script.read_text().replace("\\\n", " ")
    variables = dict(re.findall(r"^([A-Z_]+)=([^\s$]+)$", text, re.M))
    variables["HERE"] = str(script.parent)
    variables.update({k: v for k, v in re.findall(r"^([A-Z_]+)=\$\{\1:-([^}]+)\}$", text, re.M)})
    words = shlex.split(text, comments=True)
    confs = {}
    for i, w in enumerate(words[:-1]):
        if w == "--conf":
            k, _, v = words[i + 1].partition("=")
            confs[k] = re.sub(r"\$\{(\w+)\}", lambda m: variables.get(m.group(1), m.group(0)), v)
    return confs


def probe_python() -> str | None:
    """A Python that can import pyspark (the project venv first), or None."""
    for candidate in [REPO / ".venv" / "bin" / "python", Path(sys.executable)]:
        if candidate.exists() and subprocess.run(
            [str(candidate), "-c", "import pyspark"], capture_output=True
        ).returncode == 0:
            return str(candidate)
    return None


def spark_executor_pod(python: str, script: Path, tmp_path: Path) -> dict:
    """The first executor pod real Spark asks the simulated API server for, with `script`'s settings.

    Asks for one executor at start-up instead of waiting for pending tasks.
    """
    return spark_executor_pod_and_claims(python, script, tmp_path)[0]


def spark_executor_pod_and_claims(
    python: str, script: Path, tmp_path: Path, extra: dict[str, str] | None = None
) -> tuple[dict, list[dict]]:
    """As spark_executor_pod, with the PersistentVolumeClaims Spark created for that pod, and
    `extra` settings on top of the script's."""
    settings = submit_confs(script) | (extra or {})
    settings["spark.dynamicAllocation.initialExecutors"] = "1"
    (tmp_path / "settings.json").write_text(json.dumps(settings))
    run = subprocess.run(
        [python, str(Path(__file__).with_name("spark_pod_probe.py")),
         str(tmp_path / "settings.json"), str(tmp_path / "pods.json"), str(tmp_path / "claims.json")],
        capture_output=True, text=True, timeout=400,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    pods = json.loads((tmp_path / "pods.json").read_text())
    assert pods, "Spark created no executor pod"
    return pods[0], json.loads((tmp_path / "claims.json").read_text())


def assert_spark_executor_on_local_dir(pod: dict, local: str) -> None:
    """The executor pod Spark made is one the agent watches, with `local` as its hostPath local dir."""
    spec = pod["spec"]
    assert pod["metadata"]["labels"]["spark-role"] == "executor"  # what the agent watches
    assert pod["metadata"]["labels"]["spark-app-selector"]
    assert spec["securityContext"]["runAsUser"] == 185
    local_volumes = [v for v in spec["volumes"] if v["name"].startswith("spark-local-dir-")]
    assert local_volumes == [{"name": "spark-local-dir-1", "hostPath": {"path": local, "type": ""}}]
    executor = spec["containers"][0]
    mounts = [m["mountPath"] for m in executor["volumeMounts"] if m["name"] == "spark-local-dir-1"]
    assert mounts == [local]
    env = {e["name"]: e.get("value") for e in executor["env"]}
    assert env["SPARK_LOCAL_DIRS"] == local


def assert_strictly_valid_pod(pod: dict, tmp_path: Path) -> None:
    """The pod is valid Kubernetes by the strict schemas deploy/validate.sh uses."""
    (tmp_path / "pod.yaml").write_text(yaml.safe_dump(pod))
    kv = REPO / ".venv" / "bin" / "kubernetes-validate"
    check = subprocess.run([str(kv), "--strict", "--quiet", "-k", "1.30", "-k", "1.37",
                            str(tmp_path / "pod.yaml")], capture_output=True, text=True)
    assert check.returncode == 0 and "ERROR" not in check.stdout, check.stdout


def agent_binary() -> Path | None:
    """$AGENT_BIN (set by tests/run-all.sh), else the newest cargo build, else None."""
    if os.environ.get("AGENT_BIN"):
        return Path(os.environ["AGENT_BIN"])
    built = [p for p in (REPO / "target" / "release" / "spark-shuffle-agent",
                         REPO / "target" / "debug" / "spark-shuffle-agent") if p.is_file()]
    return max(built, key=lambda p: p.stat().st_mtime) if built else None


def local_command_line(objects: list[dict], tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """The agent container's args and env, runnable here: ports 0, each mount moved under tmp_path.

    The ConfigMap's file is written where the moved config mount points. Paths inside that file
    are left as they are.
    """
    agent = container(pod_spec(objects), "agent")
    mounts = {m["mountPath"]: m["name"] for m in agent["volumeMounts"]}
    moved = {}
    for path, name in mounts.items():
        moved[path] = tmp_path / name
        moved[path].mkdir()
    conf_mount = next(p for p, n in mounts.items() if n == "config")
    (moved[conf_mount] / "spark-shuffle-agent.conf").write_text(
        one(objects, "ConfigMap")["data"]["spark-shuffle-agent.conf"])
    args = []
    for a in agent["args"]:
        if a in (str(SHUFFLE_PORT), str(METRICS_PORT)):
            a = "0"
        for path in sorted(moved, key=len, reverse=True):  # one substitution, longest mount first
            if a == path or a.startswith(path + "/"):
                a = str(moved[path]) + a[len(path):]
                break
        args.append(a)
    env = dict(os.environ, NODE_NAME="test-node", POD_NAME="agent-test", POD_NAMESPACE=AGENT_NAMESPACE)
    env.pop("KUBECONFIG", None)
    return args, env
