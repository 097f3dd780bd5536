"""Per-application secrets from pods (agent.auth.secrets=pods), with Spark's own client against the agent and a
SIMULATED Kubernetes API server (sim_kube_api.py; no real API server can run here).

Each app gets its own secret and its own crypto settings, as Spark on Kubernetes gives them: the executor pods
carry `_SPARK_AUTH_SECRET` and `SPARK_JAVA_OPT_*` entries, and their controller owner is the driver pod. One
executor pod is the one real Spark 4.3 builds for spark.authenticate=true (tests/deploy/spark_pod_probe.py), so
the env layout the agent reads is Spark's own, not ours. The JVM service has no per-app secrets (it knows one
shared secret), so these tests run against the agent only.

In this mode a registration's local dirs must also lie within a hostPath volume that the executor's own pod
mounts at the same path, so every executor pod here mounts the agent's root as Spark builds such a volume
(`spark.kubernetes.executor.volumes.hostPath.<name>.mount.path` / `.options.path`).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from client_driver import server_text
from servers import agent_metrics_url, find_agent_bin, restart_agent, scrape_metrics, start_agent, wait_until
from shuffle_layout import crc32, make_executor_dirs
from sim_kube_api import SimApi

REPO = Path(__file__).resolve().parents[2]
NODE = "node-a"
NS = "jobs"
_apps = itertools.count(1)


@pytest.fixture(scope="module", autouse=True)
def agent_only(server_kind):
    if server_kind != "agent":
        pytest.skip("per-app secrets are the agent's; Spark's JVM service has one shared secret")


def host_path_conf(name: str, path: str, mount: str | None = None, sub_path: str | None = None) -> dict:
    """Spark's settings for a hostPath volume of the executors."""
    key = f"spark.kubernetes.executor.volumes.hostPath.{name}"
    conf = {f"{key}.mount.path": mount or path, f"{key}.options.path": path}
    if sub_path is not None:
        conf[f"{key}.mount.subPath"] = sub_path
    return conf


def build_executor_pod(work: Path, extra: dict) -> dict:
    """The first executor pod real Spark 4.3 creates for an app with spark.authenticate, crypto and `extra` on."""
    settings = {"spark.authenticate": "true", "spark.network.crypto.enabled": "true",
                "spark.kubernetes.namespace": NS, "spark.executor.instances": "1",
                "spark.kubernetes.container.image": "spark:4.3.0", "spark.shuffle.service.enabled": "true", **extra}
    (work / "in.json").write_text(json.dumps(settings))
    probe = REPO / "tests" / "deploy" / "spark_pod_probe.py"
    subprocess.run([sys.executable, str(probe), str(work / "in.json"), str(work / "out.json")], check=True,
                   timeout=300, capture_output=True)
    pod, = json.loads((work / "out.json").read_text())  # the first executor pod Spark created
    return pod


@pytest.fixture(scope="module")
def spark_built_pod(tmp_path_factory, server_base) -> dict:
    """As Spark builds it with its local dir on a hostPath volume: the agent's root, at the same path."""
    root = str(server_base / "root")
    return build_executor_pod(tmp_path_factory.mktemp("probe"), host_path_conf("spark-local-dir-1", root))


def pods_cluster(server_base, work: Path, conf_text: str) -> dict:
    """A simulated API server and an agent watching it for node-a with `conf_text`; stop with close_cluster."""
    sim = SimApi()
    conf = work / "agent.conf"
    conf.write_text(conf_text)
    args = ["--config", str(conf), "--kubeconfig", sim.kubeconfig(work / "kubeconfig"), "--node-name", NODE]
    agent = start_agent(find_agent_bin(REPO), work, [str(server_base / "root")], extra_args=args,
                        port=_free_port())
    wait_until(lambda: "pods listed" in agent.log_text(), 30, what="the agent's first pod list")
    return {"agent": agent, "sim": sim, "root": str(server_base / "root")}


def close_cluster(box: dict) -> None:
    box["agent"].stop()
    box["sim"].close()


@pytest.fixture(scope="module")
def cluster(server_base, tmp_path_factory):
    """The simulated API server and an agent watching it for node-a, in per-app mode."""
    # A generous wait: the test that delivers the pod after the first handshake must not race it.
    box = pods_cluster(server_base, tmp_path_factory.mktemp("auth-pods"),
                       "agent.auth.secrets pods\nagent.auth.pods.wait 20s\n")
    yield box
    close_cluster(box)


