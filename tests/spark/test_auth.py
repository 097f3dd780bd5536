"""spark.authenticate against the server, with Spark's own client (ExternalBlockStoreClient and its
AuthClientBootstrap): SASL DIGEST-MD5 (spark.network.crypto.enabled=false, Spark's default) and the AuthEngine
(crypto on) with each of its session ciphers, AES-CTR (the default) and AES-GCM
(spark.network.crypto.cipher=AES/GCM/NoPadding). Each server under test is started with authentication on and one
shared secret, the JVM service exactly as the agent; SHUFFLE_SERVER=jvm checks these tests themselves.

What a client sees is compared with what Spark's JVM service answers (auth.md section 3): the right secret
fetches byte-exact blocks (small ones packed with their headers, large ones that go through sendfile in
plaintext and through the cipher here, and stream fetches); a wrong secret and no secret fail with Spark's
texts; an authenticated app cannot act for another app (checkAuth's SecurityException).
"""

from __future__ import annotations

import itertools
import os

import pytest

from client_driver import register_step, server_text
from servers import agent_metrics_url
from shuffle_layout import crc32, make_executor_dirs, sha256
from spark_auth import MODES, SECRET, auth_conf, client_conf, start_auth_server
from spark_cluster import SparkCluster
from test_spark_jobs import check_registrations, replace_and_reread

_apps = itertools.count(1)


@pytest.fixture(scope="module", params=sorted(MODES))
def auth_server(request, server_kind, server_base, spark_paths, tmp_path_factory):
    """A server of `server_kind` with authentication on: SASL, or AuthEngine with CTR or GCM."""
    mode = request.param
    line = os.environ.get("SPARK_LINE", "4.3.0")
    if mode == "gcm" and tuple(map(int, line.split("."))) < (4, 3):
        # Seen here: the 3.5.8 client fails over GCM against 3.5.8's own JVM service too (its decryptor keeps only
        # the first message of a connection; fixed by SPARK-56227, which 4.3.0 has).
        pytest.skip(f"Spark {line}'s GCM receive side predates SPARK-56227")
    work = tmp_path_factory.mktemp(f"auth-{server_kind}-{mode}")
    h = start_auth_server(server_kind, mode, work, str(server_base / "root"), spark_paths.pyspark)
    yield h
    h.stop()


@pytest.fixture
def auth_ess(auth_server):
    assert auth_server.alive(), auth_server.log_tail()
    yield auth_server
    assert auth_server.alive(), f"server died during the test:\n{auth_server.log_tail()}"


register = register_step


def new_app() -> str:
    return f"app-20261202000000-{next(_apps):04d}"


# Block sizes: packed with its header (< 16 KiB), sent alone (sendfile without a cipher), larger than one
# 128 KiB encryption buffer, and empty.
SIZES = [100, 40_000, 300_000, 0, 7]


def test_the_right_secret_registers_and_fetches_exact_bytes(java_driver, auth_ess, test_dir, tmp_path):
    ex = make_executor_dirs(str(test_dir / "e"), 2, 8)
    mo = ex.write_map_output(0, 0, SIZES)
    app = new_app()
    ids = [f"shuffle_0_0_{r}" for r in range(len(SIZES))]
    fetch = ["fetch", "--exec", "0"] + list(itertools.chain.from_iterable(("--id", i) for i in ids))
    stream = fetch + ["--download", str(tmp_path)]
    r = java_driver.run([register("0", ex), fetch, stream], port=auth_ess.port, app=app, secret=SECRET,
                        conf=client_conf(auth_ess))
    assert r.one(0)["ok"], r.debug()
    for step in (1, 2):
        blocks = r.blocks(step)
        assert sorted(blocks) == sorted(ids), r.debug()
        for reduce_id, block_id in enumerate(ids):
            rec = blocks[block_id]
            assert rec["ok"], f"{block_id}: {rec}\n{auth_ess.log_tail()}"
            expected = mo.block(reduce_id)
            assert (rec["len"], rec["crc32"], rec["sha256"]) == (len(expected), crc32(expected), sha256(expected)), rec


