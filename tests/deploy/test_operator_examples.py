"""The operators' SparkApplications in deploy/examples/ point executors at the agent the way
submit-hostnetwork.sh does: same port, same local dir (the agent's --root, as a hostPath at the same
path), host network, the agent's uid/gid. deploy/validate.sh checks them against the CRD subsets;
this checks what a schema cannot.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
LOCAL_DIR = "/var/lib/spark/local"  # deploy/overlays/hostnetwork's --root


def load(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / name).read_text())


def common_checks(conf: dict, pod_spec: dict, security: dict):
    assert conf["spark.shuffle.service.enabled"] == "true"
    assert conf["spark.shuffle.service.port"] == "7337"
    assert conf["spark.local.dir"] == LOCAL_DIR
    assert conf["spark.blockManager.port"] == "0"
    assert pod_spec.get("dnsPolicy") == "ClusterFirstWithHostNet"
    assert (security["runAsUser"], security["runAsGroup"]) == (185, 185)


def test_apache_operator_application_uses_the_hostnetwork_agent():
    spec = load("sparkapplication-apache-operator.yaml")["spec"]
    conf = spec["sparkConf"]
    pod = spec["executorSpec"]["podTemplateSpec"]["spec"]
    assert pod["hostNetwork"] is True
    common_checks(conf, pod, pod["securityContext"])
    vol = "spark.kubernetes.executor.volumes.hostPath.spark-local-dir-1"
    assert conf[f"{vol}.mount.path"] == conf[f"{vol}.options.path"] == LOCAL_DIR


def test_kubeflow_operator_application_uses_the_hostnetwork_agent():
    spec = load("sparkapplication-kubeflow-operator.yaml")["spec"]
    ex = spec["executor"]
    assert ex["hostNetwork"] is True
    common_checks(spec["sparkConf"], ex["template"]["spec"], ex["podSecurityContext"])
    # The operator turns volumes named spark-local-dir-* into Spark's local-dir hostPath settings.
    vol = next(v for v in spec["volumes"] if v["name"].startswith("spark-local-dir-"))
    assert vol["hostPath"]["path"] == LOCAL_DIR
    assert {"name": vol["name"], "mountPath": LOCAL_DIR} in ex["volumeMounts"]
    assert spec["dynamicAllocation"]["enabled"] is True


@pytest.mark.parametrize("name", ["sparkapplication-apache-operator.yaml", "sparkapplication-kubeflow-operator.yaml"])
def test_operator_examples_run_the_same_spark_as_the_submit_example(name):
    text = (EXAMPLES / name).read_text()
    assert "spark-examples_2.13-4.0.1.jar" in text and "GroupByTest" in text