def _free_port() -> int:
    from servers import free_port
    return free_port()


def new_app() -> str:
    return f"spark-{os.getpid():x}{next(_apps):04d}"


def driver_pod(app: str, uid: str, phase: str = "Running") -> dict:
    return {"metadata": {"name": f"{app}-driver", "namespace": NS, "uid": uid,
                         "labels": {"spark-role": "driver", "spark-app-selector": app}},
            "spec": {"nodeName": "node-z", "containers": [{"name": "spark-kubernetes-driver"}]},
            "status": {"phase": phase}}


def executor_pod(app: str, name: str, owner_uid: str, secret: str | None, crypto: bool, node: str = NODE,
                 exec_id: str = "0", host_paths: tuple[str, ...] = (), volumes: list | None = None,
                 mounts: list | None = None, extra_opts: tuple[str, ...] = ()) -> dict:
    """An executor pod as Spark builds it; each of `host_paths` a hostPath volume mounted at its own path, as
    Spark writes them (empty subPath and type), then any further `volumes` and their `mounts`; `extra_opts`,
    further `-D` options of the app (SPARK_JAVA_OPT_*)."""
    env = [{"name": "SPARK_APPLICATION_ID", "value": app}]
    opts = ["-Dspark.driver.port=7078"]
    if secret is not None:
        env.append({"name": "_SPARK_AUTH_SECRET", "value": secret})
        opts += ["-Dspark.authenticate=true", f"-Dspark.network.crypto.enabled={str(crypto).lower()}"]
    opts += extra_opts
    env += [{"name": f"SPARK_JAVA_OPT_{i}", "value": o} for i, o in enumerate(opts)]
    vols = [{"name": f"spark-local-dir-{i + 1}", "hostPath": {"path": p, "type": ""}} for i, p in enumerate(host_paths)]
    vol_mounts = [{"name": f"spark-local-dir-{i + 1}", "mountPath": p, "readOnly": False, "subPath": ""}
                  for i, p in enumerate(host_paths)]
    return {"metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}",
                         "labels": {"spark-role": "executor", "spark-app-selector": app, "spark-exec-id": exec_id},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": f"{app}-driver",
                                              "uid": owner_uid, "controller": True}]},
            "spec": {"nodeName": node, "volumes": vols + (volumes or []),
                     "containers": [{"name": "spark-kubernetes-executor", "env": env,
                                     "volumeMounts": vol_mounts + (mounts or [])}]},
            "status": {"phase": "Running"}}


def secret_for(app: str) -> str:
    return (app.encode().hex() * 4)[:64]


def run_app(java_driver, agent, app, test_dir, secret, crypto, tag="e", exec_id="0", extra_conf=None):
    """Registers executor `exec_id` of `app` and fetches one block (with `extra_conf` in the client's conf);
    returns the driver result."""
    ex = make_executor_dirs(str(test_dir / f"{app}-{tag}"), 1, 4)
    mo = ex.write_map_output(0, 0, [5000])
    steps = [["register", "--exec", exec_id, "--dir", ex.local_dirs[0], "--subdirs", str(ex.subdirs)],
             ["fetch", "--exec", exec_id, "--id", "shuffle_0_0_0"]]
    conf = {"spark.network.crypto.enabled": str(crypto).lower(), **(extra_conf or {})}
    r = java_driver.run(steps, port=agent.port, app=app, secret=secret, conf=conf)
    r.expected_crc = crc32(mo.block(0))
    return r


def served(r) -> bool:
    if not r.one(0)["ok"]:
        return False
    rec = r.blocks(1)["shuffle_0_0_0"]
    return rec["ok"] and rec["crc32"] == r.expected_crc


def outcome(agent, name: str) -> float:
    return scrape_metrics(agent_metrics_url(agent)).get(f'spark_shuffle_agent_handshakes_total{{outcome="{name}"}}', 0)


