"""Starts one Spark executor inside an executor "pod" of the simulated pod network (podnet_topology.py).

A standalone Worker launches each executor as `$JAVA_HOME/bin/java ... CoarseGrainedExecutorBackend
--executor-id N --hostname <worker host> --app-id <app> ...`; the app sets
spark.executorEnv.JAVA_HOME to a directory whose bin/java runs this script. It does what the
Kubernetes side does for an executor pod, in order:
  1. takes a free pod sandbox of its node (a namespace with its own IP, made by the test beforehand;
     an atomic rename in the node's pool directory, so two launches never take the same one);
  2. creates the pod in the simulated API server, labelled as Spark labels executor pods, with its
     node, pod IP and node IP (what the agents' watches read);
  3. waits inside the pod until the node's agent listens there (`wait-for-listener`, the init
     container of spec/pod-network.md §2.2);
  4. becomes the executor inside the pod with `--hostname` = the pod IP, so it advertises and
     registers with the shuffle service at podIP:7337 as it does on Kubernetes.
Its pid is the executor's (each step execs), so the Worker kills and watches the executor itself.

Why not a Worker inside each pod: a standalone Worker's death makes the driver drop every map
output of its host (Master sends WorkerRemoved, DAGScheduler.handleWorkerRemoved calls
removeOutputsOnHost), because standalone assumes the shuffle service lives in the Worker. On
Kubernetes nothing like it exists, so here the Worker plays the node's kubelet and never dies.

Settings come from the Worker's environment (PODNET_*; see podnet_spark.py). Without PODNET_POOL the
executor stays on the node's network (a hostNetwork pod; steps 1 and 3 are skipped) and its record
goes to PODNET_RECORDS.

With PV_BASE set (tests/spark/test_pv_spark.py), the executor's local dir is a node-local
PersistentVolume, as pv_volumes.py describes: before step 2 the launcher provisions it (its
directory under PV_BASE, the claim and the PV in the API server), the pod mounts the claim, and
step 4 runs in a new mount namespace where pv_volumes.MOUNT_PATH is a bind mount of that directory
and PV_HIDE (the node's volume directories) is hidden. The executor's local dir is then
MOUNT_PATH, as on Kubernetes (SPARK_LOCAL_DIRS; the Worker's SPARK_EXECUTOR_DIRS, made in the
node's namespace, is dropped). An app can set spark.executorEnv.PV_BASE to put its volumes elsewhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pv_volumes


def arg(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def claim_pod(pool: Path) -> dict:
    for entry in sorted((pool / "free").glob("*.json")):
        try:
            os.rename(entry, pool / "used" / entry.name)
        except FileNotFoundError:
            continue  # another launch took it
        return json.loads((pool / "used" / entry.name).read_text())
    sys.exit(f"pod_launcher: no free pod sandbox left in {pool}")


def api_post(path: str, body: dict) -> None:
    req = urllib.request.Request(f"{os.environ['PODNET_API']}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 201, r.status


def create_pod(namespace: str, name: str, app: str, exec_id: str, pod: dict, volumes: dict | None) -> None:
    container = {"name": "spark-kubernetes-executor"}
    spec = {"nodeName": os.environ["PODNET_NODE"], "containers": [container]}
    if pod["netns"] is None:
        spec["hostNetwork"] = True
    if volumes is not None:
        spec["volumes"], container["volumeMounts"] = volumes["volumes"], volumes["mounts"]
    body = {"metadata": {"name": name, "uid": f"uid-{pod['name']}",
                         "labels": {"spark-role": "executor", "spark-app-selector": app, "spark-exec-id": exec_id}},
            "spec": spec,
            "status": {"phase": "Running", "podIP": pod["ip"], "hostIP": os.environ["PODNET_NODE_IP"]}}
    api_post(f"/api/v1/namespaces/{namespace}/pods", body)


def provision_local_dir(namespace: str, name: str, app: str, exec_id: str) -> dict:
    """The executor's local dir volume: its node directory, its PV and bound claim in the API server."""
    kind, sub_path = pv_volumes.layout(exec_id)
    claim, volume, path = pv_volumes.claim_and_volume(name, namespace, os.environ["PODNET_NODE"],
                                                      Path(os.environ["PV_BASE"]), kind, app, exec_id)
    shown = path / sub_path if sub_path else path
    shown.mkdir(parents=True)  # the provisioner makes the PV's directory, the kubelet the subPath
    api_post("/api/v1/persistentvolumes", volume)
    api_post(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims", claim)
    volumes, mounts = pv_volumes.pod_volumes(claim["metadata"]["name"], sub_path)
    return {"volumes": volumes, "mounts": mounts, "shown": str(shown),
            "record": {"pv_kind": kind, "sub_path": sub_path, "pv_dir": str(path), "claim": claim["metadata"]["name"],
                       "pv": volume["metadata"]["name"]}}


def main(argv: list[str]) -> None:
    if "org.apache.spark.executor.CoarseGrainedExecutorBackend" not in argv:
        os.execv(os.environ["PODNET_REAL_JAVA"], [os.environ["PODNET_REAL_JAVA"], *argv])
    app, exec_id = arg(argv, "--app-id"), arg(argv, "--executor-id")
    namespace = os.environ["PODNET_NAMESPACE"]
    name = f"{app}-exec-{exec_id}"
    pool = os.environ.get("PODNET_POOL")
    if pool:
        pod, records = claim_pod(Path(pool)), Path(pool) / "used"
    else:
        pod, records = {"name": name, "ip": os.environ["PODNET_NODE_IP"], "netns": None}, \
            Path(os.environ["PODNET_RECORDS"])
    volumes = provision_local_dir(namespace, name, app, exec_id) if os.environ.get("PV_BASE") else None
    (records / f"{pod['name']}.json").write_text(
        json.dumps({**pod, "pod": name, "app": app, "exec": exec_id, "pid": os.getpid(),
                    **(volumes["record"] if volumes else {})}))
    print(f"pod_launcher: executor {exec_id} of {app} in pod {name} ({pod['netns'] or 'host network'}, "
          f"{pod['ip']})", file=sys.stderr, flush=True)
    create_pod(namespace, name, app, exec_id, pod, volumes)
    argv, env, prefix = list(argv), dict(os.environ), []
    if pool:
        prefix = ["ip", "netns", "exec", pod["netns"]]
        subprocess.run([*prefix, os.environ["PODNET_AGENT_BIN"], "wait-for-listener", "--port",
                        os.environ["PODNET_PORT"], "--timeout", "60s"], check=True)
        argv[argv.index("--hostname") + 1] = pod["ip"]
        env.update(SPARK_LOCAL_IP=pod["ip"], SPARK_LOCAL_HOSTNAME=pod["ip"])
    if volumes:
        prefix += pv_volumes.mount_ns_argv(Path(volumes["shown"]), Path(os.environ["PV_HIDE"]))
        env.pop("SPARK_EXECUTOR_DIRS", None)
        env["SPARK_LOCAL_DIRS"] = pv_volumes.MOUNT_PATH
    argv = [*prefix, os.environ["PODNET_REAL_JAVA"], *argv]
    os.execvpe(argv[0], argv, env)


if __name__ == "__main__":
    main(sys.argv[1:])
