"""Per-app TLS (agent.auth.secrets=pods with spark.ssl.rpc keys): an app whose executor pods carry
`-Dspark.ssl.rpc.enabled=true` is served over TLS only, while apps without it keep plaintext on the same port.
Spark's own client against the agent and a SIMULATED Kubernetes API server (sim_kube_api.py). One TLS pod is
the one real Spark 4.3 builds for an app with spark.ssl.rpc.enabled (tests/deploy/spark_pod_probe.py), so the
option the agent reads is where Spark puts it. Agent only: Spark's JVM service has no per-app modes."""

from __future__ import annotations

import pytest

from client_driver import server_text
from spark_tls import Cert, client_conf, server_conf
from test_auth_pods import (build_executor_pod, close_cluster, executor_pod, host_path_conf, learn, new_app, outcome,
                            place, pods_cluster, run_app, secret_for, served)

TLS_OPT = "-Dspark.ssl.rpc.enabled=true"
REFUSED = "java.lang.SecurityException: Application {app} uses TLS (spark.ssl.rpc.enabled in its pods) and is not " \
          "served over plaintext."


@pytest.fixture(scope="module", autouse=True)
def agent_only(server_kind):
    if server_kind != "agent":
        pytest.skip("per-app TLS comes from pods, the agent's; Spark's JVM service has no per-app modes")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    return {"server": Cert(d, "server"), "client": Cert(d, "client")}


@pytest.fixture(scope="module")
def cluster(server_base, tmp_path_factory, certs):
    """An agent in per-app mode with TLS keys: it takes TLS and plaintext clients on its one port."""
    keys = "".join(f"{k} {v}\n" for k, v in server_conf(certs["server"]).items() if "openSsl" not in k)
    box = pods_cluster(server_base, tmp_path_factory.mktemp("tls-pods"),
                       "agent.auth.secrets pods\nagent.auth.pods.wait 5s\n" + keys)
    yield box
    close_cluster(box)


@pytest.fixture
def tls(certs):
    """What the app's executors use: Spark's JDK TLS, trusting the agent's certificate."""
    return client_conf(certs["server"], certs["client"])


def run(java_driver, cluster, app, test_dir, secret, crypto, tls_conf=None, tag="e"):
    return run_app(java_driver, cluster["agent"], app, test_dir, secret, crypto, tag=tag, extra_conf=tls_conf)


def test_an_app_whose_pods_use_tls_is_served_over_tls_and_refused_in_plaintext(java_driver, cluster, test_dir, tls):
    app = new_app()
    learn(cluster, app, secret_for(app), crypto=True, extra_opts=(TLS_OPT,))
    r = run(java_driver, cluster, app, test_dir, secret_for(app), True, tls)
    assert served(r), f"{r.debug()}\n{cluster['agent'].log_tail()}"
    before = outcome(cluster["agent"], "plaintext_for_tls_app")
    # The right secret, over plaintext: the handshake passes, the first request for the app is refused.
    r = run(java_driver, cluster, app, test_dir, secret_for(app), True, tag="plain")
    assert server_text(r.one(0)).startswith(REFUSED.format(app=app)), r.debug()
    assert not r.blocks(1)["shuffle_0_0_0"]["ok"], r.debug()
    # Counted once per refused request: the registration and the fetch.
    assert outcome(cluster["agent"], "plaintext_for_tls_app") == before + 2


def test_an_app_without_authentication_that_uses_tls_is_not_served_in_plaintext(java_driver, cluster, test_dir,
                                                                                 tls):
    app = new_app()
    learn(cluster, app, None, crypto=False, extra_opts=(TLS_OPT,))
    assert served(run(java_driver, cluster, app, test_dir, None, False, tls))
    r = run(java_driver, cluster, app, test_dir, None, False, tag="plain")
    assert server_text(r.one(0)).startswith(REFUSED.format(app=app)), r.debug()


def test_apps_without_tls_keep_plaintext_on_the_same_port(java_driver, cluster, test_dir, tls):
    plain, secure = new_app(), new_app()
    learn(cluster, plain, secret_for(plain), crypto=True)
    learn(cluster, secure, secret_for(secure), crypto=True, extra_opts=(TLS_OPT,))
    assert served(run(java_driver, cluster, plain, test_dir, secret_for(plain), True))
    assert served(run(java_driver, cluster, secure, test_dir, secret_for(secure), True, tls))


def test_a_pod_of_the_app_that_disagrees_on_tls_refuses_the_app(java_driver, cluster, test_dir, tls):
    """A second executor pod without the option is a conflicting claim, like a second secret: nobody is served."""
    app = new_app()
    uid = learn(cluster, app, secret_for(app), crypto=True, extra_opts=(TLS_OPT,))
    before = outcome(cluster["agent"], "conflicting_secret")
    cluster["sim"].apply(executor_pod(app, f"{app}-exec-2", uid, secret_for(app), True, exec_id="1",
                                      host_paths=(cluster["root"],)))
    r = run(java_driver, cluster, app, test_dir, secret_for(app), True, tls)
    assert not r.one(0)["ok"], r.debug()
    assert outcome(cluster["agent"], "conflicting_secret") > before


def test_the_option_is_where_real_spark_puts_it_in_the_pods_it_builds(java_driver, cluster, test_dir, tls, certs,
                                                                      tmp_path_factory):
    """Spark 4.3 passes spark.ssl.* (but no password) to executors as SPARK_JAVA_OPT_* (isExecutorStartupConf)."""
    settings = {**host_path_conf("spark-local-dir-1", cluster["root"]), **client_conf(certs["server"], certs["client"])}
    pod = build_executor_pod(tmp_path_factory.mktemp("tls-probe"), settings)
    app, exec_id, env = place(cluster, pod, "tls")
    assert TLS_OPT in env.values(), sorted(v for k, v in env.items() if k.startswith("SPARK_JAVA_OPT_"))
    assert not any("Password" in (v or "") for v in env.values()), "Spark keeps passwords out of the pod spec"
    r = run_app(java_driver, cluster["agent"], app, test_dir, env["_SPARK_AUTH_SECRET"], True, tag="spark",
                exec_id=exec_id, extra_conf=tls)
    assert served(r), f"{r.debug()}\n{cluster['agent'].log_tail()}"
    r = run_app(java_driver, cluster["agent"], app, test_dir, env["_SPARK_AUTH_SECRET"], True, tag="spark-plain",
                exec_id=exec_id)
    assert server_text(r.one(0)).startswith(REFUSED.format(app=app)), r.debug()