def learn(cluster, app, secret, crypto, driver_uid=None, **pod):
    """The app's driver pod and its executor 0's pod, which mounts the agent's root unless told otherwise."""
    driver_uid = driver_uid or f"uid-{app}-driver"
    pod.setdefault("host_paths", (cluster["root"],))
    cluster["sim"].apply(driver_pod(app, driver_uid))
    cluster["sim"].apply(executor_pod(app, f"{app}-exec-1", driver_uid, secret, crypto, **pod))
    return driver_uid


def test_each_app_is_served_with_its_own_secret_and_crypto_setting(java_driver, cluster, test_dir):
    agent = cluster["agent"]
    sasl_app, crypto_app = new_app(), new_app()
    learn(cluster, sasl_app, secret_for(sasl_app), crypto=False)
    learn(cluster, crypto_app, secret_for(crypto_app), crypto=True)
    for app, crypto in [(sasl_app, False), (crypto_app, True)]:
        r = run_app(java_driver, agent, app, test_dir, secret_for(app), crypto)
        assert served(r), f"{app}: {r.debug()}\n{agent.log_tail()}"
    # One app's secret is not another's.
    r = run_app(java_driver, agent, sasl_app, test_dir, secret_for(crypto_app), False, tag="x")
    assert not r.one(0)["ok"], r.debug()


def place(cluster, spark_pod: dict, tag: str) -> tuple[str, str, dict]:
    """Puts a pod Spark built on this node, as the cluster would; returns its app id, exec id and env."""
    pod = json.loads(json.dumps(spark_pod))
    app = pod["metadata"]["labels"]["spark-app-selector"]
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["SPARK_APPLICATION_ID"] == app and "-Dspark.authenticate=true" in env.values(), env.keys()
    # What the cluster adds to Spark's pod: its namespace, node and uid, and the driver pod as its owner (Spark
    # sets it in cluster mode from spark.kubernetes.driver.pod.name; the probe runs the driver in client mode).
    pod["metadata"].update(namespace=NS, uid=f"uid-real-exec-{tag}")
    pod["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "Pod", "name": f"drv-{tag}",
                                           "uid": f"uid-real-driver-{tag}", "controller": True}]
    pod["spec"]["nodeName"] = NODE
    pod["status"] = {"phase": "Running"}
    cluster["sim"].apply(driver_pod(app, f"uid-real-driver-{tag}"))
    cluster["sim"].apply(pod)
    return app, pod["metadata"]["labels"]["spark-exec-id"], env


def test_the_secret_spark_put_in_the_pod_it_built_authenticates_sparks_client(java_driver, cluster, test_dir,
                                                                              spark_built_pod):
    app, exec_id, env = place(cluster, spark_built_pod, "root")
    r = run_app(java_driver, cluster["agent"], app, test_dir, env["_SPARK_AUTH_SECRET"], crypto=True, exec_id=exec_id)
    assert served(r), f"{r.debug()}\n{cluster['agent'].log_tail()}"


def test_a_host_path_spark_mounts_with_a_sub_path_serves_the_dirs_below_it(java_driver, cluster, test_dir,
                                                                           tmp_path_factory):
    """hostPath <root>, subPath <sub>, mount path <root>/<sub>: the executor's <root>/<sub> is the node's, as
    Spark writes it from `spark.kubernetes.executor.volumes.hostPath.<name>.mount.subPath`."""
    sub = test_dir.name
    conf = host_path_conf("spark-local-dir-1", cluster["root"], mount=str(test_dir), sub_path=sub)
    spark_pod = build_executor_pod(tmp_path_factory.mktemp("probe-sub"), conf)
    mount, = [m for m in spark_pod["spec"]["containers"][0]["volumeMounts"] if m["name"] == "spark-local-dir-1"]
    assert (mount["mountPath"], mount["subPath"]) == (str(test_dir), sub), mount
    app, exec_id, env = place(cluster, spark_pod, "sub")
    r = run_app(java_driver, cluster["agent"], app, test_dir, env["_SPARK_AUTH_SECRET"], crypto=True, exec_id=exec_id)
    assert served(r), f"{r.debug()}\n{cluster['agent'].log_tail()}"
    # The root itself is the node's, but not what this pod shows at that path.
    r = run_app(java_driver, cluster["agent"], app, test_dir.parent, env["_SPARK_AUTH_SECRET"], crypto=True,
                exec_id=exec_id, tag="root")
    assert "the pod mounts no volume there" in server_text(r.one(0)), r.debug()