def test_a_wrong_secret_is_refused_with_sparks_text(java_driver, auth_ess, test_dir):
    ex = make_executor_dirs(str(test_dir / "e"), 1, 4)
    r = java_driver.run([register("0", ex)], port=auth_ess.port, app=new_app(), secret="not-" + SECRET,
                        conf=client_conf(auth_ess))
    rec = r.one(0)
    assert not rec["ok"], r.debug()
    text = " | ".join(e["message"] for e in rec["chain"])
    if auth_ess.auth_mode == "sasl":
        assert "DIGEST-MD5: digest response format violation. Mismatched response." in text, text
    else:
        # The server answers "Authentication failed." and closes the connection; the client's SASL
        # fallback then finds it closed. Spark's JVM service and the agent give the client the same.
        assert "Failed to send RPC" in text and "ClosedChannelException" in text, text


def test_a_client_without_authentication_is_told_to_enable_it(java_driver, auth_ess, test_dir):
    ex = make_executor_dirs(str(test_dir / "e"), 1, 4)
    r = java_driver.run([register("0", ex)], port=auth_ess.port, app=new_app())
    rec = r.one(0)
    assert not rec["ok"], r.debug()
    assert server_text(rec).startswith(
        "java.lang.IllegalStateException: Expected SaslMessage, received something else "
        "(maybe your client does not have SASL enabled?)"), rec


def test_an_authenticated_app_cannot_reach_another_apps_blocks(java_driver, auth_ess, test_dir):
    victim, thief = new_app(), new_app()
    ex = make_executor_dirs(str(test_dir / "victim"), 1, 4)
    ex.write_map_output(0, 0, [64])
    conf = client_conf(auth_ess)
    r = java_driver.run([register("0", ex)], port=auth_ess.port, app=victim, secret=SECRET, conf=conf)
    assert r.one(0)["ok"], r.debug()
    r = java_driver.run(
        [
            ["open", "--exec", "0", "--for-app", victim, "--id", "shuffle_0_0_0"],
            ["remove", "--exec", "0", "--raw", "--for-app", victim, "--id", "shuffle_0_0_0"],
            ["open", "--exec", "0", "--id", "shuffle_0_0_0"],
        ],
        port=auth_ess.port, app=thief, secret=SECRET, conf=conf)
    for step in (0, 1):
        rec = r.one(step)
        assert not rec["ok"], r.debug()
        assert server_text(rec).startswith(
            f"java.lang.SecurityException: Client for {thief} not authorized for application {victim}."), rec
    # Acting for itself is fine: the thief's own executor 0 is simply not registered.
    rec = r.one(2)
    assert rec["ok"] or "not registered" in server_text(rec), rec


def test_an_authenticated_app_cannot_register_another_apps_dirs(java_driver, auth_ess, test_dir):
    """RegisterExecutor's local dirs are the client's choice. Spark's JVM service (4.3) checks only that they are
    under its own local dirs, so an app with a valid secret registers the victim's dirs under its own id and
    reads the victim's blocks; the agent refuses the registration (a dir belongs to the app that registered it
    first). The JVM run shows the theft works, so the agent's refusal is what stops it."""
    victim, thief = new_app(), new_app()
    ex = make_executor_dirs(str(test_dir / "victim"), 1, 4)
    mo = ex.write_map_output(0, 0, [4096])
    conf = client_conf(auth_ess)
    r = java_driver.run([register("0", ex)], port=auth_ess.port, app=victim, secret=SECRET, conf=conf)
    assert r.one(0)["ok"], r.debug()
    r = java_driver.run([register("7", ex), ["fetch", "--exec", "7", "--id", "shuffle_0_0_0"]],
                        port=auth_ess.port, app=thief, secret=SECRET, conf=conf)
    if auth_ess.kind == "jvm":
        assert r.one(0)["ok"], r.debug()
        assert r.blocks(1)["shuffle_0_0_0"]["crc32"] == crc32(mo.block(0)), "the JVM service serves the theft"
        return
    rec = r.one(0)
    assert not rec["ok"], r.debug()
    assert server_text(rec).startswith(
        "java.lang.IllegalArgumentException: localDirs entry is not within application "
        f"{thief}'s directory: {ex.local_dirs[0]}"), rec
    assert not r.blocks(1)["shuffle_0_0_0"]["ok"], r.debug()


