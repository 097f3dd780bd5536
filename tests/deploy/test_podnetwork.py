"""deploy/overlays/podnetwork grants the agent what pod network mode checks for and nothing more,
and its examples run executors as plain pods.

The generic checks (ports, paths, probes, RBAC, ConfigMap) run on this overlay too, from
test_manifests.py. These are the ones only pod mode has: capabilities, the host's /proc, the
network keys, what the agent binary says when it starts with the overlay's command line but
without what the overlay gives it; and the executor pod template (no hostNetwork, the init
container that waits for the in-pod listener), the submit example, and the executor pod real
Spark builds from them.

No cluster is involved. Whether the capabilities are enough on a real node (seccomp, AppArmor,
SELinux, the runtime) is not checked here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from deploy_manifests import (
    CONF_SOURCE, DEPLOY, POD_NETWORK_OVERLAYS, REPO, SHUFFLE_PORT, agent_binary, assert_spark_executor_on_local_dir,
    assert_strictly_valid_pod, conf_entries, container, flag_values, local_command_line, pod_spec,
    probe_python, spark_executor_pod, submit_confs,
)

OVERLAY_CONF = CONF_SOURCE["podnetwork"]
# The uid and gid Spark's images run executors as.
EXECUTOR_UID_GID = (185, 185)


def pod_mode_capabilities() -> set[str]:
    """The capabilities src/podnet/privilege.rs checks at start, as Kubernetes names them."""
    source = (REPO / "src" / "podnet" / "privilege.rs").read_text()
    found = set(re.findall(r"\(CapabilitySet::(\w+), \"CAP_\1\"", source))
    assert found, "no capability list found in src/podnet/privilege.rs"
    return found


def base_agent_security() -> dict:
    """The agent container's securityContext in deploy/base/daemonset.yaml."""
    ds = yaml.safe_load((DEPLOY / "base" / "daemonset.yaml").read_text())
    return container(ds["spec"]["template"]["spec"], "agent")["securityContext"]


