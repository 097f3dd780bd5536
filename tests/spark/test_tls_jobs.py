"""A real job over TLS (spark.ssl.rpc.enabled, Spark 4's RPC TLS): a pyspark local-cluster application whose
executors reach the server under test through TLS, through the kill-and-replace-executors flow. The blocks of the
dead executors come from the server over TLS, and the map side must not re-run. Run against the agent and, with
SHUFFLE_SERVER=jvm, against Spark's JVM service with the same keys, which checks the test itself.

spark.ssl.rpc is one switch for all of an app's RPC, so the driver <-> executor traffic is TLS too and the app
needs keys of its own: it gets the server's certificate and key, as PEM files through OpenSSL (openSslEnabled) or
as a PKCS12 keystore and truststore through the JDK.

What is checked besides the job (test_spark_jobs.py's checks): the driver's RPC port answers TLS with the app's
certificate; every connection to the server began with a TLS handshake record from both sides (the WireTap only
relays TLS, it decodes nothing); against the agent, started TLS-only here (agent.tls.plaintext refuse), /status
shows the app with all four executors registered, and the agent accepted exactly the tap's connections and had
no TLS error.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import urllib.request

import pytest

from servers import agent_metrics_url, scrape_metrics
from spark_cluster import EXECUTOR_JAVA_OPTS, SparkCluster
from spark_tls import EXECUTOR_JVM_OPTS, Cert, client_conf, pem_client_conf, start_tls_server
from test_spark_jobs import replace_and_reread

TLS_RECORD_HANDSHAKE = 0x16  # the content type of a TLS record carrying a ClientHello / ServerHello


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return Cert(tmp_path_factory.mktemp("tls-jobs-certs"), "server")


@pytest.fixture
def tls_ess(server_kind, server_base, spark_paths, tmp_path_factory, cert):
    """A fresh TLS server per test, so the agent's connection and error counts are this job's alone."""
    if tuple(int(p) for p in os.environ.get("SPARK_LINE", "4.3.0").split(".")) < (4, 0):
        pytest.skip("spark.ssl.rpc is Spark 4's (absent in 3.5)")
    # The agent also serves plaintext on a TLS port by default; refusing it makes it TLS-only, as Spark's service.
    extra = {"agent.tls.plaintext": "refuse"} if server_kind == "agent" else None
    work = tmp_path_factory.mktemp(f"tls-jobs-{server_kind}")
    h = start_tls_server(server_kind, cert, work, str(server_base / "root"), spark_paths.pyspark, extra)
    yield h
    alive = h.alive()
    h.stop()
    assert alive, f"server died during the test:\n{h.log_tail()}"


def app_keys(how: str, cert: Cert) -> dict[str, str]:
    """The app's own keys are the server's: the driver's RPC server presents this certificate to executors, and
    every client (executors to the driver and to the shuffle service) trusts exactly it."""
    return pem_client_conf(cert) if how == "pem" else client_conf(cert, cert)


def agent_counts(server) -> tuple[float, float]:
    m = scrape_metrics(agent_metrics_url(server))
    return m["spark_shuffle_agent_connections_total"], m['spark_shuffle_agent_errors_total{kind="tls"}']


@pytest.mark.spark_job
@pytest.mark.parametrize("keys", ["pem", "keystore"])
def test_a_tls_job_survives_executor_replacement(spark_env, tls_ess, cert, jobs_local_dir, request, keys):
    conf = {
        **app_keys(keys, cert),
        # Every block of the dead executors comes through the server, so the re-read goes over TLS.
        "spark.shuffle.readHostLocalDisk": "false",
        # Netty 4.2's OpenSSL client checks host names unless told not to (spark_tls.py). SparkContext already adds
        # it to the executors' options (with JavaModuleOptions); it is here so the test does not depend on that.
        "spark.executor.extraJavaOptions": " ".join((EXECUTOR_JAVA_OPTS, *EXECUTOR_JVM_OPTS)),
    }
    before = agent_counts(tls_ess) if tls_ess.kind == "agent" else None
    with SparkCluster(tls_ess, jobs_local_dir, request.node.name, conf, tls=True) as cl:
        # The driver JVM (the session's gateway, launched with no app conf) can be a TLS client too: local-cluster's
        # Master and Workers run in it with the app's conf. Spark's launcher (JavaModuleOptions) gave it the netty
        # property when pyspark started it, so nothing of this app's needs to reach the gateway.
        prop = "io.netty.handler.ssl.defaultEndpointVerificationAlgorithm"
        assert cl.sc._jvm.java.lang.System.getProperty(prop) == "NONE", "the driver JVM lacks " + prop
        check_serves_tls(int(cl.sc.getConf().get("spark.driver.port")), cert)
        old, new, _, m = replace_and_reread(cl)
        assert m["remote_blocks"] > 0, m
        check_all_tls(cl)
        if tls_ess.kind == "agent":  # the JVM service has no /status
            check_agent_side(cl, old + new, before)


def check_serves_tls(port: int, cert: Cert):
    """The driver's RPC port answers a TLS handshake with the app's certificate: the app's own RPC is TLS too."""
    ctx = ssl.create_default_context(cafile=str(cert.chain))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            assert s.getpeercert(binary_form=True) == ssl.PEM_cert_to_DER_cert(cert.chain.read_text())


def check_all_tls(cl: SparkCluster):
    """Every connection the tap relayed began with a TLS handshake record from the client (its ClientHello) and
    from the server (its ServerHello). A plaintext Spark frame would begin with 0x00, its length's high byte."""
    c2s, s2c = cl.tap.first_bytes("c2s"), cl.tap.first_bytes("s2c")
    assert c2s and cl.tap.connections() == len(c2s), (cl.tap.connections(), c2s)
    for conn, first in c2s.items():
        assert first[0] == TLS_RECORD_HANDSHAKE and first[1] == 3, (conn, first.hex())
        assert s2c.get(conn, b"\0")[0] == TLS_RECORD_HANDSHAKE, (conn, s2c.get(conn, b"").hex())
    assert not cl.tap.rpcs() and not cl.tap.decode_errors(), "the tap must not decode TLS"
    print(f"\n[{cl.server.kind}] {len(c2s)} connections to the server, each began with TLS handshake records "
          f"(client {sorted({b.hex() for b in c2s.values()})})")


def check_agent_side(cl: SparkCluster, exec_ids: list[str], before: tuple[float, float]):
    """What the tap cannot see under TLS, from the agent: the app and its executors registered, and every
    connection it accepted was one of the tap's, served over TLS (a plaintext one would be a TLS error)."""
    with urllib.request.urlopen(f"{agent_metrics_url(cl.server)}/status", timeout=10) as r:
        status = json.load(r)
    apps = {a["app_id"]: a for a in status["apps"]}
    assert cl.app_id in apps and apps[cl.app_id]["executors"] == len(exec_ids), (exec_ids, status["apps"])
    conns, tls_errors = agent_counts(cl.server)
    assert conns - before[0] == cl.tap.connections(), (conns, before, cl.tap.connections())
    assert tls_errors == before[1], f"TLS errors during the job: {tls_errors - before[1]}"