def refused_text(app: str, exec_id: str, entry: str, reason: str) -> str:
    return (f"java.lang.IllegalArgumentException: localDirs entry {entry} of executor {exec_id} of application "
            f"{app} is not within a hostPath volume that its pod {NS}/{app}-exec-1 mounts at the same path: {reason}")


def test_a_registration_is_served_only_within_a_host_path_its_executor_pod_mounts(java_driver, cluster, test_dir):
    """RegisterExecutor's dirs are the client's choice: the agent serves them only inside a hostPath volume the
    executor's own pod mounts at the same path. Under the agent's root but outside that hostPath (where another
    app's dirs could be), or on the pod's emptyDir, Spark's client is refused with the reason."""
    agent = cluster["agent"]
    app = new_app()
    host, scratch = test_dir / "host-path", test_dir / "scratch"
    host.mkdir()
    learn(cluster, app, secret_for(app), crypto=True, host_paths=(str(host),),
          volumes=[{"name": "scratch", "emptyDir": {}}], mounts=[{"name": "scratch", "mountPath": str(scratch)}])
    r = run_app(java_driver, agent, app, host, secret_for(app), crypto=True)
    assert served(r), f"{r.debug()}\n{agent.log_tail()}"
    for base, tag, reason in [
        (test_dir, "out", "the pod mounts no volume there"),
        (scratch, "tmp", f"the pod mounts an emptyDir volume at {scratch}, not a hostPath"),
    ]:
        r = run_app(java_driver, agent, app, base, secret_for(app), crypto=True, tag=tag)
        assert not r.one(0)["ok"], r.debug()
        assert server_text(r.one(0)) == refused_text(app, "0", str(base / f"{app}-{tag}" / "ld0"), reason), r.debug()


def test_a_symlink_out_of_the_host_path_is_refused(java_driver, cluster, test_dir):
    """The executor can write into its hostPath, so a symlink there must not lead the agent to other node dirs."""
    agent = cluster["agent"]
    app = new_app()
    host, victim = test_dir / "host-path", test_dir / "victim"
    host.mkdir()
    run_dir = victim / f"{app}-e"
    run_dir.mkdir(parents=True)
    (host / "link").symlink_to(victim)
    learn(cluster, app, secret_for(app), crypto=False, host_paths=(str(host),))
    r = run_app(java_driver, agent, app, host / "link", secret_for(app), crypto=False)
    assert not r.one(0)["ok"], r.debug()
    entry = str(host / "link" / f"{app}-e" / "ld0")
    reason = f"it resolves to {run_dir / 'ld0'}, outside the pod's volumes"
    assert server_text(r.one(0)) == refused_text(app, "0", entry, reason), r.debug()


def test_an_app_without_authentication_is_held_to_its_pods_host_paths_too(java_driver, cluster, test_dir):
    """Mixed mode: any unauthenticated client may claim an open app's id, so its registrations are checked the
    same way, or it could register dirs of an authenticated app that has not registered them yet."""
    agent = cluster["agent"]
    app = new_app()
    host = test_dir / "host-path"
    host.mkdir()
    learn(cluster, app, None, crypto=False, host_paths=(str(host),))
    assert served(run_app(java_driver, agent, app, host, None, crypto=False))
    r = run_app(java_driver, agent, app, test_dir, None, crypto=False, tag="out")
    assert server_text(r.one(0)) == refused_text(app, "0", str(test_dir / f"{app}-out" / "ld0"),
                                                 "the pod mounts no volume there"), r.debug()


def test_a_pod_whose_owner_is_not_its_apps_driver_gives_no_secret(java_driver, cluster, test_dir):
    agent = cluster["agent"]
    app, other = new_app(), new_app()
    cluster["sim"].apply(driver_pod(other, "uid-other-driver"))
    # Owned by another app's driver pod, and by a uid that is no driver pod at all.
    cluster["sim"].apply(executor_pod(app, f"{app}-exec-1", "uid-other-driver", secret_for(app), True))
    cluster["sim"].apply(executor_pod(app, f"{app}-exec-2", "uid-nobody", secret_for(app), True))
    wait_until(lambda: "another app or namespace" in agent.log_text(), 30, what="the owner check")
    before = outcome(agent, "unknown_app")
    r = run_app(java_driver, agent, app, test_dir, secret_for(app), crypto=False)
    assert not r.one(0)["ok"], r.debug()
    assert outcome(agent, "unknown_app") > before