@pytest.mark.parametrize("overlay", POD_NETWORK_OVERLAYS)
def test_the_podnetwork_agent_is_not_privileged_drops_all_and_adds_exactly_what_pod_mode_checks(rendered, overlay):
    spec = pod_spec(rendered[overlay])
    sc = container(spec, "agent")["securityContext"]
    assert sc.get("privileged") is not True
    assert sc["capabilities"]["drop"] == ["ALL"]
    added = sc["capabilities"]["add"]
    base_added = set(base_agent_security()["capabilities"].get("add", []))
    assert len(added) == len(set(added)), added
    assert set(added) == pod_mode_capabilities() | base_added == {"SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE"}
    # The API server refuses CAP_SYS_ADMIN together with allowPrivilegeEscalation: false; the
    # OpenAPI schemas deploy/validate.sh uses cannot see that rule.
    assert sc["allowPrivilegeEscalation"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert not spec.get("hostPID") and not spec.get("hostIPC")


@pytest.mark.parametrize("overlay", POD_NETWORK_OVERLAYS)
def test_the_podnetwork_agent_runs_as_uid_0_in_the_executors_group_and_owns_the_prepared_dirs(rendered, overlay):
    # uid 0: added capabilities never reach a non-root container's effective set (the start-up
    # test below shows it). The executors' group gives it their files, as in base.
    spec = pod_spec(rendered[overlay])
    sc = container(spec, "agent")["securityContext"]
    assert (sc["runAsUser"], sc["runAsGroup"], sc["runAsNonRoot"]) == (0, EXECUTOR_UID_GID[1], False)
    assert sc["runAsGroup"] == base_agent_security()["runAsGroup"]
    init = container(spec, "prepare-dirs", init=True)
    env = {e["name"]: e.get("value") for e in init["env"]}
    assert env["DIR_OWNER"] == f"{sc['runAsUser']}:{sc['runAsGroup']}"
    assert env["LOCAL_ROOT_MODE"] == "2770", "executors create their dirs through the group"
    hostnetwork = pod_spec(rendered["hostnetwork"])
    assert init["securityContext"] == container(hostnetwork, "prepare-dirs", init=True)["securityContext"]


@pytest.mark.parametrize("overlay", POD_NETWORK_OVERLAYS)
def test_the_podnetwork_agent_mounts_the_hosts_proc_read_only_where_the_conf_points(rendered, overlay):
    spec = pod_spec(rendered[overlay])
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["host-proc"]["hostPath"] == {"path": "/proc", "type": "Directory"}
    mounts = [m for m in container(spec, "agent")["volumeMounts"] if m["name"] == "host-proc"]
    assert len(mounts) == 1 and mounts[0]["readOnly"] is True
    assert conf_entries(CONF_SOURCE[overlay])["agent.network.procRoot"] == mounts[0]["mountPath"] == "/host/proc"
    init = container(spec, "prepare-dirs", init=True)
    assert not [m for m in init["volumeMounts"] if m["name"] == "host-proc"]


def test_the_podnetwork_conf_turns_on_pod_mode_and_sets_only_the_network_keys():
    entries = conf_entries(OVERLAY_CONF)
    assert set(entries) == {"agent.network.mode", "agent.network.procRoot", "agent.network.nft"}
    assert entries["agent.network.mode"] == "pod"
    assert entries["agent.network.nft"].startswith("/"), "the image sets no PATH"


def need(ok: bool, why: str):
    if not ok:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and the podnetwork start-up test cannot run: {why}", pytrace=False)
        pytest.skip(why)


def start_refused(binary: Path, rendered: dict, bounding: list[str], user: int | None = None) -> list[str]:
    """Runs the podnetwork command line with only `bounding` capabilities (as root, or as
    `user`); returns the `error:` lines of an agent that exited within 30 s."""
    work = Path(tempfile.mkdtemp(prefix="podnetwork-start-"))
    try:
        work.chmod(0o755)  # `user` must reach the config and state dirs
        args, env = local_command_line(rendered["podnetwork"], work)
        # Kubernetes is required in pod mode; point it at a port nothing listens on (the agent
        # never waits for the API server at start).
        kubeconfig = work / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "c",
            "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
            "users": [{"name": "u", "user": {}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        }))
        for path in work.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
            if user is not None:
                os.chown(path, user, user)
        setpriv = ["setpriv", "--bounding-set", ",".join(["-all"] + [f"+{c.lower()}" for c in bounding]),
                   "--inh-caps", "-all"]
        if user is not None:
            setpriv += ["--reuid", str(user), "--regid", str(user), "--clear-groups"]
        run = subprocess.run([*setpriv, "--", str(binary), *args, "--kubeconfig", str(kubeconfig)],
                             env=env, capture_output=True, text=True, timeout=30)
        assert run.returncode != 0, f"the agent started:\n{run.stderr}"
        return [line for line in run.stderr.splitlines() if line.startswith("error:")]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_the_podnetwork_command_line_stops_the_agent_with_one_line_naming_what_it_lacks(rendered):
    """The real binary, the overlay's args and conf (mounts moved to a temp dir, ports 0), with
    exactly the overlay's capabilities, then with one of them taken away, then as uid 185.

    It never gets far enough to touch this machine's network: there is no /host/proc here, and
    the start-up check stops it before any port is bound or any nft table is written.
    """
    binary = agent_binary()
    if binary is None:
        pytest.skip("agent binary not built (set AGENT_BIN or cargo build)")
    need(os.geteuid() == 0, "setting the capability bounding set needs root")
    need(shutil.which("setpriv") is not None, "setpriv missing (Debian package util-linux)")
    if Path("/host/proc").exists():
        pytest.skip("this machine has a /host/proc: the agent would really start pod mode here")
    added = container(pod_spec(rendered["podnetwork"]), "agent")["securityContext"]["capabilities"]["add"]

    # With the overlay's capabilities, the capability check passes and the next one (the host's
    # /proc, which the DaemonSet mounts and this machine lacks) stops it.
    lines = start_refused(binary, rendered, added)
    assert len(lines) == 1 and lines[0].startswith("error: pod network mode needs the host's /proc at /host/proc"), lines
    for cap in added:
        lines = start_refused(binary, rendered, [c for c in added if c != cap])
        assert len(lines) == 1 and lines[0].startswith(f"error: pod network mode needs CAP_{cap} ("), lines
    # Why the overlay runs the agent as uid 0: as uid 185 the same capabilities stay in the
    # bounding set only, as Kubernetes leaves them for a non-root container.
    lines = start_refused(binary, rendered, added, user=EXECUTOR_UID_GID[0])
    assert len(lines) == 1 and lines[0].startswith("error: pod network mode needs CAP_SYS_ADMIN ("), lines