# ---------------------------------------------------------------------------------------------------------------
# A real job: a local-cluster application with spark.authenticate=true (its executors get the secret from the
# Worker, as on a standalone cluster), through the kill-and-replace-executors flow. It shares the session's
# driver JVM with every other job test, which is safe because that JVM is launched with no app's conf
# (spark_cluster.launch_gateway).


@pytest.mark.spark_job
def test_a_job_with_authentication_survives_executor_replacement(spark_env, auth_ess, jobs_local_dir, request):
    conf = {
        **auth_conf(auth_ess.auth_mode),
        # Every block of the dead executors comes through the server, so the reads are authenticated.
        "spark.shuffle.readHostLocalDisk": "false",
    }
    with SparkCluster(auth_ess, jobs_local_dir, request.node.name, conf) as cl:
        old, new, _, m = replace_and_reread(cl)
        assert m["remote_blocks"] > 0, m
        check_handshakes_on_the_wire(cl, auth_ess.auth_mode)
        if auth_ess.auth_mode == "sasl":  # after an AuthEngine handshake the tap sees only ciphertext
            check_registrations(cl, old + new)
            assert not cl.tap.failures(), cl.tap.failures()


def check_handshakes_on_the_wire(cl: SparkCluster, mode: str):
    """What this Spark line's AuthClientBootstrap sent on every connection to the server, against spec section 6:
    SASL (6.1): two SaslMessages for the app, the first with an empty token, then no more; AuthEngine (6.2): one
    AuthMessage for the app with a 16-byte salt and a 60-byte ciphertext (12 IV + 32 key + 16 tag), after which
    the tap can decode nothing (the session cipher), and no SASL fallback."""
    by_conn: dict[int, list[dict]] = {}
    for r in cl.tap.rpcs():
        by_conn.setdefault(r["conn"], []).append(r)
    assert by_conn, cl.tap.summary()
    line = os.environ.get("SPARK_LINE")
    assert line is None or cl.jsc.version() == line, f"SPARK_LINE={line}, driver JVM {cl.jsc.version()}"
    for conn, rpcs in by_conn.items():
        msgs = [r["msg"] for r in rpcs]
        first = rpcs[0]
        assert first.get("app") == cl.app_id, (conn, first)
        if mode == "sasl":
            assert msgs[:2] == ["SaslMessage", "SaslMessage"] and "SaslMessage" not in msgs[2:], (conn, msgs)
            assert first["token_len"] == 0 and rpcs[1]["token_len"] > 0 and rpcs[1]["app"] == cl.app_id, (conn, rpcs)
        else:
            assert msgs == ["AuthMessage"], (conn, msgs)
            assert (first["salt_len"], first["ciphertext_len"]) == (16, 60), (conn, first)
    print(f"\n[{mode}] Spark {cl.jsc.version()}: {len(by_conn)} connections to the server, each began with "
          f"{'two SaslMessages (empty first token)' if mode == 'sasl' else 'one AuthMessage (16-byte salt, 60-byte ciphertext)'}")


def test_the_secret_is_in_no_log_line_metric_or_status(auth_ess):
    """Runs after the tests above in this module (their handshakes, failures and jobs are in the log)."""
    if auth_ess.kind != "agent":
        pytest.skip("the agent's own outputs; the JVM service has no /status")
    import urllib.request

    url = agent_metrics_url(auth_ess)
    pages = {p: urllib.request.urlopen(url + p, timeout=10).read().decode() for p in ("/metrics", "/status")}
    assert 'spark_shuffle_agent_handshakes_total{outcome="ok"}' in pages["/metrics"]
    for where, text in [("log", auth_ess.log_text()), *pages.items()]:
        assert SECRET not in text, f"the secret appears in the agent's {where}"
        assert SECRET[:16] not in text, f"part of the secret appears in the agent's {where}"

