"""Executor local dirs on node-local PersistentVolumes, as a provisioner and the kubelet make them
(issue 12), for real executors: the objects the SIMULATED API server describes, the node directory,
and the executor's own mount namespace in which that directory is its local dir.

What is imitated is rancher's local-path-provisioner: a claim `<pod>-pvc-0` (the name Spark gives an
on-demand claim) is bound to a PV `pvc-<claim uid>` whose directory on the node is
`<base>/pvc-<claim uid>_<namespace>_<claim>`, given as `spec.hostPath.path` or as `spec.local.path`
with a nodeAffinity for the node. The executor pod mounts the claim at MOUNT_PATH, with a subPath
for some executors. The kubelet's part is `mount_ns_argv`: a new mount namespace (private
propagation) in which MOUNT_PATH is a bind mount of the node directory (and subPath), and the
node's volume directories are hidden under a tmpfs, so the executor can reach its files only
through its own mount, as in a container.

MOUNT_PATH is under /srv, which the namespace covers with a tmpfs of its own first: each executor
gets its own mount point and nothing is created or mounted on the host.
Used by pod_launcher.py (inside the Worker's executor launch) and by the tests.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

VOLUME = "spark-local-dir-1"
MOUNT_PARENT = "/srv"
MOUNT_PATH = f"{MOUNT_PARENT}/{VOLUME}"
STORAGE_CLASS = "local-path"

# Run by `sh -c` in the new mount namespace: $1 the node directory shown at MOUNT_PATH, $2 the node
# directory to hide, then the command.
_KUBELET = f"""set -e
mount -t tmpfs -o size=1m,mode=0755 pod-srv {MOUNT_PARENT}
mkdir {MOUNT_PATH}
mount --bind "$1" {MOUNT_PATH}
mount -t tmpfs -o size=1m,mode=0755 node-volumes-hidden "$2"
shift 2
exec "$@"
"""


def layout(exec_id: str) -> tuple[str, str]:
    """(PV source kind, subPath) of executor `exec_id`: hostPath PVs for even ids, local PVs for odd
    ones, and a subPath for ids 1, 5, ... (the first two executors cover all three)."""
    n = int(exec_id)
    return ("local" if n % 2 else "hostPath"), ("spark" if n % 4 == 1 else "")


def claim_and_volume(pod: str, namespace: str, node: str, base: Path, kind: str, app: str,
                     exec_id: str) -> tuple[dict, dict, Path]:
    """The bound claim `<pod>-pvc-0`, its PV, and the PV's directory on the node (not created)."""
    claim, claim_uid = f"{pod}-pvc-0", str(uuid.uuid4())
    name = f"pvc-{claim_uid}"
    path = base / f"{name}_{namespace}_{claim}"
    source = {"hostPath": {"path": str(path), "type": "DirectoryOrCreate"}} if kind == "hostPath" \
        else {"local": {"path": str(path)}}
    pvc = {"metadata": {"name": claim, "namespace": namespace, "uid": claim_uid,
                        "labels": {"spark-app-selector": app, "spark-exec-id": exec_id}},
           "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                    "storageClassName": STORAGE_CLASS, "volumeMode": "Filesystem", "volumeName": name},
           "status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"}}}
    pv = {"metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": "rancher.io/local-path"}},
          "spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"},
                   "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": claim,
                                "namespace": namespace, "uid": claim_uid},
                   **source,
                   "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                       {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}},
                   "persistentVolumeReclaimPolicy": "Delete", "storageClassName": STORAGE_CLASS,
                   "volumeMode": "Filesystem"},
          "status": {"phase": "Bound"}}
    return pvc, pv, path


def pod_volumes(claim: str, sub_path: str) -> tuple[list[dict], list[dict]]:
    """The executor pod's volumes and its container's volumeMounts, as Spark writes them for
    spark.kubernetes.executor.volumes.persistentVolumeClaim.spark-local-dir-1.*."""
    volumes = [{"name": VOLUME, "persistentVolumeClaim": {"claimName": claim, "readOnly": False}}]
    mounts = [{"name": VOLUME, "mountPath": MOUNT_PATH, "readOnly": False, "subPath": sub_path}]
    return volumes, mounts


def mount_ns_argv(shown: Path, hidden: Path) -> list[str]:
    """The argv prefix that runs a command in a new mount namespace where MOUNT_PATH is `shown`."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", _KUBELET, "kubelet", str(shown),
            str(hidden)]


# -- the test's side ----------------------------------------------------------------------------------------------


def mount_ns(pid: int) -> int | None:
    """The inode of the mount namespace of process `pid` (None once it is gone)."""
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return None


def pids_in_mount_ns(ns: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and mount_ns(int(entry.name)) == ns:
            out.append(int(entry.name))
    return out


def mounted_at(pid: int, mount_point: str) -> list[str]:
    """The `root` fields of process `pid`'s mounts at `mount_point` (what each shows there)."""
    try:
        text = Path(f"/proc/{pid}/mountinfo").read_text()
    except OSError:
        return []
    return [f[3] for f in (line.split() for line in text.splitlines()) if f[4] == mount_point]


def mounts_of(name: str) -> list[tuple[int, str]]:
    """(pid, mount point) of every mount, in any process's namespace, that shows a directory named
    `name` or below it (a node volume directory's name is unique: it holds the claim's uid)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "mountinfo").read_text()
        except OSError:
            continue
        for f in (line.split() for line in text.splitlines()):
            if f"/{name}" in f[3]:
                out.append((int(entry.name), f[4]))
    return out