def test_conflicting_secrets_refuse_the_app_until_its_driver_ends(java_driver, cluster, test_dir):
    agent, sim = cluster["agent"], cluster["sim"]
    app = new_app()
    uid = learn(cluster, app, secret_for(app), crypto=False)
    sim.apply(executor_pod(app, f"{app}-exec-2", uid, "a-different-secret", False, exec_id="2"))
    wait_until(lambda: "pods disagree" in agent.log_text(), 30, what="the conflict WARN")
    before = outcome(agent, "conflicting_secret")
    for secret in (secret_for(app), "a-different-secret"):
        r = run_app(java_driver, agent, app, test_dir, secret, crypto=False, tag=secret[:4])
        assert not r.one(0)["ok"], r.debug()
    assert outcome(agent, "conflicting_secret") >= before + 2
    metrics = scrape_metrics(agent_metrics_url(agent))
    assert metrics["spark_shuffle_agent_app_secret_conflicts_total"] >= 1
    # The first driver ends; a new app under the same id (a resubmission) starts afresh.
    sim.apply(driver_pod(app, uid, phase="Succeeded"))
    learn(cluster, app, secret_for(app) + "-2", crypto=False, driver_uid=uid + "-2")
    r = run_app(java_driver, agent, app, test_dir, secret_for(app) + "-2", crypto=False, tag="new")
    assert served(r), f"{r.debug()}\n{agent.log_tail()}"


def test_a_handshake_before_the_pod_event_waits_for_it(java_driver, cluster, test_dir):
    app = new_app()
    result = {}
    client = threading.Thread(target=lambda: result.update(
        r=run_app(java_driver, cluster["agent"], app, test_dir, secret_for(app), crypto=True)))
    client.start()
    # The pods appear only after the client's first handshake reached the agent.
    wait_until(lambda: _handshake_waiting(cluster["agent"]), 60, what="a connection waiting for its app's pods")
    learn(cluster, app, secret_for(app), crypto=True)
    client.join(120)
    assert served(result["r"]), f"{result['r'].debug()}\n{cluster['agent'].log_tail()}"


def _handshake_waiting(agent) -> bool:
    return scrape_metrics(agent_metrics_url(agent)).get("spark_shuffle_agent_active_connections", 0) >= 1


def test_an_app_whose_driver_ended_is_refused(java_driver, cluster, test_dir):
    agent, sim = cluster["agent"], cluster["sim"]
    app = new_app()
    learn(cluster, app, secret_for(app), crypto=False)
    assert served(run_app(java_driver, agent, app, test_dir, secret_for(app), crypto=False))
    dropped = agent.log_text().count("secret is dropped")
    sim.delete(NS, f"{app}-driver")
    wait_until(lambda: agent.log_text().count("secret is dropped") > dropped, 30, what="the secret dropped")
    r = run_app(java_driver, agent, app, test_dir, secret_for(app), crypto=False, tag="after")
    assert not r.one(0)["ok"], r.debug()


def test_an_app_without_authentication_is_served_unauthenticated_and_only_it(java_driver, cluster, test_dir):
    agent = cluster["agent"]
    open_app, auth_app = new_app(), new_app()
    learn(cluster, open_app, None, crypto=False)
    learn(cluster, auth_app, secret_for(auth_app), crypto=False)
    assert served(run_app(java_driver, agent, open_app, test_dir, None, crypto=False))
    r = run_app(java_driver, agent, auth_app, test_dir, None, crypto=False)
    assert not r.one(0)["ok"], r.debug()
    assert server_text(r.one(0)).startswith("java.lang.IllegalStateException: Expected SaslMessage"), r.debug()