EXAMPLES = DEPLOY / "examples"
POD_TEMPLATE = EXAMPLES / "executor-pod-template-podnetwork.yaml"
SUBMIT = EXAMPLES / "submit-podnetwork.sh"
GATE = "wait-for-shuffle-listener"


def agent_root(rendered: dict) -> str:
    """The podnetwork agent's one --root: the executors' local dir."""
    [root] = flag_values(container(pod_spec(rendered["podnetwork"]), "agent")["args"], "--root")
    return root


def test_the_podnetwork_example_runs_executors_as_plain_pods_gated_on_the_in_pod_listener(rendered):
    template = yaml.safe_load(POD_TEMPLATE.read_text())["spec"]
    assert not template.get("hostNetwork", False)
    assert "dnsPolicy" not in template
    assert "hostPort" not in POD_TEMPLATE.read_text()
    sc = template["securityContext"]
    assert (sc["runAsUser"], sc["runAsGroup"]) == EXECUTOR_UID_GID
    agent_spec = pod_spec(rendered["podnetwork"])
    assert sc["runAsGroup"] == container(agent_spec, "agent")["securityContext"]["runAsGroup"]
    # As in executor-pod-template.yaml: the volume comes from the volumes.hostPath settings.
    assert not [v for v in template.get("volumes", []) if v["name"] == "spark-local-dir-1"]

    gate = container(template, GATE, init=True)
    assert gate["args"][0] == "wait-for-listener" and "command" not in gate, "the image's entrypoint is the agent"
    assert gate["args"][gate["args"].index("--port") + 1] == str(SHUFFLE_PORT)
    assert gate["args"][gate["args"].index("--timeout") + 1] == "60s"
    assert gate["image"] in {c["image"] for c in agent_spec["containers"]}, "the DaemonSet's one image"
    assert gate["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert gate["securityContext"]["allowPrivilegeEscalation"] is False


def test_the_podnetwork_submit_example_points_executors_at_the_agent_without_host_networking(rendered):
    confs = submit_confs(SUBMIT)
    assert confs["spark.shuffle.service.enabled"] == "true"
    assert confs["spark.shuffle.service.port"] == str(SHUFFLE_PORT)
    assert confs["spark.dynamicAllocation.enabled"] == "true"
    assert confs["spark.dynamicAllocation.shuffleTracking.enabled"] == "false"
    assert confs["spark.shuffle.service.removeShuffle"] == "true"
    assert int(confs["spark.shuffle.registration.maxAttempts"]) > 3, "Spark's default is 3"
    assert "spark.blockManager.port" not in confs, "no host ports to clash on the pod network"
    assert Path(confs["spark.kubernetes.executor.podTemplateFile"]) == POD_TEMPLATE
    local = agent_root(rendered)
    prefix = "spark.kubernetes.executor.volumes.hostPath.spark-local-dir-1"
    assert confs[f"{prefix}.mount.path"] == confs[f"{prefix}.options.path"] == confs["spark.local.dir"] == local


def test_spark_builds_a_pod_network_executor_with_the_gate_on_the_agents_local_dir_against_a_simulated_api_server(
    rendered, tmp_path
):
    """Real Spark (the pyspark wheel's jars) turns the podnetwork example into an executor pod.

    The API server is simulated (tests/deploy/spark_pod_probe.py): it records the pod Spark
    asks for. No executor runs and no agent adopts anything; this checks the pod Spark would
    create: its own network, the template's init container kept, the agent's local dir.
    """
    python = probe_python()
    if python is None or shutil.which("java") is None:
        pytest.skip("needs pyspark and java")
    pod = spark_executor_pod(python, SUBMIT, tmp_path)
    spec = pod["spec"]
    assert_spark_executor_on_local_dir(pod, agent_root(rendered))
    assert not spec.get("hostNetwork", False)
    assert spec.get("dnsPolicy") != "ClusterFirstWithHostNet"
    template_gate = container(yaml.safe_load(POD_TEMPLATE.read_text())["spec"], GATE, init=True)
    assert [c["name"] for c in spec.get("initContainers", [])] == [GATE]
    assert container(spec, GATE, init=True)["args"] == template_gate["args"]
    assert_strictly_valid_pod(pod, tmp_path)
