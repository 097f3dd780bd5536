"""The Kubernetes manifests under deploy/ render, validate, and say what the guide says.

deploy/validate.sh does the rendering (kubectl kustomize) and the schema validation
(kubernetes-validate, strict, offline). These tests run it once, then check the
properties a schema cannot: labels, paths, probes, RBAC verbs, and that the
example Spark settings point at the same ports, paths and labels as the agent.

No cluster is involved: nothing here is applied to a Kubernetes API server.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
import tomllib
import urllib.error
import urllib.request

import pytest
import yaml

from deploy_manifests import (
    AGENT_NAMESPACE, CONF, CONF_SOURCE, DEPLOY, EXTRA_ROLES, EXTRA_ROOTS, LOCAL_DIR, METRICS_PORT, OVERLAYS,
    POD_NETWORK_OVERLAYS, REPO, SHUFFLE_PORT, STATE_DIR, agent_binary, assert_spark_executor_on_local_dir,
    assert_strictly_valid_pod, conf_value, container, flag_values, local_command_line, one, pod_spec,
    probe_python, seconds, spark_executor_pod, submit_confs,
)

# The overlays whose agent container has every capability dropped and adds none. The pod
# network overlays' agent needs three (test_podnetwork.py checks them, and what its binary
# says without them).
WITHOUT_CAPABILITIES = [o for o in OVERLAYS if o not in POD_NETWORK_OVERLAYS]
BASE_ROLE = "spark-shuffle-agent"


def test_validate_script_renders_and_validates_every_overlay_and_component(rendered):
    assert {"hostnetwork", "podnetwork", "podnetwork-volumes", "fork-labels"} == set(OVERLAYS)
    assert {f"{o}{suffix}" for o in OVERLAYS for suffix in ("", "+components")} <= set(rendered)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_daemonset_selector_matches_its_pod_labels(rendered, overlay):
    ds = one(rendered[overlay], "DaemonSet")
    selector = ds["spec"]["selector"]["matchLabels"]
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert selector == {"app.kubernetes.io/name": "spark-shuffle-agent"}
    assert selector.items() <= labels.items()


def test_fork_overlay_pods_carry_the_forks_discovery_labels(rendered):
    labels = one(rendered["fork-labels"], "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert labels["app"] == "spark-shuffle-service"
    assert labels["spark-version"] == "2.2.0"


def test_hostnetwork_overlay_does_not_carry_the_fork_labels(rendered):
    labels = one(rendered["hostnetwork"], "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert "app" not in labels and "spark-version" not in labels


@pytest.mark.parametrize("overlay, network", [("hostnetwork", "host")] + [(o, "pod") for o in POD_NETWORK_OVERLAYS])
def test_the_agent_listens_on_the_node_network_in_the_hostnetwork_and_podnetwork_overlays(rendered, overlay, network):
    # podnetwork: the node listener is where connections to dead executors' IPs are sent.
    host = pod_spec(rendered[overlay])
    assert host["hostNetwork"] is True
    assert host["dnsPolicy"] == "ClusterFirstWithHostNet"
    ports = {p["name"]: p for p in container(host, "agent")["ports"]}
    assert ports["shuffle"]["hostPort"] == ports["shuffle"]["containerPort"] == SHUFFLE_PORT
    labels = one(rendered[overlay], "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert labels["spark-shuffle-agent/network"] == network


def test_fork_overlay_listens_on_the_pod_network(rendered):
    fork = pod_spec(rendered["fork-labels"])
    assert not fork.get("hostNetwork", False)
    assert all("hostPort" not in p for p in container(fork, "agent")["ports"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_container_ports_match_the_port_flags(rendered, overlay):
    agent = container(pod_spec(rendered[overlay]), "agent")
    ports = {p["name"]: p["containerPort"] for p in agent["ports"]}
    assert ports == {"shuffle": SHUFFLE_PORT, "metrics": METRICS_PORT}
    assert flag_values(agent["args"], "--port") == [str(SHUFFLE_PORT)]
    assert flag_values(agent["args"], "--metrics-port") == [str(METRICS_PORT)]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_use_readyz_and_healthz_on_the_metrics_port(rendered, overlay):
    agent = container(pod_spec(rendered[overlay]), "agent")
    assert agent["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert agent["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_shuffle_dir_is_mounted_at_its_host_path_and_passed_as_root(rendered, overlay):
    spec = pod_spec(rendered[overlay])
    volumes = {v["name"]: v for v in spec["volumes"]}
    host_path = volumes["spark-local"]["hostPath"]["path"]
    assert host_path == LOCAL_DIR[overlay]
    for c in [container(spec, "agent"), container(spec, "prepare-dirs", init=True)]:
        mounts = [m["mountPath"] for m in c["volumeMounts"] if m["name"] == "spark-local"]
        assert mounts == [host_path], f"{c['name']} mounts the shuffle dir elsewhere"
    agent = container(spec, "agent")
    assert flag_values(agent["args"], "--root") == [host_path] + EXTRA_ROOTS.get(overlay, [])
    init_env = {e["name"]: e.get("value") for e in container(spec, "prepare-dirs", init=True)["env"]}
    assert init_env["LOCAL_ROOT"] == host_path


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_state_dir_is_a_writable_host_path_passed_as_state_dir(rendered, overlay):
    spec = pod_spec(rendered[overlay])
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["state"]["hostPath"]["path"] == STATE_DIR
    agent = container(spec, "agent")
    mount = next(m for m in agent["volumeMounts"] if m["name"] == "state")
    assert mount["mountPath"] == STATE_DIR and not mount.get("readOnly", False)
    assert flag_values(agent["args"], "--state-dir") == [STATE_DIR]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_outlasts_the_agents_drain(rendered, overlay):
    grace = pod_spec(rendered[overlay])["terminationGracePeriodSeconds"]
    drain = seconds(conf_value("agent.drain.grace") or "30s")
    assert grace > drain, f"grace {grace}s does not outlast agent.drain.grace {drain}s"
    assert grace > 30


@pytest.mark.parametrize("overlay", WITHOUT_CAPABILITIES)
def test_agent_container_is_unprivileged_with_a_read_only_root(rendered, overlay):
    spec = pod_spec(rendered[overlay])
    sc = container(spec, "agent")["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert not sc.get("privileged", False)
    init_sc = container(spec, "prepare-dirs", init=True)["securityContext"]
    assert set(init_sc["capabilities"]["add"]) == {"CHOWN", "FOWNER", "FSETID"}
    assert not init_sc.get("privileged", False)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_daemonset_needs_one_image_whose_prepare_dirs_gets_the_init_env(rendered, overlay):
    spec = pod_spec(rendered[overlay])
    init = container(spec, "prepare-dirs", init=True)
    version = tomllib.loads((REPO / "Cargo.toml").read_text())["package"]["version"]
    images = {c["image"] for c in spec["containers"] + spec["initContainers"]}
    assert images == {f"spark-shuffle-agent:{version}"}, "deploy/image/build.sh builds this one image"
    assert "command" not in init, "the image's entrypoint (the agent) must run prepare-dirs"
    env = {e["name"] for e in init["env"]}
    expanded = re.findall(r"\$\((\w+)\)", " ".join(init["args"]))
    assert init["args"][0] == "prepare-dirs" and set(expanded) <= env and len(expanded) == 4


def test_hostnetwork_agent_runs_as_the_uid_spark_executors_use(rendered):
    spec = pod_spec(rendered["hostnetwork"])
    sc = container(spec, "agent")["securityContext"]
    assert (sc["runAsUser"], sc["runAsGroup"], sc["runAsNonRoot"]) == (185, 185, True)
    init_env = {e["name"]: e.get("value") for e in container(spec, "prepare-dirs", init=True)["env"]}
    assert init_env["DIR_OWNER"] == "185:185"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_grants_only_list_watch_on_pods(rendered, overlay):
    # Exactly the requests the agent makes (src/k8s/): list and watch pods, never get. The
    # roles of the components an overlay uses are checked by those components' tests.
    objects = rendered[overlay]
    assert not [o for o in objects if o["kind"] in ("Role", "RoleBinding")]
    roles = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ClusterRole"}
    assert set(roles) == {BASE_ROLE} | EXTRA_ROLES.get(overlay, set())
    assert roles[BASE_ROLE]["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_cluster_role_binding_names_the_daemonsets_service_account(rendered, overlay):
    objects = rendered[overlay]
    bindings = [o for o in objects if o["kind"] == "ClusterRoleBinding"]
    sa = one(objects, "ServiceAccount")
    ds = one(objects, "DaemonSet")
    roles = {o["metadata"]["name"] for o in objects if o["kind"] == "ClusterRole"}
    assert sorted(b["roleRef"]["name"] for b in bindings) == sorted(roles), "one binding per role"
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": sa["metadata"]["namespace"]}
        ]
    assert ds["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    assert ds["metadata"]["namespace"] == sa["metadata"]["namespace"] == AGENT_NAMESPACE


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_map_carries_the_default_conf_file_and_is_mounted_where_config_points(rendered, overlay):
    objects = rendered[overlay]
    cm = one(objects, "ConfigMap")
    source = CONF_SOURCE[overlay]
    assert cm["data"]["spark-shuffle-agent.conf"] == source.read_text()
    spec = pod_spec(objects)
    volume = next(v for v in spec["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    mount = next(m for m in container(spec, "agent")["volumeMounts"] if m["name"] == "config")
    assert flag_values(container(spec, "agent")["args"], "--config") == [
        f"{mount['mountPath']}/spark-shuffle-agent.conf"
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_daemonset_tolerates_every_taint_and_rolls_one_node_at_a_time(rendered, overlay):
    ds = one(rendered[overlay], "DaemonSet")
    assert {"operator": "Exists"} in ds["spec"]["template"]["spec"]["tolerations"]
    assert ds["spec"]["updateStrategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}
    }


def test_podmonitor_component_scrapes_the_named_metrics_port(rendered):
    objects = rendered["hostnetwork+components"]
    pm = one(objects, "PodMonitor")
    ds = one(objects, "DaemonSet")
    assert pm["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert pm["spec"]["podMetricsEndpoints"][0]["path"] == "/metrics"
    assert pm["metadata"]["namespace"] == ds["metadata"]["namespace"]
    assert ds["spec"]["template"]["spec"]["priorityClassName"] == "system-node-critical"


def test_secret_files_component_grants_only_get_on_secrets_to_the_agents_service_account(rendered):
    # agent.auth.pods.secretFiles read: one GET of a Secret by name (src/k8s/secret_files.rs), never list/watch.
    for overlay in OVERLAYS:
        objects = rendered[f"{overlay}+components"]
        roles = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ClusterRole"}
        assert roles["spark-shuffle-agent-secret-files"]["rules"] == [
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}
        ]
        assert roles["spark-shuffle-agent"]["rules"] == [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}
        ], "the base role is unchanged"
        binding = next(o for o in objects if o["kind"] == "ClusterRoleBinding"
                       and o["roleRef"]["name"] == "spark-shuffle-agent-secret-files")
        sa = one(objects, "ServiceAccount")
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": sa["metadata"]["namespace"]}
        ]


def test_no_overlay_can_read_secrets_without_the_component(rendered):
    for overlay in OVERLAYS:
        rules = [r for o in rendered[overlay] if o["kind"] in ("ClusterRole", "Role") for r in o["rules"]]
        assert not [r for r in rules if "secrets" in r["resources"]], overlay


def test_overlays_without_components_have_no_podmonitor_and_no_priority_class(rendered):
    for overlay in OVERLAYS:
        assert not [o for o in rendered[overlay] if o["kind"] == "PodMonitor"]
        assert "priorityClassName" not in pod_spec(rendered[overlay])


def test_configmap_source_is_identical_to_conf_dir():
    if not CONF.exists():
        pytest.skip("conf/spark-shuffle-agent.conf not written yet")
    assert (DEPLOY / "base" / "agent.conf").read_bytes() == CONF.read_bytes(), (
        "run: cp conf/spark-shuffle-agent.conf deploy/base/agent.conf"
    )


def test_spark_example_for_35_and_4x_points_executors_at_the_agent(rendered):
    confs = submit_confs(DEPLOY / "examples" / "submit-hostnetwork.sh")
    local = LOCAL_DIR["hostnetwork"]
    assert confs["spark.shuffle.service.enabled"] == "true"
    assert confs["spark.shuffle.service.port"] == str(SHUFFLE_PORT)
    assert confs["spark.dynamicAllocation.enabled"] == "true"
    assert confs["spark.dynamicAllocation.shuffleTracking.enabled"] == "false"
    assert confs["spark.blockManager.port"] == "0"
    prefix = "spark.kubernetes.executor.volumes.hostPath.spark-local-dir-1"
    assert confs[f"{prefix}.mount.path"] == confs[f"{prefix}.options.path"] == local
    assert confs["spark.local.dir"] == local
    template = yaml.safe_load((DEPLOY / "examples" / "executor-pod-template.yaml").read_text())
    assert template["spec"]["hostNetwork"] is True
    assert template["spec"]["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert template["spec"]["securityContext"]["runAsUser"] == 185
    # The volume comes from the spark.kubernetes.executor.volumes.* keys; a second
    # definition in the template would give the pod two volumes of that name.
    assert not [v for v in template["spec"].get("volumes", []) if v["name"] == "spark-local-dir-1"]


def test_fork_example_selects_the_fork_overlays_pods(rendered):
    confs = submit_confs(DEPLOY / "examples" / "submit-fork-2.2.sh")
    ds = one(rendered["fork-labels"], "DaemonSet")
    wanted = dict(kv.split("=", 1) for kv in confs["spark.kubernetes.shuffle.labels"].split(","))
    assert wanted.items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    assert confs["spark.kubernetes.shuffle.namespace"] == ds["metadata"]["namespace"]
    assert confs["spark.local.dir"] == LOCAL_DIR["fork-labels"]
    assert confs["spark.shuffle.service.enabled"] == confs["spark.dynamicAllocation.enabled"] == "true"
    rbac = list(yaml.safe_load_all((DEPLOY / "examples" / "fork-driver-rbac.yaml").read_text()))
    role = next(o for o in rbac if o["kind"] == "Role")
    assert role["metadata"]["namespace"] == ds["metadata"]["namespace"]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]


def test_spark_builds_a_host_network_executor_on_the_agents_local_dir_from_the_example_against_a_simulated_api_server(
    rendered, tmp_path
):
    """Real Spark (the pyspark wheel's jars) turns the example settings into an executor pod.

    The API server is simulated (tests/deploy/spark_pod_probe.py): it records the pod
    Spark asks for. No executor runs; this checks the pod Spark would create.
    """
    python = probe_python()
    if python is None or shutil.which("java") is None:
        pytest.skip("needs pyspark and java")
    pod = spark_executor_pod(python, DEPLOY / "examples" / "submit-hostnetwork.sh", tmp_path)
    spec = pod["spec"]
    local = LOCAL_DIR["hostnetwork"]
    assert_spark_executor_on_local_dir(pod, local)
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    executor = spec["containers"][0]
    # spark.blockManager.port=0: no fixed port that hostNetwork would turn into a host port.
    assert not [p for p in executor.get("ports", []) if p.get("containerPort") == 7079]

    agent = container(pod_spec(rendered["hostnetwork"]), "agent")
    assert flag_values(agent["args"], "--root") == [local]

    # And the pod Spark sends is valid Kubernetes, by the same strict schemas.
    assert_strictly_valid_pod(pod, tmp_path)


@pytest.mark.parametrize("overlay", WITHOUT_CAPABILITIES)
def test_the_daemonsets_command_line_starts_the_agent_and_its_probes_answer(rendered, overlay, tmp_path):
    """The container args, with ports set to 0 and host paths moved under tmp_path, run the real binary."""
    binary = agent_binary()
    if binary is None:
        pytest.skip("agent binary not built (set AGENT_BIN or cargo build)")
    objects = rendered[overlay]
    spec = pod_spec(objects)
    args, env = local_command_line(objects, tmp_path)
    log = tmp_path / "agent.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(binary), *args], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        metrics_addr = None
        deadline = time.monotonic() + 30
        while metrics_addr is None and time.monotonic() < deadline and proc.poll() is None:
            for line in log.read_text().splitlines():
                if line.startswith("{") and json.loads(line).get("message") == "metrics listening":
                    metrics_addr = json.loads(line)["addr"].replace("0.0.0.0", "127.0.0.1")
            time.sleep(0.1)
        assert metrics_addr, f"agent did not start:\n{log.read_text()}"
        port = int(metrics_addr.rsplit(":", 1)[1])
        probe = {p: None for p in ("/readyz", "/healthz")}
        while time.monotonic() < deadline and not all(code == 200 for code in probe.values()):
            for path in probe:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                        probe[path] = r.status
                except (urllib.error.URLError, OSError):
                    probe[path] = None
            time.sleep(0.1)
        assert probe == {"/readyz": 200, "/healthz": 200}, log.read_text()
        status = subprocess.run([str(binary), "status", "--addr", f"127.0.0.1:{port}"],
                                capture_output=True, text=True, timeout=30)
        assert status.returncode == 0, status.stdout + status.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=spec["terminationGracePeriodSeconds"])
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = "killed after the grace period"
    assert code == 0, log.read_text()