def test_after_a_kill_9_an_app_with_no_executor_left_on_this_node_is_served(java_driver, cluster, test_dir):
    """Its secret is looked up from an executor pod of the app on another node (the fetcher is one)."""
    agent, sim = cluster["agent"], cluster["sim"]
    app = new_app()
    uid = learn(cluster, app, secret_for(app), crypto=True)
    r = run_app(java_driver, agent, app, test_dir, secret_for(app), crypto=True)
    assert served(r), r.debug()
    sim.delete(NS, f"{app}-exec-1")
    sim.apply(executor_pod(app, f"{app}-exec-9", uid, secret_for(app), True, node="node-b", exec_id="9"))
    agent.proc.send_signal(signal.SIGKILL)
    agent.proc.wait(30)
    cluster["agent"] = agent = restart_agent(agent)
    wait_until(lambda: agent.log_text().count("pods listed") >= 4, 60, what="the restarted agent's lists")
    # Fetch what the first run registered (recovered from the journal), as a reducer on node-b would.
    r2 = java_driver.run([["fetch", "--exec", "0", "--id", "shuffle_0_0_0"]], port=agent.port, app=app,
                         secret=secret_for(app), conf={"spark.network.crypto.enabled": "true"})
    rec = r2.blocks(0)["shuffle_0_0_0"]
    assert rec["ok"] and rec["crc32"] == r.expected_crc, f"{r2.debug()}\n{agent.log_tail()}"


def test_no_secret_is_in_the_agents_log_metrics_or_status(cluster):
    import urllib.request

    agent = cluster["agent"]
    url = agent_metrics_url(agent)
    pages = {p: urllib.request.urlopen(url + p, timeout=10).read().decode() for p in ("/metrics", "/status")}
    secrets = [secret_for(f"spark-{os.getpid():x}{i:04d}") for i in range(1, next(_apps))]
    for where, text in [("log", agent.log_text()), *pages.items()]:
        for s in secrets:
            assert s not in text and s[:16] not in text, f"a secret appears in the agent's {where}"


# --- Apps whose executors read the secret from a file (agent.auth.pods.secretFiles) ----------------------------
#
# Spark puts no _SPARK_AUTH_SECRET in such pods; the executor reads spark.authenticate.secret.executor.file, which
# the user mounts from a Kubernetes Secret (spark.kubernetes.executor.secrets.<secret>=<dir>), and its secret is
# Base64 of the file's bytes (SecurityManager.secretKeyFromFile). The Secret is served by the SIMULATED API server.

SECRET_DIR = "/mnt/spark-auth"
SECRET_FILE = f"{SECRET_DIR}/secret"


@pytest.fixture(scope="module")
def reading_cluster(server_base, tmp_path_factory):
    """A second simulated API server and an agent for node-a with agent.auth.pods.secretFiles read."""
    box = pods_cluster(server_base, tmp_path_factory.mktemp("auth-pods-files"),
                       "agent.auth.secrets pods\nagent.auth.pods.wait 3s\nagent.auth.pods.secretFiles read\n")
    box["secrets"] = []
    yield box
    close_cluster(box)


@pytest.fixture(scope="module")
def spark_built_file_pod(tmp_path_factory, server_base) -> dict:
    """The executor pod real Spark 4.3 creates for an app whose executors read the secret from a mounted Secret
    (and whose local dir is the agent's root on a hostPath volume, as for every executor here)."""
    work = tmp_path_factory.mktemp("probe-file")
    driver_file = work / "driver-secret"
    driver_file.write_bytes(b"the driver's copy; the probe's driver needs one to start")
    settings = {"spark.authenticate": "true", "spark.network.crypto.enabled": "true",
                "spark.authenticate.secret.driver.file": str(driver_file),
                "spark.authenticate.secret.executor.file": SECRET_FILE,
                "spark.kubernetes.executor.secrets.spark-auth": SECRET_DIR,
                "spark.kubernetes.namespace": NS, "spark.executor.instances": "1",
                "spark.kubernetes.container.image": "spark:4.3.0", "spark.shuffle.service.enabled": "true",
                **host_path_conf("spark-local-dir-1", str(server_base / "root"))}
    (work / "in.json").write_text(json.dumps(settings))
    probe = REPO / "tests" / "deploy" / "spark_pod_probe.py"
    subprocess.run([sys.executable, str(probe), str(work / "in.json"), str(work / "out.json")], check=True,
                   timeout=300, capture_output=True)
    pod, = json.loads((work / "out.json").read_text())
    return pod


