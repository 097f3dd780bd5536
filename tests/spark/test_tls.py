"""TLS on the shuffle port (spark.ssl.rpc.enabled, Spark 4) with Spark's own client: ExternalBlockStoreClient over
Netty's SslHandler with PEM keys through netty-tcnative (spark.ssl.rpc.openSslEnabled). Run against the agent and,
with SHUFFLE_SERVER=jvm, against Spark's JVM service with the same keys, which checks these tests themselves.

What is checked: exact bytes over TLS for blocks packed with their headers, blocks larger than the agent's
encryption buffer, and stream downloads; spark.authenticate (AuthEngine) inside TLS; a client that does not trust
the server's certificate fails; plaintext and TLS clients on one port (the agent only: Spark's service cannot);
garbage after a TLS record header is closed on while another client keeps fetching."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import threading
import time
import types

import pytest

from client_driver import register_step
from servers import agent_metrics_url, find_agent_bin, scrape_metrics, wait_until
from shuffle_layout import crc32, make_executor_dirs, sha256
from spark_auth import SECRET
from spark_tls import (EXECUTOR_JVM_OPTS, PASSWORD, REPO, Cert, client_conf, keystore_keys, pem_client_conf,
                       start_tls_server)

_apps = itertools.count(1)
SIZES = [100, 40_000, 300_000, 0, 7]


def new_app() -> str:
    return f"app-20261204000000-{next(_apps):04d}"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    return {"server": Cert(d, "server"), "stranger": Cert(d, "stranger"), "client": Cert(d, "client")}


@pytest.fixture(scope="module")
def tls_server(server_kind, server_base, spark_paths, tmp_path_factory, certs):
    line = tuple(int(p) for p in os.environ.get("SPARK_LINE", "4.3.0").split("."))
    if line < (4, 0):
        pytest.skip("spark.ssl.rpc is Spark 4's (absent in 3.5)")
    work = tmp_path_factory.mktemp(f"tls-{server_kind}")
    h = start_tls_server(server_kind, certs["server"], work, str(server_base / "root"), spark_paths.pyspark)
    yield h
    h.stop()


@pytest.fixture
def tls_ess(tls_server):
    """The TLS server; a test it did not survive fails (the `ess` fixture's rule)."""
    assert tls_server.alive(), tls_server.log_tail()
    yield tls_server
    assert tls_server.alive(), f"server died during the test:\n{tls_server.log_tail()}"


def fetch_steps(ids, download):
    fetch = ["fetch", "--exec", "0"] + list(itertools.chain.from_iterable(("--id", i) for i in ids))
    return [fetch, fetch + ["--download", str(download)]]


def assert_exact(r, mo, ids, steps, server):
    for step in steps:
        blocks = r.blocks(step)
        assert sorted(blocks) == sorted(ids), r.debug()
        for reduce_id, block_id in enumerate(ids):
            rec = blocks[block_id]
            assert rec["ok"], f"{block_id}: {rec}\n{server.log_tail()}"
            expected = mo.block(reduce_id)
            assert (rec["len"], rec["crc32"], rec["sha256"]) == (len(expected), crc32(expected), sha256(expected))


def test_a_tls_client_registers_and_fetches_exact_bytes(java_driver, tls_ess, certs, test_dir, tmp_path):
    ex = make_executor_dirs(str(test_dir / "e"), 2, 8)
    mo = ex.write_map_output(0, 0, SIZES)
    ids = [f"shuffle_0_0_{r}" for r in range(len(SIZES))]
    r = java_driver.run([register_step("0", ex), *fetch_steps(ids, tmp_path)], port=tls_ess.port, app=new_app(),
                        conf=client_conf(certs["server"], certs["client"]))
    assert r.one(0)["ok"], r.debug()
    assert_exact(r, mo, ids, (1, 2), tls_ess)


@pytest.mark.parametrize("cipher", ["AES/CTR/NoPadding", "AES/GCM/NoPadding"])
def test_authentication_runs_inside_tls_and_its_cipher_around_it(java_driver, tls_server, server_kind, server_base,
                                                                  spark_paths, tmp_path_factory, certs, test_dir,
                                                                  tmp_path, cipher):
    """The AuthEngine handshake inside TLS; Spark then puts the session cipher between TLS and the socket."""
    crypto = {"spark.network.crypto.enabled": "true", "spark.network.crypto.cipher": cipher}
    auth = {"spark.authenticate": "true", "spark.authenticate.secret": SECRET, **crypto}
    work = tmp_path_factory.mktemp(f"tls-auth-{server_kind}")
    h = start_tls_server(server_kind, certs["server"], work, str(server_base / "root"), spark_paths.pyspark, auth)
    try:
        ex = make_executor_dirs(str(test_dir / "e"), 1, 4)
        mo = ex.write_map_output(0, 0, SIZES)
        ids = [f"shuffle_0_0_{r}" for r in range(len(SIZES))]
        conf = {**client_conf(certs["server"], certs["client"]), **crypto}
        r = java_driver.run([register_step("0", ex), *fetch_steps(ids, tmp_path)], port=h.port,
                            app=new_app(), secret=SECRET, conf=conf)
        assert r.one(0)["ok"], f"{r.debug()}\n{h.log_tail()}"
        assert_exact(r, mo, ids, (1, 2), h)
        wrong = java_driver.run([register_step("0", ex)], port=h.port, app=new_app(),
                                secret="not-" + SECRET, conf=conf)
        assert not wrong.one(0)["ok"], wrong.debug()
    finally:
        h.stop()


@pytest.mark.parametrize("how", ["keytool", "openssl", "openssl-legacy", "encrypted-pem"])
def test_keys_from_a_pkcs12_keystore_or_an_encrypted_key_serve_exact_bytes(java_driver, server_kind, server_base,
                                                                            spark_paths, tmp_path_factory, certs,
                                                                            test_dir, tmp_path, how):
    """The server's key and chain from a PKCS12 keystore (spark.ssl.rpc.keyStore, Spark's JDK path) as keytool
    and openssl write them, or from a PKCS#8 key encrypted with spark.ssl.rpc.privateKeyPassword."""
    work = tmp_path_factory.mktemp(f"tls-keys-{server_kind}")
    keys = keystore_keys(certs["server"], how, work / "keys")
    h = start_tls_server(server_kind, certs["server"], work, str(server_base / "root"), spark_paths.pyspark,
                         keys=keys)
    try:
        ex = make_executor_dirs(str(test_dir / "e"), 1, 4)
        mo = ex.write_map_output(0, 0, SIZES)
        ids = [f"shuffle_0_0_{r}" for r in range(len(SIZES))]
        r = java_driver.run([register_step("0", ex), *fetch_steps(ids, tmp_path)], port=h.port, app=new_app(),
                            conf=client_conf(certs["server"], certs["client"]))
        assert r.one(0)["ok"], f"{r.debug()}\n{h.log_tail()}"
        assert_exact(r, mo, ids, (1, 2), h)
    finally:
        h.stop()


@pytest.mark.parametrize("case", ["wrong-store-password", "wrong-key-password", "no-key-password", "jks"])
def test_keys_that_cannot_be_opened_stop_the_start_with_the_reason(server_kind, tmp_path, certs, case):
    if server_kind == "jvm":
        pytest.skip("the agent's start-up errors")
    keys = keystore_keys(certs["server"], "encrypted-pem" if "key-password" in case else "keytool", tmp_path)
    expected = {
        "wrong-store-password": "wrong spark.ssl.rpc.keyStorePassword",
        "wrong-key-password": "cannot be decrypted with spark.ssl.rpc.privateKeyPassword",
        "no-key-password": "is encrypted: set spark.ssl.rpc.privateKeyPassword",
        "jks": "is a JKS keystore",
    }[case]
    if case == "wrong-store-password":
        keys["spark.ssl.rpc.keyStorePassword"] = keys["spark.ssl.rpc.keyPassword"] = "not-" + PASSWORD
    elif case == "wrong-key-password":
        keys["spark.ssl.rpc.privateKeyPassword"] = "not-" + PASSWORD
    elif case == "no-key-password":
        del keys["spark.ssl.rpc.privateKeyPassword"]
    else:
        jks = tmp_path / "keystore.jks"
        subprocess.run(["keytool", "-importkeystore", "-noprompt", "-srckeystore", keys["spark.ssl.rpc.keyStore"],
                        "-srcstorepass", PASSWORD, "-destkeystore", str(jks), "-deststoretype", "JKS",
                        "-deststorepass", PASSWORD], check=True, capture_output=True, timeout=60)
        keys["spark.ssl.rpc.keyStore"] = str(jks)
    conf = tmp_path / "agent.conf"
    conf.write_text("".join(f"{k} {v}\n" for k, v in keys.items() if k != "spark.ssl.rpc.openSslEnabled"))
    argv = [str(find_agent_bin(REPO)), "--bind", "127.0.0.1", "--port", "0", "--metrics-port", "0", "--root",
            str(tmp_path), "--state-dir", str(tmp_path / "state"), "--config", str(conf)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    print(f"{case}: rc={done.returncode} {done.stderr.strip()[-300:]}")
    assert done.returncode != 0 and expected in done.stderr, done.stderr


def test_a_pem_client_as_executors_run_it_fetches_exact_bytes(java_driver, tls_ess, certs, test_dir, tmp_path):
    """PEM files through OpenSSL (openSslEnabled), with the JVM option Spark's launcher gives executors."""
    ex = make_executor_dirs(str(test_dir / "e"), 2, 8)
    mo = ex.write_map_output(0, 0, SIZES)
    ids = [f"shuffle_0_0_{r}" for r in range(len(SIZES))]
    r = java_driver.run([register_step("0", ex), *fetch_steps(ids, tmp_path)], port=tls_ess.port, app=new_app(),
                        conf=pem_client_conf(certs["server"]), jvm_opts=EXECUTOR_JVM_OPTS)
    assert r.one(0)["ok"], r.debug()
    assert_exact(r, mo, ids, (1, 2), tls_ess)


@pytest.mark.parametrize("keys", ["jdk", "pem"])
def test_a_client_that_does_not_trust_the_certificate_fails(java_driver, tls_ess, certs, test_dir, keys):
    ex = make_executor_dirs(str(test_dir / "e"), 1, 4)
    stranger = client_conf(certs["stranger"], certs["client"]) if keys == "jdk" else pem_client_conf(certs["stranger"])
    r = java_driver.run([register_step("0", ex)], port=tls_ess.port, app=new_app(), conf=stranger,
                        jvm_opts=EXECUTOR_JVM_OPTS, timeout_s=20)
    rec = r.one(0)
    assert not rec["ok"], r.debug()
    text = " | ".join(f"{e.get('class', '')}: {e['message']}" for e in rec["chain"])
    print(f"[{tls_ess.kind}] untrusted certificate ({keys}): {text}")
    assert "SSLHandshakeException" in text and "PKIX path building failed" in text, text


def test_plaintext_and_tls_clients_share_one_port(java_driver, tls_ess, certs, test_dir, tmp_path):
    if tls_ess.kind == "jvm":
        pytest.skip("Spark's service serves TLS only once TLS is on (auth.md section 4): the agent's addition")
    ex = make_executor_dirs(str(test_dir / "e"), 1, 4)
    mo = ex.write_map_output(0, 0, SIZES)
    ids = [f"shuffle_0_0_{r}" for r in range(len(SIZES))]
    app = new_app()
    (tmp_path / "tls").mkdir()
    (tmp_path / "plain").mkdir()
    tls = java_driver.run([register_step("0", ex), *fetch_steps(ids, tmp_path / "tls")], port=tls_ess.port, app=app,
                          conf=client_conf(certs["server"], certs["client"]))
    plain = java_driver.run([register_step("0", ex), *fetch_steps(ids, tmp_path / "plain")], port=tls_ess.port, app=app)
    for r in (tls, plain):
        assert r.one(0)["ok"], r.debug()
        assert_exact(r, mo, ids, (1, 2), tls_ess)


def test_bytes_copied_per_byte_served_are_none_in_plaintext_and_two_under_tls(java_driver, tls_ess, certs,
                                                                             test_dir):
    """spark_shuffle_agent_bytes_copied_total around one 2 MiB block: sent with sendfile in plaintext, nothing is
    copied in user space; under TLS it is read into a buffer (pread) and rustls copies it into its records."""
    if tls_ess.kind == "jvm":
        pytest.skip("the agent's metric")
    ex = make_executor_dirs(str(test_dir / "e"), 1, 4)
    size = 2 << 20
    ex.write_map_output(0, 0, [size])
    app = new_app()
    assert java_driver.run([register_step("0", ex)], port=tls_ess.port, app=app).one(0)["ok"]

    def copied_by(conf=None):
        before = scrape_metrics(agent_metrics_url(tls_ess))
        r = java_driver.run([["fetch", "--exec", "0", "--id", "shuffle_0_0_0"]], port=tls_ess.port, app=app,
                            conf=conf)
        assert r.blocks(0)["shuffle_0_0_0"]["ok"], r.debug()
        after = scrape_metrics(agent_metrics_url(tls_ess))
        delta = {k: after[k] - before.get(k, 0) for k in ("spark_shuffle_agent_bytes_copied_total",
                                                          "spark_shuffle_agent_block_bytes_transferred_total")}
        assert delta["spark_shuffle_agent_block_bytes_transferred_total"] == size, delta
        return delta["spark_shuffle_agent_bytes_copied_total"] / size

    plain, tls = copied_by(), copied_by(client_conf(certs["server"], certs["client"]))
    print(f"\nbytes copied per block byte served: plaintext {plain:.3f}, TLS {tls:.3f}")
    assert plain < 0.01, plain  # the RPC replies are encoded in place, not copied; the body goes by sendfile
    assert 2 <= tls < 2.01, tls  # one pread, one copy into the records; the small replies add the rest


def test_garbage_and_truncated_tls_records_are_closed_on_while_others_keep_fetching(java_driver, tls_ess, certs,
                                                                                       test_dir, tmp_path):
    ex = make_executor_dirs(str(test_dir / "e"), 1, 4)
    mo = ex.write_map_output(0, 0, SIZES)
    ids = [f"shuffle_0_0_{r}" for r in range(len(SIZES))]
    garbage = [
        b"\x16\x03\x01\x00\x05hello",                      # a handshake record that is no ClientHello
        b"\x16\x03\x03\xff\xff" + b"\x00" * 64,            # a record longer than TLS allows
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",   # a ClientHello cut short, then the client goes
    ]
    closed = 0
    for payload in garbage:
        with socket.create_connection(("127.0.0.1", tls_ess.port), timeout=10) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            try:
                while s.recv(4096):
                    pass
                closed += 1
            except (ConnectionResetError, socket.timeout):
                closed += 1
    assert closed == len(garbage)
    r = java_driver.run([register_step("0", ex), *fetch_steps(ids, tmp_path)], port=tls_ess.port, app=new_app(),
                        conf=client_conf(certs["server"], certs["client"]))
    assert r.one(0)["ok"], r.debug()
    assert_exact(r, mo, ids, (1, 2), tls_ess)
    if tls_ess.kind == "agent":
        metrics = scrape_metrics(agent_metrics_url(tls_ess))
        assert metrics.get('spark_shuffle_agent_errors_total{kind="tls"}', 0) >= 2, metrics



def test_a_rotated_certificate_serves_new_connections_while_an_open_one_keeps_fetching(
        java_driver, server_kind, server_base, spark_paths, tmp_path_factory, certs, test_dir):
    """The key files replaced the way a Kubernetes Secret volume replaces them (a rename over the old ones, as
    cert-manager's rotation lands): new connections get the new certificate, an open one keeps fetching."""
    if server_kind == "jvm":
        pytest.skip("Spark's service reads its keys once, at start")
    work = tmp_path_factory.mktemp("tls-rotate")
    live = work / "tls"
    live.mkdir()

    def install(cert):
        for src, name in ((cert.chain, "tls.crt"), (cert.key, "tls.key")):
            staged = live / f".{name}.new"
            shutil.copyfile(src, staged)
            os.replace(staged, live / name)

    install(certs["server"])
    files = types.SimpleNamespace(chain=live / "tls.crt", key=live / "tls.key")
    h = start_tls_server("agent", files, work, str(server_base / "root"), spark_paths.pyspark,
                         {"agent.tls.reload.interval": "1s"})
    try:
        ex = make_executor_dirs(str(test_dir / "e"), 1, 4)
        ex.write_map_output(0, 0, SIZES)
        ids = ",".join(f"shuffle_0_0_{r}" for r in range(len(SIZES)))
        app, result = new_app(), {}
        old_trust = client_conf(certs["server"], certs["client"])
        load = ["load", "--exec", "0", "--ids", ids, "--concurrency", "2", "--count", "1000000", "--seconds", "12"]
        t = threading.Thread(target=lambda: result.update(
            r=java_driver.run([register_step("0", ex), load], port=h.port, app=app, conf=old_trust, timeout_s=60)))
        t.start()
        url = agent_metrics_url(h)
        wait_until(lambda: scrape_metrics(url).get("spark_shuffle_agent_blocks_transferred_total", 0) > 0, 30, 0.2,
                   "the open connection fetching")
        install(certs["stranger"])
        wait_until(lambda: "TLS keys reloaded" in h.log_text(), 30, 0.2, "the agent to reload its keys")
        new_trust = client_conf(certs["stranger"], certs["client"])
        # The same app again (its dirs are its own): registering anew is how an executor reconnects.
        fresh = java_driver.run([register_step("0", ex)], port=h.port, app=app, conf=new_trust)
        assert fresh.one(0)["ok"], fresh.debug()
        stale = java_driver.run([register_step("0", ex)], port=h.port, app=app, conf=old_trust, timeout_s=20)
        assert not stale.one(0)["ok"], "a new connection must get the new certificate"
        t.join(90)
        summary = result["r"].one(1)
        print(f"open connection across the rotation: {summary}")
        assert summary["failures"] == 0 and summary["len_mismatches"] == 0 and summary["blocks"] > 0, summary
        metrics = scrape_metrics(url)
        assert metrics["spark_shuffle_agent_tls_reloads_total"] == 1, metrics
        assert metrics["spark_shuffle_agent_tls_certificate_expiry_timestamp_seconds"] > time.time(), metrics
    finally:
        h.stop()
