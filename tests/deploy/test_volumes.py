"""components/node-local-volumes and deploy/overlays/podnetwork-volumes: executors' local dirs on
node-local PersistentVolumes, and executor pods that pass the Pod Security "restricted" level.

The generic checks (ports, paths, probes, RBAC, ConfigMap) run on the overlay too, from
test_manifests.py, and pod mode's (capabilities, the host's /proc) from test_podnetwork.py. These
are what only this setup has: `get` on PVCs and PVs and nothing more, the provisioner's directory
mounted in the agent at its node path and served as a root, the translation turned on; the
restricted executor pod template, the StorageClass and submit examples; and the executor pod real
Spark builds from them, checked against every rule of the restricted level (pod_security.py).

No cluster is involved: whether a real provisioner, kubelet and admission controller agree is not
checked here, and no executor runs.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import yaml

import pod_security
from deploy_manifests import (
    CONF_SOURCE, DEFAULT_CONF, DEPLOY, LOCAL_DIR, NODE_LOCAL_VOLUMES_ROLE, OVERLAYS, PROVISIONER_DIR, REPO,
    SHUFFLE_PORT, assert_strictly_valid_pod, conf_entries, container, flag_values, pod_spec, probe_python,
    spark_executor_pod_and_claims, submit_confs,
)

OVERLAY = "podnetwork-volumes"
EXAMPLES = DEPLOY / "examples"
TEMPLATE = EXAMPLES / "executor-pod-template-restricted.yaml"
PODNETWORK_TEMPLATE = EXAMPLES / "executor-pod-template-podnetwork.yaml"
SUBMIT = EXAMPLES / "submit-podnetwork-volumes.sh"
STORAGE_CLASS = EXAMPLES / "storageclass-local-path.yaml"
PVC = "spark.kubernetes.executor.volumes.persistentVolumeClaim.spark-local-dir-1"
TRANSLATE = "agent.localDirs.translate"
GATE = "wait-for-shuffle-listener"
# Where the restricted executor pod Spark builds, and its claim, are written (gitignored), for
# reading them.
RENDERED_POD = REPO / "target" / "deploy" / "restricted-executor-pod.yaml"
RENDERED_CLAIM = RENDERED_POD.with_name("restricted-executor-pvc.yaml")
# The targets that use the component: the overlay, and every overlay with all components.
WITH_COMPONENT = [OVERLAY] + [f"{o}+components" for o in OVERLAYS]


def claim_and_volume_rules(objects: list[dict]) -> list[tuple[str, str, str]]:
    """(role, resource, verb) for every grant on PVCs or PVs in the rendered objects."""
    return sorted(
        (o["metadata"]["name"], resource, verb)
        for o in objects if o["kind"] in ("ClusterRole", "Role") for rule in o["rules"]
        for resource in rule["resources"] if resource in ("persistentvolumeclaims", "persistentvolumes", "*")
        for verb in rule["verbs"]
    )


@pytest.mark.parametrize("target", WITH_COMPONENT)
def test_the_component_grants_only_get_on_claims_and_volumes_to_the_agents_service_account(rendered, target):
    # The translation GETs a claim by name, then its volume by name (agent.localDirs.translate).
    objects = rendered[target]
    roles = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ClusterRole"}
    assert roles[NODE_LOCAL_VOLUMES_ROLE]["rules"] == [
        {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["persistentvolumes"], "verbs": ["get"]},
    ]
    assert claim_and_volume_rules(objects) == [
        (NODE_LOCAL_VOLUMES_ROLE, "persistentvolumeclaims", "get"),
        (NODE_LOCAL_VOLUMES_ROLE, "persistentvolumes", "get"),
    ], "no other role touches claims or volumes"
    [binding] = [o for o in objects if o["kind"] == "ClusterRoleBinding"
                 and o["roleRef"]["name"] == NODE_LOCAL_VOLUMES_ROLE]
    sa = next(o for o in objects if o["kind"] == "ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": sa["metadata"]["namespace"]}
    ]


@pytest.mark.parametrize("overlay", [o for o in OVERLAYS if o != OVERLAY])
def test_no_other_overlay_can_read_claims_or_volumes_without_the_component(rendered, overlay):
    assert claim_and_volume_rules(rendered[overlay]) == []


@pytest.mark.parametrize("target", WITH_COMPONENT)
def test_the_agent_mounts_the_provisioners_dir_at_its_node_path_and_serves_it_as_a_root(rendered, target):
    spec = pod_spec(rendered[target])
    [volume] = [v for v in spec["volumes"] if (v.get("hostPath") or {}).get("path") == PROVISIONER_DIR]
    assert volume["hostPath"]["type"] == "DirectoryOrCreate", "the agent checks its roots exist at start"
    agent = container(spec, "agent")
    [mount] = [m for m in agent["volumeMounts"] if m["name"] == volume["name"]]
    # The same path: a PV's spec.hostPath.path / spec.local.path is a node path, opened as it is.
    assert mount["mountPath"] == PROVISIONER_DIR
    assert not mount.get("readOnly", False) and mount["mountPropagation"] == "HostToContainer"
    roots = flag_values(agent["args"], "--root")
    overlay = target.removesuffix("+components")
    assert roots == [LOCAL_DIR[overlay], PROVISIONER_DIR], "the hostPath local dir stays a root"
    init = container(spec, "prepare-dirs", init=True)
    assert not [m for m in init["volumeMounts"] if m["name"] == volume["name"]], "the provisioner's, not ours"


def test_the_overlays_conf_is_pod_modes_plus_the_translation():
    entries = conf_entries(CONF_SOURCE[OVERLAY])
    assert entries == conf_entries(CONF_SOURCE["podnetwork"]) | {TRANSLATE: "true"}
    assert conf_entries(DEFAULT_CONF)[TRANSLATE] == "false", "off unless an overlay turns it on"


def test_the_restricted_template_keeps_the_podnetwork_templates_gate_and_declares_no_local_dir():
    template = yaml.safe_load(TEMPLATE.read_text())["spec"]
    podnetwork = yaml.safe_load(PODNETWORK_TEMPLATE.read_text())["spec"]
    assert container(template, GATE, init=True) == container(podnetwork, GATE, init=True)
    assert template["securityContext"] | podnetwork["securityContext"] == template["securityContext"]
    assert "volumes" not in template, "the local dir comes from the persistentVolumeClaim settings"


def test_the_storage_class_makes_a_volume_on_the_executors_node_deleted_with_its_claim():
    [sc] = [d for d in yaml.safe_load_all(STORAGE_CLASS.read_text()) if d]
    assert sc["provisioner"] == "rancher.io/local-path"
    assert sc["volumeBindingMode"] == "WaitForFirstConsumer", "on the node the executor was scheduled to"
    assert sc["reclaimPolicy"] == "Delete", "the provisioner deletes the directory, not the agent"


def test_the_submit_example_asks_for_an_on_demand_claim_owned_by_the_driver_from_that_class(rendered):
    confs = submit_confs(SUBMIT)
    assert confs["spark.shuffle.service.enabled"] == confs["spark.dynamicAllocation.enabled"] == "true"
    assert confs["spark.shuffle.service.port"] == str(SHUFFLE_PORT)
    assert confs["spark.dynamicAllocation.shuffleTracking.enabled"] == "false"
    assert confs["spark.shuffle.service.removeShuffle"] == "true"
    assert int(confs["spark.shuffle.registration.maxAttempts"]) > 3, "Spark's default is 3"
    assert confs["spark.shuffle.readHostLocalDisk"] == "false"
    assert "spark.blockManager.port" not in confs
    assert Path(confs["spark.kubernetes.executor.podTemplateFile"]) == TEMPLATE
    assert confs[f"{PVC}.options.claimName"] == "OnDemand"
    assert confs[f"{PVC}.options.storageClass"] == yaml.safe_load(STORAGE_CLASS.read_text())["metadata"]["name"]
    assert confs[f"{PVC}.options.sizeLimit"]
    assert confs[f"{PVC}.mount.readOnly"] == "false"
    assert confs["spark.kubernetes.driver.ownPersistentVolumeClaim"] == "true"
    # Any mount path works, the agent translates it; none under the agent's roots, to show it.
    roots = flag_values(container(pod_spec(rendered[OVERLAY]), "agent")["args"], "--root")
    assert not [r for r in roots if confs[f"{PVC}.mount.path"].startswith(r)]
    assert not [k for k in confs if ".volumes.hostPath." in k] and "spark.local.dir" not in confs


def restricted_pod() -> dict:
    """The restricted template as a complete pod: what the checker's negative tests start from."""
    pod = yaml.safe_load(TEMPLATE.read_text())
    pod["metadata"]["name"] = "executor"
    pod["spec"]["containers"][0]["image"] = "apache/spark:4.0.0"
    pod["spec"]["volumes"] = [{"name": "spark-local-dir-1", "persistentVolumeClaim": {"claimName": "executor-pvc-0"}}]
    return pod