def file_executor_pod(app: str, name: str, owner_uid: str, secret_name: str, crypto: bool, root: str) -> dict:
    """An executor pod as Spark builds it for spark.kubernetes.executor.secrets.<secret_name>=SECRET_DIR, its
    local dir on the hostPath `root`."""
    pod = executor_pod(app, name, owner_uid, None, crypto, host_paths=(root,))
    container = pod["spec"]["containers"][0]
    container["env"] = [e for e in container["env"] if not e["name"].startswith("SPARK_JAVA_OPT_")]
    opts = ["-Dspark.authenticate=true", f"-Dspark.network.crypto.enabled={str(crypto).lower()}",
            f"-Dspark.authenticate.secret.executor.file={SECRET_FILE}"]
    container["env"] += [{"name": f"SPARK_JAVA_OPT_{i}", "value": o} for i, o in enumerate(opts)]
    container["volumeMounts"].append({"name": f"{secret_name}-volume", "mountPath": SECRET_DIR})
    pod["spec"]["volumes"].append({"name": f"{secret_name}-volume", "secret": {"secretName": secret_name}})
    return pod


def file_secret(box, name: str) -> tuple[bytes, str]:
    """Puts a Secret of random bytes under key `secret`; returns (the bytes, the app secret Spark derives)."""
    raw = os.urandom(32) + b"\n\x00"
    box["sim"].put_secret(NS, name, {"secret": raw, "unrelated": b"not the app's"})
    derived = base64.b64encode(raw).decode()
    box["secrets"] += [raw.hex(), derived]
    return raw, derived


def test_with_secret_files_refused_an_app_whose_executors_read_a_file_is_refused_with_a_warn(java_driver, cluster,
                                                                                               test_dir):
    agent, sim = cluster["agent"], cluster["sim"]
    app = new_app()
    raw = os.urandom(32)
    sim.put_secret(NS, f"{app}-auth", {"secret": raw})
    sim.apply(driver_pod(app, f"uid-{app}-driver"))
    sim.apply(file_executor_pod(app, f"{app}-exec-1", f"uid-{app}-driver", f"{app}-auth", crypto=False,
                                root=cluster["root"]))
    wait_until(lambda: "agent.auth.pods.secretFiles refuse" in agent.log_text(), 30, what="the WARN")
    line = next(ln for ln in agent.log_text().splitlines() if "agent.auth.pods.secretFiles refuse" in ln)
    assert "WARN" in line and app in line, line
    before = outcome(agent, "unknown_app")  # an unsupported app is counted as unknown
    r = run_app(java_driver, agent, app, test_dir, base64.b64encode(raw).decode(), crypto=False)
    assert not r.one(0)["ok"], r.debug()
    assert outcome(agent, "unknown_app") > before
    assert sim.secret_gets(NS, f"{app}-auth") == 0, "the key is off: no Secret is read"


def test_with_secret_files_read_sparks_own_pod_is_served_with_base64_of_the_file_and_a_wrong_secret_is_refused(
        java_driver, reading_cluster, test_dir, spark_built_file_pod):
    agent, sim = reading_cluster["agent"], reading_cluster["sim"]
    pod = json.loads(json.dumps(spark_built_file_pod))
    app = pod["metadata"]["labels"]["spark-app-selector"]
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    # Spark's own layout: no secret in env, the file option, the Secret mounted where it says.
    assert "_SPARK_AUTH_SECRET" not in env and f"-Dspark.authenticate.secret.executor.file={SECRET_FILE}" in \
        env.values(), env
    secret_volumes = [v for v in pod["spec"]["volumes"] if "secret" in v]
    assert [v["secret"]["secretName"] for v in secret_volumes] == ["spark-auth"], pod["spec"]["volumes"]
    raw, derived = file_secret(reading_cluster, "spark-auth")
    pod["metadata"].update(namespace=NS, uid="uid-real-file-exec")
    pod["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "Pod", "name": "drv",
                                           "uid": "uid-real-file-driver", "controller": True}]
    pod["spec"]["nodeName"] = NODE
    pod["status"] = {"phase": "Running"}
    sim.apply(driver_pod(app, "uid-real-file-driver"))
    sim.apply(pod)
    wait_until(lambda: "read the app's secret file" in agent.log_text(), 30, what="the Secret read")
    exec_id = pod["metadata"]["labels"]["spark-exec-id"]
    r = run_app(java_driver, agent, app, test_dir, derived, crypto=True, exec_id=exec_id)
    assert served(r), f"{r.debug()}\n{agent.log_tail()}"
    for wrong in (raw.hex(), base64.b64encode(raw + b"x").decode()):
        r = run_app(java_driver, agent, app, test_dir, wrong, crypto=True, tag=wrong[:4], exec_id=exec_id)
        assert not r.one(0)["ok"], r.debug()
    # A second executor pod of the app: the Secret is not read again.
    second = json.loads(json.dumps(pod))
    second["metadata"].update(name=pod["metadata"]["name"] + "-2", uid="uid-real-file-exec-2")
    sim.apply(second)
    r = run_app(java_driver, agent, app, test_dir, derived, crypto=True, tag="2", exec_id=exec_id)
    assert served(r), r.debug()
    assert sim.secret_gets(NS, "spark-auth") == 1


