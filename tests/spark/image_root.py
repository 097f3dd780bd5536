"""The agent's image as a container runtime would run it, without a runtime (none works on these hosts).

build_image() runs deploy/image/build.sh; unpack() reads the image from buildah as an OCI layout and
extracts its layers into a directory; run_pod() starts, in new mount and PID namespaces, the pod the
hostnetwork overlay renders: the `prepare-dirs` init container's args and then the agent container's
args, each through the IMAGE's own entrypoint (from its config), with the pod's volumes bind-mounted at
the pod's mount paths, the image's filesystem read-only, the init step as root with only the capabilities
the manifest grants it (CHOWN, FOWNER, FSETID; SYS_CHROOT to enter the root), and the agent as the image's
and the manifest's uid:gid. Nothing of the host's filesystem is visible to the agent but those volumes,
/dev/{null,zero,random,urandom} (as runtimes provide them) and a fresh /proc, so a missing library or
file in the image fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Runs inside the new mount and PID namespaces: the pod's mounts, then exec (as PID 1) the container's
# process. Args: rootfs, user ("root" or uid:gid), host-dir:mount-path[:ro]..., "--", argv...
POD_SCRIPT = r"""
set -eu
R=$1; MODE=$2; shift 2
mount --make-rprivate /
mount --bind "$R" "$R"
while [ "$1" != "--" ]; do
    src=${1%%:*}; rest=${1#*:}; dst=${rest%%:*}; opt=${rest#"$dst"}
    mount --bind "$src" "$R$dst"
    if [ "$opt" = ":ro" ]; then mount -o remount,bind,ro "$R$dst"; fi
    shift
done
shift
mount -t proc proc "$R/proc"
mount -t tmpfs -o size=64m,mode=1777 tmpfs "$R/tmp"
mount -t tmpfs -o mode=0755 tmpfs "$R/dev"
for d in null zero random urandom; do : > "$R/dev/$d"; mount --bind "/dev/$d" "$R/dev/$d"; done
mount -o remount,bind,ro "$R"
if [ "$MODE" = root ]; then
    exec setpriv --bounding-set=-all,+chown,+fowner,+fsetid,+sys_chroot --inh-caps=-all -- chroot "$R" "$@"
fi
exec chroot --userspec="$MODE" --groups="${MODE#*:}" "$R" "$@"
"""


@dataclass
class Image:
    name: str
    image_id: str
    config: dict  # the OCI image config: config.Entrypoint, config.User, config.Labels, rootfs...
    size_bytes: int  # sum of the file sizes in its layers
    rootfs: Path  # where unpack() extracted it


def build_image() -> tuple[str, str]:
    """deploy/image/build.sh; returns (image name, its log). The name is the last line of stdout."""
    p = subprocess.run([str(REPO / "deploy" / "image" / "build.sh")], cwd=REPO, capture_output=True,
                       text=True, timeout=1800)
    assert p.returncode == 0, f"build.sh failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p.stdout.strip().splitlines()[-1], p.stderr


def unpack(name: str, dest: Path) -> Image:
    """The image as an OCI layout (buildah push), its layers extracted into dest/rootfs."""
    layout = dest / "oci"
    subprocess.run(["buildah", "push", "--quiet", "--disable-compression", name, f"oci:{layout}"],
                   check=True, capture_output=True, timeout=600)
    blob = lambda d: layout / "blobs" / d.replace(":", "/")  # noqa: E731
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads(blob(index["manifests"][0]["digest"]).read_text())
    config = json.loads(blob(manifest["config"]["digest"]).read_text())
    root = dest / "rootfs"
    root.mkdir()
    size = 0
    for layer in manifest["layers"]:
        with tarfile.open(blob(layer["digest"]), "r:*") as t:
            members = t.getmembers()
            assert not [m.name for m in members if "/.wh." in "/" + m.name], "whiteouts in a FROM scratch image"
            size += sum(m.size for m in members)
            t.extractall(root, filter="fully_trusted")  # ours, just built; keeps modes and owners
    return Image(name, manifest["config"]["digest"], config, size, root)


def expand(words: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of command/args from the container's env."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), w) for w in words]


def container_env(c: dict, node: str) -> dict[str, str]:
    out = {}
    for e in c.get("env", []):
        if "value" in e:
            out[e["name"]] = e["value"]
        else:  # downward API: what the test pod "is"
            path = e["valueFrom"]["fieldRef"]["fieldPath"]
            out[e["name"]] = {"spec.nodeName": node, "metadata.name": "agent-test", "metadata.namespace": "test"}[path]
    return out


def have_tools() -> list[str]:
    return [t for t in ("buildah", "unshare", "setpriv", "chroot", "mount") if shutil.which(t) is None]


def start_in_pod(rootfs: Path, user: str, mounts: list[tuple[str, str, bool]], argv: list[str],
                 env: dict[str, str], log) -> subprocess.Popen:
    """Starts argv (absolute, inside rootfs) as `user` ("root" or "uid:gid") in new mount and PID
    namespaces with `mounts` (host dir, path in the pod, read-only). Output goes to `log`. `env` is
    the container's environment; its PATH (the image's) also finds mount, setpriv and chroot on the host."""
    words = []
    for host, path, ro in mounts:
        (rootfs / path.lstrip("/")).mkdir(parents=True, exist_ok=True)  # a runtime creates mount points too
        words.append(f"{host}:{path}" + (":ro" if ro else ""))
    for d in ("proc", "tmp", "dev"):
        (rootfs / d).mkdir(exist_ok=True)
    cmd = ["unshare", "--mount", "--pid", "--fork", "--", "sh", "-c", POD_SCRIPT, "sh", str(rootfs), user,
           *words, "--", *argv]
    return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def pid_in_pod(unshare: subprocess.Popen) -> int:
    """The host pid of the pod's PID 1 (unshare's one child, which exec'd the container's process)."""
    children = Path(f"/proc/{unshare.pid}/task/{unshare.pid}/children").read_text().split()
    assert len(children) == 1, f"unshare has children {children}"
    return int(children[0])