def test_the_restricted_template_passes_every_rule_of_the_restricted_level():
    assert pod_security.violations(restricted_pod(), "restricted") == {}


def test_the_checker_catches_a_host_path_volume_host_network_and_a_missing_seccomp_profile():
    # So that passing cannot be vacuous: the template with what it leaves out put back.
    pod = restricted_pod()
    pod["spec"]["volumes"].append({"name": "spark-local-dir-2", "hostPath": {"path": "/var/lib/spark/local"}})
    pod["spec"]["hostNetwork"] = True
    del pod["spec"]["securityContext"]["seccompProfile"]
    found = pod_security.violations(pod, "restricted")
    assert set(found) == {"baseline: HostPath Volumes", "baseline: Host Namespaces", "Volume Types", "Seccomp"}
    assert found["baseline: HostPath Volumes"] == ["volume spark-local-dir-2: hostPath"]
    assert found["baseline: Host Namespaces"] == ["spec.hostNetwork"]
    assert len(found["Seccomp"]) == len(pod_security.containers(pod)), "no container sets its own"
    # Baseline allows an unset seccomp profile, and nothing else of the restricted level.
    assert set(pod_security.violations(pod, "baseline")) == {"HostPath Volumes", "Host Namespaces"}


def set_in(pod: dict, path: str, value) -> dict:
    """A copy of `pod` with `value` at a dotted path ("spec.containers.0.securityContext.privileged")."""
    pod = copy.deepcopy(pod)
    *parents, last = path.split(".")
    node = pod
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    node[last] = value
    return pod