def test_with_secret_files_read_the_same_app_with_sasl_is_served_and_its_secret_goes_with_its_driver(
        java_driver, reading_cluster, test_dir):
    agent, sim = reading_cluster["agent"], reading_cluster["sim"]
    app = new_app()
    _, derived = file_secret(reading_cluster, f"{app}-auth")
    uid = f"uid-{app}-driver"
    sim.apply(driver_pod(app, uid))
    sim.apply(file_executor_pod(app, f"{app}-exec-1", uid, f"{app}-auth", crypto=False, root=reading_cluster["root"]))
    assert served(run_app(java_driver, agent, app, test_dir, derived, crypto=False))
    dropped = agent.log_text().count("secret is dropped")
    sim.delete(NS, f"{app}-driver")
    wait_until(lambda: agent.log_text().count("secret is dropped") > dropped, 30, what="the secret dropped")
    r = run_app(java_driver, agent, app, test_dir, derived, crypto=False, tag="after")
    assert not r.one(0)["ok"], r.debug()


def test_with_secret_files_read_a_missing_secret_refuses_the_app_with_a_warn_and_others_are_served(
        java_driver, reading_cluster, test_dir):
    agent, sim = reading_cluster["agent"], reading_cluster["sim"]
    app, other = new_app(), new_app()
    sim.apply(driver_pod(app, f"uid-{app}-driver"))
    sim.apply(file_executor_pod(app, f"{app}-exec-1", f"uid-{app}-driver", f"{app}-nowhere", crypto=True,
                                root=reading_cluster["root"]))
    wait_until(lambda: sim.secret_gets(NS, f"{app}-nowhere") >= 1 and "404 NotFound" in agent.log_text(), 30,
               what="the failed read's WARN")
    line = next(ln for ln in agent.log_text().splitlines() if "404 NotFound" in ln and app in ln)
    assert "WARN" in line and f"{app}-nowhere" in line, line
    r = run_app(java_driver, agent, app, test_dir, base64.b64encode(b"a guess").decode(), crypto=True)
    assert not r.one(0)["ok"], r.debug()
    # The agent carries on: an app with an env secret, and one with a Secret that exists, are served.
    learn(reading_cluster, other, secret_for(other), crypto=True)
    assert served(run_app(java_driver, agent, other, test_dir, secret_for(other), crypto=True)), agent.log_tail()
    third = new_app()
    _, derived = file_secret(reading_cluster, f"{third}-auth")
    sim.apply(driver_pod(third, f"uid-{third}-driver"))
    sim.apply(file_executor_pod(third, f"{third}-exec-1", f"uid-{third}-driver", f"{third}-auth", crypto=True,
                                root=reading_cluster["root"]))
    assert served(run_app(java_driver, agent, third, test_dir, derived, crypto=True)), agent.log_tail()
    assert agent.proc.poll() is None


def test_with_secret_files_read_no_file_secret_is_in_the_agents_log_metrics_or_status(reading_cluster):
    import urllib.request

    agent = reading_cluster["agent"]
    url = agent_metrics_url(agent)
    pages = {p: urllib.request.urlopen(url + p, timeout=10).read().decode() for p in ("/metrics", "/status")}
    assert reading_cluster["secrets"], "run after the tests above"
    for where, text in [("log", agent.log_text()), *pages.items()]:
        for s in reading_cluster["secrets"]:
            assert s not in text and s[:16] not in text, f"a secret appears in the agent's {where}"
