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

Settings come from the Worker's environment (PODNET_*; see podnet_spark.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path


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


def create_pod(api: str, namespace: str, name: str, app: str, exec_id: str, pod: dict) -> None:
    body = {"metadata": {"name": name, "uid": f"uid-{pod['name']}",
                         "labels": {"spark-role": "executor", "spark-app-selector": app, "spark-exec-id": exec_id}},
            "spec": {"nodeName": os.environ["PODNET_NODE"], "containers": [{"name": "spark-kubernetes-executor"}]},
            "status": {"phase": "Running", "podIP": pod["ip"], "hostIP": os.environ["PODNET_NODE_IP"]}}
    req = urllib.request.Request(f"{api}/api/v1/namespaces/{namespace}/pods", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 201, r.status


def main(argv: list[str]) -> None:
    if "org.apache.spark.executor.CoarseGrainedExecutorBackend" not in argv:
        os.execv(os.environ["PODNET_REAL_JAVA"], [os.environ["PODNET_REAL_JAVA"], *argv])
    app, exec_id = arg(argv, "--app-id"), arg(argv, "--executor-id")
    pod = claim_pod(Path(os.environ["PODNET_POOL"]))
    name = f"{app}-exec-{exec_id}"
    (Path(os.environ["PODNET_POOL"]) / "used" / f"{pod['name']}.json").write_text(
        json.dumps({**pod, "pod": name, "app": app, "exec": exec_id, "pid": os.getpid()}))
    print(f"pod_launcher: executor {exec_id} of {app} in pod {name} ({pod['netns']}, {pod['ip']})",
          file=sys.stderr, flush=True)
    create_pod(os.environ["PODNET_API"], os.environ["PODNET_NAMESPACE"], name, app, exec_id, pod)
    in_pod = ["ip", "netns", "exec", pod["netns"]]
    subprocess.run([*in_pod, os.environ["PODNET_AGENT_BIN"], "wait-for-listener", "--port",
                    os.environ["PODNET_PORT"], "--timeout", "60s"], check=True)
    argv = list(argv)
    argv[argv.index("--hostname") + 1] = pod["ip"]
    env = {**os.environ, "SPARK_LOCAL_IP": pod["ip"], "SPARK_LOCAL_HOSTNAME": pod["ip"]}
    os.execvpe("ip", [*in_pod, os.environ["PODNET_REAL_JAVA"], *argv], env)


if __name__ == "__main__":
    main(sys.argv[1:])