EXECUTOR = "spec.containers.0"
GATE_INIT = "spec.initContainers.0"
# One way to break each rule, and the rules it breaks (restricted level).
BREAKS = [
    (f"{EXECUTOR}.securityContext.windowsOptions", {"hostProcess": True}, {"baseline: HostProcess"}),
    ("spec.hostPID", True, {"baseline: Host Namespaces"}),
    (f"{EXECUTOR}.securityContext.privileged", True, {"baseline: Privileged Containers"}),
    (f"{GATE_INIT}.securityContext.capabilities.add", ["SYS_ADMIN"], {"baseline: Capabilities", "Capabilities"}),
    (f"{EXECUTOR}.securityContext.capabilities.add", ["CHOWN"], {"Capabilities"}),
    (f"{EXECUTOR}.securityContext.capabilities.drop", ["NET_RAW"], {"Capabilities"}),
    (f"{EXECUTOR}.ports", [{"containerPort": 7079, "hostPort": 7079}], {"baseline: Host Ports"}),
    (f"{EXECUTOR}.livenessProbe", {"tcpSocket": {"port": 7079, "host": "10.0.0.1"}},
     {"baseline: Host Probes / Lifecycle Hooks"}),
    ("metadata.annotations", {"container.apparmor.security.beta.kubernetes.io/x": "unconfined"}, {"baseline: AppArmor"}),
    (f"{EXECUTOR}.securityContext.appArmorProfile", {"type": "Unconfined"}, {"baseline: AppArmor"}),
    ("spec.securityContext.seLinuxOptions", {"type": "spc_t"}, {"baseline: SELinux"}),
    (f"{EXECUTOR}.securityContext.seLinuxOptions", {"user": "system_u"}, {"baseline: SELinux"}),
    (f"{EXECUTOR}.securityContext.procMount", "Unmasked", {"baseline: /proc Mount Type"}),
    (f"{EXECUTOR}.securityContext.seccompProfile", {"type": "Unconfined"}, {"baseline: Seccomp", "Seccomp"}),
    ("spec.securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}], {"baseline: Sysctls"}),
    ("spec.volumes", [{"name": "local", "hostPath": {"path": "/var/lib/spark/local"}}],
     {"baseline: HostPath Volumes", "Volume Types"}),
    ("spec.volumes", [{"name": "shared", "nfs": {"server": "nfs", "path": "/"}}], {"Volume Types"}),
    (f"{EXECUTOR}.securityContext.allowPrivilegeEscalation", True, {"Privilege Escalation"}),
    ("spec.securityContext.runAsNonRoot", False, {"Running as Non-root"}),
    (f"{GATE_INIT}.securityContext.runAsUser", 0, {"Running as Non-root user"}),
]


@pytest.mark.parametrize("path, value, rules", BREAKS, ids=[b[0].rsplit(".", 1)[-1] + "-" + "-".join(sorted(b[2]))
                                                               for b in BREAKS])
def test_the_checker_catches_each_rule_of_the_restricted_level_broken_on_its_own(path, value, rules):
    assert set(pod_security.violations(set_in(restricted_pod(), path, value), "restricted")) == rules


def test_the_checker_has_a_break_for_every_rule_it_has():
    assert set().union(*(rules for _, _, rules in BREAKS)) == set(pod_security.RESTRICTED)


def test_spark_builds_a_restricted_executor_on_an_on_demand_claim_owned_by_the_driver_against_a_simulated_api_server(
    tmp_path,
):
    """Real Spark (the pyspark wheel's jars) turns the example into an executor pod and its claim.

    The API server is simulated (tests/deploy/spark_pod_probe.py), with a driver pod for this
    client-mode driver to own what it creates, as a cluster-mode driver does. No executor runs,
    no provisioner binds the claim and no admission controller sees the pod: this checks the pod
    Spark would send, against the restricted level's rules and the strict schemas, and writes it
    and its claim to target/deploy/ (restricted-executor-pod.yaml, restricted-executor-pvc.yaml).
    """
    python = probe_python()
    if python is None or shutil.which("java") is None:
        pytest.skip("needs pyspark and java")
    driver = "spark-driver"
    pod, claims = spark_executor_pod_and_claims(
        python, SUBMIT, tmp_path, {"spark.kubernetes.driver.pod.name": driver})
    RENDERED_POD.parent.mkdir(parents=True, exist_ok=True)
    RENDERED_POD.write_text(yaml.safe_dump(pod, sort_keys=False))
    RENDERED_CLAIM.write_text(yaml.safe_dump_all(claims, sort_keys=False))
    for out in (RENDERED_POD, RENDERED_CLAIM):
        print(f"--- {out.relative_to(REPO)}\n{out.read_text()}")

    spec, confs = pod["spec"], submit_confs(SUBMIT)
    assert pod["metadata"]["labels"]["spark-role"] == "executor"  # what the agent watches
    assert not [v for v in spec["volumes"] if "hostPath" in v] and not spec.get("hostNetwork", False)
    [local] = [v for v in spec["volumes"] if v["name"].startswith("spark-local-dir-")]
    [claim] = claims
    assert local == {"name": "spark-local-dir-1",
                     "persistentVolumeClaim": {"claimName": claim["metadata"]["name"], "readOnly": False}}
    # Spark's OnDemand name; the agent finds the claim through the pod's volume, not the name.
    assert claim["metadata"]["name"] == f"{pod['metadata']['name']}-pvc-0"
    assert claim["spec"]["storageClassName"] == confs[f"{PVC}.options.storageClass"]
    assert claim["spec"]["resources"]["requests"]["storage"] == confs[f"{PVC}.options.sizeLimit"]
    # Owned by the driver pod (ownPersistentVolumeClaim), so it outlives the executor.
    assert [(o["kind"], o["name"]) for o in claim["metadata"]["ownerReferences"]] == [("Pod", driver)]
    executor = spec["containers"][0]
    [mount] = [m for m in executor["volumeMounts"] if m["name"] == "spark-local-dir-1"]
    assert mount["mountPath"] == confs[f"{PVC}.mount.path"]
    assert {e["name"]: e.get("value") for e in executor["env"]}["SPARK_LOCAL_DIRS"] == mount["mountPath"]
    assert [c["name"] for c in spec["initContainers"]] == [GATE]

    assert pod_security.violations(pod, "restricted") == {}
    assert pod_security.violations(pod, "baseline") == {}
    assert_strictly_valid_pod(pod, tmp_path)
