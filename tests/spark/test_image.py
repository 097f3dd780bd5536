"""The agent's image, built here and run the way the hostnetwork DaemonSet runs it.

deploy/image/build.sh builds the image; its root filesystem is unpacked from buildah's OCI layout and
the pod is started from it in new mount and PID namespaces (image_root.py): first the `prepare-dirs`
init container (root with the manifest's three capabilities), then the agent container (uid:gid 185),
each through the image's own entrypoint with the args, env and volume mount paths of the rendered
DaemonSet. Then Spark's real client (the Java driver on the pyspark jars) registers an executor and
fetches blocks through it, /readyz answers, and SIGTERM stops it with exit code 0. The image's nft
(pod network mode's) runs from the same root in a network namespace the test makes, with only the
podnetwork overlay's capabilities, and every file copied from a Debian package has its notices.

Needs root, buildah, unshare, setpriv and chroot. Without them the tests skip, except under CI=true,
where they fail: a CI run that did not run the image is not a pass.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tomllib
import urllib.request
from pathlib import Path

import pytest
import yaml

from image_root import REPO, build_image, container_env, expand, have_tools, pid_in_pod, start_in_pod, unpack
from servers import free_port, port_accepts, wait_until
from shuffle_layout import crc32, make_executor_dirs, sha256

pytestmark = pytest.mark.image
CARGO = tomllib.loads((REPO / "Cargo.toml").read_text())["package"]
# The nft pod network mode runs: the path the podnetwork overlay's conf gives.
PODNET_NFT = re.search(r"^agent\.network\.nft\s+(\S+)",
                       (REPO / "deploy/overlays/podnetwork/agent.conf").read_text(), re.M).group(1)


def need(ok: bool, why: str):
    if not ok:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and the image test cannot run: {why}", pytrace=False)
        pytest.skip(why)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    missing = have_tools()
    need(not missing, f"missing {missing} (Debian packages buildah, util-linux, coreutils)")
    need(os.geteuid() == 0, "namespaces, mounts and chown need root")
    need(Path(PODNET_NFT).is_file(), f"no {PODNET_NFT} to copy into the image (Debian package nftables)")
    name, log = build_image()
    img = unpack(name, tmp_path_factory.mktemp("image"))
    print(f"\n[image] {name} id {img.image_id}, layers {img.size_bytes} bytes uncompressed\n{log}")
    return img


def rendered_pod(overlay: str) -> dict:
    """The DaemonSet's pod spec as `overlay` renders it."""
    out = subprocess.run(["kubectl", "kustomize", str(REPO / "deploy" / "overlays" / overlay)],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    ds = next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "DaemonSet")
    return ds["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def pod() -> dict:
    return rendered_pod("hostnetwork")


def named(items: list[dict], name: str) -> dict:
    return next(i for i in items if i["name"] == name)


def test_image_runs_as_the_manifests_uid_and_carries_version_source_and_licence(image, pod):
    cfg = image.config["config"]
    sc = named(pod["containers"], "agent")["securityContext"]
    assert cfg["User"] == f'{sc["runAsUser"]}:{sc["runAsGroup"]}' == "185:185"
    assert cfg["Entrypoint"] == ["/usr/bin/spark-shuffle-agent"]
    labels = cfg["Labels"]
    assert labels["org.opencontainers.image.version"] == CARGO["version"]
    assert labels["org.opencontainers.image.licenses"] == CARGO["license"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert labels["org.opencontainers.image.revision"] in (head, head + "-dirty")
    assert labels["org.opencontainers.image.source"]


def test_image_holds_the_agent_nft_their_libraries_and_nothing_to_run_besides(image, tmp_path):
    root = image.rootfs
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink())
    executables = [f for f in files if os.access(root / f, os.X_OK) and not f.split("/")[-1].startswith(("ld-", "lib"))]
    assert executables == ["usr/bin/spark-shuffle-agent", PODNET_NFT.lstrip("/")], files
    assert "usr/share/doc/spark-shuffle-agent/LICENSE" in files
    assert not [f for f in files if f.endswith("/sh") or f.startswith(("bin/", "sbin/"))], files


def test_every_file_copied_from_a_debian_package_comes_with_that_packages_copyright_and_licences(image):
    """nftables is GPL-2, glibc LGPL-2.1, and so on: their notices and licence texts ship with them."""
    root = image.rootfs
    lines = (root / "usr/share/doc/spark-shuffle-agent/THIRD-PARTY").read_text().splitlines()
    rows = [line.split() for line in lines[lines.index("file package version source-package source-version") + 1:]]
    assert rows and all(len(r) == 5 for r in rows), lines
    from_host = {str(p.relative_to(root)) for d in ("lib", "lib64", "usr/sbin") for p in (root / d).rglob("*")
                 if p.is_file()}
    assert {r[0].lstrip("/") for r in rows} == from_host
    packages = {r[1].split(":")[0]: r[3] for r in rows}
    assert packages["nftables"] == "nftables" and packages["libc6"] == "glibc", packages
    for pkg in packages:
        assert (root / "usr/share/doc" / pkg / "copyright").is_file(), pkg
    licences = set()
    for copyright in (root / "usr/share/doc").glob("*/copyright"):
        licences |= set(re.findall(r"/usr/share/common-licenses/([A-Za-z0-9.+-]*[A-Za-z0-9+])", copyright.read_text()))
    assert "GPL-2" in licences
    assert all((root / "usr/share/common-licenses" / n).is_file() for n in licences), licences


# A table in the shape src/podnet/redirect.rs renders for a pod (a DNAT map and a reset, IPv4 and
# IPv6), under a name of the test's own.
NFT_TABLE = "spark_shuffle_agent_image_test"
NFT_SCRIPT = f"""table inet {NFT_TABLE} {{
  map dead4 {{ type ipv4_addr : ipv4_addr . inet_service; }}
  map dead6 {{ type ipv6_addr : ipv6_addr . inet_service; }}
  chain out {{ type nat hook output priority -110; policy accept;
    meta l4proto tcp tcp dport 7337 dnat ip addr . port to ip daddr map @dead4 comment "image test"
    meta l4proto tcp tcp dport 7337 dnat ip6 addr . port to ip6 daddr map @dead6 comment "image test"
  }}
  chain rst {{ type filter hook output priority filter; policy accept;
    meta l4proto tcp tcp dport 7337 ip daddr @dead4 ct status != dnat reject with tcp reset comment "image test"
    meta l4proto tcp tcp dport 7337 ip6 daddr @dead6 ct status != dnat reject with tcp reset comment "image test"
  }}
}}
add element inet {NFT_TABLE} dead4 {{ 10.244.1.7 : 192.0.2.10 . 7337 }}
add element inet {NFT_TABLE} dead6 {{ fd00::7 : fd00::a . 7337 }}
"""


def test_the_images_nft_runs_from_its_own_root_and_programs_a_fresh_network_namespace(image):
    """nft from the unpacked image (chroot: nothing of the host's filesystem), as root with only the
    capabilities the podnetwork overlay adds, in a network namespace of its own that goes away with
    the process: the table is written (nft -f -, as src/podnet/nft.rs applies it), read back as JSON
    (nft -j list, as the agent observes it), and is not in the host's namespace."""
    root = str(image.rootfs)
    caps = named(rendered_pod("podnetwork")["containers"], "agent")["securityContext"]["capabilities"]["add"]
    # SYS_CHROOT only to enter the root, as image_root.py does for the init container.
    bounding = ",".join(["-all", "+sys_chroot"] + [f"+{c.lower()}" for c in caps])
    in_image = ["setpriv", f"--bounding-set={bounding}", "--inh-caps=-all", "--", "chroot", root, PODNET_NFT]

    version = subprocess.run(in_image + ["--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("nftables v"), version

    # One `sh` in the new namespace runs both nft's, so they see the same namespace.
    apply_and_list = subprocess.run(
        ["unshare", "--net", "--", "sh", "-c", '"$@" -f - && "$@" -j list table inet ' + NFT_TABLE, "sh", *in_image],
        input=NFT_SCRIPT, capture_output=True, text=True, timeout=60)
    assert apply_and_list.returncode == 0, apply_and_list
    listing = json.loads(apply_and_list.stdout)["nftables"]
    rules = [i["rule"] for i in listing if "rule" in i]
    assert sorted(r["chain"] for r in rules) == ["out", "out", "rst", "rst"], listing
    assert {r.get("comment") for r in rules} == {"image test"}, listing
    maps = {i["map"]["name"]: i["map"].get("elem") for i in listing if "map" in i}
    assert maps["dead4"] == [["10.244.1.7", {"concat": ["192.0.2.10", 7337]}]], listing
    assert maps["dead6"] == [["fd00::7", {"concat": ["fd00::a", 7337]}]], listing

    # The namespace ended with its last process; the host's never had the table.
    host = subprocess.run(in_image + ["list", "table", "inet", NFT_TABLE], capture_output=True, text=True, timeout=60)
    assert host.returncode != 0 and "No such file or directory" in host.stderr, host


def test_the_image_prepares_its_dirs_serves_the_real_spark_client_and_stops_on_sigterm(
        image, pod, java_driver, tmp_path, app_id):
    host = {n: tmp_path / n for n in ("local", "state", "config")}
    for d in host.values():
        d.mkdir(mode=0o755)  # as kubelet's DirectoryOrCreate leaves them: root:root 0755
    (host["config"] / "spark-shuffle-agent.conf").write_text((REPO / "deploy/base/agent.conf").read_text())
    init, agent = named(pod["initContainers"], "prepare-dirs"), named(pod["containers"], "agent")
    volume_of = {v["name"]: v for v in pod["volumes"]}
    assert set(volume_of) == {"spark-local", "state", "config", "tmp"}, "a new volume: mount it here too"

    def mounts(c: dict):
        # The emptyDir /tmp is a tmpfs the pod script mounts for every container.
        return [(str(host[{"spark-local": "local"}.get(m["name"], m["name"])]), m["mountPath"], m.get("readOnly", False))
                for m in c["volumeMounts"] if m["name"] != "tmp"]

    entry = image.config["config"]["Entrypoint"]
    path_env = dict(e.split("=", 1) for e in image.config["config"].get("Env", []))

    # The init container: root, the manifest's capabilities, the manifest's args.
    env = {**path_env, **container_env(init, "node-a")}
    assert init["securityContext"]["runAsUser"] == 0
    log = (tmp_path / "init.log").open("w+")
    p = start_in_pod(image.rootfs, "root", mounts(init), entry + expand(init["args"], env), env, log)
    assert p.wait(timeout=60) == 0, f"prepare-dirs failed:\n{Path(log.name).read_text()}"
    local_path = named(init["volumeMounts"], "spark-local")["mountPath"]
    state_path = named(init["volumeMounts"], "state")["mountPath"]
    init_out = Path(log.name).read_text()
    assert f"2770 185:185 {local_path}" in init_out and f"0750 185:185 {state_path}" in init_out, init_out
    st = host["local"].stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o2770, 185, 185)

    # The agent container, on free ports (7337 may be in use on a shared host); everything else as rendered.
    port, metrics_port = free_port(), free_port()
    args = list(agent["args"])
    args[args.index("--port") + 1] = str(port)
    args[args.index("--metrics-port") + 1] = str(metrics_port)
    sc = agent["securityContext"]
    env = {**path_env, **container_env(agent, "node-a")}
    log_path = tmp_path / "agent.log"
    log = log_path.open("w")
    p = start_in_pod(image.rootfs, f'{sc["runAsUser"]}:{sc["runAsGroup"]}', mounts(agent), entry + args, env, log)
    try:
        wait_until(lambda: '"message":"listening"' in log_path.read_text() or p.poll() is not None, 60, what="listening")
        assert p.poll() is None, f"the agent exited {p.returncode}:\n{log_path.read_text()}"
        assert port_accepts("127.0.0.1", port)
        ready = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=10)
        assert ready.status == 200

        # Spark's client registers the executor with the paths the executor pod would use (the same
        # hostPath at the same absolute path) and fetches; the files are written on the "node".
        ex = make_executor_dirs(str(host["local"] / "exec0"), 2, 64)
        mo = ex.write_map_output(0, 0, [13, 0, 29])
        pod_dirs = [d.replace(str(host["local"]), local_path) for d in ex.local_dirs]
        steps = [["register", "--exec", "0", *sum((["--dir", d] for d in pod_dirs), []), "--subdirs", "64"],
                 ["fetch", "--exec", "0", "--id", "shuffle_0_0_0", "--id", "shuffle_0_0_2"]]
        r = java_driver.run(steps, port=port, app=app_id)
        assert r.one(0)["ok"], r.debug()
        blocks = r.blocks(1)
        for rid in (0, 2):
            b, want = blocks[f"shuffle_0_0_{rid}"], mo.block(rid)
            assert b["ok"] and b["len"] == len(want), r.debug()
            assert (b["crc32"], b["sha256"]) == (crc32(want), sha256(want)), r.debug()
        journal = [f for f in host["state"].rglob("*") if f.is_file()]
        assert journal and all(f.stat().st_uid == 185 for f in journal), "the registration is journaled by uid 185"

        os.kill(pid_in_pod(p), signal.SIGTERM)
        assert p.wait(timeout=60) == 0, log_path.read_text()
        assert '"message":"stopped"' in log_path.read_text()
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
